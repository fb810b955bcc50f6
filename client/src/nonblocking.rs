//! The async client, on tokio. Its bytes are [`crate::connection`]'s; this file is its I/O, each
//! request bounded by the timeout.

use std::path::Path;
use std::time::Duration;

use sessiond_proto::{hello, paths, Event, Request, ResponseFrame, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::connection::{Connection, READ_CHUNK};
use crate::ops::{self, CheckpointOptions, CreateOptions, Resumed};
use crate::{handle_ops, typed_ops, Error, Result, DEFAULT_TIMEOUT};
use crate::{
    AttachInfo, AttachRequest, BatchRequest, CheckpointInfo, CheckpointRef, CopyRequest,
    DeleteCheckpointsRequest, FailRequest, GetRequest, HistoryRequest, ListRequest, Meta, Payload,
    PruneRequest, Reply, ResumeRequest, Stats, Target,
};

/// A connection to sessiond, for async programs.
pub struct AsyncClient {
    core: Connection,
    stream: UnixStream,
    buf: Vec<u8>,
}

impl AsyncClient {
    /// Connects to the socket the daemon uses by default (`$SESSIOND_SOCKET`, ...).
    pub async fn connect_default() -> Result<Self> {
        Self::connect(paths::socket_path(None)).await
    }

    /// Connects to the daemon's socket at `path`, with the default request timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> sessiond_client::Result<()> {
    /// use sessiond_client::{AsyncClient, CreateOptions};
    ///
    /// let mut c = AsyncClient::connect("/run/sessiond/sessiond.sock").await?;
    /// let mut session = c.open_session("agent-7", CreateOptions::default()).await?;
    /// session.checkpoint(b"state".to_vec()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with(path, Some(DEFAULT_TIMEOUT)).await
    }

    /// Connects with a request timeout (`None`: wait forever), the handshake included.
    pub async fn connect_with(path: impl AsRef<Path>, timeout: Option<Duration>) -> Result<Self> {
        let core = Connection::new(path.as_ref().to_path_buf(), timeout);
        Self::open(core, sessiond_proto::PROTOCOL_VERSION).await
    }

    /// Connects claiming protocol `version` (for testing version negotiation).
    pub async fn connect_with_version(path: impl AsRef<Path>, version: u32) -> Result<Self> {
        let core = Connection::new(path.as_ref().to_path_buf(), Some(DEFAULT_TIMEOUT));
        Self::open(core, version).await
    }

    async fn open(core: Connection, version: u32) -> Result<Self> {
        core.check_trusted()?;
        let stream = UnixStream::connect(&core.path)
            .await
            .map_err(|e| core.connect_error(e))?;
        let mut c = AsyncClient {
            core,
            stream,
            buf: vec![0; READ_CHUNK],
        };
        c.bounded(async move |c: &mut Self| {
            c.write(&hello::client_hello_for(version)).await?;
            let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
            c.read_exact(&mut fixed).await?;
            let mut message = vec![0u8; c.core.hello_message_len(&fixed)?];
            c.read_exact(&mut message).await?;
            c.core.hello_done(&fixed, &message)
        })
        .await?;
        Ok(c)
    }

    /// Sets how long a request may take (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.core.timeout = timeout;
        Ok(())
    }

    /// Root only: act on this user's sessions.
    pub fn act_as_uid(&mut self, uid: Option<u32>) {
        self.core.uid = uid;
    }

    /// Connects again to the same socket (after the daemon restarted).
    pub async fn reconnect(&mut self) -> Result<()> {
        let mut fresh = AsyncClient::connect_with(&self.core.path, self.core.timeout).await?;
        fresh.core.uid = self.core.uid;
        *self = fresh;
        Ok(())
    }

    /// Runs `f` within the timeout; a timed-out connection is not reused.
    async fn bounded<T>(&mut self, f: impl AsyncFnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let Some(limit) = self.core.timeout else {
            return f(self).await;
        };
        match tokio::time::timeout(limit, f(self)).await {
            Ok(r) => r,
            Err(_) => Err(self.core.timed_out()),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self.stream.write_all(bytes).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.core.failed(e)),
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.stream.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.core.failed(e)),
        }
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, request: Request) -> Result<u64> {
        let (id, bytes) = self.core.request(request)?;
        self.write(&bytes).await?;
        Ok(id)
    }

    /// Reads the next reply (replies come in request order).
    pub async fn recv(&mut self) -> Result<ResponseFrame> {
        loop {
            if let Some(reply) = self.core.reply() {
                return reply;
            }
            match self.stream.read(&mut self.buf).await {
                Ok(0) => return Err(self.core.closed()),
                Ok(n) => self.core.received(&self.buf[..n]),
                Err(e) => return Err(self.core.failed(e)),
            }
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&mut self, request: Request) -> Result<crate::Reply> {
        self.bounded(async move |c: &mut Self| {
            let id = c.send(request).await?;
            let resp = c.recv().await?;
            c.core.answer(id, resp)
        })
        .await
    }

    /// Turns this connection into a stream of events for the caller's sessions (or one).
    pub async fn watch(mut self, name: Option<&str>) -> Result<AsyncWatch> {
        let r = self
            .call(Request::Watch(sessiond_proto::WatchRequest {
                name: name.map(Into::into),
            }))
            .await?;
        ops::watching(r)?;
        self.set_timeout(None)?;
        Ok(AsyncWatch { client: self })
    }

    typed_ops!({async} {.await});

    /// A handle on a session this task holds (from `create` or `resume`), writing at its
    /// epoch.
    pub fn handle(&mut self, session: SessionInfo) -> AsyncSession<'_> {
        AsyncSession::new(self, session)
    }

    /// Creates a session and returns a handle that fences its writes by epoch.
    pub async fn open_session(
        &mut self,
        name: &str,
        options: CreateOptions,
    ) -> Result<AsyncSession<'_>> {
        let info = self.create(name, options).await?;
        Ok(AsyncSession::new(self, info))
    }

    /// Resumes a session: its handle (at the new epoch) and its latest intact checkpoint.
    pub async fn resume_session(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<(AsyncSession<'_>, Option<CheckpointInfo>)> {
        let Resumed {
            session,
            checkpoint,
        } = self.resume(name, None, force).await?;
        Ok((AsyncSession::new(self, session), checkpoint))
    }
}

/// Events of a `watch`. [`AsyncWatch::next`] gives `None` once the connection ends.
pub struct AsyncWatch {
    client: AsyncClient,
}

impl AsyncWatch {
    /// The next event; `None` once the daemon has closed the watch.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        match self.client.recv().await {
            Err(Error::Disconnected(_)) => None,
            Err(e) => Some(Err(e)),
            Ok(frame) => Some(ops::event(frame)),
        }
    }
}

/// A session held by this task: every checkpoint carries the epoch it was opened at.
pub struct AsyncSession<'c> {
    client: &'c mut AsyncClient,
    info: SessionInfo,
}

impl<'c> AsyncSession<'c> {
    pub(crate) fn new(client: &'c mut AsyncClient, info: SessionInfo) -> Self {
        AsyncSession { client, info }
    }

    handle_ops!({async} {.await});
}
