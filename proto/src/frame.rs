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

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Encodes `value` as one frame (prefix and body).
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    // The body is encoded in place after room for its length: a payload is copied once.
    let mut out = Vec::with_capacity(256);
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
    TooLarge { len: u64, id: Option<u64> },
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
/// reported once and dropped up to its newline without being buffered.
#[derive(Debug)]
pub struct LineDecoder {
    max: usize,
    buf: Vec<u8>,
    pos: usize,
    /// Bytes already searched for a newline, from `pos`.
    scanned: usize,
    discarding: bool,
}

/// What [`LineDecoder::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A line without its newline (and without a trailing `\r`).
    Text(&'a [u8]),
    /// A line longer than the cap, dropped.
    TooLong,
}

impl LineDecoder {
    pub fn new(max: usize) -> Self {
        LineDecoder {
            max,
            buf: Vec::new(),
            pos: 0,
            scanned: 0,
            discarding: false,
        }
    }

    /// The cap on a line's length.
    pub fn max(&self) -> usize {
        self.max
    }

    pub fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }

    /// Drops consumed bytes once they are half the buffer.
    fn compact(&mut self) {
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

    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a line has begun and not ended (including one being discarded).
    pub fn in_progress(&self) -> bool {
        self.buffered() > 0 || self.discarding
    }

    pub fn next_line(&mut self) -> Option<Line<'_>> {
        self.next(false)
    }

    /// As [`LineDecoder::next_line`], passing over lines of nothing but white space.
    pub fn next_nonblank_line(&mut self) -> Option<Line<'_>> {
        self.next(true)
    }

    fn next(&mut self, skip_blank: bool) -> Option<Line<'_>> {
        loop {
            let avail = &self.buf[self.pos..];
            match avail[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let end = self.pos + self.scanned + i;
                    let start = self.pos;
                    self.pos = end + 1;
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    let end = if end > start && self.buf[end - 1] == b'\r' {
                        end - 1
                    } else {
                        end
                    };
                    if end - start > self.max {
                        return Some(Line::TooLong);
                    }
                    if skip_blank && self.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(Line::Text(&self.buf[start..end]));
                }
                None => {
                    if self.discarding {
                        self.pos = self.buf.len();
                        self.scanned = 0;
                        return None;
                    }
                    if avail.len() > self.max {
                        // Drop what we have; keep dropping until the newline.
                        self.discarding = true;
                        self.pos = self.buf.len();
                        self.scanned = 0;
                        return Some(Line::TooLong);
                    }
                    self.scanned = avail.len();
                    return None;
                }
            }
        }
    }

    /// Call at end of stream: the unterminated last line, if any.
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.discarding || self.buffered() == 0 {
            return None;
        }
        let start = self.pos;
        self.pos = self.buf.len();
        let line = &self.buf[start..];
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    }
}
