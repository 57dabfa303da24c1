//! `dia-node synth` end to end on the fixture weights, through the real binary.

mod common;

use common::{dia_node, fixtures};

fn synth(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    dia_node("synth").arg("--out").arg(out).args(extra).output().expect("dia-node runs")
}

#[test]
fn synth_writes_a_wav_of_the_generated_length_and_a_seed_repeats_it() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--text", "[S1] Hello there. [S2] Hi!", "--seed", "11", "--max-new-tokens", "40"];
    let (a, b) = (dir.path().join("a.wav"), dir.path().join("b.wav"));
    for out in [&a, &b] {
        let run = synth(out, &args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stderr).contains("realtime factor"));
    }
    let wav = hound::WavReader::open(&a).unwrap();
    assert_eq!(wav.spec().sample_rate, 44_100);
    assert_eq!(wav.spec().bits_per_sample, 16);
    assert!(
        wav.len() > 0 && wav.len() <= 40 * 512 && wav.len() % 512 == 0,
        "{} samples",
        wav.len()
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same seed, same audio");
}

#[test]
fn synth_clones_from_a_prompt_wav_and_refuses_bad_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = fixtures("dia-tiny", "DIA_FIXTURE_DIR").join("cases/prompt_load_0.wav");
    let clone = [
        "--text",
        "[S1] Cloned.",
        "--prompt-audio",
        prompt.to_str().unwrap(),
        "--prompt-transcript",
        "[S1] words",
        "--max-new-tokens",
        "30",
        "--seed",
        "5",
    ];
    let mut lengths = Vec::new();
    for (name, speed) in [("c.wav", "1.0"), ("d.wav", "0.5")] {
        let out = dir.path().join(name);
        let run = synth(&out, &[&clone[..], &["--speed-factor", speed]].concat());
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        lengths.push(hound::WavReader::open(&out).unwrap().len());
    }
    assert!(lengths[0] > 0 && lengths[0] <= 30 * 512);
    assert_eq!(lengths[1], 2 * lengths[0], "half speed doubles the length");

    let run = synth(&dir.path().join("d.wav"), &["--text", "[S2] opens with S2"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("[S2]"));
}

#[test]
fn synth_runs_the_tiny_random_model_it_makes_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("noise.wav");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dia-node"))
        .args(["synth", "--weights", "tiny-random", "--dac", "tiny-random", "--device", "cpu"])
        .args(["--text", "[S1] Anything.", "--seed", "2", "--max-new-tokens", "20", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("dia-tiny-random loaded"), "{stderr}");
    let wav = hound::WavReader::open(&out).unwrap();
    assert!(wav.len() > 0 && wav.len() <= 20 * 512, "{} samples", wav.len());
}
