//! Layers tch lacks (bias-free linear, RMSNorm) and the layout conversions between checkpoint
//! conventions, each in one named helper.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// `y = x Wᵀ` with a transformers-layout `[out, in]` weight and no bias (Dia has none).
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
    /// `Wᵀ` as a view, taken once: a 2D input then costs one `mm` and no transpose per call.
    /// Loading copies into the weight in place, so the view stays valid; `relayout` and
    /// `fuse_linears`, which replace the weight, take it again.
    weight_t: Tensor,
}

impl Linear {
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self::from_weight(vs.var("weight", &[out_dim, in_dim], Init::Const(0.)))
    }

    fn from_weight(weight: Tensor) -> Self {
        Self { weight_t: weight.tr(), weight }
    }

    /// `[R, in] → [R, out]`.
    pub fn mm(&self, xs_rxi: &Tensor) -> Tensor {
        xs_rxi.mm(&self.weight_t)
    }

    /// `residual + x Wᵀ` for `[R, in]` inputs, in one operator.
    pub fn addmm(&self, residual_rxo: &Tensor, xs_rxi: &Tensor) -> Tensor {
        residual_rxo.addmm(xs_rxi, &self.weight_t)
    }

    /// `[R, in] → [out, R]`: `W xᵀ`, outputs by rows. For the largest weights at a few rows MKL
    /// runs this form about twice as fast as `x Wᵀ` in either weight layout (the 1.6B model's
    /// MLP and head at 2 rows: 18–21 GB/s against 9–10), so those keep the `[out, in]` layout.
    pub fn mm_t(&self, xs_rxi: &Tensor) -> Tensor {
        self.weight.mm(&transposed(xs_rxi))
    }

    /// `residual + W x` for inputs `[in, R]` and a residual `[out, R]`, as `[out, R]`.
    pub fn addmm_t(&self, residual_oxr: &Tensor, xs_ixr: &Tensor) -> Tensor {
        residual_oxr.addmm(&self.weight, xs_ixr)
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Stores the weight `[in, out]` in memory (the `[out, in]` weight a strided view of it):
    /// MKL multiplies by an untransposed right operand faster (10–20 % for the 1.6B model's
    /// projections at a few rows). For after loading.
    pub fn relayout(&mut self) {
        self.weight.set_data(&self.weight.tr().contiguous().tr());
        self.weight_t = self.weight.tr();
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear::<&Tensor>(&self.weight, None)
    }
}

/// The transpose of a 2-D tensor as one `as_strided` view, where `t()` dispatches three
/// operators (`t`, `transpose`, `as_strided`).
pub fn transposed(t: &Tensor) -> Tensor {
    let (size, stride) = (t.size(), t.stride());
    t.as_strided([size[1], size[0]], [stride[1], stride[0]], None)
}

/// One linear whose weight stacks the rows of linears that read the same input (`[out_i, in]`),
/// laid out as `relayout` does; each part is re-pointed at its rows of it, so one matmul serves
/// them all and the weights are not held twice.
pub fn fuse_linears(parts: &mut [&mut Linear]) -> Linear {
    let stacked = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0);
    let fused = stacked.tr().contiguous().tr();
    let mut row = 0;
    for linear in parts.iter_mut() {
        let rows = linear.weight.size()[0];
        linear.weight.set_data(&fused.narrow(0, row, rows));
        linear.weight_t = linear.weight.tr();
        row += rows;
    }
    Linear::from_weight(fused)
}

/// RMSNorm, `x · (ε + Σx²/D)^−½ · w` in f32 whatever the dtype as the reference does, in 5 or
/// 6 operators instead of the ~24 of libtorch's CPU composite. `w` is multiplied in here, or
/// folded into the projections that read the output.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    scale: Scale,
    /// `D` and `ε` as f32 tensors on the device: a scalar operand would cost a conversion
    /// (four more operators) in every call.
    dim_1: Tensor,
    eps_1: Tensor,
    eps: f64,
}

/// Where an [`RmsNorm`]'s weight goes, decided after loading.
#[derive(Debug)]
enum Scale {
    Unprepared,
    /// Multiplied in by `forward`, in f32.
    Multiply(Tensor),
    /// In the weights of the projections that read the output.
    Folded,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        let options = (Kind::Float, vs.device());
        Self {
            weight: vs.var("weight", &[dim], Init::Const(1.)),
            scale: Scale::Unprepared,
            dim_1: Tensor::full([1], dim as f64, options),
            eps_1: Tensor::full([1], eps, options),
            eps,
        }
    }

    /// After loading: the weight is multiplied in by `forward`.
    pub fn prepare(&mut self) {
        self.scale = Scale::Multiply(self.weight.to_kind(Kind::Float));
    }

    /// After loading: the weight multiplied into the input columns of every linear that reads
    /// this norm's output (`[out, D]` weights, in place), so that `forward` skips it, one
    /// operator fewer per call. `W·diag(w)` is rounded once, in the weights' dtype.
    pub fn fold_into(&mut self, linears: &mut [&mut Linear]) {
        for linear in linears {
            let w = self.weight.to_kind(linear.weight.kind());
            let _ = linear.weight.shallow_clone().g_mul_(&w);
        }
        self.scale = Scale::Folded;
    }
}

impl Module for RmsNorm {
    /// libtorch's `rms_norm` where it has a fused kernel (CUDA); elsewhere the arithmetic above.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let weight = match &self.scale {
            Scale::Multiply(weight) => Some(weight),
            Scale::Folded => None,
            Scale::Unprepared => panic!("an RmsNorm is prepared or folded after loading"),
        };
        if xs.device().is_cuda() {
            let weight = weight.map(|_| &self.weight);
            return xs.rms_norm(self.weight.size(), weight, self.eps);
        }
        let x = if xs.kind() == Kind::Float { xs.shallow_clone() } else { xs.to_kind(Kind::Float) };
        let sum_squares = (&x * &x).sum_dim_intlist(-1, true, None::<Kind>);
        let normed = x * self.eps_1.addcdiv(&sum_squares, &self.dim_1).rsqrt_();
        let normed = match weight {
            Some(weight) => normed * weight,
            None => normed,
        };
        if normed.kind() == xs.kind() {
            normed
        } else {
            normed.to_kind(xs.kind())
        }
    }
}

/// The rows of a `[heads·E, in]` projection with each head's halves interleaved
/// (`0, E/2, 1, E/2 + 1, …`): RoPE's rotate-half pairs `(i, i + E/2)` become adjacent, the layout
/// a complex view of the projected heads needs.
pub fn interleave_halves(weight: &Tensor, head_dim: i64) -> Tensor {
    let (rows, cols) = weight.size2().expect("a projection weight is [out, in]");
    weight.view([rows / head_dim, 2, head_dim / 2, cols]).transpose(1, 2).reshape([rows, cols])
}

/// A DenseGeneral kernel `[in…, out…]` (Nari/Flax layout) as an `nn.Linear` weight
/// `[prod(out), prod(in)]`: flatten row-major, then transpose.
pub fn dense_general_to_linear(kernel: &Tensor, in_axes: usize) -> Tensor {
    let dims = kernel.size();
    let fan_in: i64 = dims[..in_axes].iter().product();
    kernel.reshape([fan_in, -1]).tr().contiguous()
}

/// Weight normalisation folded once at load: `W = g · v / ‖v‖`, the norm taken over every axis
/// but 0, for each index of axis 0 (the stored layout's axis 0, whatever it means).
pub fn fold_weight_norm(g: &Tensor, v: &Tensor) -> Tensor {
    let v = v.to_kind(Kind::Float);
    let dims: Vec<i64> = (1..v.dim() as i64).collect();
    let norm = v.square().sum_dim_intlist(dims.as_slice(), true, Kind::Float).sqrt();
    g.to_kind(Kind::Float) * v / norm
}
