//! Audio around the model: reading prompt WAVs the way the reference does (PCM → float,
//! torchaudio's windowed-sinc resampling, then channel averaging), the demo app's
//! `speed_factor`, and 16-bit WAV output.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// Dia's and the DAC's sample rate.
pub const SAMPLE_RATE: u32 = 44_100;

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

/// Float samples → 16-bit as the reference app does: clip to [−1, 1], × 32767, truncate.
pub fn to_i16(audio: &[f32]) -> Vec<i16> {
    audio.iter().map(|&x| (x.clamp(-1.0, 1.0) * 32767.0) as i16).collect()
}

/// 16-bit PCM mono WAV bytes at `rate`, exact length in the header.
pub fn wav_bytes(samples: &[i16], rate: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::with_capacity(44 + 2 * samples.len()));
    let mut writer = hound::WavWriter::new(&mut out, spec).expect("writing to memory");
    for &s in samples {
        writer.write_sample(s).expect("writing to memory");
    }
    writer.finalize().expect("writing to memory");
    out.into_inner()
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

    #[test]
    fn to_i16_truncates_toward_zero_and_clips() {
        assert_eq!(to_i16(&[0.5, -0.5, 2.0, -2.0]), vec![16383, -16383, 32767, -32767]);
    }

    #[test]
    fn wav_bytes_declare_their_exact_length() {
        let wav = wav_bytes(&[1, 2, 3], SAMPLE_RATE);
        let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
        assert_eq!(reader.len(), 3);
        assert_eq!(reader.spec().sample_rate, SAMPLE_RATE);
    }
}
