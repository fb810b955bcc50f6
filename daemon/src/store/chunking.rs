//! How a payload is stored by what changed: split into content-defined chunks (FastCDC), each
//! named by its content's hash so that a chunk an earlier checkpoint of the same user stored
//! is referenced instead of stored again, and compressed (zstd) when that makes it smaller.
//! The stores keep chunks and references; this module only cuts, names, packs and unpacks.

use serde::{Deserialize, Serialize};

/// Payloads up to this size are stored whole: one such payload is about one chunk, so cutting
/// it could share nothing but an identical payload, and would cost a chunk record besides.
pub const INLINE_MAX: usize = 16 << 10;

const MIN_CHUNK: u32 = 2 << 10;
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

/// The bytes to store for a chunk, and whether they are compressed.
pub fn pack(bytes: &[u8]) -> (Vec<u8>, bool) {
    match zstd::bulk::compress(bytes, ZSTD_LEVEL) {
        Ok(packed) if packed.len() < bytes.len() => (packed, true),
        _ => (bytes.to_vec(), false),
    }
}

/// A chunk's bytes from what was stored, checked against its name.
pub fn unpack(stored: &[u8], compressed: bool, chunk: &ChunkRef) -> Result<Vec<u8>, String> {
    let bytes = if compressed {
        zstd::bulk::decompress(stored, chunk.len as usize)
            .map_err(|e| format!("a chunk does not decompress: {e}"))?
    } else {
        stored.to_vec()
    };
    if bytes.len() != chunk.len as usize || hash(&bytes) != chunk.hash {
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
            assert_eq!(unpack(&stored, compressed, &chunk).unwrap(), bytes);
            let mut bad = stored.clone();
            bad[10] ^= 1;
            assert!(unpack(&bad, compressed, &chunk).is_err());
        }
        let random: Vec<u8> = (0..9000u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
            .collect();
        let (stored, _) = pack(&random);
        assert!(stored.len() <= random.len());
    }
}
