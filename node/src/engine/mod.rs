//! The generation engine: one OS thread owns Dia, the DAC and a batched [`Generator`]; the async
//! side talks to it through channels only (tch tensors are `!Sync`, and grad mode is per thread).
//!
//! Jobs are admitted between decode steps while slots are free, each as its own group, so a
//! request's audio does not depend on what else runs beside it.
//!
//! [`Generator`]: models::dia::Generator

mod prompt_cache;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use proto::{RequestId, SpeechTask};

use crate::metrics::NodeMetrics;
use crate::workers::Event;
use tch::{Device, Kind};

/// What to load and where.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub weights: PathBuf,
    pub dac: PathBuf,
    pub device: Device,
    pub kind: Kind,
}

/// Sizes of the batch the engine keeps.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Requests decoded together.
    pub max_batch: usize,
    /// Decoder positions per request (BOS + prompt frames + new frames + 15).
    pub max_positions: i64,
}

/// A job handed to the engine.
#[derive(Debug)]
pub struct Submission {
    pub request_id: RequestId,
    pub attempt: u32,
    pub task: SpeechTask,
    /// Mono f32 PCM at 44.1 kHz of the voice prompt, when the control plane sent it; without
    /// it the engine uses the codes it holds for the prompt's hash, or asks for it.
    pub prompt: Option<Vec<f32>>,
}

enum Command {
    Submit(Submission),
    Cancel(RequestId),
}

/// Handle to the engine thread; dropping every handle stops it.
#[derive(Clone)]
pub struct Engine {
    commands: std::sync::mpsc::Sender<Command>,
    /// Longest text the model reads, in its text tokens.
    pub max_text: usize,
    /// Most decoder frames per job (voice prompt and new frames) its cache slot holds.
    pub max_frames: usize,
}

impl Engine {
    /// Loads the models on a new thread and starts it; returns once the models are loaded (or
    /// failed to load). Events go to `events`.
    pub fn start(
        spec: ModelSpec,
        limits: EngineLimits,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
        metrics: Arc<NodeMetrics>,
    ) -> anyhow::Result<Self> {
        let (commands, inbox) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("dia-engine".into())
            .spawn(move || worker::run(spec, limits, inbox, events, metrics, ready_tx))?;
        let (max_text, max_frames) =
            ready_rx.recv().map_err(|_| anyhow::anyhow!("the engine thread died"))??;
        Ok(Self { commands, max_text, max_frames })
    }

    /// Queues a job; false if the engine thread has stopped.
    pub fn submit(&self, job: Submission) -> bool {
        self.commands.send(Command::Submit(job)).is_ok()
    }

    /// Drops a job, queued or running; its result is never reported.
    pub fn cancel(&self, request_id: RequestId) {
        let _ = self.commands.send(Command::Cancel(request_id));
    }
}
