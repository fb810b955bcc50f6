//! Reads of the log from any thread: segment files opened once and shared, records read at
//! their place and verified.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::chunks::Chunks;
use super::record::{ChunkedHeader, RecordHeader};
use super::segment::{list_segments, segment_path, ReadError, SegmentFile};
use crate::chunking::{self, ChunkRef};
use crate::model::{AttachMeta, CheckedPayload, CheckpointMeta, Loc, SessionKey};
use crate::store::yields::Cutting;
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

/// Open segment files for reads, shared by all readers, and where the chunks are.
#[derive(Debug)]
pub struct SegmentFiles {
    dir: PathBuf,
    open: Mutex<HashMap<u32, Arc<SegmentFile>>>,
    chunks: Arc<Mutex<Chunks>>,
    /// Whether and how large payloads are written in chunks.
    cutting: Cutting,
}

impl SegmentFiles {
    pub fn new(dir: &Path, chunks: Arc<Mutex<Chunks>>, chunking: bool) -> Self {
        SegmentFiles {
            dir: dir.to_path_buf(),
            open: Mutex::new(HashMap::new()),
            chunks,
            cutting: Cutting::new(chunking),
        }
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, Chunks> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A chunked checkpoint's payload, put together from its chunks and verified.
    /// Compaction may move a chunk (and delete its old segment) between the lookup and the
    /// read: a failed read is retried once at the chunk's current place before it counts.
    /// `hashes`: each chunk's bytes checked against its name too (for `sessiond check`).
    pub fn assemble(&self, c: &ChunkedHeader, hashes: bool) -> Result<Vec<u8>, store::ReadError> {
        let uid = c.meta.uid;
        let places: Vec<_> = {
            let chunks = self.chunks();
            c.chunks
                .iter()
                .map(|r| chunks.get(&(uid, r.hash)).and_then(|e| e.loc))
                .collect()
        };
        let mut out = Vec::with_capacity(usize::try_from(c.payload_len).unwrap_or(0));
        for (r, place) in c.chunks.iter().zip(places) {
            let key = (uid, r.hash);
            let read = place
                .ok_or_else(|| store::ReadError::Damaged("a chunk it uses is missing".into()))
                .and_then(|loc| self.read_chunk(uid, r, &loc, hashes));
            let bytes = match read {
                Ok(b) => b,
                Err(e) => {
                    let now = self.chunks().get(&key).and_then(|e| e.loc);
                    match now.filter(|l| Some(*l) != place) {
                        Some(moved) => self.read_chunk(uid, r, &moved, hashes),
                        None => Err(e),
                    }
                    .inspect_err(|e| {
                        if matches!(e, store::ReadError::Damaged(_)) {
                            self.chunks().mark_damaged(&key);
                        }
                    })?
                }
            };
            out.extend_from_slice(&bytes);
        }
        if out.len() as u64 != c.payload_len || crc32c::crc32c(&out) != c.payload_crc {
            return Err(store::ReadError::Damaged(
                "its chunks do not make up its payload (checksum mismatch)".into(),
            ));
        }
        Ok(out)
    }

    fn read_chunk(
        &self,
        uid: u32,
        r: &ChunkRef,
        loc: &Loc,
        hashes: bool,
    ) -> Result<Vec<u8>, store::ReadError> {
        let (header, stored) = self.read_record(loc).map_err(damage_or_failure)?;
        match header {
            RecordHeader::Chunk(h) if h.uid == uid && h.chunk == *r => {
                let unpack = if hashes {
                    chunking::unpack_verified
                } else {
                    chunking::unpack
                };
                unpack(&stored, h.compressed, r).map_err(store::ReadError::Damaged)
            }
            _ => Err(another_record()),
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
    fn reads_in_place(&self) -> bool {
        true
    }

    fn read(&self, at: &Loc) -> Result<(CheckpointMeta, Vec<u8>), store::ReadError> {
        let (header, payload) = self.read_record(at).map_err(damage_or_failure)?;
        match header {
            RecordHeader::Chunked(c) | RecordHeader::Relocated3(c) => {
                let payload = self.assemble(&c, false)?;
                Ok((c.meta, payload))
            }
            header => Ok((header.checkpoint().ok_or_else(another_record)?, payload)),
        }
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
        let (chunks, _) = self.chunks().usage();
        Usage {
            files,
            bytes,
            chunks,
        }
    }

    fn prepares(&self, uid: u32, name: &str, len: usize) -> bool {
        self.cutting.prepares(uid, name, len)
    }

    fn prepare(&self, uid: u32, name: &str, payload: &mut CheckedPayload) {
        self.cutting.prepare(uid, name, payload, |refs| {
            let chunks = self.chunks();
            refs.iter().map(|r| chunks.usable(&(uid, r.hash))).collect()
        });
    }

    fn stored_bytes(&self, _session: Option<&SessionKey>, records: &[Loc]) -> u64 {
        let own: u64 = records
            .iter()
            .filter(|l| l.header_bytes() > 0)
            .map(Loc::record_len)
            .sum();
        own + self.chunks().bytes_used_by(records)
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
