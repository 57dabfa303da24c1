//! Batched generation in which requests join and leave between decode steps.
//!
//! A [`Generator`] owns the caches of up to `max_batch` requests; request `i` of the active set
//! lives in cache rows `2i` (unconditional) and `2i + 1` (conditional), kept contiguous by
//! moving the last request into a freed slot. Each request has its own position, token rows,
//! EOS countdown, sampling parameters and random stream, so its result does not depend on what
//! else runs beside it. Per step one `[B, C]` id tensor comes back to the host.
//!
//! The loop per request follows the reference (docs/dia-reference.md §6.3): feed row `s`, sample
//! row `s + 1`, keep teacher-forced values where the row was prefilled, and after channel 0 emits
//! EOS (or the length limit is hit) force EOS/PAD along the delay pattern for `max_delay` steps.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Kind, Tensor};

use super::cache::DecoderCache;
use super::decoder::DecoderInput;
use super::DiaModel;
use crate::delay::revert_delay;
use crate::error::{ModelError, Result};
use crate::prompt::{prefill_rows, text_tokens};
use crate::sampling::{self, Sampling, SamplingBatch};

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
    seqs: Vec<Sequence>,
    params: Option<SamplingBatch>,
    special_mask_cxv: Tensor,
    limits: BatchLimits,
    next_id: SeqId,
}

impl Generator {
    pub fn new(model: &DiaModel, limits: BatchLimits) -> Self {
        let cfg = &model.config;
        let max_text = limits.max_text.min(cfg.max_text_len() as i64);
        let limits = BatchLimits { max_text, ..limits };
        let dec = &cfg.decoder_config;
        Self {
            cache: DecoderCache::new(
                dec,
                2 * limits.max_batch,
                limits.max_positions,
                max_text,
                model.kind(),
                model.device(),
            ),
            seqs: Vec::new(),
            params: None,
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

    /// Requests being decoded.
    pub fn active(&self) -> usize {
        self.seqs.len()
    }

    /// Requests that can still be admitted.
    pub fn free_slots(&self) -> usize {
        self.limits.max_batch as usize - self.seqs.len()
    }

    /// Audio frames generated so far by each active request.
    pub fn progress(&self) -> impl Iterator<Item = (SeqId, i64)> + '_ {
        self.seqs.iter().map(|s| (s.id, (s.step + 1 - s.prefill_steps).max(0)))
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
        let first_row = 2 * self.seqs.len() as i64;
        self.write_cross_cache(model, first_row, &encoded);

        let longest_prompt = prompts.iter().map(|p| p.size()[0]).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(requests.len());
        for ((request, codes), text) in requests.into_iter().zip(prompts).zip(&texts) {
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
            self.prefill(model, &seq, 2 * self.seqs.len() as i64, channels)?;
            ids.push(seq.id);
            self.next_id += 1;
            self.seqs.push(seq);
        }
        self.params = None;
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
            && s.top_p > 0.0
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

    fn write_cross_cache(
        &mut self,
        model: &DiaModel,
        first_row: i64,
        encoded: &super::EncodedText,
    ) {
        let (n, s) = encoded.mask_nxs.size2().expect("mask is [N, S]");
        for (kv, (k, v)) in self
            .cache
            .cross_kv
            .iter_mut()
            .zip(model.decoder.cross_key_values(&encoded.states_nxsxd))
        {
            kv.k.narrow(0, first_row, n).narrow(2, 0, s).copy_(&k);
            kv.v.narrow(0, first_row, n).narrow(2, 0, s).copy_(&v);
        }
        let mut mask_rows = self.cache.cross_mask_rxs.narrow(0, first_row, n);
        let _ = mask_rows.fill_(0);
        mask_rows.narrow(1, 0, s).copy_(&encoded.mask_nxs);
    }

    /// Runs the rows before the first decode step (BOS and the prompt) through the decoder,
    /// filling the self-attention cache; their logits are never needed, so the head is skipped.
    fn prefill(
        &mut self,
        model: &DiaModel,
        seq: &Sequence,
        first_row: i64,
        channels: i64,
    ) -> Result<()> {
        let len = seq.step;
        if len == 0 {
            return Ok(());
        }
        let device = model.device();
        let tokens = Tensor::from_slice(&seq.rows[..(len * channels) as usize])
            .view([1, len, channels])
            .to_device(device)
            .repeat([2, 1, 1]);
        let positions = Tensor::arange(len, (Kind::Int64, device)).view([1, len]).repeat([2, 1]);
        let input = DecoderInput {
            tokens_nxtxc: &tokens,
            positions_nxt: &positions,
            first_row,
            self_len: len,
            cross_len: seq.text_len,
        };
        let _ = model.decoder.forward(&input, &self.cache);
        Ok(())
    }

    /// Drops a request without output; false if it is not active.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        match self.seqs.iter().position(|s| s.id == id) {
            Some(i) => {
                self.remove(i);
                true
            }
            None => false,
        }
    }

    /// Drops every request, keeping the caches: after a failed step, the generator starts over
    /// without allocating a second set of caches beside the first. What the rows held is
    /// overwritten by the next admission before it is read.
    pub fn clear(&mut self) {
        self.seqs.clear();
        self.params = None;
    }

    /// Removes request `i`, moving the last request's cache rows into its slot.
    fn remove(&mut self, i: usize) -> Sequence {
        let last = self.seqs.len() - 1;
        if i != last {
            self.cache.move_rows(2 * last as i64, 2 * i as i64, 2);
        }
        self.params = None;
        self.seqs.swap_remove(i)
    }

    /// One decode step for every active request.
    pub fn step(&mut self, model: &DiaModel) -> Result<StepOutput> {
        let n = self.seqs.len() as i64;
        if n == 0 {
            return Err(ModelError::Input("no active request to step".into()));
        }
        let cfg = &model.config;
        let c = cfg.num_channels();
        let device = model.device();

        let mut tokens = Vec::with_capacity((2 * n * c) as usize);
        let mut positions = Vec::with_capacity(2 * n as usize);
        for seq in &self.seqs {
            let row = &seq.rows[(seq.step * c) as usize..((seq.step + 1) * c) as usize];
            for _ in 0..2 {
                tokens.extend_from_slice(row);
                positions.push(seq.step);
            }
        }
        let tokens_nx1xc = Tensor::from_slice(&tokens).view([2 * n, 1, c]).to_device(device);
        let positions_nx1 = Tensor::from_slice(&positions).view([2 * n, 1]).to_device(device);
        let input = DecoderInput {
            tokens_nxtxc: &tokens_nx1xc,
            positions_nxt: &positions_nx1,
            first_row: 0,
            self_len: positions.iter().copied().max().unwrap_or(0) + 1,
            cross_len: self.seqs.iter().map(|s| s.text_len).max().unwrap_or(1),
        };
        let states = model.decoder.forward(&input, &self.cache);
        let logits_nxcxv = model.decoder.logits(&states).squeeze_dim(1);

        let params = self.params.get_or_insert_with(|| {
            SamplingBatch::new(&self.seqs.iter().map(|s| s.sampling).collect::<Vec<_>>(), device)
        });
        // u ∈ (0, 1]: each request's own stream, one per channel.
        let mut uniforms = Vec::with_capacity((n * c) as usize);
        for seq in &mut self.seqs {
            uniforms.extend((0..c).map(|_| 1.0 - seq.rng.random::<f32>()));
        }
        let uniforms_bxc = Tensor::from_slice(&uniforms).view([n, c]).to_device(device);
        let pairs = logits_nxcxv.view([n, 2, c, -1]);
        let filtered = sampling::filter(
            &pairs.select(1, 1),
            &pairs.select(1, 0),
            &self.special_mask_cxv,
            cfg.eos_token_id,
            params,
        );
        let sampled =
            Vec::<i64>::try_from(sampling::draw(&filtered, &uniforms_bxc, params).flatten(0, -1))?;

        // (index, whether it has valid audio) of the requests this step ended.
        let mut ended = Vec::new();
        for (i, seq) in self.seqs.iter_mut().enumerate() {
            let mut pred = sampled[i * c as usize..(i + 1) * c as usize].to_vec();
            if pred.contains(&sampling::INVALID) {
                ended.push((i, false));
            } else if seq.advance(&mut pred, cfg) {
                ended.push((i, true));
            }
        }
        let ids = self.seqs.iter().map(|s| s.id).collect();
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        for &(i, valid) in ended.iter().rev() {
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
