//! The codec thread: DAC encode of new voice prompts and decode of finished generations run here,
//! beside the decode loop, so that the running streams do not stall while a request enters or
//! leaves. Work is done in arrival order; encodes come back to the engine, decoded audio goes
//! straight to the session.

use std::collections::{HashSet, VecDeque};
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
        let mut backlog = VecDeque::new();
        loop {
            if backlog.is_empty() {
                match inbox.recv() {
                    Ok(work) => backlog.push_back(work),
                    Err(_) => return,
                }
            }
            backlog.extend(inbox.try_iter());
            for _ in 0..apply_cancels(&mut backlog) {
                self.metrics.job_ended(Outcome::Cancelled);
            }
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

/// Applies the cancels in `backlog`: each drops the decodes of its request queued before it,
/// not after (a request cancelled and then run again, as a new attempt, is decoded), and goes.
/// Returns how many decodes were dropped.
fn apply_cancels(backlog: &mut VecDeque<Work>) -> usize {
    let mut cancelled: HashSet<RequestId> = HashSet::new();
    let mut dropped = 0;
    let mut kept = Vec::with_capacity(backlog.len());
    for work in backlog.drain(..).rev() {
        match work {
            Work::Cancel(id) => {
                cancelled.insert(id);
            }
            Work::Decode { request_id, .. } if cancelled.contains(&request_id) => dropped += 1,
            work => kept.push(work),
        }
    }
    backlog.extend(kept.into_iter().rev());
    dropped
}

/// Runs `f`; its error or panic becomes the job's failure.
fn guarded<T>(f: impl FnOnce() -> Result<T, ModelError>, what: &str) -> Result<T, Failure> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::from(e)),
        Err(_) => Err(Failure { message: format!("the codec panicked {what}"), retryable: true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(request_id: RequestId, attempt: u32) -> Work {
        let codes = Tensor::zeros([1, 9], (tch::Kind::Int64, tch::Device::Cpu));
        Work::Decode { request_id, attempt, codes, speed: 1.0, started: Instant::now() }
    }

    fn left(backlog: &VecDeque<Work>) -> Vec<(RequestId, u32)> {
        let decode = |w: &Work| match w {
            Work::Decode { request_id, attempt, .. } => Some((*request_id, *attempt)),
            _ => None,
        };
        backlog.iter().filter_map(decode).collect()
    }

    #[test]
    fn a_cancel_drops_the_decodes_before_it_and_not_a_later_attempts() {
        let (a, b) = (RequestId::new(), RequestId::new());
        let mut backlog = VecDeque::from([
            decode(a, 1),
            decode(b, 1),
            Work::Encode { key: "k".into(), pcm: vec![0.0] },
            Work::Cancel(a),
            decode(a, 2),
            Work::Cancel(RequestId::new()),
        ]);
        assert_eq!(apply_cancels(&mut backlog), 1);
        assert_eq!(left(&backlog), [(b, 1), (a, 2)]);
        assert_eq!(backlog.len(), 3, "the encode stays, the cancels go");
        assert!(matches!(backlog[1], Work::Encode { .. }));
    }
}
