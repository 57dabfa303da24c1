//! What every handler shares.

use crate::config::Config;
use crate::db::Db;
use crate::http::auth::KeyCache;
use crate::metrics::Metrics;
use crate::nodes::registry::Registry;
use crate::queue::Queue;
use std::sync::Arc;

/// Handler state: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<Config>,
    /// The store.
    pub db: Db,
    /// Nodes connected to this replica.
    pub registry: Arc<Registry>,
    /// The request queue.
    pub queue: Arc<Queue>,
    /// Prometheus collectors.
    pub metrics: Arc<Metrics>,
    /// This process's name in the store.
    pub replica_id: Arc<str>,
    /// API keys verified in the last seconds.
    pub keys: Arc<KeyCache>,
}

impl AppState {
    /// Connects the store (running migrations), bootstraps the local key, and starts the
    /// dispatcher and the notification listener.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database_url).await?;
        if let Some(key) = &config.bootstrap_api_key {
            db.bootstrap_key(key).await?;
        }
        let replica_id: Arc<str> =
            config.replica_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()).into();
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new());
        metrics.queue_capacity.set(config.max_queued);
        let registry = Arc::new(Registry::default());
        let queue = Arc::new(Queue::new(
            db.clone(),
            registry.clone(),
            replica_id.to_string(),
            config.clone(),
            metrics.clone(),
        ));
        tokio::spawn(queue.clone().run_dispatcher());
        tokio::spawn(queue.clone().run_listener());
        let keys = Arc::new(KeyCache::new(std::time::Duration::from_secs(30)));
        Ok(Self { config, db, registry, queue, metrics, replica_id, keys })
    }
}
