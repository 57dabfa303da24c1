//! Accounts and their API keys (stored as SHA-256 digests).

use super::{now_ms, on_pool, Db};
use sha2::{Digest, Sha256};

/// The digest a key is stored and looked up by.
pub fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl Db {
    /// Creates an account and returns its id.
    pub async fn create_account(&self, name: &str) -> Result<String, sqlx::Error> {
        let id = uuid::Uuid::new_v4().to_string();
        on_pool!(self, p => sqlx::query("INSERT INTO accounts (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&id).bind(name).bind(now_ms()).execute(p).await.map(drop))?;
        Ok(id)
    }

    /// Adds an API key to an account; false when the account does not exist.
    pub async fn add_api_key(&self, account_id: &str, key: &str) -> Result<bool, sqlx::Error> {
        let sql = "INSERT INTO api_keys (key_hash, account_id, created_at)
                   SELECT $1, id, $3 FROM accounts WHERE id = $2";
        let done = on_pool!(self, p => sqlx::query(sql)
            .bind(key_hash(key)).bind(account_id).bind(now_ms()).execute(p).await?.rows_affected());
        Ok(done == 1)
    }

    /// The account a key belongs to.
    pub async fn account_for_key(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        let sql = "SELECT account_id FROM api_keys WHERE key_hash = $1";
        on_pool!(self, p => sqlx::query_scalar(sql).bind(key_hash(key)).fetch_optional(p).await)
    }

    /// Creates the "local" account with `key` unless the key exists (start-up bootstrap).
    pub async fn bootstrap_key(&self, key: &str) -> Result<(), sqlx::Error> {
        if self.account_for_key(key).await?.is_none() {
            let account = self.create_account("local").await?;
            self.add_api_key(&account, key).await?;
        }
        Ok(())
    }
}
