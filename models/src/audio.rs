//! Audio around the model: reading prompt WAVs the way the reference does (PCM → float,
//! torchaudio's windowed-sinc resampling, then channel averaging) and the demo app's
//! `speed_factor`. Dia's and the DAC's rate is [`proto::SAMPLE_RATE`]; 16-bit output is
//! [`proto::audio`]'s.

use std::path::Path;

use proto::SAMPLE_RATE;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// A WAV file as float channels `[channels, samples]` and its rate. Integer PCM is scaled by
/// `2^(bits−1)`, as torchaudio does.
pub fn read_wav(path: &Path) -> Result<(Tensor, u32)> {
    let err = |e: hound::Error| ModelError::Input(format!("{}: {e}", path.display()));
    let mut reader = hound::WavReader::open(path).map_err(err)?;
    let spec = reader.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => {
            reader.samples::<f32>().collect::<Result<_, _>>().map_err(err)?
        }
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(err)?
        }
    };
    let channels = i64::from(spec.channels);
    let audio = Tensor::from_slice(&samples).view([-1, channels]).tr().contiguous();
    Ok((audio, spec.sample_rate))
}

/// torchaudio's `functional.resample` with its defaults (sinc interpolation, Hann window,
/// `lowpass_filter_width` 6, `rolloff` 0.99), computed in f32 like it: `[channels, T]` →
/// `[channels, ⌈T·new/orig⌉]`.
pub fn resample(audio_cxt: &Tensor, orig: u32, new: u32) -> Tensor {
    if orig == new {
        return audio_cxt.shallow_clone();
    }
    const WIDTH: f64 = 6.0;
    const ROLLOFF: f64 = 0.99;
    let gcd = gcd(orig, new);
    let (orig, new) = (i64::from(orig / gcd), i64::from(new / gcd));
    let device = audio_cxt.device();
    let base = orig.min(new) as f64 * ROLLOFF;
    let width = (WIDTH * orig as f64 / base).ceil() as i64;
    let opts = (Kind::Float, device);
    let idx = Tensor::arange_start(-width, width + orig, opts).view([1, 1, -1]) / orig as f64;
    let t = Tensor::arange_start_step(0, -new, -1, opts).view([-1, 1, 1]) / new as f64 + idx;
    let t = (t * base).clamp(-WIDTH, WIDTH);
    let window = (&t * (std::f64::consts::PI / WIDTH / 2.0)).cos().square();
    let t = t * std::f64::consts::PI;
    let sinc = t.sin() / &t;
    let kernels = sinc.where_self(&t.ne(0.0), &t.ones_like()) * window * (base / orig as f64);

    let (channels, length) = audio_cxt.size2().expect("audio is [channels, T]");
    let padded = audio_cxt.to_kind(Kind::Float).constant_pad_nd([width, width + orig]).unsqueeze(1);
    let out = padded.conv1d::<Tensor>(&kernels, None, [orig], [0], [1], 1);
    let target = (new as f64 * length as f64 / orig as f64).ceil() as i64;
    out.transpose(1, 2).reshape([channels, -1]).narrow(1, 0, target)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A voice prompt file as the reference loads it: resampled to 44.1 kHz, then averaged to
/// mono. Returns `[T]`.
pub fn load_prompt_wav(path: &Path) -> Result<Tensor> {
    let (audio, rate) = read_wav(path)?;
    Ok(resample(&audio, rate, SAMPLE_RATE).mean_dim(0, false, Kind::Float))
}

/// The demo app's speed control: the factor clamped to [0.1, 5.0], the signal stretched to
/// `⌊N / f⌋` samples by linear interpolation in f64. Changes tempo and pitch together.
pub fn apply_speed_factor(audio: &[f32], factor: f64) -> Vec<f32> {
    let factor = factor.clamp(0.1, 5.0);
    let n = audio.len();
    let target = (n as f64 / factor) as usize;
    if target == n || target == 0 {
        return audio.to_vec();
    }
    let step = if target > 1 { (n - 1) as f64 / (target - 1) as f64 } else { 0.0 };
    (0..target)
        .map(|i| {
            let x = if i == target - 1 { (n - 1) as f64 } else { i as f64 * step };
            let j = (x.floor() as usize).min(n - 1);
            if j == n - 1 || x == j as f64 {
                return audio[j];
            }
            let (a, b) = (f64::from(audio[j]), f64::from(audio[j + 1]));
            ((b - a) * (x - j as f64) + a) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_factor_interpolates_linearly_between_samples() {
        let out = apply_speed_factor(&[0.0, 1.0, 0.0], 0.5);
        assert_eq!(out.len(), 6);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 0.4).abs() < 1e-6);
        assert_eq!(out[5], 0.0);
    }
}
