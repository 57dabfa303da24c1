//! What a node needs to transcribe a clip, and what it sends back.

use crate::frames::PcmEncoding;
use serde::{Deserialize, Serialize};

/// A speech-to-text job. The clip follows the `submit` as one binary frame with stream `clip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptionTask {
    /// The clip: mono samples at [`crate::SAMPLE_RATE`].
    pub clip: Clip,
    /// Language code (ISO 639-1, as the model advertised it) to transcribe in; detected when absent.
    pub language: Option<String>,
}

/// Describes PCM that follows a `submit` in a binary frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clip {
    /// Number of mono samples at [`crate::SAMPLE_RATE`].
    pub samples: u64,
    /// How the samples are encoded in the frame payload.
    pub encoding: PcmEncoding,
}

/// The result of a transcription job, carried by its `finished` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    /// What was said.
    pub text: String,
    /// The language it was transcribed in (given, or detected).
    pub language: String,
}

/// Longest transcript text the control plane takes from a node, in bytes.
pub const MAX_TRANSCRIPT_BYTES: usize = 64 * 1024;
