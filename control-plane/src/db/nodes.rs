//! The pool as every replica sees it: one row per connected node, refreshed on heartbeats.

use super::accounts::key_hash;
use super::{now_ms, on_pool, Db};
use proto::{GpuInfo, GpuReadings, Health, ModelInfo};

/// How a node credential starts: `dnc_<id>_<secret>`.
pub const CREDENTIAL_PREFIX: &str = "dnc_";

/// A node credential as the admin API lists it (never its secret).
#[derive(Debug, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct NodeCredentialRow {
    /// Credential id (the part of the token before the secret).
    pub id: String,
    /// The only node id it may join as.
    pub node_id: String,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms, once revoked.
    pub revoked_at: Option<i64>,
}

/// A node as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    /// Node id.
    pub id: String,
    /// JSON list of [`ModelInfo`].
    pub models: String,
    /// Jobs it takes at once now.
    pub capacity: i64,
    /// Jobs it runs now.
    pub active: i64,
}

impl NodeRow {
    /// Its models.
    pub fn models(&self) -> Vec<ModelInfo> {
        models_of(&self.models)
    }
}

/// The models of a stored JSON list (a row that does not parse offers none).
fn models_of(json: &str) -> Vec<ModelInfo> {
    serde_json::from_str(json).unwrap_or_default()
}

/// What is written about a node.
pub struct NodeState<'a> {
    /// Node id.
    pub id: &'a str,
    /// Its models.
    pub models: &'a [ModelInfo],
    /// Jobs it takes at once now.
    pub capacity: u32,
    /// Jobs it runs now.
    pub active: u32,
    /// Whether it takes work, and why not.
    pub health: &'a Health,
    /// Finishing, not taking new work.
    pub draining: bool,
    /// Its GPU, stored as JSON.
    pub gpu: Option<&'a GpuInfo>,
    /// Why it reports no GPU.
    pub gpu_unavailable: Option<&'a str>,
    /// Its GPU's last readings, stored as JSON.
    pub gpu_readings: Option<&'a GpuReadings>,
}

/// What an older replica wrote for a node: it stored no reason, and free text as the GPU.
const NOT_REPORTED: &str = "not reported (the node joined a replica of an older version)";

/// A node of the pool as operators see it (the admin API and the Pool page).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PoolNode {
    /// Node id.
    pub id: String,
    /// The control-plane replica holding its session.
    pub replica_id: String,
    /// What it serves.
    pub models: Vec<ModelInfo>,
    /// Jobs it takes at once now: the least of its hello's capacity, its last heartbeat's and
    /// `MAX_NODE_CAPACITY`.
    pub capacity: i64,
    /// Jobs it runs now.
    pub active: i64,
    /// Takes work.
    pub healthy: bool,
    /// Why it takes none, as it says (draining, failing steps, a GPU fault).
    pub unhealthy_reason: Option<String>,
    /// Finishing its jobs, taking no new ones.
    pub draining: bool,
    /// Its GPU; null when it reads none.
    pub gpu: Option<GpuInfo>,
    /// Why `gpu` is null.
    pub gpu_unavailable: Option<String>,
    /// Its GPU's readings at its last stored heartbeat; null when it reads none.
    pub gpu_readings: Option<GpuReadings>,
    /// Epoch ms of its last heartbeat.
    pub last_seen: i64,
}

#[derive(sqlx::FromRow)]
struct PoolRow {
    id: String,
    replica_id: String,
    models: String,
    capacity: i64,
    active: i64,
    healthy: bool,
    unhealthy_reason: Option<String>,
    draining: bool,
    gpu: Option<String>,
    gpu_unavailable: Option<String>,
    gpu_readings: Option<String>,
    last_seen: i64,
}

impl From<PoolRow> for PoolNode {
    fn from(r: PoolRow) -> Self {
        let gpu: Option<GpuInfo> = r.gpu.and_then(|g| serde_json::from_str(&g).ok());
        let gpu_unavailable = match &gpu {
            Some(_) => None,
            None => Some(r.gpu_unavailable.unwrap_or_else(|| NOT_REPORTED.into())),
        };
        Self {
            id: r.id,
            replica_id: r.replica_id,
            models: models_of(&r.models),
            capacity: r.capacity,
            active: r.active,
            healthy: r.healthy,
            unhealthy_reason: r.unhealthy_reason,
            draining: r.draining,
            gpu,
            gpu_unavailable,
            gpu_readings: r.gpu_readings.and_then(|g| serde_json::from_str(&g).ok()),
            last_seen: r.last_seen,
        }
    }
}

impl Db {
    /// Records (or refreshes) a node held by `replica`, unless another replica holds it (its
    /// row seen within `fresh_ms`): false then. One statement, so two replicas that take the
    /// same id at once cannot both hold it.
    pub async fn upsert_node(
        &self,
        replica: &str,
        n: &NodeState<'_>,
        fresh_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let sql = "INSERT INTO nodes (id, replica_id, models, capacity, active, healthy, draining, gpu,
                       gpu_unavailable, last_seen, unhealthy_reason, gpu_readings)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $13)
                   ON CONFLICT (id) DO UPDATE SET replica_id = $2, models = $3, capacity = $4, active = $5,
                       healthy = $6, draining = $7, gpu = $8, gpu_unavailable = $9, last_seen = $10,
                       unhealthy_reason = $12, gpu_readings = $13
                   WHERE nodes.replica_id = $2 OR nodes.last_seen <= $11";
        let models = serde_json::to_string(n.models).expect("models serialise");
        let gpu = n.gpu.map(|g| serde_json::to_string(g).expect("a GPU serialises"));
        let readings =
            n.gpu_readings.map(|g| serde_json::to_string(g).expect("readings serialise"));
        let reason = match n.health {
            Health::Healthy => None,
            Health::Unhealthy { reason } => Some(reason.as_str()),
        };
        let now = now_ms();
        on_pool!(self, p => sqlx::query(sql)
            .bind(n.id).bind(replica).bind(models).bind(i64::from(n.capacity)).bind(i64::from(n.active))
            .bind(reason.is_none()).bind(n.draining).bind(&gpu).bind(n.gpu_unavailable).bind(now)
            .bind(now - fresh_ms).bind(reason).bind(&readings)
            .execute(p).await.map(|done| done.rows_affected() == 1))
    }

    /// Nodes heard from within `fresh_ms`, on any replica, by id.
    pub async fn pool_nodes(&self, fresh_ms: i64) -> Result<Vec<PoolNode>, sqlx::Error> {
        let sql = "SELECT id, replica_id, models, capacity, active, healthy, unhealthy_reason,
                          draining, gpu, gpu_unavailable, gpu_readings, last_seen
                   FROM nodes WHERE last_seen > $1 ORDER BY id";
        let rows: Vec<PoolRow> =
            on_pool!(self, p => sqlx::query_as(sql).bind(now_ms() - fresh_ms).fetch_all(p).await)?;
        Ok(rows.into_iter().map(PoolNode::from).collect())
    }

    /// Forgets a node, unless another replica has taken it over since.
    pub async fn remove_node(&self, replica: &str, id: &str) -> Result<(), sqlx::Error> {
        let sql = "DELETE FROM nodes WHERE id = $1 AND replica_id = $2";
        on_pool!(self, p => sqlx::query(sql).bind(id).bind(replica).execute(p).await.map(drop))
    }

    /// Remembers the models and features a node offers, for as long as the store lives.
    pub async fn record_offered(&self, models: &[ModelInfo]) -> Result<(), sqlx::Error> {
        let sql = "INSERT INTO offered_models (model, feature, first_seen) VALUES ($1, $2, $3)
                   ON CONFLICT (model, feature) DO NOTHING";
        for m in models {
            for feature in &m.features {
                on_pool!(self, p => sqlx::query(sql)
                    .bind(&m.id).bind(feature).bind(now_ms())
                    .execute(p).await.map(drop))?;
            }
        }
        Ok(())
    }

    /// Whether any node has ever offered `model` with `feature`.
    pub async fn was_offered(&self, model: &str, feature: &str) -> Result<bool, sqlx::Error> {
        let sql = "SELECT model FROM offered_models WHERE model = $1 AND feature = $2";
        let row: Option<(String,)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(model).bind(feature).fetch_optional(p).await)?;
        Ok(row.is_some())
    }

    /// Nodes seen within `fresh_ms` that are healthy and not draining, least loaded first; those
    /// taking no jobs now (capacity 0) last.
    pub async fn available_nodes(&self, fresh_ms: i64) -> Result<Vec<NodeRow>, sqlx::Error> {
        let sql = "SELECT id, models, capacity, active FROM nodes
                   WHERE last_seen > $1 AND healthy AND NOT draining
                   ORDER BY CAST(active AS DOUBLE PRECISION) / NULLIF(capacity, 0) NULLS LAST, id";
        on_pool!(self, p => sqlx::query_as(sql).bind(now_ms() - fresh_ms).fetch_all(p).await)
    }

    /// Whether a node id is held by a live session (seen within `fresh_ms`) on another replica.
    pub async fn held_elsewhere(
        &self,
        id: &str,
        replica: &str,
        fresh_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let sql = "SELECT id FROM nodes WHERE id = $1 AND replica_id <> $2 AND last_seen > $3";
        let row: Option<(String,)> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(id).bind(replica).bind(now_ms() - fresh_ms).fetch_optional(p).await)?;
        Ok(row.is_some())
    }

    /// Creates a credential for `node_id`; returns it with its token (shown once).
    pub async fn create_node_credential(
        &self,
        node_id: &str,
    ) -> Result<(NodeCredentialRow, String), sqlx::Error> {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let id = hex(&rand::random::<[u8; 6]>());
        let token = format!("{CREDENTIAL_PREFIX}{id}_{}", hex(&rand::random::<[u8; 24]>()));
        let sql = "INSERT INTO node_credentials (id, node_id, secret_hash, created_at)
                   VALUES ($1, $2, $3, $4)";
        let created_at = now_ms();
        on_pool!(self, p => sqlx::query(sql).bind(&id).bind(node_id).bind(key_hash(&token))
            .bind(created_at).execute(p).await.map(drop))?;
        let row =
            NodeCredentialRow { id, node_id: node_id.to_owned(), created_at, revoked_at: None };
        Ok((row, token))
    }

    /// The node id and token digest of a credential that is not revoked.
    pub async fn node_credential(&self, id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
        let sql = "SELECT node_id, secret_hash FROM node_credentials WHERE id = $1 AND revoked_at IS NULL";
        on_pool!(self, p => sqlx::query_as(sql).bind(id).fetch_optional(p).await)
    }

    /// Every node credential, newest first.
    pub async fn node_credentials(&self) -> Result<Vec<NodeCredentialRow>, sqlx::Error> {
        let sql = "SELECT id, node_id, created_at, revoked_at FROM node_credentials
                   ORDER BY created_at DESC, id";
        on_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await)
    }

    /// Revokes a credential; false when there is no such credential or it was revoked already.
    pub async fn revoke_node_credential(&self, id: &str) -> Result<bool, sqlx::Error> {
        let sql =
            "UPDATE node_credentials SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL";
        let n = on_pool!(self, p => sqlx::query(sql).bind(id).bind(now_ms()).execute(p).await?.rows_affected());
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(gpu: Option<&str>, gpu_unavailable: Option<&str>) -> PoolRow {
        PoolRow {
            id: "n".into(),
            replica_id: "r".into(),
            models: "[]".into(),
            capacity: 1,
            active: 0,
            healthy: true,
            unhealthy_reason: None,
            draining: false,
            gpu: gpu.map(Into::into),
            gpu_unavailable: gpu_unavailable.map(Into::into),
            gpu_readings: None,
            last_seen: 0,
        }
    }

    #[test]
    fn a_stored_gpu_reads_back_and_a_row_without_one_says_why() {
        let json = r#"{"name":"NVIDIA L4","uuid":"GPU-1","memory_total_bytes":24152899584,
                       "driver_version":"550.54.15","cuda_version":"12.4"}"#;
        let node = PoolNode::from(row(Some(json), None));
        assert_eq!((node.gpu.unwrap().name.as_str(), node.gpu_unavailable), ("NVIDIA L4", None));
        let cpu = PoolNode::from(row(None, Some("no CUDA device: the node runs on the CPU")));
        assert_eq!(
            cpu.gpu_unavailable.as_deref(),
            Some("no CUDA device: the node runs on the CPU")
        );
        // An older replica's row: free text, no reason.
        let old = PoolNode::from(row(Some("Cuda(0)"), None));
        assert_eq!((old.gpu, old.gpu_unavailable.as_deref()), (None, Some(NOT_REPORTED)));
    }
}
