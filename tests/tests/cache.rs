//! The in-memory cache of latest checkpoints never changes what a read returns: with it off,
//! tiny (constant eviction) or at its default, every read gives the acknowledged bytes, read
//! in place for a lone connection and on the blocking pool while another is open.

use std::os::unix::fs::FileExt;

use sessiond_client::{CheckpointOptions, CreateOptions};
use sessiond_tests::Daemon;

fn payload(session: usize, generation: u8, number: u64, len: usize) -> Vec<u8> {
    let mut p = format!("s{session} g{generation} n{number} ").into_bytes();
    p.resize(len, generation.wrapping_mul(31).wrapping_add(number as u8));
    p
}

fn exercise(args: &[&str]) {
    let mut d = Daemon::start_with(args);
    let mut c = d.client();
    let sessions = 40;
    // Sizes around the tiny cache's per-payload limit (4096 / 8).
    let sizes = [10, 400, 600, 3000];
    for generation in 0..2u8 {
        // The second generation is read while another connection is open.
        let other = (generation == 1).then(|| {
            let mut other = d.client();
            other.ping().unwrap();
            other
        });
        for s in 0..sessions {
            let name = format!("job{s}");
            c.create(&name, CreateOptions::default()).unwrap();
            for n in 1..=3u64 {
                let p = payload(s, generation, n, sizes[(s + n as usize) % sizes.len()]);
                let got = c
                    .checkpoint(&name, p, CheckpointOptions::default())
                    .unwrap();
                assert_eq!(got.number, n);
            }
        }
        for s in 0..sessions {
            let name = format!("job{s}");
            let want = |n: u64| payload(s, generation, n, sizes[(s + n as usize) % sizes.len()]);
            let latest = c.get(&name, None).unwrap().unwrap();
            assert_eq!(latest.number, 3);
            assert_eq!(latest.payload.unwrap().0, want(3), "{args:?} {name} latest");
            let older = c.get(&name, Some(2)).unwrap().unwrap();
            assert_eq!(older.payload.unwrap().0, want(2), "{args:?} {name} #2");
            let resumed = c.resume(&name, None, true).unwrap();
            assert_eq!(resumed.checkpoint.unwrap().payload.unwrap().0, want(3));
        }
        drop(other);
        // The same names and numbers again, with other bytes: nothing of the first
        // generation may be served for them.
        if generation == 0 {
            for s in 0..sessions {
                c.delete(&format!("job{s}")).unwrap();
            }
        }
    }
    // After a restart the cache is empty: the same answers come from the disk.
    drop(c);
    assert!(d.stop().success());
    d.restart();
    let mut c = d.client();
    for s in 0..sessions {
        let latest = c.get(&format!("job{s}"), None).unwrap().unwrap();
        assert_eq!(
            latest.payload.unwrap().0,
            payload(s, 1, 3, sizes[(s + 3) % sizes.len()])
        );
    }
}

#[test]
fn reads_are_the_same_with_the_cache_off() {
    exercise(&["--read-cache-bytes", "0"]);
}

#[test]
fn reads_are_the_same_with_a_tiny_cache_that_evicts_all_the_time() {
    exercise(&["--read-cache-bytes", "4096"]);
}

#[test]
fn reads_are_the_same_with_the_default_cache() {
    exercise(&[]);
}

/// Flips one byte of the only on-disk copy of `marker` under the running daemon.
fn damage_on_disk(d: &Daemon, marker: &[u8]) {
    for seg in d.segments() {
        let bytes = std::fs::read(&seg).unwrap();
        if let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) {
            let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
            file.write_all_at(&[bytes[at] ^ 0xff], at as u64).unwrap();
            return;
        }
    }
    panic!("marker not found on disk");
}

#[test]
fn the_latest_checkpoint_is_answered_from_memory_and_the_disk_still_checked() {
    for (args, from_memory) in [(&[][..], true), (&["--read-cache-bytes", "0"][..], false)] {
        let mut d = Daemon::start_local(args);
        let mut c = d.client();
        c.create("job", CreateOptions::default()).unwrap();
        c.checkpoint("job", b"first".to_vec(), CheckpointOptions::default())
            .unwrap();
        let marker = b"second, acknowledged".to_vec();
        c.checkpoint("job", marker.clone(), CheckpointOptions::default())
            .unwrap();
        damage_on_disk(&d, &marker);
        let got = c.get("job", None).unwrap().unwrap();
        if from_memory {
            // Served from memory: the acknowledged bytes, no disk read.
            assert_eq!((got.number, got.payload.unwrap().0), (2, marker.clone()));
        } else {
            assert_eq!((got.number, got.skipped_corrupt), (1, vec![2]), "{args:?}");
        }
        // A restart empties the cache: the damage is found and reported either way.
        drop(c);
        assert!(d.stop().success());
        d.restart();
        let got = d.client().get("job", None).unwrap().unwrap();
        assert_eq!((got.number, got.skipped_corrupt), (1, vec![2]), "{args:?}");
    }
}
