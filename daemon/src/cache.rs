//! The latest checkpoint of recently written or read sessions, kept in memory so that `get`
//! and `resume` answer without touching the disk or leaving the connection's task.
//!
//! An entry is only ever a hint: it is served only while the table's latest checkpoint of the
//! session is exactly the cached one (same number, time and place in the log, and places are
//! never reused), so a stale or racing insert can cost a miss, never a wrong answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sessiond_proto::Meta;

use crate::model::CkptEntry;
use crate::model::SessionKey;

/// A checkpoint as served: its index entry, meta and (acknowledged or verified) payload.
#[derive(Debug)]
pub struct Cached {
    pub entry: CkptEntry,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub meta: Meta,
    pub payload: Vec<u8>,
}

/// Bytes an entry is charged: the payload dominates; the rest estimates the bookkeeping.
fn cost(payload_len: usize, key: &SessionKey) -> usize {
    cost_of(payload_len, key.name.len())
}

fn cost_of(payload_len: usize, name_len: usize) -> usize {
    payload_len + name_len + 128
}

impl Cached {
    fn cost(&self, key: &SessionKey) -> usize {
        cost(self.payload.len(), key)
    }
}

#[derive(Default)]
struct Inner {
    entries: foldhash::HashMap<SessionKey, Arc<Cached>>,
    /// Insertion order, oldest first, for eviction; may name replaced entries (skipped).
    order: VecDeque<(SessionKey, CkptEntry)>,
    bytes: usize,
}

pub struct LatestCache {
    budget: usize,
    inner: Mutex<Inner>,
}

impl LatestCache {
    /// A cache holding at most `budget` bytes (0 disables it). One payload may take an eighth.
    pub fn new(budget: usize) -> Self {
        LatestCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached checkpoint of `key` if it is `latest`.
    pub fn get(&self, key: &SessionKey, latest: &CkptEntry) -> Option<Arc<Cached>> {
        if self.budget == 0 {
            return None;
        }
        self.lock()
            .entries
            .get(key)
            .filter(|c| c.entry == *latest)
            .cloned()
    }

    /// Whether a payload of `len` bytes would be kept for `key`.
    pub fn admits(&self, key: &SessionKey, len: usize) -> bool {
        cost(len, key) <= self.budget / 8
    }

    /// Caches `value` as the latest of `key`, replacing what was there; too large a payload
    /// only removes the old entry.
    pub fn put(&self, key: SessionKey, value: Cached) {
        if self.budget == 0 {
            return;
        }
        let cost = value.cost(&key);
        let admitted = self.admits(&key, value.payload.len());
        let mut inner = self.lock();
        if !admitted {
            if let Some(old) = inner.entries.remove(&key) {
                inner.bytes -= old.cost(&key);
            }
            return;
        }
        inner.order.push_back((key.clone(), value.entry));
        inner.bytes += cost;
        // The old entry's key is this one: it is charged as this one is.
        let name_len = key.name.len();
        if let Some(old) = inner.entries.insert(key, Arc::new(value)) {
            inner.bytes -= cost_of(old.payload.len(), name_len);
        }
        while inner.bytes > self.budget {
            let Some((key, entry)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&key).is_some_and(|c| c.entry == entry) {
                if let Some(old) = inner.entries.remove(&key) {
                    inner.bytes -= old.cost(&key);
                }
            }
        }
        // Replaced entries leave stale names in `order`; keep it proportional to the map.
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(k, e)| entries.get(k).is_some_and(|c| c.entry == *e));
        }
    }

    pub fn remove(&self, key: &SessionKey) {
        if self.budget == 0 {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(key) {
            inner.bytes -= old.cost(key);
        }
    }

    /// Bytes held (estimated).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Loc;

    fn entry(number: u64, offset: u64) -> CkptEntry {
        let loc = Loc {
            segment: 1,
            offset,
            header_len: 10,
            payload_len: 0,
        };
        CkptEntry::new(number, loc).unwrap()
    }

    fn cached(e: CkptEntry, len: usize) -> Cached {
        Cached {
            entry: e,
            created_at: e.number as i64,
            meta: Meta::new(),
            payload: vec![e.number as u8; len],
        }
    }

    fn key(n: u32) -> SessionKey {
        SessionKey::new(n, format!("s{n}"))
    }

    #[test]
    fn serves_only_the_exact_latest_entry() {
        let c = LatestCache::new(1 << 20);
        c.put(key(1), cached(entry(3, 100), 10));
        assert!(c.get(&key(1), &entry(3, 100)).is_some());
        // Same number elsewhere in the log (another session of that name, a relocation).
        assert!(c.get(&key(1), &entry(3, 900)).is_none());
        assert!(c.get(&key(1), &entry(4, 100)).is_none());
        assert!(c.get(&key(2), &entry(3, 100)).is_none());
        c.remove(&key(1));
        assert!(c.get(&key(1), &entry(3, 100)).is_none());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn stays_within_its_budget_evicting_oldest_first() {
        let c = LatestCache::new(64 << 10);
        for i in 0..1000u32 {
            c.put(key(i), cached(entry(u64::from(i), u64::from(i)), 1000));
            assert!(c.bytes() <= 64 << 10);
        }
        assert!(c.get(&key(999), &entry(999, 999)).is_some());
        assert!(c.get(&key(0), &entry(0, 0)).is_none());
        // Too large for the cache: not kept, and the older entry is gone too.
        c.put(key(999), cached(entry(1000, 5000), 9000));
        assert!(c.get(&key(999), &entry(999, 999)).is_none());
        assert!(c.get(&key(999), &entry(1000, 5000)).is_none());
    }

    #[test]
    fn rewriting_one_session_does_not_grow_the_eviction_queue() {
        let c = LatestCache::new(1 << 20);
        for i in 0..100_000u64 {
            c.put(key(1), cached(entry(i, i), 10));
        }
        assert!(c.lock().order.len() <= 2 + 64);
        assert!(c.get(&key(1), &entry(99_999, 99_999)).is_some());
    }
}
