//! The control plane: public HTTP API, voice library, history, node routing.
//!
//! [`app`] builds the whole router (used by `main` and the tests); [`run`] serves it.

pub mod audio;
pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod nodes;
pub mod queue;
pub mod state;
pub mod validation;

pub use config::Config;
pub use state::AppState;

use axum::Router;
use tokio::net::TcpListener;

/// The whole HTTP service: public API, node endpoint, health, metrics, OpenAPI.
pub fn app(state: AppState) -> Router {
    http::router(state)
}

/// Starts the store and the dispatcher, then serves until SIGINT/SIGTERM, after which the nodes
/// are told to drain.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "control plane listening");
    let state = AppState::start(config).await?;
    let registry = state.registry.clone();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            for tx in registry.drain_all() {
                let _ = tx.send(nodes::ws::text(&proto::ControlToNode::Drain));
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
