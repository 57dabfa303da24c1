//! The sampler: the reference's filter order checked on its recorded logits, per-request
//! seeding, and results that do not depend on the batch.

mod common;

use common::{assert_same, dia_dir, Case};
use models::dia::{
    BatchLimits, DiaModel, FinishReason, Finished, GenerationRequest, Generator, SeqId,
};
use models::sampling::{self, Sampling, SamplingBatch};
use tch::{Device, Kind, Tensor};

fn model() -> DiaModel {
    DiaModel::load(&dia_dir(), Device::Cpu, Kind::Float).expect("Dia loads")
}

/// `sampled_seed` (stretch target): the reference seeds torch with 1234 and draws one
/// `multinomial` per step. Our filters applied to its recorded logits, drawn with the same
/// libtorch generator, must reproduce its draws exactly; and every draw must be a candidate.
#[test]
fn sampled_seed_parity_filters_reproduce_the_reference_draws_on_its_logits() {
    let _guard = tch::no_grad_guard();
    let case = Case::load(&dia_dir(), "sampled_seed");
    let gen = &case.meta["gen"];
    let params = Sampling {
        temperature: gen["temperature"].as_f64().unwrap(),
        top_p: gen["top_p"].as_f64().unwrap(),
        top_k: gen["cfg_filter_top_k"].as_i64().unwrap(),
        cfg_scale: gen["cfg_scale"].as_f64().unwrap(),
    };
    let model = model();
    let cfg = &model.config;
    let c = cfg.num_channels();
    let mask =
        sampling::special_id_mask(c, cfg.decoder_config.vocab_size, cfg.eos_token_id, Device::Cpu);
    let batch = SamplingBatch::new(&[params], Device::Cpu);
    let logits = case.get("step_logits");
    tch::manual_seed(gen["seed"].as_i64().unwrap());
    for step in 0..logits.size()[0] {
        let pair = logits.get(step);
        let filtered = sampling::filter(
            &pair.narrow(0, 1, 1),
            &pair.narrow(0, 0, 1),
            &mask,
            cfg.eos_token_id,
            &batch,
        );
        let probs_cxv = filtered.logits_bxcxv.softmax(-1, Kind::Float).squeeze_dim(0);
        let expected = case.get("step_preds").get(step).get(0);
        let allowed = probs_cxv.gather(1, &expected.unsqueeze(1), false);
        assert!(
            allowed.gt(0.0).all().int64_value(&[]) == 1,
            "step {step}: a reference draw is not a candidate"
        );
        let drawn = probs_cxv.multinomial(1, false).squeeze_dim(1);
        assert_same(&format!("step {step} draws"), &drawn, &expected);
    }
}

/// The reference's filters (`_sample_next_token` and the CFG top-k before it) for one request,
/// written as it writes them: over the whole vocabulary, with its sort for top-p. Returns the
/// final logits `[C, V]`, or the greedy ids `[C]` at temperature 0.
fn reference_filters(cond_cxv: &Tensor, uncond_cxv: &Tensor, s: Sampling, eos: i64) -> Tensor {
    let (c, v) = cond_cxv.size2().unwrap();
    let top_k_mask = |x: &Tensor| {
        let (_, idx) = x.topk(s.top_k, -1, true, true);
        x.ones_like().to_kind(Kind::Bool).scatter_value(-1, &idx, 0)
    };
    let guided = cond_cxv + (cond_cxv - uncond_cxv) * s.cfg_scale;
    let logits = cond_cxv.masked_fill(&top_k_mask(&guided), f64::NEG_INFINITY);
    let _ = logits.narrow(1, eos + 1, v - eos - 1).fill_(f64::NEG_INFINITY);
    let _ = logits.narrow(0, 1, c - 1).narrow(1, eos, v - eos).fill_(f64::NEG_INFINITY);
    if s.temperature == 0.0 {
        return logits.argmax(-1, false);
    }
    let logits = logits / s.temperature;
    let top: Vec<i64> = Vec::try_from(logits.argmax(-1, false)).unwrap();
    for (ch, &top) in top.iter().enumerate() {
        let row = logits.get(ch as i64);
        let banned = if top == eos { row.narrow(0, 0, eos) } else { row.narrow(0, eos, 1) };
        let _ = banned.shallow_clone().fill_(f64::NEG_INFINITY);
    }
    let logits = logits.masked_fill(&top_k_mask(&logits), f64::NEG_INFINITY);
    if s.top_p >= 1.0 {
        return logits;
    }
    let (sorted, sorted_idx) = logits.softmax(-1, Kind::Float).sort(-1, true);
    let remove_sorted = sorted.cumsum(-1, Kind::Float).gt(s.top_p).roll([1], [-1]);
    let _ = remove_sorted.narrow(1, 0, 1).fill_(0);
    let remove = remove_sorted.zeros_like().scatter(-1, &sorted_idx, &remove_sorted);
    logits.masked_fill(&remove, f64::NEG_INFINITY)
}

/// Rows of one batch with parameters of their own, each filtered as the reference filters a
/// request alone: the same candidates, the same logits. Logits spread wide enough for top-p to
/// cut inside the candidates, and EOS made the top choice of channel 0 in one row.
#[test]
fn batched_filters_equal_the_reference_filters_row_by_row() {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(21);
    let (c, v, eos) = (9, 1028, 1024);
    let rows = [
        Sampling { temperature: 1.8, top_p: 0.95, top_k: 45, cfg_scale: 3.0 },
        Sampling { temperature: 0.7, top_p: 0.3, top_k: 5, cfg_scale: 1.0 },
        Sampling { temperature: 1.0, top_p: 1.0, top_k: 100, cfg_scale: 5.0 },
        Sampling { temperature: 0.0, top_p: 0.8, top_k: 20, cfg_scale: 2.0 },
        Sampling { temperature: 1.2, top_p: 0.5, top_k: 1, cfg_scale: 1.5 },
    ];
    let b = rows.len() as i64;
    let cond = Tensor::randn([b, c, v], (Kind::Float, Device::Cpu)) * 3.0;
    let uncond = &cond + Tensor::randn([b, c, v], (Kind::Float, Device::Cpu));
    for t in [&cond, &uncond] {
        let _ = t.get(0).get(0).get(eos).fill_(40.0);
    }
    let mask = sampling::special_id_mask(c, v, eos, Device::Cpu);
    let filtered =
        sampling::filter(&cond, &uncond, &mask, eos, &SamplingBatch::new(&rows, Device::Cpu));
    for (i, s) in rows.iter().enumerate() {
        let i = i as i64;
        let expected = reference_filters(&cond.get(i), &uncond.get(i), *s, eos);
        if s.temperature == 0.0 {
            assert_same(&format!("row {i}: greedy ids"), &filtered.greedy_bxc.get(i), &expected);
            continue;
        }
        let got = filtered.logits_bxcxv.get(i);
        assert_same(&format!("row {i}: candidates"), &got.isfinite(), &expected.isfinite());
        let kept = expected.isfinite();
        let diff = (got.masked_select(&kept) - expected.masked_select(&kept)).abs().max();
        assert!(diff.double_value(&[]) < 1e-6, "row {i}: logits differ by {diff}");
        let survivors = kept.sum(Kind::Int64).int64_value(&[]);
        assert!(survivors >= c, "row {i}: every channel keeps a candidate");
    }
    let eos_row: Vec<bool> = Vec::try_from(filtered.logits_bxcxv.get(0).get(0).isfinite()).unwrap();
    assert_eq!(eos_row.iter().filter(|&&f| f).count(), 1, "EOS on top stands alone");
    assert!(eos_row[eos as usize]);
}

fn request(text: &str, seed: u64, sampling: Sampling, max_new_tokens: i64) -> GenerationRequest {
    GenerationRequest { text: text.into(), prompt_codes: None, sampling, seed, max_new_tokens }
}

fn run_alone(model: &DiaModel, r: GenerationRequest) -> Tensor {
    finish_alone(model, r).codes_lxc
}

fn finish_alone(model: &DiaModel, r: GenerationRequest) -> Finished {
    let mut g =
        Generator::new(model, BatchLimits { max_batch: 1, max_positions: 256, max_text: 256 });
    g.admit(model, vec![r]).unwrap();
    loop {
        if let Some(f) = g.step(model).unwrap().finished.pop() {
            return f;
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_audio_and_another_seed_other_audio() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let text = "[S1] Seeds make runs repeatable. [S2] Do they?";
    let a = run_alone(&model, request(text, 7, Sampling::default(), 40));
    let b = run_alone(&model, request(text, 7, Sampling::default(), 40));
    let c = run_alone(&model, request(text, 8, Sampling::default(), 40));
    assert_same("same seed", &a, &b);
    assert!(
        a.size() != c.size() || a.ne_tensor(&c).any().int64_value(&[]) == 1,
        "another seed changed nothing"
    );
}

/// Requests joining and leaving between steps get exactly what each gets alone.
#[test]
fn batched_generation_with_joins_and_leaves_equals_each_request_alone() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let greedy = Sampling { temperature: 0.0, ..Sampling::default() };
    let warm = Sampling { temperature: 1.0, top_p: 0.9, top_k: 30, cfg_scale: 2.0 };
    let codes = Tensor::from_slice(&(0..9 * 12).map(|i| (i * 37) % 1024).collect::<Vec<i64>>())
        .view([12, 9]);
    let make = || {
        vec![
            request("[S1] The first request, greedy and short.", 1, greedy, 30),
            GenerationRequest {
                prompt_codes: Some(codes.shallow_clone()),
                ..request(
                    "[S1] A prompt transcript. [S2] The second one carries a prompt.",
                    2,
                    Sampling::default(),
                    45,
                )
            },
            request("[S1] Third (laughs), sampled at its own temperature.", 3, warm, 60),
            request("[S2] Not allowed by the API, but the model does not care.", 4, greedy, 20),
        ]
    };
    let alone: Vec<Tensor> = make().into_iter().map(|r| run_alone(&model, r)).collect();

    let mut g =
        Generator::new(&model, BatchLimits { max_batch: 3, max_positions: 256, max_text: 256 });
    let mut pending = make().into_iter().enumerate();
    let mut ids: Vec<(SeqId, usize)> = Vec::new();
    let mut results: Vec<Option<Tensor>> = vec![None, None, None, None];
    let mut step = 0;
    while results.iter().any(Option::is_none) {
        // Join one request every 5 steps while a slot is free.
        if step % 5 == 0 && g.free_slots() > 0 {
            if let Some((i, r)) = pending.next() {
                ids.push((g.admit(&model, vec![r]).unwrap()[0], i));
            }
        }
        if g.active() > 0 {
            for f in g.step(&model).unwrap().finished {
                let i = ids.iter().find(|(id, _)| *id == f.id).unwrap().1;
                results[i] = Some(f.codes_lxc);
            }
        }
        step += 1;
    }
    for (i, (batched, alone)) in results.into_iter().zip(&alone).enumerate() {
        assert_same(&format!("request {i}"), &batched.unwrap(), alone);
    }
}

#[test]
fn max_new_tokens_bounds_the_generated_frames_prompt_excluded() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let codes = Tensor::from_slice(&vec![3i64; 9 * 20]).view([20, 9]);
    let mut lengths_seen = 0;
    for (prompt, max_new) in [(None, 25), (Some(codes.shallow_clone()), 17), (Some(codes), 33)] {
        let r = GenerationRequest {
            prompt_codes: prompt,
            ..request(
                "[S1] Length test.",
                5,
                Sampling { temperature: 0.0, ..Sampling::default() },
                max_new,
            )
        };
        let f = finish_alone(&model, r);
        let frames = f.codes_lxc.size()[0];
        match f.reason {
            FinishReason::Length => {
                assert_eq!(frames, max_new);
                lengths_seen += 1;
            }
            FinishReason::Eos => assert!(frames < max_new, "{frames} frames past EOS"),
        }
    }
    assert!(lengths_seen > 0, "no run reached the length bound");
    assert_eq!(Generator::positions_needed(&model, 861, 4096), 861 + 1 + 4096 + 15);
}

#[test]
fn the_generator_refuses_what_it_cannot_hold() {
    let model = model();
    let mut g =
        Generator::new(&model, BatchLimits { max_batch: 1, max_positions: 64, max_text: 64 });
    let long = request("[S1] Too long.", 1, Sampling::default(), 64);
    assert!(g.admit(&model, vec![long]).is_err());
    let empty = request("", 1, Sampling::default(), 8);
    assert!(g.admit(&model, vec![empty]).is_err());
    let bad_codes = GenerationRequest {
        prompt_codes: Some(Tensor::from_slice(&[2000i64; 9]).view([1, 9])),
        ..request("[S1] x", 1, Sampling::default(), 8)
    };
    assert!(g.admit(&model, vec![bad_codes]).is_err());
    assert_eq!(g.active(), 0, "a refused request holds no slot");
    g.admit(&model, vec![request("[S1] fits", 1, Sampling::default(), 8)]).unwrap();
    assert!(g.admit(&model, vec![request("[S1] no slot", 1, Sampling::default(), 8)]).is_err());
    assert!(g.cancel(0));
    assert_eq!(g.active(), 0);
}

/// Prompt + new frames may pass the 3072 trained positions: RoPE is computed per position,
/// and the caches are sized by the generator's limits.
#[test]
fn generation_runs_past_the_trained_positions() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let trained = model.config.decoder_config.max_position_embeddings;
    let prompt_frames = trained - 10;
    let codes =
        Tensor::from_slice(&(0..9 * prompt_frames).map(|i| (i * 7) % 1024).collect::<Vec<i64>>())
            .view([prompt_frames, 9]);
    let max_new = 40;
    let positions = Generator::positions_needed(&model, prompt_frames, max_new);
    assert!(positions > trained);
    let mut g = Generator::new(
        &model,
        BatchLimits { max_batch: 1, max_positions: positions, max_text: 64 },
    );
    let greedy = Sampling { temperature: 0.0, ..Sampling::default() };
    g.admit(
        &model,
        vec![GenerationRequest {
            prompt_codes: Some(codes),
            ..request("[S1] Long.", 1, greedy, max_new)
        }],
    )
    .unwrap();
    let finished = loop {
        let out = g.step(&model).unwrap();
        assert!(out.logits_nxcxv.isfinite().all().int64_value(&[]) == 1, "non-finite logits");
        if let Some(f) = out.finished.into_iter().next() {
            break f;
        }
    };
    assert!(finished.codes_lxc.size()[0] <= max_new);
}

/// The fixture model with the encoder embedding of the byte `Z` set to NaN: exactly the
/// requests whose text has a `Z` get NaN logits.
fn model_with_nan_for_z() -> DiaModel {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(dia_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = Vec::new();
    for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        tensors.extend(Tensor::read_safetensors(dia_dir().join(shard)).unwrap());
    }
    let (_, embedding) =
        tensors.iter_mut().find(|(name, _)| name == "model.encoder.embedding.weight").unwrap();
    let _ = embedding.get(i64::from(b'Z')).fill_(f64::NAN);
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).unwrap();
    DiaModel::load(dir.path(), Device::Cpu, Kind::Float).expect("the edited model loads")
}

#[test]
fn a_request_with_nan_logits_fails_alone_and_its_batch_mates_are_unaffected() {
    let _guard = tch::no_grad_guard();
    let model = model_with_nan_for_z();
    for sampling in [Sampling { temperature: 0.0, ..Sampling::default() }, Sampling::default()] {
        let ok = || request("[S1] Fine words.", 3, sampling, 40);
        let mut g =
            Generator::new(&model, BatchLimits { max_batch: 2, max_positions: 256, max_text: 256 });
        let ok_id = g.admit(&model, vec![ok()]).unwrap()[0];
        let bad_id = g.admit(&model, vec![request("[S1] Zebra.", 4, sampling, 40)]).unwrap()[0];
        let (mut finished, mut failed) = (Vec::new(), Vec::new());
        while g.active() > 0 {
            let out = g.step(&model).unwrap();
            finished.extend(out.finished);
            failed.extend(out.failed);
        }
        assert_eq!(failed, [bad_id], "the NaN request fails, and only it");
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].id, ok_id);
        let alone = run_alone(&self::model(), ok());
        assert_same("codes of the request beside the NaN one", &finished[0].codes_lxc, &alone);
    }
}

#[test]
fn a_temperature_that_overflows_the_distribution_fails_the_request_instead_of_drawing_id_0() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let limits = BatchLimits { max_batch: 2, max_positions: 256, max_text: 256 };
    let mut g = Generator::new(&model, limits);
    // Finite, so admitted; the logits divided by it overflow f32.
    let tiny = Sampling { temperature: 1e-40, ..Sampling::default() };
    let bad_id = g.admit(&model, vec![request("[S1] Too sharp.", 1, tiny, 40)]).unwrap()[0];
    let ok_id =
        g.admit(&model, vec![request("[S1] Fine.", 2, Sampling::default(), 40)]).unwrap()[0];
    let out = g.step(&model).unwrap();
    assert_eq!(out.failed, [bad_id], "the overflowing request fails at its first draw");
    assert_eq!(out.ids, [bad_id, ok_id]);
    assert_eq!(g.active(), 1);

    for temperature in [f64::INFINITY, f64::NAN] {
        let sampling = Sampling { temperature, ..Sampling::default() };
        let refused = g.admit(&model, vec![request("[S1] Hot.", 3, sampling, 40)]);
        assert!(refused.is_err(), "temperature {temperature} admitted");
    }
    let sampling = Sampling { top_p: f64::INFINITY, ..Sampling::default() };
    assert!(g.admit(&model, vec![request("[S1] Wide.", 3, sampling, 40)]).is_err());
}

#[test]
fn a_cleared_generator_reuses_its_caches_and_later_requests_are_unaffected() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let limits = BatchLimits { max_batch: 2, max_positions: 256, max_text: 256 };
    let mut g = Generator::new(&model, limits);
    let interrupted = ["[S1] Cut short, twice over.", "[S2] Me too."];
    g.admit(&model, interrupted.iter().map(|t| request(t, 5, Sampling::default(), 60)).collect())
        .unwrap();
    for _ in 0..10 {
        g.step(&model).unwrap();
    }
    g.clear();
    assert_eq!((g.active(), g.free_slots()), (0, 2));

    let fresh = || request("[S1] A fresh start.", 9, Sampling::default(), 40);
    g.admit(&model, vec![fresh()]).unwrap();
    let codes = loop {
        if let Some(f) = g.step(&model).unwrap().finished.pop() {
            break f.codes_lxc;
        }
    };
    assert_same("after a clear", &codes, &run_alone(&model, fresh()));
}
