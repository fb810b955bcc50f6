//! Typed errors: one variant per wire error kind, so callers can match `NotFound`,
//! `OwnerAlive { pid }`, `Fenced`, ...; plus the client's own failures.

use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::{ErrorKind, WireError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to sessiond at {}: {error}{}", path.display(), connect_hint(error))]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The socket's directory could be another user's to swap the socket in (see
    /// `sessiond_proto::paths::check_socket_dir`): nothing is sent there.
    #[error("{reason}")]
    UntrustedSocket { path: PathBuf, reason: String },
    #[error("lost the connection to sessiond: {0} (the daemon may have restarted; reconnect)")]
    Disconnected(std::io::Error),
    #[error("sessiond did not answer within {0:?}")]
    Timeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The session's owner is alive: its PID, and its host when sessions are shared by
    /// several hosts.
    #[error("{message}")]
    OwnerAlive {
        pid: Option<u32>,
        host: Option<String>,
        message: String,
    },
    #[error("{0}")]
    Fenced(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    SessionClosed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    UnsupportedVersion(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// An op of a `batch` failed (so nothing of it was applied): which one, and why.
    #[error("{source}")]
    Batch { index: u32, source: Box<Error> },
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
