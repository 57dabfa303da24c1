//! Dia and the DAC codec on libtorch.
