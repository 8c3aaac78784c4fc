//! [`HistogramObserver`]: a ready [`PoolObserver`] that keeps lock-free histograms of wait,
//! hold and create times in memory and renders a plain-text summary.
//!
//! Buckets are log-linear, as in HdrHistogram at low precision: each power of two of
//! nanoseconds is split into 8 equal sub-buckets, so a reported percentile is at most 12.5 %
//! above the true value. Recording takes four relaxed atomic operations, none a lock: the
//! bucket's and the count's `fetch_add`, the sum's saturating compare-and-swap loop, and the
//! maximum's `fetch_max`.

use crate::{
    error::TimeoutPhase,
    observer::{CreateFailure, PoolObserver},
    status::DestroyReason,
    sync::{AtomicU64, Ordering},
};
use std::{fmt, time::Duration};

/// Sub-buckets per power of two.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Enough buckets for any `u64` of nanoseconds.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A lock-free histogram of durations.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

/// The bucket holding `nanos`: values below `SUB` have their own bucket; above, the position
/// of the leading bit picks the power of two and the next `SUB_BITS` bits the sub-bucket.
fn bucket_of(nanos: u64) -> usize {
    if nanos < SUB as u64 {
        return nanos as usize;
    }
    let power = 63 - nanos.leading_zeros(); // >= SUB_BITS
    let sub = (nanos >> (power - SUB_BITS)) as usize & (SUB - 1);
    (power - SUB_BITS + 1) as usize * SUB + sub
}

/// The largest value that falls into `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    if bucket < SUB {
        return bucket as u64;
    }
    let power = (bucket / SUB) as u32 + SUB_BITS - 1;
    let sub = (bucket % SUB) as u64;
    let low = (1u64 << power) + (sub << (power - SUB_BITS));
    low.saturating_add((1u64 << (power - SUB_BITS)) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }

    /// Adds one duration.
    pub fn record(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Saturating: a busy pool's summed hold times reach 2^64 ns (584 years) within months,
        // and a wrapped sum would make the mean garbage rather than merely low.
        let _ = self
            .sum_nanos
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |sum| {
                Some(sum.saturating_add(nanos))
            });
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The longest duration recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed))
    }

    /// The mean duration, or zero when empty. Once the recorded durations add up to more than
    /// 584 years (a 1,000-connection pool kept busy for about seven months), it is an
    /// underestimate: the sum stops growing there.
    pub fn mean(&self) -> Duration {
        match self.count() {
            0 => Duration::ZERO,
            n => Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed) / n),
        }
    }

    /// The duration below which a fraction `q` (0.0 to 1.0) of the recorded ones fall, rounded
    /// up to its bucket's bound (at most 12.5 % high) and never above the maximum. `q` is
    /// clamped to 0.0..=1.0 (NaN counts as 0.0); an empty histogram gives zero.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        // Nearest rank, `ceil(q * total)`. The product may land a rounding error above a whole
        // number (0.07 * 100.0 is 7.000000000000001), which `ceil` would turn into the next
        // sample's rank, 20 % high with samples 1 ms apart: such a product counts as whole.
        let exact = q.clamp(0.0, 1.0) * total as f64;
        let whole = exact.round();
        let rank = if (exact - whole).abs() <= whole * 4.0 * f64::EPSILON {
            whole
        } else {
            exact.ceil()
        };
        let rank = (rank as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let max = self.max_nanos.load(Ordering::Relaxed);
                return Duration::from_nanos(bucket_upper(bucket).min(max));
            }
        }
        self.max()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

/// A [`PoolObserver`] that keeps histograms of checkout waits, hold times and create times,
/// and counts failures, timeouts and destroys by reason.
///
/// Share it with the pool through an `Arc` and read it, or print [`summary`](Self::summary),
/// whenever you like.
///
/// # Examples
///
/// ```
/// # use connection_pool::{ConnectionManager, ConnectionPool};
/// # struct Numbers;
/// # impl ConnectionManager for Numbers {
/// #     type Connection = u32;
/// #     type Error = std::io::Error;
/// #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
/// #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
/// # }
/// use connection_pool::HistogramObserver;
/// use std::sync::Arc;
///
/// # futures_lite::future::block_on(async {
/// let metrics = Arc::new(HistogramObserver::new());
/// let pool = ConnectionPool::builder(Numbers)
///     .observer(Arc::clone(&metrics))
///     .no_runtime()
///     .build()?;
/// drop(pool.get_connection().await?);
/// assert_eq!(metrics.wait().count(), 1);
/// assert_eq!(metrics.hold().count(), 1);
/// println!("{}", metrics.summary());
/// # Ok::<(), connection_pool::PoolError<std::io::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct HistogramObserver {
    wait: Histogram,
    hold: Histogram,
    create: Histogram,
    create_failures: AtomicU64,
    create_timeouts: AtomicU64,
    timeouts: [AtomicU64; 3],
    destroyed: [AtomicU64; DestroyReason::ALL.len()],
    detached: AtomicU64,
}

impl HistogramObserver {
    /// An observer with empty histograms.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long checkouts took to return a connection: every successful `get_connection`
    /// (zero when an idle connection was ready) and `try_get_connection` (always zero).
    pub fn wait(&self) -> &Histogram {
        &self.wait
    }

    /// How long connections were held between checkout and return.
    pub fn hold(&self) -> &Histogram {
        &self.hold
    }

    /// How long successful `create_connection` calls took.
    pub fn create(&self) -> &Histogram {
        &self.create
    }

    /// Failed or timed-out `create_connection` calls.
    pub fn create_failures(&self) -> u64 {
        self.create_failures.load(Ordering::Relaxed)
    }

    /// `get_connection` calls that timed out in `phase`.
    pub fn timeouts(&self, phase: TimeoutPhase) -> u64 {
        self.timeouts[phase as usize].load(Ordering::Relaxed)
    }

    /// Connections destroyed for `reason`.
    pub fn destroyed(&self, reason: DestroyReason) -> u64 {
        self.destroyed[reason as usize].load(Ordering::Relaxed)
    }

    /// Connections taken out of the pool with
    /// [`PooledConnection::detach`](crate::PooledConnection::detach).
    pub fn detached(&self) -> u64 {
        self.detached.load(Ordering::Relaxed)
    }

    /// A plain-text report, one line per histogram and one for the counters.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, h) in [
            ("wait", &self.wait),
            ("hold", &self.hold),
            ("create", &self.create),
        ] {
            out.push_str(&format!(
                "{name:<7}count {:>9}  p50 {:>10.1?}  p90 {:>10.1?}  p99 {:>10.1?}  p99.9 {:>10.1?}  \
                 max {:>10.1?}  mean {:>10.1?}\n",
                h.count(),
                h.quantile(0.5),
                h.quantile(0.9),
                h.quantile(0.99),
                h.quantile(0.999),
                h.max(),
                h.mean(),
            ));
        }
        let timeouts: u64 = self
            .timeouts
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .sum();
        out.push_str(&format!(
            "create failures {} (timed out {}), get timeouts {timeouts}, destroyed:",
            self.create_failures(),
            self.create_timeouts.load(Ordering::Relaxed),
        ));
        for &reason in DestroyReason::ALL {
            out.push_str(&format!(" {} {}", reason.as_str(), self.destroyed(reason)));
            if reason != DestroyReason::ALL[DestroyReason::ALL.len() - 1] {
                out.push(',');
            }
        }
        out.push_str(&format!("; detached {}", self.detached()));
        out
    }
}

impl PoolObserver for HistogramObserver {
    fn on_create(&self, duration: Duration) {
        self.create.record(duration);
    }

    fn on_create_failure(&self, _duration: Duration, failure: CreateFailure<'_>) {
        self.create_failures.fetch_add(1, Ordering::Relaxed);
        if let CreateFailure::TimedOut = failure {
            self.create_timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn on_checkout(&self, wait: Duration) {
        self.wait.record(wait);
    }

    fn on_return(&self, held: Duration) {
        self.hold.record(held);
    }

    fn on_timeout(&self, phase: TimeoutPhase, _waited: Duration) {
        self.timeouts[phase as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn on_destroy(&self, reason: DestroyReason) {
        self.destroyed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn on_detach(&self) {
        self.detached.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quantile_whose_rank_is_whole_is_not_pushed_to_the_next_sample() {
        let histogram = Histogram::new();
        for ms in 1..=100u64 {
            histogram.record(Duration::from_millis(ms));
        }
        // 0.07 * 100.0 is 7.000000000000001 in floating point, and so on.
        for percent in 1..=100u64 {
            let q = percent as f64 / 100.0;
            let exact = Duration::from_millis(percent);
            let got = histogram.quantile(q);
            assert!(got >= exact, "q {q}: {got:?} below {exact:?}");
            assert!(
                got <= exact * 9 / 8,
                "q {q}: {got:?} over 12.5 % above {exact:?}"
            );
        }
    }

    #[test]
    fn the_mean_saturates_instead_of_wrapping() {
        let histogram = Histogram::new();
        let four_centuries = Duration::from_secs(400 * 365 * 24 * 3600);
        histogram.record(four_centuries);
        histogram.record(four_centuries);
        // The true mean is 400 years; the sum stops at 2^64 ns, so the mean is about 292.
        let mean = histogram.mean();
        assert!(
            mean > four_centuries / 2 && mean < four_centuries,
            "{mean:?}"
        );
    }

    #[test]
    fn buckets_are_ordered_and_bound_their_values_within_an_eighth() {
        let mut previous = 0;
        for nanos in (0..5000).chain([1 << 20, (1 << 20) + 1, u64::MAX / 3, u64::MAX]) {
            let bucket = bucket_of(nanos);
            assert!(bucket < BUCKETS);
            assert!(bucket >= previous, "{nanos}");
            previous = bucket;
            let upper = bucket_upper(bucket);
            assert!(upper >= nanos, "{nanos} above its bucket's bound {upper}");
            assert!(
                upper - nanos <= nanos / 8,
                "{nanos}: bound {upper} too loose"
            );
        }
    }

    #[test]
    fn quantiles_come_from_the_recorded_values() {
        let h = Histogram::new();
        for micros in 1..=1000 {
            h.record(Duration::from_micros(micros));
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile(0.5).as_micros();
        assert!((500..=563).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_micros();
        assert!((990..=1000).contains(&p99), "{p99}");
        assert_eq!(h.max(), Duration::from_micros(1000));
        assert_eq!(h.mean().as_micros(), 500);
        assert_eq!(Histogram::new().quantile(0.5), Duration::ZERO);
    }
}
