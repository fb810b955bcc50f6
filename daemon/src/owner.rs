//! The owner watcher: notices that a session's owner process has exited and has the session
//! marked stale.
//!
//! On Linux every distinct owner gets one pidfd registered with tokio, shared by all of its
//! sessions: an exit wakes us within milliseconds, without polling. A periodic sweep is the
//! fallback where no pidfd could be had (another OS, out of descriptors) and, every
//! [`FULL_SWEEP_EVERY`] ticks, the safety net over every owner.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::commit::OwnerChange;
use crate::process::ProcessProbe;
use crate::service::Service;
use crate::store::record::Owner;

/// Every this many sweep ticks, owners watched by a pidfd are probed too.
pub const FULL_SWEEP_EVERY: u64 = 30;

struct Watched {
    /// Active sessions it owns (the table knows which).
    sessions: usize,
    /// The pidfd task; `None` when the owner is left to the sweep.
    task: Option<AbortHandle>,
}

enum Exit {
    Exited(Owner),
    /// No pidfd for this owner (the sweep covers it).
    Unwatchable(Owner, io::Error),
}

pub struct OwnerWatcher {
    service: Arc<Service>,
    probe: Arc<dyn ProcessProbe>,
    owners: HashMap<Owner, Watched>,
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
            owners: HashMap::new(),
            exits_tx,
            exits,
            use_pidfd,
        };
        for (owner, sessions) in owners {
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
                Some(change) = changes.recv() => self.change(change),
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
                                if let Some(w) = self.owners.get_mut(&owner) {
                                    w.task = None;
                                }
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
        for w in self.owners.values() {
            if let Some(t) = &w.task {
                t.abort();
            }
        }
    }

    fn change(&mut self, change: OwnerChange) {
        if change.previous == change.owner {
            return;
        }
        if let Some(old) = change.previous {
            if let Some(w) = self.owners.get_mut(&old) {
                w.sessions = w.sessions.saturating_sub(1);
                if w.sessions == 0 {
                    if let Some(t) = &w.task {
                        t.abort();
                    }
                    self.owners.remove(&old);
                }
            }
        }
        if let Some(owner) = change.owner {
            self.hold(owner, 1);
        }
    }

    /// Counts `sessions` more for `owner`, watching it if it is new.
    fn hold(&mut self, owner: Owner, sessions: usize) {
        let (probe, tx) = (self.probe.clone(), self.exits_tx.clone());
        let use_pidfd = self.use_pidfd;
        let w = self.owners.entry(owner).or_insert_with(|| {
            let task = use_pidfd.then(|| {
                tokio::spawn(async move {
                    let _ = tx.send(match wait_for_exit(owner, &*probe).await {
                        Ok(()) => Exit::Exited(owner),
                        Err(e) => Exit::Unwatchable(owner, e),
                    });
                })
                .abort_handle()
            });
            Watched { sessions: 0, task }
        });
        w.sessions += sessions;
    }

    /// Has the sessions of `dead` owners marked stale. Sessions that change owner meanwhile
    /// are safe: the commit thread re-checks the owner.
    async fn exited(&mut self, dead: HashSet<Owner>) {
        for owner in &dead {
            if let Some(t) = self.owners.remove(owner).and_then(|w| w.task) {
                t.abort();
            }
        }
        if dead.is_empty() {
            return;
        }
        let service = self.service.clone();
        // A scan of the table: off the async workers.
        let owned = tokio::task::spawn_blocking(move || service.owned_by(&dead))
            .await
            .unwrap_or_default();
        for (key, owner) in owned {
            tracing::info!(session = %key.1, uid = key.0, pid = owner.pid, "owner exited; marking the session stale");
            // The reply is not needed.
            drop(self.service.mark_stale(key, owner));
        }
    }

    async fn sweep(&mut self, full: bool) {
        let candidates: Vec<Owner> = self
            .owners
            .iter()
            .filter(|(_, w)| full || w.task.is_none())
            .map(|(o, _)| *o)
            .collect();
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
