//! The nodes connected to this replica: their sockets, health, capacity, and the jobs each is
//! running.

use proto::{
    BinaryFrame, ControlToNode, FrameHeader, GpuReadings, Health, Hello, ModelInfo, NodeId,
    PcmEncoding, RequestId,
};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;

/// A message for one node. The queue and the registry speak `proto`; the node's session
/// ([`crate::nodes::ws`]) alone puts it on the wire, so they can be tested without a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A control message (a JSON text frame).
    Control(ControlToNode),
    /// Audio that follows a submit (a binary frame): a voice prompt or a clip.
    Frame(BinaryFrame),
}

/// Outbound messages to one node's socket; bounded, so a node that stops reading cannot make
/// the control plane buffer without end (a full outbox counts as a lost node).
pub type NodeTx = Sender<Outbound>;

struct Entry {
    session: u64,
    hello: Hello,
    /// Jobs it takes at once now: its last heartbeat's capacity, never above its hello's (which
    /// the session has capped at `MAX_NODE_CAPACITY`).
    capacity: u32,
    tx: NodeTx,
    /// Stored and welcomed ([`Registry::joined`]): until then it gets no work and is not
    /// counted online, so nobody sees it online before `/v1/models` can list it.
    joined: bool,
    /// As its last heartbeat said.
    health: Health,
    /// Its GPU's readings, as its last heartbeat said.
    gpu: Option<GpuReadings>,
    draining: bool,
    jobs: HashMap<RequestId, Running>,
    /// When its state last went to the store ([`Registry::heartbeat`]).
    published: Option<Instant>,
}

struct Running {
    attempt: u32,
    kind: JobKind,
    /// 16-bit LE PCM received so far, in chunk order.
    audio: Vec<u8>,
    next_chunk: u32,
    /// Most audio bytes the job may produce.
    max_audio_bytes: usize,
    /// The voice prompt was sent: a node asks once per attempt.
    prompt_sent: bool,
    /// When it was sent to the node.
    started: Instant,
    /// When its progress last went to the store ([`Registry::progress_due`]).
    progress_at: Option<Instant>,
}

/// What a job is expected to bring back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobKind {
    /// Audio chunks, then `finished`.
    Speech,
    /// `finished` with a transcript, no audio.
    Transcription {
        /// Length of the clip sent, for the history and metrics.
        clip_seconds: f64,
    },
}

/// A job taken off its node: what it is, and the audio it sent.
pub struct Taken {
    /// What the job was.
    pub kind: JobKind,
    /// 16-bit LE PCM received, in chunk order.
    pub audio: Vec<u8>,
}

/// Why an audio chunk was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum AudioRefused {
    /// No such job on the node, a stale attempt, or a chunk out of order.
    NotExpected,
    /// More audio than the job's bound allows: the attempt must end.
    TooLong,
    /// Audio comes back as 16-bit PCM; another encoding ends the attempt.
    NotI16,
}

/// A node that can take a job now.
pub struct Candidate {
    /// Node id.
    pub id: NodeId,
    /// What it serves.
    pub models: Vec<ModelInfo>,
}

/// Why a node's hello was refused.
#[derive(Debug, thiserror::Error)]
#[error("node `{0}` is already connected")]
pub struct AlreadyConnected(pub NodeId);

/// A snapshot of one node, for the store and metrics.
pub struct Snapshot {
    /// Its hello.
    pub hello: Hello,
    /// Jobs it takes at once now.
    pub capacity: u32,
    /// Jobs running.
    pub active: u32,
    /// Whether it takes work, and why not.
    pub health: Health,
    /// Its GPU's readings.
    pub gpu: Option<GpuReadings>,
    /// Finishing only.
    pub draining: bool,
}

/// Nodes of this replica. A plain mutex: every critical section is a few map operations.
#[derive(Default)]
pub struct Registry {
    nodes: Mutex<HashMap<NodeId, Entry>>,
    next_session: std::sync::atomic::AtomicU64,
}

impl Registry {
    /// Adds a node, not yet joined; returns the session number its removal must present.
    pub fn register(&self, hello: Hello, tx: NodeTx) -> Result<u64, AlreadyConnected> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        if nodes.contains_key(&hello.node_id) {
            return Err(AlreadyConnected(hello.node_id));
        }
        let session = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            session,
            capacity: hello.capacity,
            hello: hello.clone(),
            tx,
            joined: false,
            health: Health::Healthy,
            gpu: None,
            draining: false,
            jobs: HashMap::new(),
            published: None,
        };
        nodes.insert(hello.node_id, entry);
        Ok(session)
    }

    /// Marks a node's session joined: its row is in the store and it was welcomed.
    pub fn joined(&self, id: &NodeId, session: u64) {
        let mut nodes = self.nodes.lock().expect("registry lock");
        if let Some(e) = nodes.get_mut(id).filter(|e| e.session == session) {
            e.joined = true;
        }
    }

    /// Removes a node's session; returns the jobs it was running, to fail over.
    pub fn remove(&self, id: &NodeId, session: u64) -> Vec<(RequestId, u32)> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        match nodes.get(id) {
            Some(entry) if entry.session == session => {
                let entry = nodes.remove(id).expect("present");
                entry.jobs.into_iter().map(|(rid, r)| (rid, r.attempt)).collect()
            }
            _ => Vec::new(),
        }
    }

    /// Joined, healthy, non-draining nodes with a free slot, least loaded (by fraction of
    /// capacity) first.
    /// A node whose capacity fell below the jobs it runs gets none until they are fewer.
    pub fn candidates(&self) -> Vec<Candidate> {
        let nodes = self.nodes.lock().expect("registry lock");
        let mut free: Vec<(f64, Candidate)> = nodes
            .values()
            .filter(|e| e.joined && e.health == Health::Healthy && !e.draining)
            .filter(|e| (e.jobs.len() as u32) < e.capacity)
            .map(|e| {
                let load = e.jobs.len() as f64 / f64::from(e.capacity);
                (load, Candidate { id: e.hello.node_id.clone(), models: e.hello.models.clone() })
            })
            .collect();
        free.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        free.into_iter().map(|(_, c)| c).collect()
    }

    /// Books a job of `kind` that may produce up to `max_audio_bytes` on a node; returns the
    /// socket to send it on and the node's session, or `None` if the node is gone.
    pub fn assign(
        &self,
        id: &NodeId,
        request: RequestId,
        attempt: u32,
        kind: JobKind,
        max_audio_bytes: usize,
    ) -> Option<(NodeTx, u64)> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let entry = nodes.get_mut(id)?;
        let job = Running {
            attempt,
            kind,
            audio: Vec::new(),
            next_chunk: 0,
            max_audio_bytes,
            prompt_sent: false,
            started: Instant::now(),
            progress_at: None,
        };
        entry.jobs.insert(request, job);
        Some((entry.tx.clone(), entry.session))
    }

    /// Attempts that have run on their node of this replica for longer than `limit`.
    pub fn overdue(&self, limit: Duration) -> Vec<(NodeId, RequestId, u32)> {
        let nodes = self.nodes.lock().expect("registry lock");
        let overdue = nodes.iter().flat_map(|(id, e)| {
            e.jobs
                .iter()
                .filter(|(_, job)| job.started.elapsed() > limit)
                .map(|(request, job)| (id.clone(), *request, job.attempt))
        });
        overdue.collect()
    }

    /// Whether `session` is still the node's: false once it was dropped ([`Registry::remove`]).
    pub fn holds(&self, id: &NodeId, session: u64) -> bool {
        self.nodes.lock().expect("registry lock").get(id).is_some_and(|e| e.session == session)
    }

    /// Appends an audio chunk of the job's current attempt, in order and within its bound.
    pub fn push_audio(
        &self,
        id: &NodeId,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<(), AudioRefused> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let job = nodes
            .get_mut(id)
            .and_then(|e| e.jobs.get_mut(&header.request_id))
            .filter(|job| job.attempt == header.attempt && job.next_chunk == header.chunk)
            .ok_or(AudioRefused::NotExpected)?;
        if header.encoding != PcmEncoding::I16Le {
            return Err(AudioRefused::NotI16);
        }
        if job.audio.len() + payload.len() > job.max_audio_bytes {
            return Err(AudioRefused::TooLong);
        }
        job.audio.extend_from_slice(payload);
        job.next_chunk += 1;
        Ok(())
    }

    /// Ends a job on a node; returns what it was and its audio when the attempt matches.
    pub fn take(&self, id: &NodeId, request: RequestId, attempt: u32) -> Option<Taken> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let jobs = &mut nodes.get_mut(id)?.jobs;
        if jobs.get(&request)?.attempt != attempt {
            return None;
        }
        jobs.remove(&request).map(|r| Taken { kind: r.kind, audio: r.audio })
    }

    /// The socket to send `attempt`'s voice prompt on, the first time its node asks; `None` when
    /// the attempt does not run there or asked before.
    pub fn claim_prompt(&self, id: &NodeId, request: RequestId, attempt: u32) -> Option<NodeTx> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let entry = nodes.get_mut(id)?;
        let job =
            entry.jobs.get_mut(&request).filter(|j| j.attempt == attempt && !j.prompt_sent)?;
        job.prompt_sent = true;
        Some(entry.tx.clone())
    }

    /// Whether `attempt`'s progress should go to the store: the node runs that attempt, and its
    /// progress last went there at least `every` ago (a node reporting in a flood costs one
    /// write per `every`).
    pub fn progress_due(
        &self,
        id: &NodeId,
        request: RequestId,
        attempt: u32,
        every: Duration,
    ) -> bool {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let Some(job) = nodes.get_mut(id).and_then(|e| e.jobs.get_mut(&request)) else {
            return false;
        };
        let due = job.attempt == attempt && job.progress_at.is_none_or(|t| t.elapsed() >= every);
        if due {
            job.progress_at = Some(Instant::now());
        }
        due
    }

    /// The socket of a node of this replica.
    pub fn sender(&self, id: &NodeId) -> Option<NodeTx> {
        self.nodes.lock().expect("registry lock").get(id).map(|e| e.tx.clone())
    }

    /// Drops a job wherever it runs on this replica; returns the node's socket to cancel it on.
    pub fn cancel(&self, request: RequestId) -> Option<NodeTx> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        nodes.values_mut().find_map(|e| e.jobs.remove(&request).map(|_| e.tx.clone()))
    }

    /// Records a heartbeat's health and capacity (bounded by the hello's); true when the store
    /// should hear of it: they changed, or it last did at least `every` ago (a node sending
    /// heartbeats in a flood costs one write per `every`).
    pub fn heartbeat(
        &self,
        id: &NodeId,
        health: Health,
        capacity: u32,
        gpu: Option<GpuReadings>,
        every: Duration,
    ) -> bool {
        let mut nodes = self.nodes.lock().expect("registry lock");
        let Some(e) = nodes.get_mut(id) else { return false };
        let capacity = capacity.min(e.hello.capacity);
        let changed = e.health != health || e.capacity != capacity;
        (e.health, e.capacity, e.gpu) = (health, capacity, gpu);
        let due = changed || e.published.is_none_or(|t| t.elapsed() >= every);
        if due {
            e.published = Some(Instant::now());
        }
        due
    }

    /// Marks every node draining and returns their sockets (shutdown).
    pub fn drain_all(&self) -> Vec<NodeTx> {
        let mut nodes = self.nodes.lock().expect("registry lock");
        nodes
            .values_mut()
            .map(|e| {
                e.draining = true;
                e.tx.clone()
            })
            .collect()
    }

    /// One node's state.
    pub fn snapshot(&self, id: &NodeId) -> Option<Snapshot> {
        let nodes = self.nodes.lock().expect("registry lock");
        nodes.get(id).map(|e| Snapshot {
            hello: e.hello.clone(),
            capacity: e.capacity,
            active: e.jobs.len() as u32,
            health: e.health.clone(),
            gpu: e.gpu.clone(),
            draining: e.draining,
        })
    }

    /// Joined, healthy nodes per feature, for the `tts_nodes_online` gauge.
    pub fn online_by_feature(&self) -> HashMap<String, i64> {
        let mut counts = HashMap::new();
        let nodes = self.nodes.lock().expect("registry lock");
        for e in nodes.values().filter(|e| e.joined && e.health == Health::Healthy) {
            let mut features: Vec<&String> =
                e.hello.models.iter().flat_map(|m| &m.features).collect();
            features.sort();
            features.dedup();
            for f in features {
                *counts.entry(f.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::PROTOCOL_VERSION;

    fn registry_with_a_job() -> (Registry, NodeId, RequestId) {
        let registry = Registry::default();
        let id = NodeId("n".into());
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            node_id: id.clone(),
            models: vec![],
            capacity: 4,
            gpu: None,
            gpu_unavailable: Some("none".into()),
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        registry.register(hello, tx).unwrap();
        let request = RequestId::new();
        registry.assign(&id, request, 2, JobKind::Speech, 0).unwrap();
        (registry, id, request)
    }

    #[test]
    fn a_flood_of_heartbeats_reaches_the_store_when_something_changed_or_once_per_interval() {
        let (registry, id, _) = registry_with_a_job();
        let every = Duration::from_millis(50);
        let beat = |health: &Health, capacity| {
            registry.heartbeat(&id, health.clone(), capacity, None, every)
        };
        let (up, down) = (Health::Healthy, Health::Unhealthy { reason: "hot".into() });
        assert!(beat(&up, 4), "the first is published");
        assert!(!beat(&up, 4), "the same again, at once, is not");
        assert!(!beat(&up, 9), "capped at the hello's 4: no change");
        assert!(beat(&up, 2), "a change in capacity is");
        assert!(beat(&down, 2), "a change in health is");
        assert!(!beat(&down, 2));
        assert!(beat(&Health::Unhealthy { reason: "XID 79".into() }, 2), "and in its reason");
        std::thread::sleep(every);
        assert!(
            beat(&Health::Unhealthy { reason: "XID 79".into() }, 2),
            "once per interval anyway"
        );
        let other = NodeId("other".into());
        assert!(!registry.heartbeat(&other, up, 1, None, every), "no such node");
    }

    #[test]
    fn progress_reaches_the_store_once_per_interval_and_only_from_the_running_attempt() {
        let (registry, id, request) = registry_with_a_job();
        let every = Duration::from_millis(50);
        assert!(!registry.progress_due(&id, request, 1, every), "a stale attempt");
        assert!(!registry.progress_due(&id, RequestId::new(), 2, every), "no such job");
        assert!(registry.progress_due(&id, request, 2, every));
        assert!(!registry.progress_due(&id, request, 2, every), "again at once");
        std::thread::sleep(every);
        assert!(registry.progress_due(&id, request, 2, every));
    }
}
