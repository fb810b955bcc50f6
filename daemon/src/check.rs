//! `sessiond check`: verifies a state directory offline and lists what is damaged.

use std::path::Path;
use std::sync::Mutex;

pub use crate::store::log::check::CheckReport;
use crate::store::StoreError;
use crate::table::SessionTable;

pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let table = Mutex::new(SessionTable::new(16));
    crate::store::log::check::check(dir, &table)
}
