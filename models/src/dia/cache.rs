//! Preallocated attention caches for a fixed number of rows (two per request slot: uncond, cond),
//! and the RoPE rotations of their positions.
//!
//! Self-attention K/V: `[R, K, T_max, E]` per layer, written at each row's own positions.
//! Cross-attention K/V: `[R, H, S_max, E]` per layer, computed once when a request is admitted,
//! with a `[R, S_max]` mask of the real text positions. Nothing is concatenated per step, and
//! nothing moves when a request leaves: its rows wait for the next request of its slot.

use tch::{Device, Kind, Tensor};

use super::config::DecoderConfig;
use super::layers::DecodeKv;

/// Keys and values of one attention block, stacked in one tensor so that a decode step writes
/// both with one operator.
#[derive(Debug)]
pub struct KvCache {
    /// `[2, R, heads, T, E]`: keys, then values.
    pub kv: Tensor,
    /// Views of `kv`.
    pub k: Tensor,
    pub v: Tensor,
}

impl KvCache {
    fn zeros(shape: [i64; 4], kind: Kind, device: Device) -> Self {
        let [rows, heads, len, dim] = shape;
        let kv = Tensor::zeros([2, rows, heads, len, dim], (kind, device));
        Self { k: kv.get(0), v: kv.get(1), kv }
    }
}

/// Every cache the decoder needs, for `rows` rows.
#[derive(Debug)]
pub struct DecoderCache {
    pub self_kv: Vec<KvCache>,
    pub cross_kv: Vec<KvCache>,
    /// True where the key is a real (non-padding) position of the conditional text.
    pub cross_mask_rxs: Tensor,
    /// RoPE rotations of positions `0..T_max`, `[T_max, E/2]` complex f32.
    pub rotations_txe2: Tensor,
    /// Self-attention query heads, for the decode steps' query staging.
    query_heads: i64,
}

impl DecoderCache {
    /// Bytes the caches of `rows` rows take: what [`DecoderCache::new`] allocates, less the
    /// rotations, which are shared by every row.
    pub fn bytes(
        cfg: &DecoderConfig,
        rows: i64,
        max_positions: i64,
        max_text: i64,
        kind: Kind,
    ) -> i64 {
        let element = kind.elt_size_in_bytes() as i64;
        let layers = cfg.num_hidden_layers;
        let self_kv = 2 * cfg.num_key_value_heads * max_positions * cfg.head_dim;
        let cross_kv = 2 * cfg.cross_num_attention_heads * max_text * cfg.cross_head_dim;
        rows * (layers * (self_kv + cross_kv) * element + max_text)
    }

    pub fn new(
        cfg: &DecoderConfig,
        rows: i64,
        max_positions: i64,
        max_text: i64,
        rotations_txe2: Tensor,
        kind: Kind,
    ) -> Self {
        let device = rotations_txe2.device();
        let layers = cfg.num_hidden_layers as usize;
        let self_shape = [rows, cfg.num_key_value_heads, max_positions, cfg.head_dim];
        let cross_shape = [rows, cfg.cross_num_attention_heads, max_text, cfg.cross_head_dim];
        Self {
            self_kv: (0..layers).map(|_| KvCache::zeros(self_shape, kind, device)).collect(),
            cross_kv: (0..layers).map(|_| KvCache::zeros(cross_shape, kind, device)).collect(),
            cross_mask_rxs: Tensor::zeros([rows, max_text], (Kind::Bool, device)),
            rotations_txe2,
            query_heads: cfg.num_attention_heads,
        }
    }

    /// The views of rows `0..n` that decode steps read, for self-attention keys `0..window`
    /// and text positions `0..text`. Text padding is masked only where some row's text is
    /// shorter than `text`.
    pub fn windows(&self, n: i64, window: i64, text: i64, padded: bool) -> Windows {
        let rows = |t: &Tensor, len: i64| t.narrow(0, 0, n).narrow(2, 0, len);
        let (_, _, kv_heads, _, head_dim) = self.self_kv[0].kv.size5().expect("[2, R, K, T, E]");
        let (kind, device) = (self.self_kv[0].kv.kind(), self.self_kv[0].kv.device());
        let views = |caches: &[KvCache], len: i64| -> Vec<DecodeKv> {
            caches.iter().map(|kv| DecodeKv::new(&rows(&kv.k, len), &rows(&kv.v, len))).collect()
        };
        let cross_mask = padded.then(|| {
            let real = self.cross_mask_rxs.narrow(0, 0, n).narrow(1, 0, text);
            let heads = self.cross_kv[0].k.size()[1];
            DecodeKv::mask(&additive_mask(&real.logical_not(), kind), heads, 1)
        });
        Windows {
            key: (n, window, text),
            self_kv: views(&self.self_kv, window),
            cross_kv: views(&self.cross_kv, text),
            cross_mask,
            self_query: DecodeKv::staging(
                [n, kv_heads, self.query_heads / kv_heads, head_dim],
                kind,
                device,
            ),
            keys_s: Tensor::arange(window, (Kind::Int64, self.rotations_txe2.device())),
        }
    }
}

/// −∞ where `blocked` is true, 0 elsewhere, in `kind`: SDPA adds a float mask as it is, where a
/// boolean one would be converted in every call.
pub fn additive_mask(blocked: &Tensor, kind: Kind) -> Tensor {
    Tensor::zeros(blocked.size(), (kind, blocked.device())).masked_fill(blocked, f64::NEG_INFINITY)
}

/// Views of the caches for the decode steps of one batch shape, built when the rows or the
/// windows change rather than in every step and layer.
#[derive(Debug)]
pub struct Windows {
    /// `(rows, self-attention window, text window)`.
    pub key: (i64, i64, i64),
    /// Per layer: self-attention keys and values of positions `0..window`.
    pub self_kv: Vec<DecodeKv>,
    /// Per layer: cross-attention keys and values of text positions `0..text`.
    pub cross_kv: Vec<DecodeKv>,
    /// Additive mask of the text padding ([`DecodeKv::mask`]), when some row needs one.
    pub cross_mask: Option<Tensor>,
    /// Where self-attention queries are staged ([`DecodeKv::staging`]), shared by the layers.
    pub self_query: Option<Tensor>,
    /// Key positions `0..window`.
    pub keys_s: Tensor,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dia::DiaConfig;

    fn bytes(t: &Tensor) -> i64 {
        t.numel() as i64 * t.kind().elt_size_in_bytes() as i64
    }

    #[test]
    fn the_size_formula_is_what_is_allocated() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/dia-tiny-random.json");
        let cfg = DiaConfig::from_file(std::path::Path::new(path)).unwrap().decoder_config;
        for (rows, positions, text, kind) in [(2, 100, 32, Kind::Float), (6, 37, 5, Kind::BFloat16)]
        {
            let rotations =
                Tensor::zeros([positions, cfg.head_dim / 2], (Kind::ComplexFloat, Device::Cpu));
            let cache = DecoderCache::new(&cfg, rows, positions, text, rotations, kind);
            let allocated =
                cache.self_kv.iter().chain(&cache.cross_kv).map(|c| bytes(&c.kv)).sum::<i64>()
                    + bytes(&cache.cross_mask_rxs);
            assert_eq!(DecoderCache::bytes(&cfg, rows, positions, text, kind), allocated);
        }
    }
}
