//! The async client, on tokio.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sessiond_proto::frame::FrameDecoder;
use sessiond_proto::{hello, paths, Event, Request, ResponseFrame, SessionInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::ops::{self, CheckpointOptions, CreateOptions, Resumed};
use crate::{handle_ops, typed_ops, Error, Result, DEFAULT_TIMEOUT, MAX_REPLY_BYTES};
use crate::{CheckpointInfo, FailRequest, GetRequest, ListRequest, Stats};

/// A connection to sessiond, for async programs.
pub struct AsyncClient {
    path: PathBuf,
    stream: UnixStream,
    decoder: FrameDecoder,
    next_id: u64,
    buf: Vec<u8>,
    timeout: Option<Duration>,
    uid: Option<u32>,
    broken: bool,
}

impl AsyncClient {
    /// Connects to the socket the daemon uses by default (`$SESSIOND_SOCKET`, ...).
    pub async fn connect_default() -> Result<Self> {
        Self::connect(paths::socket_path(None)).await
    }

    pub async fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|error| Error::Connect {
                path: path.clone(),
                error,
            })?;
        let mut c = AsyncClient {
            path,
            stream,
            decoder: FrameDecoder::new(MAX_REPLY_BYTES),
            next_id: 1,
            buf: vec![0; 256 << 10],
            timeout: Some(DEFAULT_TIMEOUT),
            uid: None,
            broken: false,
        };
        c.bounded(Self::handshake).await?;
        Ok(c)
    }

    /// Sets how long a request may take (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Root only: act on this user's sessions.
    pub fn act_as_uid(&mut self, uid: Option<u32>) {
        self.uid = uid;
    }

    /// Connects again to the same socket (after the daemon restarted).
    pub async fn reconnect(&mut self) -> Result<()> {
        let mut fresh = AsyncClient::connect(&self.path).await?;
        fresh.timeout = self.timeout;
        fresh.uid = self.uid;
        *self = fresh;
        Ok(())
    }

    /// Runs `f` within the timeout; a timed-out connection is not reused.
    async fn bounded<T>(&mut self, f: impl AsyncFnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let Some(limit) = self.timeout else {
            return f(self).await;
        };
        match tokio::time::timeout(limit, f(self)).await {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(Error::Timeout(limit))
            }
        }
    }

    async fn handshake(&mut self) -> Result<()> {
        self.write(&hello::client_hello()).await?;
        let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
        self.read_exact(&mut fixed).await?;
        let h = hello::parse_server_hello(&fixed).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut msg = vec![0u8; h.message_len];
        self.read_exact(&mut msg).await?;
        if !h.accepted {
            return Err(crate::error::refusal(&msg));
        }
        Ok(())
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(e) = self.stream.write_all(bytes).await {
            self.broken = true;
            return Err(Error::Disconnected(e));
        }
        Ok(())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        if let Err(e) = self.stream.read_exact(buf).await {
            self.broken = true;
            return Err(Error::Disconnected(e));
        }
        Ok(())
    }

    /// Sends a request without waiting; returns its id.
    pub async fn send(&mut self, request: Request) -> Result<u64> {
        if self.broken {
            return Err(Error::Disconnected(std::io::Error::other(
                "an earlier request failed on this connection",
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        let bytes = ops::encode_request(id, self.uid, request)?;
        self.write(&bytes).await?;
        Ok(id)
    }

    /// Reads the next reply (replies come in request order).
    pub async fn recv(&mut self) -> Result<ResponseFrame> {
        loop {
            if let Some(reply) = ops::next_reply(&mut self.decoder) {
                return reply;
            }
            match self.stream.read(&mut self.buf).await {
                Ok(0) => {
                    self.broken = true;
                    return Err(Error::Disconnected(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) => {
                    self.broken = true;
                    return Err(Error::Disconnected(e));
                }
            }
        }
    }

    /// Sends a request and waits for its reply.
    pub async fn call(&mut self, request: Request) -> Result<crate::Reply> {
        self.bounded(async move |c: &mut Self| {
            let id = c.send(request).await?;
            let resp = c.recv().await?;
            if resp.id != id {
                c.broken = true;
                return Err(Error::Protocol(format!(
                    "reply for request {} while waiting for {id}",
                    resp.id
                )));
            }
            Ok(resp.result?)
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
