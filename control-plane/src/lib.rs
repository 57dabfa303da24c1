//! The control plane: public HTTP API, voice library, history, node routing.
pub mod audio;
