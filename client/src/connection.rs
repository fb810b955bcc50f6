//! What the blocking and the async client share: a connection's state and every byte it
//! exchanges (the hello, request frames, replies, their ids), so that each client does only
//! its own I/O and the two cannot drift.

use std::io::ErrorKind as IoKind;
use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::frame::FrameDecoder;
use sessiond_proto::{hello, Reply, Request, ResponseFrame};

use crate::{ops, Error, Result, MAX_REPLY_BYTES};

/// Bytes read from the socket at a time.
pub(crate) const READ_CHUNK: usize = 256 << 10;

pub(crate) struct Connection {
    pub path: PathBuf,
    pub timeout: Option<Duration>,
    pub uid: Option<u32>,
    decoder: FrameDecoder,
    next_id: u64,
    /// A request failed or timed out: a late reply would be taken for the next one's.
    broken: bool,
}

impl Connection {
    pub fn new(path: PathBuf, timeout: Option<Duration>) -> Self {
        Connection {
            path,
            timeout,
            uid: None,
            decoder: FrameDecoder::new(MAX_REPLY_BYTES),
            next_id: 1,
            broken: false,
        }
    }

    /// Refuses a socket whose directory another user could swap it in.
    pub fn check_trusted(&self) -> Result<()> {
        sessiond_proto::paths::check_socket_dir(&self.path).map_err(|reason| {
            Error::UntrustedSocket {
                path: self.path.clone(),
                reason,
            }
        })
    }

    pub fn connect_error(&self, error: std::io::Error) -> Error {
        Error::Connect {
            path: self.path.clone(),
            error,
        }
    }

    /// The fixed part of the daemon's hello: how long its message is.
    pub fn hello_message_len(&self, fixed: &[u8; hello::SERVER_HELLO_LEN]) -> Result<usize> {
        let h = hello::parse_server_hello(fixed).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(h.message_len)
    }

    /// The daemon's verdict on our hello, from its fixed part and message.
    pub fn hello_done(&self, fixed: &[u8; hello::SERVER_HELLO_LEN], message: &[u8]) -> Result<()> {
        let h = hello::parse_server_hello(fixed).map_err(|e| Error::Protocol(e.to_string()))?;
        if !h.accepted {
            return Err(crate::error::refusal(message));
        }
        Ok(())
    }

    /// The next request's id and bytes.
    pub fn request(&mut self, request: Request) -> Result<(u64, Vec<u8>)> {
        if self.broken {
            return Err(Error::Disconnected(std::io::Error::other(
                "an earlier request failed on this connection",
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok((id, ops::encode_request(id, self.uid, request)?))
    }

    /// The next reply buffered, if a whole one is.
    pub fn reply(&mut self) -> Option<Result<ResponseFrame>> {
        ops::next_reply(&mut self.decoder)
    }

    pub fn received(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// The reply to request `id`; anything else means the connection lost its way.
    pub fn answer(&mut self, id: u64, resp: ResponseFrame) -> Result<Reply> {
        if resp.id != id {
            self.broken = true;
            return Err(Error::Protocol(format!(
                "reply for request {} while waiting for {id}",
                resp.id
            )));
        }
        Ok(resp.result?)
    }

    /// An I/O error on the connection: it is not used again.
    pub fn failed(&mut self, e: std::io::Error) -> Error {
        self.broken = true;
        match e.kind() {
            IoKind::WouldBlock | IoKind::TimedOut => {
                Error::Timeout(self.timeout.unwrap_or_default())
            }
            _ => Error::Disconnected(e),
        }
    }

    /// The daemon closed the connection.
    pub fn closed(&mut self) -> Error {
        self.failed(IoKind::UnexpectedEof.into())
    }

    /// A request outlived the timeout: the connection is not used again.
    pub fn timed_out(&mut self) -> Error {
        self.broken = true;
        Error::Timeout(self.timeout.unwrap_or_default())
    }
}
