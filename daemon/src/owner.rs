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
use crate::table::Key;

/// Every this many sweep ticks, owners watched by a pidfd are probed too.
pub const FULL_SWEEP_EVERY: u64 = 30;

struct Watched {
    keys: HashSet<Key>,
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
    pub fn new(service: Arc<Service>, probe: Arc<dyn ProcessProbe>, use_pidfd: bool) -> Self {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        OwnerWatcher {
            service,
            probe,
            owners: HashMap::new(),
            exits_tx,
            exits,
            use_pidfd,
        }
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
                Some(exit) = self.exits.recv() => match exit {
                    Exit::Exited(owner) => self.exited(owner),
                    Exit::Unwatchable(owner, e) => {
                        tracing::debug!(pid = owner.pid, error = %e, "no pidfd for an owner; the sweep watches it");
                        if let Some(w) = self.owners.get_mut(&owner) {
                            w.task = None;
                        }
                    }
                },
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
        if let Some(old) = change.previous.filter(|&p| Some(p) != change.owner) {
            if let Some(w) = self.owners.get_mut(&old) {
                w.keys.remove(&change.key);
                if w.keys.is_empty() {
                    if let Some(t) = &w.task {
                        t.abort();
                    }
                    self.owners.remove(&old);
                }
            }
        }
        let Some(owner) = change.owner else { return };
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
            Watched {
                keys: HashSet::new(),
                task,
            }
        });
        w.keys.insert(change.key);
    }

    fn exited(&mut self, owner: Owner) {
        let Some(w) = self.owners.remove(&owner) else {
            return;
        };
        for key in w.keys {
            tracing::info!(session = %key.1, uid = key.0, pid = owner.pid, "owner exited; marking the session stale");
            // The commit thread re-checks that this owner still owns it; the reply is not needed.
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
        for owner in dead {
            if let Some(t) = self.owners.get(&owner).and_then(|w| w.task.as_ref()) {
                t.abort();
            }
            self.exited(owner);
        }
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
