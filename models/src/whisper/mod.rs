//! Whisper speech-to-text (OpenAI's encoder-decoder), numerically equal to faster-whisper
//! (CTranslate2) on the same weights: 80-bin log-mel features over 30 s windows, the encoder, and
//! greedy decoding without timestamps, in a given or detected language.
//!
//! Weights: a CTranslate2 folder (`model.bin`, `config.json`, `tokenizer.json`: the
//! faster-whisper layout) or a transformers folder (`model.safetensors`, `config.json`,
//! `generation_config.json`, `tokenizer.json`: the hub's `openai/whisper-*`). Notes on the
//! reference in `docs/whisper-reference.md`.

mod config;
pub mod ct2;
pub mod mel;
mod model;
mod tokenizer;

use std::path::Path;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use config::WhisperConfig;
pub use tokenizer::Tokenizer;

use crate::checkpoint::{load_into, read_safetensors};
use crate::error::{ModelError, Result};
use model::{Decoder, Encoder};

/// What [`Whisper::transcribe`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    /// The text of every window, joined, without surrounding white space.
    pub text: String,
    /// The language code it was transcribed in (given, or detected on the first window).
    pub language: String,
    /// The generated text tokens of every window, in order (no prompt, no end-of-text).
    pub tokens: Vec<i64>,
}

/// A loaded Whisper model. Runs in f32 on its device; `&self` methods, no state between calls.
#[derive(Debug)]
pub struct Whisper {
    pub config: WhisperConfig,
    tokenizer: Tokenizer,
    encoder: Encoder,
    decoder: Decoder,
    mel_filters: Tensor,
    /// Never picked: the config's list and the task tokens (faster-whisper adds those).
    suppress: Tensor,
    /// Also never picked as the first token.
    suppress_begin: Tensor,
    device: Device,
    _weights: VarStore,
}

impl Whisper {
    /// Loads a CTranslate2 folder (it has `model.bin`) or a transformers one.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let (config, tensors) = if dir.join("model.bin").exists() {
            ct2::read_dir(dir)?
        } else {
            let config = WhisperConfig::from_transformers_dir(dir)?;
            (config, read_safetensors(&dir.join("model.safetensors"))?)
        };
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let mut vs = VarStore::new(device);
        let encoder = Encoder::new(vs.root() / "model" / "encoder", &config);
        let decoder = Decoder::new(vs.root() / "model" / "decoder", &config);
        load_into(&mut vs, tensors)?;

        let t = &tokenizer;
        let tasks = [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech];
        let ids = config.suppress_tokens.iter().copied().chain(tasks);
        let suppress = suppression(ids, config.vocab_size, device)?;
        let suppress_begin =
            suppression(config.begin_suppress_tokens.iter().copied(), config.vocab_size, device)?;
        Ok(Self {
            mel_filters: mel::mel_filters(config.num_mel_bins, device),
            config,
            tokenizer,
            encoder,
            decoder,
            suppress,
            suppress_begin,
            device,
            _weights: vs,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Log-mel features `[n_mels, ⌊T / 160⌋ + 1]` of 16 kHz mono audio (see [`mel::log_mel`]).
    /// The centring reflects half a window, so the clip needs more than [`mel::MIN_SAMPLES`].
    pub fn log_mel(&self, audio_16k: &[f32]) -> Result<Tensor> {
        if audio_16k.len() < mel::MIN_SAMPLES {
            return Err(ModelError::Input(format!(
                "{} samples at 16 kHz is too short a clip (at least {})",
                audio_16k.len(),
                mel::MIN_SAMPLES
            )));
        }
        let audio = Tensor::from_slice(audio_16k).to_device(self.device);
        Ok(mel::log_mel(&audio, &self.mel_filters))
    }

    /// Encoder output `[max_source_positions, D]` of one window `[n_mels, 3000]`.
    pub fn encode(&self, window: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.encoder.forward(&window.to_device(self.device).unsqueeze(0)).squeeze_dim(0)
    }

    /// The probability of each language (in [`Tokenizer::languages`] order): the softmax, over
    /// the language tokens only, of the logits after the start-of-transcript token.
    pub fn language_probs(&self, encoded: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut state = self.decoder.start(&encoded.unsqueeze(0));
        let sot = Tensor::from_slice(&[self.tokenizer.sot]).view([1, 1]).to_device(self.device);
        let logits = self.decoder.forward(&sot, &mut state).squeeze_dim(0);
        let ids: Vec<i64> = self.tokenizer.languages().iter().map(|(id, _)| *id).collect();
        let ids = Tensor::from_slice(&ids).to_device(self.device);
        logits.index_select(0, &ids).softmax(0, Kind::Float).to_device(Device::Cpu)
    }

    /// The most probable language's code.
    pub fn detect_language(&self, encoded: &Tensor) -> String {
        let best = self.language_probs(encoded).argmax(0, false).int64_value(&[]);
        self.tokenizer.languages()[best as usize].1.clone()
    }

    /// Greedy decoding of one window's encoder output, prompted with start-of-transcript, the
    /// language, transcribe and no-timestamps, as CTranslate2's `generate` with beam size 1 does
    /// for faster-whisper: suppressed tokens masked at every step (the begin list too at the
    /// first), the argmax taken, until end-of-text or half the decoder's positions (224).
    /// Returns the text tokens.
    pub fn greedy(&self, encoded: &Tensor, language: &str) -> Result<Vec<i64>> {
        let _guard = tch::no_grad_guard();
        let t = &self.tokenizer;
        let prompt = [t.sot, t.language_token(language)?, t.transcribe, t.no_timestamps];
        let positions = self.decoder.max_positions();
        // CTranslate2 starts decoding at the prompt's last token.
        let max_new = (positions / 2).min(positions - (prompt.len() as i64 - 1));
        let mut state = self.decoder.start(&encoded.unsqueeze(0));
        let input = Tensor::from_slice(&prompt).view([1, -1]).to_device(self.device);
        let mut logits = self.decoder.forward(&input, &mut state).squeeze_dim(0);
        let mut tokens = Vec::new();
        for step in 0..max_new {
            logits += &self.suppress;
            if step == 0 {
                logits += &self.suppress_begin;
            }
            let next = logits.argmax(0, false).int64_value(&[]);
            if next == t.eot {
                break;
            }
            tokens.push(next);
            if step + 1 < max_new {
                let input = Tensor::from_slice(&[next]).view([1, 1]).to_device(self.device);
                logits = self.decoder.forward(&input, &mut state).squeeze_dim(0);
            }
        }
        Ok(tokens)
    }

    /// Transcribes interleaved PCM of any rate and channel count: averaged to mono, resampled to
    /// 16 kHz, then each 30 s window decoded on its own (faster-whisper with
    /// `condition_on_previous_text=False`) in `language`, or the language detected on the first
    /// window.
    pub fn transcribe(
        &self,
        pcm: &[f32],
        sample_rate: u32,
        channels: u16,
        language: Option<&str>,
    ) -> Result<Transcript> {
        let audio = to_mono_16k(pcm, sample_rate, channels)?;
        let mel = self.log_mel(&audio)?;
        // faster-whisper detects on the features as computed (the extra last frame included) but
        // transcribes the frames before it.
        let language = match language {
            Some(code) => {
                self.tokenizer.language_token(code)?;
                code.to_owned()
            }
            None => self.detect_language(&self.encode(&mel::window(&mel, 0))),
        };
        let content = mel.narrow(1, 0, mel.size()[1] - 1);
        let mut tokens = Vec::new();
        for start in (0..content.size()[1]).step_by(mel::WINDOW_FRAMES as usize) {
            let encoded = self.encode(&mel::window(&content, start));
            tokens.extend(self.greedy(&encoded, &language)?);
        }
        Ok(Transcript { text: self.tokenizer.decode(&tokens).trim().to_owned(), language, tokens })
    }
}

/// An additive logit mask `[V]`: −∞ at `ids`, 0 elsewhere.
fn suppression(ids: impl Iterator<Item = i64>, vocab: i64, device: Device) -> Result<Tensor> {
    let mut mask = vec![0f32; vocab as usize];
    for id in ids {
        let slot = usize::try_from(id).ok().and_then(|i| mask.get_mut(i));
        *slot.ok_or_else(|| ModelError::Input(format!("suppressed token {id} out of range")))? =
            f32::NEG_INFINITY;
    }
    Ok(Tensor::from_slice(&mask).to_device(device))
}

/// Interleaved PCM → 16 kHz mono: channels averaged, then rubato's FFT resampler (the one the
/// voice library uses), `⌈T · 16000 / rate⌉` samples.
pub fn to_mono_16k(pcm: &[f32], sample_rate: u32, channels: u16) -> Result<Vec<f32>> {
    let c = usize::from(channels);
    if c == 0 || !pcm.len().is_multiple_of(c) {
        return Err(ModelError::Input(format!("{} samples are not frames of {c}", pcm.len())));
    }
    if pcm.is_empty() {
        return Err(ModelError::Input("no audio".into()));
    }
    let scale = 1.0 / c as f32;
    let mono: Vec<f32> = pcm.chunks_exact(c).map(|f| f.iter().sum::<f32>() * scale).collect();
    if sample_rate == mel::SAMPLE_RATE {
        return Ok(mono);
    }
    let error = |e: &dyn std::fmt::Display| ModelError::Input(format!("resampling: {e}"));
    let mut resampler =
        Fft::<f32>::new(sample_rate as usize, mel::SAMPLE_RATE as usize, 1024, 1, FixedSync::Input)
            .map_err(|e| error(&e))?;
    let input = InterleavedSlice::new(&mono, 1, mono.len()).map_err(|e| error(&e))?;
    Ok(resampler.process_all(&input, mono.len(), None).map_err(|e| error(&e))?.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_averaged_and_16k_is_kept() {
        let mono = to_mono_16k(&[1.0, 0.0, 0.5, 0.25, -1.0, 1.0], 16_000, 2).unwrap();
        assert_eq!(mono, [0.5, 0.375, 0.0]);
    }

    #[test]
    fn any_accepted_rate_resamples_to_the_expected_length() {
        for rate in [8_000, 22_050, 44_100, 44_101, 48_000, 96_000] {
            for len in [1, 1_000, 44_100] {
                let out = to_mono_16k(&vec![0.25; len], rate, 1).unwrap();
                let expected = (len as f64 * 16_000.0 / f64::from(rate)).ceil() as usize;
                assert_eq!(out.len(), expected, "{len} samples at {rate} Hz");
            }
        }
    }

    #[test]
    fn pcm_that_is_not_whole_frames_or_empty_is_refused() {
        assert!(to_mono_16k(&[0.0; 3], 16_000, 2).is_err());
        assert!(to_mono_16k(&[0.0; 4], 16_000, 0).is_err());
        assert!(to_mono_16k(&[], 16_000, 1).is_err());
    }
}
