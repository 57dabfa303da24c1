//! Opus through libopus: symphonia demuxes Opus (WebM from MediaRecorder, Ogg) but has no decoder.

use symphonia::core::codecs::audio::AudioCodecParameters;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::packet::Packet;

use super::AudioError;

/// The longest Opus packet is 120 ms.
const MAX_FRAMES_PER_PACKET: usize = 5_760;

pub(super) struct OpusDecoder {
    decoder: opus::Decoder,
    channels: u16,
    /// Encoder priming frames still to drop. Ogg marks them on the packets, but symphonia's WebM
    /// demuxer does not, so the OpusHead's pre-skip is applied here.
    pre_skip_left: usize,
    buf: Vec<f32>,
}

impl OpusDecoder {
    /// libopus decodes at any of its rates; 48 kHz is the native one, so nothing is lost.
    pub const SAMPLE_RATE: u32 = 48_000;

    pub fn new(params: &AudioCodecParameters) -> Result<Self, AudioError> {
        let head = params.extra_data.as_deref().and_then(OpusHead::parse);
        let channels = head
            .map(|head| head.channels)
            .or_else(|| params.channels.as_ref().map(|channels| channels.count()))
            .ok_or_else(|| AudioError::Decode("opus: unknown channel count".into()))?;
        // Mapping family 0 (mono or stereo) is what browsers and encoders produce for speech.
        let (layout, channels) = match channels {
            1 => (opus::Channels::Mono, 1),
            2 => (opus::Channels::Stereo, 2),
            n => return Err(AudioError::Decode(format!("opus: {n} channels are not supported"))),
        };
        let decoder = opus::Decoder::new(Self::SAMPLE_RATE, layout)
            .map_err(|err| AudioError::Decode(format!("opus: {err}")))?;
        let buf = vec![0.0; MAX_FRAMES_PER_PACKET * usize::from(channels)];
        let pre_skip_left = head.map_or(0, |head| head.pre_skip);
        Ok(Self { decoder, channels, pre_skip_left, buf })
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Decodes one packet to interleaved samples, less the frames the demuxer marks for trimming
    /// (the encoder's pre-skip at the start, padding at the end).
    pub fn decode(&mut self, packet: &Packet) -> Result<&[f32], SymphoniaError> {
        let frames = self
            .decoder
            .decode_float(&packet.data, &mut self.buf, false)
            .map_err(|_| SymphoniaError::DecodeError("opus: invalid packet"))?;
        let trim_start = usize::try_from(packet.trim_start.get()).unwrap_or(usize::MAX);
        let start = trim_start.max(self.pre_skip_left).min(frames);
        self.pre_skip_left = self.pre_skip_left.saturating_sub(start);
        let end = frames
            .saturating_sub(usize::try_from(packet.trim_end.get()).unwrap_or(usize::MAX))
            .max(start);
        let channels = usize::from(self.channels);
        Ok(&self.buf[start * channels..end * channels])
    }
}

/// The fields of an OpusHead (RFC 7845 §5.1), the codec private data of Opus tracks, used here.
#[derive(Clone, Copy)]
struct OpusHead {
    channels: usize,
    pre_skip: usize,
}

impl OpusHead {
    fn parse(head: &[u8]) -> Option<Self> {
        match head.strip_prefix(b"OpusHead")? {
            [_version, channels, pre_skip_lo, pre_skip_hi, ..] => Some(Self {
                channels: usize::from(*channels),
                pre_skip: usize::from(u16::from_le_bytes([*pre_skip_lo, *pre_skip_hi])),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_head_gives_channels_and_pre_skip() {
        let head = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00";
        let parsed = OpusHead::parse(head).unwrap();
        assert_eq!((parsed.channels, parsed.pre_skip), (2, 312));
        assert!(OpusHead::parse(b"OpusHead\x01\x02\x38").is_none());
        assert!(OpusHead::parse(b"OpusTags\x01\x02\x38\x01").is_none());
    }
}
