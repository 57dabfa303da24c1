//! The checkpoints a node runs (`--weights`, `--dac`, `--whisper`) and the model ids it
//! advertises for them.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use models::{hub, tiny, ModelError};
use tempfile::TempDir;

/// The `--weights` / `--dac` value of the tiny random model `dia-node` makes itself.
pub const TINY_RANDOM: &str = "tiny-random";
/// The `--weights` value of a node without Dia (`serve` only).
pub const NONE: &str = "none";

/// Which checkpoints to run.
#[derive(Debug, Args)]
pub struct CheckpointArgs {
    /// Dia checkpoint: a folder, a hub repo id (`owner/name[@revision]`), `tiny-random` (a tiny
    /// model with random weights, made at start: noise, not speech), or, for `serve`, `none` (no
    /// Dia: a node that only transcribes, with `--whisper`; `--dac` is then ignored).
    #[arg(long, env = "DIA_WEIGHTS", default_value = hub::DIA_REPO)]
    pub weights: String,
    /// DAC checkpoint: a folder, a hub repo id, or `tiny-random`.
    #[arg(long, env = "DAC_WEIGHTS", default_value = hub::DAC_REPO)]
    pub dac: String,
}

/// Checkpoint folders ready to load, and the id of what they hold.
pub struct Checkpoints {
    pub dia: PathBuf,
    pub dac: PathBuf,
    pub model_id: String,
    /// Where a tiny random model was written; removed when this is dropped.
    _scratch: Option<TempDir>,
}

impl CheckpointArgs {
    /// Finds or downloads the checkpoints, or writes the tiny random ones.
    pub fn resolve(&self) -> anyhow::Result<Checkpoints> {
        if self.weights == NONE {
            bail!("`--weights {NONE}` names no Dia checkpoint to generate with");
        }
        let tiny = |spec: &str| spec == TINY_RANDOM;
        let scratch =
            (tiny(&self.weights) || tiny(&self.dac)).then(tempfile::tempdir).transpose()?;
        type Write = fn(&Path, i64) -> models::Result<()>;
        type Fetch = fn(&str) -> models::Result<PathBuf>;
        let folder = |spec: &str, name: &str, write: Write, fetch: Fetch| match &scratch {
            Some(dir) if tiny(spec) => {
                let path = dir.path().join(name);
                write(&path, TINY_SEED).map(|()| path)
            }
            _ => fetch(spec),
        };
        let dia = folder(&self.weights, "dia", tiny::write_dia, hub::dia_weights)?;
        let dac = folder(&self.dac, "dac", tiny::write_dac, hub::dac_weights)?;
        Ok(Checkpoints { dia, dac, model_id: self.model_id(), _scratch: scratch })
    }

    /// The tiny random model in place of hub checkpoints that cannot be reached, said in one
    /// line; any other failure stays an error.
    pub fn resolve_or_tiny_random(&self) -> anyhow::Result<Checkpoints> {
        match self.resolve() {
            Err(e) if is_hub_unreachable(&e) => {
                let endpoint = std::env::var("HF_ENDPOINT")
                    .unwrap_or_else(|_| "https://huggingface.co".to_owned());
                eprintln!(
                    "The model hub ({endpoint}) cannot be reached: serving {}, a tiny model with \
                     random weights (noise, not speech), instead of {}.",
                    tiny::MODEL_ID,
                    self.model_id()
                );
                Self { weights: TINY_RANDOM.into(), dac: TINY_RANDOM.into() }.resolve()
            }
            other => other,
        }
    }

    /// What the checkpoints are called: Dia's hub repo and revision, its folder's name, or
    /// [`tiny::MODEL_ID`].
    pub fn model_id(&self) -> String {
        if self.weights == TINY_RANDOM {
            return tiny::MODEL_ID.to_owned();
        }
        let id = hub::Source::parse(&self.weights, hub::DIA_REPO, hub::DIA_REVISION).model_id();
        // Real weights speaking through a random codec make noise too; the id says so.
        if self.dac == TINY_RANDOM {
            format!("{id}+random-dac")
        } else {
            id
        }
    }
}

/// Whisper's folder for `--whisper` (a folder, or a hub repo id, downloaded), and the id the node
/// advertises for it: as for Dia, the repo and revision or the folder's name.
pub fn whisper(spec: &str) -> anyhow::Result<(PathBuf, String)> {
    let id = hub::Source::parse(spec, hub::WHISPER_REPO, hub::WHISPER_REVISION).model_id();
    Ok((hub::whisper_weights(spec)?, id))
}

/// Seed of the tiny random weights: every node makes the same model.
const TINY_SEED: i64 = 0;

fn is_hub_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref(), Some(ModelError::HubUnreachable { .. })))
}
