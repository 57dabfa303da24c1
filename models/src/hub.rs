//! Where weights come from: a local folder, or the Hugging Face hub at a pinned revision.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};

/// The Dia checkpoint we serve, and the revision we checked it at.
pub const DIA_REPO: &str = "nari-labs/Dia-1.6B-0626";
pub const DIA_REVISION: &str = "ef2795fcc29c5abe6ffc91fd33808588b49bbc66";
/// The 44.1 kHz DAC in transformers layout, and its revision.
pub const DAC_REPO: &str = "descript/dac_44khz";
pub const DAC_REVISION: &str = "c1bc521685adf9cfe247bc39a5ca58917eda1ac4";
/// Whisper base in transformers layout, and its revision.
pub const WHISPER_REPO: &str = "openai/whisper-base";
pub const WHISPER_REVISION: &str = "e37978b90ca9030d5170a5c07aadb050351a65bb";

/// A checkpoint as named on a command line: a folder if one is there, else a hub repo
/// `owner/name` or `owner/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Folder(PathBuf),
    Hub { repo: String, revision: String },
}

impl Source {
    /// Reads `spec`; a hub repo without a revision is at `default_revision` when it is
    /// `default_repo`, else at `main`.
    pub fn parse(spec: &str, default_repo: &str, default_revision: &str) -> Self {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::Folder(path.to_owned());
        }
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None if spec == default_repo => (spec, default_revision),
            None => (spec, "main"),
        };
        Self::Hub { repo: repo.to_owned(), revision: revision.to_owned() }
    }

    /// What a node serving this checkpoint calls its model: the folder's name, or the repo and
    /// its revision (a commit hash shortened to 12 digits).
    pub fn model_id(&self) -> String {
        match self {
            Self::Folder(path) => std::fs::canonicalize(path)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| path.display().to_string()),
            Self::Hub { repo, revision } => {
                let is_commit =
                    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
                format!("{repo}@{}", if is_commit { &revision[..12] } else { revision })
            }
        }
    }
}

/// A folder holding Dia: `spec` itself if it is a directory, else the hub repo `spec`, downloaded
/// (or found in the cache) with its shards.
pub fn dia_weights(spec: &str) -> Result<PathBuf> {
    resolve(Source::parse(spec, DIA_REPO, DIA_REVISION), |repo| {
        let index = repo.get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index).map_err(|e| repo.error(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| repo.error(e.to_string()))?;
        let mut shards: Vec<&str> = json["weight_map"]
            .as_object()
            .ok_or_else(|| repo.error("index without weight_map".into()))?
            .values()
            .filter_map(|v| v.as_str())
            .collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            repo.get(shard)?;
        }
        repo.get("config.json")
    })
}

/// A folder holding the DAC, like [`dia_weights`].
pub fn dac_weights(spec: &str) -> Result<PathBuf> {
    resolve(Source::parse(spec, DAC_REPO, DAC_REVISION), |repo| {
        repo.get("model.safetensors")?;
        repo.get("config.json")
    })
}

/// A folder holding Whisper, like [`dia_weights`]: a local folder in either layout
/// ([`crate::whisper::Whisper::load`]), or a hub repo in transformers layout.
pub fn whisper_weights(spec: &str) -> Result<PathBuf> {
    resolve(Source::parse(spec, WHISPER_REPO, WHISPER_REVISION), |repo| {
        for file in ["model.safetensors", "generation_config.json", "tokenizer.json"] {
            repo.get(file)?;
        }
        repo.get("config.json")
    })
}

/// Access to one repo at one revision.
struct HubRepo {
    api: hf_hub::api::sync::ApiRepo,
    name: String,
}

impl HubRepo {
    /// Downloads `file` (or finds it in the cache) and returns its local path. A hub that cannot
    /// be reached at all is told apart from one that answers with an error.
    fn get(&self, file: &str) -> Result<PathBuf> {
        self.api.get(file).map_err(|e| {
            let message = format!("{file}: {e}");
            if is_transport_error(&e) {
                ModelError::HubUnreachable { repo: self.name.clone(), message }
            } else {
                self.error(message)
            }
        })
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Download { repo: self.name.clone(), message }
    }
}

/// No answer from the hub: DNS, connection or TLS failure (not an HTTP status).
fn is_transport_error(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(e) => matches!(**e, ureq::Error::Transport(_)),
        ApiError::TooManyRetries(e) => is_transport_error(e),
        _ => false,
    }
}

fn resolve(source: Source, fetch: impl FnOnce(&HubRepo) -> Result<PathBuf>) -> Result<PathBuf> {
    let (repo, revision) = match source {
        Source::Folder(path) => return Ok(path),
        Source::Hub { repo, revision } => (repo, revision),
    };
    let name = format!("{repo}@{revision}");
    let api = ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| ModelError::Download { repo: name.clone(), message: e.to_string() })?;
    let hub = HubRepo { api: api.repo(Repo::with_revision(repo, RepoType::Model, revision)), name };
    let config = fetch(&hub)?;
    Ok(config.parent().expect("a downloaded file has a folder").to_owned())
}
