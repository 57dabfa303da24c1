//! 16-bit audio, one rule for every crate: float samples become 16-bit PCM the way the reference
//! app converts them, and 16-bit PCM becomes a WAV file with one writer.

/// Float samples → 16-bit PCM, the reference app's rule: clip to [−1, 1], × 32767, truncate
/// toward zero. So ±1 maps to ±32767 (−32768 never occurs), 0.5 to 16383, and NaN to 0. The node
/// converts generated audio with it, so our int16 output equals the reference's exactly.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    // `as` truncates toward zero and sends NaN to 0; the clip keeps the product within ±32767.
    samples.iter().map(|&x| (x.clamp(-1.0, 1.0) * 32_767.0) as i16).collect()
}

/// A mono 16-bit PCM WAV file at `sample_rate`: the 44-byte RIFF header, exact lengths in it,
/// then the samples little-endian.
///
/// # Panics
///
/// When the data passes the format's 4 GiB (over 13 hours at 44.1 kHz).
pub fn wav_i16_bytes(samples: &[i16], sample_rate: u32) -> Vec<u8> {
    const HEADER_BYTES: u32 = 44;
    let data = u32::try_from(2 * samples.len())
        .ok()
        .filter(|&n| n <= u32::MAX - HEADER_BYTES)
        .expect("a WAV file holds at most 4 GiB");
    let mut wav = Vec::with_capacity((HEADER_BYTES + data) as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(HEADER_BYTES - 8 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // integer PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&sample_rate.to_le_bytes());
    wav.extend_from_slice(&(2 * sample_rate).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // bytes per sample frame
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    wav
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn floats_are_clipped_scaled_by_32767_and_truncated_toward_zero() {
        let floats = [0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -7.5, 0.999_99, 2.6 / 32_767.0, f32::NAN];
        let ints = [0, 16_383, -16_383, 32_767, -32_767, 32_767, -32_767, 32_766, 2, 0];
        assert_eq!(to_i16(&floats), ints);
    }

    #[test]
    fn a_wav_declares_its_exact_lengths_and_reads_back() {
        let wav = wav_i16_bytes(&[1, -2, 32_767], 22_050);
        assert_eq!(wav.len(), 44 + 6);
        assert_eq!(&wav[4..8], &(wav.len() as u32 - 8).to_le_bytes());
        assert_eq!((&wav[36..40], &wav[40..44]), (&b"data"[..], &6u32.to_le_bytes()[..]));
        let reader = hound::WavReader::new(Cursor::new(wav)).unwrap();
        let spec = reader.spec();
        assert_eq!((spec.channels, spec.sample_rate, spec.bits_per_sample), (1, 22_050, 16));
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(samples, [1, -2, 32_767]);
    }

    #[test]
    fn no_samples_make_a_valid_empty_wav() {
        let wav = wav_i16_bytes(&[], crate::SAMPLE_RATE);
        assert_eq!(wav.len(), 44);
        assert_eq!(hound::WavReader::new(Cursor::new(wav)).unwrap().len(), 0);
    }
}
