//! Choosing where and in which precision the model runs.

use anyhow::{bail, Context};
use tch::{Device, Kind};

/// `cpu`, `cuda`, `cuda:N`, or `auto`: the first GPU where libtorch sees one, else the CPU.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let device = match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:") {
            Some(n) => Device::Cuda(n.parse().with_context(|| format!("bad device `{other}`"))?),
            None => bail!("unknown device `{other}` (auto, cpu, cuda, cuda:N)"),
        },
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("device `{spec}` asked for, but CUDA is not available to libtorch");
    }
    Ok(device)
}

/// The weights' dtype: `f32` on CPU (the default there); `bf16` (the CUDA default) or `f16`
/// on CUDA. Softmax, sampling and the codec stay f32 regardless.
pub fn parse_dtype(spec: Option<&str>, device: Device) -> anyhow::Result<Kind> {
    let kind = match spec.unwrap_or(if device.is_cuda() { "bf16" } else { "f32" }) {
        "f32" => Kind::Float,
        "bf16" => Kind::BFloat16,
        "f16" => Kind::Half,
        other => bail!("unknown dtype `{other}` (f32, bf16, f16)"),
    };
    if kind != Kind::Float && !device.is_cuda() {
        bail!("{kind:?} weights need a CUDA device; use f32 on the CPU");
    }
    Ok(kind)
}
