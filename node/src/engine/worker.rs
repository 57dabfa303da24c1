//! The engine thread: admit → step → emit → retire, until every handle is dropped.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use models::dia::{BatchLimits, DiaModel, GenerationRequest, Generator, SeqId};
use models::sampling::Sampling;
use proto::SAMPLE_RATE;
use tokio::sync::mpsc::UnboundedSender;

use super::codec::Work;
use super::prompt_cache::PromptCache;
use super::{budget, Admits, Command, EngineLimits, Failure, ModelSpec, Submission};
use crate::metrics::{NodeMetrics, Outcome};
use crate::workers::Event;

/// Frames between progress reports (one second of audio).
const PROGRESS_EVERY: i64 = 86;
/// Voice prompts whose codes are kept.
const PROMPTS_CACHED: usize = 64;
/// Why a job fails when the codec thread is gone (not the job's fault: another node may take it).
const CODEC_STOPPED: &str = "the codec thread stopped";

/// What admitting a job came to.
enum Admission {
    /// It generates in this slot.
    Started(SeqId),
    /// Its voice prompt's codes are not cached and its audio did not come with it.
    NeedsPrompt,
    /// Its voice prompt is being encoded on the codec thread; it waits for the codes.
    Encoding,
}

struct Running {
    job: Submission,
    started: Instant,
    reported: i64,
}

struct Worker {
    model: DiaModel,
    generator: Generator,
    pending: VecDeque<Submission>,
    running: HashMap<SeqId, Running>,
    prompts: PromptCache,
    /// Jobs waiting for the codes of a prompt on the codec thread, by the prompt's hash.
    encoding: HashMap<String, Vec<Submission>>,
    codec: Sender<Work>,
    /// The codec's frame rate, for progress in seconds.
    frames_per_second: f64,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: ModelSpec,
    limits: EngineLimits,
    inbox: Receiver<Command>,
    codec: Sender<Work>,
    hop: i64,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
    ready: Sender<anyhow::Result<Admits>>,
) {
    let _guard = tch::no_grad_guard();
    let model = match DiaModel::load(&spec.weights, spec.device, spec.kind) {
        Ok(model) => model,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    // Loaded outside it: weights made in inference mode could not be changed in place outside it.
    let _mode = torch_shim::inference_mode();
    let max_text = model.config.max_text_len();
    // A slot holds at least a second of audio beside its prompt.
    let min_positions = Generator::positions_needed(&model, 0, PROGRESS_EVERY);
    let budget = match limits.memory_budget.bytes(limits.gpu.as_ref()) {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let plan = match budget::plan(
        budget,
        limits.max_batch,
        limits.max_positions,
        min_positions,
        |positions| Generator::slot_bytes(&model, positions),
    ) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tracing::info!(
        slots = plan.slots,
        positions = plan.max_positions,
        slot = %budget::human(plan.slot_bytes),
        budget = %budget::human(budget as i64),
        "request caches planned"
    );
    metrics.memory_budget.set(budget as i64);
    metrics.memory_reserved.set(plan.reserved_bytes());
    let admits = Admits {
        max_text,
        max_frames: (plan.max_positions - Generator::positions_needed(&model, 0, 0)) as usize,
        slots: plan.slots,
    };
    let limits = BatchLimits {
        max_batch: plan.slots as i64,
        max_positions: plan.max_positions,
        max_text: max_text as i64,
    };
    let generator = Generator::new(&model, limits);
    let mut worker = Worker {
        model,
        generator,
        pending: VecDeque::new(),
        running: HashMap::new(),
        prompts: PromptCache::new(PROMPTS_CACHED),
        encoding: HashMap::new(),
        codec,
        frames_per_second: f64::from(SAMPLE_RATE) / hop as f64,
        events,
        metrics,
    };
    let _ = ready.send(Ok(admits));
    loop {
        // Idle: sleep until there is something to do.
        if worker.running.is_empty() && worker.pending.is_empty() {
            match inbox.recv() {
                Ok(Command::Stop) | Err(_) => return,
                Ok(command) => worker.handle(command),
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                Ok(command) => worker.handle(command),
                Err(TryRecvError::Empty) => break,
            }
        }
        worker.admit();
        if !worker.running.is_empty() {
            worker.step();
        }
        let waiting = worker.encoding.values().map(Vec::len).sum::<usize>();
        worker.metrics.active.set(worker.running.len() as i64);
        worker.metrics.queued.set((worker.pending.len() + waiting) as i64);
    }
}

impl Worker {
    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.pending.push_back(job),
            Command::Encoded { key, codes } => {
                let waiting = self.encoding.remove(&key).unwrap_or_default();
                match codes {
                    Ok(codes) => {
                        self.prompts.insert(key, codes);
                        // They were next in line when they asked for the codec.
                        for job in waiting.into_iter().rev() {
                            self.pending.push_front(job);
                        }
                    }
                    Err(failure) => {
                        for job in &waiting {
                            self.fail(job, failure.clone());
                        }
                    }
                }
            }
            Command::Stop => unreachable!("the loop stops on it"),
            Command::Cancel(id) => {
                let _ = self.codec.send(Work::Cancel(id));
                self.pending.retain(|j| j.request_id != id);
                self.encoding.values_mut().for_each(|jobs| jobs.retain(|j| j.request_id != id));
                let seqs: Vec<SeqId> = self
                    .running
                    .iter()
                    .filter(|(_, r)| r.job.request_id == id)
                    .map(|(s, _)| *s)
                    .collect();
                for seq in seqs {
                    self.generator.cancel(seq);
                    self.running.remove(&seq);
                    self.metrics.job_ended(Outcome::Cancelled);
                }
            }
        }
    }

    /// Admits queued jobs while slots are free: new requests join between steps.
    fn admit(&mut self) {
        while self.generator.free_slots() > 0 {
            let Some(job) = self.pending.pop_front() else { return };
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.start(&job))) {
                Ok(Ok(Admission::Started(seq))) => {
                    self.running.insert(seq, Running { job, started: Instant::now(), reported: 0 });
                }
                Ok(Ok(Admission::NeedsPrompt)) => {
                    let Submission { request_id, attempt, task, .. } = job;
                    let _ = self.events.send(Event::NeedVoicePrompt { request_id, attempt, task });
                }
                Ok(Ok(Admission::Encoding)) => {
                    let key = job.task.voice_prompt.as_ref().expect("has a prompt").sha256.clone();
                    self.encoding.entry(key).or_default().push(job);
                }
                Ok(Err(failure)) => self.fail(&job, failure),
                Err(_) => {
                    self.fail(&job, Failure::retryable("the model panicked admitting the job"))
                }
            }
        }
    }

    fn start(&mut self, job: &Submission) -> Result<Admission, Failure> {
        let task = &job.task;
        let prompt_codes = match &task.voice_prompt {
            Some(prompt) => match self.prompts.get(&prompt.sha256) {
                Some(codes) => Some(codes),
                None if self.encoding.contains_key(&prompt.sha256) => {
                    return Ok(Admission::Encoding)
                }
                None => {
                    let Some(pcm) = &job.prompt else { return Ok(Admission::NeedsPrompt) };
                    let work = Work::Encode { key: prompt.sha256.clone(), pcm: pcm.clone() };
                    if self.codec.send(work).is_err() {
                        return Err(Failure::retryable(CODEC_STOPPED));
                    }
                    return Ok(Admission::Encoding);
                }
            },
            None => None,
        };
        let request = GenerationRequest {
            text: task.text.clone(),
            prompt_codes,
            sampling: Sampling {
                temperature: f64::from(task.sampling.temperature),
                top_p: f64::from(task.sampling.top_p),
                top_k: i64::from(task.sampling.cfg_filter_top_k),
                cfg_scale: f64::from(task.sampling.cfg_scale),
            },
            seed: task.seed,
            max_new_tokens: i64::from(task.max_new_tokens),
        };
        Ok(Admission::Started(self.generator.admit(&self.model, vec![request])?[0]))
    }

    /// One decode step for every running job; a failure or panic inside the model (out of
    /// memory, say) fails them all, retryable elsewhere, and starts over on the same caches.
    /// Finished jobs go to the codec thread for their audio.
    fn step(&mut self) {
        let batch = self.generator.active();
        let timer = self.metrics.step_seconds.start_timer();
        let stepped =
            std::panic::catch_unwind(AssertUnwindSafe(|| self.generator.step(&self.model)));
        timer.observe_duration();
        let out = match stepped {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => return self.reset(e.to_string()),
            Err(_) => return self.reset("the model panicked".into()),
        };
        self.metrics.steps.succeeded();
        self.metrics.frames.inc_by(batch as u64);
        for seq in out.failed {
            let Some(run) = self.running.remove(&seq) else { continue };
            let message = "the model's logits were NaN or infinite; no audio was made";
            self.fail(&run.job, Failure::retryable(message));
        }
        for finished in out.finished {
            let Some(run) = self.running.remove(&finished.id) else { continue };
            let work = Work::Decode {
                request_id: run.job.request_id,
                attempt: run.job.attempt,
                codes: finished.codes_lxc,
                speed: f64::from(run.job.task.speed_factor),
                started: run.started,
            };
            if self.codec.send(work).is_err() {
                self.fail(&run.job, Failure::retryable(CODEC_STOPPED));
            }
        }
        let frames_per_second = self.frames_per_second;
        for (seq, frames) in self.generator.progress().collect::<Vec<_>>() {
            let Some(run) = self.running.get_mut(&seq) else { continue };
            if frames - run.reported >= PROGRESS_EVERY {
                run.reported = frames;
                let _ = self.events.send(Event::Progress {
                    request_id: run.job.request_id,
                    attempt: run.job.attempt,
                    generated_seconds: (frames as f64 / frames_per_second) as f32,
                });
            }
        }
    }

    fn reset(&mut self, message: String) {
        tracing::error!(%message, "decode step failed; failing the running jobs");
        self.metrics.steps.failed(&message);
        for (_, run) in std::mem::take(&mut self.running) {
            self.fail(&run.job, Failure::retryable(&message));
        }
        self.generator.clear();
    }

    fn fail(&self, job: &Submission, Failure { message, retryable }: Failure) {
        self.metrics.job_ended(Outcome::Failed);
        let _ = self.events.send(Event::Failed {
            request_id: job.request_id,
            attempt: job.attempt,
            message,
            retryable,
        });
    }
}
