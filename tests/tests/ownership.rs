//! Owners die, sessions go stale within milliseconds, exactly one process takes them over.

use std::sync::mpsc;
use std::time::Duration;

use sessiond_client::{
    CheckpointOptions, Client, CreateOptions, Error, EventKind, ListRequest, Status,
};
use sessiond_tests::{wait_until, ClientExt, Daemon, Owner};

const DEADLINE: Duration = Duration::from_secs(20);

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

fn status(c: &mut Client, name: &str) -> Status {
    c.show(name).unwrap().status
}

#[test]
fn killing_the_owner_marks_the_session_stale_and_emits_an_event() {
    let d = Daemon::start();
    // Watch from another connection, events into a channel we wait on with a deadline.
    let watch = d.client().watch(Some("job")).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for e in watch {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    let mut owner = Owner::spawn();
    let mut c = d.client();
    create_owned(&mut c, "job", &owner);
    let created = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert_eq!(
        (created.kind, created.owner_pid),
        (EventKind::Created, Some(owner.pid()))
    );
    // Not the owner (its parent): with the epoch (one writer per session).
    c.put_at("job", b"one".to_vec(), 1).unwrap();
    let ck = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert_eq!((ck.kind, ck.number), (EventKind::Checkpointed, Some(1)));

    owner.kill9();
    let stale = rx.recv_timeout(DEADLINE).expect("a stale event").unwrap();
    assert_eq!(
        (stale.kind, stale.name.as_str(), stale.status),
        (EventKind::Stale, "job", Some(Status::Stale))
    );
    let s = c.show("job").unwrap();
    assert_eq!((s.status, s.owner_pid), (Status::Stale, None));

    // Whoever resumes gets the latest checkpoint and a new epoch.
    let r = c.resume("job", None, false).unwrap();
    assert_eq!((r.session.status, r.session.epoch), (Status::Active, 2));
    assert_eq!(r.checkpoint.unwrap().payload.unwrap().0, b"one");
    let resumed = rx.recv_timeout(DEADLINE).unwrap().unwrap();
    assert_eq!((resumed.kind, resumed.epoch), (EventKind::Resumed, Some(2)));
}

#[test]
fn hundreds_of_owners_killed_at_once_all_go_stale() {
    const N: usize = 200;
    let d = Daemon::start();
    let mut c = d.client();
    let mut owners: Vec<Owner> = (0..N).map(|_| Owner::spawn()).collect();
    for (i, o) in owners.iter().enumerate() {
        create_owned(&mut c, &format!("s{i}"), o);
    }
    for o in &owners {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(o.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    for o in &mut owners {
        o.kill9(); // reap
    }
    let stale = |c: &mut Client| {
        c.list(ListRequest {
            status: Some(Status::Stale),
            ..Default::default()
        })
        .unwrap()
        .len()
    };
    assert!(
        wait_until(DEADLINE, || stale(&mut c) == N),
        "{} of {N} stale",
        stale(&mut c)
    );
}

#[test]
fn an_owner_that_died_while_the_daemon_was_down_is_found_at_start_up() {
    let mut d = Daemon::start();
    let mut owner = Owner::spawn();
    let mut alive = Owner::spawn();
    let mut c = d.client();
    create_owned(&mut c, "dead", &owner);
    create_owned(&mut c, "alive", &alive);
    drop(c);
    assert!(d.stop().success());
    owner.kill9();
    d.restart();
    // No waiting: the check happens before the daemon answers.
    let mut c = d.client();
    assert_eq!(status(&mut c, "dead"), Status::Stale);
    assert_eq!(status(&mut c, "alive"), Status::Active);
    // And the live one is watched again after the restart.
    alive.kill9();
    assert!(wait_until(DEADLINE, || status(&mut c, "alive") == Status::Stale));
}

#[test]
fn resume_is_refused_while_the_owner_lives_and_force_fences_the_old_owner() {
    let d = Daemon::start();
    let owner = Owner::spawn();
    let mut c = d.client();
    create_owned(&mut c, "job", &owner);
    // The old owner's view: it writes at epoch 1.
    let mut old = d.client();
    let at = |epoch: u64| CheckpointOptions {
        epoch: Some(epoch),
        ..Default::default()
    };
    assert_eq!(
        old.checkpoint("job", b"a".to_vec(), at(1)).unwrap().number,
        1
    );

    match c.resume("job", None, false) {
        Err(Error::OwnerAlive { pid, message, .. }) => {
            assert_eq!(pid, Some(owner.pid()));
            assert!(message.contains(&owner.pid().to_string()), "{message}");
        }
        other => panic!("expected OwnerAlive, got {other:?}"),
    }
    let r = c.resume("job", None, true).unwrap();
    assert_eq!(r.session.epoch, 2);
    assert_eq!(r.checkpoint.unwrap().number, 1);
    match old.checkpoint("job", b"late".to_vec(), at(1)) {
        Err(Error::Fenced(m)) => assert!(m.contains("epoch"), "{m}"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(c.checkpoint("job", b"b".to_vec(), at(2)).unwrap().number, 2);
    let expect = |n: u64| CheckpointOptions {
        expect: Some(n),
        ..Default::default()
    };
    assert!(matches!(
        c.checkpoint("job", b"c".to_vec(), expect(1)),
        Err(Error::Conflict(_))
    ));
    assert_eq!(
        c.checkpoint("job", b"c".to_vec(), expect(2))
            .unwrap()
            .number,
        3
    );
}

#[test]
fn paused_and_finished_sessions_never_go_stale() {
    let d = Daemon::start();
    let mut owner = Owner::spawn();
    let mut c = d.client();
    for name in ["witness", "paused", "completed", "failed", "cancelled"] {
        create_owned(&mut c, name, &owner);
    }
    c.pause("paused").unwrap();
    c.complete("completed").unwrap();
    c.fail("failed", Some("x")).unwrap();
    c.cancel("cancelled").unwrap();
    owner.kill9();
    // Once the witness (same owner) is stale, the owner's death has been handled.
    assert!(wait_until(DEADLINE, || status(&mut c, "witness") == Status::Stale));
    assert_eq!(status(&mut c, "paused"), Status::Paused);
    assert_eq!(status(&mut c, "completed"), Status::Completed);
    assert_eq!(status(&mut c, "failed"), Status::Failed);
    assert_eq!(status(&mut c, "cancelled"), Status::Cancelled);
    // Finished sessions can be resumed (reopened).
    let r = c.resume("completed", None, false).unwrap();
    assert_eq!(r.session.status, Status::Active);
}

#[test]
fn the_sweep_alone_finds_dead_owners() {
    // Without pidfds (as on other systems) the periodic sweep is what notices.
    let d = Daemon::start_with(&["--stale-check-interval", "50ms", "--no-pidfd"]);
    let mut owner = Owner::spawn();
    let mut c = d.client();
    create_owned(&mut c, "s", &owner);
    owner.kill9();
    assert!(wait_until(DEADLINE, || status(&mut c, "s") == Status::Stale));
}

#[test]
fn a_named_owner_must_be_a_live_process() {
    let d = Daemon::start();
    let mut c = d.client();
    let e = c
        .create(
            "s",
            CreateOptions {
                owner_pid: Some(i32::MAX as u32 - 1),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(_)), "{e:?}");
}

#[test]
fn a_session_created_by_a_shell_script_goes_stale_when_the_script_exits() {
    let d = Daemon::start();
    let ctl = sessiond_tests::bin("sessionctl");
    // The script creates the session, reports its own PID, then waits to be told to exit.
    let mut script = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#""$0" --socket "$1" create from-script >/dev/null && echo $$ && read line"#)
        .arg(&ctl)
        .arg(&d.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(script.stdout.take().unwrap());
    let mut pid = String::new();
    std::io::BufRead::read_line(&mut out, &mut pid).unwrap();
    let mut c = d.client();
    let s = c.show("from-script").unwrap();
    assert_eq!(
        s.owner_pid,
        Some(pid.trim().parse().unwrap()),
        "owned by the script, not by sessionctl"
    );
    assert_eq!(s.status, Status::Active);
    drop(script.stdin.take()); // EOF: the script's `read` returns and it exits
    script.wait().unwrap();
    assert!(wait_until(DEADLINE, || status(&mut c, "from-script") == Status::Stale));
}

#[test]
fn a_slow_watcher_lags_instead_of_slowing_writers() {
    let d = Daemon::start();
    let mut watcher = d.json();
    let r = watcher.call(serde_json::json!({"op": "watch", "id": 1}));
    assert_eq!(r["watching"], serde_json::json!(true));
    // The watcher reads nothing while 20,000 events (more than its buffer and the socket's)
    // are produced; the writer must not be held up by it.
    let mut c = d.client();
    c.create_keep("busy", Some(1)).unwrap();
    const N: u64 = 20_000;
    const WINDOW: u64 = 500; // pipelined, but read back before the socket buffers fill
    for _ in 0..N / WINDOW {
        for _ in 0..WINDOW {
            c.send(sessiond_client::Request::Checkpoint(
                sessiond_client::CheckpointRequest {
                    name: "busy".into(),
                    payload: sessiond_client::Payload(vec![1]),
                    meta: Default::default(),
                    expect: None,
                    epoch: None,
                    key: None,
                },
            ))
            .unwrap();
        }
        for _ in 0..WINDOW {
            c.recv().unwrap().result.unwrap();
        }
    }
    c.put("busy", b"last".to_vec()).unwrap();
    // Now read: a lagged event with a count, then the stream goes on to the last event.
    let mut lagged = None;
    loop {
        let e = watcher.read();
        if e["event"] == "lagged" {
            lagged = e["missed"].as_u64();
        }
        if e["event"] == "checkpointed" && e["number"] == serde_json::json!(N + 1) {
            break;
        }
    }
    assert!(
        lagged.is_some_and(|m| m > 0),
        "the watcher was told it missed events"
    );
}

#[test]
fn an_owner_stays_watched_while_any_of_its_sessions_is_active() {
    let mut d = Daemon::start();
    let mut owner = Owner::spawn();
    let mut c = d.client();
    for name in ["a", "b", "c"] {
        create_owned(&mut c, name, &owner);
    }
    // The watcher learns its owners from the table at start-up, then follows changes.
    drop(c);
    assert!(d.stop().success());
    d.restart();
    let mut c = d.client();
    c.pause("a").unwrap();
    c.delete("b").unwrap();
    owner.kill9();
    assert!(
        wait_until(DEADLINE, || status(&mut c, "c") == Status::Stale),
        "the owner's last active session did not go stale"
    );
    assert_eq!(status(&mut c, "a"), Status::Paused);
}

#[test]
fn one_writer_per_session_the_owner_a_process_it_started_or_the_epoch() {
    let d = Daemon::start();
    // A script owns the session (sessionctl's default owner: the calling shell) and writes
    // to it through sessionctl, its child.
    let ctl = sessiond_tests::bin("sessionctl");
    let script = format!(
        "{ctl} --socket {s} create job && echo one | {ctl} --socket {s} checkpoint job && echo ready && sleep 1000",
        ctl = ctl.display(),
        s = d.socket.display()
    );
    let mut shell = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(shell.stdout.take().unwrap());
    let ready = std::io::BufRead::lines(&mut out).any(|l| l.is_ok_and(|l| l == "ready"));
    assert!(ready, "the owner's own sessionctl was refused");
    let mut c = d.client();
    let s = c.show("job").unwrap();
    assert_eq!(
        (s.owner_pid, s.latest_checkpoint),
        (Some(shell.id()), Some(1))
    );
    // Another process (this test: not the owner, not started by it), without the epoch.
    match c.put("job", b"intruder".to_vec()) {
        Err(Error::OwnerAlive { pid, .. }) => assert_eq!(pid, Some(shell.id())),
        other => panic!("a second writer was not refused: {other:?}"),
    }
    // With the current epoch it may (it holds the session's fencing token).
    assert_eq!(c.put_at("job", b"holder".to_vec(), 1).unwrap().number, 2);
    // With an older one it is fenced, as ever.
    assert!(matches!(
        c.put_at("job", b"old".to_vec(), 0),
        Err(Error::Fenced(_))
    ));
    // The owner dies: the session is stale, and resume is the way in.
    let _ = shell.kill();
    let _ = shell.wait();
    assert!(wait_until(DEADLINE, || status(&mut c, "job") == Status::Stale));
    let r = c.resume("job", None, false).unwrap();
    assert_eq!(r.session.owner_pid, Some(std::process::id()));
    assert_eq!(c.put("job", b"mine now".to_vec()).unwrap().number, 3);
}
