//! The table's planning and applying, driven without a socket or a disk.

use sessiond_proto::{CheckpointRef, ErrorKind, Reply};

use super::*;
use crate::model::{AttachMeta, CheckedPayload, CheckpointMeta};
use crate::process::fake::FakeProbe;
use crate::process::ProcessProbe;
use crate::store::{ReadError, Reads, Usage};

/// A store that holds nothing: the plans tested here read nothing from one.
struct NoReads;

impl Reads for NoReads {
    fn read(&self, _: &Loc) -> Result<(CheckpointMeta, Vec<u8>), ReadError> {
        Err(ReadError::Failed("no store in this test".into()))
    }
    fn read_meta(&self, _: &Loc) -> Result<CheckpointMeta, ReadError> {
        Err(ReadError::Failed("no store in this test".into()))
    }
    fn read_attachment(&self, _: &Loc) -> Result<(AttachMeta, Vec<u8>), ReadError> {
        Err(ReadError::Failed("no store in this test".into()))
    }
    fn usage(&self) -> Usage {
        Usage::default()
    }
    fn stored_bytes(&self, _: Option<&crate::model::SessionKey>, _: &[Loc]) -> u64 {
        0
    }
}

fn ctx(probe: &FakeProbe) -> PlanContext<'_> {
    PlanContext {
        probe,
        reads: &NoReads,
    }
}

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
    let p = t.plan(&mut o, 1000, 1, m, ctx(probe))?;
    for (i, (h, _)) in p.changes.into_iter().enumerate() {
        t.apply(h, loc(1, i as u64 * 100));
    }
    Ok(p.reply)
}

/// The running process `pid` (user 1000, started at `start_time`) asking to own a session.
fn owner(probe: &FakeProbe, pid: u32, start_time: u64) -> OwnerClaim {
    probe.set(pid, start_time, 1000);
    OwnerClaim {
        peer: Some(pid),
        claimant: Claimant::Peer,
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
        peer: Some(99),
        claimant: Claimant::Named(pid),
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
        peer: Some(30),
        claimant: Claimant::Peer,
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
        peer: Some(pid),
        claimant: Claimant::Peer,
        caller_uid: 1000,
    }
}

#[test]
fn ownership_changes_name_the_owner_before_and_after() {
    let probe = FakeProbe::default();
    let mut t = SessionTable::new(16);
    let pids = |p: Planned| {
        p.ownership
            .first()
            .map(|c| (c.owner.map(|o| o.pid), c.previous.map(|o| o.pid)))
    };
    let step = |t: &mut SessionTable, m| {
        let p = t
            .plan(&mut Overlay::default(), 1000, 1, m, ctx(&probe))
            .unwrap();
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
    t.plan(&mut batch, 1000, 2, create, ctx(&probe)).unwrap();
    let delete = Mutation::Delete { name: "b".into() };
    let p = t.plan(&mut batch, 1000, 2, delete, ctx(&probe)).unwrap();
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
                host: None,
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
    let p = t.plan(&mut o, 1000, 1, m, ctx(&FakeProbe::default()))?;
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
        key: None,
        writer: None,
    }
}

fn create(name: &str, keep: Option<u32>) -> Mutation {
    Mutation::Create {
        name: name.into(),
        keep,
        meta: Meta::new(),
        owner: Some(OwnerClaim::default()),
    }
}

fn create_owned(name: &str, owner: OwnerClaim) -> Mutation {
    Mutation::Create {
        name: name.into(),
        keep: None,
        meta: Meta::new(),
        owner: Some(owner),
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
    let probe = FakeProbe::default();
    let mut o = Overlay::default();
    t.plan(&mut o, 1, 1, create("a", None), ctx(&probe))
        .unwrap();
    let e = t
        .plan(&mut o, 1, 1, create("a", None), ctx(&probe))
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let p1 = t
        .plan(&mut o, 1, 1, ck("a", Some(0), None), ctx(&probe))
        .unwrap();
    let p2 = t
        .plan(&mut o, 1, 1, ck("a", Some(1), None), ctx(&probe))
        .unwrap();
    assert!(matches!(p1.reply, Reply::Checkpoint(Some(ref c)) if c.number == 1));
    assert!(matches!(p2.reply, Reply::Checkpoint(Some(ref c)) if c.number == 2));
    assert!(
        t.session(1, "a").is_none(),
        "nothing is visible before it is applied"
    );
    // The same name for another user is another session.
    t.plan(&mut o, 2, 1, create("a", None), ctx(&probe))
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
    let h = |n| Change::Checkpoint {
        meta: CheckpointMeta {
            uid: 1000,
            name: "a".into(),
            number: n,
            created_at: 1,
            meta: Meta::new(),
            key: None,
        },
        payload_crc: 0,
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
fn a_checkpoints_dead_records_are_added_to_the_commits_list() {
    let mut t = SessionTable::new(16);
    run(&mut t, create("a", Some(2)), 1).unwrap();
    let meta = |n, key: &str| CheckpointMeta {
        uid: 1000,
        name: "a".into(),
        number: n,
        created_at: 1,
        meta: Meta::new(),
        key: Some(key.into()),
    };
    let mut dead = vec![loc(40, 0)];
    t.apply_checkpoint(&meta(1, "k1"), 0, loc(2, 0), &mut dead);
    let attached = Change::Attach(AttachMeta {
        uid: 1000,
        name: "a".into(),
        number: 1,
        attach_key: "w".into(),
        meta: Meta::new(),
    });
    assert!(t.apply(attached, loc(2, 100)).is_empty());
    // Number 1 written again (its first write was never acknowledged): the first record,
    // its attachment and its key go.
    t.apply_checkpoint(&meta(1, "k2"), 0, loc(3, 0), &mut dead);
    assert_eq!(dead, [loc(40, 0), loc(2, 100), loc(2, 0)]);
    let by_key = |t: &SessionTable, k: &str| {
        t.find(1000, "a", Some(&CheckpointRef::Key(k.into())), true)
            .ok()
            .flatten()
            .map(|r| (r.entry.number, r.entry.segment(), r.attachments.len()))
    };
    assert_eq!(by_key(&t, "k1"), None);
    assert_eq!(by_key(&t, "k2"), Some((1, 3, 0)));
    // Retention at keep 2: the third checkpoint drops the oldest, and its key.
    dead.clear();
    t.apply_checkpoint(&meta(2, "k3"), 0, loc(3, 100), &mut dead);
    t.apply_checkpoint(&meta(3, "k4"), 0, loc(3, 200), &mut dead);
    assert_eq!(dead, [loc(3, 0)]);
    assert_eq!(by_key(&t, "k2"), None);
    assert_eq!(by_key(&t, "k4"), Some((3, 3, 0)));
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

fn keyed(name: &str, key: &str, payload: &[u8], meta: &[(&str, &str)]) -> Mutation {
    Mutation::Checkpoint {
        name: name.into(),
        payload: CheckedPayload::new(payload.to_vec()),
        meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        expect: None,
        epoch: None,
        key: Some(key.into()),
        writer: None,
    }
}

fn attach(
    name: &str,
    to: CheckpointRef,
    attach_key: &str,
    payload: &[u8],
    replace: bool,
) -> Mutation {
    Mutation::Attach {
        name: name.into(),
        checkpoint: to,
        attach_key: attach_key.into(),
        payload: CheckedPayload::new(payload.to_vec()),
        meta: Meta::new(),
        replace,
        epoch: None,
        writer: None,
    }
}

fn detached(name: &str, keep: u32, meta: &[(&str, &str)]) -> Mutation {
    Mutation::Create {
        name: name.into(),
        keep: Some(keep),
        meta: meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        owner: None,
    }
}

fn key_ref(k: &str) -> CheckpointRef {
    CheckpointRef::Key(k.into())
}

/// Plans one mutation against the table and applies it, returning what it wrote too.
fn run_counting(t: &mut SessionTable, m: Mutation, seg: u32) -> (Result<Reply, WireError>, usize) {
    let mut o = Overlay::default();
    match t.plan(&mut o, 1000, 1, m, ctx(&FakeProbe::default())) {
        Ok(p) => {
            let n = p.changes.len();
            for (i, (h, _)) in p.changes.into_iter().enumerate() {
                t.apply(h, loc(seg, i as u64 * 100));
            }
            (Ok(p.reply), n)
        }
        Err(e) => (Err(e), 0),
    }
}

fn numbers_of(t: &SessionTable, name: &str) -> Vec<u64> {
    t.checkpoints(1000, name)
        .unwrap()
        .iter()
        .map(|c| c.number)
        .collect()
}

#[test]
fn a_key_again_with_the_same_bytes_is_the_checkpoint_there_and_other_bytes_are_refused() {
    let mut t = SessionTable::new(16);
    run(&mut t, detached("a", 2, &[]), 1).unwrap();
    let (r, writes) = run_counting(&mut t, keyed("a", "k1", b"one", &[("m", "1")]), 2);
    let Reply::Checkpoint(Some(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.number, c.key.as_deref(), c.existing, writes),
        (1, Some("k1"), false, 1)
    );
    let (r, writes) = run_counting(&mut t, keyed("a", "k1", b"one", &[("m", "1")]), 3);
    let Reply::Checkpoint(Some(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!(
        (c.number, c.existing, writes),
        (1, true, 0),
        "a retry writes nothing"
    );
    for other in [
        keyed("a", "k1", b"two", &[("m", "1")]),
        keyed("a", "k1", b"one", &[("m", "2")]),
    ] {
        let e = run(&mut t, other, 3).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
    }
    // Lookups by key find it; once retention drops it, the key is free again.
    let found = t
        .find(1000, "a", Some(&key_ref("k1")), false)
        .unwrap()
        .unwrap();
    assert_eq!(found.entry.number, 1);
    run(&mut t, keyed("a", "k2", b"x", &[]), 4).unwrap();
    run(&mut t, keyed("a", "k3", b"x", &[]), 5).unwrap();
    assert!(t.find(1000, "a", Some(&key_ref("k1")), false).is_err());
    let (r, _) = run_counting(&mut t, keyed("a", "k1", b"two", &[]), 6);
    let Reply::Checkpoint(Some(c)) = r.unwrap() else {
        panic!()
    };
    assert_eq!((c.number, c.existing), (4, false));
    // Two writes of one key in one commit batch: the second is the first's retry.
    let mut o = Overlay::default();
    let probe = FakeProbe::default();
    t.plan(&mut o, 1000, 1, keyed("a", "k9", b"z", &[]), ctx(&probe))
        .unwrap();
    let p = t
        .plan(&mut o, 1000, 1, keyed("a", "k9", b"z", &[]), ctx(&probe))
        .unwrap();
    assert!(p.changes.is_empty());
}

#[test]
fn attachments_keep_the_first_write_unless_replaced_and_go_with_their_checkpoint() {
    let mut t = SessionTable::new(16);
    run(&mut t, detached("a", 0, &[]), 1).unwrap();
    run(&mut t, keyed("a", "c1", b"one", &[]), 2).unwrap();
    let (r, writes) = run_counting(&mut t, attach("a", key_ref("c1"), "w1", b"first", false), 3);
    let Reply::Attached(a) = r.unwrap() else {
        panic!()
    };
    assert_eq!(
        (a.number, a.key.as_deref(), a.existing, writes),
        (1, Some("c1"), false, 1)
    );
    let (r, writes) = run_counting(
        &mut t,
        attach("a", key_ref("c1"), "w1", b"second", false),
        4,
    );
    let Reply::Attached(a) = r.unwrap() else {
        panic!()
    };
    assert_eq!((a.existing, writes), (true, 0));
    run(
        &mut t,
        attach("a", CheckpointRef::Number(1), "w2", b"x", false),
        5,
    )
    .unwrap();
    let (_, writes) = run_counting(&mut t, attach("a", key_ref("c1"), "w1", b"third", true), 6);
    assert_eq!(writes, 1, "replace writes");
    let found = t
        .find(1000, "a", Some(&key_ref("c1")), true)
        .unwrap()
        .unwrap();
    let keys: Vec<(&str, u32)> = found
        .attachments
        .iter()
        .map(|a| (a.attach_key.as_str(), a.loc.segment))
        .collect();
    assert_eq!(
        keys,
        [("w1", 6), ("w2", 5)],
        "first-written order, replaced in place"
    );
    let e = run(&mut t, attach("a", key_ref("nope"), "w", b"", false), 7).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    // Dropping the checkpoint makes its attachments' records dead too.
    let mut o = Overlay::default();
    let drop = Mutation::DeleteCheckpoints {
        sessions: Selection::Name("a".into()),
        which: Which {
            keys: vec!["c1".into()],
            ..Default::default()
        },
    };
    let p = t
        .plan(&mut o, 1000, 1, drop, ctx(&FakeProbe::default()))
        .unwrap();
    assert_eq!(p.reply, Reply::Count(1));
    let dead = t.apply(p.changes[0].0.clone(), loc(8, 0));
    let mut segments: Vec<u32> = dead.iter().map(|l| l.segment).collect();
    segments.sort_unstable();
    assert_eq!(segments, [2, 5, 6], "the checkpoint and both attachments");
    assert!(t.export()[0].attachments.is_empty());
    let e = run(
        &mut t,
        attach("a", CheckpointRef::Number(1), "w", b"", false),
        9,
    )
    .unwrap_err();
    assert_eq!(
        e.kind,
        ErrorKind::NotFound,
        "attach to a removed checkpoint"
    );
}

#[test]
fn a_batch_is_all_or_nothing_and_each_op_sees_the_ones_before() {
    let mut t = SessionTable::new(16);
    let probe = FakeProbe::default();
    let mut o = Overlay::default();
    let bad = Mutation::Batch(vec![
        detached("a", 0, &[]),
        keyed("a", "k", b"1", &[]),
        attach("a", key_ref("k"), "w", b"2", false),
        detached("a", 0, &[]),
    ]);
    let e = t.plan(&mut o, 1000, 1, bad, ctx(&probe)).unwrap_err();
    assert_eq!((e.kind, e.index), (ErrorKind::AlreadyExists, Some(3)));
    // Nothing of it stays in the commit batch's view.
    let p = t
        .plan(&mut o, 1000, 1, detached("a", 0, &[]), ctx(&probe))
        .unwrap();
    assert_eq!(p.changes.len(), 1);
    let good = Mutation::Batch(vec![
        keyed("a", "k1", b"1", &[]),
        keyed("a", "k2", b"2", &[]),
        Mutation::Prune {
            sessions: Selection::Name("a".into()),
            keep: 1,
        },
        // The pruned key is free again; the kept one is not.
        keyed("a", "k1", b"3", &[]),
        attach("a", key_ref("k2"), "w", b"x", false),
    ]);
    let p2 = t.plan(&mut o, 1000, 1, good, ctx(&probe)).unwrap();
    let Reply::Batch(replies) = &p2.reply else {
        panic!()
    };
    assert_eq!(replies[2], Reply::Count(1));
    assert!(matches!(&replies[3], Reply::Checkpoint(Some(c)) if c.number == 3));
    for (i, (h, _)) in p.changes.into_iter().chain(p2.changes).enumerate() {
        t.apply(h, loc(2, i as u64 * 100));
    }
    assert_eq!(numbers_of(&t, "a"), [2, 3]);
    let found = t
        .find(1000, "a", Some(&key_ref("k2")), true)
        .unwrap()
        .unwrap();
    assert_eq!(found.attachments.len(), 1);
    assert_eq!(
        t.find(1000, "a", Some(&key_ref("k1")), false)
            .unwrap()
            .unwrap()
            .entry
            .number,
        3
    );
}

#[test]
fn ops_on_sessions_by_meta_touch_only_the_callers_matching_sessions() {
    let mut t = SessionTable::new(16);
    for (name, thread) in [("t1", "1"), ("t2", "1"), ("t3", "2")] {
        run(&mut t, detached(name, 0, &[("thread", thread)]), 1).unwrap();
        for i in 0..3 {
            run(&mut t, keyed(name, &format!("c{i}"), b"p", &[]), 2).unwrap();
        }
    }
    let thread = |v: &str| Meta::from([("thread".to_string(), v.to_string())]);
    let prune = Mutation::Prune {
        sessions: Selection::Meta(thread("1")),
        keep: 1,
    };
    assert_eq!(run(&mut t, prune, 3).unwrap(), Reply::Count(4));
    assert_eq!(numbers_of(&t, "t1"), [3]);
    assert_eq!(numbers_of(&t, "t3"), [1, 2, 3]);
    let drop = Mutation::DeleteCheckpoints {
        sessions: Selection::Meta(thread("2")),
        which: Which {
            numbers: vec![1, 99],
            keys: vec!["c2".into(), "nope".into()],
            meta: None,
        },
    };
    assert_eq!(run(&mut t, drop, 4).unwrap(), Reply::Count(2));
    assert_eq!(numbers_of(&t, "t3"), [2]);
    // Numbers are never reused: the next one follows the highest ever.
    let Reply::Checkpoint(Some(c)) = run(&mut t, keyed("t3", "c9", b"p", &[]), 5).unwrap() else {
        panic!()
    };
    assert_eq!(c.number, 4);
    let delete = Mutation::DeleteMatching {
        session_meta: thread("1"),
    };
    assert_eq!(run(&mut t, delete, 6).unwrap(), Reply::Count(2));
    assert_eq!(t.session_count(), 1);
}

#[test]
fn the_parent_owner_is_the_nearest_ancestor_of_the_callers_user_never_init() {
    let probe = FakeProbe::default();
    // sessionctl (50, user 1000) under sudo (40, root) under a shell of user 1000 (30).
    probe.set(50, 5, 1000);
    probe.set(40, 4, 0);
    probe.set(30, 3, 1000);
    probe.set(1, 1, 1000);
    probe.set_parent(50, 40);
    probe.set_parent(40, 30);
    probe.set_parent(30, 1);
    let claim = |peer| OwnerClaim {
        peer: Some(peer),
        claimant: Claimant::Parent,
        caller_uid: 1000,
    };
    let owner = claim(50).resolve(&probe).unwrap();
    assert_eq!(owner.map(|o| (o.pid, o.start_time)), Some((30, 3)));
    // No process of the user above it but init: no owner.
    probe.set_parent(40, 1);
    assert_eq!(claim(50).resolve(&probe).unwrap(), None);
}

#[test]
fn keys_and_attachments_survive_a_snapshot_round_trip() {
    let mut t = SessionTable::new(16);
    run(&mut t, detached("a", 0, &[]), 1).unwrap();
    run(&mut t, keyed("a", "k1", b"111", &[]), 2).unwrap();
    run(&mut t, keyed("a", "k2", b"222", &[]), 3).unwrap();
    run(&mut t, attach("a", key_ref("k1"), "w", b"x", false), 4).unwrap();
    let mut t2 = SessionTable::new(16);
    t2.restore(t.export());
    assert_eq!(t.export(), t2.export());
    for k in ["k1", "k2"] {
        assert_eq!(
            t.find(1000, "a", Some(&key_ref(k)), true).unwrap(),
            t2.find(1000, "a", Some(&key_ref(k)), true).unwrap()
        );
    }
    // A retried key is still known as the same bytes after the restore (the fake places
    // say 3 bytes).
    let (r, writes) = run_counting(&mut t2, keyed("a", "k2", b"222", &[]), 5);
    assert!(matches!(r.unwrap(), Reply::Checkpoint(Some(c)) if c.existing));
    assert_eq!(writes, 0);
}

#[test]
fn an_owner_on_another_host_is_watched_there_and_alive_while_its_host_lease_is() {
    let probe = FakeProbe::default();
    let mut t = SessionTable::new(16);
    t.set_host("a".into());
    let mut state = IndexedSession {
        state: SessionState {
            uid: 1000,
            name: "remote".into(),
            status: Status::Active,
            owner: Some(Owner {
                pid: 10,
                start_time: 100,
            }),
            epoch: 1,
            created_at: 1,
            updated_at: 1,
            keep: 16,
            meta: Meta::new(),
            error: None,
            last_number: 0,
            owner_host: Some("b".into()),
        },
        state_loc: loc(1, 0),
        checkpoints: Vec::new(),
        keys: Vec::new(),
        attachments: Vec::new(),
    };
    let local = {
        let mut s = state.clone();
        s.state.name = "local".into();
        s.state.owner_host = Some("a".into());
        s
    };
    state.state.owner = Some(Owner {
        pid: 10,
        start_time: 100,
    });
    t.restore(vec![state, local]);
    // This daemon watches its own host's owner only (PID 10 on b is another process).
    let counts = t.active_owner_counts();
    assert_eq!(counts.values().sum::<usize>(), 1);
    let pid10 = HashSet::from([Owner {
        pid: 10,
        start_time: 100,
    }]);
    let names: Vec<String> = t
        .owned_by(&pid10)
        .into_iter()
        .map(|(k, _)| k.name)
        .collect();
    assert_eq!(names, ["local"]);
    // Resume from here: refused while b's lease lives, naming host and PID; taken once it
    // has lapsed.
    t.set_live_hosts(HashSet::from(["b".to_string()]));
    let e = run_with(
        &mut t,
        resume("remote", owner(&probe, 20, 200), false),
        &probe,
    )
    .unwrap_err();
    assert_eq!(
        (e.kind, e.owner_pid, e.owner_host.as_deref()),
        (ErrorKind::OwnerAlive, Some(10), Some("b"))
    );
    assert!(e.message.contains("pid 10 on host b"), "{e}");
    t.set_live_hosts(HashSet::new());
    let Reply::Resumed { session, .. } = run_with(
        &mut t,
        resume("remote", owner(&probe, 20, 200), false),
        &probe,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(
        (session.owner_pid, session.owner_host.as_deref()),
        (Some(20), Some("a"))
    );
}
