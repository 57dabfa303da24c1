//! Dia's building blocks: rotary embedding, gated MLP, self- and cross-attention.
//!
//! Activations are rows `[R, D]` (R = N·T: rows of the batch times frames), so that every
//! projection is one `mm`. Shape letters: N rows (2·B, CFG pairs), T query frames, S keys,
//! H query heads, K KV heads, G = H / K query heads per KV head, E head dim, D model width.
//! Attention scale is 1.0 everywhere: the weights were trained so.

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::nn_ext::{fuse_linears, interleave_halves, Linear};
use crate::product_plan::Form;

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

/// Fused projections `[R, F]` rotated by `head_rotations_rxhxe2`, in place where they are f32.
/// The weights put each head's rotate-half pairs side by side (`interleave_halves` at load), so
/// the rotation is one complex product, in f32 whatever the dtype as the reference rotates.
fn rotate(qkv_rxf: Tensor, head_dim: i64, head_rotations_rxhxe2: &Tensor) -> Tensor {
    let (r, kind) = (qkv_rxf.size()[0], qkv_rxf.kind());
    let x = if kind == Kind::Float { qkv_rxf } else { qkv_rxf.to_kind(Kind::Float) };
    let _ = x.view([r, -1, head_dim / 2, 2]).view_as_complex().g_mul_(head_rotations_rxhxe2);
    if kind == Kind::Float {
        x
    } else {
        x.to_kind(kind)
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

    /// Chooses how each projection is stored and multiplied (after loading and folding).
    pub fn choose_plans(&mut self) {
        self.gate_up_proj.choose_plan();
        self.down_proj.choose_plan();
    }

    /// The projection that reads the MLP's input.
    pub fn input_projection(&mut self) -> &mut Linear {
        &mut self.gate_up_proj
    }

    /// `residual + down(silu(gate(x)) · up(x))` for rows `[R, D]`, as rows `[R, D]` (in the
    /// residual's storage or a transposed view: [`Linear::add_rows`]).
    pub fn add_to(&self, residual_rxd: Tensor, xs_rxd: &Tensor) -> Tensor {
        let (i, r) = (self.intermediate, xs_rxd.size()[0]);
        // `[R, 2I]`, by rows or a transposed view: the gate's columns, then the up
        // projection's, each a view by strides.
        let gate_up = self.gate_up_proj.product(xs_rxd);
        let stride = gate_up.stride();
        let gate = gate_up.as_strided([r, i], stride.as_slice(), 0).silu();
        let up = gate_up.as_strided([r, i], stride.as_slice(), i * stride[1]);
        let hidden_rxi = if self.gate_up_proj.form(r) == Form::Columns {
            // Written by rows (`gate · up` would follow the inputs' `[I, R]` storage): MKL's
            // `W xᵀ` and `x W` both read them fastest so.
            let hidden_rxi = Tensor::empty([r, i], (gate.kind(), gate.device()));
            gate.mul_out(&hidden_rxi, &up)
        } else {
            gate * up
        };
        self.down_proj.add_rows(residual_rxd, &hidden_rxi)
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

    /// Chooses how the query and output projections are stored and multiplied (after loading,
    /// [`Attention::fuse_qkv`] and folding norms into them); keys and values of cross-attention
    /// are projected once per request, with libtorch's `linear`.
    pub fn choose_plans(&mut self) {
        self.query_input_projection().choose_plan();
        self.o_proj.choose_plan();
    }

    /// Fuses the q, k and v projections once the weights are loaded (self-attention reads one
    /// input for all three): a single matmul per step instead of three; the parts are emptied.
    /// The query and key rows get their RoPE pairs interleaved; q·k is unchanged, as both move
    /// alike.
    pub fn fuse_qkv(&mut self) {
        let qkv = fuse_linears(&mut [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj]);
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.dims;
        let mut qk_rows = qkv.weight().narrow(0, 0, (heads + kv_heads) * head_dim);
        qk_rows.copy_(&interleave_halves(&qk_rows, head_dim));
        self.qkv = Some(qkv);
    }

    /// The projection that reads the queries' input: q, k and v fused where they are (self-
    /// attention), else q (cross-attention, whose keys and values read the encoder).
    pub fn query_input_projection(&mut self) -> &mut Linear {
        self.qkv.as_mut().unwrap_or(&mut self.q_proj)
    }

    /// Self-attention projections of rows `[R, D]` with RoPE applied ([`head_rotations`]):
    /// `[R, (H + 2K)·E]`, laid out q | k | v, contiguous.
    pub fn qkv(&self, xs_rxd: &Tensor, head_rotations_rxhxe2: &Tensor) -> Tensor {
        let fused = self.qkv.as_ref().expect("self-attention projections are fused at load");
        rotate(fused.rows(xs_rxd), self.dims.head_dim, head_rotations_rxhxe2)
    }

    /// Fused projections `[N·T, (H + 2K)·E]` as head-major q `[N, H, T, E]`, k and v
    /// `[N, K, T, E]`.
    pub fn split_heads(&self, qkv_rxf: &Tensor, n: i64) -> (Tensor, Tensor, Tensor) {
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.dims;
        let qkv = qkv_rxf.view([n, -1, heads + 2 * kv_heads, head_dim]);
        let part = |first, count| qkv.narrow(2, first, count).transpose(1, 2);
        (part(0, heads), part(heads, kv_heads), part(heads + kv_heads, kv_heads))
    }

    /// `[R, D] → [R, H·E]` queries (RoPE not applied), contiguous.
    pub fn query(&self, xs_rxd: &Tensor) -> Tensor {
        self.q_proj.rows(xs_rxd)
    }

    /// `[N, S, D] → ([N, S, K, E], [N, S, K, E])` keys and values (RoPE not applied).
    pub fn key_value(&self, xs: &Tensor) -> (Tensor, Tensor) {
        let (n, s, _) = xs.size3().expect("attention input is [N, S, D]");
        let shape = [n, s, self.dims.kv_heads, self.dims.head_dim];
        (self.k_proj.forward(xs).view(shape), self.v_proj.forward(xs).view(shape))
    }

    /// `residual + o_proj(heads)` for attention outputs as rows `[R, H·E]` (by rows in the
    /// residual's storage: [`Linear::add_rows`]).
    pub fn project_add(&self, residual_rxd: Tensor, heads_rxf: &Tensor) -> Tensor {
        self.o_proj.add_rows(residual_rxd, heads_rxf)
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

/// The keys and values of one layer as decode steps read them (one query frame per row): in f32
/// by batched products over (row, KV head), `baddbmm` + softmax + `bmm`, about 8 operators where
/// SDPA's fused CPU kernel dispatches about 20 for one query frame; in half precision through
/// SDPA, whose fused kernels keep the scores in f32 rather than rounding them to the dtype.
#[derive(Debug)]
pub enum DecodeKv {
    /// Keys transposed, `[n·K, E, S]`, and values `[n·K, S, E]`.
    Batched { k_t: Tensor, v: Tensor },
    /// Head-major keys and values `[n, K, S, E]`.
    Fused { k: Tensor, v: Tensor },
}

impl DecodeKv {
    /// Views of head-major windows `[n, K, S, E]` of a cache whose row and head axes are
    /// contiguous with each other (as [`super::cache::KvCache`]'s are).
    pub fn new(k_nxkxsxe: &Tensor, v_nxkxsxe: &Tensor) -> Self {
        if !Self::batched(k_nxkxsxe.kind()) {
            return Self::Fused { k: k_nxkxsxe.shallow_clone(), v: v_nxkxsxe.shallow_clone() };
        }
        let (n, heads, s, e) = k_nxkxsxe.size4().expect("a key window is [n, K, S, E]");
        Self::Batched {
            k_t: k_nxkxsxe.view([n * heads, s, e]).transpose(1, 2),
            v: v_nxkxsxe.view([n * heads, s, e]),
        }
    }

    fn batched(kind: Kind) -> bool {
        kind == Kind::Float
    }

    /// An additive mask `[n, S]` in the form [`DecodeKv::attend`] takes for `heads` KV heads of
    /// `group` queries each: `[n·K, G, S]` batched (its full size, which `baddbmm` adds without
    /// expanding it), `[n, 1, 1, S]` fused. Made once per step or batch, not per layer.
    pub fn mask(additive_nxs: &Tensor, heads: i64, group: i64) -> Tensor {
        let (n, s) = additive_nxs.size2().expect("a decode mask is [n, S]");
        let mask = additive_nxs.view([n, 1, 1, s]);
        if Self::batched(additive_nxs.kind()) {
            mask.expand([n, heads, group, s], false).reshape([n * heads, group, s])
        } else {
            mask
        }
    }

    /// A buffer for [`DecodeKv::attend`]'s `staging` where decode steps attend in batches.
    pub fn staging(shape_nxkxgxe: [i64; 4], kind: Kind, device: Device) -> Option<Tensor> {
        Self::batched(kind).then(|| Tensor::zeros(shape_nxkxgxe, (kind, device)))
    }

    /// Queries `[n, K, G, E]` (G query heads per KV head, head h = k·G + g) over these keys and
    /// values, at the reference's scale of 1: rows `[n, K·G·E]`. Batched, queries whose row
    /// and head axes do not merge are copied into `staging` ([`DecodeKv::staging`]) first: one
    /// operator, where `reshape` takes five.
    pub fn attend(
        &self,
        q_nxkxgxe: &Tensor,
        mask: Option<&Tensor>,
        staging: Option<&Tensor>,
    ) -> Tensor {
        let (n, heads, group, e) = q_nxkxgxe.size4().expect("decode queries are [n, K, G, E]");
        match self {
            Self::Batched { k_t, v } => {
                let stride = q_nxkxgxe.stride();
                let q = if stride[0] == heads * stride[1] {
                    q_nxkxgxe.view([n * heads, group, e])
                } else {
                    let staging = staging.expect("unmergeable queries come with a staging buffer");
                    staging.shallow_clone().copy_(q_nxkxgxe);
                    staging.view([n * heads, group, e])
                };
                let scores = match mask {
                    Some(mask) => mask.baddbmm(&q, k_t, 1, 1),
                    None => q.bmm(k_t),
                };
                scores.internal_softmax(-1, false).bmm(v).view([n, -1])
            }
            Self::Fused { k, v } => attention(q_nxkxgxe, k, v, mask, false).reshape([n, -1]),
        }
    }
}

/// Attention output `[N, H, T, E]` as rows `[N·T, H·E]`.
pub fn heads_to_rows(out_nxhxtxe: &Tensor) -> Tensor {
    let (n, _, t, _) = out_nxhxtxe.size4().expect("attention output is [N, H, T, E]");
    out_nxhxtxe.transpose(1, 2).reshape([n * t, -1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product_plan::Plan;

    #[test]
    fn the_mlp_is_the_same_in_every_plan_of_its_projections() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(3);
        let (dim, inner, rows) = (64, 96, 3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut mlp = Mlp::new(vs.root(), dim, inner);
        for (_, mut var) in vs.variables() {
            var.copy_(&(Tensor::randn(var.size(), (Kind::Float, Device::Cpu)) * 0.05));
        }
        let w = |name: &str| vs.variables()[name].copy();
        let (gate_up_w, down_w) = (w("gate_up_proj.weight"), w("down_proj.weight"));
        let xs = Tensor::randn([rows, dim], (Kind::Float, Device::Cpu));
        let gate_up = xs.mm(&gate_up_w.tr());
        let hidden = gate_up.narrow(1, 0, inner).silu() * gate_up.narrow(1, inner, inner);
        let residual = Tensor::randn([rows, dim], (Kind::Float, Device::Cpu));
        let expected = &residual + hidden.mm(&down_w.tr());
        let plans = [
            Plan::InOut,
            Plan::BY_ROWS,
            Plan::OutIn([Form::Columns; 3]),
            Plan::OutIn([Form::OneDnn; 3]),
            Plan::Packed { rows: 8 },
        ];
        for gate_up_plan in plans {
            for down_plan in plans {
                mlp.gate_up_proj.set_plan(gate_up_plan);
                mlp.down_proj.set_plan(down_plan);
                let out = mlp.add_to(residual.copy(), &xs);
                assert_eq!(out.size(), [rows, dim]);
                let diff = (&out - &expected).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "gate/up {gate_up_plan:?}, down {down_plan:?}: off by {diff}");
            }
        }
    }

    #[test]
    fn batched_decode_attention_is_sdpa_on_the_same_views() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let (n, heads, group, s, e) = (3, 2, 4, 5, 8);
        // A cache with room beyond the window, as the decoder's is.
        let cache = Tensor::randn([2, n + 1, heads, s + 3, e], (Kind::Float, Device::Cpu));
        let window = |i: i64| cache.get(i).narrow(0, 0, n).narrow(2, 0, s);
        let (k, v) = (window(0), window(1));
        let q = Tensor::randn([n, heads * group * e + 7], (Kind::Float, Device::Cpu))
            .narrow(1, 0, heads * group * e)
            .view([n, heads, group, e]);
        // Rows see 2, 1 and all 5 keys, as rows at different positions do.
        let t = true;
        let blocked = Tensor::from_slice(
            &[[false, false, t, t, t], [false, t, t, t, t], [false; 5]].concat(),
        )
        .view([n, s]);
        let additive = Tensor::zeros([n, s], (Kind::Float, Device::Cpu))
            .masked_fill(&blocked, f64::NEG_INFINITY);
        let batched = DecodeKv::new(&k, &v);
        assert!(matches!(batched, DecodeKv::Batched { .. }));
        let fused = DecodeKv::Fused { k: k.shallow_clone(), v: v.shallow_clone() };
        let staging = DecodeKv::staging([n, heads, group, e], Kind::Float, Device::Cpu);
        let batched_mask = DecodeKv::mask(&additive, heads, group);
        for (batched_mask, fused_mask) in
            [(Some(batched_mask), Some(additive.view([n, 1, 1, s]))), (None, None)]
        {
            // The queries are a view whose row and head axes do not merge, as the decoder's are.
            let ours = batched.attend(&q, batched_mask.as_ref(), staging.as_ref());
            let contiguous = batched.attend(&q.contiguous(), batched_mask.as_ref(), None);
            assert!(ours.allclose(&contiguous, 0.0, 0.0, false));
            let sdpa = fused.attend(&q, fused_mask.as_ref(), None);
            assert_eq!(ours.size(), [n, heads * group * e]);
            let diff = (&ours - &sdpa).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "batched and fused attention differ by {diff}");
        }
    }
}
