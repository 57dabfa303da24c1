//! The queue, routing and failover without sockets: fake nodes are registry entries whose outbox
//! the test reads, and report back through the queue as a node's session does. The store and
//! the dispatcher are real. Every test runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::node::{cloning_model, stt_model, MODEL};
use common::{Backend, TestDb};
use control_plane::db::nodes::NodeState;
use control_plane::db::requests::{AttemptOutcome, NewRequest, Outcome, RequestStatus};
use control_plane::nodes::registry::Outbound;
use control_plane::routing::Needs;
use control_plane::AppState;
use proto::frames::i16_le_bytes;
use proto::{
    BinaryFrame, Clip, ControlToNode, ErrorKind, Finished, FrameHeader, Health, Hello, Job,
    ModelInfo, NodeId, PcmEncoding, RequestId, Sampling, SpeechTask, Stream, Task, Transcript,
    TranscriptionTask, VoicePrompt, WireError, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

/// A node as the queue sees one: a registry entry, and its outbox.
struct FakeNode {
    id: NodeId,
    session: u64,
    outbox: mpsc::Receiver<Outbound>,
}

impl FakeNode {
    async fn join(state: &AppState, id: &str, capacity: u32, model: ModelInfo) -> Self {
        let node = Self::register(state, id, capacity, model).await;
        state.registry.joined(&node.id, node.session);
        state.queue.wake();
        node
    }

    /// Stored and registered as a session does before it welcomes the node: not joined yet.
    async fn register(state: &AppState, id: &str, capacity: u32, model: ModelInfo) -> Self {
        let (tx, outbox) = mpsc::channel(16);
        let models = vec![model];
        // Published as a session does: the dispatcher fails over the jobs of nodes the store
        // does not list.
        let row = fake_row(id, &models, capacity);
        assert!(state.db.upsert_node(&state.replica_id, &row, 15_000).await.unwrap());
        let node_id = NodeId(id.into());
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: node_id.clone(),
            models,
            capacity,
            gpu: None,
            gpu_unavailable: Some("a fake node".into()),
        };
        let session = state.registry.register(hello, tx).unwrap();
        Self { id: node_id, session, outbox }
    }

    async fn next(&mut self) -> Outbound {
        let next = tokio::time::timeout(Duration::from_secs(5), self.outbox.recv()).await;
        next.unwrap_or_else(|_| panic!("node {} got nothing within 5 s", self.id)).unwrap()
    }

    async fn next_submit(&mut self) -> Job {
        match self.next().await {
            Outbound::Control(ControlToNode::Submit(job)) => job,
            other => panic!("node {} expected a submit, got {other:?}", self.id),
        }
    }

    /// Nothing arrives for a second: five dispatcher polls.
    async fn stays_idle(&mut self) {
        let next = tokio::time::timeout(Duration::from_secs(1), self.outbox.recv()).await;
        assert!(next.is_err(), "node {} was sent {next:?}", self.id);
    }

    /// Sends `samples` of audio for a speech job, then `finished`.
    async fn complete(&self, state: &AppState, job: &Job, samples: usize) {
        let header = FrameHeader::audio(job.request_id, job.attempt, 0);
        let pcm = i16_le_bytes(&vec![7; samples]);
        state.registry.push_audio(&self.id, &header, &pcm).unwrap();
        state.queue.finished(&self.id, &finished(job, samples as u64, None)).await;
    }

    async fn leave(self, state: &AppState) {
        state.queue.node_left(&self.id, self.session).await;
    }
}

fn finished(job: &Job, samples: u64, transcript: Option<Transcript>) -> Finished {
    Finished {
        request_id: job.request_id,
        attempt: job.attempt,
        samples,
        inference_seconds: 0.01,
        transcript,
    }
}

async fn start(db: &TestDb) -> (AppState, String) {
    let state = AppState::start(common::config(&db.url)).await.unwrap();
    let account = state.db.create_account("test").await.unwrap();
    (state, account)
}

/// Queues a request as the API does, with what it needs of a node.
async fn queue(state: &AppState, account: &str, task: Task, needs: Needs, audio: Option<&[u8]>) {
    let (id, task_json) = (RequestId::new().to_string(), serde_json::to_string(&task).unwrap());
    let new = NewRequest {
        id: &id,
        account_id: account,
        feature: task.feature(),
        model: MODEL,
        input: "queued by a test",
        params: "{}",
        seed: 1,
        visibility: "private",
        collection: None,
        task: &task_json,
        text_tokens: needs.text_tokens as i64,
        frames: needs.frames() as i64,
        new_frames: needs.new_frames as i64,
        voice_refs: None,
        prompt_audio: audio,
    };
    assert!(state.db.insert_request(&new, 100).await.unwrap());
    state.queue.announce_queued().await;
}

/// A speech job cloning a voice prompt of `prompt_samples`, generating up to `new_frames`.
async fn queue_speech(state: &AppState, account: &str, prompt_samples: u64, new_frames: u32) {
    let task = Task::Speech(SpeechTask {
        text: "[S1] Hello.".into(),
        sampling: Sampling::default(),
        speed_factor: 1.0,
        max_new_tokens: new_frames,
        seed: 1,
        voice_prompt: Some(VoicePrompt {
            samples: prompt_samples,
            encoding: PcmEncoding::F32Le,
            sha256: "00".repeat(32),
        }),
    });
    let needs = Needs { text_tokens: 11, prompt_samples, new_frames: u64::from(new_frames) };
    queue(state, account, task, needs, None).await;
}

async fn outcome(state: &AppState, job: &Job) -> Outcome {
    state.db.outcome(&job.request_id.to_string()).await.unwrap().unwrap()
}

/// Waits until the request is no longer queued or running.
async fn ended(state: &AppState, job: &Job) -> Outcome {
    for _ in 0..200 {
        let now = outcome(state, job).await;
        if !now.status.is_active() {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("request {} did not end within 5 s", job.request_id);
}

/// A voice-cloning model holding at most `max_frames` decoder frames per job.
fn cloning_within(max_frames: u32) -> ModelInfo {
    ModelInfo { max_new_tokens: max_frames.min(4096), max_frames, ..cloning_model(MODEL) }
}

async fn a_job_goes_to_a_node_with_its_feature_and_room_for_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    // At equal load nodes rank by id: these two are offered every job first. The first serves
    // the same model id, but without the voice-cloning feature.
    let mut stt = FakeNode::join(&state, "a-stt", 4, stt_model(MODEL)).await;
    let mut small = FakeNode::join(&state, "b-small", 4, cloning_within(1000)).await;
    let mut roomy = FakeNode::join(&state, "c-roomy", 1, cloning_within(7600)).await;

    // 3 s of prompt (259 frames) and 1000 new frames: 1259, past the small node.
    queue_speech(&state, &account, 132_300, 1000).await;
    let job = roomy.next_submit().await;
    assert_eq!(job.attempt, 1);
    tokio::join!(stt.stays_idle(), small.stays_idle());
    // 259 + 512 fits the small node.
    queue_speech(&state, &account, 132_300, 512).await;
    let fits = small.next_submit().await;

    roomy.complete(&state, &job, 4410).await;
    let done = ended(&state, &job).await;
    assert_eq!(done.status, RequestStatus::Succeeded);
    assert_eq!((done.node_id.as_deref(), done.audio_seconds), (Some("c-roomy"), Some(0.1)));
    small.complete(&state, &fits, 100).await;
    assert_eq!(ended(&state, &fits).await.node_id.as_deref(), Some("b-small"));
}

async fn a_transcriptions_clip_follows_its_submit_as_a_frame(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    let mut node = FakeNode::join(&state, "stt", 1, stt_model(MODEL)).await;
    let clip = i16_le_bytes(&[1, -2, 3]);
    let task = Task::Transcription(TranscriptionTask {
        clip: Clip { samples: 3, encoding: PcmEncoding::I16Le },
        language: None,
    });
    let needs = Needs { text_tokens: 0, prompt_samples: 0, new_frames: 0 };
    queue(&state, &account, task, needs, Some(&clip)).await;

    let job = node.next_submit().await;
    let Outbound::Frame(BinaryFrame { header, payload }) = node.next().await else {
        panic!("the clip did not follow the submit");
    };
    assert_eq!((header.request_id, header.attempt), (job.request_id, job.attempt));
    assert_eq!((header.stream, header.encoding, payload), (Stream::Clip, PcmEncoding::I16Le, clip));
    let said = Transcript { text: "Hi.".into(), language: "en".into() };
    state.queue.finished(&node.id, &finished(&job, 0, Some(said))).await;
    let done = ended(&state, &job).await;
    assert_eq!((done.transcript.as_deref(), done.language.as_deref()), (Some("Hi."), Some("en")));
}

async fn a_departed_nodes_job_goes_back_to_the_queue_and_then_to_another_node(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    let mut first = FakeNode::join(&state, "first", 1, cloning_model(MODEL)).await;
    queue_speech(&state, &account, 0, 256).await;
    let job = first.next_submit().await;
    first.leave(&state).await;
    assert_eq!(outcome(&state, &job).await.status, RequestStatus::Queued);

    let mut second = FakeNode::join(&state, "second", 1, cloning_model(MODEL)).await;
    let retry = second.next_submit().await;
    assert_eq!((retry.request_id, retry.attempt), (job.request_id, 2));
    second.complete(&state, &retry, 100).await;
    assert_eq!(ended(&state, &job).await.status, RequestStatus::Succeeded);
    let attempts = state.db.attempts(&job.request_id.to_string()).await.unwrap();
    let tried: Vec<_> = attempts.iter().map(|a| (a.node_id.as_str(), a.outcome)).collect();
    assert_eq!(tried, [("first", AttemptOutcome::NodeLost), ("second", AttemptOutcome::Succeeded)]);
}

async fn a_retryable_failure_fails_over_and_a_final_one_ends_the_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    let mut a = FakeNode::join(&state, "a", 1, cloning_model(MODEL)).await;
    let mut b = FakeNode::join(&state, "b", 1, cloning_model(MODEL)).await;
    queue_speech(&state, &account, 0, 256).await;
    let job = a.next_submit().await;
    let oom = WireError::new(ErrorKind::InternalError, "out of memory");
    state.queue.failed(&a.id, job.request_id, job.attempt, &oom, true).await;
    // Back in the queue, for whichever node is free first.
    let (node, retry) = tokio::select! {
        job = a.next_submit() => ("a", job),
        job = b.next_submit() => ("b", job),
    };
    assert_eq!((retry.request_id, retry.attempt), (job.request_id, 2));
    let bad = WireError::new(ErrorKind::InvalidScript, "cannot read it");
    let node = NodeId(node.into());
    state.queue.failed(&node, retry.request_id, retry.attempt, &bad, false).await;
    let done = ended(&state, &job).await;
    assert_eq!(done.status, RequestStatus::Failed);
    // Whatever kind a node names, the client sees a failure upstream.
    assert_eq!(done.error_type.as_deref(), Some("upstream_error"));
    assert_eq!(done.error_message.as_deref(), Some("cannot read it"));
}

async fn a_node_is_given_no_more_jobs_than_its_capacity(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    let mut node = FakeNode::join(&state, "pair", 2, cloning_model(MODEL)).await;
    for _ in 0..3 {
        queue_speech(&state, &account, 0, 256).await;
    }
    let one = node.next_submit().await;
    let two = node.next_submit().await;
    node.stays_idle().await;
    node.complete(&state, &one, 100).await;
    let three = node.next_submit().await;
    assert!(![one.request_id, two.request_id].contains(&three.request_id));
}

async fn a_node_gets_work_and_counts_online_only_once_it_has_joined(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    let mut node = FakeNode::register(&state, "joining", 2, cloning_model(MODEL)).await;
    queue_speech(&state, &account, 0, 256).await;
    node.stays_idle().await;
    assert_eq!(state.registry.online_by_feature().get("voice-cloning"), None);
    state.registry.joined(&node.id, node.session);
    state.queue.wake();
    let job = node.next_submit().await;
    assert_eq!(state.registry.online_by_feature().get("voice-cloning"), Some(&1));
    node.complete(&state, &job, 100).await;
    assert_eq!(ended(&state, &job).await.status, RequestStatus::Succeeded);
}

async fn a_node_whose_outbox_fills_is_dropped_and_its_jobs_fail_over(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, account) = start(&db).await;
    // Room for 32 jobs, and an outbox of 16 it never reads: the 17th submit does not fit.
    let stalled = FakeNode::join(&state, "a-stalled", 32, cloning_model(MODEL)).await;
    for _ in 0..17 {
        queue_speech(&state, &account, 0, 256).await;
    }
    common::eventually(async || !state.registry.holds(&stalled.id, stalled.session)).await;
    let mut steady = FakeNode::join(&state, "b-steady", 32, cloning_model(MODEL)).await;
    for _ in 0..17 {
        let job = steady.next_submit().await;
        assert_eq!(job.attempt, 2, "every job the stalled node held fails over, once");
        steady.complete(&state, &job, 10).await;
        let attempts = state.db.attempts(&job.request_id.to_string()).await.unwrap();
        let tried: Vec<_> = attempts.iter().map(|a| (a.node_id.as_str(), a.outcome)).collect();
        assert_eq!(
            tried,
            [("a-stalled", AttemptOutcome::NodeLost), ("b-steady", AttemptOutcome::Succeeded)]
        );
    }
    steady.stays_idle().await;
}

/// The store's row of a healthy fake node running nothing.
fn fake_row<'a>(id: &'a str, models: &'a [ModelInfo], capacity: u32) -> NodeState<'a> {
    NodeState {
        id,
        models,
        capacity,
        active: 0,
        health: &Health::Healthy,
        draining: false,
        gpu: None,
        gpu_unavailable: Some("a fake node"),
        gpu_readings: None,
    }
}

async fn a_node_id_is_held_by_one_replica_until_its_row_goes_stale(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (state, _) = start(&db).await;
    let models = vec![cloning_model(MODEL)];
    let row = fake_row("contested", &models, 1);
    let fresh = 60_000;
    assert!(state.db.upsert_node("replica-a", &row, fresh).await.unwrap());
    assert!(!state.db.upsert_node("replica-b", &row, fresh).await.unwrap(), "held by a");
    assert!(state.db.upsert_node("replica-a", &row, fresh).await.unwrap(), "a refreshes it");
    let pool = state.db.pool_nodes(fresh).await.unwrap();
    assert_eq!(pool.iter().map(|n| n.replica_id.as_str()).collect::<Vec<_>>(), ["replica-a"]);
    // Once a's row is older than what counts as fresh, b may take the id over.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(state.db.upsert_node("replica-b", &row, 10).await.unwrap(), "stale: b takes it");
    assert!(!state.db.upsert_node("replica-a", &row, fresh).await.unwrap(), "held by b now");
}

async fn an_overdue_attempt_is_stopped_on_its_node_even_when_another_replica_recorded_it(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.job_timeout_secs = 1;
    let state = AppState::start(config).await.unwrap();
    let account = state.db.create_account("test").await.unwrap();
    let mut node = FakeNode::join(&state, "slow", 1, cloning_model(MODEL)).await;
    queue_speech(&state, &account, 0, 256).await;
    let job = node.next_submit().await;
    // Another replica's sweep records the timeout first: the request goes back to the queue.
    let late = WireError::new(ErrorKind::UpstreamError, "late, as another replica saw it");
    state.queue.attempt_failed(job.request_id, 1, AttemptOutcome::TimedOut, &late, true).await;
    // This replica still stops the attempt on its node (at its next sweep, within a heartbeat
    // interval), which frees the node's one slot for the retry.
    let within = Duration::from_secs(12);
    match tokio::time::timeout(within, node.outbox.recv()).await.expect("a cancel").unwrap() {
        Outbound::Control(ControlToNode::Cancel { request_id }) => {
            assert_eq!(request_id, job.request_id)
        }
        other => panic!("expected the overdue attempt cancelled, got {other:?}"),
    }
    match tokio::time::timeout(within, node.outbox.recv()).await.expect("the retry").unwrap() {
        Outbound::Control(ControlToNode::Submit(retry)) => {
            assert_eq!((retry.request_id, retry.attempt), (job.request_id, 2))
        }
        other => panic!("expected the retry, got {other:?}"),
    }
}

on_both_backends!(
    an_overdue_attempt_is_stopped_on_its_node_even_when_another_replica_recorded_it,
    a_node_id_is_held_by_one_replica_until_its_row_goes_stale,
    a_node_whose_outbox_fills_is_dropped_and_its_jobs_fail_over,
    a_node_gets_work_and_counts_online_only_once_it_has_joined,
    a_job_goes_to_a_node_with_its_feature_and_room_for_it,
    a_transcriptions_clip_follows_its_submit_as_a_frame,
    a_departed_nodes_job_goes_back_to_the_queue_and_then_to_another_node,
    a_retryable_failure_fails_over_and_a_final_one_ends_the_request,
    a_node_is_given_no_more_jobs_than_its_capacity,
);
