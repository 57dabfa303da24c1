//! The front end: 16 kHz mono audio → Whisper's log-mel features, as faster-whisper computes
//! them (`feature_extractor.py`): 160 zero samples appended, a centred (reflect-padded) STFT of
//! 400 points with a periodic Hann window every 160 samples, the last frame dropped, power
//! through Slaney-normalised mel filters, `log10` clamped at 1e-10 and at 8 below the clip's
//! maximum, then `(x + 4) / 4`. All in f32, like the reference.

use tch::{Device, Kind, Tensor};

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;
pub const N_FFT: i64 = 400;
pub const HOP_LENGTH: i64 = 160;
/// Frames of one 30 s window, the encoder's input length.
pub const WINDOW_FRAMES: i64 = 3_000;
/// The shortest clip whose padded length exceeds the half window reflected on each side.
pub const MIN_SAMPLES: usize = (N_FFT / 2 - HOP_LENGTH + 1) as usize;

/// Log-mel features `[n_mels, ⌊T / 160⌋ + 1]` of the whole clip `[T]`; the maximum that the
/// dynamic range is clamped against is the clip's, not a window's.
pub fn log_mel(audio: &Tensor, filters: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    // Centred frames: reflect-padded by half a window on both sides (done here rather than by
    // `stft`, whose binding would also pass an alignment flag only uncentred frames accept).
    let audio = audio.to_kind(Kind::Float).constant_pad_nd([0, HOP_LENGTH]).view([1, 1, -1]);
    let audio = audio.reflection_pad1d([N_FFT / 2, N_FFT / 2]).view([-1]);
    let window = Tensor::hann_window_periodic(N_FFT, true, (Kind::Float, audio.device()));
    let stft = audio.stft(N_FFT, HOP_LENGTH, N_FFT, Some(&window), false, true, true, false);
    let frames = stft.size()[1];
    let power = stft.narrow(1, 0, frames - 1).abs().square();
    let log = filters.matmul(&power).clamp_min(1e-10).log10();
    let floor = log.max() - 8.0;
    (log.maximum(&floor) + 4.0) / 4.0
}

/// The window at frame `start`: up to 3000 frames of `mel`, zero-padded to 3000 (faster-whisper
/// pads the features, not the audio). Returns `[n_mels, 3000]`.
pub fn window(mel: &Tensor, start: i64) -> Tensor {
    let frames = (mel.size()[1] - start).clamp(0, WINDOW_FRAMES);
    mel.narrow(1, start, frames).constant_pad_nd([0, WINDOW_FRAMES - frames])
}

/// Slaney mel filters `[n_mels, N_FFT / 2 + 1]` (librosa's `filters.mel` with `htk=False`,
/// `norm="slaney"`, 0–8 kHz), computed in f64 and stored as f32 like the reference's.
pub fn mel_filters(n_mels: i64, device: Device) -> Tensor {
    let sr = f64::from(SAMPLE_RATE);
    let bins = (N_FFT / 2 + 1) as usize;
    let fft_freqs: Vec<f64> = (0..bins).map(|i| i as f64 * sr / N_FFT as f64).collect();
    // Linear below 1 kHz (200/3 Hz per mel), logarithmic above; 45.2456… mel is 8 kHz.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let log_step = 6.4f64.ln() / 27.0;
    let max_mel = 45.245640471924965;
    let n = n_mels as usize;
    // numpy's linspace: i · step, the last point exactly the end.
    let step = max_mel / (n + 1) as f64;
    let freqs: Vec<f64> = (0..n + 2)
        .map(|i| {
            let mel = if i == n + 1 { max_mel } else { i as f64 * step };
            if mel >= min_log_mel {
                min_log_hz * (log_step * (mel - min_log_mel)).exp()
            } else {
                f_sp * mel
            }
        })
        .collect();
    let mut weights = Vec::with_capacity(n * bins);
    for m in 0..n {
        let enorm = 2.0 / (freqs[m + 2] - freqs[m]);
        for &f in &fft_freqs {
            let lower = (f - freqs[m]) / (freqs[m + 1] - freqs[m]);
            let upper = (freqs[m + 2] - f) / (freqs[m + 2] - freqs[m + 1]);
            weights.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    Tensor::from_slice(&weights).view([n_mels, bins as i64]).to_device(device)
}
