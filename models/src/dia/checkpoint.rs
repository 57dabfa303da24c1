//! Finding Dia's weights in a folder and reading them in transformers naming, converting a
//! Nari-named checkpoint on the way (docs/dia-reference.md §2.5).

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::config::DecoderConfig;
use crate::checkpoint::{read_safetensors, TensorMap};
use crate::error::{ModelError, Result};
use crate::nn_ext::dense_general_to_linear;

/// The safetensors files of a checkpoint folder: the shards an index names, else every
/// `.safetensors` file in it.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let err = |message: String| ModelError::Checkpoint { path: index.clone(), message };
        let text = std::fs::read_to_string(&index).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let map = json["weight_map"].as_object().ok_or_else(|| err("no `weight_map`".into()))?;
        let mut shards: Vec<String> =
            map.values().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        shards.sort();
        shards.dedup();
        return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Checkpoint {
            path: dir.to_owned(),
            message: "no model.safetensors.index.json and no .safetensors file".into(),
        });
    }
    Ok(files)
}

/// Every tensor of the checkpoint, in transformers naming.
pub fn read_weights(dir: &Path, cfg: &DecoderConfig) -> Result<TensorMap> {
    let mut tensors = TensorMap::new();
    for file in weight_files(dir)? {
        tensors.extend(read_safetensors(&file)?);
    }
    if tensors.contains_key("encoder.embedding.weight") {
        nari_to_transformers(tensors, cfg)
    } else {
        Ok(tensors)
    }
}

/// Nari names and DenseGeneral kernels → transformers names and `[out, in]` weights.
fn nari_to_transformers(tensors: TensorMap, cfg: &DecoderConfig) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    let mut embeddings: Vec<Option<Tensor>> = (0..cfg.num_channels).map(|_| None).collect();
    for (name, t) in tensors {
        if let Some(c) =
            name.strip_prefix("decoder.embeddings.").and_then(|r| r.strip_suffix(".weight"))
        {
            let slot = c.parse::<usize>().ok().and_then(|c| embeddings.get_mut(c));
            match slot {
                Some(slot) => *slot = Some(t),
                None => tracing::warn!(%name, "embedding table of a channel the config lacks"),
            }
            continue;
        }
        let (name, t) = if name == "decoder.logits_dense.weight" {
            ("logits_dense.weight".to_owned(), dense_general_to_linear(&t, 1))
        } else if name.ends_with("o_proj.weight") {
            (format!("model.{name}"), dense_general_to_linear(&t, 2))
        } else if name.ends_with("_proj.weight") {
            (format!("model.{name}"), dense_general_to_linear(&t, 1))
        } else if let Some(layer) = name.strip_suffix("mlp.wi_fused.weight") {
            (format!("model.{layer}mlp.gate_up_proj.weight"), dense_general_to_linear(&t, 1))
        } else if let Some(layer) = name.strip_suffix("mlp.wo.weight") {
            (format!("model.{layer}mlp.down_proj.weight"), dense_general_to_linear(&t, 1))
        } else {
            (format!("model.{name}"), t)
        };
        out.insert(name, t);
    }
    let tables: Vec<Tensor> = embeddings
        .into_iter()
        .enumerate()
        .map(|(c, t)| {
            let name = format!("decoder.embeddings.{c}.weight");
            let expected = vec![cfg.vocab_size, cfg.hidden_size];
            let t = t.ok_or_else(|| ModelError::MissingTensor {
                name: name.clone(),
                expected: expected.clone(),
            })?;
            if t.size() != expected {
                return Err(ModelError::ShapeMismatch { name, expected, found: t.size() });
            }
            Ok(t)
        })
        .collect::<Result<_>>()?;
    out.insert("model.decoder.embeddings.embed.weight".into(), Tensor::cat(&tables, 0));
    Ok(out)
}
