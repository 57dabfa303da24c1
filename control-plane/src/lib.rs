//! The control plane: public HTTP API, voice library, history, node routing.
//!
//! [`app`] builds the whole router (used by `main` and the tests); [`run`] serves it.

pub mod audio;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod nodes;
pub mod queue;
pub mod routing;
pub mod state;
pub mod validation;
pub mod voice_prompt;

pub use config::Config;
pub use state::AppState;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;

/// The whole HTTP service: public API, node endpoint, health, OpenAPI.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Serves `GET /metrics` on its own listener, so that the scrape port need not be public.
pub async fn serve_metrics(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let router =
        Router::new().route("/metrics", axum::routing::get(metrics::serve)).with_state(state);
    axum::serve(listener, router).await?;
    Ok(())
}

/// Starts the store and the dispatcher, then serves until SIGINT/SIGTERM, after which the nodes
/// are told to drain.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    let metrics = TcpListener::bind(config.metrics_addr).await?;
    tracing::info!(
        addr = %listener.local_addr()?, metrics = %metrics.local_addr()?, "control plane listening"
    );
    let state = AppState::start(config).await?;
    tokio::spawn(serve_metrics(metrics, state.clone()));
    serve(listener, state).await
}

/// Serves the app on a bound listener until SIGINT/SIGTERM, then tells the nodes to drain.
pub async fn serve(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let registry = state.registry.clone();
    // Small frames (a submit, then its prompt) must not wait for the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            for tx in registry.drain_all() {
                let _ =
                    tx.try_send(nodes::registry::Outbound::Control(proto::ControlToNode::Drain));
            }
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
