//! The codec thread: DAC encode of new voice prompts and decode of finished generations run here,
//! beside the decode loop, so that the running streams do not stall while a request enters or
//! leaves. Work is done in arrival order; encodes come back to the engine, decoded audio goes
//! straight to the session.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use models::audio::apply_speed_factor;
use models::dac::Dac;
use models::ModelError;
use proto::audio::to_i16;
use proto::RequestId;
use proto::SAMPLE_RATE;
use tch::Tensor;
use tokio::sync::mpsc::UnboundedSender;

use super::{Command, Failure, ModelSpec};
use crate::metrics::{NodeMetrics, Outcome};
use crate::workers::Event;

/// Work for the codec thread.
pub enum Work {
    /// Encode a voice prompt (mono f32 PCM at 44.1 kHz); the codes go back to the engine as
    /// [`Command::Encoded`] with `key`.
    Encode { key: String, pcm: Vec<f32> },
    /// Decode a finished generation's codes `[N, C]` and deliver its audio.
    Decode { request_id: RequestId, attempt: u32, codes: Tensor, speed: f64, started: Instant },
    /// Drops the decodes of a request still waiting here.
    Cancel(RequestId),
}

/// Loads the DAC on a new thread, reports the loading's result on `ready`, then works until
/// the engine drops its sender.
pub fn start(
    spec: &ModelSpec,
    engine: Sender<Command>,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
) -> anyhow::Result<(Sender<Work>, i64)> {
    let (work_tx, work) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (dir, device) = (spec.dac.clone(), spec.device);
    std::thread::Builder::new().name("dia-codec".into()).spawn(move || {
        let _guard = tch::no_grad_guard();
        match Dac::load(&dir, device) {
            Ok(dac) => {
                let _ = ready_tx.send(Ok(dac.hop_length()));
                let _mode = torch_shim::inference_mode();
                Codec { dac, engine, events, metrics }.run(work);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        }
    })?;
    let hop = ready.recv().map_err(|_| anyhow::anyhow!("the codec thread died"))??;
    Ok((work_tx, hop))
}

struct Codec {
    dac: Dac,
    engine: Sender<Command>,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
}

impl Codec {
    fn run(self, inbox: Receiver<Work>) {
        let mut backlog = std::collections::VecDeque::new();
        loop {
            if backlog.is_empty() {
                match inbox.recv() {
                    Ok(work) => backlog.push_back(work),
                    Err(_) => return,
                }
            }
            // Cancels overtake the work queued before them.
            backlog.extend(inbox.try_iter());
            let cancelled: HashSet<RequestId> = backlog
                .iter()
                .filter_map(|w| match w {
                    Work::Cancel(id) => Some(*id),
                    _ => None,
                })
                .collect();
            backlog.retain(|w| match w {
                Work::Cancel(_) => false,
                Work::Decode { request_id, .. } if cancelled.contains(request_id) => {
                    self.metrics.job_ended(Outcome::Cancelled);
                    false
                }
                _ => true,
            });
            if let Some(work) = backlog.pop_front() {
                self.work(work);
            }
        }
    }

    fn work(&self, work: Work) {
        match work {
            Work::Encode { key, pcm } => {
                let codes = guarded(|| self.dac.encode(&pcm), "encoding the voice prompt");
                if self.engine.send(Command::Encoded { key, codes }).is_err() {
                    tracing::debug!("the engine stopped before a voice prompt was encoded");
                }
            }
            Work::Decode { request_id, attempt, codes, speed, started } => {
                let event = match guarded(|| self.dac.decode(&codes), "decoding the audio") {
                    Ok(pcm) => {
                        let pcm = apply_speed_factor(&pcm, speed);
                        self.metrics.job_ended(Outcome::Succeeded);
                        self.metrics
                            .audio_seconds
                            .inc_by(pcm.len() as f64 / f64::from(SAMPLE_RATE));
                        Event::Generated {
                            request_id,
                            attempt,
                            pcm: to_i16(&pcm),
                            inference_seconds: started.elapsed().as_secs_f32(),
                        }
                    }
                    Err(Failure { message, retryable }) => {
                        self.metrics.job_ended(Outcome::Failed);
                        Event::Failed { request_id, attempt, message, retryable }
                    }
                };
                let _ = self.events.send(event);
            }
            Work::Cancel(_) => {}
        }
    }
}

/// Runs `f`; its error or panic becomes the job's failure.
fn guarded<T>(f: impl FnOnce() -> Result<T, ModelError>, what: &str) -> Result<T, Failure> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::from(e)),
        Err(_) => Err(Failure { message: format!("the codec panicked {what}"), retryable: true }),
    }
}
