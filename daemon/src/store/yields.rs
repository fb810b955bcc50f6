//! Whether cutting a session's payloads into chunks pays, and cutting them ahead of the
//! commit: one policy for either engine.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::chunking::{self, ChunkHash, ChunkRef, LastCut, Prepared};
use crate::model::{CheckedPayload, SessionKey};

/// What an engine's readers do ahead of the commit with its large payloads (`--chunking`):
/// cut them, or mark them to be stored whole, as [`Yields`] says.
#[derive(Debug, Default)]
pub struct Cutting {
    enabled: bool,
    yields: Mutex<Yields>,
    lasts: Mutex<Lasts>,
}

/// Bytes of sessions' last cut payloads kept at most (the map starts over beyond: a few
/// payloads cut in full).
const LASTS_BUDGET: usize = 32 << 20;

/// Each session's last cut payload, by which its next one is cut (`chunking::split_reusing`).
#[derive(Debug, Default)]
struct Lasts {
    sessions: HashMap<SessionKey, LastCut>,
    bytes: usize,
}

impl Lasts {
    fn take(&mut self, session: &SessionKey) -> Option<LastCut> {
        let last = self.sessions.remove(session)?;
        self.bytes -= last.bytes.len();
        Some(last)
    }

    fn keep(&mut self, session: &SessionKey, last: LastCut) {
        let len = last.bytes.len();
        if len > LASTS_BUDGET / 4 {
            return;
        }
        if self.bytes + len > LASTS_BUDGET {
            self.sessions.clear();
            self.bytes = 0;
        }
        if let Some(was) = self.sessions.insert(session.clone(), last) {
            self.bytes -= was.bytes.len();
        }
        self.bytes += len;
    }
}

impl Cutting {
    pub fn new(enabled: bool) -> Self {
        Cutting {
            enabled,
            ..Cutting::default()
        }
    }

    fn lasts(&self) -> MutexGuard<'_, Lasts> {
        self.lasts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn yields(&self) -> MutexGuard<'_, Yields> {
        self.yields.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether [`Cutting::prepare`] would cut a payload of `len` bytes of the session.
    pub fn prepares(&self, uid: u32, name: &str, len: usize) -> bool {
        self.enabled
            && chunking::chunked(len)
            && self.yields().would_cut(&SessionKey::new(uid, name))
    }

    /// Cuts and packs `payload` for `session` (`known` says which chunks the store holds), or
    /// marks it to be stored whole.
    pub fn prepare(
        &self,
        uid: u32,
        name: &str,
        payload: &mut CheckedPayload,
        known: impl Fn(&[ChunkRef]) -> Vec<bool>,
    ) {
        if !self.enabled || !chunking::chunked(payload.bytes.len()) {
            return;
        }
        let session = &SessionKey::new(uid, name);
        if !self.yields().cut(session) {
            payload.whole = true;
            return;
        }
        let last = self.lasts().take(session);
        let prepared = chunking::prepare(&payload.bytes, last.as_ref(), known);
        // Its buffer reused: a copy of the new bytes, not an allocation per payload.
        let mut bytes = last.map(|l| l.bytes).unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&payload.bytes);
        let cut = LastCut {
            bytes,
            chunks: prepared.chunks.clone(),
        };
        self.lasts().keep(session, cut);
        if self.yields().judge(session, &prepared) {
            payload.prepared = Some(Box::new(prepared));
        } else {
            payload.whole = true;
        }
    }
}

/// After this many large payloads of a session in a row that shared no chunk and compressed
/// none (random or already compressed bytes), its next ones are stored whole without being
/// cut...
const MISSES_TO_STORE_WHOLE: u32 = 4;
/// ...but every so many is cut again, to see whether that has changed.
const PROBE_EVERY: u32 = 16;
/// Sessions tracked at most (the map starts over beyond: a few payloads cut needlessly).
const TRACKED: usize = 1 << 14;
/// How many of a cut payload's chunk hashes are kept, the smallest: all of them for a payload
/// of up to this many chunks (about 256 KiB), else a sample that a payload sharing much with
/// it shares some of (a bottom-k sketch), whatever part of it changed.
const SKETCH: usize = 32;

/// Whether cutting each session's payloads pays. A payload that shares no chunk with what the
/// store holds or with its session's last payload, and compresses nowhere, gains nothing from
/// chunks: it is stored whole (one record or row, read back in one piece). Cutting and hashing
/// cost about 1 us per KiB on this project's 2-core machines, which a session whose bytes never
/// repeat nor compress pays for nothing: after a few such payloads its next ones are not cut.
#[derive(Debug, Default)]
pub struct Yields {
    sessions: HashMap<SessionKey, Yield>,
}

#[derive(Debug, Default, Clone)]
struct Yield {
    misses: u32,
    since_probe: u32,
    /// The smallest chunk hashes of its last cut payload.
    sketch: Vec<ChunkHash>,
}

/// The `SKETCH` smallest of `chunks`' hashes, sorted.
fn sketch(chunks: &[ChunkRef]) -> Vec<ChunkHash> {
    let mut hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes.truncate(SKETCH);
    hashes
}

impl Yields {
    /// What [`Yields::cut`] will say, without counting the payload.
    pub fn would_cut(&self, session: &SessionKey) -> bool {
        self.sessions
            .get(session)
            .is_none_or(|y| y.misses < MISSES_TO_STORE_WHOLE || y.since_probe + 1 >= PROBE_EVERY)
    }

    /// Whether to cut the session's next payload.
    pub fn cut(&mut self, session: &SessionKey) -> bool {
        let Some(y) = self.sessions.get_mut(session) else {
            return true;
        };
        if y.misses < MISSES_TO_STORE_WHOLE {
            return true;
        }
        y.since_probe += 1;
        if y.since_probe >= PROBE_EVERY {
            y.since_probe = 0;
            return true;
        }
        false
    }

    /// What cutting the session's payload came to: whether to store it in its chunks (a chunk
    /// the store holds, one that compressed, or one the session's last cut payload had),
    /// rather than whole.
    pub fn judge(&mut self, session: &SessionKey, prepared: &Prepared) -> bool {
        let now = sketch(&prepared.chunks);
        if self.sessions.len() >= TRACKED && !self.sessions.contains_key(session) {
            self.sessions.clear();
        }
        let y = self.sessions.entry(session.clone()).or_default();
        let shared = now.iter().any(|h| y.sketch.binary_search(h).is_ok());
        let gained = shared || prepared.gained();
        y.sketch = now;
        if gained {
            y.misses = 0;
            y.since_probe = 0;
        } else {
            y.misses = y.misses.saturating_add(1);
        }
        gained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::Stored;

    /// A payload cut into chunks named `names`, none of which the store held or compressed
    /// (or, with `packed`, the first compressed).
    fn cut(names: impl IntoIterator<Item = u64>, packed: bool) -> Prepared {
        let chunks: Vec<ChunkRef> = names
            .into_iter()
            .map(|n| ChunkRef {
                hash: crate::chunking::hash(&n.to_le_bytes()),
                len: 8192,
            })
            .collect();
        let parts = (0..chunks.len())
            .map(|i| {
                let stored = if packed && i == 0 {
                    Stored::Packed {
                        bytes: vec![0; 10],
                        crc: 0,
                    }
                } else {
                    Stored::Raw { crc: 0 }
                };
                (i * 8192, stored)
            })
            .collect();
        Prepared { chunks, parts }
    }

    #[test]
    fn a_session_whose_payloads_gain_nothing_is_stored_whole_and_probed_now_and_then() {
        let (s, other) = (SessionKey::new(1, "s"), SessionKey::new(1, "t"));
        let mut y = Yields::default();
        for i in 0..MISSES_TO_STORE_WHOLE as u64 {
            assert!(y.cut(&s));
            assert!(
                !y.judge(&s, &cut(i * 100..i * 100 + 30, false)),
                "stored whole"
            );
        }
        let cuts: Vec<bool> = (0..2 * PROBE_EVERY)
            .map(|_| {
                let said = y.would_cut(&s);
                let cut = y.cut(&s);
                assert_eq!(said, cut, "would_cut foretells cut");
                cut
            })
            .collect();
        assert_eq!(cuts.iter().filter(|c| **c).count(), 2, "{cuts:?}");
        assert!(
            cuts[PROBE_EVERY as usize - 1],
            "the probe comes every {PROBE_EVERY}"
        );
        assert!(y.cut(&other), "another session is cut");
        // A probe that gains (a chunk compressed): cut again from then on.
        assert!(y.judge(&s, &cut(5000..5030, true)));
        assert!((0..PROBE_EVERY).all(|_| y.cut(&s)));
    }

    #[test]
    fn a_payload_sharing_chunks_with_its_sessions_last_is_stored_in_chunks() {
        let (s, other) = (SessionKey::new(1, "s"), SessionKey::new(1, "t"));
        let mut y = Yields::default();
        // The first of a session's incompressible states: nothing to share yet, stored whole;
        // the next, mostly the same bytes, is stored in chunks, so that later ones share them.
        assert!(!y.judge(&s, &cut(0..25, false)));
        assert!(y.judge(&s, &cut(1..26, false)));
        // Another session's last payload is not what this one's shares.
        assert!(!y.judge(&other, &cut(2..27, false)));
        // Large payloads (more chunks than the sketch keeps) sharing nine chunks in ten, the
        // changed ones anywhere, are found to share; disjoint ones are not.
        let big = SessionKey::new(1, "big");
        assert!(!y.judge(&big, &cut(0..400, false)));
        assert!(y.judge(&big, &cut((0..400).filter(|i| i % 10 != 3), false)));
        assert!(!y.judge(&big, &cut(10_000..10_400, false)));
    }
}
