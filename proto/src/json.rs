//! JSON lines: one object per line, over the same serde types as the binary protocol.
//!
//! Requests are flat objects (`{"op": "checkpoint", "id": 7, "name": "job", "payload_b64": ..}`);
//! the request id may be any JSON value and is echoed back. Replies are
//! `{"id": .., "ok": true, <body>}` where the body's key names what it holds (`session`,
//! `checkpoint`, `sessions`, ...), or `{"id": .., "ok": false, "error": {"kind", "message"}}`.
//! Watch events are `{"event": "checkpointed", "name": .., ..}` lines.
//!
//! Raw payloads: instead of `payload_b64`, a request may say `"payload_len": N` and send the
//! N bytes right after its newline (a `batch`'s ops likewise, their bytes one after the other
//! in op order). A request with `"raw": true` gets its reply's payloads the same way: each
//! `payload_b64` becomes `payload_len`, and the bytes follow the reply's newline in the order
//! [`raw_payloads`] walks them (a checkpoint's payload, then its attachments'; the entries of
//! `checkpoints` and `results` in order). No base64 either way.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::types::*;

/// A JSON request as scripts write it. Unknown fields are refused so that a typo (`payload`
/// for `payload_b64`) is an error rather than an empty checkpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    op: String,
    /// Echoed back; read from the raw object before this struct is built.
    #[serde(default, rename = "id")]
    _id: Value,
    uid: Option<u32>,
    name: Option<String>,
    payload_b64: Option<Payload>,
    payload_len: Option<u64>,
    meta: Option<Meta>,
    expect: Option<u64>,
    epoch: Option<u64>,
    owner_pid: Option<u32>,
    owner_parent: Option<bool>,
    force: Option<bool>,
    number: Option<u64>,
    key: Option<String>,
    keep: Option<u32>,
    status: Option<Status>,
    error: Option<String>,
    all_users: Option<bool>,
    detached: Option<bool>,
    attachments: Option<bool>,
    attach_key: Option<String>,
    replace: Option<bool>,
    /// A checkpoint (number or key) for `history`, a session name for `list`.
    before: Option<Value>,
    after: Option<Value>,
    limit: Option<u32>,
    reverse: Option<bool>,
    payloads: Option<bool>,
    prefix: Option<String>,
    session_meta: Option<Meta>,
    numbers: Option<Vec<u64>>,
    keys: Option<Vec<String>>,
    to: Option<String>,
    ops: Option<Vec<Value>>,
    /// Reply payloads as raw bytes after the line.
    raw: Option<bool>,
}

pub const OPS: &[&str] = &[
    "ping",
    "create",
    "checkpoint",
    "resume",
    "get",
    "show",
    "list",
    "history",
    "pause",
    "complete",
    "fail",
    "cancel",
    "delete",
    "watch",
    "stats",
    "attach",
    "delete_checkpoints",
    "prune",
    "copy",
    "batch",
];

/// A decoded request line.
#[derive(Debug)]
pub struct Decoded {
    /// The request's id (`null` if it had none, or could not be read).
    pub id: Value,
    /// Its reply's payloads go as raw bytes after the line.
    pub raw: bool,
    pub request: Result<RequestFrame, WireError>,
}

/// Parses one request line with no raw payload after it. Always yields the id it could find
/// (`null` if none) so the error reply can carry it.
pub fn decode_request(line: &[u8]) -> (Value, Result<RequestFrame, WireError>) {
    let d = decode_request_with(line, &[]);
    (d.id, d.request)
}

/// The bytes of raw payload a request line announces (its `payload_len`s, a batch's ops'
/// included): what must follow the line before it can be decoded. `None` if the line does
/// not parse (it is refused as it is).
pub fn raw_len(line: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let one = |v: &Value| v.get("payload_len").and_then(Value::as_u64).unwrap_or(0);
    let ops: u64 = value
        .get("ops")
        .and_then(Value::as_array)
        .map_or(0, |ops| ops.iter().map(one).sum());
    Some(one(&value).saturating_add(ops))
}

/// Parses one request line followed by the raw payload bytes it announced.
pub fn decode_request_with(line: &[u8], raw: &[u8]) -> Decoded {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Decoded {
                id: Value::Null,
                raw: false,
                request: Err(WireError::invalid(format!("invalid JSON: {e}"))),
            }
        }
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    let raw_replies = value.get("raw").and_then(Value::as_bool).unwrap_or(false);
    let mut rest = raw;
    let request = parse(value, &mut rest, true).map(|(uid, request)| RequestFrame {
        id: 0,
        uid,
        request,
    });
    let request = request.and_then(|r| {
        if rest.is_empty() {
            Ok(r)
        } else {
            Err(WireError::invalid(format!(
                "{} raw payload bytes follow the request beyond what its payload_len fields announce",
                rest.len()
            )))
        }
    });
    Decoded {
        id,
        raw: raw_replies,
        request,
    }
}

/// One request object; `top`: not inside a batch.
fn parse(value: Value, raw: &mut &[u8], top: bool) -> Result<(Option<u32>, Request), WireError> {
    if !value.is_object() {
        return Err(WireError::invalid("a request must be a JSON object"));
    }
    let req: JsonRequest = serde_json::from_value(value)
        .map_err(|e| WireError::invalid(format!("bad request: {e}")))?;
    if !top && (req.uid.is_some() || req.raw.is_some() || !req._id.is_null()) {
        return Err(WireError::invalid(
            "a batch's ops take no id, uid or raw of their own",
        ));
    }
    let uid = req.uid;
    into_request(req, raw).map(|r| (uid, r))
}

/// A payload from `payload_b64` or the next `payload_len` raw bytes.
fn payload(r: &mut JsonRequest, raw: &mut &[u8], op: &str) -> Result<Option<Payload>, WireError> {
    match (r.payload_b64.take(), r.payload_len) {
        (Some(_), Some(_)) => Err(WireError::invalid(format!(
            "op {op:?} takes payload_b64 or payload_len, not both"
        ))),
        (Some(p), None) => Ok(Some(p)),
        (None, Some(n)) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= raw.len())
                .ok_or_else(|| {
                    WireError::invalid(format!(
                        "payload_len {n} is more than the raw bytes that followed the line"
                    ))
                })?;
            let (bytes, rest) = raw.split_at(n);
            *raw = rest;
            Ok(Some(Payload(bytes.to_vec())))
        }
        (None, None) => Ok(None),
    }
}

/// A checkpoint named by a JSON number or string.
fn checkpoint_ref(v: Value, what: &str) -> Result<CheckpointRef, WireError> {
    match v {
        Value::Number(n) => n.as_u64().map(CheckpointRef::Number).ok_or_else(|| {
            WireError::invalid(format!("{what} must be a checkpoint number or key"))
        }),
        Value::String(k) => Ok(CheckpointRef::Key(k)),
        _ => Err(WireError::invalid(format!(
            "{what} must be a checkpoint number or key"
        ))),
    }
}

fn target(r: &mut JsonRequest, op: &str) -> Result<Target, WireError> {
    let t = Target {
        name: r.name.take(),
        session_meta: r.session_meta.take(),
    };
    if t.name.is_some() == t.session_meta.is_some() {
        return Err(WireError::invalid(format!(
            "op {op:?} needs \"name\" or \"session_meta\" (one of them)"
        )));
    }
    Ok(t)
}

fn into_request(mut r: JsonRequest, raw: &mut &[u8]) -> Result<Request, WireError> {
    let op = std::mem::take(&mut r.op);
    let op = op.as_str();
    let name = |r: &mut JsonRequest| {
        r.name
            .take()
            .ok_or_else(|| WireError::invalid(format!("op {op:?} needs a \"name\"")))
    };
    let flag = |v: Option<bool>| v.unwrap_or(false);
    let given_meta = r.meta.take();
    let meta = given_meta.clone().unwrap_or_default();
    let request = match op {
        "ping" => Request::Ping,
        "stats" => Request::Stats,
        "create" => Request::Create(CreateRequest {
            name: name(&mut r)?,
            owner_pid: r.owner_pid,
            keep: r.keep,
            meta,
            detached: flag(r.detached),
            owner_parent: flag(r.owner_parent),
        }),
        "checkpoint" => Request::Checkpoint(CheckpointRequest {
            name: name(&mut r)?,
            payload: payload(&mut r, raw, op)?.ok_or_else(|| {
                WireError::invalid(
                    "op \"checkpoint\" needs \"payload_b64\" (base64; \"\" for an empty payload) or \"payload_len\"",
                )
            })?,
            meta,
            expect: r.expect,
            epoch: r.epoch,
            key: r.key.take(),
        }),
        "resume" => Request::Resume(ResumeRequest {
            name: name(&mut r)?,
            owner_pid: r.owner_pid,
            force: flag(r.force),
            attachments: flag(r.attachments),
            owner_parent: flag(r.owner_parent),
        }),
        "get" => Request::Get(GetRequest {
            name: name(&mut r)?,
            number: r.number,
            key: r.key.take(),
            attachments: flag(r.attachments),
        }),
        "show" => Request::Show(NameRequest { name: name(&mut r)? }),
        "list" => {
            let page = |v: Option<Value>, what: &str| match v {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(WireError::invalid(format!("{what} must be a session name"))),
            };
            Request::List(ListRequest {
                status: r.status,
                meta,
                all_users: flag(r.all_users),
                prefix: r.prefix.take(),
                after: page(r.after.take(), "after")?,
                limit: r.limit,
            })
        }
        "history" => Request::History(HistoryRequest {
            name: name(&mut r)?,
            meta,
            before: r.before.take().map(|v| checkpoint_ref(v, "before")).transpose()?,
            after: r.after.take().map(|v| checkpoint_ref(v, "after")).transpose()?,
            limit: r.limit,
            reverse: flag(r.reverse),
            payloads: flag(r.payloads),
            attachments: flag(r.attachments),
        }),
        "pause" => Request::Pause(NameRequest { name: name(&mut r)? }),
        "complete" => Request::Complete(NameRequest { name: name(&mut r)? }),
        "fail" => Request::Fail(FailRequest {
            name: name(&mut r)?,
            error: r.error.take(),
        }),
        "cancel" => Request::Cancel(NameRequest { name: name(&mut r)? }),
        "delete" => Request::Delete(target(&mut r, op)?),
        "watch" => Request::Watch(WatchRequest {
            name: r.name.take(),
        }),
        "attach" => {
            let checkpoint = match (r.number, r.key.take()) {
                (Some(n), None) => CheckpointRef::Number(n),
                (None, Some(k)) => CheckpointRef::Key(k),
                _ => {
                    return Err(WireError::invalid(
                        "op \"attach\" needs the checkpoint's \"number\" or \"key\" (one of them)",
                    ))
                }
            };
            Request::Attach(AttachRequest {
                name: name(&mut r)?,
                checkpoint,
                attach_key: r.attach_key.take().ok_or_else(|| {
                    WireError::invalid("op \"attach\" needs an \"attach_key\"")
                })?,
                payload: payload(&mut r, raw, op)?.ok_or_else(|| {
                    WireError::invalid("op \"attach\" needs \"payload_b64\" or \"payload_len\"")
                })?,
                meta,
                replace: flag(r.replace),
                epoch: r.epoch,
            })
        }
        "delete_checkpoints" => Request::DeleteCheckpoints(DeleteCheckpointsRequest {
            target: target(&mut r, op)?,
            numbers: r.numbers.take().unwrap_or_default(),
            keys: r.keys.take().unwrap_or_default(),
            meta: given_meta,
        }),
        "prune" => Request::Prune(PruneRequest {
            target: target(&mut r, op)?,
            keep: r
                .keep
                .ok_or_else(|| WireError::invalid("op \"prune\" needs \"keep\""))?,
        }),
        "copy" => Request::Copy(CopyRequest {
            name: name(&mut r)?,
            to: r
                .to
                .take()
                .ok_or_else(|| WireError::invalid("op \"copy\" needs \"to\""))?,
            meta,
        }),
        "batch" => {
            let ops = r
                .ops
                .take()
                .ok_or_else(|| WireError::invalid("op \"batch\" needs \"ops\""))?;
            let mut parsed = Vec::with_capacity(ops.len());
            for (i, op) in ops.into_iter().enumerate() {
                let (_, req) = parse(op, raw, false).map_err(|mut e| {
                    e.index = Some(i as u32);
                    e
                })?;
                parsed.push(req);
            }
            Request::Batch(BatchRequest { ops: parsed })
        }
        other => {
            return Err(WireError::invalid(format!(
                "unknown op {other:?}; known ops: {}",
                OPS.join(", ")
            )))
        }
    };
    Ok(request)
}

/// Encodes a request as a JSON line (for clients and tests).
pub fn encode_request(id: &Value, frame: &RequestFrame) -> Vec<u8> {
    let mut obj = request_object(&frame.request);
    obj.insert("id".into(), id.clone());
    if let Some(uid) = frame.uid {
        obj.insert("uid".into(), uid.into());
    }
    line(Value::Object(obj))
}

/// A request's fields, without id or uid.
fn request_object(request: &Request) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("op".into(), request.op().into());
    let mut put = |k: &str, v: Value| {
        if !v.is_null() && v != Value::Bool(false) {
            obj.insert(k.into(), v);
        }
    };
    let meta = |m: &Meta| {
        if m.is_empty() {
            Value::Null
        } else {
            to_value(m)
        }
    };
    let number_or_key = |c: &Option<CheckpointRef>| match c {
        None => Value::Null,
        Some(CheckpointRef::Number(n)) => (*n).into(),
        Some(CheckpointRef::Key(k)) => k.clone().into(),
    };
    let target = |put: &mut dyn FnMut(&str, Value), t: &Target| {
        put("name", to_value(&t.name));
        put("session_meta", to_value(&t.session_meta));
    };
    match request {
        Request::Ping | Request::Stats => {}
        Request::Create(r) => {
            put("name", r.name.clone().into());
            put("owner_pid", to_value(&r.owner_pid));
            put("keep", to_value(&r.keep));
            put("meta", meta(&r.meta));
            put("detached", r.detached.into());
            put("owner_parent", r.owner_parent.into());
        }
        Request::Checkpoint(r) => {
            put("name", r.name.clone().into());
            put("payload_b64", to_value(&r.payload));
            put("meta", meta(&r.meta));
            put("expect", to_value(&r.expect));
            put("epoch", to_value(&r.epoch));
            put("key", to_value(&r.key));
        }
        Request::Resume(r) => {
            put("name", r.name.clone().into());
            put("owner_pid", to_value(&r.owner_pid));
            put("force", r.force.into());
            put("attachments", r.attachments.into());
            put("owner_parent", r.owner_parent.into());
        }
        Request::Get(r) => {
            put("name", r.name.clone().into());
            put("number", to_value(&r.number));
            put("key", to_value(&r.key));
            put("attachments", r.attachments.into());
        }
        Request::List(r) => {
            put("status", to_value(&r.status));
            put("meta", meta(&r.meta));
            put("all_users", r.all_users.into());
            put("prefix", to_value(&r.prefix));
            put("after", to_value(&r.after));
            put("limit", to_value(&r.limit));
        }
        Request::History(r) => {
            put("name", r.name.clone().into());
            put("meta", meta(&r.meta));
            put("before", number_or_key(&r.before));
            put("after", number_or_key(&r.after));
            put("limit", to_value(&r.limit));
            put("reverse", r.reverse.into());
            put("payloads", r.payloads.into());
            put("attachments", r.attachments.into());
        }
        Request::Fail(r) => {
            put("name", r.name.clone().into());
            put("error", to_value(&r.error));
        }
        Request::Watch(r) => put("name", to_value(&r.name)),
        Request::Delete(t) => target(&mut put, t),
        Request::Attach(r) => {
            put("name", r.name.clone().into());
            match &r.checkpoint {
                CheckpointRef::Number(n) => put("number", (*n).into()),
                CheckpointRef::Key(k) => put("key", k.clone().into()),
            }
            put("attach_key", r.attach_key.clone().into());
            put("payload_b64", to_value(&r.payload));
            put("meta", meta(&r.meta));
            put("replace", r.replace.into());
            put("epoch", to_value(&r.epoch));
        }
        Request::DeleteCheckpoints(r) => {
            target(&mut put, &r.target);
            if !r.numbers.is_empty() {
                put("numbers", to_value(&r.numbers));
            }
            if !r.keys.is_empty() {
                put("keys", to_value(&r.keys));
            }
            put("meta", to_value(&r.meta));
        }
        Request::Prune(r) => {
            target(&mut put, &r.target);
            put("keep", r.keep.into());
        }
        Request::Copy(r) => {
            put("name", r.name.clone().into());
            put("to", r.to.clone().into());
            put("meta", meta(&r.meta));
        }
        Request::Batch(b) => {
            let ops: Vec<Value> = b
                .ops
                .iter()
                .map(|o| Value::Object(request_object(o)))
                .collect();
            put("ops", Value::Array(ops));
        }
        Request::Show(r) | Request::Pause(r) | Request::Complete(r) | Request::Cancel(r) => {
            put("name", r.name.clone().into())
        }
    }
    obj
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Our types always serialize to JSON: maps have string keys and there are no floats.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn line(v: Value) -> Vec<u8> {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    out
}

/// Where a reply's payloads go: inline as base64, or out of line as raw bytes.
struct Payloads {
    raw: Option<Vec<Vec<u8>>>,
}

impl Payloads {
    /// Puts `payload` under `obj` as `payload_b64`, or as `payload_len` with its bytes kept.
    fn put(&mut self, obj: &mut Map<String, Value>, payload: Option<&Payload>) {
        obj.remove("payload_b64");
        let Some(p) = payload else { return };
        match &mut self.raw {
            Some(raw) => {
                obj.insert("payload_len".into(), (p.0.len() as u64).into());
                raw.push(p.0.clone());
            }
            None => {
                obj.insert("payload_b64".into(), to_value(p));
            }
        }
    }
}

/// A checkpoint object without the keys that carry nothing.
fn checkpoint_value(c: &CheckpointInfo, payloads: &mut Payloads) -> Value {
    let mut shown = c.clone();
    shown.payload = None;
    let attachments = shown.attachments.take();
    let mut v = to_value(&shown);
    if let Value::Object(m) = &mut v {
        payloads.put(m, c.payload.as_ref());
        if m.get("skipped_corrupt")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            m.remove("skipped_corrupt");
        }
        if m.get("existing") == Some(&Value::Bool(false)) {
            m.remove("existing");
        }
        m.remove("attachments");
        if let Some(list) = attachments {
            let list = list
                .iter()
                .map(|a| {
                    let mut shown = a.clone();
                    shown.payload = None;
                    let mut v = to_value(&shown);
                    if let Value::Object(m) = &mut v {
                        payloads.put(m, a.payload.as_ref());
                    }
                    v
                })
                .collect();
            m.insert("attachments".into(), Value::Array(list));
        }
    }
    v
}

/// The JSON body of a reply, as the keys it adds to the response object.
pub fn reply_body(reply: &Reply) -> Map<String, Value> {
    body(reply, &mut Payloads { raw: None })
}

fn body(reply: &Reply, payloads: &mut Payloads) -> Map<String, Value> {
    let mut m = Map::new();
    let ckpt = |c: &Option<CheckpointInfo>, payloads: &mut Payloads| {
        c.as_ref()
            .map_or(Value::Null, |c| checkpoint_value(c, payloads))
    };
    match reply {
        Reply::Pong { version, protocol } => {
            m.insert("version".into(), version.clone().into());
            m.insert("protocol".into(), (*protocol).into());
        }
        Reply::Session(s) => {
            m.insert("session".into(), to_value(s));
        }
        Reply::Checkpoint(c) => {
            m.insert("checkpoint".into(), ckpt(c, payloads));
        }
        Reply::Resumed {
            session,
            checkpoint,
        } => {
            m.insert("session".into(), to_value(session));
            m.insert("checkpoint".into(), ckpt(checkpoint, payloads));
        }
        Reply::Sessions(s) => {
            m.insert("sessions".into(), to_value(s));
        }
        Reply::Checkpoints(c) => {
            let list = c.iter().map(|c| checkpoint_value(c, payloads)).collect();
            m.insert("checkpoints".into(), Value::Array(list));
        }
        Reply::Deleted(d) => {
            m.insert("deleted".into(), (*d).into());
        }
        Reply::Count(n) => {
            m.insert("deleted".into(), (*n).into());
        }
        Reply::Attached(a) => {
            let mut v = to_value(a);
            if let Value::Object(o) = &mut v {
                if o.get("existing") == Some(&Value::Bool(false)) {
                    o.remove("existing");
                }
            }
            m.insert("attachment".into(), v);
        }
        Reply::Batch(results) => {
            let list = results
                .iter()
                .map(|r| Value::Object(body(r, payloads)))
                .collect();
            m.insert("results".into(), Value::Array(list));
        }
        Reply::Stats(s) => {
            m.insert("stats".into(), to_value(s));
        }
        Reply::Watching => {
            m.insert("watching".into(), true.into());
        }
        Reply::Event(e) => return event_object(e),
    }
    m
}

fn event_object(e: &Event) -> Map<String, Value> {
    match to_value(e) {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    }
}

/// The JSON object of an error.
pub fn error_value(e: &WireError) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), e.kind.as_str().into());
    m.insert("message".into(), e.message.clone().into());
    if let Some(pid) = e.owner_pid {
        m.insert("owner_pid".into(), pid.into());
    }
    if let Some(i) = e.index {
        m.insert("index".into(), i.into());
    }
    Value::Object(m)
}

/// Encodes a reply line. Watch events are bare event objects, as the contract shows them.
pub fn encode_response(id: &Value, result: &Result<Reply, WireError>) -> Vec<u8> {
    encode(id, result, &mut Payloads { raw: None })
}

/// Encodes a reply line with its payloads as raw bytes after it.
pub fn encode_response_raw(id: &Value, result: &Result<Reply, WireError>) -> Vec<u8> {
    let mut payloads = Payloads {
        raw: Some(Vec::new()),
    };
    let mut out = encode(id, result, &mut payloads);
    for p in payloads.raw.unwrap_or_default() {
        out.extend_from_slice(&p);
    }
    out
}

fn encode(id: &Value, result: &Result<Reply, WireError>, payloads: &mut Payloads) -> Vec<u8> {
    if let Ok(Reply::Event(e)) = result {
        return line(Value::Object(event_object(e)));
    }
    let mut m = Map::new();
    m.insert("id".into(), id.clone());
    match result {
        Ok(reply) => {
            m.insert("ok".into(), true.into());
            m.extend(body(reply, payloads));
        }
        Err(e) => {
            m.insert("ok".into(), false.into());
            m.insert("error".into(), error_value(e));
        }
    }
    line(Value::Object(m))
}

/// The lengths of a raw reply's payloads, in the order their bytes follow its line: a
/// checkpoint's payload, then its attachments'; `checkpoints` and `results` entry by entry.
pub fn raw_payloads(reply: &Value) -> Vec<u64> {
    fn checkpoint(c: &Value, out: &mut Vec<u64>) {
        if let Some(n) = c.get("payload_len").and_then(Value::as_u64) {
            out.push(n);
        }
        for a in c
            .get("attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = a.get("payload_len").and_then(Value::as_u64) {
                out.push(n);
            }
        }
    }
    fn walk(body: &Value, out: &mut Vec<u64>) {
        if let Some(c) = body.get("checkpoint").filter(|c| c.is_object()) {
            checkpoint(c, out);
        }
        for c in body
            .get("checkpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            checkpoint(c, out);
        }
        for r in body
            .get("results")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(r, out);
        }
    }
    let mut out = Vec::new();
    walk(reply, &mut out);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON reply: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unrecognised JSON reply: {0}")]
    Shape(String),
}

/// Decodes a reply line (the inverse of [`encode_response`]).
pub fn decode_response(line: &[u8]) -> Result<(Value, Result<Reply, WireError>), JsonError> {
    let v: Value = serde_json::from_slice(line)?;
    let Value::Object(mut m) = v else {
        return Err(JsonError::Shape("not an object".into()));
    };
    if m.contains_key("event") {
        let e: Event = serde_json::from_value(Value::Object(m))?;
        return Ok((Value::Null, Ok(Reply::Event(e))));
    }
    let id = m.remove("id").unwrap_or(Value::Null);
    match m.remove("ok") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let err = m
                .remove("error")
                .ok_or_else(|| JsonError::Shape("error reply without \"error\"".into()))?;
            return Ok((id, Err(serde_json::from_value(err)?)));
        }
        _ => return Err(JsonError::Shape("missing \"ok\"".into())),
    }
    Ok((id, Ok(decode_body(m)?)))
}

fn decode_body(mut m: Map<String, Value>) -> Result<Reply, JsonError> {
    let ckpt =
        |v: Value| -> Result<Option<CheckpointInfo>, JsonError> { Ok(serde_json::from_value(v)?) };
    let reply = if let Some(s) = m.remove("session") {
        let session = serde_json::from_value(s)?;
        match m.remove("checkpoint") {
            Some(c) => Reply::Resumed {
                session,
                checkpoint: ckpt(c)?,
            },
            None => Reply::Session(session),
        }
    } else if let Some(c) = m.remove("checkpoint") {
        Reply::Checkpoint(ckpt(c)?)
    } else if let Some(s) = m.remove("sessions") {
        Reply::Sessions(serde_json::from_value(s)?)
    } else if let Some(Value::Array(c)) = m.remove("checkpoints") {
        Reply::Checkpoints(
            c.into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()?,
        )
    } else if let Some(d) = m.remove("deleted") {
        match d {
            Value::Bool(b) => Reply::Deleted(b),
            n => Reply::Count(serde_json::from_value(n)?),
        }
    } else if let Some(a) = m.remove("attachment") {
        Reply::Attached(serde_json::from_value(a)?)
    } else if let Some(Value::Array(results)) = m.remove("results") {
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let Value::Object(r) = r else {
                return Err(JsonError::Shape("a batch result is not an object".into()));
            };
            out.push(decode_body(r)?);
        }
        Reply::Batch(out)
    } else if let Some(s) = m.remove("stats") {
        Reply::Stats(serde_json::from_value(s)?)
    } else if m.remove("watching").is_some() {
        Reply::Watching
    } else if let (Some(version), Some(protocol)) = (m.remove("version"), m.remove("protocol")) {
        Reply::Pong {
            version: serde_json::from_value(version)?,
            protocol: serde_json::from_value(protocol)?,
        }
    } else {
        return Err(JsonError::Shape(format!(
            "no known body in {}",
            Value::Object(m)
        )));
    };
    Ok(reply)
}
