//! The Descript Audio Codec (44.1 kHz): a convolutional encoder, a residual vector quantiser
//! and a decoder; Dia speaks in its codes.
//!
//! Reference: <https://github.com/descriptinc/descript-audio-codec> (`dac/model/dac.py`,
//! `dac/nn/quantize.py`), described in `docs/dia-reference.md` §11. Always f32.

mod checkpoint;
pub mod config;
mod layers;
mod quantizer;

use std::collections::HashMap;
use std::path::Path;

use tch::nn::{self, Conv1D, Module, VarStore};
use tch::{Device, Kind, Tensor};

pub use config::DacConfig;
pub use quantizer::Quantized;

use crate::error::{ModelError, Result};
use layers::{same, DecoderBlock, EncoderBlock, Snake1d};
use quantizer::ResidualVectorQuantizer;

#[derive(Debug)]
struct Encoder {
    conv1: Conv1D,
    block: Vec<EncoderBlock>,
    snake1: Snake1d,
    conv2: Conv1D,
}

impl Encoder {
    fn new(vs: nn::Path, cfg: &DacConfig) -> Self {
        let mut dim = cfg.encoder_dim;
        let conv1 = nn::conv1d(&vs / "conv1", 1, dim, 7, same(7));
        let block = cfg
            .encoder_rates
            .iter()
            .enumerate()
            .map(|(b, &stride)| {
                dim *= 2;
                EncoderBlock::new(&vs / "block" / b, dim, stride)
            })
            .collect();
        Self {
            conv1,
            block,
            snake1: Snake1d::new(&vs / "snake1", dim),
            conv2: nn::conv1d(&vs / "conv2", dim, cfg.latent_dim, 3, same(3)),
        }
    }
}

impl Module for Encoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = self.block.iter().fold(xs.apply(&self.conv1), |x, b| b.forward(&x));
        xs.apply(&self.snake1).apply(&self.conv2)
    }
}

#[derive(Debug)]
struct Decoder {
    conv1: Conv1D,
    block: Vec<DecoderBlock>,
    snake1: Snake1d,
    conv2: Conv1D,
}

impl Decoder {
    fn new(vs: nn::Path, cfg: &DacConfig) -> Self {
        let mut dim = cfg.decoder_dim;
        let conv1 = nn::conv1d(&vs / "conv1", cfg.latent_dim, dim, 7, same(7));
        let block = cfg
            .decoder_rates
            .iter()
            .enumerate()
            .map(|(b, &stride)| {
                dim /= 2;
                DecoderBlock::new(&vs / "block" / b, dim * 2, dim, stride)
            })
            .collect();
        Self {
            conv1,
            block,
            snake1: Snake1d::new(&vs / "snake1", dim),
            conv2: nn::conv1d(&vs / "conv2", dim, 1, 7, same(7)),
        }
    }
}

impl Module for Decoder {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = self.block.iter().fold(xs.apply(&self.conv1), |x, b| b.forward(&x));
        xs.apply(&self.snake1).apply(&self.conv2).tanh()
    }
}

/// The loaded codec.
#[derive(Debug)]
pub struct Dac {
    pub config: DacConfig,
    encoder: Encoder,
    quantizer: ResidualVectorQuantizer,
    decoder: Decoder,
    device: Device,
    _weights: VarStore,
}

impl Dac {
    /// Loads a codec folder: transformers layout (`config.json` + `model.safetensors`, folded or
    /// parametrised weight norm) or the original one (`dac-metadata.json` +
    /// `weights-orig.safetensors`, `weight_g`/`weight_v`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let transformers = (dir.join("config.json"), dir.join("model.safetensors"));
        let original = (dir.join("dac-metadata.json"), dir.join("weights-orig.safetensors"));
        for (config, weights) in [transformers, original] {
            if config.exists() && weights.exists() {
                return Self::load_files(&config, &weights, device);
            }
        }
        Err(ModelError::Checkpoint {
            path: dir.to_owned(),
            message: "neither config.json + model.safetensors nor dac-metadata.json + \
                      weights-orig.safetensors"
                .into(),
        })
    }

    /// Loads a config (transformers `config.json`, or original metadata with `kwargs`) and a
    /// safetensors file in any of the three namings.
    pub fn load_files(config: &Path, weights: &Path, device: Device) -> Result<Self> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| ModelError::Config { path: config.to_owned(), message: e.to_string() })?;
        let config = if text.contains("\"kwargs\"") {
            DacConfig::from_original_metadata_file(config)?
        } else {
            DacConfig::from_transformers_file(config)?
        };
        let tensors = checkpoint::read_weights(weights, &config)?;
        let mut dac = Self::build(config, device);
        crate::checkpoint::load_into(&mut dac._weights, tensors)?;
        Ok(dac)
    }

    /// Seeded random weights for every tensor a checkpoint of `config` holds, in transformers
    /// naming with folded weight norm.
    pub fn random_weights(config: &DacConfig, seed: i64) -> HashMap<String, Tensor> {
        crate::random::weights(&Self::build(config.clone(), Device::Cpu)._weights, seed)
    }

    /// The module tree with unloaded weights.
    fn build(config: DacConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        let encoder = Encoder::new(&root / "encoder", &config);
        let quantizer = ResidualVectorQuantizer::new(&root / "quantizer", &config);
        let decoder = Decoder::new(&root / "decoder", &config);
        Self { config, encoder, quantizer, decoder, device, _weights: vs }
    }

    /// Samples per code frame.
    pub fn hop_length(&self) -> i64 {
        self.config.hop_length()
    }

    /// Right-pads `[B, 1, T]` with zeros to a whole number of frames.
    pub fn preprocess(&self, audio_bx1xt: &Tensor) -> Tensor {
        let t = audio_bx1xt.size()[2];
        let hop = self.hop_length();
        let padded = (t + hop - 1) / hop * hop;
        audio_bx1xt.constant_pad_nd([0, padded - t])
    }

    /// Encoder output `z_e [B, latent, N]` of preprocessed audio.
    pub fn encode_latent(&self, audio_bx1xt: &Tensor) -> Tensor {
        self.encoder.forward(audio_bx1xt)
    }

    /// Quantises an encoder output.
    pub fn quantize(&self, z_e: &Tensor) -> Quantized {
        self.quantizer.encode(z_e)
    }

    /// Decoder input for codes `[B, Q, N]`.
    pub fn latent_from_codes(&self, codes_bxqxn: &Tensor) -> Tensor {
        self.quantizer.latent_from_codes(codes_bxqxn)
    }

    /// Raw codebook rows `[B, Q·d, N]` for codes `[B, Q, N]`.
    pub fn codebook_rows(&self, codes_bxqxn: &Tensor) -> Tensor {
        self.quantizer.codebook_rows(codes_bxqxn)
    }

    /// Waveform `[B, 1, hop·N]` from a latent `[B, latent, N]`.
    pub fn decode_latent(&self, z: &Tensor) -> Tensor {
        self.decoder.forward(z)
    }

    /// Mono f32 PCM at the codec's rate → codes `[N, Q]` (N = ⌈samples / hop⌉), the form Dia's
    /// prompt takes.
    pub fn encode(&self, pcm: &[f32]) -> Result<Tensor> {
        if pcm.is_empty() {
            return Err(ModelError::Input("cannot encode empty audio".into()));
        }
        let _guard = tch::no_grad_guard();
        let audio = Tensor::from_slice(pcm).view([1, 1, -1]).to_device(self.device);
        let z_e = self.encode_latent(&self.preprocess(&audio));
        Ok(self.quantize(&z_e).codes.squeeze_dim(0).tr().to_device(Device::Cpu))
    }

    /// Codes `[N, Q]` → mono f32 PCM of exactly `hop·N` samples.
    pub fn decode(&self, codes_nxq: &Tensor) -> Result<Vec<f32>> {
        let (n, q) =
            codes_nxq.size2().map_err(|_| ModelError::Input("codes must be [N, Q]".into()))?;
        if q != self.config.n_codebooks {
            return Err(ModelError::Input(format!(
                "codes have {q} codebooks, the codec {}",
                self.config.n_codebooks
            )));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let (lo, hi) = (codes_nxq.min().int64_value(&[]), codes_nxq.max().int64_value(&[]));
        if lo < 0 || hi >= self.config.codebook_size {
            return Err(ModelError::Input(format!("codes span {lo}..={hi}, outside the codebook")));
        }
        let _guard = tch::no_grad_guard();
        let codes = codes_nxq.to_device(self.device).to_kind(Kind::Int64).tr().unsqueeze(0);
        let audio = self.decode_latent(&self.latent_from_codes(&codes));
        Ok(Vec::<f32>::try_from(audio.flatten(0, -1).to_device(Device::Cpu))?)
    }
}
