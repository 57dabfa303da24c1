//! `control-plane`: see `--help` for every flag and its environment variable.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = control_plane::Config::parse();
    tracing::info!(?config, "starting");
    control_plane::run(config).await
}
