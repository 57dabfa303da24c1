//! The API's one error type: every failure a handler can return, mapped here (and only here) to
//! the spec's error types, statuses and the `{"error": {"type", "message"}}` envelope.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::{ErrorKind, WireError};
use serde::Serialize;
use utoipa::ToSchema;

/// An error returned to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A client error with its type and message (validation, script, voice, auth…).
    #[error("{0}")]
    Client(#[from] WireError),
    /// No online node can take the generation.
    #[error(transparent)]
    TooLarge(#[from] crate::routing::TooLarge),
    /// The queue is full; the client should retry after this many seconds.
    #[error("the queue is full ({queued} requests waiting); retry after {retry_after_secs} s")]
    QueueFull {
        /// Requests waiting.
        queued: i64,
        /// Suggested wait.
        retry_after_secs: u64,
    },
    /// A store failure; the detail is logged, never returned.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

impl ApiError {
    /// A client error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Client(WireError::new(kind, message))
    }

    /// The API error type.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Client(e) => e.kind,
            Self::TooLarge(_) => ErrorKind::RequestTooLarge,
            Self::QueueFull { .. } => ErrorKind::QueueFull,
            Self::Db(_) => ErrorKind::InternalError,
        }
    }

    /// The HTTP status the spec gives the error type.
    pub fn status_code(&self) -> StatusCode {
        status_of(self.kind())
    }
}

/// The spec's table, plus the types the spec leaves to us.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    use ErrorKind::*;
    match kind {
        MissingInput | InvalidScript | InvalidVoiceSample | MissingTranscript
        | AudioDecodeFailed | AudioTooLong | AudioTooShort | InvalidParameter | InvalidJson
        | UnknownModel => StatusCode::BAD_REQUEST,
        RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        NoProvider | NotFound => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        UpstreamError => StatusCode::BAD_GATEWAY,
        MissingApiKey | InvalidApiKey | InvalidAdminToken => StatusCode::UNAUTHORIZED,
        QueueFull => StatusCode::TOO_MANY_REQUESTS,
        // A cancelled request has no client left to answer; 499 is the customary log status.
        Cancelled => StatusCode::from_u16(499).expect("valid status"),
        InternalError => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error envelope of every non-2xx response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Type and message of an error.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of the spec's error types (`missing_input`, `no_provider`, …).
    #[serde(rename = "type")]
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// The [`ErrorKind`] of an error response, kept as a response extension for the metrics layer.
#[derive(Clone, Copy)]
pub struct ErrorKindExt(pub ErrorKind);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = self.status_code();
        let retry_after = match &self {
            Self::QueueFull { retry_after_secs, .. } => Some(*retry_after_secs),
            _ => None,
        };
        let message = match self {
            Self::Client(e) => e.message,
            Self::Db(e) => {
                tracing::error!(error = %e, "database error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody { error: ErrorDetail { kind: kind.as_str().to_owned(), message } };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response.extensions_mut().insert(ErrorKindExt(kind));
        response
    }
}
