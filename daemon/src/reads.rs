//! Reads: checkpoints and their history, from the cache of latest checkpoints when it holds
//! them, else through the store's reads on the blocking pool (never on an async worker).
//! A checkpoint damaged on disk is passed over for the newest intact one (and reported); one
//! the disk fails to read is refused `unavailable`, never answered with an older one.

use std::sync::Arc;

use sessiond_proto::{CheckpointInfo, ErrorKind, Reply, WireError};

use crate::cache::Cached;
use crate::health::Work;
use crate::model::{micros_to_time, CkptEntry, SessionKey};
use crate::state::DaemonState;
use crate::store::ReadError;

/// The latest checkpoint (or checkpoint `number`): from the cache when it holds it, which
/// needs no disk and no thread hop, else read and verified on the blocking pool.
pub async fn latest(
    state: &Arc<DaemonState>,
    uid: u32,
    name: &str,
    number: Option<u64>,
) -> Result<Option<CheckpointInfo>, WireError> {
    let latest = state.table().latest_checkpoint(uid, name)?;
    if let Some(latest) = latest.filter(|l| number.is_none_or(|n| n == l.number)) {
        let key = SessionKey::new(uid, name);
        if let Some(c) = state.cache.get(&key, &latest) {
            return Ok(Some(checkpoint_info(
                &c.entry,
                c.created_at,
                c.meta.clone(),
                Some(c.payload.clone()),
            )));
        }
    }
    let entries = state.table().checkpoints(uid, name)?;
    let shared = state.clone();
    let name = name.to_string();
    blocking(move || {
        let info = read_checkpoint(&shared, uid, &name, &entries, number)?;
        if let (Some(i), Some(last)) = (&info, entries.last()) {
            let payload = i.payload.as_ref().map(|p| &p.0);
            let key = SessionKey::new(uid, name);
            if let Some(p) = payload.filter(|p| {
                i.number == last.number
                    && i.skipped_corrupt.is_empty()
                    && shared.cache.admits(&key, p.len())
            }) {
                let cached = Cached {
                    entry: *last,
                    created_at: i.created_at.timestamp_micros(),
                    meta: i.meta.clone(),
                    payload: p.clone(),
                };
                shared.cache.put(key, cached);
            }
        }
        Ok(info)
    })
    .await
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WireError::internal(format!("read task failed: {e}")))?
}

fn checkpoint_info(
    entry: &CkptEntry,
    created_at: i64,
    meta: sessiond_proto::Meta,
    payload: Option<Vec<u8>>,
) -> CheckpointInfo {
    CheckpointInfo {
        number: entry.number,
        size: u64::from(entry.payload_len()),
        created_at: micros_to_time(created_at),
        meta,
        payload: payload.map(sessiond_proto::Payload),
        skipped_corrupt: Vec::new(),
    }
}

/// The reply to a read the disk failed, reported to the store's health.
fn read_failed(shared: &DaemonState, name: &str, error: &str) -> WireError {
    shared.health.failed(Work::Read, &error);
    WireError::unavailable(format!(
        "cannot read a checkpoint of session {name:?} from disk: {error}"
    ))
}

/// Reads one checkpoint (verified), with its meta from the record header. Compaction may
/// move a checkpoint (and delete its old segment) between the index lookup and the read: a
/// failed read is retried once at the checkpoint's current place before it counts.
fn read_one(
    shared: &DaemonState,
    uid: u32,
    name: &str,
    entry: &CkptEntry,
) -> Result<CheckpointInfo, ReadError> {
    read_at(shared, entry).or_else(|e| {
        let moved = shared
            .table()
            .checkpoints(uid, name)
            .ok()
            .and_then(|all| all.into_iter().find(|c| c.number == entry.number))
            .filter(|c| c.loc() != entry.loc());
        match moved {
            Some(current) => read_at(shared, &current),
            None => Err(e),
        }
    })
}

fn read_at(shared: &DaemonState, entry: &CkptEntry) -> Result<CheckpointInfo, ReadError> {
    let (h, payload) = shared.reads.read(&entry.loc())?;
    if h.number != entry.number {
        return Err(ReadError::Damaged(
            "the record at the indexed place is another checkpoint".into(),
        ));
    }
    Ok(checkpoint_info(entry, h.created_at, h.meta, Some(payload)))
}

/// The latest intact checkpoint (reporting the damaged ones passed over), or a given number.
pub fn read_checkpoint(
    shared: &DaemonState,
    uid: u32,
    name: &str,
    entries: &[CkptEntry],
    number: Option<u64>,
) -> Result<Option<CheckpointInfo>, WireError> {
    if let Some(n) = number {
        let entry = entries.iter().find(|e| e.number == n).ok_or_else(|| {
            let retained = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => format!("retained: {} to {}", a.number, b.number),
                _ => "it has none".to_string(),
            };
            WireError::new(
                ErrorKind::NotFound,
                format!("session {name:?} has no checkpoint {n} ({retained})"),
            )
        })?;
        return match read_one(shared, uid, name, entry) {
            Ok(info) => {
                shared.health.succeeded(Work::Read);
                Ok(Some(info))
            }
            Err(ReadError::Failed(e)) => Err(read_failed(shared, name, &e)),
            Err(ReadError::Damaged(e)) => {
                tracing::error!(session = %name, number = n, error = %e, "damaged checkpoint");
                Err(WireError::internal(format!(
                    "checkpoint {n} of session {name:?} is damaged on disk: {e}"
                )))
            }
        };
    }
    let mut skipped = Vec::new();
    for entry in entries.iter().rev() {
        match read_one(shared, uid, name, entry) {
            Ok(mut info) => {
                shared.health.succeeded(Work::Read);
                info.skipped_corrupt = skipped;
                return Ok(Some(info));
            }
            // Never an older checkpoint served because the disk failed to read a newer one.
            Err(ReadError::Failed(e)) => return Err(read_failed(shared, name, &e)),
            Err(ReadError::Damaged(e)) => {
                tracing::error!(session = %name, number = entry.number, error = %e, "damaged checkpoint; falling back to the previous one");
                skipped.push(entry.number);
            }
        }
    }
    if skipped.is_empty() {
        Ok(None)
    } else {
        Err(WireError::internal(format!(
            "every retained checkpoint of session {name:?} is damaged on disk: {skipped:?}"
        )))
    }
}

pub fn history(
    shared: &DaemonState,
    name: &str,
    entries: &[CkptEntry],
) -> Result<Reply, WireError> {
    let mut list = Vec::with_capacity(entries.len());
    for e in entries {
        let (created_at, meta) = match shared.reads.read_meta(&e.loc()) {
            Ok(h) => (h.created_at, h.meta),
            Err(ReadError::Failed(err)) => return Err(read_failed(shared, name, &err)),
            Err(ReadError::Damaged(err)) => {
                // Listed all the same (a read of it reports the damage), without its time.
                tracing::warn!(number = e.number, error = %err, "cannot read a checkpoint's header for history");
                (0, sessiond_proto::Meta::new())
            }
        };
        list.push(checkpoint_info(e, created_at, meta, None));
    }
    Ok(Reply::Checkpoints(list))
}
