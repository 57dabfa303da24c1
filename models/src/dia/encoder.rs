//! The text encoder: byte embeddings, bidirectional self-attention blocks with RoPE.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::EncoderConfig;
use super::layers::{
    attention, head_rotations, heads_to_rows, Attention, AttentionDims, Mlp, RotaryEmbedding,
};
use crate::nn_ext::RmsNorm;

#[derive(Debug)]
struct EncoderLayer {
    pre_sa_norm: RmsNorm,
    self_attention: Attention,
    /// The pre-MLP norm, despite its name.
    post_sa_norm: RmsNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(vs: nn::Path, cfg: &EncoderConfig) -> Self {
        let dims = AttentionDims {
            q_in: cfg.hidden_size,
            kv_in: cfg.hidden_size,
            out: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        Self {
            pre_sa_norm: RmsNorm::new(&vs / "pre_sa_norm", cfg.hidden_size, cfg.norm_eps),
            self_attention: Attention::new(&vs / "self_attention", dims),
            post_sa_norm: RmsNorm::new(&vs / "post_sa_norm", cfg.hidden_size, cfg.norm_eps),
            mlp: Mlp::new(&vs / "mlp", cfg.hidden_size, cfg.intermediate_size),
        }
    }

    /// Rows `[N·S, D]` of `n` texts.
    fn forward(
        &self,
        xs_rxd: Tensor,
        n: i64,
        head_rotations_rxhxe2: &Tensor,
        mask_nx1xsxs: &Tensor,
    ) -> Tensor {
        let qkv =
            self.self_attention.qkv(&self.pre_sa_norm.forward(&xs_rxd), head_rotations_rxhxe2);
        let (q, k, v) = self.self_attention.split_heads(&qkv, n);
        let heads = heads_to_rows(&attention(&q, &k, &v, Some(mask_nx1xsxs), false));
        let xs = self.self_attention.project_add(xs_rxd, &heads);
        let normed = self.post_sa_norm.forward(&xs);
        self.mlp.add_to(xs, &normed)
    }
}

/// Byte tokens `[N, S]` → encoder states `[N, S, D]`.
#[derive(Debug)]
pub struct Encoder {
    embedding: Tensor,
    layers: Vec<EncoderLayer>,
    norm: RmsNorm,
    rope: RotaryEmbedding,
}

impl Encoder {
    pub fn new(vs: nn::Path, cfg: &EncoderConfig) -> Self {
        let embedding = (&vs / "embedding").var(
            "weight",
            &[cfg.vocab_size, cfg.hidden_size],
            nn::Init::Const(0.),
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(&vs / "layers" / i, cfg))
            .collect();
        Self {
            embedding,
            layers,
            norm: RmsNorm::new(&vs / "norm", cfg.hidden_size, cfg.norm_eps),
            rope: RotaryEmbedding::new(cfg.head_dim, cfg.rope.theta(), vs.device()),
        }
    }

    /// Fuses each layer's self-attention projections, folds the layers' norm weights into the
    /// projections that read them, then stores every projection as this machine multiplies it
    /// fastest (after loading). The final norm's output feeds every decoder layer's
    /// cross-attention, so it multiplies its weight in.
    pub fn prepare_projections(&mut self) {
        for layer in &mut self.layers {
            layer.self_attention.fuse_qkv();
            layer.pre_sa_norm.fold_into(&mut [layer.self_attention.query_input_projection()]);
            layer.post_sa_norm.fold_into(&mut [layer.mlp.input_projection()]);
            layer.self_attention.choose_plans();
            layer.mlp.choose_plans();
        }
        self.norm.prepare();
    }

    /// Runs the stack. `mask_nx1xsxs` lets a query attend a key when both are real text or both
    /// padding (of the conditional text, for both rows of a CFG pair).
    pub fn forward(&self, ids_nxs: &Tensor, mask_nx1xsxs: &Tensor) -> Tensor {
        let (n, s) = ids_nxs.size2().expect("encoder input is [N, S]");
        let dims = self.layers[0].self_attention.dims;
        let rotations = head_rotations(
            &self.rope.table(s).repeat([n, 1]),
            dims.heads + dims.kv_heads,
            dims.kv_heads,
        );
        let mut xs = Tensor::embedding(&self.embedding, &ids_nxs.view([n * s]), -1, false, false);
        for layer in &self.layers {
            xs = layer.forward(xs, n, &rotations, mask_nx1xsxs);
        }
        self.norm.forward(&xs).view([n, s, -1])
    }
}
