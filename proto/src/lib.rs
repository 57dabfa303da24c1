//! The contract between the control plane and GPU nodes.
