//! Test harness: a real server on a loopback port over SQLite or PostgreSQL, real HTTP, and a
//! scripted node speaking the real protocol over a real WebSocket.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod node;

use clap::Parser;
use control_plane::{AppState, Config};
use serde_json::{json, Value};
use std::net::SocketAddr;

pub const ADMIN_TOKEN: &str = "admin-secret";
pub const JOIN_TOKEN: &str = "join-secret";

/// Which store a test runs on.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates `mod name { on_sqlite, on_postgres }` around an `async fn name(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )*};
}

/// A database of its own for one test: a temporary SQLite file, or a fresh PostgreSQL database
/// created from TEST_DATABASE_URL and dropped at the end.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_drop: Option<(String, String)>,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("cp.db").display());
                Self { url, _dir: Some(dir), pg_drop: None }
            }
            Backend::Postgres => {
                let admin = admin_url();
                let name = format!("cp_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                let base = admin.rsplit_once('/').unwrap().0;
                Self { url: format!("{base}/{name}"), _dir: None, pg_drop: Some((admin, name)) }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_drop.take() {
            // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(mut c) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut c)
                                .await;
                    }
                })
            })
            .join();
        }
    }
}

/// A running control plane.
pub struct Server {
    pub addr: SocketAddr,
    /// Where `/metrics` is served.
    pub metrics_addr: SocketAddr,
    pub state: AppState,
    pub http: reqwest::Client,
}

pub fn config(db_url: &str) -> Config {
    Config::parse_from([
        "control-plane",
        "--listen=127.0.0.1:0",
        &format!("--database-url={db_url}"),
        &format!("--admin-token={ADMIN_TOKEN}"),
        &format!("--join-tokens={JOIN_TOKEN}"),
        "--poll-interval-ms=200",
    ])
}

impl Server {
    pub async fn start(db: &TestDb) -> Self {
        Self::start_with(config(&db.url)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::start(config).await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        tokio::spawn(control_plane::serve_metrics(metrics, state.clone()));
        tokio::spawn(control_plane::serve(listener, state.clone()));
        Self { addr, metrics_addr, state, http: reqwest::Client::new() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/nodes/connect", self.addr)
    }

    /// Creates an account through the admin endpoint; returns its API key.
    pub async fn api_key(&self) -> String {
        let res = self
            .http
            .post(self.url("/v1/admin/accounts"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["api_key"].as_str().unwrap().to_owned()
    }

    /// POST /v1/voice/generations.
    pub async fn generate(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/voice/generations"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// POST /v1/voice/generations in the background, for requests a test acts on meanwhile.
    pub fn spawn_generate(
        &self,
        key: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let (http, url, key) =
            (self.http.clone(), self.url("/v1/voice/generations"), key.to_owned());
        tokio::spawn(
            async move { http.post(url).bearer_auth(key).json(&body).send().await.unwrap() },
        )
    }

    /// Uploads a voice sample; returns the response.
    pub async fn upload(
        &self,
        key: &str,
        file: Vec<u8>,
        name: &str,
        transcript: Option<&str>,
    ) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new()
            .part("file", reqwest::multipart::Part::bytes(file).file_name("clip.wav"))
            .text("speaker_name", name.to_owned());
        if let Some(t) = transcript {
            form = form.text("transcript", t.to_owned());
        }
        self.http
            .post(self.url("/v1/voices"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    /// Uploads a WAV sample with a transcript; returns its id.
    pub async fn voice(&self, key: &str, seconds: f32, transcript: Option<&str>) -> i64 {
        let res = self.upload(key, wav(seconds), "Ann", transcript).await;
        assert_eq!(res.status(), 201);
        res.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    pub async fn get_json(&self, key: &str, path: &str) -> (u16, Value) {
        let res = self.http.get(self.url(path)).bearer_auth(key).send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }
}

/// A mono 16-bit 44.1 kHz WAV of a 440 Hz tone.
pub fn wav(seconds: f32) -> Vec<u8> {
    let rate = proto::SAMPLE_RATE as f32;
    let n = (seconds * rate) as usize;
    let samples: Vec<f32> =
        (0..n).map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate).sin() * 0.5).collect();
    proto::audio::wav_i16_bytes(&proto::audio::to_i16(&samples), proto::SAMPLE_RATE)
}

/// Asserts an error response: status, envelope and type; returns the message.
pub async fn expect_error(res: reqwest::Response, status: u16, kind: &str) -> String {
    assert_eq!(res.status().as_u16(), status, "status of a {kind} error");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], kind, "body: {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Reads a WAV: (sample rate, channels, bits, samples).
pub fn read_wav(bytes: &[u8]) -> (u32, u16, u16, Vec<i16>) {
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    let spec = r.spec();
    let samples = r.samples::<i16>().collect::<Result<Vec<_>, _>>().unwrap();
    (spec.sample_rate, spec.channels, spec.bits_per_sample, samples)
}

/// Polls until `check` holds (for states only visible through the API, like a queued row).
pub async fn eventually<F: AsyncFnMut() -> bool>(mut check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("condition not reached within 5 s");
}
