//! The codec's weights in transformers naming with folded weight norm, from any of the three
//! layouts in circulation (docs/dia-reference.md §11.7): transformers with plain `.weight`,
//! transformers with `parametrizations.weight.original0/1`, and the original module tree with
//! `weight_g`/`weight_v`.

use std::path::Path;

use super::config::DacConfig;
use crate::checkpoint::{read_safetensors, TensorMap};
use crate::error::{ModelError, Result};
use crate::nn_ext::fold_weight_norm;

/// Reads a weight file and brings it to transformers naming with folded weights.
pub fn read_weights(path: &Path, cfg: &DacConfig) -> Result<TensorMap> {
    let mut tensors = read_safetensors(path)?;
    // Only the original tree has `decoder.model`; its `encoder.block.N` would be misread otherwise.
    if tensors.keys().any(|k| k.starts_with("decoder.model.")) {
        tensors = tensors
            .into_iter()
            .map(|(name, t)| (original_to_transformers(&name, cfg).unwrap_or(name), t))
            .collect();
    }
    fold_all(tensors)
}

/// Replaces every `g`/`v` pair by the folded `weight`.
fn fold_all(mut tensors: TensorMap) -> Result<TensorMap> {
    const PAIRS: [(&str, &str); 2] = [
        (".weight_g", ".weight_v"),
        (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
    ];
    let names: Vec<String> = tensors.keys().cloned().collect();
    for name in names {
        for (g_suffix, v_suffix) in PAIRS {
            let Some(prefix) = name.strip_suffix(g_suffix) else { continue };
            let g = tensors.remove(&name).expect("listed");
            let v_name = format!("{prefix}{v_suffix}");
            let v = tensors.remove(&v_name).ok_or_else(|| ModelError::MissingTensor {
                name: v_name,
                expected: g.size().into_iter().take(1).collect(),
            })?;
            tensors.insert(format!("{prefix}.weight"), fold_weight_norm(&g, &v));
        }
    }
    Ok(tensors)
}

/// The transformers name of an original-tree name (`encoder.block.N…`, `decoder.model.N…`).
fn original_to_transformers(name: &str, cfg: &DacConfig) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let index = |i: usize| parts.get(i).and_then(|p| p.parse::<usize>().ok());
    let rest = |i: usize| parts[i.min(parts.len())..].join(".");
    const UNIT: [&str; 4] = ["snake1", "conv1", "snake2", "conv2"];
    match (parts.first()?, parts.get(1)?) {
        (&"encoder", &"block") => {
            let n = cfg.encoder_rates.len();
            let i = index(2)?;
            Some(match i {
                0 => format!("encoder.conv1.{}", rest(3)),
                i if i <= n => {
                    let b = i - 1;
                    match index(4)? {
                        r @ 0..=2 => format!(
                            "encoder.block.{b}.res_unit{}.{}.{}",
                            r + 1,
                            UNIT.get(index(6)?)?,
                            rest(7)
                        ),
                        3 => format!("encoder.block.{b}.snake1.{}", rest(5)),
                        4 => format!("encoder.block.{b}.conv1.{}", rest(5)),
                        _ => return None,
                    }
                }
                i if i == n + 1 => format!("encoder.snake1.{}", rest(3)),
                i if i == n + 2 => format!("encoder.conv2.{}", rest(3)),
                _ => return None,
            })
        }
        (&"decoder", &"model") => {
            let n = cfg.decoder_rates.len();
            let i = index(2)?;
            Some(match i {
                0 => format!("decoder.conv1.{}", rest(3)),
                i if i <= n => {
                    let b = i - 1;
                    match index(4)? {
                        0 => format!("decoder.block.{b}.snake1.{}", rest(5)),
                        1 => format!("decoder.block.{b}.conv_t1.{}", rest(5)),
                        r @ 2..=4 => format!(
                            "decoder.block.{b}.res_unit{}.{}.{}",
                            r - 1,
                            UNIT.get(index(6)?)?,
                            rest(7)
                        ),
                        _ => return None,
                    }
                }
                i if i == n + 1 => format!("decoder.snake1.{}", rest(3)),
                i if i == n + 2 => format!("decoder.conv2.{}", rest(3)),
                _ => return None,
            })
        }
        _ => None,
    }
}
