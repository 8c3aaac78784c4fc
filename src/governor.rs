//! The connect governor's memory of failures: backoff, fail-fast on permanent errors, and the
//! last creation error that timeouts report.
//!
//! While creates succeed it costs a creation attempt two loads before it takes its slot and
//! two after, and a return one load while someone waits; never a write, and nothing at all
//! for a checkout of an idle connection. After a failure the pool allows one creation at a
//! time (a prober), no earlier than a jittered, exponentially growing delay after the
//! previous failure, so a backend that went away sees a trickle of connect attempts however
//! many tasks wait on the pool. If the manager classified the error
//! as permanent (bad credentials, unknown database), callers that would have to create a
//! connection fail at once with it until the delay has passed and a probe has been tried again.
//! The first success clears everything.

use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering, StdArc};
use std::time::{Duration, Instant};

/// The first retry delay after a failure; it doubles with each further failure.
pub const CREATE_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// The longest retry delay before its ±25 % jitter, so that service resumes within about this
/// long after the backend comes back.
pub const CREATE_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// What a caller that wants to create a connection may do now.
pub(crate) enum Admission<E> {
    /// Creates succeed: up to `max_connecting` at once.
    Open,
    /// The last create failed and its delay is over: one creation at a time.
    Probe,
    /// The last create failed; try again at this instant.
    Backoff(Instant),
    /// The last create failed with a permanent error and its delay is not over.
    Rejected(StdArc<E>),
}

/// The governor's failure counts at one moment, from [`Governor::mark`].
#[derive(Clone, Copy)]
pub(crate) struct FailureMark {
    /// Failures since the last success; 0 while creates succeed.
    pub(crate) failures: usize,
    /// Failures ever recorded.
    recorded: usize,
}

/// The last creation failure.
struct LastFailure<E> {
    at: Instant,
    message: String,
    /// Set when the manager classified the error as permanent.
    permanent: Option<StdArc<E>>,
}

/// Failure state shared by every creation path (checkout and the `min_idle` top-up).
pub(crate) struct Governor<E> {
    /// Failures since the last success; 0 while creates succeed.
    failures: AtomicUsize,
    /// Failures ever recorded, never reset. A caller compares it before asking and after
    /// taking a slot: `failures` alone could read the same across a success and a new failure.
    recorded: AtomicUsize,
    /// Nanoseconds after `epoch` before which no new creation starts while failing.
    retry_at: AtomicU64,
    epoch: Instant,
    /// Whether to wait between transient failures; without a runtime nobody could wake a
    /// waiter when the delay ends, so the pool only serialises creations. A permanent error
    /// is delayed either way: the callers it rejects fail at once and need no timer.
    backoff: bool,
    /// Touched only when a create fails, when a call times out, or when a call is rejected.
    last: Mutex<Option<LastFailure<E>>>,
    /// The last creation dropped unfinished because its caller's time ran out, and when:
    /// touched only then and when a call times out.
    dropped: Mutex<Option<(Instant, String)>>,
}

impl<E> Governor<E> {
    pub(crate) fn new(epoch: Instant, backoff: bool) -> Self {
        Self {
            failures: AtomicUsize::new(0),
            recorded: AtomicUsize::new(0),
            retry_at: AtomicU64::new(0),
            epoch,
            backoff,
            last: Mutex::new(None),
            dropped: Mutex::new(None),
        }
    }

    /// Whether the last creation failed. One relaxed load, the only one a return makes (and
    /// only while someone waits).
    pub(crate) fn is_failing(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// Where the failures stand, read before asking for [`admission`](Self::admission); see
    /// [`failed_since`](Self::failed_since).
    pub(crate) fn mark(&self) -> FailureMark {
        // `recorded` first: `failed` bumps it last, so a mark that holds a failure's number
        // also holds its count, and its delay for `admission` to read.
        let recorded = self.recorded.load(Ordering::Acquire);
        FailureMark {
            failures: self.failures.load(Ordering::Acquire),
            recorded,
        }
    }

    /// Whether creations are failing and a failure was recorded after `mark` was read: a
    /// caller that asked with `mark` must ask again (see `Creating::begin_admitted`).
    pub(crate) fn failed_since(&self, mark: FailureMark) -> bool {
        let now = self.mark();
        now.failures != 0 && now.recorded != mark.recorded
    }

    /// What a caller may do while [`is_failing`](Self::is_failing).
    pub(crate) fn admission(&self, now: Instant) -> Admission<E> {
        if !self.is_failing() {
            return Admission::Open;
        }
        let retry_at = self.epoch + Duration::from_nanos(self.retry_at.load(Ordering::Acquire));
        if now >= retry_at {
            return Admission::Probe;
        }
        let permanent = self
            .last
            .lock()
            .ok()
            .and_then(|last| last.as_ref().and_then(|l| l.permanent.clone()));
        match permanent {
            Some(error) => Admission::Rejected(error),
            None if self.backoff => Admission::Backoff(retry_at),
            // Between a transient failure's record and its zero delay (the delay read is a
            // permanent one's): no waiting without a timer.
            None => Admission::Probe,
        }
    }

    /// Records a failed creation and schedules the next attempt. Returns how many failures
    /// in a row there have been.
    pub(crate) fn failed(
        &self,
        now: Instant,
        message: String,
        permanent: Option<StdArc<E>>,
    ) -> usize {
        // The record and the delay go first, the counts last: a caller that sees the new
        // counts (acquiring loads) then sees this failure's delay too, and one that sees the
        // old ones finds them changed when it looks again after taking a slot (see
        // `Creating::begin_admitted`). Two failures at once may both compute the delay from
        // the same count; each still counts.
        let failures = self.failures.load(Ordering::Acquire).saturating_add(1);
        let is_permanent = permanent.is_some();
        if let Ok(mut last) = self.last.lock() {
            *last = Some(LastFailure {
                at: now,
                message,
                permanent,
            });
        }
        let delay = if self.backoff || is_permanent {
            backoff_delay(failures)
        } else {
            Duration::ZERO
        };
        let retry_at = now.saturating_duration_since(self.epoch) + delay;
        self.retry_at.store(
            u64::try_from(retry_at.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Release,
        );
        // Saturating: a wrap to zero would read as "not failing" and let a burst of creations
        // through (reachable on a 32-bit target without a runtime, whose failures do not wait).
        let in_a_row = match self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1))
            }) {
            Ok(before) | Err(before) => before.saturating_add(1),
        };
        // Wrapping is harmless: a caller compares two reads a creation apart.
        self.recorded.fetch_add(1, Ordering::AcqRel);
        in_a_row
    }

    /// Records a creation dropped unfinished because the time of the call (or top-up) that
    /// made it ran out. Not a failure: no backoff, no count, and kept apart from the failures;
    /// a timeout reports it only when no failure explains it (see
    /// [`error_since`](Self::error_since)).
    pub(crate) fn abandoned(&self, now: Instant, message: String) {
        if let Ok(mut dropped) = self.dropped.lock() {
            *dropped = Some((now, message));
        }
    }

    /// Records a successful creation. Returns how many failures in a row it ends (0 while
    /// creates were succeeding already).
    pub(crate) fn succeeded(&self) -> usize {
        if !self.is_failing() {
            return 0;
        }
        if let Ok(mut last) = self.last.lock() {
            if let Some(last) = last.as_mut() {
                last.permanent = None;
            }
        }
        self.failures.swap(0, Ordering::AcqRel)
    }

    /// The message of the last creation failure, if it happened at or after `since` or no
    /// creation has succeeded since it. A call that began after an outage started, and spent
    /// its time held back by the backoff, needs that failure to explain its timeout as much as
    /// one that saw it happen.
    ///
    /// Failing that, the last creation dropped unfinished at or after `since`.
    pub(crate) fn error_since(&self, since: Instant) -> Option<String> {
        let failure = self.last.lock().ok().and_then(|last| {
            last.as_ref()
                .filter(|last| last.at >= since || self.is_failing())
                .map(|last| last.message.clone())
        });
        failure.or_else(|| {
            let dropped = self.dropped.lock().ok()?;
            dropped
                .as_ref()
                .filter(|(at, _)| *at >= since)
                .map(|(_, message)| message.clone())
        })
    }
}

/// `CREATE_BACKOFF_MIN * 2^(failures - 1)`, capped at `CREATE_BACKOFF_MAX`, then scaled by a
/// random factor in [0.75, 1.25) so that several pools (or processes) do not retry in step.
fn backoff_delay(failures: usize) -> Duration {
    let doublings = u32::try_from(failures.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = CREATE_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(CREATE_BACKOFF_MAX);
    delay.mul_f64(0.75 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_minimum_up_to_the_cap_with_jitter() {
        for failures in 1..40 {
            let expected = CREATE_BACKOFF_MIN
                .saturating_mul(1 << (failures - 1).min(16))
                .min(CREATE_BACKOFF_MAX);
            let delay = backoff_delay(failures as usize);
            assert!(delay >= expected.mul_f64(0.75), "{failures}: {delay:?}");
            assert!(delay < expected.mul_f64(1.25), "{failures}: {delay:?}");
        }
    }

    #[test]
    fn the_failure_count_saturates_rather_than_wrapping_to_not_failing() {
        let epoch = Instant::now();
        let governor = Governor::<std::io::Error>::new(epoch, false);
        governor.failures.store(usize::MAX - 1, Ordering::Relaxed);
        assert_eq!(governor.failed(epoch, "refused".into(), None), usize::MAX);
        assert_eq!(governor.failed(epoch, "refused".into(), None), usize::MAX);
        assert!(governor.is_failing());
    }

    #[test]
    fn a_mark_tells_a_new_failure_from_an_old_one_across_a_success() {
        let epoch = Instant::now();
        let governor = Governor::<std::io::Error>::new(epoch, true);
        let open = governor.mark();
        assert_eq!(open.failures, 0);
        assert!(!governor.failed_since(open), "nothing failed");
        governor.failed(epoch, "refused".into(), None);
        assert!(governor.failed_since(open));
        let asked = governor.mark();
        assert_eq!(asked.failures, 1);
        assert!(
            !governor.failed_since(asked),
            "the failure it asked about is not new"
        );
        // A success and a new failure leave the count in a row where it was.
        assert_eq!(governor.succeeded(), 1);
        assert!(!governor.failed_since(asked), "a success is no failure");
        governor.failed(epoch, "refused again".into(), None);
        assert_eq!(governor.mark().failures, asked.failures);
        assert!(governor.failed_since(asked));
    }

    #[test]
    fn a_permanent_failure_rejects_until_its_delay_is_over_and_success_clears_it() {
        let epoch = Instant::now();
        let governor = Governor::<std::io::Error>::new(epoch, true);
        assert!(matches!(governor.admission(epoch), Admission::Open));
        let error = StdArc::new(std::io::Error::other("bad password"));
        governor.failed(epoch, "bad password".into(), Some(error));
        assert!(matches!(governor.admission(epoch), Admission::Rejected(_)));
        let later = epoch + CREATE_BACKOFF_MAX * 2;
        assert!(matches!(governor.admission(later), Admission::Probe));
        assert_eq!(governor.succeeded(), 1);
        assert_eq!(governor.succeeded(), 0, "nothing left to clear");
        assert!(matches!(governor.admission(later), Admission::Open));
        assert_eq!(governor.error_since(epoch).as_deref(), Some("bad password"));
        assert_eq!(governor.error_since(later), None);
    }

    #[test]
    fn a_dropped_attempt_is_reported_until_a_failure_and_never_masks_one() {
        let epoch = Instant::now();
        let later = epoch + Duration::from_secs(1);
        let governor = Governor::<std::io::Error>::new(epoch, true);
        governor.abandoned(epoch, "dropped".into());
        assert!(!governor.is_failing(), "no failure, no backoff");
        assert!(matches!(governor.admission(epoch), Admission::Open));
        assert_eq!(governor.error_since(epoch).as_deref(), Some("dropped"));
        assert_eq!(governor.error_since(later), None);
        governor.failed(later, "refused".into(), None);
        governor.abandoned(later, "dropped again".into());
        assert_eq!(governor.error_since(epoch).as_deref(), Some("refused"));
        // Nor after the failure has been cured.
        assert_eq!(governor.succeeded(), 1);
        governor.abandoned(later, "dropped once more".into());
        assert_eq!(governor.error_since(epoch).as_deref(), Some("refused"));
    }

    #[test]
    fn a_transient_failure_backs_off() {
        let epoch = Instant::now();
        let governor = Governor::<std::io::Error>::new(epoch, true);
        governor.failed(epoch, "refused".into(), None);
        match governor.admission(epoch) {
            Admission::Backoff(at) => assert!(at > epoch && at < epoch + CREATE_BACKOFF_MAX),
            _ => panic!("expected a backoff"),
        }
        let without_backoff = Governor::<std::io::Error>::new(epoch, false);
        without_backoff.failed(epoch, "refused".into(), None);
        assert!(matches!(without_backoff.admission(epoch), Admission::Probe));
    }

    #[test]
    fn without_backoff_a_permanent_failure_still_rejects_until_its_delay_is_over() {
        let epoch = Instant::now();
        let governor = Governor::<std::io::Error>::new(epoch, false);
        let error = StdArc::new(std::io::Error::other("bad password"));
        governor.failed(epoch, "bad password".into(), Some(error));
        assert!(matches!(governor.admission(epoch), Admission::Rejected(_)));
        let later = epoch + CREATE_BACKOFF_MAX * 2;
        assert!(matches!(governor.admission(later), Admission::Probe));
        // A transient failure after it is retried at once, never waited for.
        governor.failed(later, "refused".into(), None);
        assert!(matches!(governor.admission(later), Admission::Probe));
    }
}
