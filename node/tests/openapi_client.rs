//! A Python client generated from the served `/openapi.json` (by `openapi-python-client`, which
//! `scripts/setup.sh` installs into `.venv`) runs the spec's example against a real control plane,
//! on SQLite and on PostgreSQL, and a real `dia-node serve` on the fixture weights.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::fixtures;
use common::pool::{Pool, Store};
use serde_json::Value;

const KEY: &str = "dia_client_test";

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

async fn a_generated_python_client_runs_the_specs_example(store: Store) {
    let args = [
        format!("--bootstrap-api-key={KEY}"),
        // The fixture voice prompt is 0.45 s, under the 1 s a real voice sample needs.
        "--min-voice-seconds=0.4".to_owned(),
    ];
    let pool = Pool::start(store, 2, 1, &args).await;
    let (dir, base, http) = (&pool.dir, pool.base.clone(), &pool.http);

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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_specs_example_on_sqlite() {
    a_generated_python_client_runs_the_specs_example(Store::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_the_specs_example_on_postgres() {
    a_generated_python_client_runs_the_specs_example(Store::Postgres).await
}
