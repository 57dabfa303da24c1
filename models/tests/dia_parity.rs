//! Dia against the reference's tensors (fixture folder from `DIA_FIXTURE_DIR`, codec from
//! `DAC_FIXTURE_DIR`). Tolerances: every integer tensor exact (token ids, prompt codes, prefill
//! buffer, sampled ids, token rows, output codes); encoder output and step logits within
//! 1e-4 + 1e-4·|x|; waveforms within 1e-5 absolute.

mod common;

use std::path::Path;

use common::{assert_close, assert_same, case_names, dac_dir, dia_dir, Case};
use models::audio;
use models::dac::Dac;
use models::dia::{BatchLimits, DiaModel, FinishReason, GenerationRequest, Generator};
use models::product_plan::{self, Form, Plan};
use models::prompt::{prefill_rows, text_tokens};
use models::sampling::Sampling;
use tch::{Device, Kind, Tensor};

fn model() -> DiaModel {
    DiaModel::load(&dia_dir(), Device::Cpu, Kind::Float).expect("Dia loads")
}

fn codec() -> Dac {
    Dac::load(&dac_dir(), Device::Cpu).expect("DAC loads")
}

#[test]
fn tokenisation_and_encoder_parity() {
    let _guard = tch::no_grad_guard();
    let model = model();
    let cases = case_names(&dia_dir(), "tok_");
    assert!(!cases.is_empty(), "no tokenisation cases");
    for name in cases {
        let case = Case::load(&dia_dir(), &name);
        let text = case.meta["text"].as_str().expect("case text");
        let ids = text_tokens(text, model.config.max_text_len());
        assert_same(&name, &Tensor::from_slice(&ids), case.get("text_ids"));
        // The control plane sizes requests with proto's count of the same tokens.
        let untruncated = proto::script::model_token_count(text);
        assert_eq!(text_tokens(text, usize::MAX).len(), untruncated, "{name}: token count");
        let len = ids.len() as i64;
        let enc_input = case.get("enc_input");
        assert_same(&name, &enc_input.narrow(1, 0, len).select(0, 1), &Tensor::from_slice(&ids));
        let encoded = model.encode(&[ids]).unwrap();
        let expected = case.get("encoder_out").narrow(1, 0, len);
        assert_close(&format!("{name} encoder_out"), &encoded.states_nxsxd, &expected, 1e-4, 1e-4);
    }
}

/// Everything one generation case records, checked request by request.
fn check_generation_case(model: &DiaModel, dac: &Dac, name: &str) {
    let _guard = tch::no_grad_guard();
    let case = Case::load(&dia_dir(), name);
    let meta = &case.meta;
    let gen = &meta["gen"];
    let texts: Vec<&str> =
        meta["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let b = texts.len();
    let max_tokens = gen["max_tokens"].as_i64().unwrap();
    let first_step = meta["first_step"].as_i64().unwrap();
    let max_delay = model.config.max_delay();
    let sampling = Sampling {
        temperature: gen["temperature"].as_f64().unwrap(),
        top_p: gen["top_p"].as_f64().unwrap(),
        top_k: gen["cfg_filter_top_k"].as_i64().unwrap(),
        cfg_scale: gen["cfg_scale"].as_f64().unwrap(),
    };

    // Prompts: the WAV as float, then DAC codes.
    let mut prompts = Vec::new();
    for (i, prompt) in meta["prompts"].as_array().unwrap().iter().enumerate() {
        if prompt.is_null() {
            prompts.push(None);
            continue;
        }
        let wav = dia_dir().join(prompt["wav"].as_str().unwrap());
        let (pcm, rate) = audio::read_wav(&wav).unwrap();
        assert_eq!(rate, proto::SAMPLE_RATE);
        assert_close(
            &format!("{name} prompt{i}_waveform"),
            &pcm,
            case.get(&format!("prompt{i}_waveform")),
            0.0,
            0.0,
        );
        let codes = dac.encode(&Vec::<f32>::try_from(pcm.flatten(0, -1)).unwrap()).unwrap();
        assert_same(
            &format!("{name} prompt{i}_codes"),
            &codes,
            case.get(&format!("prompt{i}_codes")),
        );
        prompts.push(Some(codes));
    }
    let prompt_len = |p: &Option<Tensor>| p.as_ref().map_or(0, |c| c.size()[0]);
    let longest = prompts.iter().map(prompt_len).max().unwrap_or(0);
    let expected_prefill = case.get("prefill_steps");

    let mut requests = Vec::new();
    for (i, (text, prompt)) in texts.iter().zip(&prompts).enumerate() {
        let l = prompt_len(prompt);
        assert_eq!(l + 1, expected_prefill.int64_value(&[i as i64]), "{name}: prefill_steps[{i}]");
        let empty = Tensor::zeros([0, model.config.num_channels()], (Kind::Int64, Device::Cpu));
        let rows = prefill_rows(
            prompt.as_ref().unwrap_or(&empty),
            longest + max_delay,
            &model.config.delay_pattern,
            model.config.bos_token_id,
        );
        assert_same(
            &format!("{name} prefill_buffer[{i}]"),
            &rows,
            &case.get("prefill_buffer").get(i as i64),
        );
        requests.push(GenerationRequest {
            text: text.to_string(),
            prompt_codes: prompt.as_ref().map(Tensor::shallow_clone),
            sampling,
            seed: 0,
            // The reference's max_tokens counts BOS, the prompt and the delay tail.
            max_new_tokens: max_tokens - max_delay - (l + 1),
        });
    }

    let limits = BatchLimits { max_batch: b as i64, max_positions: max_tokens, max_text: 1024 };
    let mut generator = Generator::new(model, limits);
    let ids = generator.admit(model, requests).unwrap();
    let step_preds = case.get("step_preds");
    let step_logits = case.get("step_logits");
    let (recorded_steps, total_steps) = (step_logits.size()[0], step_preds.size()[0]);
    let mut finished = Vec::new();
    let mut k = 0;
    while generator.active() > 0 {
        let out = generator.step(model).unwrap();
        let c = model.config.num_channels() as usize;
        for (row, id) in out.ids.iter().enumerate() {
            let req = ids.iter().position(|x| x == id).unwrap();
            let step_index = prompt_len(&prompts[req]) + k - first_step;
            assert!(step_index < total_steps, "{name}: request {req} ran past the reference");
            let ours = Tensor::from_slice(&out.sampled[row * c..(row + 1) * c]);
            let what = format!("{name} step_preds[{step_index}, {req}]");
            assert_same(&what, &ours, &step_preds.get(step_index).get(req as i64));
            if step_index < recorded_steps {
                let theirs = step_logits.get(step_index).narrow(0, 2 * req as i64, 2);
                let what = format!("{name} step_logits[{step_index}] request {req}");
                assert_close(
                    &what,
                    &out.logits_nxcxv.narrow(0, 2 * row as i64, 2),
                    &theirs,
                    1e-4,
                    1e-4,
                );
            }
        }
        finished.extend(out.finished);
        k += 1;
    }

    assert_eq!(finished.len(), b);
    let lengths = meta["code_lengths"].as_array().unwrap();
    for f in finished {
        let req = ids.iter().position(|x| *x == f.id).unwrap();
        let expected_codes = case.get(&format!("codes_{req}"));
        assert_eq!(
            f.codes_lxc.size()[0],
            lengths[req].as_i64().unwrap(),
            "{name}: code length {req}"
        );
        let sampled_eos = !meta["eos"][req]["first_sampled_eos_step"].is_null();
        assert_eq!(f.reason == FinishReason::Eos, sampled_eos, "{name}: finish reason of {req}");
        assert_same(&format!("{name} codes_{req}"), &f.codes_lxc, expected_codes);
        let rows = f.rows.len() as i64 / model.config.num_channels();
        let written =
            expected_prefill.int64_value(&[req as i64]) + f.codes_lxc.size()[0] + max_delay;
        assert!(rows >= written);
        let ours = Tensor::from_slice(&f.rows).view([rows, -1]).narrow(0, 0, written);
        let theirs = case.get("final_buffer").get(req as i64).narrow(0, 0, written);
        assert_same(&format!("{name} final_buffer[{req}]"), &ours, &theirs);
        let waveform = Tensor::from_slice(&dac.decode(&f.codes_lxc).unwrap());
        assert_close(
            &format!("{name} waveform_{req}"),
            &waveform,
            case.get(&format!("waveform_{req}")),
            1e-5,
            0.0,
        );
    }
}

#[test]
fn greedy_generation_parity_without_prompt_ended_by_the_length_limit() {
    check_generation_case(&model(), &codec(), "greedy_noprompt");
}

#[test]
fn greedy_generation_parity_ended_by_a_sampled_eos() {
    check_generation_case(&model(), &codec(), "greedy_eos");
}

#[test]
fn greedy_generation_parity_with_audio_prompt() {
    check_generation_case(&model(), &codec(), "greedy_prompt");
}

#[test]
fn greedy_generation_parity_of_a_mixed_batch_admitted_as_one_group() {
    check_generation_case(&model(), &codec(), "batch_mixed");
}

#[test]
fn greedy_generation_parity_of_a_batch_whose_requests_end_at_different_steps() {
    check_generation_case(&model(), &codec(), "batch_eos");
}

/// Parity in every product plan, whichever this machine's timings choose: each pinned before the
/// model loads. The mixed plans take every form in one generation: decode steps of 2 and 4
/// rows in one, the prompt's prefill and the encoder's rows in another.
#[test]
fn greedy_generation_parity_in_every_product_plan() {
    use Form::{Columns, OneDnn, Rows};
    let dac = codec();
    for plan in [
        Plan::InOut,
        Plan::BY_ROWS,
        Plan::OutIn([Columns, Rows, OneDnn]),
        Plan::OutIn([OneDnn, Columns, Columns]),
        Plan::Packed { rows: 8 },
    ] {
        product_plan::pin(Some(plan));
        let model = model();
        for case in ["greedy_prompt", "batch_mixed"] {
            eprintln!("{case} with {plan:?}");
            check_generation_case(&model, &dac, case);
        }
    }
    product_plan::pin(None);
}

/// The same checks on CUDA in f32, and a bf16 run that must end like the f32 one within the
/// length bound. `scripts/test.sh` runs it where `nvidia-smi` sees a GPU.
#[test]
#[ignore = "needs a CUDA device (scripts/test.sh runs it where nvidia-smi sees a GPU)"]
fn cuda_generation_parity_when_a_gpu_is_present() {
    assert!(tch::Cuda::is_available(), "libtorch sees no CUDA device");
    let cuda = Device::Cuda(0);
    let model = DiaModel::load(&dia_dir(), cuda, Kind::Float).expect("Dia loads on CUDA");
    let dac = Dac::load(&dac_dir(), cuda).expect("DAC loads on CUDA");
    for case in ["greedy_prompt", "batch_mixed", "batch_eos"] {
        check_generation_case(&model, &dac, case);
    }
    let _guard = tch::no_grad_guard();
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = DiaModel::load(&dia_dir(), cuda, kind).expect("Dia loads in half precision");
        let mut g =
            Generator::new(&model, BatchLimits { max_batch: 2, max_positions: 128, max_text: 128 });
        let request = |seed| GenerationRequest {
            text: "[S1] Half precision. [S2] Still sound.".into(),
            prompt_codes: None,
            sampling: Sampling::default(),
            seed,
            max_new_tokens: 40,
        };
        g.admit(&model, vec![request(1), request(2)]).unwrap();
        let mut done = Vec::new();
        while g.active() > 0 {
            done.extend(g.step(&model).unwrap().finished);
        }
        for f in done {
            assert!(f.codes_lxc.size()[0] <= 40);
            let pcm = dac.decode(&f.codes_lxc).unwrap();
            assert!(
                pcm.iter().all(|x| x.is_finite() && x.abs() <= 1.0),
                "{kind:?} audio out of range"
            );
        }
    }
}

#[test]
fn nari_and_transformers_layouts_load_to_identical_logits() {
    let _guard = tch::no_grad_guard();
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "dia-nari.safetensors"] {
        std::fs::copy(dia_dir().join(file), dir.path().join(file)).unwrap();
    }
    let nari = DiaModel::load(dir.path(), Device::Cpu, Kind::Float).expect("Nari layout loads");
    let shards = model();
    let step = |m: &DiaModel| {
        let mut g =
            Generator::new(m, BatchLimits { max_batch: 1, max_positions: 64, max_text: 64 });
        let request = GenerationRequest {
            text: "[S1] Same weights, two layouts.".into(),
            prompt_codes: None,
            sampling: Sampling { temperature: 0.0, ..Sampling::default() },
            seed: 1,
            max_new_tokens: 8,
        };
        g.admit(m, vec![request]).unwrap();
        g.step(m).unwrap().logits_nxcxv
    };
    assert_close("logits", &step(&nari), &step(&shards), 0.0, 0.0);
}

#[test]
fn speed_factor_parity_with_the_reference_app() {
    let case = Case::load(&dia_dir(), "greedy_noprompt");
    let waveform = Vec::<f32>::try_from(case.get("waveform_0")).unwrap();
    let slowed = audio::apply_speed_factor(&waveform, 0.8);
    assert_close(
        "waveform_speed",
        &Tensor::from_slice(&slowed),
        case.get("waveform_speed"),
        1e-7,
        0.0,
    );
    let pcm: Vec<i64> = proto::audio::to_i16(&slowed).into_iter().map(i64::from).collect();
    assert_same(
        "waveform_speed_int16",
        &Tensor::from_slice(&pcm),
        case.get("waveform_speed_int16"),
    );
}

#[test]
fn prompt_loading_parity_resampling_and_downmix() {
    let _guard = tch::no_grad_guard();
    let case = Case::load(&dia_dir(), "prompt_load");
    let dac = codec();
    for i in 0..3 {
        let wav = dia_dir().join(format!("cases/prompt_load_{i}.wav"));
        let (loaded, rate) = audio::read_wav(&wav).unwrap();
        assert_close(
            &format!("wav{i}_loaded"),
            &loaded,
            case.get(&format!("wav{i}_loaded")),
            0.0,
            0.0,
        );
        let resampled = audio::resample(&loaded, rate, proto::SAMPLE_RATE);
        if case.has(&format!("wav{i}_resampled")) {
            assert_close(
                &format!("wav{i}_resampled"),
                &resampled,
                case.get(&format!("wav{i}_resampled")),
                1e-5,
                0.0,
            );
        }
        let mono = audio::load_prompt_wav(Path::new(&wav)).unwrap();
        assert_close(
            &format!("wav{i}_mono"),
            &mono.unsqueeze(0),
            case.get(&format!("wav{i}_mono")),
            1e-5,
            0.0,
        );
        // Codes from the reference's own mono signal must be exact.
        let reference_mono =
            Vec::<f32>::try_from(case.get(&format!("wav{i}_mono")).flatten(0, -1)).unwrap();
        assert_same(
            &format!("wav{i}_codes"),
            &dac.encode(&reference_mono).unwrap(),
            case.get(&format!("wav{i}_codes")),
        );
    }
}
