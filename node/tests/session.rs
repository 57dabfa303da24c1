//! The node's side of the session against a scripted control plane on a real WebSocket: what
//! it does when the control plane asks it to drain.

mod common;

use common::dia_node;
use common::scripted::{accept, next, Session};
use proto::{ControlToNode, Health, Job, NodeToControl, RequestId, Sampling, SpeechTask, Task};

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
            Ok(NodeToControl::Heartbeat { health: Health::Unhealthy { reason }, .. }) => {
                unhealthy = reason == "draining";
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
    assert!(unhealthy, "a draining node reports itself unhealthy");
    assert!(late_refused, "a job sent after the drain goes back, retryable");
    assert!(audio > 0 && finished, "the job in hand is delivered before the session closes");

    // Unlike SIGTERM, a drain asked by the control plane ends the session, not the node.
    let mut again = accept(&session.listener).await;
    assert!(matches!(next(&mut again).await, Some(Ok(NodeToControl::Hello(_)))));
    assert!(session.node.try_wait().unwrap().is_none(), "the node is still running");
}
