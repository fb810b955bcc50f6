//! Who asks to own a session, and which process that makes the owner: the peer itself, a
//! process it names (numbered in its own PID namespace), or its nearest ancestor of the
//! caller's user; and who may write to an owned session.

use sessiond_proto::{ErrorKind, Status, WireError};

use super::overlay::Overlay;
use super::SessionTable;
use crate::model::{Owner, SessionKey};
use crate::process::{Process, ProcessProbe};

/// Who asks to own a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimant {
    /// The connecting process.
    Peer,
    /// A process the request names (`owner_pid`), numbered in the peer's PID namespace.
    Named(u32),
    /// The connecting process's nearest ancestor of the caller's user (`owner_parent`).
    Parent,
}

/// A request to own a session, as the connection saw it.
#[derive(Debug, Clone, Copy)]
pub struct OwnerClaim {
    /// The connecting process, from the socket's credentials (`None`: unknown).
    pub peer: Option<u32>,
    pub claimant: Claimant,
    /// The connecting user, from the socket's credentials.
    pub caller_uid: u32,
}

impl Default for OwnerClaim {
    fn default() -> Self {
        OwnerClaim {
            peer: None,
            claimant: Claimant::Peer,
            caller_uid: 0,
        }
    }
}

/// How far up the process tree `owner_parent` looks for a process of the caller's user.
const MAX_ANCESTORS: usize = 64;

impl OwnerClaim {
    /// The owner this claim gives: a named process must run and belong to the caller (root
    /// may name any); one named from another PID namespace is found by its number there. The
    /// peer itself is taken even if it already exited (start time 0 then: never alive, so the
    /// session soon goes stale). A parent is the nearest ancestor of the caller's user but
    /// init; with none, no owner.
    pub fn resolve(&self, probe: &dyn ProcessProbe) -> Result<Option<Owner>, WireError> {
        let denied = |why: String| WireError::new(ErrorKind::PermissionDenied, why);
        let pid = match self.claimant {
            Claimant::Peer => match self.peer {
                Some(pid) => pid,
                None => return Ok(None),
            },
            Claimant::Parent => return self.ancestor(probe),
            Claimant::Named(asked) => {
                let pid = self.translate(probe, asked)?;
                if self.caller_uid != 0 && probe.uid_of(pid).is_some_and(|u| u != self.caller_uid) {
                    return Err(denied(format!("owner_pid {asked} belongs to another user")));
                }
                pid
            }
        };
        match probe.process(pid) {
            Process::Running { start_time } => Ok(Some(Owner { pid, start_time })),
            Process::Gone if self.claimant != Claimant::Peer => {
                Err(denied(format!("owner_pid {pid} is not a running process")))
            }
            Process::Gone => Ok(Some(Owner { pid, start_time: 0 })),
            Process::Unknown => Err(unknowable(pid)),
        }
    }

    /// A PID the peer named, as we number it.
    fn translate(&self, probe: &dyn ProcessProbe, asked: u32) -> Result<u32, WireError> {
        let Some(peer) = self.peer else {
            return Ok(asked);
        };
        match probe.in_other_namespace(peer) {
            Some(false) => Ok(asked),
            Some(true) => probe.in_namespace_of(peer, asked).ok_or_else(|| {
                WireError::invalid(format!(
                    "owner_pid {asked} names no process of the caller's PID namespace"
                ))
            }),
            None => Err(WireError::unavailable(format!(
                "cannot tell the PID namespace of the caller (pid {peer}) to read owner_pid {asked}; try again"
            ))),
        }
    }

    fn ancestor(&self, probe: &dyn ProcessProbe) -> Result<Option<Owner>, WireError> {
        let Some(mut pid) = self.peer else {
            return Ok(None);
        };
        for _ in 0..MAX_ANCESTORS {
            match probe.parent_of(pid) {
                Some(parent) if parent > 1 => pid = parent,
                _ => return Ok(None),
            }
            if probe.uid_of(pid) != Some(self.caller_uid) {
                continue;
            }
            match probe.process(pid) {
                Process::Running { start_time } => return Ok(Some(Owner { pid, start_time })),
                Process::Gone => return Ok(None),
                Process::Unknown => return Err(unknowable(pid)),
            }
        }
        Ok(None)
    }
}

fn unknowable(pid: u32) -> WireError {
    WireError::unavailable(format!(
        "cannot tell whether process {pid} runs (reading /proc failed); try again"
    ))
}

impl SessionTable {
    /// One writer per session: a write without an epoch to an active session whose owner
    /// lives must come from the owner or a process it started (`sessionctl` in the owning
    /// script); anything else would be a second writer no epoch fences.
    pub(super) fn check_writer(
        &self,
        overlay: &Overlay,
        key: &SessionKey,
        epoch: Option<u64>,
        writer: Option<u32>,
        probe: &dyn ProcessProbe,
    ) -> Result<(), WireError> {
        let (Some(writer), None) = (writer, epoch) else {
            return Ok(());
        };
        let state = match overlay.get(key) {
            Some(staged) => staged.as_ref().map(|s| &s.state),
            None => self.base(key).map(|s| &s.state),
        };
        let Some(state) = state.filter(|s| s.status == Status::Active) else {
            return Ok(());
        };
        let Some(owner) = state.owner else {
            return Ok(());
        };
        let host = state.owner_host.clone();
        let here = host.is_none() || host.as_deref() == self.host.as_deref();
        if here {
            // The writer or one of its ancestors is the owner (at most a few hops: a shell,
            // a script, sessionctl).
            let mut pid = writer;
            for _ in 0..64 {
                if pid == owner.pid {
                    return Ok(());
                }
                match probe.parent_of(pid) {
                    Some(parent) if parent > 1 && parent != pid => pid = parent,
                    _ => break,
                }
            }
            if !probe.is_alive(&owner) {
                return Ok(());
            }
        } else if !host.as_ref().is_some_and(|h| self.live_hosts.contains(h)) {
            return Ok(());
        }
        let whose = match &host {
            Some(h) if !here => format!("pid {} on host {h}", owner.pid),
            _ => format!("pid {}", owner.pid),
        };
        Err(WireError {
            kind: ErrorKind::OwnerAlive,
            message: format!(
                "session {:?} is owned by {whose}, which is alive: write from it or a process it started, or pass the session's epoch (sessionctl checkpoint --epoch N)",
                key.name
            ),
            owner_pid: Some(owner.pid),
            index: None,
            owner_host: host,
        })
    }
}
