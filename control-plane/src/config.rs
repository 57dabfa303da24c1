//! Command-line flags and environment variables of the control plane.

use clap::Parser;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The control plane: public API, voice library, history, node routing.
#[derive(Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Address the API (and the node WebSocket, /openapi.json, /docs, the probes) listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address `/metrics` (Prometheus) listens on, apart from the public API.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// Store: `sqlite://path.db` (created on first start) or `postgres://…` (what several replicas share).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://control-plane.db")]
    pub database_url: String,

    /// Token for the admin endpoints (`/v1/admin/*`: accounts and API keys); unset disables them.
    #[arg(long, env = "ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// For local use: an API key created at start (with an account named "local") if it is new.
    #[arg(long, env = "BOOTSTRAP_API_KEY")]
    pub bootstrap_api_key: Option<String>,

    /// Join tokens nodes present to connect (comma-separated); unset refuses every node.
    #[arg(long, env = "NODE_JOIN_TOKENS", value_delimiter = ',')]
    pub join_tokens: Vec<String>,

    /// Longest `input` in characters (413 `request_too_large` beyond); Dia's encoder reads 1024 bytes.
    #[arg(long, env = "MAX_INPUT_CHARS", default_value_t = 1024)]
    pub max_input_chars: usize,

    /// Requests that may wait for a node at once, pool-wide; beyond it 429 with Retry-After.
    #[arg(long, env = "MAX_QUEUED", default_value_t = 256)]
    pub max_queued: i64,

    /// How long a request may wait in the queue for a node before it fails.
    #[arg(long, env = "QUEUE_TIMEOUT_SECS", default_value_t = 300)]
    pub queue_timeout_secs: u64,

    /// Longest a node may run one attempt before it is given up and retried elsewhere: a node
    /// that heartbeats but never finishes must not hold a request for ever.
    #[arg(long, env = "JOB_TIMEOUT_SECS", default_value_t = 900)]
    pub job_timeout_secs: u64,

    /// Most jobs one node may hold at once, whatever capacity it claims.
    #[arg(long, env = "MAX_NODE_CAPACITY", default_value_t = 64)]
    pub max_node_capacity: u32,

    /// Tries per request across nodes (failover); the client sees upstream_error when all fail.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: i64,

    /// Interval nodes are asked to send heartbeats at; three missed ones drop the node.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 5000)]
    pub heartbeat_interval_ms: u64,

    /// How often the queue is polled besides notifications (the fallback between replicas).
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 500)]
    pub poll_interval_ms: u64,

    /// Largest voice-sample upload in bytes (413 beyond).
    #[arg(long, env = "MAX_VOICE_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_voice_bytes: usize,

    /// Longest voice sample in seconds; Dia clones from a few seconds of speech.
    #[arg(long, env = "MAX_VOICE_SECONDS", default_value_t = 30.0)]
    pub max_voice_seconds: f32,

    /// Shortest voice sample in seconds: from less, Dia has too little of the voice to clone it.
    #[arg(long, env = "MIN_VOICE_SECONDS", default_value_t = 1.0)]
    pub min_voice_seconds: f32,

    /// Longest clip `POST /v1/audio/transcriptions` takes, in seconds (it travels to the node in
    /// one 16-bit frame, under the node's 16 MiB frame limit up to about 190 s).
    #[arg(long, env = "MAX_TRANSCRIPTION_SECONDS", default_value_t = 180.0)]
    pub max_transcription_seconds: f32,

    /// Names this process in the node table and the history (default: random).
    #[arg(long, env = "REPLICA_ID")]
    pub replica_id: Option<String>,
}

impl Config {
    /// Node heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Least time between two writes of one node's heartbeats, or of one job's progress, to
    /// the store: a node sending them in a flood costs bounded writes.
    pub fn node_write_interval(&self) -> Duration {
        self.heartbeat_interval() / 4
    }

    /// Silence after which a node is dropped.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_interval() * 3
    }

    /// Queue poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// The most a request waits for a node.
    pub fn queue_timeout(&self) -> Duration {
        Duration::from_secs(self.queue_timeout_secs)
    }
}

/// Redacts secrets: the database URL (it may hold a password), tokens and keys.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("metrics_addr", &self.metrics_addr)
            .field(
                "database_url",
                &format!("{}://<redacted>", self.database_url.split(':').next().unwrap_or("")),
            )
            .field("admin_token", &redacted(self.admin_token.is_some()))
            .field("bootstrap_api_key", &redacted(self.bootstrap_api_key.is_some()))
            .field("join_tokens", &format!("<{} redacted>", self.join_tokens.len()))
            .field("max_input_chars", &self.max_input_chars)
            .field("max_queued", &self.max_queued)
            .field("queue_timeout_secs", &self.queue_timeout_secs)
            .field("max_node_capacity", &self.max_node_capacity)
            .field("max_attempts", &self.max_attempts)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("poll_interval_ms", &self.poll_interval_ms)
            .field("max_voice_bytes", &self.max_voice_bytes)
            .field("max_voice_seconds", &self.max_voice_seconds)
            .field("min_voice_seconds", &self.min_voice_seconds)
            .field("max_transcription_seconds", &self.max_transcription_seconds)
            .field("replica_id", &self.replica_id)
            .finish()
    }
}
