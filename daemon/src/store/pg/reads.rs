//! Reads of the shared store from any thread but the runtime's: a row by its id, verified
//! against the checksum it was written with.

use deadpool_postgres::Pool;
use tokio::runtime::Handle;

use std::collections::HashMap;

use super::rows::{attachment_of, checkpoint_of, id_of};
use crate::chunking::{self, ChunkRef};
use crate::model::{AttachMeta, CheckedPayload, CheckpointMeta, Loc, SessionKey};
use crate::store::yields::Cutting;
use crate::store::{ReadError, Reads, Usage};

pub struct PgReads {
    pub(super) pool: Pool,
    /// For the reads by id: a plan made while the table was small must not scan it for good
    /// ([`super::connect::keyed_pool`]).
    pub(super) by_id: Pool,
    pub(super) rt: Handle,
    /// Whether and how large payloads are written in chunks.
    pub(super) cutting: Cutting,
}

/// A chunked checkpoint row's chunk list: 16-byte hash and 4-byte length (LE) each.
pub fn chunk_list(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 20);
    for c in chunks {
        out.extend_from_slice(&c.hash);
        out.extend_from_slice(&c.len.to_le_bytes());
    }
    out
}

/// The chunks a row's chunk list names.
pub fn parse_chunk_list(list: &[u8]) -> Result<Vec<ChunkRef>, ReadError> {
    if !list.len().is_multiple_of(20) {
        return Err(ReadError::Damaged("its chunk list is cut short".into()));
    }
    Ok(list
        .chunks_exact(20)
        .map(|c| {
            let mut hash = [0u8; 16];
            hash.copy_from_slice(&c[..16]);
            ChunkRef {
                hash,
                len: u32::from_le_bytes([c[16], c[17], c[18], c[19]]),
            }
        })
        .collect())
}

fn failed(e: impl std::fmt::Display) -> ReadError {
    ReadError::Failed(format!("the database: {e}"))
}

/// A payload, unless it is not what was written.
fn verified(payload: Vec<u8>, crc: i64) -> Result<Vec<u8>, ReadError> {
    if i64::from(crc32c::crc32c(&payload)) != crc {
        return Err(ReadError::Damaged(
            "payload checksum mismatch in the database".into(),
        ));
    }
    Ok(payload)
}

fn gone() -> ReadError {
    // Removed since it was indexed (retention, a delete): what a read of it falls back on.
    ReadError::Damaged("the row is no longer in the database".into())
}

impl PgReads {
    /// A chunked checkpoint's payload from its chunks (a row per distinct chunk it uses:
    /// hash, compression flag, data and checksum in columns 10 to 13), verified.
    fn assemble(rows: &[tokio_postgres::Row], list: &[u8], crc: i64) -> Result<Vec<u8>, ReadError> {
        let chunks = parse_chunk_list(list)?;
        let found: HashMap<Vec<u8>, (bool, Vec<u8>, i64)> = rows
            .iter()
            .filter_map(|r| {
                let hash: Option<Vec<u8>> = r.get(10);
                Some((hash?, (r.get(11), r.get(12), r.get(13))))
            })
            .collect();
        let mut out = Vec::new();
        for c in &chunks {
            let Some((compressed, data, chunk_crc)) = found.get(&c.hash[..]) else {
                return Err(ReadError::Damaged("a chunk it uses is missing".into()));
            };
            if i64::from(crc32c::crc32c(data)) != *chunk_crc {
                return Err(ReadError::Damaged(
                    "a chunk's checksum does not match in the database".into(),
                ));
            }
            out.extend(chunking::unpack(data, *compressed, c).map_err(ReadError::Damaged)?);
        }
        verified(out, crc)
    }

    fn rows(&self, sql: &str, at: &Loc) -> Result<Vec<tokio_postgres::Row>, ReadError> {
        let id = id_of(at);
        self.rt.block_on(async {
            let client = self.by_id.get().await.map_err(failed)?;
            let stmt = client.prepare_cached(sql).await.map_err(failed)?;
            client.query(&stmt, &[&id]).await.map_err(failed)
        })
    }

    fn row(&self, sql: &str, at: &Loc) -> Result<tokio_postgres::Row, ReadError> {
        let id = id_of(at);
        self.rt.block_on(async {
            let client = self.by_id.get().await.map_err(failed)?;
            let stmt = client.prepare_cached(sql).await.map_err(failed)?;
            client
                .query_opt(&stmt, &[&id])
                .await
                .map_err(failed)?
                .ok_or_else(gone)
        })
    }
}

impl Reads for PgReads {
    fn read(&self, at: &Loc) -> Result<(CheckpointMeta, Vec<u8>), ReadError> {
        // The row and, for a chunked checkpoint, its chunks (through its links): one round
        // trip, a row per chunk.
        let rows = self.rows(
            "SELECT c.id, c.uid, c.name, c.number, c.created_at, c.meta, c.key, c.payload, \
                 c.payload_crc, c.chunks, k.hash, k.compressed, k.data, k.crc \
             FROM checkpoints c LEFT JOIN checkpoint_chunks l ON l.checkpoint_id = c.id \
                 LEFT JOIN chunks k ON k.uid = l.uid AND k.hash = l.hash \
             WHERE c.id = $1",
            at,
        )?;
        let row = rows.first().ok_or_else(gone)?;
        let payload = match row.get::<_, Option<Vec<u8>>>(9) {
            Some(list) => Self::assemble(&rows, &list, row.get(8))?,
            None => verified(row.get(7), row.get(8))?,
        };
        Ok((checkpoint_of(row), payload))
    }

    fn read_meta(&self, at: &Loc) -> Result<CheckpointMeta, ReadError> {
        let row = self.row(
            "SELECT id, uid, name, number, created_at, meta, key FROM checkpoints WHERE id = $1",
            at,
        )?;
        Ok(checkpoint_of(&row))
    }

    fn read_attachment(&self, at: &Loc) -> Result<(AttachMeta, Vec<u8>), ReadError> {
        let row = self.row(
            "SELECT id, uid, name, number, attach_key, meta, payload, payload_crc \
             FROM attachments WHERE id = $1",
            at,
        )?;
        let payload = verified(row.get(6), row.get(7))?;
        Ok((attachment_of(&row), payload))
    }

    fn usage(&self) -> Usage {
        let sizes = self.rt.block_on(async {
            let client = self.pool.get().await.ok()?;
            let row = client
                .query_one(
                    "SELECT pg_database_size(current_database()), (SELECT count(*) FROM chunks)",
                    &[],
                )
                .await
                .ok()?;
            Some((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
        });
        let (bytes, chunks) = sizes.unwrap_or((0, 0));
        Usage {
            files: 0,
            bytes,
            chunks,
        }
    }

    fn prepares(&self, uid: u32, name: &str, len: usize) -> bool {
        self.cutting.prepares(uid, name, len)
    }

    fn prepare(&self, uid: u32, name: &str, payload: &mut CheckedPayload) {
        // Every chunk packed: the database may lack any (it is not asked before a write).
        self.cutting
            .prepare(uid, name, payload, |refs| vec![false; refs.len()]);
    }

    fn stored_bytes(&self, session: Option<&SessionKey>, _records: &[Loc]) -> u64 {
        let (uid, name) = match session {
            Some(k) => (Some(i64::from(k.uid)), Some(k.name.as_str())),
            None => (None, None),
        };
        let sum = self.rt.block_on(async {
            let client = self.pool.get().await.ok()?;
            // The rows' own payloads, and each distinct chunk their checkpoints use once.
            let row = client
                .query_one(
                    "WITH c AS (SELECT id, payload FROM checkpoints \
                         WHERE ($1::bigint IS NULL OR (uid = $1 AND name = $2))), \
                     a AS (SELECT payload FROM attachments \
                         WHERE ($1::bigint IS NULL OR (uid = $1 AND name = $2))) \
                     SELECT ((SELECT coalesce(sum(octet_length(payload)), 0) FROM c) \
                         + (SELECT coalesce(sum(octet_length(payload)), 0) FROM a) \
                         + (SELECT coalesce(sum(octet_length(k.data)), 0) FROM chunks k \
                             WHERE (k.uid, k.hash) IN (SELECT l.uid, l.hash \
                                 FROM checkpoint_chunks l JOIN c ON c.id = l.checkpoint_id)))::bigint",
                    &[&uid, &name],
                )
                .await
                .ok()?;
            Some(row.get::<_, i64>(0) as u64)
        });
        sum.unwrap_or(0)
    }
}
