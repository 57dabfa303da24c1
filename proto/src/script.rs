//! The dialogue-script format: `[S1]`/`[S2]` speaker tags.
//!
//! Rules (the public spec's): a script without tags is one `[S1]` monologue; it must open with
//! `[S1]`; `[S3]` and above are not supported. Text may continue over several lines, and several
//! turns may share a line. Errors name the 1-based line of the offending tag.

use std::fmt;

/// A speaker Dia can voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The first speaker, `[S1]`.
    S1,
    /// The second speaker, `[S2]`.
    S2,
}

impl fmt::Display for Speaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::S1 => "[S1]",
            Self::S2 => "[S2]",
        })
    }
}

/// One speaker turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who speaks.
    pub speaker: Speaker,
    /// What they say, trimmed; line breaks inside a turn become spaces.
    pub text: String,
}

/// A valid script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The turns in order; never empty, and the first is S1.
    pub turns: Vec<Turn>,
}

/// Why a script is invalid; `Display` is the message the API returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// Nothing but white space.
    #[error("the script is empty")]
    Empty,
    /// Text before the first tag in a script that uses tags.
    #[error("line {line}: text before the first speaker tag; a tagged script must open with [S1]")]
    TextBeforeFirstTag {
        /// 1-based line.
        line: usize,
    },
    /// Opens with `[S2]`.
    #[error("line {line}: the script opens with [S2]; the first speaker must be [S1]")]
    OpensWithS2 {
        /// 1-based line.
        line: usize,
    },
    /// `[S0]`, `[S3]` or above.
    #[error("line {line}: speaker tag [S{number}] is not supported; use [S1] or [S2]")]
    UnsupportedSpeaker {
        /// 1-based line.
        line: usize,
        /// The number in the tag.
        number: String,
    },
    /// A tag followed by no text.
    #[error("line {line}: {speaker} has no text")]
    EmptyTurn {
        /// 1-based line.
        line: usize,
        /// Whose turn.
        speaker: Speaker,
    },
}

impl Script {
    /// Parses and validates a script.
    pub fn parse(input: &str) -> Result<Self, ScriptError> {
        if input.trim().is_empty() {
            return Err(ScriptError::Empty);
        }
        let tags = find_tags(input);
        let Some(first) = tags.first() else {
            return Ok(Self { turns: vec![Turn { speaker: Speaker::S1, text: squash(input) }] });
        };
        if !input[..first.start].trim().is_empty() {
            let line = line_of(input, input.len() - input.trim_start().len());
            return Err(ScriptError::TextBeforeFirstTag { line });
        }
        let mut turns = Vec::with_capacity(tags.len());
        for (i, tag) in tags.iter().enumerate() {
            let line = line_of(input, tag.start);
            let speaker = match tag.number {
                "1" => Speaker::S1,
                "2" if i == 0 => return Err(ScriptError::OpensWithS2 { line }),
                "2" => Speaker::S2,
                other => {
                    return Err(ScriptError::UnsupportedSpeaker { line, number: other.to_owned() })
                }
            };
            let end = tags.get(i + 1).map_or(input.len(), |next| next.start);
            let text = squash(&input[tag.end..end]);
            if text.is_empty() {
                return Err(ScriptError::EmptyTurn { line, speaker });
            }
            turns.push(Turn { speaker, text });
        }
        Ok(Self { turns })
    }

    /// The normalised text for the model: each turn as `[Sx] text`, joined by spaces.
    pub fn to_model_text(&self) -> String {
        let turns: Vec<String> =
            self.turns.iter().map(|t| format!("{} {}", t.speaker, t.text)).collect();
        turns.join(" ")
    }
}

/// Length of `text` in Dia's text tokens: its UTF-8 bytes, each `[S1]`/`[S2]` counting one.
/// The encoder reads a fixed window of them; the rest would be cut off silently.
pub fn model_token_count(text: &str) -> usize {
    text.len() - 3 * (text.matches("[S1]").count() + text.matches("[S2]").count())
}

struct Tag<'a> {
    start: usize,
    end: usize,
    number: &'a str,
}

/// Every `[S<digits>]` in the input, in order.
fn find_tags(input: &str) -> Vec<Tag<'_>> {
    let mut tags = Vec::new();
    let mut from = 0;
    while let Some(pos) = input[from..].find("[S") {
        let start = from + pos;
        let digits_start = start + 2;
        let digits_len = input[digits_start..].bytes().take_while(u8::is_ascii_digit).count();
        let close = digits_start + digits_len;
        if digits_len > 0 && input[close..].starts_with(']') {
            tags.push(Tag { start, end: close + 1, number: &input[digits_start..close] });
            from = close + 1;
        } else {
            from = digits_start;
        }
    }
    tags
}

fn line_of(input: &str, byte: usize) -> usize {
    input[..byte].matches('\n').count() + 1
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(speaker: Speaker, text: &str) -> Turn {
        Turn { speaker, text: text.to_owned() }
    }

    #[test]
    fn a_script_without_tags_is_an_s1_monologue() {
        let script = Script::parse("Hello there.\nHow are you?").unwrap();
        assert_eq!(script.turns, vec![turn(Speaker::S1, "Hello there. How are you?")]);
        assert_eq!(script.to_model_text(), "[S1] Hello there. How are you?");
    }

    #[test]
    fn the_spec_example_has_two_turns() {
        let script =
            Script::parse("[S1] Hello! Welcome to the show.\n[S2] Thanks for having me.").unwrap();
        assert_eq!(
            script.turns,
            vec![
                turn(Speaker::S1, "Hello! Welcome to the show."),
                turn(Speaker::S2, "Thanks for having me.")
            ]
        );
    }

    #[test]
    fn several_turns_may_share_a_line_and_a_turn_may_span_lines() {
        let script = Script::parse("[S1] A. [S2] B\ncontinued.\n[S1] C.").unwrap();
        assert_eq!(script.to_model_text(), "[S1] A. [S2] B continued. [S1] C.");
    }

    #[test]
    fn opening_with_s2_is_rejected_at_its_line() {
        assert_eq!(Script::parse("\n[S2] Hi."), Err(ScriptError::OpensWithS2 { line: 2 }));
    }

    #[test]
    fn s3_is_rejected_with_the_line_it_is_on() {
        let err = Script::parse("[S1] A.\n[S2] B.\n[S3] C.").unwrap_err();
        assert_eq!(err, ScriptError::UnsupportedSpeaker { line: 3, number: "3".into() });
        assert_eq!(err.to_string(), "line 3: speaker tag [S3] is not supported; use [S1] or [S2]");
    }

    #[test]
    fn s0_and_s10_are_unsupported_too() {
        assert!(matches!(
            Script::parse("[S1] a [S0] b"),
            Err(ScriptError::UnsupportedSpeaker { .. })
        ));
        assert!(matches!(
            Script::parse("[S1] a\n[S10] b"),
            Err(ScriptError::UnsupportedSpeaker { line: 2, .. })
        ));
    }

    #[test]
    fn text_before_the_first_tag_is_rejected() {
        assert_eq!(Script::parse("Hi\n[S1] A."), Err(ScriptError::TextBeforeFirstTag { line: 1 }));
    }

    #[test]
    fn a_tag_without_text_is_an_empty_turn() {
        assert_eq!(
            Script::parse("[S1] A.\n[S2]\n[S1] B."),
            Err(ScriptError::EmptyTurn { line: 2, speaker: Speaker::S2 })
        );
    }

    #[test]
    fn model_tokens_are_bytes_with_one_per_speaker_tag() {
        assert_eq!(model_token_count("[S1] Hi [S2] é"), 1 + 4 + 1 + 1 + 2);
        assert_eq!(model_token_count("[S3]"), 4);
    }

    #[test]
    fn white_space_only_is_empty() {
        assert_eq!(Script::parse(" \n\t"), Err(ScriptError::Empty));
    }

    #[test]
    fn brackets_that_are_not_tags_stay_text() {
        let script = Script::parse("[S1] see [Sx] and [S] here").unwrap();
        assert_eq!(script.turns, vec![turn(Speaker::S1, "see [Sx] and [S] here")]);
    }
}
