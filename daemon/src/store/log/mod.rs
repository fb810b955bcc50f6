//! The local log, the default engine: an append-only log of records in numbered segment
//! files, plus an index snapshot so that start-up reads only the log written after it.
//!
//! Layout of the state directory:
//! - `LOCK`: held (flock) by the running daemon;
//! - `log/<seq>.seg`: segments of records (checkpoints with their payload, session states,
//!   deletions), see [`record`] and [`segment`];
//! - `log/<old seq>.free`: dead segments' files kept for new segments to reuse (see
//!   [`writer`]), and `log/0000000000000000.free`, a spare zero-filled ahead of need (see
//!   [`spare`], which writes it as `log/spare.tmp` first);
//! - `log/<seq>.dead`: dead segments being deleted;
//! - `log/<seq>.new`: a segment being made (see [`writer`]), removed at start-up;
//! - `index`: the snapshot, see [`snapshot`].
//!
//! Invariants: a record is acknowledged only after it and its segment's directory entry are
//! durable; every daemon start appends to a fresh segment, so an interrupted write of a
//! previous run is never followed by new data in the same file; segments are deleted only
//! oldest-first, once the snapshot covers them and none of their records is live.
//!
//! When the disk fails, the batch is refused, the segment is abandoned (see [`writer`]) and
//! the next segment is started by itself once a back-off has passed: batches arriving sooner
//! are refused without touching the disk, so a failing disk costs neither a busy loop nor a
//! log line per batch ([`crate::health`]). Snapshots that fail are retried the same way.

mod batch;
pub(crate) mod check;
pub(crate) mod chunks;
pub(crate) mod files;
mod live;
pub(crate) mod reads;
mod reaper;
pub mod record;
mod recovery;
pub(crate) mod scope;
pub mod segment;
pub mod snapshot;
mod spare;
mod upkeep;
pub(crate) mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::health::{Health, Work};
use crate::model::Loc;
use crate::store::backoff::Backoff;
use crate::store::{io_context, Index, Store, StoreError, Unit, Written};
use batch::{Batch, Kind};
use chunks::Chunks;
use live::LiveSegments;
use reads::SegmentFiles;
use reaper::Reaper;
pub use recovery::{IndexState, LoadReport};
use upkeep::Compacting;
use writer::{Fill, LogWriter};

/// What the log is told at start.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub snapshot_every_bytes: u64,
    /// Dead records' disk is given back within about this long (see [`LogStore::reclaim_due`]).
    pub reclaim_after: Duration,
    /// Large payloads stored in chunks (see [`crate::chunking`]).
    pub chunking: bool,
}

impl LogConfig {
    /// Dead segment files to keep for reuse: as many as the log fills between two snapshots,
    /// which is when garbage collection frees them, so that every new segment can reuse one;
    /// but no more than two beyond the segments in use, so that a log that shrank (sessions
    /// deleted) gives its disk back instead of keeping it as free files.
    fn free_segments(&self, in_use: usize) -> usize {
        let per_snapshot = self
            .snapshot_every_bytes
            .div_ceil(self.segment_bytes.max(1));
        usize::try_from(per_snapshot)
            .unwrap_or(usize::MAX)
            .clamp(1, 16)
            .min(in_use + 2)
    }
}

/// A snapshot also follows this many new segments, whatever they hold: the log's segments
/// (after a run of failed writes, many small ones) stay few between two snapshots.
const ROTATIONS_PER_SNAPSHOT: u32 = 32;

/// The log as the commit thread drives it: the active segment, what is live where, and what
/// is due or failing.
pub struct LogStore {
    cfg: LogConfig,
    log: LogWriter,
    live: LiveSegments,
    files: Arc<SegmentFiles>,
    chunks: Arc<Mutex<Chunks>>,
    /// Whether large payloads are stored in chunks (off only to measure what that costs).
    chunking: bool,
    reaper: Reaper,
    health: Arc<Health>,
    /// After a failed write: when the next segment may be started.
    log_retry: Backoff,
    /// Why writes are refused while the log waits for a new segment.
    log_error: String,
    /// After a full segment could not be rotated: when to try again (writes go on meanwhile).
    rotation_retry: Backoff,
    since_snapshot: u64,
    rotations: u32,
    snapshot_retry: Backoff,
    /// Bytes of records released since the last snapshot, and when the first of them was.
    released: u64,
    released_since: Option<Instant>,
    snapshot_bytes: u64,
}

/// Dead bytes too few to be worth a snapshot of their own.
const MIN_RECLAIM_BYTES: u64 = 64 << 10;

impl LogStore {
    /// Opens the state directory: recovery into `index`, a fresh segment, a snapshot if
    /// anything was replayed. Returns the store, its reads and what recovery found.
    pub fn open(
        cfg: LogConfig,
        index: &Mutex<dyn Index>,
        health: Arc<Health>,
    ) -> Result<(LogStore, Arc<SegmentFiles>, LoadReport), StoreError> {
        let dir = &cfg.dir;
        let log_dir = dir.join(segment::LOG_DIR);
        files::create_private_dir(&log_dir).map_err(io_context(format!(
            "cannot create directory {}",
            log_dir.display()
        )))?;
        remove_leftovers(dir);
        let reaper = Reaper::start(dir, health.clone());
        let mut chunks = Chunks::replaying();
        let (report, live) = {
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            recovery::load(dir, &mut *index, &mut chunks)?
        };
        let chunks = Arc::new(Mutex::new(chunks));
        upkeep::release_free_memory();
        let next = report.segments.last().map_or(1, |s| s + 1);
        // Zeros once, for a new state directory; a restart does not keep recovery waiting for
        // them (its segments after the first reuse files, or the spare, written in the
        // background).
        let fill = if report.segments.is_empty() {
            Fill::Zeros
        } else {
            Fill::Allocate
        };
        let mut log =
            LogWriter::start(dir, next, cfg.segment_bytes, fill, None).map_err(io_context(
                format!("cannot create a log segment in {}", log_dir.display()),
            ))?;
        match spare::SpareMaker::start(dir, cfg.segment_bytes, health.clone()) {
            Ok(spares) => log.make_spares_with(spares),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the spare segment thread; new segments are only allocated");
            }
        }
        let files = Arc::new(SegmentFiles::new(dir, chunks.clone(), cfg.chunking));
        let mut store = LogStore {
            log,
            live,
            files: files.clone(),
            chunks,
            chunking: cfg.chunking,
            reaper,
            health,
            log_retry: Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
            log_error: String::new(),
            rotation_retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            since_snapshot: 0,
            rotations: 0,
            snapshot_retry: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            released: 0,
            released_since: None,
            snapshot_bytes: 0,
            cfg,
        };
        if report.replayed_records > 0 || report.index != IndexState::Loaded {
            // Due at once; a failure is retried by the commit thread.
            store.since_snapshot = store.cfg.snapshot_every_bytes;
            store.snapshot(index);
        }
        Ok((store, files, report))
    }

    /// The active segment and where its next record goes.
    #[cfg(test)]
    pub fn position(&self) -> (u32, u64) {
        self.log.position()
    }

    /// How long until writes may be tried again after a failure.
    #[cfg(test)]
    pub fn retry_in(&self) -> Option<Duration> {
        self.log_retry.remaining()
    }

    fn snapshot_due(&self) -> bool {
        self.since_snapshot >= self.cfg.snapshot_every_bytes
            || self.rotations >= ROTATIONS_PER_SNAPSHOT
            || self.reclaim_in() == Some(Duration::ZERO)
    }

    /// How long until the records released since the last snapshot are given back (`None`:
    /// none worth it). Worth it once they add up to at least the snapshot that frees them
    /// costs to write (and [`MIN_RECLAIM_BYTES`]), so reclaiming never writes more than it
    /// frees; then a snapshot lets garbage collection and compaction give the disk back.
    fn reclaim_in(&self) -> Option<Duration> {
        let since = self.released_since?;
        if self.released < self.snapshot_bytes.max(MIN_RECLAIM_BYTES) {
            return None;
        }
        Some(self.cfg.reclaim_after.saturating_sub(since.elapsed()))
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        match self.log.rotate() {
            Ok(()) => {
                self.rotations += 1;
                self.health.succeeded(Work::NewSegment);
                Ok(())
            }
            Err(e) => {
                self.health.failed(Work::NewSegment, &e);
                Err(e)
            }
        }
    }

    /// A write or flush failed: writes are refused until the back-off has passed.
    fn failed(&mut self, message: String) -> String {
        self.health.failed(Work::LogWrite, &message);
        self.log_retry.failed();
        self.log_error.clone_from(&message);
        message
    }

    /// A snapshot, then the garbage collection it allows; `false` if it failed (it is then
    /// retried after a back-off).
    fn snapshot(&mut self, index: &Mutex<dyn Index>) -> bool {
        match upkeep::write_snapshot(&self.cfg.dir, &self.log, index, &self.chunks) {
            Ok(bytes) => self.snapshot_bytes = bytes,
            Err(e) => {
                self.health.failed(Work::IndexSnapshot, &e);
                self.snapshot_retry.failed();
                return false;
            }
        }
        self.released = 0;
        self.released_since = None;
        self.health.succeeded(Work::IndexSnapshot);
        self.snapshot_retry.succeeded();
        self.since_snapshot = 0;
        self.rotations = 0;
        let covered = self.log.position().0;
        let free = self.cfg.free_segments(self.live.segments_in_use());
        let dir = self.cfg.dir.clone();
        match upkeep::collect_garbage(
            &dir,
            covered,
            &mut self.live,
            &self.files,
            free,
            &self.reaper,
        ) {
            Ok(_) => self.health.succeeded(Work::SegmentDeletion),
            Err(e) => self.health.failed(
                Work::SegmentDeletion,
                &format_args!("cannot retire old log segments: {e}"),
            ),
        }
        true
    }

    /// A snapshot, then compaction; both retried after a back-off if either fails.
    fn snapshot_and_compact(&mut self, index: &Mutex<dyn Index>) {
        if !self.snapshot(index) || self.log.is_poisoned() {
            return;
        }
        let compacted = Compacting {
            dir: &self.cfg.dir,
            log: &mut self.log,
            live: &mut self.live,
            files: &self.files,
            chunks: &self.chunks,
            segment_bytes: self.cfg.segment_bytes,
        }
        .run(index);
        let snapshot = match &compacted {
            Ok(moved) => {
                self.health.succeeded(Work::Compaction);
                !moved || self.snapshot(index)
            }
            Err(e) => {
                self.health.failed(Work::Compaction, e);
                true
            }
        };
        if !snapshot || compacted.is_err() {
            // Both again soon.
            self.since_snapshot = self.cfg.snapshot_every_bytes;
            self.snapshot_retry.failed();
        }
    }
}

impl Store for LogStore {
    fn ready(&mut self) -> Result<(), String> {
        if !self.log.is_poisoned() {
            return Ok(());
        }
        if let Some(left) = self.log_retry.remaining() {
            return Err(format!(
                "{}; trying again in {} ms",
                self.log_error,
                left.as_millis().max(1)
            ));
        }
        if let Err(e) = self.rotate() {
            self.log_retry.failed();
            self.log_error =
                format!("cannot write the checkpoint log: cannot start a new segment: {e}");
            return Err(self.log_error.clone());
        }
        Ok(())
    }

    fn write(&mut self, units: &[Unit<'_>]) -> Result<Written, String> {
        let batch = Batch::cut(units, &self.chunks, self.chunking);
        let (mut pending, kinds) = batch.records(units)?;
        let appended = match self.log.append(&mut pending) {
            Ok(a) => a,
            Err(e) => return Err(self.failed(format!("cannot write the checkpoint log: {e}"))),
        };
        drop(pending);
        if let Err(e) = self.log.sync() {
            // After a failed fsync the page cache cannot be trusted: never retry it, never
            // write to that segment again.
            return Err(self.failed(format!(
                "cannot make the checkpoint log durable (fsync): {e}"
            )));
        }
        self.log_retry.succeeded();
        self.health.succeeded(Work::LogWrite);
        self.since_snapshot += appended.bytes;
        let mut changes = units.iter().flat_map(|u| u.changes.iter());
        let mut locs = Vec::with_capacity(appended.locs.len());
        let mut chunks = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        for (loc, kind) in appended.locs.into_iter().zip(kinds) {
            match kind {
                Kind::Marker => {}
                Kind::Chunk(header) => chunks.stored(&mut self.live, &header, loc),
                Kind::Change(chunked) => {
                    let Some((change, _)) = changes.next() else {
                        break;
                    };
                    let loc = match chunked {
                        Some((len, manifest)) => {
                            let loc = loc.chunked(len);
                            chunks.add_manifest(&mut self.live, &loc, manifest);
                            loc
                        }
                        None => loc,
                    };
                    // A deletion's or a drop's record is indexed nowhere: never live.
                    if change.is_kept() {
                        self.live.add(&loc);
                    }
                    locs.push(loc);
                }
            }
        }
        Ok(Written {
            locs,
            bytes: appended.bytes,
        })
    }

    fn release(&mut self, released: &[Loc]) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        for loc in released {
            self.live.remove(loc);
            self.released += loc.record_len() + chunks.released(&mut self.live, loc);
        }
        if !released.is_empty() && self.released_since.is_none() {
            self.released_since = Some(Instant::now());
        }
    }

    fn upkeep(&mut self, index: &Mutex<dyn Index>) {
        self.after_batch();
        if self.snapshot_due() && self.snapshot_retry.remaining().is_none() {
            self.snapshot_and_compact(index);
        }
    }

    fn after_batch(&mut self) {
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
    }

    fn idle_wait(&self) -> Option<Duration> {
        if self.snapshot_due() {
            return Some(self.snapshot_retry.remaining().unwrap_or(Duration::ZERO));
        }
        self.reclaim_in()
    }

    fn finish(&mut self, index: &Mutex<dyn Index>) {
        if let Err(e) = upkeep::write_snapshot(&self.cfg.dir, &self.log, index, &self.chunks) {
            tracing::error!(error = %e, "cannot write the index snapshot at shutdown; the next start replays more of the log");
        }
        self.log.trim();
    }
}

/// What an interrupted run leaves that is not part of the state: a snapshot's temp file, a
/// half-made segment. The next write of either replaces it, so one that cannot be removed
/// now is only noted.
fn remove_leftovers(dir: &Path) {
    let tmp = dir.join(snapshot::INDEX_TMP);
    if tmp.exists() {
        if let Err(e) = std::fs::remove_file(&tmp) {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove an interrupted snapshot");
        }
    }
    if let Err(e) = writer::remove_half_made(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a half-made segment");
    }
}
