//! Seeded random weights for a model's own variables, by the reference's initialisation rules:
//! norm weights and snake `alpha` one, biases zero, everything else normal scaled by its fan-in.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::TensorMap;

/// One tensor per variable of `vs`, on the CPU, in f32; the same `seed` gives the same values.
pub fn weights(vs: &VarStore, seed: i64) -> TensorMap {
    tch::manual_seed(seed);
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    // The draw order must not depend on the map's order.
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables
        .into_iter()
        .map(|(name, var)| {
            let size = var.size();
            let options = (Kind::Float, Device::Cpu);
            let value = if name.ends_with("norm.weight") || name.ends_with(".alpha") {
                Tensor::ones(&size, options)
            } else if name.ends_with(".bias") {
                Tensor::zeros(&size, options)
            } else {
                let fan_in: i64 = size.iter().skip(1).product();
                Tensor::randn(&size, options) / (fan_in.max(1) as f64).sqrt()
            };
            (name, value)
        })
        .collect()
}
