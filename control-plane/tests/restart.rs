//! A control plane killed with work in flight loses nothing: the real binary is started, killed
//! with SIGKILL while one request runs and another waits, and a new process on the same store
//! finishes both. Runs on SQLite and on PostgreSQL.

mod common;

use std::process::{Child, Command, Stdio};

use common::node::ScriptedNode;
use common::{eventually, read_wav, Backend, TestDb, JOIN_TOKEN};
use serde_json::{json, Value};

const KEY: &str = "dia_restart_test_key";

/// A control-plane process on its own port.
struct Process {
    child: Child,
    addr: String,
}

impl Process {
    async fn start(db: &TestDb) -> Self {
        Self::start_with(db, &[]).await
    }

    async fn start_with(db: &TestDb, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(env!("CARGO_BIN_EXE_control-plane"))
            .args([
                &format!("--listen={addr}"),
                "--metrics-addr=127.0.0.1:0",
                &format!("--database-url={}", db.url),
                &format!("--join-tokens={JOIN_TOKEN}"),
                &format!("--bootstrap-api-key={KEY}"),
                "--heartbeat-interval-ms=200",
                "--poll-interval-ms=100",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the control-plane binary starts");
        let process = Self { child, addr };
        let http = reqwest::Client::new();
        eventually(async || http.get(process.url("/readyz")).send().await.is_ok()).await;
        process
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/v1/nodes/connect", self.addr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn history(http: &reqwest::Client, p: &Process) -> Vec<Value> {
    let res = http.get(p.url("/v1/history")).bearer_auth(KEY).send().await.unwrap();
    res.json::<Value>().await.unwrap()["data"].as_array().unwrap().clone()
}

/// One slot, taken by a request on a node that never answers; a second request waits in the
/// queue. Returns the silent node.
async fn one_running_one_queued(http: &reqwest::Client, p: &Process) -> ScriptedNode {
    let mut busy = ScriptedNode::connect(&p.ws_url(), "busy", 1).await;
    for input in ["[S1] Running when the process dies.", "[S1] Queued when the process dies."] {
        let (client, url) = (http.clone(), p.url("/v1/voice/generations"));
        tokio::spawn(async move {
            let _ = client.post(url).bearer_auth(KEY).json(&json!({"input": input})).send().await;
        });
        if input.starts_with("[S1] Running") {
            busy.next_job().await;
        }
    }
    eventually(async || {
        let rows = history(http, p).await;
        rows.len() == 2 && rows.iter().any(|r| r["status"] == "queued")
    })
    .await;
    busy
}

async fn a_killed_control_plane_loses_no_accepted_request(backend: Backend) {
    let db = TestDb::new(backend).await;
    let http = reqwest::Client::new();
    let first = Process::start(&db).await;

    let busy = one_running_one_queued(&http, &first).await;
    drop(first);
    drop(busy);

    let second = Process::start(&db).await;
    let _jobs = ScriptedNode::connect(&second.ws_url(), "fresh", 4).await.serve(4410);
    eventually(async || history(&http, &second).await.iter().all(|r| r["status"] == "succeeded"))
        .await;
    let rows = history(&http, &second).await;
    assert_eq!(rows.len(), 2, "one row per request, no duplicates: {rows:?}");
    for row in rows {
        let item: Value = http
            .get(second.url(&format!("/v1/history/{}", row["id"].as_str().unwrap())))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(item["node_id"], "fresh", "{item}");
        let last = item["attempts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["outcome"], "succeeded", "{item}");
        let wav = http.get(second.url(item["audio_url"].as_str().unwrap())).bearer_auth(KEY).send();
        assert_eq!(read_wav(&wav.await.unwrap().bytes().await.unwrap()).3.len(), 4410);
    }
}

/// A request queued when its replica died has no handler left to time it out: any replica's
/// sweep fails it once its deadline has passed.
async fn a_queued_request_whose_replica_died_still_ends_by_its_deadline(backend: Backend) {
    let db = TestDb::new(backend).await;
    let http = reqwest::Client::new();
    let first = Process::start(&db).await;
    let busy = one_running_one_queued(&http, &first).await;
    drop(busy);
    drop(first);

    let second = Process::start_with(&db, &["--queue-timeout-secs=1"]).await;
    eventually(async || history(&http, &second).await.iter().all(|r| r["status"] == "failed"))
        .await;
    for row in history(&http, &second).await {
        assert_eq!(row["error"]["type"], "upstream_error", "{row}");
        assert!(row["error"]["message"].as_str().unwrap().contains("within 1 s"), "{row}");
    }
}

on_both_backends!(
    a_killed_control_plane_loses_no_accepted_request,
    a_queued_request_whose_replica_died_still_ends_by_its_deadline,
);
