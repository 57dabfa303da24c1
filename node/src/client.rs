//! The WebSocket session with the control plane: hello, heartbeats, jobs in, audio out; dialled
//! again with backoff whenever it drops.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use proto::frames::{f32_from_le_bytes, i16_le_bytes};
use proto::{
    BinaryFrame, ControlToNode, ErrorKind, Finished, FrameHeader, Health, Hello, Job, Load,
    ModelInfo, NodeId, NodeToControl, PcmEncoding, RequestId, Stream, Task, WireError,
    FEATURE_VOICE_CLONING, PROTOCOL_VERSION,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::engine::{Engine, Event, Submission};

/// Samples per audio frame on the wire (one second).
const CHUNK_SAMPLES: usize = 44_100;

/// Who this node is to the control plane.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `ws(s)://host/v1/nodes/connect`, without the token.
    pub url: String,
    pub join_token: String,
    pub node_id: String,
    pub model_id: String,
    pub capacity: u32,
    pub gpu: Option<String>,
    /// Largest `max_new_tokens` it takes.
    pub max_new_tokens: u32,
}

/// Keeps a session up, reconnecting with exponential backoff. Returns once `drain` turns true
/// and the jobs in hand are delivered, or fails if the engine thread is gone (a node that cannot
/// generate must not rejoin the pool).
pub async fn run(
    identity: Identity,
    engine: Engine,
    mut events: UnboundedReceiver<Event>,
    mut drain: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&identity, &engine, &mut events, &mut drain).await {
            Ok(SessionEnd::Drained) => {
                tracing::info!("drained: every job delivered, leaving the pool");
                return Ok(());
            }
            Ok(SessionEnd::Closed) => {
                tracing::info!("control plane closed the session");
                backoff = Duration::from_millis(250);
            }
            Err(e) if events.is_closed() => bail!("the engine stopped ({e})"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "session with the control plane ended")
            }
        }
        if *drain.borrow() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = drain.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// How a session ended without an error.
enum SessionEnd {
    /// The control plane closed it; dial again.
    Closed,
    /// Draining finished; stop.
    Drained,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(msg: &NodeToControl) -> Message {
    Message::text(serde_json::to_string(msg).expect("messages serialise"))
}

async fn session(
    identity: &Identity,
    engine: &Engine,
    events: &mut UnboundedReceiver<Event>,
    drain: &mut watch::Receiver<bool>,
) -> anyhow::Result<SessionEnd> {
    let url = format!("{}?token={}", identity.url, identity.join_token);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .with_context(|| format!("connecting to {}", identity.url))?;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: NodeId(identity.node_id.clone()),
        models: vec![ModelInfo {
            id: identity.model_id.clone(),
            features: vec![FEATURE_VOICE_CLONING.into()],
            max_input_chars: engine.max_text as u32,
            max_new_tokens: identity.max_new_tokens,
            languages: vec![],
        }],
        capacity: identity.capacity,
        gpu: identity.gpu.clone(),
    };
    ws.send(text(&NodeToControl::Hello(hello))).await?;
    let welcome = match next_control(&mut ws).await? {
        Some(ControlToNode::Welcome(w)) => w,
        Some(ControlToNode::Rejected { error }) => bail!("rejected: {}", error.message),
        other => bail!("expected a welcome, got {other:?}"),
    };
    tracing::info!(url = %identity.url, node = %identity.node_id, "joined the pool");

    // Jobs of this session: whatever is left when it ends is dropped, since the control plane
    // gives those to other nodes.
    let mut jobs: HashSet<RequestId> = HashSet::new();
    let result =
        serve(&mut ws, engine, events, drain, &mut jobs, welcome.heartbeat_interval_ms).await;
    for id in jobs {
        engine.cancel(id);
    }
    result
}

async fn serve(
    ws: &mut Ws,
    engine: &Engine,
    events: &mut UnboundedReceiver<Event>,
    drain: &mut watch::Receiver<bool>,
    jobs: &mut HashSet<RequestId>,
    heartbeat_ms: u64,
) -> anyhow::Result<SessionEnd> {
    let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(100)));
    // A submit with a voice prompt waits here for its binary frame.
    let mut awaiting_prompt: Option<Job> = None;
    let mut draining = *drain.borrow();
    loop {
        if draining && jobs.is_empty() && awaiting_prompt.is_none() {
            ws.close(None).await?;
            // A drain the control plane asked for (its replica is going away) ends only this
            // session: the node dials again and takes work from whichever replica answers.
            return Ok(if *drain.borrow() { SessionEnd::Drained } else { SessionEnd::Closed });
        }
        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { return Ok(SessionEnd::Closed) };
                match msg? {
                    Message::Text(t) => match serde_json::from_str::<ControlToNode>(&t)? {
                        // Sent before the unhealthy heartbeat arrived: let another node take it.
                        ControlToNode::Submit(job) if draining => {
                            let error = WireError::new(ErrorKind::UpstreamError, "the node is draining");
                            let (request_id, attempt) = (job.request_id, job.attempt);
                            let failed = NodeToControl::Failed { request_id, attempt, error, retryable: true };
                            ws.send(text(&failed)).await?;
                        }
                        ControlToNode::Submit(job) => {
                            jobs.insert(job.request_id);
                            if job.task.attached_audio().is_some() {
                                awaiting_prompt = Some(job);
                            } else {
                                submit(engine, job, None);
                            }
                        }
                        ControlToNode::Cancel { request_id } => {
                            jobs.remove(&request_id);
                            engine.cancel(request_id);
                        }
                        ControlToNode::Drain if !draining => {
                            draining = true;
                            start_draining(ws, engine, jobs.len(), "the control plane asked").await?;
                        }
                        ControlToNode::Drain => {}
                        other => tracing::warn!(?other, "unexpected message"),
                    },
                    Message::Binary(bytes) => {
                        let frame = BinaryFrame::decode(&bytes)?;
                        match awaiting_prompt.take() {
                            Some(job) if job.request_id == frame.header.request_id
                                && frame.header.stream == Stream::VoicePrompt =>
                            {
                                submit(engine, job, Some(f32_from_le_bytes(&frame.payload)));
                            }
                            other => bail!("unexpected binary frame (waiting for {other:?})"),
                        }
                    }
                    Message::Close(_) => return Ok(SessionEnd::Closed),
                    _ => {}
                }
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                start_draining(ws, engine, jobs.len(), "shutting down").await?;
            }
            event = events.recv() => {
                let Some(event) = event else { bail!("the engine stopped") };
                send_event(ws, jobs, event).await?;
            }
            _ = heartbeat.tick() => send_heartbeat(ws, engine, draining).await?,
        }
    }
}

/// Draining: the jobs in hand are finished, none are taken; the unhealthy heartbeat stops the
/// control plane routing here.
async fn start_draining(
    ws: &mut Ws,
    engine: &Engine,
    jobs: usize,
    why: &str,
) -> anyhow::Result<()> {
    tracing::info!(jobs, why, "draining: finishing the jobs in hand, taking no new ones");
    send_heartbeat(ws, engine, true).await
}

/// Liveness and load; a draining node reports itself unhealthy so that no work is routed to it.
async fn send_heartbeat(ws: &mut Ws, engine: &Engine, draining: bool) -> anyhow::Result<()> {
    let (active, queued) = engine.load();
    let load = Load { active, queued, gpu_memory_used_bytes: None };
    engine.metrics().healthy.set(i64::from(!draining));
    let health =
        if draining { Health::Unhealthy { reason: "draining".into() } } else { Health::Healthy };
    ws.send(text(&NodeToControl::Heartbeat { health, load })).await?;
    Ok(())
}

fn submit(engine: &Engine, job: Job, prompt: Option<Vec<f32>>) {
    let Task::Speech(task) = job.task else {
        tracing::error!(request = %job.request_id, "a job of a kind this node does not serve");
        return;
    };
    engine.submit(Submission { request_id: job.request_id, attempt: job.attempt, task, prompt });
}

/// Forwards one engine event, if its job still belongs to this session.
async fn send_event(
    ws: &mut Ws,
    jobs: &mut HashSet<RequestId>,
    event: Event,
) -> anyhow::Result<()> {
    match event {
        Event::Progress { request_id, attempt, generated_seconds }
            if jobs.contains(&request_id) =>
        {
            ws.send(text(&NodeToControl::Progress { request_id, attempt, generated_seconds }))
                .await?;
        }
        Event::Done { request_id, attempt, pcm, inference_seconds } if jobs.remove(&request_id) => {
            for (chunk, samples) in pcm.chunks(CHUNK_SAMPLES).enumerate() {
                let header = FrameHeader {
                    request_id,
                    attempt,
                    stream: Stream::Audio,
                    chunk: chunk as u32,
                    encoding: PcmEncoding::I16Le,
                };
                let frame = BinaryFrame { header, payload: i16_le_bytes(samples) };
                ws.send(Message::Binary(frame.encode().into())).await?;
            }
            let samples = pcm.len() as u64;
            let done =
                Finished { request_id, attempt, samples, inference_seconds, transcript: None };
            ws.send(text(&NodeToControl::Finished(done))).await?;
        }
        Event::Failed { request_id, attempt, message, retryable } if jobs.remove(&request_id) => {
            let error = WireError::new(ErrorKind::UpstreamError, message);
            ws.send(text(&NodeToControl::Failed { request_id, attempt, error, retryable })).await?;
        }
        // A job of an earlier session, or cancelled meanwhile.
        _ => {}
    }
    Ok(())
}

async fn next_control(ws: &mut Ws) -> anyhow::Result<Option<ControlToNode>> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            return Ok(Some(serde_json::from_str(&t)?));
        }
    }
    Ok(None)
}
