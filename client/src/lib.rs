//! Client for sessiond over its local socket (binary protocol).
//!
//! A thin, blocking client: it performs the handshake, sends requests and reads replies, and
//! leaves all policy to the daemon. Requests may be pipelined with [`Client::send`] and
//! [`Client::recv`]; replies arrive in request order.
//!
//! ```no_run
//! use sessiond_client::Client;
//! let mut c = Client::connect_default()?;
//! c.create("job-1", None)?;
//! let n = c.checkpoint("job-1", b"state".to_vec())?.number;
//! let latest = c.get("job-1", None)?.expect("one checkpoint");
//! assert_eq!(latest.number, n);
//! # Ok::<(), sessiond_client::Error>(())
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use sessiond_proto::frame::{encode_frame, Frame, FrameDecoder};
use sessiond_proto::{codec, hello, paths};
pub use sessiond_proto::{
    CheckpointInfo, CheckpointRequest, CreateRequest, ErrorKind, FailRequest, GetRequest,
    ListRequest, Meta, NameRequest, Payload, Reply, Request, RequestFrame, ResponseFrame,
    SessionInfo, Stats, Status, WireError,
};

/// Largest reply accepted: a maximal checkpoint (1 GiB) and its description.
const MAX_REPLY_BYTES: usize = (1 << 30) + (1 << 20);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to sessiond at {path}: {source} (is the daemon running? start it with `sessiond`)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connection to sessiond failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Server(#[from] WireError),
}

impl Error {
    /// The daemon's error kind, if the daemon refused the request.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Server(e) => Some(e.kind),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the socket resolved as the daemon does (`$SESSIOND_SOCKET`, ...).
    pub fn connect_default() -> Result<Self> {
        Self::connect(paths::socket_path(None))
    }

    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, sessiond_proto::PROTOCOL_VERSION)
    }

    /// Connects claiming protocol `version` (for testing version negotiation).
    pub fn connect_with_version(path: impl AsRef<Path>, version: u32) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, version)
    }

    fn handshake(mut stream: UnixStream, version: u32) -> Result<Self> {
        stream.write_all(&hello::client_hello_for(version))?;
        let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
        stream.read_exact(&mut fixed)?;
        let h = hello::parse_server_hello(&fixed).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut msg = vec![0u8; h.message_len];
        stream.read_exact(&mut msg)?;
        if !h.accepted {
            return Err(Error::Server(WireError::new(
                ErrorKind::UnsupportedVersion,
                String::from_utf8_lossy(&msg),
            )));
        }
        Ok(Client {
            stream,
            decoder: FrameDecoder::new(MAX_REPLY_BYTES),
            next_id: 1,
            buf: vec![0; 256 << 10],
        })
    }

    /// Sends a request without waiting; returns its id.
    pub fn send(&mut self, request: Request) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = encode_frame(&RequestFrame {
            id,
            uid: None,
            request,
        })
        .map_err(|e| Error::Protocol(e.to_string()))?;
        self.stream.write_all(&bytes)?;
        Ok(id)
    }

    /// Reads the next reply.
    pub fn recv(&mut self) -> Result<ResponseFrame> {
        loop {
            match self.decoder.next_frame() {
                Some(Frame::Body(body)) => {
                    return codec::decode(body).map_err(|e| Error::Protocol(e.to_string()))
                }
                Some(Frame::TooLarge { len, .. }) => {
                    return Err(Error::Protocol(format!(
                        "reply of {len} bytes exceeds {MAX_REPLY_BYTES}"
                    )))
                }
                None => {}
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                )));
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Sends a request and waits for its reply.
    pub fn call(&mut self, request: Request) -> Result<Reply> {
        let id = self.send(request)?;
        let resp = self.recv()?;
        if resp.id != id {
            return Err(Error::Protocol(format!(
                "reply for request {} while waiting for {id}",
                resp.id
            )));
        }
        Ok(resp.result?)
    }

    pub fn ping(&mut self) -> Result<(String, u32)> {
        match self.call(Request::Ping)? {
            Reply::Pong { version, protocol } => Ok((version, protocol)),
            other => Err(unexpected(other)),
        }
    }

    pub fn create(&mut self, name: &str, keep: Option<u32>) -> Result<SessionInfo> {
        self.session_op(Request::Create(CreateRequest {
            name: name.into(),
            owner_pid: None,
            keep,
            meta: Meta::new(),
        }))
    }

    pub fn checkpoint(&mut self, name: &str, payload: Vec<u8>) -> Result<CheckpointInfo> {
        self.checkpoint_with(CheckpointRequest {
            name: name.into(),
            payload: Payload(payload),
            meta: Meta::new(),
            expect: None,
            epoch: None,
        })
    }

    pub fn checkpoint_with(&mut self, req: CheckpointRequest) -> Result<CheckpointInfo> {
        match self.call(Request::Checkpoint(req))? {
            Reply::Checkpoint(Some(c)) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    /// The latest intact checkpoint (or `number`), with its payload.
    pub fn get(&mut self, name: &str, number: Option<u64>) -> Result<Option<CheckpointInfo>> {
        match self.call(Request::Get(GetRequest {
            name: name.into(),
            number,
        }))? {
            Reply::Checkpoint(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    pub fn show(&mut self, name: &str) -> Result<SessionInfo> {
        self.session_op(Request::Show(NameRequest { name: name.into() }))
    }

    pub fn list(&mut self, filter: ListRequest) -> Result<Vec<SessionInfo>> {
        match self.call(Request::List(filter))? {
            Reply::Sessions(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub fn history(&mut self, name: &str) -> Result<Vec<CheckpointInfo>> {
        match self.call(Request::History(NameRequest { name: name.into() }))? {
            Reply::Checkpoints(c) => Ok(c),
            other => Err(unexpected(other)),
        }
    }

    pub fn pause(&mut self, name: &str) -> Result<SessionInfo> {
        self.session_op(Request::Pause(NameRequest { name: name.into() }))
    }

    pub fn complete(&mut self, name: &str) -> Result<SessionInfo> {
        self.session_op(Request::Complete(NameRequest { name: name.into() }))
    }

    pub fn cancel(&mut self, name: &str) -> Result<SessionInfo> {
        self.session_op(Request::Cancel(NameRequest { name: name.into() }))
    }

    pub fn fail(&mut self, name: &str, error: Option<&str>) -> Result<SessionInfo> {
        self.session_op(Request::Fail(FailRequest {
            name: name.into(),
            error: error.map(Into::into),
        }))
    }

    /// Deletes a session; `false` if there was none.
    pub fn delete(&mut self, name: &str) -> Result<bool> {
        match self.call(Request::Delete(NameRequest { name: name.into() }))? {
            Reply::Deleted(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }

    pub fn stats(&mut self) -> Result<Stats> {
        match self.call(Request::Stats)? {
            Reply::Stats(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    fn session_op(&mut self, req: Request) -> Result<SessionInfo> {
        match self.call(req)? {
            Reply::Session(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Protocol(format!("unexpected reply {reply:?}"))
}
