//! `config.json` of the Dia 0626 checkpoint (the transformers `DiaConfig` serialisation).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The text encoder's hyper-parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct EncoderConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    /// Text window in bytes; longer scripts are truncated to it.
    pub max_position_embeddings: i64,
    pub norm_eps: f64,
    #[serde(flatten)]
    pub rope: Rope,
}

/// The audio decoder's hyper-parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DecoderConfig {
    pub vocab_size: i64,
    pub num_channels: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_key_value_heads: i64,
    pub head_dim: i64,
    pub cross_num_attention_heads: i64,
    pub cross_head_dim: i64,
    /// Width of the encoder output that cross-attention reads.
    pub cross_hidden_size: i64,
    /// Frames seen in training. RoPE is computed, not tabled, so longer runs are allowed.
    pub max_position_embeddings: i64,
    pub norm_eps: f64,
    #[serde(flatten)]
    pub rope: Rope,
}

/// RoPE base: `rope_theta` in the 0626 file, `rope_parameters.rope_theta` in transformers 5.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Rope {
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct RopeParameters {
    rope_theta: f64,
}

impl Rope {
    pub fn theta(&self) -> f64 {
        self.rope_theta.or(self.rope_parameters.as_ref().map(|p| p.rope_theta)).unwrap_or(10_000.0)
    }
}

/// The whole model: both stacks plus the audio token conventions.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct DiaConfig {
    pub encoder_config: EncoderConfig,
    pub decoder_config: DecoderConfig,
    pub bos_token_id: i64,
    pub eos_token_id: i64,
    pub pad_token_id: i64,
    /// Per-channel delay in frames; one entry per channel.
    pub delay_pattern: Vec<i64>,
}

impl DiaConfig {
    /// Reads and checks a `config.json`; the April (pre-0626) schema is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Config { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::from_json(&text).map_err(err)
    }

    /// Parses and checks the JSON text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value.get("model").is_some() && value.get("data").is_some() {
            return Err("this is the April Dia-1.6B config schema (`model`/`data`); \
                        only the 0626 checkpoint (nari-labs/Dia-1.6B-0626) is supported"
                .into());
        }
        let cfg: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        let d = &self.decoder_config;
        if self.delay_pattern.len() as i64 != d.num_channels {
            return Err(format!(
                "delay_pattern has {} entries but num_channels is {}",
                self.delay_pattern.len(),
                d.num_channels
            ));
        }
        if self.delay_pattern.iter().any(|&x| x < 0) {
            return Err("delay_pattern has a negative delay".into());
        }
        for (name, heads, kv) in [
            ("decoder", d.num_attention_heads, d.num_key_value_heads),
            (
                "encoder",
                self.encoder_config.num_attention_heads,
                self.encoder_config.num_key_value_heads,
            ),
        ] {
            if kv == 0 || heads % kv != 0 {
                return Err(format!("{name}: {heads} query heads cannot share {kv} KV heads"));
            }
        }
        let ids = [self.eos_token_id, self.pad_token_id, self.bos_token_id];
        if ids.iter().any(|&id| id < 0 || id >= d.vocab_size) {
            return Err(format!(
                "special token ids {ids:?} outside the vocabulary {}",
                d.vocab_size
            ));
        }
        Ok(())
    }

    /// Largest channel delay: the EOS countdown length and the tail of the delayed grid.
    pub fn max_delay(&self) -> i64 {
        self.delay_pattern.iter().copied().max().unwrap_or(0)
    }

    /// Number of audio channels (codebooks).
    pub fn num_channels(&self) -> i64 {
        self.decoder_config.num_channels
    }

    /// Text window of the encoder in byte tokens.
    pub fn max_text_len(&self) -> usize {
        self.encoder_config.max_position_embeddings as usize
    }
}
