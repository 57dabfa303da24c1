//! Whisper base for the transcription tests: the real weights, and the fixture clips with what
//! faster-whisper made of them (`WHISPER_FIXTURE_DIR`, default `fixtures/whisper-base`).

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::path::PathBuf;

use super::fixtures;

/// The real weights: `WHISPER_WEIGHTS`, else the CTranslate2 folder that scripts/setup.sh
/// assembles, `.venv/whisper-base-ct2`.
pub fn weights() -> PathBuf {
    let dir = std::env::var("WHISPER_WEIGHTS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/whisper-base-ct2")
    });
    assert!(
        dir.join("model.bin").exists() || dir.join("model.safetensors").exists(),
        "no Whisper weights in {}: run scripts/setup.sh or set WHISPER_WEIGHTS",
        dir.display()
    );
    dir
}

/// A fixture clip as the control plane sends it: mono f32 at 44.1 kHz (resampled, then the
/// channels averaged).
pub fn clip(name: &str) -> Vec<f32> {
    let wav = fixtures("whisper-base", "WHISPER_FIXTURE_DIR").join(format!("{name}.wav"));
    let pcm = models::audio::load_prompt_wav(&wav).expect("fixture clip");
    Vec::<f32>::try_from(pcm).unwrap()
}

/// What faster-whisper transcribed from a fixture clip (`cases/<name>.json`).
pub fn transcript(name: &str) -> String {
    let dir = fixtures("whisper-base", "WHISPER_FIXTURE_DIR");
    let json = std::fs::read_to_string(dir.join("cases").join(format!("{name}.json"))).unwrap();
    let case: serde_json::Value = serde_json::from_str(&json).unwrap();
    case["transcript"].as_str().unwrap().trim().to_owned()
}
