//! The account's request history: every accepted request, its attempts and its audio.

use super::auth::Account;
use super::openapi::AudioFile;
use super::{ApiPath, ApiQuery};
use crate::db::requests::{AttemptRow, HistoryFilter, HistoryRow, RequestStatus};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::ErrorKind;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/history", get(list))
        .route("/v1/history/{id}", get(fetch))
        .route("/v1/history/{id}/audio", get(audio))
        .route("/v1/history/{id}/cancel", post(cancel))
}

/// Filters and paging of the list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only requests in this status: queued, running, succeeded, failed.
    pub status: Option<String>,
    /// Only requests in this sharing collection.
    pub collection: Option<String>,
    /// Only requests with this visibility: private, unlisted, public.
    pub visibility: Option<String>,
    /// Page size, 1–100, default 20.
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
}

/// A request in the history.
#[derive(Serialize, ToSchema)]
pub struct HistoryItem {
    /// Request id (also the `x-request-id` of the generation).
    pub id: String,
    /// Where it stands.
    pub status: RequestStatus,
    /// The error, when failed.
    pub error: Option<crate::error::ErrorDetail>,
    /// The feature it used: `voice-cloning` (a generation) or `transcription`.
    pub feature: String,
    /// Model.
    pub model: String,
    /// The script; for a transcription, what the clip is.
    pub input: String,
    /// Every parameter used, defaults filled in, with the seed: enough to regenerate.
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
    /// Seed used.
    pub seed: i64,
    /// private, unlisted, public.
    pub visibility: String,
    /// Sharing collection.
    pub collection: Option<String>,
    /// Place in the queue (1 = next), while queued.
    pub queue_position: Option<i64>,
    /// While running: seconds of audio generated so far, as the node reports.
    pub generated_seconds: Option<f64>,
    /// Node of the last attempt.
    pub node_id: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms of the first attempt.
    pub started_at: Option<i64>,
    /// Epoch ms.
    pub finished_at: Option<i64>,
    /// Seconds waited for a node.
    pub queue_seconds: Option<f64>,
    /// Seconds generating.
    pub inference_seconds: Option<f64>,
    /// Length of the audio.
    pub audio_seconds: Option<f64>,
    /// Where the WAV is, when a generation succeeded.
    pub audio_url: Option<String>,
    /// What a succeeded transcription heard.
    pub transcript: Option<String>,
    /// The language of the transcript.
    pub language: Option<String>,
    /// Every try on a node, in order (only in the single-item view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptRow>>,
}

/// A page of history.
#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    /// Newest first.
    pub data: Vec<HistoryItem>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<i64>,
}

impl From<HistoryRow> for HistoryItem {
    fn from(r: HistoryRow) -> Self {
        let error = r.error_type.map(|kind| crate::error::ErrorDetail {
            kind,
            message: r.error_message.unwrap_or_default(),
        });
        Self {
            audio_url: (r.status == RequestStatus::Succeeded
                && r.feature == proto::FEATURE_VOICE_CLONING)
                .then(|| format!("/v1/history/{}/audio", r.id)),
            id: r.id,
            status: r.status,
            error,
            feature: r.feature,
            model: r.model,
            input: r.input,
            params: serde_json::from_str(&r.params).unwrap_or_default(),
            seed: r.seed,
            visibility: r.visibility,
            collection: r.collection,
            queue_position: r.queue_position,
            generated_seconds: r.generated_seconds,
            node_id: r.node_id,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            queue_seconds: r.queue_seconds,
            inference_seconds: r.inference_seconds,
            audio_seconds: r.audio_seconds,
            transcript: r.transcript,
            language: r.language,
            attempts: None,
        }
    }
}

/// The request named in the path.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HistoryId {
    /// Request id: the `x-request-id` of the generation.
    pub id: String,
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no request `{id}` in your history"))
}

/// Lists the account's requests, newest first.
#[utoipa::path(get, path = "/v1/history", tag = "history", operation_id = "list_history", params(HistoryQuery),
    responses((status = 200, body = HistoryPage), (status = 400, description = "invalid_parameter", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Account(account): Account,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let status = match q.status.as_deref().map(str::parse::<RequestStatus>) {
        Some(Err(_)) => {
            let msg = format!(
                "`status` must be one of queued, running, succeeded, failed; got \"{}\"",
                q.status.unwrap_or_default()
            );
            return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    if let Some(v) =
        q.visibility.as_deref().filter(|v| !["private", "unlisted", "public"].contains(v))
    {
        let msg = format!("`visibility` must be one of private, unlisted, public; got \"{v}\"");
        return Err(ApiError::new(ErrorKind::InvalidParameter, msg));
    }
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::new(
            ErrorKind::InvalidParameter,
            format!("`limit` must be an integer from 1 to 100; got {limit}"),
        ));
    }
    // One row more than asked tells whether another page follows.
    let filter = HistoryFilter {
        status,
        collection: q.collection.as_deref(),
        visibility: q.visibility.as_deref(),
    };
    let mut rows = state.db.history(&account, &filter, q.cursor, limit + 1).await?;
    let next_cursor = (rows.len() as i64 > limit).then(|| rows[limit as usize - 1].seq);
    rows.truncate(limit as usize);
    Ok(Json(HistoryPage { data: rows.into_iter().map(HistoryItem::from).collect(), next_cursor }))
}

/// One request with its attempts.
#[utoipa::path(get, path = "/v1/history/{id}", tag = "history", operation_id = "get_history_item", params(HistoryId),
    responses((status = 200, body = HistoryItem), (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn fetch(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(HistoryId { id }): ApiPath<HistoryId>,
) -> Result<Json<HistoryItem>, ApiError> {
    let row = state.db.history_item(&account, &id).await?.ok_or_else(|| not_found(&id))?;
    let mut item = HistoryItem::from(row);
    item.attempts = Some(state.db.attempts(&id).await?);
    Ok(Json(item))
}

/// The WAV of a succeeded request.
#[utoipa::path(get, path = "/v1/history/{id}/audio", tag = "history", operation_id = "get_history_audio", params(HistoryId),
    responses((status = 200, description = "16-bit PCM mono WAV at 44.1 kHz", body = AudioFile, content_type = "audio/wav"),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn audio(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(HistoryId { id }): ApiPath<HistoryId>,
) -> Result<impl IntoResponse, ApiError> {
    let wav = state.db.history_audio(&account, &id).await?.ok_or_else(|| not_found(&id))?;
    Ok(([(CONTENT_TYPE, "audio/wav")], wav))
}

/// Cancels a queued or running request: it fails as `cancelled` and its node stops working on
/// it. A request that has already ended is returned as it is.
#[utoipa::path(post, path = "/v1/history/{id}/cancel", tag = "history", operation_id = "cancel_request", params(HistoryId),
    responses((status = 200, description = "The request as it stands after the cancellation", body = HistoryItem),
        (status = 404, description = "not_found", body = ErrorBody)),
    security(("api_key" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Account(account): Account,
    ApiPath(HistoryId { id }): ApiPath<HistoryId>,
) -> Result<Json<HistoryItem>, ApiError> {
    let row = state.db.history_item(&account, &id).await?.ok_or_else(|| not_found(&id))?;
    if row.status.is_active() {
        let request_id = id.parse().map_err(|_| not_found(&id))?;
        state.queue.cancel_because(request_id, "cancelled by its owner").await?;
    }
    fetch(State(state), Account(account), ApiPath(HistoryId { id })).await
}
