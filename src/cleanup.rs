//! Expiry of idle connections and the `min_idle` top-up: a synchronous pass with the time
//! passed in (so loom models and manual clocks can call it), and the background loop that runs
//! it through the [`Runtime`](crate::Runtime) every `cleanup_interval`.
//!
//! The pass never holds a pool-wide lock: it pops each idle connection it inspects and pushes
//! the keepers back, notifying a waiter for each, exactly as a return does. A checkout racing
//! it simply finds another connection, creates one, or is woken by the push-back.

#[cfg(not(loom))]
use crate::background::{Slept, TimerFaults, sleep_while_wanted, timer};
use crate::{
    clock::Stamp,
    error::PoolError,
    governor::Admission,
    manager::ConnectionManager,
    pool::{Begin, ConnectionPool, Creating, Shared},
    sync::Ordering,
};
#[cfg(not(loom))]
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// What one [`ConnectionPool::cleanup_pass`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct CleanupReport {
    /// Idle connections looked at.
    pub inspected: usize,
    /// Connections destroyed because they sat idle longer than `max_idle_time`.
    pub idle_expired: usize,
    /// Connections destroyed because they outlived `max_lifetime`.
    pub lifetime_expired: usize,
}

/// Why a `min_idle` top-up stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TopUp {
    /// `min_idle` is reached, the pool is full of connections or closed, a creation failed,
    /// or the governor holds creations back (backoff, rejection): nothing to retry before the
    /// next tick.
    Done,
    /// Short of `min_idle`, and the pool has room or creations in flight, but no creation
    /// could begin: every connect permit was taken (or, while creations fail, the one probe
    /// allowed is in flight).
    PermitsBusy,
}

/// The first wait before a top-up that found every connect permit taken tries again; it
/// doubles on each further such try, up to the cleanup interval.
#[cfg_attr(loom, allow(dead_code))]
const TOP_UP_RETRY_MIN: Duration = Duration::from_millis(50);

impl<M: ConnectionManager> Shared<M> {
    pub(crate) fn cleanup_pass(&self, now: Stamp) -> CleanupReport {
        let mut report = CleanupReport::default();
        // Lifetimes first when min_idle protects some connections from idle expiry: one about
        // to go for its age must not count toward the min_idle that keeps another from going
        // for idleness, or both would go.
        if self.config.min_idle > 0 {
            self.sweep(now, &mut report, true);
        }
        self.sweep(now, &mut report, false);
        if report.idle_expired + report.lifetime_expired > 0 {
            log::debug!(
                "{}: cleanup closed {} idle and {} aged connections; {}",
                self.config.name,
                report.idle_expired,
                report.lifetime_expired,
                self.occupancy(),
            );
        }
        report
    }

    /// Looks at each connection that was idle when the sweep began, once (connections
    /// returned meanwhile are fresh and go to the back of the queue anyway), and destroys the
    /// expired ones: for lifetime only, or for lifetime and idle time.
    fn sweep(&self, now: Stamp, report: &mut CleanupReport, lifetimes_only: bool) {
        for _ in 0..self.idle.len() {
            let Some(conn) = self.idle.pop() else { break };
            let expiry = if lifetimes_only {
                conn.expired(now)
                    .then_some(crate::DestroyReason::MaxLifetime)
            } else {
                self.expiry(&conn, now)
            };
            // A connection kept by the lifetime sweep is inspected, and counted, by the next.
            if !lifetimes_only || expiry.is_some() {
                report.inspected += 1;
            }
            match expiry {
                Some(reason) => {
                    match reason {
                        crate::DestroyReason::MaxLifetime => report.lifetime_expired += 1,
                        _ => report.idle_expired += 1,
                    }
                    self.destroy(conn, reason);
                }
                // Back to the queue, waking a waiter that may have missed it while it was out.
                None => self.give(conn),
            }
        }
    }

    /// Creates connections until `min_idle` are idle, the pool is full, or a create fails.
    /// Each attempt is given up (not counted as a failure) after `give_up_after` unless
    /// `connection_timeout` ends it first, so that a hanging backend cannot hold a connect
    /// permit, or this task's passes, for long where no caller asked to wait for it.
    pub(crate) async fn top_up(&self, give_up_after: Duration) -> TopUp {
        let mut created = 0;
        let mut end = TopUp::Done;
        while !self.is_closed() && self.idle.len() < self.config.min_idle {
            // The top-up obeys the connect governor like any caller, but never waits for it:
            // while creations fail it tries only once the delay is over.
            let asked = self.governor.mark();
            let max_connecting = match asked.failures {
                0 => self.config.max_connecting,
                _ => match self.governor.admission(self.now()) {
                    // A creation succeeded since the count was read.
                    Admission::Open => self.config.max_connecting,
                    Admission::Probe => 1,
                    Admission::Backoff(_) | Admission::Rejected(_) => break,
                },
            };
            let creating = match Creating::begin_admitted(self, max_connecting, asked) {
                Begin::Taken(creating) => creating,
                Begin::AskAgain => continue,
                Begin::Busy => {
                    // Every connect permit taken (callers creating, or the top-up of a task
                    // this one replaced), or the last slots held by creations: they come free
                    // within a connect, and a cancelled one leaves room at once (a failed one
                    // starts the governor's delay, and the top-up then waits for the next
                    // tick). Only a pool full of connections waits for the next tick anyway.
                    if self.size() < self.config.max_size || self.capacity.connecting() > 0 {
                        end = TopUp::PermitsBusy;
                    }
                    break;
                }
            };
            let now = self.now();
            // A connection_timeout no longer than the give-up time ends a hung attempt first,
            // as a failure (counted, logged, backed off); only a longer one, or none, leaves
            // the give-up to end it, as no failure.
            let (timeout_at, give_up_at) = match self.config.connection_timeout {
                Some(timeout) if timeout <= give_up_after => (now.checked_add(timeout), None),
                timeout => (
                    timeout.and_then(|timeout| now.checked_add(timeout)),
                    now.checked_add(give_up_after),
                ),
            };
            // A failure is recorded (and logged) by `run`; the next tick tries again.
            let Ok(conn) = creating.run(timeout_at, give_up_at).await else {
                break;
            };
            created += 1;
            self.give(conn);
        }
        if created > 0 {
            log::debug!(
                "{}: created {created} connection(s) to keep min_idle {}; {}",
                self.config.name,
                self.config.min_idle,
                self.occupancy(),
            );
        }
        end
    }

    /// Whether the loop numbered `generation` should keep running.
    #[cfg_attr(loom, allow(dead_code))]
    fn cleanup_current(&self, generation: u64) -> bool {
        !self.is_closed() && self.cleanup_generation.load(Ordering::Acquire) == generation
    }
}

/// Spawns the cleanup loop; it stops when the pool closes, when the last pool reference is
/// gone, or when `stop_cleanup_task`/`restart_cleanup_task` bumps the generation.
#[cfg(not(loom))]
pub(crate) fn start<M: ConnectionManager>(
    shared: &crate::sync::Arc<Shared<M>>,
    interval: Duration,
) {
    let Some(runtime) = shared.runtime.as_deref() else {
        return;
    };
    let generation = shared.cleanup_generation.fetch_add(1, Ordering::AcqRel) + 1;
    // The loop this one replaces ends now, not at its next tick.
    shared.background_stop.fire();
    let pool = crate::sync::Arc::downgrade(shared);
    let unfinished = crate::background::Unfinished::new(
        pool.clone(),
        move |shared: &Shared<M>| shared.cleanup_current(generation),
        "cleanup task",
        TASK_LOST,
    );
    runtime.spawn(Box::pin(async move {
        run(pool, generation, interval).await;
        unfinished.finished();
    }));
}

/// Under loom there is neither time nor `Weak`; models call the pass directly.
#[cfg(loom)]
pub(crate) fn start<M: ConnectionManager>(
    shared: &crate::sync::Arc<Shared<M>>,
    interval: Duration,
) {
    let _ = (shared, interval);
}

/// Loom builds only: the background loop does not exist under loom, so models run its
/// `min_idle` top-up through this.
#[cfg(loom)]
impl<M: ConnectionManager> ConnectionPool<M> {
    /// Loom builds only: runs one `min_idle` top-up as the cleanup task would, each creation
    /// given up after `give_up_after` (unless `connection_timeout` ends it first); `true` if it
    /// finished (`min_idle` reached, the pool full or closed, a creation failed or held back
    /// by the governor), `false` if it stopped short for want of a connect permit.
    #[doc(hidden)]
    pub async fn loom_top_up(&self, give_up_after: Duration) -> bool {
        self.shared.top_up(give_up_after).await == TopUp::Done
    }
}

/// What the application loses when the cleanup task ends early.
#[cfg(not(loom))]
const TASK_LOST: &str = "min_idle is no longer kept, and idle connections are closed only when \
     a checkout finds them expired; restart_cleanup_task starts the task again";

/// The background loop. It holds only a weak reference between ticks, so dropping the pool
/// ends it; closing the pool or replacing the loop wakes it to end at once, even in the middle
/// of a `min_idle` top-up. During a top-up it holds the pool (the creation needs it across
/// its await): an executor that stops polling the task then, without dropping it, keeps the
/// pool alive (see `Runtime::spawn`).
#[cfg(not(loom))]
async fn run<M: ConnectionManager>(
    pool: crate::sync::Weak<Shared<M>>,
    generation: u64,
    interval: Duration,
) {
    let mut schedule = {
        let Some(shared) = pool.upgrade() else { return };
        // A clock that panics here panics in each top-up too, which then sleeps whole ticks.
        let now = std::panic::catch_unwind(AssertUnwindSafe(|| shared.now()));
        Schedule::new(interval, now.unwrap_or_else(|_| Instant::now()))
    };
    let mut timer_faults = TimerFaults::new();
    loop {
        let (tick, stop, wait) = {
            let Some(shared) = pool.upgrade() else { return };
            let mut stop = shared.background_stop.listen();
            if !shared.cleanup_current(generation) {
                return;
            }
            // A top-up can wait on a slow or hanging `create_connection` while it holds the
            // pool: a stop drops it (and with it the creation's slot and permit), and the loop
            // re-checks whether it is still wanted.
            // Without a connection_timeout, or with a longer one, an attempt is given up only
            // once it has taken longer than both a tick and the default connection_timeout:
            // long enough for any reasonable connect, short enough that a hanging one frees
            // its permit.
            let give_up_after = interval.max(crate::config::DEFAULT_CONNECTION_TIMEOUT);
            // A panic in user code (`create_connection`, an observer, the runtime's clock or
            // timer) must not end the task for good: min_idle would never be restored nor idle
            // connections expire again. The creation's guard has given its slot back. Only a
            // timer that keeps panicking ends it, since the loop cannot wait without one.
            let top_up = std::pin::pin!(futures_lite::FutureExt::catch_unwind(AssertUnwindSafe(
                async {
                    let end = shared.top_up(give_up_after).await;
                    (end, shared.now())
                }
            )));
            let wait = match crate::background::unless_stopped(top_up, &mut stop).await {
                None => continue,
                Some(Ok((end, now))) => schedule.after_top_up(end, now),
                Some(Err(_)) => {
                    shared.background_panicked("min_idle top-up");
                    schedule.after_top_up(TopUp::Done, schedule.last_seen)
                }
            };
            let Some(runtime) = shared.runtime.as_deref() else {
                return;
            };
            ((!wait.is_zero()).then(|| timer(runtime, wait)), stop, wait)
        };
        match tick {
            Some(tick) => {
                match sleep_while_wanted(&pool, tick, stop, |s| s.cleanup_current(generation)).await
                {
                    Slept::Elapsed => {
                        timer_faults.elapsed();
                        if !schedule.slept(wait) {
                            continue;
                        }
                    }
                    Slept::Unwanted => return,
                    // The top-up runs again (it finds nothing to do if min_idle holds), and
                    // then the loop asks for a timer again.
                    Slept::TimerPanicked => {
                        if !timer_faults
                            .panicked(&pool, "cleanup task", TASK_LOST)
                            .await
                        {
                            return;
                        }
                        continue;
                    }
                }
            }
            // The pass is overdue: run it now, but let the executor run other tasks first (a
            // top-up short of permits can finish without ever waiting).
            None => futures_lite::future::yield_now().await,
        }
        let Some(shared) = pool.upgrade() else { return };
        if !shared.cleanup_current(generation) {
            return;
        }
        let pass = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let now = shared.stamp();
            shared.cleanup_pass(now);
        }));
        if pass.is_err() {
            shared.background_panicked("cleanup pass");
        }
        // Apart from the pass: an observer that panics in every pass must still move the
        // schedule on, or each retry would find the pass overdue and run it again at once.
        schedule.passed(std::panic::catch_unwind(AssertUnwindSafe(|| shared.now())).ok());
    }
}

/// When the cleanup loop runs its pass and its `min_idle` top-ups: a pass once per interval,
/// a top-up after each pass, and between passes quick retries of a top-up that found every
/// connect permit taken.
// Only the background loop uses it, and that loop does not exist under loom.
#[cfg_attr(loom, allow(dead_code))]
struct Schedule {
    interval: Duration,
    /// Slept since the last pass, by the runtime's timers; below `interval` between passes.
    slept: Duration,
    /// When the last pass ran (or the loop began), by the runtime's clock: a retry's top-up
    /// can itself take a while (creations before the permits ran out), which `slept` misses.
    last_pass: Instant,
    /// The runtime's clock at the end of the last top-up: stands in for a reading after a
    /// pass that could not be taken (a panicking clock), so that the pass is not found
    /// overdue again and again.
    last_seen: Instant,
    /// The wait before the next retry of a top-up short of permits.
    retry: Duration,
}

#[cfg_attr(loom, allow(dead_code))]
impl Schedule {
    fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            slept: Duration::ZERO,
            last_pass: now,
            last_seen: now,
            retry: TOP_UP_RETRY_MIN,
        }
    }

    /// How long to sleep after a top-up that ended with `end` at `now`; zero: run the pass
    /// now. After a finished top-up it never is zero, so that one given up on a hanging
    /// creation does not start the next at once.
    fn after_top_up(&mut self, end: TopUp, now: Instant) -> Duration {
        self.last_seen = now;
        let left = self.interval.saturating_sub(self.slept);
        if end == TopUp::Done {
            self.retry = TOP_UP_RETRY_MIN;
            return left;
        }
        // The pass is due by whichever comes first: the timers' count, or the clock. A clock
        // that stands still just short of it must not shrink every retry to a sliver, so a
        // retry waits at least the shortest retry unless the clock says the pass is due.
        let due_by_clock = self
            .interval
            .saturating_sub(now.saturating_duration_since(self.last_pass));
        if due_by_clock.is_zero() {
            return Duration::ZERO;
        }
        let wait = left.min(self.retry).min(due_by_clock.max(TOP_UP_RETRY_MIN));
        self.retry = self.retry.saturating_mul(2).min(self.interval);
        wait
    }

    /// Records a completed sleep of `wait`; whether the pass is due.
    fn slept(&mut self, wait: Duration) -> bool {
        self.slept = self.slept.saturating_add(wait);
        self.slept >= self.interval
    }

    /// Records a pass, at `now` if the clock could be read (else at the later of the last
    /// reading and the timers' count since the last pass).
    fn passed(&mut self, now: Option<Instant>) {
        let by_timers = self
            .last_pass
            .checked_add(self.slept)
            .unwrap_or(self.last_seen);
        self.last_pass = now.unwrap_or(by_timers.max(self.last_seen));
        self.slept = Duration::ZERO;
    }
}

#[cfg(not(loom))]
impl<M: ConnectionManager> Shared<M> {
    /// Reports a panic the cleanup task caught in user code; the task goes on at its next tick.
    fn background_panicked(&self, work: &str) {
        log::warn!(
            "{}: the {work} of the cleanup task panicked (in create_connection, an observer, or \
             the runtime's clock or timer); it runs again at the next tick; {}",
            self.config.name,
            self.occupancy(),
        );
    }
}

impl<M: ConnectionManager> ConnectionPool<M> {
    /// Runs one cleanup pass now, as the background task does every `cleanup_interval`:
    /// destroys idle connections past `max_lifetime`, and past `max_idle_time` while more than
    /// `min_idle` are idle (not counting those past their lifetime). It does not create
    /// connections.
    ///
    /// `now` is the time to judge expiry by; pass [`ConnectionPool::now`] unless you drive a
    /// manual clock. It never blocks: connections are inspected one at a time, so checkouts
    /// and returns proceed concurrently.
    pub fn cleanup_pass(&self, now: Instant) -> CleanupReport {
        self.shared.cleanup_pass(crate::clock::stamp_of(now))
    }

    /// Stops the background cleanup task; it ends as soon as its executor next polls it.
    /// Expiry is still enforced at checkout and return, but idle connections are no longer
    /// expired in the background and `min_idle` is no longer kept up.
    pub fn stop_cleanup_task(&self) {
        self.shared
            .cleanup_generation
            .fetch_add(1, Ordering::AcqRel);
        self.shared.background_stop.fire();
        log::debug!("{}: cleanup task stopped", self.shared.config.name);
    }

    /// Replaces the background cleanup task with one that runs every `interval`.
    ///
    /// # Errors
    ///
    /// [`PoolError::Config`] for an interval below 1 ms or too large to add to the clock,
    /// [`PoolError::NoRuntime`] on a pool built without a runtime, [`PoolError::Closed`] on a
    /// closed pool.
    ///
    /// # Panics
    ///
    /// If the runtime's `spawn` panics. The old task has been told to stop by then, so the
    /// pool is left with none; call this again once the runtime can spawn.
    ///
    /// A runtime may also take the task and drop it unstarted: tokio does that once its
    /// runtime has shut down (with [`TokioRuntime::current`](crate::TokioRuntime::current),
    /// the runtime that built the pool; with `follow_caller`, the one this is called on, or the
    /// building one from outside tokio). This then returns `Ok(())` and the pool warns that
    /// its cleanup task was dropped; call it again from a live runtime.
    pub fn restart_cleanup_task(&self, interval: Duration) -> Result<(), PoolError<M::Error>> {
        crate::config::check_cleanup_interval(interval, "call stop_cleanup_task to stop the task")?;
        self.runtime_or_err("restart_cleanup_task")?;
        if self.is_closed() {
            return Err(PoolError::Closed);
        }
        start(&self.shared, interval);
        log::debug!(
            "{}: cleanup task restarted every {interval:?}",
            self.shared.config.name
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(30);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_finished_top_up_sleeps_the_rest_of_the_interval_then_the_pass_is_due() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        assert_eq!(schedule.after_top_up(TopUp::Done, start), INTERVAL);
        assert!(schedule.slept(INTERVAL));
        schedule.passed(Some(start + INTERVAL));
        // Even when the top-up itself took longer than a tick: it never starts the next at once.
        let late = start + 3 * INTERVAL;
        assert_eq!(schedule.after_top_up(TopUp::Done, late), INTERVAL);
    }

    #[test]
    fn retries_short_of_permits_double_and_the_pass_still_comes_once_per_interval() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        let mut now = start;
        let mut waits = Vec::new();
        loop {
            let wait = schedule.after_top_up(TopUp::PermitsBusy, now);
            assert!(!wait.is_zero());
            waits.push(wait);
            now += wait;
            if schedule.slept(wait) {
                break;
            }
        }
        assert_eq!(&waits[..4], [50 * MS, 100 * MS, 200 * MS, 400 * MS]);
        assert_eq!(
            waits.iter().sum::<Duration>(),
            INTERVAL,
            "the pass is due after one interval"
        );
        schedule.passed(Some(now));
        // After a finished top-up the retries start again from the shortest wait.
        let rest = schedule.after_top_up(TopUp::Done, now);
        assert_eq!(rest, INTERVAL);
        assert!(!schedule.slept(INTERVAL / 3));
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, now), 50 * MS);
    }

    #[test]
    fn a_retry_whose_top_up_ran_past_the_interval_runs_the_pass_at_once() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, start), 50 * MS);
        assert!(!schedule.slept(50 * MS));
        // The next top-up created connections for most of a tick before the permits ran out.
        let now = start + INTERVAL + MS;
        assert_eq!(
            schedule.after_top_up(TopUp::PermitsBusy, now),
            Duration::ZERO
        );
        schedule.passed(Some(now));
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, now), 100 * MS);
    }

    #[test]
    fn a_retry_sleeps_no_longer_than_until_the_pass_is_due_by_the_clock() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        let mut now = start;
        // Nine retries: 25.55 s slept, and the next retry would wait 25.6 s.
        for _ in 0..9 {
            let wait = schedule.after_top_up(TopUp::PermitsBusy, now);
            now += wait;
            assert!(!schedule.slept(wait));
        }
        assert_eq!(now - start, 25_550 * MS);
        // The tenth top-up created connections for 4 s before the permits ran out again.
        now += 4 * 1000 * MS;
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, now), 450 * MS);
    }

    #[test]
    fn a_pass_whose_clock_reading_failed_is_not_found_overdue_again_at_once() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        let now = start + INTERVAL + MS;
        assert_eq!(
            schedule.after_top_up(TopUp::PermitsBusy, now),
            Duration::ZERO
        );
        schedule.passed(None);
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, now), 50 * MS);
    }

    #[test]
    fn a_failed_clock_reading_after_a_tick_does_not_make_the_next_retry_pass_again() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        assert_eq!(schedule.after_top_up(TopUp::Done, start), INTERVAL);
        assert!(schedule.slept(INTERVAL));
        schedule.passed(None);
        let now = start + INTERVAL + MS;
        assert_eq!(schedule.after_top_up(TopUp::PermitsBusy, now), 50 * MS);
    }

    #[test]
    fn a_clock_standing_still_short_of_the_pass_does_not_shrink_the_retries() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        let frozen = start + INTERVAL - Duration::from_micros(100);
        let mut retries = 0;
        loop {
            let wait = schedule.after_top_up(TopUp::PermitsBusy, frozen);
            assert!(wait >= 50 * MS, "retry {retries} waits {wait:?}");
            retries += 1;
            if schedule.slept(wait) {
                break;
            }
        }
        // By the timers' count: one interval of retries of at least 50 ms each.
        assert!(retries <= 600, "the pass came after {retries} retries");
    }

    #[test]
    fn a_finished_top_up_after_retries_sleeps_only_what_is_left_of_the_interval() {
        let start = Instant::now();
        let mut schedule = Schedule::new(INTERVAL, start);
        let wait = schedule.after_top_up(TopUp::PermitsBusy, start);
        assert!(!schedule.slept(wait));
        assert_eq!(
            schedule.after_top_up(TopUp::Done, start + wait),
            INTERVAL - wait
        );
    }
}
