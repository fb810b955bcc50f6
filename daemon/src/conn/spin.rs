//! Polling a connection's socket for a moment after its replies, instead of sleeping on it.
//!
//! A client writing checkpoint after checkpoint sends its next request some tens of
//! microseconds after its last reply. Sleeping on the socket in that gap costs a wake-up when
//! the request comes: on a virtual machine the idle CPU has halted by then, and waking it
//! costs the client's `send` and the daemon's first steps tens of microseconds each
//! (bench/README.md has the measurement). So a connection whose last request came within the
//! window (`--poll-window`) of its replies polls its socket for up to that long, yielding to
//! every other task between polls (the async worker polls its I/O driver without blocking
//! when only yielded tasks are left, which is how the socket's readiness is seen), and the
//! CPU to any other thread waiting for it, which may be the client itself. A client
//! that pauses longer is not polled for until it comes back quickly again, so the CPU spent is
//! at most a window per quick request. One connection polls at a time: two would keep the
//! worker's queue from ever emptying, which delays its driver's polls for everyone.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::unix::ReadHalf;

/// One connection's polling state.
pub struct Spinner<'a> {
    /// Held by the connection that polls; the service's, shared by all.
    slot: &'a AtomicBool,
    window: Option<Duration>,
    /// The last request came within the window of the replies before it.
    armed: bool,
    /// When the connection last had every reply written and nothing else to do.
    idle_since: Option<Instant>,
}

impl<'a> Spinner<'a> {
    pub fn new(slot: &'a AtomicBool, window: Option<Duration>) -> Self {
        Spinner {
            slot,
            window,
            armed: false,
            idle_since: None,
        }
    }

    /// Before a read of the socket: whether the client now owes the next request (every
    /// reply is written).
    pub fn before_read(&mut self, answered: bool) {
        self.idle_since = (answered && self.window.is_some()).then(Instant::now);
    }

    /// Reads what arrives within the window into `buf`, if the client came back quickly
    /// last time (a request read here keeps it so); `None` if nothing did, or it is not to be
    /// polled for now.
    pub async fn poll(
        &mut self,
        stream: &ReadHalf<'_>,
        buf: &mut Vec<u8>,
    ) -> io::Result<Option<usize>> {
        let (Some(since), Some(window), true) = (self.idle_since, self.window, self.armed) else {
            return Ok(None);
        };
        if self
            .slot
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return Ok(None);
        }
        let _held = Held(self.slot);
        let until = since + window;
        loop {
            match stream.try_read_buf(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if Instant::now() >= until {
                self.armed = false;
                return Ok(None);
            }
            // The CPU too, not only the worker: a client waiting to run on this CPU sends
            // the request now, not when the window is over.
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }

    /// A read that waited on the socket returned: poll next time if it came within the
    /// window.
    pub fn heard(&mut self) {
        self.armed = match (self.idle_since, self.window) {
            (Some(t), Some(window)) => t.elapsed() < window,
            _ => false,
        };
    }
}

/// The polling slot, given back when dropped (also when the read is cancelled mid-poll).
struct Held<'a>(&'a AtomicBool);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const WINDOW: Option<Duration> = Some(Duration::from_millis(20));

    fn pair() -> (tokio::net::UnixStream, std::os::unix::net::UnixStream) {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (tokio::net::UnixStream::from_std(ours).unwrap(), theirs)
    }

    /// A spinner that has seen its client come back within the window.
    fn quick(slot: &AtomicBool, window: Option<Duration>) -> Spinner<'_> {
        let mut s = Spinner::new(slot, window);
        s.before_read(true);
        s.heard();
        s
    }

    #[tokio::test]
    async fn a_quick_client_is_polled_for_and_its_request_read() {
        let slot = AtomicBool::new(false);
        let (mut ours, mut theirs) = pair();
        let (r, _w) = ours.split();
        let mut s = quick(&slot, WINDOW);
        s.before_read(true);
        theirs.write_all(b"next").unwrap();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), Some(4));
        assert_eq!(buf, b"next");
        assert!(!slot.load(Ordering::Relaxed), "the slot is given back");
        // Still quick: polled for again.
        s.before_read(true);
        theirs.write_all(b"more").unwrap();
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), Some(4));
    }

    #[tokio::test]
    async fn nothing_within_the_window_ends_polling_until_the_client_is_quick_again() {
        let slot = AtomicBool::new(false);
        let (mut ours, _theirs) = pair();
        let (r, _w) = ours.split();
        let mut s = quick(&slot, WINDOW);
        s.before_read(true);
        let started = Instant::now();
        let mut buf = Vec::with_capacity(64);
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), None);
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(!slot.load(Ordering::Relaxed));
        // Disarmed: the next read sleeps on the socket at once.
        s.before_read(true);
        let started = Instant::now();
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), None);
        assert!(started.elapsed() < Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_slow_client_replies_pending_or_no_window_are_not_polled_for() {
        let slot = AtomicBool::new(false);
        let (mut ours, mut theirs) = pair();
        let (r, _w) = ours.split();
        theirs.write_all(b"x").unwrap();
        let mut buf = Vec::with_capacity(64);
        // Came back after the window (none is shorter than an empty one).
        let mut slow = Spinner::new(&slot, Some(Duration::ZERO));
        slow.before_read(true);
        slow.heard();
        slow.before_read(true);
        assert_eq!(slow.poll(&r, &mut buf).await.unwrap(), None);
        // A reply not yet written: the client owes nothing.
        let mut owed = quick(&slot, WINDOW);
        owed.before_read(false);
        assert_eq!(owed.poll(&r, &mut buf).await.unwrap(), None);
        // Polling turned off.
        let mut off = quick(&slot, None);
        off.before_read(true);
        assert_eq!(off.poll(&r, &mut buf).await.unwrap(), None);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn one_connection_polls_at_a_time() {
        let slot = AtomicBool::new(true);
        let (mut ours, mut theirs) = pair();
        let (r, _w) = ours.split();
        theirs.write_all(b"x").unwrap();
        let mut s = quick(&slot, WINDOW);
        s.before_read(true);
        let mut buf = Vec::with_capacity(64);
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), None);
        slot.store(false, Ordering::Relaxed);
        assert_eq!(s.poll(&r, &mut buf).await.unwrap(), Some(1));
    }
}
