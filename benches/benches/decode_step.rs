//! Decode-step time and frames per second of the full Dia 1.6B configuration (random weights):
//! on CPU in f32 at batch 1 and 4, and on CUDA in bf16 at batch 1, 8, 32 and 64 when a GPU is
//! present. Each step is the whole production step: decoder forward for 2·B CFG rows, CFG,
//! sampling, and the one `[B, 9]` id transfer back to the host.
//!
//! `cargo bench -p benches --bench decode_step`; `DIA_BENCH_STEPS` sets the timed steps.

use std::path::Path;
use std::time::Instant;

use models::dia::{BatchLimits, DiaConfig, DiaModel, GenerationRequest, Generator};
use models::sampling::Sampling;
use tch::{Device, Kind};

const TEXT: &str = "[S1] Dia is an open-weights text to dialogue model. [S2] You get full control \
                    over scripts and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub.";
/// DAC frames per second of audio (44100 / 512).
const FRAMES_PER_SECOND: f64 = 44_100.0 / 512.0;

fn bench(model: &DiaModel, batch: i64, warmup: usize, steps: usize) {
    let limits = BatchLimits { max_batch: batch, max_positions: 2048, max_text: 256 };
    let mut generator = Generator::new(model, limits);
    for i in 0..batch {
        let request = GenerationRequest {
            text: TEXT.into(),
            prompt_codes: None,
            sampling: Sampling::default(),
            seed: i as u64,
            // Long enough that nobody finishes inside the timed window.
            max_new_tokens: 1900,
        };
        generator.admit(model, vec![request]).expect("admits");
    }
    let sync = || {
        if let Device::Cuda(i) = model.device() {
            tch::Cuda::synchronize(i as i64);
        }
    };
    for _ in 0..warmup {
        generator.step(model).expect("steps");
    }
    sync();
    let started = Instant::now();
    for _ in 0..steps {
        let out = generator.step(model).expect("steps");
        assert!(out.finished.is_empty(), "a request finished inside the timed window");
    }
    sync();
    let per_step = started.elapsed().as_secs_f64() / steps as f64;
    let fps = batch as f64 / per_step;
    println!(
        "{:?} {:?} batch {batch:>2}: {:8.2} ms/step, {fps:8.1} frames/s, {:6.2}x realtime aggregate, {:5.2}x per stream",
        model.device(),
        model.kind(),
        per_step * 1e3,
        fps / FRAMES_PER_SECOND,
        fps / FRAMES_PER_SECOND / batch as f64,
    );
}

fn main() {
    let _guard = tch::no_grad_guard();
    let steps: usize =
        std::env::var("DIA_BENCH_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let config_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/configs/dia-1.6b-0626.json");
    let config = DiaConfig::from_file(&config_path).expect("the 1.6B config parses");

    let cpu = DiaModel::random(config.clone(), Device::Cpu, Kind::Float, 0).expect("random model");
    for batch in [1, 4] {
        bench(&cpu, batch, 2, if steps > 0 { steps } else { 5 });
    }
    drop(cpu);

    if tch::Cuda::is_available() {
        let gpu =
            DiaModel::random(config, Device::Cuda(0), Kind::BFloat16, 0).expect("random model");
        for batch in [1, 8, 32, 64] {
            bench(&gpu, batch, 20, if steps > 0 { steps } else { 200 });
        }
    } else {
        println!("CUDA not available: GPU figures skipped");
    }
}
