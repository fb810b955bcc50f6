//! Applying durable changes: live commits and start-up's replay alike go through
//! [`SessionTable::apply`], so that what is served after a restart is what was acknowledged
//! before it. Retention happens here, and every apply says which records it made dead (a
//! dropped checkpoint, a session's older state record) for the store to count.

use std::collections::VecDeque;

use sessiond_proto::{Meta, Status};

use super::{Session, SessionTable};
use crate::model::{Change, CheckpointMeta, CkptEntry, Loc, SessionState};

/// A state record's place when a session had to be recreated without one: no record.
const NO_RECORD: Loc = Loc {
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
                None => self.sessions.insert(Session {
                    state,
                    state_loc: at,
                    checkpoints: VecDeque::new(),
                }),
            },
            Change::Checkpoint(h) => {
                let Some(entry) = Self::entry(&h, at, &mut dead) else {
                    return dead;
                };
                let s = self.session_for_checkpoint(&h);
                let mut dropped = Vec::new();
                // A record numbered N replaces any N' >= N (only after an unacknowledged write).
                while s.checkpoints.back().is_some_and(|c| c.number >= h.number) {
                    dropped.extend(s.checkpoints.pop_back());
                }
                Self::make_room(s, &mut dropped);
                s.checkpoints.push_back(entry);
                s.state.last_number = s.state.last_number.max(h.number);
                s.state.updated_at = s.state.updated_at.max(h.created_at);
                self.checkpoints += 1;
                self.drop_entries(&dropped, &mut dead);
            }
            Change::Relocated(h) => {
                // A copy of a retained checkpoint, written so that its old segment can go.
                let Some(entry) = Self::entry(&h, at, &mut dead) else {
                    return dead;
                };
                let s = self.session_for_checkpoint(&h);
                let mut dropped = Vec::new();
                match s.checkpoints.binary_search_by_key(&h.number, |c| c.number) {
                    Ok(i) => dropped.push(std::mem::replace(&mut s.checkpoints[i], entry)),
                    Err(i) => s.checkpoints.insert(i, entry),
                }
                s.state.last_number = s.state.last_number.max(h.number);
                dropped.extend(Self::retain(s));
                self.checkpoints += 1;
                self.drop_entries(&dropped, &mut dead);
            }
            Change::Delete(key) => {
                if let Some(s) = self.sessions.remove(key.uid, &key.name) {
                    dead.push(s.state_loc);
                    let entries: Vec<CkptEntry> = s.checkpoints.into_iter().collect();
                    self.drop_entries(&entries, &mut dead);
                }
            }
        }
        dead.retain(|loc| *loc != NO_RECORD);
        dead
    }

    /// The session of a checkpoint record, recreated as paused if its state record is lost
    /// (damage): the checkpoints are kept.
    fn session_for_checkpoint(&mut self, h: &CheckpointMeta) -> &mut Session {
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
                state_loc: NO_RECORD,
                checkpoints: VecDeque::new(),
            }
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

    fn drop_entries(&mut self, entries: &[CkptEntry], dead: &mut Vec<Loc>) {
        dead.extend(entries.iter().map(CkptEntry::loc));
        self.checkpoints -= entries.len() as u64;
    }
}
