//! Every limit answers with a clear error, never a crash, and the daemon goes on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::json;
use sessiond_client::{Client, Error};
use sessiond_proto::hello;
use sessiond_tests::{wait_until, Daemon};

const DEADLINE: Duration = Duration::from_secs(20);

fn read_to_end(mut s: UnixStream) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn excess_connections_are_refused_politely_and_existing_ones_keep_working() {
    let d = Daemon::start_with(&["--max-connections", "3"]);
    let mut held: Vec<Client> = (0..3).map(|_| d.client()).collect();
    // A binary client is told why, as a typed error.
    match Client::connect(&d.socket) {
        Err(Error::Unavailable(m)) => {
            assert!(m.contains("--max-connections") && m.contains('3'), "{m}")
        }
        Err(e) => panic!("expected Unavailable, got {e:?}"),
        Ok(_) => panic!("a fourth connection was accepted"),
    }
    // A script gets a JSON error line, then the connection closes.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"op\":\"ping\",\"id\":1}\n").unwrap();
    let out = read_to_end(s);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["error"]["kind"], json!("unavailable"));
    for c in &mut held {
        c.ping().unwrap();
    }
    drop(held.pop());
    assert!(
        wait_until(DEADLINE, || Client::connect(&d.socket).is_ok()),
        "a freed slot is reused"
    );
}

#[test]
fn an_idle_connection_is_closed_with_a_reason_but_a_watch_is_not() {
    let d = Daemon::start_with(&["--idle-timeout", "300ms"]);
    let mut watch = d.json();
    assert_eq!(
        watch.call(json!({"op": "watch", "id": "w"}))["watching"],
        json!(true)
    );
    let mut idle = d.json();
    idle.call(json!({"op": "ping", "id": 1}));
    // The idle one is told why and closed.
    let r = idle.read();
    assert_eq!(r["error"]["kind"], json!("unavailable"), "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--idle-timeout"),
        "{r}"
    );
    let mut rest = Vec::new();
    idle.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // The watch, idle just as long, still gets events.
    d.client().create("after-idle", Default::default()).unwrap();
    let e = watch.read();
    assert_eq!(e["event"], json!("created"), "{e}");
}

#[test]
fn a_request_that_never_completes_is_cut_off() {
    let d = Daemon::start_with(&["--request-timeout", "300ms"]);
    // JSON: half a line, then silence.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"op\":\"ping\"").unwrap();
    let out = read_to_end(s);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--request-timeout"),
        "{v}"
    );
    // Binary: a hello, then a frame header promising 100 bytes that never come.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&hello::client_hello()).unwrap();
    s.write_all(&[100, 0, 0, 0, 1, 2]).unwrap();
    let out = read_to_end(s);
    assert!(
        out.len() > hello::SERVER_HELLO_LEN,
        "an error frame follows the hello"
    );
    assert!(String::from_utf8_lossy(&out).contains("--request-timeout"));
    d.client().ping().unwrap();
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_mib_without_a_newline_is_dropped_not_buffered() {
    let d = Daemon::start_with(&["--max-checkpoint-bytes", "1024"]);
    let before = peak_rss_kib(d.pid());
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    s.write_all(b"{").unwrap();
    for _ in 0..100 {
        s.write_all(&chunk).unwrap();
    }
    s.write_all(b"\n{\"op\":\"ping\",\"id\":2}\n").unwrap();
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["kind"], json!("too_large"), "{v}");
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (v["ok"].clone(), v["id"].clone()),
        (json!(true), json!(2)),
        "the connection goes on"
    );
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "peak memory grew by {grown} KiB for a 100 MiB line"
    );
}

#[test]
fn a_pipelining_client_cannot_make_the_daemon_hold_unbounded_requests() {
    let d = Daemon::start_with(&["--max-checkpoint-bytes", "1048576", "--default-keep", "1"]);
    let mut c = d.client();
    c.create("big", Default::default()).unwrap();
    let before = peak_rss_kib(d.pid());
    // 128 MiB of checkpoints sent back to back before any reply is read.
    let writer = {
        let socket = d.socket.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket).unwrap();
            for i in 0..128u8 {
                c.send(sessiond_client::Request::Checkpoint(
                    sessiond_client::CheckpointRequest {
                        name: "big".into(),
                        payload: sessiond_client::Payload(vec![i; 1 << 20]),
                        meta: Default::default(),
                        expect: None,
                        epoch: None,
                        key: None,
                    },
                ))
                .unwrap();
            }
            (0..128)
                .map(|_| c.recv().unwrap().result.is_ok())
                .filter(|ok| *ok)
                .count()
        })
    };
    assert_eq!(writer.join().unwrap(), 128);
    let grown = peak_rss_kib(d.pid()).saturating_sub(before);
    println!("peak RSS grew by {} MiB", grown / 1024);
    assert!(
        grown < 32 * 1024,
        "peak memory grew by {grown} KiB for 128 pipelined 1 MiB checkpoints"
    );
}

#[test]
fn a_half_sent_hello_is_cut_off_too() {
    let d = Daemon::start_with(&["--request-timeout", "300ms"]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&hello::client_hello()[..3]).unwrap();
    // The daemon gives up on it: the connection ends without a reply.
    assert!(read_to_end(s).is_empty());
    d.client().ping().unwrap();
}
