//! `dia-node serve` in a pool: a real control plane (in process, SQLite) and the real node binary
//! on the fixture weights, over the real WebSocket protocol.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::fake_nvml::FakeNvml;
use common::pool::{Pool, Store};
use common::{dia_node, fixtures};
use serde_json::{json, Value};

const KEY: &str = "dia_pool_test";

/// A pool on SQLite with a bootstrap key; the fixture voice prompt is 0.45 s, under the 1 s a
/// real voice sample needs.
async fn start_with(batch: u32, commands: Vec<Command>) -> Pool {
    let args = [format!("--bootstrap-api-key={KEY}"), "--min-voice-seconds=0.4".to_owned()];
    Pool::start_with(Store::Sqlite, batch, commands, &args).await
}

async fn start(batch: u32, nodes: usize) -> Pool {
    start_with(batch, (0..nodes).map(|_| dia_node("serve")).collect()).await
}

async fn get(pool: &Pool, path: &str) -> reqwest::Response {
    pool.http.get(pool.url(path)).bearer_auth(KEY).send().await.unwrap()
}

/// Sends a generation in the background.
fn spawn_generate(pool: &Pool, body: Value) -> tokio::task::JoinHandle<reqwest::Response> {
    let (http, url) = (pool.http.clone(), pool.url("/v1/voice/generations"));
    tokio::spawn(async move { http.post(url).bearer_auth(KEY).json(&body).send().await.unwrap() })
}

async fn generate(pool: &Pool, body: Value) -> reqwest::Response {
    pool.http
        .post(pool.url("/v1/voice/generations"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Waits until the newest request runs on a node; returns that node's id.
async fn running_on(pool: &Pool) -> String {
    for _ in 0..300 {
        let history: Value = get(pool, "/v1/history").await.json().await.unwrap();
        let newest = &history["data"][0];
        if newest["status"] == "running" {
            return newest["node_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no node started the request within 6 s");
}

fn samples(wav: &[u8]) -> Vec<i16> {
    let reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    assert_eq!((reader.spec().sample_rate, reader.spec().channels), (44_100, 1));
    reader.into_samples::<i16>().collect::<Result<_, _>>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_through_the_pool_equals_synth_with_the_same_seed() {
    let pool = start(2, 1).await;
    let script = "[S1] Hello from the pool. [S2] Hi there!";
    let res = generate(&pool, json!({"input": script, "seed": 21, "max_new_tokens": 256})).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(res.headers()["x-node-id"], "tiny-0");
    let pooled = samples(&res.bytes().await.unwrap());

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth.wav");
    let synth = tokio::task::spawn_blocking(move || {
        let run = dia_node("synth")
            .args(["--text", script, "--seed", "21", "--max-new-tokens", "256", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(out).unwrap()
    })
    .await
    .unwrap();
    assert!(!pooled.is_empty());
    assert_eq!(pooled, samples(&synth), "the pool's audio differs from synth's");
}

/// The voice prompt travels by reference: the node asks for it the first time and encodes it; the
/// same sample again is served from the codes it cached, to the same audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_voice_sounds_the_same_from_the_sent_prompt_and_from_cached_codes() {
    let pool = start(2, 1).await;
    let prompt = fixtures("dia-tiny", "DIA_FIXTURE_DIR").join("cases/prompt_load_2.wav");
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(std::fs::read(&prompt).unwrap()))
        .text("speaker_name", "Ann")
        .text("transcript", "A prompt.");
    let upload =
        pool.http.post(format!("{}/v1/voices", pool.base)).bearer_auth(KEY).multipart(form);
    let voice: Value = upload.send().await.unwrap().json().await.unwrap();
    let script = "[S1] In her voice.";
    let body =
        json!({"input": script, "speakers": {"S1": voice["id"]}, "seed": 7, "max_new_tokens": 256});
    let first = generate(&pool, body.clone()).await;
    assert_eq!(first.status(), 200, "{:?}", first.text().await);
    let first = samples(&first.bytes().await.unwrap());
    let again = generate(&pool, body).await;
    assert_eq!(samples(&again.bytes().await.unwrap()), first, "the cached codes clone differently");

    // The prompt was used: without it the same script and seed sound otherwise.
    let plain = json!({"input": script, "seed": 7, "max_new_tokens": 256});
    let plain = generate(&pool, plain).await;
    assert_ne!(samples(&plain.bytes().await.unwrap()), first, "the voice prompt changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_and_a_cloned_voice_are_all_served_by_the_batching_node() {
    let pool = start(2, 1).await;
    let wav =
        std::fs::read(fixtures("dia-tiny", "DIA_FIXTURE_DIR").join("cases/prompt_load_2.wav"))
            .unwrap();
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(wav).file_name("voice.wav"))
        .text("speaker_name", "Ann")
        .text("transcript", "[S1] A prompt.");
    let upload =
        pool.http.post(format!("{}/v1/voices", pool.base)).bearer_auth(KEY).multipart(form);
    let voice: Value = upload.send().await.unwrap().json().await.unwrap();

    let mut bodies: Vec<Value> = (0..3)
        .map(|i| json!({"input": format!("[S1] Request {i}."), "seed": i, "max_new_tokens": 256}))
        .collect();
    bodies.push(json!({"input": "[S1] In her voice.", "speakers": {"S1": voice["id"]}, "max_new_tokens": 256}));
    let requests: Vec<_> = bodies.into_iter().map(|b| generate(&pool, b)).collect();
    let mut outputs = Vec::new();
    for res in futures_util::future::join_all(requests).await {
        assert_eq!(res.status(), 200, "{:?}", res.text().await);
        outputs.push(samples(&res.bytes().await.unwrap()));
    }
    for (i, a) in outputs.iter().enumerate() {
        assert!(!a.is_empty() && a.len() <= 256 * 512, "request {i}: {} samples", a.len());
        for b in &outputs[i + 1..] {
            assert_ne!(a, b, "two different requests gave the same audio");
        }
    }
    let history: Value = get(&pool, "/v1/history").await.json().await.unwrap();
    let statuses: Vec<&str> =
        history["data"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded"; 4]);

    let metrics = reqwest::get(&pool.nodes[0].1 .1).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dia_node_jobs_total{outcome=\"succeeded\"} 4"), "{metrics}");
    let frames: u64 = outputs.iter().map(|pcm| pcm.len() as u64 / 512).sum();
    let line = metrics.lines().find(|l| l.starts_with("dia_node_frames_generated_total")).unwrap();
    let counted: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    // Every delivered frame was decoded, plus each request's 15-step EOS tail.
    assert!(counted >= frames, "{counted} frames counted, {frames} delivered");
    assert!(metrics.contains("dia_node_decode_step_seconds_count"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_generation_hands_its_job_to_the_other_node() {
    let mut pool = start(1, 2).await;
    let body =
        json!({"input": "[S1] A long one, to be cut short.", "seed": 3, "max_new_tokens": 1024});
    let request = tokio::spawn({
        let (http, url) = (pool.http.clone(), format!("{}/v1/voice/generations", pool.base));
        async move { http.post(url).bearer_auth(KEY).json(&body).send().await.unwrap() }
    });
    // Wait until a node runs it, then kill that node's process.
    let mut running_on = None;
    for _ in 0..300 {
        let history: Value = get(&pool, "/v1/history").await.json().await.unwrap();
        if let Some(row) = history["data"].as_array().and_then(|r| r.first()) {
            if row["status"] == "running" {
                running_on = row["node_id"].as_str().map(str::to_owned);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let victim = running_on.expect("the request started on a node");
    pool.nodes.retain(|(id, _)| *id != victim);

    let res = request.await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let survivor = &pool.nodes[0].0;
    assert_eq!(res.headers()["x-node-id"], survivor.as_str());
    assert!(!samples(&res.bytes().await.unwrap()).is_empty());
    let history: Value = get(&pool, "/v1/history").await.json().await.unwrap();
    let id = history["data"][0]["id"].as_str().unwrap().to_owned();
    let item: Value = get(&pool, &format!("/v1/history/{id}")).await.json().await.unwrap();
    let attempts: Vec<(&str, &str)> = item["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["node_id"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(attempts, [(victim.as_str(), "node_lost"), (survivor.as_str(), "succeeded")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_it_delivers_its_job_and_leaves_the_pool() {
    let mut pool = start(1, 1).await;
    let body = json!({"input": "[S1] Finish me before you go.", "seed": 4, "max_new_tokens": 1024});
    let request = spawn_generate(&pool, body);
    running_on(&pool).await;
    let pid = pool.nodes[0].1 .0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());

    let res = request.await.unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(res.headers()["x-node-id"], "tiny-0");
    let child = &mut pool.nodes[0].1 .0;
    let mut exit = None;
    for _ in 0..200 {
        exit = child.try_wait().unwrap();
        if exit.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(exit.expect("the node exits once drained").success());
    let res = generate(&pool, json!({"input": "[S1] Anyone there?", "max_new_tokens": 256})).await;
    assert_eq!(res.status(), 404, "no node is left to serve it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_advertises_what_it_runs_and_an_unreachable_hub_gives_the_tiny_random_model() {
    // A hub endpoint nothing listens on, and an empty cache: the default checkpoints cannot be had.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut offline = Command::new(env!("CARGO_BIN_EXE_dia-node"));
    offline
        .arg("serve")
        .arg("--tiny-random-if-offline")
        .env_remove("DIA_WEIGHTS")
        .env_remove("DAC_WEIGHTS")
        .env("HF_ENDPOINT", format!("http://{closed}"))
        .env("HF_HOME", cache.path());
    let pool = start_with(1, vec![dia_node("serve"), offline]).await;

    let models: Value = get(&pool, "/v1/models").await.json().await.unwrap();
    let mut ids: Vec<&str> =
        models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let fixture = std::fs::canonicalize(fixtures("dia-tiny", "DIA_FIXTURE_DIR")).unwrap();
    let folder_name = fixture.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        ids,
        [folder_name, "dia-tiny-random"],
        "ids: the folder's name, and what says random"
    );

    let log = std::fs::read_to_string(&pool.nodes[1].1 .2).unwrap();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("cannot be reached")).collect();
    assert_eq!(said.len(), 1, "one line says the hub is unreachable:\n{log}");
    assert!(said[0].contains(&format!("http://{closed}")) && said[0].contains("dia-tiny-random"));

    let res = generate(&pool, json!({"input": "[S1] Noise, honestly.", "model": "dia-tiny-random", "seed": 5, "max_new_tokens": 256}))
        .await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    assert_eq!(res.headers()["x-node-id"], "tiny-1");
    assert!(!samples(&res.bytes().await.unwrap()).is_empty());
    let history: Value = get(&pool, "/v1/history").await.json().await.unwrap();
    assert_eq!(history["data"][0]["model"], "dia-tiny-random");
}

#[test]
fn without_the_fallback_an_unreachable_hub_is_an_error_naming_it() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_dia-node"))
        .args(["serve", "--join-token", "unused"])
        .env_remove("DIA_WEIGHTS")
        .env_remove("DAC_WEIGHTS")
        .env("HF_ENDPOINT", format!("http://{closed}"))
        .env("HF_HOME", cache.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("the model hub cannot be reached for nari-labs/Dia-1.6B-0626@"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_logits_fail_the_request_as_upstream_error_and_the_node_keeps_serving() {
    // The fixture model with a NaN final norm: every logit is NaN.
    let weights = tempfile::tempdir().unwrap();
    let fixture = fixtures("dia-tiny", "DIA_FIXTURE_DIR");
    std::fs::copy(fixture.join("config.json"), weights.path().join("config.json")).unwrap();
    let mut tensors = Vec::new();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        tensors.extend(tch::Tensor::read_safetensors(fixture.join(shard)).unwrap());
    }
    for (name, t) in &mut tensors {
        if name == "model.decoder.norm.weight" {
            let _ = t.fill_(f64::NAN);
        }
    }
    tch::Tensor::write_safetensors(&tensors, weights.path().join("model.safetensors")).unwrap();
    let mut node = Command::new(env!("CARGO_BIN_EXE_dia-node"));
    node.arg("serve").arg("--weights").arg(weights.path()).arg("--dac");
    node.arg(fixtures("dac-tiny", "DAC_FIXTURE_DIR"));
    let mut pool = start_with(1, vec![node]).await;

    for _ in 0..2 {
        let res =
            generate(&pool, json!({"input": "[S1] Not a word of it.", "max_new_tokens": 256}))
                .await;
        assert_eq!(res.status(), 502);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["type"], "upstream_error", "{body}");
    }
    assert!(pool.nodes[0].1 .0.try_wait().unwrap().is_none(), "the node is still running");
    let models: Value = get(&pool, "/v1/models").await.json().await.unwrap();
    assert_eq!(models["data"][0]["nodes"], 1, "and still in the pool: {models}");
    let metrics = reqwest::get(&pool.nodes[0].1 .1).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dia_node_jobs_total{outcome=\"succeeded\"} 0"), "{metrics}");
    assert!(metrics.contains("dia_node_jobs_total{outcome=\"failed\"}"), "{metrics}");
    let log = std::fs::read_to_string(&pool.nodes[0].1 .2).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// `promtool check <args>` with `input` on stdin; panics with its output unless it passes.
fn promtool(args: &[&str], input: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alert_rules_use_only_metrics_the_running_programs_export() {
    // The node reads a GPU (a scripted NVML library), so its GPU gauges are exported too.
    let nvml = FakeNvml::build("");
    let mut node = dia_node("serve");
    nvml.attach(&mut node);
    let pool = start_with(1, vec![node]).await;
    let res = generate(&pool, json!({"input": "[S1] Counted.", "max_new_tokens": 256})).await;
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let control = reqwest::get(&pool.metrics).await.unwrap().text().await.unwrap();
    let node = reqwest::get(&pool.nodes[0].1 .1).await.unwrap().text().await.unwrap();
    promtool(&["check", "metrics"], &control);
    promtool(&["check", "metrics"], &node);
    let exported: std::collections::HashSet<&str> = control
        .lines()
        .chain(node.lines())
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();

    let monitoring = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s/monitoring");
    let rules = std::fs::read_to_string(monitoring.join("rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(monitoring.join("dashboard.json")).unwrap();
    let status = Command::new("promtool")
        .args(["check", "rules"])
        .arg(monitoring.join("rules.yml"))
        .status()
        .unwrap();
    assert!(status.success(), "promtool check rules failed");
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .chain(dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with("tts_") || w.starts_with("dia_node_"))
        .collect();
    used.sort_unstable();
    used.dedup();
    assert!(used.len() >= 12, "the rules and the dashboard name {used:?}");
    assert!(used.contains(&"dia_node_gpu_temperature_celsius"), "{used:?}");
    let missing: Vec<&&str> = used.iter().filter(|m| !exported.contains(**m)).collect();
    assert!(missing.is_empty(), "used but not exported: {missing:?}\n{control}\n{node}");
}
