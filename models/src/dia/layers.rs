//! Dia's building blocks: rotary embedding, gated MLP, self- and cross-attention.
//!
//! Shape letters: N rows (2·B, CFG pairs), T query frames, S keys, H query heads, K KV heads,
//! E head dim, D model width. Attention scale is 1.0 everywhere: the weights were trained so.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::nn_ext::{fuse_linears, Linear};

/// Rotary position embedding, rotate-half layout, angles and rotation in f32.
#[derive(Debug)]
pub struct RotaryEmbedding {
    timescale_e2: Tensor,
}

/// `cos` and `sin` of the angles of one forward, shared by every layer of a stack.
#[derive(Debug)]
pub struct RopeAngles {
    cos_nxtx1xe2: Tensor,
    sin_nxtx1xe2: Tensor,
}

impl RotaryEmbedding {
    pub fn new(head_dim: i64, theta: f64, device: Device) -> Self {
        // timescale_i = θ^(2i/E), in f32 as the reference computes it.
        let fraction = Tensor::arange(head_dim / 2, (Kind::Float, device)) * 2.0 / head_dim as f64;
        let base = Tensor::full([1], theta, (Kind::Float, device));
        Self { timescale_e2: base.pow(&fraction) }
    }

    /// Angles for integer positions `[N, T]`.
    pub fn angles(&self, positions_nxt: &Tensor) -> RopeAngles {
        let angle =
            positions_nxt.to_kind(Kind::Float).unsqueeze(-1).unsqueeze(-1) / &self.timescale_e2;
        RopeAngles { cos_nxtx1xe2: angle.cos(), sin_nxtx1xe2: angle.sin() }
    }
}

impl RopeAngles {
    /// Rotates `[N, T, H, E]` and returns it in its own dtype.
    pub fn apply(&self, xs: &Tensor) -> Tensor {
        let x = xs.to_kind(Kind::Float);
        let halves = x.chunk(2, -1);
        let (x1, x2) = (&halves[0], &halves[1]);
        let (cos, sin) = (&self.cos_nxtx1xe2, &self.sin_nxtx1xe2);
        let y1 = x1 * cos - x2 * sin;
        let y2 = x2 * cos + x1 * sin;
        Tensor::cat(&[y1, y2], -1).to_kind(xs.kind())
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
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let gate_up = self.gate_up_proj.forward(xs).split(self.intermediate, -1);
        self.down_proj.forward(&(gate_up[0].silu() * &gate_up[1]))
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

/// Multi-head attention with grouped KV heads; query head h reads KV head h / (H / K).
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// `[H·E + 2·K·E, D]`: q, k and v rows in one matrix, for self-attention (see `fuse_qkv`).
    qkv: Option<Tensor>,
    dims: AttentionDims,
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

    /// Fuses the q, k and v projections once the weights are loaded (self-attention reads one
    /// input for all three): a single matmul per step instead of three.
    pub fn fuse_qkv(&mut self) {
        self.qkv = Some(fuse_linears(&mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj]));
    }

    /// Self-attention projections of `[N, T, D]`: one matmul, then RoPE on queries and keys
    /// together. Returns q `[N, T, H, E]`, k and v `[N, T, K, E]`.
    pub fn self_qkv(&self, xs: &Tensor, rope: &RopeAngles) -> (Tensor, Tensor, Tensor) {
        let (n, t, _) = xs.size3().expect("attention input is [N, T, D]");
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.dims;
        let fused = self.qkv.as_ref().expect("self-attention projections are fused at load");
        let qkv = xs.linear::<&Tensor>(fused, None).view([n, t, heads + 2 * kv_heads, head_dim]);
        let qk = rope.apply(&qkv.narrow(2, 0, heads + kv_heads));
        let v = qkv.narrow(2, heads + kv_heads, kv_heads);
        (qk.narrow(2, 0, heads), qk.narrow(2, heads, kv_heads), v)
    }

    /// `[N, T, D] → [N, T, H, E]` queries (RoPE not applied).
    pub fn query(&self, xs: &Tensor) -> Tensor {
        let (n, t, _) = xs.size3().expect("attention input is [N, T, D]");
        self.q_proj.forward(xs).view([n, t, self.dims.heads, self.dims.head_dim])
    }

    /// `[N, S, D] → ([N, S, K, E], [N, S, K, E])` keys and values (RoPE not applied).
    pub fn key_value(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let (n, s, _) = xs.size3().expect("attention input is [N, S, D]");
        let shape = [n, s, self.dims.kv_heads, self.dims.head_dim];
        (self.k_proj.forward(xs).view(shape), self.v_proj.forward(xs).view(shape))
    }

    /// Attends `q [N, T, H, E]` over `k, v [N, K, S, E]` (keys already head-major), mask
    /// broadcastable to `[N, 1, T, S]`, true = attend; returns `[N, T, D]`.
    pub fn attend(
        &self,
        q_nxtxhxe: &Tensor,
        k_nxkxsxe: &Tensor,
        v_nxkxsxe: &Tensor,
        mask: &Tensor,
    ) -> Tensor {
        let (n, t, _, _) = q_nxtxhxe.size4().expect("query is [N, T, H, E]");
        let q_nxhxtxe = q_nxtxhxe.transpose(1, 2);
        let gqa = self.dims.kv_heads != self.dims.heads;
        let out_nxhxtxe = Tensor::scaled_dot_product_attention(
            &q_nxhxtxe,
            k_nxkxsxe,
            v_nxkxsxe,
            Some(mask),
            0.0,
            false,
            1.0,
            gqa,
        );
        let out = out_nxhxtxe.transpose(1, 2).reshape([n, t, self.dims.heads * self.dims.head_dim]);
        self.o_proj.forward(&out)
    }
}
