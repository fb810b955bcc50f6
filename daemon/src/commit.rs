//! The commit thread: the only writer of the log. It takes every mutation queued while the
//! previous flush ran, plans them against the table, appends their records, makes them
//! durable with one `fdatasync` (group commit), applies them to the table and only then
//! answers. It also writes index snapshots and deletes dead segments.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};

use sessiond_proto::{Event, Reply, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::cache::{Cached, LatestCache};
use crate::process::ProcessProbe;
use crate::sink::DirectReply;

use crate::store::log::{Appended, LogWriter, Pending};
use crate::store::record::{self, RecordHeader};
use crate::store::segment::list_segments;
use crate::store::snapshot::{self, Snapshot};
use crate::store::{collect_garbage, CkptEntry, SegmentFiles};
pub use crate::table::OwnerChange;
use crate::table::{now_micros, Mutation, Overlay, Planned, SessionTable};

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

pub fn run(shared: Arc<Shared>, mut log: LogWriter, jobs: Receiver<Job>, cfg: CommitConfig) {
    let mut since_snapshot = 0u64;
    while let Ok(first) = jobs.recv() {
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
        since_snapshot += commit_batch(&shared, &mut log, batch);
        if log.is_full() {
            if let Err(e) = log.rotate() {
                tracing::error!(error = %e, "cannot start a new log segment; continuing in the current one");
            }
        }
        if since_snapshot >= cfg.snapshot_every_bytes {
            since_snapshot = 0;
            write_snapshot(&shared, &log);
            if compact(&shared, &mut log, &cfg) {
                write_snapshot(&shared, &log);
            }
        }
    }
    write_snapshot(&shared, &log);
    log.trim();
    tracing::debug!("commit thread finished");
}

/// Commits one batch; returns the bytes appended.
fn commit_batch(shared: &Shared, log: &mut LogWriter, batch: Vec<Job>) -> u64 {
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
                    return 0;
                }
            }
        }
    }
    if pending.is_empty() {
        for (p, (reply, _), _) in planned {
            let _ = reply.send(Ok(p.reply));
        }
        return 0;
    }
    let Appended {
        locs,
        bytes: appended,
    } = match log.append(&mut pending) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "log write failed; refusing the batch");
            fail_all(
                planned,
                WireError::unavailable(format!("cannot write the checkpoint log: {e}")),
            );
            return 0;
        }
    };
    drop(pending);
    if let Err(e) = log.sync() {
        // After a failed fsync the page cache cannot be trusted: never retry it, never write
        // to that segment again.
        tracing::error!(error = %e, "log fsync failed; refusing the batch and abandoning the segment");
        fail_all(
            planned,
            WireError::unavailable(format!(
                "cannot make the checkpoint log durable (fsync): {e}"
            )),
        );
        if let Err(e) = log.rotate() {
            tracing::error!(error = %e, "cannot start a new log segment");
        }
        return 0;
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
                        cache.push(((h.uid, h.name.clone()), cached));
                    }
                    RecordHeader::Delete { uid, name } => cache.push(((*uid, name.clone()), None)),
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
    appended
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
pub fn write_snapshot(shared: &Shared, log: &LogWriter) {
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
    if let Err(e) = written {
        tracing::error!(error = %e, "cannot write the index snapshot; start-up will replay more of the log");
        return;
    }
    if let Err(e) = collect_garbage(
        &shared.dir,
        segment,
        &shared.table,
        &shared.files,
        shared.free_segments,
    ) {
        tracing::warn!(error = %e, "cannot delete old log segments");
    }
}

/// Copies the live records of the oldest segments to the head of the log while the log is
/// more than twice its live data (plus two segments of slack), so that garbage collection,
/// which deletes segments oldest first, is never pinned by a few long-lived records (an idle
/// session's checkpoints, a session's first state record). Copies at most one segment's worth
/// per call. Returns whether anything moved.
fn compact(shared: &Shared, log: &mut LogWriter, cfg: &CommitConfig) -> bool {
    let (active, _) = log.position();
    let Ok(segments) = list_segments(&shared.dir) else {
        return false;
    };
    let (_, log_bytes) = crate::store::log_size(&shared.dir);
    let live_bytes = shared.table().live_bytes();
    if log_bytes <= 2 * live_bytes + 2 * cfg.segment_bytes {
        return false;
    }
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
            match record::encode_with_crc(h, payload, *crc) {
                Ok(head) => pending.push(Pending { head, payload }),
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a copied record");
                    return any;
                }
            }
        }
        let appended = match log
            .append(&mut pending)
            .and_then(|a| log.sync().map(|()| a))
        {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "compaction write failed");
                let _ = log.rotate();
                return any;
            }
        };
        moved += appended.bytes;
        drop(pending);
        let mut table = shared.table();
        for ((h, _, _), loc) in copies.into_iter().zip(appended.locs) {
            table.apply(h, loc);
        }
        any = true;
        tracing::debug!(segment = seq, "copied live records forward");
    }
    any
}

#[cfg(test)]
mod tests {
    use sessiond_proto::{ErrorKind, Meta};

    use super::*;
    use crate::process::fake::FakeProbe;
    use crate::store::log::tests::FAIL_NEXT_SYNC;
    use crate::store::segment::LOG_DIR;

    fn shared(dir: &std::path::Path) -> Shared {
        let (owners, _) = mpsc::unbounded_channel();
        Shared {
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
            checkpoints_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
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

    #[test]
    fn a_failed_fsync_is_reported_unavailable_never_as_success_and_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOG_DIR)).unwrap();
        let shared = shared(dir.path());
        let mut log = LogWriter::create(dir.path(), 1, 1 << 20).unwrap();
        let (create, rx) = job(Mutation::Create {
            name: "s".into(),
            keep: None,
            meta: Meta::new(),
            owner: crate::table::OwnerClaim::default(),
        });
        let appended = commit_batch(&shared, &mut log, vec![create]);
        assert!(rx.blocking_recv().unwrap().is_ok());
        // Counted as written: every byte the record took in the segment, footer included.
        let used = log.position().1 - crate::store::segment::SEGMENT_HEADER_LEN;
        assert_eq!(appended, used);
        assert_eq!(shared.bytes_written.load(Ordering::Relaxed), used);

        FAIL_NEXT_SYNC.with(|f| f.set(true));
        let (j, rx) = job(checkpoint(b"lost"));
        commit_batch(&shared, &mut log, vec![j]);
        let e = rx.blocking_recv().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("fsync"), "{}", e.message);
        assert_eq!(
            shared.table().session(1, "s").unwrap().latest_checkpoint,
            None,
            "not applied"
        );

        // The next write succeeds, in a fresh segment, with the number the failed one had.
        let (j, rx) = job(checkpoint(b"kept"));
        commit_batch(&shared, &mut log, vec![j]);
        let Ok(Reply::Checkpoint(Some(cp))) = rx.blocking_recv().unwrap() else {
            panic!()
        };
        assert_eq!(cp.number, 1);
        assert_eq!(log.position().0, 2);
    }
}
