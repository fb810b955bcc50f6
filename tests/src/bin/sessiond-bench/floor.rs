//! The machine's floor for many clients' durable writes: what the least a durable store must
//! do per write costs here, with nothing of a real store around it.
//!
//! `--clients` clients each send `--size` bytes over a Unix socket and wait for an 8-byte
//! acknowledgement. A minimal server reads the bytes (no framing, parsing, index or async
//! runtime), writes them into a file already written (the fastest kind on this disk, see
//! `fsync`), `fdatasync`s, and only then acknowledges every write the flush covered (group
//! commit). The load generator is one thread on epoll, as redis-benchmark is.
//!
//! Three server shapes are measured and the best one reported: one thread that reads, flushes
//! and acknowledges in turn (as Redis does; the quickest for one client), a reader that keeps
//! reading while another thread flushes, and two flushes in flight at once (acknowledged in
//! order), which lets the device overlap them.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::net::UnixStream as PolledStream;
use mio::{Events, Interest, Poll, Token};

const ACK: [u8; 8] = *b"durable\n";
/// The file the writes go round in, written in full before the run.
const FILE_BYTES: u64 = 64 << 20;
/// The file only allocated: large enough that a run of seconds never comes round to blocks
/// it has written already.
const FALLOCATED_BYTES: u64 = 1 << 30;

pub struct FloorRun {
    pub flushes_in_flight: usize,
    pub ops_per_sec: f64,
    /// Writes each flush covered, on average.
    pub per_flush: f64,
    /// The server's threads' CPU (user and system) per write, in microseconds.
    pub server_cpu_us: f64,
    /// The server's threads' context switches per write.
    pub server_switches: f64,
}

/// The CPU (user and system) and the context switches of this thread or process so far.
pub fn used(who: nix::sys::resource::UsageWho) -> Result<(Duration, u64), String> {
    let u = nix::sys::resource::getrusage(who).map_err(|e| format!("getrusage: {e}"))?;
    let time = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    let switches = u.voluntary_context_switches() + u.involuntary_context_switches();
    Ok((
        time(u.user_time()) + time(u.system_time()),
        switches.max(0) as u64,
    ))
}

/// What a server thread did: its flushes, and its CPU time and context switches.
#[derive(Default)]
struct ThreadWork {
    flushes: u64,
    cpu: Duration,
    switches: u64,
}

impl ThreadWork {
    /// This thread's `flushes`, with what it has used so far.
    fn of_this_thread(flushes: u64) -> Result<Self, String> {
        let (cpu, switches) = used(nix::sys::resource::UsageWho::RUSAGE_THREAD)?;
        Ok(ThreadWork {
            flushes,
            cpu,
            switches,
        })
    }

    fn add(&mut self, other: ThreadWork) {
        self.flushes += other.flushes;
        self.cpu += other.cpu;
        self.switches += other.switches;
    }
}

/// Writes received and not yet taken by a flusher, and the order flushes acknowledge in.
#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// The client each queued write came from, in order.
    from: Vec<usize>,
    /// A flushed batch's buffer, emptied, for the reader to fill next.
    spare: Vec<u8>,
    /// Where the next flush writes in the file.
    offset: u64,
    /// Flushes taken from the queue so far: the next one's ticket.
    taken: u64,
    /// Flushes acknowledged so far: the ticket whose turn it is.
    acknowledged: u64,
    done: bool,
}

struct Shared {
    /// Where the writes go round.
    file_bytes: u64,
    queue: Mutex<Queue>,
    /// Writes queued, or the run is over.
    queued: Condvar,
    /// A flush finished acknowledging.
    turn: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Measures `clients` x `size` for `seconds` with `in_flight` flushes at most (0: the reader
/// flushes what it read itself, one thread for everything), in a file
/// under `dir`: one written through, or with `fallocated` one whose blocks are only
/// allocated (as a segment made with `fallocate` alone), to show what that costs.
pub fn run(
    clients: usize,
    size: usize,
    seconds: f64,
    in_flight: usize,
    fallocated: bool,
    dir: &Path,
) -> Result<FloorRun, String> {
    if clients == 0 || size == 0 {
        return Err("floor needs --clients and --size above 0".into());
    }
    let path = dir.join(format!("floor-{in_flight}"));
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_bytes = if fallocated {
        FALLOCATED_BYTES
    } else {
        FILE_BYTES
    };
    if fallocated {
        let len = i64::try_from(file_bytes).map_err(|e| e.to_string())?;
        nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, len)
            .map_err(|e| format!("fallocate: {e}"))?;
    } else {
        let chunk = vec![0xa5u8; 1 << 20];
        for i in 0..FILE_BYTES >> 20 {
            file.write_all_at(&chunk, i << 20)
                .map_err(|e| e.to_string())?;
        }
    }
    file.sync_all().map_err(|e| e.to_string())?;
    let file = Arc::new(file);

    let mut server = Vec::with_capacity(clients);
    let mut client = Vec::with_capacity(clients);
    for _ in 0..clients {
        let (s, c) = UnixStream::pair().map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        server.push(s);
        client.push(c);
    }
    // The flushers acknowledge on these; the reader reads from its own handles of them.
    let acks: Arc<Vec<UnixStream>> = Arc::new(
        server
            .iter()
            .map(UnixStream::try_clone)
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
    );
    let shared = Arc::new(Shared {
        file_bytes,
        queue: Mutex::new(Queue::default()),
        queued: Condvar::new(),
        turn: Condvar::new(),
    });

    let flushers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (shared, file, acks) = (shared.clone(), file.clone(), acks.clone());
            std::thread::spawn(move || flusher(&shared, &file, &acks))
        })
        .collect();
    let reader = {
        let (shared, file, acks) = (shared.clone(), file.clone(), acks.clone());
        std::thread::spawn(move || {
            let inline = (in_flight == 0).then_some((&*file, &acks[..]));
            read_writes(server, &shared, size, inline)
        })
    };

    let generated = generate(client, size, Duration::from_secs_f64(seconds));
    shared.lock().done = true;
    shared.queued.notify_all();
    shared.turn.notify_all();
    let read = reader
        .join()
        .map_err(|_| "the reader panicked".to_string())?;
    let mut work = ThreadWork::default();
    for f in flushers {
        work.add(f.join().map_err(|_| "a flusher panicked".to_string())??);
    }
    let _ = std::fs::remove_file(&path);
    work.add(read?);
    let (ops, elapsed) = generated?;
    let per_write = |x: f64| x / ops.max(1) as f64;
    Ok(FloorRun {
        flushes_in_flight: in_flight,
        ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
        per_flush: ops as f64 / work.flushes.max(1) as f64,
        server_cpu_us: per_write(work.cpu.as_secs_f64() * 1e6),
        server_switches: per_write(work.switches as f64),
    })
}

/// Reads every client's writes and queues each complete one; `inline`, flushes them itself
/// (no other thread involved, as Redis does). Returns the flushes it made and what it used.
fn read_writes(
    server: Vec<UnixStream>,
    shared: &Shared,
    size: usize,
    inline: Option<(&std::fs::File, &[UnixStream])>,
) -> Result<ThreadWork, String> {
    let mut flushes = 0u64;
    let (mut poll, mut streams) = polled(server)?;
    let mut partial = vec![Vec::with_capacity(size); streams.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 << 10];
    let mut closed = vec![false; streams.len()];
    let (mut ready, mut from) = (Vec::new(), Vec::new());
    while closed.contains(&false) {
        wait(&mut poll, &mut events)?;
        from.clear();
        for event in events.iter() {
            let i = event.token().0;
            while !closed[i] {
                match streams[i].read(&mut buf) {
                    // A client that leaves with acknowledgements unread resets the connection.
                    Ok(0) => closed[i] = true,
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => closed[i] = true,
                    Ok(n) => {
                        let complete = split_writes(&buf[..n], &mut partial[i], size, &mut ready);
                        from.extend(std::iter::repeat_n(i, complete));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
        if !from.is_empty() {
            let mut q = shared.lock();
            if q.bytes.is_empty() {
                std::mem::swap(&mut q.bytes, &mut ready);
                // A flushed batch's buffer, so that the next one is not grown again.
                ready = std::mem::take(&mut q.spare);
            } else {
                q.bytes.append(&mut ready);
            }
            q.from.append(&mut from);
            drop(q);
            match inline {
                Some((file, acks)) => flushes += u64::from(flush_once(shared, file, acks, false)?),
                None => shared.queued.notify_one(),
            }
        }
    }
    ThreadWork::of_this_thread(flushes)
}

/// Appends the complete writes of `bytes` (one client's read) to `ready`, keeping the
/// unfinished end in `partial`; returns how many it appended. One copy of each write, as a
/// store makes: straight from the read, unless it straddles two reads.
fn split_writes(
    mut bytes: &[u8],
    partial: &mut Vec<u8>,
    size: usize,
    ready: &mut Vec<u8>,
) -> usize {
    let mut complete = 0;
    while !bytes.is_empty() {
        if partial.is_empty() && bytes.len() >= size {
            ready.extend_from_slice(&bytes[..size]);
            bytes = &bytes[size..];
        } else {
            let take = bytes.len().min(size - partial.len());
            partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if partial.len() < size {
                break;
            }
            ready.append(partial);
        }
        complete += 1;
    }
    complete
}

/// An epoll set over `streams`, each registered for reading under its index.
fn polled(streams: Vec<UnixStream>) -> Result<(Poll, Vec<PolledStream>), String> {
    let poll = Poll::new().map_err(|e| e.to_string())?;
    let mut streams: Vec<PolledStream> = streams.into_iter().map(PolledStream::from_std).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry()
            .register(s, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
    }
    Ok((poll, streams))
}

/// Waits up to 100 ms for readable streams (none, on an interrupted wait).
fn wait(poll: &mut Poll, events: &mut Events) -> Result<(), String> {
    match poll.poll(events, Some(Duration::from_millis(100))) {
        Err(e) if e.kind() == ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

/// A flusher thread: flushes until the run is over. Returns the flushes it made and what it
/// used.
fn flusher(
    shared: &Shared,
    file: &std::fs::File,
    acks: &[UnixStream],
) -> Result<ThreadWork, String> {
    let mut flushes = 0u64;
    while flush_once(shared, file, acks, true)? {
        flushes += 1;
    }
    ThreadWork::of_this_thread(flushes)
}

/// Takes what is queued (waiting for some if `wait`), writes and `fdatasync`s it, then
/// acknowledges it in its turn. Returns whether it flushed anything.
fn flush_once(
    shared: &Shared,
    file: &std::fs::File,
    acks: &[UnixStream],
    wait: bool,
) -> Result<bool, String> {
    let (mut bytes, from, offset, ticket) = {
        let mut q = shared.lock();
        while wait && q.from.is_empty() && !q.done {
            q = shared.queued.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.done || q.from.is_empty() {
            return Ok(false);
        }
        let bytes = std::mem::take(&mut q.bytes);
        let from = std::mem::take(&mut q.from);
        let len = bytes.len() as u64;
        if q.offset + len > shared.file_bytes {
            q.offset = 0;
        }
        let offset = q.offset;
        q.offset += len;
        let ticket = q.taken;
        q.taken += 1;
        (bytes, from, offset, ticket)
    };
    file.write_all_at(&bytes, offset)
        .map_err(|e| format!("write: {e}"))?;
    file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
    let mut q = shared.lock();
    while q.acknowledged != ticket && !q.done {
        q = shared.turn.wait(q).unwrap_or_else(|p| p.into_inner());
    }
    if q.done {
        return Ok(true);
    }
    bytes.clear();
    q.spare = bytes;
    // Its turn: the other flusher waits for `acknowledged`, the reader need not.
    drop(q);
    for i in from {
        // Each client has one write outstanding: its socket always has room for 8 bytes.
        if let Err(e) = (&acks[i]).write_all(&ACK) {
            if !matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) {
                return Err(format!("acknowledge: {e}"));
            }
        }
    }
    shared.lock().acknowledged += 1;
    shared.turn.notify_all();
    Ok(true)
}

/// Every client sends a write, and the next as soon as the last one is acknowledged, until
/// `length` is up. Returns the writes acknowledged and the time they took.
fn generate(
    client: Vec<UnixStream>,
    size: usize,
    length: Duration,
) -> Result<(u64, Duration), String> {
    let (mut poll, mut streams) = polled(client)?;
    let write = vec![0x5au8; size];
    let send = |s: &mut PolledStream| -> Result<(), String> {
        // A write of up to the socket's buffer goes in whole: the server reads while flushing.
        let mut rest = &write[..];
        while !rest.is_empty() {
            match s.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        Ok(())
    };
    let start = Instant::now();
    let end = start + length;
    for s in &mut streams {
        send(s)?;
    }
    let mut acked = vec![0usize; streams.len()];
    let mut ops = 0u64;
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 64];
    while Instant::now() < end {
        wait(&mut poll, &mut events)?;
        for event in events.iter() {
            let i = event.token().0;
            loop {
                match streams[i].read(&mut buf) {
                    Ok(0) => return Err("the floor server closed a connection".into()),
                    Ok(n) => acked[i] += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            while acked[i] >= ACK.len() {
                acked[i] -= ACK.len();
                ops += 1;
                send(&mut streams[i])?;
            }
        }
    }
    Ok((ops, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_acknowledges_and_stops() {
        // On a tmpfs when there is one: this checks the acknowledgements, and a busy disk's
        // flushes (tens of milliseconds under a parallel test run) are not what it measures.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        for in_flight in [0, 1, 2] {
            let r = run(4, 3000, 0.3, in_flight, false, dir.path()).unwrap();
            // A lost or out-of-turn acknowledgement stalls a client for good: a few writes.
            assert!(r.ops_per_sec > 100.0, "{in_flight}: {}/s", r.ops_per_sec);
            assert!(r.per_flush >= 0.9, "{in_flight}: {}", r.per_flush);
            // Reading, writing and acknowledging take some CPU, and far less than a second.
            assert!(
                r.server_cpu_us > 0.0 && r.server_cpu_us < 1e6,
                "{in_flight}: {} us",
                r.server_cpu_us
            );
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_read_is_split_into_whole_writes_and_the_rest_kept() {
        let (mut partial, mut ready) = (Vec::new(), Vec::new());
        // Two whole writes of 3 bytes and the start of a third.
        assert_eq!(split_writes(b"abcdefg", &mut partial, 3, &mut ready), 2);
        assert_eq!((&ready[..], &partial[..]), (&b"abcdef"[..], &b"g"[..]));
        // Its end, then one more whole one.
        assert_eq!(split_writes(b"hixyz", &mut partial, 3, &mut ready), 2);
        assert_eq!((&ready[..], &partial[..]), (&b"abcdefghixyz"[..], &b""[..]));
        assert_eq!(split_writes(b"q", &mut partial, 3, &mut ready), 0);
    }

    #[test]
    fn nothing_to_measure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(run(0, 1024, 0.1, 1, false, dir.path()).is_err());
        assert!(run(1, 0, 0.1, 1, false, dir.path()).is_err());
    }
}
