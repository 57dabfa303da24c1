//! Demuxing with symphonia and decoding to mono PCM at the source sample rate.

use std::io::{Cursor, ErrorKind};

use symphonia::core::codecs::audio::well_known::CODEC_ID_OPUS;
use symphonia::core::codecs::audio::{AudioCodecParameters, AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known::{
    FORMAT_ID_FLAC, FORMAT_ID_MKV, FORMAT_ID_MP3, FORMAT_ID_OGG, FORMAT_ID_WAVE,
};
use symphonia::core::formats::{FormatId, FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::packet::Packet;

use super::opus::OpusDecoder;
use super::AudioError;

/// Mono PCM at the rate the upload was decoded at.
pub(super) struct MonoPcm {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: u16,
    pub format: &'static str,
}

/// The stream layout a packet was decoded with.
struct DecodedPacket {
    sample_rate: u32,
    channels: u16,
}

enum Decoder {
    Symphonia { decoder: Box<dyn AudioDecoder>, interleaved: Vec<f32> },
    Opus(OpusDecoder),
}

impl Decoder {
    fn new(params: &AudioCodecParameters) -> Result<Self, AudioError> {
        if params.codec == CODEC_ID_OPUS {
            return Ok(Self::Opus(OpusDecoder::new(params)?));
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(decode_error)?;
        Ok(Self::Symphonia { decoder, interleaved: Vec::new() })
    }

    /// Decodes one packet and appends its channel average to `mono`.
    fn decode_into(
        &mut self,
        packet: &Packet,
        mono: &mut Vec<f32>,
    ) -> Result<DecodedPacket, SymphoniaError> {
        match self {
            Self::Symphonia { decoder, interleaved } => {
                let buf = decoder.decode(packet)?;
                let spec = buf.spec();
                let (sample_rate, channels) = (spec.rate(), spec.channels().count());
                buf.copy_to_vec_interleaved(interleaved);
                downmix_into(interleaved, channels, mono);
                let channels = u16::try_from(channels)
                    .map_err(|_| SymphoniaError::Unsupported("too many channels"))?;
                Ok(DecodedPacket { sample_rate, channels })
            }
            Self::Opus(decoder) => {
                let channels = decoder.channels();
                let interleaved = decoder.decode(packet)?;
                downmix_into(interleaved, usize::from(channels), mono);
                Ok(DecodedPacket { sample_rate: OpusDecoder::SAMPLE_RATE, channels })
            }
        }
    }
}

/// Averages the channels of interleaved frames and appends the result to `mono`.
fn downmix_into(interleaved: &[f32], channels: usize, mono: &mut Vec<f32>) {
    if channels == 0 {
        return;
    }
    let scale = 1.0 / channels as f32;
    mono.extend(interleaved.chunks_exact(channels).map(|frame| frame.iter().sum::<f32>() * scale));
}

/// Decodes the first audio track of `bytes` to mono, failing with [`AudioError::TooLong`] as soon
/// as more than `max_seconds` has been decoded.
pub(super) fn decode_mono(bytes: &[u8], max_seconds: f32) -> Result<MonoPcm, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut reader = symphonia::default::get_probe()
        .probe(&Hint::new(), source, FormatOptions::default(), MetadataOptions::default())
        .map_err(decode_error)?;
    let format = format_name(reader.format_info().format)?;
    let track = reader
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::Decode("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|params| params.audio())
        .ok_or_else(|| AudioError::Decode("no audio codec parameters".into()))?;
    let mut decoder = Decoder::new(params)?;

    let mut samples = Vec::new();
    let mut stream: Option<(u32, u16)> = None;
    loop {
        let packet = match reader.next_packet() {
            Ok(Some(packet)) => packet,
            // A chained stream (a new track list) or a truncated upload: keep what was decoded.
            Ok(None) | Err(SymphoniaError::ResetRequired) => break,
            Err(SymphoniaError::IoError(err)) if err.kind() == ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(decode_error(err)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let decoded = match decoder.decode_into(&packet, &mut samples) {
            Ok(decoded) => decoded,
            // A corrupt packet is skipped, as players do; an upload of nothing but corrupt
            // packets ends up empty.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(err) => return Err(decode_error(err)),
        };
        let (sample_rate, _) = *stream.get_or_insert((decoded.sample_rate, decoded.channels));
        if decoded.sample_rate != sample_rate {
            return Err(AudioError::Decode("the sample rate changes within the stream".into()));
        }
        let seconds = samples.len() as f32 / sample_rate as f32;
        if seconds > max_seconds {
            return Err(AudioError::TooLong { seconds, max_seconds });
        }
    }

    match stream {
        Some((sample_rate, channels)) if !samples.is_empty() => {
            Ok(MonoPcm { samples, sample_rate, channels, format })
        }
        _ => Err(AudioError::Empty),
    }
}

fn format_name(format: FormatId) -> Result<&'static str, AudioError> {
    match format {
        FORMAT_ID_WAVE => Ok("wav"),
        FORMAT_ID_MP3 => Ok("mp3"),
        FORMAT_ID_FLAC => Ok("flac"),
        FORMAT_ID_OGG => Ok("ogg"),
        FORMAT_ID_MKV => Ok("webm"),
        _ => Err(AudioError::Decode("unsupported container".into())),
    }
}

fn decode_error(err: SymphoniaError) -> AudioError {
    AudioError::Decode(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages_channels() {
        let mut mono = vec![9.0];
        downmix_into(&[1.0, 0.0, -0.5, -0.5, 0.25, 0.75], 2, &mut mono);
        assert_eq!(mono, [9.0, 0.5, -0.5, 0.5]);
        downmix_into(&[0.3, 0.6, 0.9], 3, &mut mono);
        assert_eq!(mono.len(), 5);
        assert!((mono[4] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn empty_and_unknown_bytes_are_errors() {
        assert!(matches!(decode_mono(&[], 10.0), Err(AudioError::Empty)));
        assert!(matches!(decode_mono(b"not audio at all", 10.0), Err(AudioError::Decode(_))));
    }
}
