//! Large payloads stored by what changed (the local log): content-defined chunks stored once
//! per user, compressed, read back byte for byte across restarts, kill -9 and compaction; a
//! damaged chunk damages every checkpoint that uses it, and reads fall back.

use std::path::Path;

use sessiond_client::{Client, HistoryRequest};
use sessiond_tests::{ClientExt, Daemon};

/// The bytes the daemon says its live records take.
fn segment_bytes_used(d: &Daemon) -> u64 {
    d.client().stats().unwrap().stored_bytes
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn text(&mut self, n: usize) -> String {
        const WORDS: [&str; 12] = [
            "the", "agent", "called", "tool", "search", "with", "result", "and", "then", "wrote",
            "a", "summary",
        ];
        let mut s = String::new();
        while s.len() < n {
            s.push_str(WORDS[self.next() as usize % WORDS.len()]);
            s.push(' ');
        }
        s.truncate(n);
        s
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        sessiond_tests::unique_bytes(self.next(), n)
    }
}

/// An agent's state after `step` steps: a JSON document with a few small fields that change
/// every step and a list of messages that grows by one 2 KiB message per step.
fn agent_state(session: u64, messages: &[String], step: u64) -> Vec<u8> {
    let mut doc = format!(
        "{{\"session\":{session},\"step\":{step},\"tokens\":{},\"status\":\"running\",\"messages\":[",
        step * 517
    );
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!("{{\"role\":\"assistant\",\"content\":\"{m}\"}}"));
    }
    doc.push_str("]}");
    doc.into_bytes()
}

fn all_payloads(c: &mut Client, name: &str) -> Vec<(u64, Vec<u8>)> {
    c.history_with(HistoryRequest {
        name: name.into(),
        payloads: true,
        ..Default::default()
    })
    .unwrap()
    .into_iter()
    .map(|h| (h.number, h.payload.unwrap().0))
    .collect()
}

#[test]
fn successive_states_share_their_chunks_and_read_back_byte_for_byte() {
    let mut d = Daemon::start_local(&[]);
    let mut c = d.client();
    let mut rng = Rng(7);
    let mut written = Vec::new();
    let mut logical = 0u64;
    for s in 0..2u64 {
        let name = format!("agent{s}");
        c.create_keep(&name, Some(0)).unwrap();
        let mut messages = Vec::new();
        for step in 1..=60 {
            messages.push(rng.text(2048));
            let state = agent_state(s, &messages, step);
            logical += state.len() as u64;
            c.put(&name, state.clone()).unwrap();
            written.push((name.clone(), step, state));
        }
    }
    let used = segment_bytes_used(&d);
    assert!(
        used * 10 < logical,
        "{logical} logical bytes took {used} bytes of log"
    );
    // Per session too: show says what its checkpoints hold and what they take.
    let shown = c.show("agent0").unwrap();
    let want: u64 = written
        .iter()
        .filter(|(n, _, _)| n == "agent0")
        .map(|(_, _, p)| p.len() as u64)
        .sum();
    assert_eq!(shown.logical_bytes, Some(want));
    let stored = shown.stored_bytes.unwrap();
    assert!(stored > 0 && stored * 10 < want, "{stored} of {want}");
    assert_eq!(c.stats().unwrap().logical_bytes, logical);
    let check = |c: &mut Client, when: &str| {
        for s in 0..2 {
            let name = format!("agent{s}");
            let got = all_payloads(c, &name);
            let want: Vec<(u64, Vec<u8>)> = written
                .iter()
                .filter(|(n, _, _)| *n == name)
                .map(|(_, step, p)| (*step, p.clone()))
                .collect();
            assert!(got == want, "{when}: {name}'s checkpoints differ");
        }
    };
    check(&mut c, "as written");
    // A clean restart (from the snapshot), kill -9 (the log after it), no snapshot at all.
    assert!(d.stop().success());
    d.restart();
    check(&mut d.client(), "after a restart");
    d.kill9();
    d.restart();
    check(&mut d.client(), "after kill -9");
    d.kill9();
    std::fs::remove_file(d.state.join("index")).unwrap();
    d.restart();
    check(&mut d.client(), "replayed from the whole log");
    let (ok, out) = d.check();
    assert!(ok, "{out}");
    assert!(out.contains("chunks: "), "{out}");
}

/// Two connections at once, so that neither is alone on the async worker: the states of up to
/// 128 KiB are cut there, the larger ones on the blocking pool; both are stored by what
/// changed and read back byte for byte, each session's numbers in its own order.
#[test]
fn states_written_on_two_connections_at_once_are_cut_on_either_side_of_the_worker() {
    let d = Daemon::start_local(&[]);
    let writers: Vec<_> = (0..2u64)
        .map(|s| {
            let mut c = d.client();
            std::thread::spawn(move || {
                let name = format!("agent{s}");
                c.create_keep(&name, Some(0)).unwrap();
                let mut rng = Rng(11 + s);
                let mut messages = Vec::new();
                let mut written = Vec::new();
                // 2 KiB more each step: from below 128 KiB to past 200 KiB.
                for step in 1..=100 {
                    messages.push(rng.text(2048));
                    let state = agent_state(s, &messages, step);
                    let cp = c.put(&name, state.clone()).unwrap();
                    assert_eq!(cp.number, step);
                    written.push((step, state));
                }
                (name, written)
            })
        })
        .collect();
    let written: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let logical: u64 = written
        .iter()
        .flat_map(|(_, w)| w.iter().map(|(_, p)| p.len() as u64))
        .sum();
    let largest = written[0].1.last().map_or(0, |(_, p)| p.len());
    assert!(largest > 200 << 10, "the last states are {largest} bytes");
    let used = segment_bytes_used(&d);
    assert!(
        used * 10 < logical,
        "{logical} logical bytes took {used} bytes of log"
    );
    let mut c = d.client();
    for (name, want) in &written {
        assert!(
            all_payloads(&mut c, name) == *want,
            "{name}'s checkpoints differ"
        );
    }
}

#[test]
fn users_never_share_chunks() {
    let d = Daemon::start_local(&[]);
    let payload = Rng(3).bytes(400_000);
    let mut mine = d.client();
    mine.create_keep("s", Some(0)).unwrap();
    mine.put("s", payload.clone()).unwrap();
    let one = segment_bytes_used(&d);
    // The same bytes again, same user: the first copy shared and compressed nothing and was
    // stored whole; the second is stored in chunks, which later copies share.
    mine.put("s", payload.clone()).unwrap();
    let two = segment_bytes_used(&d);
    assert!(two - one >= 400_000, "{one} then {two}");
    mine.put("s", payload.clone()).unwrap();
    let again = segment_bytes_used(&d);
    assert!(again - two < 10_000, "{two} then {again}");
    // Another user's same bytes are stored for them: in chunks of their own the second time.
    let mut theirs = d.client();
    theirs.act_as_uid(Some(65534));
    theirs.create_keep("s", Some(0)).unwrap();
    theirs.put("s", payload.clone()).unwrap();
    let whole = segment_bytes_used(&d);
    theirs.put("s", payload.clone()).unwrap();
    let other = segment_bytes_used(&d);
    assert!(other - whole >= 400_000, "{whole} then {other}");
    assert_eq!(
        theirs.get("s", None).unwrap().unwrap().payload.unwrap().0,
        payload
    );
    assert_eq!(
        mine.get("s", Some(1)).unwrap().unwrap().payload.unwrap().0,
        payload
    );
}

/// Flips one byte of the segment file where `needle` was stored last (a chunk, where an
/// earlier checkpoint of the same bytes was stored whole).
fn damage_where(state: &Path, needle: &[u8]) {
    let mut segments: Vec<_> = std::fs::read_dir(state.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    for path in segments.iter().rev() {
        let mut bytes = std::fs::read(path).unwrap();
        if let Some(at) = bytes.windows(needle.len()).rposition(|w| w == needle) {
            bytes[at + needle.len() / 2] ^= 0xff;
            std::fs::write(path, bytes).unwrap();
            return;
        }
    }
    panic!("the bytes to damage are in no segment");
}

#[test]
fn a_damaged_chunk_damages_every_checkpoint_using_it_and_a_new_write_heals_it() {
    let mut d = Daemon::start_local(&[]);
    let mut c = d.client();
    let mut rng = Rng(11);
    // Incompressible bytes, so that they are found as they are in the segment.
    let base = rng.bytes(200_000);
    let tail = rng.bytes(100_000);
    let mut longer = base.clone();
    longer.extend_from_slice(&tail);
    c.create_keep("s", Some(0)).unwrap();
    c.put("s", base.clone()).unwrap();
    c.put("s", longer.clone()).unwrap();
    assert!(d.stop().success());
    // A chunk only the second uses.
    damage_where(&d.state, &tail[50_000..50_064]);
    d.restart();
    let mut c = d.client();
    let got = c.get("s", None).unwrap().unwrap();
    assert_eq!(
        (got.number, got.skipped_corrupt.clone()),
        (1, vec![2]),
        "the latest read falls back to the newest intact one"
    );
    assert_eq!(got.payload.unwrap().0, base);
    let (ok, out) = d.check();
    assert!(
        !ok && out.contains("checkpoint 2 cannot be served"),
        "{out}"
    );
    // The same bytes written again are stored again (not referenced at the damaged place),
    // and the checkpoint that used the damaged chunk reads again too.
    c.put("s", longer.clone()).unwrap();
    assert_eq!(
        c.get("s", None).unwrap().unwrap().payload.unwrap().0,
        longer
    );
    assert_eq!(
        c.get("s", Some(2)).unwrap().unwrap().payload.unwrap().0,
        longer
    );

    // A chunk two checkpoints use: neither can be served. (The session's first state, which
    // shared and compressed nothing, was stored whole; the next two share chunks.)
    c.create_keep("t", Some(0)).unwrap();
    let shared = rng.bytes(150_000);
    let mut more = shared.clone();
    more.extend_from_slice(&rng.bytes(50_000));
    let mut other = shared.clone();
    other.extend_from_slice(&rng.bytes(50_000));
    c.put("t", shared.clone()).unwrap();
    c.put("t", more).unwrap();
    c.put("t", other).unwrap();
    assert!(d.stop().success());
    damage_where(&d.state, &shared[70_000..70_064]);
    d.restart();
    let mut c = d.client();
    assert!(c.get("t", Some(2)).is_err());
    assert!(c.get("t", Some(3)).is_err());
    let got = c.get("t", None).unwrap().unwrap();
    assert_eq!((got.number, got.skipped_corrupt), (1, vec![3, 2]));
    assert_eq!(got.payload.unwrap().0, shared);
}

#[test]
fn compaction_copies_the_chunks_old_checkpoints_use_forward() {
    let mut d = Daemon::start_local(&[
        "--segment-bytes",
        "262144",
        "--snapshot-every-bytes",
        "524288",
    ]);
    let mut c = d.client();
    let mut rng = Rng(5);
    // A session written twice, whose chunks sit in the first segments (its first state,
    // sharing nothing yet, stored whole; its second in chunks).
    let first = rng.bytes(100_000);
    let mut old = first.clone();
    old.extend_from_slice(&rng.bytes(20_000));
    c.create_keep("old", Some(0)).unwrap();
    c.put("old", first).unwrap();
    c.put("old", old.clone()).unwrap();
    assert!(c.stats().unwrap().chunks > 0);
    // Another that churns through many segments, keeping one checkpoint.
    c.create_keep("churn", Some(1)).unwrap();
    for _ in 0..120 {
        c.put("churn", rng.bytes(40_000)).unwrap();
    }
    let first = d
        .segments()
        .into_iter()
        .min()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap();
    assert_ne!(
        first, "0000000000000001",
        "the first segments were compacted away"
    );
    assert_eq!(c.get("old", None).unwrap().unwrap().payload.unwrap().0, old);
    d.kill9();
    d.restart();
    assert_eq!(
        d.client()
            .get("old", None)
            .unwrap()
            .unwrap()
            .payload
            .unwrap()
            .0,
        old
    );
    assert!(d.stop().success());
    let (ok, out) = d.check();
    assert!(ok, "{out}");
}

#[test]
fn a_write_cut_short_among_its_chunks_leaves_none_of_them_counted() {
    let mut d = Daemon::start_local(&[]);
    let mut c = d.client();
    let mut rng = Rng(13);
    // Text, which compresses: stored in chunks from the first state on; the second adds
    // chunks of random bytes after those.
    let first = rng.text(120_000).into_bytes();
    let mut second = first.clone();
    second.extend_from_slice(&rng.bytes(200_000));
    c.create_keep("s", Some(0)).unwrap();
    c.put("s", first.clone()).unwrap();
    let chunks_before = c.stats().unwrap().chunks;
    assert!(chunks_before > 0);
    assert!(d.stop().success());
    // The next run's writes go to a segment of their own.
    d.restart();
    let mut c = d.client();
    c.put("s", second.clone()).unwrap();
    assert!(d.stop().success());
    let newest = d.segments().into_iter().max().unwrap();
    let len = std::fs::metadata(&newest).unwrap().len();
    // As if the daemon had died while the write was in flight: no snapshot covers it, and
    // the log ends inside the new chunks' records, before the checkpoint's own.
    std::fs::remove_file(d.state.join("index")).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    d.restart();
    let mut c = d.client();
    let latest = c.get("s", None).unwrap().unwrap();
    assert_eq!(
        (latest.number, latest.payload.unwrap().0),
        (1, first.clone())
    );
    assert_eq!(
        c.stats().unwrap().chunks,
        chunks_before,
        "the chunks of the write cut short are not counted"
    );
    // Written again, it is whole.
    c.put("s", second.clone()).unwrap();
    assert_eq!(
        c.get("s", None).unwrap().unwrap().payload.unwrap().0,
        second
    );
    assert!(d.stop().success());
    let (ok, out) = d.check();
    assert!(ok, "{out}");
}

#[test]
fn a_session_whose_payloads_share_and_compress_nothing_is_stored_whole() {
    let d = Daemon::start_local(&[]);
    let mut c = d.client();
    let mut rng = Rng(17);
    c.create_keep("blobs", Some(0)).unwrap();
    let mut written = Vec::new();
    for _ in 0..12 {
        let blob = rng.bytes(100_000);
        c.put("blobs", blob.clone()).unwrap();
        written.push(blob);
    }
    // Each was cut (the first few) or not (once cutting had gained nothing four times), and
    // stored whole: one record each, no chunk.
    assert_eq!(c.stats().unwrap().chunks, 0);
    let got = all_payloads(&mut c, "blobs");
    assert!(
        got.iter().map(|(_, p)| p).eq(written.iter()),
        "read back as written"
    );
    // Bytes that repeat are stored in chunks, and shared, once probes see them: a probe
    // remembers what it cut, the next finds it again.
    for _ in 0..40 {
        c.put("blobs", written[0].clone()).unwrap();
    }
    assert!(c.stats().unwrap().chunks > 0);
    let shown = c.show("blobs").unwrap();
    assert!(
        shown.stored_bytes.unwrap() < (12 + 30) * 100_000,
        "repeats are not all stored whole: {shown:?}"
    );
    assert_eq!(
        all_payloads(&mut c, "blobs")[12..],
        (13..=52)
            .map(|n| (n, written[0].clone()))
            .collect::<Vec<_>>()[..]
    );
}
