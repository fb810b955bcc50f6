//! The blocking client: std only, no runtime, usable from any synchronous program. Its bytes
//! are [`crate::connection`]'s; this file is its I/O.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use sessiond_proto::{hello, paths, Event, Request, ResponseFrame, SessionInfo};

use crate::connection::{Connection, READ_CHUNK};
use crate::ops::{self, CheckpointOptions, CreateOptions, Resumed};
use crate::{handle_ops, typed_ops, Error, Result, DEFAULT_TIMEOUT};
use crate::{
    AttachInfo, AttachRequest, BatchRequest, CheckpointInfo, CheckpointRef, CopyRequest,
    DeleteCheckpointsRequest, FailRequest, GetRequest, HistoryRequest, ListRequest, Meta, Payload,
    PruneRequest, Reply, ResumeRequest, Stats, Target,
};

/// A connection to sessiond.
pub struct Client {
    core: Connection,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the socket the daemon uses by default (`$SESSIOND_SOCKET`, ...).
    pub fn connect_default() -> Result<Self> {
        Self::connect(paths::socket_path(None))
    }

    /// Connects to the daemon's socket at `path`, with the default request timeout.
    ///
    /// ```no_run
    /// use sessiond_client::{Client, CreateOptions, CheckpointOptions};
    ///
    /// let mut c = Client::connect("/run/sessiond/sessiond.sock")?;
    /// c.create("nightly-import", CreateOptions::default())?;
    /// let cp = c.checkpoint("nightly-import", b"step 1".to_vec(), CheckpointOptions::default())?;
    /// assert_eq!(cp.number, 1);
    /// let latest = c.get("nightly-import", None)?;
    /// # Ok::<(), sessiond_client::Error>(())
    /// ```
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, Some(DEFAULT_TIMEOUT))
    }

    /// Connects with a request timeout (`None`: wait forever), the handshake included.
    pub fn connect_with(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self> {
        Self::open(
            Connection::new(path.as_ref().to_path_buf(), timeout),
            sessiond_proto::PROTOCOL_VERSION,
        )
    }

    /// Connects claiming protocol `version` (for testing version negotiation).
    pub fn connect_with_version(path: impl AsRef<Path>, version: u32) -> Result<Self> {
        Self::open(
            Connection::new(path.as_ref().to_path_buf(), Some(DEFAULT_TIMEOUT)),
            version,
        )
    }

    fn open(core: Connection, version: u32) -> Result<Self> {
        core.check_trusted()?;
        let stream = UnixStream::connect(&core.path).map_err(|e| core.connect_error(e))?;
        let mut c = Client {
            core,
            stream,
            buf: vec![0; READ_CHUNK],
        };
        c.apply_timeout()?;
        c.write(&hello::client_hello_for(version))?;
        let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
        c.read_exact(&mut fixed)?;
        let mut message = vec![0u8; c.core.hello_message_len(&fixed)?];
        c.read_exact(&mut message)?;
        c.core.hello_done(&fixed, &message)?;
        Ok(c)
    }

    /// Sets how long a request may take (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.core.timeout = timeout;
        self.apply_timeout()
    }

    /// Root only: act on this user's sessions.
    pub fn act_as_uid(&mut self, uid: Option<u32>) {
        self.core.uid = uid;
    }

    /// Connects again to the same socket (after the daemon restarted).
    pub fn reconnect(&mut self) -> Result<()> {
        let mut fresh = Client::connect_with(&self.core.path, self.core.timeout)?;
        fresh.core.uid = self.core.uid;
        *self = fresh;
        Ok(())
    }

    fn apply_timeout(&mut self) -> Result<()> {
        let t = self.core.timeout;
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .map_err(Error::Disconnected)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| self.core.failed(e))
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream.read_exact(buf).map_err(|e| self.core.failed(e))
    }

    /// Sends a request without waiting; returns its id.
    pub fn send(&mut self, request: Request) -> Result<u64> {
        let (id, bytes) = self.core.request(request)?;
        self.write(&bytes)?;
        Ok(id)
    }

    /// Reads the next reply (replies come in request order).
    pub fn recv(&mut self) -> Result<ResponseFrame> {
        loop {
            if let Some(reply) = self.core.reply() {
                return reply;
            }
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Err(self.core.closed()),
                Ok(n) => self.core.received(&self.buf[..n]),
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(e) => return Err(self.core.failed(e)),
            }
        }
    }

    /// Sends a request and waits for its reply.
    pub fn call(&mut self, request: Request) -> Result<crate::Reply> {
        let id = self.send(request)?;
        let resp = self.recv()?;
        self.core.answer(id, resp)
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
