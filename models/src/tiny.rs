//! A tiny Dia and DAC with seeded random weights, written as checkpoint folders in the published
//! layout (`config.json` + `model.safetensors`) so that they load through the same path as the real
//! checkpoints. They make noise, not speech: they let the whole serving path be tried where the
//! real weights cannot be had.

use std::collections::HashMap;
use std::path::Path;

use tch::Tensor;

use crate::dac::{Dac, DacConfig};
use crate::dia::{DiaConfig, DiaModel};
use crate::error::Result;

/// The model id of a node serving it: it says what it is.
pub const MODEL_ID: &str = "dia-tiny-random";

/// Dia's config (0626 schema): the real layer structure (delay pattern, GQA, cross-attention
/// head dim) at small widths.
const DIA_CONFIG: &str = include_str!("../configs/dia-tiny-random.json");
/// The 44.1 kHz DAC's strides and codebooks at small widths (transformers schema).
const DAC_CONFIG: &str = include_str!("../configs/dac-tiny-random.json");

/// Writes the tiny Dia checkpoint into `dir` (created if missing).
pub fn write_dia(dir: &Path, seed: i64) -> Result<()> {
    write_config(dir, DIA_CONFIG)?;
    let config = DiaConfig::from_file(&dir.join("config.json"))?;
    write_weights(dir, DiaModel::random_weights(&config, seed))
}

/// Writes the tiny DAC checkpoint into `dir` (created if missing).
pub fn write_dac(dir: &Path, seed: i64) -> Result<()> {
    write_random_dac(dir, DAC_CONFIG, seed)
}

/// Writes a DAC checkpoint of `config` (transformers `config.json` text) with seeded random
/// weights into `dir` (created if missing).
pub fn write_random_dac(dir: &Path, config: &str, seed: i64) -> Result<()> {
    write_config(dir, config)?;
    let config = DacConfig::from_transformers_file(&dir.join("config.json"))?;
    write_weights(dir, Dac::random_weights(&config, seed))
}

fn write_config(dir: &Path, config: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    Ok(std::fs::write(dir.join("config.json"), config)?)
}

fn write_weights(dir: &Path, tensors: HashMap<String, Tensor>) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Tensor::write_safetensors(&named, dir.join("model.safetensors"))?)
}
