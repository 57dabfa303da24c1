//! The audio decoder: nine summed channel embeddings, causal self-attention with RoPE and a KV
//! cache, cross-attention over the encoder states (no RoPE in 0626), and a per-channel head.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::cache::{DecoderCache, KvCache};
use super::config::DecoderConfig;
use super::layers::{Attention, AttentionDims, Mlp, RopeAngles, RotaryEmbedding};
use crate::nn_ext::{Linear, RmsNorm};

/// What one decoder forward reads: tokens and positions of rows `first_row..first_row + N` of
/// the cache, which attend their own cache rows up to their position.
#[derive(Debug)]
pub struct DecoderInput<'a> {
    pub tokens_nxtxc: &'a Tensor,
    pub positions_nxt: &'a Tensor,
    pub first_row: i64,
    /// Keys to look at: one more than the largest position in `positions_nxt`.
    pub self_len: i64,
    /// Text positions to look at: the longest text among these rows.
    pub cross_len: i64,
}

/// Masks and angles shared by every layer of one forward.
struct StepContext<'a> {
    rope: RopeAngles,
    positions_nxt: &'a Tensor,
    self_mask_nx1xtxs: Tensor,
    cross_mask_nx1x1xs: Tensor,
    first_row: i64,
    self_len: i64,
    cross_len: i64,
}

#[derive(Debug)]
struct DecoderLayer {
    pre_sa_norm: RmsNorm,
    self_attention: Attention,
    pre_ca_norm: RmsNorm,
    cross_attention: Attention,
    pre_mlp_norm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn new(vs: nn::Path, cfg: &DecoderConfig) -> Self {
        let d = cfg.hidden_size;
        let self_dims = AttentionDims {
            q_in: d,
            kv_in: d,
            out: d,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        let cross_dims = AttentionDims {
            q_in: d,
            kv_in: cfg.cross_hidden_size,
            out: d,
            heads: cfg.cross_num_attention_heads,
            kv_heads: cfg.cross_num_attention_heads,
            head_dim: cfg.cross_head_dim,
        };
        Self {
            pre_sa_norm: RmsNorm::new(&vs / "pre_sa_norm", d, cfg.norm_eps),
            self_attention: Attention::new(&vs / "self_attention", self_dims),
            pre_ca_norm: RmsNorm::new(&vs / "pre_ca_norm", d, cfg.norm_eps),
            cross_attention: Attention::new(&vs / "cross_attention", cross_dims),
            pre_mlp_norm: RmsNorm::new(&vs / "pre_mlp_norm", d, cfg.norm_eps),
            mlp: Mlp::new(&vs / "mlp", d, cfg.intermediate_size),
        }
    }

    fn forward(
        &self,
        xs: &Tensor,
        ctx: &StepContext,
        self_kv: &KvCache,
        cross_kv: &KvCache,
    ) -> Tensor {
        let (n, t, _) = xs.size3().expect("decoder stream is [N, T, D]");
        // Self-attention: write this forward's keys at their positions, then attend the window.
        let h = self.pre_sa_norm.forward(xs);
        let (q, k, v) = self.self_attention.self_qkv(&h, &ctx.rope);
        let k_nxkxtxe = k.transpose(1, 2);
        let v_nxkxtxe = v.transpose(1, 2);
        let (kv_heads, head_dim) = (k_nxkxtxe.size()[1], k_nxkxtxe.size()[3]);
        let index = ctx.positions_nxt.view([n, 1, t, 1]).expand([n, kv_heads, t, head_dim], false);
        let mut k_rows = self_kv.k.narrow(0, ctx.first_row, n);
        let mut v_rows = self_kv.v.narrow(0, ctx.first_row, n);
        let _ = k_rows.scatter_(2, &index, &k_nxkxtxe);
        let _ = v_rows.scatter_(2, &index, &v_nxkxtxe);
        let attn = self.self_attention.attend(
            &q,
            &k_rows.narrow(2, 0, ctx.self_len),
            &v_rows.narrow(2, 0, ctx.self_len),
            &ctx.self_mask_nx1xtxs,
        );
        let xs = xs + attn;
        // Cross-attention over the precomputed encoder keys, no RoPE.
        let q = self.cross_attention.query(&self.pre_ca_norm.forward(&xs));
        let rows = |t: &Tensor| t.narrow(0, ctx.first_row, n).narrow(2, 0, ctx.cross_len);
        let attn = self.cross_attention.attend(
            &q,
            &rows(&cross_kv.k),
            &rows(&cross_kv.v),
            &ctx.cross_mask_nx1x1xs,
        );
        let xs = xs + attn;
        &xs + self.mlp.forward(&self.pre_mlp_norm.forward(&xs))
    }
}

/// Audio token frames → logits `[N, T, C, V]` in f32.
#[derive(Debug)]
pub struct Decoder {
    embeddings: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    logits_dense: Linear,
    rope: RotaryEmbedding,
    channel_offsets_c: Tensor,
    channels: i64,
    vocab: i64,
}

impl Decoder {
    /// `vs` is the `model.decoder` path; the head lives at the checkpoint's top level (`head`).
    pub fn new(vs: nn::Path, head: nn::Path, cfg: &DecoderConfig) -> Self {
        let (c, v, d) = (cfg.num_channels, cfg.vocab_size, cfg.hidden_size);
        let embeddings =
            (&vs / "embeddings" / "embed").var("weight", &[c * v, d], nn::Init::Const(0.));
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&vs / "layers" / i, cfg))
            .collect();
        Self {
            embeddings,
            layers,
            norm: RmsNorm::new(&vs / "norm", d, cfg.norm_eps),
            logits_dense: Linear::new(head / "logits_dense", d, c * v),
            rope: RotaryEmbedding::new(cfg.head_dim, cfg.rope.theta(), vs.device()),
            channel_offsets_c: Tensor::arange(c, (Kind::Int64, vs.device())) * v,
            channels: c,
            vocab: v,
        }
    }

    /// Fuses each layer's self-attention projections (after loading).
    pub fn fuse_projections(&mut self) {
        self.layers.iter_mut().for_each(|l| l.self_attention.fuse_qkv());
    }

    /// Cross-attention keys and values of every layer for encoder states `[N, S, D_e]`,
    /// head-major `[N, H, S, E]`.
    pub fn cross_key_values(&self, enc_nxsxd: &Tensor) -> Vec<(Tensor, Tensor)> {
        self.layers
            .iter()
            .map(|layer| {
                let (k, v) = layer.cross_attention.key_value(enc_nxsxd);
                (k.transpose(1, 2), v.transpose(1, 2))
            })
            .collect()
    }

    /// One forward over `T` frames of `N` cache rows, writing their keys and values into the
    /// cache; returns the final-norm states `[N, T, D]` (prefill needs nothing more).
    pub fn forward(&self, input: &DecoderInput, cache: &DecoderCache) -> Tensor {
        let (n, t, _) = input.tokens_nxtxc.size3().expect("decoder tokens are [N, T, C]");
        let device = input.tokens_nxtxc.device();
        let keys_s = Tensor::arange(input.self_len, (Kind::Int64, device));
        let self_mask =
            keys_s.view([1, 1, 1, -1]).le_tensor(&input.positions_nxt.view([n, 1, t, 1]));
        let cross_mask = cache
            .cross_mask_rxs
            .narrow(0, input.first_row, n)
            .narrow(1, 0, input.cross_len)
            .view([n, 1, 1, input.cross_len]);
        let ctx = StepContext {
            rope: self.rope.angles(input.positions_nxt),
            positions_nxt: input.positions_nxt,
            self_mask_nx1xtxs: self_mask,
            cross_mask_nx1x1xs: cross_mask,
            first_row: input.first_row,
            self_len: input.self_len,
            cross_len: input.cross_len,
        };
        let ids = input.tokens_nxtxc + &self.channel_offsets_c;
        let mut xs = Tensor::embedding(&self.embeddings, &ids, -1, false, false).sum_dim_intlist(
            -2,
            false,
            self.embeddings.kind(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs, &ctx, &cache.self_kv[i], &cache.cross_kv[i]);
        }
        self.norm.forward(&xs)
    }

    /// Logits `[N, T, C, V]` in f32 of final-norm states `[N, T, D]`.
    pub fn logits(&self, states_nxtxd: &Tensor) -> Tensor {
        let (n, t, _) = states_nxtxd.size3().expect("decoder states are [N, T, D]");
        let logits = self.logits_dense.forward(states_nxtxd);
        logits.view([n, t, self.channels, self.vocab]).to_kind(Kind::Float)
    }
}
