//! Errors as both encodings carry them: a stable kind scripts branch on, and a message.

use std::fmt;

use serde::{Deserialize, Serialize};

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
