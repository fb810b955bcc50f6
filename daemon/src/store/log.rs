//! The append side of the log: one active segment, written in batches and made durable with
//! one `fdatasync` per batch (group commit). A new segment's directory entry is made durable
//! before anything written to it is acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};

use super::record::Loc;
use super::segment::{segment_header, segment_path, LOG_DIR, SEGMENT_HEADER_LEN};

/// Makes a directory's entries durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Records end below this offset in a segment (the index keeps 32-bit offsets).
pub const MAX_SEGMENT_END: u64 = u32::MAX as u64;

/// One record to append: its encoded prefix and header, then its payload.
pub struct Pending<'a> {
    pub head: Vec<u8>,
    pub payload: &'a [u8],
}

pub struct LogWriter {
    dir: PathBuf,
    seq: u32,
    file: File,
    len: u64,
    segment_bytes: u64,
    /// The file was extended to `segment_bytes` up front (zeros after `len`).
    preallocated: bool,
    /// An fsync of this segment failed: nothing more may be written to it.
    poisoned: bool,
}

impl LogWriter {
    /// Creates segment `seq` (which must not exist) and makes it durable.
    pub fn create(dir: &Path, seq: u32, segment_bytes: u64) -> io::Result<Self> {
        let path = segment_path(dir, seq);
        let mut file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)?;
        file.write_all(&segment_header(seq))?;
        let preallocated = preallocate(&file, segment_bytes);
        file.sync_all()?;
        fsync_dir(&dir.join(LOG_DIR))?;
        Ok(LogWriter {
            dir: dir.to_path_buf(),
            seq,
            file,
            len: SEGMENT_HEADER_LEN,
            segment_bytes,
            preallocated,
            poisoned: false,
        })
    }

    /// Gives back the unused, preallocated tail of the active segment (at a clean stop or a
    /// rotation). Not made durable: a tail that survives is zeros, which readers take as the
    /// end of the segment anyway.
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

    /// Writes `records` at the end of the active segment (not yet durable). On error the
    /// segment is cut back to where it was.
    pub fn append(&mut self, records: &[Pending<'_>]) -> io::Result<Vec<Loc>> {
        let batch: u64 = records
            .iter()
            .map(|r| (r.head.len() + r.payload.len()) as u64)
            .sum();
        if self.poisoned {
            // After a failed fsync the kernel may have dropped the dirty pages: that segment's
            // content is unknowable, so writing resumes only in a fresh one.
            self.rotate()?;
        } else if self.len > SEGMENT_HEADER_LEN && self.len + batch > MAX_SEGMENT_END {
            // The index stores offsets in 32 bits.
            self.rotate()?;
        }
        let start = self.len;
        let mut locs = Vec::with_capacity(records.len());
        let mut slices = Vec::with_capacity(records.len() * 2);
        let mut off = start;
        for r in records {
            let header_len = (r.head.len() - super::record::PREFIX_LEN) as u32;
            let loc = Loc {
                segment: self.seq,
                offset: off,
                header_len,
                payload_len: r.payload.len() as u32,
            };
            off += loc.record_len();
            locs.push(loc);
            slices.push(IoSlice::new(&r.head));
            if !r.payload.is_empty() {
                slices.push(IoSlice::new(r.payload));
            }
        }
        match write_all_at(&self.file, start, &mut slices) {
            Ok(()) => {
                self.len = off;
                Ok(locs)
            }
            Err(e) => {
                // Leave no partial record behind for the next batch to follow.
                let _ = self.file.set_len(start);
                self.preallocated = false;
                Err(e)
            }
        }
    }

    /// Makes everything appended so far durable. A failure is never retried: the segment
    /// is abandoned.
    pub fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if tests::FAIL_NEXT_SYNC.with(|f| f.replace(false)) {
            self.poisoned = true;
            return Err(io::Error::from_raw_os_error(5)); // EIO, as a failing disk reports it
        }
        let r = self.file.sync_data();
        self.poisoned |= r.is_err();
        r
    }

    /// Whether the active segment has reached its target size.
    pub fn is_full(&self) -> bool {
        self.len >= self.segment_bytes
    }

    /// Starts the next segment. Used when the active one is full, and after an fsync failure,
    /// after which nothing more is written to the old one.
    pub fn rotate(&mut self) -> io::Result<()> {
        let next = LogWriter::create(&self.dir, self.seq + 1, self.segment_bytes)?;
        self.trim();
        *self = next;
        Ok(())
    }
}

/// Extends a new segment to its full size with allocated (unwritten) blocks, so that appends
/// overwrite blocks the file already has: `fdatasync` then has no file size to commit, which
/// on ext4 and xfs makes a small durable append about 1.7x faster. Best effort: without it
/// (no space for a whole segment, a file system without `fallocate`) the file grows as
/// written.
fn preallocate(file: &File, segment_bytes: u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use nix::fcntl::{fallocate, FallocateFlags};
        let Ok(len) = i64::try_from(segment_bytes) else {
            return false;
        };
        match fallocate(file, FallocateFlags::empty(), 0, len) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cannot preallocate a log segment; it grows as written");
                // A failed fallocate may have allocated part of the range.
                let _ = file.set_len(super::segment::SEGMENT_HEADER_LEN);
                false
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, segment_bytes);
        false
    }
}

/// Writes the slices at `start` with positioned writes: no seek per batch.
fn write_all_at(file: &File, start: u64, slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    let mut slices = slices;
    let mut at = start;
    while !slices.is_empty() {
        let offset = i64::try_from(at).map_err(|_| io::Error::other("log offset past i64"))?;
        match nix::sys::uio::pwritev(file, slices, offset) {
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
    use crate::store::record::{encode, RecordHeader};
    use crate::store::segment::{ScanItem, SegmentScanner};

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
        log.append(&[Pending {
            head: record(n),
            payload: &[],
        }])
        .unwrap()[0]
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
        assert_eq!(file_len(dir.path(), 1), loc.offset + loc.record_len());
        let mut scanner = SegmentScanner::open(dir.path(), 1, 0).unwrap();
        assert!(matches!(
            scanner.next_item().unwrap(),
            Some(ScanItem::Record { .. })
        ));
        assert!(scanner.next_item().unwrap().is_none());
    }

    #[test]
    fn after_a_failed_fsync_the_segment_is_never_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_in(dir.path(), 1 << 20);
        append(&mut log, 1);
        log.sync().unwrap();
        append(&mut log, 2);
        FAIL_NEXT_SYNC.with(|f| f.set(true));
        assert!(log.sync().is_err());
        let len_after_failure = file_len(dir.path(), 1);
        // The next batch goes to a fresh segment; the failed one is left as it was (not even
        // trimmed).
        let loc = append(&mut log, 3);
        log.sync().unwrap();
        assert_eq!(loc.segment, 2);
        assert_eq!(log.position().0, 2);
        assert_eq!(file_len(dir.path(), 1), len_after_failure);
        let mut scanner = SegmentScanner::open(dir.path(), 2, 0).unwrap();
        assert!(matches!(
            scanner.next_item().unwrap(),
            Some(ScanItem::Record {
                header: RecordHeader::Delete { uid: 3, .. },
                ..
            })
        ));
    }
}
