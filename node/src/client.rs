//! The WebSocket session with the control plane: hello, heartbeats, jobs in (with the audio
//! frame that follows a transcription's submit, and voice prompts asked for when the engine holds
//! no codes for them), audio and transcripts out; dialled again with backoff whenever it drops.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use proto::frames::{f32_from_le_bytes, i16_from_le_bytes, i16_le_bytes};
use proto::{
    BinaryFrame, Clip, ControlToNode, ErrorKind, Finished, FrameHeader, GpuInfo, Health, Hello,
    Job, Load, NodeId, NodeToControl, PcmEncoding, RequestId, Stream, Welcome, WireError,
    PROTOCOL_VERSION,
};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::workers::{Event, Refused, Workers};

/// Samples per audio frame on the wire (one second).
const CHUNK_SAMPLES: usize = proto::SAMPLE_RATE as usize;
/// Longest wait for the control plane to answer a dial with its welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Who this node is to the control plane.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `ws(s)://host/v1/nodes/connect`.
    pub url: String,
    /// Its node credential or a join token, sent as `Authorization: Bearer`.
    pub join_token: String,
    pub node_id: String,
    /// Its GPU, or why the hello names none.
    pub gpu: Result<GpuInfo, String>,
}

/// Keeps a session up, reconnecting with exponential backoff. Returns once `drain` turns true
/// and the jobs in hand are delivered, or fails if the worker threads are gone (a node that
/// cannot work must not rejoin the pool).
pub async fn run(
    identity: Identity,
    workers: Workers,
    mut events: UnboundedReceiver<Event>,
    mut drain: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(250);
    loop {
        match session(&identity, &workers, &mut events, &mut drain).await {
            Ok(SessionEnd::Drained) => {
                tracing::info!("drained: every job delivered, leaving the pool");
                return Ok(());
            }
            Ok(SessionEnd::Closed) => {
                tracing::info!("control plane closed the session");
                backoff = Duration::from_millis(250);
            }
            Err(e) if events.is_closed() => bail!("the workers stopped ({e})"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "session with the control plane ended")
            }
        }
        if *drain.borrow() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = drain.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// How a session ended without an error.
enum SessionEnd {
    /// The control plane closed it; dial again.
    Closed,
    /// Draining finished; stop.
    Drained,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn text(msg: &NodeToControl) -> Message {
    Message::text(serde_json::to_string(msg).expect("messages serialise"))
}

async fn session(
    identity: &Identity,
    workers: &Workers,
    events: &mut UnboundedReceiver<Event>,
    drain: &mut watch::Receiver<bool>,
) -> anyhow::Result<SessionEnd> {
    let mut request = identity.url.as_str().into_client_request()?;
    let bearer = format!("Bearer {}", identity.join_token).parse().context("the join token")?;
    request.headers_mut().insert("authorization", bearer);
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .with_context(|| format!("connecting to {}", identity.url))?;
        let welcome = join(&mut ws, identity, workers).await?;
        anyhow::Ok((ws, welcome))
    });
    let (mut ws, welcome) = handshake.await.map_err(|_| {
        anyhow::anyhow!("no welcome from {} within {HANDSHAKE_TIMEOUT:?}", identity.url)
    })??;
    tracing::info!(url = %identity.url, node = %identity.node_id, "joined the pool");

    // Jobs of this session and their attempts: whatever is left when it ends is dropped, since
    // the control plane gives those to other nodes.
    let mut jobs: HashMap<RequestId, u32> = HashMap::new();
    let result =
        serve(&mut ws, workers, events, drain, &mut jobs, welcome.heartbeat_interval_ms).await;
    for id in jobs.into_keys() {
        workers.cancel(id);
    }
    result
}

/// Says hello; the welcome, or why there is none.
async fn join(ws: &mut Ws, identity: &Identity, workers: &Workers) -> anyhow::Result<Welcome> {
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id: NodeId(identity.node_id.clone()),
        models: workers.models(),
        capacity: workers.capacity(),
        gpu: identity.gpu.clone().ok(),
        gpu_unavailable: identity.gpu.clone().err(),
    };
    ws.send(text(&NodeToControl::Hello(hello))).await?;
    match next_control(ws).await? {
        Some(ControlToNode::Welcome(w)) => Ok(w),
        Some(ControlToNode::Rejected { error }) => bail!("rejected: {}", error.message),
        other => bail!("expected a welcome, got {other:?}"),
    }
}

/// A job whose audio is still to come: a transcription's clip (the frame right after its
/// submit), or a voice prompt the node asked for (identified by its SHA-256).
struct Awaiting {
    job: Job,
    stream: Stream,
    clip: Clip,
    sha256: Option<String>,
}

/// Why the frame after a submit cannot be its audio.
#[derive(Debug, thiserror::Error)]
enum BadFrame {
    #[error("its audio frame did not follow its submit")]
    Missing,
    #[error("its voice prompt is not the audio whose SHA-256 its submit announced")]
    Hash,
    #[error("the frame after its submit is {found:?}, not its {stream:?} in {encoding:?}")]
    Header { stream: Stream, encoding: PcmEncoding, found: FrameHeader },
    #[error(
        "its {stream:?} frame holds {found} samples, not the {announced} its submit announced"
    )]
    Samples { stream: Stream, announced: u64, found: u64 },
}

impl Awaiting {
    /// The job's failure for a frame that does not fit it; the same frame would fail on any
    /// node.
    fn fail(&self, why: BadFrame) -> Message {
        failed(self.job.request_id, self.job.attempt, why.to_string(), false)
    }

    /// The frame's PCM as f32, if it is the audio the submit announced.
    fn audio(&self, frame: BinaryFrame) -> Result<Vec<f32>, BadFrame> {
        let (h, Clip { samples, encoding }) = (frame.header, self.clip);
        if (h.request_id, h.attempt, h.stream, h.encoding)
            != (self.job.request_id, self.job.attempt, self.stream, encoding)
        {
            return Err(BadFrame::Header { stream: self.stream, encoding, found: h });
        }
        let found = (frame.payload.len() / encoding.sample_bytes()) as u64;
        if found != samples {
            return Err(BadFrame::Samples { stream: self.stream, announced: samples, found });
        }
        if let Some(expected) = &self.sha256 {
            let digest: String = proto::sha256_hex(&frame.payload);
            if &digest != expected {
                return Err(BadFrame::Hash);
            }
        }
        Ok(match encoding {
            PcmEncoding::F32Le => f32_from_le_bytes(&frame.payload),
            PcmEncoding::I16Le => i16_from_le_bytes(&frame.payload)
                .into_iter()
                .map(|s| f32::from(s) / 32768.0)
                .collect(),
        })
    }
}

async fn serve(
    ws: &mut Ws,
    workers: &Workers,
    events: &mut UnboundedReceiver<Event>,
    drain: &mut watch::Receiver<bool>,
    jobs: &mut HashMap<RequestId, u32>,
    heartbeat_ms: u64,
) -> anyhow::Result<SessionEnd> {
    let mut heartbeat = tokio::time::interval(Duration::from_millis(heartbeat_ms.max(100)));
    let mut awaiting: HashMap<RequestId, Awaiting> = HashMap::new();
    let mut draining = *drain.borrow();
    loop {
        if draining && jobs.is_empty() && awaiting.is_empty() {
            ws.close(None).await?;
            // A drain the control plane asked for (its replica is going away) ends only this
            // session: the node dials again and takes work from whichever replica answers.
            return Ok(if *drain.borrow() { SessionEnd::Drained } else { SessionEnd::Closed });
        }
        tokio::select! {
            msg = ws.next() => {
                let Some(msg) = msg else { return Ok(SessionEnd::Closed) };
                match msg? {
                    Message::Text(t) => match serde_json::from_str::<ControlToNode>(&t) {
                        Err(e) => unreadable(ws, &t, &e).await?,
                        Ok(ControlToNode::Submit(job)) => {
                            // A clip comes right after its submit: one still awaited is missing.
                            let missing: Vec<RequestId> = awaiting.iter()
                                .filter(|(_, a)| a.stream == Stream::Clip).map(|(id, _)| *id).collect();
                            for id in missing {
                                let stale = awaiting.remove(&id).expect("listed");
                                ws.send(stale.fail(BadFrame::Missing)).await?;
                            }
                            match job.task.attached_audio() {
                                Some((stream, clip)) => {
                                    awaiting.insert(job.request_id, Awaiting { job, stream, clip, sha256: None });
                                }
                                None => start(ws, workers, jobs, draining, job, None).await?,
                            }
                        }
                        Ok(ControlToNode::Cancel { request_id }) => {
                            awaiting.remove(&request_id);
                            jobs.remove(&request_id);
                            workers.cancel(request_id);
                        }
                        Ok(ControlToNode::Drain) if !draining => {
                            draining = true;
                            start_draining(ws, workers, jobs, &mut awaiting, "the control plane asked").await?;
                        }
                        Ok(ControlToNode::Drain) => {}
                        Ok(other) => tracing::warn!(?other, "unexpected message"),
                    },
                    // A frame that does not fit its job fails that job alone.
                    Message::Binary(bytes) => {
                        let frame = BinaryFrame::decode(&bytes);
                        match frame.map(|f| (awaiting.remove(&f.header.request_id), f)) {
                            Ok((Some(a), frame)) => match a.audio(frame) {
                                Ok(pcm) => start(ws, workers, jobs, draining, a.job, Some(pcm)).await?,
                                Err(e) => {
                                    // A voice prompt's job waits in the engine for it.
                                    if jobs.remove(&a.job.request_id).is_some() {
                                        workers.cancel(a.job.request_id);
                                    }
                                    ws.send(a.fail(e)).await?
                                }
                            },
                            Ok((None, _)) => tracing::warn!("an audio frame for no job awaiting one; dropped"),
                            Err(e) => tracing::warn!(error = %e, "an unreadable binary frame; dropped"),
                        }
                    }
                    Message::Close(_) => return Ok(SessionEnd::Closed),
                    _ => {}
                }
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                start_draining(ws, workers, jobs, &mut awaiting, "shutting down").await?;
            }
            event = events.recv() => {
                match event {
                    None => bail!("the workers stopped"),
                    Some(Event::NeedVoicePrompt { request_id, attempt, task }) if current(jobs, request_id, attempt) => {
                        let Some(prompt) = task.voice_prompt.clone() else { continue };
                        let model = workers.speech_model().unwrap_or_default().to_owned();
                        let job = Job { request_id, attempt, model, task: proto::Task::Speech(task) };
                        let clip = Clip { samples: prompt.samples, encoding: prompt.encoding };
                        let stream = Stream::VoicePrompt;
                        awaiting.insert(request_id, Awaiting { job, stream, clip, sha256: Some(prompt.sha256) });
                        ws.send(text(&NodeToControl::NeedVoicePrompt { request_id, attempt })).await?;
                    }
                    Some(event) => send_event(ws, jobs, event).await?,
                }
            }
            _ = heartbeat.tick() => send_heartbeat(ws, workers, draining).await?,
        }
    }
}

/// Hands a job to its worker, or hands it back at once, retryable, where another node may take
/// it: this one drains, is full, or does not serve that model and task. A submit for a request
/// the node already runs is a new attempt of it (the control plane gave up the old one), which
/// replaces the old.
async fn start(
    ws: &mut Ws,
    workers: &Workers,
    jobs: &mut HashMap<RequestId, u32>,
    draining: bool,
    job: Job,
    audio: Option<Vec<f32>>,
) -> anyhow::Result<()> {
    let (request_id, attempt) = (job.request_id, job.attempt);
    if jobs.remove(&request_id).is_some() {
        workers.cancel(request_id);
    }
    let capacity = workers.capacity();
    let taken = if draining {
        Err(Refused::Draining)
    } else if jobs.len() >= capacity as usize {
        Err(Refused::Full { capacity })
    } else {
        workers.submit(job, audio)
    };
    match taken {
        Ok(()) => {
            jobs.insert(request_id, attempt);
        }
        Err(e) => ws.send(failed(request_id, attempt, e.to_string(), true)).await?,
    }
    Ok(())
}

/// A text message that is no control message: logged and dropped. Where it names a request
/// and an attempt (a submit of a newer protocol, say) that attempt is refused, not retryable,
/// so that it does not wait for a timeout; the session goes on.
async fn unreadable(ws: &mut Ws, text: &str, error: &serde_json::Error) -> anyhow::Result<()> {
    tracing::warn!(%error, "an unreadable message from the control plane; dropped");
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let request_id = value["request_id"].as_str().and_then(|id| id.parse().ok());
    let attempt = value["attempt"].as_u64().and_then(|a| u32::try_from(a).ok());
    if let (Some(request_id), Some(attempt)) = (request_id, attempt) {
        let why = format!("the node cannot read this message: {error}");
        ws.send(failed(request_id, attempt, why, false)).await?;
    }
    Ok(())
}

fn failed(request_id: RequestId, attempt: u32, message: String, retryable: bool) -> Message {
    tracing::warn!(request = %request_id, %message, retryable, "job failed");
    let error = WireError::new(ErrorKind::UpstreamError, message);
    text(&NodeToControl::Failed { request_id, attempt, error, retryable })
}

/// Draining: the jobs in hand are finished, none are taken; the unhealthy heartbeat stops the
/// control plane routing here. Jobs still waiting for their audio (a clip, a voice prompt) have
/// not started: they go back, retryable, rather than hold the drain for a frame that may never
/// come.
async fn start_draining(
    ws: &mut Ws,
    workers: &Workers,
    jobs: &mut HashMap<RequestId, u32>,
    awaiting: &mut HashMap<RequestId, Awaiting>,
    why: &str,
) -> anyhow::Result<()> {
    tracing::info!(
        jobs = jobs.len(),
        why,
        "draining: finishing the jobs in hand, taking no new ones"
    );
    send_heartbeat(ws, workers, true).await?;
    for (id, waiting) in awaiting.drain() {
        if jobs.remove(&id).is_some() {
            workers.cancel(id);
        }
        ws.send(failed(id, waiting.job.attempt, Refused::Draining.to_string(), true)).await?;
    }
    Ok(())
}

/// Liveness, load, capacity and the GPU's readings; a draining node reports itself unhealthy and
/// taking nothing, so that no work is routed to it, and one whose decode steps keep failing
/// ([`crate::health`]) or whose GPU fails a health rule ([`crate::gpu`]) unhealthy with why.
async fn send_heartbeat(ws: &mut Ws, workers: &Workers, draining: bool) -> anyhow::Result<()> {
    let metrics = workers.metrics();
    let (active, queued) = metrics.load();
    let capacity = if draining { 0 } else { workers.capacity() };
    let gpu = metrics.gpu.latest();
    let gpu_memory_used_bytes =
        gpu.as_ref().and_then(|g| g.readings.as_ref()).map(|r| r.memory_used_bytes);
    let load = Load { active, queued, gpu_memory_used_bytes, capacity };
    let unhealthy = if draining {
        Some("draining".to_owned())
    } else {
        metrics
            .steps
            .unhealthy(std::time::Instant::now())
            .or_else(|| gpu.as_ref().and_then(|g| g.unhealthy.clone()))
    };
    metrics.healthy.set(i64::from(unhealthy.is_none()));
    let health = unhealthy.map_or(Health::Healthy, |reason| Health::Unhealthy { reason });
    let gpu = gpu.and_then(|g| g.readings);
    ws.send(text(&NodeToControl::Heartbeat { health, load, gpu })).await?;
    Ok(())
}

/// Forwards one worker event, if its job (that attempt of it) still belongs to this session.
async fn send_event(
    ws: &mut Ws,
    jobs: &mut HashMap<RequestId, u32>,
    event: Event,
) -> anyhow::Result<()> {
    match event {
        Event::Progress { request_id, attempt, generated_seconds }
            if current(jobs, request_id, attempt) =>
        {
            ws.send(text(&NodeToControl::Progress { request_id, attempt, generated_seconds }))
                .await?;
        }
        Event::Generated { request_id, attempt, pcm, inference_seconds }
            if take(jobs, request_id, attempt) =>
        {
            for (chunk, samples) in pcm.chunks(CHUNK_SAMPLES).enumerate() {
                let header = FrameHeader::audio(request_id, attempt, chunk as u32);
                let frame = BinaryFrame { header, payload: i16_le_bytes(samples) };
                ws.send(Message::Binary(frame.encode().into())).await?;
            }
            let samples = pcm.len() as u64;
            let done =
                Finished { request_id, attempt, samples, inference_seconds, transcript: None };
            ws.send(text(&NodeToControl::Finished(done))).await?;
        }
        Event::Transcribed { request_id, attempt, transcript, inference_seconds }
            if take(jobs, request_id, attempt) =>
        {
            let transcript = Some(transcript);
            let done = Finished { request_id, attempt, samples: 0, inference_seconds, transcript };
            ws.send(text(&NodeToControl::Finished(done))).await?;
        }
        Event::Failed { request_id, attempt, message, retryable }
            if take(jobs, request_id, attempt) =>
        {
            ws.send(failed(request_id, attempt, message, retryable)).await?;
        }
        // A job of an earlier session or attempt, or cancelled meanwhile.
        _ => {}
    }
    Ok(())
}

/// Whether `attempt` is the job's current one in this session.
fn current(jobs: &HashMap<RequestId, u32>, id: RequestId, attempt: u32) -> bool {
    jobs.get(&id) == Some(&attempt)
}

/// Ends the job where `attempt` is its current one; false otherwise.
fn take(jobs: &mut HashMap<RequestId, u32>, id: RequestId, attempt: u32) -> bool {
    current(jobs, id, attempt) && jobs.remove(&id).is_some()
}

async fn next_control(ws: &mut Ws) -> anyhow::Result<Option<ControlToNode>> {
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            return Ok(Some(serde_json::from_str(&t)?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::frames::f32_le_bytes;
    use proto::{Task, TranscriptionTask};

    fn awaiting(samples: u64, encoding: PcmEncoding) -> Awaiting {
        let clip = Clip { samples, encoding };
        let task = Task::Transcription(TranscriptionTask { clip, language: None });
        let job = Job { request_id: RequestId::new(), attempt: 2, model: "m".into(), task };
        Awaiting { job, stream: Stream::Clip, clip, sha256: None }
    }

    fn frame(a: &Awaiting, stream: Stream, encoding: PcmEncoding, payload: Vec<u8>) -> BinaryFrame {
        let (request_id, attempt) = (a.job.request_id, a.job.attempt);
        let header = FrameHeader { request_id, attempt, stream, chunk: 0, encoding };
        BinaryFrame { header, payload }
    }

    #[test]
    fn the_announced_frame_is_read_in_its_encoding() {
        let a = awaiting(2, PcmEncoding::F32Le);
        let bytes = frame(&a, Stream::Clip, PcmEncoding::F32Le, f32_le_bytes(&[0.5, -0.25]));
        assert_eq!(a.audio(bytes).unwrap(), [0.5, -0.25]);
        let a = awaiting(2, PcmEncoding::I16Le);
        let bytes = frame(&a, Stream::Clip, PcmEncoding::I16Le, i16_le_bytes(&[16384, -32768]));
        assert_eq!(a.audio(bytes).unwrap(), [0.5, -1.0]);
    }

    #[test]
    fn a_frame_that_is_not_the_announced_audio_is_refused() {
        let a = awaiting(2, PcmEncoding::F32Le);
        let pcm = f32_le_bytes(&[0.0, 0.0]);
        let short = frame(&a, Stream::Clip, PcmEncoding::F32Le, f32_le_bytes(&[0.0]));
        assert!(matches!(a.audio(short), Err(BadFrame::Samples { announced: 2, found: 1, .. })));
        let prompt = frame(&a, Stream::VoicePrompt, PcmEncoding::F32Le, pcm.clone());
        assert!(matches!(a.audio(prompt), Err(BadFrame::Header { .. })));
        let i16 = frame(&a, Stream::Clip, PcmEncoding::I16Le, pcm.clone());
        assert!(matches!(a.audio(i16), Err(BadFrame::Header { .. })));
        let other = awaiting(2, PcmEncoding::F32Le);
        let foreign = frame(&other, Stream::Clip, PcmEncoding::F32Le, pcm);
        assert!(matches!(a.audio(foreign), Err(BadFrame::Header { .. })));
    }

    #[test]
    fn a_voice_prompt_must_be_the_audio_of_its_hash() {
        let pcm = f32_le_bytes(&[0.5, 0.25]);
        let digest = proto::sha256_hex(&pcm);
        let mut a = awaiting(2, PcmEncoding::F32Le);
        (a.stream, a.sha256) = (Stream::VoicePrompt, Some(digest));
        let right = frame(&a, Stream::VoicePrompt, PcmEncoding::F32Le, pcm);
        assert_eq!(a.audio(right).unwrap(), [0.5, 0.25]);
        let wrong = frame(&a, Stream::VoicePrompt, PcmEncoding::F32Le, f32_le_bytes(&[0.5, 0.0]));
        assert!(matches!(a.audio(wrong), Err(BadFrame::Hash)));
    }
}
