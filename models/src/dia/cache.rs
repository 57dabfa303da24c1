//! Preallocated attention caches for a fixed number of rows (two per request: uncond, cond).
//!
//! Self-attention K/V: `[R, K, T_max, E]` per layer, written at each row's own positions.
//! Cross-attention K/V: `[R, H, S_max, E]` per layer, computed once when a request is admitted,
//! with a `[R, S_max]` mask of the real text positions. Nothing is concatenated per step.

use tch::{Device, Kind, Tensor};

use super::config::DecoderConfig;

/// Keys and values of one attention block.
#[derive(Debug)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

impl KvCache {
    fn zeros(shape: [i64; 4], kind: Kind, device: Device) -> Self {
        Self { k: Tensor::zeros(shape, (kind, device)), v: Tensor::zeros(shape, (kind, device)) }
    }

    /// Copies `n` rows starting at `src` over the rows starting at `dst`.
    fn move_rows(&mut self, src: i64, dst: i64, n: i64) {
        for t in [&mut self.k, &mut self.v] {
            let from = t.narrow(0, src, n).copy();
            t.narrow(0, dst, n).copy_(&from);
        }
    }
}

/// Every cache the decoder needs, for `rows` rows.
#[derive(Debug)]
pub struct DecoderCache {
    pub self_kv: Vec<KvCache>,
    pub cross_kv: Vec<KvCache>,
    /// True where the key is a real (non-padding) position of the conditional text.
    pub cross_mask_rxs: Tensor,
}

impl DecoderCache {
    pub fn new(
        cfg: &DecoderConfig,
        rows: i64,
        max_positions: i64,
        max_text: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let layers = cfg.num_hidden_layers as usize;
        let self_shape = [rows, cfg.num_key_value_heads, max_positions, cfg.head_dim];
        let cross_shape = [rows, cfg.cross_num_attention_heads, max_text, cfg.cross_head_dim];
        Self {
            self_kv: (0..layers).map(|_| KvCache::zeros(self_shape, kind, device)).collect(),
            cross_kv: (0..layers).map(|_| KvCache::zeros(cross_shape, kind, device)).collect(),
            cross_mask_rxs: Tensor::zeros([rows, max_text], (Kind::Bool, device)),
        }
    }

    /// Moves `n` rows from `src` to `dst` in every cache, to keep the active rows contiguous.
    pub fn move_rows(&mut self, src: i64, dst: i64, n: i64) {
        for kv in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()) {
            kv.move_rows(src, dst, n);
        }
        let from = self.cross_mask_rxs.narrow(0, src, n).copy();
        self.cross_mask_rxs.narrow(0, dst, n).copy_(&from);
    }
}
