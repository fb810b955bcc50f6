//! The same load as `checkpoint` over JSON lines, as a script would send it: each request a
//! JSON object on a line, each reply parsed whole. `--encoding json` carries payloads as
//! `payload_b64`; `--encoding raw` as raw bytes after the line (`payload_len`, and `raw`
//! replies).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::UnixStream;

use super::Op;

/// How payloads travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payloads {
    Base64,
    Raw,
}

/// A request as a typed client writes it (its payload_b64 after it: see [`request`]).
#[derive(serde::Serialize)]
struct Line<'a> {
    op: &'a str,
    id: u64,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_len: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    raw: bool,
}

/// A connection's payload, and its base64, encoded once: as redis-benchmark builds its
/// requests once, so that the one-thread load generator takes from the daemon's two cores
/// no more than it must.
struct Body {
    payload: Vec<u8>,
    b64: String,
}

impl Body {
    fn new(size: usize, how: Payloads) -> Self {
        let payload = vec![0x5a; size];
        let b64 = match how {
            Payloads::Base64 => base64::engine::general_purpose::STANDARD.encode(&payload),
            Payloads::Raw => String::new(),
        };
        Body { payload, b64 }
    }
}

/// A request line, and whether the raw payload follows it (one write with it: as one
/// `sendall` of a script). Base64 has nothing JSON escapes: it goes into the line as it is.
fn request(op: Op, name: &str, body: &Body, how: Payloads, id: u64) -> (Vec<u8>, bool) {
    let op_name = match op {
        Op::Checkpoint => "checkpoint",
        Op::Get => "get",
        Op::Resume => "resume",
    };
    let mut line = Line {
        op: op_name,
        id,
        name,
        payload_len: None,
        raw: false,
    };
    let raw_payload = op == Op::Checkpoint && how == Payloads::Raw;
    let b64 = match (op, how) {
        (Op::Checkpoint, Payloads::Base64) => Some(&body.b64),
        (Op::Checkpoint, Payloads::Raw) => {
            line.payload_len = Some(body.payload.len());
            None
        }
        (_, Payloads::Raw) => {
            line.raw = true;
            None
        }
        (_, Payloads::Base64) => None,
    };
    // Room for the raw payload too, which the caller appends.
    let raw_len = if raw_payload { body.payload.len() } else { 0 };
    let mut out = Vec::with_capacity(96 + body.b64.len() + raw_len);
    // A struct of strings and numbers always serializes.
    let _ = serde_json::to_writer(&mut out, &line);
    if let Some(b64) = b64 {
        out.pop();
        out.extend_from_slice(b",\"payload_b64\":\"");
        out.extend_from_slice(b64.as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.push(b'\n');
    (out, raw_payload)
}

/// What the client reads of a reply.
#[derive(serde::Deserialize)]
struct Reply {
    ok: bool,
    #[serde(default)]
    checkpoint: Option<Ckpt>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(serde::Deserialize)]
struct Ckpt {
    #[serde(default)]
    payload_len: Option<usize>,
    #[serde(default)]
    payload_b64: Option<String>,
}

/// Checks a reply line; returns how many raw payload bytes follow it.
fn reply(line: &[u8], op: Op, how: Payloads) -> Result<usize, String> {
    let v: Reply = serde_json::from_slice(line).map_err(|e| format!("reply: {e}"))?;
    if !v.ok {
        return Err(format!("{op:?}: {:?}", v.error));
    }
    match (op, how, v.checkpoint) {
        (Op::Checkpoint, _, _) => Ok(0),
        (_, Payloads::Raw, Some(c)) => Ok(c.payload_len.unwrap_or(0)),
        (_, Payloads::Base64, Some(c)) => {
            let b64 = c.payload_b64.ok_or("no payload")?;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("base64: {e}"))?;
            Ok(0)
        }
        (_, _, None) => Err(format!("{op:?}: no checkpoint")),
    }
}

fn setup_lines(name: &str, size: usize, how: Payloads) -> Vec<u8> {
    let mut out = serde_json::to_vec(
        &json!({"op": "create", "id": "setup", "name": name, "keep": 16, "detached": true}),
    )
    .unwrap_or_default();
    out.push(b'\n');
    let body = Body::new(size, how);
    let (line, raw) = request(Op::Checkpoint, name, &body, how, 0);
    out.extend(line);
    if raw {
        out.extend(&body.payload);
    }
    out
}

/// One blocking client per thread.
pub fn run_threads(
    socket: &Path,
    clients: usize,
    size: usize,
    seconds: f64,
    plan: &[Op],
    how: Payloads,
) -> Vec<Duration> {
    let barrier = Arc::new(Barrier::new(clients));
    let run_id = std::process::id();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (socket, barrier, plan) = (socket.to_path_buf(), barrier.clone(), plan.to_vec());
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut w = StdStream::connect(&socket).map_err(|e| format!("connect: {e}"))?;
                let mut r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
                let name = format!("lines-{run_id}-{i}");
                let sent = Body::new(size, how);
                w.write_all(&setup_lines(&name, size, how))
                    .map_err(|e| e.to_string())?;
                let mut line = Vec::new();
                for _ in 0..2 {
                    line.clear();
                    r.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
                    reply(&line, Op::Checkpoint, how)?;
                }
                let mut lat = Vec::with_capacity(100_000);
                let mut body = Vec::new();
                barrier.wait();
                let end = Instant::now() + Duration::from_secs_f64(seconds);
                let mut ops = plan.iter().cycle();
                let mut id = 0;
                while Instant::now() < end {
                    let op = *ops.next().ok_or("an empty mix")?;
                    id += 1;
                    let t = Instant::now();
                    let (mut req, raw) = request(op, &name, &sent, how, id);
                    if raw {
                        req.extend_from_slice(&sent.payload);
                    }
                    w.write_all(&req).map_err(|e| e.to_string())?;
                    line.clear();
                    r.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
                    let n = reply(&line, op, how)?;
                    body.resize(n, 0);
                    r.read_exact(&mut body).map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| match h.join() {
            Ok(Ok(lat)) => lat,
            Ok(Err(e)) => panic!("client: {e}"),
            Err(_) => panic!("client thread panicked"),
        })
        .collect()
}

/// Every client on one thread, each on its own connection.
pub fn run_async(
    socket: &Path,
    clients: usize,
    size: usize,
    seconds: f64,
    plan: &[Op],
    how: Payloads,
) -> Result<Vec<Duration>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let run_id = std::process::id();
    rt.block_on(async {
        let mut conns = Vec::with_capacity(clients);
        for i in 0..clients {
            let s = UnixStream::connect(socket)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (r, mut w) = s.into_split();
            let mut r = AsyncBufReader::new(r);
            let name = format!("lines-{run_id}-{i}");
            w.write_all(&setup_lines(&name, size, how))
                .await
                .map_err(|e| e.to_string())?;
            let mut line = Vec::new();
            for _ in 0..2 {
                line.clear();
                r.read_until(b'\n', &mut line)
                    .await
                    .map_err(|e| e.to_string())?;
                reply(&line, Op::Checkpoint, how)?;
            }
            conns.push((r, w, name));
        }
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|(mut r, mut w, name)| {
                let plan = plan.to_vec();
                tokio::spawn(async move {
                    let sent = Body::new(size, how);
                    let mut lat = Vec::with_capacity(100_000);
                    let (mut line, mut body) = (Vec::new(), Vec::new());
                    let mut ops = plan.iter().cycle();
                    let mut id = 0;
                    while Instant::now() < end {
                        let op = *ops.next().ok_or("an empty mix")?;
                        id += 1;
                        let t = Instant::now();
                        let (mut req, raw) = request(op, &name, &sent, how, id);
                        if raw {
                            req.extend_from_slice(&sent.payload);
                        }
                        w.write_all(&req).await.map_err(|e| e.to_string())?;
                        line.clear();
                        r.read_until(b'\n', &mut line)
                            .await
                            .map_err(|e| e.to_string())?;
                        let n = reply(&line, op, how)?;
                        body.resize(n, 0);
                        r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
                        lat.push(t.elapsed());
                    }
                    Ok::<_, String>(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.map_err(|e| format!("client task: {e}"))??);
        }
        Ok(all)
    })
}
