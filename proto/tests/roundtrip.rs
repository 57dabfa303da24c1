//! Golden JSON: the wire format of each message is pinned by a fixture and survives a round trip.

use proto::{ControlToNode, ErrorKind, Health, NodeToControl, Task, PROTOCOL_VERSION};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let json = fixture(name);
    let message: T = serde_json::from_value(json.clone()).unwrap();
    // Through a string: f32 fields print as written ("0.95"), while to_value would widen them.
    let back: Value = serde_json::from_str(&serde_json::to_string(&message).unwrap()).unwrap();
    assert_eq!(back, json, "{name} does not round-trip");
    message
}

#[test]
fn a_submit_carries_the_whole_speech_task() {
    let ControlToNode::Submit(job) = golden::<ControlToNode>("submit.json") else {
        panic!("not a submit")
    };
    assert_eq!(job.task.feature(), proto::FEATURE_VOICE_CLONING);
    // The voice prompt is sent when the node asks for it, not after the submit.
    assert_eq!(job.task.attached_audio(), None);
    let Task::Speech(task) = job.task else { panic!("not speech") };
    assert_eq!(task.seed, 42);
    assert_eq!(task.sampling, proto::Sampling::default());
    let prompt = task.voice_prompt.unwrap();
    assert_eq!((prompt.samples, prompt.sha256.len()), (132_300, 64));
}

#[test]
fn a_hello_names_models_features_and_capacity() {
    let NodeToControl::Hello(hello) = golden::<NodeToControl>("hello.json") else {
        panic!("not a hello")
    };
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.models[0].features, [proto::FEATURE_VOICE_CLONING]);
    assert!(hello.models[0].languages.is_empty());
    assert_eq!(hello.models[1].features, [proto::FEATURE_TRANSCRIPTION]);
    assert_eq!(hello.models[1].languages, ["en", "de"]);
    let gpu = hello.gpu.unwrap();
    assert_eq!(
        (gpu.name.as_str(), gpu.memory_total_bytes),
        ("NVIDIA H100 80GB HBM3", 85_520_809_984)
    );
    assert_eq!((gpu.driver_version.as_str(), gpu.cuda_version.as_str()), ("550.54.15", "12.4"));
    assert!(gpu.uuid.starts_with("GPU-"));
    assert_eq!(hello.gpu_unavailable, None);
}

#[test]
fn a_hello_without_a_gpu_says_why_and_sends_no_gpu_field() {
    // The round trip checks that neither `gpu: null` nor an empty reason is written.
    let NodeToControl::Hello(hello) = golden::<NodeToControl>("hello_without_gpu.json") else {
        panic!("not a hello")
    };
    assert_eq!(hello.gpu, None);
    assert_eq!(hello.gpu_unavailable.as_deref(), Some("no CUDA device: the node runs on the CPU"));
}

#[test]
fn a_gpu_of_the_old_free_form_text_is_not_read_as_one() {
    let mut old = fixture("hello.json");
    old["gpu"] = "NVIDIA H100 80GB, driver 550".into();
    let error = serde_json::from_value::<NodeToControl>(old).unwrap_err().to_string();
    assert!(error.contains("expected struct GpuInfo"), "{error}");
}

#[test]
fn a_transcription_submit_announces_its_clip_and_optional_language() {
    let ControlToNode::Submit(job) = golden::<ControlToNode>("submit_transcription.json") else {
        panic!("not a submit")
    };
    assert_eq!(job.task.feature(), proto::FEATURE_TRANSCRIPTION);
    let (stream, clip) = job.task.attached_audio().unwrap();
    assert_eq!((stream, clip.samples), (proto::Stream::Clip, 441_000));
    let Task::Transcription(task) = job.task else { panic!("not a transcription") };
    assert_eq!(task.language, None);
}

#[test]
fn a_finished_transcription_carries_its_text_and_no_audio() {
    let NodeToControl::Finished(done) = golden::<NodeToControl>("finished_transcription.json")
    else {
        panic!("not finished")
    };
    assert_eq!(done.samples, 0);
    let transcript = done.transcript.unwrap();
    assert_eq!((transcript.text.as_str(), transcript.language.as_str()), ("Hello there.", "en"));
}

#[test]
fn a_heartbeat_carries_health_load_and_gpu_readings() {
    let NodeToControl::Heartbeat { health, load, gpu } = golden::<NodeToControl>("heartbeat.json")
    else {
        panic!("not a heartbeat")
    };
    assert_eq!(health, Health::Unhealthy { reason: "XID 79".into() });
    assert_eq!((load.active, load.capacity), (3, 0));
    let gpu = gpu.expect("readings");
    assert_eq!((gpu.temperature_celsius, gpu.slowdown_temperature_celsius), (71, Some(87)));
    assert_eq!((gpu.power_watts, gpu.xid_errors, gpu.last_xid), (Some(612.5), 1, Some(79)));
}

#[test]
fn a_heartbeat_of_a_node_without_gpu_readings_is_read() {
    let json = r#"{"type": "heartbeat", "health": {"status": "healthy"},
                   "load": {"active": 0, "queued": 0, "capacity": 2}}"#;
    let msg: NodeToControl = serde_json::from_str(json).unwrap();
    assert!(matches!(msg, NodeToControl::Heartbeat { gpu: None, .. }), "{msg:?}");
}

#[test]
fn a_heartbeat_without_its_capacity_is_not_read() {
    let json = r#"{"type": "heartbeat", "health": {"status": "healthy"},
                   "load": {"active": 0, "queued": 0, "gpu_memory_used_bytes": null}}"#;
    let error = serde_json::from_str::<NodeToControl>(json).unwrap_err().to_string();
    assert!(error.contains("missing field `capacity`"), "{error}");
}

#[test]
fn a_failure_carries_an_api_error_type_and_the_retryable_flag() {
    let NodeToControl::Failed { error, retryable, .. } = golden::<NodeToControl>("failed.json")
    else {
        panic!("not a failure")
    };
    assert_eq!(error.kind, ErrorKind::UpstreamError);
    assert!(retryable);
}

#[test]
fn a_finished_message_counts_the_samples_sent() {
    let NodeToControl::Finished(done) = golden::<NodeToControl>("finished.json") else {
        panic!("not finished")
    };
    assert_eq!(done.samples, 88_200);
    assert_eq!(done.transcript, None);
}

#[test]
fn control_messages_without_payload_are_just_a_type() {
    assert_eq!(
        serde_json::to_value(ControlToNode::Drain).unwrap(),
        serde_json::json!({"type": "drain"})
    );
}

#[test]
fn a_node_asks_for_a_voice_prompt_by_job() {
    let json = r#"{"type": "need_voice_prompt", "request_id": "6f1c2a3e-9d2b-4c1e-8f00-0a1b2c3d4e5f", "attempt": 2}"#;
    let msg: NodeToControl = serde_json::from_str(json).unwrap();
    assert!(matches!(msg, NodeToControl::NeedVoicePrompt { attempt: 2, .. }), "{msg:?}");
}
