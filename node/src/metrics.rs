//! The node's Prometheus metrics, updated by the worker threads and served on `/metrics`.

use prometheus::{
    Counter, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::gpu::GpuState;
use crate::health::StepFailures;

/// How a job ended: the values of the `outcome` label of `dia_node_jobs_total` and
/// `dia_node_transcriptions_total`.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    const ALL: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Cancelled];

    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Every collector, registered once.
pub struct NodeMetrics {
    registry: Registry,
    /// `dia_node_frames_generated_total`: audio frames (86 a second) decoded.
    pub frames: IntCounter,
    /// `dia_node_decode_step_seconds`: one batched decode step.
    pub step_seconds: Histogram,
    /// `dia_node_jobs_active`: jobs being generated, the batch of each step.
    pub active: IntGauge,
    /// `dia_node_jobs_queued`: jobs waiting for a slot.
    pub queued: IntGauge,
    /// `dia_node_jobs_total{outcome}`, one series per [`Outcome`].
    jobs: IntCounterVec,
    /// `dia_node_audio_seconds_total`: seconds of audio delivered.
    pub audio_seconds: Counter,
    /// `dia_node_healthy`: 1 while the node takes work, 0 while it drains or is unhealthy.
    pub healthy: IntGauge,
    /// `dia_node_transcriptions_active`: 1 while a clip is being transcribed.
    pub transcriptions_active: IntGauge,
    /// `dia_node_transcriptions_queued`: clips waiting for the transcriber.
    pub transcriptions_queued: IntGauge,
    /// `dia_node_transcriptions_total{outcome}`, one series per [`Outcome`].
    transcriptions: IntCounterVec,
    /// `dia_node_transcribed_audio_seconds_total`: seconds of audio transcribed.
    pub transcribed_seconds: Counter,
    /// `dia_node_memory_budget_bytes`: device memory the requests' caches may take.
    pub memory_budget: IntGauge,
    /// `dia_node_memory_reserved_bytes`: device memory the requests' caches take.
    pub memory_reserved: IntGauge,
    /// The engine's failed decode steps, for the health rule (not a metric).
    pub steps: StepFailures,
    /// The GPU's latest readings and health, for heartbeats (not a metric).
    pub gpu: GpuState,
}

/// The GPU's gauges, registered only where the node reads a GPU (a node on the CPU exports
/// none rather than zeros).
pub struct GpuGauges {
    /// `dia_node_gpu_healthy`: 0 while a GPU health rule takes the node out.
    pub healthy: IntGauge,
    /// `dia_node_gpu_utilization_ratio`: share of time a kernel ran, 0–1.
    pub utilization: Gauge,
    /// `dia_node_gpu_memory_used_bytes`.
    pub memory_used: IntGauge,
    /// `dia_node_gpu_memory_total_bytes`.
    pub memory_total: IntGauge,
    /// `dia_node_gpu_temperature_celsius`.
    pub temperature: IntGauge,
    /// `dia_node_gpu_slowdown_temperature_celsius`: where the GPU slows its clocks.
    pub slowdown_temperature: IntGauge,
    /// `dia_node_gpu_power_watts`.
    pub power: Gauge,
    /// `dia_node_gpu_power_limit_watts`.
    pub power_limit: Gauge,
    /// `dia_node_gpu_ecc_uncorrected_errors`: since the driver loaded.
    pub ecc_uncorrected: IntGauge,
    /// `dia_node_gpu_xid_errors_total`: XID events since the node started.
    pub xid_errors: IntCounter,
}

impl NodeMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let frames = IntCounter::new("dia_node_frames_generated_total", "Audio frames decoded")
            .expect("valid metric");
        let step_seconds = Histogram::with_opts(
            HistogramOpts::new("dia_node_decode_step_seconds", "One batched decode step")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        let active = IntGauge::new("dia_node_jobs_active", "Jobs being generated (the batch)")
            .expect("valid metric");
        let queued =
            IntGauge::new("dia_node_jobs_queued", "Jobs waiting for a slot").expect("valid metric");
        let jobs =
            IntCounterVec::new(Opts::new("dia_node_jobs_total", "Jobs by outcome"), &["outcome"])
                .expect("valid metric");
        let audio_seconds =
            Counter::new("dia_node_audio_seconds_total", "Seconds of audio delivered")
                .expect("valid metric");
        let transcriptions_active =
            IntGauge::new("dia_node_transcriptions_active", "Clips being transcribed")
                .expect("valid metric");
        let transcriptions_queued =
            IntGauge::new("dia_node_transcriptions_queued", "Clips waiting for the transcriber")
                .expect("valid metric");
        let transcriptions = IntCounterVec::new(
            Opts::new("dia_node_transcriptions_total", "Transcription jobs by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let transcribed_seconds = Counter::new(
            "dia_node_transcribed_audio_seconds_total",
            "Seconds of audio transcribed",
        )
        .expect("valid metric");
        let memory_budget = IntGauge::new(
            "dia_node_memory_budget_bytes",
            "Device memory the requests' caches may take (--memory-budget)",
        )
        .expect("valid metric");
        let memory_reserved = IntGauge::new(
            "dia_node_memory_reserved_bytes",
            "Device memory the requests' caches take: slots times the bytes of one",
        )
        .expect("valid metric");
        for outcome in Outcome::ALL {
            jobs.with_label_values(&[outcome.label()]);
            transcriptions.with_label_values(&[outcome.label()]);
        }
        let healthy = IntGauge::new("dia_node_healthy", "1 while the node takes work, else 0")
            .expect("valid metric");
        healthy.set(1);
        // Restarts show as changes of this value.
        let start_time =
            Gauge::new("dia_node_start_time_seconds", "When the process started, Unix time")
                .expect("valid metric");
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        for c in [
            Box::new(frames.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(step_seconds.clone()),
            Box::new(active.clone()),
            Box::new(queued.clone()),
            Box::new(jobs.clone()),
            Box::new(audio_seconds.clone()),
            Box::new(healthy.clone()),
            Box::new(start_time),
            Box::new(transcriptions_active.clone()),
            Box::new(transcriptions_queued.clone()),
            Box::new(transcriptions.clone()),
            Box::new(transcribed_seconds.clone()),
            Box::new(memory_budget.clone()),
            Box::new(memory_reserved.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Self {
            registry,
            frames,
            step_seconds,
            active,
            queued,
            jobs,
            audio_seconds,
            healthy,
            transcriptions_active,
            transcriptions_queued,
            transcriptions,
            transcribed_seconds,
            memory_budget,
            memory_reserved,
            steps: StepFailures::default(),
            gpu: GpuState::default(),
        }
    }

    /// Registers the GPU's gauges; once per process.
    pub fn gpu_gauges(&self) -> GpuGauges {
        let int = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let float = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        let gauges = GpuGauges {
            healthy: int("dia_node_gpu_healthy", "0 while a GPU health rule takes the node out"),
            utilization: float("dia_node_gpu_utilization_ratio", "Share of time a kernel ran"),
            memory_used: int("dia_node_gpu_memory_used_bytes", "GPU memory in use"),
            memory_total: int("dia_node_gpu_memory_total_bytes", "GPU memory"),
            temperature: int("dia_node_gpu_temperature_celsius", "GPU temperature"),
            slowdown_temperature: int(
                "dia_node_gpu_slowdown_temperature_celsius",
                "Temperature at which the GPU slows its clocks",
            ),
            power: float("dia_node_gpu_power_watts", "GPU power draw"),
            power_limit: float("dia_node_gpu_power_limit_watts", "GPU enforced power limit"),
            ecc_uncorrected: int(
                "dia_node_gpu_ecc_uncorrected_errors",
                "Uncorrectable ECC errors since the driver loaded",
            ),
            xid_errors: IntCounter::new(
                "dia_node_gpu_xid_errors_total",
                "XID error events since the node started",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(gauges.healthy.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(gauges.utilization.clone()),
            Box::new(gauges.memory_used.clone()),
            Box::new(gauges.memory_total.clone()),
            Box::new(gauges.temperature.clone()),
            Box::new(gauges.slowdown_temperature.clone()),
            Box::new(gauges.power.clone()),
            Box::new(gauges.power_limit.clone()),
            Box::new(gauges.ecc_uncorrected.clone()),
            Box::new(gauges.xid_errors.clone()),
        ] {
            self.registry.register(c).expect("registered once");
        }
        gauges
    }

    /// Counts a generation job's end.
    pub fn job_ended(&self, outcome: Outcome) {
        self.jobs.with_label_values(&[outcome.label()]).inc();
    }

    /// Counts a transcription job's end.
    pub fn transcription_ended(&self, outcome: Outcome) {
        self.transcriptions.with_label_values(&[outcome.label()]).inc();
    }

    /// (active, queued) jobs of both workers, as the heartbeat reports them.
    pub fn load(&self) -> (u32, u32) {
        let active = self.active.get() + self.transcriptions_active.get();
        let queued = self.queued.get() + self.transcriptions_queued.get();
        (active as u32, queued as u32)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new().encode_to_string(&self.registry.gather()).expect("metrics encode")
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<NodeMetrics>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_series_exists_from_the_start_and_no_other_label_does() {
        let text = NodeMetrics::new().render();
        for counter in ["dia_node_jobs_total", "dia_node_transcriptions_total"] {
            let series: Vec<&str> = text.lines().filter(|l| l.starts_with(counter)).collect();
            let expected: Vec<String> = ["cancelled", "failed", "succeeded"]
                .iter()
                .map(|o| format!("{counter}{{outcome=\"{o}\"}} 0"))
                .collect();
            assert_eq!(series, expected, "{text}");
        }
    }

    #[test]
    fn the_load_adds_the_transcriber_to_the_engine() {
        let metrics = NodeMetrics::new();
        metrics.active.set(3);
        metrics.queued.set(2);
        metrics.transcriptions_active.set(1);
        metrics.transcriptions_queued.set(4);
        assert_eq!(metrics.load(), (4, 6));
    }
}
