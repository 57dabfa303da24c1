//! The text encoder: byte embeddings, bidirectional self-attention blocks with RoPE.

use tch::nn::{self, Module};
use tch::Tensor;

use super::config::EncoderConfig;
use super::layers::{Attention, AttentionDims, Mlp, RopeAngles, RotaryEmbedding};
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

    fn forward(&self, xs: &Tensor, rope: &RopeAngles, mask_nx1xsxs: &Tensor) -> Tensor {
        let n = self.pre_sa_norm.forward(xs);
        let (q, k, v) = self.self_attention.self_qkv(&n, rope);
        let attn =
            self.self_attention.attend(&q, &k.transpose(1, 2), &v.transpose(1, 2), mask_nx1xsxs);
        let xs = xs + attn;
        &xs + self.mlp.forward(&self.post_sa_norm.forward(&xs))
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

    /// Fuses each layer's self-attention projections (after loading).
    pub fn fuse_projections(&mut self) {
        self.layers.iter_mut().for_each(|l| l.self_attention.fuse_qkv());
    }

    /// Runs the stack. `mask_nx1xsxs` lets a query attend a key when both are real text or both
    /// padding (of the conditional text, for both rows of a CFG pair).
    pub fn forward(&self, ids_nxs: &Tensor, mask_nx1xsxs: &Tensor) -> Tensor {
        let (n, s) = ids_nxs.size2().expect("encoder input is [N, S]");
        let positions =
            Tensor::arange(s, (tch::Kind::Int64, ids_nxs.device())).expand([n, s], false);
        let rope = self.rope.angles(&positions);
        let mut xs = Tensor::embedding(&self.embedding, ids_nxs, -1, false, false);
        for layer in &self.layers {
            xs = layer.forward(&xs, &rope, mask_nx1xsxs);
        }
        self.norm.forward(&xs)
    }
}
