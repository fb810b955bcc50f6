//! One client connection. The first byte picks the encoding (`{`: JSON lines, else the binary
//! handshake and frames). Requests are handled concurrently, so one connection's pipelined
//! checkpoints share a flush, but replies go out in request order, and requests take effect
//! in order (a read pipelined before a change runs before it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use interprocess::os::unix::uds_local_socket::tokio::Stream;
use sessiond_proto::wire::{self, Opening, RequestId, Requests};
use sessiond_proto::WireError;
use tokio::io::AsyncRead;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::ReadHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::service::{Peer, Service, Started};

mod dispatch;
pub mod replies;
mod spin;
mod writer;
use dispatch::{after_reads, commit, dispatch, drain, push, take_lead};
use replies::{Outbox, ReplySink};
use spin::Spinner;
use writer::write_replies;

/// Requests of one connection being handled at once; more wait in the socket (backpressure).
const MAX_IN_FLIGHT: usize = 64;
const READ_CHUNK: usize = 256 << 10;
/// Payloads up to this many bytes are cut on the async worker even while other connections
/// wait on it: a hand-off to the blocking pool and back costs two wake-ups, more than the
/// cut of a payload this size (bench/README.md has the measurement).
const CUT_ON_WORKER_MAX: usize = 128 << 10;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_frame_bytes: usize,
    pub max_line_bytes: usize,
    /// Close after this long without a request (`None`: never). Not while watching.
    pub idle_timeout: Option<std::time::Duration>,
    /// A request must be complete this long after its first byte arrived.
    pub request_timeout: std::time::Duration,
    /// How long to poll the socket for a quick client's next request (`None`: never).
    pub poll_window: Option<std::time::Duration>,
}

/// What the reader hands the reply writer.
// Nearly every one is a request: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Queued {
    /// A request: how it proceeds, and its share of the connection's byte budget.
    Request(RequestId, Started, Option<OwnedSemaphorePermit>),
    /// Told once every earlier reply is written.
    Barrier(oneshot::Sender<()>),
}

/// Serves one connection. The caller has counted it in `service.connections`; this uncounts
/// it at the end.
pub async fn serve(
    stream: Stream,
    service: Arc<Service>,
    cancel: CancellationToken,
    limits: ConnLimits,
) {
    struct Counted<'a>(&'a Service);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _counted = Counted(&service);
    let peer = match stream.inner().peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            pid: c
                .pid()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p > 0),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the peer's credentials; closing");
            return;
        }
    };
    let span = tracing::debug_span!("conn", peer_uid = peer.uid, peer_pid = ?peer.pid);
    // tokio's own stream: its reads notice a drained socket without one more `recv`.
    let mut stream = UnixStream::from(stream);
    let served = serve_peer(&mut stream, &service, &cancel, limits, peer)
        .instrument(span.clone())
        .await;
    if let Err(e) = served {
        tracing::debug!(parent: &span, error = %e, "connection ended with an error");
    }
}

/// Turns away a connection over `--max-connections` with an `unavailable` error in the
/// client's own encoding, then closes it.
pub async fn refuse(stream: Stream, limit: usize) {
    let error = WireError::unavailable(format!("the daemon is serving its maximum of {limit} connections (--max-connections); try again later"));
    let mut first = vec![0u8; 4096];
    let mut s = &stream;
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut first)).await;
    let reply = match read {
        Ok(Ok(n)) => wire::refusal(&first[..n], error),
        _ => None,
    };
    let Some(reply) = reply else { return };
    let _ = s.write_all(&reply).await;
    // Closing with unread input would reset the connection and lose the reply: drain briefly.
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        while let Ok(n) = s.read(&mut first).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What one read of the socket gave.
enum Read {
    /// This many bytes; 0 is the end of the client's stream.
    Bytes(usize),
    /// The daemon is shutting down.
    Cancelled,
    /// Nothing came before the deadline.
    TimedOut,
}

async fn read_some(
    s: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    cancel: &CancellationToken,
    deadline: Option<Instant>,
) -> std::io::Result<Read> {
    let expire = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    // In a fixed order: no random number per read.
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Ok(Read::Cancelled),
        r = s.read_buf(buf) => r.map(Read::Bytes),
        _ = expire => Ok(Read::TimedOut),
    }
}

async fn serve_peer(
    stream: &mut UnixStream,
    service: &Arc<Service>,
    cancel: &CancellationToken,
    limits: ConnLimits,
    peer: Peer,
) -> std::io::Result<()> {
    let mut start = Vec::with_capacity(4096);
    let wire_limits = wire::Limits {
        max_frame_bytes: limits.max_frame_bytes,
        max_line_bytes: limits.max_line_bytes,
    };
    // Enough bytes to choose the encoding (and, for binary, the whole hello), within the
    // idle timeout before the first byte and the request timeout after it.
    let (reply, requests) = loop {
        let limit = if start.is_empty() {
            limits.idle_timeout
        } else {
            Some(limits.request_timeout)
        };
        match read_some(
            stream,
            &mut start,
            cancel,
            limit.map(|l| Instant::now() + l),
        )
        .await?
        {
            Read::Bytes(0) | Read::Cancelled => return Ok(()),
            Read::Bytes(_) => {}
            Read::TimedOut => {
                tracing::debug!("closing a connection that sent no complete greeting in time");
                return Ok(());
            }
        }
        if let Opening::Speak { reply, requests } = wire::open(&start, wire_limits) {
            break (reply, requests);
        }
    };
    drop(start);
    let (mut r, mut w) = stream.split();
    w.write_all(&reply).await?;
    let Some(requests) = requests else {
        tracing::info!(reply = %String::from_utf8_lossy(&reply), "refusing a client");
        return Ok(());
    };
    let sink = ReplySink::new(w.as_ref())
        .inspect_err(
            |e| tracing::debug!(error = %e, "replies go through the connection's task only"),
        )
        .ok();
    let (queue, replies) = mpsc::channel(MAX_IN_FLIGHT);
    let out = Outbox::new(queue, sink.clone());
    // Cancelled when the client stops sending (or the daemon stops): ends a watch stream.
    let closed = cancel.child_token();
    let reader = async {
        let r = read_requests(&mut r, service, cancel, peer, requests, out, limits).await;
        closed.cancel();
        r
    };
    let writer = write_replies(&mut w, service, replies, sink.as_deref(), &closed);
    let (r, w) = tokio::join!(reader, writer);
    r.and(w)
}

#[allow(clippy::too_many_arguments)]
async fn read_requests(
    stream: &mut ReadHalf<'_>,
    service: &Arc<Service>,
    cancel: &CancellationToken,
    peer: Peer,
    mut requests: Requests,
    mut out: Outbox<Queued>,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let mut watching = false;
    let mut spinner = Spinner::new(&service.polling, limits.poll_window);
    let mut partial_since: Option<Instant> = None;
    // Requests held at once are bounded in bytes too: two maximal ones.
    let budget = Arc::new(Semaphore::new(
        2 * limits.max_frame_bytes.max(limits.max_line_bytes),
    ));
    loop {
        let mut answerable = false;
        let mut lead = None;
        if !drain(
            &mut requests,
            service,
            peer,
            &mut out,
            &mut watching,
            &budget,
            &mut answerable,
            &mut lead,
        )
        .await
        {
            return Ok(());
        }
        if answerable || lead.is_some() {
            // Let the reply side answer what is ready (a cached read) before the next read of
            // the socket, which would most often only find it empty; and let the other
            // connections whose requests are ready too queue theirs, to share this commit.
            tokio::task::yield_now().await;
        }
        // Commits, here, this connection's mutations and every one queued meanwhile.
        if !commit(&mut lead, &mut out).await {
            return Ok(());
        }
        partial_since = if requests.in_progress() {
            partial_since.or_else(|| Some(Instant::now()))
        } else {
            None
        };
        let deadline = match partial_since {
            Some(t) => Some((t + limits.request_timeout, Timeout::Request)),
            None if watching => None,
            None => limits
                .idle_timeout
                .map(|d| (Instant::now() + d, Timeout::Idle)),
        };
        spinner.before_read(!watching && out.all_answered());
        let target = requests.read_buffer(READ_CHUNK);
        let from = target.len();
        let read = match spinner.poll(stream, target).await? {
            Some(n) => Read::Bytes(n),
            None => {
                let read = read_some(stream, target, cancel, deadline.map(|(at, _)| at)).await?;
                spinner.heard();
                read
            }
        };
        let n = match read {
            Read::Bytes(n) => n,
            Read::Cancelled => return Ok(()),
            Read::TimedOut => {
                let why = deadline.map_or(Timeout::Idle, |(_, why)| why);
                let message = match why {
                    Timeout::Request => format!(
                        "request not completed within {:?} of its first byte (--request-timeout); closing",
                        limits.request_timeout
                    ),
                    Timeout::Idle => format!(
                        "no request for {:?} (--idle-timeout); closing",
                        limits.idle_timeout.unwrap_or_default()
                    ),
                };
                tracing::debug!(%message, "closing a connection");
                let id = RequestId::none(requests.encoding());
                let done = Started::Done(Err(WireError::unavailable(message)));
                let _ = out.push(Queued::Request(id, done, None)).await;
                return Ok(());
            }
        };
        if n == 0 {
            match requests.finish() {
                Ok(Some(last)) => {
                    let (id, parsed) = last.decode();
                    if !after_reads(&mut out, &parsed, &mut None).await {
                        return Ok(());
                    }
                    let mut started = dispatch(service, peer, parsed, out.direct(&id));
                    drop(take_lead(&mut started));
                    let _ = push(&mut out, id, started, None).await;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "client closed mid-frame"),
            }
            return Ok(());
        }
        requests.appended(from);
    }
}

#[derive(Clone, Copy)]
enum Timeout {
    Request,
    Idle,
}
