//! Reply ordering: every reply of a connection goes out in request order, whichever thread
//! writes it.
//!
//! Each request gets a sequence number from the connection's [`Outbox`]. The reply to a
//! committed mutation is written straight by whoever committed it (the connection that led
//! the batch, or the commit thread) when it is the next reply the connection owes, instead of
//! waking the connection's task to write it ([`deliver`] decides when). The committer writes
//! reply `seq` only while `next == seq` (every earlier reply is fully on the socket) and
//! nothing it wrote is still unfinished. Otherwise, or when the socket would block, the reply
//! goes the usual way, through the connection's writer, which asks [`ReplySink::turn`] what is
//! left to do for each reply and reports each one it writes. A reply known as the request
//! is read (a get the cache answers, a ping, a refusal) is written the same way by the
//! connection's reader ([`Outbox::answer_now`]), and a mutation the reader is to commit
//! itself is held until then ([`Outbox::hold`]): the writer sees neither when its reply went
//! out straight.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use sessiond_proto::wire::{self, RequestId};
use sessiond_proto::{Reply, WireError};
use tokio::sync::{mpsc, oneshot};

/// Batches up to this many replies have them written by their committer: more would hold
/// up the next flush, while the connections' tasks, woken once, write them on the other core.
const MAX_DIRECT_REPLIES: usize = 2;

/// Where a mutation's reply goes: to the connection's writer, and maybe straight to its
/// socket.
pub type ReplyTo = (
    oneshot::Sender<Result<Reply, WireError>>,
    Option<DirectReply>,
);

/// A committed batch's replies: each to its connection's writer, and, for a small batch,
/// straight to its socket when it is its turn.
pub fn deliver(replies: Vec<(Reply, ReplyTo)>) {
    let direct_ok = replies.len() <= MAX_DIRECT_REPLIES;
    for (r, (tx, direct)) in replies {
        let result = match direct {
            Some(d) if direct_ok => d.sink.try_send(d.seq, &d.id, Ok(r)),
            _ => Ok(r),
        };
        let _ = tx.send(result);
    }
}

/// The reader's side of a connection's reply queue: numbers each request it passes on.
pub struct Outbox<T> {
    queue: mpsc::Sender<(T, u64)>,
    /// The socket as a committer may write to it.
    sink: Option<Arc<ReplySink>>,
    next_seq: u64,
    /// The last read pushed to run in its turn (what it returns must not include the
    /// effects of the requests after it).
    last_read: Option<u64>,
    /// Mutations this connection is to commit itself, with every request pushed after them:
    /// kept back until that commit, which writes their replies, so that the writer is not
    /// woken for a reply already on the socket (see [`Outbox::release`]).
    held: Vec<(T, u64)>,
}

impl<T> Outbox<T> {
    pub fn new(queue: mpsc::Sender<(T, u64)>, sink: Option<Arc<ReplySink>>) -> Self {
        Outbox {
            queue,
            sink,
            next_seq: 0,
            last_read: None,
            held: Vec::new(),
        }
    }

    /// Where a committer may write the reply to the request about to be pushed (its
    /// reply carries `id`).
    pub fn direct(&self, id: &RequestId) -> Option<DirectReply> {
        self.sink.as_ref().map(|sink| DirectReply {
            sink: sink.clone(),
            seq: self.next_seq,
            id: id.clone(),
        })
    }

    /// Whether [`Outbox::push`] would wait for the reply side to take one first.
    pub fn would_wait(&self) -> bool {
        self.queue.capacity() == 0
    }

    /// Whether every request pushed has its reply on the socket.
    pub fn all_answered(&self) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|sink| sink.state().next >= self.next_seq)
    }

    /// Writes `result` now as the reply to the request about to be pushed, when every
    /// earlier reply is on the socket and the socket takes all of it: then nothing is pushed
    /// for it. Else gives it back, to push (the writer finishes a reply the socket took in
    /// part).
    pub fn answer_now(
        &mut self,
        id: &RequestId,
        result: Result<Reply, WireError>,
    ) -> Option<Result<Reply, WireError>> {
        let Some(sink) = &self.sink else {
            return Some(result);
        };
        let seq = self.next_seq;
        let result = sink.try_send(seq, id, result);
        if sink.state().next > seq {
            self.next_seq += 1;
            None
        } else {
            Some(result)
        }
    }

    /// Whether a read pushed earlier may not have run yet.
    pub fn read_pending(&self) -> bool {
        self.last_read.is_some_and(|seq| {
            self.sink
                .as_ref()
                .is_none_or(|sink| sink.state().next <= seq)
        })
    }

    /// [`Outbox::push`] of a read, which runs when the writer reaches it.
    pub async fn push_read(&mut self, item: T) -> bool {
        self.last_read = Some(self.next_seq);
        self.push(item).await
    }

    /// Waits until the writer has handled everything pushed before (the barrier, made by
    /// `make` from what to tell, takes a sequence number and has no reply). `false` once the
    /// reply side is gone.
    pub async fn barrier(&mut self, make: impl FnOnce(oneshot::Sender<()>) -> T) -> bool {
        let (tx, rx) = oneshot::channel();
        if !(self.release().await && self.push(make(tx)).await && rx.await.is_ok()) {
            return false;
        }
        self.last_read = None;
        true
    }

    /// `false` once the reply side is gone.
    pub async fn push(&mut self, item: T) -> bool {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.held.is_empty() {
            self.held.push((item, seq));
            return true;
        }
        self.queue.send((item, seq)).await.is_ok()
    }

    /// Keeps a mutation this connection is about to commit itself until [`Outbox::release`].
    pub fn hold(&mut self, item: T) {
        self.held.push((item, self.next_seq));
        self.next_seq += 1;
    }

    /// After the commit: passes on what was held, but for the replies the commit wrote.
    /// `false` once the reply side is gone.
    pub async fn release(&mut self) -> bool {
        if self.held.is_empty() {
            return true;
        }
        let written = self.sink.as_ref().map_or(0, |sink| sink.state().next);
        // Taken and given back: its room is kept for the next commit's.
        let mut held = std::mem::take(&mut self.held);
        for (item, seq) in held.drain(..) {
            if seq >= written && self.queue.send((item, seq)).await.is_err() {
                return false;
            }
        }
        self.held = held;
        true
    }
}

pub struct ReplySink {
    /// A duplicate of the connection's socket: it stays valid (never a reused descriptor
    /// number) for as long as a queued job holds the sink, whatever the connection does.
    socket: OwnedFd,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The sequence number of the next reply the socket is owed.
    next: u64,
    /// The unwritten end of a reply a committer could only partly write.
    rest: Option<(u64, Vec<u8>)>,
}

/// Where a committed mutation's reply may be written directly.
pub struct DirectReply {
    pub sink: Arc<ReplySink>,
    pub seq: u64,
    /// The request's id, which the reply carries (in the connection's encoding).
    pub id: RequestId,
}

/// What the connection's writer still has to do for a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// The committer wrote all of it.
    Sent,
    /// The committer wrote its beginning; these bytes remain.
    Rest(Vec<u8>),
    /// Nothing of it was written.
    Write,
}

impl ReplySink {
    pub fn new(socket: &impl AsFd) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(ReplySink {
            socket: socket.as_fd().try_clone_to_owned()?,
            state: Mutex::new(State::default()),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commit thread: writes `result` as reply `seq` if it is the connection's turn for it
    /// and the socket takes at least part of it without blocking. Gives the result back; the
    /// connection's writer still receives it, and [`ReplySink::turn`] tells it what is left.
    pub fn try_send(
        &self,
        seq: u64,
        id: &RequestId,
        result: Result<Reply, WireError>,
    ) -> Result<Reply, WireError> {
        let mut state = self.state();
        if state.next != seq || state.rest.is_some() {
            return result;
        }
        let bytes = wire::encode_reply_ref(id, &result);
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let sent = loop {
            match send(self.socket.as_raw_fd(), &bytes, flags) {
                Err(Errno::EINTR) => continue,
                other => break other,
            }
        };
        match sent {
            Ok(n) if n == bytes.len() => state.next = seq + 1,
            Ok(n) if n > 0 => state.rest = Some((seq, bytes[n..].to_vec())),
            // Would block, or the connection failed: the writer handles both.
            Ok(_) | Err(_) => {}
        }
        result
    }

    /// Connection writer: what is left to do for reply `seq`, whose result it now has.
    pub fn turn(&self, seq: u64) -> Turn {
        let mut state = self.state();
        if state.next > seq {
            return Turn::Sent;
        }
        match state.rest.take() {
            Some((s, rest)) if s == seq => Turn::Rest(rest),
            other => {
                state.rest = other;
                Turn::Write
            }
        }
    }

    /// Connection writer: reply `seq` is fully on the socket.
    pub fn wrote(&self, seq: u64) {
        let mut state = self.state();
        state.next = state.next.max(seq + 1);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use sessiond_proto::frame::{self, Frame, FrameDecoder};
    use sessiond_proto::{codec, ResponseFrame};

    use super::*;

    fn pong(id: u64) -> (u64, Result<Reply, WireError>) {
        (
            id,
            Ok(Reply::Pong {
                version: "t".into(),
                protocol: 1,
            }),
        )
    }

    fn read_ids(peer: &mut UnixStream, d: &mut FrameDecoder) -> Vec<u64> {
        peer.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while let Ok(n) = peer.read(&mut buf) {
            if n == 0 {
                break;
            }
            d.push(&buf[..n]);
        }
        let mut ids = Vec::new();
        while let Some(Frame::Body(b)) = d.next_frame() {
            ids.push(codec::decode::<ResponseFrame>(b).unwrap().id);
        }
        ids
    }

    #[test]
    fn the_writer_gets_only_the_replies_not_already_written() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let sink = ReplySink::new(&ours).unwrap();
        let (queue, mut writer) = mpsc::channel(8);
        let mut out = Outbox::new(queue, Some(sink.clone()));
        let mut d = FrameDecoder::new(1 << 20);
        // Reply 0 is answered at once: nothing reaches the writer.
        let (id, r) = pong(10);
        assert!(out.answer_now(&RequestId::Binary(id), r).is_none());
        // Mutation 1 is held for this connection's commit; 2, a ping after it, is not its
        // turn and waits behind it.
        out.hold("mutation 1");
        let (id, r) = pong(12);
        assert!(out.answer_now(&RequestId::Binary(id), r).is_some());
        assert!(rt.block_on(out.push("ping 2")));
        assert!(writer.try_recv().is_err(), "held until the commit");
        // The commit writes reply 1 itself; released, only 2 goes to the writer.
        let (id, r) = pong(11);
        sink.try_send(1, &RequestId::Binary(id), r).unwrap();
        assert!(rt.block_on(out.release()));
        assert_eq!(writer.try_recv().unwrap(), ("ping 2", 2));
        assert!(writer.try_recv().is_err());
        assert_eq!(read_ids(&mut peer, &mut d), vec![10, 11]);
        // Held again, and the commit could not write it: the writer gets it.
        out.hold("mutation 3");
        assert!(rt.block_on(out.release()));
        assert_eq!(writer.try_recv().unwrap(), ("mutation 3", 3));
    }

    #[test]
    fn a_read_is_pending_until_its_reply_is_out() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (ours, _peer) = UnixStream::pair().unwrap();
        let sink = ReplySink::new(&ours).unwrap();
        let (queue, mut writer) = mpsc::channel(8);
        let mut out = Outbox::new(queue, Some(sink.clone()));
        assert!(!out.read_pending());
        assert!(rt.block_on(out.push_read("get 0")));
        assert!(out.read_pending());
        assert_eq!(writer.try_recv().unwrap(), ("get 0", 0));
        sink.wrote(0);
        assert!(!out.read_pending(), "its reply is on the socket");
    }

    #[test]
    fn writes_only_in_turn_and_never_twice() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let sink = ReplySink::new(&ours).unwrap();
        let mut d = FrameDecoder::new(1 << 20);
        // Reply 1 before reply 0 has been written: not its turn.
        let (id, r) = pong(11);
        assert!(sink.try_send(1, &RequestId::Binary(id), r).is_ok());
        assert_eq!(sink.turn(1), Turn::Write);
        assert!(read_ids(&mut peer, &mut d).is_empty());
        // The writer wrote reply 0; now reply 1 goes straight out, and the writer skips it.
        sink.wrote(0);
        let (id, r) = pong(11);
        sink.try_send(1, &RequestId::Binary(id), r).unwrap();
        assert_eq!(read_ids(&mut peer, &mut d), vec![11]);
        assert_eq!(sink.turn(1), Turn::Sent);
        // Reply 1 again: already past it, nothing is written twice.
        let (id, r) = pong(12);
        sink.try_send(1, &RequestId::Binary(id), r).unwrap();
        assert!(read_ids(&mut peer, &mut d).is_empty());
    }

    #[test]
    fn a_socket_that_takes_nothing_leaves_the_whole_reply_to_the_writer() {
        use std::io::Write;
        let (ours, _peer) = UnixStream::pair().unwrap();
        let sink = ReplySink::new(&ours).unwrap();
        // Fill the socket until it would block.
        ours.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 1 << 16];
        while (&ours).write(&chunk).is_ok() {}
        while (&ours).write(&[0]).is_ok() {}
        let (id, r) = pong(3);
        assert!(
            sink.try_send(0, &RequestId::Binary(id), r).is_ok(),
            "the result comes back"
        );
        assert_eq!(sink.turn(0), Turn::Write);
        sink.wrote(0);
        assert_eq!(
            sink.turn(1),
            Turn::Write,
            "the next one is the writer's too"
        );
    }

    #[test]
    fn a_full_socket_leaves_the_rest_to_the_writer_in_order() {
        let (ours, mut peer) = UnixStream::pair().unwrap();
        let sink = ReplySink::new(&ours).unwrap();
        // Fill the socket so that a large reply goes out only in part.
        let big = Ok(Reply::Checkpoint(Some(sessiond_proto::CheckpointInfo {
            number: 1,
            created_at: chrono::Utc::now(),
            size: 4 << 20,
            meta: Default::default(),
            payload: Some(sessiond_proto::Payload(vec![7; 4 << 20])),
            skipped_corrupt: Vec::new(),
            key: None,
            existing: false,
            attachments: None,
        })));
        sink.try_send(0, &RequestId::Binary(5), big).unwrap();
        let Turn::Rest(rest) = sink.turn(0) else {
            panic!("a 4 MiB reply cannot fit a socket buffer")
        };
        // Until the writer has finished reply 0, reply 1 is not written directly.
        let (id, r) = pong(6);
        sink.try_send(1, &RequestId::Binary(id), r).unwrap();
        assert_eq!(sink.turn(1), Turn::Write);
        // The writer finishes reply 0, then writes reply 1 itself: the peer sees 5 then 6.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut w = &ours;
            w.write_all(&rest).unwrap();
            let one = frame::encode_frame(&ResponseFrame {
                id: 6,
                result: pong(6).1,
            })
            .unwrap();
            w.write_all(&one).unwrap();
        });
        let mut d = FrameDecoder::new(8 << 20);
        let mut ids = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        while ids.len() < 2 {
            let n = peer.read(&mut buf).unwrap();
            assert!(n > 0);
            d.push(&buf[..n]);
            while let Some(Frame::Body(b)) = d.next_frame() {
                ids.push(codec::decode::<ResponseFrame>(b).unwrap().id);
            }
        }
        writer.join().unwrap();
        assert_eq!(ids, vec![5, 6]);
    }
}
