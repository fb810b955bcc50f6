//! The owner watcher: notices that a session's owner process has exited and has the session
//! marked stale.
//!
//! On Linux every distinct owner gets one pidfd registered with tokio, state by all of its
//! sessions: an exit wakes us within milliseconds, without polling. A periodic sweep is the
//! fallback where no pidfd could be had (another OS, out of descriptors) and, every
//! [`FULL_SWEEP_EVERY`] ticks, the safety net over every owner.
//!
//! It keeps no list of sessions: only how many active sessions each owner has (so an owner is
//! watched exactly while it has one). When owners exit, one scan of the table finds their
//! sessions (~5 ms for 100,000 sessions, on the blocking pool); that costs per-session memory
//! nothing.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::model::Owner;
use crate::process::ProcessProbe;
use crate::service::Service;
use crate::table::OwnerChange;

/// Every this many sweep ticks, owners watched by a pidfd are probed too.
pub const FULL_SWEEP_EVERY: u64 = 30;

/// The watcher's bookkeeping, no I/O: active sessions counted per owner, following committed
/// ownership changes exactly, so an owner is forgotten with its last active session. An owner
/// that exited stays, marked, until the sessions counted for it are released (by their stale
/// marks, or anything else that moves them); a session counted for it after its exit (a create
/// that raced with the death) must be marked stale at once. `W` is the handle of its watch.
struct Ledger<W> {
    owners: HashMap<Owner, Counted<W>>,
}

struct Counted<W> {
    sessions: usize,
    exited: bool,
    /// `None` when the owner is left to the sweep.
    watch: Option<W>,
}

#[derive(Debug, PartialEq, Eq)]
enum Held {
    /// Not known before: start watching it.
    New,
    Known,
    /// It has exited: have its sessions marked stale.
    Exited,
}

impl<W> Ledger<W> {
    fn new() -> Self {
        Ledger {
            owners: HashMap::new(),
        }
    }

    fn hold(&mut self, owner: Owner, sessions: usize) -> Held {
        match self.owners.get_mut(&owner) {
            Some(c) => {
                c.sessions += sessions;
                if c.exited {
                    Held::Exited
                } else {
                    Held::Known
                }
            }
            None => {
                self.owners.insert(
                    owner,
                    Counted {
                        sessions,
                        exited: false,
                        watch: None,
                    },
                );
                Held::New
            }
        }
    }

    /// One session less; the watch to stop if the owner is forgotten.
    fn release(&mut self, owner: Owner) -> Option<W> {
        let c = self.owners.get_mut(&owner)?;
        c.sessions = c.sessions.saturating_sub(1);
        if c.sessions > 0 {
            return None;
        }
        self.owners.remove(&owner).and_then(|c| c.watch)
    }

    /// Marks `owner` exited. `None` if it is unknown or already marked (nothing to do), else
    /// its watch, which has no more to tell.
    fn exited(&mut self, owner: Owner) -> Option<Option<W>> {
        let c = self.owners.get_mut(&owner).filter(|c| !c.exited)?;
        c.exited = true;
        Some(c.watch.take())
    }

    fn set_watch(&mut self, owner: Owner, watch: Option<W>) {
        if let Some(c) = self.owners.get_mut(&owner) {
            c.watch = watch;
        }
    }

    /// Live owners for the sweep: those without a watch, or all of them.
    fn to_sweep(&self, all: bool) -> Vec<Owner> {
        self.owners
            .iter()
            .filter(|(_, c)| !c.exited && (all || c.watch.is_none()))
            .map(|(o, _)| *o)
            .collect()
    }

    /// Owners that exited but still have sessions counted.
    fn exited_owners(&self) -> HashSet<Owner> {
        self.owners
            .iter()
            .filter(|(_, c)| c.exited)
            .map(|(o, _)| *o)
            .collect()
    }

    fn watches(&self) -> impl Iterator<Item = &W> {
        self.owners.values().filter_map(|c| c.watch.as_ref())
    }
}

enum Exit {
    Exited(Owner),
    /// No pidfd for this owner (the sweep covers it).
    Unwatchable(Owner, io::Error),
}

pub struct OwnerWatcher {
    service: Arc<Service>,
    probe: Arc<dyn ProcessProbe>,
    ledger: Ledger<AbortHandle>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// `false`: leave every owner to the sweep (tests of the fallback, systems without pidfd).
    use_pidfd: bool,
}

impl OwnerWatcher {
    /// A watcher of `owners` (live owners and how many active sessions each has).
    pub fn new(
        service: Arc<Service>,
        probe: Arc<dyn ProcessProbe>,
        use_pidfd: bool,
        owners: HashMap<Owner, usize>,
    ) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let mut w = OwnerWatcher {
            service,
            probe,
            ledger: Ledger::new(),
            exits_tx,
            exits,
            use_pidfd,
        };
        for (owner, sessions) in owners {
            // None has exited yet: each is new.
            w.hold(owner, sessions);
        }
        w
    }

    /// Runs until `cancel`: follows ownership changes, reacts to exits, sweeps every `interval`.
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<OwnerChange>,
        interval: Duration,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(change) = changes.recv() => {
                    if let Some(exited) = self.change(change) {
                        self.mark_stale(HashSet::from([exited])).await;
                    }
                }
                Some(exit) = self.exits.recv() => {
                    // Owners often die together: one look at the table for all of them.
                    let mut dead = HashSet::new();
                    let mut next = Some(exit);
                    while let Some(exit) = next {
                        match exit {
                            Exit::Exited(owner) => {
                                dead.insert(owner);
                            }
                            Exit::Unwatchable(owner, e) => {
                                tracing::debug!(pid = owner.pid, error = %e, "no pidfd for an owner; the sweep watches it");
                                self.ledger.set_watch(owner, None);
                            }
                        }
                        next = self.exits.try_recv().ok();
                    }
                    self.exited(dead).await;
                }
                _ = tick.tick() => {
                    ticks += 1;
                    self.sweep(ticks.is_multiple_of(FULL_SWEEP_EVERY)).await;
                }
            }
        }
        for t in self.ledger.watches() {
            t.abort();
        }
    }

    /// Follows a committed change; returns an owner whose sessions must be marked stale
    /// now (it exited before this session was counted for it).
    fn change(&mut self, change: OwnerChange) -> Option<Owner> {
        if change.previous == change.owner {
            return None;
        }
        if let Some(t) = change.previous.and_then(|old| self.ledger.release(old)) {
            t.abort();
        }
        let owner = change.owner?;
        (self.hold(owner, 1) == Held::Exited).then_some(owner)
    }

    /// Counts `sessions` more for `owner`, watching it if it is new.
    fn hold(&mut self, owner: Owner, sessions: usize) -> Held {
        let held = self.ledger.hold(owner, sessions);
        if held == Held::New && self.use_pidfd {
            let (probe, tx) = (self.probe.clone(), self.exits_tx.clone());
            let task = tokio::spawn(async move {
                let _ = tx.send(match wait_for_exit(owner, &*probe).await {
                    Ok(()) => Exit::Exited(owner),
                    Err(e) => Exit::Unwatchable(owner, e),
                });
            });
            self.ledger.set_watch(owner, Some(task.abort_handle()));
        }
        held
    }

    /// Owners seen to exit: marks them, then their sessions stale.
    async fn exited(&mut self, dead: HashSet<Owner>) {
        let mut newly = HashSet::new();
        for owner in dead {
            if let Some(watch) = self.ledger.exited(owner) {
                if let Some(t) = watch {
                    t.abort();
                }
                newly.insert(owner);
            }
        }
        self.mark_stale(newly).await;
    }

    /// Has the active sessions of `dead` owners marked stale. Sessions that change owner
    /// meanwhile are safe: the commit thread re-checks the owner.
    async fn mark_stale(&self, dead: HashSet<Owner>) {
        if dead.is_empty() {
            return;
        }
        let service = self.service.clone();
        // A scan of the table: off the async workers.
        let owned = tokio::task::spawn_blocking(move || service.owned_by(&dead))
            .await
            .unwrap_or_default();
        let marks: Vec<_> = owned
            .into_iter()
            .map(|(key, owner)| {
                tracing::info!(session = %key.name, uid = key.uid, pid = owner.pid, "owner exited; marking the session stale");
                self.service.mark_stale(key, owner)
            })
            .collect();
        // The replies are not needed; dropped once all are queued, they are committed as one
        // batch.
        drop(marks);
    }

    async fn sweep(&mut self, full: bool) {
        if full {
            // Exited owners still counting sessions: their stale marks did not all commit
            // (a full disk refuses them); ask again.
            let pending = self.ledger.exited_owners();
            self.mark_stale(pending).await;
        }
        let candidates = self.ledger.to_sweep(full);
        if candidates.is_empty() {
            return;
        }
        let probe = self.probe.clone();
        let dead = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter(|o| !probe.is_alive(o))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        self.exited(dead.into_iter().collect()).await;
    }
}

/// Resolves when `owner` exits. Opens the pidfd first and checks the start time after, so a
/// PID reused in between is never watched in the owner's place.
#[cfg(target_os = "linux")]
async fn wait_for_exit(owner: Owner, probe: &dyn ProcessProbe) -> io::Result<()> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    let Some(pid) = i32::try_from(owner.pid).ok().and_then(Pid::from_raw) else {
        return Ok(());
    };
    let fd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if !probe.is_alive(&owner) {
        return Ok(());
    }
    // SAFETY: the AsyncFd takes the OwnedFd, so the descriptor stays open and refers to this
    // pidfd for as long as it is registered.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    let _ready = fd.readable().await?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn wait_for_exit(_owner: Owner, _probe: &dyn ProcessProbe) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "no pidfd on this system",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Owner {
        Owner { pid, start_time: 1 }
    }

    #[test]
    fn an_owner_is_forgotten_with_its_last_session() {
        let mut l = Ledger::new();
        assert_eq!(l.hold(owner(1), 2), Held::New);
        l.set_watch(owner(1), Some("watch"));
        assert_eq!(l.hold(owner(1), 1), Held::Known);
        assert_eq!(l.release(owner(1)), None);
        assert_eq!(l.release(owner(1)), None);
        assert_eq!(
            l.release(owner(1)),
            Some("watch"),
            "the last one stops the watch"
        );
        assert_eq!(l.release(owner(1)), None, "an unknown owner is ignored");
        assert!(l.owners.is_empty());
    }

    #[test]
    fn a_session_counted_after_its_owner_exited_is_marked_and_counts_stay_exact() {
        let mut l = Ledger::new();
        l.hold(owner(1), 2);
        l.set_watch(owner(1), Some("watch"));
        assert_eq!(l.exited(owner(1)), Some(Some("watch")));
        assert_eq!(l.exited(owner(1)), None, "marked once");
        assert!(l.to_sweep(true).is_empty(), "an exited owner is not swept");
        assert_eq!(
            l.exited_owners(),
            HashSet::from([owner(1)]),
            "until released"
        );
        // A create that raced with the death, then the stale marks of the first two: the
        // late one must not be left with nobody watching.
        assert_eq!(l.hold(owner(1), 1), Held::Exited);
        l.release(owner(1));
        l.release(owner(1));
        assert!(
            l.owners.contains_key(&owner(1)),
            "one session still counted"
        );
        l.release(owner(1));
        assert!(l.owners.is_empty());
    }

    #[test]
    fn the_sweep_takes_unwatched_owners_or_every_live_one() {
        let mut l = Ledger::new();
        l.hold(owner(1), 1);
        l.set_watch(owner(1), Some("watch"));
        l.hold(owner(2), 1);
        assert_eq!(l.to_sweep(false), vec![owner(2)]);
        let mut all = l.to_sweep(true);
        all.sort_by_key(|o| o.pid);
        assert_eq!(all, vec![owner(1), owner(2)]);
    }
}
