//! The log's chunks (see [`crate::chunking`]): where each user's distinct chunks are
//! and how many retained checkpoints use them, and which chunks each retained chunked
//! checkpoint uses. A chunk counts as a live record while a retained checkpoint uses it;
//! when the last one goes, so does the chunk (a later payload holding the same bytes stores
//! them again). Shared by the commit thread, which changes it, and the readers, which look
//! chunks up.
//!
//! Memory: a distinct chunk's slot in the map is 72 bytes, 82 to 165 with the map's spare
//! capacity (it doubles when 7/8 full): 82 to 165 MB per million chunks. A retained chunked
//! checkpoint adds a 48-byte slot (as much spare again at most) and 16 bytes per chunk it uses.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use super::live::LiveSegments;
use super::record::ChunkHeader;
use crate::chunking::{ChunkHash, ChunkRef};
use crate::model::Loc;

/// A chunk is known by its user and its hash.
pub type ChunkKey = (u32, ChunkHash);

/// The chunk maps' hasher: a chunk's name is already a cryptographic hash, so mixing its first
/// bytes with the rest of the key is enough (SipHash, the default, costs more than the map).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.write_u64(u64::from_le_bytes(word));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(23) ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type Map<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Where its record is (`None`: referenced, but not (yet) found in the log).
    pub loc: Option<Loc>,
    pub compressed: bool,
    pub len: u32,
    /// References by retained checkpoints (one per use: a payload may repeat a chunk).
    pub refs: u32,
    /// A read found its record damaged: new payloads store the chunk again.
    pub damaged: bool,
}

impl ChunkEntry {
    fn live(&self) -> Option<&Loc> {
        self.loc.as_ref().filter(|_| self.refs > 0)
    }
}

/// A chunked checkpoint's chunks, by the place of its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub uid: u32,
    pub chunks: Vec<ChunkHash>,
}

/// One chunk as the index snapshot keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapChunk {
    pub uid: u32,
    pub chunk: ChunkRef,
    pub compressed: bool,
    pub loc: Loc,
}

#[derive(Debug, Default)]
pub struct Chunks {
    map: Map<ChunkKey, ChunkEntry>,
    manifests: Map<(u32, u64), Manifest>,
    /// Replay keeps chunks no checkpoint uses yet (a later record may), until
    /// [`Chunks::settle`].
    replaying: bool,
}

fn at(loc: &Loc) -> (u32, u64) {
    (loc.segment, loc.offset)
}

impl Chunks {
    pub fn replaying() -> Self {
        Chunks {
            replaying: true,
            ..Chunks::default()
        }
    }

    /// A chunk the store may reference instead of writing it again.
    pub fn usable(&self, key: &ChunkKey) -> bool {
        self.map
            .get(key)
            .is_some_and(|e| e.loc.is_some() && !e.damaged)
    }

    pub fn get(&self, key: &ChunkKey) -> Option<ChunkEntry> {
        self.map.get(key).copied()
    }

    /// A chunk's record is at `loc` (written, replayed, or copied forward): the place it is
    /// read from from now on.
    pub fn stored(&mut self, live: &mut LiveSegments, header: &ChunkHeader, loc: Loc) {
        let e = self
            .map
            .entry((header.uid, header.chunk.hash))
            .or_insert(ChunkEntry {
                loc: None,
                compressed: header.compressed,
                len: header.chunk.len,
                refs: 0,
                damaged: false,
            });
        if let Some(old) = e.live() {
            live.remove(old);
        }
        e.loc = Some(loc);
        e.compressed = header.compressed;
        e.len = header.chunk.len;
        e.damaged = false;
        if let Some(new) = e.live() {
            live.add(new);
        }
    }

    /// A retained chunked checkpoint at `loc`.
    pub fn add_manifest(&mut self, live: &mut LiveSegments, loc: &Loc, manifest: Manifest) {
        for hash in &manifest.chunks {
            let e = self.map.entry((manifest.uid, *hash)).or_insert(ChunkEntry {
                loc: None,
                compressed: false,
                len: 0,
                refs: 0,
                damaged: false,
            });
            e.refs += 1;
            if e.refs == 1 {
                if let Some(l) = e.loc {
                    live.add(&l);
                }
            }
        }
        if let Some(old) = self.manifests.insert(at(loc), manifest) {
            // The same place twice (never written so): its first use counts no more.
            self.drop_refs(live, &old);
        }
    }

    /// The record at `loc` is dead: if it was a chunked checkpoint, its chunks lose a use.
    /// Returns the bytes of the chunk records that died with it.
    pub fn released(&mut self, live: &mut LiveSegments, loc: &Loc) -> u64 {
        if !loc.is_chunked() {
            return 0;
        }
        match self.manifests.remove(&at(loc)) {
            Some(m) => self.drop_refs(live, &m),
            None => 0,
        }
    }

    fn drop_refs(&mut self, live: &mut LiveSegments, m: &Manifest) -> u64 {
        let mut freed = 0;
        for hash in &m.chunks {
            let key = (m.uid, *hash);
            let Some(e) = self.map.get_mut(&key) else {
                continue;
            };
            e.refs = e.refs.saturating_sub(1);
            if e.refs == 0 {
                if let Some(l) = e.loc {
                    live.remove(&l);
                    freed += l.record_len();
                }
                if !self.replaying {
                    self.map.remove(&key);
                }
            }
        }
        freed
    }

    /// The chunks the retained chunked checkpoint at `loc` is counted as using.
    pub fn manifest(&self, loc: &Loc) -> Option<Manifest> {
        self.manifests.get(&at(loc)).cloned()
    }

    /// A read found this chunk's record damaged.
    pub fn mark_damaged(&mut self, key: &ChunkKey) {
        if let Some(e) = self.map.get_mut(key) {
            e.damaged = true;
        }
    }

    /// The end of replay: chunks no retained checkpoint uses are forgotten (their records are
    /// dead); returns the chunks used but found nowhere.
    pub fn settle(&mut self) -> Vec<ChunkKey> {
        self.replaying = false;
        self.map.retain(|_, e| e.refs > 0);
        self.map
            .iter()
            .filter(|(_, e)| e.loc.is_none())
            .map(|(k, _)| *k)
            .collect()
    }

    /// The live chunks, as the snapshot keeps them.
    fn live_chunks(&self) -> impl Iterator<Item = SnapChunk> + '_ {
        self.map.iter().filter_map(|((uid, hash), e)| {
            Some(SnapChunk {
                uid: *uid,
                chunk: ChunkRef {
                    hash: *hash,
                    len: e.len,
                },
                compressed: e.compressed,
                loc: *e.live()?,
            })
        })
    }

    /// The live chunks whose records are in `segment`, to copy forward.
    pub fn in_segment(&self, segment: u32) -> Vec<SnapChunk> {
        self.live_chunks()
            .filter(|c| c.loc.segment == segment)
            .collect()
    }

    /// Everything, for the index snapshot.
    pub fn export(&self) -> (Vec<SnapChunk>, Vec<(Loc, Manifest)>) {
        let chunks = self.live_chunks().collect();
        let manifests = self
            .manifests
            .iter()
            .map(|(&(segment, offset), m)| {
                let loc = Loc {
                    segment,
                    offset,
                    header_len: 0,
                    payload_len: 0,
                };
                (loc, m.clone())
            })
            .collect();
        (chunks, manifests)
    }

    /// Starts from a snapshot's chunks and manifests.
    pub fn restore(
        &mut self,
        live: &mut LiveSegments,
        chunks: Vec<SnapChunk>,
        manifests: Vec<(Loc, Manifest)>,
    ) {
        for c in chunks {
            let header = ChunkHeader {
                uid: c.uid,
                chunk: c.chunk,
                compressed: c.compressed,
            };
            self.stored(live, &header, c.loc);
        }
        for (loc, m) in manifests {
            self.add_manifest(live, &loc, m);
        }
    }

    /// The bytes the records of the chunks these checkpoints use take, each chunk once.
    pub fn bytes_used_by(&self, records: &[Loc]) -> u64 {
        let mut seen = std::collections::HashSet::new();
        let mut bytes = 0;
        for m in records.iter().filter_map(|l| self.manifests.get(&at(l))) {
            for hash in &m.chunks {
                let key = (m.uid, *hash);
                if seen.insert(key) {
                    if let Some(l) = self.map.get(&key).and_then(|e| e.loc) {
                        bytes += l.record_len();
                    }
                }
            }
        }
        bytes
    }

    /// Distinct chunks, and the bytes their records take.
    pub fn usage(&self) -> (u64, u64) {
        let bytes = self
            .map
            .values()
            .filter_map(|e| e.live())
            .map(|l| l.record_len())
            .sum();
        (self.map.len() as u64, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(segment: u32, offset: u64) -> Loc {
        Loc {
            segment,
            offset,
            header_len: 40,
            payload_len: 1000,
        }
    }

    fn header(uid: u32, h: u8) -> ChunkHeader {
        ChunkHeader {
            uid,
            chunk: ChunkRef {
                hash: [h; 16],
                len: 3000,
            },
            compressed: true,
        }
    }

    #[test]
    fn a_chunk_lives_while_a_checkpoint_uses_it_and_moves_when_copied() {
        let mut live = LiveSegments::default();
        let mut c = Chunks::default();
        c.stored(&mut live, &header(1, 7), loc(1, 100));
        let ckpt = loc(1, 2000).chunked(6000);
        let m = Manifest {
            uid: 1,
            chunks: vec![[7; 16], [7; 16]],
        };
        c.add_manifest(&mut live, &ckpt, m.clone());
        assert_eq!(live.in_segment(1).records, 1);
        // Another user's same bytes are another chunk.
        assert!(!c.usable(&(2, [7; 16])));
        // Copied forward: the old place counts no more.
        c.stored(&mut live, &header(1, 7), loc(2, 100));
        assert_eq!(live.in_segment(1).records, 0);
        assert_eq!(live.in_segment(2).records, 1);
        let second = loc(2, 3000).chunked(3000);
        c.add_manifest(
            &mut live,
            &second,
            Manifest {
                uid: 1,
                chunks: vec![[7; 16]],
            },
        );
        c.released(&mut live, &ckpt);
        assert!(c.usable(&(1, [7; 16])), "still used by the second");
        c.released(&mut live, &second);
        assert!(!c.usable(&(1, [7; 16])), "gone with its last use");
        assert_eq!(live.in_segment(2).records, 0);
    }

    #[test]
    fn an_entry_costs_what_the_module_says() {
        // The map's slot (key and entry) plus its control byte at hashbrown's 7/8 load, and a
        // manifest's slot: what the module's figures are made of.
        let slot = std::mem::size_of::<(ChunkKey, ChunkEntry)>();
        assert!(slot + 2 <= 90, "{slot} bytes a chunk");
        let manifest = std::mem::size_of::<((u32, u64), Manifest)>();
        assert!(manifest <= 48, "{manifest} bytes a chunked checkpoint");
        assert_eq!(std::mem::size_of::<ChunkHash>(), 16, "a reference");
    }

    #[test]
    fn replay_keeps_an_unused_chunk_until_it_settles_and_reports_a_missing_one() {
        let mut live = LiveSegments::default();
        let mut c = Chunks::replaying();
        c.stored(&mut live, &header(1, 1), loc(1, 100));
        c.stored(&mut live, &header(1, 2), loc(1, 200));
        let a = loc(1, 300).chunked(1);
        c.add_manifest(
            &mut live,
            &a,
            Manifest {
                uid: 1,
                chunks: vec![[1; 16], [3; 16]],
            },
        );
        c.released(&mut live, &a);
        let b = loc(1, 400).chunked(1);
        c.add_manifest(
            &mut live,
            &b,
            Manifest {
                uid: 1,
                chunks: vec![[1; 16], [3; 16]],
            },
        );
        assert_eq!(c.settle(), vec![(1, [3; 16])]);
        assert!(c.usable(&(1, [1; 16])));
        assert!(c.get(&(1, [2; 16])).is_none(), "never used: forgotten");
        assert_eq!(live.in_segment(1).records, 1);
    }
}
