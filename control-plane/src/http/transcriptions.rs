//! Speech to text, routed to nodes with the `transcription` feature: `POST
//! /v1/audio/transcriptions` (OpenAI's form and answers, so its clients work unchanged), and the
//! transcriptions that fill in the transcripts of voice samples uploaded without one.

use super::auth::Account;
use super::models::{choose, Model};
use super::voices::{decode_upload, multipart_error};
use super::{waiting, ApiMultipart};
use crate::db::requests::NewRequest;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use proto::audio::to_i16;
use proto::frames::i16_le_bytes;
use proto::{
    Clip, ErrorKind, PcmEncoding, RequestId, Task, TranscriptionTask, FEATURE_TRANSCRIPTION,
};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

/// OpenAI's model name: whichever transcription model is online.
const ANY_MODEL: &str = "whisper-1";

/// Routes; uploads may be up to `max_bytes` (plus multipart overhead).
pub fn router(max_bytes: usize) -> Router<AppState> {
    Router::new().route(
        "/v1/audio/transcriptions",
        post(create).layer(DefaultBodyLimit::max(max_bytes + 64 * 1024)),
    )
}

/// The multipart form, as OpenAI's `audio.transcriptions.create` sends it.
#[derive(ToSchema)]
#[allow(dead_code)]
struct TranscriptionForm {
    /// The audio: WAV, MP3, FLAC, OGG/Vorbis or WebM/Opus.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
    /// A model with the `transcription` feature from GET /v1/models; `whisper-1` or omitted: any.
    model: Option<String>,
    /// ISO 639-1 code of the spoken language (one the model lists); omitted: detected.
    language: Option<String>,
    /// `json` (default): `{"text": …}`; `text`: the text alone, as text/plain.
    response_format: Option<String>,
    /// 0–1; decoding is greedy whatever the value (OpenAI's default is 0).
    temperature: Option<f64>,
}

/// The `json` answer.
#[derive(Serialize, ToSchema)]
pub struct TranscriptionText {
    /// What was said.
    pub text: String,
}

/// Transcribes an audio file (OpenAI-compatible).
#[utoipa::path(post, path = "/v1/audio/transcriptions", tag = "transcriptions", operation_id = "create_transcription",
    request_body(content = TranscriptionForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "`json`: the text as `{\"text\": …}`; `text`: the text alone (text/plain). Headers x-request-id, x-language.", body = TranscriptionText),
        (status = 400, description = "audio_decode_failed, audio_too_long, invalid_parameter, unknown_model", body = ErrorBody),
        (status = 404, description = "no_provider", body = ErrorBody),
        (status = 413, description = "request_too_large", body = ErrorBody),
        (status = 429, description = "queue_full, with Retry-After", body = ErrorBody),
        (status = 502, description = "upstream_error", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Account(account): Account,
    ApiMultipart(mut form): ApiMultipart,
) -> Result<Response, ApiError> {
    let (mut file, mut name, mut model, mut language, mut text_format) =
        (None, None, None, None, false);
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let field_name = field.name().unwrap_or_default().to_owned();
        if field_name == "file" {
            name = field.file_name().map(str::to_owned);
            file = Some(field.bytes().await.map_err(multipart_error)?);
            continue;
        }
        let value = field.text().await.map_err(multipart_error)?;
        let value = value.trim();
        match field_name.as_str() {
            "model" => model = Some(value.to_owned()).filter(|m| !m.is_empty() && m != ANY_MODEL),
            "language" => language = Some(value.to_ascii_lowercase()).filter(|l| !l.is_empty()),
            "response_format" => {
                text_format = match value {
                    "json" | "" => false,
                    "text" => true,
                    other => {
                        let msg =
                            format!("`response_format` must be json or text; got \"{other}\"");
                        return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
                    }
                }
            }
            "temperature" => {
                if !value.parse::<f64>().is_ok_and(|t| (0.0..=1.0).contains(&t)) {
                    let msg =
                        format!("`temperature` must be a number from 0 to 1; got \"{value}\"");
                    return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
                }
            }
            other => {
                let msg = format!("unknown form field `{other}`");
                return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
            }
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::new(ErrorKind::InvalidParameter, "`file` is required: the audio to transcribe")
    })?;
    let model = choose(&state, model.as_deref(), FEATURE_TRANSCRIPTION).await?;
    if let Some(code) = language.as_deref().filter(|l| !model.languages.iter().any(|m| m == l)) {
        let msg = format!(
            "`language` must be an ISO 639-1 code `{}` transcribes ({}); got \"{code}\"",
            model.id,
            model.languages.join(", ")
        );
        return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
    }
    let decoded = decode_upload(&state, file, state.config.max_transcription_seconds).await?;

    let id = RequestId::new();
    let waiter = state.queue.waiter(&id);
    let input = match name {
        Some(name) => format!("audio file {name}"),
        None => "audio file".to_owned(),
    };
    let clip = Clip { samples: decoded.samples.len() as u64, encoding: PcmEncoding::I16Le };
    let transcription =
        Transcription { model: &model, clip, language: language.as_deref(), input: &input };
    if !transcription.enqueue(&state, &account, id, &pcm16(&decoded.samples)).await? {
        return Err(waiting::queue_full(&state).await);
    }
    let outcome = waiting::until_done(&state, &waiter, id).await?;
    let text = outcome.transcript.unwrap_or_default();
    let headers =
        [("x-request-id", id.to_string()), ("x-language", outcome.language.unwrap_or_default())];
    Ok(if text_format {
        (headers, [(CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
    } else {
        (headers, Json(TranscriptionText { text })).into_response()
    })
}

/// A transcription to queue.
struct Transcription<'a> {
    model: &'a Model,
    clip: Clip,
    language: Option<&'a str>,
    /// What the clip is, for the history.
    input: &'a str,
}

impl Transcription<'_> {
    /// Queues it as request `id` with its clip (16-bit LE PCM); false when the queue is full.
    async fn enqueue(
        &self,
        state: &AppState,
        account: &str,
        id: RequestId,
        pcm: &[u8],
    ) -> Result<bool, ApiError> {
        let task = Task::Transcription(TranscriptionTask {
            clip: self.clip,
            language: self.language.map(str::to_owned),
        });
        let seconds = self.clip.samples as f64 / f64::from(proto::SAMPLE_RATE);
        let params = json!({"language": self.language, "clip_seconds": seconds}).to_string();
        let (id_text, task) = (id.to_string(), serde_json::to_string(&task).expect("serialises"));
        let new = NewRequest {
            id: &id_text,
            account_id: account,
            feature: FEATURE_TRANSCRIPTION,
            model: &self.model.id,
            input: self.input,
            params: &params,
            seed: 0,
            visibility: "private",
            collection: None,
            task: &task,
            text_tokens: 0,
            frames: 0,
            new_frames: 0,
            voice_refs: None,
            prompt_audio: Some(pcm),
        };
        let queued = state.db.insert_request(&new, state.config.max_queued).await?;
        if queued {
            state.queue.announce_queued().await;
        }
        Ok(queued)
    }
}

/// Asks for the transcript of a voice sample that has none (its normalised samples, f32). It
/// stays `unavailable` when no transcription node is online or the queue is full.
pub(crate) async fn transcribe_sample(
    state: &AppState,
    account: &str,
    voice_id: i64,
    samples: &[f32],
) -> Result<(), ApiError> {
    let model = match choose(state, None, FEATURE_TRANSCRIPTION).await {
        Ok(model) => model,
        Err(ApiError::Client(e)) if e.kind == ErrorKind::NoProvider => return Ok(()),
        Err(e) => return Err(e),
    };
    let id = RequestId::new();
    let input = format!("voice sample {voice_id}");
    let clip = Clip { samples: samples.len() as u64, encoding: PcmEncoding::I16Le };
    let transcription = Transcription { model: &model, clip, language: None, input: &input };
    if transcription.enqueue(state, account, id, &pcm16(samples)).await? {
        state.db.set_transcription(account, voice_id, &id.to_string()).await?;
    }
    Ok(())
}

/// 16-bit LE PCM of samples in [-1, 1]: half the bytes of f32, all Whisper can hear, so a long
/// clip still fits one WebSocket frame.
fn pcm16(samples: &[f32]) -> Vec<u8> {
    i16_le_bytes(&to_i16(samples))
}
