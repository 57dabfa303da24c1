//! What a node says about its GPU: the GPU, or why it reports none, which the admin API shows
//! operators; a hello that says neither, or both, is refused. On SQLite and on PostgreSQL.

mod common;

use common::node::{cloning_model, hello, ScriptedNode, MODEL};
use common::{expect_error, Backend, Server, TestDb, ADMIN_TOKEN, JOIN_TOKEN};
use proto::{GpuInfo, GpuReadings, Health, Hello};
use serde_json::{json, Value};

const CPU_REASON: &str = "no CUDA device: the node runs on the CPU";

fn h100() -> GpuInfo {
    GpuInfo {
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: "GPU-5d2f1c3e-8a4b-4c6d-9e0f-1a2b3c4d5e6f".into(),
        memory_total_bytes: 85_520_809_984,
        driver_version: "550.54.15".into(),
        cuda_version: "12.4".into(),
    }
}

/// `GET /v1/admin/nodes`.
async fn listed(server: &Server) -> Value {
    let (status, body) = server.get_json(ADMIN_TOKEN, "/v1/admin/nodes").await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

async fn the_admin_api_shows_each_nodes_gpu_or_why_it_has_none(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let with_gpu = Hello {
        gpu: Some(h100()),
        gpu_unavailable: None,
        ..hello("gpu-0", 4, vec![cloning_model(MODEL)])
    };
    let _gpu = ScriptedNode::join(&server.ws_url(), JOIN_TOKEN, with_gpu).await.unwrap();
    let on_cpu = Hello {
        gpu_unavailable: Some(CPU_REASON.into()),
        ..hello("cpu-0", 1, vec![cloning_model(MODEL)])
    };
    let _cpu = ScriptedNode::join(&server.ws_url(), JOIN_TOKEN, on_cpu).await.unwrap();

    let nodes = listed(&server).await;
    let (cpu, gpu) = (&nodes[0], &nodes[1]);
    assert_eq!((&cpu["id"], &gpu["id"]), (&json!("cpu-0"), &json!("gpu-0")), "{nodes}");
    assert_eq!((&cpu["gpu"], &cpu["gpu_unavailable"]), (&Value::Null, &json!(CPU_REASON)));
    assert_eq!(gpu["gpu"], serde_json::to_value(h100()).unwrap());
    assert_eq!(gpu["gpu_unavailable"], Value::Null);
    assert_eq!((&gpu["capacity"], &gpu["models"][0]["id"]), (&json!(4), &json!(MODEL)));

    let res = server.http.get(server.url("/v1/admin/nodes")).bearer_auth("nope").send().await;
    expect_error(res.unwrap(), 401, "invalid_admin_token").await;
}

/// The admin API's list once `done` holds for it (within 10 s).
async fn listed_once(server: &Server, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..100 {
        let nodes = listed(server).await;
        if done(&nodes) {
            return nodes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the admin API never showed it: {}", listed(server).await)
}

async fn heartbeats_bring_the_gpus_readings_and_why_a_node_is_unhealthy_to_operators(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let hello = Hello {
        gpu: Some(h100()),
        gpu_unavailable: None,
        ..hello("gpu-0", 4, vec![cloning_model(MODEL)])
    };
    let mut node = ScriptedNode::join(&server.ws_url(), JOIN_TOKEN, hello).await.unwrap();
    let hot = GpuReadings {
        utilization_percent: 99,
        memory_used_bytes: 70 << 30,
        memory_total_bytes: 85_520_809_984,
        temperature_celsius: 88,
        slowdown_temperature_celsius: Some(87),
        power_watts: Some(690.5),
        power_limit_watts: Some(700.0),
        ecc_uncorrected_errors: Some(0),
        xid_errors: 0,
        last_xid: None,
    };
    let reason = "GPU at 88 °C, at or above its slowdown threshold of 87 °C";
    node.beat_with(Health::Unhealthy { reason: reason.into() }, 4, Some(hot.clone())).await;
    let nodes = listed_once(&server, |n| n[0]["healthy"] == json!(false)).await;
    assert_eq!(nodes[0]["unhealthy_reason"], json!(reason), "{nodes}");
    assert_eq!(nodes[0]["gpu_readings"], serde_json::to_value(&hot).unwrap(), "{nodes}");

    let cool = GpuReadings { temperature_celsius: 60, ..hot };
    node.beat_with(Health::Healthy, 4, Some(cool.clone())).await;
    let nodes = listed_once(&server, |n| n[0]["healthy"] == json!(true)).await;
    assert_eq!(nodes[0]["unhealthy_reason"], Value::Null, "{nodes}");
    assert_eq!(nodes[0]["gpu_readings"]["temperature_celsius"], json!(60), "{nodes}");
}

async fn a_hello_saying_neither_its_gpu_nor_why_it_has_none_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let neither = Hello { gpu_unavailable: None, ..hello("vague", 1, vec![cloning_model(MODEL)]) };
    let refused = ScriptedNode::join(&server.ws_url(), JOIN_TOKEN, neither).await.err().unwrap();
    assert!(refused.contains("`gpu_unavailable`); this one does neither"), "{refused}");
    let both = Hello { gpu: Some(h100()), ..hello("both", 1, vec![cloning_model(MODEL)]) };
    let refused = ScriptedNode::join(&server.ws_url(), JOIN_TOKEN, both).await.err().unwrap();
    assert!(refused.ends_with("not both"), "{refused}");
    assert_eq!(listed(&server).await, json!([]), "neither joined");
}

on_both_backends!(
    the_admin_api_shows_each_nodes_gpu_or_why_it_has_none,
    a_hello_saying_neither_its_gpu_nor_why_it_has_none_is_refused,
    heartbeats_bring_the_gpus_readings_and_why_a_node_is_unhealthy_to_operators,
);
