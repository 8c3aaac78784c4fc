//! Leak detection: a warning, once, for each connection held longer than
//! `leak_detection_threshold`, naming where it was checked out (HikariCP's
//! `leakDetectionThreshold`).
//!
//! When the threshold is set, each checkout records its time and the caller's source location
//! (`#[track_caller]`) in a small shared record and pushes it to a lock-free queue; the guard
//! marks the record returned on drop. A watcher task, spawned through the pool's runtime and
//! holding only a weak reference to the pool, wakes every half threshold, moves new records
//! into its own list (which stays in checkout order), drops the returned ones and warns about
//! those held too long. When the threshold is not set none of this exists: the checkout path
//! pays one `Option` check. (An observer alone also gets a record per checkout, for the hold
//! time it is told on return, but nothing watches it.)

use crate::sync::{Arc, AtomicBool, LeakQueue, Ordering};
use std::{
    panic::Location,
    time::{Duration, Instant},
};

/// One checkout, recorded when leak detection or an observer is on: when and where it
/// happened, and (for leak detection) whether it is back and was warned about.
pub(crate) struct Checkout {
    at: Instant,
    location: &'static Location<'static>,
    returned: AtomicBool,
    warned: AtomicBool,
}

impl Checkout {
    pub(crate) fn new(at: Instant, location: &'static Location<'static>) -> Arc<Self> {
        Arc::new(Self {
            at,
            location,
            returned: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        })
    }

    /// When the connection was checked out.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }
}

/// The records of checkouts not yet looked at by the watcher.
pub(crate) struct LeakWatch {
    pub(crate) threshold: Duration,
    records: LeakQueue<Arc<Checkout>>,
}

impl LeakWatch {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            records: LeakQueue::new(),
        }
    }

    /// How often the watcher looks: warnings come between one and one and a half thresholds
    /// after checkout.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn period(&self) -> Duration {
        (self.threshold / 2).max(Duration::from_millis(1))
    }

    /// Starts watching a checkout.
    pub(crate) fn watch(&self, record: &Arc<Checkout>) {
        self.records.push(Arc::clone(record));
    }

    /// Marks a checkout returned, warning if it was held too long and nobody warned yet (the
    /// watcher may not have looked since the threshold passed). Returns whether it warned.
    pub(crate) fn returned(&self, record: &Checkout, now: Instant, pool: &str) -> bool {
        record.returned.store(true, Ordering::Release);
        let held = now.saturating_duration_since(record.at);
        if held >= self.threshold && !record.warned.swap(true, Ordering::AcqRel) {
            log::warn!(
                "{pool}: a connection checked out at {} was held for {held:?}, longer than \
                 leak_detection_threshold ({:?})",
                record.location,
                self.threshold,
            );
            return true;
        }
        false
    }

    /// One look by the watcher: takes in new records, forgets returned ones, warns about the
    /// ones held past the threshold. Returns how many it warned about.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn scan(
        &self,
        pending: &mut std::collections::VecDeque<Arc<Checkout>>,
        now: Instant,
        pool: &str,
    ) -> usize {
        while let Some(record) = self.records.pop() {
            pending.push_back(record);
        }
        let mut warned = 0;
        while let Some(record) = pending.front() {
            if record.returned.load(Ordering::Acquire) {
                pending.pop_front();
                continue;
            }
            let held = now.saturating_duration_since(record.at);
            if held < self.threshold {
                // Everything behind it was checked out later.
                break;
            }
            if !record.warned.swap(true, Ordering::AcqRel) {
                warned += 1;
                log::warn!(
                    "{pool}: a connection checked out at {} has been held for {held:?}, longer \
                     than leak_detection_threshold ({:?}); it may have leaked",
                    record.location,
                    self.threshold,
                );
            }
            pending.pop_front();
        }
        warned
    }
}

/// Spawns the watcher when leak detection is on; it ends as soon as the pool closes or is
/// dropped (dropping the last handle closes it).
#[cfg(not(loom))]
pub(crate) fn start<M: crate::ConnectionManager>(shared: &Arc<crate::pool::Shared<M>>) {
    let (Some(runtime), Some(watch)) = (shared.runtime.as_deref(), shared.leaks.as_ref()) else {
        return;
    };
    let period = watch.period();
    let pool = Arc::downgrade(shared);
    runtime.spawn(Box::pin(async move {
        // Records seen but neither returned nor old enough to warn about, oldest first.
        let mut pending = std::collections::VecDeque::new();
        loop {
            let (tick, stop) = {
                let Some(shared) = pool.upgrade() else { return };
                let stop = shared.background_stop.listen();
                if shared.is_closed() {
                    return;
                }
                let Some(runtime) = shared.runtime.as_deref() else {
                    return;
                };
                (runtime.sleep(period), stop)
            };
            let open = |shared: &crate::pool::Shared<M>| !shared.is_closed();
            if !crate::background::sleep_while_wanted(&pool, tick, stop, open).await {
                return;
            }
            let Some(shared) = pool.upgrade() else { return };
            if shared.is_closed() {
                return;
            }
            let Some(watch) = shared.leaks.as_ref() else {
                return;
            };
            let warned = watch.scan(&mut pending, shared.now(), &shared.config.name);
            for _ in 0..warned {
                crate::status::Stats::bump(&shared.stats.leaks);
            }
        }
    }));
}

/// Under loom there is no runtime, so leak detection can never be configured.
#[cfg(loom)]
pub(crate) fn start<M: crate::ConnectionManager>(shared: &Arc<crate::pool::Shared<M>>) {
    let _ = shared;
}
