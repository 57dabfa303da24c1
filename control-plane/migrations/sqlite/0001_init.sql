-- Accounts, API keys, the voice library, the request queue and history, attempts, and the pool of
-- nodes. Portable types only (TEXT ids, BIGINT epoch milliseconds), so one query set serves both
-- backends; postgres/0001_init.sql is the same schema.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Keys are stored as SHA-256 hex digests; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    key_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);

-- `original` is the upload as sent; `pcm` the normalised mono 44.1 kHz f32 little-endian samples.
CREATE TABLE voices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    speaker_name TEXT NOT NULL,
    transcript TEXT,
    is_default BOOLEAN NOT NULL DEFAULT FALSE,
    format TEXT NOT NULL,
    original BLOB NOT NULL,
    pcm BLOB NOT NULL,
    duration_seconds DOUBLE PRECISION NOT NULL,
    source_sample_rate BIGINT NOT NULL,
    source_channels BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX voices_by_account ON voices (account_id, id);
-- At most one default sample per account.
CREATE UNIQUE INDEX voices_one_default ON voices (account_id) WHERE is_default;

-- One row per accepted request: queue entry while `queued`, history for ever after.
CREATE TABLE requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    feature TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    input TEXT NOT NULL,
    params TEXT NOT NULL,
    seed BIGINT NOT NULL,
    visibility TEXT NOT NULL,
    collection TEXT,
    task TEXT NOT NULL,
    prompt_audio BLOB,
    attempts BIGINT NOT NULL DEFAULT 0,
    node_id TEXT,
    replica_id TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    queue_seconds DOUBLE PRECISION,
    inference_seconds DOUBLE PRECISION,
    audio_seconds DOUBLE PRECISION,
    audio BLOB
);
CREATE INDEX requests_queue ON requests (status, model, seq);
CREATE INDEX requests_history ON requests (account_id, seq);

-- Each try of a request on a node; outcome running, succeeded, failed, node_lost or cancelled.
CREATE TABLE attempts (
    request_id TEXT NOT NULL REFERENCES requests(id) ON DELETE CASCADE,
    attempt BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    replica_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    outcome TEXT NOT NULL,
    error_type TEXT,
    error_message TEXT,
    PRIMARY KEY (request_id, attempt)
);

-- Nodes connected to any replica; rows whose last_seen is old belong to gone nodes or replicas.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    replica_id TEXT NOT NULL,
    models TEXT NOT NULL,
    capacity BIGINT NOT NULL,
    active BIGINT NOT NULL,
    healthy BOOLEAN NOT NULL,
    draining BOOLEAN NOT NULL,
    gpu TEXT,
    last_seen BIGINT NOT NULL
);
