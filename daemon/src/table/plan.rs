//! Planning: a mutation validated against the table plus the batch's earlier, not yet
//! durable changes (an [`Overlay`]), and turned into the changes that express it, the reply
//! to send once they are durable, the events to announce and the owners to watch. One
//! function per mutation; the ops made for frameworks (SPEC section 9) are in
//! [`super::framework`].

use chrono::{DateTime, Utc};
use sessiond_proto::{CheckpointInfo, ErrorKind, Event, EventKind, Meta, Reply, Status, WireError};

use super::overlay::{Staged, StagedCkpt, View};
use super::{info, SessionTable};
use crate::model::{
    micros_to_time, Change, CheckedPayload, CheckpointMeta, KeyEntry, Owner, SessionKey,
    SessionState,
};
use crate::process::ProcessProbe;

pub use super::claim::{Claimant, OwnerClaim};
pub use super::mutation::{Mutation, Selection, Which};
pub use super::overlay::Overlay;
use super::planned::{closed, event, exists, fenced};
pub use super::planned::{OwnerChange, PlanContext, Planned};

impl SessionTable {
    /// Validates `m` for user `uid` and returns what expresses it. The probe answers whether
    /// an owner still runs (resume looks at the owner itself, never waits for a sweep).
    pub fn plan(
        &self,
        overlay: &mut Overlay,
        uid: u32,
        now: i64,
        m: Mutation,
        ctx: PlanContext<'_>,
    ) -> Result<Planned, WireError> {
        let at = micros_to_time(now);
        let key = |name: String| SessionKey::new(uid, name);
        match m {
            Mutation::Create {
                name,
                keep,
                meta,
                owner,
            } => {
                let owner = match owner {
                    Some(claim) => claim.resolve(ctx.probe)?,
                    None => None,
                };
                self.plan_create(overlay, key(name), keep, meta, owner, now)
            }
            Mutation::Checkpoint {
                name,
                payload,
                meta,
                expect,
                epoch,
                key: ckpt_key,
                writer,
            } => {
                self.check_writer(overlay, &key(name.clone()), epoch, writer, ctx.probe)?;
                let write = CheckpointWrite {
                    payload,
                    meta,
                    expect,
                    epoch,
                    key: ckpt_key,
                };
                self.plan_checkpoint(overlay, key(name), write, now)
            }
            Mutation::SetStatus {
                name,
                status,
                error,
            } => self.plan_status(overlay, key(name), status, error, now),
            Mutation::MarkStale { name, owner, host } => {
                Ok(self.plan_stale(overlay, key(name), owner, host, now))
            }
            Mutation::Resume { name, owner, force } => {
                let owner = owner.resolve(ctx.probe)?;
                self.plan_resume(overlay, key(name), owner, force, ctx.probe, now)
            }
            Mutation::Delete { name } => Ok(self.plan_delete(overlay, key(name), at)),
            Mutation::Attach {
                name,
                checkpoint,
                attach_key,
                payload,
                meta,
                replace,
                epoch,
                writer,
            } => {
                self.check_writer(overlay, &key(name.clone()), epoch, writer, ctx.probe)?;
                let a = super::mutation::AttachWrite {
                    checkpoint,
                    attach_key,
                    payload,
                    meta,
                    replace,
                    epoch,
                };
                self.plan_attach(overlay, key(name), a)
            }
            Mutation::DeleteMatching { session_meta } => {
                Ok(self.plan_delete_matching(overlay, uid, &session_meta, at))
            }
            Mutation::DeleteCheckpoints { sessions, which } => {
                self.plan_delete_checkpoints(overlay, uid, sessions, &which, ctx)
            }
            Mutation::Prune { sessions, keep } => self.plan_prune(overlay, uid, sessions, keep),
            Mutation::Copy { name, to, meta } => {
                self.plan_copy(overlay, key(name), key(to), meta, ctx, now)
            }
            Mutation::Batch(ops) => self.plan_batch(overlay, uid, now, ops, ctx),
            Mutation::Refresh { .. } => Ok(Planned::nothing(Reply::Count(0))),
        }
    }

    fn plan_create(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        keep: Option<u32>,
        meta: Meta,
        owner: Option<Owner>,
        now: i64,
    ) -> Result<Planned, WireError> {
        if self.exists(overlay, &key) {
            return Err(exists(&key.name));
        }
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
            owner_host: owner.and(self.host.clone()),
        };
        Ok(self.put_new(overlay, key, state, now))
    }

    /// Plans a session that does not exist yet.
    pub(super) fn put_new(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        state: SessionState,
        now: i64,
    ) -> Planned {
        let reply = Reply::Session(info(&state, 0, None));
        let mut ev = event(EventKind::Created, &key.name, micros_to_time(now));
        (ev.status, ev.epoch, ev.owner_pid) = (Some(state.status), Some(1), state.owner_pid());
        let owner = state.active_owner_on(self.host.as_deref());
        overlay.put(key, Some(Staged::fresh(state.clone())));
        Planned {
            changes: vec![(Change::Session(state), CheckedPayload::default())],
            reply,
            events: vec![ev],
            ownership: vec![OwnerChange {
                owner,
                previous: None,
            }],
        }
    }

    fn plan_checkpoint(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        w: CheckpointWrite,
        now: i64,
    ) -> Result<Planned, WireError> {
        let base = self.base(&key);
        let Some(s) = self.staged(overlay, &key) else {
            return Err(WireError::not_found(&key.name));
        };
        let view = View {
            staged: s,
            base: base.filter(|_| !s.fresh),
        };
        if let Some(e) = w.epoch.filter(|&e| e != s.state.epoch) {
            return Err(fenced(&key.name, s.state.epoch, e));
        }
        let known = w.key.as_ref().map(|k| {
            let entry = KeyEntry {
                number: 0,
                created_at: now,
                payload_len: w.payload.bytes.len() as u64,
                payload_crc: w.payload.crc,
                meta_crc: crate::model::meta_crc(&w.meta),
            };
            (k, entry)
        });
        if let Some((k, mine)) = &known {
            if let Some(there) = view.by_key(k) {
                return w.retried(&key.name, k, mine, &there).map(Planned::nothing);
            }
        }
        if s.state.status.is_finished() {
            return Err(closed(&key.name, s.state.status, "checkpoint"));
        }
        let latest = view.latest().unwrap_or(0);
        if let Some(x) = w.expect.filter(|&x| x != latest) {
            return Err(WireError::new(
                ErrorKind::Conflict,
                format!(
                    "session {:?}: expected latest checkpoint {x}, it is {latest}",
                    key.name
                ),
            ));
        }
        let number = s.state.last_number + 1;
        let known = known.map(|(k, e)| (k.clone(), KeyEntry { number, ..e }));
        let staged_ckpt = StagedCkpt {
            number,
            key: known,
            meta: w.meta.clone(),
        };
        let epoch = s.state.epoch;
        s.state.last_number = number;
        s.state.updated_at = now;
        s.add(base.filter(|_| !s.fresh), staged_ckpt);
        let at = micros_to_time(now);
        let reply = Reply::Checkpoint(Some(CheckpointInfo {
            number,
            size: w.payload.bytes.len() as u64,
            created_at: at,
            meta: w.meta.clone(),
            payload: None,
            skipped_corrupt: Vec::new(),
            key: w.key.clone(),
            existing: false,
            attachments: None,
        }));
        let mut ev = event(EventKind::Checkpointed, &key.name, at);
        (ev.number, ev.epoch) = (Some(number), Some(epoch));
        let change = Change::Checkpoint {
            meta: CheckpointMeta {
                uid: key.uid,
                name: key.name,
                number,
                created_at: now,
                meta: w.meta,
                key: w.key,
            },
            payload_crc: w.payload.crc,
        };
        Ok(Planned {
            changes: vec![(change, w.payload)],
            reply,
            events: vec![ev],
            ownership: Vec::new(),
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
        let previous = self.owner_in_view(overlay, &key);
        let Some(s) = self.staged(overlay, &key) else {
            return Err(WireError::not_found(&key.name));
        };
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
        s.state.owner_host = None;
        s.state.error = if status == Status::Failed {
            error
        } else {
            None
        };
        s.state.updated_at = now;
        let ev = event(EventKind::Status, "", micros_to_time(now));
        let latest = self.view_latest(&key, s);
        Ok(state_written(
            key,
            s,
            (latest, self.host.as_deref()),
            previous,
            ev,
        ))
    }

    fn plan_stale(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        owner: Owner,
        host: Option<String>,
        now: i64,
    ) -> Planned {
        let Some(s) = self.staged(overlay, &key) else {
            return Planned::nothing(Reply::Deleted(false));
        };
        // Only if it is still that owner's active session: a resume or status change since the
        // owner died wins.
        let host = host.as_deref().or(self.host.as_deref());
        if s.state.status != Status::Active
            || s.state.owner != Some(owner)
            || s.state.owner_host.as_deref() != host
        {
            let latest = self.view_latest(&key, s);
            return Planned::nothing(Reply::Session(info(&s.state, s.count, latest)));
        }
        s.state.status = Status::Stale;
        s.state.owner = None;
        s.state.owner_host = None;
        s.state.updated_at = now;
        let mut ev = event(EventKind::Stale, "", micros_to_time(now));
        ev.owner_pid = Some(owner.pid);
        let latest = self.view_latest(&key, s);
        state_written(key, s, (latest, self.host.as_deref()), Some(owner), ev)
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
        let previous = self.owner_in_view(overlay, &key);
        let Some(s) = self.staged(overlay, &key) else {
            return Err(WireError::not_found(&key.name));
        };
        if let (Status::Active, Some(current)) = (s.state.status, s.state.owner) {
            // An owner on another host cannot be probed from here: it is alive while its
            // host's lease is.
            let host = s.state.owner_host.clone();
            let here = host.is_none() || host.as_deref() == self.host.as_deref();
            let same = here && owner.is_some_and(|o| o.pid == current.pid);
            let alive = match &host {
                Some(h) if !here => self.live_hosts.contains(h),
                _ => probe.is_alive(&current),
            };
            if !force && !same && alive {
                let whose = match &host {
                    Some(h) => format!("pid {} on host {h}", current.pid),
                    None => format!("pid {}", current.pid),
                };
                return Err(WireError {
                    kind: ErrorKind::OwnerAlive,
                    message: format!(
                        "session {:?} is active and its owner ({whose}) is alive; resume with force to take it over (sessionctl resume --force)",
                        key.name
                    ),
                    owner_pid: Some(current.pid),
                    index: None,
                    owner_host: host,
                });
            }
        }
        s.state.status = Status::Active;
        s.state.owner = owner;
        s.state.owner_host = owner.and(self.host.clone());
        s.state.epoch += 1;
        s.state.error = None;
        s.state.updated_at = now;
        let mut ev = event(EventKind::Resumed, "", micros_to_time(now));
        ev.owner_pid = owner.map(|o| o.pid);
        let latest = self.view_latest(&key, s);
        let mut planned = state_written(key, s, (latest, self.host.as_deref()), previous, ev);
        if let Reply::Session(session) = planned.reply {
            // The checkpoint is read once the resume is durable.
            planned.reply = Reply::Resumed {
                session,
                checkpoint: None,
            };
        }
        Ok(planned)
    }

    pub(super) fn plan_delete(
        &self,
        overlay: &mut Overlay,
        key: SessionKey,
        at: DateTime<Utc>,
    ) -> Planned {
        if !self.exists(overlay, &key) {
            return Planned::nothing(Reply::Deleted(false));
        }
        let previous = self.owner_in_view(overlay, &key);
        let ev = event(EventKind::Deleted, &key.name, at);
        overlay.put(key.clone(), None);
        Planned {
            changes: vec![(Change::Delete(key), CheckedPayload::default())],
            reply: Reply::Deleted(true),
            events: vec![ev],
            ownership: vec![OwnerChange {
                owner: None,
                previous,
            }],
        }
    }
}

/// A checkpoint request's parts beyond its session.
struct CheckpointWrite {
    payload: CheckedPayload,
    meta: Meta,
    expect: Option<u64>,
    epoch: Option<u64>,
    key: Option<String>,
}

impl CheckpointWrite {
    /// A write under a key a retained checkpoint has: the same bytes again is a retry, whose
    /// answer is the checkpoint there; other bytes are another checkpoint, refused.
    fn retried(
        &self,
        name: &str,
        key: &str,
        mine: &KeyEntry,
        there: &KeyEntry,
    ) -> Result<Reply, WireError> {
        let same = (mine.payload_len, mine.payload_crc, mine.meta_crc)
            == (there.payload_len, there.payload_crc, there.meta_crc);
        if !same {
            return Err(WireError::new(
                ErrorKind::AlreadyExists,
                format!(
                    "session {name:?} has checkpoint {} under key {key:?}, with other bytes or meta",
                    there.number
                ),
            ));
        }
        Ok(Reply::Checkpoint(Some(CheckpointInfo {
            number: there.number,
            size: there.payload_len,
            created_at: micros_to_time(there.created_at),
            meta: self.meta.clone(),
            payload: None,
            skipped_corrupt: Vec::new(),
            key: Some(key.to_string()),
            existing: true,
            attachments: None,
        })))
    }
}

/// Plans writing a session's new state (already staged), with the event announcing it.
fn state_written(
    key: SessionKey,
    s: &Staged,
    (latest, host): (Option<u64>, Option<&str>),
    previous: Option<Owner>,
    mut ev: Event,
) -> Planned {
    ev.name = key.name;
    ev.status = Some(s.state.status);
    ev.epoch = Some(s.state.epoch);
    if ev.owner_pid.is_none() {
        ev.owner_pid = s.state.owner_pid();
    }
    Planned {
        changes: vec![(Change::Session(s.state.clone()), CheckedPayload::default())],
        reply: Reply::Session(info(&s.state, s.count, latest)),
        events: vec![ev],
        ownership: vec![OwnerChange {
            owner: s.state.active_owner_on(host),
            previous,
        }],
    }
}
