//! The codec's hyper-parameters, from transformers' `config.json` or the original checkpoint's
//! metadata (`kwargs`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Architecture of a DAC model.
#[derive(Debug, Clone, PartialEq)]
pub struct DacConfig {
    /// Channels after the first encoder convolution; doubled by each encoder block.
    pub encoder_dim: i64,
    pub encoder_rates: Vec<i64>,
    /// Width of the latent the quantiser works on.
    pub latent_dim: i64,
    /// Channels after the first decoder convolution; halved by each decoder block.
    pub decoder_dim: i64,
    pub decoder_rates: Vec<i64>,
    pub n_codebooks: i64,
    pub codebook_size: i64,
    pub codebook_dim: i64,
    pub sample_rate: i64,
}

/// transformers `DacConfig` serialisation.
#[derive(Deserialize)]
struct TransformersConfig {
    encoder_hidden_size: i64,
    downsampling_ratios: Vec<i64>,
    hidden_size: Option<i64>,
    decoder_hidden_size: i64,
    upsampling_ratios: Vec<i64>,
    n_codebooks: i64,
    codebook_size: i64,
    codebook_dim: i64,
    sampling_rate: i64,
}

/// `metadata.kwargs` of the original `weights.pth`.
#[derive(Deserialize)]
struct OriginalKwargs {
    encoder_dim: i64,
    encoder_rates: Vec<i64>,
    latent_dim: Option<i64>,
    decoder_dim: i64,
    decoder_rates: Vec<i64>,
    n_codebooks: i64,
    codebook_size: i64,
    codebook_dim: i64,
    sample_rate: i64,
}

#[derive(Deserialize)]
struct OriginalMetadata {
    kwargs: OriginalKwargs,
}

impl DacConfig {
    /// Reads a transformers `config.json`.
    pub fn from_transformers_file(path: &Path) -> Result<Self> {
        let c: TransformersConfig = read_json(path)?;
        let latent = c.hidden_size;
        Self::checked(
            path,
            Self {
                latent_dim: latent.unwrap_or(c.encoder_hidden_size << c.downsampling_ratios.len()),
                encoder_dim: c.encoder_hidden_size,
                encoder_rates: c.downsampling_ratios,
                decoder_dim: c.decoder_hidden_size,
                decoder_rates: c.upsampling_ratios,
                n_codebooks: c.n_codebooks,
                codebook_size: c.codebook_size,
                codebook_dim: c.codebook_dim,
                sample_rate: c.sampling_rate,
            },
        )
    }

    /// Reads the original checkpoint's metadata (`{"kwargs": {...}}`).
    pub fn from_original_metadata_file(path: &Path) -> Result<Self> {
        let OriginalMetadata { kwargs: k } = read_json(path)?;
        Self::checked(
            path,
            Self {
                latent_dim: k.latent_dim.unwrap_or(k.encoder_dim << k.encoder_rates.len()),
                encoder_dim: k.encoder_dim,
                encoder_rates: k.encoder_rates,
                decoder_dim: k.decoder_dim,
                decoder_rates: k.decoder_rates,
                n_codebooks: k.n_codebooks,
                codebook_size: k.codebook_size,
                codebook_dim: k.codebook_dim,
                sample_rate: k.sample_rate,
            },
        )
    }

    fn checked(path: &Path, cfg: Self) -> Result<Self> {
        if cfg.hop_length() != cfg.decoder_rates.iter().product::<i64>() {
            return Err(ModelError::Config {
                path: path.to_owned(),
                message: "encoder and decoder rates give different hop lengths".into(),
            });
        }
        Ok(cfg)
    }

    /// Samples per code frame.
    pub fn hop_length(&self) -> i64 {
        self.encoder_rates.iter().product()
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let err = |message: String| ModelError::Config { path: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(e.to_string()))
}
