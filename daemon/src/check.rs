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

pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let table = Mutex::new(SessionTable::new(16));
    crate::store::log::check::check(dir, &table)
}
