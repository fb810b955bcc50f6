//! The append side of the log: one active segment, written in batches and made durable with
//! one `fdatasync` per batch (group commit). A new segment's directory entry is made durable
//! before anything written to it is acknowledged.
//!
//! A new segment reuses a dead segment's file when garbage collection left one (`.free`), or
//! the spare [`super::spare`] made; else the first segment of a new state directory is
//! written full of zeros, and any other is only allocated (writes wait for a rotation, and
//! recovery for a restart's first segment). Appends into a written file overwrite blocks
//! that are already written: `fdatasync` has no file size to commit and no unwritten extents
//! to convert. On ext4 reuse made 16 clients' durable 64 KiB checkpoints about 1.5x faster
//! (`sessiond-bench checkpoint --clients 16 --size 65536`, median of 5 interleaved runs:
//! 9,930/s against 6,520/s); see [`preallocate`] for 1 KiB.
//!
//! A failed write or flush abandons the segment: nothing more is written to it (after a
//! failed `fdatasync` the page cache cannot be trusted), its unused tail is given back, and
//! the next segment begins with a [`RecordHeader::Cut`] naming where its log durably ends,
//! so that a refused batch that reached the disk anyway is never replayed. A segment is made
//! under a temporary name (`<seq>.new`) and named only once whole, and a number whose
//! attempt failed is never tried again: a failed attempt leaves nothing a later one trips
//! over.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};

use std::os::unix::fs::FileExt;

use super::files::{allocate, fsync_dir, is_full, rename_no_replace, write_zeros};
use super::record::{self, RecordHeader, FOOTER_LEN, PREFIX_LEN};
use super::scope::{self, within};
use super::segment::{
    free_path, list_free, segment_header, segment_path, LOG_DIR, SEGMENT_HEADER_LEN,
};
use super::spare::SpareMaker;
use crate::model::Loc;

/// Records end below this offset in a segment (the index keeps 32-bit offsets).
pub const MAX_SEGMENT_END: u64 = u32::MAX as u64;

/// Extension of a segment being made, before it is named `.seg`.
pub const NEW_EXTENSION: &str = "new";

/// What [`LogWriter::append`] wrote: where each record is, and how many bytes in all
/// (footers included).
#[derive(Debug)]
pub struct Appended {
    pub locs: Vec<Loc>,
    pub bytes: u64,
}

/// One record to append: its encoded prefix and header, then its payload.
pub struct Pending<'a> {
    pub head: Vec<u8>,
    pub payload: &'a [u8],
}

/// Where an abandoned segment's log durably ends, for the next segment to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub segment: u32,
    pub end: u64,
}

pub struct LogWriter {
    dir: PathBuf,
    seq: u32,
    file: File,
    /// Where the next record goes.
    len: u64,
    /// The end of what was flushed: everything before it is durable.
    synced: u64,
    segment_bytes: u64,
    /// The file was extended to `segment_bytes` up front (zeros after `len`).
    preallocated: bool,
    /// A write or flush of this segment failed: nothing more may be written to it.
    poisoned: bool,
    /// The number the next segment gets: never one whose attempt failed, which may have left
    /// a file under that name.
    next_seq: u32,
    /// Asked for a spare file once each segment is half full.
    spares: Option<SpareMaker>,
    spare_asked: bool,
}

impl LogWriter {
    /// [`LogWriter::start`] with zeros: what the tests build a log with.
    #[cfg(test)]
    pub fn create(dir: &Path, seq: u32, segment_bytes: u64) -> io::Result<Self> {
        LogWriter::start(dir, seq, segment_bytes, Fill::Zeros, None)
    }

    /// Creates segment `seq` (which must not exist), in a free file if there is one, else in
    /// a new one extended as `fill` says, beginning with `cut` if given, and makes it durable.
    pub fn start(
        dir: &Path,
        seq: u32,
        segment_bytes: u64,
        fill: Fill,
        cut: Option<Cut>,
    ) -> io::Result<Self> {
        let next_seq = seq
            .checked_add(1)
            .ok_or_else(|| io::Error::other("log segment numbers are exhausted"))?;
        let (file, preallocated, len) = within(scope::sessiond_io_segment_create, || {
            let reused = take_free(dir, seq, segment_bytes).and_then(|free| {
                reuse_file(dir, &free, seq, segment_bytes, fill, cut)
                    .inspect_err(|e| {
                        tracing::debug!(path = %free.display(), error = %e, "cannot reuse a dead log segment; starting a new file");
                        let _ = std::fs::remove_file(&free);
                    })
                    .ok()
            });
            let made = match reused {
                Some(made) => made,
                None => new_file(dir, seq, segment_bytes, fill, cut)?,
            };
            fsync_dir(&dir.join(LOG_DIR))?;
            Ok(made)
        })?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            seq,
            file,
            len,
            synced: len,
            segment_bytes,
            preallocated,
            poisoned: false,
            next_seq,
            spares: None,
            spare_asked: false,
        })
    }

    /// From now on, each segment asks `spares` for a file for the next one once it is half
    /// full: a daemon that writes little never writes a spare.
    pub fn make_spares_with(&mut self, spares: SpareMaker) {
        self.spares = Some(spares);
    }

    /// Gives back the unused, preallocated tail of the active segment (at a clean stop or a
    /// rotation). Not made durable: a tail that survives is zeros or a reused file's old
    /// records, which readers take as the end of the segment anyway.
    pub fn trim(&mut self) {
        // After a failed fsync the file is left exactly as it is.
        if self.preallocated && !self.poisoned {
            if let Err(e) = self.file.set_len(self.len) {
                tracing::debug!(segment = self.seq, error = %e, "cannot trim a preallocated segment");
            }
            self.preallocated = false;
        }
    }

    /// The active segment and the offset the next record gets.
    pub fn position(&self) -> (u32, u64) {
        (self.seq, self.len)
    }

    /// Whether a write or flush failed since the active segment started: then nothing is
    /// written until [`LogWriter::rotate`] has started another.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Writes `records` at the end of the active segment (not yet durable), sealing each for
    /// it ([`record::seal`]). On error the segment is abandoned.
    pub fn append(&mut self, records: &mut [Pending<'_>]) -> io::Result<Appended> {
        if self.poisoned {
            return Err(io::Error::other(
                "the log segment was abandoned after a failed write; a new one is needed",
            ));
        }
        let batch: u64 = records
            .iter()
            .map(|r| (r.head.len() + r.payload.len() + FOOTER_LEN) as u64)
            .sum();
        if self.len > SEGMENT_HEADER_LEN && self.len + batch > MAX_SEGMENT_END {
            // The index stores offsets in 32 bits.
            self.rotate()?;
        }
        let footers: Vec<[u8; FOOTER_LEN]> = records
            .iter_mut()
            .map(|r| record::seal(&mut r.head, Some(self.seq)))
            .collect();
        let start = self.len;
        let mut locs = Vec::with_capacity(records.len());
        let mut slices = Vec::with_capacity(records.len() * 3);
        let mut off = start;
        for (r, footer) in records.iter().zip(&footers) {
            let header_len = (r.head.len() - PREFIX_LEN) as u32;
            let loc = Loc {
                segment: self.seq,
                offset: off,
                header_len,
                payload_len: r.payload.len() as u32,
            };
            off += loc.record_len() + FOOTER_LEN as u64;
            locs.push(loc);
            slices.push(IoSlice::new(&r.head));
            if !r.payload.is_empty() {
                slices.push(IoSlice::new(r.payload));
            }
            slices.push(IoSlice::new(footer));
        }
        let file = &self.file;
        match within(scope::sessiond_io_log_write, || {
            write_all_at(file, start, &mut slices)
        }) {
            Ok(()) => {
                self.len = off;
                if !self.spare_asked && self.len >= self.segment_bytes / 2 {
                    if let Some(spares) = &self.spares {
                        spares.request();
                    }
                    self.spare_asked = true;
                }
                Ok(Appended {
                    locs,
                    bytes: off - start,
                })
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Makes everything appended so far durable. A failure is never retried: the segment
    /// is abandoned.
    pub fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if tests::FAIL_NEXT_SYNC.with(|f| f.replace(false)) {
            self.abandon();
            return Err(io::Error::from_raw_os_error(5)); // EIO, as a failing disk reports it
        }
        let file = &self.file;
        match within(scope::sessiond_io_log_write, || file.sync_data()) {
            Ok(()) => {
                self.synced = self.len;
                Ok(())
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// After a failed write or flush: nothing more goes to this segment, and what it holds
    /// after the last flush is given back (best effort: the next segment's cut is what keeps
    /// it out of the log).
    fn abandon(&mut self) {
        self.poisoned = true;
        if let Err(e) = self.file.set_len(self.synced) {
            tracing::debug!(segment = self.seq, error = %e, "cannot give back the tail of an abandoned segment");
        }
        self.preallocated = false;
    }

    /// Whether the active segment has reached its target size.
    pub fn is_full(&self) -> bool {
        self.len >= self.segment_bytes
    }

    /// Starts the next segment. Used when the active one is full, and after a failed write
    /// or flush, after which nothing more is written to the old one. Writes wait meanwhile:
    /// without a free file (or the spare) the new file is only allocated, not written with
    /// zeros. On failure the active segment stays as it is; the next attempt takes another
    /// number.
    pub fn rotate(&mut self) -> io::Result<()> {
        let cut = self.poisoned.then_some(Cut {
            segment: self.seq,
            end: self.synced,
        });
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        let mut next = LogWriter::start(&self.dir, seq, self.segment_bytes, Fill::Allocate, cut)?;
        self.trim();
        if let Some(spares) = self.spares.take() {
            next.make_spares_with(spares);
        }
        *self = next;
        Ok(())
    }
}

/// How a segment's file is extended to its full size (see [`preallocate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Blocks allocated, then written with zeros.
    Zeros,
    /// Blocks allocated only: quick, for a rotation (writes wait) or a restart (recovery
    /// waits).
    Allocate,
}

/// A made segment's file, whether it is preallocated, and where its first record goes.
type Made = (File, bool, u64);

/// Writes segment `seq`'s header (and `cut`) at the start of `file`, extends the file to the
/// segment's size where it is shorter, and makes all of it durable.
fn initialise(
    file: File,
    seq: u32,
    segment_bytes: u64,
    fill: Fill,
    cut: Option<Cut>,
) -> io::Result<Made> {
    file.write_all_at(&segment_header(seq), 0)?;
    let mut len = SEGMENT_HEADER_LEN;
    if let Some(Cut { segment, end }) = cut {
        let header = RecordHeader::Cut { segment, end };
        let mut head =
            record::encode_with_crc(&header, &[], crc32c::crc32c(&[])).map_err(io::Error::other)?;
        let footer = record::seal(&mut head, Some(seq));
        head.extend_from_slice(&footer);
        file.write_all_at(&head, len)?;
        len += head.len() as u64;
    }
    let preallocated = preallocate(&file, segment_bytes, fill);
    file.sync_all()?;
    Ok((file, preallocated, len))
}

/// Where segment `seq` is made before it is named.
fn new_path(dir: &Path, seq: u32) -> PathBuf {
    segment_path(dir, seq).with_extension(NEW_EXTENSION)
}

/// A new file for segment `seq`, made whole under a temporary name and then named: a failure
/// or a crash leaves at most a `.new` file, never a half-made segment.
fn new_file(
    dir: &Path,
    seq: u32,
    segment_bytes: u64,
    fill: Fill,
    cut: Option<Cut>,
) -> io::Result<Made> {
    let tmp = new_path(dir, seq);
    let made = OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|file| initialise(file, seq, segment_bytes, fill, cut))
        .and_then(|made| rename_no_replace(&tmp, &segment_path(dir, seq)).map(|()| made));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Makes the free file `free` segment `seq`. Its old records stay after the new ones until
/// overwritten; their checksums are seeded with their own segment's number, lower than `seq`,
/// so they read as the end of the segment, never as its records.
fn reuse_file(
    dir: &Path,
    free: &Path,
    seq: u32,
    segment_bytes: u64,
    fill: Fill,
    cut: Option<Cut>,
) -> io::Result<Made> {
    let file = OpenOptions::new().read(true).write(true).open(free)?;
    // The header is durable before the file is named a segment: a crash in between leaves a
    // free file, never a segment whose header names another.
    let made = initialise(file, seq, segment_bytes, fill, cut)?;
    rename_no_replace(free, &segment_path(dir, seq))?;
    tracing::debug!(segment = seq, from = %free.display(), "reusing a dead segment's file");
    Ok(made)
}

/// Removes the segments a failed attempt or a crash left half-made.
pub fn remove_half_made(dir: &Path) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir.join(LOG_DIR)) else {
        return Ok(());
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_some_and(|x| x == NEW_EXTENSION) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The oldest free file whose records all belong to segments before `seq`, a full-size one
/// if there is one (a shorter one, trimmed at a clean stop, needs its tail filled first). A
/// free file numbered `seq` or later (left by a run that numbered segments differently) could
/// hold records sealed for `seq`: it is deleted instead.
fn take_free(dir: &Path, seq: u32, segment_bytes: u64) -> Option<PathBuf> {
    let free = list_free(dir).ok()?;
    for &old in free.iter().filter(|&&old| old >= seq) {
        let _ = std::fs::remove_file(free_path(dir, old));
    }
    let usable: Vec<PathBuf> = free
        .into_iter()
        .filter(|&old| old < seq)
        .map(|old| free_path(dir, old))
        .collect();
    let full = usable.iter().position(|p| is_full(p, segment_bytes));
    usable.into_iter().nth(full.unwrap_or(0))
}
/// Extends a segment's file to its full size with blocks that are allocated and written
/// (zeros), so that appends overwrite blocks the file already has: `fdatasync` then has no
/// file size to commit, and no unwritten extents to convert either, each of which costs a
/// journal commit per flush on ext4, which is slow whenever the journal is busy
/// (`sessiond-bench floor --clients 16` against the same with `--fallocated`). `fallocate`
/// first, so that a segment the disk has no room for fails at once instead of filling the
/// disk; only what a short file lacks is written, and with [`Fill::Allocate`] nothing (the
/// zeros cost the disk a segment's worth of writes, which writes waiting on a rotation should
/// not pay). Best effort: without it the file grows as written.
pub(super) fn preallocate(file: &File, segment_bytes: u64, fill: Fill) -> bool {
    let len = match file.metadata() {
        Ok(m) => m.len().max(SEGMENT_HEADER_LEN),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read a log segment's size; it grows as written");
            return false;
        }
    };
    if len >= segment_bytes {
        return true;
    }
    let filled = allocate(file, segment_bytes).and_then(|()| match fill {
        Fill::Allocate => Ok(()),
        Fill::Zeros => write_zeros(file, len, segment_bytes),
    });
    match filled {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "cannot preallocate a log segment; it grows as written");
            // A failed fallocate may have allocated part of the range.
            let _ = file.set_len(len);
            false
        }
    }
}

/// Most slices one `pwritev` takes (Linux's `UIO_MAXIOV`; more is `EINVAL`).
const IOV_MAX: usize = 1024;

/// Writes the slices at `start` with positioned writes: no seek per batch.
fn write_all_at(file: &File, start: u64, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    let mut at = start;
    while !slices.is_empty() {
        let offset = i64::try_from(at).map_err(|_| io::Error::other("log offset past i64"))?;
        match nix::sys::uio::pwritev(file, &slices[..slices.len().min(IOV_MAX)], offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "log write returned 0",
                ))
            }
            Ok(n) => {
                IoSlice::advance_slices(&mut slices, n);
                at += n as u64;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::store::log::record::{encode, RecordHeader};
    use crate::store::log::segment::{ScanItem, SegmentScanner};

    thread_local! {
        /// Makes this thread's next `sync` fail: a real fsync error cannot be provoked on a
        /// healthy disk.
        pub static FAIL_NEXT_SYNC: Cell<bool> = const { Cell::new(false) };
    }

    fn record(n: u32) -> Vec<u8> {
        encode(
            &RecordHeader::Delete {
                uid: n,
                name: format!("s{n}"),
            },
            &[],
        )
        .unwrap()
    }

    fn append(log: &mut LogWriter, n: u32) -> Loc {
        log.append(&mut [Pending {
            head: record(n),
            payload: &[],
        }])
        .unwrap()
        .locs[0]
    }

    fn log_in(dir: &Path, segment_bytes: u64) -> LogWriter {
        std::fs::create_dir(dir.join(LOG_DIR)).unwrap();
        LogWriter::create(dir, 1, segment_bytes).unwrap()
    }

    fn file_len(dir: &Path, seq: u32) -> u64 {
        std::fs::metadata(segment_path(dir, seq)).unwrap().len()
    }

    #[test]
    fn rotating_trims_the_unused_preallocation() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 1 << 20);
        assert_eq!(file_len(dir.path(), 1), 1 << 20);
        append(&mut log, 1);
        log.sync().unwrap();
        let (_, used) = log.position();
        log.rotate().unwrap();
        assert_eq!(file_len(dir.path(), 1), used);
        assert_eq!(file_len(dir.path(), 2), 1 << 20);
    }

    #[test]
    fn a_batch_of_more_records_than_one_system_call_takes_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 16 << 20);
        // Three slices a record: far more than IOV_MAX (1024) in one batch.
        let locs = write_checkpoints(&mut log, 1..=1500);
        assert_eq!(locs.len(), 1500);
        let numbers = scan_numbers(dir.path(), 1);
        assert_eq!(numbers.len(), 1500);
        assert_eq!(numbers.last().map(String::as_str), Some("1500"));
    }

    #[test]
    fn no_record_ends_beyond_4_gib_into_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 1 << 20);
        append(&mut log, 1);
        // As if the segment had been filled to just under the limit.
        log.len = MAX_SEGMENT_END - 10;
        let loc = append(&mut log, 2);
        assert_eq!((loc.segment, loc.offset), (2, SEGMENT_HEADER_LEN));
    }

    #[test]
    fn a_segment_that_cannot_be_preallocated_grows_as_written() {
        let dir = tempfile::tempdir().unwrap();
        // Far beyond any disk: fallocate fails, and must leave nothing half-allocated.
        let mut log = log_in(dir.path(), 1 << 60);
        assert_eq!(file_len(dir.path(), 1), SEGMENT_HEADER_LEN);
        let loc = append(&mut log, 1);
        log.sync().unwrap();
        assert_eq!(
            file_len(dir.path(), 1),
            loc.offset + loc.record_len() + FOOTER_LEN as u64
        );
        let mut scanner = SegmentScanner::open(dir.path(), 1, 0).unwrap();
        assert!(matches!(
            scanner.next_item().unwrap(),
            Some(ScanItem::Record { .. })
        ));
        assert!(scanner.next_item().unwrap().is_none());
    }

    fn checkpoint(n: u64, payload: &[u8]) -> Vec<u8> {
        encode(
            &RecordHeader::Checkpoint2(crate::model::CheckpointMeta {
                uid: 1,
                name: "s".into(),
                number: n,
                created_at: 0,
                meta: Default::default(),
                key: None,
            }),
            payload,
        )
        .unwrap()
    }

    pub(crate) fn write_checkpoints(
        log: &mut LogWriter,
        numbers: std::ops::RangeInclusive<u64>,
    ) -> Vec<Loc> {
        let payloads: Vec<Vec<u8>> = numbers.clone().map(|n| vec![n as u8; 3000]).collect();
        let mut pending: Vec<Pending<'_>> = numbers
            .zip(&payloads)
            .map(|(n, p)| Pending {
                head: checkpoint(n, p),
                payload: p,
            })
            .collect();
        let locs = log.append(&mut pending).unwrap().locs;
        log.sync().unwrap();
        locs
    }

    fn scan_numbers(dir: &Path, seq: u32) -> Vec<String> {
        let mut scanner = SegmentScanner::open(dir, seq, 0).unwrap();
        let mut out = Vec::new();
        while let Some(item) = scanner.next_item().unwrap() {
            out.push(match item {
                ScanItem::Record {
                    header: RecordHeader::Checkpoint2(h),
                    payload_ok,
                    ..
                } => format!("{}{}", h.number, if payload_ok { "" } else { "!" }),
                ScanItem::Record { .. } => "other".into(),
                ScanItem::Damaged { .. } => "damaged".into(),
                ScanItem::Torn { .. } => "torn".into(),
            });
        }
        out
    }

    /// Segment 1 full of checkpoints 1..=100, retired to a free file, and segment 2 active.
    fn log_with_a_free_file(dir: &Path) -> LogWriter {
        let mut log = log_in(dir, 256 << 10);
        write_checkpoints(&mut log, 1..=80);
        log.rotate().unwrap();
        std::fs::rename(segment_path(dir, 1), free_path(dir, 1)).unwrap();
        log
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn a_new_segment_reuses_a_free_file_whose_old_records_read_as_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_a_free_file(dir.path());
        let old = inode(&free_path(dir.path(), 1));
        log.rotate().unwrap();
        assert_eq!(log.position().0, 3);
        assert_eq!(
            inode(&segment_path(dir.path(), 3)),
            old,
            "the free file is reused"
        );
        assert!(list_free(dir.path()).unwrap().is_empty());
        // A crash before the clean stop's trim: the old records are still in the file, at
        // the very offsets new ones start at, and none of them reads as segment 3's.
        write_checkpoints(&mut log, 81..=83);
        assert_eq!(scan_numbers(dir.path(), 3), ["81", "82", "83", "torn"]);
        // With nothing written at all, the old records are no more the new segment's.
        log.rotate().unwrap();
        std::fs::rename(segment_path(dir.path(), 3), free_path(dir.path(), 3)).unwrap();
        log.rotate().unwrap();
        assert_eq!(inode(&segment_path(dir.path(), 5)), old);
        assert_eq!(scan_numbers(dir.path(), 5), ["torn"]);
        // And new records read back whole, from the scanner's index and directly.
        let locs = write_checkpoints(&mut log, 84..=84);
        let file = crate::store::log::segment::SegmentFile::open(dir.path(), 5).unwrap();
        assert_eq!(file.read_record(&locs[0]).unwrap().1, vec![84u8; 3000]);
    }

    /// Where the first hole of the file at `path` at or after `from` starts (its length if
    /// none). ext4 reports blocks that are allocated but never written as a hole too.
    pub(crate) fn first_hole(path: &Path, from: u64) -> u64 {
        use nix::unistd::{lseek, Whence};
        let file = File::open(path).unwrap();
        lseek(&file, i64::try_from(from).unwrap(), Whence::SeekHole).unwrap() as u64
    }

    #[test]
    fn a_new_segment_is_zeros_written_through_not_only_allocated_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let _log = log_in(dir.path(), 1 << 20);
        let path = segment_path(dir.path(), 1);
        assert_eq!(file_len(dir.path(), 1), 1 << 20);
        assert_eq!(first_hole(&path, 0), 1 << 20, "no unwritten blocks");
        assert!(std::fs::read(&path).unwrap()[SEGMENT_HEADER_LEN as usize..]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(scan_numbers(dir.path(), 1), Vec::<String>::new());
    }

    #[test]
    fn a_full_size_free_file_is_taken_before_an_older_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let seg = 1 << 20;
        std::fs::create_dir_all(dir.path().join(LOG_DIR)).unwrap();
        // Free file 1 was trimmed at a clean stop; free file 2 is whole.
        std::fs::write(free_path(dir.path(), 1), vec![0u8; 8192]).unwrap();
        std::fs::write(free_path(dir.path(), 2), vec![0u8; seg]).unwrap();
        let whole = inode(&free_path(dir.path(), 2));
        let _log = LogWriter::create(dir.path(), 5, seg as u64).unwrap();
        assert_eq!(inode(&segment_path(dir.path(), 5)), whole);
        // With only the short one left, it is taken and written out to full size.
        let short = inode(&free_path(dir.path(), 1));
        let _log = LogWriter::create(dir.path(), 6, seg as u64).unwrap();
        let path = segment_path(dir.path(), 6);
        assert_eq!(inode(&path), short);
        assert_eq!(file_len(dir.path(), 6), seg as u64);
        assert_eq!(first_hole(&path, 0), seg as u64, "no unwritten blocks");
    }

    #[test]
    fn a_write_cut_short_in_a_reused_file_is_torn_and_a_damaged_payload_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_a_free_file(dir.path());
        log.rotate().unwrap();
        let locs = write_checkpoints(&mut log, 81..=82);
        // The last 1000 bytes of checkpoint 82's payload and its footer never reached the
        // disk: what is there is the previous life's bytes.
        let path = segment_path(dir.path(), 3);
        let written = std::fs::read(&path).unwrap();
        let mut bytes = written.clone();
        let end = (locs[1].offset + locs[1].record_len()) as usize + FOOTER_LEN;
        bytes[end - 1000..end].fill(1);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scan_numbers(dir.path(), 3), ["81", "torn"]);
        // A payload damaged after it was written whole is reported, not taken for the end:
        // the last record's as well as one followed by others.
        let mut bytes = written.clone();
        bytes[locs[1].payload_offset() as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scan_numbers(dir.path(), 3), ["81", "82!", "torn"]);
        bytes[locs[0].payload_offset() as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(scan_numbers(dir.path(), 3), ["81!", "82!", "torn"]);
    }

    #[test]
    fn a_free_file_numbered_at_or_after_the_new_segment_is_deleted_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_with_a_free_file(dir.path());
        std::fs::rename(free_path(dir.path(), 1), free_path(dir.path(), 3)).unwrap();
        log.rotate().unwrap();
        assert_eq!(log.position().0, 3);
        assert!(!free_path(dir.path(), 3).exists());
        // A new file: zeros after the header, where the reused one would still hold the old
        // records (which would scan as a torn end).
        assert_eq!(scan_numbers(dir.path(), 3), Vec::<String>::new());
    }

    #[test]
    fn a_free_file_that_cannot_be_reused_leaves_a_new_segment_and_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 256 << 10);
        // Named like a free file but not one: reusing it fails, and a new file is made.
        std::fs::create_dir(free_path(dir.path(), 0)).unwrap();
        log.rotate().unwrap();
        assert_eq!(log.position().0, 2);
        write_checkpoints(&mut log, 1..=2);
        assert_eq!(scan_numbers(dir.path(), 2), ["1", "2"]);
        // A segment already named as the new one is never replaced by a free file.
        std::fs::remove_dir(free_path(dir.path(), 0)).unwrap();
        log.rotate().unwrap();
        std::fs::rename(segment_path(dir.path(), 2), free_path(dir.path(), 2)).unwrap();
        std::fs::write(segment_path(dir.path(), 4), b"someone else's").unwrap();
        let Err(e) = LogWriter::create(dir.path(), 4, 256 << 10) else {
            panic!("segment 4 replaced")
        };
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(
            std::fs::read(segment_path(dir.path(), 4)).unwrap(),
            b"someone else's"
        );
    }

    #[test]
    fn after_a_failed_fsync_the_segment_is_never_written_again_and_the_next_one_cuts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 1 << 20);
        append(&mut log, 1);
        log.sync().unwrap();
        let (_, durable) = log.position();
        append(&mut log, 2);
        FAIL_NEXT_SYNC.with(|f| f.set(true));
        assert!(log.sync().is_err());
        assert!(log.is_poisoned());
        // Nothing more is written to it, and what it held after the last flush is given back.
        assert!(log
            .append(&mut [Pending {
                head: record(3),
                payload: &[],
            }])
            .is_err());
        assert_eq!(file_len(dir.path(), 1), durable);
        // The next batch goes to a fresh segment, which begins by saying where the
        // abandoned one's log ends.
        log.rotate().unwrap();
        let loc = append(&mut log, 3);
        log.sync().unwrap();
        assert_eq!((loc.segment, log.position().0), (2, 2));
        assert_eq!(file_len(dir.path(), 1), durable);
        let mut scanner = SegmentScanner::open(dir.path(), 2, 0).unwrap();
        let Some(ScanItem::Record { header, .. }) = scanner.next_item().unwrap() else {
            panic!("no first record")
        };
        assert_eq!(
            header,
            RecordHeader::Cut {
                segment: 1,
                end: durable
            }
        );
        assert!(matches!(
            scanner.next_item().unwrap(),
            Some(ScanItem::Record {
                header: RecordHeader::Delete { uid: 3, .. },
                ..
            })
        ));
    }

    #[test]
    fn a_segment_that_cannot_be_made_leaves_nothing_and_its_number_is_not_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 1 << 20);
        // Something (here a directory) under the next segment's name makes the attempt fail
        // after its file was made.
        std::fs::create_dir(segment_path(dir.path(), 2)).unwrap();
        assert!(log.rotate().is_err());
        assert_eq!(log.position().0, 1, "writes go on in the active segment");
        let names: Vec<String> = std::fs::read_dir(dir.path().join(LOG_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".new")),
            "a half-made segment was left: {names:?}"
        );
        // The next attempt takes the next number.
        log.rotate().unwrap();
        assert_eq!(log.position().0, 3);
        write_checkpoints(&mut log, 1..=2);
        assert_eq!(scan_numbers(dir.path(), 3), ["1", "2"]);
    }
}
