//! The ops made for framework checkpointers (SPEC section 9) against the real daemon, through
//! the Rust client (binary) and raw JSON lines: keys, attachments, history filters, list
//! paging, delete_checkpoints, prune, copy, delete by session meta and batches, across
//! restarts and kill -9, with bad input refused.

use serde_json::{json, Value};
use sessiond_client::{
    AttachRequest, CheckpointOptions, CheckpointRef, Client, CreateOptions,
    DeleteCheckpointsRequest, ErrorKind, GetRequest, HistoryRequest, ListRequest, Meta, Payload,
    Reply, Request, Target,
};
use sessiond_tests::{b64, unb64, Daemon};

fn meta(pairs: &[(&str, &str)]) -> Meta {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn detached(c: &mut Client, name: &str, session_meta: &[(&str, &str)]) {
    let options = CreateOptions {
        keep: Some(0),
        meta: meta(session_meta),
        detached: true,
        ..Default::default()
    };
    let s = c.create(name, options).unwrap();
    assert_eq!(s.owner_pid, None);
}

fn keyed(
    c: &mut Client,
    name: &str,
    key: &str,
    payload: &[u8],
    m: &[(&str, &str)],
) -> sessiond_client::Result<sessiond_client::CheckpointInfo> {
    let options = CheckpointOptions {
        meta: meta(m),
        key: Some(key.into()),
        ..Default::default()
    };
    c.checkpoint(name, payload.to_vec(), options)
}

fn by_key(c: &mut Client, name: &str, key: &str) -> sessiond_client::CheckpointInfo {
    c.get_with(GetRequest {
        name: name.into(),
        key: Some(key.into()),
        attachments: true,
        ..Default::default()
    })
    .unwrap()
    .unwrap()
}

fn attach(name: &str, key: &str, attach_key: &str, payload: &[u8]) -> AttachRequest {
    AttachRequest {
        name: name.into(),
        checkpoint: CheckpointRef::Key(key.into()),
        attach_key: attach_key.into(),
        payload: Payload(payload.to_vec()),
        meta: meta(&[("channel", attach_key)]),
        replace: false,
        epoch: None,
    }
}

fn attachment_keys(cp: &sessiond_client::CheckpointInfo) -> Vec<(String, Vec<u8>)> {
    cp.attachments
        .iter()
        .flatten()
        .map(|a| {
            let payload = a.payload.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            (a.attach_key.clone(), payload)
        })
        .collect()
}

fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or("")
}

#[test]
fn keys_are_safe_to_retry_and_found_by_lookup_in_both_encodings() {
    let d = Daemon::start();
    let mut c = d.client();
    detached(&mut c, "t", &[]);
    let first = keyed(&mut c, "t", "cp-1", b"one", &[("step", "1")]).unwrap();
    assert_eq!(
        (first.number, first.key.as_deref(), first.existing),
        (1, Some("cp-1"), false)
    );
    let again = keyed(&mut c, "t", "cp-1", b"one", &[("step", "1")]).unwrap();
    assert_eq!((again.number, again.existing), (1, true));
    let e = keyed(&mut c, "t", "cp-1", b"other", &[("step", "1")]).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::AlreadyExists), "{e}");
    keyed(&mut c, "t", "cp-2", b"two", &[]).unwrap();
    let got = by_key(&mut c, "t", "cp-1");
    assert_eq!((got.number, got.payload.unwrap().0), (1, b"one".to_vec()));
    assert_eq!(got.key.as_deref(), Some("cp-1"));
    let latest = c.get("t", None).unwrap().unwrap();
    assert_eq!(latest.key.as_deref(), Some("cp-2"), "replies carry the key");

    // The same over JSON lines: a retry answers `existing`, other bytes are refused.
    let mut j = d.json();
    let write = |payload: &[u8]| json!({"op": "checkpoint", "id": "w", "name": "t", "key": "cp-3", "payload_b64": b64(payload)});
    let r = j.call(write(b"three"));
    assert_eq!(r["checkpoint"]["number"], json!(3), "{r}");
    assert!(
        r["checkpoint"].get("existing").is_none(),
        "only said when true: {r}"
    );
    let r = j.call(write(b"three"));
    assert_eq!(r["checkpoint"]["number"], json!(3), "{r}");
    assert_eq!(r["checkpoint"]["existing"], json!(true), "{r}");
    let r = j.call(write(b"not three"));
    assert_eq!(kind(&r), "already_exists", "{r}");
    let r = j.call(json!({"op": "get", "id": 1, "name": "t", "key": "cp-2"}));
    assert_eq!(
        unb64(r["checkpoint"]["payload_b64"].as_str().unwrap()),
        b"two"
    );
    let r = j.call(json!({"op": "get", "id": 2, "name": "t", "key": "nope"}));
    assert_eq!(kind(&r), "not_found", "{r}");
    let r = j.call(
        json!({"op": "checkpoint", "id": 3, "name": "t", "key": "a\u{7}b", "payload_b64": ""}),
    );
    assert_eq!(kind(&r), "invalid_argument", "{r}");
    let r = j.call(json!({"op": "checkpoint", "id": 4, "name": "t", "key": "k".repeat(257), "payload_b64": ""}));
    assert_eq!(kind(&r), "invalid_argument", "{r}");

    // Keys outlive a restart and a crash, with what a retry is known by.
    let mut d = d;
    d.kill9();
    d.restart();
    let mut c = d.client();
    assert_eq!(by_key(&mut c, "t", "cp-2").number, 2);
    assert!(keyed(&mut c, "t", "cp-3", b"three", &[]).unwrap().existing);
    drop(c);
    assert!(d.stop().success());
    d.restart();
    assert_eq!(by_key(&mut d.client(), "t", "cp-1").number, 1);
    let (ok, report) = d.check();
    assert!(ok, "{report}");
}

#[test]
fn attachments_come_back_in_order_after_a_crash_and_go_with_their_checkpoint() {
    let mut d = Daemon::start_with(&["--max-checkpoint-bytes", "4096"]);
    let mut c = d.client();
    c.create(
        "t",
        CreateOptions {
            keep: Some(2),
            detached: true,
            ..Default::default()
        },
    )
    .unwrap();
    keyed(&mut c, "t", "c1", b"state-1", &[]).unwrap();
    for (k, p) in [("w-b", b"bee" as &[u8]), ("w-a", b"ay"), ("w-c", b"sea")] {
        let a = c.attach(attach("t", "c1", k, p)).unwrap();
        assert_eq!(
            (a.number, a.key.as_deref(), a.existing),
            (1, Some("c1"), false)
        );
    }
    // The first write wins; `replace` replaces in place.
    assert!(
        c.attach(attach("t", "c1", "w-a", b"again"))
            .unwrap()
            .existing
    );
    let mut replace = attach("t", "c1", "w-c", b"SEA");
    replace.replace = true;
    assert!(!c.attach(replace).unwrap().existing);
    let want = vec![
        ("w-b".to_string(), b"bee".to_vec()),
        ("w-a".to_string(), b"ay".to_vec()),
        ("w-c".to_string(), b"SEA".to_vec()),
    ];
    assert_eq!(attachment_keys(&by_key(&mut c, "t", "c1")), want);
    drop(c);
    d.kill9();
    d.restart();
    let mut c = d.client();
    let got = by_key(&mut c, "t", "c1");
    assert_eq!(attachment_keys(&got), want, "durable on acknowledgement");
    assert_eq!(
        got.attachments.as_ref().unwrap()[0]
            .meta
            .get("channel")
            .map(String::as_str),
        Some("w-b")
    );
    // Resume and history carry them too.
    let r = c
        .resume_with(sessiond_client::ResumeRequest {
            name: "t".into(),
            attachments: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(attachment_keys(&r.checkpoint.unwrap()), want);
    let h = c
        .history_with(HistoryRequest {
            name: "t".into(),
            attachments: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(attachment_keys(&h[0]), want);

    // Bad input: an unknown checkpoint, an unknown session, an oversized attachment.
    let e = c.attach(attach("t", "nope", "w", b"x")).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e}");
    let e = c.attach(attach("ghost", "c1", "w", b"x")).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e}");
    let e = c.attach(attach("t", "c1", "big", &[0; 5000])).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::TooLarge), "{e}");
    // Retention (keep 2) takes the checkpoint and its attachments; attaching to it then fails.
    keyed(&mut c, "t", "c2", b"2", &[]).unwrap();
    keyed(&mut c, "t", "c3", b"3", &[]).unwrap();
    let e = c.attach(attach("t", "c1", "late", b"x")).unwrap_err();
    assert_eq!(
        e.kind(),
        Some(ErrorKind::NotFound),
        "attach to a removed checkpoint: {e}"
    );
    let e = c.get_with(GetRequest {
        name: "t".into(),
        key: Some("c1".into()),
        ..Default::default()
    });
    assert_eq!(e.unwrap_err().kind(), Some(ErrorKind::NotFound));
    drop(c);
    assert!(d.stop().success());
    let (ok, report) = d.check();
    assert!(ok, "{report}");
    assert!(
        report.contains("0 attachments"),
        "retention removed them: {report}"
    );
}

#[test]
fn history_filters_pages_and_reads_payloads_only_when_asked() {
    let d = Daemon::start();
    let mut c = d.client();
    detached(&mut c, "t", &[]);
    for i in 1..=10u64 {
        let source = if i % 2 == 0 { "loop" } else { "input" };
        keyed(
            &mut c,
            "t",
            &format!("k{i}"),
            format!("p{i}").as_bytes(),
            &[("source", source)],
        )
        .unwrap();
    }
    let numbers = |h: Vec<sessiond_client::CheckpointInfo>| -> Vec<u64> {
        h.iter().map(|c| c.number).collect()
    };
    let q = |f: fn(&mut HistoryRequest)| {
        let mut r = HistoryRequest {
            name: "t".into(),
            ..Default::default()
        };
        f(&mut r);
        r
    };
    let all = c.history_with(q(|_| {})).unwrap();
    assert_eq!(numbers(all.clone()), (1..=10).collect::<Vec<_>>());
    assert!(
        all.iter().all(|c| c.payload.is_none()),
        "no payloads unless asked"
    );
    let latest_loops = q(|r| {
        r.meta = meta(&[("source", "loop")]);
        r.reverse = true;
        r.limit = Some(3);
    });
    assert_eq!(numbers(c.history_with(latest_loops).unwrap()), [10, 8, 6]);
    let before_key = q(|r| {
        r.before = Some(CheckpointRef::Key("k7".into()));
        r.reverse = true;
        r.limit = Some(2);
        r.payloads = true;
    });
    let h = c.history_with(before_key).unwrap();
    assert_eq!(numbers(h.clone()), [6, 5]);
    assert_eq!(h[0].payload.as_ref().unwrap().0, b"p6");
    assert_eq!(h[0].key.as_deref(), Some("k6"));
    let between = q(|r| {
        r.after = Some(CheckpointRef::Number(3));
        r.before = Some(CheckpointRef::Number(6));
    });
    assert_eq!(numbers(c.history_with(between).unwrap()), [4, 5]);
    let e = c
        .history_with(q(|r| r.before = Some(CheckpointRef::Key("nope".into()))))
        .unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e}");

    // JSON lines: before as a key (a string) or a number, with payloads.
    let mut j = d.json();
    let r =
        j.call(json!({"op": "history", "id": 1, "name": "t", "before": "k3", "payloads": true}));
    let list = r["checkpoints"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{r}");
    assert_eq!(unb64(list[1]["payload_b64"].as_str().unwrap()), b"p2");
    let r = j.call(
        json!({"op": "history", "id": 2, "name": "t", "after": 8, "meta": {"source": "loop"}}),
    );
    assert_eq!(r["checkpoints"][0]["number"], json!(10), "{r}");
    assert_eq!(r["checkpoints"][0]["key"], json!("k10"), "{r}");
}

#[test]
fn list_pages_by_prefix_after_and_limit() {
    let d = Daemon::start();
    let mut c = d.client();
    for name in ["lg-a-1", "lg-a-2", "lg-a-3", "lg-b-1", "other"] {
        detached(&mut c, name, &[]);
    }
    let page = |c: &mut Client, after: Option<&str>| -> Vec<String> {
        c.list(ListRequest {
            prefix: Some("lg-a-".into()),
            after: after.map(Into::into),
            limit: Some(2),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect()
    };
    assert_eq!(page(&mut c, None), ["lg-a-1", "lg-a-2"]);
    assert_eq!(page(&mut c, Some("lg-a-2")), ["lg-a-3"]);
    let mut j = d.json();
    let r = j.call(json!({"op": "list", "id": 1, "prefix": "lg-", "after": "lg-a-3"}));
    let names: Vec<&str> = r["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["lg-b-1"]);
}

#[test]
fn delete_checkpoints_prune_copy_and_delete_by_meta_in_both_encodings() {
    let mut d = Daemon::start();
    let mut c = d.client();
    for (name, thread) in [("t1", "a"), ("t1-sub", "a"), ("t2", "b")] {
        detached(&mut c, name, &[("thread", thread)]);
        for i in 1..=4u64 {
            let run = if i <= 2 { "r1" } else { "r2" };
            keyed(&mut c, name, &format!("k{i}"), b"p", &[("run", run)]).unwrap();
        }
    }
    c.attach(attach("t2", "k4", "w", b"pending")).unwrap();
    // By meta, across the sessions of a thread: the checkpoints of run r1.
    let n = c
        .delete_checkpoints(DeleteCheckpointsRequest {
            target: Target {
                name: None,
                session_meta: Some(meta(&[("thread", "a")])),
            },
            meta: Some(meta(&[("run", "r1")])),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(n, 4);
    let numbers = |c: &mut Client, name: &str| -> Vec<u64> {
        c.history(name).unwrap().iter().map(|h| h.number).collect()
    };
    assert_eq!(numbers(&mut c, "t1"), [3, 4]);
    assert_eq!(numbers(&mut c, "t2"), [1, 2, 3, 4]);
    // By key and number over JSON; unknown ones are no error and count nothing.
    let mut j = d.json();
    let r = j.call(json!({"op": "delete_checkpoints", "id": 1, "name": "t2", "keys": ["k1", "nope"], "numbers": [2, 99]}));
    assert_eq!(r["deleted"], json!(2), "{r}");
    let r = j.call(json!({"op": "delete_checkpoints", "id": 2, "name": "t2"}));
    assert_eq!(
        kind(&r),
        "invalid_argument",
        "naming no checkpoint is refused: {r}"
    );
    // Numbers are never reused.
    assert_eq!(keyed(&mut c, "t2", "k5", b"p", &[]).unwrap().number, 5);

    // Copy: numbers, keys, meta and attachments, one commit; never onto an existing session.
    let copied = c.copy("t2", "t2-copy", meta(&[("thread", "c")])).unwrap();
    assert_eq!(
        (copied.checkpoint_count, copied.latest_checkpoint),
        (3, Some(5))
    );
    assert_eq!(copied.meta.get("thread").map(String::as_str), Some("c"));
    let got = by_key(&mut c, "t2-copy", "k4");
    assert_eq!(
        (got.number, attachment_keys(&got)),
        (4, vec![("w".to_string(), b"pending".to_vec())])
    );
    assert_eq!(got.meta.get("run").map(String::as_str), Some("r2"));
    let e = c.copy("t2", "t1", Meta::new()).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::AlreadyExists), "{e}");
    let r = j.call(json!({"op": "copy", "id": 3, "name": "ghost", "to": "x"}));
    assert_eq!(kind(&r), "not_found", "{r}");
    // The copy goes on numbering where its source was.
    assert_eq!(keyed(&mut c, "t2-copy", "k6", b"p", &[]).unwrap().number, 6);

    // Prune keeps the newest; by session meta too.
    let n = c
        .prune(
            Target {
                name: Some("t2".into()),
                session_meta: None,
            },
            1,
        )
        .unwrap();
    assert_eq!((n, numbers(&mut c, "t2")), (2, vec![5]));
    let r = j.call(json!({"op": "prune", "id": 4, "session_meta": {"thread": "a"}, "keep": 0}));
    assert_eq!(r["deleted"], json!(4), "{r}");
    assert!(numbers(&mut c, "t1").is_empty());

    // Delete by session meta: every matching session of the caller, nothing else.
    let r = j.call(json!({"op": "delete", "id": 5, "session_meta": {"thread": "a"}}));
    assert_eq!(r["deleted"], json!(2), "{r}");
    let r = j.call(json!({"op": "delete", "id": 6, "session_meta": {}}));
    assert_eq!(
        kind(&r),
        "invalid_argument",
        "an empty session_meta would delete everything: {r}"
    );
    assert_eq!(c.delete_matching(meta(&[("thread", "nope")])).unwrap(), 0);
    let left: Vec<String> = c
        .list(ListRequest::default())
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(left, ["t2", "t2-copy"]);

    // All of it as it was after a crash, and the state directory checks clean.
    drop(c);
    d.kill9();
    d.restart();
    let mut c = d.client();
    assert_eq!(numbers(&mut c, "t2"), [5]);
    assert_eq!(numbers(&mut c, "t2-copy"), [3, 4, 5, 6]);
    assert_eq!(attachment_keys(&by_key(&mut c, "t2-copy", "k4")).len(), 1);
    assert!(c.show("t1").is_err());
    drop(c);
    assert!(d.stop().success());
    let (ok, report) = d.check();
    assert!(ok, "{report}");
}

#[test]
fn a_batch_is_all_or_nothing_and_names_the_op_that_failed() {
    let d = Daemon::start();
    let mut c = d.client();
    let create = Request::Create(sessiond_client::CreateRequest {
        name: "b".into(),
        detached: true,
        ..Default::default()
    });
    let checkpoint = |key: &str| {
        Request::Checkpoint(sessiond_client::CheckpointRequest {
            name: "b".into(),
            payload: Payload(key.as_bytes().to_vec()),
            meta: Meta::new(),
            expect: None,
            epoch: None,
            key: Some(key.into()),
        })
    };
    let attach_req = Request::Attach(attach("b", "k1", "w", b"x"));
    // The fourth op fails (the session exists by then): nothing of the batch is applied.
    let e = c
        .batch(vec![
            create.clone(),
            checkpoint("k1"),
            attach_req.clone(),
            create.clone(),
        ])
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.batch_index()),
        (Some(ErrorKind::AlreadyExists), Some(3)),
        "{e}"
    );
    assert_eq!(c.show("b").unwrap_err().kind(), Some(ErrorKind::NotFound));
    let flushes = c.stats().unwrap().flushes;
    let replies = c
        .batch(vec![create, checkpoint("k1"), attach_req, checkpoint("k2")])
        .unwrap();
    assert_eq!(replies.len(), 4);
    assert!(matches!(&replies[3], Reply::Checkpoint(Some(cp)) if cp.number == 2));
    assert_eq!(c.stats().unwrap().flushes, flushes + 1, "one commit");
    assert_eq!(attachment_keys(&by_key(&mut c, "b", "k1")).len(), 1);
    // Ops that are not mutations cannot be in a batch.
    let e = c.batch(vec![Request::Stats]).unwrap_err();
    assert_eq!(
        (e.kind(), e.batch_index()),
        (Some(ErrorKind::InvalidArgument), Some(0))
    );

    // JSON lines: the error names the op's index; payloads may be raw bytes after the line.
    let mut j = d.json();
    let r = j.call(json!({"op": "batch", "id": 1, "ops": [
        {"op": "checkpoint", "name": "b", "payload_b64": "eA=="},
        {"op": "attach", "name": "b", "key": "missing", "attach_key": "w", "payload_b64": ""},
    ]}));
    assert_eq!(
        (kind(&r), r["error"]["index"].clone()),
        ("not_found", json!(1)),
        "{r}"
    );
    let mut line = json!({"op": "batch", "id": 2, "ops": [
        {"op": "checkpoint", "name": "b", "key": "raw", "payload_len": 3},
        {"op": "attach", "name": "b", "key": "raw", "attach_key": "w", "payload_len": 2},
    ]})
    .to_string()
    .into_bytes();
    line.extend(b"\nabcde");
    j.send_raw(&line);
    let r = j.read();
    assert_eq!(r["results"][0]["checkpoint"]["number"], json!(3), "{r}");
    assert_eq!(
        r["results"][1]["attachment"]["attach_key"],
        json!("w"),
        "{r}"
    );
    let got = by_key(&mut c, "b", "raw");
    assert_eq!(
        (
            got.payload.clone().unwrap().0,
            attachment_keys(&got)[0].1.clone()
        ),
        (b"abc".to_vec(), b"de".to_vec())
    );
}

fn batch_of(name: &str, checkpoints: usize, payload: &[u8]) -> Request {
    let mut ops = vec![Request::Create(sessiond_client::CreateRequest {
        name: name.into(),
        detached: true,
        keep: Some(0),
        ..Default::default()
    })];
    for i in 0..checkpoints {
        ops.push(Request::Checkpoint(sessiond_client::CheckpointRequest {
            name: name.into(),
            payload: Payload(payload.to_vec()),
            meta: Meta::new(),
            expect: None,
            epoch: None,
            key: Some(format!("k{i}")),
        }));
    }
    Request::Batch(sessiond_client::BatchRequest { ops })
}

/// The batch's session after a restart: all of it, or nothing.
fn whole_or_absent(c: &mut Client, name: &str, checkpoints: u64) -> bool {
    match c.show(name) {
        Ok(s) => {
            assert_eq!(
                (s.checkpoint_count, s.latest_checkpoint),
                (checkpoints, Some(checkpoints)),
                "a part of the batch {name} survived"
            );
            true
        }
        Err(e) => {
            assert_eq!(e.kind(), Some(ErrorKind::NotFound), "{e}");
            false
        }
    }
}

#[test]
fn a_batch_whose_write_was_cut_short_is_all_or_nothing_after_restart() {
    // The write of a batch cut short at any point (a crash in the middle of it): a copy of the
    // log with everything from that point on never written.
    let mut d = Daemon::start_local(&[]);
    let mut c = d.client();
    detached(&mut c, "before", &[]);
    keyed(&mut c, "before", "k", b"x", &[]).unwrap();
    drop(c);
    d.kill9();
    d.restart();
    // The segment the daemon writes to now, as it is before the batch and after.
    let segment = d.segments().pop().unwrap();
    let before = std::fs::read(&segment).unwrap();
    let mut c = d.client();
    c.call(batch_of("b", 8, &[5u8; 4096])).unwrap();
    drop(c);
    d.kill9();
    assert_eq!(
        d.segments().pop().unwrap(),
        segment,
        "the batch went to the same segment"
    );
    let after = std::fs::read(&segment).unwrap();
    let start = (0..after.len())
        .find(|&i| before.get(i) != Some(&after[i]))
        .unwrap();
    let end = (0..after.len())
        .rev()
        .find(|&i| before.get(i) != Some(&after[i]))
        .unwrap()
        + 1;
    assert!(
        end - start > 8 * 4096,
        "the batch is in the log: {start}..{end}"
    );
    let mut outcomes = Vec::new();
    for cut in [
        start + 1,
        start + 100,
        start + (end - start) / 2,
        end - 10,
        end,
    ] {
        let copy = tempfile::tempdir().unwrap();
        let state = copy.path().join("state");
        copy_dir(&d.state, &state);
        let _ = std::fs::remove_file(state.join("index"));
        let seg = state.join("log").join(segment.file_name().unwrap());
        let mut bytes = after.clone();
        bytes[cut..end].fill(0);
        std::fs::write(&seg, &bytes).unwrap();
        let cut_daemon = Daemon::start_on_state(&state);
        outcomes.push(whole_or_absent(&mut cut_daemon.client(), "b", 8));
    }
    assert_eq!(
        outcomes,
        [false, false, false, false, true],
        "only the whole write counts"
    );
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn a_batch_killed_while_it_is_written_is_all_or_nothing_after_restart() {
    // kill -9 at moments spread over the time a batch takes (measured first): each is in
    // the log whole or not at all.
    let mut d = Daemon::start();
    let payload = vec![7u8; 256 << 10];
    let started = std::time::Instant::now();
    d.client().call(batch_of("timed", 64, &payload)).unwrap();
    let takes = started.elapsed();
    for round in 0..8u32 {
        let name = format!("b{round}");
        let mut c = d.client();
        c.send(batch_of(&name, 64, &payload)).unwrap();
        // The moment is what varies (any outcome but a part of the batch is right).
        std::thread::sleep(takes * round / 6);
        d.kill9();
        d.restart();
        whole_or_absent(&mut d.client(), &name, 64);
    }
    let (ok, report) = d.check();
    assert!(ok, "{report}");
}

#[test]
fn a_detached_session_never_goes_stale_and_resuming_it_takes_ownership() {
    let d = Daemon::start();
    let owner = sessiond_tests::Owner::spawn();
    let mut c = d.client();
    let e = c
        .create(
            "x",
            CreateOptions {
                detached: true,
                owner_pid: Some(owner.pid()),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::InvalidArgument), "{e}");
    detached(&mut c, "d", &[]);
    // The creating client leaves; a detached session has nobody to outlive.
    drop(c);
    let mut c = d.client();
    assert_eq!(c.show("d").unwrap().status, sessiond_client::Status::Active);
    let r = c.resume("d", Some(owner.pid()), false).unwrap();
    assert_eq!(
        (r.session.owner_pid, r.session.epoch),
        (Some(owner.pid()), 2)
    );
}
