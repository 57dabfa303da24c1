//! `dia-node synth`: one generation end to end, text (and an optional voice prompt) to WAV.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use models::audio;
use models::dac::Dac;
use models::dia::{BatchLimits, DiaModel, GenerationRequest, Generator};
use models::sampling::Sampling;
use proto::audio::{to_i16, wav_i16_bytes};
use proto::SAMPLE_RATE;

use crate::device::{parse_device, parse_dtype};
use crate::weights::CheckpointArgs;

/// Arguments of `synth`; sampling defaults are the public API's.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The dialogue script, `[S1] … [S2] …`.
    #[arg(long)]
    pub text: String,
    /// Where to write the 16-bit WAV.
    #[arg(long)]
    pub out: PathBuf,
    /// A WAV of the voice(s) to clone.
    #[arg(long, requires = "prompt_transcript")]
    pub prompt_audio: Option<PathBuf>,
    /// What is said in the prompt audio, tagged `[S1] …`; Dia needs it to clone.
    #[arg(long, requires = "prompt_audio")]
    pub prompt_transcript: Option<String>,
    #[command(flatten)]
    pub checkpoints: CheckpointArgs,
    /// cpu, cuda, cuda:N, or auto (CUDA where libtorch sees a GPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Random seed; omitted, one is drawn and printed so the run can be repeated.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Bound on generated audio frames (86 per second), prompt excluded.
    #[arg(long, default_value_t = 3072, value_parser = clap::value_parser!(i64).range(1..=4096))]
    pub max_new_tokens: i64,
    #[arg(long, default_value_t = Sampling::default().cfg_scale)]
    pub cfg_scale: f64,
    /// 0 samples greedily.
    #[arg(long, default_value_t = Sampling::default().temperature)]
    pub temperature: f64,
    #[arg(long, default_value_t = Sampling::default().top_p)]
    pub top_p: f64,
    #[arg(long, default_value_t = Sampling::default().top_k)]
    pub cfg_filter_top_k: i64,
    /// Playback speed of the result (changes pitch too, as in the reference app).
    #[arg(long, default_value_t = 1.0)]
    pub speed_factor: f64,
}

/// Runs one generation and writes the WAV.
pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let _guard = tch::no_grad_guard();
    let device = parse_device(&args.device)?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let script = proto::script::Script::parse(&args.text)?;

    let started = Instant::now();
    let checkpoints = args.checkpoints.resolve()?;
    let model = DiaModel::load(&checkpoints.dia, device, kind).context("loading Dia")?;
    let dac = Dac::load(&checkpoints.dac, device).context("loading the DAC")?;
    eprintln!(
        "{} loaded in {:.1?} on {device:?} ({kind:?})",
        checkpoints.model_id,
        started.elapsed()
    );
    let _mode = torch_shim::inference_mode();

    let (text, prompt_codes) = match (&args.prompt_audio, &args.prompt_transcript) {
        (Some(wav), Some(transcript)) => {
            let pcm = audio::load_prompt_wav(wav)?;
            let codes = dac.encode(&Vec::<f32>::try_from(pcm)?)?;
            (format!("{}\n{}", transcript.trim(), script.to_model_text()), Some(codes))
        }
        _ => (script.to_model_text(), None),
    };
    let prompt_frames = prompt_codes.as_ref().map_or(0, |c| c.size()[0]);
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("seed {seed}");
    let request = GenerationRequest {
        text,
        prompt_codes,
        sampling: Sampling {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.cfg_filter_top_k,
            cfg_scale: args.cfg_scale,
        },
        seed,
        max_new_tokens: args.max_new_tokens,
    };
    let limits = BatchLimits {
        max_batch: 1,
        max_positions: Generator::positions_needed(&model, prompt_frames, args.max_new_tokens),
        max_text: model.config.max_text_len() as i64,
    };
    let mut generator = Generator::new(&model, limits);

    let frame_rate = f64::from(SAMPLE_RATE) / dac.hop_length() as f64;
    let bar = ProgressBar::new(args.max_new_tokens as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} frames {msg}").expect("valid template"),
    );
    let started = Instant::now();
    generator.admit(&model, vec![request])?;
    let finished = loop {
        let mut out = generator.step(&model)?;
        if let Some(f) = out.finished.pop() {
            break f;
        }
        if let Some((_, frames)) = generator.progress().next() {
            let fps = frames as f64 / started.elapsed().as_secs_f64();
            bar.set_position(frames as u64);
            bar.set_message(format!(
                "{:.2} s of audio, {fps:.1} frames/s",
                frames as f64 / frame_rate
            ));
        }
    };
    let generated = started.elapsed();
    bar.finish_and_clear();

    let pcm = dac.decode(&finished.codes_lxc)?;
    let pcm = audio::apply_speed_factor(&pcm, args.speed_factor);
    std::fs::write(&args.out, wav_i16_bytes(&to_i16(&pcm), SAMPLE_RATE))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let seconds = pcm.len() as f64 / f64::from(SAMPLE_RATE);
    let frames = finished.codes_lxc.size()[0];
    eprintln!(
        "{frames} frames ({:?}), {seconds:.2} s of audio in {:.2?}: {:.1} frames/s, realtime factor {:.2}x",
        finished.reason,
        generated,
        frames as f64 / generated.as_secs_f64(),
        seconds / started.elapsed().as_secs_f64(),
    );
    println!("{}", args.out.display());
    Ok(())
}
