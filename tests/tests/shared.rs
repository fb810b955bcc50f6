//! Two daemons with different host ids on one PostgreSQL database, as two hosts: what one
//! writes the other reads, lists and watches; ownership across hosts; a dead host's sessions
//! go stale and are taken over; a paused host is fenced after a takeover.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use sessiond_client::{
    CheckpointOptions, Client, CreateOptions, Error, ErrorKind, Event, EventKind, ListRequest,
    Status,
};
use sessiond_tests::pg::{self, Cluster};
use sessiond_tests::{wait_until, ClientExt, Daemon, Owner};

const DEADLINE: Duration = Duration::from_secs(20);
/// A daemon as host `host` on the database at `url`.
fn host(url: &str, host: &str) -> Daemon {
    Daemon::start_with(&pg::host_flags(url, host, &[]))
}

fn two_hosts() -> (String, Daemon, Daemon) {
    let url = Cluster::get().new_database();
    let a = host(&url, "host-a");
    let b = host(&url, "host-b");
    (url, a, b)
}

fn create_owned(c: &mut Client, name: &str, owner: &Owner) {
    c.create(
        name,
        CreateOptions {
            owner_pid: Some(owner.pid()),
            ..Default::default()
        },
    )
    .unwrap();
}

/// Events of a watch, into a channel a test waits on with a deadline.
fn watch(d: &Daemon, name: &str) -> mpsc::Receiver<Event> {
    let watch = d.client().watch(Some(name)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for e in watch.flatten() {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_of(rx: &mpsc::Receiver<Event>, kind: EventKind) -> Event {
    let until = Instant::now() + DEADLINE;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {kind:?} event"));
        if e.kind == kind {
            return e;
        }
    }
}

#[test]
fn what_one_host_writes_the_other_reads_lists_and_watches() {
    let (_url, a, b) = two_hosts();
    let events_on_b = watch(&b, "job");
    let owner = Owner::spawn();
    let (mut ca, mut cb) = (a.client(), b.client());
    create_owned(&mut ca, "job", &owner);
    ca.put_at("job", b"one".to_vec(), 1).unwrap();
    ca.put_at("job", b"two".to_vec(), 1).unwrap();

    // Read on B at once (no waiting: B checks the database before it answers).
    let s = cb.show("job").unwrap();
    assert_eq!(
        (
            s.status,
            s.owner_pid,
            s.owner_host.as_deref(),
            s.latest_checkpoint
        ),
        (Status::Active, Some(owner.pid()), Some("host-a"), Some(2))
    );
    let got = cb.get("job", None).unwrap().unwrap();
    assert_eq!(got.payload.unwrap().0, b"two");
    let listed = cb.list(ListRequest::default()).unwrap();
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["job"]
    );
    let created = next_of(&events_on_b, EventKind::Created);
    assert_eq!(created.owner_pid, Some(owner.pid()));
    assert_eq!(
        next_of(&events_on_b, EventKind::Checkpointed).number,
        Some(1)
    );

    // A write on B is read on A at once, too.
    cb.put_at("job", b"three".to_vec(), 1).unwrap();
    let got = ca.get("job", None).unwrap().unwrap();
    assert_eq!((got.number, got.payload.unwrap().0), (3, b"three".to_vec()));
}

#[test]
fn resume_on_another_host_is_refused_while_the_owner_lives_and_its_death_is_seen_there() {
    let (_url, a, b) = two_hosts();
    let mut owner = Owner::spawn();
    let (mut ca, mut cb) = (a.client(), b.client());
    create_owned(&mut ca, "job", &owner);
    ca.put_at("job", b"one".to_vec(), 1).unwrap();
    let events_on_b = watch(&b, "job");

    match cb.resume("job", None, false) {
        Err(Error::OwnerAlive { pid, host, .. }) => {
            assert_eq!((pid, host.as_deref()), (Some(owner.pid()), Some("host-a")))
        }
        other => panic!("resume on B while A's owner lives: {other:?}"),
    }

    owner.kill9();
    let stale = next_of(&events_on_b, EventKind::Stale);
    assert_eq!(stale.owner_pid, Some(owner.pid()));
    assert_eq!(cb.show("job").unwrap().status, Status::Stale);
    let r = cb.resume("job", None, false).unwrap();
    assert_eq!(
        (r.session.epoch, r.session.owner_host.as_deref()),
        (2, Some("host-b"))
    );
    assert_eq!(r.checkpoint.unwrap().payload.unwrap().0, b"one");
    // A sees B's ownership.
    let s = ca.show("job").unwrap();
    assert_eq!(
        (s.status, s.owner_host.as_deref(), s.epoch),
        (Status::Active, Some("host-b"), 2)
    );
}

#[test]
fn a_dead_hosts_sessions_go_stale_within_the_lease_and_another_host_takes_them_over() {
    let (url, mut a, b) = two_hosts();
    let owners: Vec<Owner> = (0..5).map(|_| Owner::spawn()).collect();
    let mut ca = a.client();
    for (i, o) in owners.iter().enumerate() {
        create_owned(&mut ca, &format!("s{i}"), o);
        ca.checkpoint(
            &format!("s{i}"),
            format!("state {i}").into_bytes(),
            CheckpointOptions {
                epoch: Some(1),
                ..Default::default()
            },
        )
        .unwrap();
    }
    drop(ca);
    let mut cb = b.client();
    a.kill9();
    let died = Instant::now();
    // Within ttl (1s) + interval (200ms), plus the slack of a loaded test machine.
    assert!(
        wait_until(DEADLINE, || (0..5).all(|i| cb
            .show(&format!("s{i}"))
            .unwrap()
            .status
            == Status::Stale)),
        "the dead host's sessions never went stale"
    );
    let took = died.elapsed();
    assert!(
        took < Duration::from_millis(1200 + 2000),
        "stale after {took:?}"
    );
    for i in 0..5 {
        let r = cb.resume(&format!("s{i}"), None, false).unwrap();
        assert_eq!(r.session.epoch, 2);
        assert_eq!(
            r.checkpoint.unwrap().payload.unwrap().0,
            format!("state {i}").into_bytes()
        );
    }

    // Host A comes back with the same id: its old epoch is fenced.
    let a2 = host(&url, "host-a");
    let e = a2
        .client()
        .checkpoint(
            "s0",
            b"zombie".to_vec(),
            CheckpointOptions {
                epoch: Some(1),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Fenced), "{e}");
    assert_eq!(
        cb.get("s0", None).unwrap().unwrap().payload.unwrap().0,
        b"state 0"
    );
}

#[test]
fn a_host_that_has_served_nothing_but_a_watch_keeps_its_lease_and_sees_a_dead_host_go_stale() {
    let (url, mut a, b) = two_hosts();
    let db = Cluster::database_of(&url);
    let sql = |q: &str| Cluster::get().sql(&db, q).trim().to_string();
    let since = sql("SELECT now()");
    // B serves this watch and nothing else: no write, no read, from its start to the end.
    let events_on_b = watch(&b, "idle-b");
    let owner = Owner::spawn();
    let mut ca = a.client();
    create_owned(&mut ca, "idle-b", &owner);
    drop(ca);
    assert_eq!(
        next_of(&events_on_b, EventKind::Created).owner_pid,
        Some(owner.pid())
    );
    // B renews its lease, idle, past the ttl (1s) of the one it took at its start (before
    // `since`): a lease running 2.5s past `since` was renewed 1.5s after it at the earliest.
    let renewed = format!(
        "SELECT lease_until > '{since}'::timestamptz + interval '2.5 seconds' \
         FROM hosts WHERE host_id = 'host-b'"
    );
    assert!(
        wait_until(DEADLINE, || sql(&renewed) == "t"),
        "an idle host never renewed its lease"
    );
    a.kill9();
    let stale = next_of(&events_on_b, EventKind::Stale);
    assert_eq!(stale.name, "idle-b");
    let s = b.client().show("idle-b").unwrap();
    assert_eq!(s.status, Status::Stale, "{s:?}");
    // B's own lease held all along: its write goes through.
    let r = b.client().resume("idle-b", None, false).unwrap();
    assert_eq!(r.session.epoch, 2);
}

#[test]
fn a_paused_host_acknowledges_nothing_with_the_old_epoch_after_a_takeover() {
    let (_url, a, b) = two_hosts();
    let owner = Owner::spawn();
    let mut ca = a.client();
    create_owned(&mut ca, "job", &owner);
    ca.put_at("job", b"before".to_vec(), 1).unwrap();
    let mut cb = b.client();
    // Connected before the pause (a connection's handshake needs the daemon running).
    let mut pending = a.client();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    assert!(
        wait_until(DEADLINE, || cb.show("job").unwrap().status == Status::Stale),
        "the paused host's session never went stale"
    );
    let r = cb.resume("job", None, false).unwrap();
    assert_eq!(r.session.epoch, 2);
    cb.checkpoint(
        "job",
        b"taken over".to_vec(),
        CheckpointOptions {
            epoch: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    // A's client sends its writes while A is paused; A answers them once it runs again.
    let old_epoch = CheckpointOptions {
        epoch: Some(1),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let first = pending.checkpoint("job", b"zombie".to_vec(), old_epoch.clone());
        let second = pending.checkpoint("job", b"zombie again".to_vec(), old_epoch);
        let _ = tx.send((first, second));
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    let (first, second) = rx.recv_timeout(DEADLINE).unwrap();
    for r in [first, second] {
        let e = r.expect_err("a write with the old epoch was accepted");
        assert!(
            matches!(e.kind(), Some(ErrorKind::Fenced | ErrorKind::Unavailable)),
            "{e}"
        );
    }
    let latest = cb.get("job", None).unwrap().unwrap();
    assert_eq!(
        (latest.number, latest.payload.unwrap().0),
        (2, b"taken over".to_vec())
    );
    // Once it runs again A serves the session as B left it.
    // (Reads need no lease: they are answered while A renews it.)
    assert!(wait_until(DEADLINE, || {
        let s = ca.show("job").unwrap();
        s.owner_host.as_deref() == Some("host-b") && s.latest_checkpoint == Some(2)
    }));
}

#[test]
fn a_damaged_row_is_never_served() {
    let url = Cluster::get().new_database();
    let d = host(&url, "host-a");
    let mut c = d.client();
    c.create("job", CreateOptions::default()).unwrap();
    c.put("job", b"intact".to_vec()).unwrap();
    c.put("job", b"to be damaged".to_vec()).unwrap();
    drop(c);
    let mut d = d;
    d.stop();
    let db = Cluster::database_of(&url);
    Cluster::get().sql(
        &db,
        "UPDATE checkpoints SET payload = 'X'::bytea || substring(payload from 2) WHERE number = 2",
    );
    let check = |url: &str| {
        std::process::Command::new(sessiond_tests::bin("sessiond"))
            .args(["check", "--store", url])
            .output()
            .unwrap()
    };
    let out = check(&url);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("\"job\"") && report.contains("checkpoint 2: payload checksum mismatch"),
        "{report}"
    );
    d.restart();
    let got = d.client().get("job", None).unwrap().unwrap();
    assert_eq!(
        (got.number, got.payload.unwrap().0),
        (1, b"intact".to_vec())
    );
    // An intact database checks clean.
    let clean = Cluster::get().new_database();
    let other = host(&clean, "host-c");
    other
        .client()
        .create("s", CreateOptions::default())
        .unwrap();
    let out = check(&clean);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn concurrent_writers_keep_what_retention_says_on_every_host() {
    let (_url, a, b) = two_hosts();
    let mut c = a.client();
    for s in 0..8 {
        c.create(
            &format!("r{s}"),
            CreateOptions {
                keep: Some(3),
                detached: true,
                ..Default::default()
            },
        )
        .unwrap();
    }
    // Eight writers at once: their checkpoints share batches (one statement for all of a
    // batch's rows, one for its retention).
    let writers: Vec<_> = (0..8)
        .map(|s| {
            let mut c = a.client();
            std::thread::spawn(move || {
                for i in 1..=40u32 {
                    c.put(&format!("r{s}"), format!("r{s} #{i}").into_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for d in [&a, &b] {
        let mut c = d.client();
        for s in 0..8 {
            let name = format!("r{s}");
            let kept: Vec<(u64, Vec<u8>)> = c
                .history_with(sessiond_client::HistoryRequest {
                    name: name.clone(),
                    payloads: true,
                    ..Default::default()
                })
                .unwrap()
                .into_iter()
                .map(|h| (h.number, h.payload.unwrap().0))
                .collect();
            let want: Vec<(u64, Vec<u8>)> = (38..=40)
                .map(|i| (i, format!("r{s} #{i}").into_bytes()))
                .collect();
            assert_eq!(kept, want, "{name}");
        }
    }
}

/// A state that grows by one step's text and begins as the ones before it.
fn growing_state(step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..step {
        out.extend_from_slice(format!("{{\"step\":{i},\"text\":\"").as_bytes());
        out.extend(
            sessiond_tests::unique_bytes(i as u64, 3000)
                .iter()
                .map(|b| b'a' + b % 26),
        );
        out.extend_from_slice(b"\"},");
    }
    out
}

#[test]
fn chunks_in_the_database_are_shared_by_successive_states_read_on_every_host_and_freed() {
    let (url, a, b) = two_hosts();
    let db = Cluster::database_of(&url);
    let (mut ca, mut cb) = (a.client(), b.client());
    ca.create_keep("agent", Some(0)).unwrap();
    let mut logical = 0;
    for step in 1..=40 {
        let state = growing_state(step);
        logical += state.len() as u64;
        ca.checkpoint("agent", state, Default::default()).unwrap();
    }
    // Read back on the other host, byte for byte.
    for step in [1, 17, 39] {
        let got = cb.get("agent", Some(step as u64)).unwrap().unwrap();
        assert!(
            got.payload.unwrap().0 == growing_state(step),
            "checkpoint {step}"
        );
    }
    let shown = cb.show("agent").unwrap();
    assert_eq!(shown.logical_bytes, Some(logical));
    let stored = shown.stored_bytes.unwrap();
    assert!(stored * 3 < logical, "{stored} stored for {logical}");
    let count = |sql: &str| -> i64 { Cluster::get().sql(&db, sql).trim().parse().unwrap() };
    assert!(count("SELECT count(*) FROM chunks") > 0);
    // A damaged chunk: the checkpoints using it are damaged, check says so, reads fall back.
    Cluster::get().sql(
        &db,
        "UPDATE chunks SET data = 'X'::bytea || substring(data from 2) WHERE hash = \
         (SELECT l.hash FROM checkpoint_chunks l JOIN checkpoints c ON c.id = l.checkpoint_id \
          WHERE c.number = 40 EXCEPT SELECT l.hash FROM checkpoint_chunks l \
          JOIN checkpoints c ON c.id = l.checkpoint_id WHERE c.number = 39 LIMIT 1)",
    );
    let got = cb.get("agent", None).unwrap().unwrap();
    assert_eq!((got.number, got.skipped_corrupt.clone()), (39, vec![40]));
    let out = std::process::Command::new(sessiond_tests::bin("sessiond"))
        .args(["check", "--store", &url])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("checkpoint 40: uses a damaged chunk"),
        "{report}"
    );
    // Deleted on one host: the chunks go within the reclaim interval.
    assert!(cb.delete("agent").unwrap());
    assert!(
        wait_until(DEADLINE, || count("SELECT count(*) FROM chunks") == 0),
        "chunks left: {}",
        count("SELECT count(*) FROM chunks")
    );
}
