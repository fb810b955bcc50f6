//! Replies as JSON lines: written straight from the reply (no intermediate JSON tree), as
//! `{"id": .., "ok": true, <body>}` or `{"id": .., "ok": false, "error": {..}}`; watch events
//! as bare event objects. With raw payloads, each `payload_b64` is a `payload_len` and the
//! bytes follow the line in the order [`raw_payloads`] walks them.

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::types::*;

/// How a reply's payloads are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Payloads {
    Base64,
    /// As `payload_len`, their bytes after the line.
    Raw,
}

/// A checkpoint, without the keys that carry nothing (`skipped_corrupt` when empty,
/// `existing` when false); `key` always (null when it has none).
struct CheckpointView<'a> {
    c: &'a CheckpointInfo,
    payloads: Payloads,
}

impl Serialize for CheckpointView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.c;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("number", &c.number)?;
        m.serialize_entry("size", &c.size)?;
        m.serialize_entry("created_at", &crate::time::Rfc3339(&c.created_at))?;
        m.serialize_entry("meta", &c.meta)?;
        if let Some(p) = &c.payload {
            payload_entry(&mut m, p, self.payloads)?;
        }
        if !c.skipped_corrupt.is_empty() {
            m.serialize_entry("skipped_corrupt", &c.skipped_corrupt)?;
        }
        m.serialize_entry("key", &c.key)?;
        if c.existing {
            m.serialize_entry("existing", &true)?;
        }
        if let Some(list) = &c.attachments {
            let views = Seq(list.iter().map(|a| AttachmentView {
                a,
                payloads: self.payloads,
            }));
            m.serialize_entry("attachments", &views)?;
        }
        m.end()
    }
}

fn payload_entry<M: SerializeMap>(m: &mut M, p: &Payload, how: Payloads) -> Result<(), M::Error> {
    match how {
        Payloads::Base64 => m.serialize_entry("payload_b64", &base64_json(p)),
        Payloads::Raw => m.serialize_entry("payload_len", &(p.0.len() as u64)),
    }
}

/// The payload as a JSON string of its base64, to be written as it is: serde_json would look
/// at every byte of it for something to escape, which base64 never has (that scan cost more
/// than the encoding).
fn base64_json(p: &Payload) -> Box<RawValue> {
    let mut text = String::with_capacity(p.0.len().div_ceil(3) * 4 + 2);
    text.push('"');
    base64_simd::STANDARD.encode_append(&p.0, &mut text);
    text.push('"');
    // SAFETY: a quote, characters of the standard base64 alphabet and `=`, a quote: one
    // well-formed JSON string, without white space around it.
    unsafe { RawValue::from_string_unchecked(text) }
}

struct AttachmentView<'a> {
    a: &'a Attachment,
    payloads: Payloads,
}

impl Serialize for AttachmentView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.a;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("attach_key", &a.attach_key)?;
        m.serialize_entry("meta", &a.meta)?;
        m.serialize_entry("size", &a.size)?;
        if let Some(p) = &a.payload {
            payload_entry(&mut m, p, self.payloads)?;
        }
        m.end()
    }
}

/// What `attach` did, `existing` only when true.
struct AttachedView<'a>(&'a AttachInfo);

impl Serialize for AttachedView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("number", &a.number)?;
        m.serialize_entry("key", &a.key)?;
        m.serialize_entry("attach_key", &a.attach_key)?;
        m.serialize_entry("size", &a.size)?;
        if a.existing {
            m.serialize_entry("existing", &true)?;
        }
        m.end()
    }
}

/// A sequence serialized from an iterator of views.
struct Seq<I>(I);

impl<I> Serialize for Seq<I>
where
    I: Iterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for v in self.0.clone() {
            seq.serialize_element(&v)?;
        }
        seq.end()
    }
}

/// The keys a reply's body adds to the response object.
fn body_entries<M: SerializeMap>(m: &mut M, reply: &Reply, how: Payloads) -> Result<(), M::Error> {
    fn view(c: &Option<CheckpointInfo>, payloads: Payloads) -> Option<CheckpointView<'_>> {
        c.as_ref().map(|c| CheckpointView { c, payloads })
    }
    match reply {
        Reply::Pong { version, protocol } => {
            m.serialize_entry("version", version)?;
            m.serialize_entry("protocol", protocol)
        }
        Reply::Session(s) => m.serialize_entry("session", s),
        Reply::Checkpoint(c) => m.serialize_entry("checkpoint", &view(c, how)),
        Reply::Resumed {
            session,
            checkpoint: c,
        } => {
            m.serialize_entry("session", session)?;
            m.serialize_entry("checkpoint", &view(c, how))
        }
        Reply::Sessions(s) => m.serialize_entry("sessions", s),
        Reply::Checkpoints(list) => {
            let views = Seq(list.iter().map(|c| CheckpointView { c, payloads: how }));
            m.serialize_entry("checkpoints", &views)
        }
        Reply::Deleted(d) => m.serialize_entry("deleted", d),
        Reply::Count(n) => m.serialize_entry("deleted", n),
        Reply::Attached(a) => m.serialize_entry("attachment", &AttachedView(a)),
        Reply::Batch(results) => {
            let views = Seq(results.iter().map(|reply| Body { reply, how }));
            m.serialize_entry("results", &views)
        }
        Reply::Stats(s) => m.serialize_entry("stats", s),
        Reply::Watching => m.serialize_entry("watching", &true),
        Reply::Event(e) => {
            for (k, v) in event_object(e) {
                m.serialize_entry(&k, &v)?;
            }
            Ok(())
        }
    }
}

/// A reply's body as an object of its own (a batch's results).
struct Body<'a> {
    reply: &'a Reply,
    how: Payloads,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        body_entries(&mut m, self.reply, self.how)?;
        m.end()
    }
}

struct ErrorView<'a>(&'a WireError);

impl Serialize for ErrorView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", e.kind.as_str())?;
        m.serialize_entry("message", &e.message)?;
        if let Some(pid) = e.owner_pid {
            m.serialize_entry("owner_pid", &pid)?;
        }
        if let Some(host) = &e.owner_host {
            m.serialize_entry("owner_host", host)?;
        }
        if let Some(i) = e.index {
            m.serialize_entry("index", &i)?;
        }
        m.end()
    }
}

struct Response<'a> {
    id: &'a Value,
    result: &'a Result<Reply, WireError>,
    how: Payloads,
}

impl Serialize for Response<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", self.id)?;
        match self.result {
            Ok(reply) => {
                m.serialize_entry("ok", &true)?;
                body_entries(&mut m, reply, self.how)?;
            }
            Err(e) => {
                m.serialize_entry("ok", &false)?;
                m.serialize_entry("error", &ErrorView(e))?;
            }
        }
        m.end()
    }
}

/// The JSON body of a reply, as the keys it adds to the response object.
pub fn reply_body(reply: &Reply) -> Map<String, Value> {
    let body = Body {
        reply,
        how: Payloads::Base64,
    };
    match serde_json::to_value(body) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn event_object(e: &Event) -> Map<String, Value> {
    match serde_json::to_value(e) {
        Ok(Value::Object(m)) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    }
}

/// The JSON object of an error.
pub fn error_value(e: &WireError) -> Value {
    serde_json::to_value(ErrorView(e)).unwrap_or(Value::Null)
}

/// Encodes a reply line. Watch events are bare event objects, as the contract shows them.
pub fn encode_response(id: &Value, result: &Result<Reply, WireError>) -> Vec<u8> {
    encode(id, result, Payloads::Base64)
}

/// Encodes a reply line with its payloads as raw bytes after it.
pub fn encode_response_raw(id: &Value, result: &Result<Reply, WireError>) -> Vec<u8> {
    let mut out = encode(id, result, Payloads::Raw);
    // In the order of [`raw_payloads`].
    if let Ok(reply) = result {
        reply.payloads(&mut |p| out.extend_from_slice(p));
    }
    out
}

fn encode(id: &Value, result: &Result<Reply, WireError>, how: Payloads) -> Vec<u8> {
    // Room for the payloads too (raw after the line, or in base64): never grown on the way.
    let payloads = result.as_ref().map_or(0, Reply::payload_bytes);
    let mut out = Vec::with_capacity(256 + payloads.div_ceil(3) * 4);
    let written = match result {
        Ok(Reply::Event(e)) => serde_json::to_writer(&mut out, &event_object(e)),
        _ => serde_json::to_writer(&mut out, &Response { id, result, how }),
    };
    if written.is_err() {
        // Our types always serialize to JSON (string keys, no floats); never a half line.
        out.clear();
        let internal = Err(WireError::internal("cannot encode the reply"));
        let _ = serde_json::to_writer(
            &mut out,
            &Response {
                id,
                result: &internal,
                how,
            },
        );
    }
    out.push(b'\n');
    out
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

/// Why a JSON-lines reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON.
    #[error("invalid JSON reply: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a reply of this protocol.
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
        Reply::Stats(Box::new(serde_json::from_value(s)?))
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
