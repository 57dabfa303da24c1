//! DAC codes of recent voice prompts by the SHA-256 the control plane announces: a library sample
//! used again (the default voice, say) is neither sent nor encoded again.

use std::collections::{HashMap, VecDeque};

use tch::Tensor;

/// A bounded map from prompt hash to codes, evicting the least recently used.
pub struct PromptCache {
    capacity: usize,
    codes: HashMap<String, Tensor>,
    /// Keys, least recently used first.
    order: VecDeque<String>,
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, codes: HashMap::new(), order: VecDeque::new() }
    }

    /// The codes of the prompt `key`: cached, or encoded from `pcm` with `encode` and kept;
    /// `None` when neither (the node has to ask for the audio).
    pub fn codes<E>(
        &mut self,
        key: &str,
        pcm: Option<&[f32]>,
        encode: impl FnOnce(&[f32]) -> Result<Tensor, E>,
    ) -> Result<Option<Tensor>, E> {
        if let Some(codes) = self.codes.get(key) {
            let codes = codes.shallow_clone();
            self.order.retain(|k| k != key);
            self.order.push_back(key.to_owned());
            return Ok(Some(codes));
        }
        let Some(pcm) = pcm else { return Ok(None) };
        let codes = encode(pcm)?;
        if self.codes.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.codes.remove(&oldest);
            }
        }
        self.codes.insert(key.to_owned(), codes.shallow_clone());
        self.order.push_back(key.to_owned());
        Ok(Some(codes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_counting(calls: &mut u32) -> impl FnOnce(&[f32]) -> Result<Tensor, ()> + '_ {
        move |pcm| {
            *calls += 1;
            Ok(Tensor::from_slice(&[pcm.len() as i64]))
        }
    }

    #[test]
    fn the_same_prompt_is_encoded_once_and_the_least_recent_is_evicted() {
        let mut cache = PromptCache::new(2);
        let (a, b, c) = (vec![0.1f32; 4], vec![0.2f32; 4], vec![0.3f32; 5]);
        let mut calls = 0;
        for (key, pcm) in [("a", &a), ("b", &b), ("a", &a), ("c", &c), ("a", &a), ("b", &b)] {
            let codes = cache.codes(key, Some(pcm), encode_counting(&mut calls)).unwrap();
            assert_eq!(codes.unwrap().int64_value(&[0]), pcm.len() as i64);
        }
        // a, b encoded; a hit; c evicts b (a was used later); a hit; b encoded again.
        assert_eq!(calls, 4);
        // Without audio: a hit is served, a miss (c, evicted by b) is None.
        assert!(cache.codes("a", None, encode_counting(&mut calls)).unwrap().is_some());
        assert!(cache.codes("c", None, encode_counting(&mut calls)).unwrap().is_none());
        assert_eq!(calls, 4);
    }
}
