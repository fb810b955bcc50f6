//! The index snapshot: every session and the location of every retained checkpoint, as of a
//! log position. Start-up loads it and replays only the log written after that position, so
//! it never reads the payloads the snapshot already covers.
//!
//! File `index`: magic `SSNDIDX4`, body length (`u64` LE), crc32c of the body (`u32` LE), body
//! (bincode). Replaced atomically: temp file, fsync, rename, fsync of the directory. Version 3
//! (`SSNDIDX3`: no chunks), version 2 (`SSNDIDX2`: no checkpoint keys or attachments either)
//! and version 1 (`SSNDIDX1`, whose checkpoint entries also held their creation time and a
//! 64-bit offset) are still read; the next snapshot is written as version 4.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sessiond_proto::codec;

use super::chunks::{Manifest, SnapChunk};
use super::files::fsync_dir;
use super::scope::{self, within};
use crate::model::{AttachEntry, CkptEntry, IndexedSession, KeyEntry, Loc, SessionState};

pub const INDEX_FILE: &str = "index";
pub const INDEX_TMP: &str = "index.tmp";
const MAGIC: [u8; 8] = *b"SSNDIDX4";
const MAGIC_V3: [u8; 8] = *b"SSNDIDX3";
const MAGIC_V2: [u8; 8] = *b"SSNDIDX2";
const MAGIC_V1: [u8; 8] = *b"SSNDIDX1";
const HEADER_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapSession {
    pub state: SessionState,
    /// Where the session's latest state record is.
    pub state_loc: Loc,
    pub checkpoints: Vec<CkptEntry>,
    pub keys: Vec<(String, KeyEntry)>,
    /// By checkpoint number, each list in the order first written.
    pub attachments: Vec<(u64, Vec<AttachEntry>)>,
}

impl From<SnapSession> for IndexedSession {
    fn from(s: SnapSession) -> Self {
        IndexedSession {
            state: s.state,
            state_loc: s.state_loc,
            checkpoints: s.checkpoints,
            keys: s.keys,
            attachments: s.attachments,
        }
    }
}

impl From<IndexedSession> for SnapSession {
    fn from(s: IndexedSession) -> Self {
        SnapSession {
            state: s.state,
            state_loc: s.state_loc,
            checkpoints: s.checkpoints,
            keys: s.keys,
            attachments: s.attachments,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The log position this snapshot covers up to (exclusive).
    pub segment: u32,
    pub offset: u64,
    pub sessions: Vec<SnapSession>,
    /// The live chunks, and the chunks of each retained chunked checkpoint.
    pub chunks: Vec<SnapChunk>,
    pub manifests: Vec<(Loc, Manifest)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the index: {0}")]
    Io(#[from] io::Error),
    #[error("the index is damaged: {0}")]
    Damaged(String),
}

/// Replaces the index with `snap`. On error the old index stays (or, if the error came after
/// the rename, the new one, which may not survive a crash), and no temp file is left.
/// Returns the file's size.
pub fn write(dir: &Path, snap: &Snapshot) -> io::Result<u64> {
    let body = codec::encode(snap).map_err(io::Error::other)?;
    let tmp = dir.join(INDEX_TMP);
    within(scope::sessiond_io_snapshot, || {
        let written = File::create(&tmp).and_then(|mut f| {
            let mut header = Vec::with_capacity(HEADER_LEN);
            header.extend_from_slice(&MAGIC);
            header.extend_from_slice(&(body.len() as u64).to_le_bytes());
            header.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            f.write_all(&header)?;
            f.write_all(&body)?;
            f.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, dir.join(INDEX_FILE))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fsync_dir(dir)?;
        Ok((HEADER_LEN + body.len()) as u64)
    })
}

/// The snapshot, `None` if there is none.
pub fn read(dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
    let bytes = match fs::read(dir.join(INDEX_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let magic = bytes.get(..8).unwrap_or_default();
    if bytes.len() < HEADER_LEN
        || ![MAGIC, MAGIC_V3, MAGIC_V2, MAGIC_V1]
            .iter()
            .any(|m| m == magic)
    {
        return Err(SnapshotError::Damaged("bad magic or short file".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len);
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let body = &bytes[HEADER_LEN..];
    if body.len() as u64 != len {
        return Err(SnapshotError::Damaged(format!(
            "body is {} bytes, header says {len}",
            body.len()
        )));
    }
    if crc32c::crc32c(body) != crc {
        return Err(SnapshotError::Damaged("checksum mismatch".into()));
    }
    let damaged = |e: codec::CodecError| SnapshotError::Damaged(e.to_string());
    if bytes[..8] == MAGIC_V1 {
        return v1::upgrade(codec::decode(body).map_err(damaged)?).map(Some);
    }
    if bytes[..8] == MAGIC_V2 {
        return Ok(Some(v2::upgrade(codec::decode(body).map_err(damaged)?)));
    }
    if bytes[..8] == MAGIC_V3 {
        let v3::Index {
            segment,
            offset,
            sessions,
        } = codec::decode(body).map_err(damaged)?;
        return Ok(Some(Snapshot {
            segment,
            offset,
            sessions,
            chunks: Vec::new(),
            manifests: Vec::new(),
        }));
    }
    codec::decode(body).map(Some).map_err(damaged)
}

/// The third format (no chunks), read to upgrade a state directory in place.
mod v3 {
    use serde::Deserialize;

    use super::SnapSession;

    #[derive(Deserialize)]
    pub struct Index {
        pub segment: u32,
        pub offset: u64,
        pub sessions: Vec<SnapSession>,
    }
}

/// The second format (no keys, no attachments), read to upgrade a state directory in place.
mod v2 {
    use serde::Deserialize;

    use super::{SnapSession, Snapshot};
    use crate::model::{CkptEntry, Loc, SessionState};

    #[derive(Deserialize)]
    pub struct Session {
        pub state: SessionState,
        pub state_loc: Loc,
        pub checkpoints: Vec<CkptEntry>,
    }

    #[derive(Deserialize)]
    pub struct Index {
        segment: u32,
        offset: u64,
        sessions: Vec<Session>,
    }

    pub fn upgrade(old: Index) -> Snapshot {
        let sessions = old
            .sessions
            .into_iter()
            .map(|s| SnapSession {
                state: s.state,
                state_loc: s.state_loc,
                checkpoints: s.checkpoints,
                keys: Vec::new(),
                attachments: Vec::new(),
            })
            .collect();
        Snapshot {
            segment: old.segment,
            offset: old.offset,
            sessions,
            chunks: Vec::new(),
            manifests: Vec::new(),
        }
    }
}

/// The first format, read to upgrade a state directory in place.
mod v1 {
    use serde::Deserialize;

    use super::{SnapSession, Snapshot, SnapshotError};
    use crate::model::{CkptEntry, Loc, SessionState};

    #[derive(Deserialize)]
    struct Entry {
        number: u64,
        _created_at: i64,
        loc: Loc,
    }

    #[derive(Deserialize)]
    struct Session {
        state: SessionState,
        state_loc: Loc,
        checkpoints: Vec<Entry>,
    }

    #[derive(Deserialize)]
    pub struct Index {
        segment: u32,
        offset: u64,
        sessions: Vec<Session>,
    }

    pub fn upgrade(old: Index) -> Result<Snapshot, SnapshotError> {
        let sessions = old
            .sessions
            .into_iter()
            .map(|s| {
                let checkpoints = s
                    .checkpoints
                    .into_iter()
                    .map(|e| CkptEntry::new(e.number, e.loc))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        SnapshotError::Damaged("an entry lies beyond 4 GiB in a segment".into())
                    })?;
                Ok(SnapSession {
                    state: s.state,
                    state_loc: s.state_loc,
                    checkpoints,
                    keys: Vec::new(),
                    attachments: Vec::new(),
                })
            })
            .collect::<Result<_, SnapshotError>>()?;
        Ok(Snapshot {
            segment: old.segment,
            offset: old.offset,
            sessions,
            chunks: Vec::new(),
            manifests: Vec::new(),
        })
    }
}
