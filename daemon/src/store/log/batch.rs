//! A batch's records, as the log writes them: each unit's records (a group marker first when
//! it has more than one), a large checkpoint payload as the chunks the log does not hold yet
//! followed by a chunked checkpoint record, and what each record is, so that once the batch
//! is durable the chunks and places can be noted.

use std::borrow::Cow;
use std::collections::HashSet;

use super::chunks::{ChunkKey, Chunks, Manifest};
use super::record::{self, ChunkHeader, ChunkedRef, RecordRef};
use super::writer::Pending;
use crate::chunking::{self, ChunkRef, Stored};
use crate::model::{Change, CheckedPayload};
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
struct Cut<'a> {
    chunks: Vec<ChunkRef>,
    /// With the stored bytes' checksum.
    new: Vec<(ChunkHeader, Cow<'a, [u8]>, u32)>,
}

/// A payload's chunks: each one's bytes in it, and its stored bytes if packed ahead.
struct Pieces<'a> {
    uid: u32,
    chunks: Vec<ChunkRef>,
    parts: Vec<(&'a [u8], Option<&'a Stored>)>,
}

fn pieces<'a>(uid: u32, payload: &'a CheckedPayload) -> Pieces<'a> {
    let bytes = &payload.bytes;
    match &payload.prepared {
        Some(p) => Pieces {
            uid,
            chunks: p.chunks.clone(),
            parts: p
                .chunks
                .iter()
                .zip(&p.parts)
                .map(|(c, (at, stored))| {
                    let piece = bytes.get(*at..*at + c.len as usize).unwrap_or_default();
                    (piece, Some(stored))
                })
                .collect(),
        },
        None => {
            let split = chunking::split(bytes);
            Pieces {
                uid,
                chunks: split.iter().map(|p| p.chunk).collect(),
                parts: split.iter().map(|p| (p.bytes, None)).collect(),
            }
        }
    }
}

/// The batch, encoded: holds the chunks' stored bytes the records borrow.
pub struct Batch<'a> {
    cuts: Vec<Option<Cut<'a>>>,
}

impl<'a> Batch<'a> {
    /// Cuts the large payloads of `units` (when `chunking`; those prepared ahead are cut
    /// already) and finds, in `chunks`, which of their chunks must be written.
    pub fn cut(units: &'a [Unit<'a>], chunks: &std::sync::Mutex<Chunks>, chunking: bool) -> Self {
        let changes = units.iter().map(|u| u.changes.len()).sum();
        let mut all: Vec<Option<Pieces<'a>>> = Vec::with_capacity(changes);
        for unit in units {
            for (change, payload) in unit.changes {
                all.push(match change {
                    Change::Checkpoint { meta, .. }
                        if chunking && chunking::chunked(payload.bytes.len()) && !payload.whole =>
                    {
                        Some(pieces(meta.uid, payload))
                    }
                    _ => None,
                });
            }
        }
        // Which chunks to write: those the log lacks, once in the batch.
        let mut planned: HashSet<ChunkKey> = HashSet::new();
        let wanted: Vec<Vec<bool>> = {
            let chunks = chunks.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .map(|p| match p {
                    Some(p) => p
                        .chunks
                        .iter()
                        .map(|r| {
                            let key = (p.uid, r.hash);
                            !chunks.usable(&key) && planned.insert(key)
                        })
                        .collect(),
                    None => Vec::new(),
                })
                .collect()
        };
        let cuts = all
            .into_iter()
            .zip(wanted)
            .map(|(p, wanted)| {
                let p = p?;
                let mut packer = chunking::Packer::default();
                let new = p
                    .chunks
                    .iter()
                    .zip(p.parts)
                    .zip(wanted)
                    .filter(|(_, w)| *w)
                    .map(|((r, (piece, stored)), _)| {
                        let (bytes, compressed, crc) =
                            chunking::stored_bytes(piece, stored, &mut packer);
                        let header = ChunkHeader {
                            uid: p.uid,
                            chunk: *r,
                            compressed,
                        };
                        (header, bytes, crc)
                    })
                    .collect();
                Some(Cut {
                    chunks: p.chunks,
                    new,
                })
            })
            .collect();
        Batch { cuts }
    }

    /// The records to append, and what each one is.
    pub fn records(
        &'a self,
        units: &'a [Unit<'a>],
    ) -> Result<(Vec<Pending<'a>>, Vec<Kind>), String> {
        let encoding = |e: record::RecordError| format!("cannot encode a log record: {e}");
        let empty = crc32c::crc32c(&[]);
        let mut pending = Vec::with_capacity(self.cuts.len());
        let mut kinds = Vec::with_capacity(self.cuts.len());
        let mut cuts = self.cuts.as_slice();
        for unit in units {
            let (these, rest) = cuts.split_at(unit.changes.len().min(cuts.len()));
            cuts = rest;
            let records: usize = these
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
            for ((change, payload), cut) in unit.changes.iter().zip(these) {
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
                for (header, stored, crc) in &cut.new {
                    let head = record::encode_with_crc(&RecordRef::Chunk(header), stored, *crc)
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
