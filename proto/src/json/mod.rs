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

mod reply;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use reply::{
    decode_response, encode_response, encode_response_raw, error_value, raw_payloads, reply_body,
    JsonError,
};

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

/// Every op a JSON-lines request may name.
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
    /// The request, or why it is not one (answered with that error and the line's `id`).
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
/// not parse (it is refused as it is). Reads only those fields.
pub fn raw_len(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct Lens {
        payload_len: Option<u64>,
        ops: Option<Vec<OpLen>>,
    }
    #[derive(Deserialize)]
    struct OpLen {
        payload_len: Option<u64>,
    }
    let lens: Lens = serde_json::from_slice(line).ok()?;
    let ops = lens.ops.unwrap_or_default();
    let ops: u64 = ops.iter().map(|o| o.payload_len.unwrap_or(0)).sum();
    Some(lens.payload_len.unwrap_or(0).saturating_add(ops))
}

/// Parses one request line followed by the raw payload bytes it announced.
pub fn decode_request_with(line: &[u8], raw: &[u8]) -> Decoded {
    // Straight into the request's fields; only a line that does not fit them is read again,
    // for its id and the right words about what is wrong with it.
    let req: JsonRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(typed) => {
            let (id, why) = match serde_json::from_slice::<Value>(line) {
                Err(e) => (Value::Null, format!("invalid JSON: {e}")),
                Ok(v) if !v.is_object() => (Value::Null, "a request must be a JSON object".into()),
                Ok(v) => (
                    v.get("id").cloned().unwrap_or(Value::Null),
                    format!("bad request: {typed}"),
                ),
            };
            let raw = false;
            let request = Err(WireError::invalid(why));
            return Decoded { id, raw, request };
        }
    };
    let id = req._id.clone();
    let raw_replies = req.raw.unwrap_or(false);
    let mut rest = raw;
    let uid = req.uid;
    let request = into_request(req, &mut rest).map(|request| RequestFrame {
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

/// One op of a batch.
fn parse_op(value: Value, raw: &mut &[u8]) -> Result<Request, WireError> {
    if !value.is_object() {
        return Err(WireError::invalid("a request must be a JSON object"));
    }
    let req: JsonRequest = serde_json::from_value(value)
        .map_err(|e| WireError::invalid(format!("bad request: {e}")))?;
    if req.uid.is_some() || req.raw.is_some() || !req._id.is_null() {
        return Err(WireError::invalid(
            "a batch's ops take no id, uid or raw of their own",
        ));
    }
    into_request(req, raw)
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
                let req = parse_op(op, raw).map_err(|mut e| {
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
