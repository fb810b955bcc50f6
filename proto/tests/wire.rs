//! Every message in both encodings, the golden bytes of the binary wire, and hostile input.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use sessiond_proto::frame::{encode_frame, Frame, FrameDecoder, Line, LineDecoder};
use sessiond_proto::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 30, 0)
        .single()
        .unwrap()
        + chrono::Duration::microseconds(123_456)
}

fn meta() -> Meta {
    BTreeMap::from([
        ("step".to_string(), "7".to_string()),
        ("host".to_string(), "a1".to_string()),
    ])
}

fn session() -> SessionInfo {
    SessionInfo {
        name: "job-1".into(),
        status: Status::Active,
        owner_pid: Some(4242),
        epoch: 3,
        created_at: t0(),
        updated_at: t0(),
        latest_checkpoint: Some(12),
        checkpoint_count: 5,
        keep: 16,
        meta: meta(),
        error: None,
        uid: 1000,
        owner_host: Some("host-a".into()),
        logical_bytes: Some(300_000),
        stored_bytes: Some(21_000),
    }
}

fn checkpoint(payload: Option<&[u8]>, skipped: Vec<u64>) -> CheckpointInfo {
    CheckpointInfo {
        number: 12,
        size: 5,
        created_at: t0(),
        meta: meta(),
        payload: payload.map(|p| Payload(p.to_vec())),
        skipped_corrupt: skipped,
        key: Some("cp-12".into()),
        existing: false,
        attachments: None,
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let name = || "job-1".to_string();
    vec![
        ("ping", Request::Ping),
        (
            "create",
            Request::Create(CreateRequest {
                name: name(),
                owner_pid: Some(77),
                keep: Some(4),
                meta: meta(),
                detached: true,
                owner_parent: true,
            }),
        ),
        (
            "checkpoint",
            Request::Checkpoint(CheckpointRequest {
                name: name(),
                payload: Payload(vec![0, 1, 2, 255, b'{', b'\n']),
                meta: meta(),
                expect: Some(11),
                epoch: Some(3),
                key: Some("cp-12".into()),
            }),
        ),
        (
            "resume",
            Request::Resume(ResumeRequest {
                name: name(),
                owner_pid: None,
                force: true,
                attachments: true,
                owner_parent: false,
            }),
        ),
        (
            "get",
            Request::Get(GetRequest {
                name: name(),
                number: Some(9),
                key: None,
                attachments: true,
            }),
        ),
        ("show", Request::Show(NameRequest { name: name() })),
        (
            "list",
            Request::List(ListRequest {
                status: Some(Status::Stale),
                meta: meta(),
                all_users: true,
                prefix: Some("job-".into()),
                after: Some("job-0".into()),
                limit: Some(10),
            }),
        ),
        (
            "history",
            Request::History(HistoryRequest {
                name: name(),
                meta: meta(),
                before: Some(CheckpointRef::Key("cp-12".into())),
                after: Some(CheckpointRef::Number(2)),
                limit: Some(5),
                reverse: true,
                payloads: true,
                attachments: true,
            }),
        ),
        ("pause", Request::Pause(NameRequest { name: name() })),
        ("complete", Request::Complete(NameRequest { name: name() })),
        (
            "fail",
            Request::Fail(FailRequest {
                name: name(),
                error: Some("disk on fire".into()),
            }),
        ),
        ("cancel", Request::Cancel(NameRequest { name: name() })),
        (
            "delete",
            Request::Delete(Target {
                name: Some(name()),
                session_meta: None,
            }),
        ),
        ("watch", Request::Watch(WatchRequest { name: Some(name()) })),
        ("stats", Request::Stats),
        (
            "attach",
            Request::Attach(AttachRequest {
                name: name(),
                checkpoint: CheckpointRef::Key("cp-12".into()),
                attach_key: "task-1/0".into(),
                payload: Payload(vec![9, 8, 7]),
                meta: meta(),
                replace: true,
                epoch: Some(3),
            }),
        ),
        (
            "delete_checkpoints",
            Request::DeleteCheckpoints(DeleteCheckpointsRequest {
                target: Target {
                    name: None,
                    session_meta: Some(meta()),
                },
                numbers: vec![1, 2],
                keys: vec!["cp-12".into()],
                meta: Some(meta()),
            }),
        ),
        (
            "prune",
            Request::Prune(PruneRequest {
                target: Target {
                    name: Some(name()),
                    session_meta: None,
                },
                keep: 1,
            }),
        ),
        (
            "copy",
            Request::Copy(CopyRequest {
                name: name(),
                to: "job-2".into(),
                meta: meta(),
            }),
        ),
        (
            "batch",
            Request::Batch(BatchRequest {
                ops: vec![
                    Request::Create(CreateRequest {
                        name: name(),
                        detached: true,
                        ..Default::default()
                    }),
                    Request::Checkpoint(CheckpointRequest {
                        name: name(),
                        payload: Payload(b"x".to_vec()),
                        meta: Meta::new(),
                        expect: None,
                        epoch: None,
                        key: None,
                    }),
                ],
            }),
        ),
    ]
}

fn replies() -> Vec<(&'static str, Result<Reply, WireError>)> {
    let event = Event {
        kind: EventKind::Checkpointed,
        name: "job-1".into(),
        number: Some(12),
        status: None,
        epoch: Some(3),
        owner_pid: None,
        missed: None,
        at: t0(),
    };
    let stats = Stats {
        version: "0.1.0".into(),
        uptime_secs: 5,
        sessions: 2,
        sessions_by_status: BTreeMap::from([("active".into(), 2)]),
        checkpoints: 9,
        connections: 1,
        checkpoints_written: 30,
        bytes_written: 4096,
        flushes: 12,
        log_segments: 1,
        log_bytes: 5000,
        store: StoreHealth {
            degraded: true,
            failing: vec![FailingWork {
                work: "log write".into(),
                since: t0(),
                errors: 3,
                last_error: "Input/output error (os error 5)".into(),
            }],
            disk_errors: 4,
        },
        shared: Some(SharedStore {
            host_id: "host-a".into(),
            lease_held: true,
            lease_renewed_ms_ago: 120,
            live_hosts: vec!["host-a".into(), "host-b".into()],
        }),
        logical_bytes: 1_000_000,
        stored_bytes: 60_000,
        chunks: 17,
    };
    vec![
        (
            "pong",
            Ok(Reply::Pong {
                version: "0.1.0".into(),
                protocol: 1,
            }),
        ),
        ("session", Ok(Reply::Session(session()))),
        (
            "checkpoint",
            Ok(Reply::Checkpoint(Some(checkpoint(None, vec![])))),
        ),
        ("checkpoint_none", Ok(Reply::Checkpoint(None))),
        (
            "get",
            Ok(Reply::Checkpoint(Some(checkpoint(
                Some(b"hello"),
                vec![14, 13],
            )))),
        ),
        (
            "resumed",
            Ok(Reply::Resumed {
                session: session(),
                checkpoint: Some(checkpoint(Some(b"hello"), vec![])),
            }),
        ),
        ("sessions", Ok(Reply::Sessions(vec![session(), session()]))),
        (
            "checkpoints",
            Ok(Reply::Checkpoints(vec![checkpoint(None, vec![])])),
        ),
        ("deleted", Ok(Reply::Deleted(true))),
        ("stats", Ok(Reply::Stats(Box::new(stats)))),
        ("watching", Ok(Reply::Watching)),
        ("count", Ok(Reply::Count(3))),
        (
            "attached",
            Ok(Reply::Attached(AttachInfo {
                number: 12,
                key: Some("cp-12".into()),
                attach_key: "task-1/0".into(),
                size: 3,
                existing: true,
            })),
        ),
        (
            "batch",
            Ok(Reply::Batch(vec![
                Reply::Session(session()),
                Reply::Checkpoint(Some(CheckpointInfo {
                    attachments: Some(vec![Attachment {
                        attach_key: "task-1/0".into(),
                        meta: meta(),
                        size: 3,
                        payload: Some(Payload(vec![9, 8, 7])),
                    }]),
                    ..checkpoint(Some(b"hello"), vec![])
                })),
            ])),
        ),
        ("event", Ok(Reply::Event(event))),
        (
            "error",
            Err(WireError {
                kind: ErrorKind::OwnerAlive,
                message: "owner 42 is alive".into(),
                owner_pid: Some(42),
                index: Some(1),
                owner_host: Some("host-a".into()),
            }),
        ),
        (
            "error_plain",
            Err(WireError::new(ErrorKind::Fenced, "fenced")),
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Compares with the checked-in bytes; `UPDATE_GOLDEN=1` rewrites them (a versioned decision).
fn golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(format!("{name}.bin"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} missing ({e}); run with UPDATE_GOLDEN=1 once",
            path.display()
        )
    });
    assert_eq!(
        bytes,
        &want[..],
        "wire bytes of {name} changed: this breaks compatibility with existing clients"
    );
}

fn decode_one<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    let mut d = FrameDecoder::new(1 << 20);
    d.push(bytes);
    let Some(Frame::Body(body)) = d.next_frame() else {
        panic!("no frame")
    };
    codec::decode(body).unwrap()
}

#[test]
fn requests_round_trip_in_both_encodings_and_match_golden_bytes() {
    for (i, (name, request)) in requests().into_iter().enumerate() {
        let frame = RequestFrame {
            id: 40 + i as u64,
            uid: Some(1000),
            request,
        };
        let bytes = encode_frame(&frame).unwrap();
        golden(&format!("request_{name}"), &bytes);
        assert_eq!(decode_one::<RequestFrame>(&bytes), frame, "{name}");

        let line = json::encode_request(&json!(name), &frame);
        assert_eq!(line.last(), Some(&b'\n'));
        let (id, parsed) = json::decode_request(&line[..line.len() - 1]);
        assert_eq!(id, json!(name));
        assert_eq!(parsed.unwrap(), RequestFrame { id: 0, ..frame }, "{name}");
    }
}

#[test]
fn replies_round_trip_in_both_encodings_and_match_golden_bytes() {
    for (i, (name, result)) in replies().into_iter().enumerate() {
        let frame = ResponseFrame {
            id: i as u64,
            result,
        };
        let bytes = encode_frame(&frame).unwrap();
        golden(&format!("reply_{name}"), &bytes);
        assert_eq!(decode_one::<ResponseFrame>(&bytes), frame, "{name}");

        let line = json::encode_response(&json!(i), &frame.result);
        let (id, back) = json::decode_response(&line).unwrap();
        assert_eq!(back, frame.result, "{name}");
        if !matches!(frame.result, Ok(Reply::Event(_))) {
            assert_eq!(id, json!(i));
        }
    }
}

#[test]
fn json_shapes_are_the_contracts() {
    let line = json::encode_response(
        &json!("a"),
        &Ok(Reply::Checkpoint(Some(checkpoint(Some(b"hello"), vec![])))),
    );
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["id"], json!("a"));
    assert_eq!(v["checkpoint"]["payload_b64"], json!("aGVsbG8="));
    assert_eq!(
        v["checkpoint"]["created_at"],
        json!("2026-11-22T10:30:00.123456Z")
    );
    assert!(
        v["checkpoint"].get("skipped_corrupt").is_none(),
        "empty skipped list is left out"
    );

    let line = json::encode_response(
        &json!(1),
        &Ok(Reply::Checkpoint(Some(checkpoint(None, vec![3])))),
    );
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert!(v["checkpoint"].get("payload_b64").is_none());
    assert_eq!(v["checkpoint"]["skipped_corrupt"], json!([3]));

    let line = json::encode_response(&json!(null), &Err(WireError::not_found("x")));
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(
        v,
        json!({"id": null, "ok": false, "error": {"kind": "not_found", "message": "session \"x\" does not exist"}})
    );

    let line = json::encode_response(&json!(7), &Ok(Reply::Session(session())));
    let v: Value = serde_json::from_slice(&line).unwrap();
    for key in [
        "name",
        "status",
        "owner_pid",
        "epoch",
        "created_at",
        "updated_at",
        "latest_checkpoint",
        "checkpoint_count",
        "keep",
        "meta",
        "error",
    ] {
        assert!(v["session"].get(key).is_some(), "session lacks {key}");
    }
    assert_eq!(v["session"]["status"], json!("active"));

    let (_, r) = replies().into_iter().find(|(n, _)| *n == "event").unwrap();
    let v: Value = serde_json::from_slice(&json::encode_response(&json!(1), &r)).unwrap();
    assert_eq!(
        v,
        json!({"event": "checkpointed", "name": "job-1", "number": 12, "epoch": 3, "at": "2026-11-22T10:30:00.123456Z"})
    );
}

#[test]
fn scripts_can_write_minimal_requests() {
    let (id, r) =
        json::decode_request(br#"{"op":"checkpoint","id":[1,"x"],"name":"a","payload_b64":""}"#);
    assert_eq!(id, json!([1, "x"]));
    let Request::Checkpoint(c) = r.unwrap().request else {
        panic!()
    };
    assert!(c.payload.0.is_empty() && c.meta.is_empty() && c.expect.is_none());
    let (_, r) = json::decode_request(br#"{"op":"list","status":"paused","meta":{"k":"v"}}"#);
    assert!(matches!(
        r.unwrap().request,
        Request::List(ListRequest {
            status: Some(Status::Paused),
            ..
        })
    ));
    let (id, r) = json::decode_request(br#"{"op":"ping"}"#);
    assert_eq!((id, r.unwrap().request), (Value::Null, Request::Ping));
}

#[test]
fn bad_json_requests_are_errors_not_panics() {
    let cases: &[(&[u8], &str)] = &[
        (b"{", "invalid JSON"),
        (b"[1,2]", "JSON object"),
        (b"\"op\"", "JSON object"),
        (br#"{"id":3}"#, "missing field `op`"),
        (br#"{"op":"launch","id":3}"#, "unknown op"),
        (br#"{"op":"show","id":3}"#, "needs a \"name\""),
        (br#"{"op":"checkpoint","name":"a"}"#, "payload_b64"),
        (
            br#"{"op":"checkpoint","name":"a","payload_b64":"!!"}"#,
            "base64",
        ),
        (
            br#"{"op":"checkpoint","name":"a","payload":"aGk="}"#,
            "unknown field `payload`",
        ),
        (br#"{"op":"get","name":"a","number":-1}"#, "bad request"),
        (br#"{"op":"list","status":"sleeping"}"#, "bad request"),
        (
            br#"{"op":"create","name":"a","meta":{"k":1}}"#,
            "bad request",
        ),
        (b"\xff\xfe", "invalid JSON"),
    ];
    for (line, want) in cases {
        let (_, r) = json::decode_request(line);
        let e = r.unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(
            e.message.contains(want),
            "{:?}: {}",
            String::from_utf8_lossy(line),
            e.message
        );
    }
    let (id, _) = json::decode_request(br#"{"op":"nope","id":"keep-me"}"#);
    assert_eq!(id, json!("keep-me"), "the id survives an error");
}

#[test]
fn frames_split_joined_empty_oversized_and_truncated() {
    let a = encode_frame(&RequestFrame {
        id: 1,
        uid: None,
        request: Request::Ping,
    })
    .unwrap();
    let b = encode_frame(&RequestFrame {
        id: 2,
        uid: None,
        request: Request::Stats,
    })
    .unwrap();

    // Split across reads, byte by byte.
    let mut d = FrameDecoder::new(1024);
    for (i, byte) in a.iter().enumerate() {
        if i + 1 < a.len() {
            d.push(&[*byte]);
            assert_eq!(d.next_frame(), None);
        } else {
            d.push(&[*byte]);
        }
    }
    assert!(matches!(d.next_frame(), Some(Frame::Body(_))));
    assert!(d.finish().is_ok());

    // Two in one read.
    let mut d = FrameDecoder::new(1024);
    d.push(&[a.clone(), b.clone()].concat());
    let Some(Frame::Body(x)) = d.next_frame() else {
        panic!()
    };
    assert_eq!(codec::decode::<RequestFrame>(x).unwrap().id, 1);
    let Some(Frame::Body(y)) = d.next_frame() else {
        panic!()
    };
    assert_eq!(codec::decode::<RequestFrame>(y).unwrap().id, 2);
    assert_eq!(d.next_frame(), None);

    // Empty frame: a body of zero bytes, which is not a valid message.
    let mut d = FrameDecoder::new(1024);
    d.push(&[0, 0, 0, 0]);
    assert_eq!(d.next_frame(), Some(Frame::Body(&[])));
    assert!(codec::decode::<RequestFrame>(&[]).is_err());

    // Oversized: reported once with its id, its bytes dropped as they come, next frame fine.
    let big = encode_frame(&RequestFrame {
        id: 99,
        uid: None,
        request: Request::Checkpoint(CheckpointRequest {
            name: "a".into(),
            payload: Payload(vec![7; 5000]),
            meta: Meta::new(),
            expect: None,
            epoch: None,
            key: None,
        }),
    })
    .unwrap();
    let mut d = FrameDecoder::new(1024);
    d.push(&big[..100]);
    assert_eq!(
        d.next_frame(),
        Some(Frame::TooLarge {
            len: (big.len() - 4) as u64,
            id: Some(99)
        })
    );
    assert!(d.buffered() < 100, "oversized bytes are not kept");
    for chunk in big[100..].chunks(333) {
        d.push(chunk);
        assert_eq!(d.next_frame(), None);
        assert_eq!(d.buffered(), 0);
    }
    d.push(&a);
    assert!(matches!(d.next_frame(), Some(Frame::Body(_))));

    // A declared length of 4 GiB is refused from the header alone.
    let mut d = FrameDecoder::new(1 << 20);
    d.push(&[0xff, 0xff, 0xff, 0xff, 1]);
    assert!(matches!(
        d.next_frame(),
        Some(Frame::TooLarge {
            len: 0xffff_ffff,
            ..
        })
    ));

    // EOF mid-frame.
    let mut d = FrameDecoder::new(1024);
    d.push(&a[..a.len() - 1]);
    assert_eq!(d.next_frame(), None);
    assert!(d.finish().is_err());
}

#[test]
fn hostile_bodies_fail_to_decode_without_allocating() {
    // A checkpoint whose payload claims 2^44 bytes: varint 253 = u64 length follows.
    let mut body = vec![1u8, 0, 2, 1, b'a'];
    body.push(253);
    body.extend_from_slice(&(1u64 << 44).to_le_bytes());
    assert!(codec::decode::<RequestFrame>(&body).is_err());
    // A string that claims 2^44 bytes.
    let mut body = vec![1u8, 0, 5];
    body.push(253);
    body.extend_from_slice(&(1u64 << 44).to_le_bytes());
    assert!(codec::decode::<RequestFrame>(&body).is_err());
    // A list that claims 2^60 sessions.
    let mut body = vec![1u8, 0, 5];
    body.push(253);
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(codec::decode::<ResponseFrame>(&body).is_err());
    // Garbage of every short length, and an unknown variant.
    for len in 0..64usize {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = codec::decode::<RequestFrame>(&junk);
        let _ = codec::decode::<ResponseFrame>(&junk);
    }
    assert!(codec::decode::<RequestFrame>(&[1, 0, 200]).is_err());
    // Trailing bytes after a valid message are refused.
    let mut ok = codec::encode(&RequestFrame {
        id: 1,
        uid: None,
        request: Request::Ping,
    })
    .unwrap();
    ok.push(0);
    assert!(codec::decode::<RequestFrame>(&ok).is_err());
}

#[test]
fn hello_refuses_bad_magic_and_reports_versions() {
    assert_eq!(
        hello::parse_client_hello(&hello::client_hello()),
        Ok(PROTOCOL_VERSION)
    );
    assert_eq!(
        hello::parse_client_hello(&hello::client_hello_for(9)),
        Ok(9)
    );
    assert!(matches!(
        hello::parse_client_hello(b"GET / HT"),
        Err(hello::HelloError::BadMagic(_))
    ));
    assert_ne!(hello::MAGIC[0], b'{', "the magic must not look like JSON");

    let ok = hello::server_hello(true, "sessiond 0.1.0");
    let h = hello::parse_server_hello(ok[..16].try_into().unwrap()).unwrap();
    assert!(h.accepted && h.version == PROTOCOL_VERSION && h.message_len == 14);
    let no = hello::server_hello(false, "unsupported_version: speak 1");
    let h = hello::parse_server_hello(no[..16].try_into().unwrap()).unwrap();
    assert!(!h.accepted);
    let mut evil = ok.clone();
    evil[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(hello::parse_server_hello(evil[..16].try_into().unwrap()).is_err());
    golden("hello_client", &hello::client_hello());
}

#[test]
fn lines_split_long_and_unterminated() {
    let mut d = LineDecoder::new(10);
    d.push(b"{\"a\":1}\r\n{\"b\"");
    assert_eq!(d.next_line(), Some(Line::Text(b"{\"a\":1}")));
    assert_eq!(d.next_line(), None);
    d.push(b":2}\n");
    assert_eq!(d.next_line(), Some(Line::Text(b"{\"b\":2}")));

    // Too long: dropped as it arrives without buffering, reported once its newline has come,
    // then fine.
    d.push(b"0123456789abcdef");
    assert_eq!(d.next_line(), None);
    for _ in 0..100 {
        d.push(b"xxxxxxxxxxxxxxxxxxxx");
        assert_eq!(d.next_line(), None);
        assert!(d.buffered() <= 20);
    }
    d.push(b"yy\n{}\n");
    assert_eq!(d.next_line(), Some(Line::TooLong { id: None }));
    assert_eq!(d.next_line(), Some(Line::Text(b"{}")));

    // A long line that arrives whole.
    d.push(b"0123456789abcdef\n{}\n");
    assert_eq!(d.next_line(), Some(Line::TooLong { id: None }));
    assert_eq!(d.next_line(), Some(Line::Text(b"{}")));

    // The id of a line too long to keep is read on the way, wherever it is in the line.
    let mut d = LineDecoder::new(40);
    d.push(br#"{"op":"checkpoint","payload_b64":""#);
    d.push(&[b'A'; 500]);
    d.push(br#"","meta":{"id":"not this"},"id":{"n":[1,"a,}"]} }"#);
    d.push(b"\n");
    assert_eq!(
        d.next_line(),
        Some(Line::TooLong {
            id: Some(br#"{"n":[1,"a,}"]}"#.to_vec())
        })
    );
    d.push(br#"{"id": 7, "payload_b64": ""#);
    d.push(&[b'A'; 500]);
    d.push(b"\"}\n");
    assert_eq!(
        d.next_line(),
        Some(Line::TooLong {
            id: Some(b"7".to_vec())
        })
    );

    d.push(b"{\"op\":1}");
    assert_eq!(d.next_line(), None);
    assert_eq!(d.finish(), Some(&b"{\"op\":1}"[..]));
}

#[test]
fn raw_payloads_follow_their_lines_in_both_directions() {
    // A request: its payload after the line, a batch's ops' one after the other.
    let line = br#"{"op":"batch","id":5,"raw":true,"ops":[{"op":"checkpoint","name":"a","payload_len":3},{"op":"attach","name":"a","key":"k","attach_key":"t/0","payload_len":2}]}"#;
    assert_eq!(json::raw_len(line), Some(5));
    let d = json::decode_request_with(line, b"abcde");
    assert!(d.raw);
    assert_eq!(d.id, json!(5));
    let Request::Batch(b) = d.request.unwrap().request else {
        panic!()
    };
    let Request::Checkpoint(c) = &b.ops[0] else {
        panic!()
    };
    assert_eq!(c.payload.0, b"abc");
    let Request::Attach(a) = &b.ops[1] else {
        panic!()
    };
    assert_eq!(a.payload.0, b"de");
    // Bytes missing or left over are errors, never misread.
    let d = json::decode_request_with(line, b"abcd");
    assert!(d.request.is_err());
    let d = json::decode_request_with(line, b"abcdef");
    assert!(d.request.unwrap_err().message.contains("beyond"));

    // A reply: payload_len in place of payload_b64, the bytes after the line, walked in order.
    let cp = CheckpointInfo {
        attachments: Some(vec![Attachment {
            attach_key: "t/0".into(),
            meta: Meta::new(),
            size: 2,
            payload: Some(Payload(b"de".to_vec())),
        }]),
        ..checkpoint(Some(b"abc"), vec![])
    };
    let result = Ok(Reply::Checkpoints(vec![cp.clone(), cp]));
    let bytes = json::encode_response_raw(&json!(1), &result);
    let end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let v: Value = serde_json::from_slice(&bytes[..end]).unwrap();
    assert!(v["checkpoints"][0].get("payload_b64").is_none());
    assert_eq!(json::raw_payloads(&v), vec![3, 2, 3, 2]);
    assert_eq!(&bytes[end + 1..], b"abcdeabcde");
}
