//! A pool on SQLite or PostgreSQL: a real control plane in process, and real `dia-node serve`
//! processes on the fixture weights that have joined it.

#![allow(dead_code)] // each test binary uses its own part of the harness

use super::dia_node;
use clap::Parser;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const JOIN: &str = "join-pool";

/// A node process, its `/metrics` URL and the file its stderr goes to; killed when dropped.
pub struct Node(pub Child, pub String, pub PathBuf);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The control plane's store: a SQLite file in the pool's folder, or a PostgreSQL database made
/// from `TEST_DATABASE_URL` and dropped with the pool.
pub enum Store {
    Sqlite,
    Postgres,
}

pub struct Pool {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The control plane's `/metrics`.
    pub metrics: String,
    pub http: reqwest::Client,
    pub nodes: Vec<(String, Node)>,
    pub dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.nodes.clear();
        if let Some((admin, name)) = self.postgres.take() {
            // Drop runs outside async; a short-lived runtime on its own thread does the cleanup.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(mut c) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(&drop).execute(&mut c).await;
                    }
                })
            })
            .join();
        }
    }
}

impl Pool {
    /// A control plane (configured by `args` besides its store and join token) that `nodes`
    /// nodes `tiny-0…` of capacity `batch` on the fixture weights have joined.
    pub async fn start(store: Store, batch: u32, nodes: usize, args: &[String]) -> Self {
        let commands = (0..nodes).map(|_| dia_node("serve")).collect();
        Self::start_with(store, batch, commands, args).await
    }

    /// A control plane that the `dia-node serve` commands have joined as nodes `tiny-0…` of
    /// capacity `batch`; node `i` writes its stderr to `node-i.log` in the pool's folder.
    pub async fn start_with(
        store: Store,
        batch: u32,
        commands: Vec<Command>,
        args: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (database_url, postgres) = match store {
            Store::Sqlite => (format!("sqlite://{}", dir.path().join("cp.db").display()), None),
            Store::Postgres => {
                let admin = std::env::var("TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let name = format!("node_pool_{}", uuid_like());
                let mut conn =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
                let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
                (url, Some((admin, name)))
            }
        };
        let config = control_plane::Config::parse_from(
            ["control-plane".to_owned(), format!("--database-url={database_url}")]
                .into_iter()
                .chain([format!("--join-tokens={JOIN}")])
                .chain(args.iter().cloned()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = control_plane::AppState::start(config).await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_url = format!("http://{}/metrics", metrics.local_addr().unwrap());
        tokio::spawn(control_plane::serve_metrics(metrics, state.clone()));
        tokio::spawn(control_plane::serve(listener, state));
        let nodes = commands
            .into_iter()
            .enumerate()
            .map(|(i, mut command)| {
                let id = format!("tiny-{i}");
                let metrics =
                    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
                let log = dir.path().join(format!("node-{i}.log"));
                let node = command
                    .args(["--metrics-addr", &metrics.to_string()])
                    .args(["--control-plane", &format!("ws://{addr}/v1/nodes/connect")])
                    .args(["--join-token", JOIN, "--node-id", &id])
                    .args(["--max-batch", &batch.to_string()])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).unwrap())
                    .spawn()
                    .expect("dia-node serve starts");
                (id, Node(node, format!("http://{metrics}/metrics"), log))
            })
            .collect::<Vec<_>>();
        let online = format!("tts_nodes_online{{feature=\"voice-cloning\"}} {}", nodes.len());
        let pool = Self {
            base: format!("http://{addr}"),
            metrics: metrics_url,
            http: reqwest::Client::new(),
            nodes,
            dir,
            postgres,
        };
        for _ in 0..300 {
            let metrics = pool.http.get(&pool.metrics).send().await.unwrap();
            if metrics.text().await.unwrap().contains(&online) {
                return pool;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the nodes did not join within 15 s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A name part no other test run uses at the same time.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}_{}", std::process::id(), nanos.subsec_nanos())
}
