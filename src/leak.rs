//! Leak detection: a warning, once, for each connection held longer than
//! `leak_detection_threshold`, naming where it was checked out (HikariCP's
//! `leakDetectionThreshold`).
//!
//! When the threshold is set, each checkout records its time and the caller's source location
//! (`#[track_caller]`) in a small shared record and files it in a table with one entry per
//! connection that can be out at once (`max_size`); the guard takes it out again on return. A
//! watcher task, spawned through the pool's runtime and holding only a weak reference to the
//! pool, wakes every half threshold and warns about the records held too long. The table's
//! size is fixed, so memory does not grow with the checkout rate, the threshold, or a runtime
//! that never runs the watcher. When the threshold is not set none of this exists: the
//! checkout path pays one `Option` check. (An observer alone also gets a record per checkout,
//! for the hold time it is told on return, but nothing files it.)

use crate::status::Occupancy;
use crate::sync::{Arc, AtomicBool, LeakEntries, Mutex, MutexGuard, Ordering, PoisonError};
use std::{
    panic::Location,
    time::{Duration, Instant},
};

/// One checkout, recorded when leak detection or an observer is on: when and where it
/// happened, and (for leak detection) its entry in the table and whether it was warned about.
pub(crate) struct Checkout {
    at: Instant,
    location: &'static Location<'static>,
    /// Its entry in the leak watch's table; `None` when leak detection is off.
    entry: Option<usize>,
    warned: AtomicBool,
}

impl Checkout {
    /// A record that is filed nowhere (an observer alone).
    pub(crate) fn new(at: Instant, location: &'static Location<'static>) -> Arc<Self> {
        Self::filed_at(at, location, None)
    }

    fn filed_at(
        at: Instant,
        location: &'static Location<'static>,
        entry: Option<usize>,
    ) -> Arc<Self> {
        Arc::new(Self {
            at,
            location,
            entry,
            warned: AtomicBool::new(false),
        })
    }

    /// When the connection was checked out.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// Marks the record warned about; true only the first time.
    fn warn_once(&self) -> bool {
        !self.warned.swap(true, Ordering::AcqRel)
    }
}

/// The records of the checkouts now out.
pub(crate) struct LeakWatch {
    pub(crate) threshold: Duration,
    /// One entry per connection that can be checked out at once: no more than `max_size`
    /// connections exist, and a guard empties its entry before its connection can be handed
    /// out again.
    entries: Box<[Mutex<Option<Arc<Checkout>>>]>,
    /// The indices of the empty entries.
    free: LeakEntries<usize>,
}

impl LeakWatch {
    pub(crate) fn new(threshold: Duration, max_size: usize) -> Self {
        let free = LeakEntries::new(max_size);
        for entry in 0..max_size {
            let _ = free.push(entry);
        }
        Self {
            threshold,
            entries: (0..max_size).map(|_| Mutex::new(None)).collect(),
            free,
        }
    }

    /// How often the watcher looks: warnings come between one and one and a half thresholds
    /// after checkout.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn period(&self) -> Duration {
        (self.threshold / 2).max(Duration::from_millis(1))
    }

    /// Records a checkout and files it for the watcher.
    pub(crate) fn watch(&self, at: Instant, location: &'static Location<'static>) -> Arc<Checkout> {
        let entry = self.free.pop();
        // Unreachable (see `entries`); if the accounting were wrong, the checkout would only go
        // unwatched.
        debug_assert!(
            entry.is_some(),
            "more checkouts out than leak-watch entries"
        );
        let record = Checkout::filed_at(at, location, entry);
        if let Some(entry) = entry {
            *self.entry(entry) = Some(Arc::clone(&record));
        }
        record
    }

    /// Takes a returned checkout out of the table. Call it once per checkout, before
    /// [`returned`](Self::returned).
    pub(crate) fn unfile(&self, record: &Checkout) {
        if let Some(entry) = record.entry {
            self.entry(entry).take();
            let _ = self.free.push(entry);
        }
    }

    /// Warns about a returned checkout if it was held too long and nobody warned yet (the
    /// watcher may not have looked since the threshold passed). Returns whether it warned.
    /// `occupancy` is read only for a warning.
    pub(crate) fn returned(
        &self,
        record: &Checkout,
        now: Instant,
        pool: &str,
        occupancy: impl FnOnce() -> Occupancy,
    ) -> bool {
        let held = now.saturating_duration_since(record.at);
        if held >= self.threshold && record.warn_once() {
            log::warn!(
                "{pool}: a connection checked out at {} was held for {held:.1?}, longer than \
                 leak_detection_threshold ({:?}); {}",
                record.location,
                self.threshold,
                occupancy(),
            );
            return true;
        }
        false
    }

    /// One look by the watcher: warns about the checkouts held past the threshold that were
    /// not warned about yet. Returns how many it warned about.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn scan(
        &self,
        now: Instant,
        pool: &str,
        occupancy: impl Fn() -> Occupancy,
    ) -> usize {
        let mut warned = 0;
        for entry in 0..self.entries.len() {
            // Copied out, so that the warning is not written with the entry locked.
            let Some(record) = self.entry(entry).clone() else {
                continue;
            };
            let held = now.saturating_duration_since(record.at);
            if held >= self.threshold && record.warn_once() {
                warned += 1;
                log::warn!(
                    "{pool}: a connection checked out at {} has been held for {held:.1?}, longer \
                     than leak_detection_threshold ({:?}); it may have leaked; {}",
                    record.location,
                    self.threshold,
                    occupancy(),
                );
            }
        }
        warned
    }

    /// No code that can panic runs under the lock, so it is never poisoned; if it were, the
    /// `Option` inside is still whole.
    fn entry(&self, entry: usize) -> MutexGuard<'_, Option<Arc<Checkout>>> {
        self.entries[entry]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
    let unfinished = crate::background::Unfinished::new(
        pool.clone(),
        |shared: &crate::pool::Shared<M>| !shared.is_closed(),
        "leak watcher",
        WATCHER_LOST,
    );
    runtime.spawn(Box::pin(async move {
        watch_for_leaks(pool, period).await;
        unfinished.finished();
    }));
}

/// What the application loses when the leak watcher ends early.
#[cfg(not(loom))]
const WATCHER_LOST: &str =
    "a connection held past leak_detection_threshold is reported only when it is returned";

/// The watcher's loop: it holds only a weak reference between looks.
#[cfg(not(loom))]
async fn watch_for_leaks<M: crate::ConnectionManager>(
    pool: crate::sync::Weak<crate::pool::Shared<M>>,
    period: std::time::Duration,
) {
    use crate::background::{Slept, TimerFaults, sleep_while_wanted, timer};
    let mut timer_faults = TimerFaults::new();
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
            (timer(runtime, period), stop)
        };
        let open = |shared: &crate::pool::Shared<M>| !shared.is_closed();
        match sleep_while_wanted(&pool, tick, stop, open).await {
            Slept::Elapsed => timer_faults.elapsed(),
            Slept::Unwanted => return,
            Slept::TimerPanicked => {
                if !timer_faults
                    .panicked(&pool, "leak watcher", WATCHER_LOST)
                    .await
                {
                    return;
                }
                continue;
            }
        }
        let Some(shared) = pool.upgrade() else { return };
        if shared.is_closed() {
            return;
        }
        let Some(watch) = shared.leaks.as_ref() else {
            return;
        };
        // The runtime's clock is user code: a panic skips this look, not every later one.
        let Ok(now) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.now()))
        else {
            log::warn!(
                "{}: the runtime's clock panicked in the leak watcher; it looks again at \
                     its next tick",
                shared.config.name
            );
            continue;
        };
        let warned = watch.scan(now, &shared.config.name, || shared.occupancy());
        for _ in 0..warned {
            crate::status::Stats::bump(&shared.stats.leaks);
        }
    }
}

/// Under loom there is no runtime, so leak detection can never be configured.
#[cfg(loom)]
pub(crate) fn start<M: crate::ConnectionManager>(shared: &Arc<crate::pool::Shared<M>>) {
    let _ = shared;
}
