//! Where weights come from: a local folder, or the Hugging Face hub at a pinned revision.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};

/// The Dia checkpoint we serve, and the revision we checked it at.
pub const DIA_REPO: &str = "nari-labs/Dia-1.6B-0626";
pub const DIA_REVISION: &str = "ef2795fcc29c5abe6ffc91fd33808588b49bbc66";
/// The 44.1 kHz DAC in transformers layout, and its revision.
pub const DAC_REPO: &str = "descript/dac_44khz";
pub const DAC_REVISION: &str = "c1bc521685adf9cfe247bc39a5ca58917eda1ac4";

/// A folder holding Dia: `spec` itself if it is a directory, else the hub repo `spec`
/// (`owner/name` or `owner/name@revision`; the pinned revision for [`DIA_REPO`]).
pub fn dia_weights(spec: &str) -> Result<PathBuf> {
    resolve(spec, DIA_REPO, DIA_REVISION, |repo| {
        let index = repo.get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index).map_err(|e| e.to_string())?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let mut shards: Vec<&str> = json["weight_map"]
            .as_object()
            .ok_or("index without weight_map")?
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

/// A folder holding the DAC, like [`dia_weights`] (pinned revision for [`DAC_REPO`]).
pub fn dac_weights(spec: &str) -> Result<PathBuf> {
    resolve(spec, DAC_REPO, DAC_REVISION, |repo| {
        repo.get("model.safetensors")?;
        repo.get("config.json")
    })
}

/// Access to one repo at one revision; errors are strings naming the file.
pub struct HubRepo {
    api: hf_hub::api::sync::ApiRepo,
}

impl HubRepo {
    /// Downloads `file` (or finds it in the cache) and returns its local path.
    pub fn get(&self, file: &str) -> Result<PathBuf, String> {
        self.api.get(file).map_err(|e| format!("{file}: {e}"))
    }
}

fn resolve(
    spec: &str,
    default_repo: &str,
    default_revision: &str,
    fetch: impl FnOnce(&HubRepo) -> Result<PathBuf, String>,
) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_owned());
    }
    let (repo, revision) = match spec.split_once('@') {
        Some((repo, rev)) => (repo, rev),
        None if spec == default_repo => (spec, default_revision),
        None => (spec, "main"),
    };
    let download =
        |message: String| ModelError::Download { repo: format!("{repo}@{revision}"), message };
    let api =
        ApiBuilder::from_env().with_progress(true).build().map_err(|e| download(e.to_string()))?;
    let hub = HubRepo {
        api: api.repo(Repo::with_revision(repo.to_owned(), RepoType::Model, revision.to_owned())),
    };
    let config = fetch(&hub).map_err(download)?;
    Ok(config.parent().expect("a downloaded file has a folder").to_owned())
}
