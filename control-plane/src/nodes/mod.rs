//! GPU nodes: the registry of those connected to this replica and their WebSocket sessions.

pub mod hello;
pub mod registry;
pub mod ws;
