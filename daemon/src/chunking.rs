//! How a payload is stored by what changed: split into content-defined chunks (FastCDC), each
//! named by its content's hash so that a chunk an earlier checkpoint of the same user stored
//! is referenced instead of stored again, and compressed (zstd) when that makes it smaller.
//! The stores keep chunks and references; this module only cuts, names, packs and unpacks.

use serde::{Deserialize, Serialize};

/// Payloads up to this size are stored whole: one such payload is about one chunk, so cutting
/// it could share nothing but an identical payload, and would cost a chunk record besides.
pub const INLINE_MAX: usize = 16 << 10;

// Cutting skips the first MIN_CHUNK bytes of each chunk: the larger it is, the less there is
// to hash, and the less freely the cuts follow the content.
const MIN_CHUNK: u32 = 4 << 10;
const AVG_CHUNK: u32 = 8 << 10;
const MAX_CHUNK: u32 = 64 << 10;
const ZSTD_LEVEL: i32 = 3;

/// A chunk's name: the first 16 bytes of the BLAKE3 hash of its bytes (uncompressed).
pub type ChunkHash = [u8; 16];

/// One chunk a checkpoint's payload is made of, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ChunkHash,
    /// Its length uncompressed.
    pub len: u32,
}

/// A chunk cut from a payload.
pub struct Piece<'a> {
    pub chunk: ChunkRef,
    pub bytes: &'a [u8],
}

pub fn hash(bytes: &[u8]) -> ChunkHash {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    out
}

/// Whether a payload of `len` bytes is cut into chunks.
pub fn chunked(len: usize) -> bool {
    len > INLINE_MAX
}

/// `payload` cut where its content says (the same bytes cut the same wherever they sit).
pub fn split(payload: &[u8]) -> Vec<Piece<'_>> {
    fastcdc::v2020::FastCDC::new(payload, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| {
            let bytes = &payload[c.offset..c.offset + c.length];
            Piece {
                chunk: ChunkRef {
                    hash: hash(bytes),
                    // A chunk is at most MAX_CHUNK bytes.
                    len: c.length as u32,
                },
                bytes,
            }
        })
        .collect()
}

/// A session's last cut payload, kept so that its next one is cut from where the two first
/// differ (see [`split_reusing`]).
#[derive(Debug, Clone)]
pub struct LastCut {
    pub bytes: Vec<u8>,
    pub chunks: Vec<ChunkRef>,
}

/// Bytes past a chunk's end that must match too before its cut is taken as it was: a cut is
/// decided from the bytes since the chunk's start and a byte or two after its end, and from
/// how much follows (up to the average size), which a common stretch this long settles.
const REUSE_MARGIN: usize = 8;

/// `payload` cut exactly as [`split`] cuts it, taking the cuts and names of `last`'s chunks
/// over the bytes the two begin with (compared, not hashed: a payload that grows or changes
/// at its end costs a comparison of its unchanged part rather than its cutting and hashing).
pub fn split_reusing<'a>(payload: &'a [u8], last: Option<&LastCut>) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut at = 0usize;
    if let Some(last) = last {
        // The same bytes again: every cut, the last chunk's (which ends with the bytes) too.
        let same = last.bytes == payload;
        for chunk in &last.chunks {
            let end = at + chunk.len as usize;
            let through = if same { end } else { end + REUSE_MARGIN };
            if through > payload.len()
                || through > last.bytes.len()
                || (!same && payload[at..through] != last.bytes[at..through])
            {
                break;
            }
            pieces.push(Piece {
                chunk: *chunk,
                bytes: &payload[at..end],
            });
            at = end;
        }
    }
    pieces.extend(split(&payload[at..]));
    pieces
}

thread_local! {
    // A compression context is costly to make (its tables): one per thread, reused.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The bytes to store for a chunk, and whether they are compressed.
pub fn pack(bytes: &[u8]) -> (Vec<u8>, bool) {
    let packed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress(bytes).ok()
    });
    match packed {
        Some(packed) if packed.len() < bytes.len() => (packed, true),
        _ => (bytes.to_vec(), false),
    }
}

fn decompress(stored: &[u8], len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        match d.as_mut() {
            Some(d) => d.decompress(stored, len),
            None => zstd::bulk::decompress(stored, len),
        }
    })
}

/// Packs the chunks of one payload in turn. Once a chunk does not compress, the next few are
/// stored as they are without trying (random or already compressed data costs a compression
/// attempt per chunk otherwise); every [`RETRY_EVERY`]th is tried again.
#[derive(Debug, Default)]
pub struct Packer {
    skip: u32,
}

const RETRY_EVERY: u32 = 8;

/// A chunk's bytes as they will be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The store held the chunk when it was cut: nothing packed.
    Known,
    /// Stored as it is in the payload (it does not compress), with its checksum.
    Raw { crc: u32 },
    /// Compressed, with the checksum of the compressed bytes.
    Packed { bytes: Vec<u8>, crc: u32 },
}

impl Packer {
    pub fn pack(&mut self, bytes: &[u8]) -> Stored {
        if self.skip > 0 {
            self.skip -= 1;
            return Stored::Raw {
                crc: crc32c::crc32c(bytes),
            };
        }
        match pack(bytes) {
            (packed, true) => Stored::Packed {
                crc: crc32c::crc32c(&packed),
                bytes: packed,
            },
            (_, false) => {
                self.skip = RETRY_EVERY - 1;
                Stored::Raw {
                    crc: crc32c::crc32c(bytes),
                }
            }
        }
    }
}

/// A chunk's bytes as written (compressed or as they are in the payload, `piece`), whether
/// they are compressed, and their checksum: as packed ahead (`stored`), or packed now by
/// `packer` when it was not (the store held the chunk then, or the payload was not prepared).
pub fn stored_bytes<'a>(
    piece: &'a [u8],
    stored: Option<&'a Stored>,
    packer: &mut Packer,
) -> (std::borrow::Cow<'a, [u8]>, bool, u32) {
    use std::borrow::Cow;
    match stored {
        Some(Stored::Packed { bytes, crc }) => (Cow::Borrowed(&bytes[..]), true, *crc),
        Some(Stored::Raw { crc }) => (Cow::Borrowed(piece), false, *crc),
        Some(Stored::Known) | None => match packer.pack(piece) {
            Stored::Packed { bytes, crc } => (Cow::Owned(bytes), true, crc),
            Stored::Raw { crc } => (Cow::Borrowed(piece), false, crc),
            // Never what a packer returns.
            Stored::Known => (Cow::Borrowed(piece), false, crc32c::crc32c(piece)),
        },
    }
}

/// A payload cut and packed ahead of the commit (where it was decoded, off the thread every
/// write waits on): its chunks, and the stored bytes of those the store lacked then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub chunks: Vec<ChunkRef>,
    /// Per chunk: where it is in the payload, and how it is stored.
    pub parts: Vec<(usize, Stored)>,
}

impl Prepared {
    /// Whether storing it in chunks saved anything: a chunk the store held, or one that
    /// compressed.
    pub fn gained(&self) -> bool {
        self.parts
            .iter()
            .any(|(_, s)| matches!(s, Stored::Known | Stored::Packed { .. }))
    }
}

/// Cuts `payload` (reusing `last`'s cuts, see [`split_reusing`]) and packs the chunks `known`
/// says the store lacks.
pub fn prepare(
    payload: &[u8],
    last: Option<&LastCut>,
    known: impl Fn(&[ChunkRef]) -> Vec<bool>,
) -> Prepared {
    let pieces = split_reusing(payload, last);
    let chunks: Vec<ChunkRef> = pieces.iter().map(|p| p.chunk).collect();
    let known = known(&chunks);
    let mut packer = Packer::default();
    let parts = pieces
        .iter()
        .zip(known.iter().chain(std::iter::repeat(&false)))
        .map(|(p, known)| {
            let at = p.bytes.as_ptr() as usize - payload.as_ptr() as usize;
            let stored = if *known {
                Stored::Known
            } else {
                packer.pack(p.bytes)
            };
            (at, stored)
        })
        .collect();
    Prepared { chunks, parts }
}

/// A chunk's bytes from what was stored, of the length its name says. Reads check no hash:
/// the stored bytes' checksum and the whole payload's checksum after the chunks are put
/// together catch damage; [`unpack_verified`] (for `sessiond check`) checks the hash too.
pub fn unpack(stored: &[u8], compressed: bool, chunk: &ChunkRef) -> Result<Vec<u8>, String> {
    let bytes = if compressed {
        decompress(stored, chunk.len as usize)
            .map_err(|e| format!("a chunk does not decompress: {e}"))?
    } else {
        stored.to_vec()
    };
    if bytes.len() != chunk.len as usize {
        return Err("a chunk is not as long as its name says".into());
    }
    Ok(bytes)
}

/// As [`unpack`], and the bytes must hash to the chunk's name.
pub fn unpack_verified(
    stored: &[u8],
    compressed: bool,
    chunk: &ChunkRef,
) -> Result<Vec<u8>, String> {
    let bytes = unpack(stored, compressed, chunk)?;
    if hash(&bytes) != chunk.hash {
        return Err("a chunk's bytes do not match its hash".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"abcdefghij klmnop\n"[(x >> 59) as usize % 18]
            })
            .collect()
    }

    #[test]
    fn an_append_leaves_the_earlier_chunks_as_they_were() {
        let a = text(200_000, 1);
        let mut b = a.clone();
        b.extend_from_slice(&text(2048, 2));
        let before: Vec<ChunkRef> = split(&a).iter().map(|p| p.chunk).collect();
        let after: Vec<ChunkRef> = split(&b).iter().map(|p| p.chunk).collect();
        let shared = after.iter().filter(|c| before.contains(c)).count();
        assert!(
            shared + 2 >= before.len(),
            "{shared} of {} chunks shared",
            before.len()
        );
        let whole: Vec<u8> = split(&b).iter().flat_map(|p| p.bytes.to_vec()).collect();
        assert_eq!(whole, b);
    }

    fn cuts(pieces: &[Piece<'_>], payload: &[u8]) -> Vec<(usize, ChunkRef)> {
        pieces
            .iter()
            .map(|p| {
                (
                    p.bytes.as_ptr() as usize - payload.as_ptr() as usize,
                    p.chunk,
                )
            })
            .collect()
    }

    #[test]
    fn a_payload_cut_from_its_last_one_is_cut_as_it_would_be_afresh() {
        for seed in 0..60u64 {
            let base = text(40_000 + (seed as usize * 7919) % 120_000, seed);
            let last = LastCut {
                chunks: split(&base).iter().map(|p| p.chunk).collect(),
                bytes: base.clone(),
            };
            let at = (seed as usize * 104_729) % base.len();
            let mut changed = base.clone();
            changed[at] ^= 0x20;
            let mut grown = base.clone();
            grown.extend_from_slice(&text(1 + seed as usize * 300, seed + 1000));
            let mut cut_short = base.clone();
            cut_short.truncate(at.max(1));
            let mut inserted = base.clone();
            inserted.splice(at..at, text(37, seed + 2000));
            for (kind, next) in [
                ("same", base.clone()),
                ("changed", changed),
                ("grown", grown),
                ("cut short", cut_short),
                ("inserted", inserted),
                ("other", text(50_000, seed + 3000)),
            ] {
                let fresh = split(&next);
                let again = split_reusing(&next, Some(&last));
                assert_eq!(
                    cuts(&again, &next),
                    cuts(&fresh, &next),
                    "{kind}, seed {seed}"
                );
                let whole: Vec<u8> = again.iter().flat_map(|p| p.bytes.to_vec()).collect();
                assert_eq!(whole, next, "{kind}, seed {seed}");
            }
        }
    }

    #[test]
    fn the_unchanged_part_is_taken_from_the_last_cut_not_cut_again() {
        let base = text(200_000, 7);
        // Names no hash gives: whatever carries them was taken, not hashed.
        let marked: Vec<ChunkRef> = split(&base)
            .iter()
            .map(|p| ChunkRef {
                hash: [0xAB; 16],
                len: p.chunk.len,
            })
            .collect();
        let last = LastCut {
            bytes: base.clone(),
            chunks: marked.clone(),
        };
        let same = split_reusing(&base, Some(&last));
        assert!(same.iter().all(|p| p.chunk.hash == [0xAB; 16]));
        let mut grown = base.clone();
        grown.extend_from_slice(&text(5000, 8));
        let taken = split_reusing(&grown, Some(&last))
            .iter()
            .take_while(|p| p.chunk.hash == [0xAB; 16])
            .count();
        assert!(
            taken + 2 >= marked.len(),
            "{taken} of {} taken",
            marked.len()
        );
        let mut changed = base.clone();
        changed[100] ^= 1;
        let first = &split_reusing(&changed, Some(&last))[0];
        assert_ne!(first.chunk.hash, [0xAB; 16], "a changed chunk is cut again");
    }

    #[test]
    fn packing_round_trips_and_refuses_other_bytes() {
        for bytes in [
            text(9000, 3),
            (0..9000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ] {
            let chunk = ChunkRef {
                hash: hash(&bytes),
                len: bytes.len() as u32,
            };
            let (stored, compressed) = pack(&bytes);
            assert_eq!(unpack_verified(&stored, compressed, &chunk).unwrap(), bytes);
            let mut bad = stored.clone();
            bad[10] ^= 1;
            assert!(unpack_verified(&bad, compressed, &chunk).is_err());
        }
        let random: Vec<u8> = (0..9000u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        let (stored, _) = pack(&random);
        assert!(stored.len() <= random.len());
    }
}
