//! Binary WebSocket frames: audio in both directions.
//!
//! Layout: a 4-byte little-endian header length `n`, then `n` bytes of JSON [`FrameHeader`], then
//! the payload (PCM, little-endian). The JSON header keeps the format self-describing and leaves
//! room for new streams (streamed chunks during generation use `chunk` 0, 1, 2, … of the same
//! request; the control plane concatenates them in order).

use crate::ids::RequestId;
use serde::{Deserialize, Serialize};

/// Which audio a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Control plane → node: the voice prompt of a job, sent right after its `submit`.
    VoicePrompt,
    /// Control plane → node: the clip of a transcription job, sent right after its `submit`.
    Clip,
    /// Node → control plane: generated audio, one or more chunks before `finished`.
    Audio,
}

/// Sample encoding of a PCM payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcmEncoding {
    /// 32-bit float, little-endian, in [-1, 1].
    F32Le,
    /// 16-bit signed integer, little-endian. Generated audio always uses this.
    I16Le,
}

impl PcmEncoding {
    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            Self::F32Le => 4,
            Self::I16Le => 2,
        }
    }
}

/// The JSON header of a binary frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// The job the audio belongs to.
    pub request_id: RequestId,
    /// Which attempt of the job produced or receives it (stale attempts are ignored).
    pub attempt: u32,
    /// What the payload is.
    pub stream: Stream,
    /// Order of this chunk within its stream, from 0.
    pub chunk: u32,
    /// Payload encoding; mono at [`crate::SAMPLE_RATE`].
    pub encoding: PcmEncoding,
}

impl FrameHeader {
    /// Chunk `chunk` of a job's generated audio, 16-bit as nodes send it.
    pub fn audio(request_id: RequestId, attempt: u32, chunk: u32) -> Self {
        Self { request_id, attempt, stream: Stream::Audio, chunk, encoding: PcmEncoding::I16Le }
    }
}

/// A decoded binary frame.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryFrame {
    /// What the payload is.
    pub header: FrameHeader,
    /// PCM bytes in `header.encoding`.
    pub payload: Vec<u8>,
}

/// Why a binary frame could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    /// Shorter than its declared header.
    #[error("binary frame of {len} bytes is shorter than its header")]
    Truncated {
        /// Frame length.
        len: usize,
    },
    /// The header is not valid JSON for [`FrameHeader`].
    #[error("binary frame header: {0}")]
    Header(String),
    /// The payload is not a whole number of samples.
    #[error("payload of {len} bytes is not a whole number of {encoding:?} samples")]
    Ragged {
        /// Payload length.
        len: usize,
        /// Declared encoding.
        encoding: PcmEncoding,
    },
}

impl BinaryFrame {
    /// Serialises to the wire layout.
    pub fn encode(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("header serialises");
        let mut out = Vec::with_capacity(4 + header.len() + self.payload.len());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses the wire layout, checking that the payload holds whole samples.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        let truncated = FrameError::Truncated { len: bytes.len() };
        let len_bytes: [u8; 4] = bytes.get(..4).ok_or(truncated)?.try_into().expect("4 bytes");
        let header_len = u32::from_le_bytes(len_bytes) as usize;
        let header_bytes =
            bytes.get(4..4 + header_len).ok_or(FrameError::Truncated { len: bytes.len() })?;
        let header: FrameHeader =
            serde_json::from_slice(header_bytes).map_err(|e| FrameError::Header(e.to_string()))?;
        let payload = bytes[4 + header_len..].to_vec();
        if !payload.len().is_multiple_of(header.encoding.sample_bytes()) {
            return Err(FrameError::Ragged { len: payload.len(), encoding: header.encoding });
        }
        Ok(Self { header, payload })
    }
}

/// Little-endian bytes of f32 samples.
pub fn f32_le_bytes(samples: &[f32]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Samples from little-endian f32 bytes (a ragged tail is ignored).
pub fn f32_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Little-endian bytes of i16 samples.
pub fn i16_le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Samples from little-endian i16 bytes (a ragged tail is ignored).
pub fn i16_from_le_bytes(bytes: &[u8]) -> Vec<i16> {
    bytes.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> FrameHeader {
        FrameHeader {
            request_id: RequestId::new(),
            attempt: 1,
            stream: Stream::Audio,
            chunk: 0,
            encoding: PcmEncoding::I16Le,
        }
    }

    #[test]
    fn a_frame_survives_encode_and_decode() {
        let frame = BinaryFrame { header: header(), payload: i16_le_bytes(&[1, -2, 3]) };
        let back = BinaryFrame::decode(&frame.encode()).unwrap();
        assert_eq!(back, frame);
        assert_eq!(i16_from_le_bytes(&back.payload), vec![1, -2, 3]);
    }

    #[test]
    fn a_frame_cut_inside_its_header_is_truncated() {
        let bytes = BinaryFrame { header: header(), payload: vec![] }.encode();
        assert_eq!(BinaryFrame::decode(&bytes[..10]), Err(FrameError::Truncated { len: 10 }));
        assert_eq!(BinaryFrame::decode(&[1]), Err(FrameError::Truncated { len: 1 }));
    }

    #[test]
    fn a_payload_with_half_a_sample_is_ragged() {
        let mut bytes = BinaryFrame { header: header(), payload: vec![0, 0] }.encode();
        bytes.push(7);
        assert!(matches!(BinaryFrame::decode(&bytes), Err(FrameError::Ragged { len: 3, .. })));
    }

    #[test]
    fn f32_samples_survive_the_byte_round_trip() {
        let samples = [0.5f32, -1.0, 0.25];
        assert_eq!(f32_from_le_bytes(&f32_le_bytes(&samples)), samples);
    }
}
