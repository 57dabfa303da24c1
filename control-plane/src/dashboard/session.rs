//! Browser sessions: sign in with an API key, a cookie naming a server-side session, and the
//! cross-site request checks every state change passes.
//!
//! The cookie holds a random token and the store keeps only its SHA-256, next to the key it was
//! opened with (revoking the key ends the session) and a CSRF token. The cookie is HttpOnly (no
//! script reads it, so the key and session never reach page storage), SameSite=Strict (no other
//! site's page sends it) and Secure behind TLS. On top of that, every state change carries the
//! session's CSRF token (a form field, or the `x-csrf-token` header of the page's API calls) and,
//! where the browser names it, an `Origin` equal to the host.

use crate::db::accounts::key_hash;
use crate::db::{now_ms, on_pool, Db};
use crate::http::auth::same_secret;
use crate::state::AppState;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::de::DeserializeOwned;

const COOKIE_NAME: &str = "dia_session";
/// A week; signing in again is cheap.
const LIFETIME_SECS: i64 = 7 * 24 * 3600;
/// Header the dashboard's script sends its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The signed-in account of a dashboard request.
#[derive(Clone)]
pub struct Session {
    /// Its account.
    pub account: String,
    /// Token a state change must carry.
    pub csrf: String,
    /// Unlocked the Pool page with the admin token.
    pub admin: bool,
    token_hash: String,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    account_id: String,
    csrf_token: String,
    admin: bool,
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Db {
    /// Opens a session for the account `key` belongs to; `None` when the key is not valid.
    /// Returns the cookie token.
    async fn open_session(&self, key: &str) -> Result<Option<String>, sqlx::Error> {
        let Some(account) = self.account_for_key(key).await? else { return Ok(None) };
        let token = random_hex();
        let now = now_ms();
        let sql = "INSERT INTO sessions (token_hash, key_hash, account_id, csrf_token, admin, created_at, expires_at)
                   VALUES ($1, $2, $3, $4, FALSE, $5, $6)";
        on_pool!(self, p => sqlx::query(sql)
            .bind(key_hash(&token)).bind(key_hash(key)).bind(account).bind(random_hex())
            .bind(now).bind(now + LIFETIME_SECS * 1000).execute(p).await.map(drop))?;
        Ok(Some(token))
    }

    async fn session(&self, token: &str) -> Result<Option<Session>, sqlx::Error> {
        let sql = "SELECT account_id, csrf_token, admin FROM sessions
                   WHERE token_hash = $1 AND expires_at > $2";
        let hash = key_hash(token);
        let row: Option<SessionRow> = on_pool!(self, p => sqlx::query_as(sql)
            .bind(&hash).bind(now_ms()).fetch_optional(p).await)?;
        Ok(row.map(|r| Session {
            account: r.account_id,
            csrf: r.csrf_token,
            admin: r.admin,
            token_hash: hash,
        }))
    }

    async fn close_session(&self, session: &Session) -> Result<(), sqlx::Error> {
        // Expired sessions of anyone go too: the table stays as small as the live sessions.
        let sql = "DELETE FROM sessions WHERE token_hash = $1 OR expires_at <= $2";
        on_pool!(self, p => sqlx::query(sql).bind(&session.token_hash).bind(now_ms()).execute(p).await.map(drop))
    }

    /// Marks the session as having shown the admin token.
    pub(super) async fn unlock_admin(&self, session: &Session) -> Result<(), sqlx::Error> {
        let sql = "UPDATE sessions SET admin = TRUE WHERE token_hash = $1";
        on_pool!(self, p => sqlx::query(sql).bind(&session.token_hash).execute(p).await.map(drop))
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
}

/// The session named by the request's cookie, if it is live.
pub async fn from_headers(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, sqlx::Error> {
    match cookie_token(headers) {
        Some(token) => state.db.session(token).await,
        None => Ok(None),
    }
}

/// False when the browser says the request comes from a page of another origin. Browsers send
/// `Origin` on every POST, so a cross-site form or fetch is refused even before its token is read.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|o| o.to_str().ok()) else { return true };
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

/// Whether a state change made with this session is genuine: same origin, and the token given.
fn genuine(session: &Session, headers: &HeaderMap, token: Option<&str>) -> bool {
    same_origin(headers) && token.is_some_and(|t| same_secret(t, &session.csrf))
}

/// A dashboard form that carries the session's CSRF token.
pub trait CarriesCsrf {
    fn csrf(&self) -> &str;
}

/// A form posted from the dashboard's own page, with its session: same origin and the session's
/// token, else the change is refused (403) before the handler runs.
pub struct Genuine<F> {
    pub session: Session,
    pub form: F,
}

impl<F: DeserializeOwned + CarriesCsrf + Send> FromRequest<AppState> for Genuine<F> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let session = Session::from_request_parts(&mut parts, state).await?;
        let headers = parts.headers.clone();
        let Form(form) = Form::<F>::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !genuine(&session, &headers, Some(form.csrf())) {
            return Err(super::pages::refused());
        }
        Ok(Self { session, form })
    }
}

/// The account of an API call the dashboard's script makes with its session cookie; unsafe
/// methods must carry the CSRF header. `Ok(None)`: no session cookie.
pub async fn api_account(state: &AppState, parts: &Parts) -> Result<Option<String>, CsrfRefused> {
    let Ok(Some(session)) = from_headers(state, &parts.headers).await else { return Ok(None) };
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    let token = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if safe || genuine(&session, &parts.headers, token) {
        Ok(Some(session.account))
    } else {
        Err(CsrfRefused)
    }
}

/// A state change by session that lacked its CSRF token or came from another origin.
pub struct CsrfRefused;

/// A page's session; without one the browser is sent to sign in.
impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match from_headers(state, &parts.headers).await {
            Ok(Some(session)) => Ok(session),
            Ok(None) => Err(Redirect::to("/sign-in").into_response()),
            Err(e) => Err(crate::error::ApiError::from(e).into_response()),
        }
    }
}

/// Opens a session for `key`; the cookie to set, or `None` for a key that is not valid.
pub async fn sign_in(
    state: &AppState,
    headers: &HeaderMap,
    key: &str,
) -> Result<Option<HeaderValue>, sqlx::Error> {
    let Some(token) = state.db.open_session(key.trim()).await? else { return Ok(None) };
    // Behind a TLS-terminating proxy the cookie must never travel in clear.
    let tls = headers.get("x-forwarded-proto").is_some_and(|p| p == "https");
    let secure = if tls { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
    );
    Ok(Some(HeaderValue::from_str(&cookie).expect("hex token")))
}

/// Ends the session; the header that clears the cookie.
pub async fn sign_out(state: &AppState, session: &Session) -> Result<HeaderValue, sqlx::Error> {
    state.db.close_session(session).await?;
    let cookie = format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    Ok(HeaderValue::from_str(&cookie).expect("ascii"))
}

/// `Set-Cookie` with a redirect.
pub fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut response = Redirect::to(to).into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    response
}
