//! Typed errors: one variant per wire error kind, so callers can match `NotFound`,
//! `OwnerAlive { pid }`, `Fenced`, ...; plus the client's own failures.

use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::{ErrorKind, WireError};

/// What a call to the daemon can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon's socket could not be connected to.
    #[error("cannot connect to sessiond at {}: {error}{}", path.display(), connect_hint(error))]
    Connect {
        /// The socket tried.
        path: PathBuf,
        /// Why it failed (not there, refused, permission denied, ...).
        error: std::io::Error,
    },
    /// The socket's directory could be another user's to swap the socket in (see
    /// `sessiond_proto::paths::check_socket_dir`): nothing is sent there.
    #[error("{reason}")]
    UntrustedSocket {
        /// The socket that was not used.
        path: PathBuf,
        /// What is wrong with its directory (owner, mode).
        reason: String,
    },
    /// The connection broke (the daemon stopped or restarted): reconnect.
    #[error("lost the connection to sessiond: {0} (the daemon may have restarted; reconnect)")]
    Disconnected(std::io::Error),
    /// No answer within the client's timeout.
    #[error("sessiond did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon's bytes made no sense (a bug, or not a sessiond on the socket).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// `invalid_argument`: a bad name, key, meta or combination of fields.
    #[error("{0}")]
    InvalidArgument(String),
    /// `not_found`: no such session (or checkpoint).
    #[error("{0}")]
    NotFound(String),
    /// `already_exists`: the session, or another checkpoint under that key, exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The session's owner is alive: its PID, and its host when sessions are shared by
    /// several hosts.
    #[error("{message}")]
    OwnerAlive {
        /// The owner's PID (as the daemon numbers it).
        pid: Option<u32>,
        /// The owner's host, on a shared store.
        host: Option<String>,
        /// The daemon's message.
        message: String,
    },
    /// `fenced`: the write carried an older epoch; another process has resumed the session.
    #[error("{0}")]
    Fenced(String),
    /// `conflict`: `expect` did not match the latest checkpoint.
    #[error("{0}")]
    Conflict(String),
    /// `session_closed`: the session is completed, failed or cancelled.
    #[error("{0}")]
    SessionClosed(String),
    /// `too_large`: a payload, meta or request over the daemon's limits.
    #[error("{0}")]
    TooLarge(String),
    /// `permission_denied`: another user's sessions, or a root-only field.
    #[error("{0}")]
    PermissionDenied(String),
    /// `unsupported_version`: the daemon and this client share no protocol version.
    #[error("{0}")]
    UnsupportedVersion(String),
    /// `unavailable`: the store cannot write now (a failing disk, the database away); try
    /// again later.
    #[error("{0}")]
    Unavailable(String),
    /// `internal`: a bug in the daemon.
    #[error("{0}")]
    Internal(String),
    /// An op of a `batch` failed (so nothing of it was applied): which one, and why.
    #[error("{source}")]
    Batch {
        /// The failed op, counted from 0.
        index: u32,
        /// Why it failed.
        source: Box<Error>,
    },
}

impl From<WireError> for Error {
    fn from(mut e: WireError) -> Self {
        if let Some(index) = e.index.take() {
            return Error::Batch {
                index,
                source: Box::new(Error::from(e)),
            };
        }
        let m = e.message;
        match e.kind {
            ErrorKind::InvalidArgument => Error::InvalidArgument(m),
            ErrorKind::NotFound => Error::NotFound(m),
            ErrorKind::AlreadyExists => Error::AlreadyExists(m),
            ErrorKind::OwnerAlive => Error::OwnerAlive {
                pid: e.owner_pid,
                host: e.owner_host,
                message: m,
            },
            ErrorKind::Fenced => Error::Fenced(m),
            ErrorKind::Conflict => Error::Conflict(m),
            ErrorKind::SessionClosed => Error::SessionClosed(m),
            ErrorKind::TooLarge => Error::TooLarge(m),
            ErrorKind::PermissionDenied => Error::PermissionDenied(m),
            ErrorKind::UnsupportedVersion => Error::UnsupportedVersion(m),
            ErrorKind::Unavailable => Error::Unavailable(m),
            ErrorKind::Internal => Error::Internal(m),
        }
    }
}

impl Error {
    /// The daemon's error kind, when the daemon refused the request.
    pub fn kind(&self) -> Option<ErrorKind> {
        Some(match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::OwnerAlive { .. } => ErrorKind::OwnerAlive,
            Error::Fenced(_) => ErrorKind::Fenced,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::SessionClosed(_) => ErrorKind::SessionClosed,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Error::UnsupportedVersion(_) => ErrorKind::UnsupportedVersion,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Batch { source, .. } => return source.kind(),
            Error::Connect { .. }
            | Error::UntrustedSocket { .. }
            | Error::Disconnected(_)
            | Error::Timeout(_)
            | Error::Protocol(_) => return None,
        })
    }

    /// For a failed `batch`: the op that failed (counted from 0).
    pub fn batch_index(&self) -> Option<u32> {
        match self {
            Error::Batch { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The daemon could not be reached (or was lost): worth a reconnect.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::UntrustedSocket { .. } | Error::Disconnected(_)
        )
    }
}

/// A result of this crate's calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error a daemon's hello refusal stands for: its message starts with the error kind.
pub(crate) fn refusal(message: &[u8]) -> Error {
    let text = String::from_utf8_lossy(message).into_owned();
    match text.split_once(':') {
        Some(("unavailable", _)) => Error::Unavailable(text),
        _ => Error::UnsupportedVersion(text),
    }
}

/// What to do about a failed connection.
fn connect_hint(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied => format!(
            " (this user, uid {}, may not connect: the daemon's --socket-mode, or --socket-group, \
             sets who may, and every directory above the socket must let this user through)",
            sessiond_proto::paths::euid()
        ),
        _ => " (is the daemon running? start it with `sessiond`)".into(),
    }
}
