//! Decoding of uploaded reference audio (WAV, MP3, FLAC, OGG/Vorbis, WebM/Opus) into mono f32 PCM
//! at [`proto::SAMPLE_RATE`], the rate of all decoded and generated audio.

mod decode;
mod opus;
mod resample;

use std::panic::{self, AssertUnwindSafe};

/// Mono f32 PCM at 44.1 kHz plus what the upload was.
#[derive(Debug, Clone)]
pub struct DecodedAudio {
    /// Mono samples at [`proto::SAMPLE_RATE`], in [-1, 1].
    pub samples: Vec<f32>,
    /// The sample rate the upload was decoded at (48 kHz for Opus).
    pub source_sample_rate: u32,
    pub source_channels: u16,
    /// The container: "wav", "mp3", "flac", "ogg" or "webm".
    pub format: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("could not decode audio: {0}")]
    Decode(String),
    #[error("the audio contains no samples")]
    Empty,
    #[error("the audio is longer than {max_seconds} s (at least {seconds} s)")]
    TooLong { seconds: f32, max_seconds: f32 },
}

/// Decodes WAV, MP3, FLAC, OGG/Vorbis, WebM/Opus; downmixes to mono; resamples to 44.1 kHz.
///
/// Decoding stops as soon as more than `max_seconds` of audio has been decoded.
pub fn decode_to_mono_44k(bytes: &[u8], max_seconds: f32) -> Result<DecodedAudio, AudioError> {
    // The demuxers and decoders parse untrusted input and some of them can panic on malformed
    // data; an upload must never take the server down.
    panic::catch_unwind(AssertUnwindSafe(|| decode_and_resample(bytes, max_seconds)))
        .unwrap_or_else(|_| Err(AudioError::Decode("malformed audio data".into())))
}

fn decode_and_resample(bytes: &[u8], max_seconds: f32) -> Result<DecodedAudio, AudioError> {
    let pcm = decode::decode_mono(bytes, max_seconds)?;
    let samples = resample::to_output_rate(&pcm.samples, pcm.sample_rate)?;
    Ok(DecodedAudio {
        samples,
        source_sample_rate: pcm.sample_rate,
        source_channels: pcm.channels,
        format: pcm.format,
    })
}
