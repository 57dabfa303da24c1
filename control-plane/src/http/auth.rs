//! `Authorization: Bearer` extractors: API keys of accounts, the admin token, and what a node
//! joins with.

use crate::db::accounts::key_hash;
use crate::db::nodes::CREDENTIAL_PREFIX;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use proto::ErrorKind;

/// The account whose API key authenticated the request.
pub struct Account(pub String);

/// Proof that the request carried the admin token.
pub struct Admin;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|k| !k.is_empty())
}

impl FromRequestParts<AppState> for Account {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(key) = bearer(parts) else {
            // The dashboard's own calls carry its session cookie instead of a key.
            return match crate::dashboard::session::api_account(state, parts).await {
                Ok(Some(account)) => Ok(Self(account)),
                Ok(None) => Err(ApiError::new(
                    ErrorKind::MissingApiKey,
                    "send your API key as `Authorization: Bearer <key>`",
                )),
                Err(_) => Err(ApiError::new(
                    ErrorKind::InvalidApiKey,
                    "a dashboard session's change must come from its own page, with its \
                     `x-csrf-token` header",
                )),
            };
        };
        if let Some(account) = state.keys.get(key) {
            return Ok(Self(account));
        }
        match state.db.account_for_key(key).await? {
            Some(account) => {
                state.keys.insert(key, &account);
                Ok(Self(account))
            }
            None => Err(ApiError::new(ErrorKind::InvalidApiKey, "the API key is not valid")),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match (&state.config.admin_token, bearer(parts)) {
            (Some(expected), Some(given)) if same_secret(given, expected) => Ok(Self),
            (None, _) => Err(ApiError::new(
                ErrorKind::InvalidAdminToken,
                "admin endpoints are disabled (no ADMIN_TOKEN)",
            )),
            _ => Err(ApiError::new(
                ErrorKind::InvalidAdminToken,
                "the admin token is missing or wrong",
            )),
        }
    }
}

/// What a node's bearer token lets it join as.
pub enum NodeAuth {
    /// A token of `NODE_JOIN_TOKENS` (local use): any node id.
    JoinToken,
    /// A node credential: only its node id, and only while it is not revoked.
    Credential {
        /// Credential id.
        id: String,
        /// The node id it is bound to.
        node_id: String,
    },
}

impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refused = || {
            ApiError::new(
                ErrorKind::InvalidApiKey,
                "a node joins with `Authorization: Bearer <node credential or join token>`; \
                 this one is unknown or revoked",
            )
        };
        let token = bearer(parts).ok_or_else(refused)?;
        if let Some((id, _)) = token.strip_prefix(CREDENTIAL_PREFIX).and_then(|t| t.split_once('_'))
        {
            let (node_id, hash) = state.db.node_credential(id).await?.ok_or_else(refused)?;
            return if same_secret(&key_hash(token), &hash) {
                Ok(Self::Credential { id: id.to_owned(), node_id })
            } else {
                Err(refused())
            };
        }
        // Every token is compared, so the time taken says nothing about which one was close.
        let known =
            state.config.join_tokens.iter().fold(false, |found, t| found | same_secret(token, t));
        if known {
            Ok(Self::JoinToken)
        } else {
            Err(refused())
        }
    }
}

/// Recently verified API keys (by hash), so that a busy client does not cost a store read per
/// request. Entries expire: a key removed from the store stops working within the TTL.
pub struct KeyCache {
    ttl: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl KeyCache {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: std::time::Duration) -> Self {
        Self { ttl, entries: Default::default() }
    }

    fn get(&self, key: &str) -> Option<String> {
        let entries = self.entries.lock().expect("key cache lock");
        let (account, at) = entries.get(&crate::db::accounts::key_hash(key))?;
        (at.elapsed() < self.ttl).then(|| account.clone())
    }

    /// Drops a revoked key (by its hash) so it stops working at once on this replica.
    pub fn forget(&self, key_hash: &str) {
        self.entries.lock().expect("key cache lock").remove(key_hash);
    }

    fn insert(&self, key: &str, account: &str) {
        let mut entries = self.entries.lock().expect("key cache lock");
        // Bounded: a flood of distinct keys only ever refills it.
        if entries.len() >= 10_000 {
            entries.clear();
        }
        entries.insert(
            crate::db::accounts::key_hash(key),
            (account.to_owned(), std::time::Instant::now()),
        );
    }
}

/// Whether a secret given by a client equals the expected one, in time that does not depend on
/// where they differ (only on their lengths).
pub fn same_secret(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}
