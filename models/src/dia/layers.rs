//! Dia's building blocks: rotary embedding, gated MLP, self- and cross-attention.
//!
//! Activations are rows `[R, D]` (R = N·T: rows of the batch times frames), so that every
//! projection is one `mm`. Shape letters: N rows (2·B, CFG pairs), T query frames, S keys,
//! H query heads, K KV heads, G = H / K query heads per KV head, E head dim, D model width.
//! Attention scale is 1.0 everywhere: the weights were trained so.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::nn_ext::{fuse_linears, interleave_halves, Linear};

/// Rotary position embedding, rotate-half layout, angles and rotation in f32.
#[derive(Debug)]
pub struct RotaryEmbedding {
    timescale_e2: Tensor,
}

impl RotaryEmbedding {
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        // timescale_i = θ^(2i/E), in f32 as the reference computes it.
        let fraction = Tensor::arange(head_dim / 2, (Kind::Float, device)) * 2.0 / head_dim as f64;
        let base = Tensor::full([1], theta, (Kind::Float, device));
        Self { timescale_e2: base.pow(&fraction) }
    }

    /// `cos θ + i·sin θ` of positions `0..len`, `[len, E/2]` complex f32: a table that forwards
    /// look their positions up in.
    pub fn table(&self, len: i64) -> Tensor {
        let positions_tx1 = Tensor::arange(len, (Kind::Float, self.timescale_e2.device()));
        let angle_txe2 = positions_tx1.unsqueeze(-1) / &self.timescale_e2;
        Tensor::complex(&angle_txe2.cos(), &angle_txe2.sin())
    }
}

/// Per-head rotations `[R, H + 2K, E/2]` of fused projections from rows' rotations `[R, E/2]`
/// (rows of [`RotaryEmbedding::table`]): the `rotated` query and key heads turn, the `plain`
/// value heads are multiplied by 1, so that one product rotates the whole projection.
pub fn head_rotations(rotations_rxe2: &Tensor, rotated: i64, plain: i64) -> Tensor {
    let (r, e2) = rotations_rxe2.size2().expect("rotations are [R, E/2]");
    let ones = Tensor::ones([r, plain, e2], (rotations_rxe2.kind(), rotations_rxe2.device()));
    Tensor::cat(&[rotations_rxe2.unsqueeze(1).expand([r, rotated, e2], false), ones], 1)
}

/// Fused projections `[R, F]` rotated by `head_rotations_rxhxe2`, as a new contiguous tensor.
/// The weights put each head's rotate-half pairs side by side (`interleave_halves` at load), so
/// the rotation is one complex product, in f32 whatever the dtype as the reference rotates.
fn rotate(qkv_rxf: &Tensor, head_dim: i64, head_rotations_rxhxe2: &Tensor) -> Tensor {
    let r = qkv_rxf.size()[0];
    let kind = qkv_rxf.kind();
    let x =
        if kind == Kind::Float { qkv_rxf.shallow_clone() } else { qkv_rxf.to_kind(Kind::Float) };
    let pairs = x.view([r, -1, head_dim / 2, 2]).view_as_complex();
    let rotated = (pairs * head_rotations_rxhxe2).view_as_real().view([r, -1]);
    if kind == Kind::Float {
        rotated
    } else {
        rotated.to_kind(kind)
    }
}

/// Gated SiLU MLP with the gate and up projections fused, gate first.
#[derive(Debug)]
pub struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate: i64,
}

impl Mlp {
    pub fn new(vs: nn::Path, dim: i64, intermediate: i64) -> Self {
        Self {
            gate_up_proj: Linear::new(&vs / "gate_up_proj", dim, 2 * intermediate),
            down_proj: Linear::new(&vs / "down_proj", intermediate, dim),
            intermediate,
        }
    }

    /// Lays the projections out for `mm` (after loading).
    pub fn relayout(&mut self) {
        self.gate_up_proj.relayout();
        self.down_proj.relayout();
    }

    /// `residual + down(silu(gate(x)) · up(x))` for rows `[R, D]`.
    pub fn add_to(&self, residual_rxd: &Tensor, xs_rxd: &Tensor) -> Tensor {
        let gate_up = self.gate_up_proj.mm(xs_rxd).view([-1, 2, self.intermediate]);
        let hidden = gate_up.select(1, 0).silu() * gate_up.select(1, 1);
        self.down_proj.addmm(residual_rxd, &hidden)
    }
}

/// Widths of one attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    pub q_in: i64,
    pub kv_in: i64,
    pub out: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
}

/// Multi-head attention with grouped KV heads; query head h reads KV head h / G.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// q, k and v in one `[H·E + 2·K·E, D]` weight for self-attention (see `fuse_qkv`).
    qkv: Option<Linear>,
    pub dims: AttentionDims,
}

impl Attention {
    pub fn new(vs: nn::Path, dims: AttentionDims) -> Self {
        let AttentionDims { q_in, kv_in, out, heads, kv_heads, head_dim } = dims;
        Self {
            q_proj: Linear::new(&vs / "q_proj", q_in, heads * head_dim),
            k_proj: Linear::new(&vs / "k_proj", kv_in, kv_heads * head_dim),
            v_proj: Linear::new(&vs / "v_proj", kv_in, kv_heads * head_dim),
            o_proj: Linear::new(&vs / "o_proj", heads * head_dim, out),
            qkv: None,
            dims,
        }
    }

    /// Lays the projections out for `mm` (after loading).
    pub fn relayout(&mut self) {
        for linear in [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.o_proj] {
            linear.relayout();
        }
    }

    /// Fuses the q, k and v projections once the weights are loaded (self-attention reads one
    /// input for all three): a single matmul per step instead of three. The query and key rows
    /// get their RoPE pairs interleaved; q·k is unchanged, as both move alike.
    pub fn fuse_qkv(&mut self) {
        let qkv = fuse_linears(&mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj]);
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.dims;
        let mut qk_rows = qkv.weight().narrow(0, 0, (heads + kv_heads) * head_dim);
        qk_rows.copy_(&interleave_halves(&qk_rows, head_dim));
        self.qkv = Some(qkv);
    }

    /// Self-attention projections of rows `[R, D]` with RoPE applied ([`head_rotations`]):
    /// `[R, (H + 2K)·E]`, laid out q | k | v, contiguous.
    pub fn qkv(&self, xs_rxd: &Tensor, head_rotations_rxhxe2: &Tensor) -> Tensor {
        let fused = self.qkv.as_ref().expect("self-attention projections are fused at load");
        rotate(&fused.mm(xs_rxd), self.dims.head_dim, head_rotations_rxhxe2)
    }

    /// Fused projections `[N·T, (H + 2K)·E]` as head-major q `[N, H, T, E]`, k and v
    /// `[N, K, T, E]`.
    pub fn split_heads(&self, qkv_rxf: &Tensor, n: i64) -> (Tensor, Tensor, Tensor) {
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.dims;
        let qkv = qkv_rxf.view([n, -1, heads + 2 * kv_heads, head_dim]);
        let part = |first, count| qkv.narrow(2, first, count).transpose(1, 2);
        (part(0, heads), part(heads, kv_heads), part(heads + kv_heads, kv_heads))
    }

    /// `[R, D] → [R, H·E]` queries (RoPE not applied).
    pub fn query(&self, xs_rxd: &Tensor) -> Tensor {
        self.q_proj.mm(xs_rxd)
    }

    /// `[N, S, D] → ([N, S, K, E], [N, S, K, E])` keys and values (RoPE not applied).
    pub fn key_value(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let (n, s, _) = xs.size3().expect("attention input is [N, S, D]");
        let shape = [n, s, self.dims.kv_heads, self.dims.head_dim];
        (self.k_proj.forward(xs).view(shape), self.v_proj.forward(xs).view(shape))
    }

    /// `residual + o_proj(heads)` for attention outputs as rows `[R, H·E]`.
    pub fn project_add(&self, residual_rxd: &Tensor, heads_rxf: &Tensor) -> Tensor {
        self.o_proj.addmm(residual_rxd, heads_rxf)
    }
}

/// SDPA at the reference's scale of 1 for queries `[N, H', T, E]` over keys and values
/// `[N, K', S, E]` (head-major; H' a multiple of K'). `mask` is additive or boolean (true =
/// attend) and broadcasts to `[N, H', T, S]`; `causal` lets query t see keys 0..=t instead.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Tensor {
    let gqa = q.size()[1] != k.size()[1];
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, 1.0, gqa)
}

/// Attention output `[N, H, T, E]` as rows `[N·T, H·E]`.
pub fn heads_to_rows(out_nxhxtxe: &Tensor) -> Tensor {
    let (n, _, t, _) = out_nxhxtxe.size4().expect("attention output is [N, H, T, E]");
    out_nxhxtxe.transpose(1, 2).reshape([n * t, -1])
}
