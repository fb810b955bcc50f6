//! The checkpoint store: an append-only log of records in numbered segment files, plus an
//! index snapshot so that start-up reads only the log written after it.
//!
//! Layout of the state directory:
//! - `LOCK`: held (flock) by the running daemon;
//! - `log/<seq>.seg`: segments of records (checkpoints with their payload, session states,
//!   deletions), see [`record`] and [`segment`];
//! - `log/<old seq>.free`: dead segments' files kept for new segments to reuse (see [`log`]),
//!   and `log/0000000000000000.free`, a spare zero-filled ahead of need (see [`spare`], which
//!   writes it as `log/spare.tmp` first);
//! - `log/<seq>.dead`: dead segments being deleted;
//! - `log/<seq>.new`: a segment being made (see [`log`]), removed at start-up;
//! - `index`: the snapshot, see [`snapshot`].
//!
//! Invariants: a record is acknowledged only after it and its segment's directory entry are
//! durable; every daemon start appends to a fresh segment, so an interrupted write of a
//! previous run is never followed by new data in the same file; segments are deleted only
//! oldest-first, once the snapshot covers them and none of their records is live.

pub mod log;
pub mod reaper;
pub mod record;
pub mod scope;
pub mod segment;
pub mod snapshot;
pub mod spare;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::model::Loc;
use crate::table::SessionTable;
use reaper::Reaper;
use record::RecordHeader;
use segment::{list_segments, segment_path, ReadError, ScanItem, SegmentFile, SegmentScanner};

/// How the index snapshot looked at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    Loaded,
    Missing,
    Damaged(String),
}

/// What loading the state directory found.
#[derive(Debug)]
pub struct LoadReport {
    pub index: IndexState,
    pub segments: Vec<u32>,
    pub replayed_records: u64,
    /// Unreadable stretches in segments: (segment, offset, length, reason).
    pub damaged: Vec<(u32, u64, u64, String)>,
    /// Interrupted writes at a segment's end: (segment, offset).
    pub torn: Vec<(u32, u64)>,
    /// Checkpoint records whose payload checksum failed during replay: (uid, name, number).
    pub corrupt_payloads: Vec<(u32, String, u64)>,
    /// Segments whose log ends before their last record (see [`RecordHeader::Cut`]):
    /// (segment, end).
    pub cuts: Vec<(u32, u64)>,
}

/// Where the log of each segment from `from` on ends, as later segments' cuts say.
pub fn find_cuts(dir: &Path, segments: &[u32]) -> HashMap<u32, u64> {
    let mut cuts = HashMap::new();
    for &seq in segments {
        let first = SegmentFile::open(dir, seq)
            .ok()
            .and_then(|f| f.first_header());
        if let Some(RecordHeader::Cut { segment, end }) = first {
            let at = cuts.entry(segment).or_insert(end);
            *at = (*at).min(end);
        }
    }
    cuts
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

pub fn io_context(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// Rebuilds the table from the snapshot and the log after it. Reads only; changes nothing.
pub fn load(dir: &Path, default_keep: u32) -> Result<(SessionTable, LoadReport), StoreError> {
    let segments = list_segments(dir).map_err(io_context(format!(
        "cannot list {}",
        dir.join(segment::LOG_DIR).display()
    )))?;
    let (mut table, index, start) = match snapshot::read(dir) {
        Ok(Some(s)) => (
            SessionTable::from_snapshot(default_keep, s.sessions),
            IndexState::Loaded,
            (s.segment, s.offset),
        ),
        Ok(None) => (SessionTable::new(default_keep), IndexState::Missing, (0, 0)),
        Err(e) => {
            tracing::warn!(error = %e, "index snapshot unusable; rebuilding it from the log");
            (
                SessionTable::new(default_keep),
                IndexState::Damaged(e.to_string()),
                (0, 0),
            )
        }
    };
    let mut report = LoadReport {
        index,
        segments: segments.clone(),
        replayed_records: 0,
        damaged: Vec::new(),
        torn: Vec::new(),
        corrupt_payloads: Vec::new(),
        cuts: Vec::new(),
    };
    let replayed: Vec<u32> = segments.iter().copied().filter(|&s| s >= start.0).collect();
    let cuts = find_cuts(dir, &replayed);
    for &seq in &replayed {
        let from = if seq == start.0 { start.1 } else { 0 };
        let cut = cuts.get(&seq).copied();
        if let Some(end) = cut {
            tracing::info!(
                segment = seq,
                end,
                "a write to this segment failed: its log ends there and what follows was refused"
            );
            report.cuts.push((seq, end));
        }
        let mut scanner = match SegmentScanner::open_until(dir, seq, from, cut) {
            Ok(s) => s,
            // A damaged header loses that segment's records, not the daemon.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                tracing::error!(segment = seq, error = %e, "skipping a segment with a damaged header");
                report.damaged.push((seq, 0, 0, e.to_string()));
                continue;
            }
            Err(e) => {
                return Err(io_context(format!(
                    "cannot read segment {}",
                    segment_path(dir, seq).display()
                ))(e))
            }
        };
        while let Some(item) = scanner.next_item().map_err(io_context(format!(
            "cannot read segment {}",
            segment_path(dir, seq).display()
        )))? {
            match item {
                ScanItem::Record {
                    header,
                    loc,
                    payload_ok,
                } => {
                    if let (RecordHeader::Checkpoint(h) | RecordHeader::Relocated(h), false) =
                        (&header, payload_ok)
                    {
                        tracing::warn!(session = %h.name, number = h.number, segment = seq, "checkpoint payload is damaged");
                        report
                            .corrupt_payloads
                            .push((h.uid, h.name.clone(), h.number));
                    }
                    report.replayed_records += 1;
                    table.apply(header, loc);
                }
                ScanItem::Damaged {
                    offset,
                    len,
                    reason,
                } => {
                    tracing::warn!(segment = seq, offset, len, %reason, "skipping a damaged stretch of the log");
                    report.damaged.push((seq, offset, len, reason));
                }
                ScanItem::Torn { offset } => {
                    tracing::info!(
                        segment = seq,
                        offset,
                        "segment ends before an interrupted write or what an earlier use of its file left; ignoring the rest"
                    );
                    report.torn.push((seq, offset));
                }
            }
        }
    }
    Ok((table, report))
}

/// Segments in the log and their total size in bytes.
pub fn log_size(dir: &Path) -> (u64, u64) {
    let segments = list_segments(dir).unwrap_or_default();
    let bytes = segments
        .iter()
        .filter_map(|&s| std::fs::metadata(segment_path(dir, s)).ok())
        .map(|m| m.len())
        .sum();
    (segments.len() as u64, bytes)
}

/// Open segment files for reads, shared by all readers.
#[derive(Debug)]
pub struct SegmentFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<SegmentFile>>>,
}

impl SegmentFiles {
    pub fn new(dir: &Path) -> Self {
        SegmentFiles {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, seq: u32) -> io::Result<Arc<SegmentFile>> {
        let cached = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&seq)
            .cloned();
        if let Some(f) = cached {
            return Ok(f);
        }
        // Opened outside the lock so other readers never wait on this one's I/O; if two race,
        // both handles are valid and the first one stays cached.
        let f = Arc::new(SegmentFile::open(&self.dir, seq).map_err(|e| {
            // A missing segment is damage; a failing disk that only says so is not.
            if e.kind() == io::ErrorKind::NotFound && segment_path(&self.dir, seq).exists() {
                io::Error::other(format!("opening a segment that exists failed: {e}"))
            } else {
                e
            }
        })?);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        Ok(open.entry(seq).or_insert(f).clone())
    }

    pub fn forget(&self, seq: u32) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seq);
    }

    /// A whole record, verified.
    pub fn read_record(&self, loc: &Loc) -> Result<(RecordHeader, Vec<u8>), ReadError> {
        self.get(loc.segment)
            .map_err(ReadError::Io)?
            .read_record(loc)
    }

    /// A record's header and payload with the payload's stored checksum, not verified (for
    /// copying a record as it is).
    pub fn read_record_raw(&self, loc: &Loc) -> Result<(RecordHeader, Vec<u8>, u32), ReadError> {
        self.get(loc.segment)
            .map_err(ReadError::Io)?
            .read_record_raw(loc)
    }

    /// A record's header, verified.
    pub fn read_header(&self, loc: &Loc) -> Result<RecordHeader, ReadError> {
        self.get(loc.segment)
            .map_err(ReadError::Io)?
            .read_header(loc)
    }
}

/// Deletes the oldest segments that are below `covered` (the snapshot's segment) and hold no
/// live record. Returns the deleted sequence numbers.
///
/// A dead segment is renamed out of the log at once. Up to `keep_free` such files are kept
/// (`.free`) for new segments to reuse; the others (`.dead`) are unlinked by the [`Reaper`]:
/// freeing a large file's blocks takes tens of milliseconds, which the commit thread, and so
/// every write, would otherwise wait for.
pub fn collect_garbage(
    dir: &Path,
    covered: u32,
    table: &Mutex<SessionTable>,
    files: &SegmentFiles,
    keep_free: usize,
    reaper: &Reaper,
) -> io::Result<Vec<u32>> {
    scope::within(scope::sessiond_io_retire, || {
        let mut deleted = Vec::new();
        let mut retired = Vec::new();
        let mut result = Ok(());
        let mut free = segment::list_free(dir)?.len();
        for seq in list_segments(dir)? {
            if seq >= covered {
                break;
            }
            {
                let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                if t.live_in(seq).records > 0 {
                    break;
                }
                t.forget_segment(seq);
            }
            files.forget(seq);
            let path = segment_path(dir, seq);
            let reuse = free < keep_free;
            let to = if reuse {
                segment::free_path(dir, seq)
            } else {
                path.with_extension(reaper::RETIRED_EXTENSION)
            };
            if let Err(e) = std::fs::rename(&path, &to) {
                result = Err(e);
                break;
            }
            if reuse {
                free += 1;
            } else {
                retired.push(to);
            }
            deleted.push(seq);
        }
        if !deleted.is_empty() {
            let synced = log::fsync_dir(&dir.join(segment::LOG_DIR));
            reaper.delete(retired);
            synced?;
            tracing::debug!(?deleted, "retired log segments holding no live record");
        }
        result.map(|()| deleted)
    })
}

#[cfg(test)]
mod tests {
    use sessiond_proto::{Meta, Status};

    use super::log::{Cut, Fill, LogWriter, Pending};
    use super::record::{encode, CheckpointHeader};
    use super::*;
    use crate::model::SessionState;

    fn write(log: &mut LogWriter, header: RecordHeader, payload: &[u8]) {
        let head = encode(&header, payload).unwrap();
        log.append(&mut [Pending { head, payload }]).unwrap();
        log.sync().unwrap();
    }

    fn checkpoint(number: u64) -> RecordHeader {
        RecordHeader::Checkpoint(CheckpointHeader {
            uid: 1,
            name: "s".into(),
            number,
            created_at: 1,
            meta: Meta::new(),
        })
    }

    #[test]
    fn replay_ignores_what_a_cut_segment_holds_past_its_cut() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(segment::LOG_DIR)).unwrap();
        let mut log = LogWriter::create(dir.path(), 1, 1 << 20).unwrap();
        let state = SessionState {
            uid: 1,
            name: "s".into(),
            status: Status::Active,
            owner: None,
            epoch: 1,
            created_at: 1,
            updated_at: 1,
            keep: 0,
            meta: Meta::new(),
            error: None,
            last_number: 0,
        };
        write(&mut log, RecordHeader::Session(state), &[]);
        write(&mut log, checkpoint(1), b"one");
        let (_, end) = log.position();
        // A delete that was refused (its flush failed) but reached the disk all the same,
        // then a checkpoint acknowledged in the segment started after the failure.
        write(
            &mut log,
            RecordHeader::Delete {
                uid: 1,
                name: "s".into(),
            },
            &[],
        );
        let cut = Cut { segment: 1, end };
        let mut next = LogWriter::start(dir.path(), 2, 1 << 20, Fill::Allocate, Some(cut)).unwrap();
        write(&mut next, checkpoint(2), b"two");
        let (table, report) = load(dir.path(), 16).unwrap();
        assert_eq!(report.cuts, vec![(1, end)]);
        let numbers: Vec<u64> = table
            .checkpoints(1, "s")
            .unwrap()
            .iter()
            .map(|c| c.number)
            .collect();
        assert_eq!(numbers, vec![1, 2], "the refused delete is not replayed");
        assert_eq!(table.session(1, "s").unwrap().status, Status::Active);
    }
}
