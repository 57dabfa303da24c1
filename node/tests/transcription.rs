//! `dia-node serve --whisper`: the `transcription` feature against a scripted control plane, on
//! the real Whisper base weights and the fixture clips (`fixtures/whisper-base`), sent as the
//! control plane sends them: mono f32 at 44.1 kHz, one frame after the submit.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::scripted::Session;
use common::whisper;
use proto::frames::f32_le_bytes;
use proto::{
    Clip, ControlToNode, Finished, Job, NodeToControl, PcmEncoding, RequestId, Sampling,
    SpeechTask, Stream, Task, TranscriptionTask, FEATURE_TRANSCRIPTION, FEATURE_VOICE_CLONING,
};

/// faster-whisper transcribed it exactly; 44.1 kHz stereo, so its mono mix is what the control
/// plane would send, sample for sample what the parity test transcribes.
const STEREO: &str = "en_us_stereo44k";

/// `dia-node serve` with no Dia: `--dac` names nothing, since it is ignored.
fn transcription_only() -> Command {
    let mut node = Command::new(env!("CARGO_BIN_EXE_dia-node"));
    node.args(["serve", "--weights", "none", "--dac", "/nowhere", "--device", "cpu", "--whisper"])
        .arg(whisper::weights());
    node
}

fn transcription(model: &str, clip: &[f32], language: Option<&str>) -> Job {
    let clip = Clip { samples: clip.len() as u64, encoding: PcmEncoding::F32Le };
    let task = TranscriptionTask { clip, language: language.map(Into::into) };
    Job {
        request_id: RequestId::new(),
        attempt: 1,
        model: model.into(),
        task: Task::Transcription(task),
    }
}

fn speech(model: &str) -> Job {
    let task = SpeechTask {
        text: "[S1] Not a clip.".into(),
        sampling: Sampling::default(),
        speed_factor: 1.0,
        max_new_tokens: 256,
        seed: 7,
        voice_prompt: None,
    };
    Job { request_id: RequestId::new(), attempt: 1, model: model.into(), task: Task::Speech(task) }
}

/// How a job ended, as the node said.
#[derive(Debug)]
enum Outcome {
    Finished(Finished),
    Failed { message: String, retryable: bool },
}

/// Reads the session until each of `jobs` has ended; counts audio frames per job on the way.
async fn outcomes(
    session: &mut Session,
    jobs: &[&Job],
) -> (HashMap<RequestId, Outcome>, HashMap<RequestId, usize>) {
    let (mut ended, mut frames) = (HashMap::new(), HashMap::new());
    while ended.len() < jobs.len() {
        let (id, outcome) = match session.next_job_message().await.expect("the session is open") {
            Ok(NodeToControl::Finished(f)) => (f.request_id, Outcome::Finished(f)),
            Ok(NodeToControl::Failed { request_id, error, retryable, .. }) => {
                (request_id, Outcome::Failed { message: error.message, retryable })
            }
            Ok(_) => continue,
            Err(id) => {
                *frames.entry(id).or_insert(0) += 1;
                continue;
            }
        };
        assert!(jobs.iter().any(|j| j.request_id == id), "an unknown job ended: {outcome:?}");
        assert!(ended.insert(id, outcome).is_none(), "a job ended twice");
    }
    (ended, frames)
}

/// The transcript of a job that finished as a transcription.
fn transcript_of(ended: &HashMap<RequestId, Outcome>, job: &Job) -> (String, String) {
    match &ended[&job.request_id] {
        Outcome::Finished(f) => {
            assert_eq!(f.samples, 0, "a transcription sends no audio");
            let t = f.transcript.clone().expect("a transcription finishes with its transcript");
            (t.text, t.language)
        }
        other => panic!("the transcription did not finish: {other:?}"),
    }
}

/// `(message, retryable)` of a job that failed.
fn failure_of(ended: &HashMap<RequestId, Outcome>, job: &Job) -> (String, bool) {
    match &ended[&job.request_id] {
        Outcome::Failed { message, retryable } => (message.clone(), *retryable),
        other => panic!("the job did not fail: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_only_node_advertises_whisper_alone_and_transcribes_a_clip_as_faster_whisper_did(
) {
    let mut session = Session::join(&mut transcription_only()).await;
    let [model] = &session.hello.models[..] else {
        panic!("one model: {:?}", session.hello.models)
    };
    let folder = whisper::weights().canonicalize().unwrap();
    assert_eq!(model.id, folder.file_name().unwrap().to_str().unwrap(), "named for its folder");
    assert_eq!(model.features, [FEATURE_TRANSCRIPTION]);
    assert_eq!(model.languages.len(), 99);
    assert!(["en", "de", "fr"].iter().all(|l| model.languages.iter().any(|m| m == l)));
    assert_eq!((model.max_input_chars, model.max_new_tokens), (0, 0));

    // Drained right after the submit: the session closes only once the transcript is out.
    let clip = whisper::clip(STEREO);
    let job = transcription(&model.id.clone(), &clip, None);
    session.submit(&job, &clip).await;
    session.send(&ControlToNode::Drain).await;
    let (ended, frames) = outcomes(&mut session, &[&job]).await;
    assert_eq!(transcript_of(&ended, &job), (whisper::transcript(STEREO), "en".to_owned()));
    assert!(frames.is_empty(), "no audio frames: {frames:?}");
    assert!(session.next_job_message().await.is_none(), "drained, the session closes");

    let metrics = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("dia_node_transcriptions_total{outcome=\"succeeded\"} 1"),
        "{metrics}"
    );
    let seconds = clip.len() as f64 / 44_100.0;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("dia_node_transcribed_audio_seconds_total "))
        .unwrap();
    let counted: f64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!((counted - seconds).abs() < 1e-6, "{line}, clip of {seconds} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_language_is_used_and_an_unknown_one_fails_for_good() {
    let mut session = Session::join(&mut transcription_only()).await;
    let model = session.hello.models[0].id.clone();
    let clip = whisper::clip("de_150");
    let jobs = [Some("de"), Some("en"), Some("xx")].map(|l| transcription(&model, &clip, l));
    for job in &jobs {
        session.submit(job, &clip).await;
    }
    // Meanwhile: what Whisper itself makes of the same samples in each language.
    let pcm = clip.clone();
    let expected = tokio::task::spawn_blocking(move || {
        let model = models::whisper::Whisper::load(&whisper::weights(), tch::Device::Cpu).unwrap();
        ["de", "en"].map(|l| model.transcribe(&pcm, 44_100, 1, Some(l)).unwrap().text)
    })
    .await
    .unwrap();

    let (ended, _) = outcomes(&mut session, &jobs.each_ref()).await;
    let german = transcript_of(&ended, &jobs[0]);
    let english = transcript_of(&ended, &jobs[1]);
    assert_eq!(german, (expected[0].clone(), "de".to_owned()));
    assert_eq!(english, (expected[1].clone(), "en".to_owned()));
    assert_ne!(german.0, english.0, "the language steers the decoder");
    let (message, retryable) = failure_of(&ended, &jobs[2]);
    assert!(!retryable, "an unknown language fails on every node");
    assert!(message.contains("\"xx\""), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_the_node_does_not_serve_or_whose_clip_frame_is_wrong_fail_alone() {
    let mut session = Session::join(&mut transcription_only()).await;
    let model = session.hello.models[0].id.clone();
    let clip = whisper::clip(STEREO);

    let for_dia = speech(&model);
    session.submit(&for_dia, &[]).await;
    let other_model = transcription("openai/whisper-large-v3", &clip, None);
    session.submit(&other_model, &clip).await;
    let short = transcription(&model, &clip, None);
    session.send(&ControlToNode::Submit(short.clone())).await;
    session.send_frame(&short, Stream::Clip, f32_le_bytes(&clip[1..])).await;
    let wrong_stream = transcription(&model, &clip, None);
    session.send(&ControlToNode::Submit(wrong_stream.clone())).await;
    session.send_frame(&wrong_stream, Stream::VoicePrompt, f32_le_bytes(&clip)).await;
    let frameless = transcription(&model, &clip, None);
    session.send(&ControlToNode::Submit(frameless.clone())).await;
    let fine = transcription(&model, &clip, Some("en"));
    session.submit(&fine, &clip).await;

    let jobs = [&for_dia, &other_model, &short, &wrong_stream, &frameless, &fine];
    let (ended, _) = outcomes(&mut session, &jobs).await;
    for (job, why) in [(&for_dia, "voice-cloning"), (&other_model, "whisper-large-v3")] {
        let (message, retryable) = failure_of(&ended, job);
        assert!(retryable, "another node may serve it: {message}");
        assert!(message.contains(why), "{message}");
    }
    for (job, why) in [(&short, "samples"), (&wrong_stream, "VoicePrompt"), (&frameless, "frame")] {
        let (message, retryable) = failure_of(&ended, job);
        assert!(!retryable, "{message}");
        assert!(message.contains(why), "{message}");
    }
    assert_eq!(transcript_of(&ended, &fine).0, whisper::transcript(STEREO), "the session goes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_clips_are_dropped_running_or_queued_and_never_answered() {
    let mut session = Session::join(&mut transcription_only()).await;
    let model = session.hello.models[0].id.clone();
    let clip = whisper::clip(STEREO);
    let [running, queued, last] = [(); 3].map(|()| transcription(&model, &clip, None));
    for job in [&running, &queued] {
        session.submit(job, &clip).await;
    }
    for job in [&running, &queued] {
        session.send(&ControlToNode::Cancel { request_id: job.request_id }).await;
    }
    session.submit(&last, &clip).await;
    // One clip at a time in arrival order: an answer to the others would come first, and fail
    // as one for an unknown job.
    let (ended, _) = outcomes(&mut session, &[&last]).await;
    assert_eq!(transcript_of(&ended, &last).0, whisper::transcript(STEREO));
    let metrics = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    for series in [
        "dia_node_transcriptions_total{outcome=\"cancelled\"} 2",
        "dia_node_transcriptions_total{outcome=\"succeeded\"} 1",
        "dia_node_transcriptions_active 0",
        "dia_node_transcriptions_queued 0",
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_dia_and_whisper_advertises_both_and_runs_both_kinds_of_job() {
    let mut node = Command::new(env!("CARGO_BIN_EXE_dia-node"));
    node.args(["serve", "--weights", "tiny-random", "--dac", "tiny-random", "--device", "cpu"])
        .args(["--max-positions", "1100", "--whisper"])
        .arg(whisper::weights());
    let mut session = Session::join(&mut node).await;
    let [dia, stt] = &session.hello.models[..] else {
        panic!("two models: {:?}", session.hello.models)
    };
    assert_eq!(
        (dia.id.as_str(), &dia.features[..]),
        ("dia-tiny-random", &[FEATURE_VOICE_CLONING.to_owned()][..])
    );
    assert!(dia.languages.is_empty() && dia.max_new_tokens > 0 && dia.max_input_chars > 0);
    assert_eq!(stt.features, [FEATURE_TRANSCRIPTION]);
    assert!(stt.languages.iter().any(|l| l == "en"));

    let clip = whisper::clip(STEREO);
    let (dia_id, stt_id) = (dia.id.clone(), stt.id.clone());
    let generation = speech(&dia_id);
    let transcribed = transcription(&stt_id, &clip, None);
    let misrouted = transcription(&dia_id, &clip, None);
    for job in [&generation, &transcribed, &misrouted] {
        session.submit(job, &clip).await;
    }
    let (ended, frames) = outcomes(&mut session, &[&generation, &transcribed, &misrouted]).await;
    match &ended[&generation.request_id] {
        Outcome::Finished(f) => assert!(f.samples > 0 && f.transcript.is_none(), "{f:?}"),
        other => panic!("the generation did not finish: {other:?}"),
    }
    assert!(frames[&generation.request_id] > 0, "the generation's audio came in frames");
    assert_eq!(transcript_of(&ended, &transcribed).0, whisper::transcript(STEREO));
    let (message, retryable) = failure_of(&ended, &misrouted);
    assert!(retryable && message.contains("transcription"), "Dia does not transcribe: {message}");
}

#[test]
fn a_node_with_neither_dia_nor_whisper_refuses_to_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_dia-node"))
        .env_remove("WHISPER_WEIGHTS")
        .args(["serve", "--weights", "none", "--join-token", "t"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("nothing to serve"), "{stderr}");
}
