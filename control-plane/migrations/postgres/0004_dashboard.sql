-- The dashboard: browser sessions, and what the API-keys page shows of a key.

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is stored, so a leaked
-- table cannot be replayed. Signing in with a key ties the session to it: revoking the key ends it.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL REFERENCES api_keys(key_hash) ON DELETE CASCADE,
    account_id TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    -- Sent back with every state change the session makes (forms and the page's API calls).
    csrf_token TEXT NOT NULL,
    -- Unlocked the Pool page with the admin token.
    admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The first characters of a key (what a person recognises it by), and when it last authenticated.
ALTER TABLE api_keys ADD COLUMN prefix TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
