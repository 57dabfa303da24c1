//! JSON messages of the node session, one enum per direction.

use crate::error::WireError;
use crate::ids::{NodeId, RequestId};
use crate::speech::SpeechTask;
use crate::transcription::{Transcript, TranscriptionTask};
use serde::{Deserialize, Serialize};

/// Control plane → node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlToNode {
    /// The hello was accepted; the node is in the pool.
    Welcome(Welcome),
    /// The hello was refused (bad version, duplicate id); the socket closes after this.
    Rejected {
        /// Why.
        error: WireError,
    },
    /// Run a job. A transcription's clip follows in one binary frame; a speech job's voice
    /// prompt is sent when the node asks for it ([`NodeToControl::NeedVoicePrompt`]).
    Submit(Job),
    /// Stop a job (its client went away); no answer is expected.
    Cancel {
        /// The job to stop.
        request_id: RequestId,
    },
    /// Take no new jobs, finish the running ones, then close the session (a control plane
    /// replica shutting down); the node dials again.
    Drain,
}

/// The control plane's answer to a hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The control plane's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Send a heartbeat at least this often; silence for three intervals drops the node.
    pub heartbeat_interval_ms: u64,
}

/// One job sent to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The API request; stays the same when the job is retried on another node.
    pub request_id: RequestId,
    /// 1 for the first try, incremented on every retry.
    pub attempt: u32,
    /// The model id to run, one the node advertised.
    pub model: String,
    /// What to do.
    pub task: Task,
}

/// The kind of work in a job; new kinds become new variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Task {
    /// Text-to-dialogue with optional voice cloning (feature `voice-cloning`).
    Speech(SpeechTask),
    /// Speech-to-text of one clip (feature `transcription`).
    Transcription(TranscriptionTask),
}

impl Task {
    /// The feature a node must advertise to run it.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Speech(_) => crate::FEATURE_VOICE_CLONING,
            Self::Transcription(_) => crate::FEATURE_TRANSCRIPTION,
        }
    }

    /// The audio that follows the `submit` in a binary frame, and its stream.
    pub fn attached_audio(&self) -> Option<(crate::frames::Stream, crate::Clip)> {
        match self {
            Self::Speech(_) => None,
            Self::Transcription(t) => Some((crate::frames::Stream::Clip, t.clip)),
        }
    }
}

/// Node → control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeToControl {
    /// The first message of a session.
    Hello(Hello),
    /// Liveness and load, at least every `heartbeat_interval_ms`.
    Heartbeat {
        /// Whether the node can take work.
        health: Health,
        /// Current load.
        load: Load,
        /// The GPU's readings; absent where the node reads none (see the hello).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu: Option<GpuReadings>,
    },
    /// How far a job has come (audio seconds generated so far).
    Progress {
        /// The job.
        request_id: RequestId,
        /// The attempt.
        attempt: u32,
        /// Seconds of audio generated so far.
        generated_seconds: f32,
    },
    /// The node holds no codes for the job's voice prompt: send its PCM (one binary frame with
    /// stream `voice_prompt`).
    NeedVoicePrompt {
        /// The job.
        request_id: RequestId,
        /// The attempt.
        attempt: u32,
    },
    /// The job is done; all its audio chunks were sent before this message.
    Finished(Finished),
    /// The job failed.
    Failed {
        /// The job.
        request_id: RequestId,
        /// The attempt.
        attempt: u32,
        /// What went wrong (usually `upstream_error`).
        error: WireError,
        /// True when another node might succeed (out of memory, shutting down); the control
        /// plane then retries elsewhere within its attempt budget.
        retryable: bool,
    },
}

/// A node introducing itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal the control plane's [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Stable id of the node (e.g. its pod name).
    pub node_id: NodeId,
    /// What the node serves.
    pub models: Vec<ModelInfo>,
    /// How many jobs it runs at once (its batch slots).
    pub capacity: u32,
    /// The GPU the node runs on, as it reads it; null when it reads none, and then
    /// `gpu_unavailable` says why. A hello carries exactly one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuInfo>,
    /// Why `gpu` is null (no CUDA device, no readings), for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_unavailable: Option<String>,
}

/// A node's GPU, as the driver (NVML) reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuInfo {
    /// Product name, e.g. "NVIDIA H100 80GB HBM3".
    pub name: String,
    /// The GPU's UUID ("GPU-…"), which tells apart GPUs of the same name.
    pub uuid: String,
    /// Device memory, in bytes.
    pub memory_total_bytes: u64,
    /// NVIDIA driver version, e.g. "550.54.15".
    pub driver_version: String,
    /// The newest CUDA version the driver supports, e.g. "12.4".
    pub cuda_version: String,
}

/// What a node reads of its GPU for a heartbeat (NVML). A reading the GPU does not support is
/// absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GpuReadings {
    /// Share of the last sample period in which a kernel ran, 0–100.
    pub utilization_percent: u32,
    /// Device memory in use, in bytes (every process's).
    pub memory_used_bytes: u64,
    /// Device memory, in bytes.
    pub memory_total_bytes: u64,
    /// Core temperature, °C.
    pub temperature_celsius: u32,
    /// The temperature at which the GPU slows its clocks, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slowdown_temperature_celsius: Option<u32>,
    /// Power draw, watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
    /// The enforced power limit, watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_limit_watts: Option<f64>,
    /// Uncorrectable ECC errors since the driver last loaded (absent where ECC is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected_errors: Option<u64>,
    /// XID error events seen since the node started.
    pub xid_errors: u64,
    /// The last of them, e.g. 79 (fallen off the bus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_xid: Option<u64>,
}

/// One model a node serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ModelInfo {
    /// Model id clients name in `model` (e.g. "dia-1.6b").
    pub id: String,
    /// Features it offers, e.g. [`crate::FEATURE_VOICE_CLONING`].
    pub features: Vec<String>,
    /// Longest text it reads (script plus cloning transcripts), in its text tokens: for Dia,
    /// UTF-8 bytes with each speaker tag counting one (`script::model_token_count`); 0 for
    /// models that read no text.
    pub max_input_chars: u32,
    /// Most audio frames (`max_new_tokens`) it generates per job (speech models; 0 otherwise).
    pub max_new_tokens: u32,
    /// Most decoder frames per job, the voice prompt's and the new ones together: what the
    /// node's memory budget gives one job (speech models; 0 otherwise). A cloning prompt of
    /// `s` samples takes `ceil(s / SAMPLES_PER_FRAME)` frames ([`crate::speech::prompt_frames`]).
    pub max_frames: u32,
    /// Language codes it transcribes (transcription models; empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
}

/// Whether a node can take work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// Ready.
    Healthy,
    /// Not taking work (GPU error, restarting its worker); `reason` is for operators.
    Unhealthy {
        /// Why.
        reason: String,
    },
}

/// A node's load.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Jobs generating now.
    pub active: u32,
    /// Jobs accepted but not yet admitted to the batch.
    pub queued: u32,
    /// GPU memory in use, if the node can read it.
    pub gpu_memory_used_bytes: Option<u64>,
    /// Jobs it takes at once now, running ones included: its slots, 0 while it drains. The
    /// control plane routes by the least of this and the hello's `capacity`.
    pub capacity: u32,
}

/// A finished job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finished {
    /// The job.
    pub request_id: RequestId,
    /// The attempt.
    pub attempt: u32,
    /// Total samples sent in the audio chunks (16-bit mono at 44.1 kHz), as a check; 0 for
    /// jobs that produce no audio.
    pub samples: u64,
    /// Seconds the node spent on the job.
    pub inference_seconds: f32,
    /// The text of a transcription job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
}
