//! The session table: every session and the location of its retained checkpoints.
//!
//! Plain synchronous logic, no I/O. A mutation is first *planned* against the table plus the
//! batch's earlier, not yet durable changes (an [`Overlay`]): planning validates it and
//! produces the log records that express it. Once those records are durable they are
//! *applied*. Start-up replays the log through the very same [`SessionTable::apply`], so what
//! is served after a restart is what was acknowledged before it.

use std::collections::{HashMap, HashSet, VecDeque};

use sessiond_proto::{
    CheckpointInfo, ErrorKind, Event, EventKind, Meta, Reply, SessionInfo, Status, WireError,
};

use crate::process::{Process, ProcessProbe};

use crate::model::{micros_to_time, CkptEntry, Loc, Owner, SessionKey, SessionState};
use crate::session_map::{Keyed, SessionMap};
use crate::store::record::{CheckedPayload, CheckpointHeader, RecordHeader};
use crate::store::snapshot::SnapSession;

/// Sessions are scoped to a Unix user.

#[derive(Debug, Clone)]
struct Session {
    state: SessionState,
    /// Where the latest state record is.
    state_loc: Loc,
    checkpoints: VecDeque<CkptEntry>,
}

impl Keyed for Session {
    fn key(&self) -> (u32, &str) {
        (self.state.uid, &self.state.name)
    }
}

/// Live records of one segment and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub records: u64,
    pub bytes: u64,
}

/// The live records of a segment, to copy forward before the segment can be deleted.
#[derive(Debug, Default)]
pub struct LiveRecords {
    pub states: Vec<SessionState>,
    pub checkpoints: Vec<(u32, String, CkptEntry)>,
}

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

/// A planned mutation: the records to make durable, then the reply to send, the events to
/// announce and the session's new owner (`Some((key, None))`: it has none any more).
#[derive(Debug)]
pub struct Planned {
    pub records: Vec<(RecordHeader, CheckedPayload)>,
    pub reply: Reply,
    pub events: Vec<Event>,
    pub ownership: Option<OwnerChange>,
}

impl Planned {
    fn nothing(reply: Reply) -> Self {
        Planned {
            records: Vec::new(),
            reply,
            events: Vec::new(),
            ownership: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Staged {
    state: SessionState,
    count: u64,
    latest: Option<u64>,
}

/// The batch's planned-but-not-durable view of the sessions it touches (`None`: deleted).
#[derive(Debug, Default)]
pub struct Overlay(HashMap<SessionKey, Option<Staged>>);

/// The process watched for a session: its owner while it is active.
fn active_owner(state: &SessionState) -> Option<Owner> {
    (state.status == Status::Active)
        .then_some(state.owner)
        .flatten()
}

fn info(state: &SessionState, count: u64, latest: Option<u64>) -> SessionInfo {
    SessionInfo {
        name: state.name.clone(),
        status: state.status,
        owner_pid: state.owner.map(|o| o.pid),
        epoch: state.epoch,
        created_at: micros_to_time(state.created_at),
        updated_at: micros_to_time(state.updated_at),
        latest_checkpoint: latest,
        checkpoint_count: count,
        keep: state.keep,
        meta: state.meta.clone(),
        error: state.error.clone(),
        uid: state.uid,
    }
}

/// Filters of `list`.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// `None`: every user (root's `--all-users`).
    pub uid: Option<u32>,
    pub status: Option<Status>,
    pub meta: Meta,
}

#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: SessionMap<Session>,
    /// Live records per segment: retained checkpoints and each session's latest state.
    live: HashMap<u32, Live>,
    checkpoints: u64,
    default_keep: u32,
}

impl SessionTable {
    pub fn new(default_keep: u32) -> Self {
        SessionTable {
            default_keep,
            ..Default::default()
        }
    }

    /// The `keep` of sessions created from now on without one.
    pub fn set_default_keep(&mut self, keep: u32) {
        self.default_keep = keep;
    }

    pub fn from_snapshot(default_keep: u32, sessions: Vec<SnapSession>) -> Self {
        let mut t = SessionTable {
            sessions: SessionMap::with_capacity(sessions.len()),
            ..SessionTable::new(default_keep)
        };
        for s in sessions {
            t.add_live(&s.state_loc);
            for c in &s.checkpoints {
                t.add_live(&c.loc());
            }
            t.checkpoints += s.checkpoints.len() as u64;
            t.sessions.insert(Session {
                state: s.state,
                state_loc: s.state_loc,
                checkpoints: s.checkpoints.into(),
            });
        }
        t
    }

    pub fn export(&self) -> Vec<SnapSession> {
        self.sessions
            .values()
            .map(|s| SnapSession {
                state: s.state.clone(),
                state_loc: s.state_loc,
                checkpoints: s.checkpoints.iter().copied().collect(),
            })
            .collect()
    }

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

    /// Validates `m` for user `uid` and returns the records expressing it. `probe` answers
    /// whether an owner still runs (resume looks at the owner itself, never waits for a sweep).
    pub fn plan(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        now: i64,
        m: Mutation,
        probe: &dyn ProcessProbe,
    ) -> Result<Planned, WireError> {
        let at = micros_to_time(now);
        let event = |kind, name: &str| Event {
            kind,
            name: name.to_string(),
            number: None,
            status: None,
            epoch: None,
            owner_pid: None,
            missed: None,
            at,
        };
        match m {
            Mutation::Create {
                name,
                keep,
                meta,
                owner,
            } => {
                let key = SessionKey::new(uid, name);
                if self.view(overlay, &key).is_some() {
                    return Err(WireError::new(
                        ErrorKind::AlreadyExists,
                        format!("session {:?} already exists", key.name),
                    ));
                }
                let owner = owner.resolve(probe)?;
                let state = SessionState {
                    uid,
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
                let mut ev = event(EventKind::Created, &key.name);
                (ev.status, ev.epoch, ev.owner_pid) =
                    (Some(Status::Active), Some(1), owner.map(|o| o.pid));
                overlay.0.insert(
                    key.clone(),
                    Some(Staged {
                        state: state.clone(),
                        count: 0,
                        latest: None,
                    }),
                );
                Ok(Planned {
                    records: vec![(RecordHeader::Session(state), CheckedPayload::default())],
                    reply,
                    events: vec![ev],
                    ownership: Some(OwnerChange {
                        owner,
                        previous: None,
                    }),
                })
            }
            Mutation::Checkpoint {
                name,
                payload,
                meta,
                expect,
                epoch,
            } => {
                let key = SessionKey::new(uid, name);
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
                if let Some(e) = epoch {
                    if e != s.state.epoch {
                        return Err(WireError::new(
                            ErrorKind::Fenced,
                            format!(
                                "session {:?} is at epoch {}, the write carries epoch {e}: another process resumed it",
                                key.name, s.state.epoch
                            ),
                        ));
                    }
                }
                let latest = s.latest.unwrap_or(0);
                if let Some(x) = expect {
                    if x != latest {
                        return Err(WireError::new(
                            ErrorKind::Conflict,
                            format!(
                                "session {:?}: expected latest checkpoint {x}, it is {latest}",
                                key.name
                            ),
                        ));
                    }
                }
                let number = s.state.last_number + 1;
                s.state.last_number = number;
                s.state.updated_at = now;
                s.latest = Some(number);
                s.count = match s.state.keep {
                    0 => s.count + 1,
                    keep => (s.count + 1).min(u64::from(keep)),
                };
                let reply = Reply::Checkpoint(Some(CheckpointInfo {
                    number,
                    size: payload.bytes.len() as u64,
                    created_at: at,
                    meta: meta.clone(),
                    payload: None,
                    skipped_corrupt: Vec::new(),
                }));
                let mut ev = event(EventKind::Checkpointed, &key.name);
                (ev.number, ev.epoch) = (Some(number), Some(s.state.epoch));
                let header = RecordHeader::Checkpoint(CheckpointHeader {
                    uid,
                    name: key.name.clone(),
                    number,
                    created_at: now,
                    meta,
                });
                overlay.0.insert(key, Some(s));
                Ok(Planned {
                    records: vec![(header, payload)],
                    reply,
                    events: vec![ev],
                    ownership: None,
                })
            }
            Mutation::SetStatus {
                name,
                status,
                error,
            } => {
                let key = SessionKey::new(uid, name);
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
                Ok(self.put_state(overlay, key, s, event(EventKind::Status, "")))
            }
            Mutation::MarkStale { name, owner } => {
                let key = SessionKey::new(uid, name);
                let Some(mut s) = self.view(overlay, &key) else {
                    return Ok(Planned::nothing(Reply::Deleted(false)));
                };
                // Only if it is still that owner's active session: a resume or status change
                // since the owner died wins.
                if s.state.status != Status::Active || s.state.owner != Some(owner) {
                    return Ok(Planned::nothing(Reply::Session(info(
                        &s.state, s.count, s.latest,
                    ))));
                }
                s.state.status = Status::Stale;
                s.state.owner = None;
                s.state.updated_at = now;
                let mut ev = event(EventKind::Stale, "");
                ev.owner_pid = Some(owner.pid);
                Ok(self.put_state(overlay, key, s, ev))
            }
            Mutation::Resume { name, owner, force } => {
                let owner = owner.resolve(probe)?;
                let key = SessionKey::new(uid, name);
                let mut s = self
                    .view(overlay, &key)
                    .ok_or_else(|| WireError::not_found(&key.name))?;
                if let (Status::Active, Some(current)) = (s.state.status, s.state.owner) {
                    if !force
                        && current.pid != owner.map_or(0, |o| o.pid)
                        && probe.is_alive(&current)
                    {
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
                let mut ev = event(EventKind::Resumed, "");
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
            Mutation::Delete { name } => {
                let key = SessionKey::new(uid, name);
                if self.view(overlay, &key).is_none() {
                    return Ok(Planned::nothing(Reply::Deleted(false)));
                }
                let previous = self.owner_in_view(overlay, &key);
                let record = RecordHeader::Delete {
                    uid,
                    name: key.name.clone(),
                };
                let ev = event(EventKind::Deleted, &key.name);
                overlay.0.insert(key.clone(), None);
                Ok(Planned {
                    records: vec![(record, CheckedPayload::default())],
                    reply: Reply::Deleted(true),
                    events: vec![ev],
                    ownership: Some(OwnerChange {
                        owner: None,
                        previous,
                    }),
                })
            }
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
        let record = RecordHeader::Session(s.state.clone());
        let owner = active_owner(&s.state);
        let previous = self.owner_in_view(overlay, &key);
        overlay.0.insert(key.clone(), Some(s));
        Planned {
            records: vec![(record, CheckedPayload::default())],
            reply,
            events: vec![ev],
            ownership: Some(OwnerChange { owner, previous }),
        }
    }

    /// How many active sessions each owner has.
    pub fn active_owner_counts(&self) -> HashMap<Owner, usize> {
        let mut counts = HashMap::new();
        for owner in self
            .sessions
            .values()
            .filter_map(|s| active_owner(&s.state))
        {
            *counts.entry(owner).or_default() += 1;
        }
        counts
    }

    /// The active sessions of the given owners. A scan of every session: it runs when owners
    /// exit, which is rare, instead of an index of sessions by owner kept in memory.
    pub fn owned_by(&self, owners: &HashSet<Owner>) -> Vec<(SessionKey, Owner)> {
        self.sessions
            .values()
            .filter_map(|s| {
                let owner = active_owner(&s.state).filter(|o| owners.contains(o))?;
                Some((s.state.key(), owner))
            })
            .collect()
    }

    /// The owner watched for `key` as the batch stands (without copying its state).
    fn owner_in_view(&self, overlay: &Overlay, key: &SessionKey) -> Option<Owner> {
        let state = match overlay.0.get(key) {
            Some(staged) => staged.as_ref().map(|s| &s.state),
            None => self.sessions.get(key.uid, &key.name).map(|s| &s.state),
        };
        state.and_then(active_owner)
    }

    fn add_live(&mut self, loc: &Loc) {
        let l = self.live.entry(loc.segment).or_default();
        l.records += 1;
        l.bytes += loc.record_len();
    }

    fn remove_live(live: &mut HashMap<u32, Live>, loc: &Loc) {
        if let Some(l) = live.get_mut(&loc.segment) {
            l.records = l.records.saturating_sub(1);
            l.bytes = l.bytes.saturating_sub(loc.record_len());
        }
    }

    /// The session of a checkpoint record, recreated as paused if its state record is lost
    /// (damage): the checkpoints are kept.
    fn session_for_checkpoint(&mut self, h: &CheckpointHeader, loc: Loc) -> &mut Session {
        let default_keep = self.default_keep;
        self.sessions.get_or_insert_with(h.uid, &h.name, || {
            tracing::warn!(session = %h.name, uid = h.uid, "checkpoint of an unknown session; recreating it as paused");
            Session {
                state: SessionState {
                    uid: h.uid,
                    name: h.name.clone(),
                    status: Status::Paused,
                    owner: None,
                    epoch: 1,
                    created_at: h.created_at,
                    updated_at: h.created_at,
                    keep: default_keep,
                    meta: Meta::new(),
                    error: None,
                    last_number: 0,
                },
                state_loc: Loc { segment: loc.segment, offset: 0, header_len: 0, payload_len: 0 },
                checkpoints: VecDeque::new(),
            }
        })
    }

    /// Applies a durable record. Used for live commits and for replay alike.
    pub fn apply(&mut self, header: RecordHeader, loc: Loc) {
        match header {
            RecordHeader::Session(state) => {
                self.add_live(&loc);
                match self.sessions.get_mut(state.uid, &state.name) {
                    Some(s) => {
                        Self::remove_live(&mut self.live, &s.state_loc);
                        s.state_loc = loc;
                        let last = s.state.last_number.max(state.last_number);
                        s.state = state;
                        s.state.last_number = last;
                    }
                    None => self.sessions.insert(Session {
                        state,
                        state_loc: loc,
                        checkpoints: VecDeque::new(),
                    }),
                }
            }
            RecordHeader::Checkpoint(h) => {
                let Some(entry) = Self::entry(&h, loc) else {
                    return;
                };
                self.add_live(&loc);
                self.checkpoints += 1;
                let s = self.session_for_checkpoint(&h, loc);
                let mut dropped = Vec::new();
                // A record numbered N replaces any N' >= N (only after an unacknowledged write).
                while s.checkpoints.back().is_some_and(|c| c.number >= h.number) {
                    dropped.extend(s.checkpoints.pop_back());
                }
                Self::make_room(s, &mut dropped);
                s.checkpoints.push_back(entry);
                s.state.last_number = s.state.last_number.max(h.number);
                s.state.updated_at = s.state.updated_at.max(h.created_at);
                self.drop_entries(&dropped);
            }
            RecordHeader::Relocated(h) => {
                // A copy of a retained checkpoint, written so that its old segment can go.
                let Some(entry) = Self::entry(&h, loc) else {
                    return;
                };
                self.add_live(&loc);
                self.checkpoints += 1;
                let s = self.session_for_checkpoint(&h, loc);
                let mut dropped = Vec::new();
                match s.checkpoints.binary_search_by_key(&h.number, |c| c.number) {
                    Ok(i) => dropped.push(std::mem::replace(&mut s.checkpoints[i], entry)),
                    Err(i) => s.checkpoints.insert(i, entry),
                }
                s.state.last_number = s.state.last_number.max(h.number);
                dropped.extend(Self::retain(s));
                self.drop_entries(&dropped);
            }
            RecordHeader::Delete { uid, name } => {
                if let Some(s) = self.sessions.remove(uid, &name) {
                    Self::remove_live(&mut self.live, &s.state_loc);
                    let entries: Vec<CkptEntry> = s.checkpoints.into_iter().collect();
                    self.drop_entries(&entries);
                }
            }
            // Read by replay before it scans the segment it names; nothing of the table's.
            RecordHeader::Cut { .. } => {}
        }
    }

    /// The index entry of a checkpoint record at `loc`.
    fn entry(h: &CheckpointHeader, loc: Loc) -> Option<CkptEntry> {
        let entry = CkptEntry::new(h.number, loc);
        if entry.is_none() {
            tracing::error!(session = %h.name, number = h.number, segment = loc.segment, offset = loc.offset, "checkpoint record beyond 4 GiB into its segment; not indexed");
        }
        entry
    }

    /// Before a new checkpoint: drops the oldest if the session is at its `keep`, and grows
    /// the list by at most what `keep` allows, so that 100,000 sessions keeping 10 hold 10
    /// entries each, not the 16 or 20 that doubling would leave.
    fn make_room(s: &mut Session, dropped: &mut Vec<CkptEntry>) {
        let keep = s.state.keep as usize;
        while keep > 0 && s.checkpoints.len() >= keep {
            dropped.extend(s.checkpoints.pop_front());
        }
        let len = s.checkpoints.len();
        if keep > 0 && len == s.checkpoints.capacity() {
            s.checkpoints
                .reserve_exact((2 * len).max(4).min(keep).saturating_sub(len).max(1));
        }
    }

    /// Removes checkpoints beyond the session's `keep`, oldest first.
    fn retain(s: &mut Session) -> Vec<CkptEntry> {
        let keep = s.state.keep as usize;
        let mut out = Vec::new();
        while keep > 0 && s.checkpoints.len() > keep {
            out.extend(s.checkpoints.pop_front());
        }
        out
    }

    fn drop_entries(&mut self, entries: &[CkptEntry]) {
        for e in entries {
            Self::remove_live(&mut self.live, &e.loc());
        }
        self.checkpoints -= entries.len() as u64;
    }

    /// The live records of `segment`.
    pub fn live_records(&self, segment: u32) -> LiveRecords {
        let mut out = LiveRecords::default();
        for s in self.sessions.values() {
            if s.state_loc.segment == segment {
                out.states.push(s.state.clone());
            }
            for c in s.checkpoints.iter().filter(|c| c.segment() == segment) {
                out.checkpoints
                    .push((s.state.uid, s.state.name.clone(), *c));
            }
        }
        out
    }

    /// Live bytes over all segments.
    pub fn live_bytes(&self) -> u64 {
        self.live.values().map(|l| l.bytes).sum()
    }

    pub fn session(&self, uid: u32, name: &str) -> Option<SessionInfo> {
        let s = self.sessions.get(uid, name)?;
        Some(info(
            &s.state,
            s.checkpoints.len() as u64,
            s.checkpoints.back().map(|c| c.number),
        ))
    }

    pub fn list(&self, filter: &ListFilter) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .sessions
            .values()
            .filter(|s| filter.uid.is_none_or(|u| u == s.state.uid))
            .filter(|s| filter.status.is_none_or(|st| st == s.state.status))
            .filter(|s| {
                filter
                    .meta
                    .iter()
                    .all(|(k, v)| s.state.meta.get(k) == Some(v))
            })
            .map(|s| {
                info(
                    &s.state,
                    s.checkpoints.len() as u64,
                    s.checkpoints.back().map(|c| c.number),
                )
            })
            .collect();
        out.sort_by(|a, b| (a.uid, &a.name).cmp(&(b.uid, &b.name)));
        out
    }

    /// The latest retained checkpoint of a session, if it has one.
    pub fn latest_checkpoint(&self, uid: u32, name: &str) -> Result<Option<CkptEntry>, WireError> {
        let s = self
            .sessions
            .get(uid, name)
            .ok_or_else(|| WireError::not_found(name))?;
        Ok(s.checkpoints.back().copied())
    }

    /// The retained checkpoints of a session, oldest first.
    pub fn checkpoints(&self, uid: u32, name: &str) -> Result<Vec<CkptEntry>, WireError> {
        let s = self
            .sessions
            .get(uid, name)
            .ok_or_else(|| WireError::not_found(name))?;
        Ok(s.checkpoints.iter().copied().collect())
    }

    pub fn session_count(&self) -> u64 {
        self.sessions.len() as u64
    }

    pub fn checkpoint_count(&self) -> u64 {
        self.checkpoints
    }

    pub fn count_by_status(&self) -> HashMap<Status, u64> {
        let mut m = HashMap::new();
        for s in self.sessions.values() {
            *m.entry(s.state.status).or_default() += 1;
        }
        m
    }

    /// Live records of `segment`.
    pub fn live_in(&self, segment: u32) -> Live {
        self.live.get(&segment).copied().unwrap_or_default()
    }

    /// Forgets the (zero) live count of a deleted segment.
    pub fn forget_segment(&mut self, segment: u32) {
        self.live.remove(&segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::fake::FakeProbe;
    use crate::process::SystemProbe;

    /// Plans and applies one mutation with a given view of the processes.
    fn run_with(t: &mut SessionTable, m: Mutation, probe: &FakeProbe) -> Result<Reply, WireError> {
        let mut o = Overlay::default();
        let p = t.plan(&mut o, 1000, 1, m, probe)?;
        for (i, (h, _)) in p.records.into_iter().enumerate() {
            t.apply(h, loc(1, i as u64 * 100));
        }
        Ok(p.reply)
    }

    /// The running process `pid` (user 1000, started at `start_time`) asking to own a session.
    fn owner(probe: &FakeProbe, pid: u32, start_time: u64) -> OwnerClaim {
        probe.set(pid, start_time, 1000);
        OwnerClaim {
            pid: Some(pid),
            named: false,
            caller_uid: 1000,
        }
    }

    fn resume(name: &str, by: OwnerClaim, force: bool) -> Mutation {
        Mutation::Resume {
            name: name.into(),
            owner: by,
            force,
        }
    }

    #[test]
    fn a_named_owner_must_run_and_belong_to_the_caller_unless_root() {
        let probe = FakeProbe::default();
        probe.set(10, 100, 1000);
        probe.set(20, 200, 2000);
        let named = |pid, caller_uid| OwnerClaim {
            pid: Some(pid),
            named: true,
            caller_uid,
        };
        assert_eq!(
            named(10, 1000).resolve(&probe).unwrap(),
            Some(Owner {
                pid: 10,
                start_time: 100
            })
        );
        let e = named(20, 1000).resolve(&probe).unwrap_err();
        assert!(
            e.kind == ErrorKind::PermissionDenied && e.message.contains("another user"),
            "{e}"
        );
        assert_eq!(
            named(20, 0).resolve(&probe).unwrap(),
            Some(Owner {
                pid: 20,
                start_time: 200
            }),
            "root may name any"
        );
        let e = named(30, 0).resolve(&probe).unwrap_err();
        assert!(e.message.contains("not a running process"), "{e}");
        // The peer itself, gone already: owned with an impossible start time, so soon stale.
        let peer = OwnerClaim {
            pid: Some(30),
            named: false,
            caller_uid: 1000,
        };
        assert_eq!(
            peer.resolve(&probe).unwrap(),
            Some(Owner {
                pid: 30,
                start_time: 0
            })
        );
        assert_eq!(OwnerClaim::default().resolve(&probe).unwrap(), None);
    }

    #[test]
    fn resume_is_refused_while_the_owner_lives_unless_forced_and_fences_the_old_epoch() {
        let probe = FakeProbe::default();
        probe.set(10, 100, 1000);
        probe.set(20, 200, 1000);
        let mut t = SessionTable::new(16);
        let create = create_owned("a", owner(&probe, 10, 100));
        run_with(&mut t, create, &probe).unwrap();
        let e = run_with(&mut t, resume("a", owner(&probe, 20, 200), false), &probe).unwrap_err();
        assert_eq!((e.kind, e.owner_pid), (ErrorKind::OwnerAlive, Some(10)));
        assert!(e.message.contains("pid 10"), "{}", e.message);
        // The owner resuming its own session is fine.
        let Reply::Resumed {
            session,
            checkpoint,
        } = run_with(&mut t, resume("a", owner(&probe, 10, 100), false), &probe).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (session.epoch, session.owner_pid, checkpoint),
            (2, Some(10), None)
        );
        let Reply::Resumed { session, .. } =
            run_with(&mut t, resume("a", owner(&probe, 20, 200), true), &probe).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (session.epoch, session.owner_pid, session.status),
            (3, Some(20), Status::Active)
        );
        let e = run_with(&mut t, ck("a", None, Some(2)), &probe).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fenced);
        run_with(&mut t, ck("a", None, Some(3)), &probe).unwrap();
    }

    #[test]
    fn a_process_the_system_cannot_tell_about_is_neither_dead_nor_taken_as_owner() {
        let probe = FakeProbe::default();
        let mut t = SessionTable::new(16);
        let create = create_owned("a", owner(&probe, 10, 100));
        run_with(&mut t, create, &probe).unwrap();
        // /proc cannot be read for the owner (out of descriptors, say): it may be alive.
        probe.unknown.lock().unwrap().push(10);
        assert!(probe.is_alive(&Owner {
            pid: 10,
            start_time: 100
        }));
        let e = run_with(&mut t, resume("a", owner(&probe, 20, 200), false), &probe).unwrap_err();
        assert_eq!(e.kind, ErrorKind::OwnerAlive);
        // Nor is such a process made an owner with a guessed start time.
        probe.unknown.lock().unwrap().push(30);
        let e = run_with(&mut t, create_owned("b", owner_unprobed(30)), &probe).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    }

    fn owner_unprobed(pid: u32) -> OwnerClaim {
        OwnerClaim {
            pid: Some(pid),
            named: false,
            caller_uid: 1000,
        }
    }

    #[test]
    fn ownership_changes_name_the_owner_before_and_after() {
        let probe = FakeProbe::default();
        let mut t = SessionTable::new(16);
        let pids = |p: Planned| {
            p.ownership
                .map(|c| (c.owner.map(|o| o.pid), c.previous.map(|o| o.pid)))
        };
        let step = |t: &mut SessionTable, m| {
            let p = t.plan(&mut Overlay::default(), 1000, 1, m, &probe).unwrap();
            for (h, _) in p.records.clone() {
                t.apply(h, loc(1, 0));
            }
            pids(p)
        };
        let create = create_owned("a", owner(&probe, 10, 100));
        assert_eq!(step(&mut t, create), Some((Some(10), None)));
        let take = resume("a", owner(&probe, 20, 200), true);
        assert_eq!(step(&mut t, take), Some((Some(20), Some(10))));
        let pause = Mutation::SetStatus {
            name: "a".into(),
            status: Status::Paused,
            error: None,
        };
        assert_eq!(step(&mut t, pause), Some((None, Some(20))));
        let delete = Mutation::Delete { name: "a".into() };
        assert_eq!(step(&mut t, delete), Some((None, None)));
        // Within one batch, the previous owner is the batch's own.
        let mut batch = Overlay::default();
        let create = create_owned("b", owner(&probe, 30, 300));
        t.plan(&mut batch, 1000, 2, create, &probe).unwrap();
        let delete = Mutation::Delete { name: "b".into() };
        let p = t.plan(&mut batch, 1000, 2, delete, &probe).unwrap();
        assert_eq!(pids(p), Some((None, Some(30))));
    }

    #[test]
    fn a_reused_pid_is_not_the_owner() {
        let probe = FakeProbe::default();
        let mut t = SessionTable::new(16);
        let create = create_owned("a", owner(&probe, 10, 100));
        run_with(&mut t, create, &probe).unwrap();
        // PID 10 now belongs to a process started later.
        probe.set(10, 999, 1000);
        assert!(!probe.is_alive(&Owner {
            pid: 10,
            start_time: 100
        }));
        let Reply::Resumed { session, .. } =
            run_with(&mut t, resume("a", owner(&probe, 30, 300), false), &probe).unwrap()
        else {
            panic!()
        };
        assert_eq!(session.owner_pid, Some(30));
    }

    #[test]
    fn mark_stale_applies_only_to_the_dead_owners_active_session() {
        let probe = FakeProbe::default();
        let mut t = SessionTable::new(16);
        for name in ["a", "b", "c"] {
            let create = create_owned(name, owner(&probe, 10, 100));
            run_with(&mut t, create, &probe).unwrap();
        }
        run_with(
            &mut t,
            Mutation::SetStatus {
                name: "b".into(),
                status: Status::Paused,
                error: None,
            },
            &probe,
        )
        .unwrap();
        run_with(&mut t, resume("c", owner(&probe, 20, 200), true), &probe).unwrap();
        let pids = |counts: HashMap<Owner, usize>| {
            let mut v: Vec<(u32, usize)> = counts.into_iter().map(|(o, n)| (o.pid, n)).collect();
            v.sort_unstable();
            v
        };
        // b is paused (no owner watched), c now belongs to 20.
        assert_eq!(pids(t.active_owner_counts()), vec![(10, 1), (20, 1)]);
        let ten = HashSet::from([Owner {
            pid: 10,
            start_time: 100,
        }]);
        let owned: Vec<String> = t.owned_by(&ten).into_iter().map(|(k, _)| k.name).collect();
        assert_eq!(owned, vec!["a".to_string()]);
        for name in ["a", "b", "c"] {
            run_with(
                &mut t,
                Mutation::MarkStale {
                    name: name.into(),
                    owner: Owner {
                        pid: 10,
                        start_time: 100,
                    },
                },
                &probe,
            )
            .unwrap();
        }
        let status = |t: &SessionTable, n: &str| t.session(1000, n).unwrap().status;
        assert_eq!(status(&t, "a"), Status::Stale);
        assert_eq!(t.session(1000, "a").unwrap().owner_pid, None);
        assert_eq!(
            status(&t, "b"),
            Status::Paused,
            "a paused session never goes stale"
        );
        assert_eq!(
            status(&t, "c"),
            Status::Active,
            "resumed by another owner since"
        );
        // A stale session can be resumed and takes checkpoints again.
        let Reply::Resumed { session, .. } =
            run_with(&mut t, resume("a", owner(&probe, 30, 300), false), &probe).unwrap()
        else {
            panic!()
        };
        assert_eq!((session.status, session.epoch), (Status::Active, 2));
    }

    fn loc(segment: u32, offset: u64) -> Loc {
        Loc {
            segment,
            offset,
            header_len: 10,
            payload_len: 3,
        }
    }

    /// Plans and applies one mutation as the writer would.
    fn run(t: &mut SessionTable, m: Mutation, seg: u32) -> Result<Reply, WireError> {
        let mut o = Overlay::default();
        let p = t.plan(&mut o, 1000, 1, m, &FakeProbe::default())?;
        for (i, (h, _)) in p.records.into_iter().enumerate() {
            t.apply(h, loc(seg, i as u64 * 100));
        }
        Ok(p.reply)
    }

    fn ck(name: &str, expect: Option<u64>, epoch: Option<u64>) -> Mutation {
        Mutation::Checkpoint {
            name: name.into(),
            payload: CheckedPayload::new(b"abc".to_vec()),
            meta: Meta::new(),
            expect,
            epoch,
        }
    }

    fn create(name: &str, keep: Option<u32>) -> Mutation {
        Mutation::Create {
            name: name.into(),
            keep,
            meta: Meta::new(),
            owner: OwnerClaim::default(),
        }
    }

    fn create_owned(name: &str, owner: OwnerClaim) -> Mutation {
        Mutation::Create {
            name: name.into(),
            keep: None,
            meta: Meta::new(),
            owner,
        }
    }

    #[test]
    fn numbers_retention_and_live_counts() {
        let mut t = SessionTable::new(16);
        run(&mut t, create("a", Some(3)), 1).unwrap();
        for i in 1..=5u64 {
            let Reply::Checkpoint(Some(c)) =
                run(&mut t, ck("a", Some(i - 1), Some(1)), 1 + i as u32).unwrap()
            else {
                panic!()
            };
            assert_eq!(c.number, i);
        }
        let nums: Vec<u64> = t
            .checkpoints(1000, "a")
            .unwrap()
            .iter()
            .map(|c| c.number)
            .collect();
        assert_eq!(nums, vec![3, 4, 5]);
        assert_eq!(
            t.live_in(2).records,
            0,
            "retention released checkpoint 1's segment"
        );
        assert_eq!(t.live_in(6).records, 1);
        assert_eq!(t.live_in(1).records, 1, "the state record stays live");
        assert_eq!(t.checkpoint_count(), 3);
        let e = run(&mut t, ck("a", Some(4), None), 9).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        let e = run(&mut t, ck("a", None, Some(2)), 9).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Fenced);
        let e = run(&mut t, ck("b", None, None), 9).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
    }

    #[test]
    fn a_session_holds_no_more_entries_than_it_keeps() {
        let mut t = SessionTable::new(16);
        run(&mut t, create("a", Some(10)), 1).unwrap();
        for i in 0..100u32 {
            run(&mut t, ck("a", None, None), 2 + i).unwrap();
        }
        let s = t.sessions.get(1000, "a").unwrap();
        assert_eq!(s.checkpoints.len(), 10);
        assert_eq!(s.checkpoints.capacity(), 10, "no room beyond keep");
    }

    #[test]
    fn overlay_sees_earlier_changes_of_the_batch() {
        let t = SessionTable::new(16);
        let mut o = Overlay::default();
        t.plan(&mut o, 1, 1, create("a", None), &SystemProbe)
            .unwrap();
        let e = t
            .plan(&mut o, 1, 1, create("a", None), &SystemProbe)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        let p1 = t
            .plan(&mut o, 1, 1, ck("a", Some(0), None), &SystemProbe)
            .unwrap();
        let p2 = t
            .plan(&mut o, 1, 1, ck("a", Some(1), None), &SystemProbe)
            .unwrap();
        assert!(matches!(p1.reply, Reply::Checkpoint(Some(ref c)) if c.number == 1));
        assert!(matches!(p2.reply, Reply::Checkpoint(Some(ref c)) if c.number == 2));
        assert!(
            t.session(1, "a").is_none(),
            "nothing is visible before it is applied"
        );
        // The same name for another user is another session.
        t.plan(&mut o, 2, 1, create("a", None), &SystemProbe)
            .unwrap();
    }

    #[test]
    fn finished_sessions_refuse_checkpoints_and_delete_is_idempotent() {
        let mut t = SessionTable::new(16);
        run(&mut t, create("a", None), 1).unwrap();
        run(&mut t, ck("a", None, None), 1).unwrap();
        let r = run(
            &mut t,
            Mutation::SetStatus {
                name: "a".into(),
                status: Status::Failed,
                error: Some("boom".into()),
            },
            1,
        )
        .unwrap();
        let Reply::Session(s) = r else { panic!() };
        assert_eq!(
            (s.status, s.error.as_deref(), s.owner_pid),
            (Status::Failed, Some("boom"), None)
        );
        let e = run(&mut t, ck("a", None, None), 1).unwrap_err();
        assert_eq!(e.kind, ErrorKind::SessionClosed);
        let e = run(
            &mut t,
            Mutation::SetStatus {
                name: "a".into(),
                status: Status::Paused,
                error: None,
            },
            1,
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::SessionClosed);
        assert_eq!(
            run(&mut t, Mutation::Delete { name: "a".into() }, 2).unwrap(),
            Reply::Deleted(true)
        );
        assert_eq!(
            run(&mut t, Mutation::Delete { name: "a".into() }, 2).unwrap(),
            Reply::Deleted(false)
        );
        assert_eq!(t.live_in(1).records, 0);
        assert_eq!(t.checkpoint_count(), 0);
        // Recreated: numbering starts again for the new session.
        run(&mut t, create("a", None), 3).unwrap();
        let Reply::Checkpoint(Some(c)) = run(&mut t, ck("a", None, None), 3).unwrap() else {
            panic!()
        };
        assert_eq!(c.number, 1);
    }

    #[test]
    fn a_rewritten_number_replaces_the_unacknowledged_one() {
        let mut t = SessionTable::new(0);
        run(&mut t, create("a", None), 1).unwrap();
        let h = |n| {
            RecordHeader::Checkpoint(CheckpointHeader {
                uid: 1000,
                name: "a".into(),
                number: n,
                created_at: 1,
                meta: Meta::new(),
            })
        };
        t.apply(h(1), loc(1, 0));
        t.apply(h(2), loc(1, 100));
        t.apply(h(3), loc(1, 200));
        t.apply(h(2), loc(2, 0));
        let nums: Vec<(u64, u32)> = t
            .checkpoints(1000, "a")
            .unwrap()
            .iter()
            .map(|c| (c.number, c.segment()))
            .collect();
        assert_eq!(nums, vec![(1, 1), (2, 2)]);
        assert_eq!(t.checkpoint_count(), 2);
    }

    #[test]
    fn snapshot_round_trip_keeps_live_counts() {
        let mut t = SessionTable::new(2);
        run(&mut t, create("a", None), 1).unwrap();
        for s in 2..6 {
            run(&mut t, ck("a", None, None), s).unwrap();
        }
        let t2 = SessionTable::from_snapshot(2, t.export());
        for seg in 1..6 {
            assert_eq!(t.live_in(seg), t2.live_in(seg), "segment {seg}");
        }
        assert_eq!(t.session(1000, "a"), t2.session(1000, "a"));
    }
}
