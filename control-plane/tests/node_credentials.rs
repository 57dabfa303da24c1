//! Per-node credentials: created by the admin API (shown once, stored hashed), bound to one node
//! id, sent in the `Authorization` header, revocable; and one node id per pool.

mod common;

use common::node::{dial, ScriptedNode};
use common::{config, eventually, expect_error, Backend, Server, TestDb, ADMIN_TOKEN};
use serde_json::Value;

async fn create(server: &Server, node_id: &str) -> reqwest::Response {
    server
        .http
        .post(server.url(&format!("/v1/admin/nodes/{node_id}/credentials")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

async fn a_credential_joins_only_as_its_node_and_stops_when_revoked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = config(&db.url);
    config.heartbeat_interval_ms = 200;
    let server = Server::start_with(config).await;
    let res = create(&server, "gpu-7").await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(created["node_id"], "gpu-7");
    assert!(token.starts_with(&format!("dnc_{id}_")), "{token}");

    // Shown once: the list and the store hold no token.
    let list: Value = server
        .http
        .get(server.url("/v1/admin/node-credentials"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], id);
    assert!(!list.to_string().contains(&token[4..]), "{list}");
    let sql = "SELECT secret_hash FROM node_credentials";
    let stored: String = match &server.state.db {
        control_plane::db::Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        control_plane::db::Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
    };
    assert_ne!(stored, token);
    assert_eq!(stored.len(), 64);

    let refused = ScriptedNode::connect_as(&server.ws_url(), token, "gpu-8").await.err().unwrap();
    assert!(refused.contains("for node `gpu-7`"), "{refused}");
    // A near miss of the secret, and another credential's id with this secret, are unknown.
    let mut near = token.to_owned();
    near.pop();
    near.push(if token.ends_with('0') { '1' } else { '0' });
    assert!(dial(&server.ws_url(), &near).await.is_err());
    assert!(dial(&server.ws_url(), &token.replace(id, "000000000000")).await.is_err());

    let mut node = ScriptedNode::connect_as(&server.ws_url(), token, "gpu-7").await.unwrap();
    node.heartbeat(true).await;
    // Revoked: refused from now on, and the live session is dropped within a heartbeat.
    let revoke = |id: &str| {
        server
            .http
            .delete(server.url(&format!("/v1/admin/node-credentials/{id}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    assert_eq!(revoke(id).await.unwrap().status(), 204);
    expect_error(revoke(id).await.unwrap(), 404, "not_found").await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while node.next_control().await.is_some() {}
    });
    assert!(closed.await.is_ok(), "the revoked node's session stayed open");
    assert!(dial(&server.ws_url(), token).await.is_err());
    eventually(async || server.state.registry.snapshot(&proto::NodeId("gpu-7".into())).is_none())
        .await;
}

async fn the_admin_api_checks_its_token_and_node_ids(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = Server::start(&db).await;
    let key = server.api_key().await;
    let res = server
        .http
        .post(server.url("/v1/admin/nodes/gpu-1/credentials"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    expect_error(res, 401, "invalid_admin_token").await;
    for bad in ["gpu%201", "a%2Fb", &"x".repeat(129)] {
        let msg = expect_error(create(&server, bad).await, 400, "invalid_parameter").await;
        assert!(msg.contains("node id"), "{msg}");
    }
    assert_eq!(create(&server, "pod-0.gpu_pool").await.status(), 201);
}

/// Two replicas on one PostgreSQL store: a node id held by a live session on one is refused by
/// the other, and free again once that session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_held_on_another_replica_is_refused() {
    let db = TestDb::new(Backend::Postgres).await;
    let a = Server::start(&db).await;
    let b = Server::start(&db).await;
    let mut held = ScriptedNode::connect(&a.ws_url(), "gpu-0", 1).await;
    held.heartbeat(true).await;
    let refused = ScriptedNode::connect_as(&b.ws_url(), common::JOIN_TOKEN, "gpu-0").await;
    let msg = refused.err().unwrap();
    assert!(msg.contains("another replica"), "{msg}");
    drop(held);
    eventually(async || a.state.registry.snapshot(&proto::NodeId("gpu-0".into())).is_none()).await;
    let mut joined = None;
    for _ in 0..50 {
        if let Ok(node) = ScriptedNode::connect_as(&b.ws_url(), common::JOIN_TOKEN, "gpu-0").await {
            joined = Some(node);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(joined.is_some(), "the id stayed held after its session ended");
}

on_both_backends!(
    a_credential_joins_only_as_its_node_and_stops_when_revoked,
    the_admin_api_checks_its_token_and_node_ids,
);
