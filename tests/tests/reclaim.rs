//! Dead records give their disk back within `--reclaim-after`, whatever is written afterwards,
//! without a restart (the local log).

use std::path::Path;
use std::time::Duration;

use sessiond_client::Target;
use sessiond_tests::{wait_until, ClientExt, Daemon};

const MIB: u64 = 1 << 20;

/// Bytes the log directory's files take on disk (segments, free and dead files alike).
fn log_disk(state: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(state.join("log"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Unique and incompressible: each takes its size in the log.
fn payload(session: usize, n: u64, len: usize) -> Vec<u8> {
    sessiond_tests::unique_bytes(n * 1000 + session as u64, len)
}

fn daemon() -> Daemon {
    Daemon::start_local(&["--segment-bytes", "1048576", "--reclaim-after", "300ms"])
}

/// Waits for the log to shrink to at most `bound` bytes; fails with what it held.
fn assert_shrinks_to(d: &Daemon, bound: u64, what: &str) {
    let shrank = wait_until(Duration::from_secs(15), || log_disk(&d.state) <= bound);
    let files: Vec<_> = std::fs::read_dir(d.state.join("log"))
        .map(|e| e.filter_map(|e| Some(e.ok()?.file_name())).collect())
        .unwrap_or_default();
    assert!(
        shrank,
        "{what}: the log still takes {} bytes (bound {bound}): {files:?}\n{}",
        log_disk(&d.state),
        d.log()
    );
}

#[test]
fn deleting_every_session_gives_the_disk_back_without_a_restart() {
    let mut d = daemon();
    let mut c = d.client();
    let sessions = 8;
    for s in 0..sessions {
        c.create_keep(&format!("s{s}"), Some(0)).unwrap();
        for n in 1..=40 {
            c.put(&format!("s{s}"), payload(s, n, 100_000)).unwrap();
        }
    }
    let full = log_disk(&d.state);
    assert!(full >= 30 * MIB, "32 MB written, {full} on disk");
    for s in 0..sessions {
        assert!(c.delete(&format!("s{s}")).unwrap());
    }
    // What is written afterwards is small: it must not be what gives the space back.
    c.create_keep("after", Some(0)).unwrap();
    c.put("after", b"small".to_vec()).unwrap();
    // Left: the active segment, a spare, and free files for at most two more segments.
    assert_shrinks_to(&d, 6 * MIB, "after every session was deleted");
    assert_eq!(
        c.get("after", None).unwrap().unwrap().payload.unwrap().0,
        b"small"
    );
    assert!(c.show("s0").is_err(), "a deleted session stays deleted");
    // And the state left is whole after a restart.
    assert!(d.stop().success());
    d.restart();
    let mut c = d.client();
    assert_eq!(
        c.get("after", None).unwrap().unwrap().payload.unwrap().0,
        b"small"
    );
    assert!(c.show("s3").is_err());
    let (ok, out) = d.check();
    assert!(ok, "{out}");
}

#[test]
fn retention_and_prune_keep_the_disk_near_what_is_retained() {
    let d = daemon();
    let mut c = d.client();
    // Retention: 30 MB written, two 100 KB checkpoints retained.
    c.create_keep("kept2", Some(2)).unwrap();
    for n in 1..=300 {
        c.put("kept2", payload(0, n, 100_000)).unwrap();
    }
    assert_shrinks_to(&d, 6 * MIB, "with keep 2");
    let latest = c.get("kept2", None).unwrap().unwrap();
    assert_eq!(latest.payload.unwrap().0, payload(0, 300, 100_000));

    // Prune: everything kept, then cut to one.
    c.create_keep("all", Some(0)).unwrap();
    for n in 1..=150 {
        c.put("all", payload(1, n, 100_000)).unwrap();
    }
    assert!(log_disk(&d.state) >= 14 * MIB);
    let target = Target {
        name: Some("all".into()),
        session_meta: None,
    };
    assert_eq!(c.prune(target, 1).unwrap(), 149);
    assert_shrinks_to(&d, 7 * MIB, "after a prune to one checkpoint");
    let latest = c.get("all", None).unwrap().unwrap();
    assert_eq!(latest.number, 150);
    assert_eq!(latest.payload.unwrap().0, payload(1, 150, 100_000));
}
