//! A scripted node: connects with the real protocol and does what each test tells it.

use futures_util::{SinkExt, StreamExt};
use proto::frames::i16_le_bytes;
use proto::{
    BinaryFrame, ControlToNode, ErrorKind, Finished, FrameHeader, GpuReadings, Health, Hello, Job,
    Load, ModelInfo, NodeId, NodeToControl, WireError, PROTOCOL_VERSION,
};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub const MODEL: &str = "dia-test";

/// A model with the voice-cloning feature.
pub fn cloning_model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        features: vec![proto::FEATURE_VOICE_CLONING.into()],
        max_input_chars: 1024,
        max_new_tokens: 4096,
        max_frames: 7600,
        languages: vec![],
    }
}

/// Opens the node WebSocket with `token` in the `Authorization` header, as `dia-node` does.
pub async fn dial(ws_url: &str, token: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = ws_url.into_client_request()?;
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    Ok(tokio_tungstenite::connect_async_with_config(request, None, true).await?.0)
}

/// A model with the transcription feature, taking English and German.
pub fn stt_model(id: &str) -> ModelInfo {
    ModelInfo {
        id: id.into(),
        features: vec![proto::FEATURE_TRANSCRIPTION.into()],
        max_input_chars: 0,
        max_new_tokens: 0,
        max_frames: 0,
        languages: vec!["en".into(), "de".into()],
    }
}

/// The hello of a scripted node, which reads no GPU.
pub fn hello(id: &str, capacity: u32, models: Vec<ModelInfo>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: NodeId(id.into()),
        models,
        capacity,
        gpu: None,
        gpu_unavailable: Some("a scripted node".into()),
    }
}

/// What [`ScriptedNode::serve`] says it heard in a clip.
pub fn heard(job: &Job) -> String {
    match &job.task {
        proto::Task::Transcription(t) => format!("Heard {} samples.", t.clip.samples),
        other => panic!("not a transcription: {other:?}"),
    }
}

pub struct ScriptedNode {
    pub id: String,
    ws: Ws,
    /// What its hello said it takes; its heartbeats report it unless told otherwise.
    capacity: u32,
    /// What the welcome asked for.
    heartbeat_interval: std::time::Duration,
}

/// A job as received: the submit and its voice prompt, if any.
pub struct Received {
    pub job: Job,
    pub prompt: Option<BinaryFrame>,
}

impl ScriptedNode {
    /// Connects and says hello with one voice-cloning model; waits for the welcome.
    pub async fn connect(ws_url: &str, id: &str, capacity: u32) -> Self {
        Self::connect_with(ws_url, id, capacity, vec![cloning_model(MODEL)]).await
    }

    pub async fn connect_with(
        ws_url: &str,
        id: &str,
        capacity: u32,
        models: Vec<ModelInfo>,
    ) -> Self {
        let hello = hello(id, capacity, models);
        Self::join(ws_url, super::JOIN_TOKEN, hello).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Joins with `token` as `id`, with one voice-cloning model; the refusal when refused.
    pub async fn connect_as(ws_url: &str, token: &str, id: &str) -> Result<Self, String> {
        Self::join(ws_url, token, hello(id, 1, vec![cloning_model(MODEL)])).await
    }

    /// Joins with `token`, saying `hello`; the refusal's message when refused.
    pub async fn join(ws_url: &str, token: &str, hello: Hello) -> Result<Self, String> {
        let mut ws = dial(ws_url, token).await.map_err(|e| e.to_string())?;
        let (id, capacity) = (hello.node_id.0.clone(), hello.capacity);
        let hello = NodeToControl::Hello(hello);
        ws.send(Message::text(serde_json::to_string(&hello).unwrap())).await.unwrap();
        let mut node = Self { id, ws, capacity, heartbeat_interval: Default::default() };
        match node.next_control().await {
            Some(ControlToNode::Welcome(w)) => {
                node.heartbeat_interval = std::time::Duration::from_millis(w.heartbeat_interval_ms);
                Ok(node)
            }
            Some(ControlToNode::Rejected { error }) => Err(error.message),
            other => Err(format!("{other:?}")),
        }
    }

    /// The next control message (binary frames are skipped); `None` when the socket closes.
    pub async fn next_control(&mut self) -> Option<ControlToNode> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits for the next job and its audio: a transcription's clip, or a speech job's voice
    /// prompt, asked for as a node without cached codes does.
    pub async fn next_job(&mut self) -> Received {
        let job = self.next_submit().await;
        let prompt = self.job_audio(&job).await.unwrap_or_else(|e| panic!("{e}"));
        Received { job, prompt }
    }

    /// Waits for the next submit, without asking for its voice prompt (a node holding its codes).
    pub async fn next_submit(&mut self) -> Job {
        match self.next_control().await {
            Some(ControlToNode::Submit(job)) => job,
            other => panic!("expected a submit, got {other:?}"),
        }
    }

    /// Asks for `job`'s voice prompt.
    pub async fn need_voice_prompt(&mut self, job: &Job) {
        let need =
            NodeToControl::NeedVoicePrompt { request_id: job.request_id, attempt: job.attempt };
        self.send(&need).await;
    }

    /// The binary frame `job` comes with: its clip, or its voice prompt once asked for.
    async fn job_audio(&mut self, job: &Job) -> Result<Option<BinaryFrame>, String> {
        let cloning = matches!(&job.task, proto::Task::Speech(s) if s.voice_prompt.is_some());
        if cloning {
            self.need_voice_prompt(job).await;
        } else if job.task.attached_audio().is_none() {
            return Ok(None);
        }
        match self.ws.next().await {
            Some(Ok(Message::Binary(b))) => Ok(Some(BinaryFrame::decode(&b).unwrap())),
            other => Err(format!("expected the job's audio frame, got {other:?}")),
        }
    }

    /// Sends `samples` of audio in two chunks, then `finished`.
    pub async fn complete(&mut self, job: &Job, samples: &[i16]) {
        let (a, b) = samples.split_at(samples.len() / 2);
        for (chunk, part) in [a, b].into_iter().enumerate() {
            self.audio(job, chunk as u32, part).await;
        }
        let done = NodeToControl::Finished(Finished {
            request_id: job.request_id,
            attempt: job.attempt,
            samples: samples.len() as u64,
            inference_seconds: 0.01,
            transcript: None,
        });
        self.send(&done).await;
    }

    /// Finishes a transcription job with `text`.
    pub async fn transcript(&mut self, job: &Job, text: &str, language: &str) {
        let done = NodeToControl::Finished(Finished {
            request_id: job.request_id,
            attempt: job.attempt,
            samples: 0,
            inference_seconds: 0.01,
            transcript: Some(proto::Transcript { text: text.into(), language: language.into() }),
        });
        self.send(&done).await;
    }

    /// Sends one audio chunk of `job`.
    pub async fn audio(&mut self, job: &Job, chunk: u32, samples: &[i16]) {
        let header = FrameHeader::audio(job.request_id, job.attempt, chunk);
        let frame = BinaryFrame { header, payload: i16_le_bytes(samples) };
        self.raw(Message::binary(frame.encode())).await;
    }

    /// Sends any WebSocket message; an error (the control plane closed) is ignored.
    pub async fn raw(&mut self, message: Message) {
        let _ = self.ws.send(message).await;
    }

    /// Reports `generated_seconds` of audio done for `job`.
    pub async fn progress(&mut self, job: &Job, generated_seconds: f32) {
        let progress = NodeToControl::Progress {
            request_id: job.request_id,
            attempt: job.attempt,
            generated_seconds,
        };
        self.send(&progress).await;
    }

    pub async fn fail(&mut self, job: &Job, retryable: bool) {
        self.fail_with(
            job,
            WireError::new(ErrorKind::UpstreamError, "scripted failure"),
            retryable,
        )
        .await;
    }

    pub async fn fail_with(&mut self, job: &Job, error: WireError, retryable: bool) {
        let failed = NodeToControl::Failed {
            request_id: job.request_id,
            attempt: job.attempt,
            error,
            retryable,
        };
        self.send(&failed).await;
    }

    /// A heartbeat reporting the hello's capacity.
    pub async fn heartbeat(&mut self, healthy: bool) {
        let health =
            if healthy { Health::Healthy } else { Health::Unhealthy { reason: "scripted".into() } };
        self.beat(health, self.capacity).await;
    }

    /// A healthy heartbeat saying the node takes `capacity` jobs at once now.
    pub async fn report_capacity(&mut self, capacity: u32) {
        self.beat(Health::Healthy, capacity).await;
    }

    async fn beat(&mut self, health: Health, capacity: u32) {
        self.beat_with(health, capacity, None).await;
    }

    /// A heartbeat with the hello's capacity, this health and these GPU readings.
    pub async fn beat_with(&mut self, health: Health, capacity: u32, gpu: Option<GpuReadings>) {
        let gpu_memory_used_bytes = gpu.as_ref().map(|g| g.memory_used_bytes);
        let load = Load { active: 0, queued: 0, gpu_memory_used_bytes, capacity };
        self.send(&NodeToControl::Heartbeat { health, load, gpu }).await;
    }

    async fn send(&mut self, msg: &NodeToControl) {
        self.ws.send(Message::text(serde_json::to_string(msg).unwrap())).await.unwrap();
    }

    /// Answers every job until the socket closes, heartbeating as a real node does: speech with
    /// `samples` of tone, transcriptions with [`heard`]; each job is reported.
    pub fn serve(mut self, samples: usize) -> tokio::sync::mpsc::UnboundedReceiver<Received> {
        let audio = tone(samples);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(self.heartbeat_interval);
            loop {
                let msg = tokio::select! {
                    msg = self.next_control() => msg,
                    _ = beat.tick() => {
                        self.heartbeat(true).await;
                        continue;
                    }
                };
                let Some(msg) = msg else { break };
                if let ControlToNode::Submit(job) = msg {
                    let Ok(prompt) = self.job_audio(&job).await else { break };
                    match &job.task {
                        proto::Task::Speech(_) => self.complete(&job, &audio).await,
                        proto::Task::Transcription(_) => {
                            self.transcript(&job, &heard(&job), "en").await
                        }
                    }
                    let _ = tx.send(Received { job, prompt });
                }
            }
        });
        rx
    }
}

pub fn tone(n: usize) -> Vec<i16> {
    (0..n).map(|i| ((i as f32 * 0.05).sin() * 8000.0) as i16).collect()
}
