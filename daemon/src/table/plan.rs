//! Planning: a mutation validated against the table plus the batch's earlier, not yet
//! durable changes (an [`Overlay`]), and turned into the changes that express it, the reply
//! to send once they are durable, the events to announce and the owner to watch. One
//! function per mutation.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sessiond_proto::{CheckpointInfo, ErrorKind, Event, EventKind, Meta, Reply, Status, WireError};

use super::{info, SessionTable};
use crate::model::{
    micros_to_time, Change, CheckedPayload, CheckpointMeta, Owner, SessionKey, SessionState,
};
use crate::process::{Process, ProcessProbe};

/// A change to make, decided by a request handler.
#[derive(Debug)]
pub enum Mutation {
    Create {
        name: String,
        keep: Option<u32>,
        meta: Meta,
        owner: OwnerClaim,
    },
    Checkpoint {
        name: String,
        payload: CheckedPayload,
        meta: Meta,
        expect: Option<u64>,
        epoch: Option<u64>,
    },
    SetStatus {
        name: String,
        status: Status,
        error: Option<String>,
    },
    Delete {
        name: String,
    },
    /// The owner made the session active has exited: mark it stale if it still owns it.
    MarkStale {
        name: String,
        owner: Owner,
    },
    Resume {
        name: String,
        owner: OwnerClaim,
        force: bool,
    },
}

/// A request to own a session, as the connection saw it.
#[derive(Debug, Clone, Copy, Default)]
pub struct OwnerClaim {
    /// The process (`None`: unknown, the session gets no owner).
    pub pid: Option<u32>,
    /// Named by the request (`owner_pid`) rather than the peer itself.
    pub named: bool,
    /// The connecting user, from the socket's credentials.
    pub caller_uid: u32,
}

impl OwnerClaim {
    /// The owner this claim gives: a named process must run and belong to the caller (root
    /// may name any). The peer itself is taken even if it already exited (start time 0 then:
    /// never alive, so the session soon goes stale).
    pub fn resolve(&self, probe: &dyn ProcessProbe) -> Result<Option<Owner>, WireError> {
        let Some(pid) = self.pid else { return Ok(None) };
        let denied = |why: String| WireError::new(ErrorKind::PermissionDenied, why);
        if self.named
            && self.caller_uid != 0
            && probe.uid_of(pid).is_some_and(|u| u != self.caller_uid)
        {
            return Err(denied(format!("owner_pid {pid} belongs to another user")));
        }
        match probe.process(pid) {
            Process::Running { start_time } => Ok(Some(Owner { pid, start_time })),
            Process::Gone if self.named => {
                Err(denied(format!("owner_pid {pid} is not a running process")))
            }
            Process::Gone => Ok(Some(Owner { pid, start_time: 0 })),
            Process::Unknown => Err(WireError::unavailable(format!(
                "cannot tell whether process {pid} runs (reading /proc failed); try again"
            ))),
        }
    }
}

/// A session's active owner changed from `previous` to `owner` (`None`: none), for the owner
/// watcher, which counts sessions per owner and asks the table which they are only when the
/// owner exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerChange {
    pub owner: Option<Owner>,
    pub previous: Option<Owner>,
}

/// A planned mutation: the changes to make durable (each with its payload; empty but for a
/// checkpoint), then the reply to send, the events to announce and the session's new owner.
#[derive(Debug)]
pub struct Planned {
    pub changes: Vec<(Change, CheckedPayload)>,
    pub reply: Reply,
    pub events: Vec<Event>,
    pub ownership: Option<OwnerChange>,
}

impl Planned {
    fn nothing(reply: Reply) -> Self {
        Planned {
            changes: Vec::new(),
            reply,
            events: Vec::new(),
            ownership: None,
        }
    }
}

/// A session as the batch sees it: its state, and how many checkpoints it retains.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    state: SessionState,
    count: u64,
    latest: Option<u64>,
}

/// The batch's planned-but-not-durable view of the sessions it touches (`None`: deleted).
#[derive(Debug, Default)]
pub struct Overlay(HashMap<SessionKey, Option<Staged>>);

/// An event about `name` at `at`, with nothing else said yet.
fn event(kind: EventKind, name: &str, at: DateTime<Utc>) -> Event {
    Event {
        kind,
        name: name.to_string(),
        number: None,
        status: None,
        epoch: None,
        owner_pid: None,
        missed: None,
        at,
    }
}

fn exists(name: &str) -> WireError {
    WireError::new(
        ErrorKind::AlreadyExists,
        format!("session {name:?} already exists"),
    )
}

impl SessionTable {
    /// Validates `m` for user `uid` and returns what expresses it. `probe` answers whether an
    /// owner still runs (resume looks at the owner itself, never waits for a sweep).
    pub fn plan(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        now: i64,
        m: Mutation,
        probe: &dyn ProcessProbe,
    ) -> Result<Planned, WireError> {
        let at = micros_to_time(now);
        match m {
            Mutation::Create {
                name,
                keep,
                meta,
                owner,
            } => {
                let key = SessionKey::new(uid, name);
                self.plan_create(overlay, key, keep, meta, (owner, probe), now)
            }
            Mutation::Checkpoint {
                name,
                payload,
                meta,
                expect,
                epoch,
            } => {
                let key = SessionKey::new(uid, name);
                self.plan_checkpoint(overlay, key, payload, meta, (expect, epoch), now)
            }
            Mutation::SetStatus {
                name,
                status,
                error,
            } => self.plan_status(overlay, SessionKey::new(uid, name), status, error, now),
            Mutation::MarkStale { name, owner } => {
                Ok(self.plan_stale(overlay, SessionKey::new(uid, name), owner, now))
            }
            Mutation::Resume { name, owner, force } => {
                let owner = owner.resolve(probe)?;
                let key = SessionKey::new(uid, name);
                self.plan_resume(overlay, key, owner, force, probe, now)
            }
            Mutation::Delete { name } => {
                Ok(self.plan_delete(overlay, SessionKey::new(uid, name), at))
            }
        }
    }

    fn plan_create(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        keep: Option<u32>,
        meta: Meta,
        (claim, probe): (OwnerClaim, &dyn ProcessProbe),
        now: i64,
    ) -> Result<Planned, WireError> {
        if self.view(overlay, &key).is_some() {
            return Err(exists(&key.name));
        }
        let owner = claim.resolve(probe)?;
        let state = SessionState {
            uid: key.uid,
            name: key.name.clone(),
            status: Status::Active,
            owner,
            epoch: 1,
            created_at: now,
            updated_at: now,
            keep: keep.unwrap_or(self.default_keep),
            meta,
            error: None,
            last_number: 0,
        };
        let reply = Reply::Session(info(&state, 0, None));
        let mut ev = event(EventKind::Created, &key.name, micros_to_time(now));
        (ev.status, ev.epoch, ev.owner_pid) = (Some(Status::Active), Some(1), owner.map(|o| o.pid));
        let staged = Staged {
            state: state.clone(),
            count: 0,
            latest: None,
        };
        overlay.0.insert(key, Some(staged));
        Ok(Planned {
            changes: vec![(Change::Session(state), CheckedPayload::default())],
            reply,
            events: vec![ev],
            ownership: Some(OwnerChange {
                owner,
                previous: None,
            }),
        })
    }

    fn plan_checkpoint(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        payload: CheckedPayload,
        meta: Meta,
        (expect, epoch): (Option<u64>, Option<u64>),
        now: i64,
    ) -> Result<Planned, WireError> {
        let mut s = self
            .view(overlay, &key)
            .ok_or_else(|| WireError::not_found(&key.name))?;
        if s.state.status.is_finished() {
            return Err(WireError::new(
                ErrorKind::SessionClosed,
                format!(
                    "session {:?} is {} and accepts no checkpoint",
                    key.name, s.state.status
                ),
            ));
        }
        if let Some(e) = epoch.filter(|&e| e != s.state.epoch) {
            return Err(WireError::new(
                ErrorKind::Fenced,
                format!(
                    "session {:?} is at epoch {}, the write carries epoch {e}: another process resumed it",
                    key.name, s.state.epoch
                ),
            ));
        }
        let latest = s.latest.unwrap_or(0);
        if let Some(x) = expect.filter(|&x| x != latest) {
            return Err(WireError::new(
                ErrorKind::Conflict,
                format!(
                    "session {:?}: expected latest checkpoint {x}, it is {latest}",
                    key.name
                ),
            ));
        }
        let number = s.state.last_number + 1;
        s.state.last_number = number;
        s.state.updated_at = now;
        s.latest = Some(number);
        s.count = match s.state.keep {
            0 => s.count + 1,
            keep => (s.count + 1).min(u64::from(keep)),
        };
        let at = micros_to_time(now);
        let reply = Reply::Checkpoint(Some(CheckpointInfo {
            number,
            size: payload.bytes.len() as u64,
            created_at: at,
            meta: meta.clone(),
            payload: None,
            skipped_corrupt: Vec::new(),
        }));
        let mut ev = event(EventKind::Checkpointed, &key.name, at);
        (ev.number, ev.epoch) = (Some(number), Some(s.state.epoch));
        let change = Change::Checkpoint(CheckpointMeta {
            uid: key.uid,
            name: key.name.clone(),
            number,
            created_at: now,
            meta,
        });
        overlay.0.insert(key, Some(s));
        Ok(Planned {
            changes: vec![(change, payload)],
            reply,
            events: vec![ev],
            ownership: None,
        })
    }

    fn plan_status(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        status: Status,
        error: Option<String>,
        now: i64,
    ) -> Result<Planned, WireError> {
        let mut s = self
            .view(overlay, &key)
            .ok_or_else(|| WireError::not_found(&key.name))?;
        if s.state.status.is_finished() && !status.is_finished() {
            return Err(WireError::new(
                ErrorKind::SessionClosed,
                format!(
                    "session {:?} is {}; resume it to reopen it",
                    key.name, s.state.status
                ),
            ));
        }
        s.state.status = status;
        s.state.owner = None;
        s.state.error = if status == Status::Failed {
            error
        } else {
            None
        };
        s.state.updated_at = now;
        let ev = event(EventKind::Status, "", micros_to_time(now));
        Ok(self.put_state(overlay, key, s, ev))
    }

    fn plan_stale(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        owner: Owner,
        now: i64,
    ) -> Planned {
        let Some(mut s) = self.view(overlay, &key) else {
            return Planned::nothing(Reply::Deleted(false));
        };
        // Only if it is still that owner's active session: a resume or status change since the
        // owner died wins.
        if s.state.status != Status::Active || s.state.owner != Some(owner) {
            return Planned::nothing(Reply::Session(info(&s.state, s.count, s.latest)));
        }
        s.state.status = Status::Stale;
        s.state.owner = None;
        s.state.updated_at = now;
        let mut ev = event(EventKind::Stale, "", micros_to_time(now));
        ev.owner_pid = Some(owner.pid);
        self.put_state(overlay, key, s, ev)
    }

    fn plan_resume(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        owner: Option<Owner>,
        force: bool,
        probe: &dyn ProcessProbe,
        now: i64,
    ) -> Result<Planned, WireError> {
        let mut s = self
            .view(overlay, &key)
            .ok_or_else(|| WireError::not_found(&key.name))?;
        if let (Status::Active, Some(current)) = (s.state.status, s.state.owner) {
            if !force && current.pid != owner.map_or(0, |o| o.pid) && probe.is_alive(&current) {
                return Err(WireError {
                    kind: ErrorKind::OwnerAlive,
                    message: format!(
                        "session {:?} is active and its owner (pid {}) is alive; use force to take it over",
                        key.name, current.pid
                    ),
                    owner_pid: Some(current.pid),
                });
            }
        }
        s.state.status = Status::Active;
        s.state.owner = owner;
        s.state.epoch += 1;
        s.state.error = None;
        s.state.updated_at = now;
        let mut ev = event(EventKind::Resumed, "", micros_to_time(now));
        ev.owner_pid = owner.map(|o| o.pid);
        let mut planned = self.put_state(overlay, key, s, ev);
        if let Reply::Session(session) = planned.reply {
            // The checkpoint is read once the resume is durable.
            planned.reply = Reply::Resumed {
                session,
                checkpoint: None,
            };
        }
        Ok(planned)
    }

    fn plan_delete(&self, overlay: &mut Overlay, key: SessionKey, at: DateTime<Utc>) -> Planned {
        if self.view(overlay, &key).is_none() {
            return Planned::nothing(Reply::Deleted(false));
        }
        let previous = self.owner_in_view(overlay, &key);
        let ev = event(EventKind::Deleted, &key.name, at);
        overlay.0.insert(key.clone(), None);
        Planned {
            changes: vec![(Change::Delete(key), CheckedPayload::default())],
            reply: Reply::Deleted(true),
            events: vec![ev],
            ownership: Some(OwnerChange {
                owner: None,
                previous,
            }),
        }
    }

    /// The session as the batch stands.
    fn view(&self, overlay: &Overlay, key: &SessionKey) -> Option<Staged> {
        match overlay.0.get(key) {
            Some(staged) => staged.clone(),
            None => self.sessions.get(key.uid, &key.name).map(|s| Staged {
                state: s.state.clone(),
                count: s.checkpoints.len() as u64,
                latest: s.checkpoints.back().map(|c| c.number),
            }),
        }
    }

    /// Plans writing a session's new state, with the event announcing it.
    fn put_state(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        s: Staged,
        mut ev: Event,
    ) -> Planned {
        ev.name = key.name.clone();
        ev.status = Some(s.state.status);
        ev.epoch = Some(s.state.epoch);
        if ev.owner_pid.is_none() {
            ev.owner_pid = s.state.owner.map(|o| o.pid);
        }
        let reply = Reply::Session(info(&s.state, s.count, s.latest));
        let change = Change::Session(s.state.clone());
        let owner = s.state.active_owner();
        let previous = self.owner_in_view(overlay, &key);
        overlay.0.insert(key, Some(s));
        Planned {
            changes: vec![(change, CheckedPayload::default())],
            reply,
            events: vec![ev],
            ownership: Some(OwnerChange { owner, previous }),
        }
    }

    /// The owner watched for `key` as the batch stands (without copying its state).
    fn owner_in_view(&self, overlay: &Overlay, key: &SessionKey) -> Option<Owner> {
        let state = match overlay.0.get(key) {
            Some(staged) => staged.as_ref().map(|s| &s.state),
            None => self.sessions.get(key.uid, &key.name).map(|s| &s.state),
        };
        state.and_then(SessionState::active_owner)
    }
}
