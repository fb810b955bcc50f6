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
}

impl SessionState {
    pub fn key(&self) -> SessionKey {
        SessionKey::new(self.uid, self.name.clone())
    }

    /// The process watched for the session: its owner while it is active.
    pub fn active_owner(&self) -> Option<Owner> {
        (self.status == Status::Active)
            .then_some(self.owner)
            .flatten()
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
}

/// A payload with its checksum, computed where the request was decoded: the commit thread,
/// which every write waits on, then only copies it into the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedPayload {
    pub bytes: Vec<u8>,
    pub crc: u32,
}

impl CheckedPayload {
    pub fn new(bytes: Vec<u8>) -> Self {
        let crc = crc32c::crc32c(&bytes);
        CheckedPayload { bytes, crc }
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
    /// A new checkpoint.
    Checkpoint(CheckpointMeta),
    /// A retained checkpoint the store wrote again elsewhere (same number and payload).
    Relocated(CheckpointMeta),
    Delete(SessionKey),
}

/// A session as the table indexes it: its state, where its state record is, and its
/// retained checkpoints, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedSession {
    pub state: SessionState,
    pub state_loc: Loc,
    pub checkpoints: Vec<CkptEntry>,
}

/// The records of one segment that are still live, to copy forward before it can go.
#[derive(Debug, Default)]
pub struct LiveRecords {
    pub states: Vec<SessionState>,
    pub checkpoints: Vec<(SessionKey, CkptEntry)>,
}

pub fn micros_to_time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}
