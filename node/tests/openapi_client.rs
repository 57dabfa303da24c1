//! A Python client generated from the served `/openapi.json` (by `openapi-python-client`, which
//! `scripts/setup.sh` installs into `.venv`) runs the spec's example against a real control plane,
//! on SQLite and on PostgreSQL, and a real `dia-node serve` on the fixture weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use common::{dia_node, fixtures};
use serde_json::Value;

const KEY: &str = "dia_client_test";
const JOIN: &str = "join-client-test";

/// A store of its own: a SQLite file in `dir`, or a PostgreSQL database made from
/// `TEST_DATABASE_URL` and dropped at the end.
struct Store {
    url: String,
    postgres: Option<(String, String)>,
}

impl Store {
    async fn new(postgres: bool, dir: &Path) -> Self {
        if !postgres {
            let url = format!("sqlite://{}", dir.join("cp.db").display());
            return Self { url, postgres: None };
        }
        let admin = std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("node_client_test_{}", std::process::id());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Self { url, postgres: Some((admin, name)) }
    }

    async fn drop_database(self) {
        if let Some((admin, name)) = self.postgres {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            sqlx::query(&drop).execute(&mut conn).await.unwrap();
        }
    }
}

/// The node process; killed when dropped.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn venv_tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

/// Runs a command to completion off the async threads; panics with its output if it fails.
async fn run(mut command: Command) -> String {
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    text
}

async fn a_generated_python_client_runs_the_specs_example(postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(postgres, dir.path()).await;
    let config = control_plane::Config::parse_from([
        "control-plane".to_owned(),
        format!("--database-url={}", store.url),
        format!("--join-tokens={JOIN}"),
        format!("--bootstrap-api-key={KEY}"),
        // The fixture voice prompt is 0.45 s, under the 1 s a real voice sample needs.
        "--min-voice-seconds=0.4".to_owned(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = control_plane::AppState::start(config).await.unwrap();
    tokio::spawn(control_plane::serve(listener, state));
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let _node = Node(
        dia_node("serve")
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--control-plane", &format!("{}/v1/nodes/connect", base.replace("http", "ws"))])
            .args(["--join-token", JOIN, "--node-id", "tiny-0", "--max-batch", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dia-node serve starts"),
    );
    let http = reqwest::Client::new();
    let mut joined = false;
    for _ in 0..300 {
        let models: Value =
            http.get(format!("{base}/v1/models")).send().await.unwrap().json().await.unwrap();
        if models["data"].as_array().is_some_and(|m| !m.is_empty()) {
            joined = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(joined, "the node did not join within 15 s");

    let doc = http.get(format!("{base}/openapi.json")).send().await.unwrap().text().await.unwrap();
    let doc_path = dir.path().join("openapi.json");
    std::fs::write(&doc_path, doc).unwrap();
    // The generator reads only the WAV's media type as a file download when told it is one.
    let generator_config = dir.path().join("generator.yaml");
    std::fs::write(
        &generator_config,
        "content_type_overrides:\n  audio/wav: application/octet-stream\n",
    )
    .unwrap();
    let mut generate = Command::new(venv_tool("openapi-python-client"));
    generate
        .args(["generate", "--meta", "none", "--path"])
        .arg(&doc_path)
        .arg("--config")
        .arg(&generator_config)
        .arg("--output-path")
        .arg(dir.path().join("dia_client"))
        // It formats what it writes with ruff, installed beside it.
        .env(
            "PATH",
            format!(
                "{}:{}",
                venv_tool("ruff").parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    let generated = run(generate).await;
    assert!(!generated.contains("Warning"), "{generated}");

    let mut example = Command::new(venv_tool("python"));
    example
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spec_example_client.py"))
        .arg(dir.path())
        .arg(&base)
        .arg(KEY)
        .arg(fixtures("dia-tiny", "DIA_FIXTURE_DIR").join("cases/prompt_load_2.wav"))
        .arg(&doc_path);
    let printed = run(example).await;

    // The request the client made is in the history, succeeded, with both voices cloned.
    let id = printed.split_whitespace().nth(1).unwrap().trim_end_matches(':');
    let item: Value = http
        .get(format!("{base}/v1/history/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(item["status"], "succeeded", "{item}");
    assert_eq!(item["input"], "[S1] Hello! Welcome to the show.\n[S2] Thanks for having me.");
    assert!(item["params"]["speakers"]["S1"].is_i64() && item["params"]["speakers"]["S2"].is_i64());
    store.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_specs_example_on_sqlite() {
    a_generated_python_client_runs_the_specs_example(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_specs_example_on_postgres() {
    a_generated_python_client_runs_the_specs_example(true).await
}
