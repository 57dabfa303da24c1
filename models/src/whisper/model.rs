//! Whisper's transformer (openai/whisper `model.py`), in transformers naming: a convolutional
//! stem and pre-norm self-attention blocks over the mel window, and a pre-norm decoder with
//! self-attention over its tokens (KV-cached), cross-attention over the encoder output and an
//! output projection tied to the token embedding. GELU is the exact one; LayerNorm eps 1e-5.
//!
//! Shape letters: B batch, F mel frames, T tokens or positions, S keys, H heads, E head dim,
//! D model width, V vocabulary.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::config::WhisperConfig;

fn layer_norm(vs: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(vs, vec![dim], Default::default())
}

/// Multi-head attention; the key projection has no bias.
#[derive(Debug)]
struct Attention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(vs: nn::Path, dim: i64, heads: i64) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            q_proj: nn::linear(&vs / "q_proj", dim, dim, Default::default()),
            k_proj: nn::linear(&vs / "k_proj", dim, dim, no_bias),
            v_proj: nn::linear(&vs / "v_proj", dim, dim, Default::default()),
            out_proj: nn::linear(&vs / "out_proj", dim, dim, Default::default()),
            heads,
        }
    }

    /// `[B, T, D] → [B, H, T, E]`.
    fn split_heads(&self, xs: &Tensor) -> Tensor {
        let (b, t, d) = xs.size3().expect("attention input is [B, T, D]");
        xs.view([b, t, self.heads, d / self.heads]).transpose(1, 2)
    }

    /// Keys and values `[B, H, S, E]` of `[B, S, D]`.
    fn key_value(&self, xs: &Tensor) -> (Tensor, Tensor) {
        (self.split_heads(&self.k_proj.forward(xs)), self.split_heads(&self.v_proj.forward(xs)))
    }

    /// Queries of `xs [B, T, D]` over `k, v [B, H, S, E]` (scale 1/√E); `mask` broadcastable to
    /// `[B, H, T, S]`, true = attend. Returns `[B, T, D]`.
    fn attend(&self, xs: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let q = self.split_heads(&self.q_proj.forward(xs));
        let out = Tensor::scaled_dot_product_attention(&q, k, v, mask, 0.0, false, None, false);
        let (b, h, t, e) = out.size4().expect("attention output is [B, H, T, E]");
        self.out_proj.forward(&out.transpose(1, 2).reshape([b, t, h * e]))
    }
}

/// `fc2(gelu(fc1(x)))`.
#[derive(Debug)]
struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Mlp {
    fn new(vs: &nn::Path, dim: i64, hidden: i64) -> Self {
        Self {
            fc1: nn::linear(vs / "fc1", dim, hidden, Default::default()),
            fc2: nn::linear(vs / "fc2", hidden, dim, Default::default()),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(xs).gelu("none"))
    }
}

#[derive(Debug)]
struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: nn::LayerNorm,
    mlp: Mlp,
    final_layer_norm: nn::LayerNorm,
}

impl EncoderLayer {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let h = self.self_attn_layer_norm.forward(xs);
        let (k, v) = self.self_attn.key_value(&h);
        let xs = xs + self.self_attn.attend(&h, &k, &v, None);
        &xs + self.mlp.forward(&self.final_layer_norm.forward(&xs))
    }
}

/// Mel window `[B, n_mels, F]` → states `[B, F / 2, D]`.
#[derive(Debug)]
pub struct Encoder {
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    /// Sinusoidal positions `[max_source_positions, D]`, stored in the checkpoint.
    embed_positions: Tensor,
    layers: Vec<EncoderLayer>,
    layer_norm: nn::LayerNorm,
}

impl Encoder {
    pub fn new(vs: nn::Path, cfg: &WhisperConfig) -> Self {
        let d = cfg.d_model;
        let conv = |stride| nn::ConvConfig { stride, padding: 1, ..Default::default() };
        let layers = (0..cfg.encoder_layers)
            .map(|i| {
                let vs = &vs / "layers" / i;
                EncoderLayer {
                    self_attn: Attention::new(&vs / "self_attn", d, cfg.encoder_attention_heads),
                    self_attn_layer_norm: layer_norm(&vs / "self_attn_layer_norm", d),
                    mlp: Mlp::new(&vs, d, cfg.encoder_ffn_dim),
                    final_layer_norm: layer_norm(&vs / "final_layer_norm", d),
                }
            })
            .collect();
        Self {
            conv1: nn::conv1d(&vs / "conv1", cfg.num_mel_bins, d, 3, conv(1)),
            conv2: nn::conv1d(&vs / "conv2", d, d, 3, conv(2)),
            embed_positions: (&vs / "embed_positions").var(
                "weight",
                &[cfg.max_source_positions, d],
                nn::Init::Const(0.),
            ),
            layers,
            layer_norm: layer_norm(&vs / "layer_norm", d),
        }
    }

    pub fn forward(&self, mel_bxmxf: &Tensor) -> Tensor {
        let xs = self.conv1.forward(mel_bxmxf).gelu("none");
        let xs = self.conv2.forward(&xs).gelu("none").transpose(1, 2);
        let mut xs = &xs + self.embed_positions.narrow(0, 0, xs.size()[1]);
        for layer in &self.layers {
            xs = layer.forward(&xs);
        }
        self.layer_norm.forward(&xs)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: nn::LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: nn::LayerNorm,
    mlp: Mlp,
    final_layer_norm: nn::LayerNorm,
}

/// What the decoder keeps between steps of one sequence batch: each layer's self-attention keys
/// and values so far and its cross-attention keys and values (computed once), and the position
/// of the next token.
#[derive(Debug)]
pub struct DecoderState {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    offset: i64,
}

/// Tokens `[B, T]` → next-token logits, with the encoder output as memory.
#[derive(Debug)]
pub struct Decoder {
    embed_tokens: Tensor,
    /// Learned positions `[max_target_positions, D]`.
    embed_positions: Tensor,
    layers: Vec<DecoderLayer>,
    layer_norm: nn::LayerNorm,
}

impl Decoder {
    pub fn new(vs: nn::Path, cfg: &WhisperConfig) -> Self {
        let d = cfg.d_model;
        let heads = cfg.decoder_attention_heads;
        let layers = (0..cfg.decoder_layers)
            .map(|i| {
                let vs = &vs / "layers" / i;
                DecoderLayer {
                    self_attn: Attention::new(&vs / "self_attn", d, heads),
                    self_attn_layer_norm: layer_norm(&vs / "self_attn_layer_norm", d),
                    encoder_attn: Attention::new(&vs / "encoder_attn", d, heads),
                    encoder_attn_layer_norm: layer_norm(&vs / "encoder_attn_layer_norm", d),
                    mlp: Mlp::new(&vs, d, cfg.decoder_ffn_dim),
                    final_layer_norm: layer_norm(&vs / "final_layer_norm", d),
                }
            })
            .collect();
        let table = |name: &str, rows| (&vs / name).var("weight", &[rows, d], nn::Init::Const(0.));
        Self {
            embed_tokens: table("embed_tokens", cfg.vocab_size),
            embed_positions: table("embed_positions", cfg.max_target_positions),
            layers,
            layer_norm: layer_norm(&vs / "layer_norm", d),
        }
    }

    /// Positions the decoder has (prompt and generated tokens together).
    pub fn max_positions(&self) -> i64 {
        self.embed_positions.size()[0]
    }

    /// A fresh state over `encoder_out [B, S, D]`: the cross-attention keys and values.
    pub fn start(&self, encoder_out: &Tensor) -> DecoderState {
        DecoderState {
            self_kv: self.layers.iter().map(|_| None).collect(),
            cross_kv: self.layers.iter().map(|l| l.encoder_attn.key_value(encoder_out)).collect(),
            offset: 0,
        }
    }

    /// Runs `tokens [B, T]` at the state's next positions, extends its cache, and returns the
    /// logits `[B, V]` of the last of them.
    pub fn forward(&self, tokens_bxt: &Tensor, state: &mut DecoderState) -> Tensor {
        let t = tokens_bxt.size()[1];
        let positions = self.embed_positions.narrow(0, state.offset, t);
        let mut xs =
            Tensor::embedding(&self.embed_tokens, tokens_bxt, -1, false, false) + positions;
        // Several new tokens: each sees the cache and the new ones up to itself.
        let mask = (t > 1).then(|| {
            let device = tokens_bxt.device();
            let q = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(1) + state.offset;
            q.ge_tensor(&Tensor::arange(state.offset + t, (Kind::Int64, device)).unsqueeze(0))
        });
        for ((layer, cache), (cross_k, cross_v)) in
            self.layers.iter().zip(&mut state.self_kv).zip(&state.cross_kv)
        {
            let h = layer.self_attn_layer_norm.forward(&xs);
            let (k, v) = layer.self_attn.key_value(&h);
            let (k, v) = match cache.take() {
                Some((ck, cv)) => (Tensor::cat(&[ck, k], 2), Tensor::cat(&[cv, v], 2)),
                None => (k, v),
            };
            xs = &xs + layer.self_attn.attend(&h, &k, &v, mask.as_ref());
            *cache = Some((k, v));
            let h = layer.encoder_attn_layer_norm.forward(&xs);
            xs = &xs + layer.encoder_attn.attend(&h, cross_k, cross_v, None);
            xs = &xs + layer.mlp.forward(&layer.final_layer_norm.forward(&xs));
        }
        state.offset += t;
        let last = self.layer_norm.forward(&xs.select(1, t - 1));
        last.matmul(&self.embed_tokens.tr())
    }
}
