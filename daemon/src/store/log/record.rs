//! One log record on disk: a fixed 20-byte prefix, a bincode header, then the payload.
//!
//! ```text
//! 0..4    magic  "SRC1"
//! 4..8    header length      u32 LE
//! 8..12   payload length     u32 LE
//! 12..16  crc32c(payload)    u32 LE
//! 16..20  crc32c(segment seq u32 LE ++ bytes 4..16 ++ header)
//! 20..    header, payload
//! then    footer: bytes 16..20 again
//! ```
//!
//! The header checksum covers the lengths, so a flipped length is caught before it is trusted;
//! the payload has its own checksum so that start-up can index a record from its header alone
//! and reads verify the payload when they serve it.
//!
//! Format 2 (format 1 segments have neither):
//! - The header checksum starts with the number of the segment the record is in. A segment
//!   file is reused once its records are dead, and the old records it still holds past the
//!   new ones then fail their checksum instead of passing for the new segment's.
//! - The footer, written after the payload, tells a write that was cut short (no footer: the
//!   bytes there are zeros or a reused file's old ones) from a payload damaged after it was
//!   written (footer intact, payload checksum wrong), which is reported, not forgotten.

use serde::{Deserialize, Serialize};
use sessiond_proto::codec;

use sessiond_proto::Meta;

use crate::chunking::ChunkRef;
use crate::model::{AttachMeta, Change, CheckpointMeta, Loc, SessionKey, SessionState};

pub const MAGIC: [u8; 4] = *b"SRC1";
pub const PREFIX_LEN: usize = 20;
/// Length of a format 2 record's footer.
pub const FOOTER_LEN: usize = 4;
/// Sanity bound on a header; anything larger is damage.
pub const MAX_HEADER_LEN: u32 = 1 << 20;

/// A checkpoint's header as the first records wrote it, before checkpoints had keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointHeaderV1 {
    pub uid: u32,
    pub name: String,
    pub number: u64,
    pub created_at: i64,
    pub meta: Meta,
}

impl From<CheckpointHeaderV1> for CheckpointMeta {
    fn from(h: CheckpointHeaderV1) -> Self {
        CheckpointMeta {
            uid: h.uid,
            name: h.name,
            number: h.number,
            created_at: h.created_at,
            meta: h.meta,
            key: None,
        }
    }
}

/// What a record says. Append-only enum: new kinds go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordHeader {
    /// A checkpoint as written before keys (read, never written now).
    Checkpoint(CheckpointHeaderV1),
    Session(SessionState),
    Delete {
        uid: u32,
        name: String,
    },
    /// A retained checkpoint copied forward (same number and payload) by compaction (read,
    /// never written now).
    Relocated(CheckpointHeaderV1),
    /// The first record of a segment started because a write or flush of `segment` failed:
    /// that segment's log ends at `end`. What lies after it is a refused batch that may have
    /// reached the disk anyway, and replay ignores it.
    Cut {
        segment: u32,
        end: u64,
    },
    /// A checkpoint, with its key if it has one.
    Checkpoint2(CheckpointMeta),
    Relocated2(CheckpointMeta),
    /// A record attached to a checkpoint; its payload is the attachment's.
    Attach(AttachMeta),
    /// A retained attachment copied forward by compaction.
    RelocatedAttach(AttachMeta),
    /// Checkpoints of a session removed (`delete_checkpoints`, `prune`).
    DropCheckpoints {
        uid: u32,
        name: String,
        numbers: Vec<u64>,
    },
    /// The next `records` records are one mutation's (a batch, a copy): replay applies them
    /// all or, if the log ends before the last of them (a write cut short), none.
    Group {
        records: u32,
    },
    /// A chunk of checkpoints' payloads (see [`crate::chunking`]); its payload is the
    /// chunk as stored. Written before the first checkpoint that uses it, in its group, and
    /// again (the same record) when compaction copies it forward.
    Chunk(ChunkHeader),
    /// A checkpoint whose payload is in chunks: the record itself has no payload.
    Chunked(ChunkedHeader),
    Relocated3(ChunkedHeader),
}

/// A chunk record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Chunks are never shared between users.
    pub uid: u32,
    pub chunk: ChunkRef,
    /// Whether the payload is zstd-compressed.
    pub compressed: bool,
}

/// A chunked checkpoint's header: its meta, and its payload's length, checksum and chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedHeader {
    pub meta: CheckpointMeta,
    pub payload_len: u64,
    pub payload_crc: u32,
    pub chunks: Vec<ChunkRef>,
}

/// [`ChunkedHeader`], borrowed: encodes the same.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChunkedRef<'a> {
    pub meta: &'a CheckpointMeta,
    pub payload_len: u64,
    pub payload_crc: u32,
    pub chunks: &'a [ChunkRef],
}

impl RecordHeader {
    /// A checkpoint's header, whichever record kind holds it.
    pub fn checkpoint(self) -> Option<CheckpointMeta> {
        match self {
            RecordHeader::Checkpoint(h) | RecordHeader::Relocated(h) => Some(h.into()),
            RecordHeader::Checkpoint2(h) | RecordHeader::Relocated2(h) => Some(h),
            RecordHeader::Chunked(c) | RecordHeader::Relocated3(c) => Some(c.meta),
            _ => None,
        }
    }

    /// An attachment's header, whichever record kind holds it.
    pub fn attachment(self) -> Option<AttachMeta> {
        match self {
            RecordHeader::Attach(a) | RecordHeader::RelocatedAttach(a) => Some(a),
            _ => None,
        }
    }
}

/// A record's header to write, borrowed from the change it expresses: it encodes as the
/// [`RecordHeader`] it decodes to (same variants in the same order), with nothing cloned.
#[derive(Debug, Serialize)]
pub enum RecordRef<'a> {
    /// Never written now: keeps the variants' numbering.
    Checkpoint(&'a CheckpointHeaderV1),
    Session(&'a SessionState),
    Delete {
        uid: u32,
        name: &'a str,
    },
    /// Never written now: keeps the variants' numbering.
    Relocated(&'a CheckpointHeaderV1),
    Cut {
        segment: u32,
        end: u64,
    },
    Checkpoint2(&'a CheckpointMeta),
    Relocated2(&'a CheckpointMeta),
    Attach(&'a AttachMeta),
    RelocatedAttach(&'a AttachMeta),
    DropCheckpoints {
        uid: u32,
        name: &'a str,
        numbers: &'a [u64],
    },
    Group {
        records: u32,
    },
    Chunk(&'a ChunkHeader),
    Chunked(ChunkedRef<'a>),
    Relocated3(ChunkedRef<'a>),
}

impl<'a> From<&'a Change> for RecordRef<'a> {
    fn from(c: &'a Change) -> Self {
        match c {
            Change::Session(s) => RecordRef::Session(s),
            Change::Checkpoint { meta, .. } => RecordRef::Checkpoint2(meta),
            Change::Relocated { meta, .. } => RecordRef::Relocated2(meta),
            Change::Delete(k) => RecordRef::Delete {
                uid: k.uid,
                name: &k.name,
            },
            Change::Attach(a) => RecordRef::Attach(a),
            Change::RelocatedAttach(a) => RecordRef::RelocatedAttach(a),
            Change::DropCheckpoints { session, numbers } => RecordRef::DropCheckpoints {
                uid: session.uid,
                name: &session.name,
                numbers,
            },
        }
    }
}

impl RecordHeader {
    /// The change this record expresses (`payload_crc`: its payload's checksum, from its
    /// prefix); `None` for the log's own records (cuts).
    pub fn into_change(self, payload_crc: u32) -> Option<Change> {
        Some(match self {
            RecordHeader::Checkpoint(h) => Change::Checkpoint {
                meta: h.into(),
                payload_crc,
            },
            RecordHeader::Checkpoint2(meta) => Change::Checkpoint { meta, payload_crc },
            RecordHeader::Session(s) => Change::Session(s),
            RecordHeader::Delete { uid, name } => Change::Delete(SessionKey { uid, name }),
            RecordHeader::Relocated(h) => Change::Relocated {
                meta: h.into(),
                payload_crc,
            },
            RecordHeader::Relocated2(meta) => Change::Relocated { meta, payload_crc },
            RecordHeader::Attach(a) => Change::Attach(a),
            RecordHeader::RelocatedAttach(a) => Change::RelocatedAttach(a),
            RecordHeader::DropCheckpoints { uid, name, numbers } => Change::DropCheckpoints {
                session: SessionKey { uid, name },
                numbers,
            },
            RecordHeader::Chunked(c) => Change::Checkpoint {
                meta: c.meta,
                payload_crc: c.payload_crc,
            },
            RecordHeader::Relocated3(c) => Change::Relocated {
                meta: c.meta,
                payload_crc: c.payload_crc,
            },
            RecordHeader::Cut { .. } | RecordHeader::Group { .. } | RecordHeader::Chunk(_) => {
                return None
            }
        })
    }
}

/// Marks, in a [`Loc`]'s `header_len`, a chunked checkpoint's record: its `payload_len` is
/// then the checkpoint's payload length (kept in chunks), not the record's (none).
const CHUNKED: u32 = 1 << 31;

// The log's lengths of a record at a place.
impl Loc {
    /// The place of a chunked checkpoint's record, written at `self`.
    pub fn chunked(self, payload_len: u64) -> Loc {
        Loc {
            header_len: self.header_len | CHUNKED,
            payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
            ..self
        }
    }
    pub fn is_chunked(&self) -> bool {
        self.header_len & CHUNKED != 0
    }
    pub fn header_bytes(&self) -> u32 {
        self.header_len & !CHUNKED
    }
    /// The payload's length in the record itself.
    pub fn stored_payload_len(&self) -> u32 {
        if self.is_chunked() {
            0
        } else {
            self.payload_len
        }
    }
    pub fn record_len(&self) -> u64 {
        PREFIX_LEN as u64 + u64::from(self.header_bytes()) + u64::from(self.stored_payload_len())
    }
    pub fn payload_offset(&self) -> u64 {
        self.offset + PREFIX_LEN as u64 + u64::from(self.header_bytes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("bad record magic")]
    Magic,
    #[error("record header of {0} bytes is implausible")]
    HeaderLen(u32),
    #[error("record header checksum mismatch")]
    HeaderCrc,
    #[error("payload checksum mismatch")]
    PayloadCrc,
    #[error("record has no footer: its write was cut short or its end is damaged")]
    Footer,
    #[error("record header does not decode: {0}")]
    Decode(#[from] codec::CodecError),
    #[error("payload of {0} bytes does not fit a record")]
    PayloadTooLarge(usize),
}

/// As [`encode_with_crc`], computing the payload's checksum (tests write records this way).
#[cfg(test)]
pub fn encode<H: Serialize>(header: &H, payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    encode_with_crc(header, payload, crc32c::crc32c(payload))
}

/// The checksum of a header and the lengths before it, seeded with the segment's number in
/// a format 2 segment (`None`: format 1).
fn header_crc(seed: Option<u32>, lengths: &[u8], header: &[u8]) -> u32 {
    let start = seed.map_or(0, |seq| crc32c::crc32c(&seq.to_le_bytes()));
    crc32c::crc32c_append(crc32c::crc32c_append(start, lengths), header)
}

/// Completes a record encoded by [`encode_with_crc`] for the segment it is written to;
/// returns the footer to write after its payload.
pub fn seal(head: &mut [u8], seed: Option<u32>) -> [u8; FOOTER_LEN] {
    let crc = header_crc(seed, &head[4..16], &head[PREFIX_LEN..]).to_le_bytes();
    head[16..20].copy_from_slice(&crc);
    crc
}

/// Whether `footer` completes the record whose prefix is `prefix_bytes`.
pub fn footer_matches(prefix_bytes: &[u8; PREFIX_LEN], footer: &[u8]) -> bool {
    prefix_bytes[16..20] == *footer
}

/// Room for a checkpoint's header with a little meta, so that encoding it seldom grows.
const TYPICAL_HEADER_LEN: usize = 192;

/// The prefix and header of a record; the payload is written after it as is. The header's
/// checksum is left to [`seal`], once the segment it goes to is known. The payload's
/// checksum is given: computed where the request was decoded ([`CheckedPayload`]), or, for a
/// copied record, its original one, so that a payload damaged before the copy stays
/// detectably damaged after it.
pub fn encode_with_crc<H: Serialize>(
    header: &H,
    payload: &[u8],
    payload_crc: u32,
) -> Result<Vec<u8>, RecordError> {
    let payload_len =
        u32::try_from(payload.len()).map_err(|_| RecordError::PayloadTooLarge(payload.len()))?;
    // The header encoded in place after its prefix, whose length is filled in after.
    let mut out = Vec::with_capacity(PREFIX_LEN + TYPICAL_HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(&payload_crc.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    codec::encode_into(header, &mut out)?;
    let body_len = out.len() - PREFIX_LEN;
    if body_len > MAX_HEADER_LEN as usize {
        return Err(RecordError::HeaderLen(body_len as u32));
    }
    out[4..8].copy_from_slice(&(body_len as u32).to_le_bytes());
    Ok(out)
}

/// The decoded fixed prefix.
#[derive(Debug, Clone, Copy)]
pub struct Prefix {
    pub header_len: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    header_crc: u32,
}

pub fn parse_prefix(b: &[u8; PREFIX_LEN]) -> Result<Prefix, RecordError> {
    if b[..4] != MAGIC {
        return Err(RecordError::Magic);
    }
    let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let p = Prefix {
        header_len: word(4),
        payload_len: word(8),
        payload_crc: word(12),
        header_crc: word(16),
    };
    if p.header_len == 0 || p.header_len > MAX_HEADER_LEN {
        return Err(RecordError::HeaderLen(p.header_len));
    }
    Ok(p)
}

/// Verifies and decodes the header that follows `prefix_bytes`, in a segment whose records
/// are sealed with `seed`.
pub fn parse_header(
    prefix_bytes: &[u8; PREFIX_LEN],
    prefix: &Prefix,
    header: &[u8],
    seed: Option<u32>,
) -> Result<RecordHeader, RecordError> {
    if header_crc(seed, &prefix_bytes[4..16], header) != prefix.header_crc {
        return Err(RecordError::HeaderCrc);
    }
    Ok(codec::decode(header)?)
}

pub fn verify_payload(prefix: &Prefix, payload: &[u8]) -> Result<(), RecordError> {
    if crc32c::crc32c(payload) != prefix.payload_crc {
        return Err(RecordError::PayloadCrc);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sessiond_proto::Status;

    use super::*;

    #[test]
    fn a_change_encodes_as_the_record_header_it_decodes_to() {
        let meta: Meta = [("k".to_string(), "v".to_string())].into();
        let checkpoint = CheckpointMeta {
            uid: 7,
            name: "s".into(),
            number: 3,
            created_at: 11,
            meta: meta.clone(),
            key: Some("k1".into()),
        };
        let attachment = AttachMeta {
            uid: 7,
            name: "s".into(),
            number: 3,
            attach_key: "task\u{0}0".into(),
            meta,
        };
        let state = SessionState {
            uid: 7,
            name: "s".into(),
            status: Status::Stale,
            owner: None,
            epoch: 2,
            created_at: 1,
            updated_at: 2,
            keep: 4,
            meta: Meta::new(),
            error: Some("e".into()),
            last_number: 3,
            owner_host: None,
        };
        for change in [
            Change::Session(state),
            Change::Checkpoint {
                meta: checkpoint.clone(),
                payload_crc: 9,
            },
            Change::Relocated {
                meta: checkpoint,
                payload_crc: 9,
            },
            Change::Delete(SessionKey::new(7, "s")),
            Change::Attach(attachment.clone()),
            Change::RelocatedAttach(attachment),
            Change::DropCheckpoints {
                session: SessionKey::new(7, "s"),
                numbers: vec![1, 3],
            },
        ] {
            let bytes = codec::encode(&RecordRef::from(&change)).unwrap();
            let header: RecordHeader = codec::decode(&bytes).unwrap();
            assert_eq!(header.into_change(9), Some(change));
        }
        // A checkpoint as the first records wrote it reads as one without a key.
        let old = RecordHeader::Checkpoint(CheckpointHeaderV1 {
            uid: 7,
            name: "s".into(),
            number: 1,
            created_at: 2,
            meta: Meta::new(),
        });
        let Some(Change::Checkpoint { meta, .. }) = old.into_change(0) else {
            panic!()
        };
        assert_eq!(meta.key, None);
        // A chunked checkpoint and a chunk encode as the headers they decode to.
        let chunks = [ChunkRef {
            hash: [3; 16],
            len: 9000,
        }];
        let meta = CheckpointMeta {
            uid: 7,
            name: "s".into(),
            number: 4,
            created_at: 1,
            meta: Meta::new(),
            key: None,
        };
        let chunked = ChunkedRef {
            meta: &meta,
            payload_len: 9000,
            payload_crc: 5,
            chunks: &chunks,
        };
        let header = ChunkedHeader {
            meta: meta.clone(),
            payload_len: 9000,
            payload_crc: 5,
            chunks: chunks.to_vec(),
        };
        for (written, read) in [
            (
                RecordRef::Chunked(chunked),
                RecordHeader::Chunked(header.clone()),
            ),
            (
                RecordRef::Relocated3(chunked),
                RecordHeader::Relocated3(header),
            ),
        ] {
            let decoded: RecordHeader = codec::decode(&codec::encode(&written).unwrap()).unwrap();
            assert_eq!(decoded, read);
            let Some(
                Change::Checkpoint { payload_crc, .. } | Change::Relocated { payload_crc, .. },
            ) = decoded.into_change(0)
            else {
                panic!()
            };
            assert_eq!(
                payload_crc, 5,
                "a chunked checkpoint's checksum is its payload's"
            );
        }
        let chunk = ChunkHeader {
            uid: 7,
            chunk: chunks[0],
            compressed: true,
        };
        let decoded: RecordHeader =
            codec::decode(&codec::encode(&RecordRef::Chunk(&chunk)).unwrap()).unwrap();
        assert_eq!(decoded, RecordHeader::Chunk(chunk));
        let cut = RecordRef::Cut {
            segment: 5,
            end: 99,
        };
        let header: RecordHeader = codec::decode(&codec::encode(&cut).unwrap()).unwrap();
        assert_eq!(
            header,
            RecordHeader::Cut {
                segment: 5,
                end: 99
            }
        );
    }
}
