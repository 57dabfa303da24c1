//! Whisper base transcription time and realtime factor (RTF: seconds spent per second of audio)
//! of a ~10 s clip as a node gets it, mono f32 at 44.1 kHz: the fixture clips
//! (`fixtures/whisper-base`) one after the other, in English. On the CPU, and on CUDA when
//! libtorch sees a GPU. Each run is the whole node path: resampling to 16 kHz, log-mel, the
//! encoder and greedy decoding.
//!
//! `cargo bench -p benches --bench transcribe`; weights from `WHISPER_WEIGHTS` (default
//! `.venv/whisper-base-ct2`, from scripts/setup.sh); `WHISPER_BENCH_RUNS` sets the timed runs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use models::audio::load_prompt_wav;
use models::whisper::Whisper;
use proto::SAMPLE_RATE;
use tch::Device;

const CLIPS: [&str; 3] = ["en_us_175", "en_gb_140", "en_us_f_210"];

fn repo_path(var: &str, default: &str) -> PathBuf {
    std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(default))
}

fn bench(weights: &Path, device: Device, pcm: &[f32], runs: usize) {
    let model = Whisper::load(weights, device).expect("Whisper loads");
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let transcribe = || model.transcribe(pcm, SAMPLE_RATE, 1, Some("en")).expect("transcribes");
    let warm = transcribe();
    sync();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        let out = transcribe();
        sync();
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(out.tokens, warm.tokens, "greedy decoding is deterministic");
    }
    times.sort_by(f64::total_cmp);
    let audio = pcm.len() as f64 / f64::from(SAMPLE_RATE);
    let median = times[times.len() / 2];
    println!(
        "{device:?}: {audio:.2} s of audio in {median:.3} s (median of {runs}, best {:.3} s): \
         RTF {:.4}, {:.1}x realtime, {} tokens",
        times[0],
        median / audio,
        audio / median,
        warm.tokens.len(),
    );
}

fn main() {
    let runs: usize =
        std::env::var("WHISPER_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let weights = repo_path("WHISPER_WEIGHTS", ".venv/whisper-base-ct2");
    let fixtures = repo_path("WHISPER_FIXTURE_DIR", "fixtures/whisper-base");
    let mut pcm = Vec::new();
    for clip in CLIPS {
        let wav = load_prompt_wav(&fixtures.join(format!("{clip}.wav"))).expect("fixture clip");
        pcm.extend(Vec::<f32>::try_from(wav).expect("f32 samples"));
    }

    bench(&weights, Device::Cpu, &pcm, runs);
    if tch::Cuda::is_available() {
        bench(&weights, Device::Cuda(0), &pcm, runs.max(20));
    } else {
        println!("CUDA not available: GPU figures skipped");
    }
}
