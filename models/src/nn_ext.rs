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

/// RMSNorm; its weight has the model's dtype, so that CUDA's fused kernel takes it.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    /// `D` and `ε` as f32 tensors on the device: a scalar operand would cost a conversion
    /// (four more operators) in every call.
    dim_1: Tensor,
    eps_1: Tensor,
}

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        let options = (Kind::Float, vs.device());
        Self {
            weight: vs.var("weight", &[dim], Init::Const(1.)),
            eps,
            dim_1: Tensor::full([1], dim as f64, options),
            eps_1: Tensor::full([1], eps, options),
        }
    }
}

impl Module for RmsNorm {
    /// libtorch's `rms_norm` where it has a fused kernel (CUDA). Elsewhere the same arithmetic,
    /// in f32 whatever the dtype as the reference does, in 8 operators instead of the ~24 of the
    /// CPU composite: `x · (ε + Σx²/D)^−½ · w`.
    fn forward(&self, xs: &Tensor) -> Tensor {
        if xs.device().is_cuda() {
            return xs.rms_norm(self.weight.size(), Some(&self.weight), self.eps);
        }
        let x = if xs.kind() == Kind::Float { xs.shallow_clone() } else { xs.to_kind(Kind::Float) };
        let sum_squares = (&x * &x).sum_dim_intlist(-1, true, None::<Kind>);
        let inv_rms = self.eps_1.addcdiv(&sum_squares, &self.dim_1).rsqrt_();
        let normed = x * inv_rms * &self.weight;
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
