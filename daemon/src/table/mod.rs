//! The session table: every session and the place of its retained checkpoints, in memory.
//!
//! Plain synchronous logic, no I/O, in three parts: [`plan`] validates a mutation against
//! the table and the batch's earlier changes and says what changes express it; [`apply`]
//! applies a durable change, with retention, for live commits and start-up's replay alike;
//! the queries here answer reads.

mod apply;
mod claim;
mod framework;
mod map;
mod mutation;
mod overlay;
mod plan;
mod planned;

use std::collections::{HashMap, HashSet, VecDeque};

use sessiond_proto::{CheckpointRef, ErrorKind, Meta, SessionInfo, Status, WireError};

use crate::model::{
    micros_to_time, AttachEntry, Change, CkptEntry, IndexedSession, KeyEntry, LiveRecords, Loc,
    Owner, SessionKey, SessionState,
};
use crate::store::Index;
use map::{Keyed, SessionMap};
pub use plan::{
    Claimant, Mutation, Overlay, OwnerChange, OwnerClaim, PlanContext, Planned, Selection, Which,
};

#[derive(Debug, Clone)]
struct Session {
    state: SessionState,
    /// Where the latest state record is.
    state_loc: Loc,
    checkpoints: VecDeque<CkptEntry>,
    /// Keys and attachments, for the sessions that have any (a framework's threads): a plain
    /// job's session costs one pointer more.
    extra: Option<Box<Extra>>,
}

impl Session {
    fn records(&self) -> (u64, Vec<Loc>) {
        let logical = self
            .checkpoints
            .iter()
            .map(|c| u64::from(c.payload_len()))
            .sum();
        let mut locs = vec![self.state_loc];
        locs.extend(self.checkpoints.iter().map(CkptEntry::loc));
        if let Some(extra) = &self.extra {
            locs.extend(extra.attachments.values().flatten().map(|a| a.loc));
        }
        (logical, locs)
    }
}

#[derive(Debug, Clone, Default)]
struct Extra {
    keys: foldhash::HashMap<String, KeyEntry>,
    key_of: foldhash::HashMap<u64, String>,
    /// By checkpoint number, each list in the order first written.
    attachments: foldhash::HashMap<u64, Vec<AttachEntry>>,
}

/// A retained checkpoint as a read needs it: where it is and what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub entry: CkptEntry,
    pub key: Option<String>,
    /// Its attachments, in the order first written.
    pub attachments: Vec<AttachEntry>,
}

impl Keyed for Session {
    fn key(&self) -> (u32, &str) {
        (self.state.uid, &self.state.name)
    }
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
        owner_host: state.owner.and(state.owner_host.clone()),
        logical_bytes: None,
        stored_bytes: None,
    }
}

/// Filters of `list`.
#[derive(Debug, Default)]
pub struct ListFilter {
    /// `None`: every user (root's `--all-users`).
    pub uid: Option<u32>,
    pub status: Option<Status>,
    pub meta: Meta,
    /// Only names starting with this.
    pub prefix: Option<String>,
    /// Only names after this one: the next page.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

/// Whether `meta` has every pair of `wanted`.
pub fn meta_matches(meta: &Meta, wanted: &Meta) -> bool {
    wanted.iter().all(|(k, v)| meta.get(k) == Some(v))
}

fn missing_checkpoint(name: &str, which: &CheckpointRef, s: &Session) -> WireError {
    let retained = match (s.checkpoints.front(), s.checkpoints.back()) {
        (Some(a), Some(b)) => format!("retained: {} to {}", a.number, b.number),
        _ => "it has none".to_string(),
    };
    let what = match which {
        CheckpointRef::Number(n) => format!("checkpoint {n}"),
        CheckpointRef::Key(k) => format!("checkpoint with key {k:?}"),
    };
    WireError::new(
        ErrorKind::NotFound,
        format!("session {name:?} has no {what} ({retained})"),
    )
}

impl Session {
    fn key_of(&self, number: u64) -> Option<&String> {
        self.extra.as_ref()?.key_of.get(&number)
    }

    fn key_entry(&self, key: &str) -> Option<&KeyEntry> {
        self.extra.as_ref()?.keys.get(key)
    }

    fn attachments_of(&self, number: u64) -> &[AttachEntry] {
        self.extra
            .as_ref()
            .and_then(|e| e.attachments.get(&number))
            .map_or(&[], Vec::as_slice)
    }

    fn position(&self, number: u64) -> Option<usize> {
        self.checkpoints
            .binary_search_by_key(&number, |c| c.number)
            .ok()
    }

    /// The retained checkpoint a reference names.
    fn resolve(&self, which: &CheckpointRef) -> Option<&CkptEntry> {
        let number = match which {
            CheckpointRef::Number(n) => *n,
            CheckpointRef::Key(k) => self.key_entry(k)?.number,
        };
        self.checkpoints.get(self.position(number)?)
    }

    fn describe(&self, c: &CkptEntry, attachments: bool) -> Retained {
        Retained {
            entry: *c,
            key: self.key_of(c.number).cloned(),
            attachments: if attachments {
                self.attachments_of(c.number).to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: SessionMap<Session>,
    checkpoints: u64,
    default_keep: u32,
    /// This daemon's host in a store shared by several hosts (`None`: a local log).
    host: Option<String>,
    /// The hosts whose lease is alive, as last seen (a shared store's).
    live_hosts: HashSet<String>,
}

impl SessionTable {
    pub fn new(default_keep: u32) -> Self {
        SessionTable {
            default_keep,
            ..Default::default()
        }
    }

    /// Sessions shared with other hosts' daemons: this one's host, which owns what its
    /// processes own and watches only those.
    pub fn set_host(&mut self, host: String) {
        self.host = Some(host);
    }

    /// The hosts whose lease is alive now (their sessions' owners may be).
    pub fn set_live_hosts(&mut self, hosts: HashSet<String>) {
        self.live_hosts = hosts;
    }

    /// The `keep` of sessions created from now on without one.
    pub fn set_default_keep(&mut self, keep: u32) {
        self.default_keep = keep;
    }

    /// How many active sessions each owner has.
    pub fn active_owner_counts(&self) -> HashMap<Owner, usize> {
        let mut counts = HashMap::new();
        for owner in self
            .sessions
            .values()
            .filter_map(|s| s.state.active_owner_on(self.host.as_deref()))
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
                let owner = s
                    .state
                    .active_owner_on(self.host.as_deref())
                    .filter(|o| owners.contains(o))?;
                Some((s.state.key(), owner))
            })
            .collect()
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
            .filter(|s| meta_matches(&s.state.meta, &filter.meta))
            .filter(|s| {
                filter
                    .prefix
                    .as_deref()
                    .is_none_or(|p| s.state.name.starts_with(p))
            })
            .filter(|s| {
                filter
                    .after
                    .as_deref()
                    .is_none_or(|after| s.state.name.as_str() > after)
            })
            .map(|s| {
                info(
                    &s.state,
                    s.checkpoints.len() as u64,
                    s.checkpoints.back().map(|c| c.number),
                )
            })
            .collect();
        // In name order, so that `after` pages through them (root's listing of every user
        // too).
        out.sort_by(|a, b| (&a.name, a.uid).cmp(&(&b.name, b.uid)));
        if let Some(limit) = filter.limit {
            out.truncate(limit);
        }
        out
    }

    /// The retained checkpoints of a session, oldest first.
    #[cfg(test)]
    pub fn checkpoints(&self, uid: u32, name: &str) -> Result<Vec<CkptEntry>, WireError> {
        let s = self
            .sessions
            .get(uid, name)
            .ok_or_else(|| WireError::not_found(name))?;
        Ok(s.checkpoints.iter().copied().collect())
    }

    /// The retained checkpoints of a session, oldest first, with their keys and (when asked
    /// for) their attachments.
    pub fn retained(
        &self,
        uid: u32,
        name: &str,
        attachments: bool,
    ) -> Result<Vec<Retained>, WireError> {
        let s = self
            .sessions
            .get(uid, name)
            .ok_or_else(|| WireError::not_found(name))?;
        Ok(s.checkpoints
            .iter()
            .map(|c| s.describe(c, attachments))
            .collect())
    }

    /// One retained checkpoint by number or key (`None` for both: the latest), with its key
    /// and attachments: a lookup, never a scan.
    pub fn find(
        &self,
        uid: u32,
        name: &str,
        which: Option<&CheckpointRef>,
        attachments: bool,
    ) -> Result<Option<Retained>, WireError> {
        let s = self
            .sessions
            .get(uid, name)
            .ok_or_else(|| WireError::not_found(name))?;
        let entry = match which {
            None => s.checkpoints.back(),
            Some(r) => Some(s.resolve(r).ok_or_else(|| missing_checkpoint(name, r, s))?),
        };
        Ok(entry.map(|c| s.describe(c, attachments)))
    }

    /// The names of the caller's sessions whose meta has every pair of `meta`.
    pub fn names_matching(&self, uid: u32, meta: &Meta) -> Vec<String> {
        let mut names: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.state.uid == uid && meta_matches(&s.state.meta, meta))
            .map(|s| s.state.name.clone())
            .collect();
        names.sort_unstable();
        names
    }

    pub fn session_count(&self) -> u64 {
        self.sessions.len() as u64
    }

    /// A session's retained checkpoints' payload bytes, and the places of all its records
    /// (state, checkpoints, attachments), for what it costs in the store.
    pub fn records_of(&self, uid: u32, name: &str) -> Option<(u64, Vec<Loc>)> {
        self.sessions.get(uid, name).map(Session::records)
    }

    /// As [`SessionTable::records_of`], over every session.
    pub fn all_records(&self) -> (u64, Vec<Loc>) {
        let mut out = (0, Vec::new());
        for s in self.sessions.values() {
            let (logical, locs) = s.records();
            out.0 += logical;
            out.1.extend(locs);
        }
        out
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

    /// The live records of `segment`.
    fn live_records(&self, segment: u32) -> LiveRecords {
        let mut out = LiveRecords::default();
        for s in self.sessions.values() {
            if s.state_loc.segment == segment {
                out.states.push(s.state.clone());
            }
            for c in s.checkpoints.iter().filter(|c| c.segment() == segment) {
                out.checkpoints.push((s.state.key(), *c));
            }
            let Some(extra) = &s.extra else { continue };
            for (number, list) in &extra.attachments {
                for a in list.iter().filter(|a| a.loc.segment == segment) {
                    out.attachments
                        .push((s.state.key(), *number, a.attach_key.clone(), a.loc));
                }
            }
        }
        out
    }
}

impl SessionTable {
    fn insert_indexed(&mut self, s: IndexedSession) {
        self.checkpoints += s.checkpoints.len() as u64;
        let extra = (!s.keys.is_empty() || !s.attachments.is_empty()).then(|| {
            Box::new(Extra {
                key_of: s.keys.iter().map(|(k, e)| (e.number, k.clone())).collect(),
                keys: s.keys.into_iter().collect(),
                attachments: s.attachments.into_iter().collect(),
            })
        });
        self.sessions.insert(Session {
            state: s.state,
            state_loc: s.state_loc,
            checkpoints: s.checkpoints.into(),
            extra,
        });
    }
}

impl Index for SessionTable {
    fn restore(&mut self, sessions: Vec<IndexedSession>) {
        self.sessions = SessionMap::with_capacity(sessions.len());
        self.checkpoints = 0;
        for s in sessions {
            self.insert_indexed(s);
        }
    }

    fn replace(&mut self, key: &SessionKey, session: Option<IndexedSession>) {
        if let Some(old) = self.sessions.remove(key.uid, &key.name) {
            self.checkpoints -= old.checkpoints.len() as u64;
        }
        if let Some(s) = session {
            self.insert_indexed(s);
        }
    }

    fn set_live_hosts(&mut self, hosts: HashSet<String>) {
        SessionTable::set_live_hosts(self, hosts);
    }

    fn apply(&mut self, change: Change, at: Loc) -> Vec<Loc> {
        SessionTable::apply(self, change, at)
    }

    fn export(&self) -> Vec<IndexedSession> {
        self.sessions
            .values()
            .map(|s| {
                let (mut keys, mut attachments) = match &s.extra {
                    Some(e) => (
                        e.keys.iter().map(|(k, v)| (k.clone(), *v)).collect(),
                        e.attachments.iter().map(|(n, l)| (*n, l.clone())).collect(),
                    ),
                    None => (Vec::new(), Vec::new()),
                };
                // In checkpoint order, so that two snapshots of one table are the same bytes.
                keys.sort_unstable_by_key(|(_, e): &(String, KeyEntry)| e.number);
                attachments.sort_unstable_by_key(|(n, _)| *n);
                IndexedSession {
                    state: s.state.clone(),
                    state_loc: s.state_loc,
                    checkpoints: s.checkpoints.iter().copied().collect(),
                    keys,
                    attachments,
                }
            })
            .collect()
    }

    fn records_in(&self, segment: u32) -> LiveRecords {
        self.live_records(segment)
    }
}

#[cfg(test)]
mod tests;
