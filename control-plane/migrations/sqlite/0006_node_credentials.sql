-- Credentials of nodes run by other operators: each bound to one node id, shown once, stored as
-- the SHA-256 digest of the whole token, revocable (NODE_JOIN_TOKENS stays for local use).
CREATE TABLE node_credentials (
    id TEXT PRIMARY KEY,
    node_id TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
