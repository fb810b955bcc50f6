//! The commit thread: the only writer of the log. It takes every mutation queued while the
//! previous flush ran, plans them against the table, appends their records, makes them
//! durable with one `fdatasync` (group commit), applies them to the table and only then
//! answers. It also writes index snapshots and deletes dead segments.
//!
//! When the disk fails, the batch is refused with `unavailable`, the segment is abandoned
//! (see [`crate::store::log`]) and the next segment is started by itself once a back-off
//! has passed: batches arriving sooner are refused without touching the disk, so a failing
//! disk costs neither a busy loop nor a log line per batch ([`crate::health`]). Snapshots
//! that fail are retried the same way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_proto::{Event, Reply, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cache::{Cached, LatestCache};
use crate::health::{Health, Work};
use crate::process::ProcessProbe;
use crate::sink::DirectReply;

use crate::model::{now_micros, CkptEntry, SessionKey};
use crate::store::log::{Appended, LogWriter, Pending};
use crate::store::reaper::Reaper;
use crate::store::record::{self, RecordHeader};
use crate::store::scope::{self, within};
use crate::store::segment::list_segments;
use crate::store::snapshot::{self, Snapshot};
use crate::store::{collect_garbage, SegmentFiles};
pub use crate::table::OwnerChange;
use crate::table::{Mutation, Overlay, Planned, SessionTable};

/// State shared by the commit thread and the request handlers.
pub struct Shared {
    pub dir: PathBuf,
    pub table: Mutex<SessionTable>,
    pub files: SegmentFiles,
    /// Dead segment files kept for reuse by new segments (see [`crate::store::log`]).
    pub free_segments: usize,
    pub cache: LatestCache,
    pub probe: Arc<dyn ProcessProbe>,
    pub notify: Notifier,
    pub health: Arc<Health>,
    pub reaper: Reaper,
    pub checkpoints_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub flushes: AtomicU64,
}

/// Where committed changes are announced: events for `watch` streams (bounded; a slow
/// watcher lags, never a writer), ownership changes for the owner watcher (never dropped).
pub struct Notifier {
    pub events: broadcast::Sender<Arc<(u32, Event)>>,
    pub owners: mpsc::UnboundedSender<OwnerChange>,
}

impl Shared {
    pub fn table(&self) -> std::sync::MutexGuard<'_, SessionTable> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters more than refusing service would.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One mutation waiting for the commit thread.
pub struct Job {
    pub uid: u32,
    pub mutation: Mutation,
    pub reply: oneshot::Sender<Result<Reply, WireError>>,
    /// The connection's socket, to write a success straight to when it is its turn.
    pub direct: Option<DirectReply>,
}

impl Job {
    fn bytes(&self) -> usize {
        match &self.mutation {
            Mutation::Checkpoint { payload, .. } => payload.bytes.len(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct CommitConfig {
    pub snapshot_every_bytes: u64,
    pub segment_bytes: u64,
}

const MAX_BATCH_JOBS: usize = 4096;
/// Batches up to this many replies have them written by the commit thread (see [`crate::sink`]).
const MAX_DIRECT_REPLIES: usize = 2;
const MAX_BATCH_BYTES: usize = 256 << 20;
/// A snapshot also follows this many new segments, whatever they hold: the log's segments
/// (after a run of failed writes, many small ones) stay few between two snapshots.
const ROTATIONS_PER_SNAPSHOT: u32 = 32;

/// When failed disk work may be tried again: soon after the first failure, then less and
/// less often, up to a bound.
#[derive(Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    until: Option<Instant>,
}

impl Backoff {
    const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            delay: first,
            until: None,
        }
    }

    fn failed(&mut self) {
        self.until = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    fn succeeded(&mut self) {
        self.until = None;
        self.delay = self.first;
    }

    /// How long until the work may be tried again; `None`: now.
    fn remaining(&self) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}

/// The log as the commit thread drives it: the active segment, and what is due or failing.
pub struct Committer {
    shared: Arc<Shared>,
    log: LogWriter,
    cfg: CommitConfig,
    /// After a failed write: when the next segment may be started.
    log_retry: Backoff,
    /// Why writes are refused while the log waits for a new segment.
    log_error: String,
    /// After a full segment could not be rotated: when to try again (writes go on meanwhile).
    rotation_retry: Backoff,
    since_snapshot: u64,
    rotations: u32,
    snapshot_retry: Backoff,
}

impl Committer {
    pub fn new(shared: Arc<Shared>, log: LogWriter, cfg: CommitConfig) -> Self {
        // A snapshot that failed at start-up is due at once.
        let since_snapshot = if shared.health.is_failing(Work::IndexSnapshot) {
            cfg.snapshot_every_bytes
        } else {
            0
        };
        Committer {
            shared,
            log,
            cfg,
            // Writes come back within a fraction of a second once the disk does.
            log_retry: Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
            log_error: String::new(),
            rotation_retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            since_snapshot,
            rotations: 0,
            snapshot_retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
        }
    }

    fn snapshot_due(&self) -> bool {
        self.since_snapshot >= self.cfg.snapshot_every_bytes
            || self.rotations >= ROTATIONS_PER_SNAPSHOT
    }

    /// Commits one batch: a new segment first if the active one was abandoned, then the
    /// batch, then a rotation or a snapshot if one is due.
    pub fn commit(&mut self, batch: Vec<Job>) {
        let refusal = self.writable().err();
        match commit_batch(&self.shared, &mut self.log, batch, refusal) {
            Committed::Nothing => {}
            Committed::Wrote(bytes) => {
                self.since_snapshot += bytes;
                self.log_retry.succeeded();
                self.shared.health.succeeded(Work::LogWrite);
            }
            Committed::Failed(message) => {
                self.shared.health.failed(Work::LogWrite, &message);
                self.log_retry.failed();
                self.log_error = message;
            }
        }
        if self.log.is_full()
            && !self.log.is_poisoned()
            && self.rotation_retry.remaining().is_none()
        {
            // On failure writes go on in the full segment.
            match self.rotate() {
                Ok(()) => self.rotation_retry.succeeded(),
                Err(_) => self.rotation_retry.failed(),
            }
        }
        if self.snapshot_due() && self.snapshot_retry.remaining().is_none() {
            self.upkeep();
        }
    }

    /// Whether records may be written now: after a failed write, once a new segment could be
    /// started, which is tried again only when the back-off allows.
    fn writable(&mut self) -> Result<(), WireError> {
        if !self.log.is_poisoned() {
            return Ok(());
        }
        if let Some(left) = self.log_retry.remaining() {
            return Err(WireError::unavailable(format!(
                "{}; trying again in {} ms",
                self.log_error,
                left.as_millis().max(1)
            )));
        }
        if let Err(e) = self.rotate() {
            self.log_retry.failed();
            self.log_error =
                format!("cannot write the checkpoint log: cannot start a new segment: {e}");
            return Err(WireError::unavailable(self.log_error.clone()));
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        match self.log.rotate() {
            Ok(()) => {
                self.rotations += 1;
                self.shared.health.succeeded(Work::NewSegment);
                Ok(())
            }
            Err(e) => {
                self.shared.health.failed(Work::NewSegment, &e);
                Err(e)
            }
        }
    }

    /// A snapshot, then compaction; retried after a back-off if the snapshot fails.
    fn upkeep(&mut self) {
        if let Err(e) = write_snapshot(&self.shared, &self.log) {
            self.shared.health.failed(Work::IndexSnapshot, &e);
            self.snapshot_retry.failed();
            return;
        }
        self.shared.health.succeeded(Work::IndexSnapshot);
        self.snapshot_retry.succeeded();
        self.since_snapshot = 0;
        self.rotations = 0;
        if self.log.is_poisoned() {
            return;
        }
        let compacted = compact(&self.shared, &mut self.log, &self.cfg);
        let snapshot = match &compacted {
            Ok(moved) => {
                self.shared.health.succeeded(Work::Compaction);
                if *moved {
                    write_snapshot(&self.shared, &self.log)
                } else {
                    Ok(())
                }
            }
            Err(e) => {
                self.shared.health.failed(Work::Compaction, e);
                Ok(())
            }
        };
        if let Err(e) = &snapshot {
            self.shared.health.failed(Work::IndexSnapshot, e);
        }
        if snapshot.is_err() || compacted.is_err() {
            // Both again soon.
            self.since_snapshot = self.cfg.snapshot_every_bytes;
            self.snapshot_retry.failed();
        }
    }

    /// How long the thread may wait for a job before retrying a failed snapshot.
    fn idle_limit(&self) -> Option<Duration> {
        self.snapshot_due()
            .then(|| self.snapshot_retry.remaining().unwrap_or(Duration::ZERO))
    }

    /// The last snapshot and the trim of a clean stop.
    pub fn finish(mut self) {
        if let Err(e) = write_snapshot(&self.shared, &self.log) {
            tracing::error!(error = %e, "cannot write the index snapshot at shutdown; the next start replays more of the log");
        }
        self.log.trim();
    }
}

pub fn run(shared: Arc<Shared>, log: LogWriter, jobs: Receiver<Job>, cfg: CommitConfig) {
    let mut committer = Committer::new(shared, log, cfg);
    loop {
        let first = match committer.idle_limit() {
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            Some(wait) => match jobs.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    committer.upkeep();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut bytes = first.bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_JOBS && bytes < MAX_BATCH_BYTES {
            match jobs.try_recv() {
                Ok(job) => {
                    bytes += job.bytes();
                    batch.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        committer.commit(batch);
    }
    committer.finish();
    tracing::debug!("commit thread finished");
}

/// What became of a batch.
#[derive(Debug, PartialEq, Eq)]
enum Committed {
    /// No record to write (every mutation refused, or none needing one), or refused whole.
    Nothing,
    /// Durable: this many bytes appended.
    Wrote(u64),
    /// The disk failed: every mutation with records was refused.
    Failed(String),
}

/// Commits one batch. With `refusal`, mutations that need a record are refused with it
/// (the log cannot be written now); the others are answered as usual.
fn commit_batch(
    shared: &Shared,
    log: &mut LogWriter,
    batch: Vec<Job>,
    refusal: Option<WireError>,
) -> Committed {
    let now = now_micros();
    let mut planned = Vec::with_capacity(batch.len());
    {
        let table = shared.table();
        let mut overlay = Overlay::default();
        for job in batch {
            match table.plan(&mut overlay, job.uid, now, job.mutation, &*shared.probe) {
                Ok(p) => planned.push((p, (job.reply, job.direct), job.uid)),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
    }
    if let Some(err) = refusal {
        let (writes, answers): (Vec<_>, Vec<_>) = planned
            .into_iter()
            .partition(|(p, _, _)| !p.records.is_empty());
        for (p, (reply, _), _) in answers {
            let _ = reply.send(Ok(p.reply));
        }
        fail_all(writes, err);
        return Committed::Nothing;
    }
    let mut pending = Vec::new();
    for (p, _, _) in &planned {
        for (header, payload) in &p.records {
            match record::encode_with_crc(header, &payload.bytes, payload.crc) {
                Ok(head) => pending.push(Pending {
                    head,
                    payload: &payload.bytes,
                }),
                Err(e) => {
                    fail_all(
                        planned,
                        WireError::internal(format!("cannot encode a log record: {e}")),
                    );
                    return Committed::Nothing;
                }
            }
        }
    }
    if pending.is_empty() {
        for (p, (reply, _), _) in planned {
            let _ = reply.send(Ok(p.reply));
        }
        return Committed::Nothing;
    }
    let Appended {
        locs,
        bytes: appended,
    } = match log.append(&mut pending) {
        Ok(a) => a,
        Err(e) => {
            let message = format!("cannot write the checkpoint log: {e}");
            fail_all(planned, WireError::unavailable(message.clone()));
            return Committed::Failed(message);
        }
    };
    drop(pending);
    if let Err(e) = log.sync() {
        // After a failed fsync the page cache cannot be trusted: never retry it, never write
        // to that segment again.
        let message = format!("cannot make the checkpoint log durable (fsync): {e}");
        fail_all(planned, WireError::unavailable(message.clone()));
        return Committed::Failed(message);
    }
    shared.flushes.fetch_add(1, Ordering::Relaxed);
    shared.bytes_written.fetch_add(appended, Ordering::Relaxed);
    let mut replies = Vec::with_capacity(planned.len());
    let mut cache = Vec::new();
    {
        let mut table = shared.table();
        let mut locs = locs.into_iter();
        for (p, reply, uid) in planned {
            for (header, payload) in p.records {
                let Some(loc) = locs.next() else { break };
                match &header {
                    RecordHeader::Checkpoint(h) => {
                        shared.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                        // The payload was only borrowed for the write: it moves to the cache.
                        let cached = CkptEntry::new(h.number, loc).map(|entry| Cached {
                            entry,
                            created_at: h.created_at,
                            meta: h.meta.clone(),
                            payload: payload.bytes,
                        });
                        cache.push((SessionKey::new(h.uid, h.name.clone()), cached));
                    }
                    RecordHeader::Delete { uid, name } => {
                        cache.push((SessionKey::new(*uid, name.clone()), None))
                    }
                    _ => {}
                }
                table.apply(header, loc);
            }
            for event in p.events {
                // No receiver is fine: nobody is watching.
                let _ = shared.notify.events.send(Arc::new((uid, event)));
            }
            if let Some(change) = p.ownership {
                let _ = shared.notify.owners.send(change);
            }
            replies.push((p.reply, reply));
        }
    }
    // Before the replies, so that a read right after an acknowledgement finds it.
    for (key, cached) in cache {
        match cached {
            Some(c) => shared.cache.put(key, c),
            None => shared.cache.remove(&key),
        }
    }
    // A reply or two go straight to their sockets; more would hold up the next flush, while
    // the connections' tasks, woken once, write them on the other core.
    let direct_ok = replies.len() <= MAX_DIRECT_REPLIES;
    for (r, (tx, direct)) in replies {
        let result = match direct {
            Some(d) if direct_ok => d.sink.try_send(d.seq, d.id, Ok(r)),
            _ => Ok(r),
        };
        let _ = tx.send(result);
    }
    Committed::Wrote(appended)
}

type ReplyTo = (
    oneshot::Sender<Result<Reply, WireError>>,
    Option<DirectReply>,
);
type PlannedJob = (Planned, ReplyTo, u32);

fn fail_all(planned: Vec<PlannedJob>, err: WireError) {
    for (_, (reply, _), _) in planned {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Hands memory freed in bulk (a snapshot's copy of the index, start-up's decoded snapshot)
/// back to the system, so an idle daemon's resident size is its table, not its peak.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Writes an index snapshot as of the current log position, then deletes what it made dead.
pub fn write_snapshot(shared: &Shared, log: &LogWriter) -> std::io::Result<()> {
    let (segment, offset) = log.position();
    let sessions = shared.table().export();
    let snap = Snapshot {
        segment,
        offset,
        sessions,
    };
    let written = snapshot::write(&shared.dir, &snap);
    drop(snap);
    release_free_memory();
    written?;
    match collect_garbage(
        &shared.dir,
        segment,
        &shared.table,
        &shared.files,
        shared.free_segments,
        &shared.reaper,
    ) {
        Ok(_) => shared.health.succeeded(Work::SegmentDeletion),
        Err(e) => shared.health.failed(
            Work::SegmentDeletion,
            &format_args!("cannot retire old log segments: {e}"),
        ),
    }
    Ok(())
}

/// Copies the live records of the oldest segments to the head of the log while the log is
/// more than twice its live data (plus two segments of slack), or has many more segments than
/// its size needs (small ones, left by failed writes), so that garbage collection, which
/// deletes segments oldest first, is never pinned by a few long-lived records (an idle
/// session's checkpoints, a session's first state record). Copies at most one segment's worth
/// per call. Returns whether anything moved.
fn compact(shared: &Shared, log: &mut LogWriter, cfg: &CommitConfig) -> std::io::Result<bool> {
    let (active, _) = log.position();
    let segments = list_segments(&shared.dir)?;
    let (_, log_bytes) = crate::store::log_size(&shared.dir);
    let live_bytes = shared.table().live_bytes();
    let crowded = segments.len() as u64 > 16 + 2 * log_bytes.div_ceil(cfg.segment_bytes.max(1));
    if log_bytes <= 2 * live_bytes + 2 * cfg.segment_bytes && !crowded {
        return Ok(false);
    }
    within(scope::sessiond_io_compact, || {
        copy_forward(shared, log, cfg, &segments, active)
    })
}

/// Compaction's copying: returns whether anything moved. Fails if the disk does, leaving
/// the table as it was (the copies written so far are dead records).
fn copy_forward(
    shared: &Shared,
    log: &mut LogWriter,
    cfg: &CommitConfig,
    segments: &[u32],
    active: u32,
) -> std::io::Result<bool> {
    let mut moved = 0u64;
    let mut any = false;
    for &seq in segments.iter().filter(|&&s| s < active) {
        if moved >= cfg.segment_bytes {
            break;
        }
        let live = shared.table().live_records(seq);
        let mut copies: Vec<(RecordHeader, Vec<u8>, u32)> = live
            .states
            .into_iter()
            .map(|st| (RecordHeader::Session(st), Vec::new(), crc32c::crc32c(&[])))
            .collect();
        for (_, name, entry) in live.checkpoints {
            match shared.files.read_record_raw(&entry.loc()) {
                Ok((RecordHeader::Checkpoint(h) | RecordHeader::Relocated(h), payload, crc))
                    if h.number == entry.number =>
                {
                    copies.push((RecordHeader::Relocated(h), payload, crc));
                }
                // The disk failing to read is not damage: try again later.
                Err(e) if !e.is_damage() => return Err(std::io::Error::other(e)),
                Ok(_) | Err(_) => {
                    tracing::warn!(session = %name, number = entry.number, segment = seq, "cannot copy a damaged checkpoint forward; its segment stays");
                }
            }
        }
        if copies.is_empty() {
            continue;
        }
        let mut pending = Vec::with_capacity(copies.len());
        for (h, payload, crc) in &copies {
            let head = record::encode_with_crc(h, payload, *crc).map_err(std::io::Error::other)?;
            pending.push(Pending { head, payload });
        }
        let appended = log.append(&mut pending)?;
        log.sync()?;
        moved += appended.bytes;
        drop(pending);
        let mut table = shared.table();
        for ((h, _, _), loc) in copies.into_iter().zip(appended.locs) {
            table.apply(h, loc);
        }
        any = true;
        tracing::debug!(segment = seq, "copied live records forward");
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use sessiond_proto::{ErrorKind, Meta};

    use super::*;
    use crate::process::fake::FakeProbe;
    use crate::store::log::tests::FAIL_NEXT_SYNC;
    use crate::store::segment::LOG_DIR;

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        let (owners, _) = mpsc::unbounded_channel();
        let health = Arc::new(Health::new());
        Arc::new(Shared {
            dir: dir.to_path_buf(),
            table: Mutex::new(SessionTable::new(16)),
            files: SegmentFiles::new(dir),
            free_segments: 2,
            cache: LatestCache::new(1 << 20),
            probe: Arc::new(FakeProbe::default()),
            notify: Notifier {
                events: broadcast::channel(16).0,
                owners,
            },
            reaper: Reaper::start(dir, health.clone()),
            health,
            checkpoints_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }

    fn job(m: Mutation) -> (Job, oneshot::Receiver<Result<Reply, WireError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Job {
                uid: 1,
                mutation: m,
                reply: tx,
                direct: None,
            },
            rx,
        )
    }

    fn checkpoint(payload: &[u8]) -> Mutation {
        Mutation::Checkpoint {
            name: "s".into(),
            payload: record::CheckedPayload::new(payload.to_vec()),
            meta: Meta::new(),
            expect: None,
            epoch: None,
        }
    }

    fn commit(c: &mut Committer, m: Mutation) -> Result<Reply, WireError> {
        let (j, rx) = job(m);
        c.commit(vec![j]);
        rx.blocking_recv().unwrap()
    }

    #[test]
    fn a_failed_fsync_is_refused_never_applied_and_writes_resume_in_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOG_DIR)).unwrap();
        let shared = shared(dir.path());
        let log = LogWriter::create(dir.path(), 1, 1 << 20).unwrap();
        let cfg = CommitConfig {
            snapshot_every_bytes: 1 << 30,
            segment_bytes: 1 << 20,
        };
        let mut c = Committer::new(shared.clone(), log, cfg);
        let create = Mutation::Create {
            name: "s".into(),
            keep: None,
            meta: Meta::new(),
            owner: crate::table::OwnerClaim::default(),
        };
        assert!(commit(&mut c, create).is_ok());
        // Counted as written: every byte the record took in the segment, footer included.
        let used = c.log.position().1 - crate::store::segment::SEGMENT_HEADER_LEN;
        assert_eq!(shared.bytes_written.load(Ordering::Relaxed), used);

        FAIL_NEXT_SYNC.with(|f| f.set(true));
        let e = commit(&mut c, checkpoint(b"lost")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("fsync"), "{}", e.message);
        assert_eq!(
            shared.table().session(1, "s").unwrap().latest_checkpoint,
            None,
            "not applied"
        );
        assert!(shared.health.report().degraded);
        // Within the back-off, refused at once without touching the disk; a mutation that
        // needs no record is answered as usual.
        let e = commit(&mut c, checkpoint(b"soon")).unwrap_err();
        assert!(e.message.contains("trying again in"), "{}", e.message);
        assert_eq!(c.log.position().0, 1);
        assert_eq!(
            commit(
                &mut c,
                Mutation::Delete {
                    name: "nope".into()
                }
            ),
            Ok(Reply::Deleted(false))
        );
        // Once it has passed, the next write succeeds in a fresh segment, with the number the
        // failed one had, and the store is healthy again.
        std::thread::sleep(c.log_retry.remaining().unwrap_or_default());
        let Ok(Reply::Checkpoint(Some(cp))) = commit(&mut c, checkpoint(b"kept")) else {
            panic!()
        };
        assert_eq!(cp.number, 1);
        assert_eq!(c.log.position().0, 2);
        let failing = shared.health.report().failing;
        let works: Vec<&str> = failing.iter().map(|f| f.work.as_str()).collect();
        assert_eq!(
            works,
            ["log write"],
            "one failure, until a quiet spell has passed"
        );
        // The new segment says where the abandoned one's log ends.
        let first = crate::store::segment::SegmentFile::open(dir.path(), 2)
            .unwrap()
            .first_header();
        assert_eq!(
            first,
            Some(RecordHeader::Cut {
                segment: 1,
                end: crate::store::segment::SEGMENT_HEADER_LEN + used
            })
        );
    }
}
