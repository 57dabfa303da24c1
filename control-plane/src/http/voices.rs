//! The voice library of the calling account: list, upload, fetch, update, delete.

use super::auth::Account;
use super::openapi::AudioFile;
use super::transcriptions::transcribe_sample;
use super::{ApiJson, ApiMultipart, ApiPath};
use crate::audio::{decode_to_mono_44k, AudioError, DecodedAudio};
use crate::db::voices::{NewVoice, VoicePatch, VoiceRow};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::validation::check_transcript;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use proto::frames::{f32_from_le_bytes, f32_le_bytes};
use proto::ErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Routes; uploads may be up to `max_voice_bytes` (plus multipart overhead).
pub fn router(max_voice_bytes: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/v1/voices",
            get(list).post(upload).layer(DefaultBodyLimit::max(max_voice_bytes + 64 * 1024)),
        )
        .route("/v1/voices/{id}", get(fetch).patch(update).delete(remove))
        .route("/v1/voices/{id}/audio", get(audio))
}

/// The account's samples.
#[derive(Serialize, ToSchema)]
pub struct VoiceList {
    /// Oldest first.
    pub data: Vec<VoiceRow>,
}

/// Changes to a sample; absent fields stay, `transcript: null` clears it (and asks for a
/// transcription, as an upload without one does).
#[derive(Deserialize, ToSchema)]
pub struct VoiceUpdate {
    /// New name.
    pub speaker_name: Option<String>,
    /// New transcript.
    #[serde(default, deserialize_with = "present")]
    pub transcript: Option<Option<String>>,
    /// Make it (or stop it being) the default.
    pub is_default: Option<bool>,
}

/// Tells "absent" (`None`) from "null" (`Some(None)`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The multipart form of an upload.
#[derive(ToSchema)]
#[allow(dead_code)]
struct VoiceUpload {
    /// The audio: WAV, MP3, FLAC, OGG/Vorbis or WebM/Opus.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
    /// Display name.
    speaker_name: String,
    /// What the clip says. Omitted, it is transcribed when a `transcription` node is online
    /// (`transcript_status` pending, then filled or failed), else `unavailable`.
    transcript: Option<String>,
    /// True to make it the account's default (`true`/`false` in any case, or `1`/`0`).
    is_default: Option<bool>,
}

/// The sample named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct VoiceId {
    /// Voice-sample id, as listed by `GET /v1/voices`.
    pub id: i64,
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no voice sample {id} in your library"))
}

/// Lists the account's voice samples.
#[utoipa::path(get, path = "/v1/voices", tag = "voices", operation_id = "list_voices", responses((status = 200, body = VoiceList)), security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Account(account): Account,
) -> Result<Json<VoiceList>, ApiError> {
    let data = state.db.list_voices(&account).await?.into_iter().collect();
    Ok(Json(VoiceList { data }))
}

/// Uploads a sample: decoded, downmixed to mono and resampled to 44.1 kHz; kept as uploaded too.
#[utoipa::path(post, path = "/v1/voices", tag = "voices", operation_id = "upload_voice", request_body(content = VoiceUpload, content_type = "multipart/form-data"),
    responses((status = 201, body = VoiceRow), (status = 400, description = "audio_decode_failed, audio_too_long, audio_too_short, invalid_parameter, invalid_script", body = ErrorBody),
        (status = 413, description = "request_too_large", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Account(account): Account,
    ApiMultipart(mut form): ApiMultipart,
) -> Result<(StatusCode, Json<VoiceRow>), ApiError> {
    let (mut file, mut speaker_name, mut transcript, mut is_default) = (None, None, None, false);
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => file = Some(field.bytes().await.map_err(multipart_error)?),
            "speaker_name" => speaker_name = Some(field.text().await.map_err(multipart_error)?),
            "transcript" => {
                transcript = Some(field.text().await.map_err(multipart_error)?)
                    .filter(|t| !t.trim().is_empty())
            }
            "is_default" => is_default = form_bool(&field.text().await.map_err(multipart_error)?)?,
            other => {
                return Err(ApiError::new(
                    ErrorKind::InvalidParameter,
                    format!("unknown form field `{other}`"),
                ))
            }
        }
    }
    let file = file.ok_or_else(|| {
        ApiError::new(ErrorKind::InvalidParameter, "`file` is required: the audio clip")
    })?;
    let speaker_name = speaker_name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidParameter, "`speaker_name` is required"))?;
    if let Some(t) = &transcript {
        check_transcript(t)?;
    }
    let decoded = decode_upload(&state, file.clone(), state.config.max_voice_seconds).await?;
    let seconds = decoded.samples.len() as f32 / proto::SAMPLE_RATE as f32;
    if seconds < state.config.min_voice_seconds {
        let msg = format!(
            "`file`: the audio is {seconds:.2} s long; a voice sample needs at least {} s of \
             speech for Dia to clone the voice",
            state.config.min_voice_seconds
        );
        return Err(ApiError::new(ErrorKind::AudioTooShort, msg));
    }
    let pcm = f32_le_bytes(&decoded.samples);
    let voice = NewVoice {
        speaker_name: speaker_name.trim(),
        transcript: transcript.as_deref().map(str::trim),
        is_default,
        format: decoded.format,
        original: &file,
        pcm: &pcm,
        duration_seconds: decoded.samples.len() as f64 / f64::from(proto::SAMPLE_RATE),
        source_sample_rate: i64::from(decoded.source_sample_rate),
        source_channels: i64::from(decoded.source_channels),
    };
    let mut row = state.db.insert_voice(&account, &voice).await?;
    if row.transcript.is_none() {
        transcribe_sample(&state, &account, row.id, &decoded.samples).await?;
        row = state.db.get_voice(&account, row.id).await?.unwrap_or(row);
    }
    Ok((StatusCode::CREATED, Json(row)))
}

/// Decodes an uploaded `file` off the async threads: mono, 44.1 kHz, at most `max_seconds`.
pub(crate) async fn decode_upload(
    state: &AppState,
    file: axum::body::Bytes,
    max_seconds: f32,
) -> Result<DecodedAudio, ApiError> {
    if file.len() > state.config.max_voice_bytes {
        let msg = format!(
            "`file` has {} bytes; the limit is {}",
            file.len(),
            state.config.max_voice_bytes
        );
        return Err(ApiError::new(ErrorKind::RequestTooLarge, msg));
    }
    tokio::task::spawn_blocking(move || decode_to_mono_44k(&file, max_seconds))
        .await
        .map_err(|e| ApiError::new(ErrorKind::InternalError, e.to_string()))?
        .map_err(|e| match e {
            AudioError::TooLong { .. } => {
                ApiError::new(ErrorKind::AudioTooLong, format!("`file`: {e}"))
            }
            AudioError::Decode(_) | AudioError::Empty => {
                ApiError::new(ErrorKind::AudioDecodeFailed, format!("`file`: {e}"))
            }
        })
}

/// A boolean form field, as clients write it: `true`/`false` in any case (Python's generated
/// clients send `True`), or `1`/`0`.
fn form_bool(text: &str) -> Result<bool, ApiError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(ApiError::new(
            ErrorKind::InvalidParameter,
            format!("`is_default` must be true or false; got \"{other}\""),
        )),
    }
}

pub(crate) fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let kind = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ErrorKind::RequestTooLarge
    } else {
        ErrorKind::InvalidParameter
    };
    ApiError::new(kind, e.body_text())
}

/// One sample.
#[utoipa::path(get, path = "/v1/voices/{id}", tag = "voices", operation_id = "get_voice", params(VoiceId),
    responses((status = 200, body = VoiceRow), (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn fetch(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(VoiceId { id }): ApiPath<VoiceId>,
) -> Result<Json<VoiceRow>, ApiError> {
    let row = state.db.get_voice(&account, id).await?.ok_or_else(|| not_found(id))?;
    Ok(Json(row))
}

/// The sample as uploaded.
#[utoipa::path(get, path = "/v1/voices/{id}/audio", tag = "voices", operation_id = "get_voice_audio", params(VoiceId),
    responses((status = 200, description = "The bytes as uploaded, with their audio/* type", content(
            (AudioFile = "audio/wav"), (AudioFile = "audio/mpeg"), (AudioFile = "audio/flac"),
            (AudioFile = "audio/ogg"), (AudioFile = "audio/webm"))),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn audio(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(VoiceId { id }): ApiPath<VoiceId>,
) -> Result<impl IntoResponse, ApiError> {
    let (format, bytes) =
        state.db.voice_original(&account, id).await?.ok_or_else(|| not_found(id))?;
    let mime = match format.as_str() {
        "mp3" => "audio/mpeg",
        "flac" => "audio/flac",
        "ogg" => "audio/ogg",
        "webm" => "audio/webm",
        _ => "audio/wav",
    };
    Ok(([(CONTENT_TYPE, mime)], bytes))
}

/// Updates name, transcript or default flag; making one the default unsets the previous one.
#[utoipa::path(patch, path = "/v1/voices/{id}", tag = "voices", operation_id = "update_voice", params(VoiceId), request_body = VoiceUpdate,
    responses((status = 200, body = VoiceRow),
        (status = 400, description = "invalid_parameter, invalid_json, invalid_script", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn update(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(VoiceId { id }): ApiPath<VoiceId>,
    ApiJson(body): ApiJson<VoiceUpdate>,
) -> Result<Json<VoiceRow>, ApiError> {
    if body.speaker_name.as_deref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ApiError::new(ErrorKind::InvalidParameter, "`speaker_name` must not be empty"));
    }
    // A blank transcript clears it, as at upload.
    let transcript = body.transcript.map(|t| t.filter(|t| !t.trim().is_empty()));
    if let Some(Some(t)) = &transcript {
        check_transcript(t)?;
    }
    let patch = VoicePatch {
        speaker_name: body.speaker_name,
        transcript: transcript.map(|t| t.map(|t| t.trim().to_owned())),
        is_default: body.is_default,
    };
    let cleared = matches!(patch.transcript, Some(None));
    let mut row = state.db.update_voice(&account, id, patch).await?.ok_or_else(|| not_found(id))?;
    // Clearing a transcript asks for a new one, as an upload without one does.
    if cleared {
        if let Some(pcm) = state.db.voice_pcm(&account, id).await? {
            transcribe_sample(&state, &account, id, &f32_from_le_bytes(&pcm)).await?;
            row = state.db.get_voice(&account, id).await?.unwrap_or(row);
        }
    }
    Ok(Json(row))
}

/// Deletes a sample.
#[utoipa::path(delete, path = "/v1/voices/{id}", tag = "voices", operation_id = "delete_voice", params(VoiceId),
    responses((status = 204, description = "Deleted"), (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(VoiceId { id }): ApiPath<VoiceId>,
) -> Result<StatusCode, ApiError> {
    if state.db.delete_voice(&account, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(id))
    }
}
