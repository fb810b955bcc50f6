//! The state directory's lock: one daemon per state directory. `flock` is released by the
//! kernel when the process dies, so a restart after `kill -9` is never blocked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

pub const LOCK_FILE: &str = "LOCK";

#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("a running sessiond{holder} serves state directory {dir}: stop it first, or check a copy of the directory (cp -a)")]
    Serving { dir: String, holder: String },
    #[error("another sessiond{holder} holds the lock on state directory {dir}; stop it or choose another --state-dir")]
    Held { dir: String, holder: String },
    #[error("cannot lock state directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}

/// Who holds the lock, as its file says: " (pid N)", or nothing.
fn holder(file: &mut File) -> String {
    let mut pid = String::new();
    let _ = file.read_to_string(&mut pid);
    match pid.trim() {
        "" => String::new(),
        p => format!(" (pid {p})"),
    }
}

impl StateLock {
    /// Holds an existing state directory's lock without changing anything there, so that no
    /// daemon serves it meanwhile (`sessiond check`); `None` if it has no lock file (no
    /// daemon ever ran there). A running daemon's directory is refused.
    pub fn hold_existing(dir: &Path) -> Result<Option<Self>, LockError> {
        let file = match File::open(dir.join(LOCK_FILE)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Io {
                    dir: dir.display().to_string(),
                    source,
                })
            }
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(StateLock { _lock: lock })),
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Serving {
                dir: dir.display().to_string(),
                holder: holder(&mut file),
            }),
            Err((_, errno)) => Err(LockError::Io {
                dir: dir.display().to_string(),
                source: errno.into(),
            }),
        }
    }

    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let io_err = |source| LockError::Io {
            dir: dir.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io_err)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(LockError::Held {
                    dir: dir.display().to_string(),
                    holder: holder(&mut file),
                });
            }
            Err((_, errno)) => return Err(io_err(errno.into())),
        };
        lock.set_len(0).map_err(io_err)?;
        lock.seek(SeekFrom::Start(0)).map_err(io_err)?;
        writeln!(lock, "{}", std::process::id()).map_err(io_err)?;
        Ok(StateLock { _lock: lock })
    }
}
