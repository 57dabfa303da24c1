-- `frames` becomes the decoder frames a request takes on a node, its voice prompt's and the new
-- ones together (bounded by the node's `max_frames`, which its memory decides); `new_frames` is
-- the frames it may generate (bounded by the node's `max_new_tokens`). Requests queued before
-- counted only new frames in `frames`.
ALTER TABLE requests ADD COLUMN new_frames BIGINT NOT NULL DEFAULT 0;
UPDATE requests SET new_frames = frames;
