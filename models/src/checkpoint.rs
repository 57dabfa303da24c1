//! Reading safetensors checkpoints and copying them strictly into a built module tree.

use std::collections::HashMap;
use std::path::Path;

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{ModelError, Result};

/// Tensors by checkpoint name.
pub type TensorMap = HashMap<String, Tensor>;

/// Reads every tensor of one safetensors file; a missing or corrupt file names itself.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| ModelError::Checkpoint { path: path.to_owned(), message: e.to_string() })?;
    Ok(tensors.into_iter().collect())
}

/// Copies `tensors` into every variable of `vs`, by name, in place and converted to the
/// variable's dtype (the one the tree was built in). A variable without a tensor, or with a
/// tensor of another shape, is an error naming it; tensors nothing uses are logged and ignored.
/// Then freezes the store.
pub fn load_into(vs: &mut VarStore, mut tensors: TensorMap) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in variables {
        let expected = var.size();
        let src = tensors.remove(&name).ok_or_else(|| ModelError::MissingTensor {
            name: name.clone(),
            expected: expected.clone(),
        })?;
        if src.size() != expected {
            return Err(ModelError::ShapeMismatch { name, expected, found: src.size() });
        }
        var.f_copy_(&src)?;
    }
    let mut unused: Vec<_> = tensors.into_keys().collect();
    if !unused.is_empty() {
        unused.sort();
        tracing::warn!(count = unused.len(), first = %unused[0], "checkpoint tensors not used");
    }
    vs.freeze();
    Ok(())
}
