//! Whisper's two weight layouts load to the same model, and broken checkpoints are errors that
//! name what is wrong.

mod common;

use common::{assert_same, whisper_dir, whisper_weights, write_whisper_transformers_folder, Case};
use models::whisper::{mel, Whisper};
use models::ModelError;
use tch::{Device, Tensor};

#[test]
fn the_transformers_layout_loads_to_the_same_model_as_the_ctranslate2_one() {
    let dir = tempfile::tempdir().unwrap();
    write_whisper_transformers_folder(dir.path());
    let ct2 = Whisper::load(&whisper_weights(), Device::Cpu).unwrap();
    let hf = Whisper::load(dir.path(), Device::Cpu).unwrap();
    assert_eq!(ct2.config, hf.config);
    assert_eq!(hf.config.encoder_layers, 6);
    assert_eq!(hf.config.decoder_attention_heads, 8);

    let case = Case::load(&whisper_dir(), "en_us_175");
    let window = mel::window(case.get("mel"), 0);
    let encoded = hf.encode(&window);
    assert!(encoded.equal(&ct2.encode(&window)), "the same weights give the same encoder output");
    let tokens = hf.greedy(&encoded, "en").unwrap();
    assert_same("tokens", &Tensor::from_slice(&tokens), case.get("tokens"));
}

#[test]
fn a_truncated_model_bin_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let weights = whisper_weights();
    let bytes = std::fs::read(weights.join("model.bin")).unwrap();
    std::fs::write(dir.path().join("model.bin"), &bytes[..bytes.len() / 2]).unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(weights.join(file), dir.path().join(file)).unwrap();
    }
    match Whisper::load(dir.path(), Device::Cpu) {
        Err(ModelError::Checkpoint { path, message }) => {
            assert_eq!(path, dir.path().join("model.bin"));
            assert!(message.contains("truncated"), "{message}");
        }
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_whisper_transformers_folder(dir.path());
    let file = dir.path().join("model.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| name != "model.decoder.layers.3.encoder_attn.v_proj.bias")
        .collect();
    Tensor::write_safetensors(&tensors, &file).unwrap();
    match Whisper::load(dir.path(), Device::Cpu) {
        Err(ModelError::MissingTensor { name, expected }) => {
            assert_eq!(name, "model.decoder.layers.3.encoder_attn.v_proj.bias");
            assert_eq!(expected, [512]);
        }
        other => panic!("expected a missing tensor, got {other:?}"),
    }
}
