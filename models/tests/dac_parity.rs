//! The DAC against the reference's tensors, from each of the three weight layouts.
//! Tolerances: codes exact; latents 1e-4 + 1e-4·|x|; waveforms 1e-5 absolute.

mod common;

use common::{assert_close, assert_same, case_names, dac_dir, Case};
use models::dac::Dac;
use tch::{Device, Kind, Tensor};

fn layouts() -> Vec<(&'static str, Dac)> {
    let dir = dac_dir();
    let load = |config: &str, weights: &str| {
        Dac::load_files(&dir.join(config), &dir.join(weights), Device::Cpu).expect("DAC loads")
    };
    vec![
        ("transformers folded", load("config.json", "model.safetensors")),
        ("transformers parametrized", load("config.json", "model-parametrized.safetensors")),
        ("original weight_g/weight_v", load("dac-metadata.json", "weights-orig.safetensors")),
    ]
}

#[test]
fn dac_parity_encode_and_decode_match_the_reference_for_every_layout() {
    let _guard = tch::no_grad_guard();
    let cases = case_names(&dac_dir(), "wave_");
    assert!(!cases.is_empty(), "no DAC cases found");
    for (layout, dac) in layouts() {
        for name in &cases {
            let case = Case::load(&dac_dir(), name);
            let what = |t: &str| format!("{layout} / {name} / {t}");
            let pre = dac.preprocess(case.get("input"));
            assert_close(&what("preprocessed"), &pre, case.get("preprocessed"), 0.0, 0.0);
            let z_e = dac.encode_latent(&pre);
            assert_close(&what("z_e"), &z_e, case.get("z_e"), 1e-4, 1e-4);
            let q = dac.quantize(&z_e);
            assert_same(&what("codes"), &q.codes, case.get("codes"));
            assert_close(&what("latents"), &q.projected, case.get("latents"), 1e-4, 1e-4);
            assert_close(&what("z_q_encode"), &q.z_q, case.get("z_q_encode"), 1e-4, 1e-4);
            let codes = case.get("codes");
            assert_close(
                &what("z_p_from_codes"),
                &dac.codebook_rows(codes),
                case.get("z_p_from_codes"),
                1e-4,
                1e-4,
            );
            let z_q = dac.latent_from_codes(codes);
            assert_close(&what("z_q_from_codes"), &z_q, case.get("z_q_from_codes"), 1e-4, 1e-4);
            let audio = dac.decode_latent(&z_q);
            assert_close(&what("audio_decoded"), &audio, case.get("audio_decoded"), 1e-5, 0.0);
        }
    }
}

#[test]
fn dac_parity_pcm_to_codes_and_back_through_the_public_entry_points() {
    let dac = Dac::load(&dac_dir(), Device::Cpu).expect("DAC loads");
    for name in case_names(&dac_dir(), "wave_") {
        let case = Case::load(&dac_dir(), &name);
        let pcm = Vec::<f32>::try_from(case.get("input").flatten(0, -1)).unwrap();
        let codes_nxq = dac.encode(&pcm).unwrap();
        assert_same(&name, &codes_nxq.tr().unsqueeze(0), case.get("codes"));
        let audio = dac.decode(&codes_nxq).unwrap();
        assert_eq!(audio.len() as i64, codes_nxq.size()[0] * dac.hop_length());
        let audio = Tensor::from_slice(&audio).view([1, 1, -1]);
        assert_close(&name, &audio, case.get("audio_decoded"), 1e-5, 0.0);
    }
}

#[test]
fn dac_decode_refuses_codes_outside_the_codebook() {
    let dac = Dac::load(&dac_dir(), Device::Cpu).expect("DAC loads");
    let q = dac.config.n_codebooks;
    let codes = Tensor::full([2, q], dac.config.codebook_size, (Kind::Int64, Device::Cpu));
    assert!(dac.decode(&codes).is_err());
    assert!(dac.encode(&[]).is_err());
}
