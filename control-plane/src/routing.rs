//! What a generation needs of a node beyond its model and feature, and whether a node gives it.
//!
//! Per model, a node advertises its text window (`max_input_chars`, in the model's text tokens),
//! the frames it generates (`max_new_tokens`) and the decoder frames one job may hold
//! (`max_frames`, the voice prompt's and the new ones, which its memory decides). Nodes differ, so
//! a request is held to the node that takes it, never to the smallest: it is refused up front only
//! when no online node covers all it needs, and the queue's claim (`Db::claim`) hands it only to a
//! node that does.

use proto::ModelInfo;

/// What a generation needs of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The encoder text (script and cloning transcripts), in the model's text tokens.
    pub text_tokens: u64,
    /// Samples of the voice prompt (0 without one).
    pub prompt_samples: u64,
    /// Frames it may generate: its `max_new_tokens`.
    pub new_frames: u64,
}

impl Needs {
    /// Decoder frames of the voice prompt.
    pub fn prompt_frames(&self) -> u64 {
        proto::speech::prompt_frames(self.prompt_samples)
    }

    /// Decoder frames the job takes on a node: the prompt's and the new ones.
    pub fn frames(&self) -> u64 {
        self.prompt_frames() + self.new_frames
    }

    /// Whether a node advertising `model` can take the request.
    pub fn fits(&self, model: &ModelInfo) -> bool {
        self.text_tokens <= u64::from(model.max_input_chars)
            && self.new_frames <= u64::from(model.max_new_tokens)
            && self.frames() <= u64::from(model.max_frames)
    }

    /// Ok when one of `nodes` (each online node's advertisement of `model`) can take the request;
    /// otherwise the first bound it passes, against the most any of them offers.
    pub fn check(&self, model: &str, nodes: &[ModelInfo]) -> Result<(), TooLarge> {
        if nodes.iter().any(|m| self.fits(m)) {
            return Ok(());
        }
        let most = |bound: fn(&ModelInfo) -> u32| nodes.iter().map(bound).max().unwrap_or(0);
        let (model, needs) = (model.to_owned(), *self);
        let max = most(|m| m.max_input_chars);
        if self.text_tokens > u64::from(max) {
            return Err(TooLarge::Text { model, tokens: self.text_tokens, max });
        }
        let max = most(|m| m.max_new_tokens);
        if self.new_frames > u64::from(max) {
            return Err(TooLarge::NewFrames { model, requested: self.new_frames, max });
        }
        let max = most(|m| m.max_frames);
        if self.frames() > u64::from(max) {
            return Err(TooLarge::Frames { model, needs, max });
        }
        Err(TooLarge::NoSingleNode { model, needs })
    }
}

/// Why no online node of a model can take a generation (413 `request_too_large`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TooLarge {
    /// The encoder text is past every node's window.
    #[error(
        "the script with its voice-sample transcripts is {tokens} text tokens (UTF-8 bytes, a \
         speaker tag counting one); `{model}` reads at most {max}"
    )]
    Text {
        /// The model.
        model: String,
        /// Text tokens of the request.
        tokens: u64,
        /// The widest window of its online nodes.
        max: u32,
    },
    /// `max_new_tokens` is past what every node generates.
    #[error(
        "`max_new_tokens` is {requested}; the online nodes of `{model}` generate at most {max}"
    )]
    NewFrames {
        /// The model.
        model: String,
        /// The request's `max_new_tokens`.
        requested: u64,
        /// The most any of its online nodes generates.
        max: u32,
    },
    /// Prompt and new frames together are past what every node holds.
    #[error("{}; the online nodes of `{model}` hold at most {max}", frames_needed(.needs))]
    Frames {
        /// The model.
        model: String,
        /// What the request needs.
        needs: Needs,
        /// The most frames any of its online nodes holds.
        max: u32,
    },
    /// Each bound fits some node, but no node fits them all.
    #[error(
        "{} with {} text tokens; no single online node of `{model}` takes both",
        frames_needed(.needs), .needs.text_tokens
    )]
    NoSingleNode {
        /// The model.
        model: String,
        /// What the request needs.
        needs: Needs,
    },
}

/// The decoder frames of a request and where they come from.
fn frames_needed(needs: &Needs) -> String {
    let (new, total) = (needs.new_frames, needs.frames());
    if needs.prompt_samples == 0 {
        return format!("`max_new_tokens` {new} needs {total} frames");
    }
    let seconds = needs.prompt_samples as f64 / f64::from(proto::SAMPLE_RATE);
    format!(
        "the voice prompt ({} frames, {seconds:.1} s) and `max_new_tokens` {new} need {total} frames",
        needs.prompt_frames()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(max_input_chars: u32, max_new_tokens: u32, max_frames: u32) -> ModelInfo {
        ModelInfo {
            id: "dia".into(),
            features: vec![proto::FEATURE_VOICE_CLONING.into()],
            max_input_chars,
            max_new_tokens,
            max_frames,
            languages: vec![],
        }
    }

    /// A 3 s voice prompt (259 frames) and 1000 new frames.
    const NEEDS: Needs = Needs { text_tokens: 100, prompt_samples: 132_300, new_frames: 1000 };

    #[test]
    fn a_request_fits_a_node_only_within_all_three_bounds() {
        assert!(NEEDS.fits(&node(100, 1000, 1259)));
        assert!(!NEEDS.fits(&node(99, 1000, 1259)));
        assert!(!NEEDS.fits(&node(100, 999, 1259)));
        assert!(!NEEDS.fits(&node(100, 1000, 1258)));
    }

    #[test]
    fn one_node_that_fits_is_enough() {
        let nodes = [node(1024, 1000, 1000), node(1024, 4096, 7600)];
        assert_eq!(NEEDS.check("dia", &nodes), Ok(()));
    }

    #[test]
    fn the_frames_refusal_names_the_prompt_and_the_largest_node() {
        let nodes = [node(1024, 1000, 1000), node(1024, 1000, 1200)];
        let error = NEEDS.check("dia", &nodes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the voice prompt (259 frames, 3.0 s) and `max_new_tokens` 1000 need 1259 frames; \
             the online nodes of `dia` hold at most 1200"
        );
        let plain = Needs { prompt_samples: 0, ..NEEDS };
        assert_eq!(
            plain.check("dia", &[node(1024, 1000, 900)]).unwrap_err().to_string(),
            "`max_new_tokens` 1000 needs 1000 frames; the online nodes of `dia` hold at most 900"
        );
    }

    #[test]
    fn the_text_window_and_new_frames_are_checked_before_the_frames() {
        let text = NEEDS.check("dia", &[node(99, 0, 0)]).unwrap_err();
        assert!(matches!(text, TooLarge::Text { tokens: 100, max: 99, .. }), "{text:?}");
        let new = NEEDS.check("dia", &[node(100, 999, 0)]).unwrap_err();
        assert!(matches!(new, TooLarge::NewFrames { requested: 1000, max: 999, .. }), "{new:?}");
    }

    #[test]
    fn bounds_met_only_by_different_nodes_are_refused() {
        let nodes = [node(99, 4096, 7600), node(1024, 4096, 1000)];
        let error = NEEDS.check("dia", &nodes).unwrap_err();
        assert_eq!(error, TooLarge::NoSingleNode { model: "dia".into(), needs: NEEDS });
    }
}
