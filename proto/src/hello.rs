//! The binary protocol's handshake. Its layout is fixed forever so that any two versions can
//! tell each other apart cleanly:
//!
//! - client: `MAGIC` then the protocol version as `u32` LE (8 bytes);
//! - server: `MAGIC`, its protocol version (`u32` LE), a status (`u32` LE, 0 = accepted,
//!   1 = unsupported version), a message length (`u32` LE) and the UTF-8 message.
//!
//! The magic never starts with `{`, which selects JSON lines instead.

use crate::PROTOCOL_VERSION;

/// The first bytes of every binary hello.
pub const MAGIC: [u8; 4] = *b"SSND";
/// A client hello's length: the magic and the protocol version.
pub const CLIENT_HELLO_LEN: usize = 8;
/// Fixed part of the server hello, before the message.
pub const SERVER_HELLO_LEN: usize = 16;
/// Longest message a server hello may carry.
pub const MAX_HELLO_MESSAGE: usize = 4096;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelloError {
    /// The peer is not speaking sessiond's binary protocol.
    #[error("not a sessiond peer (bad magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peers share no protocol version.
    #[error("unsupported protocol version {peer} (this side speaks {ours}): {message}")]
    Unsupported {
        /// The version the peer asked for or offers.
        peer: u32,
        /// This side's.
        ours: u32,
        /// The daemon's explanation.
        message: String,
    },
    /// A server hello announcing a message over [`MAX_HELLO_MESSAGE`].
    #[error("server hello message of {0} bytes is too long")]
    MessageTooLong(usize),
}

/// The hello a client of this version sends.
pub fn client_hello() -> [u8; CLIENT_HELLO_LEN] {
    client_hello_for(PROTOCOL_VERSION)
}

/// A client hello claiming `version` (tests use it to speak a version we do not).
pub fn client_hello_for(version: u32) -> [u8; CLIENT_HELLO_LEN] {
    let mut out = [0u8; CLIENT_HELLO_LEN];
    out[..4].copy_from_slice(&MAGIC);
    out[4..].copy_from_slice(&version.to_le_bytes());
    out
}

/// Parses a client hello; returns the client's protocol version.
pub fn parse_client_hello(bytes: &[u8; CLIENT_HELLO_LEN]) -> Result<u32, HelloError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(HelloError::BadMagic(magic));
    }
    Ok(u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]))
}

/// The server's answer: accepted, or refused with a message.
pub fn server_hello(accepted: bool, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(MAX_HELLO_MESSAGE)];
    let mut out = Vec::with_capacity(SERVER_HELLO_LEN + msg.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&u32::from(!accepted).to_le_bytes());
    out.extend_from_slice(&(msg.len() as u32).to_le_bytes());
    out.extend_from_slice(msg);
    out
}

/// The fixed part of a server hello, read before its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello {
    /// The protocol version the connection will speak.
    pub version: u32,
    /// Whether the daemon accepted the client's version.
    pub accepted: bool,
    /// Bytes of message that follow (why a version was refused).
    pub message_len: usize,
}

/// Reads the fixed part of a server hello.
pub fn parse_server_hello(bytes: &[u8; SERVER_HELLO_LEN]) -> Result<ServerHello, HelloError> {
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(HelloError::BadMagic(magic));
    }
    let message_len = word(12) as usize;
    if message_len > MAX_HELLO_MESSAGE {
        return Err(HelloError::MessageTooLong(message_len));
    }
    Ok(ServerHello {
        version: word(4),
        accepted: word(8) == 0,
        message_len,
    })
}
