//! A cheap reading of the system's monotonic clock, for the stamps taken on every checkout and
//! return.
//!
//! `Instant::now()` costs about 23 ns on Linux (a vDSO `clock_gettime(CLOCK_MONOTONIC)` that
//! reads the TSC), which was a third of an uncontended get+drop. Idle times and lifetimes are
//! minutes or hundreds of milliseconds, so the coarse clock the kernel keeps per tick (1-10 ms
//! resolution, about 4 ns to read) is precise enough for them.

use std::time::{Duration, Instant};

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

/// A reading of the pool's coarse clock as nanoseconds on one fixed scale: what connections are
/// stamped with when created and returned. Eight bytes instead of an `Instant`'s sixteen, and
/// compared and subtracted as plain integers on every checkout and return.
pub(crate) type Stamp = u64;

/// The system's coarse clock as a [`Stamp`]: no conversion to `Instant` on the way.
#[inline]
pub(crate) fn coarse_stamp() -> Stamp {
    imp::coarse_stamp()
}

/// Where stamps start: 2^62 ns (146 years), so that `Instant`s from before the clock's origin
/// (boot on Linux, the process's start elsewhere), which a runtime with a manual clock may
/// well hand out, still map to distinct readings instead of all saturating at zero.
const ORIGIN: Stamp = 1 << 62;

/// The latest stamp a reading maps to. `Stamp::MAX` is "never" (a connection without a
/// lifetime expires then); a reading that reached it would make every such connection
/// expire, where one that stops here only makes time stand still.
const LATEST: Stamp = Stamp::MAX - 1;

/// `instant` on the scale of [`coarse_stamp`]: the two agree for readings of
/// [`coarse_now`], and any other clock's `Instant`s (a manual one) keep their order and
/// distances. Only instants more than 146 years before the clock's origin saturate at zero,
/// and those more than about 438 years after it at [`LATEST`].
pub(crate) fn stamp_of(instant: Instant) -> Stamp {
    let (anchor, anchor_stamp) = imp::anchor();
    match instant.checked_duration_since(anchor) {
        Some(after) => anchor_stamp.saturating_add(nanos(after)).min(LATEST),
        None => anchor_stamp.saturating_sub(nanos(anchor.saturating_duration_since(instant))),
    }
}

/// `duration` in nanoseconds, saturating (a `u64` of nanoseconds spans 584 years).
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use super::{ORIGIN, Stamp};
    use rustix::time::{ClockId, clock_gettime};
    use std::{
        sync::OnceLock,
        time::{Duration, Instant},
    };

    /// An `Instant` and the coarse clock read together, so that coarse readings and `Instant`s
    /// can be converted into each other. The anchor's coarse reading lags its `Instant` by up
    /// to a tick, so converted readings may run up to a tick ahead of `Instant::now()`;
    /// monotonic either way, since both clocks are `CLOCK_MONOTONIC`.
    static ANCHOR: OnceLock<(Instant, Stamp)> = OnceLock::new();

    pub(super) fn anchor() -> (Instant, Stamp) {
        *ANCHOR.get_or_init(|| (Instant::now(), coarse_stamp()))
    }

    #[inline]
    pub(super) fn coarse_stamp() -> Stamp {
        let time = clock_gettime(ClockId::MonotonicCoarse);
        // CLOCK_MONOTONIC counts from boot: never negative, nanoseconds below 1e9.
        let secs = u64::try_from(time.tv_sec).unwrap_or(0);
        let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
        let since_boot = secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        ORIGIN.saturating_add(since_boot)
    }

    pub(super) fn coarse_now() -> Instant {
        let (instant, stamp_then) = anchor();
        instant + Duration::from_nanos(coarse_stamp().saturating_sub(stamp_then))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use super::{ORIGIN, Stamp};
    use std::{sync::OnceLock, time::Instant};

    /// The process's clock origin: stamps count nanoseconds from it, from [`ORIGIN`].
    static ANCHOR: OnceLock<Instant> = OnceLock::new();

    pub(super) fn anchor() -> (Instant, Stamp) {
        (*ANCHOR.get_or_init(Instant::now), ORIGIN)
    }

    #[inline]
    pub(super) fn coarse_stamp() -> Stamp {
        super::stamp_of(Instant::now())
    }

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
    fn stamps_agree_with_instants() {
        let slack = super::nanos(Duration::from_millis(50));
        for _ in 0..1000 {
            let stamp = super::coarse_stamp();
            let of_now = super::stamp_of(coarse_now());
            assert!(of_now + slack >= stamp && of_now <= stamp + slack);
        }
        let base = Instant::now();
        let later = base + Duration::from_secs(90);
        assert_eq!(
            super::stamp_of(later) - super::stamp_of(base),
            90_000_000_000
        );
    }

    #[test]
    fn instants_from_before_boot_keep_their_distances() {
        // A manual clock may start anywhere; three years back is before this machine booted.
        let Some(base) = Instant::now().checked_sub(Duration::from_secs(3 * 365 * 86_400)) else {
            return; // the platform's Instant cannot go back that far
        };
        let hour_later = base + Duration::from_secs(3600);
        assert_eq!(
            super::stamp_of(hour_later) - super::stamp_of(base),
            3_600_000_000_000
        );
    }

    #[test]
    fn a_reading_centuries_ahead_never_reaches_never() {
        // A manual clock moved 500 years on: past what a stamp can count.
        let far = Instant::now().checked_add(Duration::from_secs(500 * 365 * 86_400));
        if let Some(far) = far {
            assert!(super::stamp_of(far) < super::Stamp::MAX);
        }
    }

    #[test]
    fn advances() {
        let start = coarse_now();
        std::thread::sleep(Duration::from_millis(30));
        assert!(coarse_now().saturating_duration_since(start) >= Duration::from_millis(15));
    }
}
