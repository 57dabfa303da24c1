//! The node's side of the session against a scripted control plane on a real WebSocket: what
//! its hello and heartbeats say, and what it does when the control plane asks it to drain.

mod common;

use common::dia_node;
use common::fake_nvml::FakeNvml;
use common::scripted::{accept, next, Session};
use futures_util::SinkExt;
use proto::{
    ControlToNode, GpuReadings, Health, Job, Load, NodeToControl, PcmEncoding, RequestId, Sampling,
    SpeechTask, Task, VoicePrompt,
};
use tokio_tungstenite::tungstenite::Message;

fn job(model: &str, seed: u64) -> ControlToNode {
    let task = SpeechTask {
        text: "[S1] Finish this first.".into(),
        sampling: Sampling::default(),
        speed_factor: 1.0,
        max_new_tokens: 256,
        seed,
        voice_prompt: None,
    };
    let job = Job {
        request_id: RequestId::new(),
        attempt: 1,
        model: model.into(),
        task: Task::Speech(task),
    };
    ControlToNode::Submit(job)
}

fn id_of(msg: &ControlToNode) -> RequestId {
    match msg {
        ControlToNode::Submit(job) => job.request_id,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_says_why_it_names_no_gpu_and_heartbeats_carry_the_capacity() {
    let mut serve = dia_node("serve");
    serve.args(["--device", "cpu", "--max-positions", "1100", "--max-batch", "3"]);
    let mut session = Session::join(&mut serve).await;
    assert_eq!(session.hello.gpu, None);
    let reason = session.hello.gpu_unavailable.as_deref();
    assert_eq!(reason, Some("no CUDA device: the node runs on the CPU"));
    assert_eq!(session.hello.capacity, 3);
    // The first heartbeat follows the welcome at once.
    let Some(Ok(NodeToControl::Heartbeat { health, load, gpu })) = next(&mut session.ws).await
    else {
        panic!("expected a heartbeat")
    };
    assert_eq!((health, load.capacity, gpu), (Health::Healthy, 3, None));
    let metrics = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("dia_node_gpu_"), "no GPU, no GPU gauges:\n{metrics}");
}

/// What the GPU said in the heartbeats up to the first one `wanted` accepts (within 30 s).
async fn beat_until(
    session: &mut Session,
    wanted: impl Fn(&Health, &Option<GpuReadings>) -> bool,
) -> (Health, Option<GpuReadings>, Load) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no such heartbeat within 30 s");
        if let Some(Ok(NodeToControl::Heartbeat { health, load, gpu })) =
            next(&mut session.ws).await
        {
            if wanted(&health, &gpu) {
                return (health, gpu, load);
            }
        }
    }
}

fn unhealthy_because(health: &Health, start: &str) -> bool {
    matches!(health, Health::Unhealthy { reason } if reason.starts_with(start))
}

const FREE: u64 = 6 << 30;

fn gpu_state(extra: &str) -> String {
    format!(
        "name NVIDIA-H100-80GB-HBM3\nuuid GPU-5d2f1c3e-0000\ndriver 550.54.15\ncuda 12040\n\
         total 85520809984\nused 2147483648\nfree {FREE}\nutil 97\ntemp 70\nslowdown 87\n\
         power_mw 612500\nlimit_mw 700000\necc 0\n{extra}"
    )
}

/// NVML through a scripted driver library: the node computes on the CPU and reads "GPU 0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gpu_is_named_in_the_hello_read_into_heartbeats_and_metrics_and_its_faults_take_the_node_out(
) {
    let nvml = FakeNvml::build(&gpu_state(""));
    let mut serve = dia_node("serve");
    serve.args(["--device", "cpu", "--max-positions", "1100", "--max-batch", "2"]);
    serve.args(["--memory-budget", "50%"]);
    let mut session = Session::join_beating(nvml.attach(&mut serve), 200).await;
    let gpu = session.hello.gpu.clone().expect("the hello names the GPU");
    assert_eq!(session.hello.gpu_unavailable, None);
    assert_eq!(
        (gpu.name.as_str(), gpu.uuid.as_str(), gpu.memory_total_bytes),
        ("NVIDIA-H100-80GB-HBM3", "GPU-5d2f1c3e-0000", 85_520_809_984)
    );
    assert_eq!((gpu.driver_version.as_str(), gpu.cuda_version.as_str()), ("550.54.15", "12.4"));

    let (health, readings, load) = beat_until(&mut session, |_, g| g.is_some()).await;
    assert_eq!(health, Health::Healthy);
    let r = readings.unwrap();
    assert_eq!(
        (r.utilization_percent, r.temperature_celsius, r.slowdown_temperature_celsius),
        (97, 70, Some(87))
    );
    assert_eq!((r.memory_used_bytes, r.memory_total_bytes), (2 << 30, 85_520_809_984));
    assert_eq!((r.power_watts, r.power_limit_watts), (Some(612.5), Some(700.0)));
    assert_eq!((r.ecc_uncorrected_errors, r.xid_errors, r.last_xid), (Some(0), 0, None));
    assert_eq!(load.gpu_memory_used_bytes, Some(2 << 30));

    // The budget is a share of what NVML said was free once the model had loaded.
    let metrics = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("dia_node_memory_budget_bytes"), (FREE / 2) as f64);
    assert_eq!(value("dia_node_gpu_temperature_celsius"), 70.0);
    assert_eq!(value("dia_node_gpu_utilization_ratio"), 0.97);
    assert_eq!(value("dia_node_gpu_power_watts"), 612.5);
    assert_eq!(value("dia_node_gpu_memory_total_bytes"), 85_520_809_984.0);
    assert_eq!(value("dia_node_gpu_healthy"), 1.0);

    // Heat at the slowdown threshold takes the node out while it lasts.
    nvml.set(&gpu_state("temp 87\n"));
    let (_, r, _) = beat_until(&mut session, |h, _| unhealthy_because(h, "GPU at 87 °C")).await;
    assert_eq!(r.map(|r| r.temperature_celsius), Some(87));
    nvml.set(&gpu_state("temp 80\n"));
    beat_until(&mut session, |h, _| *h == Health::Healthy).await;

    // A failed query too: no readings then, and the reason.
    nvml.set(&gpu_state("fail 1\n"));
    let (_, r, _) =
        beat_until(&mut session, |h, _| unhealthy_because(h, "NVML query failed")).await;
    assert_eq!(r, None);
    nvml.set(&gpu_state(""));
    beat_until(&mut session, |h, _| *h == Health::Healthy).await;

    // An uncorrectable ECC error, while the driver counts it.
    nvml.set(&gpu_state("ecc 1\n"));
    beat_until(&mut session, |h, _| unhealthy_because(h, "1 uncorrectable ECC error")).await;
    nvml.set(&gpu_state(""));
    beat_until(&mut session, |h, _| *h == Health::Healthy).await;

    // An application's XID is counted and changes nothing; a critical one takes the node out
    // for good.
    nvml.set(&gpu_state("xids 1\nxid 13\n"));
    let (health, _, _) =
        beat_until(&mut session, |_, g| g.as_ref().is_some_and(|g| g.xid_errors == 1)).await;
    assert_eq!(health, Health::Healthy);
    nvml.set(&gpu_state("xids 2\nxid 79\n"));
    let critical = "critical XID error 79: the GPU needs a reset and the node a restart";
    let (_, r, _) = beat_until(&mut session, |h, _| unhealthy_because(h, critical)).await;
    assert_eq!(r.map(|r| (r.xid_errors, r.last_xid)), Some((2, Some(79))));
    nvml.set(&gpu_state("xids 2\nxid 79\n"));
    for _ in 0..5 {
        let (health, _, _) = beat_until(&mut session, |_, _| true).await;
        assert!(unhealthy_because(&health, critical), "{health:?}");
    }
    let metrics = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("dia_node_gpu_xid_errors_total 2"), "{metrics}");
    assert!(metrics.contains("dia_node_gpu_healthy 0"), "{metrics}");
    assert!(metrics.contains("dia_node_healthy 0"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_driver_library_the_node_says_why_and_serves() {
    let mut serve = dia_node("serve");
    serve.args(["--device", "cpu", "--max-positions", "1100", "--gpu", "0"]);
    serve.args(["--nvml-library", "/nonexistent/libnvidia-ml.so.1"]);
    let mut session = Session::join(&mut serve).await;
    let reason = session.hello.gpu_unavailable.clone().unwrap();
    assert!(reason.starts_with("NVML could not be loaded"), "{reason}");
    assert_eq!(session.hello.gpu, None);
    let model = session.hello.models[0].id.clone();
    session.send(&job(&model, 3)).await;
    loop {
        match session.next_job_message().await {
            Some(Ok(NodeToControl::Finished(_))) => break,
            Some(Ok(NodeToControl::Failed { error, .. })) => panic!("{error:?}"),
            None => panic!("session closed"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_from_the_control_plane_finishes_the_jobs_in_hand_then_the_node_dials_again() {
    let mut session = Session::join(dia_node("serve").args(["--max-positions", "1100"])).await;
    let model = session.hello.models[0].id.clone();
    let (first, late) = (job(&model, 1), job(&model, 2));
    session.send(&first).await;
    session.send(&ControlToNode::Drain).await;
    session.send(&late).await;

    let (mut unhealthy, mut late_refused, mut audio, mut finished) = (false, false, 0, false);
    while let Some(msg) = next(&mut session.ws).await {
        match msg {
            Ok(NodeToControl::Heartbeat { health: Health::Unhealthy { reason }, load, .. }) => {
                unhealthy = reason == "draining" && load.capacity == 0;
            }
            Ok(NodeToControl::Failed { request_id, retryable, .. }) => {
                assert_eq!(request_id, id_of(&late), "only the late job is handed back");
                late_refused = retryable;
            }
            Ok(NodeToControl::Finished(f)) => {
                assert_eq!(f.request_id, id_of(&first));
                finished = true;
            }
            Err(id) => {
                assert_eq!(id, id_of(&first));
                audio += 1;
            }
            Ok(_) => {}
        }
    }
    assert!(unhealthy, "a draining node reports itself unhealthy, taking nothing");
    assert!(late_refused, "a job sent after the drain goes back, retryable");
    assert!(audio > 0 && finished, "the job in hand is delivered before the session closes");

    // Unlike SIGTERM, a drain asked by the control plane ends the session, not the node.
    let mut again = accept(&session.listener).await;
    assert!(matches!(next(&mut again).await, Some(Ok(NodeToControl::Hello(_)))));
    assert!(session.node.try_wait().unwrap().is_none(), "the node is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_control_plane_costs_single_jobs_never_the_session() {
    let mut serve = dia_node("serve");
    serve.args(["--device", "cpu", "--max-positions", "1100", "--max-batch", "2"]);
    let mut session = Session::join(&mut serve).await;
    let model = session.hello.models[0].id.clone();
    // Not a control message at all, and a submit of a task kind this node cannot read.
    session.ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let unknown = RequestId::new();
    let submit = serde_json::json!({"type": "submit", "request_id": unknown, "attempt": 1,
                                    "model": model, "task": {"kind": "teleport"}});
    session.ws.send(Message::text(submit.to_string())).await.unwrap();
    // Three jobs for two slots; then the first again, as the control plane's second attempt.
    let (first, second, third) = (job(&model, 1), job(&model, 2), job(&model, 3));
    for j in [&first, &second, &third] {
        session.send(j).await;
    }
    let ControlToNode::Submit(mut retry) = first.clone() else { unreachable!() };
    retry.attempt = 2;
    session.send(&ControlToNode::Submit(retry)).await;

    let mut finished = Vec::new();
    let mut failed = Vec::new();
    while finished.len() < 2 {
        match session.next_job_message().await.expect("the session stays open") {
            Ok(NodeToControl::Finished(f)) => finished.push((f.request_id, f.attempt)),
            Ok(NodeToControl::Failed { request_id, attempt, retryable, error }) => {
                failed.push((request_id, attempt, retryable, error.message))
            }
            Ok(NodeToControl::Progress { request_id, attempt, .. }) => {
                assert!(request_id != id_of(&first) || attempt == 2, "progress of a stale attempt")
            }
            _ => {}
        }
    }
    finished.sort();
    let mut expected = [(id_of(&first), 2), (id_of(&second), 1)];
    expected.sort();
    assert_eq!(finished, expected, "the first job's new attempt replaced its old one");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!((failed[0].0, failed[0].1, failed[0].2), (unknown, 1, false));
    assert!(failed[0].3.starts_with("the node cannot read this message"), "{failed:?}");
    assert_eq!((failed[1].0, failed[1].1, failed[1].2), (id_of(&third), 1, true));
    assert_eq!(failed[1].3, "the node already runs as many jobs as it takes (2)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_hands_back_a_job_still_waiting_for_its_voice_prompt() {
    let mut session = Session::join(dia_node("serve").args(["--max-positions", "1100"])).await;
    let model = session.hello.models[0].id.clone();
    let ControlToNode::Submit(mut cloning) = job(&model, 1) else { unreachable!() };
    let Task::Speech(task) = &mut cloning.task else { unreachable!() };
    task.voice_prompt = Some(VoicePrompt {
        samples: 44_100,
        encoding: PcmEncoding::F32Le,
        sha256: "ab".repeat(32),
    });
    let id = cloning.request_id;
    session.send(&ControlToNode::Submit(cloning)).await;
    match session.next_job_message().await {
        Some(Ok(NodeToControl::NeedVoicePrompt { request_id, attempt })) => {
            assert_eq!((request_id, attempt), (id, 1))
        }
        other => panic!("expected the node to ask for the voice prompt, got {other:?}"),
    }
    // The prompt never comes; the control plane's replica goes away.
    session.send(&ControlToNode::Drain).await;
    let mut handed_back = false;
    while let Some(msg) = session.next_job_message().await {
        if let Ok(NodeToControl::Failed { request_id, retryable, error, .. }) = msg {
            assert_eq!((request_id, retryable), (id, true));
            assert_eq!(error.message, "the node is draining");
            handed_back = true;
        }
    }
    assert!(handed_back, "the waiting job goes back, retryable, and the drain ends the session");
}

/// Bytes of one request's slot, from the checkpoint's config: two rows (CFG) of f32
/// self-attention K/V over `positions` and cross-attention K/V over the text window, and the
/// text mask.
fn slot_bytes(positions: u64) -> u64 {
    let path = common::fixtures("dia-tiny", "DIA_FIXTURE_DIR").join("config.json");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let (dec, enc) = (&cfg["decoder_config"], &cfg["encoder_config"]);
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    let text = n(enc, "max_position_embeddings");
    let self_kv = 2 * n(dec, "num_key_value_heads") * positions * n(dec, "head_dim");
    let cross_kv = 2 * n(dec, "cross_num_attention_heads") * text * n(dec, "cross_head_dim");
    2 * (n(dec, "num_hidden_layers") * (self_kv + cross_kv) * 4 + text)
}

async fn metric(session: &Session, name: &str) -> f64 {
    let body = reqwest::get(&session.metrics).await.unwrap().text().await.unwrap();
    let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap();
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_sets_the_capacity_and_frames_the_node_advertises() {
    let positions = 1100;
    let slot = slot_bytes(positions);
    let serve = |budget: u64| {
        let mut cmd = dia_node("serve");
        cmd.args(["--max-positions", &positions.to_string(), "--max-batch", "8"])
            .args(["--memory-budget", &budget.to_string()]);
        cmd
    };
    // Two and a half slots: two requests at once, each as long as asked.
    let two = Session::join(&mut serve(slot * 5 / 2)).await;
    let delay = 15; // BOS and the delay tail take positions beside the frames.
    assert_eq!(two.hello.capacity, 2);
    assert_eq!(two.hello.models[0].max_frames as u64, positions - 1 - delay);
    assert_eq!(metric(&two, "dia_node_memory_reserved_bytes").await, (2 * slot) as f64);
    assert_eq!(metric(&two, "dia_node_memory_budget_bytes").await, (slot * 5 / 2) as f64);

    // Less than one full slot: one request, of fewer frames, within the budget.
    let budget = slot_bytes(positions - 50) + 10;
    let short = Session::join(&mut serve(budget)).await;
    let model = &short.hello.models[0];
    assert_eq!(short.hello.capacity, 1);
    assert_eq!(model.max_frames as u64, positions - 1 - delay - 50);
    assert!(model.max_new_tokens <= model.max_frames);
    assert!(metric(&short, "dia_node_memory_reserved_bytes").await <= budget as f64);

    // Not even a second of audio fits: the node says so and does not start.
    let out = serve(slot_bytes(50)).args(["--join-token", "t"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("fits no request"), "{stderr}");
}
