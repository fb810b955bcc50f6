//! The sessiond protocol: every message type, the framing, both codecs (bincode frames and
//! JSON lines), the protocol version and the socket/state-directory resolver.
//!
//! Daemon and clients depend on this crate and never touch raw bytes themselves. Wire types
//! are append-only: bincode carries no field names, so a field's type or position never
//! changes and new enum variants go at the end.
#![warn(missing_docs)]

pub mod codec;
pub mod frame;
pub mod hello;
pub mod json;
pub mod paths;
pub mod time;
pub mod types;
pub mod validate;
pub mod wire;

pub use types::*;

/// Version of the binary protocol, exchanged in the hello. 2: `stats` reports the store's
/// health. 3: the framework ops (checkpoint keys, attachments, history filters and paging,
/// list paging, delete_checkpoints, prune, copy, batch, detached sessions).
pub const PROTOCOL_VERSION: u32 = 4;

/// Version of the sessiond release these types belong to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
