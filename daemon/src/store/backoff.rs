//! Back-off for disk (or database) work that failed: tried again soon after the first
//! failure, then less and less often, up to a bound, and at once again after a success.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    delay: Duration,
    until: Option<Instant>,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            delay: first,
            until: None,
        }
    }

    pub fn failed(&mut self) {
        self.until = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(self.max);
    }

    pub fn succeeded(&mut self) {
        self.until = None;
        self.delay = self.first;
    }

    /// How long until the work may be tried again; `None`: now.
    pub fn remaining(&self) -> Option<Duration> {
        self.until
            .and_then(|u| u.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }
}
