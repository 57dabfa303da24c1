//! The one error type of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running the models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A config file that cannot be used.
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// A checkpoint that cannot be read at all (missing, truncated, not safetensors).
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    /// A tensor the model needs is not in the checkpoint.
    #[error("checkpoint is missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor { name: String, expected: Vec<i64> },
    /// A tensor of the checkpoint has another shape than the config implies.
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { name: String, expected: Vec<i64>, found: Vec<i64> },
    /// Input handed to a public entry point that does not fit the model.
    #[error("invalid input: {0}")]
    Input(String),
    /// Download from the model hub failed.
    #[error("download from {repo}: {message}")]
    Download { repo: String, message: String },
    /// The model hub did not answer at all (no network, DNS, connection refused).
    #[error("the model hub cannot be reached for {repo}: {message}")]
    HubUnreachable { repo: String, message: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
