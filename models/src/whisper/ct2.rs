//! CTranslate2 Whisper models (`model.bin` + `config.json`, the faster-whisper layout): the
//! binary read into tensors, renamed to transformers naming, and the config derived from them.
//!
//! `model.bin` (CTranslate2 `src/models/model.cc`, binary version 6): u32 version, string spec
//! name, u32 spec revision, u32 variable count, then per variable: string name, u8 rank, u32 per
//! dimension, u8 dtype, u32 byte count, the data; then aliases, which Whisper's tied output
//! projection is the only use of. Strings are a u16 length counting a trailing NUL. Little-endian.

use std::path::Path;

use serde::Deserialize;
use tch::{Kind, Tensor};

use super::config::{read_json, WhisperConfig};
use crate::checkpoint::TensorMap;
use crate::error::{ModelError, Result};

/// The `model.bin` versions whose layout is the one above.
const BINARY_VERSIONS: std::ops::RangeInclusive<u32> = 4..=6;

/// Every variable of a `model.bin`, by CTranslate2 name.
fn read_model_bin(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::Checkpoint { path: path.to_owned(), message: e.to_string() })?;
    let mut r = Reader { bytes: &bytes, pos: 0, path };
    let version = r.u32()?;
    if !BINARY_VERSIONS.contains(&version) {
        return Err(r.error(format!("binary version {version}, expected {BINARY_VERSIONS:?}")));
    }
    let spec = r.string()?;
    if spec != "WhisperSpec" {
        return Err(r.error(format!("a {spec}, not a WhisperSpec")));
    }
    let _revision = r.u32()?;
    let count = r.u32()?;
    let mut tensors = TensorMap::new();
    for _ in 0..count {
        let name = r.string()?;
        // int8 weights with per-row scales would be read as numbers, not dequantised.
        if name.ends_with("_scale") {
            return Err(r.error(format!(
                "{name}: quantized models are not supported (convert with float16 or float32)"
            )));
        }
        let rank = r.u8()?;
        let dims: Vec<i64> = (0..rank).map(|_| r.u32().map(i64::from)).collect::<Result<_>>()?;
        let kind = match r.u8()? {
            0 => Kind::Float,
            1 => Kind::Int8,
            2 => Kind::Int16,
            3 => Kind::Int,
            4 => Kind::Half,
            5 => Kind::BFloat16,
            id => return Err(r.error(format!("{name}: unknown dtype {id}"))),
        };
        let len = r.u32()? as usize;
        let elements: i64 = dims.iter().product();
        if len as i64 != elements * kind.elt_size_in_bytes() as i64 {
            return Err(r.error(format!("{name}: {len} bytes for {dims:?} of {kind:?}")));
        }
        let data = r.take(len)?;
        tensors.insert(name, Tensor::f_from_data_size(data, &dims, kind)?);
    }
    Ok(tensors)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn error(&self, message: String) -> ModelError {
        ModelError::Checkpoint { path: self.path.to_owned(), message }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let out = self.bytes.get(self.pos..self.pos + n).ok_or_else(|| {
            self.error(format!("truncated: {n} bytes wanted at offset {}", self.pos))
        })?;
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        let raw = self.take(len)?;
        let text =
            raw.strip_suffix(&[0]).ok_or_else(|| self.error("unterminated string".into()))?;
        String::from_utf8(text.to_vec()).map_err(|e| self.error(e.to_string()))
    }
}

/// The decoding lists of a CTranslate2 Whisper `config.json`.
#[derive(Deserialize)]
struct Ct2Config {
    suppress_ids: Vec<i64>,
    suppress_ids_begin: Vec<i64>,
}

/// A CTranslate2 Whisper folder's weights in transformers naming, and its config (sizes from the
/// tensors and the stored head counts, suppression lists from `config.json`).
pub fn read_dir(dir: &Path) -> Result<(WhisperConfig, TensorMap)> {
    let path = dir.join("model.bin");
    let mut ct2 = read_model_bin(&path)?;
    let lists: Ct2Config = read_json(&dir.join("config.json"))?;
    let missing = |name: &str| ModelError::Checkpoint {
        path: path.clone(),
        message: format!("no variable {name}"),
    };
    let size =
        |ct2: &TensorMap, name: &str| ct2.get(name).map(Tensor::size).ok_or_else(|| missing(name));
    let scalar = |ct2: &TensorMap, name: &str| {
        ct2.get(name).map(|t| t.int64_value(&[])).ok_or_else(|| missing(name))
    };
    let layers = |ct2: &TensorMap, stack: &str| {
        (0..)
            .take_while(|i| ct2.contains_key(&format!("{stack}/layer_{i}/ffn/linear_0/weight")))
            .count() as i64
    };
    let conv1 = size(&ct2, "encoder/conv1/weight")?;
    let embeddings = size(&ct2, "decoder/embeddings/weight")?;
    let config = WhisperConfig {
        num_mel_bins: conv1[1],
        d_model: conv1[0],
        encoder_layers: layers(&ct2, "encoder"),
        encoder_attention_heads: scalar(&ct2, "encoder/num_heads")?,
        decoder_layers: layers(&ct2, "decoder"),
        decoder_attention_heads: scalar(&ct2, "decoder/num_heads")?,
        encoder_ffn_dim: size(&ct2, "encoder/layer_0/ffn/linear_0/weight")?[0],
        decoder_ffn_dim: size(&ct2, "decoder/layer_0/ffn/linear_0/weight")?[0],
        vocab_size: embeddings[0],
        max_source_positions: size(&ct2, "encoder/position_encodings/encodings")?[0],
        max_target_positions: size(&ct2, "decoder/position_encodings/encodings")?[0],
        suppress_tokens: lists.suppress_ids,
        begin_suppress_tokens: lists.suppress_ids_begin,
    };
    let mut out = TensorMap::new();
    for (name, t) in ct2.drain() {
        rename(&path, &name, t, &mut out)?;
    }
    Ok((config, out))
}

/// One CTranslate2 variable → its transformers tensor(s). CTranslate2 fuses the projections
/// that read one input (q, k, v of self-attention; k, v of cross-attention) and gives the
/// bias-free key projection a zero bias; they are split again and that bias dropped (checked
/// zero). Scalars (head counts, flags) are config, not tensors; anything else keeps its name, so
/// that loading reports it unused.
fn rename(path: &Path, name: &str, t: Tensor, out: &mut TensorMap) -> Result<()> {
    if t.dim() == 0 {
        return Ok(());
    }
    let Some((stack @ ("encoder" | "decoder"), rest)) = name.split_once('/') else {
        out.insert(name.to_owned(), t);
        return Ok(());
    };
    let (module, leaf) = rest.rsplit_once('/').unwrap_or(("", rest));
    let leaf = match leaf {
        "gamma" | "encodings" => "weight",
        "beta" => "bias",
        other => other,
    };
    let (at, module) = match module.strip_prefix("layer_").and_then(|m| m.split_once('/')) {
        Some((layer, module)) => (format!("model.{stack}.layers.{layer}"), module),
        None => (format!("model.{stack}"), module),
    };
    let parts: &[&str] = match module {
        "embeddings" => &["embed_tokens"],
        "position_encodings" => &["embed_positions"],
        "conv1" | "conv2" | "layer_norm" => &[module],
        "self_attention/layer_norm" => &["self_attn_layer_norm"],
        "self_attention/linear_0" => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "self_attention/linear_1" => &["self_attn.out_proj"],
        "attention/layer_norm" => &["encoder_attn_layer_norm"],
        "attention/linear_0" => &["encoder_attn.q_proj"],
        "attention/linear_1" => &["encoder_attn.k_proj", "encoder_attn.v_proj"],
        "attention/linear_2" => &["encoder_attn.out_proj"],
        "ffn/layer_norm" => &["final_layer_norm"],
        "ffn/linear_0" => &["fc1"],
        "ffn/linear_1" => &["fc2"],
        _ => {
            out.insert(name.to_owned(), t);
            return Ok(());
        }
    };
    for (part, chunk) in parts.iter().zip(t.chunk(parts.len() as i64, 0)) {
        if part.ends_with("k_proj") && leaf == "bias" {
            if chunk.abs().max().double_value(&[]) != 0.0 {
                return Err(ModelError::Checkpoint {
                    path: path.to_owned(),
                    message: format!("{name}: the key projection has a bias"),
                });
            }
            continue;
        }
        out.insert(format!("{at}.{part}.{leaf}"), chunk.contiguous());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `model.bin` holding one f32 variable `name` of shape `[2]`.
    fn model_bin(name: &str) -> Vec<u8> {
        let string = |s: &str| {
            let mut out = ((s.len() + 1) as u16).to_le_bytes().to_vec();
            out.extend(s.as_bytes());
            out.push(0);
            out
        };
        let mut bin = 6u32.to_le_bytes().to_vec();
        bin.extend(string("WhisperSpec"));
        bin.extend(3u32.to_le_bytes());
        bin.extend(1u32.to_le_bytes());
        bin.extend(string(name));
        bin.push(1);
        bin.extend(2u32.to_le_bytes());
        bin.push(0);
        bin.extend(8u32.to_le_bytes());
        bin.extend([1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()));
        bin
    }

    #[test]
    fn variables_are_read_with_their_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, model_bin("encoder/layer_norm/gamma")).unwrap();
        let tensors = read_model_bin(&path).unwrap();
        let t = &tensors["encoder/layer_norm/gamma"];
        assert_eq!(Vec::<f32>::try_from(t).unwrap(), [1.5, -2.0]);
    }

    #[test]
    fn quantized_models_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        std::fs::write(&path, model_bin("encoder/layer_0/ffn/linear_0/weight_scale")).unwrap();
        let err = read_model_bin(&path).unwrap_err().to_string();
        assert!(err.contains("quantized"), "{err}");
    }
}
