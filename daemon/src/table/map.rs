//! The map of sessions by user and name. Each value is boxed and carries its own key, so a
//! name is stored once and an entry costs one pointer in the hash table: for 100,000 sessions
//! about 20 MB less than a map of (key, session) pairs, whose buckets would hold both whole.
//! Lookups borrow the name; none allocates. Hashed with foldhash, seeded at random per
//! process: names come only from local users the daemon has identified by their socket
//! credentials, and SipHash cost more than any other part of a lookup.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::hash_table::{Entry, HashTable};

/// A value that knows its key.
pub trait Keyed {
    fn key(&self) -> (u32, &str);
}

#[derive(Debug)]
pub struct SessionMap<T> {
    table: HashTable<Box<T>>,
    hasher: RandomState,
}

impl<T> Default for SessionMap<T> {
    fn default() -> Self {
        SessionMap {
            table: HashTable::new(),
            hasher: RandomState::default(),
        }
    }
}

impl<T: Keyed> SessionMap<T> {
    pub fn with_capacity(n: usize) -> Self {
        SessionMap {
            table: HashTable::with_capacity(n),
            hasher: RandomState::default(),
        }
    }

    fn hash(hasher: &RandomState, uid: u32, name: &str) -> u64 {
        hasher.hash_one((uid, name))
    }

    pub fn get(&self, uid: u32, name: &str) -> Option<&T> {
        let hash = Self::hash(&self.hasher, uid, name);
        self.table
            .find(hash, |v| v.key() == (uid, name))
            .map(|b| &**b)
    }

    pub fn get_mut(&mut self, uid: u32, name: &str) -> Option<&mut T> {
        let hash = Self::hash(&self.hasher, uid, name);
        self.table
            .find_mut(hash, |v| v.key() == (uid, name))
            .map(|b| &mut **b)
    }

    /// The value for `(uid, name)`, made by `make` (which must give it that key) if absent.
    pub fn get_or_insert_with(&mut self, uid: u32, name: &str, make: impl FnOnce() -> T) -> &mut T {
        let hasher = &self.hasher;
        let hash = Self::hash(hasher, uid, name);
        let entry = self.table.entry(
            hash,
            |v| v.key() == (uid, name),
            |v| {
                let (u, n) = v.key();
                Self::hash(hasher, u, n)
            },
        );
        match entry {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let value = Box::new(make());
                debug_assert!(value.key() == (uid, name));
                v.insert(value).into_mut()
            }
        }
    }

    /// Inserts `value` under its own key, replacing any value there.
    pub fn insert(&mut self, value: T) {
        let (uid, name) = value.key();
        let hash = Self::hash(&self.hasher, uid, name);
        if let Ok(old) = self.table.find_entry(hash, |v| v.key() == (uid, name)) {
            old.remove();
        }
        let hasher = &self.hasher;
        self.table.insert_unique(hash, Box::new(value), |v| {
            let (u, n) = v.key();
            Self::hash(hasher, u, n)
        });
    }

    pub fn remove(&mut self, uid: u32, name: &str) -> Option<T> {
        let hash = Self::hash(&self.hasher, uid, name);
        self.table
            .find_entry(hash, |v| v.key() == (uid, name))
            .ok()
            .map(|o| *o.remove().0)
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.table.iter().map(|b| &**b)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(u32, String, u64);

    impl Keyed for V {
        fn key(&self) -> (u32, &str) {
            (self.0, &self.1)
        }
    }

    #[test]
    fn keys_are_user_and_name() {
        let mut m = SessionMap::with_capacity(0);
        for i in 0..1000u32 {
            m.insert(V(i % 3, format!("s{i}"), 1));
        }
        m.insert(V(1, "s1".into(), 2));
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get(1, "s1"), Some(&V(1, "s1".into(), 2)));
        assert_eq!(m.get(0, "s1"), None, "another user's session of that name");
        m.get_mut(2, "s2").unwrap().2 = 9;
        assert_eq!(m.get_or_insert_with(2, "s2", || unreachable!()).2, 9);
        assert_eq!(
            m.get_or_insert_with(7, "new", || V(7, "new".into(), 3)).2,
            3
        );
        assert_eq!(m.remove(1, "s1"), Some(V(1, "s1".into(), 2)));
        assert_eq!(m.remove(1, "s1"), None);
        assert_eq!(m.len(), 1000);
        assert_eq!(m.values().filter(|v| v.0 == 7).count(), 1);
    }
}
