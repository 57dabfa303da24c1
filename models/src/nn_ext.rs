//! Layers tch lacks (bias-free linear, RMSNorm with f32 weight) and the layout conversions
//! between checkpoint conventions, each in one named helper.

use tch::nn::{self, Init, Module};
use tch::{Kind, Tensor};

/// `y = x Wᵀ` with a transformers-layout `[out, in]` weight and no bias (Dia has none).
#[derive(Debug)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn new(vs: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        Self { weight: vs.var("weight", &[out_dim, in_dim], Init::Const(0.)) }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs.linear::<&Tensor>(&self.weight, None)
    }
}

/// Concatenates the weights of linears that read the same input (`[out_i, in]` rows stacked) and
/// re-points each at its rows of the result: one matmul then serves them all, and the weights
/// are not held twice.
pub fn fuse_linears(parts: &mut [&mut Linear]) -> Tensor {
    let fused = Tensor::cat(&parts.iter().map(|l| &l.weight).collect::<Vec<_>>(), 0);
    let mut row = 0;
    for linear in parts.iter_mut() {
        let rows = linear.weight.size()[0];
        linear.weight.set_data(&fused.narrow(0, row, rows));
        row += rows;
    }
    fused
}

/// RMSNorm whose weight stays f32 in every compute dtype, as the reference builds it.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

/// Marks the variables that keep f32 when the rest of the model is cast to bf16/f16.
pub const F32_SUFFIX: &str = "norm.weight";

impl RmsNorm {
    pub fn new(vs: nn::Path, dim: i64, eps: f64) -> Self {
        Self { weight: vs.var("weight", &[dim], Init::Const(1.)), eps }
    }
}

impl Module for RmsNorm {
    /// libtorch's own (fused where it has a kernel) RMSNorm with the f32 weight, as the
    /// reference calls it, cast back to the input's dtype as the reference does.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        xs.rms_norm([dim], Some(&self.weight), self.eps).to_kind(xs.kind())
    }
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
