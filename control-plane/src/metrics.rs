//! Prometheus metrics: one struct of collectors, registered once, and the HTTP middleware that
//! counts requests by route, status and error type.

use crate::error::ErrorKindExt;
use crate::state::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::time::Instant;

/// The control plane's collectors.
pub struct Metrics {
    registry: Registry,
    /// `tts_http_requests_total{route, method, status, error_type}`.
    pub requests: IntCounterVec,
    /// `tts_http_request_duration_seconds{route}`.
    pub request_seconds: HistogramVec,
    /// `tts_queue_wait_seconds`: from acceptance to a node taking the job.
    pub queue_seconds: Histogram,
    /// `tts_queue_depth`: requests waiting for a node, pool-wide.
    pub queue_depth: IntGauge,
    /// `tts_queue_capacity`: the most requests that may wait (`MAX_QUEUED`).
    pub queue_capacity: IntGauge,
    /// `tts_nodes_online{feature}`: healthy nodes on this replica, for every feature of
    /// [`proto::FEATURES`] (what nodes claim beyond them is not a label).
    pub nodes_online: IntGaugeVec,
    /// `tts_audio_generated_seconds_total`.
    pub audio_seconds: Counter,
    /// `tts_audio_transcribed_seconds_total`.
    pub transcribed_seconds: Counter,
}

/// Latency buckets from a fast error to a long generation.
const SECONDS_BUCKETS: &[f64] =
    &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

impl Metrics {
    /// Creates and registers every collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "tts_http_requests_total",
                "HTTP requests by route, method, status and error type",
            ),
            &["route", "method", "status", "error_type"],
        )
        .expect("valid metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("tts_http_request_duration_seconds", "HTTP request latency")
                .buckets(SECONDS_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let queue_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tts_queue_wait_seconds",
                "Time from acceptance until a node took the job",
            )
            .buckets(SECONDS_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let queue_depth =
            IntGauge::new("tts_queue_depth", "Requests waiting for a node").expect("valid metric");
        let queue_capacity = IntGauge::new("tts_queue_capacity", "Most requests that may wait")
            .expect("valid metric");
        let nodes_online = IntGaugeVec::new(
            Opts::new("tts_nodes_online", "Healthy nodes connected to this replica, by feature"),
            &["feature"],
        )
        .expect("valid metric");
        let audio_seconds =
            Counter::new("tts_audio_generated_seconds_total", "Seconds of audio generated")
                .expect("valid metric");
        registry.register(Box::new(requests.clone())).expect("registered once");
        registry.register(Box::new(request_seconds.clone())).expect("registered once");
        registry.register(Box::new(queue_seconds.clone())).expect("registered once");
        registry.register(Box::new(queue_depth.clone())).expect("registered once");
        registry.register(Box::new(queue_capacity.clone())).expect("registered once");
        registry.register(Box::new(nodes_online.clone())).expect("registered once");
        let transcribed_seconds =
            Counter::new("tts_audio_transcribed_seconds_total", "Seconds of audio transcribed")
                .expect("valid metric");
        registry.register(Box::new(audio_seconds.clone())).expect("registered once");
        registry.register(Box::new(transcribed_seconds.clone())).expect("registered once");
        Self {
            registry,
            requests,
            request_seconds,
            queue_seconds,
            queue_depth,
            queue_capacity,
            nodes_online,
            audio_seconds,
            transcribed_seconds,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encodes");
        String::from_utf8(out).expect("text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request, labelled by its route pattern (never a raw path).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().clone();
    let start = Instant::now();
    let response = next.run(request).await;
    let error_type = response.extensions().get::<ErrorKindExt>().map_or("", |k| k.0.as_str());
    let m = &state.metrics;
    m.requests
        .with_label_values(&[
            route.as_str(),
            method_label(&method),
            response.status().as_str(),
            error_type,
        ])
        .inc();
    m.request_seconds.with_label_values(&[route.as_str()]).observe(start.elapsed().as_secs_f64());
    response
}

/// The method as a label: one of a fixed set, so a client cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`.
pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
