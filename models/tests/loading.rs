//! Loading refuses broken checkpoints with errors that name what is wrong.

mod common;

use std::path::Path;

use common::{dac_dir, dia_dir};
use models::dac::Dac;
use models::dia::{DiaConfig, DiaModel};
use models::ModelError;
use tch::{Device, Kind, Tensor};

/// A Nari-layout copy of the fixture with `edit` applied to its tensors.
fn edited_checkpoint(edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(dia_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let mut tensors = Tensor::read_safetensors(dia_dir().join("dia-nari.safetensors")).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, dir.path().join("dia-nari.safetensors")).unwrap();
    dir
}

fn load(dir: &Path) -> Result<DiaModel, ModelError> {
    DiaModel::load(dir, Device::Cpu, Kind::Float)
}

#[test]
fn a_missing_tensor_is_named_with_its_expected_shape() {
    let dir =
        edited_checkpoint(|t| t.retain(|(name, _)| name != "decoder.layers.1.pre_ca_norm.weight"));
    match load(dir.path()) {
        Err(ModelError::MissingTensor { name, expected }) => {
            assert_eq!(name, "model.decoder.layers.1.pre_ca_norm.weight");
            assert_eq!(expected, vec![48]);
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn a_wrong_shape_is_named_with_expected_and_found() {
    let dir = edited_checkpoint(|t| {
        for (name, tensor) in t.iter_mut() {
            if name == "encoder.layers.0.mlp.wo.weight" {
                *tensor = Tensor::zeros([63, 32], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load(dir.path()).unwrap_err();
    match &err {
        ModelError::ShapeMismatch { name, expected, found } => {
            assert_eq!(name, "model.encoder.layers.0.mlp.down_proj.weight");
            assert_eq!(expected, &vec![32, 64]);
            assert_eq!(found, &vec![32, 63]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(err.to_string().contains("down_proj"), "{err}");
}

#[test]
fn a_corrupt_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(dia_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(dia_dir().join("dia-nari.safetensors")).unwrap();
    std::fs::write(dir.path().join("dia-nari.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    match load(dir.path()) {
        Err(ModelError::Checkpoint { path, .. }) => assert!(path.ends_with("dia-nari.safetensors")),
        other => panic!("expected Checkpoint error, got {other:?}"),
    }
}

#[test]
fn a_folder_without_weights_or_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(load(dir.path()), Err(ModelError::Config { .. })));
    std::fs::copy(dia_dir().join("config.json"), dir.path().join("config.json")).unwrap();
    assert!(matches!(load(dir.path()), Err(ModelError::Checkpoint { .. })));
    assert!(matches!(Dac::load(dir.path(), Device::Cpu), Err(ModelError::Checkpoint { .. })));
}

#[test]
fn the_april_config_schema_is_refused_with_a_clear_message() {
    let april = r#"{"version": "0.1", "model": {"encoder": {"n_layer": 12}, "decoder": {"n_layer": 18},
        "src_vocab_size": 256, "tgt_vocab_size": 1028}, "data": {"channels": 9, "delay_pattern": [0]}}"#;
    let err = DiaConfig::from_json(april).unwrap_err();
    assert!(err.contains("April") && err.contains("0626"), "{err}");
}

#[test]
fn the_fixture_config_parses_with_the_values_it_declares() {
    let cfg = DiaConfig::from_file(&dia_dir().join("config.json")).unwrap();
    assert_eq!((cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id), (1026, 1024, 1025));
    assert_eq!(cfg.delay_pattern, vec![0, 8, 9, 10, 11, 12, 13, 14, 15]);
    assert_eq!(cfg.max_delay(), 15);
    assert_eq!(cfg.decoder_config.cross_head_dim, 8);
    assert_eq!(cfg.encoder_config.rope.theta(), 10_000.0);
    let mismatched = std::fs::read_to_string(dia_dir().join("config.json")).unwrap().replacen(
        "\"num_channels\": 9",
        "\"num_channels\": 8",
        1,
    );
    assert!(DiaConfig::from_json(&mismatched).unwrap_err().contains("delay_pattern"));
}

/// The benchmark's dispatch-bound model measures per-operator overhead only if it keeps every
/// layer, head, channel and token id of the real one.
#[test]
fn the_dispatch_bound_config_has_the_structure_of_the_real_model() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let real = DiaConfig::from_file(&configs.join("dia-1.6b-0626.json")).unwrap();
    let small = DiaConfig::from_file(&configs.join("dia-dispatch-bound.json")).unwrap();
    let structure = |c: &DiaConfig| {
        let (e, d) = (&c.encoder_config, &c.decoder_config);
        (
            (e.num_hidden_layers, e.num_attention_heads, e.num_key_value_heads, e.vocab_size),
            (d.num_hidden_layers, d.num_attention_heads, d.num_key_value_heads),
            (d.cross_num_attention_heads, d.num_channels, d.vocab_size),
            (c.delay_pattern.clone(), c.eos_token_id, c.pad_token_id, c.bos_token_id),
        )
    };
    assert_eq!(structure(&small), structure(&real));
    assert!(small.decoder_config.hidden_size < real.decoder_config.hidden_size / 10);
}

#[test]
fn a_dac_with_a_missing_weight_g_partner_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(dac_dir().join("dac-metadata.json"), dir.path().join("dac-metadata.json"))
        .unwrap();
    let mut tensors = Tensor::read_safetensors(dac_dir().join("weights-orig.safetensors")).unwrap();
    tensors.retain(|(name, _)| name != "decoder.model.0.weight_v");
    Tensor::write_safetensors(&tensors, dir.path().join("weights-orig.safetensors")).unwrap();
    match Dac::load(dir.path(), Device::Cpu) {
        Err(ModelError::MissingTensor { name, .. }) => assert_eq!(name, "decoder.conv1.weight_v"),
        other => panic!("expected MissingTensor, got {other:?}"),
    }
}

#[test]
fn the_tiny_random_checkpoints_load_through_the_checkpoint_path_and_repeat_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (dia_a, dia_b, dia_c) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("c"));
    models::tiny::write_dia(&dia_a, 7).unwrap();
    models::tiny::write_dia(&dia_b, 7).unwrap();
    models::tiny::write_dia(&dia_c, 8).unwrap();
    let weights = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert_eq!(weights(&dia_a), weights(&dia_b), "the same seed writes the same weights");
    assert_ne!(weights(&dia_a), weights(&dia_c), "another seed, other weights");

    let model = DiaModel::load(&dia_a, Device::Cpu, Kind::Float).expect("tiny Dia loads");
    assert_eq!(model.config, DiaConfig::from_file(&dia_a.join("config.json")).unwrap());
    let encoded = model.encode(&[vec![1, 72, 105]]).unwrap();
    assert_eq!(encoded.states_nxsxd.isfinite().all().int64_value(&[]), 1, "finite encoder output");

    let dac_dir = dir.path().join("dac");
    models::tiny::write_dac(&dac_dir, 7).unwrap();
    let dac = Dac::load(&dac_dir, Device::Cpu).expect("tiny DAC loads");
    let pcm: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.05).sin() * 0.5).collect();
    let codes = dac.encode(&pcm).unwrap();
    assert_eq!(codes.size(), [8, dac.config.n_codebooks]);
    let decoded = dac.decode(&codes).unwrap();
    assert_eq!(decoded.len(), 8 * dac.hop_length() as usize);
    assert!(decoded.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
}
