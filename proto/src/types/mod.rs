//! Requests, replies, events and errors shared by both encodings.
//!
//! Invariant: no serde attribute that bincode cannot honour (`flatten`,
//! `skip_serializing_if`, `untagged`, internal tags). JSON-only niceties live in the JSON
//! codec, which builds on these types.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

mod error;
mod request;
pub use error::{ErrorKind, WireError};
pub use request::{
    AttachRequest, BatchRequest, CheckpointRef, CheckpointRequest, CopyRequest, CreateRequest,
    DeleteCheckpointsRequest, FailRequest, GetRequest, HistoryRequest, ListRequest, NameRequest,
    PruneRequest, Request, RequestFrame, ResumeRequest, SessionNames, Target, WatchRequest,
};

/// String-to-string metadata of a session or a checkpoint.
pub type Meta = BTreeMap<String, String>;

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Owned by a live process, taking checkpoints.
    Active,
    /// Set aside: no owner, never stale, until resumed.
    Paused,
    /// Done: takes no more checkpoints.
    Completed,
    /// Ended in failure (with its error): takes no more checkpoints.
    Failed,
    /// Given up: takes no more checkpoints.
    Cancelled,
    /// Its owner died: waiting for someone to resume it.
    Stale,
}

impl Status {
    /// Every status, in the order `stats` lists them.
    pub const ALL: [Status; 6] = [
        Status::Active,
        Status::Paused,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Stale,
    ];

    /// The status as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Stale => "stale",
        }
    }

    /// Completed, failed and cancelled sessions accept no checkpoint.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?} (expected one of active, paused, completed, failed, cancelled, stale)"))
    }
}

/// Opaque checkpoint bytes: raw bytes in bincode, a base64 string in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64_simd::STANDARD.encode_to_string(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            // Decoded from the request's own bytes where it can be (base64 has nothing to
            // escape): no copy of the text first. Asked for as bytes, which serde_json gives
            // without checking them for UTF-8 first: base64 decoding refuses any non-ASCII.
            struct TextVisitor;
            impl serde::de::Visitor<'_> for TextVisitor {
                type Value = Payload;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a base64 string")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Payload, E> {
                    self.visit_bytes(v.as_bytes())
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                    base64_simd::STANDARD
                        .decode_to_vec(v)
                        .map(Payload)
                        .map_err(|_| {
                            E::custom("payload_b64 is not valid base64 (the standard alphabet, padded with =)")
                        })
                }
            }
            d.deserialize_bytes(TextVisitor)
        } else {
            struct BytesVisitor;
            impl<'de> serde::de::Visitor<'de> for BytesVisitor {
                type Value = Payload;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("payload bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
                    Ok(Payload(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Payload, E> {
                    Ok(Payload(v))
                }
            }
            // Borrowed from the frame and copied once; `byte_buf` would zero a buffer first.
            d.deserialize_bytes(BytesVisitor)
        }
    }
}

/// A session as every reply shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// The session's name (unique per user).
    pub name: String,
    /// Where it is in its life.
    pub status: Status,
    /// The owning process's PID, while it has one.
    pub owner_pid: Option<u32>,
    /// Bumped by every resume; writes carrying an older one are fenced.
    pub epoch: u64,
    /// When it was created.
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// The newest checkpoint's number (`None`: none yet).
    pub latest_checkpoint: Option<u64>,
    /// How many checkpoints are retained.
    pub checkpoint_count: u64,
    /// How many checkpoints it retains (0: all).
    pub keep: u32,
    /// Its metadata.
    pub meta: Meta,
    /// Why it failed (`fail`), if it did.
    pub error: Option<String>,
    /// The Unix user owning the session (useful to root's `--all-users` listings).
    pub uid: u32,
    /// The owner's host, when sessions are shared by several hosts' daemons.
    #[serde(default)]
    pub owner_host: Option<String>,
    /// The retained checkpoints' payload bytes (`show` only; `None` in lists).
    #[serde(default)]
    pub logical_bytes: Option<u64>,
    /// The bytes the store takes for them, each chunk counted once (`show` only).
    #[serde(default)]
    pub stored_bytes: Option<u64>,
}

/// A checkpoint's description, with its payload when the op returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its number in the session (1, 2, ...; never reused).
    pub number: u64,
    /// The payload's size in bytes.
    pub size: u64,
    /// When it was written.
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Its metadata.
    pub meta: Meta,
    /// The payload, when the request asked for it.
    #[serde(rename = "payload_b64")]
    pub payload: Option<Payload>,
    /// Newer checkpoints passed over because they are damaged on disk.
    #[serde(default)]
    pub skipped_corrupt: Vec<u64>,
    /// The name its writer gave it (protocol 3).
    #[serde(default)]
    pub key: Option<String>,
    /// A checkpoint written again under its key with the same bytes: nothing was written.
    #[serde(default)]
    pub existing: bool,
    /// The records attached to it, when asked for (`attachments: true`), in the order they
    /// were first written.
    #[serde(default)]
    pub attachments: Option<Vec<Attachment>>,
}

/// A record attached to a checkpoint (a framework's pending writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its name, unique per checkpoint.
    pub attach_key: String,
    /// Its metadata.
    pub meta: Meta,
    /// The payload's size in bytes.
    pub size: u64,
    /// The payload, when the request asked for it.
    #[serde(rename = "payload_b64")]
    pub payload: Option<Payload>,
}

/// What `attach` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachInfo {
    /// The checkpoint it is attached to.
    pub number: u64,
    /// The key of the checkpoint it is attached to, if that has one.
    pub key: Option<String>,
    /// Its name, unique per checkpoint.
    pub attach_key: String,
    /// The payload's size in bytes.
    pub size: u64,
    /// One was there under this attach key and stays (first write wins): nothing written.
    pub existing: bool,
}

/// Counters reported by `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// Sessions held.
    pub sessions: u64,
    /// Sessions held, by status.
    pub sessions_by_status: BTreeMap<String, u64>,
    /// Checkpoints retained.
    pub checkpoints: u64,
    /// Client connections open.
    pub connections: u64,
    /// Checkpoints made durable since the start.
    pub checkpoints_written: u64,
    /// Bytes the store wrote since the start.
    pub bytes_written: u64,
    /// Group commits (fsyncs, or transactions) since the start.
    pub flushes: u64,
    /// Log segment files (local log).
    pub log_segments: u64,
    /// Bytes the store takes: its segments, or the database.
    pub log_bytes: u64,
    /// Whether the store's disk work is failing (protocol 2).
    pub store: StoreHealth,
    /// The shared store this daemon is on (PostgreSQL), `None` on the local log.
    #[serde(default)]
    pub shared: Option<SharedStore>,
    /// Payload bytes of every retained checkpoint.
    #[serde(default)]
    pub logical_bytes: u64,
    /// Bytes the store's live records take for them (the records, and each distinct chunk
    /// once): what the sessions cost on disk, before the store's free space.
    #[serde(default)]
    pub stored_bytes: u64,
    /// Distinct chunks stored.
    #[serde(default)]
    pub chunks: u64,
}

/// The shared store as one host's daemon sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedStore {
    /// This host's id in ownership and leases.
    pub host_id: String,
    /// Whether this host holds its lease now (it acknowledges writes only then).
    pub lease_held: bool,
    /// Milliseconds since the lease was last renewed.
    pub lease_renewed_ms_ago: u64,
    /// Hosts whose leases are live, this one included.
    pub live_hosts: Vec<String>,
}

/// The store's health: degraded while some kind of disk work fails, with what fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// Whether some kind of store work is failing now.
    pub degraded: bool,
    /// Each kind of disk work failing now.
    pub failing: Vec<FailingWork>,
    /// Disk operations that failed since the daemon started.
    pub disk_errors: u64,
}

/// One kind of disk work that is failing: since when, how often, and its latest error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingWork {
    /// What the daemon was doing: `log write`, `new log segment`, `index snapshot`, ...
    pub work: String,
    /// When it started failing.
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub since: DateTime<Utc>,
    /// How many times it failed since.
    pub errors: u64,
    /// Its latest error.
    pub last_error: String,
}

/// What happened to a session, as `watch` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A session was created.
    Created,
    /// A checkpoint was made durable.
    Checkpointed,
    /// Its status changed (pause, complete, fail, cancel).
    Status,
    /// Its owner died (or its host lost its lease).
    Stale,
    /// It was resumed (a new epoch).
    Resumed,
    /// It was deleted.
    Deleted,
    /// The watcher fell behind; `missed` events were dropped (none said: an unknown number,
    /// other hosts' events lost while the shared store's listener reconnected).
    Lagged,
}

/// One event of a `watch` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    #[serde(rename = "event")]
    pub kind: EventKind,
    /// The session it happened to.
    pub name: String,
    /// The checkpoint's number (`checkpointed`).
    pub number: Option<u64>,
    /// The new status (`status`, `stale`).
    pub status: Option<Status>,
    /// The new epoch (`resumed`).
    pub epoch: Option<u64>,
    /// The owner concerned (`created`, `stale`, `resumed`).
    pub owner_pid: Option<u32>,
    /// Events this watcher missed, being too slow (`lagged`; none when not known).
    pub missed: Option<u64>,
    /// When it happened.
    #[serde(serialize_with = "crate::time::rfc3339")]
    pub at: DateTime<Utc>,
}

impl Event {
    /// A `lagged` event, now: `missed` events (when known) may not have reached the watcher
    /// of `name` (empty: of every session).
    pub fn lagged(name: String, missed: Option<u64>) -> Event {
        Event {
            kind: EventKind::Lagged,
            name,
            number: None,
            status: None,
            epoch: None,
            owner_pid: None,
            missed,
            at: Utc::now(),
        }
    }
}

/// A successful reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The daemon answers.
    Pong {
        /// Its version.
        version: String,
        /// The protocol version the connection speaks.
        protocol: u32,
    },
    /// A session's description.
    Session(SessionInfo),
    /// A checkpoint (`None`: none yet).
    Checkpoint(Option<CheckpointInfo>),
    /// A resumed session and its latest intact checkpoint.
    Resumed {
        /// The session, owned by the caller at its new epoch.
        session: SessionInfo,
        /// Its latest intact checkpoint, with its payload.
        checkpoint: Option<CheckpointInfo>,
    },
    /// Sessions.
    Sessions(Vec<SessionInfo>),
    /// Checkpoints.
    Checkpoints(Vec<CheckpointInfo>),
    /// Whether a session was deleted.
    Deleted(bool),
    /// The daemon's counters.
    Stats(Box<Stats>),
    /// First reply of a `watch`; events follow with the same id.
    Watching,
    /// A watch's event.
    Event(Event),
    /// How many were deleted (`delete_checkpoints`, `prune`, `delete` by `session_meta`).
    Count(u64),
    /// An attachment, written or there already.
    Attached(AttachInfo),
    /// One reply per op of a `batch`, in order.
    Batch(Vec<Reply>),
}

impl Reply {
    /// Every payload the reply carries, in order: a checkpoint's, then its attachments';
    /// `checkpoints` and `results` entry by entry.
    pub fn payloads<'a>(&'a self, f: &mut impl FnMut(&'a [u8])) {
        fn checkpoint<'a>(c: &'a CheckpointInfo, f: &mut impl FnMut(&'a [u8])) {
            c.payload.iter().for_each(|p| f(&p.0));
            for a in c.attachments.iter().flatten() {
                a.payload.iter().for_each(|p| f(&p.0));
            }
        }
        match self {
            Reply::Checkpoint(Some(c))
            | Reply::Resumed {
                checkpoint: Some(c),
                ..
            } => checkpoint(c, f),
            Reply::Checkpoints(list) => list.iter().for_each(|c| checkpoint(c, f)),
            Reply::Batch(results) => results.iter().for_each(|r| r.payloads(f)),
            _ => {}
        }
    }

    /// The bytes of payload it carries: what its encoding needs room for, beyond the rest.
    pub fn payload_bytes(&self) -> usize {
        let mut n = 0;
        self.payloads(&mut |p| n += p.len());
        n
    }
}

/// A reply (or a watch event) to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The reply, or the error.
    pub result: Result<Reply, WireError>,
}
