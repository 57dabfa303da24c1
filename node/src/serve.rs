//! `dia-node serve`: load the models once and join the control plane's pool.

use std::sync::Arc;

use anyhow::bail;
use clap::Args;

use crate::client::{self, Identity};
use crate::device::{parse_device, parse_dtype};
use crate::engine::{Engine, EngineLimits, MemoryBudget, ModelSpec};
use crate::gpu::{self, GpuArgs};
use crate::metrics::NodeMetrics;
use crate::transcriber::Transcriber;
use crate::weights::{self, CheckpointArgs, NONE};
use crate::workers::Workers;

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The control plane's node endpoint.
    #[arg(long, env = "CONTROL_PLANE_URL", default_value = "ws://127.0.0.1:8080/v1/nodes/connect")]
    pub control_plane: String,
    /// Join token the control plane accepts (its NODE_JOIN_TOKENS).
    #[arg(long, env = "NODE_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: String,
    /// This node's name in the pool (default: the host name).
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
    /// Whisper checkpoint for the `transcription` feature: a folder (CTranslate2 or transformers
    /// layout) or a hub repo id (`owner/name[@revision]`); without it the node does not
    /// transcribe.
    #[arg(long, env = "WHISPER_WEIGHTS")]
    pub whisper: Option<String>,
    /// Where the hub cannot be reached, serve the tiny random model instead (said in one line).
    #[arg(long, env = "TINY_RANDOM_IF_OFFLINE")]
    pub tiny_random_if_offline: bool,
    /// cpu, cuda, cuda:N, or auto (CUDA where libtorch sees a GPU).
    #[arg(long, env = "DEVICE", default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long, env = "DTYPE")]
    pub dtype: Option<String>,
    /// Requests decoded together, at most (the capacity advertised, transcriptions included);
    /// fewer where `--memory-budget` holds fewer.
    #[arg(long, env = "MAX_BATCH", default_value_t = 8)]
    pub max_batch: u32,
    /// Device memory the requests' attention caches may take, beside the weights: a size
    /// (`6GiB`, `512MiB`) or a share of the GPU's free memory once the models are loaded
    /// (`80%`). Default: 80% on CUDA where NVML reads the GPU, else 8GiB. Each request's slot
    /// takes its self-attention keys and values up to `--max-positions` and its
    /// cross-attention keys and values; the node runs as many slots as fit (at most
    /// `--max-batch`), or, where not even one does, one slot of as many positions as fit, and
    /// advertises that.
    #[arg(long, env = "MEMORY_BUDGET")]
    pub memory_budget: Option<MemoryBudget>,
    #[command(flatten)]
    pub gpu: GpuArgs,
    /// Where `/metrics` (Prometheus) is served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9091")]
    pub metrics_addr: std::net::SocketAddr,
    /// Decoder positions per request: prompt frames + new frames + 16; sizes the KV caches. The
    /// default fits the control plane's worst case: two 30 s voice samples (86 frames a second,
    /// with the gap) and 4096 new frames.
    #[arg(long, env = "MAX_POSITIONS", default_value_t = 9400)]
    pub max_positions: i64,
}

/// Loads the models and serves jobs until SIGTERM or Ctrl-C, then drains: the jobs in hand are
/// finished and delivered, none are taken, and the process exits.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let serves_dia = args.checkpoints.weights != NONE;
    if !serves_dia && args.whisper.is_none() {
        bail!("nothing to serve: `--weights {NONE}` and no `--whisper`; name Dia, Whisper or both");
    }
    let device = parse_device(&args.device)?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let metrics = Arc::new(NodeMetrics::new());
    let (watched, gpu) = match gpu::open(&args.gpu, device) {
        Ok((gpu, info)) => {
            tracing::info!(name = info.name, uuid = info.uuid, "reading the GPU");
            gpu.watch(metrics.clone())?;
            (Some(gpu), Ok(info))
        }
        Err(reason) => {
            tracing::info!(reason, "no GPU readings");
            (None, Err(reason))
        }
    };
    // Whisper loads first, so that a budget taken from free memory leaves its weights room.
    let whisper = match &args.whisper {
        Some(spec) => {
            let (dir, model_id) = weights::whisper(spec)?;
            let transcriber = Transcriber::start(dir, device, events_tx.clone(), metrics.clone())?;
            Some((model_id, transcriber))
        }
        None => None,
    };
    let dia = if serves_dia {
        let checkpoints = if args.tiny_random_if_offline {
            args.checkpoints.resolve_or_tiny_random()?
        } else {
            args.checkpoints.resolve()?
        };
        let spec = ModelSpec {
            weights: checkpoints.dia.clone(),
            dac: checkpoints.dac.clone(),
            device,
            kind: parse_dtype(args.dtype.as_deref(), device)?,
        };
        let limits = EngineLimits {
            max_batch: args.max_batch as usize,
            max_positions: args.max_positions,
            memory_budget: args
                .memory_budget
                .unwrap_or(MemoryBudget::default_for(device.is_cuda() && watched.is_some())),
            gpu: watched,
        };
        let engine = Engine::start(spec, limits, events_tx.clone(), metrics.clone())?;
        Some((checkpoints.model_id, engine))
    } else {
        None
    };
    // Only the workers send: the channel closes when they have all stopped.
    drop(events_tx);
    let workers = Workers::new(dia, whisper, args.max_batch, metrics.clone());
    let identity = Identity {
        url: args.control_plane,
        join_token: args.join_token,
        node_id: args.node_id.unwrap_or_else(default_node_id),
        gpu,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
        tokio::spawn(crate::metrics::serve(listener, metrics));
        let (drain_tx, drain) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = drain_tx.send(true);
        });
        client::run(identity, workers, events, drain).await
    })
}

/// SIGTERM (what Kubernetes and `kill` send) or Ctrl-C: drain, then exit.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("node-{}", std::process::id()))
}
