//! A scripted control plane on a real WebSocket: the test accepts the node's dial, answers its
//! hello, and then sends and reads the session's messages itself.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::frames::f32_le_bytes;
use proto::{
    BinaryFrame, ControlToNode, FrameHeader, Hello, Job, NodeToControl, PcmEncoding, RequestId,
    Stream, Welcome, PROTOCOL_VERSION,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A `dia-node serve` process in the pool of a scripted control plane; killed when dropped.
pub struct Session {
    pub node: Child,
    /// The session the node opened.
    pub ws: Ws,
    /// What the node said it serves.
    pub hello: Hello,
    /// Where the node dials again.
    pub listener: TcpListener,
    /// The node's `/metrics` URL.
    pub metrics: String,
}

impl Session {
    /// Starts `node` (a `dia-node serve` command), accepts its dial and welcomes it; heartbeats
    /// are asked for once a minute, so they do not crowd the test's messages.
    pub async fn join(node: &mut Command) -> Self {
        Self::join_beating(node, 60_000).await
    }

    /// As [`Session::join`], asking for a heartbeat every `heartbeat_interval_ms`.
    pub async fn join_beating(node: &mut Command, heartbeat_interval_ms: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let node = node
            .args(["--control-plane", &format!("ws://{addr}/v1/nodes/connect")])
            .args(["--join-token", "t", "--metrics-addr", &metrics.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut ws = accept(&listener).await;
        let Some(Ok(NodeToControl::Hello(hello))) = next(&mut ws).await else {
            panic!("the node says hello first")
        };
        let welcome = Welcome { protocol_version: PROTOCOL_VERSION, heartbeat_interval_ms };
        send(&mut ws, &ControlToNode::Welcome(welcome)).await;
        Self { node, ws, hello, listener, metrics: format!("http://{metrics}/metrics") }
    }

    pub async fn send(&mut self, msg: &ControlToNode) {
        send(&mut self.ws, msg).await;
    }

    /// Submits `job` and, when its task has audio, sends `pcm` in the frame the task announces.
    pub async fn submit(&mut self, job: &Job, pcm: &[f32]) {
        self.send(&ControlToNode::Submit(job.clone())).await;
        if let Some((stream, _)) = job.task.attached_audio() {
            self.send_frame(job, stream, f32_le_bytes(pcm)).await;
        }
    }

    /// A binary frame of f32 `payload` for `job`.
    pub async fn send_frame(&mut self, job: &Job, stream: Stream, payload: Vec<u8>) {
        let (request_id, attempt) = (job.request_id, job.attempt);
        let header =
            FrameHeader { request_id, attempt, stream, chunk: 0, encoding: PcmEncoding::F32Le };
        let frame = BinaryFrame { header, payload };
        self.ws.send(Message::Binary(frame.encode().into())).await.unwrap();
    }

    /// The next message that is not a heartbeat; None once the session is closed.
    pub async fn next_job_message(&mut self) -> Option<Result<NodeToControl, RequestId>> {
        loop {
            match next(&mut self.ws).await {
                Some(Ok(NodeToControl::Heartbeat { .. })) => {}
                other => return other,
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.node.kill();
        let _ = self.node.wait();
    }
}

/// The node's next dial, within a minute (it loads its models first).
pub async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("the node dials within 60 s")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

pub async fn send(ws: &mut Ws, msg: &ControlToNode) {
    ws.send(Message::text(serde_json::to_string(msg).unwrap())).await.unwrap();
}

/// The next message from the node: JSON, or the request id of an audio frame; None when closed.
pub async fn next(ws: &mut Ws) -> Option<Result<NodeToControl, RequestId>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("the node talks")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Text(t))) => return Some(Ok(serde_json::from_str(&t).unwrap())),
            Some(Ok(Message::Binary(b))) => {
                return Some(Err(BinaryFrame::decode(&b).unwrap().header.request_id))
            }
            Some(Ok(_)) => {}
        }
    }
}
