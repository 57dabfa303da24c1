//! Control-plane load test: an in-process control plane (SQLite in a temporary directory) with
//! scripted nodes on loopback that answer every job at once, driven by an open-loop HTTP load at a
//! fixed rate. Since the nodes take no time, a request's latency is the overhead the control plane
//! adds: validation, the store, the queue, routing, two WebSocket hops and the WAV response.
//!
//! `cargo run --release -p benches --bin loadgen -- [rps] [seconds] [nodes]` (defaults 1000 10 4).

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use proto::frames::i16_le_bytes;
use proto::{
    BinaryFrame, ControlToNode, Finished, FrameHeader, Hello, ModelInfo, NodeId, NodeToControl,
    PROTOCOL_VERSION,
};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const JOIN_TOKEN: &str = "bench";
const API_KEY: &str = "dia_bench";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (rps, seconds, nodes) = (arg(0, 1000), arg(1, 10), arg(2, 4));

    let dir = tempfile::tempdir().unwrap();
    let config = control_plane::Config::parse_from([
        "control-plane".to_owned(),
        format!("--database-url=sqlite://{}", dir.path().join("bench.db").display()),
        format!("--join-tokens={JOIN_TOKEN}"),
        format!("--bootstrap-api-key={API_KEY}"),
        "--max-queued=100000".to_owned(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = control_plane::AppState::start(config).await.unwrap();
    tokio::spawn(control_plane::serve(listener, state));
    for i in 0..nodes {
        echo_node(&format!("ws://{addr}/v1/nodes/connect"), &format!("bench-{i}")).await;
    }

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/voice/generations");
    let body = serde_json::json!({"input": "[S1] Hello! Welcome to the show. [S2] Thanks for having me.", "seed": 1}).to_string();
    let send = |client: reqwest::Client| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let start = Instant::now();
            let res = client
                .post(url)
                .bearer_auth(API_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match res {
                Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
                Ok(r) => {
                    eprintln!("{} {}", r.status(), r.text().await.unwrap_or_default());
                    false
                }
                Err(e) => {
                    eprintln!("{e}");
                    false
                }
            };
            (start.elapsed(), ok)
        }
    };
    for _ in 0..200 {
        send(client.clone()).await; // warm-up: connections, statement caches
    }

    let interval = Duration::from_secs_f64(1.0 / rps as f64);
    let total = rps * seconds;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for _ in 0..total {
        ticker.tick().await;
        tasks.push(tokio::spawn(send(client.clone())));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failures = 0;
    for t in tasks {
        let (latency, ok) = t.await.unwrap();
        failures += usize::from(!ok);
        latencies.push(latency);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    println!("control-plane load: target {rps} rps for {seconds} s against {nodes} scripted nodes (SQLite)");
    println!(
        "  achieved {:.0} rps, {} requests, {failures} failed",
        total as f64 / elapsed,
        latencies.len()
    );
    println!(
        "  overhead p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
}

/// A node with plenty of slots that answers every job with 0.1 s of silence at once.
async fn echo_node(url: &str, id: &str) {
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {JOIN_TOKEN}").parse().unwrap());
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(request, None, true).await.unwrap();
    let hello = NodeToControl::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: NodeId(id.into()),
        models: vec![ModelInfo {
            id: "dia-bench".into(),
            features: vec![proto::FEATURE_VOICE_CLONING.into()],
            max_input_chars: 1024,
            max_new_tokens: 4096,
            max_frames: 7600,
            languages: vec![],
        }],
        capacity: 256,
        gpu: None,
        gpu_unavailable: Some("a scripted load-generator node".into()),
    });
    ws.send(Message::text(serde_json::to_string(&hello).unwrap())).await.unwrap();
    let _welcome = ws.next().await;
    let audio = i16_le_bytes(&[0; 4410]);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Text(text) = msg else { continue };
            let Ok(ControlToNode::Submit(job)) = serde_json::from_str(&text) else { continue };
            let header = FrameHeader::audio(job.request_id, job.attempt, 0);
            let frame = BinaryFrame { header, payload: audio.clone() };
            let done = NodeToControl::Finished(Finished {
                request_id: job.request_id,
                attempt: job.attempt,
                samples: 4410,
                inference_seconds: 0.0,
                transcript: None,
            });
            if ws.send(Message::binary(frame.encode())).await.is_err()
                || ws.send(Message::text(serde_json::to_string(&done).unwrap())).await.is_err()
            {
                break;
            }
        }
    });
}
