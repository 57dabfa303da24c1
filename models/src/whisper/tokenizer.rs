//! Whisper's vocabulary from `tokenizer.json`: the special tokens the decoder is prompted and
//! steered with, and token ids back to text. Whisper uses GPT-2's byte-level BPE, so decoding is
//! concatenating the token strings and mapping each character back to the byte it stands for.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{ModelError, Result};

/// The vocabulary and the ids of the special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// Token strings by id (byte-level characters; special tokens as written, `<|en|>`).
    tokens: Vec<String>,
    pub eot: i64,
    pub sot: i64,
    pub translate: i64,
    pub transcribe: i64,
    pub sot_lm: i64,
    pub sot_prev: i64,
    pub no_speech: i64,
    pub no_timestamps: i64,
    /// Language tokens in vocabulary order (those between `sot` and `translate`) and their codes.
    languages: Vec<(i64, String)>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |message: String| ModelError::Config { path: path.to_owned(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let vocab =
            json["model"]["vocab"].as_object().ok_or_else(|| err("no model.vocab".into()))?;
        let added = json["added_tokens"].as_array().ok_or_else(|| err("no added_tokens".into()))?;
        let entries = vocab
            .iter()
            .map(|(token, id)| (token.as_str(), id.as_i64()))
            .chain(added.iter().map(|t| (t["content"].as_str().unwrap_or(""), t["id"].as_i64())));
        let mut by_id: HashMap<i64, String> = HashMap::new();
        for (token, id) in entries {
            let id = id.ok_or_else(|| err(format!("token {token:?} has no integer id")))?;
            by_id.insert(id, token.to_owned());
        }
        let len = by_id.keys().max().map_or(0, |&m| m + 1);
        let tokens: Vec<String> =
            (0..len).map(|id| by_id.remove(&id).unwrap_or_default()).collect();
        let find = |name: &str| {
            tokens
                .iter()
                .position(|t| t == name)
                .map(|i| i as i64)
                .ok_or_else(|| err(format!("no {name} token")))
        };
        let (sot, translate) = (find("<|startoftranscript|>")?, find("<|translate|>")?);
        let languages = (sot + 1..translate)
            .map(|id| {
                let token = &tokens[id as usize];
                let code = token.strip_prefix("<|").and_then(|t| t.strip_suffix("|>"));
                code.map(|c| (id, c.to_owned()))
                    .ok_or_else(|| err(format!("token {id} ({token:?}) is not a language")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            eot: find("<|endoftext|>")?,
            sot,
            translate,
            transcribe: find("<|transcribe|>")?,
            sot_lm: find("<|startoflm|>")?,
            sot_prev: find("<|startofprev|>")?,
            no_speech: find("<|nospeech|>").or_else(|_| find("<|nocaptions|>"))?,
            no_timestamps: find("<|notimestamps|>")?,
            languages,
            tokens,
        })
    }

    /// Language tokens and their codes (`en`, `de`, …), in the model's order.
    pub fn languages(&self) -> &[(i64, String)] {
        &self.languages
    }

    /// The token of a language code.
    pub fn language_token(&self, code: &str) -> Result<i64> {
        self.languages
            .iter()
            .find(|(_, c)| c == code)
            .map(|(id, _)| *id)
            .ok_or_else(|| ModelError::Input(format!("unknown language {code:?}")))
    }

    /// The text of `ids`; special tokens (from end-of-text on) are left out, as the reference's
    /// decoding does, and byte sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[i64]) -> String {
        let byte_of = unicode_to_byte();
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&id| (0..self.eot).contains(&id))
            .filter_map(|&id| self.tokens.get(id as usize))
            .flat_map(|t| t.chars())
            .filter_map(|c| byte_of.get(&c).copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// GPT-2's byte ↔ character table, reversed: printable Latin-1 bytes stand for themselves, the
/// others for the characters from U+0100 on, in byte order.
fn unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            let c = if printable(b) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).expect("below U+0200")
            };
            (c, b)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_covers_every_byte_once() {
        let table = unicode_to_byte();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
    }
}
