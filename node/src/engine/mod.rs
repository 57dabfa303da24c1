//! The generation engine: one OS thread owns Dia and a batched [`Generator`], a second one the
//! DAC (encoding prompts, decoding results, so neither stalls the decode steps); the async side
//! talks to them through channels only (tch tensors are `!Sync`, and grad mode is per thread).
//!
//! Jobs are admitted between decode steps while slots are free, each as its own group, so a
//! request's audio does not depend on what else runs beside it.
//!
//! [`Generator`]: models::dia::Generator

mod budget;
pub use budget::MemoryBudget;
mod codec;
mod prompt_cache;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use models::ModelError;
use proto::{RequestId, SpeechTask};

use crate::gpu::Gpu;
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

/// Sizes of the batch the engine keeps, at most.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Requests decoded together.
    pub max_batch: usize,
    /// Decoder positions per request (BOS + prompt frames + new frames + 15).
    pub max_positions: i64,
    /// What the requests' caches may take: fewer slots, or fewer positions, where the two
    /// above do not fit. A share of free memory is read once the model is loaded.
    pub memory_budget: MemoryBudget,
    /// The GPU it reads free memory from.
    pub gpu: Option<Gpu>,
}

/// What the engine holds, as planned within its memory budget.
#[derive(Debug, Clone, Copy)]
pub struct Admits {
    /// Longest text the model reads, in its text tokens.
    pub max_text: usize,
    /// Most decoder frames per job (voice prompt and new frames) its cache slot holds.
    pub max_frames: usize,
    /// Jobs decoded together.
    pub slots: usize,
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
    /// From the codec thread: the codes of the voice prompt `key`.
    Encoded {
        key: String,
        codes: Result<tch::Tensor, Failure>,
    },
    /// Every handle is gone.
    Stop,
}

/// Why a job failed, and whether another node might succeed.
#[derive(Debug, Clone)]
struct Failure {
    message: String,
    retryable: bool,
}

impl Failure {
    fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }
}

/// Bad input fails everywhere; anything else may work on another node.
impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        let retryable = !matches!(e, ModelError::Input(_));
        Self { message: e.to_string(), retryable }
    }
}

/// Stops the engine thread when the last [`Engine`] handle is dropped (the codec thread holds
/// a sender too, so the channel alone would never close).
struct StopOnDrop(std::sync::mpsc::Sender<Command>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Stop);
    }
}

/// Handle to the engine thread; dropping every handle stops it.
#[derive(Clone)]
pub struct Engine {
    commands: std::sync::mpsc::Sender<Command>,
    _stop: Arc<StopOnDrop>,
    pub admits: Admits,
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
        let (codec, hop) = codec::start(&spec, commands.clone(), events.clone(), metrics.clone())?;
        std::thread::Builder::new().name("dia-engine".into()).spawn(move || {
            worker::run(spec, limits, inbox, codec, hop, events, metrics, ready_tx)
        })?;
        let admits = ready_rx.recv().map_err(|_| anyhow::anyhow!("the engine thread died"))??;
        let stop = Arc::new(StopOnDrop(commands.clone()));
        Ok(Self { commands, _stop: stop, admits })
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
