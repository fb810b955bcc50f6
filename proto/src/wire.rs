//! One connection's bytes, whichever encoding it speaks: the first byte chooses (`{` is
//! JSON lines, anything else the binary protocol's hello, then frames). A server hands the
//! connection's first bytes to [`open`], then reads into [`Requests::read_buffer`], takes
//! requests from [`Requests::next_request`] and writes each reply as [`encode_reply`] makes
//! it, never matching on the encoding itself.

use std::borrow::Cow;

use serde_json::Value;

use crate::frame::{self, Frame, FrameDecoder, Line, LineDecoder};
use crate::{codec, hello, json};
use crate::{ErrorKind, Reply, RequestFrame, ResponseFrame, WireError, PROTOCOL_VERSION, VERSION};

/// The byte that starts a JSON-lines connection; no binary hello starts with it.
pub const JSON_START: u8 = b'{';

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Length-prefixed bincode frames after a hello.
    Binary,
    /// JSON lines (the connection's first byte is `{`).
    Json,
}

/// A request's id as its client gave it, echoed on the reply (and, for JSON lines, whether
/// the reply's payloads go raw after its line).
#[derive(Debug, Clone, PartialEq)]
pub enum RequestId {
    /// A binary frame's id.
    Binary(u64),
    /// A JSON line's `id` (any JSON value), and whether its reply's payloads go raw.
    Json {
        /// The `id` as given.
        id: Value,
        /// `"raw": true` was asked for.
        raw: bool,
    },
}

impl RequestId {
    /// The id of a reply to no request in particular (a timeout, a refusal).
    pub fn none(encoding: Encoding) -> RequestId {
        match encoding {
            Encoding::Binary => RequestId::Binary(0),
            Encoding::Json => RequestId::Json {
                id: Value::Null,
                raw: false,
            },
        }
    }
}

/// Bounds on what one request may take on the wire.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest binary frame.
    pub max_frame_bytes: usize,
    /// Longest JSON line (raw payload bytes after it counted apart).
    pub max_line_bytes: usize,
}

/// What a connection's first bytes say.
pub enum Opening {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// Send `reply` (empty for JSON lines, which has no hello), then serve `requests`, or, if
    /// there are none (an unsupported version or not a client of ours), close.
    Speak {
        /// The server hello to send (empty for JSON lines).
        reply: Vec<u8>,
        /// The connection's requests from now on (`None`: close after the reply).
        requests: Option<Requests>,
    },
}

/// Reads the start of a connection: the encoding, and for binary the hello.
pub fn open(start: &[u8], limits: Limits) -> Opening {
    match start.first() {
        None => Opening::NeedMore,
        Some(&JSON_START) => {
            let mut lines = LineDecoder::new(limits.max_line_bytes);
            lines.push(start);
            Opening::Speak {
                reply: Vec::new(),
                requests: Some(Requests::Json(Box::new(JsonRequests {
                    lines,
                    awaiting: None,
                    max_raw: limits.max_frame_bytes,
                }))),
            }
        }
        Some(_) if start.len() < hello::CLIENT_HELLO_LEN => Opening::NeedMore,
        Some(_) => {
            let mut hello_bytes = [0u8; hello::CLIENT_HELLO_LEN];
            hello_bytes.copy_from_slice(&start[..hello::CLIENT_HELLO_LEN]);
            let refusal = match hello::parse_client_hello(&hello_bytes) {
                Ok(PROTOCOL_VERSION) => None,
                Ok(v) => Some(format!(
                    "unsupported_version: this daemon (sessiond {VERSION}) speaks protocol {PROTOCOL_VERSION}, the client speaks {v}"
                )),
                Err(e) => Some(format!(
                    "unsupported_version: {e}; send a JSON object or the sessiond hello"
                )),
            };
            match refusal {
                Some(message) => Opening::Speak {
                    reply: hello::server_hello(false, &message),
                    requests: None,
                },
                None => {
                    let mut frames = FrameDecoder::new(limits.max_frame_bytes);
                    frames.push(&start[hello::CLIENT_HELLO_LEN..]);
                    Opening::Speak {
                        reply: hello::server_hello(true, &format!("sessiond {VERSION}")),
                        requests: Some(Requests::Binary(frames)),
                    }
                }
            }
        }
    }
}

/// What to send a client that is turned away before it is served (too many connections), in
/// its own encoding as its first bytes show it.
pub fn refusal(start: &[u8], error: WireError) -> Option<Vec<u8>> {
    match start.first()? {
        &JSON_START => Some(json::encode_response(&Value::Null, &Err(error))),
        _ => Some(hello::server_hello(
            false,
            &format!("{}: {}", error.kind, error.message),
        )),
    }
}

/// A connection's requests as their bytes arrive.
pub enum Requests {
    /// Binary frames.
    Binary(FrameDecoder),
    /// Boxed: it holds a request awaiting its raw bytes.
    Json(Box<JsonRequests>),
}

/// JSON lines, each maybe followed by the raw payload bytes it announces.
pub struct JsonRequests {
    lines: LineDecoder,
    /// A line whose raw payload bytes have not all arrived: the line, and their number.
    awaiting: Option<(Vec<u8>, usize)>,
    /// The most raw bytes one request may announce.
    max_raw: usize,
}

/// The next request of a connection: its wire length, to be decoded once the server is ready
/// to hold it.
pub enum Next<'a> {
    /// A request's bytes, whole.
    Request(Pending<'a>),
    /// A request that could not be taken (too large: dropped as it arrives).
    Refused(RequestId, WireError),
}

/// A whole request's bytes, not decoded yet.
pub struct Pending<'a> {
    bytes: Cow<'a, [u8]>,
    /// Raw payload bytes after a JSON line.
    raw: &'a [u8],
    encoding: Encoding,
}

impl Pending<'_> {
    /// Bytes the request takes on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.raw.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The request, with its id (a request that does not decode is answered with the error).
    pub fn decode(self) -> (RequestId, Result<RequestFrame, WireError>) {
        match self.encoding {
            Encoding::Binary => match codec::decode::<RequestFrame>(&self.bytes) {
                Ok(req) => (RequestId::Binary(req.id), Ok(req)),
                Err(e) => (
                    RequestId::Binary(0),
                    Err(WireError::invalid(format!(
                        "undecodable request frame: {e}"
                    ))),
                ),
            },
            Encoding::Json => {
                let d = json::decode_request_with(&self.bytes, self.raw);
                (
                    RequestId::Json {
                        id: d.id,
                        raw: d.raw,
                    },
                    d.request,
                )
            }
        }
    }
}

impl Requests {
    /// Which protocol they come in.
    pub fn encoding(&self) -> Encoding {
        match self {
            Requests::Binary(_) => Encoding::Binary,
            Requests::Json(_) => Encoding::Json,
        }
    }

    /// The buffer to read the peer's next bytes into, after what is buffered, with room for
    /// `reserve` more; then [`Requests::appended`] with the length it had before.
    pub fn read_buffer(&mut self, reserve: usize) -> &mut Vec<u8> {
        match self {
            Requests::Binary(d) => d.read_buffer(reserve),
            Requests::Json(d) => d.lines.read_buffer(reserve),
        }
    }

    /// Accounts for the bytes read into [`Requests::read_buffer`] (its length before was
    /// `from`).
    pub fn appended(&mut self, from: usize) {
        match self {
            Requests::Binary(d) => d.appended(from),
            Requests::Json(d) => d.lines.appended(from),
        }
    }

    /// Whether a request has begun and not ended.
    pub fn in_progress(&self) -> bool {
        match self {
            Requests::Binary(d) => d.in_progress(),
            Requests::Json(d) => d.awaiting.is_some() || d.lines.in_progress(),
        }
    }

    /// The next whole request buffered, if any (blank JSON lines are skipped).
    pub fn next_request(&mut self) -> Option<Next<'_>> {
        match self {
            Requests::Binary(d) => {
                let max = d.max();
                match d.next_frame()? {
                    Frame::TooLarge { len, id } => Some(Next::Refused(
                        RequestId::Binary(id.unwrap_or(0)),
                        WireError::new(
                            ErrorKind::TooLarge,
                            format!("request frame of {len} bytes exceeds the limit of {max} bytes (--max-checkpoint-bytes plus 1 MiB)"),
                        ),
                    )),
                    Frame::Body(bytes) => Some(Next::Request(Pending {
                        bytes: bytes.into(),
                        raw: &[],
                        encoding: Encoding::Binary,
                    })),
                }
            }
            Requests::Json(d) => d.next_request(),
        }
    }

    /// Drops every request buffered (a watching connection carries events only).
    pub fn discard_all(&mut self) {
        while self.next_request().is_some() {}
    }

    /// At the end of the peer's stream: a last JSON line without its newline, if any; an
    /// error if the stream ended in the middle of a request.
    pub fn finish(&mut self) -> Result<Option<Pending<'_>>, frame::FrameError> {
        match self {
            Requests::Binary(d) => d.finish().map(|()| None),
            Requests::Json(d) if d.awaiting.is_some() => Err(frame::FrameError::Truncated {
                buffered: d.lines.buffered(),
            }),
            Requests::Json(d) => Ok(d.lines.finish().map(|bytes| Pending {
                bytes: bytes.into(),
                raw: &[],
                encoding: Encoding::Json,
            })),
        }
    }
}

impl JsonRequests {
    fn next_request(&mut self) -> Option<Next<'_>> {
        if self.awaiting.is_none() {
            let max = self.lines.max();
            // Only a line that says so is parsed here (a quick look, then the real parse).
            let (raw, id) = match self.lines.next_nonblank_line()? {
                Line::TooLong { id } => (None, id),
                Line::Text(line) => (Some(contains(line, b"\"payload_len\"")), None),
            };
            if raw == Some(false) {
                // Nothing follows it: decoded where it lies, not copied.
                return Some(Next::Request(Pending {
                    bytes: self.lines.last_text().into(),
                    raw: &[],
                    encoding: Encoding::Json,
                }));
            }
            let Some(line) = raw.map(|_| self.lines.last_text().to_vec()) else {
                let id = id
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or(Value::Null);
                return Some(Next::Refused(
                    RequestId::Json { id, raw: false },
                    WireError::new(
                        ErrorKind::TooLarge,
                        format!("request line exceeds the limit of {max} bytes (--max-checkpoint-bytes as base64 plus 1 MiB)"),
                    ),
                ));
            };
            let announced = json::raw_len(&line).unwrap_or(0);
            if announced > self.max_raw as u64 {
                let id = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                self.lines.skip(announced);
                let max = self.max_raw;
                return Some(Next::Refused(
                    RequestId::Json { id, raw: false },
                    WireError::new(
                        ErrorKind::TooLarge,
                        format!("a request of {announced} raw payload bytes exceeds the limit of {max} bytes (--max-checkpoint-bytes plus 1 MiB)"),
                    ),
                ));
            }
            self.awaiting = Some((line, announced as usize));
        }
        let need = self.awaiting.as_ref().map_or(0, |(_, n)| *n);
        if self.lines.buffered() < need {
            return None;
        }
        let (line, _) = self.awaiting.take()?;
        let raw = self.lines.take(need);
        Some(Next::Request(Pending {
            bytes: line.into(),
            raw,
            encoding: Encoding::Json,
        }))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// A reply in the encoding of the request it answers. A reply that cannot be encoded (it
/// never happens with these types) is answered as an internal error.
pub fn encode_reply(id: &RequestId, result: Result<Reply, WireError>) -> Vec<u8> {
    encode_reply_ref(id, &result)
}

/// [`encode_reply`] of a borrowed result (what the commit thread writes, then hands on).
pub fn encode_reply_ref(id: &RequestId, result: &Result<Reply, WireError>) -> Vec<u8> {
    /// Encodes as a [`ResponseFrame`] does (serde writes a reference as what it refers to).
    #[derive(serde::Serialize)]
    struct ResponseRef<'a> {
        id: u64,
        result: &'a Result<Reply, WireError>,
    }
    match id {
        RequestId::Json { id, raw: false } => json::encode_response(id, result),
        RequestId::Json { id, raw: true } => json::encode_response_raw(id, result),
        RequestId::Binary(id) => frame::encode_frame_sized(
            &ResponseRef { id: *id, result },
            result.as_ref().map_or(0, Reply::payload_bytes),
        )
        .or_else(|e| {
            frame::encode_frame(&ResponseFrame {
                id: *id,
                result: Err(WireError::internal(format!("cannot encode the reply: {e}"))),
            })
        })
        .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Request;

    const LIMITS: Limits = Limits {
        max_frame_bytes: 1 << 20,
        max_line_bytes: 1 << 20,
    };

    fn speak(start: &[u8]) -> (Vec<u8>, Option<Requests>) {
        match open(start, LIMITS) {
            Opening::Speak { reply, requests } => (reply, requests),
            Opening::NeedMore => panic!("needs more than {start:?}"),
        }
    }

    fn requests(r: &mut Requests) -> Vec<(RequestId, Result<RequestFrame, WireError>)> {
        let mut out = Vec::new();
        while let Some(next) = r.next_request() {
            out.push(match next {
                Next::Request(p) => p.decode(),
                Next::Refused(id, e) => (id, Err(e)),
            });
        }
        out
    }

    #[test]
    fn a_brace_opens_json_lines_and_anything_else_the_binary_hello() {
        assert!(matches!(open(b"", LIMITS), Opening::NeedMore));
        let (reply, r) = speak(b"{\"op\":\"ping\",\"id\":7}\n\n  \n{\"op\":\"stats\"}\n");
        assert!(reply.is_empty(), "JSON lines have no hello");
        let mut r = r.unwrap();
        assert_eq!(r.encoding(), Encoding::Json);
        let got = requests(&mut r);
        assert_eq!(got.len(), 2, "blank lines are passed over");
        assert_eq!(
            got[0].0,
            RequestId::Json {
                id: serde_json::json!(7),
                raw: false
            }
        );
        assert_eq!(got[1].1.as_ref().unwrap().request, Request::Stats);

        let hello = hello::client_hello();
        assert!(matches!(open(&hello[..5], LIMITS), Opening::NeedMore));
        let mut bytes = hello.to_vec();
        bytes.extend(
            frame::encode_frame(&RequestFrame {
                id: 9,
                uid: None,
                request: Request::Ping,
            })
            .unwrap(),
        );
        let (reply, r) = speak(&bytes);
        let fixed: [u8; hello::SERVER_HELLO_LEN] =
            reply[..hello::SERVER_HELLO_LEN].try_into().unwrap();
        assert!(hello::parse_server_hello(&fixed).unwrap().accepted);
        let mut r = r.unwrap();
        let got = requests(&mut r);
        assert_eq!(got[0].0, RequestId::Binary(9));
        assert_eq!(got[0].1.as_ref().unwrap().request, Request::Ping);

        let (reply, r) = speak(&hello::client_hello_for(PROTOCOL_VERSION + 1));
        assert!(r.is_none(), "another version is not served");
        let fixed: [u8; hello::SERVER_HELLO_LEN] =
            reply[..hello::SERVER_HELLO_LEN].try_into().unwrap();
        assert!(!hello::parse_server_hello(&fixed).unwrap().accepted);
        assert!(String::from_utf8_lossy(&reply).contains("unsupported_version"));
    }

    #[test]
    fn a_refusal_speaks_the_clients_encoding() {
        let e = WireError::unavailable("full");
        let json = refusal(b"{", e.clone()).unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["error"]["kind"], "unavailable");
        let binary = refusal(&hello::client_hello(), e).unwrap();
        let fixed: [u8; hello::SERVER_HELLO_LEN] =
            binary[..hello::SERVER_HELLO_LEN].try_into().unwrap();
        assert!(!hello::parse_server_hello(&fixed).unwrap().accepted);
        assert!(refusal(b"", WireError::unavailable("x")).is_none());
    }
}
