//! The node's side of the session against a scripted control plane on a real WebSocket: what
//! it does when the control plane asks it to drain.

mod common;

use std::time::Duration;

use common::dia_node;
use futures_util::{SinkExt, StreamExt};
use proto::{
    BinaryFrame, ControlToNode, Health, Job, NodeToControl, RequestId, Sampling, SpeechTask, Task,
    Welcome, PROTOCOL_VERSION,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("the node dials within 60 s")
        .unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

async fn send(ws: &mut Ws, msg: &ControlToNode) {
    ws.send(Message::text(serde_json::to_string(msg).unwrap())).await.unwrap();
}

/// The next message from the node: JSON, or the request id of an audio frame; None when closed.
async fn next(ws: &mut Ws) -> Option<Result<NodeToControl, RequestId>> {
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

fn job(seed: u64) -> ControlToNode {
    let task = SpeechTask {
        text: "[S1] Finish this first.".into(),
        sampling: Sampling { cfg_scale: 3.0, temperature: 1.8, top_p: 0.95, cfg_filter_top_k: 45 },
        speed_factor: 1.0,
        max_new_tokens: 256,
        seed,
        voice_prompt: None,
    };
    let job = Job {
        request_id: RequestId::new(),
        attempt: 1,
        model: "any".into(),
        task: Task::Speech(task),
    };
    ControlToNode::Submit(job)
}

fn id_of(msg: &ControlToNode) -> RequestId {
    match msg {
        ControlToNode::Submit(job) => job.request_id,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_the_control_plane_finishes_the_jobs_in_hand_then_the_node_dials_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut node = dia_node("serve")
        .args(["--control-plane", &format!("ws://{addr}/v1/nodes/connect"), "--join-token", "t"])
        .args(["--metrics-addr", &metrics.to_string(), "--max-positions", "1100"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let mut ws = accept(&listener).await;
    assert!(matches!(next(&mut ws).await, Some(Ok(NodeToControl::Hello(_)))));
    let welcome = Welcome { protocol_version: PROTOCOL_VERSION, heartbeat_interval_ms: 60_000 };
    send(&mut ws, &ControlToNode::Welcome(welcome)).await;
    let (first, late) = (job(1), job(2));
    send(&mut ws, &first).await;
    send(&mut ws, &ControlToNode::Drain).await;
    send(&mut ws, &late).await;

    let (mut unhealthy, mut late_refused, mut audio, mut finished) = (false, false, 0, false);
    while let Some(msg) = next(&mut ws).await {
        match msg {
            Ok(NodeToControl::Heartbeat { health: Health::Unhealthy { reason }, .. }) => {
                unhealthy = reason == "draining";
            }
            Ok(NodeToControl::Failed { request_id, retryable, .. }) => {
                assert_eq!(request_id, id_of(&late), "only the late job is handed back");
                late_refused = retryable;
            }
            Ok(NodeToControl::Finished(f)) => {
                assert_eq!(f.request_id, id_of(&first));
                finished = true;
            }
            Err(id) => {
                assert_eq!(id, id_of(&first));
                audio += 1;
            }
            Ok(_) => {}
        }
    }
    assert!(unhealthy, "a draining node reports itself unhealthy");
    assert!(late_refused, "a job sent after the drain goes back, retryable");
    assert!(audio > 0 && finished, "the job in hand is delivered before the session closes");

    // Unlike SIGTERM, a drain asked by the control plane ends the session, not the node.
    let mut again = accept(&listener).await;
    assert!(matches!(next(&mut again).await, Some(Ok(NodeToControl::Hello(_)))));
    assert!(node.try_wait().unwrap().is_none(), "the node is still running");
    node.kill().unwrap();
    node.wait().unwrap();
}
