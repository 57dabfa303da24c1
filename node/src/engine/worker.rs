//! The engine thread: admit → step → emit → retire, until every handle is dropped.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use models::audio::apply_speed_factor;
use models::dac::Dac;
use models::dia::{BatchLimits, DiaModel, GenerationRequest, Generator, SeqId};
use models::sampling::Sampling;
use models::ModelError;
use proto::audio::to_i16;
use proto::SAMPLE_RATE;
use tokio::sync::mpsc::UnboundedSender;

use super::prompt_cache::PromptCache;
use super::{Command, EngineLimits, ModelSpec, Submission};
use crate::metrics::{NodeMetrics, Outcome};
use crate::workers::Event;

/// Frames between progress reports (one second of audio).
const PROGRESS_EVERY: i64 = 86;
/// Voice prompts whose codes are kept.
const PROMPTS_CACHED: usize = 64;

/// What admitting a job came to.
enum Admission {
    /// It generates in this slot.
    Started(SeqId),
    /// Its voice prompt's codes are not cached and its audio did not come with it.
    NeedsPrompt,
}

struct Running {
    job: Submission,
    started: Instant,
    reported: i64,
}

struct Worker {
    model: DiaModel,
    dac: Dac,
    generator: Generator,
    pending: VecDeque<Submission>,
    running: HashMap<SeqId, Running>,
    prompts: PromptCache,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
}

pub fn run(
    spec: ModelSpec,
    limits: EngineLimits,
    inbox: Receiver<Command>,
    events: UnboundedSender<Event>,
    metrics: Arc<NodeMetrics>,
    ready: Sender<anyhow::Result<(usize, usize)>>,
) {
    let _guard = tch::no_grad_guard();
    let loaded = DiaModel::load(&spec.weights, spec.device, spec.kind)
        .and_then(|model| Ok((model, Dac::load(&spec.dac, spec.device)?)));
    let (model, dac) = match loaded {
        Ok(models) => models,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let max_text = model.config.max_text_len();
    let max_frames = (limits.max_positions - Generator::positions_needed(&model, 0, 0)).max(0);
    let limits = BatchLimits {
        max_batch: limits.max_batch as i64,
        max_positions: limits.max_positions,
        max_text: max_text as i64,
    };
    let generator = Generator::new(&model, limits);
    let mut worker = Worker {
        model,
        dac,
        generator,
        pending: VecDeque::new(),
        running: HashMap::new(),
        prompts: PromptCache::new(PROMPTS_CACHED),
        events,
        metrics,
    };
    let _ = ready.send(Ok((max_text, max_frames as usize)));
    loop {
        // Idle: sleep until there is something to do.
        if worker.running.is_empty() && worker.pending.is_empty() {
            match inbox.recv() {
                Ok(command) => worker.handle(command),
                Err(_) => return,
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(command) => worker.handle(command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        worker.admit();
        if !worker.running.is_empty() {
            worker.step();
        }
        worker.metrics.active.set(worker.running.len() as i64);
        worker.metrics.queued.set(worker.pending.len() as i64);
    }
}

impl Worker {
    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.pending.push_back(job),
            Command::Cancel(id) => {
                self.pending.retain(|j| j.request_id != id);
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
                // Bad input fails everywhere; anything else may work on another node.
                Ok(Err(e)) => {
                    let retryable = !matches!(e, ModelError::Input(_));
                    self.fail(&job, e.to_string(), retryable);
                }
                Err(_) => self.fail(&job, "the model panicked admitting the job".into(), true),
            }
        }
    }

    fn start(&mut self, job: &Submission) -> Result<Admission, ModelError> {
        let task = &job.task;
        let dac = &self.dac;
        let prompt_codes = match &task.voice_prompt {
            Some(prompt) => {
                let pcm = job.prompt.as_deref();
                match self.prompts.codes(&prompt.sha256, pcm, |pcm| dac.encode(pcm))? {
                    Some(codes) => Some(codes),
                    None => return Ok(Admission::NeedsPrompt),
                }
            }
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
        self.metrics.frames.inc_by(batch as u64);
        for seq in out.failed {
            let Some(run) = self.running.remove(&seq) else { continue };
            let message = "the model's logits were NaN or infinite; no audio was made".to_owned();
            self.fail(&run.job, message, true);
        }
        for finished in out.finished {
            let Some(run) = self.running.remove(&finished.id) else { continue };
            let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.dac.decode(&finished.codes_lxc).map_err(|e| e.to_string())
            }))
            .unwrap_or_else(|_| Err("the codec panicked".into()));
            match decoded {
                Ok(pcm) => {
                    let pcm = apply_speed_factor(&pcm, f64::from(run.job.task.speed_factor));
                    self.metrics.job_ended(Outcome::Succeeded);
                    self.metrics.audio_seconds.inc_by(pcm.len() as f64 / f64::from(SAMPLE_RATE));
                    let _ = self.events.send(Event::Generated {
                        request_id: run.job.request_id,
                        attempt: run.job.attempt,
                        pcm: to_i16(&pcm),
                        inference_seconds: run.started.elapsed().as_secs_f32(),
                    });
                }
                Err(message) => self.fail(&run.job, message, true),
            }
        }
        let frames_per_second = f64::from(SAMPLE_RATE) / self.dac.hop_length() as f64;
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
        for (_, run) in std::mem::take(&mut self.running) {
            self.fail(&run.job, message.clone(), true);
        }
        self.generator.clear();
    }

    fn fail(&self, job: &Submission, message: String, retryable: bool) {
        self.metrics.job_ended(Outcome::Failed);
        let _ = self.events.send(Event::Failed {
            request_id: job.request_id,
            attempt: job.attempt,
            message,
            retryable,
        });
    }
}
