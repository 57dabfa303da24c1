//! The request queue, kept in the store, and its dispatcher.
//!
//! Any replica accepts a request (a `queued` row). Each replica's dispatcher claims queued rows
//! for the nodes it holds, least loaded first, and sends them out; results come back over the
//! node's socket to that replica, which records them. The accepting replica's handler wakes on a
//! local signal, a PostgreSQL NOTIFY from another replica, or at worst the poll interval. SQLite
//! has one replica and runs the same path without the NOTIFYs.

use crate::config::Config;
use crate::db::requests::{
    AttemptFailure, AttemptOutcome, Claimed, JobResult, Outcome, RequestStatus,
};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::nodes::registry::{Candidate, JobKind, Outbound, Registry, Taken};
use crate::validation::Speakers;
use crate::voice_prompt::{self, PromptError};
use proto::audio::wav_i16_bytes;
use proto::transcription::MAX_TRANSCRIPT_BYTES;
use proto::{
    BinaryFrame, ControlToNode, ErrorKind, Finished, FrameHeader, Job, NodeId, PcmEncoding,
    RequestId, SpeechTask, Stream, Task, WireError, SAMPLES_PER_FRAME, SAMPLE_RATE,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const CHANNEL_QUEUED: &str = "tts_queued";
const CHANNEL_DONE: &str = "tts_done";
const CHANNEL_CANCEL: &str = "tts_cancel";
/// Longest error message of a node kept in the history.
const MAX_NODE_MESSAGE_CHARS: usize = 1000;

/// The queue of one replica: dispatcher, completion signals, cancellation.
pub struct Queue {
    db: Db,
    registry: Arc<Registry>,
    replica_id: String,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    wake: Notify,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// A handler's registration for its request's completion; removed when dropped.
pub struct Waiter<'a> {
    queue: &'a Queue,
    id: String,
    notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.queue.waiters.lock().expect("waiters lock").remove(&self.id);
    }
}

impl Queue {
    /// A queue over the store and this replica's nodes.
    pub fn new(
        db: Db,
        registry: Arc<Registry>,
        replica_id: String,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            registry,
            replica_id,
            config,
            metrics,
            wake: Notify::new(),
            waiters: Mutex::default(),
        }
    }

    /// Registers interest in a request's end; do it before the request is stored.
    pub fn waiter(&self, id: &RequestId) -> Waiter<'_> {
        let notify = Arc::new(Notify::new());
        self.waiters.lock().expect("waiters lock").insert(id.to_string(), notify.clone());
        Waiter { queue: self, id: id.to_string(), notify }
    }

    /// Wakes this replica's dispatcher (a node freed up or joined).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells every replica that a request was queued.
    pub async fn announce_queued(&self) {
        self.wake();
        self.notify(CHANNEL_QUEUED, "").await;
    }

    async fn announce_done(&self, id: &str) {
        self.wake_waiter(id);
        self.notify(CHANNEL_DONE, id).await;
    }

    fn wake_waiter(&self, id: &str) {
        if let Some(n) = self.waiters.lock().expect("waiters lock").get(id) {
            n.notify_one();
        }
    }

    async fn notify(&self, channel: &str, payload: &str) {
        if let Err(e) = self.db.notify(channel, payload).await {
            tracing::error!(error = %e, channel, "notify failed; other replicas fall back to polling");
        }
    }

    /// Waits until the request ends. Its deadline is absolute: whenever it is found queued past
    /// it (also after a failed attempt sent it back), it fails. Called right after the request
    /// was stored, so it waits before it first looks; a signal sent in between is kept by the
    /// `Notify`.
    pub async fn wait(&self, waiter: &Waiter<'_>) -> Result<Outcome, sqlx::Error> {
        let deadline = Instant::now() + self.config.queue_timeout();
        loop {
            // Up to the deadline, and a poll interval at a time once it has passed (the request
            // may be running then, and runs to its job timeout).
            let until_deadline = deadline.saturating_duration_since(Instant::now());
            let nap = if until_deadline.is_zero() {
                self.config.poll_interval()
            } else {
                self.config.poll_interval().min(until_deadline)
            };
            tokio::select! {
                () = waiter.notify.notified() => {}
                () = tokio::time::sleep(nap) => {}
            }
            let outcome = self.db.outcome(&waiter.id).await?.ok_or(sqlx::Error::RowNotFound)?;
            match outcome.status {
                RequestStatus::Succeeded | RequestStatus::Failed => return Ok(outcome),
                RequestStatus::Queued if Instant::now() >= deadline => {
                    self.db.fail_unfinished(&waiter.id, &self.overdue(), false).await?;
                }
                _ => {}
            }
        }
    }

    /// Requests accepted before this instant (epoch ms) are past their deadline.
    fn deadline_passed_before(&self) -> i64 {
        crate::db::now_ms() - self.config.queue_timeout().as_millis() as i64
    }

    fn overdue(&self) -> WireError {
        let secs = self.config.queue_timeout_secs;
        WireError::new(
            ErrorKind::UpstreamError,
            format!("no node took the request within {secs} s"),
        )
    }

    /// Cancels a request whose client went away: recorded as failed (`cancelled`), and the node
    /// running it, on whichever replica, is told to stop.
    pub async fn cancel(&self, id: RequestId) {
        if let Err(e) = self.cancel_because(id, "the client disconnected").await {
            tracing::error!(error = %e, request = %id, "could not record a cancellation");
        }
    }

    /// Cancels a queued or running request (recorded as failed, `cancelled`, with `why`) and
    /// tells its node to stop; false when it had already ended.
    pub async fn cancel_because(&self, id: RequestId, why: &str) -> Result<bool, sqlx::Error> {
        let error = WireError::new(ErrorKind::Cancelled, why);
        let cancelled = self.db.fail_unfinished(&id.to_string(), &error, true).await?;
        if cancelled {
            self.cancel_local(id);
            self.notify(CHANNEL_CANCEL, &id.to_string()).await;
        }
        Ok(cancelled)
    }

    fn cancel_local(&self, id: RequestId) {
        if let Some(tx) = self.registry.cancel(id) {
            tracing::info!(request = %id, "cancelling on its node");
            let _ = tx.try_send(Outbound::Control(ControlToNode::Cancel { request_id: id }));
            self.wake();
        }
    }

    /// Takes an attempt away from its node of this replica and tells the node to stop it.
    pub async fn stop_attempt(&self, node: &NodeId, request: RequestId, attempt: u32) {
        if self.registry.take(node, request, attempt).is_some() {
            if let Some(tx) = self.registry.sender(node) {
                let _ =
                    tx.try_send(Outbound::Control(ControlToNode::Cancel { request_id: request }));
            }
        }
    }

    /// Ends a node's session here: out of the store, then out of the registry with its jobs
    /// failed over ([`Queue::node_left`]). Its socket closes at its next heartbeat, if it is
    /// still open ([`Registry::holds`]).
    pub async fn drop_node(&self, node: &NodeId, session: u64) {
        if !self.registry.holds(node, session) {
            return;
        }
        if let Err(e) = self.db.remove_node(&self.replica_id, &node.0).await {
            tracing::error!(error = %e, "could not remove a node from the store");
        }
        self.node_left(node, session).await;
    }

    /// Takes a node's session out of the registry and fails its unfinished jobs over: back to the
    /// queue, for another node, while attempts remain.
    pub async fn node_left(&self, node: &NodeId, session: u64) {
        let jobs = self.registry.remove(node, session);
        tracing::info!(node = %node, unfinished = jobs.len(), "node left");
        let lost = WireError::new(ErrorKind::UpstreamError, format!("node {node} disconnected"));
        for (request, attempt) in jobs {
            self.attempt_failed(request, attempt, AttemptOutcome::NodeLost, &lost, true).await;
        }
        self.wake();
    }

    /// A node's `failed`: the attempt ends, retried elsewhere when retryable. Whatever kind the
    /// node names, the client sees a failure upstream; the node's words stay in the history,
    /// within bounds.
    pub async fn failed(
        &self,
        node: &NodeId,
        request: RequestId,
        attempt: u32,
        error: &WireError,
        retryable: bool,
    ) {
        if self.registry.take(node, request, attempt).is_some() {
            let message: String = error.message.chars().take(MAX_NODE_MESSAGE_CHARS).collect();
            let error = WireError::new(ErrorKind::UpstreamError, message);
            self.attempt_failed(request, attempt, AttemptOutcome::Failed, &error, retryable).await;
        }
    }

    /// A node's `finished`, when it ends an attempt the node runs: a generation's audio becomes the
    /// request's WAV, a transcription's text its transcript. A result that does not fit the job
    /// fails the attempt.
    pub async fn finished(&self, node: &NodeId, done: &Finished) {
        if let Some(taken) = self.registry.take(node, done.request_id, done.attempt) {
            self.record_result(node, done, taken).await;
        }
    }

    async fn record_result(&self, node: &NodeId, done: &Finished, taken: Taken) {
        let wav;
        let result = match (taken.kind, &done.transcript) {
            (JobKind::Speech, None) => {
                let samples = proto::frames::i16_from_le_bytes(&taken.audio);
                if samples.len() as u64 != done.samples {
                    let msg = format!(
                        "node {node} announced {} samples but sent {}",
                        done.samples,
                        samples.len()
                    );
                    return self.reject_result(done, msg).await;
                }
                wav = wav_i16_bytes(&samples, SAMPLE_RATE);
                JobResult::Audio {
                    wav: &wav,
                    seconds: samples.len() as f64 / f64::from(SAMPLE_RATE),
                }
            }
            (JobKind::Transcription { clip_seconds }, Some(t)) => {
                if !taken.audio.is_empty() {
                    return self
                        .reject_result(done, format!("node {node} sent audio for a transcription"))
                        .await;
                }
                if t.text.len() > MAX_TRANSCRIPT_BYTES || !is_language_code(&t.language) {
                    let msg = format!(
                        "node {node} sent a transcript of {} bytes in language \"{}\" (at most {MAX_TRANSCRIPT_BYTES} bytes, a language code)",
                        t.text.len(),
                        t.language.chars().take(20).collect::<String>()
                    );
                    return self.reject_result(done, msg).await;
                }
                JobResult::Transcript { text: t.text.trim(), language: &t.language, clip_seconds }
            }
            (JobKind::Speech, Some(_)) => {
                return self
                    .reject_result(done, format!("node {node} sent a transcript for a generation"))
                    .await
            }
            (JobKind::Transcription { .. }, None) => {
                return self
                    .reject_result(
                        done,
                        format!("node {node} finished a transcription without its text"),
                    )
                    .await
            }
        };
        let id = done.request_id.to_string();
        let recorded = self
            .db
            .succeed(&id, i64::from(done.attempt), &result, f64::from(done.inference_seconds))
            .await;
        match recorded {
            Ok(true) => {
                match result {
                    JobResult::Audio { seconds, .. } => self.metrics.audio_seconds.inc_by(seconds),
                    JobResult::Transcript { clip_seconds, .. } => {
                        self.metrics.transcribed_seconds.inc_by(clip_seconds)
                    }
                }
                self.announce_done(&id).await;
            }
            Ok(false) => tracing::info!(request = %id, "result of an abandoned attempt dropped"),
            Err(e) => tracing::error!(error = %e, request = %id, "could not record a result"),
        }
        self.wake();
    }

    /// Fails an attempt whose node answered with something its job cannot have produced; another
    /// node may do better.
    async fn reject_result(&self, done: &Finished, message: String) {
        let error = WireError::new(ErrorKind::UpstreamError, message);
        self.attempt_failed(done.request_id, done.attempt, AttemptOutcome::Failed, &error, true)
            .await;
    }

    /// Ends an attempt without audio: retried while the error is retryable and attempts remain,
    /// otherwise the request fails (with `upstream_error` once every attempt has failed).
    pub async fn attempt_failed(
        &self,
        id: RequestId,
        attempt: u32,
        outcome: AttemptOutcome,
        error: &WireError,
        retryable: bool,
    ) {
        let max = self.config.max_attempts;
        let exhausted;
        let final_error = match (retryable, i64::from(attempt) < max) {
            (true, true) => None,
            (true, false) => {
                let msg = format!("all {attempt} attempts failed; the last: {}", error.message);
                exhausted = WireError::new(ErrorKind::UpstreamError, msg);
                Some(&exhausted)
            }
            (false, _) => Some(error),
        };
        let failure = AttemptFailure { outcome, error, final_error };
        match self.db.fail_attempt(&id.to_string(), i64::from(attempt), &failure).await {
            Ok(true) if final_error.is_none() => {
                tracing::info!(request = %id, attempt, error = %error, "retrying on another node");
                self.announce_queued().await;
            }
            Ok(true) => self.announce_done(&id.to_string()).await,
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, request = %id, "could not record a failed attempt")
            }
        }
        self.wake();
    }

    /// Sends an attempt's voice prompt to its node, which asked for it (once per attempt). The
    /// prompt is assembled from the library again; a sample deleted or changed since the request
    /// was accepted fails it (`invalid_voice_sample`).
    pub async fn send_voice_prompt(&self, node: &NodeId, request: RequestId, attempt: u32) {
        let Some(tx) = self.registry.claim_prompt(node, request, attempt) else {
            return tracing::warn!(node = %node, request = %request, "voice prompt asked for no current job, or twice");
        };
        match self.voice_prompt(request).await {
            Ok(pcm) => {
                let header = FrameHeader {
                    request_id: request,
                    attempt,
                    stream: Stream::VoicePrompt,
                    chunk: 0,
                    encoding: PcmEncoding::F32Le,
                };
                let frame = BinaryFrame { header, payload: pcm };
                if tx.try_send(Outbound::Frame(frame)).is_err() {
                    self.stop_attempt(node, request, attempt).await;
                    let lost =
                        WireError::new(ErrorKind::UpstreamError, format!("node {node} went away"));
                    self.attempt_failed(request, attempt, AttemptOutcome::NodeLost, &lost, true)
                        .await;
                }
            }
            Err((error, retryable)) => {
                self.stop_attempt(node, request, attempt).await;
                self.attempt_failed(request, attempt, AttemptOutcome::Failed, &error, retryable)
                    .await;
            }
        }
    }

    /// The voice prompt of a request as accepted, or the error that ends its attempt.
    async fn voice_prompt(&self, request: RequestId) -> Result<Vec<u8>, (WireError, bool)> {
        let upstream = |msg: String| (WireError::new(ErrorKind::UpstreamError, msg), true);
        let row =
            self.db.voice_refs(&request.to_string()).await.map_err(|e| upstream(e.to_string()))?;
        let (account, refs, task) = row.ok_or_else(|| upstream("the request is gone".into()))?;
        let announced = match serde_json::from_str::<Task>(&task) {
            Ok(Task::Speech(SpeechTask { voice_prompt: Some(p), .. })) => p.sha256,
            _ => return Err(upstream("a voice prompt was asked for a job without one".into())),
        };
        let speakers =
            refs.and_then(|r| serde_json::from_str::<Speakers>(&r).ok()).unwrap_or_default();
        let sample_error =
            |msg: String| (WireError::new(ErrorKind::InvalidVoiceSample, msg), false);
        match voice_prompt::assemble(&self.db, &account, speakers).await {
            Ok(Some(pcm)) if proto::sha256_hex(&pcm) == announced => Ok(pcm),
            Ok(_) => Err(sample_error("the voice samples changed before the request ran".into())),
            Err(PromptError::Deleted(id)) => {
                Err(sample_error(PromptError::Deleted(id).to_string()))
            }
            Err(PromptError::Db(e)) => Err(upstream(e.to_string())),
        }
    }

    /// The dispatcher: claims work for free nodes whenever woken, and at the poll interval; every
    /// heartbeat interval, fails over jobs whose node or replica vanished.
    pub async fn run_dispatcher(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval()) => {}
            }
            if let Err(e) = self.dispatch().await {
                tracing::error!(error = %e, "dispatch failed");
            }
            if last_sweep.elapsed() >= self.config.heartbeat_interval() {
                last_sweep = Instant::now();
                if let Err(e) = self.sweep().await {
                    tracing::error!(error = %e, "orphan sweep failed");
                }
            }
        }
    }

    /// Claims jobs until the queue is empty or no free node of this replica finds one.
    async fn dispatch(&self) -> Result<(), sqlx::Error> {
        'claiming: loop {
            // A read first: claiming is a write, and most wake-ups find nothing to claim.
            let queued = self.db.count_queued().await?;
            self.metrics.queue_depth.set(queued);
            if queued > 0 {
                for node in self.registry.candidates() {
                    if let Some(job) = self.claim_for(&node).await? {
                        self.send(&node.id, job).await;
                        // Loads changed: rank the nodes again.
                        continue 'claiming;
                    }
                }
            }
            let online = self.registry.online_by_feature();
            for feature in proto::FEATURES {
                let count = online.get(*feature).copied().unwrap_or(0);
                self.metrics.nodes_online.with_label_values(&[feature]).set(count);
            }
            return Ok(());
        }
    }

    async fn claim_for(&self, node: &Candidate) -> Result<Option<Claimed>, sqlx::Error> {
        let created_after = self.deadline_passed_before();
        for model in &node.models {
            for feature in &model.features {
                let (node_id, replica) = (&node.id.0, &self.replica_id);
                if let Some(job) =
                    self.db.claim(model, feature, node_id, replica, created_after).await?
                {
                    return Ok(Some(job));
                }
            }
        }
        Ok(None)
    }

    /// Sends a claimed job (and its voice prompt) to the node.
    async fn send(&self, node: &NodeId, claimed: Claimed) {
        let attempt = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
        let (Ok(request_id), Ok(task)) =
            (claimed.id.parse::<RequestId>(), serde_json::from_str::<Task>(&claimed.task))
        else {
            tracing::error!(request = claimed.id, "stored job does not parse");
            return;
        };
        self.metrics.queue_seconds.observe(claimed.queue_seconds);
        let max_audio_bytes = max_audio_samples(&task) * 2;
        let kind = match &task {
            Task::Speech(_) => JobKind::Speech,
            Task::Transcription(t) => JobKind::Transcription {
                clip_seconds: t.clip.samples as f64 / f64::from(SAMPLE_RATE),
            },
        };
        let Some((tx, session)) =
            self.registry.assign(node, request_id, attempt, kind, max_audio_bytes)
        else {
            let lost = WireError::new(ErrorKind::UpstreamError, format!("node {node} went away"));
            self.attempt_failed(request_id, attempt, AttemptOutcome::NodeLost, &lost, true).await;
            return;
        };
        let attached = task.attached_audio();
        let job = ControlToNode::Submit(Job { request_id, attempt, model: claimed.model, task });
        let mut sent = tx.try_send(Outbound::Control(job)).is_ok();
        if let (Some((stream, clip)), Some(pcm)) = (attached, claimed.prompt_audio) {
            let header =
                FrameHeader { request_id, attempt, stream, chunk: 0, encoding: clip.encoding };
            sent &= tx.try_send(Outbound::Frame(BinaryFrame { header, payload: pcm })).is_ok();
        }
        if !sent {
            // Its outbox is full (it stopped reading) or its session is ending: the node is lost,
            // this job and the others it holds fail over, and it gets no more.
            tracing::warn!(node = %node, "outbox full: node dropped");
            self.drop_node(node, session).await;
        }
    }

    async fn sweep(&self) -> Result<(), sqlx::Error> {
        // Queued past its deadline with no handler left to notice (its replica went away).
        let created_before = self.deadline_passed_before();
        for id in self.db.fail_overdue_queued(created_before, &self.overdue()).await? {
            self.announce_done(&id).await;
        }
        let fresh = self.config.heartbeat_timeout().as_millis() as i64;
        for (id, attempt) in self.db.orphaned_running(fresh).await? {
            let (Ok(id), Ok(attempt)) = (id.parse(), u32::try_from(attempt)) else { continue };
            let lost = WireError::new(
                ErrorKind::UpstreamError,
                "the node or replica running it went away",
            );
            self.attempt_failed(id, attempt, AttemptOutcome::NodeLost, &lost, true).await;
        }
        let limit = self.config.job_timeout_secs;
        let late = |node: &NodeId| {
            let msg = format!("node {node} did not finish within {limit} s");
            WireError::new(ErrorKind::UpstreamError, msg)
        };
        // This replica's nodes: it stops their overdue attempts itself, whichever replica
        // records the timeout first (recording twice is a no-op).
        for (node, id, attempt) in self.registry.overdue(Duration::from_secs(limit)) {
            self.stop_attempt(&node, id, attempt).await;
            let late = late(&node);
            self.attempt_failed(id, attempt, AttemptOutcome::TimedOut, &late, true).await;
        }
        // The store's, for nodes of other replicas: recorded here, stopped by their replica.
        let started_before = crate::db::now_ms() - (limit * 1000) as i64;
        for (id, attempt, node) in self.db.overdue_running(started_before).await? {
            let (Ok(id), Ok(attempt)) = (id.parse(), u32::try_from(attempt)) else { continue };
            let node = NodeId(node);
            let late = late(&node);
            self.attempt_failed(id, attempt, AttemptOutcome::TimedOut, &late, true).await;
        }
        Ok(())
    }

    /// Follows the other replicas' notifications (PostgreSQL only; returns at once on SQLite).
    pub async fn run_listener(self: Arc<Self>) {
        let Db::Postgres(pool) = &self.db else { return };
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "LISTEN connection failed; polling meanwhile");
                    tokio::time::sleep(self.config.poll_interval()).await;
                    continue;
                }
            };
            if let Err(e) =
                listener.listen_all([CHANNEL_QUEUED, CHANNEL_DONE, CHANNEL_CANCEL]).await
            {
                tracing::error!(error = %e, "LISTEN failed");
                continue;
            }
            while let Ok(n) = listener.recv().await {
                match n.channel() {
                    CHANNEL_QUEUED => self.wake(),
                    CHANNEL_DONE => self.wake_waiter(n.payload()),
                    _ => {
                        if let Ok(id) = n.payload().parse() {
                            self.cancel_local(id);
                        }
                    }
                }
            }
        }
    }
}

/// The most audio a job may bring back: for speech, its frames at the speed factor plus a second
/// of slack; none for other kinds.
fn max_audio_samples(task: &Task) -> usize {
    let Task::Speech(speech) = task else { return 0 };
    let frames = f64::from(speech.max_new_tokens) * f64::from(SAMPLES_PER_FRAME);
    (frames / f64::from(speech.speed_factor).max(0.1)).ceil() as usize + SAMPLE_RATE as usize
}

/// A language code as Whisper's tokenizer spells them (`en`, `haw`, `yue`).
fn is_language_code(code: &str) -> bool {
    (2..=3).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_lowercase())
}
