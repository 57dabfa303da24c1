//! The node's workers, each optional: the Dia engine (`voice-cloning`) and the transcriber
//! (`transcription`). The session talks to them only through [`Workers`]: what the node
//! advertises, which worker a job goes to, and the events they all send back on one channel.

use std::sync::Arc;

use proto::{
    Job, ModelInfo, RequestId, SpeechTask, Task, Transcript, FEATURE_TRANSCRIPTION,
    FEATURE_VOICE_CLONING,
};

use crate::engine::{Engine, Submission};
use crate::metrics::NodeMetrics;
use crate::transcriber::{Transcriber, Transcription};

/// Largest `max_new_tokens` a speech job may ask; the default `--max-positions` fits it.
const MAX_NEW_TOKENS: u32 = 4096;

/// What a worker reports about a job.
#[derive(Debug)]
pub enum Event {
    /// Seconds of audio a generation has made so far.
    Progress { request_id: RequestId, attempt: u32, generated_seconds: f32 },
    /// A generation's audio: 16-bit mono at 44.1 kHz.
    Generated { request_id: RequestId, attempt: u32, pcm: Vec<i16>, inference_seconds: f32 },
    /// A transcription's text.
    Transcribed {
        request_id: RequestId,
        attempt: u32,
        transcript: Transcript,
        inference_seconds: f32,
    },
    /// A generation whose voice prompt the engine holds no codes for: its audio is needed.
    NeedVoicePrompt { request_id: RequestId, attempt: u32, task: SpeechTask },
    /// A job of either kind failed; `retryable` when another node might succeed.
    Failed { request_id: RequestId, attempt: u32, message: String, retryable: bool },
}

/// Why the node does not take a job; another node may.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("the node is draining")]
    Draining,
    #[error("the node already runs as many jobs as it takes ({capacity})")]
    Full { capacity: u32 },
    #[error("this node serves no model `{model}` with the `{feature}` feature")]
    NotServed { model: String, feature: &'static str },
    #[error("the node's {0} stopped")]
    Stopped(&'static str),
}

/// The workers this node runs, with what it advertises for each.
pub struct Workers {
    dia: Option<(ModelInfo, Engine)>,
    whisper: Option<(ModelInfo, Transcriber)>,
    capacity: u32,
    metrics: Arc<NodeMetrics>,
}

impl Workers {
    /// The engine and the transcriber, each with the id of the model it runs; a node without
    /// Dia takes `max_batch` clips at once.
    pub fn new(
        dia: Option<(String, Engine)>,
        whisper: Option<(String, Transcriber)>,
        max_batch: u32,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        // Dia's slots are what its memory budget holds.
        let capacity = dia.as_ref().map_or(max_batch, |(_, e)| e.admits.slots as u32);
        let dia = dia.map(|(id, engine)| {
            let info = ModelInfo {
                id,
                features: vec![FEATURE_VOICE_CLONING.into()],
                max_input_chars: engine.admits.max_text as u32,
                max_new_tokens: MAX_NEW_TOKENS.min(engine.admits.max_frames as u32),
                max_frames: engine.admits.max_frames as u32,
                languages: vec![],
            };
            (info, engine)
        });
        let whisper = whisper.map(|(id, transcriber)| {
            let info = ModelInfo {
                id,
                features: vec![FEATURE_TRANSCRIPTION.into()],
                max_input_chars: 0,
                max_new_tokens: 0,
                max_frames: 0,
                languages: transcriber.languages.clone(),
            };
            (info, transcriber)
        });
        Self { dia, whisper, capacity, metrics }
    }

    /// Jobs the node takes at once, transcriptions included: the capacity of its hello and
    /// heartbeats.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The id of the Dia model this node runs.
    pub fn speech_model(&self) -> Option<&str> {
        self.dia.as_ref().map(|(info, _)| info.id.as_str())
    }

    /// The models of the hello.
    pub fn models(&self) -> Vec<ModelInfo> {
        let dia = self.dia.iter().map(|(info, _)| info);
        dia.chain(self.whisper.iter().map(|(info, _)| info)).cloned().collect()
    }

    /// Hands `job` to the worker of its kind, with the PCM that followed its submit (mono f32
    /// at 44.1 kHz), if that worker runs the model the job names.
    pub fn submit(&self, job: Job, audio: Option<Vec<f32>>) -> Result<(), Refused> {
        let Job { request_id, attempt, model, task } = job;
        let feature = task.feature();
        let serves = |info: &ModelInfo| info.id == model;
        let not_served = || Refused::NotServed { model: model.clone(), feature };
        match task {
            Task::Speech(task) => {
                let (_, engine) =
                    self.dia.as_ref().filter(|(i, _)| serves(i)).ok_or_else(not_served)?;
                let job = Submission { request_id, attempt, task, prompt: audio };
                engine.submit(job).then_some(()).ok_or(Refused::Stopped("Dia engine"))
            }
            Task::Transcription(task) => {
                let (_, transcriber) =
                    self.whisper.as_ref().filter(|(i, _)| serves(i)).ok_or_else(not_served)?;
                let clip = audio.unwrap_or_default();
                let job = Transcription { request_id, attempt, clip, language: task.language };
                transcriber.submit(job).then_some(()).ok_or(Refused::Stopped("transcriber"))
            }
        }
    }

    /// Drops a job, wherever it is; its result is never reported.
    pub fn cancel(&self, request_id: RequestId) {
        if let Some((_, engine)) = &self.dia {
            engine.cancel(request_id);
        }
        if let Some((_, transcriber)) = &self.whisper {
            transcriber.cancel(request_id);
        }
    }

    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }
}
