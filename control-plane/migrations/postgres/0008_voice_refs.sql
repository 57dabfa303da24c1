-- A cloning request references its voice samples ({"S1": id, "S2": id}) instead of holding a copy
-- of their audio; the prompt is assembled from the library when a node asks for it. `prompt_audio`
-- keeps the clips of transcriptions, which are not library samples.
ALTER TABLE requests ADD COLUMN voice_refs TEXT;
