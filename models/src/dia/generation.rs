//! Batched generation in which requests join and leave between decode steps.
//!
//! A [`Generator`] owns the caches of up to `max_batch` requests. A request keeps one slot from
//! admission to its end, slot `i` being cache rows `2i` (unconditional) and `2i + 1`
//! (conditional); nothing moves when a request leaves, and a step runs the slots up to the
//! highest one in use (a free slot below it computes rows nobody reads until the next
//! admission fills it). Each request has its own position, token rows, EOS countdown, sampling
//! parameters and random stream, so its result does not depend on what else runs beside it.
//!
//! A step writes its inputs (tokens, positions, uniforms) into fixed device buffers and reads
//! back one `[B, C]` id tensor, its only host transfer. Masks, rotations and cache-write
//! indices are made on the device once per step; the cache views, the sampling parameters and
//! the buffers' views only when a request joins or leaves or the attention window grows, which
//! it does in buckets of [`WINDOW_BUCKET`] positions.
//!
//! The loop per request follows the reference (docs/dia-reference.md §6.3): feed row `s`, sample
//! row `s + 1`, keep teacher-forced values where the row was prefilled, and after channel 0 emits
//! EOS (or the length limit is hit) force EOS/PAD along the delay pattern for `max_delay` steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::cache::{DecoderCache, Windows};
use super::decoder::DecodeInput;
use super::DiaModel;
use crate::delay::revert_delay;
use crate::error::{ModelError, Result};
use crate::prompt::{prefill_rows, text_tokens};
use crate::sampling::{self, Sampling, SamplingBatch};

/// The self-attention window grows in steps of this many positions: the cache views change once
/// per bucket instead of every step, and the extra keys are masked.
pub const WINDOW_BUCKET: i64 = 128;

/// What a generator can hold at once; sizes its caches.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests decoded together.
    pub max_batch: i64,
    /// Decoder positions per request: BOS + prompt frames + new frames + the delay tail.
    pub max_positions: i64,
    /// Text tokens per request (at most the encoder's window).
    pub max_text: i64,
}

/// One generation job.
#[derive(Debug)]
pub struct GenerationRequest {
    /// The full script, with a voice prompt's transcript placed before it.
    pub text: String,
    /// DAC codes of the voice prompt, `[L, C]`, values in the codebook.
    pub prompt_codes: Option<Tensor>,
    pub sampling: Sampling,
    pub seed: u64,
    /// Bound on generated audio frames, prompt excluded.
    pub max_new_tokens: i64,
}

/// Identifies a request inside one generator.
pub type SeqId = u64;

/// Why a request stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Channel 0 sampled EOS.
    Eos,
    /// `max_new_tokens` frames were generated.
    Length,
}

/// A request that ended, with its audio codes.
#[derive(Debug)]
pub struct Finished {
    pub id: SeqId,
    pub reason: FinishReason,
    /// `[len, C]` codes for the codec, prompt cut, special ids replaced by 0.
    pub codes_lxc: Tensor,
    /// The delayed token rows as generated, `rows × C` flattened (for inspection).
    pub rows: Vec<i64>,
}

/// What one decode step did.
#[derive(Debug)]
pub struct StepOutput {
    /// The requests of this step, in row order.
    pub ids: Vec<SeqId>,
    /// Raw decoder logits `[2B, C, V]`, CFG rows interleaved.
    pub logits_nxcxv: Tensor,
    /// Sampled ids `B × C`, before EOS forcing and teacher forcing.
    pub sampled: Vec<i64>,
    pub finished: Vec<Finished>,
    /// Requests dropped because their logits were NaN or infinite (or left nothing to draw):
    /// they end without audio.
    pub failed: Vec<SeqId>,
}

#[derive(Debug)]
struct Sequence {
    id: SeqId,
    /// Delayed token rows, flattened `rows × C`; −1 = to be sampled.
    rows: Vec<i64>,
    prefill_steps: i64,
    /// The row fed at the next step (its position).
    step: i64,
    /// The reference's `max_tokens`: total rows including BOS and the prompt.
    max_rows: i64,
    eos_detected: bool,
    countdown: i64,
    finished_at: i64,
    reason: FinishReason,
    text_len: i64,
    sampling: Sampling,
    rng: ChaCha8Rng,
}

/// Decode state of a batch of requests; see the module docs.
#[derive(Debug)]
pub struct Generator {
    cache: DecoderCache,
    /// Slot `i` holds the request of cache rows `2i` and `2i + 1`.
    slots: Vec<Option<Sequence>>,
    inputs: StepInputs,
    /// What steps share until a request joins or leaves or the window grows; `None` when stale.
    batch: Option<BatchState>,
    special_mask_cxv: Tensor,
    limits: BatchLimits,
    next_id: SeqId,
}

/// Device buffers for every slot, which the host overwrites each step: the inputs keep their
/// addresses and no tensor is made for them on the device.
#[derive(Debug)]
struct StepInputs {
    /// `[2·B_max·C]` token ids fed, both rows of each slot.
    tokens: Tensor,
    /// `[2·B_max]` positions.
    positions: Tensor,
    /// `[B_max·C]` uniforms of the draws.
    uniforms: Tensor,
}

/// The slots' views and parameters for the steps of one batch shape.
#[derive(Debug)]
struct BatchState {
    windows: Windows,
    params: SamplingBatch,
    tokens_nxc: Tensor,
    positions_n: Tensor,
    uniforms_bxc: Tensor,
}

impl Generator {
    pub fn new(model: &DiaModel, limits: BatchLimits) -> Self {
        let cfg = &model.config;
        let max_text = limits.max_text.min(cfg.max_text_len() as i64);
        let limits = BatchLimits { max_text, ..limits };
        let dec = &cfg.decoder_config;
        let device = model.device();
        let slots = limits.max_batch;
        Self {
            cache: DecoderCache::new(
                dec,
                2 * slots,
                limits.max_positions,
                max_text,
                model.decoder.rotations(limits.max_positions),
                model.kind(),
            ),
            slots: (0..slots).map(|_| None).collect(),
            inputs: StepInputs {
                tokens: Tensor::zeros([2 * slots * dec.num_channels], (Kind::Int64, device)),
                positions: Tensor::zeros([2 * slots], (Kind::Int64, device)),
                uniforms: Tensor::ones([slots * dec.num_channels], (Kind::Float, device)),
            },
            batch: None,
            special_mask_cxv: sampling::special_id_mask(
                dec.num_channels,
                dec.vocab_size,
                cfg.eos_token_id,
                model.device(),
            ),
            limits,
            next_id: 0,
        }
    }

    /// The active requests, in slot order.
    fn seqs(&self) -> impl Iterator<Item = &Sequence> + '_ {
        self.slots.iter().flatten()
    }

    /// Requests being decoded.
    pub fn active(&self) -> usize {
        self.seqs().count()
    }

    /// Requests that can still be admitted.
    pub fn free_slots(&self) -> usize {
        self.slots.len() - self.active()
    }

    /// Audio frames generated so far by each active request.
    pub fn progress(&self) -> impl Iterator<Item = (SeqId, i64)> + '_ {
        self.seqs().map(|s| (s.id, (s.step + 1 - s.prefill_steps).max(0)))
    }

    /// Device memory one request's slot takes with `max_positions` positions: its two rows
    /// (unconditional, conditional) of self-attention keys and values up to that position
    /// bound, and of cross-attention keys and values over the text window.
    pub fn slot_bytes(model: &DiaModel, max_positions: i64) -> i64 {
        let cfg = &model.config;
        DecoderCache::bytes(
            &cfg.decoder_config,
            2,
            max_positions,
            cfg.max_text_len() as i64,
            model.kind(),
        )
    }

    /// Cache positions a request of `prompt_frames` and `max_new_tokens` needs.
    pub fn positions_needed(model: &DiaModel, prompt_frames: i64, max_new_tokens: i64) -> i64 {
        prompt_frames + 1 + max_new_tokens + model.config.max_delay()
    }

    /// Admits a group of requests: encodes their texts, fills their cross-attention caches and
    /// prefills their prompts. A group behaves like one call of the reference's batched
    /// `generate` (its prefill rows are sized by the group's longest prompt); the scheduler
    /// admits every request as its own group so that results never depend on the batch.
    pub fn admit(
        &mut self,
        model: &DiaModel,
        requests: Vec<GenerationRequest>,
    ) -> Result<Vec<SeqId>> {
        if requests.len() > self.free_slots() {
            return Err(ModelError::Input(format!(
                "{} requests do not fit the {} free slots",
                requests.len(),
                self.free_slots()
            )));
        }
        let cfg = &model.config;
        let (channels, max_delay) = (cfg.num_channels(), cfg.max_delay());
        let mut prompts = Vec::with_capacity(requests.len());
        for r in &requests {
            let codes = self.check_request(model, r)?;
            prompts.push(codes);
        }
        let texts: Vec<Vec<i64>> =
            requests.iter().map(|r| text_tokens(&r.text, self.limits.max_text as usize)).collect();
        let encoded = model.encode(&texts)?;
        let cross_kv = model.decoder.cross_key_values(&encoded.states_nxsxd);

        let longest_prompt = prompts.iter().map(|p| p.size()[0]).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(requests.len());
        for (j, ((request, codes), text)) in
            requests.into_iter().zip(prompts).zip(&texts).enumerate()
        {
            let slot = self.slots.iter().position(Option::is_none).expect("free slots checked");
            self.write_cross_cache(2 * slot as i64, 2 * j as i64, &cross_kv, &encoded.mask_nxs);
            let prompt_len = codes.size()[0];
            let rows = prefill_rows(
                &codes,
                longest_prompt + max_delay,
                &cfg.delay_pattern,
                cfg.bos_token_id,
            );
            let seq = Sequence {
                id: self.next_id,
                rows: Vec::<i64>::try_from(rows.flatten(0, -1))?,
                prefill_steps: prompt_len + 1,
                step: prompt_len,
                max_rows: Self::positions_needed(model, prompt_len, request.max_new_tokens),
                eos_detected: false,
                countdown: -1,
                finished_at: -1,
                reason: FinishReason::Length,
                text_len: text.len() as i64,
                sampling: request.sampling,
                rng: ChaCha8Rng::seed_from_u64(request.seed),
            };
            self.prefill(model, &seq, 2 * slot as i64, channels);
            ids.push(seq.id);
            self.next_id += 1;
            self.slots[slot] = Some(seq);
        }
        self.batch = None;
        Ok(ids)
    }

    /// Checks a request against the model and the limits; returns its prompt codes on the CPU.
    fn check_request(&self, model: &DiaModel, r: &GenerationRequest) -> Result<Tensor> {
        let cfg = &model.config;
        let c = cfg.num_channels();
        let codes = match &r.prompt_codes {
            None => Tensor::zeros([0, c], (Kind::Int64, tch::Device::Cpu)),
            Some(codes) => codes.to_device(tch::Device::Cpu).to_kind(Kind::Int64),
        };
        if codes.dim() != 2 || codes.size()[1] != c {
            return Err(ModelError::Input(format!(
                "prompt codes must be [L, {c}], got {:?}",
                codes.size()
            )));
        }
        if codes.numel() > 0
            && (codes.min().int64_value(&[]) < 0
                || codes.max().int64_value(&[]) >= cfg.eos_token_id)
        {
            return Err(ModelError::Input("prompt codes outside the codebook".into()));
        }
        if r.max_new_tokens < 1 {
            return Err(ModelError::Input("max_new_tokens must be at least 1".into()));
        }
        let s = &r.sampling;
        if !(s.temperature >= 0.0
            && s.temperature.is_finite()
            && s.top_p > 0.0
            && s.top_p.is_finite()
            && s.top_k >= 1
            && s.top_k <= cfg.decoder_config.vocab_size
            && s.cfg_scale.is_finite())
        {
            return Err(ModelError::Input(format!("invalid sampling parameters {s:?}")));
        }
        let needed = Self::positions_needed(model, codes.size()[0], r.max_new_tokens);
        if needed > self.limits.max_positions {
            return Err(ModelError::Input(format!(
                "prompt of {} frames plus {} new frames needs {needed} positions; the generator holds {}",
                codes.size()[0],
                r.max_new_tokens,
                self.limits.max_positions
            )));
        }
        Ok(codes)
    }

    /// Copies the row pair `from..from + 2` of a group's cross-attention keys, values and text
    /// mask into cache rows `first_row..first_row + 2`.
    fn write_cross_cache(
        &mut self,
        first_row: i64,
        from: i64,
        cross_kv: &[(Tensor, Tensor)],
        mask_nxs: &Tensor,
    ) {
        let s = mask_nxs.size()[1];
        let pair = |t: &Tensor| t.narrow(0, from, 2);
        for (kv, (k, v)) in self.cache.cross_kv.iter_mut().zip(cross_kv) {
            kv.k.narrow(0, first_row, 2).narrow(2, 0, s).copy_(&pair(k));
            kv.v.narrow(0, first_row, 2).narrow(2, 0, s).copy_(&pair(v));
        }
        let mut mask_rows = self.cache.cross_mask_rxs.narrow(0, first_row, 2);
        let _ = mask_rows.fill_(0);
        mask_rows.narrow(1, 0, s).copy_(&pair(mask_nxs));
    }

    /// Runs the rows before the first decode step (BOS and the prompt) through the decoder,
    /// filling the self-attention cache; their logits are never needed, so the head is skipped.
    fn prefill(&mut self, model: &DiaModel, seq: &Sequence, first_row: i64, channels: i64) {
        let len = seq.step;
        if len == 0 {
            return;
        }
        let tokens = Tensor::from_slice(&seq.rows[..(len * channels) as usize])
            .view([1, len, channels])
            .to_device(model.device())
            .repeat([2, 1, 1]);
        model.decoder.prefill(&tokens, &self.cache, first_row, seq.text_len);
    }

    /// Drops a request without output; false if it is not active.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        match self.slots.iter().position(|s| s.as_ref().is_some_and(|s| s.id == id)) {
            Some(slot) => {
                self.remove(slot);
                true
            }
            None => false,
        }
    }

    /// Drops every request, keeping the caches: after a failed step, the generator starts over
    /// without allocating a second set of caches beside the first. What the rows held is
    /// overwritten by the next admission before it is read.
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.batch = None;
    }

    /// Frees a slot; its cache rows stay as they are until the next request of the slot.
    fn remove(&mut self, slot: usize) -> Sequence {
        self.batch = None;
        self.slots[slot].take().expect("the slot is in use")
    }

    /// Makes the views and parameters of the first `hi` slots with these windows, unless they
    /// are there.
    fn prepare_batch(&mut self, model: &DiaModel, hi: usize, window: i64, text: i64) {
        let n = 2 * hi as i64;
        if self.batch.as_ref().is_some_and(|b| b.windows.key != (n, window, text)) {
            self.batch = None;
        }
        let (slots, cache, inputs) = (&self.slots, &self.cache, &self.inputs);
        self.batch.get_or_insert_with(|| {
            let c = model.config.num_channels();
            let in_use = &slots[..hi];
            let padded = in_use.iter().flatten().any(|s| s.text_len < text);
            let sampling: Vec<Sampling> = in_use
                .iter()
                .map(|s| s.as_ref().map_or_else(Sampling::default, |s| s.sampling))
                .collect();
            BatchState {
                windows: cache.windows(n, window, text, padded),
                params: SamplingBatch::new(&sampling, model.device()),
                tokens_nxc: inputs.tokens.narrow(0, 0, n * c).view([n, c]),
                positions_n: inputs.positions.narrow(0, 0, n),
                uniforms_bxc: inputs.uniforms.narrow(0, 0, hi as i64 * c).view([hi as i64, c]),
            }
        });
    }

    /// One decode step for every active request.
    pub fn step(&mut self, model: &DiaModel) -> Result<StepOutput> {
        let Some(hi) = self.slots.iter().rposition(Option::is_some).map(|i| i + 1) else {
            return Err(ModelError::Input("no active request to step".into()));
        };
        let cfg = &model.config;
        let c = cfg.num_channels() as usize;

        // Every slot's inputs, free ones included (token 0 at position 0, u = 1), so that the
        // buffers are overwritten whole. u ∈ (0, 1]: each request's own stream, one per channel.
        let mut tokens = vec![0i64; 2 * self.slots.len() * c];
        let mut positions = vec![0i64; 2 * self.slots.len()];
        let mut uniforms = vec![1f32; self.slots.len() * c];
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot else { continue };
            let row = &seq.rows[seq.step as usize * c..(seq.step as usize + 1) * c];
            tokens[2 * i * c..(2 * i + 2) * c].chunks_mut(c).for_each(|t| t.copy_from_slice(row));
            positions[2 * i..2 * i + 2].fill(seq.step);
            uniforms[i * c..(i + 1) * c].fill_with(|| 1.0 - seq.rng.random::<f32>());
        }
        let longest = self.seqs().map(|s| s.step + 1).max().unwrap_or(1);
        let window = ((longest + WINDOW_BUCKET - 1) / WINDOW_BUCKET * WINDOW_BUCKET)
            .min(self.limits.max_positions);
        let text = self.seqs().map(|s| s.text_len).max().unwrap_or(1);
        self.inputs.tokens.copy_(&Tensor::from_slice(&tokens));
        self.inputs.positions.copy_(&Tensor::from_slice(&positions));
        self.inputs.uniforms.copy_(&Tensor::from_slice(&uniforms));

        self.prepare_batch(model, hi, window, text);
        let batch = self.batch.as_ref().expect("prepared");
        let input = DecodeInput {
            tokens_nxc: &batch.tokens_nxc,
            positions_n: &batch.positions_n,
            windows: &batch.windows,
        };
        let states = model.decoder.decode(&input, &self.cache);
        let logits_nxcxv = model.decoder.logits(&states);
        let pairs = logits_nxcxv.view([hi as i64, 2, c as i64, -1]);
        let filtered = sampling::filter(
            &pairs.select(1, 1),
            &pairs.select(1, 0),
            &self.special_mask_cxv,
            cfg.eos_token_id,
            &batch.params,
        );
        let sampled_bxc = sampling::draw(&filtered, &batch.uniforms_bxc, &batch.params);
        let mut drawn = vec![0i64; hi * c];
        sampled_bxc.f_copy_data(&mut drawn, hi * c)?;

        let in_use: Vec<usize> = (0..hi).filter(|&i| self.slots[i].is_some()).collect();
        let logits_nxcxv = if in_use.len() == hi {
            logits_nxcxv
        } else {
            let rows: Vec<i64> =
                in_use.iter().flat_map(|&i| [2 * i as i64, 2 * i as i64 + 1]).collect();
            logits_nxcxv.index_select(0, &Tensor::from_slice(&rows).to_device(model.device()))
        };
        let mut ids = Vec::with_capacity(in_use.len());
        let mut sampled = Vec::with_capacity(in_use.len() * c);
        // (slot, whether it has valid audio) of the requests this step ended.
        let mut ended = Vec::new();
        for &i in &in_use {
            let seq = self.slots[i].as_mut().expect("slot in use");
            let mut pred = drawn[i * c..(i + 1) * c].to_vec();
            ids.push(seq.id);
            sampled.extend_from_slice(&pred);
            if pred.contains(&sampling::INVALID) {
                ended.push((i, false));
            } else if seq.advance(&mut pred, cfg) {
                ended.push((i, true));
            }
        }
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        for (i, valid) in ended {
            let seq = self.remove(i);
            if valid {
                finished.push(seq.finish(cfg)?);
            } else {
                failed.push(seq.id);
            }
        }
        Ok(StepOutput { ids, logits_nxcxv, sampled, finished, failed })
    }
}

impl Sequence {
    /// Applies the EOS countdown to the sampled row and writes it; true when the request ended.
    fn advance(&mut self, pred: &mut [i64], cfg: &super::DiaConfig) -> bool {
        let max_delay = cfg.max_delay();
        let n = self.step + 1;
        if self.countdown != 0 {
            let sampled_eos = pred[0] == cfg.eos_token_id && !self.eos_detected;
            let trigger = sampled_eos || n >= self.max_rows - max_delay;
            self.eos_detected |= trigger;
            if trigger && self.countdown < 0 {
                self.countdown = max_delay;
                self.finished_at = n;
                self.reason = if sampled_eos { FinishReason::Eos } else { FinishReason::Length };
            }
        }
        if self.countdown > 0 {
            let k = max_delay - self.countdown;
            for (p, &d) in pred.iter_mut().zip(&cfg.delay_pattern) {
                if d == k {
                    *p = cfg.eos_token_id;
                } else if d < k {
                    *p = cfg.pad_token_id;
                }
            }
            self.countdown -= 1;
        }
        // Teacher forcing: prefilled values (BOS, prompt) win over samples.
        let c = pred.len();
        let start = n as usize * c;
        if self.rows.len() < start + c {
            self.rows.resize(start + c, -1);
        }
        for (slot, &p) in self.rows[start..start + c].iter_mut().zip(pred.iter()) {
            if *slot == -1 {
                *slot = p;
            }
        }
        self.step = n;
        self.countdown == 0
    }

    /// The codes the codec gets: the window after the prompt, delay reverted, specials → 0.
    fn finish(self, cfg: &super::DiaConfig) -> Result<Finished> {
        let c = cfg.num_channels();
        let max_delay = cfg.max_delay();
        let len = (self.finished_at - self.prefill_steps).max(0);
        let start = (self.prefill_steps * c) as usize;
        let window = &self.rows[start..start + ((len + max_delay) * c) as usize];
        let window_1xtxc = Tensor::from_slice(window).view([1, len + max_delay, c]);
        let codes =
            revert_delay(&window_1xtxc, &cfg.delay_pattern).squeeze_dim(0).narrow(0, 0, len);
        let invalid = codes.lt(0).logical_or(&codes.ge(cfg.eos_token_id));
        Ok(Finished {
            id: self.id,
            reason: self.reason,
            codes_lxc: codes.masked_fill(&invalid, 0),
            rows: self.rows,
        })
    }
}
