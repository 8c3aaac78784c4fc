//! Expiry by idle time and lifetime, `min_idle` top-up, and control of the cleanup task, all
//! driven by a manual clock (real time only where a test says why).

mod common;

use common::{
    FlakyTimers, Gate, ManualClock, ManualRuntime, RealRuntime, TestManager, advance_until,
    eventually, running,
};
use connection_pool::{
    BoxFuture, Builder, ConnectionPool, PooledConnection, Runtime, ValidationPolicy,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const SECOND: Duration = Duration::from_secs(1);

fn builder(manager: &TestManager, clock: &Arc<ManualClock>) -> Builder<TestManager> {
    ConnectionPool::builder(manager.clone())
        .max_size(20)
        .max_idle_time(60 * SECOND)
        .max_lifetime(100 * SECOND)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(clock))
}

async fn check_out(
    pool: &ConnectionPool<TestManager>,
    n: usize,
) -> Vec<PooledConnection<'_, TestManager>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get_connection().await.unwrap());
    }
    held
}

#[tokio::test]
async fn idle_connections_expire_after_max_idle_time() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock).build().unwrap();
    drop(check_out(&pool, 3).await);
    let start = pool.now();
    let report = pool.cleanup_pass(start + 59 * SECOND);
    assert_eq!((report.inspected, report.idle_expired), (3, 0));
    assert_eq!(pool.status().idle, 3, "kept, and still in the queue");
    let report = pool.cleanup_pass(start + 61 * SECOND);
    assert_eq!(report.idle_expired, 3);
    assert_eq!(manager.counts.live(), 0);
    assert_eq!(pool.status().counters.destroyed.idle_timeout, 3);
}

#[tokio::test]
async fn idle_expiry_never_goes_below_min_idle() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .min_idle(2)
        .cleanup_interval(3600 * SECOND)
        .build()
        .unwrap();
    eventually("min_idle is reached", || pool.status().idle == 2).await;
    drop(check_out(&pool, 5).await);
    let report = pool.cleanup_pass(pool.now() + 61 * SECOND);
    assert_eq!(report.idle_expired, 3);
    assert_eq!(pool.status().idle, 2);
}

#[tokio::test]
async fn a_connection_past_its_lifetime_does_not_count_toward_min_idle() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .min_idle(1)
        .cleanup_interval(3600 * SECOND)
        .build()
        .unwrap();
    eventually("min_idle is reached", || pool.status().idle == 1).await;
    let start = pool.now();
    let old = pool.get_connection().await.unwrap();
    clock.advance(50 * SECOND);
    let young = pool.get_connection().await.unwrap();
    // Queue order: the young one (to be idle too long), then the old one (to be past its
    // lifetime).
    drop(young);
    drop(old);
    let report = pool.cleanup_pass(start + 120 * SECOND);
    assert_eq!(report.lifetime_expired, 1);
    assert_eq!(
        report.idle_expired, 0,
        "the one connection left is min_idle's: {report:?}"
    );
    assert_eq!(report.inspected, 2);
    assert_eq!(pool.status().idle, 1);
}

#[tokio::test]
async fn lifetime_expiry_applies_even_to_min_idle() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .min_idle(2)
        .max_idle_time(None)
        .cleanup_interval(3600 * SECOND)
        .build()
        .unwrap();
    eventually("min_idle is reached", || pool.status().idle == 2).await;
    let start = pool.now();
    // Jitter takes at most 2.5 % off the lifetime.
    assert_eq!(pool.cleanup_pass(start + 97 * SECOND).lifetime_expired, 0);
    assert_eq!(pool.cleanup_pass(start + 100 * SECOND).lifetime_expired, 2);
    assert_eq!(manager.counts.live(), 0);
}

#[tokio::test]
async fn a_lifetime_that_runs_out_during_the_checkout_check_is_not_handed_out() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .max_idle_time(None)
        .validation(ValidationPolicy::Always)
        .validation_timeout(5 * SECOND)
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap());
    // Within its lifetime (jitter takes at most 2.5 % off 100 s) when the check starts...
    clock.advance(97 * SECOND);
    static CHECK_MAY_PASS: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);
    manager
        .counts
        .set_validate(Gate::Until(|| CHECK_MAY_PASS.load(Ordering::SeqCst)));
    let getting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
    };
    eventually("the check runs", || manager.counts.validations() == 1).await;
    // ...and past it when the check passes, 4 s later (within validation_timeout).
    clock.advance(4 * SECOND);
    CHECK_MAY_PASS.store(true, Ordering::SeqCst);
    assert_eq!(getting.await.unwrap().unwrap(), 1, "a new connection");
    assert_eq!(pool.status().counters.destroyed.max_lifetime, 1);
}

#[tokio::test]
async fn lifetimes_are_jittered_so_a_burst_does_not_expire_together() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .max_idle_time(None)
        .build()
        .unwrap();
    drop(check_out(&pool, 20).await);
    // Halfway into the 2.5 % jitter window each connection is expired with probability 1/2.
    let report = pool.cleanup_pass(pool.now() + Duration::from_millis(98_750));
    assert!(
        report.lifetime_expired > 0 && report.lifetime_expired < 20,
        "{report:?}"
    );
}

#[tokio::test]
async fn lifetime_is_enforced_on_return_and_at_checkout() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .max_idle_time(None)
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    drop(pool.get_connection().await.unwrap());
    clock.advance(101 * SECOND);
    drop(held);
    assert_eq!(
        pool.status().counters.destroyed.max_lifetime,
        1,
        "on return"
    );
    let fresh = pool.get_connection().await.unwrap();
    assert_eq!(fresh.id, 2, "the aged idle one was destroyed at checkout");
    assert_eq!(pool.status().counters.destroyed.max_lifetime, 2);
}

#[tokio::test]
async fn the_background_task_expires_and_tops_up() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = builder(&manager, &clock)
        .min_idle(2)
        .cleanup_interval(30 * SECOND)
        .build()
        .unwrap();
    eventually("min_idle is reached at start", || pool.status().idle == 2).await;
    drop(check_out(&pool, 6).await);
    assert_eq!(pool.status().idle, 6);
    advance_until(&clock, 30 * SECOND, "idle connections expire", || {
        pool.status().idle == 2
    })
    .await;
    assert_eq!(pool.status().counters.destroyed.idle_timeout, 4);

    // Break both idle connections: the task creates replacements on its next tick.
    for mut conn in check_out(&pool, 2).await {
        conn.mark_broken();
    }
    assert_eq!(pool.status().idle, 0);
    advance_until(&clock, 30 * SECOND, "min_idle is restored", || {
        pool.status().idle == 2
    })
    .await;
    assert_eq!(manager.counts.live(), 2);
}

#[tokio::test]
async fn the_cleanup_task_can_be_stopped_and_restarted() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    let pool = builder(&manager, &clock)
        .min_idle(2)
        .cleanup_interval(30 * SECOND)
        .runtime(runtime)
        .build()
        .unwrap();
    eventually("min_idle is reached", || pool.status().idle == 2).await;
    pool.stop_cleanup_task();
    // At once, not at its next tick: the clock does not move.
    eventually("the task ends", || running(&spawned) == 0).await;
    for mut conn in check_out(&pool, 2).await {
        conn.mark_broken();
    }
    clock.advance(120 * SECOND);
    common::async_io_sleep(Duration::from_millis(20)).await;
    assert_eq!(pool.status().idle, 0, "stopped: no top-up");

    pool.restart_cleanup_task(5 * SECOND).unwrap();
    eventually("the new task tops up", || pool.status().idle == 2).await;
    assert_eq!(running(&spawned), 1);
}

#[tokio::test]
async fn restarting_replaces_the_task_and_dropping_the_pool_ends_every_background_task_at_once() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    let pool = builder(&manager, &clock)
        .cleanup_interval(3600 * SECOND)
        .leak_detection_threshold(7200 * SECOND)
        .runtime(runtime)
        .build()
        .unwrap();
    assert_eq!(
        running(&spawned),
        2,
        "the cleanup task and the leak watcher"
    );
    for _ in 0..20 {
        pool.restart_cleanup_task(3600 * SECOND).unwrap();
        common::async_io_sleep(Duration::from_millis(1)).await;
    }
    // The clock never moves: no task may wait for its hour-long tick to notice.
    eventually("each restart ended the task it replaced", || {
        running(&spawned) == 2
    })
    .await;
    assert_eq!(spawned.lock().unwrap().len(), 22);
    drop(pool);
    eventually("no background task outlives the pool", || {
        running(&spawned) == 0
    })
    .await;
}

/// A [`ManualRuntime`] whose second `spawn` panics, once the first task has gone to sleep.
struct SecondSpawnPanics {
    inner: ManualRuntime,
    spawns: AtomicUsize,
}

impl Runtime for SecondSpawnPanics {
    fn spawn(&self, task: BoxFuture<()>) {
        if self.spawns.fetch_add(1, Ordering::SeqCst) == 0 {
            self.inner.spawn(task);
            return;
        }
        // Another worker runs the first task meanwhile.
        let start = Instant::now();
        while self.inner.clock.sleepers() == 0 {
            assert!(start.elapsed() < 10 * SECOND, "the first task never slept");
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the second spawn panics on purpose");
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        self.inner.sleep(duration)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_panics_after_spawning_the_cleanup_task_leaves_no_task_behind() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let inner = ManualRuntime::new(&clock);
    let spawned = inner.spawned.clone();
    let runtime = SecondSpawnPanics {
        inner,
        spawns: AtomicUsize::new(0),
    };
    // The cleanup task is spawned, then spawning the leak watcher panics out of `build`.
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder(&manager, &clock)
            .cleanup_interval(3600 * SECOND)
            .leak_detection_threshold(7200 * SECOND)
            .runtime(runtime)
            .build()
    }));
    assert!(built.is_err());
    assert_eq!(spawned.lock().unwrap().len(), 1);
    // The clock never moves: the task must not wait for its hour-long tick to notice.
    eventually("the cleanup task ended with the pool", || {
        running(&spawned) == 0
    })
    .await;
}

/// A pool whose `min_idle` top-up is stuck in a `create_connection` that never returns, with
/// no `connection_timeout` and the one connect permit taken.
async fn stuck_top_up(
    manager: &TestManager,
    runtime: ManualRuntime,
) -> ConnectionPool<TestManager> {
    stuck_top_up_with(manager, runtime, None, 30 * SECOND).await
}

async fn stuck_top_up_with(
    manager: &TestManager,
    runtime: ManualRuntime,
    connection_timeout: Option<Duration>,
    interval: Duration,
) -> ConnectionPool<TestManager> {
    manager.counts.set_create(Gate::Hang);
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(4)
        .max_connecting(1)
        .min_idle(1)
        .connection_timeout(connection_timeout)
        .wait_timeout(10 * SECOND)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(interval)
        .runtime(runtime)
        .build()
        .unwrap();
    eventually("the top-up is creating", || pool.status().connecting == 1).await;
    pool
}

/// A pool for the top-up retry tests: one connect permit, no timeouts (so a hanging creation
/// holds its permit until cancelled), and no validation; the test adds the runtime.
fn one_permit(
    manager: &TestManager,
    max_size: usize,
    min_idle: usize,
    interval: Duration,
) -> Builder<TestManager> {
    ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .max_connecting(1)
        .min_idle(min_idle)
        .connection_timeout(None)
        .wait_timeout(None)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(interval)
}

/// Waits until the first top-up filled `min_idle` and the cleanup task sleeps: checking out
/// earlier could race the top-up's last look and start another creation.
async fn topped_up_and_asleep(
    pool: &ConnectionPool<TestManager>,
    clock: &ManualClock,
    idle: usize,
) {
    eventually("min_idle is reached and the task asleep", || {
        pool.status().idle == idle && clock.sleepers() == 1
    })
    .await;
}

/// A caller creating, for ever, with the only connect permit; abort it to cancel.
async fn caller_holding_the_permit(
    manager: &TestManager,
    pool: &ConnectionPool<TestManager>,
) -> tokio::task::JoinHandle<()> {
    manager.counts.set_create(Gate::Hang);
    let caller_pool = pool.clone();
    let caller = tokio::spawn(async move { drop(caller_pool.get_connection().await) });
    eventually("the caller is creating", || pool.status().connecting == 1).await;
    caller
}

#[tokio::test]
async fn a_top_up_that_finds_every_permit_taken_tries_again_soon_not_a_tick_later() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = one_permit(&manager, 5, 2, 60 * SECOND)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    topped_up_and_asleep(&pool, &clock, 2).await;
    let held = check_out(&pool, 2).await;
    // A caller is creating, slowly, with the only connect permit when the tick comes.
    let caller = caller_holding_the_permit(&manager, &pool).await;
    manager.counts.set_create(Gate::Ok);
    clock.advance(60 * SECOND);
    // The caller has no timer: the one sleeper is the cleanup task, asleep again after the
    // tick's top-up found the permit taken.
    eventually("the tick ran", || clock.sleepers() == 1).await;
    assert_eq!((pool.status().idle, pool.status().size), (0, 3));
    caller.abort();
    eventually("the permit is free", || pool.status().connecting == 0).await;
    // A second, not the 60 s interval: the top-up tries again soon after a busy permit.
    clock.advance(SECOND);
    eventually("min_idle is restored before the next tick", || {
        pool.status().idle == 2
    })
    .await;
    assert_eq!(pool.status().size, 4);
    drop(held);
}

#[tokio::test]
async fn a_pool_full_only_through_a_creation_in_flight_is_topped_up_once_that_is_cancelled() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = one_permit(&manager, 3, 1, 60 * SECOND)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    topped_up_and_asleep(&pool, &clock, 1).await;
    let held = check_out(&pool, 2).await;
    // The last slot and the only permit: a caller's creation, which will be cancelled.
    let caller = caller_holding_the_permit(&manager, &pool).await;
    assert_eq!(pool.status().size, 3);
    manager.counts.set_create(Gate::Ok);
    clock.advance(60 * SECOND);
    eventually("the tick ran", || clock.sleepers() == 1).await;
    caller.abort();
    eventually("the caller's slot is free", || pool.status().size == 2).await;
    clock.advance(SECOND);
    eventually("min_idle is restored before the next tick", || {
        pool.status().idle == 1
    })
    .await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_retries_find_every_permit_taken_the_pass_still_comes_by_the_clock() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = one_permit(&manager, 5, 2, 30 * SECOND)
        .max_lifetime(40 * SECOND)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    topped_up_and_asleep(&pool, &clock, 2).await;
    let mut held = check_out(&pool, 2).await;
    // A caller holds the only connect permit in a creation that never ends.
    let caller = caller_holding_the_permit(&manager, &pool).await;
    drop(held.pop());
    assert_eq!(pool.status().idle, 1);
    // First tick: the pass finds nothing to expire, the top-up finds no permit and retries.
    clock.advance(30 * SECOND);
    eventually("the tick ran", || clock.sleepers() == 1).await;
    assert_eq!(pool.status().counters.destroyed.max_lifetime, 0);
    // The clock jumps past the next tick while a short retry sleeps: by the clock the pass is
    // due, and the idle connection has outlived its lifetime.
    clock.advance(31 * SECOND);
    eventually("the overdue pass expired the idle connection", || {
        pool.status().counters.destroyed.max_lifetime == 1
    })
    .await;
    eventually("the task sleeps again", || clock.sleepers() == 1).await;
    caller.abort();
    drop(held);
}

#[tokio::test]
async fn closing_or_dropping_the_pool_ends_a_top_up_in_flight() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    let pool = stuck_top_up(&manager, runtime).await;
    pool.close();
    // The clock never moves: the creation is dropped because the pool closed, not timed out.
    eventually("the top-up's creation was dropped", || {
        pool.status().connecting == 0
    })
    .await;
    assert_eq!(pool.status().size, 0);
    drop(pool);
    eventually("the cleanup task ended", || running(&spawned) == 0).await;
    eventually("nothing keeps the pool's state alive", || {
        Arc::strong_count(&manager.counts) == 1
    })
    .await;
}

#[tokio::test]
async fn stopping_the_cleanup_task_frees_the_permit_of_its_top_up() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = stuck_top_up(&manager, ManualRuntime::new(&clock)).await;
    manager.counts.set_create(Gate::Ok);
    pool.stop_cleanup_task();
    eventually("the top-up's creation was dropped", || {
        pool.status().connecting == 0
    })
    .await;
    // Without the fix the getter waited for the permit until its wait_timeout.
    let conn = pool.get_connection().await.expect("the permit is free");
    drop(conn);
    assert_eq!(pool.status().counters.create_failures, 0);
}

#[tokio::test]
async fn without_connection_timeout_a_top_up_attempt_is_given_up_after_a_long_tick() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = stuck_top_up(&manager, ManualRuntime::new(&clock)).await;
    clock.advance(29 * SECOND);
    tokio::task::yield_now().await;
    assert_eq!(pool.status().connecting, 1, "not before the interval");
    clock.advance(2 * SECOND);
    eventually("the attempt was given up", || pool.status().connecting == 0).await;
    // Dropped like a cancelled attempt: no failure, so no backoff for the callers.
    assert_eq!(pool.status().counters.create_failures, 0);
    manager.counts.set_create(Gate::Ok);
    let conn = pool.get_connection().await.expect("the permit is free");
    drop(conn);
}

#[tokio::test]
async fn a_connection_timeout_longer_than_a_long_tick_does_not_hold_the_top_up_longer() {
    // An hour's connection_timeout held the cleanup task (no expiry, no passes) and the
    // connect permit for the hour, where no timeout at all gave up after the long tick.
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let hour = 3600 * SECOND;
    let pool = stuck_top_up_with(
        &manager,
        ManualRuntime::new(&clock),
        Some(hour),
        30 * SECOND,
    )
    .await;
    clock.advance(31 * SECOND);
    eventually("the attempt was given up", || pool.status().connecting == 0).await;
    assert_eq!(pool.status().counters.create_failures, 0);
    manager.counts.set_create(Gate::Ok);
    let conn = pool.get_connection().await.expect("the permit is free");
    drop(conn);
}

#[tokio::test]
async fn a_connection_timeout_within_the_long_tick_still_fails_a_hung_top_up() {
    // cleanup_interval 5 s, so the give-up time is 10 s: the default connection_timeout
    // (also 10 s) must end the attempt as a failure (counted, backed off), not as a give-up.
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let pool = stuck_top_up_with(&manager, runtime, Some(10 * SECOND), 5 * SECOND).await;
    clock.advance(11 * SECOND);
    eventually("the attempt timed out", || pool.status().connecting == 0).await;
    assert_eq!(pool.status().counters.create_failures, 1);
}

#[tokio::test]
async fn without_connection_timeout_a_slow_top_up_outlives_a_short_tick() {
    // Real time: the connect takes five ticks. Giving each attempt up after one tick (as a
    // first version of the give-up did) never let one finish.
    let manager = TestManager::new();
    manager
        .counts
        .set_create(Gate::Delay(Duration::from_millis(50)));
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(4)
        .min_idle(1)
        .connection_timeout(None)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(Duration::from_millis(10))
        .runtime(RealRuntime)
        .build()
        .unwrap();
    eventually("the top-up created its connection", || {
        pool.status().idle == 1
    })
    .await;
    assert_eq!(manager.counts.create_calls(), 1, "no attempt was given up");
}

/// An observer whose first `on_destroy` panics.
#[derive(Default)]
struct FirstDestroyPanics(std::sync::atomic::AtomicBool);

impl connection_pool::PoolObserver for FirstDestroyPanics {
    fn on_destroy(&self, _reason: connection_pool::DestroyReason) {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("on_destroy panics on purpose");
        }
    }
}

#[tokio::test]
async fn a_panicking_create_in_the_top_up_does_not_end_the_cleanup_task() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    manager.counts.set_create(Gate::Panic);
    let pool = builder(&manager, &clock)
        .min_idle(1)
        .cleanup_interval(30 * SECOND)
        .runtime(runtime)
        .build()
        .unwrap();
    eventually("the top-up tried", || manager.counts.create_calls() >= 1).await;
    assert_eq!(
        pool.status().size,
        0,
        "the panicking creation freed its slot"
    );
    manager.counts.set_create(Gate::Ok);
    advance_until(&clock, 30 * SECOND, "min_idle is restored", || {
        pool.status().idle == 1
    })
    .await;
    assert_eq!(running(&spawned), 1);
}

#[tokio::test]
async fn an_observer_panic_in_a_cleanup_pass_does_not_end_the_cleanup_task() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    let pool = builder(&manager, &clock)
        .cleanup_interval(30 * SECOND)
        .observer(FirstDestroyPanics::default())
        .runtime(runtime)
        .build()
        .unwrap();
    drop(check_out(&pool, 2).await);
    // The first expiry's `on_destroy` panics in the middle of a pass; the next pass, or the
    // one after, expires the other connection.
    advance_until(&clock, 30 * SECOND, "both idle connections expire", || {
        pool.status().idle == 0
    })
    .await;
    assert_eq!(pool.status().counters.destroyed.idle_timeout, 2);
    assert_eq!(manager.counts.live(), 0);
    assert_eq!(running(&spawned), 1);
}

/// A [`ManualRuntime`] whose `now` panics on every other reading once armed, counted from
/// the arming: on the even ones or on the odd ones. The coarse clock (idle times, lifetimes)
/// stays sound, as tokio's and smol's read the system's.
struct FlakyClock {
    inner: ManualRuntime,
    /// 0: sound; 1: the even readings fail; 2: the odd ones.
    failing: Arc<AtomicUsize>,
    readings: Arc<AtomicUsize>,
}

impl Runtime for FlakyClock {
    fn spawn(&self, task: BoxFuture<()>) {
        self.inner.spawn(task);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        self.inner.sleep(duration)
    }

    fn now(&self) -> Instant {
        let reading = self.readings.fetch_add(1, Ordering::SeqCst);
        match self.failing.load(Ordering::SeqCst) {
            1 if reading % 2 == 0 => panic!("the test's clock fails on purpose"),
            2 if reading % 2 == 1 => panic!("the test's clock fails on purpose"),
            _ => self.inner.clock.now(),
        }
    }

    fn coarse_now(&self) -> Instant {
        self.inner.clock.now()
    }
}

/// Retries short of permits, then the pass overdue by the clock while every other reading
/// fails from then on (`failing` as in [`FlakyClock`]): how often the loop reads the clock
/// in 300 ms of real time.
async fn clock_readings_with_a_flaky_clock(failing: usize) -> usize {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let (mode, readings) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let runtime = FlakyClock {
        inner: ManualRuntime::new(&clock),
        failing: Arc::clone(&mode),
        readings: Arc::clone(&readings),
    };
    let pool = one_permit(&manager, 5, 1, 30 * SECOND)
        .runtime(runtime)
        .build()
        .unwrap();
    topped_up_and_asleep(&pool, &clock, 1).await;
    let held = pool.get_connection().await.unwrap();
    // A caller holds the only connect permit, so each top-up ends at once, short of permits.
    let caller = caller_holding_the_permit(&manager, &pool).await;
    clock.advance(30 * SECOND);
    eventually("the task retries", || clock.sleepers() == 1).await;
    readings.store(0, Ordering::SeqCst);
    mode.store(failing, Ordering::SeqCst);
    // Past the next tick: the pass is overdue by the clock.
    clock.advance(31 * SECOND);
    common::async_io_sleep(Duration::from_millis(300)).await;
    let read = readings.load(Ordering::SeqCst);
    mode.store(0, Ordering::SeqCst);
    caller.abort();
    drop(held);
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_that_fails_now_and_then_does_not_make_the_cleanup_task_spin() {
    // Both phases: whichever reading of the loop's the failures hit (the one after a pass, or
    // the one after a top-up), the loop goes back to sleep.
    for failing in [1, 2] {
        let read = clock_readings_with_a_flaky_clock(failing).await;
        assert!(
            read < 100,
            "failing {failing}: the cleanup task read the clock {read} times in 300 ms"
        );
    }
}

/// A pool keeping `min_idle` 1 with a 30 s cleanup interval on [`FlakyTimers`], topped up
/// and with its cleanup task asleep: the pool, its clock, its timer faults and what it spawned.
async fn topped_up_on_flaky_timers() -> (
    ConnectionPool<TestManager>,
    Arc<ManualClock>,
    Arc<common::TimerFaults>,
    Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) {
    let clock = ManualClock::new();
    let runtime = FlakyTimers::new(&clock);
    let (faults, spawned) = (Arc::clone(&runtime.faults), runtime.inner.spawned.clone());
    let pool = one_permit(&TestManager::new(), 4, 1, 30 * SECOND)
        .runtime(runtime)
        .build()
        .unwrap();
    topped_up_and_asleep(&pool, &clock, 1).await;
    (pool, clock, faults, spawned)
}

#[tokio::test]
async fn a_timer_that_panics_once_does_not_end_the_cleanup_task() {
    for on_poll in [false, true] {
        let (pool, clock, faults, spawned) = topped_up_on_flaky_timers().await;
        faults.fail(1, on_poll);
        let asked = faults.sleeps.load(Ordering::SeqCst);
        clock.advance(30 * SECOND);
        eventually("the task slept again after its timer failed", || {
            faults.sleeps.load(Ordering::SeqCst) >= asked + 2 && clock.sleepers() == 1
        })
        .await;
        // Take the idle connection away: the task, still alive, restores min_idle.
        drop(pool.get_connection().await.unwrap().detach());
        advance_until(&clock, 30 * SECOND, "min_idle is restored", || {
            pool.status().idle == 1
        })
        .await;
        assert_eq!(running(&spawned), 1, "on_poll {on_poll}");
    }
}

#[tokio::test]
async fn a_timer_that_keeps_panicking_ends_the_cleanup_task_after_a_few_tries() {
    for on_poll in [false, true] {
        let (pool, clock, faults, spawned) = topped_up_on_flaky_timers().await;
        faults.fail(usize::MAX, on_poll);
        let asked = faults.sleeps.load(Ordering::SeqCst);
        clock.advance(30 * SECOND);
        eventually("the task ended", || running(&spawned) == 0).await;
        assert_eq!(
            faults.sleeps.load(Ordering::SeqCst) - asked,
            3,
            "on_poll {on_poll}: three timers, not a spin"
        );
        // Once the runtime's timers work again, the task can be started again.
        faults.fail(0, false);
        pool.restart_cleanup_task(30 * SECOND).unwrap();
        eventually("the new task runs", || running(&spawned) == 1).await;
    }
}

#[tokio::test]
async fn timer_panics_with_a_working_timer_between_them_do_not_add_up() {
    for on_poll in [false, true] {
        let (_pool, clock, faults, spawned) = topped_up_on_flaky_timers().await;
        // Two failures, a timer that works, two failures: never three in a row.
        for round in 0..2 {
            faults.fail(2, on_poll);
            let asked = faults.sleeps.load(Ordering::SeqCst);
            clock.advance(30 * SECOND);
            eventually("two failed timers, then one that sleeps", || {
                faults.sleeps.load(Ordering::SeqCst) >= asked + 3 && clock.sleepers() == 1
            })
            .await;
            assert_eq!(running(&spawned), 1, "on_poll {on_poll}, round {round}");
        }
    }
}

#[tokio::test]
async fn a_clock_centuries_ahead_expires_nothing_that_has_no_lifetime() {
    // Past about 438 years a stamp saturated at the value that means "never", so every
    // connection counted as past its (absent) lifetime and each return destroyed it.
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = ConnectionPool::builder(manager.clone())
        .max_lifetime(None)
        .max_idle_time(None)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap());
    clock.advance(Duration::from_secs(440 * 365 * 86_400));
    for _ in 0..3 {
        drop(pool.get_connection().await.unwrap());
    }
    assert_eq!(
        manager.counts.create_calls(),
        1,
        "the one connection is reused"
    );
    assert_eq!(pool.status().counters.destroyed.total(), 0);
}
