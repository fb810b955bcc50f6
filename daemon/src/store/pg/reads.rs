//! Reads of the shared store from any thread but the runtime's: a row by its id, verified
//! against the checksum it was written with.

use deadpool_postgres::Pool;
use tokio::runtime::Handle;

use super::rows::{attachment_of, checkpoint_of, id_of};
use crate::model::{AttachMeta, CheckpointMeta, Loc};
use crate::store::{ReadError, Reads, Usage};

pub struct PgReads {
    pub(super) pool: Pool,
    pub(super) rt: Handle,
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
    fn row(&self, sql: &str, at: &Loc) -> Result<tokio_postgres::Row, ReadError> {
        let id = id_of(at);
        self.rt.block_on(async {
            let client = self.pool.get().await.map_err(failed)?;
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
        let row = self.row(
            "SELECT id, uid, name, number, created_at, meta, key, payload, payload_crc \
             FROM checkpoints WHERE id = $1",
            at,
        )?;
        let payload = verified(row.get(7), row.get(8))?;
        Ok((checkpoint_of(&row), payload))
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
        let bytes = self.rt.block_on(async {
            let client = self.pool.get().await.ok()?;
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .ok()?;
            Some(row.get::<_, i64>(0) as u64)
        });
        Usage {
            files: 0,
            bytes: bytes.unwrap_or(0),
            chunks: 0,
        }
    }
}
