//! Requests, replies, events and errors shared by both encodings.
//!
//! Invariant: no serde attribute that bincode cannot honour (`flatten`,
//! `skip_serializing_if`, `untagged`, internal tags). JSON-only niceties live in the JSON
//! codec, which builds on these types.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// Stable, append-only error kinds: scripts branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A bad name, key, meta or combination of fields.
    InvalidArgument,
    /// No such session or checkpoint.
    NotFound,
    /// The session, or another checkpoint under that key, exists already.
    AlreadyExists,
    /// The session's owner is alive (resume without force, or a write from another process).
    OwnerAlive,
    /// The write carried an older epoch: another process has resumed the session.
    Fenced,
    /// `expect` did not match the latest checkpoint.
    Conflict,
    /// The session is completed, failed or cancelled.
    SessionClosed,
    /// Over a size limit (payload, meta, frame or line).
    TooLarge,
    /// Another user's sessions, or a root-only field.
    PermissionDenied,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The store cannot write now (a failing disk, the database away): try again.
    Unavailable,
    /// A bug in the daemon.
    Internal,
}

impl ErrorKind {
    /// The kind as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::OwnerAlive => "owner_alive",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Conflict => "conflict",
            ErrorKind::SessionClosed => "session_closed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    /// What went wrong, for programs to branch on.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
    /// For `owner_alive`: the live owner's PID.
    pub owner_pid: Option<u32>,
    /// For a `batch`: which of its ops failed (counted from 0).
    #[serde(default)]
    pub index: Option<u32>,
    /// For `owner_alive`: the live owner's host, when sessions are shared by several hosts.
    #[serde(default)]
    pub owner_host: Option<String>,
}

impl WireError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            owner_pid: None,
            index: None,
            owner_host: None,
        }
    }
    /// An `invalid_argument` error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    /// A `not_found` error for session `name`.
    pub fn not_found(name: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("session {name:?} does not exist"),
        )
    }
    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
}

/// A request that names one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    /// The session's name.
    pub name: String,
}

/// `create`: a new session.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The session's name.
    pub name: String,
    /// Its owner, if not the caller (a live process of the caller's user).
    pub owner_pid: Option<u32>,
    /// Checkpoints to retain; `None` takes the daemon's default, 0 keeps all.
    pub keep: Option<u32>,
    /// Its metadata.
    pub meta: Meta,
    /// No owner: never marked stale (a framework's thread, not a process's job).
    pub detached: bool,
    /// The owner is the connecting process's parent (or its nearest ancestor of the same
    /// user), as the daemon sees it: what `sessionctl` asks for.
    pub owner_parent: bool,
}

/// `checkpoint`: a new checkpoint of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    /// The session's name.
    pub name: String,
    /// The payload.
    pub payload: Payload,
    /// Its metadata.
    pub meta: Meta,
    /// Accept only if the latest checkpoint number is this (0: none yet).
    pub expect: Option<u64>,
    /// Accept only if this is the session's current epoch.
    pub epoch: Option<u64>,
    /// A name for it, unique among the session's retained checkpoints; the same key with the
    /// same bytes again answers the existing one.
    pub key: Option<String>,
}

/// `resume`: take a session over.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The session's name.
    pub name: String,
    /// The new owner, if not the caller.
    pub owner_pid: Option<u32>,
    /// Take it even from a live owner (its later writes are fenced).
    pub force: bool,
    /// Return the latest checkpoint's attachments too.
    pub attachments: bool,
    /// As [`CreateRequest::owner_parent`].
    pub owner_parent: bool,
}

/// A checkpoint named by its number or by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointRef {
    /// By number.
    Number(u64),
    /// By key.
    Key(String),
}

/// `get`: a checkpoint's payload.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GetRequest {
    /// The session's name.
    pub name: String,
    /// A specific checkpoint; `None` (and no key) is the latest intact one.
    pub number: Option<u64>,
    /// The checkpoint with this key.
    pub key: Option<String>,
    /// Its attachments too.
    pub attachments: bool,
}

impl GetRequest {
    /// The checkpoint it names (`None`: the latest intact one). Its number wins over its key;
    /// the daemon refuses a request with both.
    pub fn which(&self) -> Option<CheckpointRef> {
        match (self.number, &self.key) {
            (Some(n), _) => Some(CheckpointRef::Number(n)),
            (None, Some(k)) => Some(CheckpointRef::Key(k.clone())),
            (None, None) => None,
        }
    }
}

/// `list`: the caller's sessions (or every user's, for root).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Only sessions in this status.
    pub status: Option<Status>,
    /// Every pair must match the session's meta.
    pub meta: Meta,
    /// Root only: list every user's sessions.
    pub all_users: bool,
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Only names after this one (in name order): the next page.
    pub after: Option<String>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// `history`'s filters: which retained checkpoints, in which order, with what.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The session's name.
    pub name: String,
    /// Every pair must match the checkpoint's meta.
    pub meta: Meta,
    /// Only checkpoints older than this one (exclusive).
    pub before: Option<CheckpointRef>,
    /// Only checkpoints newer than this one (exclusive).
    pub after: Option<CheckpointRef>,
    /// At most this many.
    pub limit: Option<u32>,
    /// Newest first.
    pub reverse: bool,
    /// Each entry with its payload (read from disk; without it, none is).
    pub payloads: bool,
    /// Each checkpoint's attachments too.
    pub attachments: bool,
}

/// The sessions an op applies to: one by name, or every one of the caller's whose meta has
/// every pair of `session_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Target {
    /// One session, by name.
    pub name: Option<String>,
    /// Every session of the caller whose meta has these pairs.
    pub session_meta: Option<Meta>,
}

/// `attach`: a record attached to a retained checkpoint (a framework's pending writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The session's name.
    pub name: String,
    /// The checkpoint, by number or key.
    pub checkpoint: CheckpointRef,
    /// The attachment's name, unique per checkpoint.
    pub attach_key: String,
    /// The payload.
    pub payload: Payload,
    /// Its metadata.
    pub meta: Meta,
    /// Replace one already attached under this key (else the first write wins).
    pub replace: bool,
    /// Accept only at this epoch.
    pub epoch: Option<u64>,
}

/// `delete_checkpoints`: some checkpoints of one or more sessions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeleteCheckpointsRequest {
    /// Whose checkpoints.
    pub target: Target,
    /// These numbers.
    pub numbers: Vec<u64>,
    /// The checkpoints with these keys.
    pub keys: Vec<String>,
    /// Every checkpoint whose meta has every pair.
    pub meta: Option<Meta>,
}

/// `prune`: keep only the newest checkpoints, now.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PruneRequest {
    /// Whose checkpoints.
    pub target: Target,
    /// Checkpoints each session keeps, the newest (0: none).
    pub keep: u32,
}

/// `copy`: a new session holding another's checkpoints, keys and attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The session copied.
    pub name: String,
    /// The new session's name (it must not exist).
    pub to: String,
    /// The new session's meta.
    pub meta: Meta,
}

/// `batch`: mutations applied in order, all or none, in one commit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Mutations, applied in order, all or none.
    pub ops: Vec<Request>,
}

/// `fail`: mark a session failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRequest {
    /// The session's name.
    pub name: String,
    /// What went wrong.
    pub error: Option<String>,
}

/// `watch`: events as they happen.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchRequest {
    /// One session, or every session of the caller.
    pub name: Option<String>,
}

/// Every operation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Is the daemon there? (its version and protocol)
    Ping,
    /// Create a session.
    Create(CreateRequest),
    /// Write a checkpoint.
    Checkpoint(CheckpointRequest),
    /// Take a session over.
    Resume(ResumeRequest),
    /// Read a checkpoint.
    Get(GetRequest),
    /// Describe a session.
    Show(NameRequest),
    /// List sessions.
    List(ListRequest),
    /// A session's retained checkpoints.
    History(HistoryRequest),
    /// Pause a session.
    Pause(NameRequest),
    /// Mark a session completed.
    Complete(NameRequest),
    /// Mark a session failed.
    Fail(FailRequest),
    /// Mark a session cancelled.
    Cancel(NameRequest),
    /// Delete sessions (by name or meta).
    Delete(Target),
    /// Events as they happen.
    Watch(WatchRequest),
    /// The daemon's counters.
    Stats,
    /// Attach a record to a checkpoint.
    Attach(AttachRequest),
    /// Delete some checkpoints.
    DeleteCheckpoints(DeleteCheckpointsRequest),
    /// Keep only the newest checkpoints.
    Prune(PruneRequest),
    /// Copy a session.
    Copy(CopyRequest),
    /// Several mutations, all or none.
    Batch(BatchRequest),
}

impl Request {
    /// The op name used in JSON, logs and the CLI.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::Create(_) => "create",
            Request::Checkpoint(_) => "checkpoint",
            Request::Resume(_) => "resume",
            Request::Get(_) => "get",
            Request::Show(_) => "show",
            Request::List(_) => "list",
            Request::History(_) => "history",
            Request::Pause(_) => "pause",
            Request::Complete(_) => "complete",
            Request::Fail(_) => "fail",
            Request::Cancel(_) => "cancel",
            Request::Delete(_) => "delete",
            Request::Watch(_) => "watch",
            Request::Stats => "stats",
            Request::Attach(_) => "attach",
            Request::DeleteCheckpoints(_) => "delete_checkpoints",
            Request::Prune(_) => "prune",
            Request::Copy(_) => "copy",
            Request::Batch(_) => "batch",
        }
    }

    /// Whether the op changes state (what a `batch` may hold).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self,
            Request::Create(_)
                | Request::Checkpoint(_)
                | Request::Pause(_)
                | Request::Complete(_)
                | Request::Fail(_)
                | Request::Cancel(_)
                | Request::Delete(_)
                | Request::Attach(_)
                | Request::DeleteCheckpoints(_)
                | Request::Prune(_)
                | Request::Copy(_)
        )
    }

    /// Whether it may change state (what a read pipelined before it must not see): every op
    /// but the reads, a ping and a watch.
    pub fn changes_state(&self) -> bool {
        match self {
            Request::Ping
            | Request::Get(_)
            | Request::Show(_)
            | Request::List(_)
            | Request::History(_)
            | Request::Stats
            | Request::Watch(_) => false,
            Request::Create(_)
            | Request::Checkpoint(_)
            | Request::Resume(_)
            | Request::Pause(_)
            | Request::Complete(_)
            | Request::Fail(_)
            | Request::Cancel(_)
            | Request::Delete(_)
            | Request::Attach(_)
            | Request::DeleteCheckpoints(_)
            | Request::Prune(_)
            | Request::Copy(_)
            | Request::Batch(_) => true,
        }
    }

    /// The session the request names, if any (for a copy, its source; see
    /// [`Request::session_names`] for all).
    pub fn session_name(&self) -> Option<&str> {
        self.session_names().next()
    }

    /// Every session name the request holds (a batch's ops' included).
    pub fn session_names(&self) -> SessionNames<'_> {
        let few = SessionNames::few;
        let one = |n| SessionNames::few(Some(n), None);
        match self {
            Request::Ping | Request::Stats | Request::List(_) => few(None, None),
            Request::Create(r) => one(&r.name),
            Request::Checkpoint(r) => one(&r.name),
            Request::Resume(r) => one(&r.name),
            Request::Get(r) => one(&r.name),
            Request::History(r) => one(&r.name),
            Request::Fail(r) => one(&r.name),
            Request::Attach(r) => one(&r.name),
            Request::Watch(r) => few(r.name.as_deref(), None),
            Request::Delete(t) => few(t.name.as_deref(), None),
            Request::DeleteCheckpoints(r) => few(r.target.name.as_deref(), None),
            Request::Prune(r) => few(r.target.name.as_deref(), None),
            Request::Copy(r) => few(Some(&r.name), Some(&r.to)),
            Request::Batch(b) => SessionNames {
                few: [None, None],
                at: 0,
                ops: Some(Box::new(b.ops.iter().flat_map(Request::session_names))),
            },
            Request::Show(r) | Request::Pause(r) | Request::Complete(r) | Request::Cancel(r) => {
                one(&r.name)
            }
        }
    }
}

/// The session names a request holds ([`Request::session_names`]): a batch's through its
/// ops, any other's without an allocation (every request's are validated).
pub struct SessionNames<'a> {
    few: [Option<&'a str>; 2],
    at: usize,
    ops: Option<Box<dyn Iterator<Item = &'a str> + 'a>>,
}

impl<'a> SessionNames<'a> {
    fn few(a: Option<&'a str>, b: Option<&'a str>) -> Self {
        SessionNames {
            few: [a, b],
            at: 0,
            ops: None,
        }
    }
}

impl<'a> Iterator for SessionNames<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while let Some(n) = self.few.get(self.at) {
            self.at += 1;
            if n.is_some() {
                return *n;
            }
        }
        self.ops.as_mut()?.next()
    }
}

/// A request with its correlation id and, for root, the user it acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Echoed on the reply.
    pub id: u64,
    /// Root only: act on this user's sessions.
    pub uid: Option<u32>,
    /// The request.
    pub request: Request,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_are_every_name_a_request_holds() {
        fn names(r: &Request) -> Vec<&str> {
            r.session_names().collect()
        }
        let show = |n: &str| Request::Show(NameRequest { name: n.into() });
        assert!(names(&Request::Ping).is_empty());
        assert_eq!(names(&show("a")), ["a"]);
        let unnamed = Request::Delete(Target {
            name: None,
            session_meta: Some(Meta::default()),
        });
        assert!(names(&unnamed).is_empty());
        let copy = Request::Copy(CopyRequest {
            name: "from".into(),
            to: "to".into(),
            meta: Meta::default(),
        });
        assert_eq!(names(&copy), ["from", "to"]);
        let batch = Request::Batch(BatchRequest {
            ops: vec![show("x"), copy, unnamed, show("y")],
        });
        assert_eq!(names(&batch), ["x", "from", "to", "y"]);
        assert_eq!(batch.session_name(), Some("x"));
    }

    #[test]
    fn reads_change_nothing_and_every_other_op_may() {
        let get = |number, key: Option<&str>| GetRequest {
            name: "s".into(),
            number,
            key: key.map(Into::into),
            attachments: false,
        };
        assert!(!Request::Get(get(None, None)).changes_state());
        assert!(!Request::Ping.changes_state());
        assert!(Request::Resume(ResumeRequest::default()).changes_state());
        assert!(Request::Batch(BatchRequest::default()).changes_state());
        assert_eq!(
            get(Some(3), Some("k")).which(),
            Some(CheckpointRef::Number(3))
        );
        assert_eq!(
            get(None, Some("k")).which(),
            Some(CheckpointRef::Key("k".into()))
        );
        assert_eq!(get(None, None).which(), None);
    }
}
