//! Start-up: the index rebuilt from the snapshot and the log written after it, which is all
//! start-up reads (never a payload the snapshot covers), and what it found on the way.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::chunks::{Chunks, Manifest};
use super::live::LiveSegments;
use super::record::{ChunkHeader, RecordHeader};
use super::segment::{self, list_segments, segment_path, ScanItem, SegmentFile, SegmentScanner};
use super::snapshot;
use crate::model::{Change, Loc};
use crate::store::{io_context, Index, StoreError};

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
    /// Chunks retained checkpoints use that the log does not hold: (uid, chunks).
    pub missing_chunks: Vec<(u32, usize)>,
}

/// A record replay applies: a change (with the chunks of a chunked checkpoint), or a chunk.
pub enum Replayed {
    Change(Change, Loc, Option<Manifest>),
    Chunk(ChunkHeader, Loc),
}

impl Replayed {
    /// What a record says, at the place the scan found it.
    fn of(header: RecordHeader, loc: Loc, payload_crc: u32) -> Option<Replayed> {
        match header {
            RecordHeader::Chunk(h) => Some(Replayed::Chunk(h, loc)),
            RecordHeader::Chunked(ref c) | RecordHeader::Relocated3(ref c) => {
                let manifest = Manifest {
                    uid: c.meta.uid,
                    chunks: c.chunks.iter().map(|r| r.hash).collect(),
                };
                let loc = loc.chunked(c.payload_len);
                let change = header.into_change(payload_crc)?;
                Some(Replayed::Change(change, loc, Some(manifest)))
            }
            header => Some(Replayed::Change(
                header.into_change(payload_crc)?,
                loc,
                None,
            )),
        }
    }
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

/// Rebuilds `index` and `chunks` (empty) from the snapshot and the log after it, and counts
/// the live records. Reads only; changes nothing.
pub fn load(
    dir: &Path,
    index: &mut dyn Index,
    chunks: &mut Chunks,
) -> Result<(LoadReport, LiveSegments), StoreError> {
    let (report, live) = replay(dir, &mut Replay { index, chunks })?;
    Ok((report, live))
}

/// What replay applies records to.
pub struct Replay<'a> {
    pub index: &'a mut dyn Index,
    pub chunks: &'a mut Chunks,
}

fn replay(dir: &Path, to: &mut Replay<'_>) -> Result<(LoadReport, LiveSegments), StoreError> {
    let segments = list_segments(dir).map_err(io_context(format!(
        "cannot list {}",
        dir.join(segment::LOG_DIR).display()
    )))?;
    let (state, start, mut live) = match snapshot::read(dir) {
        Ok(Some(s)) => {
            let sessions = s.sessions.into_iter().map(Into::into).collect::<Vec<_>>();
            let mut live = LiveSegments::of(&sessions);
            to.index.restore(sessions);
            to.chunks.restore(&mut live, s.chunks, s.manifests);
            (IndexState::Loaded, (s.segment, s.offset), live)
        }
        Ok(None) => (IndexState::Missing, (0, 0), LiveSegments::default()),
        Err(e) => {
            tracing::warn!(error = %e, "index snapshot unusable; rebuilding it from the log");
            (
                IndexState::Damaged(e.to_string()),
                (0, 0),
                LiveSegments::default(),
            )
        }
    };
    let mut report = LoadReport {
        index: state,
        segments: segments.clone(),
        replayed_records: 0,
        damaged: Vec::new(),
        torn: Vec::new(),
        corrupt_payloads: Vec::new(),
        cuts: Vec::new(),
        missing_chunks: Vec::new(),
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
        let mut group = Group::default();
        while let Some(item) = scanner.next_item().map_err(io_context(format!(
            "cannot read segment {}",
            segment_path(dir, seq).display()
        )))? {
            match item {
                ScanItem::Record {
                    header,
                    loc,
                    payload_ok,
                    payload_crc,
                } => {
                    report.replayed_records += 1;
                    if let RecordHeader::Group { records } = header {
                        group.open(to, &mut live, records);
                        continue;
                    }
                    let Some(item) = Replayed::of(header, loc, payload_crc) else {
                        group.member_lost(to, &mut live);
                        continue;
                    };
                    if let (
                        Replayed::Change(
                            Change::Checkpoint { meta: h, .. } | Change::Relocated { meta: h, .. },
                            ..,
                        ),
                        false,
                    ) = (&item, payload_ok)
                    {
                        tracing::warn!(session = %h.name, number = h.number, segment = seq, "checkpoint payload is damaged");
                        report
                            .corrupt_payloads
                            .push((h.uid, h.name.clone(), h.number));
                    }
                    group.add(to, &mut live, item);
                }
                ScanItem::Damaged {
                    offset,
                    len,
                    reason,
                } => {
                    tracing::warn!(segment = seq, offset, len, %reason, "skipping a damaged stretch of the log");
                    report.damaged.push((seq, offset, len, reason));
                    group.member_lost(to, &mut live);
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
        group.end_of_segment(to, &mut live, seq);
    }
    let mut missing: HashMap<u32, usize> = HashMap::new();
    for (uid, _) in to.chunks.settle() {
        *missing.entry(uid).or_default() += 1;
    }
    if !missing.is_empty() {
        tracing::error!(
            ?missing,
            "retained checkpoints use chunks the log does not hold; they are damaged"
        );
    }
    report.missing_chunks = missing.into_iter().collect();
    Ok((report, live))
}

/// The records of one mutation written as a group (see [`RecordHeader::Group`]), held back
/// until the last of them is read.
#[derive(Default)]
struct Group {
    /// Records still to come.
    missing: u32,
    held: Vec<Replayed>,
    /// Some were lost to damage (which a write cut short does not cause).
    damaged: bool,
}

impl Group {
    /// A new group's marker. One still open lost records to damage (a damaged stretch counts
    /// as one record, and may have held more): it was written whole, so its intact records
    /// count.
    fn open(&mut self, to: &mut Replay<'_>, live: &mut LiveSegments, records: u32) {
        self.apply_held(to, live);
        self.missing = records;
    }

    /// A record, applied at once outside a group.
    fn add(&mut self, to: &mut Replay<'_>, live: &mut LiveSegments, item: Replayed) {
        if self.missing == 0 {
            return apply(to, live, item);
        }
        self.held.push(item);
        self.missing -= 1;
        if self.missing == 0 {
            self.apply_held(to, live);
        }
    }

    /// A damaged stretch, or a record that is no change, where a member should be.
    fn member_lost(&mut self, to: &mut Replay<'_>, live: &mut LiveSegments) {
        if self.missing > 0 {
            self.damaged = true;
            self.missing -= 1;
            if self.missing == 0 {
                self.apply_held(to, live);
            }
        }
    }

    fn apply_held(&mut self, to: &mut Replay<'_>, live: &mut LiveSegments) {
        for item in self.held.drain(..) {
            apply(to, live, item);
        }
        *self = Group::default();
    }

    /// The log ends inside the group: its write was cut short, never acknowledged, and none
    /// of it counts (unless damage, not the end, took its missing records).
    fn end_of_segment(&mut self, to: &mut Replay<'_>, live: &mut LiveSegments, seq: u32) {
        if self.missing == 0 {
            return;
        }
        if self.damaged {
            tracing::warn!(
                segment = seq,
                "a mutation's records were partly lost to damage; applying the intact ones"
            );
            return self.apply_held(to, live);
        }
        tracing::info!(
            segment = seq,
            records = self.held.len(),
            missing = self.missing,
            "the log ends inside a mutation's records (an interrupted write); none of them is applied"
        );
        *self = Group::default();
    }
}

/// Applies a durable record: a change kept at its place to the index (and a chunked
/// checkpoint's chunks to the chunks), a chunk to the chunks; and counts what is live: the
/// record, unless it is a deletion (which nothing indexes), less what it made dead.
pub fn apply(to: &mut Replay<'_>, live: &mut LiveSegments, item: Replayed) {
    match item {
        Replayed::Chunk(header, loc) => to.chunks.stored(live, &header, loc),
        Replayed::Change(change, loc, manifest) => {
            if change.is_kept() {
                live.add(&loc);
            }
            if let Some(m) = manifest {
                to.chunks.add_manifest(live, &loc, m);
            }
            for dead in to.index.apply(change, loc) {
                live.remove(&dead);
                to.chunks.released(live, &dead);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sessiond_proto::{Meta, Status};

    use super::*;
    use crate::model::{CheckpointMeta, SessionState};
    use crate::model::{IndexedSession, LiveRecords};
    use crate::store::log::record::encode;
    use crate::store::log::writer::{Cut, Fill, LogWriter, Pending};

    /// An index that only notes what it is given.
    #[derive(Default)]
    struct Applied(Vec<Change>);

    impl Index for Applied {
        fn restore(&mut self, _: Vec<IndexedSession>) {}
        fn apply(&mut self, change: Change, _: Loc) -> Vec<Loc> {
            self.0.push(change);
            Vec::new()
        }
        fn export(&self) -> Vec<IndexedSession> {
            Vec::new()
        }
        fn records_in(&self, _: u32) -> LiveRecords {
            LiveRecords::default()
        }
        fn replace(&mut self, _: &crate::model::SessionKey, _: Option<IndexedSession>) {}
        fn set_live_hosts(&mut self, _: std::collections::HashSet<String>) {}
    }

    fn write(log: &mut LogWriter, header: RecordHeader, payload: &[u8]) {
        let head = encode(&header, payload).unwrap();
        log.append(&mut [Pending { head, payload }]).unwrap();
        log.sync().unwrap();
    }

    fn checkpoint(number: u64) -> RecordHeader {
        RecordHeader::Checkpoint2(CheckpointMeta {
            uid: 1,
            name: "s".into(),
            number,
            created_at: 1,
            meta: Meta::new(),
            key: None,
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
            owner_host: None,
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
        let mut applied = Applied::default();
        let (report, _) = load(dir.path(), &mut applied, &mut Chunks::replaying()).unwrap();
        assert_eq!(report.cuts, vec![(1, end)]);
        let kinds: Vec<String> = applied
            .0
            .iter()
            .map(|c| match c {
                Change::Session(_) => "session".to_string(),
                Change::Checkpoint { meta, .. } => format!("checkpoint {}", meta.number),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["session", "checkpoint 1", "checkpoint 2"],
            "the refused delete is not replayed"
        );
    }

    fn numbers(applied: &Applied) -> Vec<u64> {
        applied
            .0
            .iter()
            .filter_map(|c| match c {
                Change::Checkpoint { meta, .. } => Some(meta.number),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_group_cut_short_by_the_log_end_is_not_applied_and_a_whole_one_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(segment::LOG_DIR)).unwrap();
        let mut log = LogWriter::create(dir.path(), 1, 1 << 20).unwrap();
        write(&mut log, checkpoint(1), b"alone");
        write(&mut log, RecordHeader::Group { records: 2 }, &[]);
        write(&mut log, checkpoint(2), b"a");
        write(&mut log, checkpoint(3), b"b");
        // A group of three whose last record never reached the disk.
        write(&mut log, RecordHeader::Group { records: 3 }, &[]);
        write(&mut log, checkpoint(4), b"c");
        write(&mut log, checkpoint(5), b"d");
        drop(log);
        let mut applied = Applied::default();
        load(dir.path(), &mut applied, &mut Chunks::replaying()).unwrap();
        assert_eq!(numbers(&applied), [1, 2, 3]);
    }
}
