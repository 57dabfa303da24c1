//! The audio decoder: nine summed channel embeddings, causal self-attention with RoPE and a KV
//! cache, cross-attention over the encoder states (no RoPE in 0626), and a per-channel head.
//!
//! Two forwards: `prefill` writes a new request's first frames into its cache rows, `decode`
//! runs one frame of every row. A decode step makes its masks, rotations and cache-write
//! indices once and shares them with all layers; the cache views come from [`Windows`].

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::cache::{additive_mask, DecoderCache, KvCache, Windows};
use super::config::DecoderConfig;
use super::layers::{
    attention, head_rotations, heads_to_rows, Attention, AttentionDims, DecodeKv, Mlp,
    RotaryEmbedding,
};
use crate::nn_ext::{Linear, RmsNorm};
use crate::parallel;

/// One decode step: rows `0..n` of the cache, one frame each, at their own positions.
#[derive(Debug)]
pub struct DecodeInput<'a> {
    /// `[n, C]` token ids.
    pub tokens_nxc: &'a Tensor,
    /// `[n]` positions.
    pub positions_n: &'a Tensor,
    pub windows: &'a Windows,
}

/// What every layer of one decode step shares.
struct StepContext {
    head_rotations_nxhxe2: Tensor,
    /// Where each row's new key and value go: its position, `[2, n, K, 1, E]`.
    write_index: Tensor,
    /// −∞ for keys past the row's position, as [`DecodeKv::mask`] makes it.
    self_mask: Tensor,
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

    /// One frame of rows `[n, D]`, reading layer `layer` of `windows`.
    fn decode(
        &self,
        xs_nxd: Tensor,
        step: &StepContext,
        self_kv: &KvCache,
        windows: &Windows,
        layer: usize,
    ) -> Tensor {
        let n = xs_nxd.size()[0];
        let AttentionDims { heads, kv_heads, head_dim, .. } = self.self_attention.dims;
        let (group, e) = (heads / kv_heads, head_dim);
        let h = self.pre_sa_norm.forward(&xs_nxd);
        let qkv = self.self_attention.qkv(&h, &step.head_rotations_nxhxe2);
        // Views of the fused rows `[n, F]` by strides, one operator each where narrow + view
        // take four. This frame's keys and values `[2, n, K, 1, E]` go to each row's position,
        // then the rows attend. Grouped-query heads are folded into the query axis: KV head k's
        // G query heads are its G query rows `[n, K, G, E]` (head h = k·G + g), so no key or
        // value is repeated.
        let f = qkv.size()[1];
        let new_kv = qkv.as_strided([2, n, kv_heads, 1, e], [kv_heads * e, f, e, e, 1], heads * e);
        let _ = self_kv.kv.shallow_clone().scatter_(3, &step.write_index, &new_kv);
        let q = qkv.as_strided([n, kv_heads, group, e], [f, group * e, e, 1], 0);
        let self_window = &windows.self_kv[layer];
        let out = self_window.attend(&q, Some(&step.self_mask), windows.self_query.as_ref());
        let xs = self.self_attention.project_add(xs_nxd, &out);

        let cross = self.cross_attention.dims;
        let q = self.cross_attention.query(&self.pre_ca_norm.forward(&xs)).view([
            n,
            cross.heads,
            1,
            cross.head_dim,
        ]);
        let out = windows.cross_kv[layer].attend(&q, windows.cross_mask.as_ref(), None);
        let xs = self.cross_attention.project_add(xs, &out);
        let normed = self.pre_mlp_norm.forward(&xs);
        self.mlp.add_to(xs, &normed)
    }

    /// Frames `0..t` of rows `first_row..first_row + n` (`[n·t, D]`), causal as the reference's
    /// prefill; their keys and values are written to the cache.
    fn prefill(
        &self,
        xs_rxd: Tensor,
        input: &PrefillInput,
        self_kv: &KvCache,
        cross_kv: &KvCache,
    ) -> Tensor {
        let PrefillInput { n, t, first_row, text_len, ref head_rotations_rxhxe2 } = *input;
        let qkv =
            self.self_attention.qkv(&self.pre_sa_norm.forward(&xs_rxd), head_rotations_rxhxe2);
        let (q, k, v) = self.self_attention.split_heads(&qkv, n);
        for (cache, new) in [(&self_kv.k, &k), (&self_kv.v, &v)] {
            cache.narrow(0, first_row, n).narrow(2, 0, t).copy_(new);
        }
        let heads = heads_to_rows(&attention(&q, &k, &v, None, true));
        let xs = self.self_attention.project_add(xs_rxd, &heads);

        let cross = self.cross_attention.dims;
        let q = self
            .cross_attention
            .query(&self.pre_ca_norm.forward(&xs))
            .view([n, t, cross.heads, cross.head_dim])
            .transpose(1, 2);
        // Both rows of a request hold its text, so the window has no padding to mask.
        let window = |c: &Tensor| c.narrow(0, first_row, n).narrow(2, 0, text_len);
        let out = attention(&q, &window(&cross_kv.k), &window(&cross_kv.v), None, false);
        let xs = self.cross_attention.project_add(xs, &heads_to_rows(&out));
        let normed = self.pre_mlp_norm.forward(&xs);
        self.mlp.add_to(xs, &normed)
    }
}

/// A prefill's rows and windows.
struct PrefillInput {
    n: i64,
    t: i64,
    first_row: i64,
    text_len: i64,
    head_rotations_rxhxe2: Tensor,
}

/// Audio token frames → logits `[N, C, V]` in f32.
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
    /// Multiply-adds per row of a layer's largest product (the MLP's gate and up).
    layer_product: i64,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
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
            layer_product: d * 2 * cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        }
    }

    /// Fuses each layer's self-attention projections, folds every norm's weight into the
    /// projections that read it, then stores every projection as this machine multiplies it
    /// fastest ([`Linear::choose_plan`]), in that order: plans are chosen for final weights
    /// (after loading).
    pub fn prepare_projections(&mut self) {
        for layer in &mut self.layers {
            layer.self_attention.fuse_qkv();
            layer.pre_sa_norm.fold_into(&mut [layer.self_attention.query_input_projection()]);
            layer.pre_ca_norm.fold_into(&mut [layer.cross_attention.query_input_projection()]);
            layer.pre_mlp_norm.fold_into(&mut [layer.mlp.input_projection()]);
            layer.self_attention.choose_plans();
            layer.cross_attention.choose_plans();
            layer.mlp.choose_plans();
        }
        self.norm.fold_into(&mut [&mut self.logits_dense]);
        self.logits_dense.choose_plan();
    }

    /// The rotations of every self-attention head for rows' rotations `[R, E/2]`.
    fn head_rotations(&self, rotations_rxe2: &Tensor) -> Tensor {
        head_rotations(rotations_rxe2, self.heads + self.kv_heads, self.kv_heads)
    }

    /// RoPE rotations of positions `0..len`, for a cache.
    pub fn rotations(&self, len: i64) -> Tensor {
        self.rope.table(len)
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

    /// Summed channel embeddings of `[R, C]` token ids: `[R, D]`.
    fn embed(&self, tokens_rxc: &Tensor) -> Tensor {
        let ids = tokens_rxc + &self.channel_offsets_c;
        Tensor::embedding(&self.embeddings, &ids, -1, false, false).sum_dim_intlist(
            1,
            false,
            self.embeddings.kind(),
        )
    }

    /// Runs frames `0..T` of `[N, T, C]` tokens through rows `first_row..first_row + N`,
    /// writing their keys and values; their logits are never needed, so none are made.
    pub fn prefill(
        &self,
        tokens_nxtxc: &Tensor,
        cache: &DecoderCache,
        first_row: i64,
        text_len: i64,
    ) {
        let (n, t, c) = tokens_nxtxc.size3().expect("decoder tokens are [N, T, C]");
        let input = PrefillInput {
            n,
            t,
            first_row,
            text_len,
            head_rotations_rxhxe2: self
                .head_rotations(&cache.rotations_txe2.narrow(0, 0, t).repeat([n, 1])),
        };
        let mut xs = self.embed(&tokens_nxtxc.view([n * t, c]));
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.prefill(xs, &input, &cache.self_kv[i], &cache.cross_kv[i]);
        }
    }

    /// One frame of every row of `input`, keys and values written at the rows' positions;
    /// returns the final-norm states `[n, D]`.
    pub fn decode(&self, input: &DecodeInput, cache: &DecoderCache) -> Tensor {
        let DecodeInput { tokens_nxc, positions_n, windows } = *input;
        let (n, window, _) = windows.key;
        let positions_nx1 = positions_n.view([n, 1]);
        let future_nxs = windows.keys_s.view([1, window]).gt_tensor(&positions_nx1);
        let step = StepContext {
            head_rotations_nxhxe2: self
                .head_rotations(&cache.rotations_txe2.index_select(0, positions_n)),
            write_index: positions_n
                .view([1, n, 1, 1, 1])
                .expand([2, n, self.kv_heads, 1, self.head_dim], false),
            self_mask: DecodeKv::mask(
                &additive_mask(&future_nxs, self.embeddings.kind()),
                self.kv_heads,
                self.heads / self.kv_heads,
            ),
        };
        let xs = parallel::sized(n * self.layer_product, || {
            let embedded = self.embed(tokens_nxc);
            self.layers.iter().enumerate().fold(embedded, |xs, (i, layer)| {
                layer.decode(xs, &step, &cache.self_kv[i], windows, i)
            })
        });
        self.norm.forward(&xs)
    }

    /// Logits `[N, C, V]` in f32 of final-norm states `[N, D]`.
    pub fn logits(&self, states_nxd: &Tensor) -> Tensor {
        let (n, d) = states_nxd.size2().expect("final-norm states are [N, D]");
        let logits = parallel::sized(n * d * self.channels * self.vocab, || {
            self.logits_dense.product(states_nxd)
        })
        .view([-1, self.channels, self.vocab]);
        if logits.kind() == Kind::Float {
            logits
        } else {
            logits.to_kind(Kind::Float)
        }
    }
}
