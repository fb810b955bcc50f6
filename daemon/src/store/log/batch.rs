//! A batch's records, as the log writes them: each unit's records (a group marker first when
//! it has more than one), a large checkpoint payload as the chunks the log does not hold yet
//! followed by a chunked checkpoint record, and what each record is, so that once the batch
//! is durable the chunks and places can be noted.

use std::collections::HashSet;

use super::chunks::{ChunkKey, Chunks, Manifest};
use super::record::{self, ChunkHeader, ChunkedRef, RecordRef};
use super::writer::Pending;
use crate::model::{Change, CheckedPayload};
use crate::store::chunking::{self, ChunkRef};
use crate::store::Unit;

/// What one record of the batch is.
pub enum Kind {
    /// A group's marker: no change, no place returned.
    Marker,
    Chunk(ChunkHeader),
    /// The record of a change; for a chunked checkpoint, its payload's length and chunks.
    Change(Option<(u64, Manifest)>),
}

/// A large payload cut into chunks, with the stored bytes of those the log lacks.
struct Cut {
    chunks: Vec<ChunkRef>,
    new: Vec<(ChunkHeader, Vec<u8>)>,
}

/// A payload's user, its chunks, and their bytes in it.
type Pieces<'a> = (u32, Vec<ChunkRef>, Vec<&'a [u8]>);

/// The batch, encoded: owns the chunks' stored bytes the records borrow.
pub struct Batch {
    cuts: Vec<Option<Cut>>,
}

impl Batch {
    /// Cuts the large payloads of `units` (when `chunking`) and finds, in `chunks`, which of
    /// their chunks must be written.
    pub fn cut(units: &[Unit<'_>], chunks: &std::sync::Mutex<Chunks>, chunking: bool) -> Batch {
        let mut pieces: Vec<Option<Pieces<'_>>> = Vec::new();
        for unit in units {
            for (change, payload) in unit.changes {
                let cut = match change {
                    Change::Checkpoint { meta, .. }
                        if chunking && chunking::chunked(payload.bytes.len()) =>
                    {
                        let split = chunking::split(&payload.bytes);
                        let refs = split.iter().map(|p| p.chunk).collect();
                        let bytes = split.iter().map(|p| p.bytes).collect();
                        Some((meta.uid, refs, bytes))
                    }
                    _ => None,
                };
                pieces.push(cut);
            }
        }
        // Which chunks to write: those the log lacks, once in the batch.
        let mut planned: HashSet<ChunkKey> = HashSet::new();
        let wanted: Vec<Vec<bool>> = {
            let chunks = chunks.lock().unwrap_or_else(|p| p.into_inner());
            pieces
                .iter()
                .map(|p| match p {
                    Some((uid, refs, _)) => refs
                        .iter()
                        .map(|r| {
                            let key = (*uid, r.hash);
                            !chunks.usable(&key) && planned.insert(key)
                        })
                        .collect(),
                    None => Vec::new(),
                })
                .collect()
        };
        let cuts = pieces
            .into_iter()
            .zip(wanted)
            .map(|(p, wanted)| {
                let (uid, refs, bytes) = p?;
                let new = refs
                    .iter()
                    .zip(bytes)
                    .zip(wanted)
                    .filter(|(_, w)| *w)
                    .map(|((r, b), _)| {
                        let (stored, compressed) = chunking::pack(b);
                        let header = ChunkHeader {
                            uid,
                            chunk: *r,
                            compressed,
                        };
                        (header, stored)
                    })
                    .collect();
                Some(Cut { chunks: refs, new })
            })
            .collect();
        Batch { cuts }
    }

    /// The records to append, and what each one is.
    pub fn records<'a>(
        &'a self,
        units: &'a [Unit<'a>],
    ) -> Result<(Vec<Pending<'a>>, Vec<Kind>), String> {
        let encoding = |e: record::RecordError| format!("cannot encode a log record: {e}");
        let empty = crc32c::crc32c(&[]);
        let mut pending = Vec::new();
        let mut kinds = Vec::new();
        let mut cuts = self.cuts.iter();
        for unit in units {
            let cuts: Vec<&Option<Cut>> = cuts.by_ref().take(unit.changes.len()).collect();
            let records: usize = cuts
                .iter()
                .map(|c| 1 + c.as_ref().map_or(0, |c| c.new.len()))
                .sum();
            if records > 1 {
                let records = u32::try_from(records)
                    .map_err(|_| format!("a mutation of {records} records is too large"))?;
                let marker = RecordRef::Group { records };
                pending.push(Pending {
                    head: record::encode_with_crc(&marker, &[], empty).map_err(encoding)?,
                    payload: &[],
                });
                kinds.push(Kind::Marker);
            }
            for ((change, payload), cut) in unit.changes.iter().zip(cuts) {
                let Some(cut) = cut else {
                    let head = record::encode_with_crc(
                        &RecordRef::from(change),
                        &payload.bytes,
                        payload.crc,
                    )
                    .map_err(encoding)?;
                    pending.push(Pending {
                        head,
                        payload: &payload.bytes,
                    });
                    kinds.push(Kind::Change(None));
                    continue;
                };
                for (header, stored) in &cut.new {
                    let head = record::encode_with_crc(
                        &RecordRef::Chunk(header),
                        stored,
                        crc32c::crc32c(stored),
                    )
                    .map_err(encoding)?;
                    pending.push(Pending {
                        head,
                        payload: stored,
                    });
                    kinds.push(Kind::Chunk(*header));
                }
                let (head, manifest) = chunked_record(change, payload, &cut.chunks)?;
                pending.push(Pending { head, payload: &[] });
                kinds.push(Kind::Change(Some((payload.bytes.len() as u64, manifest))));
            }
        }
        Ok((pending, kinds))
    }
}

fn chunked_record(
    change: &Change,
    payload: &CheckedPayload,
    chunks: &[ChunkRef],
) -> Result<(Vec<u8>, Manifest), String> {
    let Change::Checkpoint { meta, .. } = change else {
        return Err("only a checkpoint's payload is stored in chunks".into());
    };
    let header = RecordRef::Chunked(ChunkedRef {
        meta,
        payload_len: payload.bytes.len() as u64,
        payload_crc: payload.crc,
        chunks,
    });
    let head = record::encode_with_crc(&header, &[], crc32c::crc32c(&[]))
        .map_err(|e| format!("cannot encode a log record: {e}"))?;
    let manifest = Manifest {
        uid: meta.uid,
        chunks: chunks.iter().map(|c| c.hash).collect(),
    };
    Ok((head, manifest))
}
