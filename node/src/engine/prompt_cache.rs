//! DAC codes of recent voice prompts by content hash: a library sample used again (the default
//! voice, say) is not encoded again.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use tch::Tensor;

/// A bounded map from prompt audio to its codes, evicting the least recently used.
pub struct PromptCache {
    capacity: usize,
    codes: HashMap<u64, Tensor>,
    /// Keys, least recently used first.
    order: VecDeque<u64>,
}

impl PromptCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, codes: HashMap::new(), order: VecDeque::new() }
    }

    /// The codes of `pcm`, encoding it with `encode` only when it is not cached.
    pub fn get_or_encode<E>(
        &mut self,
        pcm: &[f32],
        encode: impl FnOnce(&[f32]) -> Result<Tensor, E>,
    ) -> Result<Tensor, E> {
        let key = content_hash(pcm);
        if let Some(codes) = self.codes.get(&key) {
            self.order.retain(|k| *k != key);
            self.order.push_back(key);
            return Ok(codes.shallow_clone());
        }
        let codes = encode(pcm)?;
        if self.codes.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.codes.remove(&oldest);
            }
        }
        self.codes.insert(key, codes.shallow_clone());
        self.order.push_back(key);
        Ok(codes)
    }
}

fn content_hash(pcm: &[f32]) -> u64 {
    let mut hasher = DefaultHasher::new();
    pcm.len().hash(&mut hasher);
    for sample in pcm {
        sample.to_bits().hash(&mut hasher);
    }
    hasher.finish()
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
    fn the_same_audio_is_encoded_once_and_the_least_recent_is_evicted() {
        let mut cache = PromptCache::new(2);
        let (a, b, c) = (vec![0.1f32; 4], vec![0.2f32; 4], vec![0.3f32; 5]);
        let mut calls = 0;
        for pcm in [&a, &b, &a, &c, &a, &b] {
            let _codes = cache.get_or_encode(pcm, encode_counting(&mut calls)).unwrap();
        }
        // a, b encoded; a hit; c evicts b (a was used later); a hit; b encoded again.
        assert_eq!(calls, 4);
        let codes = cache.get_or_encode(&c, encode_counting(&mut calls)).unwrap();
        assert_eq!(codes.int64_value(&[0]), 5);
        assert_eq!(calls, 5, "c was evicted by b");
    }
}
