//! Rows of the shared store and the model's types: sessions, checkpoints and attachments as
//! PostgreSQL holds them, and where a row is as the table keeps it (a `Loc`).

use serde_json::Value;
use sessiond_proto::{Meta, Status};
use tokio_postgres::Row;

use crate::model::{AttachMeta, CheckpointMeta, Loc, Owner, SessionState};

/// A checkpoint's or attachment's row id as a place: its high and low 32 bits.
pub fn loc_of(id: i64, payload_len: usize) -> Loc {
    Loc {
        segment: (id >> 32) as u32,
        offset: (id as u64) & 0xffff_ffff,
        header_len: 0,
        payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
    }
}

pub fn id_of(loc: &Loc) -> i64 {
    (i64::from(loc.segment) << 32) | (loc.offset & 0xffff_ffff) as i64
}

/// Where a session's state is: its row, which has no place of its own.
pub const SESSION_ROW: Loc = Loc {
    segment: u32::MAX,
    offset: 0,
    header_len: 0,
    payload_len: 0,
};

pub fn meta_json(meta: &Meta) -> Value {
    Value::Object(
        meta.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

pub fn meta_of(v: Value) -> Meta {
    match v {
        Value::Object(m) => m
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Meta::new(),
    }
}

pub fn status_of(text: &str) -> Status {
    text.parse().unwrap_or(Status::Paused)
}

/// The columns of a session row, in the order [`session_of`] reads them.
pub const SESSION_COLUMNS: &str = "uid, name, status, owner_host, owner_pid, owner_start, epoch, \
     created_at, updated_at, keep, meta, error, last_number, version";

/// A session row: its state and version.
pub fn session_of(row: &Row) -> (SessionState, i64) {
    let owner_pid: Option<i64> = row.get(4);
    let owner_start: Option<i64> = row.get(5);
    let owner = owner_pid.map(|pid| Owner {
        pid: pid as u32,
        start_time: owner_start.unwrap_or(0) as u64,
    });
    let state = SessionState {
        uid: row.get::<_, i64>(0) as u32,
        name: row.get(1),
        status: status_of(row.get(2)),
        owner,
        epoch: row.get::<_, i64>(6) as u64,
        created_at: row.get(7),
        updated_at: row.get(8),
        keep: row.get::<_, i64>(9) as u32,
        meta: meta_of(row.get(10)),
        error: row.get(11),
        last_number: row.get::<_, i64>(12) as u64,
        owner_host: row.get(3),
    };
    (state, row.get(13))
}

/// The parameters of a session's row, in [`SESSION_COLUMNS`]'s order (without `version`).
pub struct SessionParams {
    pub uid: i64,
    pub name: String,
    pub status: &'static str,
    pub owner_host: Option<String>,
    pub owner_pid: Option<i64>,
    pub owner_start: Option<i64>,
    pub epoch: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub keep: i64,
    pub meta: Value,
    pub error: Option<String>,
    pub last_number: i64,
}

impl From<&SessionState> for SessionParams {
    fn from(s: &SessionState) -> Self {
        SessionParams {
            uid: i64::from(s.uid),
            name: s.name.clone(),
            status: s.status.as_str(),
            owner_host: s.owner.and(s.owner_host.clone()),
            owner_pid: s.owner.map(|o| i64::from(o.pid)),
            owner_start: s.owner.map(|o| o.start_time as i64),
            epoch: s.epoch as i64,
            created_at: s.created_at,
            updated_at: s.updated_at,
            keep: i64::from(s.keep),
            meta: meta_json(&s.meta),
            error: s.error.clone(),
            last_number: s.last_number as i64,
        }
    }
}

/// A checkpoint row's description (`id, uid, name, number, created_at, meta, key`).
pub fn checkpoint_of(row: &Row) -> CheckpointMeta {
    CheckpointMeta {
        uid: row.get::<_, i64>(1) as u32,
        name: row.get(2),
        number: row.get::<_, i64>(3) as u64,
        created_at: row.get(4),
        meta: meta_of(row.get(5)),
        key: row.get(6),
    }
}

/// An attachment row's description (`id, uid, name, number, attach_key, meta`).
pub fn attachment_of(row: &Row) -> AttachMeta {
    AttachMeta {
        uid: row.get::<_, i64>(1) as u32,
        name: row.get(2),
        number: row.get::<_, i64>(3) as u64,
        attach_key: row.get(4),
        meta: meta_of(row.get(5)),
    }
}
