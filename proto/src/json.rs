//! JSON lines: one object per line, over the same serde types as the binary protocol.
//!
//! Requests are flat objects (`{"op": "checkpoint", "id": 7, "name": "job", "payload_b64": ..}`);
//! the request id may be any JSON value and is echoed back. Replies are
//! `{"id": .., "ok": true, <body>}` where the body's key names what it holds (`session`,
//! `checkpoint`, `sessions`, ...), or `{"id": .., "ok": false, "error": {"kind", "message"}}`.
//! Watch events are `{"event": "checkpointed", "name": .., ..}` lines.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::types::*;

/// A JSON request as scripts write it. Unknown fields are refused so that a typo (`payload`
/// for `payload_b64`) is an error rather than an empty checkpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRequest {
    op: String,
    /// Echoed back; read from the raw object before this struct is built.
    #[serde(default, rename = "id")]
    _id: Value,
    uid: Option<u32>,
    name: Option<String>,
    payload_b64: Option<Payload>,
    meta: Option<Meta>,
    expect: Option<u64>,
    epoch: Option<u64>,
    owner_pid: Option<u32>,
    force: Option<bool>,
    number: Option<u64>,
    keep: Option<u32>,
    status: Option<Status>,
    error: Option<String>,
    all_users: Option<bool>,
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
];

/// Parses one request line. Always yields the id it could find (`null` if none) so the error
/// reply can carry it.
pub fn decode_request(line: &[u8]) -> (Value, Result<RequestFrame, WireError>) {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return (
                Value::Null,
                Err(WireError::invalid(format!("invalid JSON: {e}"))),
            )
        }
    };
    let id = value.get("id").cloned().unwrap_or(Value::Null);
    if !value.is_object() {
        return (
            id,
            Err(WireError::invalid("a request must be a JSON object")),
        );
    }
    let req: JsonRequest = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return (id, Err(WireError::invalid(format!("bad request: {e}")))),
    };
    let result = into_request(req).map(|(uid, request)| RequestFrame {
        id: 0,
        uid,
        request,
    });
    (id, result)
}

fn into_request(r: JsonRequest) -> Result<(Option<u32>, Request), WireError> {
    let op = r.op.as_str();
    let name = || {
        r.name
            .clone()
            .ok_or_else(|| WireError::invalid(format!("op {op:?} needs a \"name\"")))
    };
    let meta = r.meta.clone().unwrap_or_default();
    let request = match op {
        "ping" => Request::Ping,
        "stats" => Request::Stats,
        "create" => Request::Create(CreateRequest {
            name: name()?,
            owner_pid: r.owner_pid,
            keep: r.keep,
            meta,
        }),
        "checkpoint" => Request::Checkpoint(CheckpointRequest {
            name: name()?,
            payload: r.payload_b64.clone().ok_or_else(|| {
                WireError::invalid(
                    "op \"checkpoint\" needs \"payload_b64\" (base64; \"\" for an empty payload)",
                )
            })?,
            meta,
            expect: r.expect,
            epoch: r.epoch,
        }),
        "resume" => Request::Resume(ResumeRequest {
            name: name()?,
            owner_pid: r.owner_pid,
            force: r.force.unwrap_or(false),
        }),
        "get" => Request::Get(GetRequest {
            name: name()?,
            number: r.number,
        }),
        "show" => Request::Show(NameRequest { name: name()? }),
        "list" => Request::List(ListRequest {
            status: r.status,
            meta,
            all_users: r.all_users.unwrap_or(false),
        }),
        "history" => Request::History(NameRequest { name: name()? }),
        "pause" => Request::Pause(NameRequest { name: name()? }),
        "complete" => Request::Complete(NameRequest { name: name()? }),
        "fail" => Request::Fail(FailRequest {
            name: name()?,
            error: r.error.clone(),
        }),
        "cancel" => Request::Cancel(NameRequest { name: name()? }),
        "delete" => Request::Delete(NameRequest { name: name()? }),
        "watch" => Request::Watch(WatchRequest {
            name: r.name.clone(),
        }),
        other => {
            return Err(WireError::invalid(format!(
                "unknown op {other:?}; known ops: {}",
                OPS.join(", ")
            )))
        }
    };
    Ok((r.uid, request))
}

/// Encodes a request as a JSON line (for clients and tests).
pub fn encode_request(id: &Value, frame: &RequestFrame) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("op".into(), frame.request.op().into());
    obj.insert("id".into(), id.clone());
    if let Some(uid) = frame.uid {
        obj.insert("uid".into(), uid.into());
    }
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
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
    match &frame.request {
        Request::Ping | Request::Stats => {}
        Request::Create(r) => {
            put("name", r.name.clone().into());
            put("owner_pid", to_value(&r.owner_pid));
            put("keep", to_value(&r.keep));
            put("meta", meta(&r.meta));
        }
        Request::Checkpoint(r) => {
            put("name", r.name.clone().into());
            put("payload_b64", to_value(&r.payload));
            put("meta", meta(&r.meta));
            put("expect", to_value(&r.expect));
            put("epoch", to_value(&r.epoch));
        }
        Request::Resume(r) => {
            put("name", r.name.clone().into());
            put("owner_pid", to_value(&r.owner_pid));
            if r.force {
                put("force", true.into());
            }
        }
        Request::Get(r) => {
            put("name", r.name.clone().into());
            put("number", to_value(&r.number));
        }
        Request::List(r) => {
            put("status", to_value(&r.status));
            put("meta", meta(&r.meta));
            if r.all_users {
                put("all_users", true.into());
            }
        }
        Request::Fail(r) => {
            put("name", r.name.clone().into());
            put("error", to_value(&r.error));
        }
        Request::Watch(r) => put("name", to_value(&r.name)),
        Request::Show(r)
        | Request::History(r)
        | Request::Pause(r)
        | Request::Complete(r)
        | Request::Cancel(r)
        | Request::Delete(r) => put("name", r.name.clone().into()),
    }
    line(Value::Object(obj))
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

/// A checkpoint object without the keys that carry nothing.
fn checkpoint_value(c: &CheckpointInfo) -> Value {
    let mut v = to_value(c);
    if let Value::Object(m) = &mut v {
        if m.get("payload_b64").is_some_and(Value::is_null) {
            m.remove("payload_b64");
        }
        if m.get("skipped_corrupt")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            m.remove("skipped_corrupt");
        }
    }
    v
}

/// The JSON body of a reply, as the keys it adds to the response object.
pub fn reply_body(reply: &Reply) -> Map<String, Value> {
    let mut m = Map::new();
    let ckpt = |c: &Option<CheckpointInfo>| c.as_ref().map_or(Value::Null, checkpoint_value);
    match reply {
        Reply::Pong { version, protocol } => {
            m.insert("version".into(), version.clone().into());
            m.insert("protocol".into(), (*protocol).into());
        }
        Reply::Session(s) => {
            m.insert("session".into(), to_value(s));
        }
        Reply::Checkpoint(c) => {
            m.insert("checkpoint".into(), ckpt(c));
        }
        Reply::Resumed {
            session,
            checkpoint,
        } => {
            m.insert("session".into(), to_value(session));
            m.insert("checkpoint".into(), ckpt(checkpoint));
        }
        Reply::Sessions(s) => {
            m.insert("sessions".into(), to_value(s));
        }
        Reply::Checkpoints(c) => {
            m.insert(
                "checkpoints".into(),
                Value::Array(c.iter().map(checkpoint_value).collect()),
            );
        }
        Reply::Deleted(d) => {
            m.insert("deleted".into(), (*d).into());
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
    Value::Object(m)
}

/// Encodes a reply line. Watch events are bare event objects, as the contract shows them.
pub fn encode_response(id: &Value, result: &Result<Reply, WireError>) -> Vec<u8> {
    if let Ok(Reply::Event(e)) = result {
        return line(Value::Object(event_object(e)));
    }
    let mut m = Map::new();
    m.insert("id".into(), id.clone());
    match result {
        Ok(reply) => {
            m.insert("ok".into(), true.into());
            m.extend(reply_body(reply));
        }
        Err(e) => {
            m.insert("ok".into(), false.into());
            m.insert("error".into(), error_value(e));
        }
    }
    line(Value::Object(m))
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
        Reply::Deleted(serde_json::from_value(d)?)
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
    Ok((id, Ok(reply)))
}
