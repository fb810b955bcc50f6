//! The domain model, as the session table, the stores, the owner watcher and the request
//! handlers all see it: a session's key and state, its owner, its checkpoints' entries and
//! where a store keeps them, and the durable changes a store records and the table applies.
//!
//! Several of these types are also part of the log's on-disk records and index snapshot
//! (bincode, no field names): their fields are never reordered or retyped.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sessiond_proto::{Meta, Status};

/// Sessions are scoped to a Unix user: a session is its user and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub uid: u32,
    pub name: String,
}

impl SessionKey {
    pub fn new(uid: u32, name: impl Into<String>) -> Self {
        SessionKey {
            uid,
            name: name.into(),
        }
    }
}

/// The process owning an active session: its PID and start time (defeats PID reuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22); 0 when unknown.
    pub start_time: u64,
}

/// Everything about a session except its checkpoints. Written whole on every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub uid: u32,
    pub name: String,
    pub status: Status,
    pub owner: Option<Owner>,
    pub epoch: u64,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub keep: u32,
    pub meta: Meta,
    pub error: Option<String>,
    /// Highest checkpoint number ever assigned; numbers are never reused.
    pub last_number: u64,
    /// The owner's host, in a store shared by several hosts' daemons (`None`: this host,
    /// the only one a local log knows, which never records it).
    #[serde(skip)]
    pub owner_host: Option<String>,
}

impl SessionState {
    pub fn key(&self) -> SessionKey {
        SessionKey::new(self.uid, self.name.clone())
    }

    pub fn owner_pid(&self) -> Option<u32> {
        self.owner.map(|o| o.pid)
    }

    /// The process watched for the session: its owner while it is active.
    pub fn active_owner(&self) -> Option<Owner> {
        (self.status == Status::Active)
            .then_some(self.owner)
            .flatten()
    }

    /// The active owner if it runs on `host` (this daemon's; `None` for a local log), whose
    /// daemon is the one that watches it.
    pub fn active_owner_on(&self, host: Option<&str>) -> Option<Owner> {
        self.active_owner()
            .filter(|_| self.owner_host.is_none() || self.owner_host.as_deref() == host)
    }
}

/// A checkpoint without its payload: what a store keeps beside the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub uid: u32,
    pub name: String,
    pub number: u64,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub meta: Meta,
    /// The name its writer gave it, unique among the session's retained checkpoints.
    pub key: Option<String>,
}

/// A record attached to a retained checkpoint (a framework's pending writes), without its
/// payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachMeta {
    pub uid: u32,
    pub name: String,
    /// The checkpoint it belongs to.
    pub number: u64,
    pub attach_key: String,
    pub meta: Meta,
}

/// What a keyed checkpoint is known by, to tell a retry of the same write (answered with the
/// checkpoint there) from another write under the same key (refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub number: u64,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub payload_len: u64,
    pub payload_crc: u32,
    /// crc32c of the meta's encoding.
    pub meta_crc: u32,
}

/// The checksum of a meta map that [`KeyEntry`] compares.
pub fn meta_crc(meta: &Meta) -> u32 {
    // Each key and value followed by a zero byte, gathered into a few large pieces: a
    // checksum's cost is mostly per call, and it is the same over the bytes however split.
    let mut crc = 0;
    let mut buf = [0u8; 512];
    let mut len = 0;
    for (k, v) in meta {
        for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
            if len + part.len() > buf.len() {
                crc = crc32c::crc32c_append(crc, &buf[..len]);
                len = 0;
            }
            if part.len() > buf.len() {
                crc = crc32c::crc32c_append(crc, part);
            } else {
                buf[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
        }
    }
    crc32c::crc32c_append(crc, &buf[..len])
}

/// An attachment in the table: its key and where its record is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachEntry {
    pub attach_key: String,
    pub loc: Loc,
}

/// A payload with its checksum, computed where the request was decoded: the commit thread,
/// which every write waits on, then only copies it into the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedPayload {
    pub bytes: Vec<u8>,
    pub crc: u32,
    /// Cut into chunks ahead of the commit, when the store stores it so.
    pub prepared: Option<Box<crate::chunking::Prepared>>,
    /// Stored whole although it is large: its session's recent payloads shared and
    /// compressed nothing (see [`crate::store::yields::Yields`]).
    pub whole: bool,
}

impl CheckedPayload {
    pub fn new(bytes: Vec<u8>) -> Self {
        let crc = crc32c::crc32c(&bytes);
        CheckedPayload {
            bytes,
            crc,
            prepared: None,
            whole: false,
        }
    }
}

/// Where a store keeps a record: for the log, a segment and an offset in it, with the
/// lengths of the record's header and payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loc {
    pub segment: u32,
    pub offset: u64,
    pub header_len: u32,
    pub payload_len: u32,
}

/// A retained checkpoint in the table: its number and where its record is. The table holds
/// one per retained checkpoint (a million for 100,000 sessions keeping 10), so it is kept to
/// 24 bytes: offsets fit 32 bits (the log starts a new segment before 4 GiB) and the
/// creation time is read from the record, as its meta is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CkptEntry {
    pub number: u64,
    segment: u32,
    offset: u32,
    header_len: u32,
    payload_len: u32,
}

impl CkptEntry {
    /// `None` for a record beyond 4 GiB into its segment, which no store writes.
    pub fn new(number: u64, loc: Loc) -> Option<Self> {
        Some(CkptEntry {
            number,
            segment: loc.segment,
            offset: u32::try_from(loc.offset).ok()?,
            header_len: loc.header_len,
            payload_len: loc.payload_len,
        })
    }

    pub fn loc(&self) -> Loc {
        Loc {
            segment: self.segment,
            offset: u64::from(self.offset),
            header_len: self.header_len,
            payload_len: self.payload_len,
        }
    }

    pub fn segment(&self) -> u32 {
        self.segment
    }

    pub fn payload_len(&self) -> u32 {
        self.payload_len
    }
}

/// A durable change, as a store records it and the table applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A session's whole new state (created, or changed).
    Session(SessionState),
    /// A new checkpoint, with its payload's checksum (which a keyed one is known by).
    Checkpoint {
        meta: CheckpointMeta,
        payload_crc: u32,
    },
    /// A retained checkpoint the store wrote again elsewhere (same number, key and payload).
    Relocated {
        meta: CheckpointMeta,
        payload_crc: u32,
    },
    Delete(SessionKey),
    /// A record attached to a retained checkpoint (replacing one under its key).
    Attach(AttachMeta),
    /// A retained attachment the store wrote again elsewhere.
    RelocatedAttach(AttachMeta),
    /// These checkpoints of the session go, with their attachments (numbers are never
    /// reused: the holes stay).
    DropCheckpoints {
        session: SessionKey,
        numbers: Vec<u64>,
    },
}

impl Change {
    /// Whether the table keeps the record of this change as long as it holds (a deletion's
    /// or a drop's record is read at replay only).
    pub fn is_kept(&self) -> bool {
        !matches!(self, Change::Delete(_) | Change::DropCheckpoints { .. })
    }
}

/// A session as the table indexes it: its state, where its state record is, its retained
/// checkpoints oldest first, their keys, and their attachments (by checkpoint number, each
/// list in the order first written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedSession {
    pub state: SessionState,
    pub state_loc: Loc,
    pub checkpoints: Vec<CkptEntry>,
    pub keys: Vec<(String, KeyEntry)>,
    pub attachments: Vec<(u64, Vec<AttachEntry>)>,
}

/// The records of one segment that are still live, to copy forward before it can go.
#[derive(Debug, Default)]
pub struct LiveRecords {
    pub states: Vec<SessionState>,
    pub checkpoints: Vec<(SessionKey, CkptEntry)>,
    /// (session, checkpoint number, attach key, where).
    pub attachments: Vec<(SessionKey, u64, String, Loc)>,
}

pub fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// The sessions a mutation may touch, which a shared store locks and brings up to date
/// before it is planned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub keys: Vec<SessionKey>,
    /// Sessions found by a query (their meta): every session.
    pub all: bool,
    /// Whether it needs to know which hosts are alive (a resume).
    pub live_hosts: bool,
}

impl Scope {
    pub fn everything() -> Scope {
        Scope {
            all: true,
            ..Scope::default()
        }
    }

    pub fn add(&mut self, other: Scope) {
        self.keys.extend(other.keys);
        self.all |= other.all;
        self.live_hosts |= other.live_hosts;
    }

    /// Sorted and without repeats (the order locks are taken in, so two hosts never wait
    /// for each other).
    pub fn normalize(&mut self) {
        self.keys.sort_unstable();
        self.keys.dedup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum as it was first defined (and is kept in logs and snapshots): each key and
    /// value, each followed by a zero byte, one after the other.
    fn meta_crc_part_by_part(meta: &Meta) -> u32 {
        let mut crc = 0;
        for (k, v) in meta {
            for part in [k.as_bytes(), &[0], v.as_bytes(), &[0]] {
                crc = crc32c::crc32c_append(crc, part);
            }
        }
        crc
    }

    #[test]
    fn meta_crc_is_the_checksum_of_every_part_in_turn_whatever_their_sizes() {
        let mut meta = Meta::new();
        assert_eq!(meta_crc(&meta), meta_crc_part_by_part(&meta));
        for (i, len) in [0, 1, 7, 300, 511, 512, 513, 2000, 5]
            .into_iter()
            .enumerate()
        {
            meta.insert(format!("k{i}"), "v".repeat(len));
            assert_eq!(meta_crc(&meta), meta_crc_part_by_part(&meta), "{i}: {len}");
        }
        meta.insert("x".repeat(600), String::new());
        assert_eq!(meta_crc(&meta), meta_crc_part_by_part(&meta));
    }
}
