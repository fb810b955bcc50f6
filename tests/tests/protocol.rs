//! Bad requests of every kind get an error reply, and the connection goes on working.
//! Pipelined requests are answered in order.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde_json::{json, Value};
use sessiond_client::{Client, CreateRequest, ErrorKind, Meta, Request, ResponseFrame};
use sessiond_proto::{codec, frame, hello};
use sessiond_tests::ClientExt;
use sessiond_tests::{b64, unb64, Daemon, JsonConn};

fn kind(r: &Value) -> &str {
    assert_eq!(r["ok"], json!(false), "{r}");
    r["error"]["kind"].as_str().unwrap()
}

fn still_works(j: &mut JsonConn) {
    let r = j.call(json!({"op": "ping", "id": "alive"}));
    assert_eq!(
        (r["ok"].clone(), r["id"].clone()),
        (json!(true), json!("alive")),
        "{r}"
    );
}

#[test]
fn json_bad_requests_get_errors_and_the_connection_survives() {
    let d = Daemon::start_with(&["--max-checkpoint-bytes", "4096"]);
    let mut j = d.json();
    assert_eq!(
        j.call(json!({"op": "create", "id": 1, "name": "s"}))["ok"],
        json!(true)
    );
    let too_much_meta: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases: Vec<(Value, &str)> = vec![
        (json!({"op": "fly", "id": 2}), "invalid_argument"),
        (json!({"id": 3}), "invalid_argument"),
        (json!({"op": "show", "id": 4}), "invalid_argument"),
        (
            json!({"op": "show", "id": 5, "name": "../etc"}),
            "invalid_argument",
        ),
        (
            json!({"op": "show", "id": 6, "name": ""}),
            "invalid_argument",
        ),
        (
            json!({"op": "show", "id": 7, "name": "x".repeat(129)}),
            "invalid_argument",
        ),
        (
            json!({"op": "show", "id": 8, "name": "a\u{0}b"}),
            "invalid_argument",
        ),
        (json!({"op": "show", "id": 9, "name": "nope"}), "not_found"),
        (
            json!({"op": "create", "id": 10, "name": "s"}),
            "already_exists",
        ),
        (
            json!({"op": "checkpoint", "id": 11, "name": "s", "payload_b64": "%%%"}),
            "invalid_argument",
        ),
        (
            json!({"op": "checkpoint", "id": 12, "name": "s"}),
            "invalid_argument",
        ),
        (
            json!({"op": "checkpoint", "id": 13, "name": "s", "payload_b64": b64(&[0; 5000])}),
            "too_large",
        ),
        (
            json!({"op": "checkpoint", "id": 14, "name": "s", "payload_b64": "", "expect": 3}),
            "conflict",
        ),
        (
            json!({"op": "checkpoint", "id": 15, "name": "s", "payload_b64": "", "epoch": 9}),
            "fenced",
        ),
        (
            json!({"op": "checkpoint", "id": 16, "name": "nope", "payload_b64": ""}),
            "not_found",
        ),
        (
            json!({"op": "create", "id": 17, "name": "m", "meta": too_much_meta}),
            "invalid_argument",
        ),
        (
            json!({"op": "create", "id": 18, "name": "m", "meta": {"k": "v".repeat(4097)}}),
            "invalid_argument",
        ),
        (
            json!({"op": "create", "id": 19, "name": "m", "keep": -1}),
            "invalid_argument",
        ),
        (
            json!({"op": "create", "id": 20, "name": "m", "owner_pid": 2147483647}),
            "permission_denied",
        ),
        (
            json!({"op": "get", "id": 21, "name": "s", "number": 99}),
            "not_found",
        ),
        (
            json!({"op": "list", "id": 22, "status": "sleepy"}),
            "invalid_argument",
        ),
        (
            json!({"op": "show", "id": 23, "name": "s", "extra": 1}),
            "invalid_argument",
        ),
    ];
    for (req, want) in cases {
        let r = j.call(req.clone());
        assert_eq!(kind(&r), want, "{req} -> {r}");
        assert_eq!(r["id"], req["id"], "the id is echoed");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
        still_works(&mut j);
    }
    // Base64 that is not: another alphabet, or the padding left out.
    for (id, text) in [(24, "a-b_"), (25, "aGVsbG8")] {
        let r = j.call(json!({"op": "checkpoint", "id": id, "name": "s", "payload_b64": text}));
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message
                .contains("payload_b64 is not valid base64 (the standard alphabet, padded with =)"),
            "{text} -> {r}"
        );
    }
    assert_eq!(
        j.call(json!({"op": "checkpoint", "id": 26, "name": "s", "payload_b64": "aGVsbG8="}))["ok"],
        json!(true)
    );
    // Escapes in the string (some encoders write `/` as `\/`) are undone before decoding.
    j.send_raw(
        b"{\"op\": \"checkpoint\", \"id\": 27, \"name\": \"s\", \"payload_b64\": \"\\/w==\"}\n",
    );
    assert_eq!(j.read()["ok"], json!(true));
    let got = j.call(json!({"op": "get", "id": 28, "name": "s"}));
    assert_eq!(got["checkpoint"]["payload_b64"], json!("/w=="), "{got}");
    // Not JSON, not an object, binary junk, an empty line.
    for raw in [
        &b"hello\n"[..],
        b"[1,2]\n",
        b"{\"op\": \n",
        b"{\xff\xfe}\n",
        b"\n",
        b"   \n",
    ] {
        j.send_raw(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            still_works(&mut j);
            continue;
        }
        let r = j.read();
        assert_eq!(
            kind(&r),
            "invalid_argument",
            "{:?} -> {r}",
            String::from_utf8_lossy(raw)
        );
        still_works(&mut j);
    }
    // A finished session accepts no checkpoint.
    assert_eq!(
        j.call(json!({"op": "complete", "id": 30, "name": "s"}))["session"]["status"],
        json!("completed")
    );
    let r = j.call(json!({"op": "checkpoint", "id": 31, "name": "s", "payload_b64": ""}));
    assert_eq!(kind(&r), "session_closed");
    // Root may not list all users' sessions through a non-root peer; here we are root.
    let r = j.call(json!({"op": "list", "id": 32, "all_users": true}));
    assert_eq!(r["ok"], json!(true), "{r}");
}

#[test]
fn an_overlong_json_line_is_refused_without_buffering_it_all() {
    let d = Daemon::start_with(&["--max-checkpoint-bytes", "1024"]);
    let mut j = d.json();
    // ~ 8 MiB without a newline, far over the ~1 MiB line cap.
    // Its id after the payload, as a client that builds the object in order writes it: the
    // refusal still names it, so that clients matching replies by id keep working.
    let mut line = b"{\"op\":\"checkpoint\",\"name\":\"s\",\"payload_b64\":\"".to_vec();
    line.extend(std::iter::repeat_n(b'A', 8 << 20));
    line.extend(b"\",\"id\":\"req-77\"}\n");
    j.send_raw(&line);
    let r = j.read();
    assert_eq!(kind(&r), "too_large", "{r}");
    assert_eq!(r["id"], json!("req-77"), "{r}");
    // Before the payload, as a number.
    let mut line = b"{\"id\":78,\"op\":\"checkpoint\",\"name\":\"s\",\"payload_b64\":\"".to_vec();
    line.extend(std::iter::repeat_n(b'A', 4 << 20));
    line.extend(b"\"}\n");
    j.send_raw(&line);
    let r = j.read();
    assert_eq!((kind(&r), r["id"].clone()), ("too_large", json!(78)), "{r}");
    still_works(&mut j);
}

#[test]
fn json_requests_pipeline_and_replies_keep_their_order() {
    let d = Daemon::start();
    let mut j = d.json();
    let mut batch = Vec::new();
    batch.extend(
        json!({"op": "create", "id": "c", "name": "p", "keep": 0})
            .to_string()
            .bytes(),
    );
    batch.push(b'\n');
    for i in 0..200 {
        let req = json!({"op": "checkpoint", "id": i, "name": "p", "payload_b64": b64(format!("step {i}").as_bytes()), "meta": {"i": i.to_string()}});
        batch.extend(req.to_string().bytes());
        batch.push(b'\n');
    }
    batch.extend(
        json!({"op": "get", "id": "last", "name": "p"})
            .to_string()
            .bytes(),
    );
    batch.extend(b"\n");
    j.send_raw(&batch);
    assert_eq!(j.read()["id"], json!("c"));
    for i in 0..200 {
        let r = j.read();
        assert_eq!(r["id"], json!(i));
        assert_eq!(
            r["checkpoint"]["number"],
            json!(i + 1),
            "numbers follow request order"
        );
    }
    let r = j.read();
    assert_eq!(
        unb64(r["checkpoint"]["payload_b64"].as_str().unwrap()),
        b"step 199"
    );
    assert_eq!(r["checkpoint"]["meta"], json!({"i": "199"}));
}

#[test]
fn replies_written_at_once_and_after_a_commit_keep_request_order() {
    // A get or a ping is answered as soon as it is read when every earlier reply is out, a
    // checkpoint after its commit: bursts of every shape mix the two, and each get sees the
    // checkpoint sent just before it.
    let d = Daemon::start();
    let mut j = d.json();
    let r = j.call(json!({"op": "create", "id": "c", "name": "p", "keep": 0}));
    assert_eq!(r["ok"], json!(true), "{r}");
    let mut latest = 0u64;
    let mut next_id = 0u64;
    let mut seed = 7u64;
    for _ in 0..200 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (seed >> 62) as usize;
        let (mut burst, mut expect) = (Vec::new(), Vec::new());
        for k in 0..len {
            let id = next_id;
            next_id += 1;
            let req = match (seed >> (8 * k + 8)) % 3 {
                0 => {
                    latest += 1;
                    expect.push((id, "checkpoint", latest));
                    json!({"op": "checkpoint", "id": id, "name": "p", "payload_b64": b64(format!("step {latest}").as_bytes())})
                }
                1 => {
                    expect.push((id, "get", latest));
                    json!({"op": "get", "id": id, "name": "p"})
                }
                _ => {
                    expect.push((id, "ping", 0));
                    json!({"op": "ping", "id": id})
                }
            };
            burst.extend(req.to_string().bytes());
            burst.push(b'\n');
        }
        j.send_raw(&burst);
        for (id, op, n) in expect {
            let r = j.read();
            assert_eq!(r["id"], json!(id), "{op} answered out of order: {r}");
            assert_eq!(r["ok"], json!(true), "{r}");
            match op {
                "checkpoint" => assert_eq!(r["checkpoint"]["number"], json!(n), "{r}"),
                "get" if n == 0 => assert!(r["checkpoint"].is_null(), "{r}"),
                "get" => assert_eq!(
                    unb64(r["checkpoint"]["payload_b64"].as_str().unwrap()),
                    format!("step {n}").as_bytes(),
                    "a get sees the checkpoint sent before it"
                ),
                _ => assert!(r["version"].is_string(), "{r}"),
            }
        }
    }
}

#[test]
fn a_request_without_a_final_newline_is_answered_at_eof() {
    let d = Daemon::start();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(br#"{"op":"ping","id":1}"#).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let r: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["ok"], json!(true));
}

fn raw_binary(d: &Daemon) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&hello::client_hello()).unwrap();
    let mut fixed = [0u8; hello::SERVER_HELLO_LEN];
    s.read_exact(&mut fixed).unwrap();
    let h = hello::parse_server_hello(&fixed).unwrap();
    let mut msg = vec![0; h.message_len];
    s.read_exact(&mut msg).unwrap();
    assert!(h.accepted);
    s
}

fn read_frame(s: &mut UnixStream) -> ResponseFrame {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    codec::decode(&body).unwrap()
}

fn ping(s: &mut UnixStream, id: u64) {
    s.write_all(
        &frame::encode_frame(&sessiond_client::RequestFrame {
            id,
            uid: None,
            request: Request::Ping,
        })
        .unwrap(),
    )
    .unwrap();
    let r = read_frame(s);
    assert_eq!(r.id, id);
    assert!(r.result.is_ok());
}

#[test]
fn binary_bad_frames_get_errors_and_the_connection_survives() {
    let d = Daemon::start_with(&["--max-checkpoint-bytes", "1024"]);
    let mut s = raw_binary(&d);
    ping(&mut s, 1);
    // Undecodable body.
    s.write_all(&[3, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap();
    let r = read_frame(&mut s);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::InvalidArgument);
    ping(&mut s, 2);
    // Empty frame.
    s.write_all(&[0, 0, 0, 0]).unwrap();
    assert_eq!(
        read_frame(&mut s).result.unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    ping(&mut s, 3);
    // A frame far over the cap (1 KiB + 1 MiB): refused with its id, its bytes skipped.
    let big = frame::encode_frame(&sessiond_client::RequestFrame {
        id: 77,
        uid: None,
        request: Request::Checkpoint(sessiond_client::CheckpointRequest {
            name: "s".into(),
            payload: sessiond_client::Payload(vec![1; 3 << 20]),
            meta: Meta::new(),
            expect: None,
            epoch: None,
            key: None,
        }),
    })
    .unwrap();
    s.write_all(&big).unwrap();
    let r = read_frame(&mut s);
    assert_eq!(
        (r.id, r.result.unwrap_err().kind),
        (77, ErrorKind::TooLarge)
    );
    ping(&mut s, 4);
    // A payload over --max-checkpoint-bytes but within the frame cap.
    let mut c = Client::connect(&d.socket).unwrap();
    c.create_keep("s", None).unwrap();
    let e = c.put("s", vec![0; 2000]).unwrap_err();
    assert_eq!(e.kind(), Some(ErrorKind::TooLarge));
    assert!(e.to_string().contains("--max-checkpoint-bytes"), "{e}");
    assert_eq!(c.put("s", vec![0; 1024]).unwrap().number, 1);
    // A request naming another user's sessions as non-root would be refused; as root it is
    // allowed, and another uid's namespace is separate.
    let req = sessiond_client::RequestFrame {
        id: 9,
        uid: Some(4321),
        request: Request::Create(CreateRequest {
            name: "s".into(),
            meta: Meta::new(),
            ..Default::default()
        }),
    };
    s.write_all(&frame::encode_frame(&req).unwrap()).unwrap();
    let r = read_frame(&mut s);
    assert_eq!(r.result.unwrap(), read_back_other_uid(&d));
}

fn read_back_other_uid(d: &Daemon) -> sessiond_client::Reply {
    let mut j = d.json();
    let r = j.call(json!({"op": "show", "id": 1, "name": "s", "uid": 4321}));
    assert_eq!(r["session"]["uid"], json!(4321));
    let mut s: sessiond_client::SessionInfo = serde_json::from_value(r["session"].clone()).unwrap();
    // Only show says what a session takes: the rest of it is what create said.
    assert_eq!(s.logical_bytes, Some(0));
    // (Its state record on the local log; nothing on PostgreSQL, where a session is a row.)
    assert!(s.stored_bytes.is_some(), "{s:?}");
    (s.logical_bytes, s.stored_bytes) = (None, None);
    sessiond_client::Reply::Session(s)
}

#[test]
fn wrong_protocol_version_and_wrong_magic_are_refused_cleanly() {
    let d = Daemon::start();
    let e = Client::connect_with_version(&d.socket, 999)
        .err()
        .expect("refused");
    assert_eq!(e.kind(), Some(ErrorKind::UnsupportedVersion));
    assert!(e.to_string().contains("999"), "{e}");
    // Clients of older protocols (1; 2 from before keys and batches; 3 from before sessions
    // and stats said what they cost in bytes) are refused, never misread.
    for old in [1, 2, 3] {
        let e = Client::connect_with_version(&d.socket, old)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), Some(ErrorKind::UnsupportedVersion), "{e}");
        assert!(e.to_string().contains("speaks protocol 4"), "{e}");
    }
    // Not a sessiond hello at all: a clear refusal, then the connection closes.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let h = hello::parse_server_hello(out[..16].try_into().unwrap()).unwrap();
    assert!(!h.accepted);
    assert!(String::from_utf8_lossy(&out[16..]).contains("unsupported_version"));
    // The daemon is fine.
    Client::connect(&d.socket).unwrap().ping().unwrap();
}

#[test]
fn binary_requests_pipeline_in_order() {
    let d = Daemon::start();
    let mut c = d.client();
    c.create_keep("pipe", Some(0)).unwrap();
    let ids: Vec<u64> = (0..300)
        .map(|i| {
            c.send(Request::Checkpoint(sessiond_client::CheckpointRequest {
                name: "pipe".into(),
                payload: sessiond_client::Payload(vec![i as u8; 100]),
                meta: Meta::new(),
                expect: None,
                epoch: None,
                key: None,
            }))
            .unwrap()
        })
        .collect();
    for (i, id) in ids.into_iter().enumerate() {
        let r = c.recv().unwrap();
        assert_eq!(r.id, id);
        let sessiond_client::Reply::Checkpoint(Some(info)) = r.result.unwrap() else {
            panic!()
        };
        assert_eq!(info.number, i as u64 + 1);
    }
    let stats = c.stats().unwrap();
    assert_eq!(stats.checkpoints_written, 300);
    assert!(
        stats.flushes < 300,
        "pipelined checkpoints share flushes (group commit): {} flushes",
        stats.flushes
    );
}

#[test]
fn requests_sent_on_a_watch_connection_are_not_executed_unanswered() {
    let d = Daemon::start();
    let mut c = d.client();
    c.create_keep("w", None).unwrap();
    let mut j = d.json();
    // Both in one write: the daemon decodes them together, so had it executed the checkpoint
    // it would have queued it for commit before answering the watch, ahead of any later write.
    let watch = json!({"op": "watch", "id": 1, "name": "w"});
    let stray = json!({"op": "checkpoint", "id": 2, "name": "w", "payload_b64": b64(b"stray")});
    j.send_raw(format!("{watch}\n{stray}\n").as_bytes());
    assert_eq!(j.read()["watching"], json!(true));
    assert_eq!(
        c.put("w", b"from elsewhere".to_vec()).unwrap().number,
        1,
        "the stray checkpoint was executed"
    );
    let e = j.read();
    assert_eq!(
        (e["event"].clone(), e["number"].clone()),
        (json!("checkpointed"), json!(1)),
        "{e}"
    );
    assert_eq!(
        c.get("w", None).unwrap().unwrap().payload.unwrap().0,
        b"from elsewhere"
    );
}

/// Committed replies may be written by the commit thread itself; they must still come back
/// in request order among reads, refusals and replies too large for the socket buffer.
#[test]
fn binary_replies_keep_request_order_across_commits_reads_refusals_and_large_replies() {
    use sessiond_client::{CheckpointRequest, GetRequest, NameRequest, Payload, Reply};
    let d = Daemon::start();
    let mut c = d.client();
    c.create_keep("o", Some(0)).unwrap();
    let big = vec![0x42u8; 1 << 20];
    c.put("o", big.clone()).unwrap();

    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&hello::client_hello()).unwrap();
    let mut head = [0u8; hello::SERVER_HELLO_LEN];
    s.read_exact(&mut head).unwrap();
    let h = hello::parse_server_hello(&head).unwrap();
    assert!(h.accepted);
    let mut message = vec![0u8; h.message_len];
    s.read_exact(&mut message).unwrap();

    // The replies are read on their own thread while the requests go out, as a pipelining
    // client does; a 1 MiB reply cannot fit the socket buffer in one write.
    let mut r = s.try_clone().unwrap();
    // A reply that never comes fails the test instead of hanging it.
    r.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    const N: u64 = 250;
    let reader = std::thread::spawn(move || {
        let mut d = frame::FrameDecoder::new(64 << 20);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while (got.len() as u64) < N {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after {} replies", got.len());
            d.push(&buf[..n]);
            while let Some(frame::Frame::Body(b)) = d.next_frame() {
                got.push(codec::decode::<ResponseFrame>(b).unwrap());
            }
        }
        got
    });
    let mut number = 1u64;
    let mut expected = Vec::new();
    for id in 1..=N {
        let request = match id % 5 {
            0 | 1 => {
                number += 1;
                expected.push((id, Some(number)));
                Request::Checkpoint(CheckpointRequest {
                    name: "o".into(),
                    payload: Payload(vec![id as u8; 64]),
                    meta: Meta::new(),
                    expect: None,
                    epoch: None,
                    key: None,
                })
            }
            2 => {
                expected.push((id, None));
                Request::Get(GetRequest {
                    name: "o".into(),
                    number: Some(1),
                    ..Default::default()
                })
            }
            3 => {
                expected.push((id, None));
                Request::Show(NameRequest { name: "o".into() })
            }
            _ => {
                // Refused by the commit thread: the expected number is long gone.
                expected.push((id, None));
                Request::Checkpoint(CheckpointRequest {
                    name: "o".into(),
                    payload: Payload(vec![1]),
                    meta: Meta::new(),
                    expect: Some(0),
                    epoch: None,
                    key: None,
                })
            }
        };
        let frame = frame::encode_frame(&sessiond_client::RequestFrame {
            id,
            uid: None,
            request,
        })
        .unwrap();
        s.write_all(&frame).unwrap();
    }
    let got = reader.join().unwrap();
    let ids: Vec<u64> = got.iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        (1..=N).collect::<Vec<_>>(),
        "replies out of request order"
    );
    for (r, (id, number)) in got.into_iter().zip(expected) {
        match (id % 5, r.result) {
            (0 | 1, Ok(Reply::Checkpoint(Some(cp)))) => assert_eq!(Some(cp.number), number),
            (2, Ok(Reply::Checkpoint(Some(cp)))) => {
                assert_eq!(cp.payload.unwrap().0, big, "reply {id}")
            }
            (3, Ok(Reply::Session(info))) => assert_eq!(info.name, "o"),
            (4, Err(e)) => assert_eq!(e.kind, ErrorKind::Conflict, "reply {id}: {e:?}"),
            (_, other) => panic!("reply {id}: {other:?}"),
        }
    }
}
