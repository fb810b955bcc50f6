//! The session table: every session and the place of its retained checkpoints, in memory.
//!
//! Plain synchronous logic, no I/O, in three parts: [`plan`] validates a mutation against
//! the table and the batch's earlier changes and says what changes express it; [`apply`]
//! applies a durable change, with retention, for live commits and start-up's replay alike;
//! the queries here answer reads.

mod apply;
mod map;
mod plan;

use std::collections::{HashMap, HashSet, VecDeque};

use sessiond_proto::{Meta, SessionInfo, Status, WireError};

use crate::model::{
    micros_to_time, Change, CkptEntry, IndexedSession, LiveRecords, Loc, Owner, SessionKey,
    SessionState,
};
use crate::store::Index;
use map::{Keyed, SessionMap};
pub use plan::{Mutation, Overlay, OwnerChange, OwnerClaim, Planned};

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

    /// How many active sessions each owner has.
    pub fn active_owner_counts(&self) -> HashMap<Owner, usize> {
        let mut counts = HashMap::new();
        for owner in self
            .sessions
            .values()
            .filter_map(|s| s.state.active_owner())
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
                let owner = s.state.active_owner().filter(|o| owners.contains(o))?;
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
        }
        out
    }
}

impl Index for SessionTable {
    fn restore(&mut self, sessions: Vec<IndexedSession>) {
        self.sessions = SessionMap::with_capacity(sessions.len());
        self.checkpoints = 0;
        for s in sessions {
            self.checkpoints += s.checkpoints.len() as u64;
            self.sessions.insert(Session {
                state: s.state,
                state_loc: s.state_loc,
                checkpoints: s.checkpoints.into(),
            });
        }
    }

    fn apply(&mut self, change: Change, at: Loc) -> Vec<Loc> {
        SessionTable::apply(self, change, at)
    }

    fn export(&self) -> Vec<IndexedSession> {
        self.sessions
            .values()
            .map(|s| IndexedSession {
                state: s.state.clone(),
                state_loc: s.state_loc,
                checkpoints: s.checkpoints.iter().copied().collect(),
            })
            .collect()
    }

    fn records_in(&self, segment: u32) -> LiveRecords {
        self.live_records(segment)
    }
}

#[cfg(test)]
mod tests {
    use sessiond_proto::{ErrorKind, Reply};

    use super::*;
    use crate::model::{CheckedPayload, CheckpointMeta};
    use crate::process::fake::FakeProbe;
    use crate::process::{ProcessProbe, SystemProbe};

    /// Live records of `segment`: each session's state record and retained checkpoints there.
    fn live_in(t: &SessionTable, segment: u32) -> usize {
        t.export()
            .iter()
            .map(|s| {
                usize::from(s.state_loc.segment == segment)
                    + s.checkpoints
                        .iter()
                        .filter(|c| c.segment() == segment)
                        .count()
            })
            .sum()
    }

    /// Plans and applies one mutation with a given view of the processes.
    fn run_with(t: &mut SessionTable, m: Mutation, probe: &FakeProbe) -> Result<Reply, WireError> {
        let mut o = Overlay::default();
        let p = t.plan(&mut o, 1000, 1, m, probe)?;
        for (i, (h, _)) in p.changes.into_iter().enumerate() {
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
            for (h, _) in p.changes.clone() {
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
        for (i, (h, _)) in p.changes.into_iter().enumerate() {
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
            live_in(&t, 2),
            0,
            "retention released checkpoint 1's segment"
        );
        assert_eq!(live_in(&t, 6), 1);
        assert_eq!(live_in(&t, 1), 1, "the state record stays live");
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
        assert_eq!(live_in(&t, 1), 0);
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
            Change::Checkpoint(CheckpointMeta {
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
        let mut t2 = SessionTable::new(2);
        t2.restore(t.export());
        for seg in 1..6 {
            assert_eq!(live_in(&t, seg), live_in(&t2, seg), "segment {seg}");
        }
        assert_eq!(t.session(1000, "a"), t2.session(1000, "a"));
    }
}
