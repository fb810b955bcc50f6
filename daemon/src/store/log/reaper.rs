//! Deletes dead segments (`log/<seq>.dead`) on a thread of its own, one after another and a
//! few MiB at a time, so that neither the commit thread nor the disk's next flush waits for a
//! large file's blocks to be freed. A deletion that fails is tried again later (the thread
//! backs off up to [`MAX_RETRY`]); the files a stopped daemon left are deleted at its next
//! start.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::scope::{self, within};
use super::segment::LOG_DIR;
use crate::health::{Health, Work};

/// Extension of a dead segment waiting to be unlinked.
pub const RETIRED_EXTENSION: &str = "dead";

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Hands dead segments to the deleting thread. If it could not be started, the files stay
/// and the next start-up deletes them.
pub struct Reaper {
    tx: Option<Mutex<Sender<PathBuf>>>,
}

impl Reaper {
    /// Starts the thread, and hands it the dead segments a previous run left in `dir`.
    pub fn start(dir: &Path, health: Arc<Health>) -> Reaper {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let spawned = std::thread::Builder::new()
            .name("sessiond-reaper".into())
            .spawn(move || reap(rx, &health));
        let reaper = match spawned {
            Ok(_) => Reaper {
                tx: Some(Mutex::new(tx)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a thread to delete dead log segments; each start-up will");
                Reaper { tx: None }
            }
        };
        reaper.delete(left_behind(dir));
        reaper
    }

    /// Deletes `paths` in the background.
    pub fn delete(&self, paths: Vec<PathBuf>) {
        if let Some(tx) = &self.tx {
            let tx = tx.lock().unwrap_or_else(|p| p.into_inner());
            for p in paths {
                // The thread never stops while the process runs.
                let _ = tx.send(p);
            }
        }
    }
}

/// The dead segments in `dir`'s log.
fn left_behind(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir.join(LOG_DIR)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == RETIRED_EXTENSION))
        .collect()
}

fn reap(rx: mpsc::Receiver<PathBuf>, health: &Health) {
    let mut pending: Vec<PathBuf> = Vec::new();
    let mut retry = FIRST_RETRY;
    loop {
        // Waits for work; with failed deletions left, only until it is time to retry them.
        let next = if pending.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(retry)
        };
        match next {
            Ok(p) => pending.push(p),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        pending.extend(rx.try_iter());
        let mut failed = Vec::new();
        for p in pending.drain(..) {
            match within(scope::sessiond_io_retire, || delete_gradually(&p)) {
                Ok(()) => health.succeeded(Work::SegmentDeletion),
                Err(e) => {
                    health.failed(
                        Work::SegmentDeletion,
                        &format_args!("cannot delete {}: {e}", p.display()),
                    );
                    failed.push(p);
                }
            }
        }
        retry = if failed.is_empty() {
            FIRST_RETRY
        } else {
            (retry * 2).min(MAX_RETRY)
        };
        pending = failed;
    }
}

/// Shrinks the file a few MiB at a time before unlinking it. On a filesystem mounted with
/// `discard`, freeing 64 MiB at once queues that much discard work on the device, and the
/// commit thread's next `fdatasync` waits behind all of it; paced steps keep each wait short.
fn delete_gradually(path: &Path) -> io::Result<()> {
    const STEP: u64 = 4 << 20;
    const PAUSE: Duration = Duration::from_millis(2);
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(file) => {
            let mut len = file.metadata()?.len();
            while len > STEP {
                len -= STEP;
                file.set_len(len)?;
                std::thread::sleep(PAUSE);
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return gone(path, e),
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => gone(path, e),
        other => other,
    }
}

/// After a call said `path` does not exist: done if that is so (a failing disk may say it of
/// a file that is there, which must then be tried again).
fn gone(path: &Path, said: io::Error) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => Err(said),
    }
}
