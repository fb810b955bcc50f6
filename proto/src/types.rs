//! Requests, replies, events and errors shared by both encodings.
//!
//! Invariant: no serde attribute that bincode cannot honour (`flatten`,
//! `skip_serializing_if`, `untagged`, internal tags). JSON-only niceties live in the JSON
//! codec, which builds on these types.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// String-to-string metadata of a session or a checkpoint.
pub type Meta = BTreeMap<String, String>;

/// Lifecycle state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Paused,
    Completed,
    Failed,
    Cancelled,
    Stale,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Active,
        Status::Paused,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
        Status::Stale,
    ];

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
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(Payload)
                .map_err(|e| {
                    serde::de::Error::custom(format!("payload_b64 is not valid base64: {e}"))
                })
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
    pub name: String,
    pub status: Status,
    pub owner_pid: Option<u32>,
    pub epoch: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub latest_checkpoint: Option<u64>,
    pub checkpoint_count: u64,
    pub keep: u32,
    pub meta: Meta,
    pub error: Option<String>,
    /// The Unix user owning the session (useful to root's `--all-users` listings).
    pub uid: u32,
}

/// A checkpoint's description, with its payload when the op returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub number: u64,
    pub size: u64,
    pub created_at: DateTime<Utc>,
    pub meta: Meta,
    #[serde(rename = "payload_b64")]
    pub payload: Option<Payload>,
    /// Newer checkpoints passed over because they are damaged on disk.
    #[serde(default)]
    pub skipped_corrupt: Vec<u64>,
}

/// Counters reported by `stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub uptime_secs: u64,
    pub sessions: u64,
    pub sessions_by_status: BTreeMap<String, u64>,
    pub checkpoints: u64,
    pub connections: u64,
    pub checkpoints_written: u64,
    pub bytes_written: u64,
    pub flushes: u64,
    pub log_segments: u64,
    pub log_bytes: u64,
    /// Whether the store's disk work is failing (protocol 2).
    pub store: StoreHealth,
}

/// The store's health: degraded while some kind of disk work fails, with what fails.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
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
    pub since: DateTime<Utc>,
    pub errors: u64,
    pub last_error: String,
}

/// What happened to a session, as `watch` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Checkpointed,
    Status,
    Stale,
    Resumed,
    Deleted,
    /// The watcher fell behind; `missed` events were dropped.
    Lagged,
}

/// One event of a `watch` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "event")]
    pub kind: EventKind,
    pub name: String,
    pub number: Option<u64>,
    pub status: Option<Status>,
    pub epoch: Option<u64>,
    pub owner_pid: Option<u32>,
    pub missed: Option<u64>,
    pub at: DateTime<Utc>,
}

/// Stable, append-only error kinds: scripts branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    OwnerAlive,
    Fenced,
    Conflict,
    SessionClosed,
    TooLarge,
    PermissionDenied,
    UnsupportedVersion,
    Unavailable,
    Internal,
}

impl ErrorKind {
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
    pub kind: ErrorKind,
    pub message: String,
    /// For `owner_alive`: the live owner's PID.
    pub owner_pid: Option<u32>,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
            owner_pid: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn not_found(name: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            format!("session {name:?} does not exist"),
        )
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub name: String,
    pub owner_pid: Option<u32>,
    /// Checkpoints to retain; `None` takes the daemon's default, 0 keeps all.
    pub keep: Option<u32>,
    pub meta: Meta,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRequest {
    pub name: String,
    pub payload: Payload,
    pub meta: Meta,
    /// Accept only if the latest checkpoint number is this (0: none yet).
    pub expect: Option<u64>,
    /// Accept only if this is the session's current epoch.
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub name: String,
    pub owner_pid: Option<u32>,
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    pub name: String,
    /// A specific checkpoint; `None` is the latest intact one.
    pub number: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ListRequest {
    pub status: Option<Status>,
    /// Every pair must match the session's meta.
    pub meta: Meta,
    /// Root only: list every user's sessions.
    pub all_users: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailRequest {
    pub name: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WatchRequest {
    /// One session, or every session of the caller.
    pub name: Option<String>,
}

/// Every operation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Ping,
    Create(CreateRequest),
    Checkpoint(CheckpointRequest),
    Resume(ResumeRequest),
    Get(GetRequest),
    Show(NameRequest),
    List(ListRequest),
    History(NameRequest),
    Pause(NameRequest),
    Complete(NameRequest),
    Fail(FailRequest),
    Cancel(NameRequest),
    Delete(NameRequest),
    Watch(WatchRequest),
    Stats,
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
        }
    }

    /// The session the request names, if any.
    pub fn session_name(&self) -> Option<&str> {
        match self {
            Request::Ping | Request::Stats | Request::List(_) => None,
            Request::Create(r) => Some(&r.name),
            Request::Checkpoint(r) => Some(&r.name),
            Request::Resume(r) => Some(&r.name),
            Request::Get(r) => Some(&r.name),
            Request::Fail(r) => Some(&r.name),
            Request::Watch(r) => r.name.as_deref(),
            Request::Show(r)
            | Request::History(r)
            | Request::Pause(r)
            | Request::Complete(r)
            | Request::Cancel(r)
            | Request::Delete(r) => Some(&r.name),
        }
    }
}

/// A request with its correlation id and, for root, the user it acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    pub id: u64,
    /// Root only: act on this user's sessions.
    pub uid: Option<u32>,
    pub request: Request,
}

/// A successful reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Pong {
        version: String,
        protocol: u32,
    },
    Session(SessionInfo),
    Checkpoint(Option<CheckpointInfo>),
    Resumed {
        session: SessionInfo,
        checkpoint: Option<CheckpointInfo>,
    },
    Sessions(Vec<SessionInfo>),
    Checkpoints(Vec<CheckpointInfo>),
    Deleted(bool),
    Stats(Stats),
    /// First reply of a `watch`; events follow with the same id.
    Watching,
    Event(Event),
}

/// A reply (or a watch event) to the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Reply, WireError>,
}
