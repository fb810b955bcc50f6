//! Checkpoints survive restarts and `kill -9`, numbered the same, byte for byte.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sessiond_client::{CheckpointOptions, ErrorKind, ListRequest, Status};
use sessiond_tests::ClientExt;
use sessiond_tests::{wait_until, Daemon};

fn payload(session: usize, n: u64) -> Vec<u8> {
    // Distinct, varied sizes, binary content.
    let len = 1 + ((n as usize * 7919 + session * 104_729) % 20_000);
    (0..len)
        .map(|i| (i as u64 * 31 + n * 17 + session as u64) as u8)
        .collect()
}

#[test]
fn everything_survives_a_restart_and_retention_keeps_exactly_keep() {
    let mut d = Daemon::start();
    let mut c = d.client();
    c.create_keep("kept", Some(3)).unwrap();
    c.create_keep("all", Some(0)).unwrap();
    c.create_keep("default", None).unwrap();
    for n in 1..=10u64 {
        assert_eq!(c.put("kept", payload(0, n)).unwrap().number, n);
        assert_eq!(c.put("all", payload(1, n)).unwrap().number, n);
    }
    for n in 1..=20u64 {
        c.put("default", payload(2, n)).unwrap();
    }
    c.pause("all").unwrap();
    c.fail("default", Some("boom")).unwrap();
    let before = c.list(ListRequest::default()).unwrap();

    let numbers = |c: &mut sessiond_client::Client, name: &str| -> Vec<u64> {
        c.history(name).unwrap().iter().map(|h| h.number).collect()
    };
    assert_eq!(numbers(&mut c, "kept"), vec![8, 9, 10]);
    assert_eq!(numbers(&mut c, "all"), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        numbers(&mut c, "default"),
        (5..=20).collect::<Vec<_>>(),
        "daemon default keep is 16"
    );
    let e = c.get("kept", Some(7)).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::NotFound));
    drop(c);

    for restart in 0..2 {
        if restart == 0 {
            assert!(d.stop().success());
        } else {
            d.kill9();
        }
        d.restart();
        let mut c = d.client();
        assert_eq!(
            c.list(ListRequest::default()).unwrap(),
            before,
            "sessions identical after restart {restart}"
        );
        assert_eq!(numbers(&mut c, "kept"), vec![8, 9, 10]);
        assert_eq!(numbers(&mut c, "all"), (1..=10).collect::<Vec<_>>());
        for n in 1..=10 {
            assert_eq!(
                c.get("all", Some(n)).unwrap().unwrap().payload.unwrap().0,
                payload(1, n)
            );
        }
        let latest = c.get("kept", None).unwrap().unwrap();
        assert_eq!(
            (latest.number, latest.payload.unwrap().0),
            (10, payload(0, 10))
        );
        assert_eq!(c.show("default").unwrap().status, Status::Failed);
        assert_eq!(c.show("default").unwrap().error.as_deref(), Some("boom"));
        assert_eq!(
            c.get("kept", Some(7)).unwrap_err().kind(),
            Some(ErrorKind::NotFound)
        );
    }
    // Numbering continues after the restart; retention still applies.
    let mut c = d.client();
    assert_eq!(c.put("kept", payload(0, 11)).unwrap().number, 11);
    assert_eq!(numbers(&mut c, "kept"), vec![9, 10, 11]);
}

fn inode(p: &std::path::Path) -> Option<u64> {
    std::fs::metadata(p)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
}

#[test]
fn segments_roll_over_and_dead_ones_are_deleted() {
    // Small segments and snapshots so the log rolls and old segments become garbage.
    let mut d = Daemon::start_with(&[
        "--segment-bytes",
        "65536",
        "--snapshot-every-bytes",
        "131072",
    ]);
    let mut c = d.client();
    c.create_keep("s", Some(2)).unwrap();
    for n in 1..=300u64 {
        c.put("s", vec![n as u8; 4000]).unwrap();
    }
    let segs = d.segments().len();
    assert!(
        segs < 10,
        "dead segments are deleted ({segs} left):\n{}",
        d.log()
    );
    // Dead segments leave the log at once. As many as the log fills between two snapshots
    // (2 here) are kept for new segments to reuse; the others are unlinked off the commit
    // thread.
    assert!(
        wait_until(Duration::from_secs(10), || d.log_files("dead").is_empty()),
        "dead segments are unlinked: {:?}",
        d.log_files("dead")
    );
    let free = d.log_files("free");
    assert!(
        (1..=2).contains(&free.len()),
        "free files kept: {free:?}\n{}",
        d.log()
    );

    assert!(d.stop().success());
    let kept: Vec<u64> = d
        .log_files("free")
        .iter()
        .filter_map(|p| inode(p))
        .collect();
    // One a crash kept from being unlinked is deleted at the next start, and is never read.
    let leftover = d.state.join("log").join("0000000000000001.dead");
    std::fs::write(&leftover, vec![0xa5; 4096]).unwrap();
    d.restart();
    assert!(
        wait_until(Duration::from_secs(10), || !leftover.exists()),
        "a dead segment left by an earlier run is deleted at start-up"
    );
    // The new run's segment is one of the free files: the same inode under a new name.
    let newest = d.segments().into_iter().max().unwrap();
    assert!(
        inode(&newest).is_some_and(|i| kept.contains(&i)),
        "{} is a new file, not one of the free ones\n{}",
        newest.display(),
        d.log()
    );
    let mut c = d.client();
    let h: Vec<u64> = c.history("s").unwrap().iter().map(|h| h.number).collect();
    assert_eq!(h, vec![299, 300]);
    assert_eq!(
        c.get("s", None).unwrap().unwrap().payload.unwrap().0,
        vec![44u8; 4000]
    );
    let (ok, out) = d.check();
    assert!(ok, "{out}");
}

/// What one writer saw: acknowledged payloads by number, and the write in flight at the crash.
#[derive(Default)]
struct Seen {
    acked: Vec<(u64, Vec<u8>)>,
    in_flight: Option<Vec<u8>>,
}

#[test]
fn kill_9_under_concurrent_writers_loses_no_acknowledged_checkpoint() {
    const WRITERS: usize = 6;
    let mut d = Daemon::start_with(&["--default-keep", "0"]);
    for round in 0..3u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let seen: Vec<Arc<Mutex<Seen>>> = (0..WRITERS).map(|_| Arc::default()).collect();
        let mut handles = Vec::new();
        for (w, seen) in seen.iter().enumerate() {
            let (socket, stop, total, seen) =
                (d.socket.clone(), stop.clone(), total.clone(), seen.clone());
            handles.push(std::thread::spawn(move || {
                let mut c = sessiond_client::Client::connect(&socket).unwrap();
                let name = format!("w{w}");
                if round == 0 {
                    c.create_keep(&name, None).unwrap();
                }
                let mut latest = c.show(&name).unwrap().latest_checkpoint.unwrap_or(0);
                while !stop.load(Ordering::Relaxed) {
                    let body = payload(w, latest + 1 + round * 1_000_000);
                    seen.lock().unwrap().in_flight = Some(body.clone());
                    let options = CheckpointOptions {
                        expect: Some(latest),
                        ..Default::default()
                    };
                    match c.checkpoint(&name, body.clone(), options) {
                        Ok(info) => {
                            assert_eq!(info.number, latest + 1, "gapless numbering");
                            latest = info.number;
                            let mut s = seen.lock().unwrap();
                            s.acked.push((info.number, body));
                            s.in_flight = None;
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => return, // the daemon died under us
                    }
                }
            }));
        }
        assert!(
            wait_until(Duration::from_secs(60), || total.load(Ordering::Relaxed)
                >= 150 * (round + 1)),
            "writers stalled:\n{}",
            d.log()
        );
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().unwrap();
        }
        d.restart();
        let mut c = d.client();
        for (w, seen) in seen.iter().enumerate() {
            let seen = seen.lock().unwrap();
            let name = format!("w{w}");
            let history: Vec<u64> = c.history(&name).unwrap().iter().map(|h| h.number).collect();
            let expected_len = history.len() as u64;
            assert_eq!(
                history,
                (1..=expected_len).collect::<Vec<_>>(),
                "{name}: numbers gapless after crash {round}"
            );
            for (n, body) in &seen.acked {
                let got = c.get(&name, Some(*n)).unwrap().unwrap();
                assert_eq!(
                    got.payload.unwrap().0,
                    *body,
                    "{name}: checkpoint {n} byte-identical"
                );
            }
            let last_acked = seen.acked.last().map(|(n, _)| *n).unwrap_or(0);
            let latest = c.get(&name, None).unwrap();
            match latest {
                Some(l) if l.number == last_acked + 1 => {
                    // The write in flight at the crash made it: it must be intact.
                    assert_eq!(
                        Some(l.payload.unwrap().0),
                        seen.in_flight.clone(),
                        "{name}: in-flight checkpoint intact"
                    );
                }
                Some(l) => assert_eq!(l.number, last_acked, "{name}: latest after the crash"),
                None => assert_eq!(last_acked, 0, "{name}: acknowledged checkpoints vanished"),
            }
        }
    }
}

/// A new state directory's first segment is written full of zeros before the daemon serves:
/// no block of it is only allocated (ext4 reports those as a hole), so a commit's
/// `fdatasync` never has extents to convert.
#[test]
fn a_new_state_directory_starts_with_a_segment_written_through() {
    use nix::unistd::{lseek, Whence};
    let d = Daemon::start();
    let segments = d.segments();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let file = std::fs::File::open(&segments[0]).unwrap();
    let len = file.metadata().unwrap().len();
    assert!(len >= 1 << 20, "a whole segment, not {len} bytes");
    assert_eq!(lseek(&file, 0, Whence::SeekHole).unwrap() as u64, len);
}
