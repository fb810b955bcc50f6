//! One client connection. The first byte picks the encoding (`{`: JSON lines, else the binary
//! handshake and frames). Requests are handled concurrently, so one connection's pipelined
//! checkpoints share a flush, but replies go out in request order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use interprocess::os::unix::uds_local_socket::tokio::Stream;
use serde_json::Value;
use sessiond_proto::frame::{self, Frame, FrameDecoder, Line, LineDecoder};
use sessiond_proto::{
    codec, hello, json, ErrorKind, Event, EventKind, Reply, RequestFrame, ResponseFrame, WireError,
    PROTOCOL_VERSION, VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::service::{Peer, Service, Started};

pub mod replies;
use replies::{DirectReply, ReplySink, Turn};

/// Requests of one connection being handled at once; more wait in the socket (backpressure).
const MAX_IN_FLIGHT: usize = 64;
const READ_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_frame_bytes: usize,
    pub max_line_bytes: usize,
    /// Close after this long without a request (`None`: never). Not while watching.
    pub idle_timeout: Option<std::time::Duration>,
    /// A request must be complete this long after its first byte arrived.
    pub request_timeout: std::time::Duration,
}

enum Id {
    Bin(u64),
    Json(Value),
}

type Outcome = Started;

enum Decoder {
    Binary(FrameDecoder),
    Json(LineDecoder),
}

/// A request on its way to the reply writer, with its share of the connection's byte budget
/// and its sequence number on the connection.
type Queued = (Id, Outcome, Option<OwnedSemaphorePermit>, u64);

/// The reader's side of the reply queue: numbers each request it passes on.
struct Outbox {
    queue: mpsc::Sender<Queued>,
    /// Binary connections: the socket as the commit thread may write to it.
    sink: Option<Arc<ReplySink>>,
    next_seq: u64,
}

impl Outbox {
    /// Where the commit thread may write the reply to the request about to be pushed.
    fn direct(&self, id: u64) -> Option<DirectReply> {
        self.sink.as_ref().map(|sink| DirectReply {
            sink: sink.clone(),
            seq: self.next_seq,
            id,
        })
    }

    /// `false` once the reply side is gone.
    async fn push(
        &mut self,
        id: Id,
        outcome: Outcome,
        permit: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.queue.send((id, outcome, permit, seq)).await.is_ok()
    }
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
    let message = format!("unavailable: the daemon is serving its maximum of {limit} connections (--max-connections); try again later");
    let mut first = vec![0u8; 4096];
    let mut s = &stream;
    let read = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut first)).await;
    let reply = match read {
        Ok(Ok(n)) if n > 0 && first[0] == b'{' => {
            json::encode_response(&Value::Null, &Err(WireError::unavailable(message)))
        }
        Ok(Ok(n)) if n > 0 => hello::server_hello(false, &message),
        _ => return,
    };
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
    // Enough bytes to choose the encoding (and, for binary, the whole hello), within the
    // idle timeout before the first byte and the request timeout after it.
    loop {
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
        if start[0] == b'{' || start.len() >= hello::CLIENT_HELLO_LEN {
            break;
        }
    }
    let (mut r, mut w) = stream.split();
    let decoder = if start[0] == b'{' {
        let mut d = LineDecoder::new(limits.max_line_bytes);
        d.push(&start);
        Decoder::Json(d)
    } else {
        let mut hello_bytes = [0u8; hello::CLIENT_HELLO_LEN];
        hello_bytes.copy_from_slice(&start[..hello::CLIENT_HELLO_LEN]);
        let refusal = match hello::parse_client_hello(&hello_bytes) {
            Ok(PROTOCOL_VERSION) => None,
            Ok(v) => Some(format!(
                "unsupported_version: this daemon (sessiond {VERSION}) speaks protocol {PROTOCOL_VERSION}, the client speaks {v}"
            )),
            Err(e) => Some(format!("unsupported_version: {e}; send a JSON object or the sessiond hello")),
        };
        if let Some(msg) = refusal {
            tracing::info!(%msg, "refusing a client");
            w.write_all(&hello::server_hello(false, &msg)).await?;
            return Ok(());
        }
        w.write_all(&hello::server_hello(true, &format!("sessiond {VERSION}")))
            .await?;
        let mut d = FrameDecoder::new(limits.max_frame_bytes);
        d.push(&start[hello::CLIENT_HELLO_LEN..]);
        Decoder::Binary(d)
    };
    let sink = match &decoder {
        Decoder::Binary(_) => ReplySink::new(w.as_ref())
            .inspect_err(
                |e| tracing::debug!(error = %e, "replies go through the connection's task only"),
            )
            .ok(),
        Decoder::Json(_) => None,
    };
    let (queue, replies) = mpsc::channel(MAX_IN_FLIGHT);
    let out = Outbox {
        queue,
        sink: sink.clone(),
        next_seq: 0,
    };
    // Cancelled when the client stops sending (or the daemon stops): ends a watch stream.
    let closed = cancel.child_token();
    let reader = async {
        let r = read_requests(&mut r, service, cancel, peer, decoder, out, limits).await;
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
    mut decoder: Decoder,
    mut out: Outbox,
    limits: ConnLimits,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut watching = false;
    let mut partial_since: Option<Instant> = None;
    // Requests held at once are bounded in bytes too: two maximal ones.
    let budget = Arc::new(Semaphore::new(
        2 * limits.max_frame_bytes.max(limits.max_line_bytes),
    ));
    loop {
        let mut answerable = false;
        if !drain(
            &mut decoder,
            service,
            peer,
            &mut out,
            &mut watching,
            &budget,
            &mut answerable,
        )
        .await
        {
            return Ok(());
        }
        if answerable {
            // Let the reply side answer what is ready (a cached read) before the next read of
            // the socket, which would most often only find it empty.
            tokio::task::yield_now().await;
        }
        let in_progress = match &decoder {
            Decoder::Binary(d) => d.in_progress(),
            Decoder::Json(d) => d.in_progress(),
        };
        partial_since = if in_progress {
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
        // Binary frames are read straight into the decoder; JSON goes through `buf`.
        let (target, from) = match &mut decoder {
            Decoder::Binary(d) => {
                let b = d.read_buffer(READ_CHUNK);
                let from = b.len();
                (b, from)
            }
            Decoder::Json(_) => {
                buf.clear();
                buf.reserve(READ_CHUNK);
                (&mut buf, 0)
            }
        };
        let n = match read_some(stream, target, cancel, deadline.map(|(at, _)| at)).await? {
            Read::Bytes(n) => n,
            Read::Cancelled => return Ok(()),
            Read::TimedOut => {
                let why = deadline.map_or(Timeout::Idle, |(_, why)| why);
                let id = match decoder {
                    Decoder::Binary(_) => Id::Bin(0),
                    Decoder::Json(_) => Id::Json(Value::Null),
                };
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
                let _ = out
                    .push(
                        id,
                        Started::Done(Err(WireError::unavailable(message))),
                        None,
                    )
                    .await;
                return Ok(());
            }
        };
        if n == 0 {
            match &mut decoder {
                Decoder::Binary(d) => {
                    if let Err(e) = d.finish() {
                        tracing::debug!(error = %e, "client closed mid-frame");
                    }
                }
                Decoder::Json(d) => {
                    if let Some(line) = d.finish() {
                        let (id, outcome) = json_item(line, service, peer);
                        let _ = out.push(id, outcome, None).await;
                    }
                }
            }
            return Ok(());
        }
        match &mut decoder {
            Decoder::Binary(d) => d.appended(from),
            Decoder::Json(d) => d.push(&buf[..n]),
        }
    }
}

#[derive(Clone, Copy)]
enum Timeout {
    Request,
    Idle,
}

/// Dispatches every complete request buffered; `answerable` is set if one can be answered
/// without waiting for a commit. `false` once the reply side is gone.
async fn drain(
    decoder: &mut Decoder,
    service: &Arc<Service>,
    peer: Peer,
    out: &mut Outbox,
    watching: &mut bool,
    budget: &Arc<Semaphore>,
    answerable: &mut bool,
) -> bool {
    loop {
        if *watching {
            // The connection now carries events only; anything else sent on it is dropped
            // unread, never executed without an answer.
            match decoder {
                Decoder::Binary(d) => while d.next_frame().is_some() {},
                Decoder::Json(d) => while d.next_line().is_some() {},
            }
            return true;
        }
        let mut permit = None;
        let max_frame = match decoder {
            Decoder::Binary(d) => d.max(),
            Decoder::Json(d) => d.max(),
        };
        let item = match decoder {
            Decoder::Binary(d) => match d.next_frame() {
                None => return true,
                Some(Frame::TooLarge { len, id }) => (
                    Id::Bin(id.unwrap_or(0)),
                    Started::Done(Err(WireError::new(
                        ErrorKind::TooLarge,
                        format!("request frame of {len} bytes exceeds the limit of {max_frame} bytes (--max-checkpoint-bytes plus 1 MiB)"),
                    ))),
                ),
                Some(Frame::Body(body)) => match take_budget(budget, body.len()).await {
                    None => return false,
                    Some(p) => {
                        permit = Some(p);
                        match codec::decode::<RequestFrame>(body) {
                    Ok(req) => {
                        let direct = out.direct(req.id);
                        (Id::Bin(req.id), dispatch(service, peer, req, direct))
                    }
                    Err(e) => (Id::Bin(0), Started::Done(Err(WireError::invalid(format!("undecodable request frame: {e}"))))),
                        }
                    }
                },
            },
            Decoder::Json(d) => match d.next_line() {
                None => return true,
                Some(Line::TooLong) => (
                    Id::Json(Value::Null),
                    Started::Done(Err(WireError::new(
                        ErrorKind::TooLarge,
                        format!("request line exceeds the limit of {max_frame} bytes (--max-checkpoint-bytes as base64 plus 1 MiB)"),
                    ))),
                ),
                Some(Line::Text(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Some(Line::Text(line)) => match take_budget(budget, line.len()).await {
                    None => return false,
                    Some(p) => {
                        permit = Some(p);
                        json_item(line, service, peer)
                    }
                },
            },
        };
        *watching |= matches!(item.1, Started::Watch { .. });
        *answerable |= matches!(item.1, Started::Done(_) | Started::Read { .. });
        if !out.push(item.0, item.1, permit).await {
            return false;
        }
    }
}

/// Waits until `len` more bytes of requests may be held (replies free them).
async fn take_budget(budget: &Arc<Semaphore>, len: usize) -> Option<OwnedSemaphorePermit> {
    budget
        .clone()
        .acquire_many_owned(u32::try_from(len.max(1)).ok()?)
        .await
        .ok()
}

fn json_item(line: &[u8], service: &Arc<Service>, peer: Peer) -> (Id, Outcome) {
    let (id, parsed) = json::decode_request(line);
    match parsed {
        Ok(req) => (Id::Json(id), dispatch(service, peer, req, None)),
        Err(e) => (Id::Json(id), Started::Done(Err(e))),
    }
}

fn dispatch(
    service: &Arc<Service>,
    peer: Peer,
    req: RequestFrame,
    direct: Option<DirectReply>,
) -> Outcome {
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
    mut replies: mpsc::Receiver<Queued>,
    sink: Option<&ReplySink>,
    closed: &CancellationToken,
) -> std::io::Result<()> {
    while let Some((id, outcome, _permit, seq)) = replies.recv().await {
        let result = match outcome {
            Started::Done(r) => r,
            Started::Committing(rx) => committed(rx).await,
            Started::Read { uid, request } => service.read(uid, request).await,
            Started::Resuming { uid, committed: rx } => {
                service.finish_resume(uid, committed(rx).await).await
            }
            Started::Watch { uid, name, events } => {
                w.write_all(&encode(&id, Ok(Reply::Watching))?).await?;
                // The connection now carries this watch's events until the client leaves.
                return stream_events(w, &id, uid, name, events, closed).await;
            }
        };
        match sink.map_or(Turn::Write, |s| s.turn(seq)) {
            Turn::Sent => {}
            Turn::Rest(rest) => w.write_all(&rest).await?,
            Turn::Write => w.write_all(&encode(&id, result)?).await?,
        }
        if let Some(s) = sink {
            s.wrote(seq);
        }
    }
    Ok(())
}

async fn committed(rx: oneshot::Receiver<Result<Reply, WireError>>) -> Result<Reply, WireError> {
    rx.await
        .unwrap_or_else(|_| Err(WireError::internal("the commit thread stopped")))
}

fn encode(id: &Id, result: Result<Reply, WireError>) -> std::io::Result<Vec<u8>> {
    Ok(match id {
        Id::Json(id) => json::encode_response(id, &result),
        Id::Bin(id) => match frame::encode_frame(&ResponseFrame { id: *id, result }) {
            Ok(b) => b,
            Err(e) => frame::encode_frame(&ResponseFrame {
                id: *id,
                result: Err(WireError::internal(format!("cannot encode the reply: {e}"))),
            })
            .map_err(std::io::Error::other)?,
        },
    })
}

async fn stream_events(
    w: &mut (impl AsyncWrite + Unpin),
    id: &Id,
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
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event {
                kind: EventKind::Lagged,
                name: name.clone().unwrap_or_default(),
                number: None,
                status: None,
                epoch: None,
                owner_pid: None,
                missed: Some(missed),
                at: chrono::Utc::now(),
            },
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        w.write_all(&encode(id, Ok(Reply::Event(event)))?).await?;
    }
}
