//! Dia, the DAC audio codec and Whisper on libtorch (`tch`), numerically equal to their references.
//!
//! Shape letters used in tensor names: B requests, N = 2·B CFG rows (interleaved: unconditional,
//! conditional), T frames or positions, S text positions, C audio channels (codebooks),
//! V audio vocabulary, D model width, H/K query/KV heads, E head dim, L prompt frames.

pub mod audio;
mod checkpoint;
pub mod dac;
pub mod delay;
pub mod dia;
pub mod error;
pub mod hub;
mod nn_ext;
mod parallel;
pub mod product_plan;
pub mod prompt;
mod random;
pub mod sampling;
pub mod tiny;
pub mod whisper;

pub use error::{ModelError, Result};
