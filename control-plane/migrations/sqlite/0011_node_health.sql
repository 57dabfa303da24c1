-- What a node's heartbeats say beside its load: why it takes no work (`unhealthy_reason`, null
-- while healthy) and its GPU's readings (proto's `GpuReadings` as JSON, null where it reads none).
ALTER TABLE nodes ADD COLUMN unhealthy_reason TEXT;
ALTER TABLE nodes ADD COLUMN gpu_readings TEXT;
