//! `GET /v1/nodes/connect`: the WebSocket a node dials, with a node credential or a join token in
//! its `Authorization` header (never in the URL, which proxies log).
//!
//! The session reads the hello, registers the node, then runs a writer (jobs, cancels) and a
//! reader (heartbeats, audio, results) side by side; when either ends, or the node is silent for
//! the heartbeat timeout, the node is removed and its unfinished jobs fail over.

use crate::db::nodes::NodeState;
use crate::db::requests::AttemptOutcome;
use crate::error::ApiError;
use crate::http::auth::NodeAuth;
use crate::nodes::hello;
use crate::nodes::registry::{AudioRefused, Outbound};
use crate::state::AppState;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use proto::{
    BinaryFrame, ControlToNode, ErrorKind, GpuReadings, Health, Load, NodeId, NodeToControl,
    Stream, Welcome, WireError, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;

/// Biggest message a node may send: audio comes in chunks of a second (88 KiB), so this only
/// bounds what a misbehaving node can make the control plane hold.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Messages waiting to be written to one node.
const OUTBOX: usize = 256;

/// Routes of the node endpoint.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/nodes/connect", get(connect))
}

async fn connect(
    State(state): State<AppState>,
    auth: NodeAuth,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| ApiError::new(ErrorKind::InvalidParameter, e.body_text()))?;
    Ok(ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session(state, socket, auth)))
}

async fn session(state: AppState, socket: WebSocket, auth: NodeAuth) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(state.config.heartbeat_timeout(), stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => hello::read(&text),
        _ => return,
    };
    let mut hello = match hello {
        Ok(hello) => hello,
        Err(e) => return reject(&mut sink, &e.to_string()).await,
    };
    let credential = match auth {
        NodeAuth::Credential { id, node_id } if node_id == hello.node_id.0 => Some(id),
        NodeAuth::Credential { node_id, .. } => {
            let msg = format!("this credential is for node `{node_id}`, not `{}`", hello.node_id);
            return reject(&mut sink, &msg).await;
        }
        NodeAuth::JoinToken => None,
    };
    let fresh = state.config.heartbeat_timeout().as_millis() as i64;
    match state.db.held_elsewhere(&hello.node_id.0, &state.replica_id, fresh).await {
        Ok(false) => {}
        Ok(true) => {
            let msg = format!("node `{}` is connected to another replica", hello.node_id);
            return reject(&mut sink, &msg).await;
        }
        Err(e) => return reject(&mut sink, &format!("the store cannot be read: {e}")).await,
    }
    if hello.capacity > state.config.max_node_capacity {
        tracing::warn!(node = %hello.node_id, claimed = hello.capacity, "capacity capped");
        hello.capacity = state.config.max_node_capacity;
    }
    let (tx, mut rx) = mpsc::channel(OUTBOX);
    let node = hello.node_id.clone();
    let session = match state.registry.register(hello.clone(), tx) {
        Ok(session) => session,
        Err(e) => return reject(&mut sink, &e.to_string()).await,
    };
    let welcome = ControlToNode::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        heartbeat_interval_ms: state.config.heartbeat_interval_ms,
    });
    let recorded = state.db.record_offered(&hello.models).await;
    let published = publish(&state, &node).await;
    if let Ok(false) = published {
        // Another replica took the same id since the check above.
        let msg = format!("node `{node}` is connected to another replica");
        reject(&mut sink, &msg).await;
        return finish(&state, &node, session).await;
    }
    if recorded.is_err() || published.is_err() || sink.send(text(&welcome)).await.is_err() {
        return finish(&state, &node, session).await;
    }
    state.registry.joined(&node, session);
    tracing::info!(
        node = %node,
        capacity = hello.capacity,
        gpu = ?hello.gpu,
        gpu_unavailable = hello.gpu_unavailable.as_deref(),
        "node joined"
    );
    state.queue.wake();

    let writer = async {
        while let Some(message) = rx.recv().await {
            if sink.send(encode(message)).await.is_err() {
                break;
            }
        }
    };
    // Only a heartbeat keeps the node: its jobs fail over once its row in the store goes stale,
    // whatever else (pings, progress, audio) it keeps sending.
    let reader = async {
        let mut deadline = tokio::time::Instant::now() + state.config.heartbeat_timeout();
        loop {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => break tracing::warn!(node = %node, "node missed its heartbeats"),
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
                Ok(Some(Ok(message))) => match on_message(&state, &node, message).await {
                    Heard::Heartbeat if !state.registry.holds(&node, session) => {
                        break tracing::warn!(node = %node, "session dropped: closing it");
                    }
                    Heard::Heartbeat => {
                        deadline = tokio::time::Instant::now() + state.config.heartbeat_timeout();
                    }
                    Heard::HeldElsewhere => {
                        break tracing::warn!(node = %node, "another replica holds the node now");
                    }
                    Heard::Other => {}
                },
            }
        }
    };
    // A revoked credential ends its session, on whichever replica holds it, within a heartbeat.
    let revoked = async {
        let Some(id) = &credential else { return std::future::pending().await };
        let mut check = tokio::time::interval(state.config.heartbeat_interval());
        loop {
            check.tick().await;
            if let Ok(None) = state.db.node_credential(id).await {
                break tracing::warn!(node = %node, credential = id, "credential revoked: node dropped");
            }
        }
    };
    tokio::select! {
        () = writer => {},
        () = reader => {},
        () = revoked => {},
    }
    finish(&state, &node, session).await;
}

/// What a message means for the session.
#[derive(Debug, PartialEq)]
enum Heard {
    Heartbeat,
    /// A heartbeat, but the store says another replica holds the node (this session's row
    /// went stale and the id joined elsewhere): this session ends.
    HeldElsewhere,
    Other,
}

/// Handles one message from a node. Bad frames are logged and dropped: the job they belonged to
/// then fails over when its `finished` does not add up.
async fn on_message(state: &AppState, node: &NodeId, message: Message) -> Heard {
    match message {
        Message::Text(text) => match serde_json::from_str::<NodeToControl>(&text) {
            Ok(msg) => return on_node_message(state, node, msg).await,
            Err(e) => tracing::warn!(node = %node, error = %e, "unreadable message from node"),
        },
        Message::Binary(bytes) => match BinaryFrame::decode(&bytes) {
            Ok(frame) if frame.header.stream == Stream::Audio => {
                let (request, attempt) = (frame.header.request_id, frame.header.attempt);
                match state.registry.push_audio(node, &frame.header, &frame.payload) {
                    Ok(()) => {}
                    Err(AudioRefused::NotExpected) => {
                        tracing::warn!(node = %node, request = %request, "audio for no current job")
                    }
                    Err(refused) => {
                        state.queue.stop_attempt(node, request, attempt).await;
                        let msg = match refused {
                            AudioRefused::NotI16 => format!(
                                "node {node} sent audio as {:?}, not 16-bit PCM",
                                frame.header.encoding
                            ),
                            _ => format!(
                                "node {node} sent more audio than the request's max_new_tokens \
                                 and speed_factor allow"
                            ),
                        };
                        let error = WireError::new(ErrorKind::UpstreamError, msg);
                        state
                            .queue
                            .attempt_failed(request, attempt, AttemptOutcome::Failed, &error, true)
                            .await;
                    }
                }
            }
            Ok(_) => tracing::warn!(node = %node, "a node sent a frame of an input stream"),
            Err(e) => tracing::warn!(node = %node, error = %e, "bad binary frame from node"),
        },
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
    }
    Heard::Other
}

async fn on_node_message(state: &AppState, node: &NodeId, msg: NodeToControl) -> Heard {
    match msg {
        NodeToControl::Hello(_) => tracing::warn!(node = %node, "second hello ignored"),
        NodeToControl::Heartbeat { health, load, gpu } => {
            return heartbeat(state, node, health, &load, gpu).await;
        }
        NodeToControl::Progress { request_id, attempt, generated_seconds } => {
            // Only the node running that attempt may speak for it, and at a bounded rate.
            let every = state.config.node_write_interval();
            if state.registry.progress_due(node, request_id, attempt, every) {
                let (id, seconds) = (request_id.to_string(), f64::from(generated_seconds));
                if let Err(e) = state.db.record_progress(&id, i64::from(attempt), seconds).await {
                    tracing::error!(error = %e, request = %id, "could not record progress");
                }
            }
        }
        NodeToControl::NeedVoicePrompt { request_id, attempt } => {
            state.queue.send_voice_prompt(node, request_id, attempt).await;
        }
        NodeToControl::Finished(done) => state.queue.finished(node, &done).await,
        NodeToControl::Failed { request_id, attempt, error, retryable } => {
            state.queue.failed(node, request_id, attempt, &error, retryable).await
        }
    }
    Heard::Other
}

async fn heartbeat(
    state: &AppState,
    node: &NodeId,
    health: Health,
    load: &Load,
    gpu: Option<GpuReadings>,
) -> Heard {
    if let Health::Unhealthy { reason } = &health {
        tracing::warn!(node = %node, reason, "node reports itself unhealthy");
    }
    let (active, queued, capacity) = (load.active, load.queued, load.capacity);
    tracing::trace!(node = %node, active, queued, capacity, "heartbeat");
    let every = state.config.node_write_interval();
    if !state.registry.heartbeat(node, health, load.capacity, gpu, every) {
        return Heard::Heartbeat;
    }
    state.queue.wake();
    match publish(state, node).await {
        Ok(true) => Heard::Heartbeat,
        Ok(false) => Heard::HeldElsewhere,
        Err(e) => {
            tracing::error!(error = %e, "could not record a heartbeat");
            Heard::Heartbeat
        }
    }
}

/// Writes the node's current state to the store, where every replica sees it; false when
/// another replica holds the node ([`crate::db::Db::upsert_node`]).
async fn publish(state: &AppState, node: &NodeId) -> Result<bool, sqlx::Error> {
    let Some(s) = state.registry.snapshot(node) else { return Ok(true) };
    let row = NodeState {
        id: &s.hello.node_id.0,
        models: &s.hello.models,
        capacity: s.capacity,
        active: s.active,
        health: &s.health,
        draining: s.draining,
        gpu: s.hello.gpu.as_ref(),
        gpu_unavailable: s.hello.gpu_unavailable.as_deref(),
        gpu_readings: s.gpu.as_ref(),
    };
    let fresh = state.config.heartbeat_timeout().as_millis() as i64;
    state.db.upsert_node(&state.replica_id, &row, fresh).await
}

/// Removes the node and fails over what it was running, unless that was done already.
async fn finish(state: &AppState, node: &NodeId, session: u64) {
    state.queue.drop_node(node, session).await;
}

async fn reject<S: SinkExt<Message> + Unpin>(sink: &mut S, message: &str) {
    tracing::warn!(reason = message, "node refused");
    let rejected =
        ControlToNode::Rejected { error: WireError::new(ErrorKind::InvalidParameter, message) };
    let _ = sink.send(text(&rejected)).await;
    let _ =
        sink.send(Message::Close(Some(CloseFrame { code: 1008, reason: "refused".into() }))).await;
}

/// A control message as a text frame.
fn text(message: &ControlToNode) -> Message {
    Message::Text(serde_json::to_string(message).expect("messages serialise").into())
}

/// What the queue or the registry sent, as the frame that carries it.
fn encode(message: Outbound) -> Message {
    match message {
        Outbound::Control(control) => text(&control),
        Outbound::Frame(frame) => Message::Binary(frame.encode().into()),
    }
}
