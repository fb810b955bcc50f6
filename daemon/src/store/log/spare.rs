//! A spare segment file, written full of zeros off the commit thread. A segment started by a
//! rotation that finds no dead segment's file to reuse is only allocated (see [`super::log`]):
//! writing zeros there would hold up every write for the time that takes (about 70 ms for
//! 64 MiB here). Once the active segment is half full, and no full-size free file is left,
//! this thread makes one for the next segment, at a pace that leaves the disk to the commit
//! thread's flushes (a 64 MiB spare takes a quarter of a second at least): `log/spare.tmp`,
//! zero-filled and synced, then named `log/0000000000000000.free`. Number 0 is no segment's
//! (they start at 1), so garbage collection never names a dead segment so, and the next
//! segment takes it first. A spare cut short by a crash is only ever `spare.tmp`, which the
//! next one overwrites.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::files::{allocate, is_full, rename_no_replace, write_zeros};
use super::scope::{self, within};
use super::segment::{free_path, list_free, LOG_DIR};
use crate::health::{Health, Work};

/// Where a spare is written before it is named a free file.
pub const SPARE_TMP: &str = "spare.tmp";

/// Asks the spare thread for a spare file. Dropping it ends the thread.
#[derive(Debug)]
pub struct SpareMaker {
    ask: SyncSender<()>,
}

impl SpareMaker {
    /// Starts the thread that makes spares of `segment_bytes` in `dir`'s log. A failed
    /// spare is only reported: new segments are then allocated, and the next segment asks
    /// again.
    pub fn start(dir: &Path, segment_bytes: u64, health: Arc<Health>) -> io::Result<SpareMaker> {
        // One request waiting is enough: each one looks at the log afresh.
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("sessiond-spare".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    match within(scope::sessiond_io_spare, || make_spare(&dir, segment_bytes)) {
                        Ok(_) => health.succeeded(Work::SpareSegment),
                        Err(e) => health.failed(Work::SpareSegment, &e),
                    }
                }
            })?;
        Ok(SpareMaker { ask })
    }

    /// Makes a spare unless the log has a full-size free file (without waiting for it).
    pub fn request(&self) {
        match self.ask.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::debug!("the spare thread has stopped");
            }
        }
    }
}

/// The spare thread's pace: a 64 MiB spare in a quarter of a second at best.
const BYTES_PER_SEC: u64 = 256 << 20;
/// Written and flushed at a time: a few MiB of dirty pages, never one long writeback burst.
const STEP: u64 = 8 << 20;

/// The log has a free file a whole segment long.
fn has_full_free(dir: &Path, segment_bytes: u64) -> io::Result<bool> {
    Ok(list_free(dir)?
        .iter()
        .any(|&old| is_full(&free_path(dir, old), segment_bytes)))
}

/// Makes `log/0000000000000000.free` if the log has no full-size free file, and gives up as
/// soon as one appears (garbage collection freed a dead segment meanwhile). Returns whether
/// it made one.
pub fn make_spare(dir: &Path, segment_bytes: u64) -> io::Result<bool> {
    if has_full_free(dir, segment_bytes)? {
        return Ok(false);
    }
    let tmp: PathBuf = dir.join(LOG_DIR).join(SPARE_TMP);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let abandon = |tmp: &Path| {
        let _ = std::fs::remove_file(tmp);
        Ok(false)
    };
    if allocate(&file, segment_bytes).is_err() {
        // No room for a whole segment: new segments grow as written.
        return abandon(&tmp);
    }
    let started = Instant::now();
    let mut at = 0;
    while at < segment_bytes {
        let to = (at + STEP).min(segment_bytes);
        let step = has_full_free(dir, segment_bytes).and_then(|freed| {
            if !freed {
                write_zeros(&file, at, to)?;
                file.sync_data()?;
            }
            Ok(freed)
        });
        match step {
            Ok(false) => {}
            Ok(true) => return abandon(&tmp),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        at = to;
        let due = Duration::from_secs_f64(at as f64 / BYTES_PER_SEC as f64);
        if let Some(early) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(early);
        }
    }
    // Not synced into the directory: a spare lost in a crash only costs the next segment
    // its zeros.
    match rename_no_replace(&tmp, &free_path(dir, 0)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => abandon(&tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log::segment::segment_path;
    use crate::store::log::writer::tests::{first_hole, write_checkpoints};
    use crate::store::log::writer::LogWriter;

    const SEG: u64 = 1 << 20;

    fn log_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(LOG_DIR)).unwrap();
        dir
    }

    fn inode(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    }

    /// A whole segment of zeros, every block written.
    fn assert_spare(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(bytes.len() as u64, SEG);
        assert!(bytes.iter().all(|&b| b == 0));
        assert_eq!(first_hole(path, 0), SEG, "no unwritten blocks");
    }

    #[test]
    fn a_spare_is_made_only_when_no_full_size_free_file_exists() {
        let dir = log_dir();
        let spare = free_path(dir.path(), 0);
        assert!(make_spare(dir.path(), SEG).unwrap());
        assert_spare(&spare);
        assert!(!dir.path().join(LOG_DIR).join(SPARE_TMP).exists());
        assert!(!make_spare(dir.path(), SEG).unwrap(), "one is there");
        // A short free file (trimmed at a clean stop) is not one.
        std::fs::rename(&spare, free_path(dir.path(), 7)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(free_path(dir.path(), 7))
            .unwrap()
            .set_len(4096)
            .unwrap();
        assert!(make_spare(dir.path(), SEG).unwrap());
        assert_spare(&spare);
    }

    #[test]
    fn a_spare_cut_short_by_a_crash_is_started_over() {
        let dir = log_dir();
        std::fs::write(dir.path().join(LOG_DIR).join(SPARE_TMP), vec![0xff; 5000]).unwrap();
        assert!(make_spare(dir.path(), SEG).unwrap());
        assert_spare(&free_path(dir.path(), 0));
    }

    #[test]
    fn a_spare_is_given_up_when_a_dead_segment_is_freed_meanwhile() {
        let dir = log_dir();
        // At the spare thread's pace, 256 MiB take a second at least.
        let big = 256 << 20;
        let making = {
            let dir = dir.path().to_path_buf();
            std::thread::spawn(move || make_spare(&dir, big))
        };
        wait_for(&dir.path().join(LOG_DIR).join(SPARE_TMP));
        let freed = std::fs::File::create(free_path(dir.path(), 5)).unwrap();
        freed.set_len(big).unwrap();
        assert!(!making.join().unwrap().unwrap());
        assert!(!dir.path().join(LOG_DIR).join(SPARE_TMP).exists());
        assert!(!free_path(dir.path(), 0).exists());
    }

    fn wait_for(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no {}", path.display());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_segment_asks_for_a_spare_once_when_half_full() {
        let dir = log_dir();
        let (ask, asked) = mpsc::sync_channel(4);
        let mut log = LogWriter::create(dir.path(), 1, SEG).unwrap();
        log.make_spares_with(SpareMaker { ask });
        // Checkpoints of 3,000 bytes: 150 stay under half of 1 MiB, 175 pass it.
        write_checkpoints(&mut log, 1..=150);
        assert!(asked.try_recv().is_err(), "asked for before half full");
        write_checkpoints(&mut log, 151..=175);
        assert!(asked.try_recv().is_ok());
        write_checkpoints(&mut log, 176..=200);
        assert!(asked.try_recv().is_err(), "asked for twice");
        // The next segment asks again, at its own half.
        log.rotate().unwrap();
        write_checkpoints(&mut log, 201..=375);
        assert!(asked.try_recv().is_ok());
    }

    #[test]
    fn the_next_segment_takes_the_spare_the_thread_made() {
        let dir = log_dir();
        let spare = free_path(dir.path(), 0);
        let mut log = LogWriter::create(dir.path(), 1, SEG).unwrap();
        log.make_spares_with(SpareMaker::start(dir.path(), SEG, Default::default()).unwrap());
        for (segment, numbers) in [(2, 1..=175), (3, 176..=350)] {
            write_checkpoints(&mut log, numbers);
            wait_for(&spare);
            assert_spare(&spare);
            let made = inode(&spare);
            log.rotate().unwrap();
            assert_eq!(inode(&segment_path(dir.path(), segment)), made);
        }
    }

    #[test]
    fn a_spare_never_replaces_a_free_file_named_like_it() {
        let dir = log_dir();
        // A short file under the spare's name (not a whole one, so a spare is due).
        std::fs::write(free_path(dir.path(), 0), b"not a spare").unwrap();
        assert!(!make_spare(dir.path(), SEG).unwrap());
        assert_eq!(
            std::fs::read(free_path(dir.path(), 0)).unwrap(),
            b"not a spare"
        );
        assert!(!dir.path().join(LOG_DIR).join(SPARE_TMP).exists());
    }
}
