//! Live records per segment: every retained checkpoint and each session's latest state record
//! counts where it is; a record the table drops (retention, deletion, a newer state) stops
//! counting. A segment with none left can go once a snapshot covers it.

use std::collections::HashMap;

use crate::model::{IndexedSession, Loc};

/// Live records of one segment and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    pub records: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct LiveSegments {
    live: HashMap<u32, Live>,
}

impl LiveSegments {
    /// The records an index snapshot names.
    pub fn of(sessions: &[IndexedSession]) -> Self {
        let mut l = LiveSegments::default();
        for s in sessions {
            l.add(&s.state_loc);
            for c in &s.checkpoints {
                l.add(&c.loc());
            }
            for a in s.attachments.iter().flat_map(|(_, list)| list) {
                l.add(&a.loc);
            }
        }
        l
    }

    /// Counts the record at `loc` (no record has an empty header: such a place is none, as a
    /// session recreated without its state record has).
    pub fn add(&mut self, loc: &Loc) {
        if loc.header_len == 0 {
            return;
        }
        let l = self.live.entry(loc.segment).or_default();
        l.records += 1;
        l.bytes += loc.record_len();
    }

    pub fn remove(&mut self, loc: &Loc) {
        if let Some(l) = self.live.get_mut(&loc.segment) {
            l.records = l.records.saturating_sub(1);
            l.bytes = l.bytes.saturating_sub(loc.record_len());
        }
    }

    pub fn in_segment(&self, segment: u32) -> Live {
        self.live.get(&segment).copied().unwrap_or_default()
    }

    /// Forgets the (zero) count of a deleted segment.
    pub fn forget(&mut self, segment: u32) {
        self.live.remove(&segment);
    }

    /// How many segments hold a live record.
    pub fn segments_in_use(&self) -> usize {
        self.live.values().filter(|l| l.records > 0).count()
    }

    /// Live bytes over all segments.
    pub fn bytes(&self) -> u64 {
        self.live.values().map(|l| l.bytes).sum()
    }
}
