//! What a commit batch has planned but not yet made durable, as later mutations of the same
//! batch see it: each touched session's state and how its retained checkpoints differ from
//! the table's (added, dropped by retention, removed, attached). A `batch` request plans its
//! ops against the overlay with a journal, so that a failing op rolls back the ops before it.

use std::collections::HashSet;

use sessiond_proto::{CheckpointRef, Meta};

use super::Session;
use crate::model::{KeyEntry, SessionKey, SessionState};

/// A checkpoint the batch adds.
#[derive(Debug, Clone)]
pub(super) struct StagedCkpt {
    pub number: u64,
    pub key: Option<(String, KeyEntry)>,
    pub meta: Meta,
}

/// A session as the batch sees it.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub state: SessionState,
    /// The table's session under this key is not this one (none, or one deleted in the batch):
    /// its checkpoints are not seen.
    pub fresh: bool,
    /// How many of the table's retained checkpoints, oldest first, the batch passed by
    /// retention.
    base_front: usize,
    added: Vec<StagedCkpt>,
    added_front: usize,
    /// Checkpoints the batch removes (`delete_checkpoints`, `prune`).
    removed: HashSet<u64>,
    /// Attachments the batch writes: (checkpoint number, attach key).
    attached: HashSet<(u64, String)>,
    pub count: u64,
}

impl Staged {
    pub fn of_table(s: &Session) -> Self {
        Staged {
            state: s.state.clone(),
            fresh: false,
            base_front: 0,
            added: Vec::new(),
            added_front: 0,
            removed: HashSet::new(),
            attached: HashSet::new(),
            count: s.checkpoints.len() as u64,
        }
    }

    pub fn fresh(state: SessionState) -> Self {
        Staged {
            state,
            fresh: true,
            base_front: 0,
            added: Vec::new(),
            added_front: 0,
            removed: HashSet::new(),
            attached: HashSet::new(),
            count: 0,
        }
    }

    /// Whether the batch wrote checkpoints or attachments of this session, whose payloads are
    /// not yet where a read finds them.
    pub fn has_unwritten_payloads(&self) -> bool {
        !self.added.is_empty() || !self.attached.is_empty()
    }
}

/// A staged session with the table's session it differs from.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub staged: &'a Staged,
    pub base: Option<&'a Session>,
}

impl<'a> View<'a> {
    fn base_entries(&self) -> impl DoubleEndedIterator<Item = u64> + 'a {
        let (base, front, removed) = (self.base, self.staged.base_front, &self.staged.removed);
        base.into_iter()
            .flat_map(move |s| s.checkpoints.iter().skip(front).map(|c| c.number))
            .filter(move |n| !removed.contains(n))
    }

    fn added_entries(&self) -> impl DoubleEndedIterator<Item = &'a StagedCkpt> + 'a {
        let removed = &self.staged.removed;
        self.staged.added[self.staged.added_front..]
            .iter()
            .filter(move |c| !removed.contains(&c.number))
    }

    /// The retained checkpoints' numbers, oldest first.
    pub fn numbers(&self) -> impl DoubleEndedIterator<Item = u64> + 'a {
        self.base_entries()
            .chain(self.added_entries().map(|c| c.number))
    }

    pub fn latest(&self) -> Option<u64> {
        self.numbers().next_back()
    }

    pub fn retains(&self, number: u64) -> bool {
        if self.staged.removed.contains(&number) {
            return false;
        }
        if let Some(i) = self.base.and_then(|s| s.position(number)) {
            return i >= self.staged.base_front;
        }
        self.added_entries().any(|c| c.number == number)
    }

    /// A retained checkpoint's key entry, by key.
    pub fn by_key(&self, key: &str) -> Option<KeyEntry> {
        if let Some(c) = self
            .added_entries()
            .find(|c| c.key.as_ref().is_some_and(|(k, _)| k == key))
        {
            return c.key.as_ref().map(|(_, e)| *e);
        }
        let e = *self.base?.key_entry(key)?;
        self.retains(e.number).then_some(e)
    }

    pub fn key_of(&self, number: u64) -> Option<String> {
        if let Some(c) = self.added_entries().find(|c| c.number == number) {
            return c.key.as_ref().map(|(k, _)| k.clone());
        }
        self.base?.key_of(number).cloned()
    }

    /// The retained checkpoint a reference names.
    pub fn resolve(&self, which: &CheckpointRef) -> Option<u64> {
        match which {
            CheckpointRef::Number(n) => self.retains(*n).then_some(*n),
            CheckpointRef::Key(k) => self.by_key(k).map(|e| e.number),
        }
    }

    pub fn has_attachment(&self, number: u64, attach_key: &str) -> bool {
        self.staged
            .attached
            .contains(&(number, attach_key.to_string()))
            || self.base.is_some_and(|s| {
                s.attachments_of(number)
                    .iter()
                    .any(|a| a.attach_key == attach_key)
            })
    }

    /// The meta of a checkpoint the batch added (`None`: one of the table's).
    pub fn added_meta(&self, number: u64) -> Option<&'a Meta> {
        self.added_entries()
            .find(|c| c.number == number)
            .map(|c| &c.meta)
    }
}

/// Changes to a staged session's checkpoints, mirroring what [`super::SessionTable::apply`]
/// will do with them.
impl Staged {
    /// A new checkpoint, after retention makes room for it.
    pub fn add(&mut self, base: Option<&Session>, c: StagedCkpt) {
        let keep = u64::from(self.state.keep);
        while keep > 0 && self.count >= keep && self.drop_oldest(base) {}
        self.added.push(c);
        self.count += 1;
    }

    fn drop_oldest(&mut self, base: Option<&Session>) -> bool {
        if let Some(s) = base.filter(|_| !self.fresh) {
            while let Some(c) = s.checkpoints.get(self.base_front) {
                self.base_front += 1;
                if !self.removed.contains(&c.number) {
                    self.count -= 1;
                    return true;
                }
            }
        }
        while let Some(c) = self.added.get(self.added_front) {
            self.added_front += 1;
            if !self.removed.contains(&c.number) {
                self.count -= 1;
                return true;
            }
        }
        false
    }

    /// Removes retained checkpoints (the caller names only retained ones).
    pub fn remove(&mut self, numbers: &[u64]) {
        for &n in numbers {
            if self.removed.insert(n) {
                self.count -= 1;
            }
        }
    }

    pub fn attach(&mut self, number: u64, attach_key: String) {
        self.attached.insert((number, attach_key));
    }
}

/// The batch's planned-but-not-durable view of the sessions it touches (`None`: deleted).
#[derive(Debug, Default)]
pub struct Overlay {
    staged: foldhash::HashMap<SessionKey, Option<Staged>>,
    /// While a `batch` request is planned: what each session it touched was before it did.
    journal: Option<Vec<(SessionKey, Option<Option<Staged>>)>>,
}

impl Overlay {
    /// Empties it for the next batch, keeping the map's room unless a large batch left much.
    pub fn clear(&mut self) {
        if self.staged.capacity() > 1024 {
            self.staged = Default::default();
        } else {
            self.staged.clear();
        }
        self.journal = None;
    }

    pub(super) fn get(&self, key: &SessionKey) -> Option<&Option<Staged>> {
        self.staged.get(key)
    }

    /// The entry for `key`, for a change (journaled first while a batch request is planned).
    pub(super) fn entry(
        &mut self,
        key: &SessionKey,
        load: impl FnOnce() -> Option<Staged>,
    ) -> &mut Option<Staged> {
        self.journal_before_change(key);
        self.staged.entry(key.clone()).or_insert_with(load)
    }

    pub(super) fn put(&mut self, key: SessionKey, staged: Option<Staged>) {
        self.journal_before_change(&key);
        self.staged.insert(key, staged);
    }

    fn journal_before_change(&mut self, key: &SessionKey) {
        if let Some(journal) = &mut self.journal {
            if !journal.iter().any(|(k, _)| k == key) {
                journal.push((key.clone(), self.staged.get(key).cloned()));
            }
        }
    }

    /// The sessions staged but not in the table (created in the batch), with their state.
    pub(super) fn created(&self) -> impl Iterator<Item = (&SessionKey, &SessionState)> {
        self.staged.iter().filter_map(|(k, s)| {
            let s = s.as_ref().filter(|s| s.fresh)?;
            Some((k, &s.state))
        })
    }

    /// Whether a mutation reading `key`'s payloads must wait for this batch to be durable.
    pub fn has_unwritten_payloads(&self, key: &SessionKey) -> bool {
        self.staged
            .get(key)
            .is_some_and(|s| s.as_ref().is_some_and(Staged::has_unwritten_payloads))
    }

    /// Starts planning a `batch` request.
    pub(super) fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// The batch request is planned: its changes stay.
    pub(super) fn keep(&mut self) {
        self.journal = None;
    }

    /// The batch request failed: back to before it.
    pub(super) fn roll_back(&mut self) {
        for (key, before) in self.journal.take().into_iter().flatten().rev() {
            match before {
                Some(staged) => self.staged.insert(key, staged),
                None => self.staged.remove(&key),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_empties_it_and_gives_back_the_room_a_large_batch_took() {
        let key = |i: u32| SessionKey::new(i, "s");
        let mut small = Overlay::default();
        small.begin();
        small.put(key(1), None);
        small.clear();
        assert!(small.get(&key(1)).is_none() && small.journal.is_none());
        assert!(small.staged.capacity() > 0, "a small batch's room is kept");
        let mut large = Overlay::default();
        for i in 0..2000 {
            large.put(key(i), None);
        }
        large.clear();
        assert!(large.get(&key(7)).is_none());
        assert_eq!(
            large.staged.capacity(),
            0,
            "a large batch's room is given back"
        );
    }
}
