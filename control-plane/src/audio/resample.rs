//! Resampling to the output rate with rubato's FFT resampler.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::AudioError;
use proto::SAMPLE_RATE;

/// Frames per resampler chunk: long enough for a sharp anti-aliasing filter, short enough to keep
/// the FFTs cheap.
const CHUNK_FRAMES: usize = 1_024;

/// Lowest and highest source rates accepted: outside them a rate is a corrupt header (and an
/// enormous one would make the resampler's FFT allocation explode).
const MIN_RATE: u32 = 1_000;
const MAX_RATE: u32 = 384_000;

/// Resamples mono `samples` from `rate` to [`SAMPLE_RATE`], clamped to [-1, 1]. The whole clip is
/// flushed through the resampler and its delay trimmed, so the output has
/// `ceil(len * SAMPLE_RATE / rate)` samples.
pub(super) fn to_output_rate(samples: &[f32], rate: u32) -> Result<Vec<f32>, AudioError> {
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(AudioError::Decode(format!("unsupported sample rate {rate} Hz")));
    }
    let mut resampled = if rate == SAMPLE_RATE {
        samples.to_vec()
    } else {
        let mut resampler =
            Fft::<f32>::new(rate as usize, SAMPLE_RATE as usize, CHUNK_FRAMES, 1, FixedSync::Input)
                .map_err(resample_error)?;
        let input = InterleavedSlice::new(samples, 1, samples.len()).map_err(resample_error)?;
        resampler.process_all(&input, samples.len(), None).map_err(resample_error)?.take_data()
    };
    // Lossy codecs and the resampler's filter overshoot a little on full-scale input.
    for sample in &mut resampled {
        *sample = sample.clamp(-1.0, 1.0);
    }
    Ok(resampled)
}

fn resample_error(err: impl std::fmt::Display) -> AudioError {
    AudioError::Decode(format!("resampling: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_length_is_input_length_times_rate_ratio() {
        for rate in [8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 48_000, 96_000, 44_101] {
            for len in [1, 100, 1_023, 1_024, 10_000, 48_001] {
                let output = to_output_rate(&vec![0.25; len], rate).unwrap();
                let expected = (len as f64 * f64::from(SAMPLE_RATE) / f64::from(rate)).ceil();
                assert_eq!(output.len(), expected as usize, "{len} samples at {rate} Hz");
            }
        }
    }

    #[test]
    fn constant_signal_keeps_its_level() {
        let output = to_output_rate(&vec![0.25; 48_000], 48_000).unwrap();
        let middle = &output[1_000..output.len() - 1_000];
        assert!(middle.iter().all(|sample| (sample - 0.25).abs() < 1e-3));
    }

    #[test]
    fn output_rate_is_passed_through_and_clamped() {
        assert_eq!(
            to_output_rate(&[0.5, -0.5, 1.5, -3.0], SAMPLE_RATE).unwrap(),
            [0.5, -0.5, 1.0, -1.0]
        );
    }

    #[test]
    fn implausible_rates_are_errors() {
        for rate in [0, 999, 384_001, u32::MAX] {
            assert!(matches!(to_output_rate(&[0.0; 10], rate), Err(AudioError::Decode(_))));
        }
    }
}
