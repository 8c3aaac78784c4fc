//! A cheap reading of the system's monotonic clock, for the stamps taken on every checkout and
//! return.
//!
//! `Instant::now()` costs about 23 ns on Linux (a vDSO `clock_gettime(CLOCK_MONOTONIC)` that
//! reads the TSC), which was a third of an uncontended get+drop. Idle times and lifetimes are
//! minutes or hundreds of milliseconds, so the coarse clock the kernel keeps per tick (1-10 ms
//! resolution, about 4 ns to read) is precise enough for them.

use std::time::Instant;

/// The system's monotonic clock, at most one kernel tick (1-10 ms) away from
/// `Instant::now()`, where the platform has a cheaper coarse clock (Linux, Android); elsewhere
/// `Instant::now()` itself.
///
/// [`TokioRuntime`](crate::TokioRuntime) and [`SmolRuntime`](crate::SmolRuntime) return it
/// from [`Runtime::coarse_now`](crate::Runtime::coarse_now); a runtime of your own on the
/// system clock can do the same.
pub fn coarse_now() -> Instant {
    imp::coarse_now()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use rustix::time::{ClockId, clock_gettime};
    use std::{
        sync::OnceLock,
        time::{Duration, Instant},
    };

    /// An `Instant` and the coarse clock read together, so that later coarse readings can be
    /// turned into `Instant`s. The anchor's coarse reading lags its `Instant` by up to a tick,
    /// so converted readings may run up to a tick ahead of `Instant::now()`; monotonic either
    /// way, since both clocks are `CLOCK_MONOTONIC`.
    static ANCHOR: OnceLock<(Instant, Duration)> = OnceLock::new();

    fn coarse() -> Duration {
        let time = clock_gettime(ClockId::MonotonicCoarse);
        // CLOCK_MONOTONIC counts from boot: never negative, nanoseconds below 1e9.
        Duration::new(
            u64::try_from(time.tv_sec).unwrap_or(0),
            u32::try_from(time.tv_nsec).unwrap_or(0),
        )
    }

    pub(super) fn coarse_now() -> Instant {
        let (instant, coarse_then) = *ANCHOR.get_or_init(|| (Instant::now(), coarse()));
        instant + coarse().saturating_sub(coarse_then)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::time::Instant;

    pub(super) fn coarse_now() -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::coarse_now;
    use std::time::{Duration, Instant};

    #[test]
    fn stays_within_a_tick_of_the_precise_clock() {
        // Generous: a kernel tick is at most 10 ms (HZ=100); a descheduled thread adds more.
        let slack = Duration::from_millis(50);
        for _ in 0..1000 {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse + slack >= before, "{coarse:?} lags {before:?}");
            assert!(coarse <= after + slack, "{coarse:?} leads {after:?}");
        }
    }

    #[test]
    fn never_goes_back() {
        let mut last = coarse_now();
        for _ in 0..100_000 {
            let now = coarse_now();
            assert!(now >= last);
            last = now;
        }
    }

    #[test]
    fn advances() {
        let start = coarse_now();
        std::thread::sleep(Duration::from_millis(30));
        assert!(coarse_now().saturating_duration_since(start) >= Duration::from_millis(15));
    }
}
