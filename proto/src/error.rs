//! Errors as they cross the wire and the public API: one set of snake_case type strings.

use serde::{Deserialize, Serialize};

/// Every error type the system reports. The strings are the public API's `error.type` values; a
/// node's failure carries one too, so the control plane never has to translate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No `input` field (400).
    MissingInput,
    /// The script opens with `[S2]`, uses `[S3]` or above, or has an empty turn (400).
    InvalidScript,
    /// A speaker id does not exist or belongs to another account (400).
    InvalidVoiceSample,
    /// A referenced voice sample has no transcript (400).
    MissingTranscript,
    /// A voice sample's audio could not be decoded (400).
    AudioDecodeFailed,
    /// A voice sample is longer than the configured limit (400).
    AudioTooLong,
    /// A voice sample is shorter than the configured minimum, too little to clone from (400).
    AudioTooShort,
    /// The input text or the body is over its limit (413).
    RequestTooLarge,
    /// No online provider offers the feature (404).
    NoProvider,
    /// Every attempt on the nodes failed (502).
    UpstreamError,
    /// A field is out of range or of the wrong type (400).
    InvalidParameter,
    /// The body is not valid JSON or not a JSON object (400).
    InvalidJson,
    /// `model` names no online model with the endpoint's feature (400).
    UnknownModel,
    /// No `Authorization: Bearer` key (401).
    MissingApiKey,
    /// The key is unknown (401).
    InvalidApiKey,
    /// The admin token is missing or wrong (401).
    InvalidAdminToken,
    /// The queue is full; retry after the `Retry-After` seconds (429).
    QueueFull,
    /// The resource does not exist in this account, or no route has the path (404).
    NotFound,
    /// The path exists but not with this HTTP method (405, with `Allow`).
    MethodNotAllowed,
    /// The client went away before the job finished; only ever recorded in the history.
    Cancelled,
    /// A bug or an unavailable store (500); detail goes to the log only.
    InternalError,
}

impl ErrorKind {
    /// The snake_case string used as the API's `error.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingInput => "missing_input",
            Self::InvalidScript => "invalid_script",
            Self::InvalidVoiceSample => "invalid_voice_sample",
            Self::MissingTranscript => "missing_transcript",
            Self::AudioDecodeFailed => "audio_decode_failed",
            Self::AudioTooLong => "audio_too_long",
            Self::AudioTooShort => "audio_too_short",
            Self::RequestTooLarge => "request_too_large",
            Self::NoProvider => "no_provider",
            Self::UpstreamError => "upstream_error",
            Self::InvalidParameter => "invalid_parameter",
            Self::InvalidJson => "invalid_json",
            Self::UnknownModel => "unknown_model",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::InvalidAdminToken => "invalid_admin_token",
            Self::QueueFull => "queue_full",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Cancelled => "cancelled",
            Self::InternalError => "internal_error",
        }
    }

    /// Parses a stored or received type string.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it crosses the wire: its type and a human-readable message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    /// What went wrong, as an API error type.
    pub kind: ErrorKind,
    /// Detail for a person; safe to show to the client.
    pub message: String,
}

impl WireError {
    /// Builds an error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_the_serde_name_of_every_kind() {
        for kind in [
            ErrorKind::MissingInput,
            ErrorKind::InvalidScript,
            ErrorKind::InvalidVoiceSample,
            ErrorKind::MissingTranscript,
            ErrorKind::AudioDecodeFailed,
            ErrorKind::AudioTooLong,
            ErrorKind::AudioTooShort,
            ErrorKind::RequestTooLarge,
            ErrorKind::NoProvider,
            ErrorKind::UpstreamError,
            ErrorKind::InvalidParameter,
            ErrorKind::InvalidJson,
            ErrorKind::UnknownModel,
            ErrorKind::MissingApiKey,
            ErrorKind::InvalidApiKey,
            ErrorKind::InvalidAdminToken,
            ErrorKind::QueueFull,
            ErrorKind::NotFound,
            ErrorKind::MethodNotAllowed,
            ErrorKind::Cancelled,
            ErrorKind::InternalError,
        ] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
    }
}
