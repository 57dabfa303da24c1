//! The contract between the control plane and GPU nodes.
//!
//! A node dials the control plane's WebSocket (`/v1/nodes/connect?token=<join token>`) and speaks
//! first: [`NodeToControl::Hello`] with [`PROTOCOL_VERSION`], its id, models, features, capacity
//! and GPU (or why it reports none).
//! The control plane answers [`ControlToNode::Welcome`] (or [`ControlToNode::Rejected`] and closes).
//! From then on the node sends [`NodeToControl::Heartbeat`]s (its health, load and the jobs it
//! takes now); a node silent for longer than the control plane's heartbeat timeout is dropped and
//! its jobs go to another node.
//!
//! Text frames carry JSON messages, internally tagged by `type` in snake_case. Binary frames carry
//! audio (see [`frames`]): the voice prompt of a job, sent right after its `submit`, and the
//! generated audio, sent by the node before `finished`.
//!
//! The dialogue-script parser and validator ([`script`]) also live here, so that the API and the
//! node agree on what a valid script is, and so do what every crate must agree on about audio:
//! [`SAMPLE_RATE`], the sampling defaults ([`speech`]) and 16-bit PCM and WAV ([`audio`]).

pub mod audio;
pub mod error;
pub mod frames;
pub mod ids;
pub mod messages;
pub mod script;
pub mod speech;
pub mod transcription;

pub use error::{ErrorKind, WireError};
pub use frames::{BinaryFrame, FrameError, FrameHeader, PcmEncoding, Stream};
pub use ids::{NodeId, RequestId, VoiceId};
pub use messages::{
    ControlToNode, Finished, GpuInfo, GpuReadings, Health, Hello, Job, Load, ModelInfo,
    NodeToControl, Task, Welcome,
};
pub use script::{Script, ScriptError, Speaker, Turn};
pub use speech::{Sampling, SpeechTask, VoicePrompt};
pub use transcription::{Clip, Transcript, TranscriptionTask};

/// Lower-case hex SHA-256 of `bytes`: the form of [`VoicePrompt::sha256`], which both sides
/// compute over the prompt's frame payload.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Bumped on every incompatible change to the messages; a node with another version is rejected.
pub const PROTOCOL_VERSION: u32 = 5;

/// Sample rate of every PCM payload on the wire, both directions (Dia's DAC runs at 44.1 kHz).
pub const SAMPLE_RATE: u32 = 44_100;
/// Audio samples per generated frame (the DAC's hop): `max_new_tokens` frames are at most this
/// many samples each, before the speed factor.
pub const SAMPLES_PER_FRAME: u32 = 512;

/// The feature a node advertises to serve `POST /v1/voice/generations`.
pub const FEATURE_VOICE_CLONING: &str = "voice-cloning";
/// The feature a node advertises to transcribe clips (voice-library transcripts and
/// `POST /v1/audio/transcriptions`).
pub const FEATURE_TRANSCRIPTION: &str = "transcription";
/// Every feature the control plane routes.
pub const FEATURES: &[&str] = &[FEATURE_VOICE_CLONING, FEATURE_TRANSCRIPTION];
