//! Decode-step time and operators per step of Dia (random weights), ours beside the reference's
//! (nari-labs/dia, eager PyTorch) on the same config in the same run, with the ratios:
//! - `models/configs/dia-1.6b-0626.json`, the real model: compute and memory traffic;
//! - `models/configs/dia-dispatch-bound.json`, every layer, head and operation of the real model
//!   at tiny widths: the per-operator overhead, which bounds one stream on a GPU.
//!
//! Both run on the CPU in f32 at batch 1, 4 and 16. A step is the whole production step: decoder
//! forward for 2·B CFG rows, CFG, sampling, and the one `[B, 9]` id transfer to the host; times are
//! medians over the timed steps, after warm-up, and beside them the fastest step of each side
//! (its ratio moves less when the machine is shared: a neighbour slows steps, never speeds one).
//! Operators are ATen calls through the dispatcher, nested calls included: ours through libtorch's record-function callbacks (`torch-shim`), the
//! reference's through PyTorch's profiler (`reference_ops.py`), one step each. Where CUDA is
//! present, ours also runs in bf16 at batch 1, 8, 32 and 64.
//!
//! `cargo bench -p benches --bench decode_step`. Environment:
//! - `DIA_REFERENCE_SRC`: a nari-labs/dia checkout at 876125e4; without it the reference is
//!   skipped, with a line saying so.
//! - `DIA_REFERENCE_PYTHONPATH`: where its Python dependencies are (numpy, pydantic,
//!   huggingface_hub); `DIA_REFERENCE_PYTHON`: a Python with torch 2.11 (default `.venv/bin/python`).
//! - `DIA_REFERENCE_TIMER`: the reference's step timer (default `../shared/bench/reference_step.py`
//!   beside the repository).
//! - `DIA_BENCH_CONFIGS` (`1.6b,dispatch-bound`), `DIA_BENCH_BATCHES` (`1,4,16`),
//!   `DIA_BENCH_REPEATS` (1: each repeat runs ours, then the reference, per config),
//!   `DIA_BENCH_STEPS` (timed steps; 6 for 1.6B, 40 for dispatch-bound), `DIA_BENCH_THREADS`
//!   (intra-op threads of both; libtorch's default when unset), `DIA_BENCH_OP_NAMES` (set: also
//!   print our operators of one step by name, most called first).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use models::dia::{BatchLimits, DiaConfig, DiaModel, GenerationRequest, Generator};
use models::sampling::Sampling;
use tch::{Device, Kind};

const TEXT: &str = "[S1] Dia is an open-weights text to dialogue model. [S2] You get full control \
                    over scripts and voices. [S1] Wow. Amazing. (laughs) [S2] Try it now on GitHub.";
/// DAC frames per second of audio.
const FRAMES_PER_SECOND: f64 = proto::SAMPLE_RATE as f64 / proto::SAMPLES_PER_FRAME as f64;
/// Steps before the clock starts; the reference's timer also drops its first two.
const WARMUP: usize = 2;

struct BenchConfig {
    name: &'static str,
    file: &'static str,
    steps: usize,
}

const CONFIGS: [BenchConfig; 2] = [
    BenchConfig { name: "1.6b", file: "dia-1.6b-0626.json", steps: 6 },
    BenchConfig { name: "dispatch-bound", file: "dia-dispatch-bound.json", steps: 40 },
];

/// One batch size's figures.
#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    ms_per_step: f64,
    /// The fastest timed step.
    min_ms: f64,
    ops_per_step: Option<u64>,
}

/// Times `steps` decode steps of `batch` requests after the warm-up and counts the operators of
/// one more.
fn bench(model: &DiaModel, batch: i64, steps: usize) -> Figures {
    // As the node's engine runs its steps.
    let _mode = torch_shim::inference_mode();
    // Room for every step and no more, so the 1.6B caches of batch 16 stay small; nobody
    // finishes inside the window.
    let max_new_tokens = (WARMUP + steps + 3) as i64;
    let limits = BatchLimits {
        max_batch: batch,
        max_positions: Generator::positions_needed(model, 0, max_new_tokens),
        max_text: TEXT.len() as i64,
    };
    let mut generator = Generator::new(model, limits);
    for i in 0..batch {
        let request = GenerationRequest {
            text: TEXT.into(),
            prompt_codes: None,
            sampling: Sampling::default(),
            seed: i as u64,
            max_new_tokens,
        };
        generator.admit(model, vec![request]).expect("admits");
    }
    let sync = || {
        if let Device::Cuda(i) = model.device() {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut times = Vec::with_capacity(steps);
    for i in 0..WARMUP + steps {
        sync();
        let started = Instant::now();
        let out = generator.step(model).expect("steps");
        sync();
        assert!(out.finished.is_empty(), "a request finished inside the timed window");
        if i >= WARMUP {
            times.push(started.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let (_, ops) = torch_shim::count_ops(|| generator.step(model).expect("steps"));
    if std::env::var_os("DIA_BENCH_OP_NAMES").is_some() {
        let (_, names) = torch_shim::count_ops_by_name(|| generator.step(model).expect("steps"));
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        println!("batch {batch}: operators of one step by name");
        for (name, count) in names {
            println!("  {count:>6} {name}");
        }
    }
    Figures {
        ms_per_step: times[times.len() / 2] * 1e3,
        min_ms: times[0] * 1e3,
        ops_per_step: Some(ops),
    }
}

/// Where the reference runs from, if it can.
struct Reference {
    python: PathBuf,
    src: PathBuf,
    timer: PathBuf,
    pythonpath: Option<String>,
}

impl Reference {
    fn from_env(root: &Path) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let src = var("DIA_REFERENCE_SRC").ok_or("DIA_REFERENCE_SRC is not set")?;
        let python = var("DIA_REFERENCE_PYTHON")
            .map_or_else(|| root.join(".venv/bin/python"), PathBuf::from);
        let timer = var("DIA_REFERENCE_TIMER")
            .map_or_else(|| root.join("../shared/bench/reference_step.py"), PathBuf::from);
        for (what, path) in [("DIA_REFERENCE_SRC", Path::new(&src)), ("python", &python)] {
            if !path.exists() {
                return Err(format!("{what} {} does not exist", path.display()));
            }
        }
        if !timer.exists() {
            return Err(format!("the reference's step timer {} does not exist", timer.display()));
        }
        Ok(Self { python, src: src.into(), timer, pythonpath: var("DIA_REFERENCE_PYTHONPATH") })
    }

    /// Runs the reference's timer through `reference_ops.py` on `config` at `batches`.
    fn run(
        &self,
        config: &Path,
        batches: &[i64],
        steps: usize,
        threads: Option<i32>,
    ) -> Result<Vec<Figures>, String> {
        let batch_list: Vec<String> = batches.iter().map(i64::to_string).collect();
        let mut command = Command::new(&self.python);
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("reference_ops.py"))
            .arg(&self.timer)
            .arg(&self.src)
            .arg(config)
            .args(["--batch", &batch_list.join(","), "--steps", &steps.to_string()]);
        if let Some(threads) = threads {
            command.args(["--threads", &threads.to_string()]);
        }
        if let Some(path) = &self.pythonpath {
            command.env("PYTHONPATH", path);
        }
        let output = command.output().map_err(|e| format!("cannot start python: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("the reference failed ({}):\n{stdout}{stderr}", output.status));
        }
        let mut ms = BTreeMap::new();
        let mut ops = BTreeMap::new();
        for line in stdout.lines().filter(|l| l.starts_with('{')) {
            let json: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("{e} in {line}"))?;
            let read = |key: &str, into: &mut BTreeMap<String, f64>| {
                for (batch, v) in json[key].as_object().into_iter().flatten() {
                    into.insert(batch.clone(), v.as_f64().unwrap_or(f64::NAN));
                }
            };
            read("ms_per_step", &mut ms);
            read("ops_per_step", &mut ops);
        }
        // The fastest step is only in the timer's text lines: `… batch  1: … min   15.20 ms, …`.
        let mut min_ms = BTreeMap::new();
        for line in stdout.lines().filter(|l| l.starts_with("reference ")) {
            let batch = line.split("batch").nth(1).and_then(|r| r.split(':').next());
            let min = line.split(" min ").nth(1).and_then(|r| r.split_whitespace().next());
            if let (Some(batch), Some(min)) = (batch, min.and_then(|m| m.parse::<f64>().ok())) {
                min_ms.insert(batch.trim().to_owned(), min);
            }
        }
        batches
            .iter()
            .map(|b| {
                let ms_per_step =
                    *ms.get(&b.to_string()).ok_or(format!("no time for batch {b} in {stdout}"))?;
                let ops_per_step = ops.get(&b.to_string()).map(|&n| n as u64);
                let min_ms = min_ms.get(&b.to_string()).copied().unwrap_or(0.0);
                Ok(Figures { ms_per_step, min_ms, ops_per_step })
            })
            .collect()
    }
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let value = std::env::var(name).unwrap_or_else(|_| default.into());
    value.split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

fn main() {
    let _guard = tch::no_grad_guard();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let names: Vec<String> = env_list("DIA_BENCH_CONFIGS", "1.6b,dispatch-bound");
    let batches: Vec<i64> = env_list("DIA_BENCH_BATCHES", "1,4,16");
    let repeats = env_list::<usize>("DIA_BENCH_REPEATS", "1").first().copied().unwrap_or(1);
    let steps = env_list::<usize>("DIA_BENCH_STEPS", "").first().copied();
    let threads = env_list::<i32>("DIA_BENCH_THREADS", "").first().copied();
    if let Some(threads) = threads {
        tch::set_num_threads(threads);
    }
    let reference = Reference::from_env(&root);
    if let Err(why) = &reference {
        println!("reference skipped: {why}");
    }
    println!("threads: {}", tch::get_num_threads());
    println!(
        "{:<15} {:>5} {:>6} {:>12} {:>12} {:>6} {:>9} {:>9} {:>6} {:>10} {:>10} {:>6}",
        "config",
        "batch",
        "repeat",
        "ours ms/step",
        "ref ms/step",
        "ratio",
        "ours min",
        "ref min",
        "ratio",
        "ours ops",
        "ref ops",
        "ratio"
    );
    for config in CONFIGS.iter().filter(|c| names.iter().any(|n| n == c.name)) {
        let path = root.join("models/configs").join(config.file);
        let dia = DiaConfig::from_file(&path).expect("the config parses");
        let steps = steps.unwrap_or(config.steps);
        for repeat in 1..=repeats {
            // Ours is dropped before the reference starts: two 1.6B models need 13 GB.
            let ours: Vec<Figures> = {
                let model = DiaModel::random(dia.clone(), Device::Cpu, Kind::Float, 0)
                    .expect("random model");
                batches.iter().map(|&b| bench(&model, b, steps)).collect()
            };
            let theirs = match &reference {
                Ok(r) => r.run(&path, &batches, steps, threads).unwrap_or_else(|e| {
                    println!("reference failed: {e}");
                    vec![Figures::default(); batches.len()]
                }),
                Err(_) => vec![Figures::default(); batches.len()],
            };
            for ((batch, ours), theirs) in batches.iter().zip(ours).zip(theirs) {
                print_row(config.name, *batch, repeat, ours, theirs);
            }
        }
    }
    cuda_figures(&root);
}

fn print_row(config: &str, batch: i64, repeat: usize, ours: Figures, theirs: Figures) {
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "-".into()
        }
    };
    let ops = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
    let ops_ratio = match (ours.ops_per_step, theirs.ops_per_step) {
        (Some(a), Some(b)) => ratio(a as f64, b as f64),
        _ => "-".into(),
    };
    let ms = |ms: f64| if ms > 0.0 { format!("{ms:.2}") } else { "-".into() };
    println!(
        "{config:<15} {batch:>5} {repeat:>6} {:>12.2} {:>12} {:>6} {:>9.2} {:>9} {:>6} {:>10} {:>10} {ops_ratio:>6}",
        ours.ms_per_step,
        ms(theirs.ms_per_step),
        ratio(ours.ms_per_step, theirs.ms_per_step),
        ours.min_ms,
        ms(theirs.min_ms),
        ratio(ours.min_ms, theirs.min_ms),
        ops(ours.ops_per_step),
        ops(theirs.ops_per_step),
    );
}

/// Ours on a GPU in bf16, where one is present: frames per second and the realtime factors.
fn cuda_figures(root: &Path) {
    if !tch::Cuda::is_available() {
        println!("CUDA not available: GPU figures skipped");
        return;
    }
    let path = root.join("models/configs/dia-1.6b-0626.json");
    let config = DiaConfig::from_file(&path).expect("the 1.6B config parses");
    let gpu = DiaModel::random(config, Device::Cuda(0), Kind::BFloat16, 0).expect("random model");
    for batch in [1, 8, 32, 64] {
        let figures = bench(&gpu, batch, 200);
        let fps = batch as f64 / figures.ms_per_step * 1e3;
        println!(
            "Cuda(0) bf16 1.6b batch {batch:>2}: {:8.2} ms/step, {fps:8.1} frames/s, {:6.2}x realtime aggregate, {:5.2}x per stream, {} ops/step",
            figures.ms_per_step,
            fps / FRAMES_PER_SECOND,
            fps / FRAMES_PER_SECOND / batch as f64,
            figures.ops_per_step.unwrap_or(0),
        );
    }
}
