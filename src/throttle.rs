//! At most one warning a second for an event that can come once per call. In an outage every
//! waiting call times out, and without a runtime (so without backoff) every call that needs a
//! connection dials and fails: a thousand callers would write thousands of warnings a second,
//! each saying the same thing. The rest are logged at debug, and the next warning says how
//! many there were.

use crate::{
    clock::{self, Stamp},
    sync::{AtomicU64, Ordering},
};
use std::{fmt, time::Duration};

/// How often such a warning may be written.
const INTERVAL: Duration = Duration::from_secs(1);

/// Lets one event a second through as a warning; counts the others.
pub(crate) struct Throttle {
    /// When the next warning may be written, as a [`Stamp`].
    next_at: AtomicU64,
    /// Events held back since the last warning.
    held_back: AtomicU64,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Self {
            next_at: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// Whether an event at `now` may be a warning, and if so how many were held back since
    /// the last one. Counts and exact instants need no ordering: a warning that reports one
    /// event too few or too many, or two warnings in the same second under a race, are fine.
    pub(crate) fn admit(&self, now: Stamp) -> Option<u64> {
        let due = self.next_at.load(Ordering::Relaxed);
        let next = now.saturating_add(clock::nanos(INTERVAL));
        if now >= due
            && self
                .next_at
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The end of a warning that follows events logged at debug: "; 3 more {what} since the last
/// such warning (logged at debug)", or nothing when there were none.
pub(crate) struct HeldBack {
    pub(crate) count: u64,
    /// What happened to the held-back events, as a past participle: "timed out".
    pub(crate) what: &'static str,
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count {
            0 => Ok(()),
            n => write!(
                f,
                "; {n} more {} since the last such warning (logged at debug)",
                self.what
            ),
        }
    }
}

impl HeldBack {
    /// The level of an event's log line and the end of it, from what [`Throttle::admit`]
    /// said of the event: a warning with the count held back, or debug.
    pub(crate) fn level(admitted: Option<u64>, what: &'static str) -> (log::Level, Self) {
        match admitted {
            Some(count) => (log::Level::Warn, Self { count, what }),
            None => (log::Level::Debug, Self { count: 0, what }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_a_second_passes_and_reports_those_held_back() {
        let throttle = Throttle::new();
        let start: Stamp = 1 << 62;
        assert_eq!(throttle.admit(start), Some(0));
        for offset in [0, 1, 500_000_000, 999_999_999] {
            assert_eq!(throttle.admit(start + offset), None);
        }
        assert_eq!(throttle.admit(start + 1_000_000_000), Some(4));
        assert_eq!(throttle.admit(start + 1_500_000_000), None);
        assert_eq!(throttle.admit(start + 60_000_000_000), Some(1));
    }
}
