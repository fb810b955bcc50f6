//! Reads: checkpoints, their attachments and their history, from the cache of latest
//! checkpoints when it holds them, else through the store's reads on the blocking pool (never
//! on an async worker). A checkpoint damaged on disk is passed over for the newest intact one
//! (and reported); one the disk fails to read is refused `unavailable`, never answered with
//! an older one.

use std::sync::Arc;

use sessiond_proto::{
    Attachment, CheckpointInfo, CheckpointRef, HistoryRequest, Meta, Payload, Reply, WireError,
};

use crate::cache::Cached;
use crate::health::Work;
use crate::model::{micros_to_time, SessionKey};
use crate::state::DaemonState;
use crate::store::ReadError;
use crate::table::{meta_matches, Retained};

/// A checkpoint (`None`: the latest intact one) with, if asked, its attachments: from the
/// cache when it holds it and there are no attachments to read, which needs no disk and no
/// thread hop, else read and verified (see [`run`]; `alone`: the caller's connection is
/// the only one).
pub async fn get(
    state: &Arc<DaemonState>,
    uid: u32,
    name: &str,
    which: Option<CheckpointRef>,
    attachments: bool,
    alone: bool,
) -> Result<Option<CheckpointInfo>, WireError> {
    let found = match find(state, uid, name, which.as_ref(), attachments)? {
        Found::Answer(answer) => return Ok(answer),
        Found::OnDisk(found) => found,
    };
    let key = SessionKey::new(uid, name);
    let shared = state.clone();
    run(state, alone, move || {
        let Some(info) = (match which {
            Some(_) => read_named(&shared, &key, &found, attachments).map(Some)?,
            None => read_latest(&shared, &key, attachments)?,
        }) else {
            return Ok(None);
        };
        let last = shared.table().find(uid, &key.name, None, false)?;
        if let (Some(last), Some(p)) = (last, &info.payload) {
            if info.number == last.entry.number
                && info.skipped_corrupt.is_empty()
                && shared.cache.admits(&key, p.0.len())
            {
                let cached = Cached {
                    entry: last.entry,
                    created_at: info.created_at.timestamp_micros(),
                    meta: info.meta.clone(),
                    payload: p.0.clone(),
                };
                shared.cache.put(key, cached);
            }
        }
        Ok(Some(info))
    })
    .await
}

/// [`get`] answered from memory alone: `None` when the checkpoint must be read from the
/// store.
pub fn get_cached(
    state: &DaemonState,
    uid: u32,
    name: &str,
    which: Option<&CheckpointRef>,
    attachments: bool,
) -> Option<Result<Option<CheckpointInfo>, WireError>> {
    match find(state, uid, name, which, attachments) {
        Ok(Found::Answer(answer)) => Some(Ok(answer)),
        Ok(Found::OnDisk(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

enum Found {
    /// The answer, from the table (no checkpoint) or the cache.
    Answer(Option<CheckpointInfo>),
    /// The checkpoint is on disk only.
    OnDisk(Retained),
}

fn find(
    state: &DaemonState,
    uid: u32,
    name: &str,
    which: Option<&CheckpointRef>,
    attachments: bool,
) -> Result<Found, WireError> {
    let Some(found) = state.table().find(uid, name, which, attachments)? else {
        return Ok(Found::Answer(None));
    };
    if found.attachments.is_empty() {
        let key = SessionKey::new(uid, name);
        if let Some(c) = state.cache.get(&key, &found.entry) {
            let mut info = info_of(
                &found,
                c.created_at,
                c.meta.clone(),
                Some(c.payload.clone()),
            );
            info.attachments = attachments.then(Vec::new);
            return Ok(Found::Answer(Some(info)));
        }
    }
    Ok(Found::OnDisk(found))
}

/// Runs a read of the store: on the blocking pool, never on the async worker every
/// connection shares; but in place when the caller's connection is the only one (`alone`)
/// and the store reads local files, where the two wake-ups of the hand-off would cost it
/// more than the read itself and nobody else waits on the worker.
pub async fn run<T: Send + 'static>(
    state: &DaemonState,
    alone: bool,
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    if alone && state.reads.reads_in_place() {
        f()
    } else {
        blocking(f).await
    }
}

pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WireError::internal(format!("read task failed: {e}")))?
}

fn info_of(r: &Retained, created_at: i64, meta: Meta, payload: Option<Vec<u8>>) -> CheckpointInfo {
    CheckpointInfo {
        number: r.entry.number,
        size: u64::from(r.entry.payload_len()),
        created_at: micros_to_time(created_at),
        meta,
        payload: payload.map(Payload),
        skipped_corrupt: Vec::new(),
        key: r.key.clone(),
        existing: false,
        attachments: None,
    }
}

/// The reply to a read the disk failed, reported to the store's health.
fn read_failed(shared: &DaemonState, name: &str, error: &str) -> WireError {
    shared.health.failed(Work::Read, &error);
    WireError::unavailable(format!(
        "cannot read a checkpoint of session {name:?} from disk: {error}"
    ))
}

fn damaged(name: &str, number: u64, error: &str) -> WireError {
    tracing::error!(session = %name, number, error = %error, "damaged checkpoint");
    WireError::internal(format!(
        "checkpoint {number} of session {name:?} is damaged on disk: {error}"
    ))
}

/// How one retained checkpoint is read.
#[derive(Clone, Copy)]
struct Wanted {
    payload: bool,
    attachments: bool,
}

/// Reads one checkpoint (verified), with its meta from the record. Compaction may move a
/// record (and delete its old segment) between the index lookup and the read: a failed read
/// is retried once at the checkpoint's current place before it counts.
fn read_one(
    shared: &DaemonState,
    key: &SessionKey,
    r: &Retained,
    wanted: Wanted,
) -> Result<CheckpointInfo, ReadError> {
    read_at(shared, r, wanted).or_else(|e| {
        let which = CheckpointRef::Number(r.entry.number);
        let moved = shared
            .table()
            .find(key.uid, &key.name, Some(&which), wanted.attachments)
            .ok()
            .flatten()
            .filter(|now| now != r);
        match moved {
            Some(current) => read_at(shared, &current, wanted),
            None => Err(e),
        }
    })
}

fn read_at(
    shared: &DaemonState,
    r: &Retained,
    wanted: Wanted,
) -> Result<CheckpointInfo, ReadError> {
    let (h, payload) = if wanted.payload {
        let (h, p) = shared.reads.read(&r.entry.loc())?;
        (h, Some(p))
    } else {
        (shared.reads.read_meta(&r.entry.loc())?, None)
    };
    if h.number != r.entry.number {
        return Err(ReadError::Damaged(
            "the record at the indexed place is another checkpoint".into(),
        ));
    }
    let mut info = info_of(r, h.created_at, h.meta, payload);
    if wanted.attachments {
        let mut list = Vec::with_capacity(r.attachments.len());
        for a in &r.attachments {
            let (meta, payload) = shared.reads.read_attachment(&a.loc)?;
            list.push(Attachment {
                attach_key: a.attach_key.clone(),
                meta: meta.meta,
                size: payload.len() as u64,
                payload: Some(Payload(payload)),
            });
        }
        info.attachments = Some(list);
    }
    Ok(info)
}

/// A checkpoint named by number or key.
fn read_named(
    shared: &DaemonState,
    key: &SessionKey,
    r: &Retained,
    attachments: bool,
) -> Result<CheckpointInfo, WireError> {
    let wanted = Wanted {
        payload: true,
        attachments,
    };
    match read_one(shared, key, r, wanted) {
        Ok(info) => {
            shared.health.succeeded(Work::Read);
            Ok(info)
        }
        Err(ReadError::Failed(e)) => Err(read_failed(shared, &key.name, &e)),
        Err(ReadError::Damaged(e)) => Err(damaged(&key.name, r.entry.number, &e)),
    }
}

/// The latest intact checkpoint, reporting the damaged ones passed over.
pub fn read_latest(
    shared: &DaemonState,
    key: &SessionKey,
    attachments: bool,
) -> Result<Option<CheckpointInfo>, WireError> {
    let retained = shared.table().retained(key.uid, &key.name, attachments)?;
    let wanted = Wanted {
        payload: true,
        attachments,
    };
    let mut skipped = Vec::new();
    for r in retained.iter().rev() {
        match read_one(shared, key, r, wanted) {
            Ok(mut info) => {
                shared.health.succeeded(Work::Read);
                info.skipped_corrupt = skipped;
                return Ok(Some(info));
            }
            // Never an older checkpoint served because the disk failed to read a newer one.
            Err(ReadError::Failed(e)) => return Err(read_failed(shared, &key.name, &e)),
            Err(ReadError::Damaged(e)) => {
                tracing::error!(session = %key.name, number = r.entry.number, error = %e, "damaged checkpoint; falling back to the previous one");
                skipped.push(r.entry.number);
            }
        }
    }
    if skipped.is_empty() {
        Ok(None)
    } else {
        Err(WireError::internal(format!(
            "every retained checkpoint of session {:?} is damaged on disk: {skipped:?}",
            key.name
        )))
    }
}

/// Where a `before`/`after` bound falls: a number, or a key of a retained checkpoint.
fn bound(
    retained: &[Retained],
    name: &str,
    which: &Option<CheckpointRef>,
) -> Result<Option<u64>, WireError> {
    match which {
        None => Ok(None),
        Some(CheckpointRef::Number(n)) => Ok(Some(*n)),
        Some(CheckpointRef::Key(k)) => retained
            .iter()
            .find(|r| r.key.as_deref() == Some(k))
            .map(|r| Some(r.entry.number))
            .ok_or_else(|| {
                WireError::new(
                    sessiond_proto::ErrorKind::NotFound,
                    format!("session {name:?} retains no checkpoint with key {k:?}"),
                )
            }),
    }
}

/// `history`: the retained checkpoints between the bounds, in the order asked, those whose
/// meta matches, up to the limit. Each entry's meta is read from its record (the table keeps
/// none); payloads and attachments only when asked for.
pub fn history(shared: &DaemonState, uid: u32, r: &HistoryRequest) -> Result<Reply, WireError> {
    let key = SessionKey::new(uid, r.name.clone());
    let retained = shared.table().retained(uid, &r.name, r.attachments)?;
    let before = bound(&retained, &r.name, &r.before)?;
    let after = bound(&retained, &r.name, &r.after)?;
    let in_range = |c: &&Retained| {
        before.is_none_or(|b| c.entry.number < b) && after.is_none_or(|a| c.entry.number > a)
    };
    let ordered: Box<dyn Iterator<Item = &Retained>> = if r.reverse {
        Box::new(retained.iter().rev().filter(in_range))
    } else {
        Box::new(retained.iter().filter(in_range))
    };
    let limit = r.limit.map_or(usize::MAX, |l| l as usize);
    let wanted = Wanted {
        payload: r.payloads,
        attachments: r.attachments,
    };
    let mut list = Vec::new();
    for c in ordered {
        if list.len() >= limit {
            break;
        }
        let info = match read_one(shared, &key, c, wanted) {
            Ok(info) => info,
            Err(ReadError::Failed(err)) => return Err(read_failed(shared, &r.name, &err)),
            Err(ReadError::Damaged(err)) => {
                // Listed all the same (a read of it reports the damage), without its time,
                // meta or payload; never as matching a filter.
                tracing::warn!(number = c.entry.number, error = %err, "cannot read a checkpoint for history");
                if !r.meta.is_empty() {
                    continue;
                }
                info_of(c, 0, Meta::new(), None)
            }
        };
        if meta_matches(&info.meta, &r.meta) {
            list.push(info);
        }
    }
    Ok(Reply::Checkpoints(list))
}
