//! Length-prefixed binary frames: a little-endian `u32` body length, then the body.
//!
//! [`FrameDecoder`] is fed whatever the socket returned and hands out complete frames. The cap
//! is checked on the declared length before anything is kept: an oversized frame is reported
//! once and its bytes are dropped as they arrive, so the connection stays usable and memory
//! stays bounded by the cap.

use serde::Serialize;

use crate::codec::{self, CodecError};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than the cap.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its declared length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the frame that had arrived.
        buffered: usize,
    },
    /// Its body is not a message.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encodes `value` as one frame (prefix and body).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_sized(value, 0)
}

/// [`encode_frame`] of a value holding `payloads` bytes of payload (room made for them at
/// once, not grown into).
pub fn encode_frame_sized<T: Serialize>(value: &T, payloads: usize) -> Result<Vec<u8>, FrameError> {
    // The body is encoded in place after room for its length: a payload is copied once.
    let mut out = Vec::with_capacity(256 + payloads);
    out.extend_from_slice(&[0; HEADER_LEN]);
    codec::encode_into(value, &mut out)?;
    let body_len = out.len() - HEADER_LEN;
    let len = u32::try_from(body_len).map_err(|_| FrameError::TooLarge {
        len: body_len as u64,
        max: u32::MAX as usize,
    })?;
    out[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// What [`FrameDecoder::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete frame body.
    Body(&'a [u8]),
    /// A frame longer than the cap; its bytes are being discarded. `id` is the request id read
    /// from the frame's first bytes when they were already there.
    TooLarge {
        /// Its declared length.
        len: u64,
        /// The request id, if its first bytes held one.
        id: Option<u64>,
    },
}

/// Incremental frame splitter with a size cap.
#[derive(Debug)]
pub struct FrameDecoder {
    max: usize,
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    pos: usize,
    /// Bytes of an oversized frame still to drop.
    discard: u64,
}

impl FrameDecoder {
    /// A splitter for frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            buf: Vec::new(),
            pos: 0,
            discard: 0,
        }
    }

    /// The cap on a frame's body.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Appends bytes read from the peer.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.discard > 0 {
            let drop = self.discard.min(data.len() as u64) as usize;
            self.discard -= drop as u64;
            data = &data[drop..];
        }
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// The buffer to read the peer's next bytes into, straight after what is buffered (no
    /// copy through a buffer of the caller's), with room for at least `reserve` more. Read by
    /// appending (`AsyncReadExt::read_buf`), then call [`FrameDecoder::appended`] with the
    /// length the buffer had before.
    pub fn read_buffer(&mut self, reserve: usize) -> &mut Vec<u8> {
        self.compact();
        self.buf.reserve(reserve);
        &mut self.buf
    }

    /// Accounts for bytes appended to [`FrameDecoder::read_buffer`] past `from`.
    pub fn appended(&mut self, from: usize) {
        let from = from.min(self.buf.len());
        if self.discard > 0 {
            let drop = self.discard.min((self.buf.len() - from) as u64) as usize;
            self.discard -= drop as u64;
            self.buf.drain(from..from + drop);
        }
    }

    /// Drops consumed bytes once they are half the buffer (or all of it).
    fn compact(&mut self) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Bytes buffered but not yet returned.
    /// Bytes received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a frame has begun and not ended (including one being discarded).
    pub fn in_progress(&self) -> bool {
        self.buffered() > 0 || self.discard > 0
    }

    /// Returns the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Frame<'_>> {
        if self.discard > 0 {
            return None;
        }
        let avail = &self.buf[self.pos..];
        if avail.len() < HEADER_LEN {
            return None;
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > self.max {
            let body = &avail[HEADER_LEN..];
            let id = codec::decode_prefix::<u64>(&body[..body.len().min(10)])
                .ok()
                .map(|(id, _)| id);
            let have = body.len().min(len);
            self.pos += HEADER_LEN + have;
            self.discard = (len - have) as u64;
            return Some(Frame::TooLarge {
                len: len as u64,
                id,
            });
        }
        if avail.len() < HEADER_LEN + len {
            return None;
        }
        let start = self.pos + HEADER_LEN;
        self.pos = start + len;
        Some(Frame::Body(&self.buf[start..start + len]))
    }

    /// Call at end of stream: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffered() {
            0 if self.discard == 0 => Ok(()),
            n => Err(FrameError::Truncated { buffered: n }),
        }
    }
}

/// Splits newline-terminated lines with a length cap (for JSON lines). A longer line is
/// dropped as it arrives, never buffered, and reported once its newline has come, with the
/// request id it held if one could be read from it on the way ([`IdScan`]).
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes already searched for a newline, from `pos`.
    scanned: usize,
    /// Dropping a line longer than `max`, looking for its id as it goes.
    discarding: Option<IdScan>,
    /// Bytes still to drop that are no line (raw payload bytes of a refused request).
    skipping: u64,
    /// Where the last [`Line::Text`] handed out lies in `buf` (until more is read).
    last_text: std::ops::Range<usize>,
}

/// What [`LineDecoder::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line without its newline (and without a trailing `\r`).
    Text(&'a [u8]),
    /// A line longer than the cap, dropped, with the JSON text of its top-level `id` if it
    /// had one (at most [`IdScan::MAX_ID`] bytes of it).
    TooLong {
        /// The JSON text of its `id`, when found.
        id: Option<Vec<u8>>,
    },
}

impl LineDecoder {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        LineDecoder {
            max,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            discarding: None,
            skipping: 0,
            last_text: 0..0,
        }
    }

    /// The cap on a line's length.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Appends bytes read from the connection.
    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Drops consumed bytes once they are half the buffer.
    fn compact(&mut self) {
        self.last_text = 0..0;
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// The buffer to read the peer's next bytes into, straight after what is buffered, with
    /// room for at least `reserve` more (as [`FrameDecoder::read_buffer`]).
    pub fn read_buffer(&mut self, reserve: usize) -> &mut Vec<u8> {
        self.compact();
        self.buf.reserve(reserve);
        &mut self.buf
    }

    /// Accounts for bytes appended to [`LineDecoder::read_buffer`]: nothing to do, lines are
    /// looked for as they are asked for.
    pub fn appended(&mut self, _from: usize) {}

    /// Bytes received and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a line has begun and not ended (including one being dropped).
    pub fn in_progress(&self) -> bool {
        self.buffered() > 0 || self.discarding.is_some() || self.skipping > 0
    }

    /// The next `n` bytes as they are, which must be buffered (raw payload after a line).
    pub fn take(&mut self, n: usize) -> &[u8] {
        let start = self.pos;
        let end = (start + n).min(self.buf.len());
        self.pos = end;
        self.scanned = 0;
        &self.buf[start..end]
    }

    /// Drops the next `n` bytes, as far as they have arrived and then as they arrive.
    pub fn skip(&mut self, n: u64) {
        self.skipping += n;
        self.drop_skipped();
    }

    fn drop_skipped(&mut self) {
        let now = self.skipping.min(self.buffered() as u64) as usize;
        self.pos += now;
        self.skipping -= now as u64;
        self.scanned = 0;
    }

    /// The next whole line, if one has arrived.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        self.next(false)
    }

    /// As [`LineDecoder::next_line`], passing over lines of nothing but white space.
    pub fn next_nonblank_line(&mut self) -> Option<Line<'_>> {
        self.next(true)
    }

    fn next(&mut self, skip_blank: bool) -> Option<Line<'_>> {
        loop {
            if self.skipping > 0 {
                self.drop_skipped();
                if self.skipping > 0 {
                    return None;
                }
            }
            let avail = &self.buf[self.pos..];
            let newline = memchr::memchr(b'\n', &avail[self.scanned..]);
            if let Some(scan) = &mut self.discarding {
                let upto = newline.map_or(avail.len(), |i| self.scanned + i);
                scan.feed(&avail[self.scanned..upto]);
                let Some(i) = newline else {
                    self.pos = self.buf.len();
                    self.scanned = 0;
                    return None;
                };
                self.pos += self.scanned + i + 1;
                self.scanned = 0;
                let id = self.discarding.take().and_then(IdScan::id);
                return Some(Line::TooLong { id });
            }
            match newline {
                Some(i) => {
                    let end = self.pos + self.scanned + i;
                    let start = self.pos;
                    self.pos = end + 1;
                    self.scanned = 0;
                    let end = if end > start && self.buf[end - 1] == b'\r' {
                        end - 1
                    } else {
                        end
                    };
                    if end - start > self.max {
                        let mut scan = IdScan::default();
                        scan.feed(&self.buf[start..end]);
                        return Some(Line::TooLong { id: scan.id() });
                    }
                    if skip_blank && self.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    self.last_text = start..end;
                    return Some(Line::Text(&self.buf[start..end]));
                }
                None => {
                    if avail.len() > self.max {
                        // Drop what we have, reading its id, until the newline.
                        let mut scan = IdScan::default();
                        scan.feed(avail);
                        self.discarding = Some(scan);
                        self.pos = self.buf.len();
                        self.scanned = 0;
                        return None;
                    }
                    self.scanned = avail.len();
                    return None;
                }
            }
        }
    }

    /// The last [`Line::Text`] handed out again, until more bytes are read (empty then).
    pub fn last_text(&self) -> &[u8] {
        self.buf.get(self.last_text.clone()).unwrap_or_default()
    }

    /// Call at end of stream: the unterminated last line, if any.
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.discarding.is_some() || self.buffered() == 0 {
            return None;
        }
        let start = self.pos;
        self.pos = self.buf.len();
        let line = &self.buf[start..];
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    }
}

/// Reads a JSON object's top-level `"id"` value out of its text as the text goes by, without
/// keeping the rest: what a line too long to buffer still tells of the request it was.
#[derive(Debug, Default)]
pub struct IdScan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// The next string at depth 1 is a key.
    expect_key: bool,
    /// The key being read (only its first bytes matter).
    key: Vec<u8>,
    reading_key: bool,
    /// The last key read at depth 1 was `id`, and its value has not begun.
    id_next: bool,
    /// The id's text so far, while it is being read; `None` once it ended.
    value: Option<Vec<u8>>,
    reading_value: bool,
    /// The id found, complete.
    found: Option<Vec<u8>>,
}

impl IdScan {
    /// Longest id kept.
    pub const MAX_ID: usize = 1024;

    /// Scans more of the line.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.found.is_some() {
                return;
            }
            self.step(b);
        }
    }

    fn step(&mut self, b: u8) {
        if self.reading_value {
            // The value ends at a comma or the closing brace of the top-level object.
            if !self.in_string && self.depth == 1 && (b == b',' || b == b'}') {
                self.reading_value = false;
                self.found = self.value.take();
                return;
            }
            if let Some(v) = &mut self.value {
                if v.len() < Self::MAX_ID {
                    v.push(b);
                } else {
                    self.value = None;
                }
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.reading_key {
                    self.reading_key = false;
                    self.id_next = self.key == b"id";
                }
            } else if self.reading_key && self.key.len() < 3 {
                // Enough to tell `id` from any other key.
                self.key.push(b);
            }
            return;
        }
        match b {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.expect_key {
                    self.expect_key = false;
                    self.reading_key = true;
                    self.key.clear();
                }
            }
            b'{' | b'[' => {
                self.depth += 1;
                if self.depth == 1 {
                    self.expect_key = true;
                }
            }
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            b',' if self.depth == 1 => self.expect_key = true,
            b':' if self.depth == 1 && self.id_next => {
                self.id_next = false;
                self.reading_value = true;
                self.value = Some(Vec::new());
            }
            _ => {}
        }
    }

    /// The id's JSON text, trimmed, if the object had one (and it was not too long).
    pub fn id(self) -> Option<Vec<u8>> {
        let text = self.found?;
        let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
        let end = text.iter().rposition(|b| !b.is_ascii_whitespace())? + 1;
        Some(text[start..end].to_vec())
    }
}
