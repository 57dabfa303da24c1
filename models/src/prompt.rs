//! Model inputs from a request: the script as byte tokens, and the delayed token rows that
//! teacher-force BOS and the audio prompt (docs/dia-reference.md §3 and §6.2).

use tch::{Kind, Tensor};

use crate::delay::apply_delay;

/// Text id 0 is padding; a literal NUL byte therefore reads as padding, as in the reference.
pub const TEXT_PAD: i64 = 0;

/// UTF-8 bytes with `[S1]`/`[S2]` as the single tokens 1 and 2, truncated to `max_len`.
pub fn text_tokens(text: &str, max_len: usize) -> Vec<i64> {
    let bytes = text.as_bytes();
    let mut ids = Vec::with_capacity(bytes.len().min(max_len));
    let mut i = 0;
    while i < bytes.len() && ids.len() < max_len {
        match &bytes[i..] {
            [b'[', b'S', b'1', b']', ..] => (ids.push(1), i += 4),
            [b'[', b'S', b'2', b']', ..] => (ids.push(2), i += 4),
            [b, ..] => (ids.push(i64::from(*b)), i += 1),
            [] => unreachable!("loop bound"),
        };
    }
    ids
}

/// Token rows a request starts from: BOS, then the prompt frames, delayed, in `rows` rows;
/// −1 marks a slot the decoder must sample. `codes_lxc` is the prompt `[L, C]` (L may be 0).
///
/// The reference builds `L_max + max_delay` rows for a batch whose longest prompt is `L_max`
/// (docs/dia-reference.md §6.2): one row short for channel 8 of the longest prompt, whose last
/// teacher-forced value is then sampled. Passing `rows = L + max_delay` reproduces that.
pub fn prefill_rows(codes_lxc: &Tensor, rows: i64, delays: &[i64], bos: i64) -> Tensor {
    let (l, c) = codes_lxc.size2().expect("prompt codes are [L, C]");
    let frames = Tensor::full([1, rows, c], -1, (Kind::Int64, codes_lxc.device()));
    let _ = frames.narrow(1, 0, 1).fill_(bos);
    if l > 0 {
        frames.narrow(1, 1, l).copy_(&codes_lxc.unsqueeze(0));
    }
    apply_delay(&frames, delays, bos).squeeze_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaker_tags_become_single_tokens() {
        assert_eq!(text_tokens("[S1] a[S2]", 1024), vec![1, 32, 97, 2]);
    }

    #[test]
    fn text_is_truncated_after_tag_replacement() {
        assert_eq!(text_tokens("[S1][S2]abc", 3), vec![1, 2, 97]);
        assert_eq!(text_tokens("é", 1024), vec![0xc3, 0xa9]);
    }

    #[test]
    fn prefill_rows_hold_bos_then_delayed_prompt_and_free_slots() {
        let codes = Tensor::from_slice(&[5i64, 6, 7, 8]).view([2, 2]);
        let rows = prefill_rows(&codes, 4, &[0, 1], 9);
        let expected = Tensor::from_slice(&[9i64, 9, 5, 9, 7, 6, -1, 8]).view([4, 2]);
        assert_eq!(rows, expected);
    }
}
