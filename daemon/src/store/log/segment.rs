//! Log segment files: `log/<seq as 16 hex digits>.seg`, each starting with a 16-byte header
//! (`SSNDLOG1`, the sequence number, the format version) followed by records.
//!
//! [`SegmentScanner`] walks a segment's records in order, telling intact records from damaged
//! stretches (skipped by searching for the next valid record) and from a torn end. A new
//! segment is preallocated, so it may end in zeros: they are its end, not damage. A reused
//! segment file ends in the records of its previous life instead, which fail their checksum
//! (it is seeded with the segment's number, format 2) and so also read as its end. A record
//! whose footer is missing was cut short (see [`record`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Prefix, RecordError, RecordHeader, PREFIX_LEN};
use crate::model::Loc;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SSNDLOG1";
pub const SEGMENT_HEADER_LEN: u64 = 16;
/// Format 2 seeds record checksums with the segment's number and ends records with a footer;
/// format 3 adds chunks and chunked checkpoints (see [`super::record`]), records a daemon
/// that knows only format 2 would take for damage, so it refuses such a segment instead.
/// Formats 1 and 2 are still read.
pub const FORMAT_VERSION: u32 = 3;
pub const LOG_DIR: &str = "log";

pub fn segment_file_name(seq: u32) -> String {
    format!("{seq:016x}.seg")
}

pub fn segment_path(dir: &Path, seq: u32) -> PathBuf {
    dir.join(LOG_DIR).join(segment_file_name(seq))
}

pub fn segment_header(seq: u32) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&seq.to_le_bytes());
    h[12..16].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a segment's header; returns the seed its records' checksums use.
fn parse_segment_header(h: &[u8], seq: u32) -> io::Result<Option<u32>> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "segment {} has a bad header: {what}",
                segment_file_name(seq)
            ),
        )
    };
    if h.len() < SEGMENT_HEADER_LEN as usize || h[..8] != SEGMENT_MAGIC {
        return Err(bad("no SSNDLOG1 magic"));
    }
    if h[8..12] != seq.to_le_bytes() {
        return Err(bad("it names another segment"));
    }
    match u32::from_le_bytes([h[12], h[13], h[14], h[15]]) {
        1 => Ok(None),
        2 | 3 => Ok(Some(seq)),
        v => Err(bad(&format!("unknown format version {v}"))),
    }
}

/// An open segment, for reading records at known places.
#[derive(Debug)]
pub struct SegmentFile {
    file: File,
    seed: Option<u32>,
}

impl SegmentFile {
    /// Opens segment `seq` and checks its header.
    pub fn open(dir: &Path, seq: u32) -> io::Result<Self> {
        let file = File::open(segment_path(dir, seq))?;
        let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
        file.read_exact_at(&mut h, 0)?;
        let seed = parse_segment_header(&h, seq)?;
        Ok(SegmentFile { file, seed })
    }

    /// Reads a whole record and checks both checksums.
    pub fn read_record(&self, loc: &Loc) -> Result<(RecordHeader, Vec<u8>), ReadError> {
        let (header, payload, crc) = self.read_record_raw(loc)?;
        if crc32c::crc32c(&payload) != crc {
            return Err(RecordError::PayloadCrc.into());
        }
        Ok((header, payload))
    }

    /// Reads a whole record, checking the header only; returns the stored payload checksum.
    pub fn read_record_raw(&self, loc: &Loc) -> Result<(RecordHeader, Vec<u8>, u32), ReadError> {
        let mut buf = vec![0u8; loc.record_len() as usize];
        self.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(ReadError::Io)?;
        let (prefix, header) = check_header(&buf, self.seed)?;
        if prefix.header_len != loc.header_bytes() || prefix.payload_len != loc.stored_payload_len()
        {
            return Err(ReadError::Record(RecordError::HeaderLen(prefix.header_len)));
        }
        let payload = buf.split_off(PREFIX_LEN + loc.header_bytes() as usize);
        Ok((header, payload, prefix.payload_crc))
    }

    /// The header of the segment's first record, if it has an intact one.
    pub fn first_header(&self) -> Option<RecordHeader> {
        let mut prefix = [0u8; PREFIX_LEN];
        self.file
            .read_exact_at(&mut prefix, SEGMENT_HEADER_LEN)
            .ok()?;
        let p = record::parse_prefix(&prefix).ok()?;
        let mut header = vec![0u8; p.header_len as usize];
        self.file
            .read_exact_at(&mut header, SEGMENT_HEADER_LEN + PREFIX_LEN as u64)
            .ok()?;
        record::parse_header(&prefix, &p, &header, self.seed).ok()
    }

    /// Reads and verifies a record's header only.
    pub fn read_header(&self, loc: &Loc) -> Result<RecordHeader, ReadError> {
        let mut buf = vec![0u8; PREFIX_LEN + loc.header_bytes() as usize];
        self.file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(ReadError::Io)?;
        Ok(check_header(&buf, self.seed)?.1)
    }
}

/// Extension of a dead segment's file kept for reuse as a new segment, named by its old
/// number.
pub const FREE_EXTENSION: &str = "free";

pub fn free_path(dir: &Path, old_seq: u32) -> PathBuf {
    dir.join(LOG_DIR)
        .join(format!("{old_seq:016x}.{FREE_EXTENSION}"))
}

/// Sequence numbers of the segments in `dir/log`, ascending. Other files are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u32>> {
    numbered_files(dir, "seg")
}

/// Old sequence numbers of the free files in `dir/log`, ascending.
pub fn list_free(dir: &Path) -> io::Result<Vec<u32>> {
    numbered_files(dir, FREE_EXTENSION)
}

fn numbered_files(dir: &Path, extension: &str) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    let log = dir.join(LOG_DIR);
    let entries = match std::fs::read_dir(&log) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(hex) = name
            .strip_suffix(extension)
            .and_then(|n| n.strip_suffix('.'))
        else {
            continue;
        };
        if hex.len() == 16 {
            if let Some(seq) = u64::from_str_radix(hex, 16)
                .ok()
                .and_then(|s| u32::try_from(s).ok())
            {
                out.push(seq);
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What a scan found at one place of a segment.
#[derive(Debug)]
pub enum ScanItem {
    /// A record whose header is intact; `payload_ok` says whether its payload is too, whose
    /// checksum is `payload_crc`.
    Record {
        header: RecordHeader,
        loc: Loc,
        payload_ok: bool,
        payload_crc: u32,
    },
    /// Bytes `[offset, offset+len)` hold no valid record.
    Damaged {
        offset: u64,
        len: u64,
        reason: String,
    },
    /// Nothing intact from `offset` on: an interrupted write, or a reused file's old records.
    Torn { offset: u64 },
}

/// Sequential reader of one segment with a large read window.
pub struct SegmentScanner {
    file: File,
    seq: u32,
    seed: Option<u32>,
    /// Bytes after each record's payload: its footer in format 2.
    footer_len: u64,
    len: u64,
    /// Everything from here to `len` is zero: the unused part of a preallocated segment.
    zeros_from: u64,
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
}

const WINDOW: usize = 4 << 20;

/// A record read at some offset: its header, place, payload verdict and checksum, or why it
/// is invalid.
type Found = Result<(RecordHeader, Loc, bool, u32), RecordError>;

impl SegmentScanner {
    /// Opens segment `seq` and checks its header. Scanning starts at `from` (or right after
    /// the header when `from` is 0).
    pub fn open(dir: &Path, seq: u32, from: u64) -> Result<Self, io::Error> {
        Self::open_until(dir, seq, from, None)
    }

    /// As [`SegmentScanner::open`], reading nothing at or after `end` (a cut, see
    /// [`RecordHeader::Cut`]).
    pub fn open_until(
        dir: &Path,
        seq: u32,
        from: u64,
        end: Option<u64>,
    ) -> Result<Self, io::Error> {
        let file = File::open(segment_path(dir, seq))?;
        let len = file.metadata()?.len().min(end.unwrap_or(u64::MAX));
        let pos = from.max(SEGMENT_HEADER_LEN);
        // The index may name an offset past the end of a segment cut short since.
        let zeros_from = zero_tail_start(&file, pos.min(len), len)?;
        let mut s = SegmentScanner {
            file,
            seq,
            seed: None,
            footer_len: 0,
            len,
            zeros_from,
            buf: Vec::new(),
            buf_start: 0,
            pos,
        };
        let header = s
            .bytes(0, SEGMENT_HEADER_LEN as usize)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        s.seed = parse_segment_header(&header, seq)?;
        if s.seed.is_some() {
            s.footer_len = record::FOOTER_LEN as u64;
        }
        Ok(s)
    }

    /// `len` bytes at `off`, or `None` if the file ends first.
    fn bytes(&mut self, off: u64, len: usize) -> io::Result<Option<&[u8]>> {
        if off + len as u64 > self.len {
            return Ok(None);
        }
        let in_buf =
            off >= self.buf_start && off + len as u64 <= self.buf_start + self.buf.len() as u64;
        if !in_buf {
            // No need to read far into the zeroed tail.
            let limit = self.zeros_from.max(off + len as u64);
            let want = len.max(WINDOW).min((limit - off) as usize);
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.buf_start = off;
        }
        let start = (off - self.buf_start) as usize;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Tries to read a record at `off`. `Ok(None)`: the file ends inside it.
    fn record_at(&mut self, off: u64) -> io::Result<Option<Found>> {
        let Some(p) = self.bytes(off, PREFIX_LEN)? else {
            return Ok(None);
        };
        let prefix_bytes: [u8; PREFIX_LEN] = p.try_into().unwrap_or([0; PREFIX_LEN]);
        let prefix: Prefix = match record::parse_prefix(&prefix_bytes) {
            Ok(p) => p,
            Err(e) => return Ok(Some(Err(e))),
        };
        let header_off = off + PREFIX_LEN as u64;
        let seed = self.seed;
        let Some(hb) = self.bytes(header_off, prefix.header_len as usize)? else {
            return Ok(None);
        };
        let header = match record::parse_header(&prefix_bytes, &prefix, hb, seed) {
            Ok(h) => h,
            Err(e) => return Ok(Some(Err(e))),
        };
        let loc = Loc {
            segment: self.seq,
            offset: off,
            header_len: prefix.header_len,
            payload_len: prefix.payload_len,
        };
        let end = loc.offset + loc.record_len();
        if end + self.footer_len > self.len {
            return Ok(None);
        }
        if self.footer_len > 0 {
            let Some(footer) = self.bytes(end, self.footer_len as usize)? else {
                return Ok(None);
            };
            if !record::footer_matches(&prefix_bytes, footer) {
                return Ok(Some(Err(RecordError::Footer)));
            }
        }
        let Some(pb) = self.bytes(loc.payload_offset(), prefix.payload_len as usize)? else {
            return Ok(None);
        };
        let payload_ok = record::verify_payload(&prefix, pb).is_ok();
        Ok(Some(Ok((header, loc, payload_ok, prefix.payload_crc))))
    }

    /// Offset of the next intact record after `from`, if any.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut off = from;
        // No record starts in the zeroed tail.
        while off + PREFIX_LEN as u64 <= self.zeros_from {
            let chunk = (self.zeros_from - off).min(WINDOW as u64) as usize;
            let Some(window) = self.bytes(off, chunk)? else {
                return Ok(None);
            };
            let candidates: Vec<u64> = window
                .windows(4)
                .enumerate()
                .filter(|(_, w)| *w == record::MAGIC)
                .map(|(i, _)| off + i as u64)
                .collect();
            for c in candidates {
                if let Some(Ok(_)) = self.record_at(c)? {
                    return Ok(Some(c));
                }
            }
            if chunk < WINDOW {
                return Ok(None);
            }
            off += (chunk - 3) as u64;
        }
        Ok(None)
    }

    /// Where the next record would start (the end of the last intact record).
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn next_item(&mut self) -> io::Result<Option<ScanItem>> {
        let off = self.pos;
        if off >= self.zeros_from {
            return Ok(None);
        }
        match self.record_at(off)? {
            // A write interrupted inside its payload, followed by the preallocated zeros:
            // torn, exactly as if the file had ended there.
            Some(Ok((_, loc, false, _))) if loc.offset + loc.record_len() > self.zeros_from => {
                self.pos = self.len;
                Ok(Some(ScanItem::Torn { offset: off }))
            }
            Some(Ok((header, loc, payload_ok, payload_crc))) => {
                self.pos = off + loc.record_len() + self.footer_len;
                Ok(Some(ScanItem::Record {
                    header,
                    loc,
                    payload_ok,
                    payload_crc,
                }))
            }
            failed => {
                let reason = match failed {
                    Some(Err(e)) => e.to_string(),
                    _ => "record runs past the end of the segment".to_string(),
                };
                match self.resync(off + 1)? {
                    Some(next) => {
                        self.pos = next;
                        Ok(Some(ScanItem::Damaged {
                            offset: off,
                            len: next - off,
                            reason,
                        }))
                    }
                    None => {
                        self.pos = self.len;
                        Ok(Some(ScanItem::Torn { offset: off }))
                    }
                }
            }
        }
    }
}

/// The offset from which `file` holds only zeros up to `len` (at least `from`). Data regions
/// are found with `SEEK_DATA`/`SEEK_HOLE` where the file system supports them, then the last
/// one is read backwards; without that support the file is read backwards from its end.
fn zero_tail_start(file: &File, from: u64, len: u64) -> io::Result<u64> {
    let mut end = data_end(file, from, len);
    let mut buf = vec![0u8; 1 << 20];
    while end > from {
        let start = end.saturating_sub(buf.len() as u64).max(from);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(from)
}

/// The end of the last region of `file` the file system reports as data (or `len`).
fn data_end(file: &File, from: u64, len: u64) -> u64 {
    #[cfg(target_os = "linux")]
    {
        use nix::errno::Errno;
        use nix::unistd::{lseek, Whence};
        let mut end = from;
        let mut pos = from;
        while pos < len {
            let Ok(at) = i64::try_from(pos) else {
                return len;
            };
            let data = match lseek(file, at, Whence::SeekData) {
                Ok(d) => d,
                Err(Errno::ENXIO) => break,
                Err(_) => return len,
            };
            let Ok(hole) = lseek(file, data, Whence::SeekHole) else {
                return len;
            };
            let hole = u64::try_from(hole).unwrap_or(len).min(len);
            if hole <= pos {
                return len;
            }
            end = hole;
            pos = hole;
        }
        end
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (file, from);
        len
    }
}

fn check_header(buf: &[u8], seed: Option<u32>) -> Result<(Prefix, RecordHeader), ReadError> {
    let prefix_bytes: [u8; PREFIX_LEN] = buf
        .get(..PREFIX_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(ReadError::Record(RecordError::Magic))?;
    let prefix = record::parse_prefix(&prefix_bytes)?;
    let header_bytes = buf
        .get(PREFIX_LEN..PREFIX_LEN + prefix.header_len as usize)
        .ok_or(ReadError::Record(RecordError::HeaderLen(prefix.header_len)))?;
    let header = record::parse_header(&prefix_bytes, &prefix, header_bytes, seed)?;
    Ok((prefix, header))
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl ReadError {
    /// Whether the record itself is damaged (a checksum, a file cut short or gone), rather
    /// than the disk failing to read it, which may work when tried again.
    pub fn is_damage(&self) -> bool {
        match self {
            ReadError::Record(_) => true,
            ReadError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound | io::ErrorKind::InvalidData
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::CheckpointMeta;
    use crate::store::log::record::encode;
    use crate::store::log::writer::{LogWriter, Pending};

    fn header(n: u64, meta_len: usize) -> RecordHeader {
        RecordHeader::Checkpoint2(CheckpointMeta {
            uid: 7,
            name: "s".into(),
            number: n,
            created_at: n as i64,
            meta: (0..meta_len)
                .map(|i| (format!("k{i}"), "v".repeat(i)))
                .collect(),
            key: None,
        })
    }

    /// Writes a segment holding `payloads` and returns its path. A preallocated segment keeps
    /// its zeroed tail (as after a crash); otherwise it is trimmed (as after a clean stop).
    fn segment_with(dir: &Path, payloads: &[Vec<u8>]) -> PathBuf {
        segment_with_tail(dir, payloads, false)
    }

    fn segment_with_tail(dir: &Path, payloads: &[Vec<u8>], zero_tail: bool) -> PathBuf {
        std::fs::create_dir_all(dir.join(LOG_DIR)).unwrap();
        let mut log = LogWriter::create(dir, 1, 256 << 10).unwrap();
        let heads: Vec<Vec<u8>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| encode(&header(i as u64 + 1, i % 3), p).unwrap())
            .collect();
        let mut pending: Vec<Pending<'_>> = heads
            .into_iter()
            .zip(payloads)
            .map(|(head, payload)| Pending { head, payload })
            .collect();
        log.append(&mut pending).unwrap();
        log.sync().unwrap();
        if !zero_tail {
            log.trim();
        }
        segment_path(dir, 1)
    }

    fn scan(dir: &Path) -> Vec<ScanItem> {
        let Ok(mut s) = SegmentScanner::open(dir, 1, 0) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(item) = s.next_item().unwrap() {
            out.push(item);
        }
        out
    }

    fn numbers(items: &[ScanItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                ScanItem::Record {
                    header: RecordHeader::Checkpoint2(h),
                    payload_ok,
                    ..
                } => format!("{}{}", h.number, if *payload_ok { "" } else { "!" }),
                ScanItem::Record { .. } => "other".into(),
                ScanItem::Damaged { .. } => "damaged".into(),
                ScanItem::Torn { .. } => "torn".into(),
            })
            .collect()
    }

    #[test]
    fn a_preallocated_segment_ends_where_its_records_end() {
        let dir = tempfile::tempdir().unwrap();
        // The last payload is all zeros: it must not be mistaken for the unused tail.
        let payloads = vec![b"one".to_vec(), vec![7; 5000], vec![0; 3000]];
        let path = segment_with_tail(dir.path(), &payloads, true);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 256 << 10);
        assert_eq!(numbers(&scan(dir.path())), ["1", "2", "3"]);
    }

    #[test]
    fn a_write_cut_short_before_the_zeroed_tail_is_torn_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let payloads = vec![b"one".to_vec(), vec![7; 5000]];
        let path = segment_with_tail(dir.path(), &payloads, true);
        let items = scan(dir.path());
        let ScanItem::Record { loc, .. } = &items[1] else {
            panic!("{items:?}")
        };
        // The last 1000 bytes of the payload, and the footer, never reached the file.
        let mut bytes = std::fs::read(&path).unwrap();
        let end = (loc.offset + loc.record_len()) as usize + record::FOOTER_LEN;
        bytes[end - 1000..end].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(numbers(&scan(dir.path())), ["1", "torn"]);
    }

    #[test]
    fn a_format_1_segment_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOG_DIR)).unwrap();
        let mut bytes = segment_header(1).to_vec();
        bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
        let mut locs = Vec::new();
        for n in 1..=3u64 {
            let payload = vec![n as u8; 100];
            let mut head = encode(&header(n, 1), &payload).unwrap();
            record::seal(&mut head, None);
            locs.push(Loc {
                segment: 1,
                offset: bytes.len() as u64,
                header_len: (head.len() - PREFIX_LEN) as u32,
                payload_len: 100,
            });
            bytes.extend_from_slice(&head);
            bytes.extend_from_slice(&payload);
        }
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        assert_eq!(numbers(&scan(dir.path())), ["1", "2", "3"]);
        let file = SegmentFile::open(dir.path(), 1).unwrap();
        assert_eq!(file.read_record(&locs[2]).unwrap().1, vec![3u8; 100]);
        // The same records in a format 2 segment are not its own.
        bytes[12..16].copy_from_slice(&2u32.to_le_bytes());
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        assert_eq!(numbers(&scan(dir.path())), ["torn"]);
        let file = SegmentFile::open(dir.path(), 1).unwrap();
        assert!(file.read_record(&locs[2]).is_err());
        // An unknown format is refused, not guessed at.
        bytes[12..16].copy_from_slice(&4u32.to_le_bytes());
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let e = SegmentFile::open(dir.path(), 1).unwrap_err();
        assert!(e.to_string().contains("format version 4"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn damage_anywhere_never_yields_a_wrong_intact_record(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..12),
            flips in proptest::collection::vec((any::<u64>(), 0u8..8), 1..4),
            truncate in proptest::option::of(any::<u64>()),
            zero_tail in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_with_tail(dir.path(), &payloads, zero_tail);
            // Undamaged: every record, intact, in order.
            let clean = scan(dir.path());
            prop_assert_eq!(clean.len(), payloads.len());
            let mut bytes = std::fs::read(&path).unwrap();
            for (at, bit) in &flips {
                let i = (*at % bytes.len() as u64) as usize;
                bytes[i] ^= 1 << bit;
            }
            if let Some(t) = truncate {
                bytes.truncate((t % (bytes.len() as u64 + 1)) as usize);
            }
            std::fs::write(&path, &bytes).unwrap();
            for item in scan(dir.path()) {
                if let ScanItem::Record { header: RecordHeader::Checkpoint2(h), loc, payload_ok: true, .. } = item {
                    let i = (h.number - 1) as usize;
                    prop_assert!(i < payloads.len());
                    let file = SegmentFile::open(dir.path(), 1).unwrap();
                    let (_, payload) = file.read_record(&loc).unwrap();
                    prop_assert_eq!(&payload, &payloads[i], "record {} read back wrong", h.number);
                }
            }
        }

        #[test]
        fn garbage_after_a_valid_header_scans_without_panicking(
            garbage in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = segment_with(dir.path(), &[]);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes.extend_from_slice(&garbage);
            std::fs::write(&path, &bytes).unwrap();
            for item in scan(dir.path()) {
                prop_assert!(!matches!(item, ScanItem::Record { payload_ok: true, .. }), "garbage taken for a record");
            }
        }

        #[test]
        fn any_index_file_loads_or_is_reported_damaged(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(crate::store::log::snapshot::INDEX_FILE), &bytes).unwrap();
            let _ = crate::store::log::snapshot::read(dir.path());
        }
    }
}
