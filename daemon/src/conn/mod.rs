//! One client connection. The first byte picks the encoding (`{`: JSON lines, else the binary
//! handshake and frames). Requests are handled concurrently, so one connection's pipelined
//! checkpoints share a flush, but replies go out in request order, and requests take effect
//! in order (a read pipelined before a change runs before it).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use interprocess::os::unix::uds_local_socket::tokio::Stream;
use sessiond_proto::wire::{self, Next, Opening, RequestId, Requests};
use sessiond_proto::{Event, EventKind, Reply, RequestFrame, WireError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::commit::Lead;
use crate::service::{Peer, Service, Started};

pub mod replies;
mod spin;
use replies::{DirectReply, Outbox, ReplySink, Turn};
use spin::Spinner;

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
    let mut spinner = Spinner::new(&service.polling, spin::window_here(limits.poll_window));
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

/// Dispatches every complete request buffered; `answerable` is set if one can be answered
/// without waiting for a commit, `lead` if this connection is to commit the queue. It commits
/// before waiting for anything that may wait for those commits. `false` once the reply side
/// is gone.
#[allow(clippy::too_many_arguments)]
async fn drain(
    requests: &mut Requests,
    service: &Arc<Service>,
    peer: Peer,
    out: &mut Outbox<Queued>,
    watching: &mut bool,
    budget: &Arc<Semaphore>,
    answerable: &mut bool,
    lead: &mut Option<Lead>,
) -> bool {
    loop {
        if *watching {
            // The connection now carries events only; anything else sent on it is dropped
            // unread, never executed without an answer.
            requests.discard_all();
            return true;
        }
        let (id, started, permit) = match requests.next_request() {
            None => return true,
            Some(Next::Refused(id, e)) => (id, Started::Done(Err(e)), None),
            Some(Next::Request(pending)) => {
                let Some(permit) = take_budget(budget, pending.len(), lead, out).await else {
                    return false;
                };
                let (id, parsed) = pending.decode();
                if !after_reads(out, &parsed, lead).await {
                    return false;
                }
                let direct = out.direct(&id);
                let Some(mut started) = start(service, peer, parsed, direct, lead, out).await
                else {
                    return false;
                };
                if let Some(l) = take_lead(&mut started) {
                    *lead = Some(l);
                }
                (id, started, Some(permit))
            }
        };
        *watching |= matches!(started, Started::Watch { .. });
        let started = match started {
            Started::Read { uid, request } if out.all_answered() => {
                match service.read_now(uid, &request) {
                    Some(r) => Started::Done(r),
                    None => Started::Read { uid, request },
                }
            }
            s => s,
        };
        // Answered here, on the socket at once: no hand-off to the writer.
        let started = match started {
            Started::Done(r) => match out.answer_now(&id, r) {
                None => continue,
                Some(r) => Started::Done(r),
            },
            s => s,
        };
        if lead.is_some() && matches!(started, Started::Committing(_)) {
            // Its reply is written by this connection's commit, before the writer would see it.
            out.hold(Queued::Request(id, started, permit));
            continue;
        }
        *answerable |= matches!(started, Started::Done(_) | Started::Read { .. });
        if out.would_wait() && !commit(lead, out).await {
            return false;
        }
        if !push(out, id, started, permit).await {
            return false;
        }
    }
}

/// Queues a request's reply; a read's marked as one. `false` once the reply side is gone.
async fn push(
    out: &mut Outbox<Queued>,
    id: RequestId,
    started: Started,
    permit: Option<OwnedSemaphorePermit>,
) -> bool {
    let read = matches!(started, Started::Read { .. } | Started::Resuming { .. });
    let queued = Queued::Request(id, started, permit);
    if read {
        out.push_read(queued).await
    } else {
        out.push(queued).await
    }
}

/// Before a request that changes state: waits until the reads pipelined before it have run,
/// so that they answer what was there before it (its commit would otherwise share theirs);
/// what this connection leads is committed first. `false` once the reply side is gone.
async fn after_reads(
    out: &mut Outbox<Queued>,
    parsed: &Result<RequestFrame, WireError>,
    lead: &mut Option<Lead>,
) -> bool {
    let changes = parsed.as_ref().is_ok_and(|r| r.request.changes_state());
    if !changes || !out.read_pending() {
        return true;
    }
    commit(lead, out).await && out.barrier(Queued::Barrier).await
}

/// Waits until `len` more bytes of requests may be held (replies free them; so if it has to
/// wait, the queue is committed first when this connection leads).
async fn take_budget(
    budget: &Arc<Semaphore>,
    len: usize,
    lead: &mut Option<Lead>,
    out: &mut Outbox<Queued>,
) -> Option<OwnedSemaphorePermit> {
    let n = u32::try_from(len.max(1)).ok()?;
    match budget.clone().try_acquire_many_owned(n) {
        Ok(permit) => Some(permit),
        Err(TryAcquireError::Closed) => None,
        Err(TryAcquireError::NoPermits) => {
            if !commit(lead, out).await {
                return None;
            }
            budget.clone().acquire_many_owned(n).await.ok()
        }
    }
}

/// Dispatches a request on the async worker or, for a large payload to cut while other
/// connections wait on the worker, on the blocking pool. `None` once the reply side is gone.
async fn start(
    service: &Arc<Service>,
    peer: Peer,
    parsed: Result<RequestFrame, WireError>,
    direct: Option<DirectReply>,
    lead: &mut Option<Lead>,
    out: &mut Outbox<Queued>,
) -> Option<Started> {
    // Alone, this connection holds up nobody: the two wake-ups of a hand-off cost it more
    // than the worker's waiting does.
    let off_worker = !service.alone()
        && parsed
            .as_ref()
            .is_ok_and(|r| service.bytes_to_prepare(&peer, r) > CUT_ON_WORKER_MAX);
    if !off_worker {
        return Some(dispatch(service, peer, parsed, direct));
    }
    // Cutting a large payload takes a while: off the async worker, which every connection
    // shares (the connection's next request waits, so its requests are still committed in
    // order; those queued are committed first, not held up by it).
    if !commit(lead, out).await {
        return None;
    }
    let service = service.clone();
    let started = tokio::task::spawn_blocking(move || dispatch(&service, peer, parsed, direct))
        .await
        .unwrap_or_else(|e| {
            Started::Done(Err(WireError::internal(format!(
                "request task failed: {e}"
            ))))
        });
    Some(started)
}

/// Commits, on this thread, the queue this connection leads (if it does), then passes on
/// the requests held for it. `false` once the reply side is gone.
async fn commit(lead: &mut Option<Lead>, out: &mut Outbox<Queued>) -> bool {
    drop(lead.take());
    out.release().await
}

/// The duty to commit that queuing the request may have given.
fn take_lead(started: &mut Started) -> Option<Lead> {
    match started {
        Started::Committing(c) | Started::Resuming { committed: c, .. } => c.take_lead(),
        _ => None,
    }
}

fn dispatch(
    service: &Arc<Service>,
    peer: Peer,
    parsed: Result<RequestFrame, WireError>,
    direct: Option<DirectReply>,
) -> Started {
    let req = match parsed {
        Ok(req) => req,
        Err(e) => return Started::Done(Err(e)),
    };
    let op = req.request.op();
    let started = service.start(&peer, req, direct);
    if let Started::Done(Err(e)) = &started {
        tracing::debug!(op, kind = %e.kind, message = %e.message, "request refused");
    }
    started
}

async fn write_replies(
    w: &mut WriteHalf<'_>,
    service: &Service,
    mut replies: mpsc::Receiver<(Queued, u64)>,
    sink: Option<&ReplySink>,
    closed: &CancellationToken,
) -> std::io::Result<()> {
    while let Some((queued, seq)) = replies.recv().await {
        let (id, started, _permit) = match queued {
            Queued::Request(id, started, permit) => (id, started, permit),
            Queued::Barrier(done) => {
                if let Some(s) = sink {
                    s.wrote(seq);
                }
                let _ = done.send(());
                continue;
            }
        };
        let result = match started {
            Started::Done(r) => r,
            Started::Committing(c) => c.answer().await,
            Started::Read { uid, request } => service.read(uid, request).await,
            Started::Resuming {
                uid,
                attachments,
                committed: rx,
            } => {
                service
                    .finish_resume(uid, attachments, rx.answer().await)
                    .await
            }
            Started::Watch { uid, name, events } => {
                w.write_all(&wire::encode_reply(&id, Ok(Reply::Watching)))
                    .await?;
                // The connection now carries this watch's events until the client leaves.
                return stream_events(w, &id, uid, name, events, closed).await;
            }
        };
        match sink.map_or(Turn::Write, |s| s.turn(seq)) {
            Turn::Sent => {}
            Turn::Rest(rest) => w.write_all(&rest).await?,
            Turn::Write => w.write_all(&wire::encode_reply(&id, result)).await?,
        }
        if let Some(s) = sink {
            s.wrote(seq);
        }
    }
    Ok(())
}

async fn stream_events(
    w: &mut (impl AsyncWrite + Unpin),
    id: &RequestId,
    uid: u32,
    name: Option<String>,
    mut events: broadcast::Receiver<Arc<(u32, Event)>>,
    closed: &CancellationToken,
) -> std::io::Result<()> {
    loop {
        let event = tokio::select! {
            _ = closed.cancelled() => return Ok(()),
            e = events.recv() => e,
        };
        let event = match event {
            Ok(e) if e.0 == uid && name.as_ref().is_none_or(|n| *n == e.1.name) => e.1.clone(),
            Ok(e) if e.0 == crate::state::EVERY_WATCHER && e.1.kind == EventKind::Lagged => Event {
                name: name.clone().unwrap_or_default(),
                ..e.1.clone()
            },
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Event::lagged(name.clone().unwrap_or_default(), Some(missed))
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        w.write_all(&wire::encode_reply(id, Ok(Reply::Event(event))))
            .await?;
    }
}
