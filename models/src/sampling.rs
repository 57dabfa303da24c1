//! Batched CFG sampling on the device, in the reference's exact order (docs/dia-reference.md §7):
//! guided top-k over `cond + s·(cond − uncond)` selects candidates from the *conditional*
//! logits, special ids are masked, then temperature, the EOS rule, top-k again and top-p.
//!
//! Every row carries its own parameters, and draws come from per-request uniforms, so a
//! request samples the same tokens whatever else shares its batch.

use tch::{Device, Kind, Tensor};

/// Sampling parameters of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (argmax, no EOS rule, no top-p).
    pub temperature: f64,
    /// Nucleus threshold; 1.0 disables it.
    pub top_p: f64,
    /// Candidates kept from the guided logits (`cfg_filter_top_k`).
    pub top_k: i64,
    /// Classifier-free guidance strength.
    pub cfg_scale: f64,
}

impl Default for Sampling {
    /// The public API's defaults, which [`proto::speech`] owns.
    fn default() -> Self {
        use proto::speech::{
            DEFAULT_CFG_FILTER_TOP_K, DEFAULT_CFG_SCALE, DEFAULT_TEMPERATURE, DEFAULT_TOP_P,
        };
        Self {
            temperature: DEFAULT_TEMPERATURE,
            top_p: DEFAULT_TOP_P,
            top_k: i64::from(DEFAULT_CFG_FILTER_TOP_K),
            cfg_scale: DEFAULT_CFG_SCALE,
        }
    }
}

/// Per-row parameters of a batch as device tensors, rebuilt only when the batch changes.
#[derive(Debug)]
pub struct SamplingBatch {
    cfg_scale_bx1x1: Tensor,
    temperature_bx1x1: Tensor,
    greedy_bx1: Tensor,
    top_p_bx1x1: Tensor,
    /// Rows whose top-p is below 1 (cumulative sums can pass 1.0 by rounding).
    nucleus_bx1x1: Tensor,
    /// `[B, 1, max_top_k]`: true at the candidate ranks past the row's own top-k.
    past_top_k_bx1xk: Tensor,
    max_top_k: i64,
}

impl SamplingBatch {
    pub fn new(rows: &[Sampling], device: Device) -> Self {
        let col = |f: &dyn Fn(&Sampling) -> f64| {
            Tensor::from_slice(&rows.iter().map(f).collect::<Vec<_>>())
                .to_kind(Kind::Float)
                .view([-1, 1, 1])
                .to_device(device)
        };
        let top_k: Vec<i64> = rows.iter().map(|r| r.top_k).collect();
        let max_top_k = top_k.iter().copied().max().unwrap_or(1);
        let top_k_bx1x1 = Tensor::from_slice(&top_k).view([-1, 1, 1]).to_device(device);
        let top_p_bx1x1 = col(&|r| r.top_p);
        Self {
            cfg_scale_bx1x1: col(&|r| r.cfg_scale),
            // Greedy rows divide by 1 so that the sampled branch (discarded for them) stays finite.
            temperature_bx1x1: col(&|r| if r.temperature > 0.0 { r.temperature } else { 1.0 }),
            greedy_bx1: col(&|r| f64::from(u8::from(r.temperature <= 0.0)))
                .view([-1, 1])
                .to_kind(Kind::Bool),
            nucleus_bx1x1: top_p_bx1x1.lt(1.0),
            top_p_bx1x1,
            past_top_k_bx1xk: Tensor::arange(max_top_k, (Kind::Int64, device))
                .view([1, 1, -1])
                .ge_tensor(&top_k_bx1x1),
            max_top_k,
        }
    }
}

/// The special-id masks: additive `[C, V]` with −inf where a channel may never emit an id.
pub fn special_id_mask(channels: i64, vocab: i64, eos: i64, device: Device) -> Tensor {
    let ids = Tensor::arange(vocab, (Kind::Int64, device)).view([1, vocab]);
    let channel = Tensor::arange(channels, (Kind::Int64, device)).view([channels, 1]);
    // Every channel: nothing above EOS. Channels 1..: not EOS either.
    let banned = ids.gt(eos).logical_or(&ids.ge(eos).logical_and(&channel.gt(0)));
    Tensor::zeros([channels, vocab], (Kind::Float, device)).masked_fill(&banned, f64::NEG_INFINITY)
}

/// −∞ in `logits_bxcxv` outside the row's top-k of `keep_from_bxcxv` (exactly k entries, ties
/// broken as `topk` breaks them), in place. Returns the indices of the `max_top_k` largest of
/// `keep_from_bxcxv`, in descending order.
fn top_k_filter_(logits_bxcxv: &mut Tensor, keep_from_bxcxv: &Tensor, p: &SamplingBatch) -> Tensor {
    let (_, idx_bxcxk) = keep_from_bxcxv.topk(p.max_top_k, -1, true, true);
    let drop = Tensor::ones(logits_bxcxv.size(), (Kind::Bool, logits_bxcxv.device())).scatter_(
        -1,
        &idx_bxcxk,
        &p.past_top_k_bx1xk.expand_as(&idx_bxcxk),
    );
    let _ = logits_bxcxv.masked_fill_(&drop, f64::NEG_INFINITY);
    idx_bxcxk
}

/// The filtered logits each draw is made from, and the greedy choice.
#[derive(Debug)]
pub struct Filtered {
    /// Final logits of the sampled path (after temperature, EOS rule, top-k, top-p).
    pub logits_bxcxv: Tensor,
    /// Argmax of the candidates before temperature: the pick of greedy rows.
    pub greedy_bxc: Tensor,
    /// False where the guided logits are NaN or infinite (a raw logit was, or guidance
    /// overflowed), or no candidate was left: no valid draw.
    pub valid_bxc: Tensor,
}

/// Applies CFG and every filter of §7 up to, not including, the draw.
pub fn filter(
    cond_bxcxv: &Tensor,
    uncond_bxcxv: &Tensor,
    special_mask_cxv: &Tensor,
    eos: i64,
    p: &SamplingBatch,
) -> Filtered {
    let guided = cond_bxcxv + (cond_bxcxv - uncond_bxcxv) * &p.cfg_scale_bx1x1;
    let mut logits = cond_bxcxv + special_mask_cxv;
    let candidates_bxcxk = top_k_filter_(&mut logits, &guided, p);
    let greedy_bxc = logits.argmax(-1, false);

    let mut logits = logits / &p.temperature_bx1x1;
    // EOS rule: EOS survives only as the top candidate, and then alone.
    let vocab = logits.size()[2];
    let ids_v = Tensor::arange(vocab, (Kind::Int64, logits.device()));
    let eos_top_bxcx1 = logits.argmax(-1, true).eq(eos);
    let ban = ids_v.lt(eos).where_self(&eos_top_bxcx1, &ids_v.eq(eos));
    let _ = logits.masked_fill_(&ban, f64::NEG_INFINITY);
    // Top-k again: at most k logits are finite now, the candidates', so it keeps them all and
    // only ranks them; sorting the candidates' own logits ranks them alike, where a top-k over
    // the vocabulary cost 10× more.
    let (ranked_bxcxk, order_bxcxk) = logits.gather(-1, &candidates_bxcxk, false).sort(-1, true);
    let candidates_bxcxk = candidates_bxcxk.gather(-1, &order_bxcxk, false);

    // Top-p: drop the tail past the threshold, always keeping the entry that crosses it: the
    // entry at rank i goes when the ranks before it already sum past top-p. Only the
    // candidates have any probability, so their softmax is the vocabulary's.
    let ranked = ranked_bxcxk.softmax(-1, Kind::Float);
    let k = p.max_top_k;
    let mut before_past =
        ranked.cumsum(-1, Kind::Float).narrow(-1, 0, k - 1).gt_tensor(&p.top_p_bx1x1);
    let remove = Tensor::zeros(logits.size(), (Kind::Bool, logits.device())).scatter_(
        -1,
        &candidates_bxcxk.narrow(-1, 1, k - 1),
        &before_past.logical_and_(&p.nucleus_bx1x1),
    );
    let _ = logits.masked_fill_(&remove, f64::NEG_INFINITY);
    let valid_bxc =
        guided.isfinite().all_dim(-1, false).logical_and_(&logits.isfinite().any_dim(-1, false));
    Filtered { logits_bxcxv: logits, greedy_bxc, valid_bxc }
}

/// Draws one id per row by inverting the CDF at the row's uniform `u ∈ (0, 1]`; greedy rows
/// take their argmax. Returns `[B, C]` int64, [`INVALID`] where there is no valid draw (it
/// travels with the ids, so checking costs no extra transfer).
pub fn draw(filtered: &Filtered, uniforms_bxc: &Tensor, p: &SamplingBatch) -> Tensor {
    let cdf = filtered.logits_bxcxv.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
    let vocab = cdf.size()[2];
    let total_bxcx1 = cdf.narrow(-1, vocab - 1, 1);
    let target = uniforms_bxc.unsqueeze(-1) * &total_bxcx1;
    let sampled =
        cdf.lt_tensor(&target).sum_dim_intlist(-1, false, Kind::Int64).clamp_max(vocab - 1);
    // A sampled row's distribution can still overflow (a tiny temperature): NaN compares false
    // everywhere, which would read as id 0.
    let mut drawable_bxc = total_bxcx1.squeeze_dim(-1).isfinite().logical_or_(&p.greedy_bx1);
    filtered
        .greedy_bxc
        .where_self(&p.greedy_bx1, &sampled)
        .masked_fill_(&drawable_bxc.logical_and_(&filtered.valid_bxc).logical_not_(), INVALID)
}

/// The id [`draw`] returns for a row without a valid draw.
pub const INVALID: i64 = -1;
