-- A node's hello names its GPU or says why it names none: `gpu` holds the GPU as JSON (proto's
-- `GpuInfo`, no longer free text) and `gpu_unavailable` the reason. `capacity` is what the node
-- takes now: the least of its hello's, its last heartbeat's and the configured maximum.
ALTER TABLE nodes ADD COLUMN gpu_unavailable TEXT;
