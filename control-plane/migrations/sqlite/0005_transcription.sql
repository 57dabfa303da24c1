-- Transcription jobs: their result lives on the request, like a generation's WAV.
ALTER TABLE requests ADD COLUMN transcript TEXT;
ALTER TABLE requests ADD COLUMN language TEXT;
-- The transcription asked for a sample uploaded without a transcript. The sample's transcript
-- status is read through it (pending while it runs, filled or failed after), so no path that ends
-- a request has to remember the sample.
ALTER TABLE voices ADD COLUMN transcription_id TEXT;
