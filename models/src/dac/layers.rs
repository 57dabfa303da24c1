//! DAC building blocks: snake activation, weight-normed convolutions (folded at load), residual
//! units, encoder and decoder blocks. Shapes: `[B, channels, samples]`.

use tch::nn::{self, Conv1D, ConvTranspose1D, Module};
use tch::Tensor;

/// `x + sin²(αx)/(α + 1e-9)`, per channel α.
#[derive(Debug)]
pub struct Snake1d {
    alpha: Tensor,
}

impl Snake1d {
    pub fn new(vs: nn::Path, channels: i64) -> Self {
        Self { alpha: vs.var("alpha", &[1, channels, 1], nn::Init::Const(1.)) }
    }
}

impl Module for Snake1d {
    fn forward(&self, xs: &Tensor) -> Tensor {
        xs + (&self.alpha + 1e-9).reciprocal() * (&self.alpha * xs).sin().square()
    }
}

/// `x + conv1x1(snake(conv7_dilated(snake(x))))`.
#[derive(Debug)]
pub struct ResidualUnit {
    snake1: Snake1d,
    conv1: Conv1D,
    snake2: Snake1d,
    conv2: Conv1D,
}

impl ResidualUnit {
    pub fn new(vs: nn::Path, channels: i64, dilation: i64) -> Self {
        let dilated = nn::ConvConfig { padding: 3 * dilation, dilation, ..Default::default() };
        Self {
            snake1: Snake1d::new(&vs / "snake1", channels),
            conv1: nn::conv1d(&vs / "conv1", channels, channels, 7, dilated),
            snake2: Snake1d::new(&vs / "snake2", channels),
            conv2: nn::conv1d(&vs / "conv2", channels, channels, 1, Default::default()),
        }
    }
}

impl Module for ResidualUnit {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let y = xs.apply(&self.snake1).apply(&self.conv1).apply(&self.snake2).apply(&self.conv2);
        xs + y
    }
}

/// Residual units 1..3 with dilations 1, 3, 9.
fn residual_units(vs: &nn::Path, channels: i64) -> [ResidualUnit; 3] {
    [(1, 1), (2, 3), (3, 9)]
        .map(|(i, d)| ResidualUnit::new(vs / format!("res_unit{i}"), channels, d))
}

/// Three residual units on `dim/2` channels, then a strided conv to `dim` channels.
#[derive(Debug)]
pub struct EncoderBlock {
    res_units: [ResidualUnit; 3],
    snake1: Snake1d,
    conv1: Conv1D,
}

impl EncoderBlock {
    pub fn new(vs: nn::Path, dim: i64, stride: i64) -> Self {
        let half = dim / 2;
        let strided = nn::ConvConfig { stride, padding: (stride + 1) / 2, ..Default::default() };
        Self {
            res_units: residual_units(&vs, half),
            snake1: Snake1d::new(&vs / "snake1", half),
            conv1: nn::conv1d(&vs / "conv1", half, dim, 2 * stride, strided),
        }
    }
}

impl Module for EncoderBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = self.res_units.iter().fold(xs.shallow_clone(), |x, unit| unit.forward(&x));
        xs.apply(&self.snake1).apply(&self.conv1)
    }
}

/// A strided transposed conv from `c_in` to `c_out` channels, then three residual units.
#[derive(Debug)]
pub struct DecoderBlock {
    snake1: Snake1d,
    conv_t1: ConvTranspose1D,
    res_units: [ResidualUnit; 3],
}

impl DecoderBlock {
    pub fn new(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let cfg = nn::ConvTransposeConfig {
            stride,
            padding: (stride + 1) / 2,
            output_padding: stride % 2,
            ..Default::default()
        };
        Self {
            snake1: Snake1d::new(&vs / "snake1", c_in),
            conv_t1: nn::conv_transpose1d(&vs / "conv_t1", c_in, c_out, 2 * stride, cfg),
            res_units: residual_units(&vs, c_out),
        }
    }
}

impl Module for DecoderBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let xs = xs.apply(&self.snake1).apply(&self.conv_t1);
        self.res_units.iter().fold(xs, |x, unit| unit.forward(&x))
    }
}

/// Conv1d "same" padding for an odd kernel.
pub fn same(k: i64) -> nn::ConvConfig {
    nn::ConvConfig { padding: k / 2, ..Default::default() }
}
