//! 16-bit mono WAV encoding of generated audio.

use std::io::Cursor;

use hound::{SampleFormat, WavSpec, WavWriter};

/// 16-bit PCM mono WAV bytes, exact length in the header.
pub fn wav_i16_bytes(samples: &[i16], sample_rate: u32) -> Vec<u8> {
    let spec =
        WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: SampleFormat::Int };
    let mut bytes = Cursor::new(Vec::with_capacity(44 + 2 * samples.len()));
    // Writing to memory cannot fail, and finalize() patches the exact lengths into the header.
    let mut writer = WavWriter::new(&mut bytes, spec).expect("in-memory WAV writer");
    let mut pcm = writer.get_i16_writer(samples.len() as u32);
    for &sample in samples {
        pcm.write_sample(sample);
    }
    pcm.flush().expect("in-memory WAV write");
    writer.finalize().expect("in-memory WAV finalize");
    bytes.into_inner()
}

/// [`wav_i16_bytes`] of float samples: clamped to [-1, 1], scaled by 32767 and rounded.
pub fn wav_f32_as_i16_bytes(samples: &[f32], sample_rate: u32) -> Vec<u8> {
    let pcm: Vec<i16> = samples.iter().map(|&sample| f32_to_i16(sample)).collect();
    wav_i16_bytes(&pcm, sample_rate)
}

fn f32_to_i16(sample: f32) -> i16 {
    // NaN maps to silence; `as` saturates, and the clamp keeps the result within ±32767.
    (sample.clamp(-1.0, 1.0) * 32_767.0).round() as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_has_exact_lengths() {
        let bytes = wav_i16_bytes(&[1, -2, 3], 44_100);
        assert_eq!(bytes.len(), 44 + 6);
        assert_eq!(&bytes[4..8], &(bytes.len() as u32 - 8).to_le_bytes());
        assert_eq!(&bytes[36..40], b"data");
        assert_eq!(&bytes[40..44], &6u32.to_le_bytes());
        let reader = hound::WavReader::new(Cursor::new(bytes)).unwrap();
        assert_eq!(reader.spec().channels, 1);
        assert_eq!(reader.spec().sample_rate, 44_100);
        let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(samples, [1, -2, 3]);
    }

    #[test]
    fn floats_are_clamped_scaled_and_rounded() {
        let inputs = [0.0, 1.0, -1.0, 2.0, -7.5, 0.5, -0.25, 1.0 / 32_767.0 * 2.6, f32::NAN];
        let expected = [0, 32_767, -32_767, 32_767, -32_767, 16_384, -8_192, 3, 0];
        assert_eq!(inputs.map(f32_to_i16), expected);
        assert_eq!(wav_f32_as_i16_bytes(&inputs, 22_050), wav_i16_bytes(&expected, 22_050));
    }

    #[test]
    fn empty_input_is_a_valid_empty_wav() {
        let bytes = wav_i16_bytes(&[], 44_100);
        assert_eq!(bytes.len(), 44);
        assert_eq!(hound::WavReader::new(Cursor::new(bytes)).unwrap().len(), 0);
    }
}
