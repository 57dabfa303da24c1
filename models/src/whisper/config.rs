//! Whisper's dimensions and decoding lists, from a transformers checkpoint's `config.json` and
//! `generation_config.json` (a CTranslate2 folder's come from `ct2.rs`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The sizes of the model and the tokens greedy decoding never picks.
#[derive(Debug, Clone, PartialEq)]
pub struct WhisperConfig {
    pub num_mel_bins: i64,
    pub d_model: i64,
    pub encoder_layers: i64,
    pub encoder_attention_heads: i64,
    pub decoder_layers: i64,
    pub decoder_attention_heads: i64,
    pub encoder_ffn_dim: i64,
    pub decoder_ffn_dim: i64,
    pub vocab_size: i64,
    /// Encoder positions: 1500 for Whisper's 3000-frame window.
    pub max_source_positions: i64,
    /// Decoder positions (prompt and generated tokens together): 448.
    pub max_target_positions: i64,
    /// Suppressed at every step (non-speech symbols and the task tokens).
    pub suppress_tokens: Vec<i64>,
    /// Suppressed at the first generated token only (a blank and end-of-text).
    pub begin_suppress_tokens: Vec<i64>,
}

#[derive(Deserialize)]
struct HfConfig {
    num_mel_bins: i64,
    d_model: i64,
    encoder_layers: i64,
    encoder_attention_heads: i64,
    decoder_layers: i64,
    decoder_attention_heads: i64,
    encoder_ffn_dim: i64,
    decoder_ffn_dim: i64,
    vocab_size: i64,
    max_source_positions: i64,
    max_target_positions: i64,
}

#[derive(Deserialize)]
struct HfGenerationConfig {
    suppress_tokens: Vec<i64>,
    begin_suppress_tokens: Vec<i64>,
}

/// Reads and parses one JSON file, naming it in errors.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let err = |message: String| ModelError::Config { path: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}

impl WhisperConfig {
    /// The config of a transformers checkpoint folder (`config.json`, `generation_config.json`).
    pub fn from_transformers_dir(dir: &Path) -> Result<Self> {
        let c: HfConfig = read_json(&dir.join("config.json"))?;
        let g: HfGenerationConfig = read_json(&dir.join("generation_config.json"))?;
        Ok(Self {
            num_mel_bins: c.num_mel_bins,
            d_model: c.d_model,
            encoder_layers: c.encoder_layers,
            encoder_attention_heads: c.encoder_attention_heads,
            decoder_layers: c.decoder_layers,
            decoder_attention_heads: c.decoder_attention_heads,
            encoder_ffn_dim: c.encoder_ffn_dim,
            decoder_ffn_dim: c.decoder_ffn_dim,
            vocab_size: c.vocab_size,
            max_source_positions: c.max_source_positions,
            max_target_positions: c.max_target_positions,
            suppress_tokens: g.suppress_tokens,
            begin_suppress_tokens: g.begin_suppress_tokens,
        })
    }
}
