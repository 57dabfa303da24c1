//! Sign-in and the account's pages: voice library, playground, queue and history.

use super::session::{self, CarriesCsrf, Genuine, Session};
use super::{html, Nav};
use crate::db::on_pool;
use crate::db::requests::HistoryFilter;
use crate::db::voices::VoiceRow;
use crate::error::ApiError;
use crate::http::auth::Account;
use crate::http::history::HistoryItem;
use crate::http::ApiJson;
use crate::state::AppState;
use crate::validation::SpeechRequest;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use proto::RequestId;
use serde::Deserialize;
use serde_json::{json, Value};

/// `/`: the voice library, or the sign-in page.
pub async fn home(State(state): State<AppState>, headers: HeaderMap) -> Result<Redirect, ApiError> {
    Ok(match session::from_headers(&state, &headers).await? {
        Some(_) => Redirect::to("/voices"),
        None => Redirect::to("/sign-in"),
    })
}

#[derive(Template)]
#[template(path = "dashboard/sign_in.html")]
struct SignIn {
    error: Option<&'static str>,
}

pub async fn sign_in_page() -> Response {
    html(SignIn { error: None })
}

#[derive(Deserialize)]
pub struct SignInForm {
    api_key: String,
}

pub async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, ApiError> {
    // No session yet to hold a token: the origin check keeps other sites from signing you in.
    if !session::same_origin(&headers) {
        return Ok(refused());
    }
    Ok(match session::sign_in(&state, &headers, &form.api_key).await? {
        Some(cookie) => session::redirect_with_cookie("/voices", cookie),
        None => {
            let page = html(SignIn { error: Some("That API key is not valid.") });
            (StatusCode::UNAUTHORIZED, page).into_response()
        }
    })
}

/// A form with nothing but the session's CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

impl CarriesCsrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    Genuine { session, .. }: Genuine<CsrfForm>,
) -> Result<Response, ApiError> {
    let cookie = session::sign_out(&state, &session).await?;
    Ok(session::redirect_with_cookie("/sign-in", cookie))
}

/// The answer to a state change that did not come from the dashboard's own page.
pub fn refused() -> Response {
    let msg =
        "Refused: this change did not come from the dashboard's own page. Reload it and try again.";
    (StatusCode::FORBIDDEN, msg).into_response()
}

#[derive(Template)]
#[template(path = "dashboard/voices.html")]
struct Voices {
    nav: Nav,
    voices: Vec<VoiceRow>,
    min_seconds: f32,
    max_seconds: f32,
    max_megabytes: usize,
}

pub async fn voices(State(state): State<AppState>, session: Session) -> Result<Response, ApiError> {
    let voices = state.db.list_voices(&session.account).await?;
    Ok(html(Voices {
        nav: Nav::new("voices", &session),
        voices,
        min_seconds: state.config.min_voice_seconds,
        max_seconds: state.config.max_voice_seconds,
        max_megabytes: state.config.max_voice_bytes / (1024 * 1024),
    }))
}

/// A sampling parameter's input: range and default as the API's schema declares them.
struct Param {
    name: &'static str,
    label: &'static str,
    min: f64,
    max: f64,
    default: f64,
    step: &'static str,
}

/// The parameters in the form, with what they do (the spec's words); ranges come from the schema.
const PARAMS: [(&str, &str); 6] = [
    ("cfg_scale", "CFG scale: how strongly the model follows the transcript"),
    ("temperature", "Temperature: higher is more expressive, lower more consistent"),
    ("top_p", "Top p: nucleus sampling threshold"),
    ("cfg_filter_top_k", "CFG filter top k"),
    ("speed_factor", "Speed factor: speaking rate"),
    ("max_new_tokens", "Max new tokens: the longest audio to generate"),
];

fn params() -> Vec<Param> {
    let schema = serde_json::to_value(<SpeechRequest as utoipa::PartialSchema>::schema())
        .expect("the schema serialises");
    PARAMS
        .iter()
        .map(|&(name, label)| {
            let p = &schema["properties"][name];
            let num = |key: &str| p[key].as_f64().expect("the schema gives every range");
            let integer = p["type"] == "integer" || p["type"][0] == "integer";
            Param {
                name,
                label,
                min: num("minimum"),
                max: num("maximum"),
                default: num("default"),
                step: if integer { "1" } else { "0.05" },
            }
        })
        .collect()
}

#[derive(Template)]
#[template(path = "dashboard/playground.html")]
struct Playground {
    nav: Nav,
    voices: Vec<VoiceRow>,
    params: Vec<Param>,
    max_input_chars: usize,
}

pub async fn playground(
    State(state): State<AppState>,
    session: Session,
) -> Result<Response, ApiError> {
    Ok(html(Playground {
        nav: Nav::new("playground", &session),
        voices: state.db.list_voices(&session.account).await?,
        params: params(),
        max_input_chars: state.config.max_input_chars,
    }))
}

/// Queues the playground's generation and answers at once with its id and seed; the page then
/// follows it in the history (queue position, progress, audio).
pub async fn enqueue(
    State(state): State<AppState>,
    Account(account): Account,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = RequestId::new();
    let seed = crate::http::generations::enqueue(&state, &account, &body, id).await?;
    // Waited on as an API request is, so that the queue timeout applies to it too.
    let queue = state.queue.clone();
    tokio::spawn(async move {
        let waiter = queue.waiter(&id);
        if let Err(e) = queue.wait(&waiter).await {
            tracing::error!(error = %e, request = %id, "could not follow a dashboard request");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id.to_string(), "seed": seed}))))
}

#[derive(Deserialize)]
pub struct QueueQuery {
    status: Option<String>,
    collection: Option<String>,
    visibility: Option<String>,
}

struct QueueRow {
    item: HistoryItem,
    params: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "dashboard/queue.html")]
struct Queue {
    nav: Nav,
    rows: Vec<QueueRow>,
    status: String,
    collection: String,
    visibility: String,
    collections: Vec<String>,
}

pub async fn queue(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<QueueQuery>,
) -> Result<Response, ApiError> {
    let pick = |v: Option<String>| v.filter(|v| !v.is_empty());
    let (status, collection, visibility) = (pick(q.status), pick(q.collection), pick(q.visibility));
    let filter = HistoryFilter {
        status: status.as_deref().and_then(|s| s.parse().ok()),
        collection: collection.as_deref(),
        visibility: visibility.as_deref(),
    };
    let rows = state.db.history(&session.account, &filter, None, 100).await?;
    let sql = "SELECT DISTINCT collection FROM requests
               WHERE account_id = $1 AND collection IS NOT NULL ORDER BY collection";
    let collections = on_pool!(&state.db, p => sqlx::query_scalar(sql).bind(&session.account).fetch_all(p).await)?;
    let rows = rows
        .into_iter()
        .map(|row| {
            let item = HistoryItem::from(row);
            let params = serde_json::to_string_pretty(&item.params).unwrap_or_default();
            let active = item.status.is_active();
            QueueRow { item, params, active }
        })
        .collect();
    Ok(html(Queue {
        nav: Nav::new("queue", &session),
        rows,
        status: status.unwrap_or_default(),
        collection: collection.unwrap_or_default(),
        visibility: visibility.unwrap_or_default(),
        collections,
    }))
}
