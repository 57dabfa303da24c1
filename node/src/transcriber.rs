//! The transcriber: one OS thread owns Whisper (tch tensors are `!Sync`, and grad mode is per
//! thread) and transcribes clips one at a time, in arrival order. It runs beside the Dia engine,
//! never inside its decode loop, so a transcription holds up no generation step.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use models::whisper::Whisper;
use models::ModelError;
use proto::transcription::MAX_TRANSCRIPT_BYTES;
use proto::{RequestId, Transcript, SAMPLE_RATE};
use tch::Device;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{NodeMetrics, Outcome};
use crate::workers::Event;

/// A clip to transcribe.
#[derive(Debug)]
pub struct Transcription {
    pub request_id: RequestId,
    pub attempt: u32,
    /// Mono f32 PCM at 44.1 kHz.
    pub clip: Vec<f32>,
    /// Language code to transcribe in; detected when absent.
    pub language: Option<String>,
}

enum Command {
    Submit(Transcription),
    Cancel(RequestId),
}

/// Handle to the transcriber thread; dropping every handle stops it once its queue is done.
#[derive(Clone)]
pub struct Transcriber {
    commands: Sender<Command>,
    /// The language codes Whisper takes, in its order.
    pub languages: Vec<String>,
}

impl Transcriber {
    /// Loads Whisper from `dir` on a new thread and starts it; returns once it is loaded (or
    /// failed to load). Events go to `events`.
    pub fn start(
        dir: PathBuf,
        device: Device,
        events: UnboundedSender<Event>,
        metrics: Arc<NodeMetrics>,
    ) -> anyhow::Result<Self> {
        let (commands, inbox) = std::sync::mpsc::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("transcriber".into()).spawn(move || {
            let _guard = tch::no_grad_guard();
            let whisper = match Whisper::load(&dir, device) {
                Ok(whisper) => whisper,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let languages = whisper.tokenizer().languages().iter().map(|(_, c)| c.clone());
            let _ = ready_tx.send(Ok(languages.collect()));
            let _mode = torch_shim::inference_mode();
            Worker { whisper, queue: VecDeque::new(), events, metrics }.run(&inbox);
        })?;
        let languages =
            ready_rx.recv().map_err(|_| anyhow::anyhow!("the transcriber thread died"))??;
        Ok(Self { commands, languages })
    }

    /// Queues a clip; false if the transcriber thread has stopped.
    pub fn submit(&self, job: Transcription) -> bool {
        self.commands.send(Command::Submit(job)).is_ok()
    }

    /// Drops a queued clip, or the result of the one in hand.
    pub fn cancel(&self, request_id: RequestId) {
        let _ = self.commands.send(Command::Cancel(request_id));
    }
}

struct Worker {
    whisper: Whisper,
    queue: VecDeque<Transcription>,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
}

impl Worker {
    /// Takes clips until every handle is dropped.
    fn run(mut self, inbox: &Receiver<Command>) {
        loop {
            // Idle: sleep until a clip comes. Then take whatever else came, so that cancels
            // reach their queued clips before those are started.
            if self.queue.is_empty() {
                let Ok(command) = inbox.recv() else { return };
                self.handle(command);
            }
            while let Ok(command) = inbox.try_recv() {
                self.handle(command);
            }
            let Some(job) = self.queue.pop_front() else { continue };
            self.metrics.transcriptions_active.set(1);
            self.metrics.transcriptions_queued.set(self.queue.len() as i64);
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.whisper.transcribe(&job.clip, SAMPLE_RATE, 1, job.language.as_deref())
            }));
            let inference_seconds = started.elapsed().as_secs_f32();
            self.metrics.transcriptions_active.set(0);
            // A cancel that came while the clip ran drops its result.
            let mut cancelled = false;
            while let Ok(command) = inbox.try_recv() {
                match command {
                    Command::Cancel(id) if id == job.request_id => cancelled = true,
                    other => self.handle(other),
                }
            }
            if cancelled {
                self.metrics.transcription_ended(Outcome::Cancelled);
            } else {
                self.report(&job, result, inference_seconds);
            }
        }
    }

    /// Sends the outcome of a clip that ran to its end.
    fn report(
        &self,
        job: &Transcription,
        result: std::thread::Result<models::Result<models::whisper::Transcript>>,
        inference_seconds: f32,
    ) {
        match result {
            Ok(Ok(t)) if t.text.len() > MAX_TRANSCRIPT_BYTES => {
                let message = format!(
                    "the transcript is {} bytes, more than the {MAX_TRANSCRIPT_BYTES} a job may return",
                    t.text.len()
                );
                self.fail(job, message, false);
            }
            Ok(Ok(t)) => {
                self.metrics.transcription_ended(Outcome::Succeeded);
                let seconds = job.clip.len() as f64 / f64::from(SAMPLE_RATE);
                self.metrics.transcribed_seconds.inc_by(seconds);
                let _ = self.events.send(Event::Transcribed {
                    request_id: job.request_id,
                    attempt: job.attempt,
                    transcript: Transcript { text: t.text, language: t.language },
                    inference_seconds,
                });
            }
            // Bad input (an unknown language, a clip too short) fails everywhere; anything else
            // may work on another node.
            Ok(Err(e)) => {
                let retryable = !matches!(e, ModelError::Input(_));
                self.fail(job, e.to_string(), retryable);
            }
            Err(_) => self.fail(job, "the model panicked transcribing the clip".into(), true),
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.queue.push_back(job),
            Command::Cancel(id) => {
                let before = self.queue.len();
                self.queue.retain(|j| j.request_id != id);
                for _ in self.queue.len()..before {
                    self.metrics.transcription_ended(Outcome::Cancelled);
                }
            }
        }
        self.metrics.transcriptions_queued.set(self.queue.len() as i64);
    }

    fn fail(&self, job: &Transcription, message: String, retryable: bool) {
        self.metrics.transcription_ended(Outcome::Failed);
        let _ = self.events.send(Event::Failed {
            request_id: job.request_id,
            attempt: job.attempt,
            message,
            retryable,
        });
    }
}
