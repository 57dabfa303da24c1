//! Nodes may be run by others: what a node claims or sends is bounded, on the real WebSocket
//! with a misbehaving scripted node. Every test runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::node::{cloning_model, ScriptedNode, MODEL};
use common::{expect_error, Backend, Server, TestDb};
use proto::{ControlToNode, ErrorKind, ModelInfo, WireError};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn attempts(server: &Server, key: &str, id: &str) -> Vec<(String, String, String)> {
    let (_, item) = server.get_json(key, &format!("/v1/history/{id}")).await;
    item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("node_id"), s("outcome"), s("error_message"))
        })
        .collect()
}

async fn a_claimed_capacity_is_capped_by_the_configured_maximum(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.max_node_capacity = 2;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut greedy = ScriptedNode::connect(&server.ws_url(), "greedy", 1000).await;
    greedy.report_capacity(1000).await;
    let _requests: Vec<_> = (0..3)
        .map(|i| server.spawn_generate(&key, json!({"input": format!("[S1] {i}")})))
        .collect();
    greedy.next_job().await;
    greedy.next_job().await;
    let third = tokio::time::timeout(Duration::from_millis(1500), greedy.next_control()).await;
    assert!(third.is_err(), "a third job went to a node capped at 2: {third:?}");
}

async fn a_heartbeat_cannot_raise_the_capacity_past_the_hello(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut modest = ScriptedNode::connect(&server.ws_url(), "modest", 1).await;
    modest.report_capacity(8).await;
    let _requests: Vec<_> = (0..2)
        .map(|i| server.spawn_generate(&key, json!({"input": format!("[S1] {i}")})))
        .collect();
    modest.next_job().await;
    let second = tokio::time::timeout(Duration::from_millis(1500), modest.next_control()).await;
    assert!(second.is_err(), "a second job went to a node whose hello said 1: {second:?}");
}

async fn a_node_error_reaches_the_client_as_upstream_error_with_a_bounded_message(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "liar", 1).await;
    let request = server.spawn_generate(&key, json!({"input": "[S1] Blame me."}));
    let job = node.next_job().await.job;
    let long = format!("not your key {}", "x".repeat(5000));
    node.fail_with(&job, WireError::new(ErrorKind::InvalidApiKey, long), false).await;
    let message = expect_error(request.await.unwrap(), 502, "upstream_error").await;
    assert!(message.starts_with("not your key"), "{message}");
    assert!(message.chars().count() <= 1000, "{} characters", message.chars().count());
    let history = attempts(&server, &key, &job.request_id.to_string()).await;
    assert_eq!(history.len(), 1);
    assert!(history[0].2.starts_with("not your key"), "{history:?}");
}

async fn audio_past_what_the_request_allows_fails_the_attempt_over(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut flood = ScriptedNode::connect(&server.ws_url(), "flood", 1).await;
    // 256 frames at speed 2 allow 256·512/2 samples and a second of slack: 109 636.
    let body = json!({"input": "[S1] Short.", "max_new_tokens": 256, "speed_factor": 2.0});
    let request = server.spawn_generate(&key, body);
    let job = flood.next_job().await.job;
    // Ranked before `flood` at equal load, so the retry goes to it.
    let mut calm = ScriptedNode::connect(&server.ws_url(), "calm", 1).await.serve(1000);
    flood.audio(&job, 0, &vec![0; 100_000]).await;
    flood.audio(&job, 1, &vec![0; 10_000]).await;
    match flood.next_control().await {
        Some(ControlToNode::Cancel { request_id }) => assert_eq!(request_id, job.request_id),
        other => panic!("expected the flooding node's job cancelled, got {other:?}"),
    }
    let res = request.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-node-id"], "calm");
    assert_eq!(calm.recv().await.unwrap().job.attempt, 2);
    let history = attempts(&server, &key, &job.request_id.to_string()).await;
    assert_eq!((history[0].0.as_str(), history[0].1.as_str()), ("flood", "failed"));
    assert!(history[0].2.contains("more audio than"), "{history:?}");
    assert_eq!((history[1].0.as_str(), history[1].1.as_str()), ("calm", "succeeded"));
}

async fn audio_in_another_encoding_than_16_bit_fails_the_attempt_over(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut floats = ScriptedNode::connect(&server.ws_url(), "floats", 1).await;
    let request = server.spawn_generate(&key, json!({"input": "[S1] In floats."}));
    let job = floats.next_job().await.job;
    let _calm = ScriptedNode::connect(&server.ws_url(), "calm", 1).await.serve(1000);
    let header = proto::FrameHeader {
        encoding: proto::PcmEncoding::F32Le,
        ..proto::FrameHeader::audio(job.request_id, job.attempt, 0)
    };
    let frame = proto::BinaryFrame { header, payload: vec![0; 4 * 500] };
    floats.raw(Message::binary(frame.encode())).await;
    match floats.next_control().await {
        Some(ControlToNode::Cancel { request_id }) => assert_eq!(request_id, job.request_id),
        other => panic!("expected the job cancelled, got {other:?}"),
    }
    let res = request.await.unwrap();
    assert_eq!(res.headers()["x-node-id"], "calm");
    let history = attempts(&server, &key, &job.request_id.to_string()).await;
    assert_eq!((history[0].0.as_str(), history[0].1.as_str()), ("floats", "failed"));
    assert!(history[0].2.contains("F32Le, not 16-bit PCM"), "{history:?}");
}

async fn an_oversized_message_ends_the_session_and_its_job_fails_over(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut huge = ScriptedNode::connect(&server.ws_url(), "huge", 1).await;
    let request = server.spawn_generate(&key, json!({"input": "[S1] Big."}));
    let job = huge.next_job().await.job;
    let _steady = ScriptedNode::connect(&server.ws_url(), "steady", 1).await.serve(1000);
    huge.raw(Message::binary(vec![0u8; 17 * 1024 * 1024])).await;
    assert!(huge.next_control().await.is_none(), "the session of a node sending 17 MiB ends");
    let res = request.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-node-id"], "steady");
    let history = attempts(&server, &key, &job.request_id.to_string()).await;
    assert_eq!((history[0].0.as_str(), history[0].1.as_str()), ("huge", "node_lost"));
}

async fn a_node_that_sends_anything_but_heartbeats_is_dropped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.heartbeat_interval_ms = 100;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut chatty = ScriptedNode::connect(&server.ws_url(), "chatty", 1).await;
    let request = server.spawn_generate(&key, json!({"input": "[S1] Still there?"}));
    let job = chatty.next_job().await.job;
    let _steady = ScriptedNode::connect(&server.ws_url(), "steady", 1).await.serve(1000);
    // Progress and pings, many times a heartbeat interval, and never a heartbeat.
    let progress = serde_json::to_string(&proto::NodeToControl::Progress {
        request_id: job.request_id,
        attempt: job.attempt,
        generated_seconds: 0.5,
    })
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tokio::time::timeout(Duration::from_millis(30), chatty.next_control()).await {
                Ok(None) => break,
                Ok(Some(ControlToNode::Submit(other))) => panic!("it got more work: {other:?}"),
                Ok(Some(_)) => {}
                Err(_) => {
                    chatty.raw(Message::text(progress.clone())).await;
                    chatty.raw(Message::Ping(vec![1].into())).await;
                }
            }
        }
    });
    closed.await.expect("the session of a node that never heartbeats ends");
    let res = request.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-node-id"], "steady");
    let history = attempts(&server, &key, &job.request_id.to_string()).await;
    assert_eq!((history[0].0.as_str(), history[0].1.as_str()), ("chatty", "node_lost"));
}

async fn a_small_text_window_bounds_only_its_own_node(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let narrow = ModelInfo { max_input_chars: 16, max_new_tokens: 512, ..cloning_model(MODEL) };
    // The narrow node has more free slots, so it is first in line for whatever fits it.
    let mut small = ScriptedNode::connect_with(&server.ws_url(), "small", 8, vec![narrow]).await;
    let script = "[S1] This script is longer than sixteen bytes.";
    let msg = expect_error(
        server.generate(&key, json!({"input": script})).await,
        413,
        "request_too_large",
    )
    .await;
    assert!(msg.contains("reads at most 16"), "{msg}");

    let mut wide = ScriptedNode::connect(&server.ws_url(), "wide", 1).await;
    let (_, models) = server.get_json(&key, "/v1/models").await;
    assert_eq!(
        (
            models["data"][0]["max_input_chars"].as_u64(),
            models["data"][0]["max_new_tokens"].as_u64()
        ),
        (Some(1024), Some(4096))
    );
    let long = server.spawn_generate(&key, json!({"input": script, "max_new_tokens": 256}));
    let job = wide.next_job().await.job;
    wide.complete(&job, &common::node::tone(100)).await;
    assert_eq!(long.await.unwrap().status(), 200);
    // Frames route the same way; what fits both goes to the least loaded, the small node.
    let frames = server.spawn_generate(&key, json!({"input": "[S1] Hi.", "max_new_tokens": 1024}));
    let job = wide.next_job().await.job;
    wide.complete(&job, &common::node::tone(100)).await;
    assert_eq!(frames.await.unwrap().status(), 200);
    let short = server.spawn_generate(&key, json!({"input": "[S1] Hi.", "max_new_tokens": 256}));
    let job = small.next_job().await.job;
    small.complete(&job, &common::node::tone(100)).await;
    assert_eq!(short.await.unwrap().status(), 200);
}

/// The script of a speech job, its cloning transcripts first.
fn script_of(job: &proto::Job) -> &str {
    match &job.task {
        proto::Task::Speech(speech) => &speech.text,
        other => panic!("not a speech job: {other:?}"),
    }
}

async fn a_small_frame_budget_bounds_only_its_own_node(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    // 3 s at 44.1 kHz: a voice prompt of 132 300 samples, 259 frames.
    let voice = server.voice(&key, 3.0, Some("Hello there.")).await;
    let cloned = |line: &str, max_new_tokens: u32| json!({"input": format!("[S1] {line}"), "speakers": {"S1": voice}, "max_new_tokens": max_new_tokens});
    let lean = ModelInfo { max_new_tokens: 1000, max_frames: 1000, ..cloning_model(MODEL) };
    // Ranked first at equal load (ties go by id), so it is offered whatever fits it.
    let mut small = ScriptedNode::connect_with(&server.ws_url(), "small", 8, vec![lean]).await;
    let res = server.generate(&key, cloned("Too long for it.", 1000)).await;
    let msg = expect_error(res, 413, "request_too_large").await;
    assert_eq!(
        msg,
        "the voice prompt (259 frames, 3.0 s) and `max_new_tokens` 1000 need 1259 frames; the \
         online nodes of `dia-test` hold at most 1000"
    );
    let fits = server.spawn_generate(&key, cloned("It fits.", 512));
    let job = small.next_job().await.job;
    assert!(script_of(&job).ends_with("[S1] It fits."), "{}", script_of(&job));
    small.complete(&job, &common::node::tone(100)).await;
    assert_eq!(fits.await.unwrap().headers()["x-node-id"], "small");

    let mut wide = ScriptedNode::connect(&server.ws_url(), "wide", 1).await;
    let (_, models) = server.get_json(&key, "/v1/models").await;
    assert_eq!(models["data"][0]["max_frames"], 7600);
    let long = server.spawn_generate(&key, cloned("Needs room.", 1000));
    let job = wide.next_job().await.job;
    assert!(script_of(&job).ends_with("[S1] Needs room."), "{}", script_of(&job));
    wide.complete(&job, &common::node::tone(100)).await;
    assert_eq!(long.await.unwrap().headers()["x-node-id"], "wide");
    // The small node's next job is the next that fits it: the long one never went there.
    let fits = server.spawn_generate(&key, cloned("Fits again.", 512));
    let job = small.next_job().await.job;
    assert!(script_of(&job).ends_with("[S1] Fits again."), "{}", script_of(&job));
    small.complete(&job, &common::node::tone(100)).await;
    assert_eq!(fits.await.unwrap().headers()["x-node-id"], "small");
}

on_both_backends!(
    a_small_text_window_bounds_only_its_own_node,
    a_small_frame_budget_bounds_only_its_own_node,
    a_claimed_capacity_is_capped_by_the_configured_maximum,
    a_heartbeat_cannot_raise_the_capacity_past_the_hello,
    a_node_error_reaches_the_client_as_upstream_error_with_a_bounded_message,
    audio_past_what_the_request_allows_fails_the_attempt_over,
    an_oversized_message_ends_the_session_and_its_job_fails_over,
    a_node_that_sends_anything_but_heartbeats_is_dropped,
    audio_in_another_encoding_than_16_bit_fails_the_attempt_over,
);
