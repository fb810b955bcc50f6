//! Damaged state on disk: a flipped byte, a truncated file, a torn write, a damaged index.
//! The daemon starts, never serves damaged data, reports what it skipped, and `sessiond check`
//! names the damage.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use serde_json::json;
use sessiond_client::ErrorKind;
use sessiond_tests::ClientExt;
use sessiond_tests::{unb64, Daemon};

fn marker(n: u64) -> Vec<u8> {
    let mut v = format!("<<payload-{n:04}>>").into_bytes();
    v.extend((0..2000u32).map(|i| (i % 251) as u8));
    v
}

/// (segment file, offset) of the first occurrence of `needle` in the log.
fn find(d: &Daemon, needle: &[u8]) -> (PathBuf, u64) {
    for seg in d.segments() {
        let bytes = std::fs::read(&seg).unwrap();
        if let Some(i) = bytes.windows(needle.len()).position(|w| w == needle) {
            return (seg, i as u64);
        }
    }
    panic!("payload not found in the log");
}

fn flip_byte(path: &PathBuf, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn daemon_with_checkpoints(n: u64) -> Daemon {
    let d = Daemon::start();
    let mut c = d.client();
    c.create_keep("job", Some(0)).unwrap();
    for i in 1..=n {
        c.put("job", marker(i)).unwrap();
    }
    d
}

fn assert_serves_previous(d: &Daemon, damaged: u64) {
    let mut c = d.client();
    let got = c.get("job", None).unwrap().unwrap();
    assert_eq!(got.number, damaged - 1);
    assert_eq!(got.payload.unwrap().0, marker(damaged - 1));
    assert_eq!(got.skipped_corrupt, vec![damaged]);
    // Asking for the damaged one by number is an error, never its bytes.
    let e = c.get("job", Some(damaged)).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::Internal));
    assert!(e.to_string().contains("damaged"), "{e}");
    // Scripts see the skipped number too.
    let mut j = d.json();
    let r = j.call(json!({"op": "get", "id": 1, "name": "job"}));
    assert_eq!(r["checkpoint"]["number"], json!(damaged - 1));
    assert_eq!(r["checkpoint"]["skipped_corrupt"], json!([damaged]));
    assert_eq!(
        unb64(r["checkpoint"]["payload_b64"].as_str().unwrap()),
        marker(damaged - 1)
    );
}

#[test]
fn a_flipped_byte_in_the_newest_checkpoint_is_skipped_and_reported() {
    let mut d = daemon_with_checkpoints(5);
    assert!(d.stop().success());
    let (seg, off) = find(&d, &marker(5)[..16]);
    flip_byte(&seg, off + 100);
    let (ok, out) = d.check();
    assert!(!ok, "check must fail on damage:\n{out}");
    assert!(out.contains("checkpoint 5 cannot be served"), "{out}");
    d.restart();
    assert_serves_previous(&d, 5);
    // The history still lists it; numbering goes on after it, never reusing 5.
    let mut c = d.client();
    assert_eq!(c.history("job").unwrap().len(), 5);
    assert_eq!(c.put("job", marker(6)).unwrap().number, 6);
    assert_eq!(
        c.get("job", None).unwrap().unwrap().skipped_corrupt,
        Vec::<u64>::new()
    );
}

#[test]
fn a_truncated_newest_checkpoint_is_skipped_and_reported() {
    let mut d = daemon_with_checkpoints(4);
    assert!(d.stop().success());
    let (seg, off) = find(&d, &marker(4)[..16]);
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(off + 500)
        .unwrap();
    let (ok, out) = d.check();
    assert!(
        !ok && out.contains("checkpoint 4 cannot be served"),
        "{out}"
    );
    d.restart();
    assert_serves_previous(&d, 4);
}

#[test]
fn damage_in_the_log_replayed_after_a_crash_is_skipped_too() {
    // kill -9: no final snapshot, so start-up replays (and verifies) the records themselves.
    let mut d = daemon_with_checkpoints(6);
    d.kill9();
    let (seg, off) = find(&d, &marker(6)[..16]);
    flip_byte(&seg, off + 1000);
    d.restart();
    assert_serves_previous(&d, 6);
    assert!(
        d.log().contains("checkpoint payload is damaged"),
        "{}",
        d.log()
    );
}

#[test]
fn a_torn_last_write_is_ignored_and_the_rest_served() {
    let mut d = daemon_with_checkpoints(3);
    d.kill9();
    // Half a record at the end of the newest segment, as an interrupted write leaves it.
    let last = d.segments().last().unwrap().clone();
    let bytes = std::fs::read(&last).unwrap();
    let (_, off) = find(&d, &marker(3)[..16]);
    let record_start = bytes[..off as usize]
        .windows(4)
        .rposition(|w| w == b"SRC1")
        .unwrap();
    let partial = bytes[record_start..off as usize + 300].to_vec();
    OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&partial)
        .unwrap();
    let (ok, out) = d.check();
    assert!(ok, "an interrupted write is not damage:\n{out}");
    assert!(out.contains("interrupted write"), "{out}");
    d.restart();
    let mut c = d.client();
    let got = c.get("job", None).unwrap().unwrap();
    assert_eq!((got.number, got.skipped_corrupt.len()), (3, 0));
    assert_eq!(c.put("job", marker(4)).unwrap().number, 4);
}

#[test]
fn a_garbled_record_in_mid_log_is_passed_over_and_later_ones_kept() {
    let mut d = Daemon::start();
    let mut c = d.client();
    c.create_keep("a", Some(0)).unwrap();
    c.create_keep("b", Some(0)).unwrap();
    for i in 1..=4 {
        c.put("a", marker(i)).unwrap();
        c.put("b", marker(100 + i)).unwrap();
    }
    d.kill9();
    // Destroy the header of a's checkpoint 2: its record cannot even be recognised.
    let (seg, off) = find(&d, &marker(2)[..16]);
    let mut bytes = std::fs::read(&seg).unwrap();
    let start = bytes[..off as usize]
        .windows(4)
        .rposition(|w| w == b"SRC1")
        .unwrap();
    for b in &mut bytes[start..start + 40] {
        *b = 0xAA;
    }
    std::fs::write(&seg, bytes).unwrap();
    let (ok, out) = d.check();
    assert!(!ok && out.contains("DAMAGED"), "{out}");
    d.restart();
    let mut c = d.client();
    let a: Vec<u64> = c.history("a").unwrap().iter().map(|h| h.number).collect();
    assert_eq!(
        a,
        vec![1, 3, 4],
        "the unreadable record is absent, the ones after it kept"
    );
    let b: Vec<u64> = c.history("b").unwrap().iter().map(|h| h.number).collect();
    assert_eq!(b, vec![1, 2, 3, 4]);
    for i in 1..=4 {
        assert_eq!(
            c.get("b", Some(i)).unwrap().unwrap().payload.unwrap().0,
            marker(100 + i)
        );
    }
}

#[test]
fn a_damaged_index_is_rebuilt_from_the_log() {
    let mut d = daemon_with_checkpoints(5);
    let mut c = d.client();
    c.create_keep("other", Some(2)).unwrap();
    c.pause("other").unwrap();
    let before = c.list(Default::default()).unwrap();
    drop(c);
    assert!(d.stop().success());
    let index = d.state.join("index");
    flip_byte(&index, 30);
    // Leftovers of an interrupted snapshot write are cleaned up too.
    std::fs::write(d.state.join("index.tmp"), b"half a snapshot").unwrap();
    let (ok, out) = d.check();
    assert!(!ok && out.contains("index"), "{out}");
    d.restart();
    assert!(
        d.log().contains("rebuilding it from the log"),
        "{}",
        d.log()
    );
    assert!(!d.state.join("index.tmp").exists());
    let mut c = d.client();
    assert_eq!(c.list(Default::default()).unwrap(), before);
    for i in 1..=5 {
        assert_eq!(
            c.get("job", Some(i)).unwrap().unwrap().payload.unwrap().0,
            marker(i)
        );
    }
    drop(c);
    assert!(d.stop().success());
    let (ok, out) = d.check();
    assert!(ok, "the rebuilt index is whole again:\n{out}");
}
