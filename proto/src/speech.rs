//! What a node needs to generate speech: the final script, sampling parameters, seed and prompt.

use crate::frames::PcmEncoding;
use serde::{Deserialize, Serialize};

/// The public API's default `cfg_scale` (the spec's). The sampling defaults live here alone: the
/// API's schema and validation, the wire's [`Sampling::default`] and the engine's all read them.
/// `f64`, as the API's JSON shows them.
pub const DEFAULT_CFG_SCALE: f64 = 3.0;
/// The public API's default `temperature`.
pub const DEFAULT_TEMPERATURE: f64 = 1.8;
/// The public API's default `top_p`.
pub const DEFAULT_TOP_P: f64 = 0.95;
/// The public API's default `cfg_filter_top_k`.
pub const DEFAULT_CFG_FILTER_TOP_K: u32 = 45;

/// Sampling parameters of one generation, shared by API validation (bounds and defaults) and the
/// engine. Each field's doc gives the public API's range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 1–5: classifier-free guidance strength (how strongly the model follows the text).
    pub cfg_scale: f32,
    /// 0.1–2.0.
    pub temperature: f32,
    /// 0.1–1.0: nucleus sampling threshold.
    pub top_p: f32,
    /// 1–100: top-k applied to the CFG-combined logits.
    pub cfg_filter_top_k: u32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            cfg_scale: DEFAULT_CFG_SCALE as f32,
            temperature: DEFAULT_TEMPERATURE as f32,
            top_p: DEFAULT_TOP_P as f32,
            cfg_filter_top_k: DEFAULT_CFG_FILTER_TOP_K,
        }
    }
}

/// A text-to-dialogue job. The text is final: when voices are cloned, their tagged transcripts
/// already stand before the script, in the order of the clips in the voice prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechTask {
    /// The script to feed the encoder, tags normalised (`[S1] … [S2] …`).
    pub text: String,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// 0.5–2.0, default 1.0: speaking rate applied to the decoded audio.
    pub speed_factor: f32,
    /// 256–4096, default 3072: the most audio frames to generate.
    pub max_new_tokens: u32,
    /// Always concrete: the API fills in a random one when the client gave none.
    pub seed: u64,
    /// The audio prompt for cloning, when the request references voice samples; its PCM is sent
    /// when the node asks for it.
    pub voice_prompt: Option<VoicePrompt>,
}

/// The voice prompt of a speech job, by content: a node that holds codes for `sha256` uses them;
/// otherwise it answers `need_voice_prompt` and gets the PCM in one binary frame (stream
/// `voice_prompt`), so a sample used again does not travel again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoicePrompt {
    /// Number of mono samples at [`crate::SAMPLE_RATE`].
    pub samples: u64,
    /// How the samples are encoded in the frame payload.
    pub encoding: PcmEncoding,
    /// SHA-256 (lower-case hex) of the frame payload.
    pub sha256: String,
}

/// Decoder frames a voice prompt of `samples` takes on a node, before the new ones: the DAC codes
/// one frame per [`crate::SAMPLES_PER_FRAME`] samples, a partial last frame included.
pub fn prompt_frames(samples: u64) -> u64 {
    samples.div_ceil(u64::from(crate::SAMPLES_PER_FRAME))
}

/// Silence between the S1 and S2 clips of a two-voice prompt, so the model hears the turn change.
pub const VOICE_GAP_SECONDS: f32 = 0.3;

/// The encoder text for a cloned generation: the transcripts, tagged with the speaker they clone,
/// placed before the script (the clips are concatenated in the same order: S1, gap, S2).
pub fn cloning_text(
    s1_transcript: Option<&str>,
    s2_transcript: Option<&str>,
    script: &str,
) -> String {
    let mut text = String::new();
    for (tag, transcript) in [("[S1]", s1_transcript), ("[S2]", s2_transcript)] {
        if let Some(t) = transcript {
            text.push_str(tag);
            text.push(' ');
            text.push_str(t.trim());
            text.push(' ');
        }
    }
    text.push_str(script);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_voice_prompt_takes_a_frame_per_started_512_samples() {
        assert_eq!([0, 1, 512, 513, 132_300].map(prompt_frames), [0, 1, 1, 2, 259]);
    }

    #[test]
    fn cloning_text_puts_tagged_transcripts_before_the_script_in_speaker_order() {
        let text = cloning_text(Some(" Hi there. "), Some("Hello."), "[S1] A. [S2] B.");
        assert_eq!(text, "[S1] Hi there. [S2] Hello. [S1] A. [S2] B.");
    }

    #[test]
    fn cloning_text_without_voices_is_the_script() {
        assert_eq!(cloning_text(None, None, "[S1] A."), "[S1] A.");
    }

    #[test]
    fn cloning_only_s2_tags_only_its_transcript() {
        assert_eq!(cloning_text(None, Some("Yo."), "[S1] A. [S2] B."), "[S2] Yo. [S1] A. [S2] B.");
    }
}
