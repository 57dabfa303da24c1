//! Accounts and their API keys (stored as SHA-256 digests).

use super::{now_ms, on_pool, Db};

/// How much of a key is kept in clear, for people to tell their keys apart ("dia_" and 4 more).
pub const KEY_PREFIX_CHARS: usize = 8;

/// The digest a key is stored and looked up by.
pub fn key_hash(key: &str) -> String {
    proto::sha256_hex(key.as_bytes())
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
        let sql = "INSERT INTO api_keys (key_hash, account_id, created_at, prefix)
                   SELECT $1, id, $3, $4 FROM accounts WHERE id = $2";
        let prefix: String = key.chars().take(KEY_PREFIX_CHARS).collect();
        let done = on_pool!(self, p => sqlx::query(sql)
            .bind(key_hash(key)).bind(account_id).bind(now_ms()).bind(prefix).execute(p).await?.rows_affected());
        Ok(done == 1)
    }

    /// The account a key belongs to; records the key as used now (callers cache the answer, so
    /// "last used" is as fresh as that cache).
    pub async fn account_for_key(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        let sql = "UPDATE api_keys SET last_used_at = $2 WHERE key_hash = $1 RETURNING account_id";
        on_pool!(self, p => sqlx::query_scalar(sql).bind(key_hash(key)).bind(now_ms()).fetch_optional(p).await)
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
