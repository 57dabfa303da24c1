//! `POST /v1/voice/generations`: validate, assemble the cloning prompt, queue, wait, answer WAV.

use super::auth::Account;
use super::openapi::AudioFile;
use super::{waiting, ApiJson};
use crate::db::requests::{NewRequest, Outcome};
use crate::db::voices::TranscriptStatus;
use crate::error::{ApiError, ErrorBody};
use crate::routing::Needs;
use crate::state::AppState;
use crate::validation::{transcript_words, SpeechRequest, ValidSpeechRequest};
use crate::voice_prompt;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use proto::frames::f32_from_le_bytes;
use proto::speech::cloning_text;
use proto::{
    ErrorKind, PcmEncoding, RequestId, SpeechTask, Task, VoicePrompt, FEATURE_VOICE_CLONING,
};
use serde_json::Value;

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/v1/voice/generations", post(create))
}

/// Synthesises a dialogue script, optionally cloning voices from the library; answers `audio/wav`.
#[utoipa::path(post, path = "/v1/voice/generations", tag = "generations", operation_id = "create_voice_generation",
    request_body(content = SpeechRequest, example = json!({
        "input": "[S1] Hello! Welcome to the show.\n[S2] Thanks for having me.",
        "speakers": {"S1": 12, "S2": 17}
    })),
    responses(
        (status = 200, description = "16-bit PCM mono WAV at 44.1 kHz; headers x-request-id, x-seed, x-node-id, x-queue-seconds, x-inference-seconds, x-audio-seconds", body = AudioFile, content_type = "audio/wav"),
        (status = 400, description = "missing_input, invalid_script, invalid_voice_sample, missing_transcript, audio_decode_failed, invalid_parameter, invalid_json, unknown_model", body = ErrorBody),
        (status = 404, description = "no_provider", body = ErrorBody),
        (status = 413, description = "request_too_large", body = ErrorBody),
        (status = 429, description = "queue_full, with Retry-After", body = ErrorBody),
        (status = 502, description = "upstream_error", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let id = RequestId::new();
    let waiter = state.queue.waiter(&id);
    let seed = enqueue(&state, &account, &body, id).await?;
    let outcome = waiting::until_done(&state, &waiter, id).await?;
    Ok(respond(id, seed, outcome))
}

/// Validates a generation, assembles its cloning prompt and queues it as `id`; returns its seed.
/// The API waits for it; the dashboard answers at once and follows it in the history.
pub(crate) async fn enqueue(
    state: &AppState,
    account: &str,
    body: &Value,
    id: RequestId,
) -> Result<u64, ApiError> {
    let req = SpeechRequest::from_json(body)?.validate(state.config.max_input_chars)?;
    let (text, prompt) = cloning_prompt(state, account, &req).await?;
    let model = super::models::choose(state, req.model.as_deref(), FEATURE_VOICE_CLONING).await?;
    // The encoder reads a fixed window (past it the script would be cut off without a word), and
    // a node's memory holds so many frames: a request goes only to a node that has room for it.
    let needs = Needs {
        text_tokens: proto::script::model_token_count(&text) as u64,
        prompt_samples: prompt.as_ref().map_or(0, |pcm| pcm.len() as u64 / 4),
        new_frames: u64::from(req.max_new_tokens),
    };
    needs.check(&model.id, &model.offers)?;

    let task = Task::Speech(SpeechTask {
        text,
        sampling: req.sampling,
        speed_factor: req.speed_factor,
        max_new_tokens: req.max_new_tokens,
        seed: req.seed,
        voice_prompt: prompt.as_ref().map(|pcm| VoicePrompt {
            samples: needs.prompt_samples,
            encoding: PcmEncoding::F32Le,
            sha256: proto::sha256_hex(pcm),
        }),
    });
    let voice_refs =
        prompt.is_some().then(|| serde_json::to_string(&req.speakers).expect("serialises"));
    let (id_text, params) = (id.to_string(), serde_json::to_string(&req).expect("serialises"));
    let (visibility, task) = (
        serde_json::to_value(req.visibility).expect("serialises"),
        serde_json::to_string(&task).expect("serialises"),
    );
    let new = NewRequest {
        id: &id_text,
        account_id: account,
        feature: FEATURE_VOICE_CLONING,
        model: &model.id,
        input: &req.input,
        params: &params,
        seed: req.seed as i64,
        visibility: visibility.as_str().unwrap_or("private"),
        collection: req.collection.as_deref(),
        task: &task,
        text_tokens: needs.text_tokens as i64,
        frames: needs.frames() as i64,
        new_frames: needs.new_frames as i64,
        voice_refs: voice_refs.as_deref(),
        prompt_audio: None,
    };
    if !state.db.insert_request(&new, state.config.max_queued).await? {
        return Err(waiting::queue_full(state).await);
    }
    state.queue.announce_queued().await;
    Ok(req.seed)
}

/// The WAV of a succeeded generation, with its headers.
fn respond(id: RequestId, seed: u64, outcome: Outcome) -> Response {
    let audio = outcome.audio.unwrap_or_default();
    let mut response = ([(CONTENT_TYPE, "audio/wav")], audio).into_response();
    let headers = response.headers_mut();
    let secs = |x: Option<f64>| format!("{:.3}", x.unwrap_or(0.0));
    for (name, value) in [
        ("x-request-id", id.to_string()),
        ("x-seed", seed.to_string()),
        ("x-node-id", outcome.node_id.unwrap_or_default()),
        ("x-queue-seconds", secs(outcome.queue_seconds)),
        ("x-inference-seconds", secs(outcome.inference_seconds)),
        ("x-audio-seconds", secs(outcome.audio_seconds)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    response
}

/// The encoder text and voice-prompt PCM for the request: the referenced samples' transcripts,
/// tagged and placed before the script, and their clips joined S1, silence, S2.
async fn cloning_prompt(
    state: &AppState,
    account: &str,
    req: &ValidSpeechRequest,
) -> Result<(String, Option<Vec<u8>>), ApiError> {
    let mut transcripts = [None, None];
    let mut clips: [Option<Vec<f32>>; 2] = [None, None];
    for (i, (tag, id)) in [("S1", req.speakers.s1), ("S2", req.speakers.s2)].into_iter().enumerate()
    {
        let Some(id) = id else { continue };
        let Some(sample) = state.db.cloning_sample(account, id).await? else {
            let msg = format!("`speakers.{tag}`: voice sample {id} does not exist in your library");
            return Err(ApiError::new(ErrorKind::InvalidVoiceSample, msg));
        };
        let Some(transcript) = sample.transcript.filter(|t| !t.trim().is_empty()) else {
            let msg = match sample.transcript_status {
                TranscriptStatus::Pending => format!(
                    "`speakers.{tag}`: voice sample {id} is being transcribed; Dia needs its \
                     transcript to clone the voice: try again in a few seconds"
                ),
                _ => format!(
                    "`speakers.{tag}`: voice sample {id} has no transcript; Dia needs it to clone \
                     the voice: add one with PATCH /v1/voices/{id}"
                ),
            };
            return Err(ApiError::new(ErrorKind::MissingTranscript, msg));
        };
        if sample.pcm.is_empty() || sample.pcm.len() % 4 != 0 {
            let msg = format!("`speakers.{tag}`: the audio of voice sample {id} could not be read");
            return Err(ApiError::new(ErrorKind::AudioDecodeFailed, msg));
        }
        let words = transcript_words(&transcript).map_err(|e| {
            let msg = format!("`speakers.{tag}`: the transcript of voice sample {id}: {e}");
            ApiError::new(ErrorKind::InvalidScript, msg)
        })?;
        transcripts[i] = Some(words);
        clips[i] = Some(f32_from_le_bytes(&sample.pcm));
    }
    let text = cloning_text(transcripts[0].as_deref(), transcripts[1].as_deref(), &req.script);
    let [s1, s2] = clips;
    Ok((text, voice_prompt::join(s1, s2)))
}
