//! `sessiond check`: verifies a state directory offline, or the shared store, and lists what
//! is damaged.

use std::path::Path;
use std::sync::Mutex;

pub use crate::store::log::check::CheckReport;
use crate::store::StoreError;
use crate::table::SessionTable;

/// Verifies the shared store at `cfg.url`.
pub fn check_store(cfg: &crate::store::pg::PgConfig) -> Result<CheckReport, StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Io {
            context: "cannot start the async runtime".into(),
            source: e,
        })?;
    rt.block_on(crate::store::pg::check::check(cfg))
}

/// Why a state directory cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("no such directory: {0}")]
    Missing(String),
}

/// Verifies the state directory `dir`, holding its lock meanwhile so that no daemon starts
/// on it. A running daemon's directory is refused unless `live` (then what it writes
/// meanwhile may read as an unfinished last write, which is not damage).
pub fn check(dir: &Path, live: bool) -> Result<CheckReport, CheckError> {
    if !dir.is_dir() {
        return Err(CheckError::Missing(dir.display().to_string()));
    }
    let (_lock, note) = match crate::lock::StateLock::hold_existing(dir) {
        Ok(lock) => (lock, None),
        Err(e @ crate::lock::LockError::Serving { .. }) if live => (None, Some(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let table = Mutex::new(SessionTable::new(16));
    let mut report = crate::store::log::check::check(dir, &table)?;
    if let Some(note) = note {
        report
            .lines
            .insert(0, format!("note (--live): {note}; checking it as it is"));
    }
    Ok(report)
}
