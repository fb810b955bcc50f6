//! What the daemon knows of its disk: each kind of disk work is working, or failing since
//! some moment. A failing disk must not turn into a log storm: the first failure of a kind
//! is logged once with its error, later ones are only counted (with a reminder at most once
//! a minute), and its recovery is logged once it has worked again with no failure for
//! [`QUIET`] (a disk failing one call in twenty stays one episode, not a line per call).
//! While any kind of work fails the store is degraded, which `stats` and STATUS= show.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sessiond_proto::{FailingWork, StoreHealth};

/// A kind of disk work, as operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Work {
    /// Appending records and flushing them: when it fails, writes are refused.
    LogWrite,
    /// Creating a log segment (rotation, or the one after a failure).
    NewSegment,
    IndexSnapshot,
    SpareSegment,
    Compaction,
    /// Retiring dead segments and freeing their files.
    SegmentDeletion,
    /// Reading checkpoints for clients.
    Read,
    /// A shared store's transactions: when they fail, writes are refused.
    DatabaseWrite,
    /// Renewing this host's lease in a shared store.
    Lease,
}

impl Work {
    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Work::LogWrite => "log write",
            Work::NewSegment => "new log segment",
            Work::IndexSnapshot => "index snapshot",
            Work::SpareSegment => "spare segment",
            Work::Compaction => "compaction",
            Work::SegmentDeletion => "segment deletion",
            Work::Read => "read",
            Work::DatabaseWrite => "database write",
            Work::Lease => "host lease",
        }
    }
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How often a failure that goes on is logged again.
const REMIND_EVERY: Duration = Duration::from_secs(60);
/// How long a kind of work must go without failing, once it works again, to count as
/// recovered.
pub const QUIET: Duration = Duration::from_secs(1);

struct Failing {
    since: DateTime<Utc>,
    started: Instant,
    errors: u64,
    last_error: String,
    last_failure: Instant,
    /// It worked since its last failure.
    worked: bool,
    reminded: Instant,
}

impl Failing {
    fn recovered(&self, now: Instant) -> bool {
        self.worked && now.duration_since(self.last_failure) >= QUIET
    }
}

#[derive(Default)]
pub struct Health {
    /// One bit per kind of work failing now: a success checks it without locking.
    failing_bits: AtomicU32,
    failing: Mutex<BTreeMap<Work, Failing>>,
    disk_errors: AtomicU64,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, BTreeMap<Work, Failing>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `work` failed with `error`.
    pub fn failed(&self, work: Work, error: &dyn fmt::Display) {
        self.disk_errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut failing = self.failing();
        match failing.get_mut(&work) {
            None => {
                tracing::error!(%work, error = %error, "disk work failed; the daemon retries it by itself and logs when it works again");
                failing.insert(
                    work,
                    Failing {
                        since: Utc::now(),
                        started: now,
                        errors: 1,
                        last_error: error.to_string(),
                        last_failure: now,
                        worked: false,
                        reminded: now,
                    },
                );
                self.failing_bits.fetch_or(work.bit(), Ordering::Release);
            }
            Some(f) => {
                f.errors += 1;
                f.last_error = error.to_string();
                f.last_failure = now;
                f.worked = false;
                if now.duration_since(f.reminded) >= REMIND_EVERY {
                    f.reminded = now;
                    tracing::warn!(%work, errors = f.errors, since = %f.since.to_rfc3339(), last_error = %f.last_error, "disk work still failing");
                } else {
                    tracing::debug!(%work, error = %error, "disk work failed again");
                }
            }
        }
    }

    /// `work` succeeded: the end of its failures, if it was failing and has been quiet since.
    pub fn succeeded(&self, work: Work) {
        if self.failing_bits.load(Ordering::Acquire) & work.bit() == 0 {
            return;
        }
        let mut failing = self.failing();
        if let Some(f) = failing.get_mut(&work) {
            f.worked = true;
        }
        self.settle(&mut failing);
    }

    /// Forgets (and logs) the kinds of work that have recovered.
    fn settle(&self, failing: &mut BTreeMap<Work, Failing>) {
        let now = Instant::now();
        failing.retain(|work, f| {
            if !f.recovered(now) {
                return true;
            }
            self.failing_bits.fetch_and(!work.bit(), Ordering::Release);
            tracing::info!(%work, errors = f.errors, lasted = ?f.last_failure.duration_since(f.started), "disk work recovered");
            false
        });
    }

    pub fn is_failing(&self, work: Work) -> bool {
        if self.failing_bits.load(Ordering::Acquire) & work.bit() == 0 {
            return false;
        }
        let mut failing = self.failing();
        self.settle(&mut failing);
        failing.contains_key(&work)
    }

    /// What `stats` reports.
    pub fn report(&self) -> StoreHealth {
        let mut guard = self.failing();
        self.settle(&mut guard);
        let failing: Vec<FailingWork> = guard
            .iter()
            .map(|(work, f)| FailingWork {
                work: work.as_str().to_string(),
                since: f.since,
                errors: f.errors,
                last_error: f.last_error.clone(),
            })
            .collect();
        drop(guard);
        StoreHealth {
            degraded: !failing.is_empty(),
            failing,
            disk_errors: self.disk_errors.load(Ordering::Relaxed),
        }
    }

    /// For STATUS=: `None` while healthy.
    pub fn summary(&self) -> Option<String> {
        let mut failing = self.failing();
        self.settle(&mut failing);
        if failing.is_empty() {
            return None;
        }
        let works: Vec<String> = failing
            .iter()
            .map(|(w, f)| format!("{w} failing since {} UTC", f.since.format("%H:%M:%S")))
            .collect();
        Some(format!("store degraded: {}", works.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As if every failure of `h` had happened `QUIET` ago.
    fn age(h: &Health) {
        for f in h.failing().values_mut() {
            f.last_failure -= QUIET;
        }
    }

    #[test]
    fn a_kind_of_work_recovers_once_it_worked_after_a_quiet_spell() {
        let h = Health::new();
        assert!(!h.report().degraded);
        assert_eq!(h.summary(), None);
        h.failed(Work::LogWrite, &"EIO");
        h.failed(Work::LogWrite, &"ENOSPC");
        h.failed(Work::IndexSnapshot, &"EIO");
        let r = h.report();
        assert!(r.degraded);
        assert_eq!(r.disk_errors, 3);
        let log = &r.failing[0];
        assert_eq!(
            (log.work.as_str(), log.errors, log.last_error.as_str()),
            ("log write", 2, "ENOSPC")
        );
        assert!(h
            .summary()
            .unwrap()
            .contains("index snapshot failing since"));
        // Working right after a failure is not yet recovering: a disk that fails one call in
        // twenty stays one episode.
        h.succeeded(Work::LogWrite);
        assert!(h.is_failing(Work::LogWrite));
        // Worked, then quiet: recovered. Quiet without having worked is not; nor does
        // another kind's success change anything.
        age(&h);
        h.succeeded(Work::Read);
        assert!(!h.is_failing(Work::LogWrite));
        let r = h.report();
        assert_eq!(r.failing.len(), 1);
        assert_eq!(r.failing[0].work, "index snapshot");
        // A failure after working starts the quiet spell over.
        h.succeeded(Work::IndexSnapshot);
        h.failed(Work::IndexSnapshot, &"EIO");
        assert!(h.report().degraded);
        age(&h);
        h.succeeded(Work::IndexSnapshot);
        let r = h.report();
        assert!(!r.degraded && r.failing.is_empty());
        assert_eq!(r.disk_errors, 4, "the total stays");
    }
}
