//! Nodes, routing and failover: drops mid-job, retries, queue overflow, cancellation, heartbeats,
//! two replicas on one PostgreSQL. Every test but the last runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::node::{cloning_model, hello, ScriptedNode, MODEL};
use common::{eventually, expect_error, Backend, Server, TestDb};
use futures_util::{SinkExt, StreamExt};
use proto::{ControlToNode, Hello, NodeId, NodeToControl};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Sends a generation of `input` in the background.
fn spawn_generate(
    server: &Server,
    key: &str,
    input: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    server.spawn_generate(key, json!({"input": input}))
}

async fn history_item(server: &Server, key: &str, id: &str) -> Value {
    server.get_json(key, &format!("/v1/history/{id}")).await.1
}

async fn a_job_fails_over_when_its_node_drops_mid_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut flaky = ScriptedNode::connect(&server.ws_url(), "flaky", 1).await;
    let request = spawn_generate(&server, &key, "[S1] Survive this.");
    let first = flaky.next_job().await;
    assert_eq!(first.job.attempt, 1);
    let mut steady = ScriptedNode::connect(&server.ws_url(), "steady", 1).await.serve(300);
    drop(flaky);

    let res = request.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-node-id"], "steady");
    let retried = steady.recv().await.unwrap().job;
    assert_eq!((retried.request_id, retried.attempt), (first.job.request_id, 2));

    let (_, history) = server.get_json(&key, "/v1/history").await;
    assert_eq!(history["data"].as_array().unwrap().len(), 1, "one request, no duplicates");
    let item = history_item(&server, &key, &first.job.request_id.to_string()).await;
    let outcomes: Vec<(&str, &str)> = item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["node_id"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [("flaky", "node_lost"), ("steady", "succeeded")]);
}

async fn upstream_error_only_after_every_attempt_failed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "failing", 1).await;

    let request = spawn_generate(&server, &key, "Retry me.");
    for attempt in 1..=3 {
        let job = node.next_job().await.job;
        assert_eq!(job.attempt, attempt);
        node.fail(&job, true).await;
    }
    let msg = expect_error(request.await.unwrap(), 502, "upstream_error").await;
    assert!(msg.contains("all 3 attempts failed"), "{msg}");

    let request = spawn_generate(&server, &key, "Fail me once.");
    let job = node.next_job().await.job;
    node.fail(&job, false).await;
    expect_error(request.await.unwrap(), 502, "upstream_error").await;
    let item = history_item(&server, &key, &job.request_id.to_string()).await;
    assert_eq!(
        (item["status"].as_str(), item["error"]["type"].as_str()),
        (Some("failed"), Some("upstream_error"))
    );
    assert_eq!(item["attempts"].as_array().unwrap().len(), 1);
}

async fn a_node_that_heartbeats_but_never_finishes_is_timed_out_and_the_job_retried(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.job_timeout_secs = 1;
    config.heartbeat_interval_ms = 200;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut stuck = ScriptedNode::connect(&server.ws_url(), "stuck", 1).await;
    let request = spawn_generate(&server, &key, "[S1] Do not hang.");
    let first = stuck.next_job().await.job;
    let mut steady = ScriptedNode::connect(&server.ws_url(), "steady", 1).await.serve(200);
    // Alive but silent about the job, until told to drop it.
    loop {
        tokio::select! {
            msg = stuck.next_control() => match msg {
                Some(ControlToNode::Cancel { request_id }) => {
                    assert_eq!(request_id, first.request_id);
                    break;
                }
                other => panic!("expected a cancel, got {other:?}"),
            },
            () = tokio::time::sleep(std::time::Duration::from_millis(100)) => stuck.heartbeat(true).await,
        }
    }
    assert_eq!(request.await.unwrap().status(), 200);
    assert_eq!(steady.recv().await.unwrap().job.attempt, 2);
    let item = history_item(&server, &key, &first.request_id.to_string()).await;
    let outcomes: Vec<&str> = item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["timed_out", "succeeded"]);
    assert!(item["attempts"][0]["error_message"].as_str().unwrap().contains("within 1 s"));
}

async fn the_history_shows_the_progress_its_node_reports(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "worker", 1).await;
    let request = spawn_generate(&server, &key, "[S1] Tell me how far you are.");
    let job = node.next_job().await.job;
    let mut other = ScriptedNode::connect(&server.ws_url(), "other", 1).await;
    let id = job.request_id.to_string();
    node.progress(&job, 1.5).await;
    eventually(async || history_item(&server, &key, &id).await["generated_seconds"] == 1.5).await;
    // Another node cannot speak for the job; nothing to wait on for an ignored message but time.
    other.progress(&job, 9.0).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let item = history_item(&server, &key, &id).await;
    assert_eq!(item["generated_seconds"], 1.5, "{item}");
    assert_eq!(item["status"], "running", "{item}");
    node.complete(&job, &common::node::tone(100)).await;
    assert_eq!(request.await.unwrap().status(), 200);
}

async fn a_full_queue_answers_429_with_retry_after(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.max_queued = 1;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "busy", 1).await;

    let first = spawn_generate(&server, &key, "First.");
    let running = node.next_job().await.job;
    let second = spawn_generate(&server, &key, "Second.");
    eventually(async || {
        let (_, page) = server.get_json(&key, "/v1/history?status=queued").await;
        page["data"].as_array().unwrap().first().is_some_and(|r| r["queue_position"] == 1)
    })
    .await;
    let res = server.generate(&key, json!({"input": "Third."})).await;
    assert!(res.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    expect_error(res, 429, "queue_full").await;

    node.complete(&running, &[1, 2, 3, 4]).await;
    assert_eq!(first.await.unwrap().status(), 200);
    let queued = node.next_job().await.job;
    node.complete(&queued, &[5, 6]).await;
    assert_eq!(second.await.unwrap().status(), 200);
}

async fn a_burst_cannot_overfill_the_queue(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.max_queued = 3;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "busy", 1).await;
    let _running = spawn_generate(&server, &key, "Holds the node.");
    node.next_job().await;

    let burst: Vec<_> =
        (0..8).map(|i| spawn_generate(&server, &key, &format!("Burst {i}."))).collect();
    // The refused answer at once; the three admitted wait for the node.
    eventually(async || burst.iter().filter(|h| h.is_finished()).count() == 5).await;
    let queued = server.get_json(&key, "/v1/history?status=queued").await.1;
    assert_eq!(queued["data"].as_array().unwrap().len(), 3, "{queued}");
    let (done, waiting): (Vec<_>, Vec<_>) = burst.into_iter().partition(|h| h.is_finished());
    for res in done {
        expect_error(res.await.unwrap(), 429, "queue_full").await;
    }
    assert_eq!(waiting.len(), 3);
}

async fn a_client_that_disconnects_cancels_its_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "n1", 1).await;
    let request = spawn_generate(&server, &key, "Never mind.");
    let job = node.next_job().await.job;
    request.abort();

    match node.next_control().await {
        Some(ControlToNode::Cancel { request_id }) => assert_eq!(request_id, job.request_id),
        other => panic!("expected a cancel, got {other:?}"),
    }
    let item = history_item(&server, &key, &job.request_id.to_string()).await;
    assert_eq!(
        (item["status"].as_str(), item["error"]["type"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    assert_eq!(item["attempts"][0]["outcome"], "cancelled");
    // The slot is free again: the next request is served by the same node.
    let next = spawn_generate(&server, &key, "Now.");
    let job = node.next_job().await.job;
    node.complete(&job, &[1, 2]).await;
    assert_eq!(next.await.unwrap().status(), 200);
}

async fn a_silent_node_is_dropped_and_an_unhealthy_one_gets_no_work(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.heartbeat_interval_ms = 100;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;

    let mut silent = ScriptedNode::connect(&server.ws_url(), "silent", 1).await;
    assert!(
        silent.next_control().await.is_none(),
        "the server closes a node that misses heartbeats"
    );
    expect_error(server.generate(&key, json!({"input": "Hi"})).await, 404, "no_provider").await;

    let mut sick = ScriptedNode::connect(&server.ws_url(), "sick", 1).await;
    sick.heartbeat(false).await;
    eventually(async || server.get_json(&key, "/v1/models").await.1["data"] == json!([])).await;
    expect_error(server.generate(&key, json!({"input": "Hi"})).await, 404, "no_provider").await;
}

async fn a_node_reporting_no_capacity_gets_no_new_work_until_it_reports_some(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let mut restarting = ScriptedNode::connect(&server.ws_url(), "restarting", 2).await;
    let first = spawn_generate(&server, &key, "First.");
    let running = restarting.next_job().await.job;

    // Its worker restarts: it takes nothing now, and keeps the job it runs.
    restarting.report_capacity(0).await;
    let id = NodeId("restarting".into());
    eventually(async || server.state.registry.snapshot(&id).is_some_and(|s| s.capacity == 0)).await;
    let (status, models) = server.get_json(&key, "/v1/models").await;
    assert_eq!((status, &models["data"][0]["nodes"]), (200, &json!(1)), "still online: {models}");
    let second = spawn_generate(&server, &key, "Second.");
    let sent = tokio::time::timeout(Duration::from_secs(1), restarting.next_control()).await;
    assert!(sent.is_err(), "a node reporting no capacity got {sent:?}");
    // The request waited in the queue; a node with room takes it.
    let mut spare = ScriptedNode::connect(&server.ws_url(), "spare", 1).await;
    let queued = spare.next_job().await.job;
    restarting.complete(&running, &[1, 2]).await;
    assert_eq!(first.await.unwrap().status(), 200);

    // Back up, with the spare node full: the next request is its.
    restarting.report_capacity(2).await;
    let third = spawn_generate(&server, &key, "Third.");
    let job = restarting.next_job().await.job;
    restarting.complete(&job, &[1, 2]).await;
    assert_eq!(third.await.unwrap().status(), 200);
    spare.complete(&queued, &[1, 2]).await;
    assert_eq!(second.await.unwrap().status(), 200);
}

async fn a_node_with_a_bad_token_or_protocol_version_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    assert!(common::node::dial(&server.ws_url(), "wrong").await.is_err());
    // A token in the URL (where proxies log it) is not read.
    let in_url = format!("{}?token={}", server.ws_url(), common::JOIN_TOKEN);
    assert!(tokio_tungstenite::connect_async(in_url).await.is_err());

    let future = Hello { protocol_version: 999, ..hello("future", 1, vec![cloning_model(MODEL)]) };
    let refused = ScriptedNode::join(&server.ws_url(), common::JOIN_TOKEN, future).await.err();
    assert!(refused.as_ref().is_some_and(|m| m.contains("protocol version 999")), "{refused:?}");

    // Version 4's GPU was free text: the node hears its version is refused, not the field.
    let mut ws = common::node::dial(&server.ws_url(), common::JOIN_TOKEN).await.unwrap();
    let mut old = serde_json::to_value(NodeToControl::Hello(hello("old", 1, vec![]))).unwrap();
    old["protocol_version"] = 4.into();
    old["gpu"] = "NVIDIA H100 80GB".into();
    ws.send(Message::text(old.to_string())).await.unwrap();
    let Some(Ok(Message::Text(reply))) = ws.next().await else { panic!("expected a rejection") };
    let ControlToNode::Rejected { error } = serde_json::from_str(&reply).unwrap() else {
        panic!("{reply}")
    };
    let expected = format!("protocol version 4 is not {}", proto::PROTOCOL_VERSION);
    assert_eq!(error.message, expected);
}

async fn metrics_openapi_and_probes_are_served(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let _jobs = ScriptedNode::connect(&server.ws_url(), "n1", 2).await.serve(44_100);
    assert_eq!(server.generate(&key, json!({"input": "Hi"})).await.status(), 200);
    expect_error(server.generate(&key, json!({})).await, 400, "missing_input").await;

    // A method no client should use is counted, but never becomes a label value of its own.
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    server.http.request(brew, server.url("/v1/models")).send().await.unwrap();
    // The public port does not serve the metrics: they have their own.
    assert_eq!(server.http.get(server.url("/metrics")).send().await.unwrap().status(), 404);
    let metrics_url = format!("http://{}/metrics", server.metrics_addr);
    let metrics = server.http.get(metrics_url).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("BREW"), "{metrics}");
    for needle in [
        r#"method="other",route="/v1/models",status="405""#,
        r#"tts_http_requests_total{error_type="missing_input",method="POST",route="/v1/voice/generations",status="400"} 1"#,
        r#"tts_http_requests_total{error_type="",method="POST",route="/v1/voice/generations",status="200"} 1"#,
        r#"tts_nodes_online{feature="voice-cloning"} 1"#,
        "tts_audio_generated_seconds_total 1",
        "tts_queue_depth 0",
        "tts_queue_capacity 256",
        "tts_queue_wait_seconds_count 1",
        r#"tts_http_request_duration_seconds_count{route="/v1/voice/generations"} 2"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let doc: Value =
        server.http.get(server.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    for path in [
        "/v1/voice/generations",
        "/v1/models",
        "/v1/voices",
        "/v1/voices/{id}",
        "/v1/history",
        "/v1/history/{id}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["SpeechRequest"]["properties"]
        .get("cfg_filter_top_k")
        .is_some());
    assert_eq!(server.http.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(server.http.get(server.url("/readyz")).send().await.unwrap().status(), 200);
}

/// The deadline is absolute: a request that went back to the queue after it passed fails then,
/// instead of waiting for ever.
async fn a_request_sent_back_to_the_queue_after_its_deadline_fails_then(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = common::config(&db.url);
    config.queue_timeout_secs = 1;
    let server = Server::start_with(config).await;
    let key = server.api_key().await;
    let mut node = ScriptedNode::connect(&server.ws_url(), "slow", 1).await;
    let request = spawn_generate(&server, &key, "[S1] Late.");
    let job = node.next_job().await.job;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // The attempt fails, retryable, past the deadline: the request goes back to the queue, and
    // the node, healthy and free, is the first to claim from it.
    node.fail(&job, true).await;
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), request)
        .await
        .expect("the request ends by its deadline")
        .unwrap();
    let message = expect_error(res, 502, "upstream_error").await;
    assert!(message.contains("within 1 s"), "{message}");
    let again = tokio::time::timeout(std::time::Duration::from_millis(700), node.next_control());
    assert!(again.await.is_err(), "a request past its deadline was run again");
}

on_both_backends!(
    a_request_sent_back_to_the_queue_after_its_deadline_fails_then,
    a_burst_cannot_overfill_the_queue,
    the_history_shows_the_progress_its_node_reports,
    a_node_that_heartbeats_but_never_finishes_is_timed_out_and_the_job_retried,
    a_job_fails_over_when_its_node_drops_mid_job,
    upstream_error_only_after_every_attempt_failed,
    a_full_queue_answers_429_with_retry_after,
    a_client_that_disconnects_cancels_its_job,
    a_silent_node_is_dropped_and_an_unhealthy_one_gets_no_work,
    a_node_reporting_no_capacity_gets_no_new_work_until_it_reports_some,
    a_node_with_a_bad_token_or_protocol_version_is_refused,
    metrics_openapi_and_probes_are_served,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_to_one_replica_is_served_by_a_node_on_another() {
    let db = TestDb::new(Backend::Postgres).await;
    let with_node = Server::start(&db).await;
    let without = Server::start(&db).await;
    let key = without.api_key().await;
    let mut jobs = ScriptedNode::connect(&with_node.ws_url(), "remote", 1).await.serve(441);

    let res = without.generate(&key, json!({"input": "[S1] Across replicas."})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-node-id"], "remote");
    assert_eq!(common::read_wav(&res.bytes().await.unwrap()).3.len(), 441);
    assert_eq!(jobs.recv().await.unwrap().job.attempt, 1);
    let (_, models) = without.get_json(&key, "/v1/models").await;
    assert_eq!(models["data"][0]["id"], MODEL);
}
