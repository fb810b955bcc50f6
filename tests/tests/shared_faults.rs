//! The database goes away: a daemon started before it waits for it; one that loses it under
//! load answers `unavailable` meanwhile, loses nothing it acknowledged and recovers by itself.
//! (Its own test executable: these stop the cluster every test here shares.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sessiond_client::{CheckpointOptions, CreateOptions, ErrorKind};
use sessiond_tests::pg::{self, Cluster};
use sessiond_tests::{wait_until, ClientExt, Daemon};

const DEADLINE: Duration = Duration::from_secs(30);
/// A write the daemon acknowledged: session, number, payload.
type Acked = (String, u64, Vec<u8>);

/// One test at a time: each stops the cluster.
static SERIAL: Mutex<()> = Mutex::new(());

fn args<'a>(url: &'a str, host: &'a str) -> Vec<&'a str> {
    pg::host_flags(url, host, &["--db-timeout", "2s"])
}

#[test]
fn the_database_stopped_under_load_is_unavailable_meanwhile_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let d = Daemon::start_with(&args(&url, "host-a"));
    let mut c = d.client();
    for w in 0..4 {
        c.create(
            &format!("w{w}"),
            CreateOptions {
                keep: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    }
    // Four writers, each noting what was acknowledged and what was refused.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (mut c, acked, refused, stop) =
                (d.client(), acked.clone(), refused.clone(), stop.clone());
            std::thread::spawn(move || {
                let name = format!("w{w}");
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let payload = format!("{name} write {i}").into_bytes();
                    match c.checkpoint(&name, payload.clone(), CheckpointOptions::default()) {
                        Ok(cp) => acked
                            .lock()
                            .unwrap()
                            .push((name.clone(), cp.number, payload)),
                        Err(e) => {
                            assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}");
                            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let count = || acked.lock().unwrap().len();
    assert!(
        wait_until(DEADLINE, || count() > 50),
        "no writes before the fault"
    );
    cluster.stop();
    assert!(
        wait_until(DEADLINE, || refused
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0),
        "writes were not refused while the database was down"
    );
    let before = count();
    cluster.restart();
    let back = Instant::now();
    assert!(
        wait_until(DEADLINE, || count() > before + 50),
        "writes did not come back after the database did"
    );
    let recovered = back.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // Every acknowledged write is there, byte for byte, numbers without gaps.
    let acked = acked.lock().unwrap();
    for w in 0..4 {
        let name = format!("w{w}");
        let mine: Vec<_> = acked.iter().filter(|(n, _, _)| *n == name).collect();
        let history = c.history(&name).unwrap();
        let numbers: Vec<u64> = history.iter().map(|h| h.number).collect();
        let expect: Vec<u64> = (1..=numbers.len() as u64).collect();
        assert_eq!(numbers, expect, "{name}: numbers with gaps");
        for (_, number, payload) in mine {
            let got = c.get(&name, Some(*number)).unwrap().unwrap();
            assert_eq!(&got.payload.unwrap().0, payload, "{name} #{number}");
        }
    }
    eprintln!(
        "acknowledged {}, refused {} while down, writes back {recovered:?} after the database",
        acked.len(),
        refused.load(std::sync::atomic::Ordering::Relaxed)
    );
}

#[test]
fn a_daemon_started_before_its_database_waits_for_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = Cluster::get();
    let url = cluster.new_database();
    cluster.stop();
    let d = Daemon::prepare(&args(&url, "host-a"));
    let mut child = d
        .command()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(d.log_path()).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || d.log().contains("waiting for it")),
        "the daemon did not say it waits: {}",
        d.log()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon gave up: {}",
        d.log()
    );
    cluster.restart();
    assert!(
        wait_until(DEADLINE, || sessiond_client::Client::connect(&d.socket)
            .and_then(|mut c| c.ping())
            .is_ok()),
        "the daemon never answered once the database did: {}",
        d.log()
    );
    let mut c = sessiond_client::Client::connect(&d.socket).unwrap();
    c.create("job", CreateOptions::default()).unwrap();
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_stuck_database_is_answered_unavailable_within_the_timeout_not_a_hang() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = Cluster::get();
    let url = cluster.new_database();
    let mut flags = args(&url, "host-a");
    let at = flags.iter().position(|a| *a == "--db-timeout").unwrap();
    flags[at + 1] = "1s";
    let d = Daemon::start_with(&flags);
    let mut c = d.client();
    c.create("job", CreateOptions::default()).unwrap();
    c.put("job", b"before".to_vec()).unwrap();
    // Another client of the database holds every session row locked, and does not let go.
    let db = Cluster::database_of(&url);
    let mut holder = cluster
        .psql(&db)
        .args([
            "-c",
            "BEGIN; LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60);",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(DEADLINE, || {
            cluster
            .sql(
                &db,
                "SELECT count(*) FROM pg_locks WHERE relation = 'sessions'::regclass AND mode = 'AccessExclusiveLock' AND granted",
            )
            .trim()
            == "1"
        }),
        "the lock was never taken"
    );
    let started = Instant::now();
    let e = c.put("job", b"stuck".to_vec()).unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    let e = c.get("job", None).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Unavailable), "{e}");
    // (Its server process sleeps on, client gone or not: end it.)
    cluster.sql(
        &db,
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE relation = 'sessions'::regclass AND mode = 'AccessExclusiveLock'",
    );
    let _ = holder.wait();
    // Once the database lets go, the daemon serves again by itself.
    assert!(
        wait_until(DEADLINE, || c.put("job", b"after".to_vec()).is_ok()),
        "writes did not come back"
    );
    let latest = c.get("job", None).unwrap().unwrap();
    assert_eq!(latest.payload.unwrap().0, b"after");
    eprintln!("a stuck database answered unavailable after {took:?} (--db-timeout 1s)");
}
