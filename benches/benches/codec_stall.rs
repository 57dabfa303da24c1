//! How long a running stream stalls while other requests enter (their voice prompt is encoded)
//! and leave (their codes are decoded to audio): the codec's work beside the decode loop.
//!
//! A real `dia-node serve` (through the node's library) joins a scripted control plane on a real
//! WebSocket, with the tiny random Dia (so that a decode step is short and a stall shows) and a
//! DAC of the real 44.1 kHz codec's size with random weights (so that encoding and decoding take
//! what they take in production). One long generation runs; meanwhile others arrive, each with a
//! new voice prompt, and finish. The stream's progress reports (one per 86 frames) give its
//! pace: the bench prints the median and the longest interval between them, and, for
//! comparison, what the codec's work for one of the other requests takes alone (the time the
//! decode loop would stand still if the codec ran on its thread).
//!
//! `cargo bench -p benches --bench codec_stall`; `CODEC_STALL_GUESTS` (default 3) sets how many
//! requests come and go, `CODEC_STALL_SECONDS` (default 10) their audio and prompt length.

use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use models::dac::Dac;
use proto::frames::f32_le_bytes;
use proto::{
    BinaryFrame, ControlToNode, FrameHeader, Job, NodeToControl, PcmEncoding, RequestId, Sampling,
    SpeechTask, Stream, Task, VoicePrompt, Welcome, PROTOCOL_VERSION, SAMPLES_PER_FRAME,
    SAMPLE_RATE,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The transformers config of `descript/dac_44khz`: the real codec's widths.
const DAC_44KHZ: &str = r#"{
  "model_type": "dac", "encoder_hidden_size": 64, "downsampling_ratios": [2, 4, 8, 8],
  "hidden_size": 1024, "decoder_hidden_size": 1536, "upsampling_ratios": [8, 8, 4, 2],
  "n_codebooks": 9, "codebook_size": 1024, "codebook_dim": 8, "hop_length": 512,
  "sampling_rate": 44100, "quantizer_dropout": 0.0, "commitment_loss_weight": 0.25,
  "codebook_loss_weight": 1.0
}"#;
const FRAMES_PER_SECOND: f64 = SAMPLE_RATE as f64 / SAMPLES_PER_FRAME as f64;

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A deterministic noisy signal, as a prompt the codec has not seen.
fn prompt_pcm(seconds: f64, seed: u32) -> Vec<f32> {
    let n = (seconds * f64::from(SAMPLE_RATE)) as usize;
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32) - 0.5)
        .collect()
}

fn job(model: &str, frames: u32, prompt: Option<&[f32]>, seed: u64) -> Job {
    let voice_prompt = prompt.map(|pcm| VoicePrompt {
        samples: pcm.len() as u64,
        encoding: PcmEncoding::F32Le,
        sha256: proto::sha256_hex(&f32_le_bytes(pcm)),
    });
    let text =
        if prompt.is_some() { "[S1] A voice. [S1] Hello there." } else { "[S1] Keep talking." };
    let task = SpeechTask {
        text: text.into(),
        sampling: Sampling::default(),
        speed_factor: 1.0,
        max_new_tokens: frames,
        seed,
        voice_prompt,
    };
    Job { request_id: RequestId::new(), attempt: 1, model: model.into(), task: Task::Speech(task) }
}

async fn send(ws: &mut Ws, msg: &ControlToNode) {
    ws.send(Message::text(serde_json::to_string(msg).unwrap())).await.unwrap();
}

/// The voice prompt's audio, which the node asks for when it holds no codes for its hash.
async fn send_prompt(ws: &mut Ws, job: &Job, pcm: &[f32]) {
    let header = FrameHeader {
        request_id: job.request_id,
        attempt: job.attempt,
        stream: Stream::VoicePrompt,
        chunk: 0,
        encoding: PcmEncoding::F32Le,
    };
    let frame = BinaryFrame { header, payload: f32_le_bytes(pcm) };
    ws.send(Message::Binary(frame.encode().into())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Option<NodeToControl> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg.unwrap() {
            return Some(serde_json::from_str(&t).unwrap());
        }
    }
    None
}

fn codec_alone(dac_dir: &Path, seconds: f64) -> (f64, f64) {
    let dac = Dac::load(dac_dir, tch::Device::Cpu).unwrap();
    let pcm = prompt_pcm(seconds, 99);
    let started = Instant::now();
    let codes = dac.encode(&pcm).unwrap();
    let encode = started.elapsed().as_secs_f64();
    let started = Instant::now();
    dac.decode(&codes).unwrap();
    (encode, started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let guests: usize = env_or("CODEC_STALL_GUESTS", 3);
    let seconds: f64 = env_or("CODEC_STALL_SECONDS", 10.0);
    let dir = tempfile::tempdir().unwrap();
    let (dia, dac) = (dir.path().join("dia"), dir.path().join("dac"));
    models::tiny::write_dia(&dia, 1).unwrap();
    models::tiny::write_random_dac(&dac, DAC_44KHZ, 7).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/nodes/connect", listener.local_addr().unwrap());
    let guest_frames = (seconds * FRAMES_PER_SECOND) as u32;
    let host_frames = 4 * guest_frames * guests as u32;
    let positions = (host_frames + 64).max(2 * guest_frames + 64).to_string();
    let args = [
        "dia-node",
        "serve",
        "--device",
        "cpu",
        "--control-plane",
        &url,
        "--join-token",
        "t",
        "--metrics-addr",
        "127.0.0.1:0",
        "--max-batch",
        "4",
        "--max-positions",
        &positions,
        "--weights",
        dia.to_str().unwrap(),
        "--dac",
        dac.to_str().unwrap(),
    ];
    let cli = node::Cli::parse_from(args);
    std::thread::spawn(move || node::run(cli));

    let (stream, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
    let Some(NodeToControl::Hello(hello)) = next(&mut ws).await else { panic!("hello first") };
    let welcome = Welcome { protocol_version: PROTOCOL_VERSION, heartbeat_interval_ms: 60_000 };
    send(&mut ws, &ControlToNode::Welcome(welcome)).await;
    let model = hello.models[0].id.clone();

    // Greedy sampling keeps the long stream from ending early on an end-of-speech draw.
    let mut host = job(&model, host_frames, None, 1);
    if let Task::Speech(t) = &mut host.task {
        t.sampling.temperature = 0.0;
    }
    send(&mut ws, &ControlToNode::Submit(host.clone())).await;
    let mut prompts = std::collections::HashMap::new();
    let mut reports = Vec::new();
    let (mut sent, mut done, mut host_done) = (0, 0, false);
    let mut guest_window: Option<(Instant, Instant)> = None;
    while !(host_done && done == guests) {
        match next(&mut ws).await.expect("the node stays") {
            NodeToControl::Progress { request_id, .. } if request_id == host.request_id => {
                reports.push(Instant::now());
                // A guest at every other report after the first two, until all are in.
                if reports.len() >= 2 && reports.len() % 2 == 0 && sent < guests {
                    let pcm = prompt_pcm(seconds, sent as u32);
                    let guest = job(&model, guest_frames, Some(&pcm), 100 + sent as u64);
                    send(&mut ws, &ControlToNode::Submit(guest.clone())).await;
                    prompts.insert(guest.request_id, (guest, pcm));
                    guest_window.get_or_insert((Instant::now(), Instant::now()));
                    sent += 1;
                }
            }
            NodeToControl::NeedVoicePrompt { request_id, .. } => {
                let (guest, pcm) = &prompts[&request_id];
                send_prompt(&mut ws, guest, pcm).await;
            }
            NodeToControl::Finished(f) if f.request_id == host.request_id => {
                host_done = true;
                assert_eq!(
                    sent, guests,
                    "the host stream ended ({} samples) before the guests came",
                    f.samples
                );
            }
            NodeToControl::Finished(_) => {
                done += 1;
                if let Some(w) = guest_window.as_mut() {
                    w.1 = Instant::now();
                }
            }
            NodeToControl::Failed { error, .. } => panic!("a job failed: {}", error.message),
            _ => {}
        }
    }
    let mut gaps: Vec<f64> = reports.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    let (start, end) = guest_window.expect("guests came");
    let during: Vec<f64> = reports
        .windows(2)
        .filter(|w| w[1] > start && w[0] < end + Duration::from_millis(1))
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    let longest_during = during.iter().copied().fold(0.0, f64::max);
    let (encode, decode) = codec_alone(&dac, seconds);
    println!(
        "host stream: {} progress intervals of 86 frames: median {:.3} s, longest {:.3} s; \
         longest while {guests} guests ({seconds} s prompt, {seconds} s audio each) came and \
         went: {:.3} s",
        gaps.len(),
        gaps[gaps.len() / 2],
        gaps.last().copied().unwrap_or(0.0),
        longest_during,
    );
    println!(
        "the codec alone, one guest: encode {encode:.3} s, decode {decode:.3} s: on the decode \
         thread each guest would stop every stream for {:.3} s",
        encode + decode
    );
}
