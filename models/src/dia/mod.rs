//! Dia 1.6B (0626), Nari Labs' text-to-dialogue model: a byte-level text encoder and an audio
//! decoder over nine DAC codebooks with a delay pattern, sampled with classifier-free guidance.
//!
//! Reference: <https://github.com/nari-labs/dia> (`dia/layers.py`, `dia/model.py`), described in
//! `docs/dia-reference.md`. Rows of a batch come in CFG pairs, interleaved per request:
//! row `2b` unconditional (zero text), row `2b + 1` conditional; both use the conditional masks.

mod cache;
mod checkpoint;
pub mod config;
mod decoder;
mod encoder;
pub mod generation;
mod layers;

use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::DiaConfig;
pub use generation::{
    BatchLimits, FinishReason, Finished, GenerationRequest, Generator, SeqId, StepOutput,
};

use crate::checkpoint::load_into;
use crate::error::{ModelError, Result};
use decoder::Decoder;
use encoder::Encoder;

/// The loaded model. Owns its weights; generation state lives in a [`Generator`].
#[derive(Debug)]
pub struct DiaModel {
    pub config: DiaConfig,
    encoder: Encoder,
    decoder: Decoder,
    device: Device,
    kind: Kind,
    _weights: VarStore,
}

/// Encoder output of a group of requests: CFG row pairs, padded to the longest text.
#[derive(Debug)]
pub struct EncodedText {
    pub states_nxsxd: Tensor,
    /// True at the real positions of the conditional text, for both rows of a pair.
    pub mask_nxs: Tensor,
}

impl DiaModel {
    /// Loads `config.json` and the weights of a checkpoint folder, in transformers naming (shards
    /// found through `model.safetensors.index.json`) or Nari naming, into weights of `kind`.
    pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<Self> {
        let config = DiaConfig::from_file(&dir.join("config.json"))?;
        let tensors = checkpoint::read_weights(dir, &config.decoder_config)?;
        let mut model = Self::build(config, device, kind);
        load_into(&mut model._weights, tensors)?;
        model.prepare_projections();
        Ok(model)
    }

    /// A model of `config` with seeded random weights ([`Self::random_weights`]): for benchmarks
    /// of the real configuration without its checkpoint.
    pub fn random(config: DiaConfig, device: Device, kind: Kind, seed: i64) -> Result<Self> {
        let tensors = Self::random_weights(&config, seed);
        let mut model = Self::build(config, device, kind);
        load_into(&mut model._weights, tensors)?;
        model.prepare_projections();
        Ok(model)
    }

    /// Seeded random weights for every tensor a checkpoint of `config` holds, in transformers
    /// naming (normal scaled by fan-in; norms one).
    pub fn random_weights(config: &DiaConfig, seed: i64) -> HashMap<String, Tensor> {
        crate::random::weights(
            &Self::build(config.clone(), Device::Cpu, Kind::Float)._weights,
            seed,
        )
    }

    /// Loaded weights → the fused layout the forward passes use.
    fn prepare_projections(&mut self) {
        let _guard = tch::no_grad_guard();
        self.encoder.prepare_projections();
        self.decoder.prepare_projections();
    }

    /// The module tree with unloaded weights of `kind`.
    fn build(config: DiaConfig, device: Device, kind: Kind) -> Self {
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let root = vs.root();
        let encoder = Encoder::new(&root / "model" / "encoder", &config.encoder_config);
        let decoder =
            Decoder::new(&root / "model" / "decoder", root.clone(), &config.decoder_config);
        Self { config, encoder, decoder, device, kind, _weights: vs }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The dtype the weights run in.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Runs the encoder on the unconditional/conditional row pair of each text.
    pub fn encode(&self, texts: &[Vec<i64>]) -> Result<EncodedText> {
        let s = texts.iter().map(Vec::len).max().unwrap_or(0) as i64;
        if texts.is_empty()
            || texts.iter().any(|t| t.iter().all(|&id| id == crate::prompt::TEXT_PAD))
        {
            return Err(ModelError::Input("every request needs a non-empty text".into()));
        }
        let mut ids = vec![0i64; texts.len() * 2 * s as usize];
        for (b, text) in texts.iter().enumerate() {
            let start = (2 * b + 1) * s as usize;
            ids[start..start + text.len()].copy_from_slice(text);
        }
        let n = 2 * texts.len() as i64;
        let ids_nxs = Tensor::from_slice(&ids).view([n, s]).to_device(self.device);
        // The conditional row's pads decide both rows' masks.
        let cond_mask_bxs = ids_nxs.view([n / 2, 2, s]).select(1, 1).ne(crate::prompt::TEXT_PAD);
        let mask_nxs = cond_mask_bxs.repeat_interleave_self_int(2, 0, None);
        let self_mask = mask_nxs.unsqueeze(2).eq_tensor(&mask_nxs.unsqueeze(1)).unsqueeze(1);
        let states_nxsxd = self.encoder.forward(&ids_nxs, &self_mask);
        Ok(EncodedText { states_nxsxd, mask_nxs })
    }
}
