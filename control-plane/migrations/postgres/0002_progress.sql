-- Seconds of audio the node running a request reports having generated (its progress messages);
-- reset when a new attempt starts.
ALTER TABLE requests ADD COLUMN generated_seconds DOUBLE PRECISION;
