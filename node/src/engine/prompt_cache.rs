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

    /// The codes of the prompt `key`, if held; marks them used.
    pub fn get(&mut self, key: &str) -> Option<Tensor> {
        let codes = self.codes.get(key)?.shallow_clone();
        self.touch(key);
        Some(codes)
    }

    /// Keeps `codes` for `key`, evicting the least recently used beyond the capacity.
    pub fn insert(&mut self, key: String, codes: Tensor) {
        if self.codes.insert(key.clone(), codes).is_some() {
            return self.touch(&key);
        }
        self.order.push_back(key);
        if self.codes.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.codes.remove(&oldest);
            }
        }
    }

    fn touch(&mut self, key: &str) {
        self.order.retain(|k| k != key);
        self.order.push_back(key.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: i64) -> Tensor {
        Tensor::from_slice(&[n])
    }

    #[test]
    fn the_least_recently_used_prompt_is_evicted() {
        let mut cache = PromptCache::new(2);
        cache.insert("a".into(), codes(1));
        cache.insert("b".into(), codes(2));
        assert_eq!(cache.get("a").unwrap().int64_value(&[0]), 1);
        // b is now the least recently used: c evicts it.
        cache.insert("c".into(), codes(3));
        assert!(cache.get("b").is_none());
        assert_eq!(cache.get("a").unwrap().int64_value(&[0]), 1);
        // Inserting a held key replaces its codes and evicts nothing.
        cache.insert("c".into(), codes(4));
        assert_eq!(cache.get("c").unwrap().int64_value(&[0]), 4);
        assert_eq!(cache.get("a").unwrap().int64_value(&[0]), 1);
        // a was used last: d evicts c.
        cache.insert("d".into(), codes(5));
        assert!(cache.get("c").is_none());
        assert!(cache.get("a").is_some() && cache.get("d").is_some());
    }
}
