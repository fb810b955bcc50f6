//! The blocking client: std only, no runtime, usable from any synchronous program.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiond_proto::frame::FrameDecoder;
use sessiond_proto::{hello, paths, Event, Request, ResponseFrame, SessionInfo};

use crate::ops::{self, CheckpointOptions, CreateOptions, Resumed};
use crate::{handle_ops, typed_ops, Error, Result, DEFAULT_TIMEOUT, MAX_REPLY_BYTES};
use crate::{CheckpointInfo, FailRequest, GetRequest, ListRequest, Stats};

/// A connection to sessiond.
pub struct Client {
    path: PathBuf,
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    buf: Vec<u8>,
    timeout: Option<Duration>,
    uid: Option<u32>,
    /// A request timed out: its late reply would be taken for the next one's.
    broken: bool,
}

impl Client {
    /// Connects to the socket the daemon uses by default (`$SESSIOND_SOCKET`, ...).
    pub fn connect_default() -> Result<Self> {
        Self::connect(paths::socket_path(None))
    }

    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, Some(DEFAULT_TIMEOUT))
    }

    /// Connects with a request timeout (`None`: wait forever), the handshake included.
    pub fn connect_with(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self> {
        Self::open(path.as_ref(), timeout, sessiond_proto::PROTOCOL_VERSION)
    }

    /// Connects claiming protocol `version` (for testing version negotiation).
    pub fn connect_with_version(path: impl AsRef<Path>, version: u32) -> Result<Self> {
        Self::open(path.as_ref(), Some(DEFAULT_TIMEOUT), version)
    }

    fn open(path: &Path, timeout: Option<Duration>, version: u32) -> Result<Self> {
        let path = path.to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|error| Error::Connect {
            path: path.clone(),
            error,
        })?;
        let mut c = Client {
            path,
            stream,
            decoder: FrameDecoder::new(MAX_REPLY_BYTES),
            next_id: 1,
            buf: vec![0; 256 << 10],
            timeout,
            uid: None,
            broken: false,
        };
        c.apply_timeout()?;
        c.handshake(version)?;
        Ok(c)
    }

    /// Sets how long a request may take (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.timeout = timeout;
        self.apply_timeout()
    }

    /// Root only: act on this user's sessions.
    pub fn act_as_uid(&mut self, uid: Option<u32>) {
        self.uid = uid;
    }

    /// Connects again to the same socket (after the daemon restarted).
    pub fn reconnect(&mut self) -> Result<()> {
        let mut fresh = Client::connect_with(&self.path, self.timeout)?;
        fresh.uid = self.uid;
        *self = fresh;
        Ok(())
    }

    fn apply_timeout(&mut self) -> Result<()> {
        self.stream
            .set_read_timeout(self.timeout)
            .map_err(Error::Disconnected)?;
        self.stream
            .set_write_timeout(self.timeout)
            .map_err(Error::Disconnected)
    }

    fn io_error(&mut self, e: std::io::Error) -> Error {
        self.broken = true;
        match e.kind() {
            IoKind::WouldBlock | IoKind::TimedOut => {
                Error::Timeout(self.timeout.unwrap_or_default())
            }
            _ => Error::Disconnected(e),
        }
    }

    fn handshake(&mut self, version: u32) -> Result<()> {
        self.stream
            .write_all(&hello::client_hello_for(version))
            .map_err(|e| self.io_error(e))?;
        let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
        self.stream
            .read_exact(&mut fixed)
            .map_err(|e| self.io_error(e))?;
        let h = hello::parse_server_hello(&fixed).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut msg = vec![0u8; h.message_len];
        self.stream
            .read_exact(&mut msg)
            .map_err(|e| self.io_error(e))?;
        if !h.accepted {
            return Err(crate::error::refusal(&msg));
        }
        Ok(())
    }

    /// Sends a request without waiting; returns its id.
    pub fn send(&mut self, request: Request) -> Result<u64> {
        if self.broken {
            return Err(Error::Disconnected(std::io::Error::other(
                "an earlier request failed on this connection",
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let bytes = ops::encode_request(id, self.uid, request)?;
        self.stream
            .write_all(&bytes)
            .map_err(|e| self.io_error(e))?;
        Ok(id)
    }

    /// Reads the next reply (replies come in request order).
    pub fn recv(&mut self) -> Result<ResponseFrame> {
        loop {
            if let Some(reply) = ops::next_reply(&mut self.decoder) {
                return reply;
            }
            let n = match self.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::Disconnected(IoKind::UnexpectedEof.into()));
                }
                Ok(n) => n,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => return Err(self.io_error(e)),
            };
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Sends a request and waits for its reply.
    pub fn call(&mut self, request: Request) -> Result<crate::Reply> {
        let id = self.send(request)?;
        let resp = self.recv()?;
        if resp.id != id {
            self.broken = true;
            return Err(Error::Protocol(format!(
                "reply for request {} while waiting for {id}",
                resp.id
            )));
        }
        Ok(resp.result?)
    }

    /// Turns this connection into a stream of events for the caller's sessions (or one).
    pub fn watch(mut self, name: Option<&str>) -> Result<Watch> {
        let r = self.call(Request::Watch(sessiond_proto::WatchRequest {
            name: name.map(Into::into),
        }))?;
        ops::watching(r)?;
        self.set_timeout(None)?;
        Ok(Watch { client: self })
    }

    typed_ops!({} {});

    /// A handle on a session this process holds (from `create` or `resume`), writing at its
    /// epoch.
    pub fn handle(&mut self, session: SessionInfo) -> Session<'_> {
        Session::new(self, session)
    }

    /// Creates a session and returns a handle that fences its writes by epoch.
    pub fn open_session(&mut self, name: &str, options: CreateOptions) -> Result<Session<'_>> {
        let info = self.create(name, options)?;
        Ok(Session::new(self, info))
    }

    /// Resumes a session: its handle (at the new epoch) and its latest intact checkpoint.
    pub fn resume_session(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<(Session<'_>, Option<CheckpointInfo>)> {
        let Resumed {
            session,
            checkpoint,
        } = self.resume(name, None, force)?;
        Ok((Session::new(self, session), checkpoint))
    }
}

/// Events of a `watch`, as an iterator. It ends when the connection does.
pub struct Watch {
    client: Client,
}

impl Iterator for Watch {
    type Item = Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.client.recv() {
            Err(Error::Disconnected(_)) => None,
            Err(e) => Some(Err(e)),
            Ok(frame) => Some(ops::event(frame)),
        }
    }
}

/// A session held by this process: every checkpoint carries the epoch it was opened at.
pub struct Session<'c> {
    client: &'c mut Client,
    info: SessionInfo,
}

impl<'c> Session<'c> {
    pub(crate) fn new(client: &'c mut Client, info: SessionInfo) -> Self {
        Session { client, info }
    }

    handle_ops!({} {});
}
