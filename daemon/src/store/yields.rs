//! Whether cutting a session's payloads into chunks pays, for either engine.

use std::collections::HashMap;

use crate::model::SessionKey;

/// After this many large payloads of a session in a row that shared no chunk and compressed
/// none (random or already compressed bytes), its next ones are stored whole...
const MISSES_TO_STORE_WHOLE: u32 = 4;
/// ...but every so many is cut again, to see whether that has changed.
const PROBE_EVERY: u32 = 16;
/// Sessions tracked at most (the map starts over beyond: a few payloads cut needlessly).
const TRACKED: usize = 1 << 16;

/// Whether cutting each session's payloads pays. Cutting and hashing cost about 1 us per KiB
/// on this project's 2-core machines, which a session whose bytes never repeat nor compress
/// pays for nothing; its payloads are stored whole instead, as with chunking off.
#[derive(Debug, Default)]
pub struct Yields {
    sessions: HashMap<SessionKey, Yield>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Yield {
    misses: u32,
    since_probe: u32,
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

    /// What cutting the session's payload came to.
    pub fn record(&mut self, session: &SessionKey, gained: bool) {
        if gained {
            self.sessions.remove(session);
            return;
        }
        if self.sessions.len() >= TRACKED && !self.sessions.contains_key(session) {
            self.sessions.clear();
        }
        let y = self.sessions.entry(session.clone()).or_default();
        y.misses = y.misses.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_whose_payloads_gain_nothing_is_stored_whole_and_probed_now_and_then() {
        let (s, other) = (SessionKey::new(1, "s"), SessionKey::new(1, "t"));
        let mut y = Yields::default();
        for _ in 0..MISSES_TO_STORE_WHOLE {
            assert!(y.cut(&s));
            y.record(&s, false);
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
        // A probe that gains: cut again from then on.
        y.record(&s, true);
        assert!((0..PROBE_EVERY).all(|_| y.cut(&s)));
    }
}
