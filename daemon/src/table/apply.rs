//! Applying durable changes: live commits and start-up's replay alike go through
//! [`SessionTable::apply`], so that what is served after a restart is what was acknowledged
//! before it. Retention happens here, and every apply says which records it made dead (a
//! dropped checkpoint with its attachments, a session's older state record) for the store to
//! count.

use std::collections::VecDeque;

use sessiond_proto::{Meta, Status};

use super::{Session, SessionTable};
use crate::model::{
    AttachEntry, AttachMeta, Change, CheckpointMeta, CkptEntry, KeyEntry, Loc, SessionKey,
    SessionState,
};

/// A state record's place when a session had to be recreated without one: no record.
pub(super) const NO_RECORD: Loc = Loc {
    segment: 0,
    offset: 0,
    header_len: 0,
    payload_len: 0,
};

impl SessionTable {
    /// Applies a durable change kept `at`; returns the records it made dead.
    pub fn apply(&mut self, change: Change, at: Loc) -> Vec<Loc> {
        let mut dead = Vec::new();
        match change {
            Change::Session(state) => match self.sessions.get_mut(state.uid, &state.name) {
                Some(s) => {
                    dead.push(std::mem::replace(&mut s.state_loc, at));
                    let last = s.state.last_number.max(state.last_number);
                    s.state = state;
                    s.state.last_number = last;
                }
                None => self.sessions.insert(Session::new(state, at)),
            },
            Change::Checkpoint { meta, payload_crc } => {
                self.apply_checkpoint(&meta, payload_crc, at, &mut dead)
            }
            Change::Relocated { meta, payload_crc } => {
                self.relocate_checkpoint(meta, payload_crc, at, &mut dead)
            }
            Change::Delete(key) => {
                if let Some(s) = self.sessions.remove(key.uid, &key.name) {
                    dead.push(s.state_loc);
                    self.checkpoints -= s.checkpoints.len() as u64;
                    dead.extend(s.checkpoints.iter().map(CkptEntry::loc));
                    if let Some(extra) = s.extra {
                        dead.extend(extra.attachments.into_values().flatten().map(|a| a.loc));
                    }
                }
            }
            Change::Attach(a) => self.attach(a, at, false, &mut dead),
            Change::RelocatedAttach(a) => self.attach(a, at, true, &mut dead),
            Change::DropCheckpoints { session, numbers } => {
                self.drop_checkpoints(&session, &numbers, &mut dead)
            }
        }
        dead.retain(|loc| *loc != NO_RECORD);
        dead
    }

    /// [`SessionTable::apply`] of a [`Change::Checkpoint`], leaving the change to the caller;
    /// the records it made dead are added to `dead` (a commit's one list for its batch).
    pub fn apply_checkpoint(
        &mut self,
        h: &CheckpointMeta,
        payload_crc: u32,
        at: Loc,
        dead: &mut Vec<Loc>,
    ) {
        let from = dead.len();
        self.add_checkpoint(h, payload_crc, at, dead);
        let mut i = from;
        while i < dead.len() {
            if dead[i] == NO_RECORD {
                dead.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn add_checkpoint(
        &mut self,
        h: &CheckpointMeta,
        payload_crc: u32,
        at: Loc,
        dead: &mut Vec<Loc>,
    ) {
        let Some(entry) = Self::entry(h, at, dead) else {
            return;
        };
        let s = self.session_for_checkpoint(h);
        let before = s.checkpoints.len();
        // A record numbered N replaces any N' >= N (only after an unacknowledged write).
        while s.checkpoints.back().is_some_and(|c| c.number >= h.number) {
            let Some(c) = s.checkpoints.pop_back() else {
                break;
            };
            s.discard(&c, dead);
        }
        Self::make_room(s, dead);
        let dropped = before - s.checkpoints.len();
        s.checkpoints.push_back(entry);
        s.state.last_number = s.state.last_number.max(h.number);
        s.state.updated_at = s.state.updated_at.max(h.created_at);
        // After the dropped ones' keys are forgotten: one of them may have had this number.
        s.remember_key(h, payload_crc, at);
        self.checkpoints += 1;
        self.checkpoints -= dropped as u64;
    }

    /// A copy of a retained checkpoint, written so that its old segment can go.
    fn relocate_checkpoint(
        &mut self,
        h: CheckpointMeta,
        payload_crc: u32,
        at: Loc,
        dead: &mut Vec<Loc>,
    ) {
        let Some(entry) = Self::entry(&h, at, dead) else {
            return;
        };
        let s = self.session_for_checkpoint(&h);
        let mut added = 0;
        match s.checkpoints.binary_search_by_key(&h.number, |c| c.number) {
            Ok(i) => dead.push(std::mem::replace(&mut s.checkpoints[i], entry).loc()),
            Err(i) => {
                s.checkpoints.insert(i, entry);
                added = 1;
            }
        }
        s.state.last_number = s.state.last_number.max(h.number);
        // Its key, which a replay finds only here once the original record's segment went.
        s.remember_key(&h, payload_crc, at);
        let dropped = Self::retain(s);
        s.forget(&dropped, dead);
        self.checkpoints += added;
        self.checkpoints -= dropped.len() as u64;
        dead.extend(dropped.iter().map(CkptEntry::loc));
    }

    /// An attachment to a retained checkpoint: added, or replacing the one under its key (a
    /// relocated one only takes its own place). One to a checkpoint no longer retained is
    /// dead at once.
    fn attach(&mut self, a: AttachMeta, at: Loc, relocated: bool, dead: &mut Vec<Loc>) {
        let Some(s) = self.sessions.get_mut(a.uid, &a.name) else {
            dead.push(at);
            return;
        };
        if !s.retains(a.number) {
            dead.push(at);
            return;
        }
        let list = s.extra_mut().attachments.entry(a.number).or_default();
        match list.iter_mut().find(|e| e.attach_key == a.attach_key) {
            Some(e) => dead.push(std::mem::replace(&mut e.loc, at)),
            None if relocated => dead.push(at),
            None => list.push(AttachEntry {
                attach_key: a.attach_key,
                loc: at,
            }),
        }
    }

    fn drop_checkpoints(&mut self, key: &SessionKey, numbers: &[u64], dead: &mut Vec<Loc>) {
        let Some(s) = self.sessions.get_mut(key.uid, &key.name) else {
            return;
        };
        let (dropped, kept): (Vec<CkptEntry>, Vec<CkptEntry>) = s
            .checkpoints
            .iter()
            .partition(|c| numbers.contains(&c.number));
        s.checkpoints = kept.into();
        s.forget(&dropped, dead);
        self.checkpoints -= dropped.len() as u64;
        dead.extend(dropped.iter().map(CkptEntry::loc));
    }

    /// The session of a checkpoint record, recreated as paused if its state record is lost
    /// (damage): the checkpoints are kept.
    fn session_for_checkpoint(&mut self, h: &CheckpointMeta) -> &mut Session {
        let default_keep = self.default_keep;
        self.sessions.get_or_insert_with(h.uid, &h.name, || {
            tracing::warn!(session = %h.name, uid = h.uid, "checkpoint of an unknown session; recreating it as paused");
            let state = SessionState {
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
                owner_host: None,
            };
            Session::new(state, NO_RECORD)
        })
    }

    /// The index entry of a checkpoint record at `at` (none beyond 4 GiB into a segment: its
    /// record is dead at once).
    fn entry(h: &CheckpointMeta, at: Loc, dead: &mut Vec<Loc>) -> Option<CkptEntry> {
        let entry = CkptEntry::new(h.number, at);
        if entry.is_none() {
            tracing::error!(session = %h.name, number = h.number, segment = at.segment, offset = at.offset, "checkpoint record beyond 4 GiB into its segment; not indexed");
            dead.push(at);
        }
        entry
    }

    /// Before a new checkpoint: drops the oldest if the session is at its `keep`, and grows
    /// the list by at most what `keep` allows, so that 100,000 sessions keeping 10 hold 10
    /// entries each, not the 16 or 20 that doubling would leave.
    fn make_room(s: &mut Session, dead: &mut Vec<Loc>) {
        let keep = s.state.keep as usize;
        while keep > 0 && s.checkpoints.len() >= keep {
            let Some(c) = s.checkpoints.pop_front() else {
                break;
            };
            s.discard(&c, dead);
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
}

impl Session {
    pub(super) fn new(state: SessionState, state_loc: Loc) -> Self {
        Session {
            state,
            state_loc,
            checkpoints: VecDeque::new(),
            extra: None,
        }
    }

    fn extra_mut(&mut self) -> &mut super::Extra {
        self.extra.get_or_insert_with(Default::default)
    }

    pub(super) fn retains(&self, number: u64) -> bool {
        self.checkpoints
            .binary_search_by_key(&number, |c| c.number)
            .is_ok()
    }

    /// The key a checkpoint record at `at` gives its checkpoint, with what a retry is known by.
    fn remember_key(&mut self, h: &CheckpointMeta, payload_crc: u32, at: Loc) {
        let Some(key) = &h.key else { return };
        let known = KeyEntry {
            number: h.number,
            created_at: h.created_at,
            payload_len: u64::from(at.payload_len),
            payload_crc,
            meta_crc: crate::model::meta_crc(&h.meta),
        };
        let extra = self.extra_mut();
        extra.key_of.insert(h.number, key.clone());
        extra.keys.insert(key.clone(), known);
    }

    /// A checkpoint no longer retained: its key forgotten, its record and its attachments
    /// dead.
    fn discard(&mut self, c: &CkptEntry, dead: &mut Vec<Loc>) {
        self.forget(std::slice::from_ref(c), dead);
        dead.push(c.loc());
    }

    /// Forgets the keys and attachments of checkpoints no longer retained; their
    /// attachments' records are dead.
    fn forget(&mut self, dropped: &[CkptEntry], dead: &mut Vec<Loc>) {
        let Some(extra) = &mut self.extra else {
            return;
        };
        for c in dropped {
            if let Some(key) = extra.key_of.remove(&c.number) {
                extra.keys.remove(&key);
            }
            if let Some(list) = extra.attachments.remove(&c.number) {
                dead.extend(list.into_iter().map(|a| a.loc));
            }
        }
        if extra.keys.is_empty() && extra.attachments.is_empty() {
            self.extra = None;
        }
    }
}
