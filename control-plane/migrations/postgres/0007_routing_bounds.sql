-- What a request needs of a node beyond its model and feature: its text window (in the model's
-- text tokens) and frames. A node is given only requests within what it advertised, so one node
-- claiming a small window never lowers the limit for the others.
ALTER TABLE requests ADD COLUMN text_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE requests ADD COLUMN frames BIGINT NOT NULL DEFAULT 0;
