//! Reads of the log from any thread: segment files opened once and shared, records read at
//! their place and verified.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::record::RecordHeader;
use super::segment::{list_segments, segment_path, ReadError, SegmentFile};
use crate::model::{AttachMeta, CheckpointMeta, Loc};
use crate::store::{self, Reads, Usage};

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

impl Reads for SegmentFiles {
    fn read(&self, at: &Loc) -> Result<(CheckpointMeta, Vec<u8>), store::ReadError> {
        let (header, payload) = self.read_record(at).map_err(damage_or_failure)?;
        Ok((header.checkpoint().ok_or_else(another_record)?, payload))
    }

    fn read_meta(&self, at: &Loc) -> Result<CheckpointMeta, store::ReadError> {
        let header = self.read_header(at).map_err(damage_or_failure)?;
        header.checkpoint().ok_or_else(another_record)
    }

    fn read_attachment(&self, at: &Loc) -> Result<(AttachMeta, Vec<u8>), store::ReadError> {
        let (header, payload) = self.read_record(at).map_err(damage_or_failure)?;
        Ok((header.attachment().ok_or_else(another_record)?, payload))
    }

    fn usage(&self) -> Usage {
        let (files, bytes) = log_size(&self.dir);
        Usage { files, bytes }
    }
}

fn damage_or_failure(e: ReadError) -> store::ReadError {
    if e.is_damage() {
        store::ReadError::Damaged(e.to_string())
    } else {
        store::ReadError::Failed(e.to_string())
    }
}

fn another_record() -> store::ReadError {
    store::ReadError::Damaged("the record at the indexed place is another record".into())
}
