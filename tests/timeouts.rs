//! Wait, create and validation timeouts return the right error and leak no slot. Time is a
//! manual clock: nothing here sleeps for the length of a timeout.

mod common;

use common::{Gate, ManualClock, ManualRuntime, RealRuntime, TestManager, eventually};
use connection_pool::{ConnectionPool, PoolError, TimeoutPhase, ValidationPolicy};
use std::{sync::Arc, time::Duration};

fn pool(max_size: usize) -> (ConnectionPool<TestManager>, TestManager, Arc<ManualClock>) {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .wait_timeout(Duration::from_secs(30))
        .connection_timeout(Duration::from_secs(10))
        .validation_timeout(Duration::from_secs(5))
        .validation(ValidationPolicy::Always)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    (pool, manager, clock)
}

/// A `get_connection` on its own task, returning the connection's id.
fn spawn_get(
    pool: &ConnectionPool<TestManager>,
) -> tokio::task::JoinHandle<Result<usize, PoolError<common::TestError>>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
}

/// A `get_connection_timeout(timeout)` on its own task, returning the connection's id.
fn spawn_get_timeout(
    pool: &ConnectionPool<TestManager>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<usize, PoolError<common::TestError>>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get_connection_timeout(timeout).await.map(|c| c.id) })
}

fn phase<T: std::fmt::Debug>(result: Result<T, PoolError<common::TestError>>) -> TimeoutPhase {
    timeout(result).0
}

/// The phase and last creation error of a timeout; panics on anything else.
fn timeout<T: std::fmt::Debug>(
    result: Result<T, PoolError<common::TestError>>,
) -> (TimeoutPhase, Option<String>) {
    match result {
        Err(PoolError::Timeout {
            phase, last_error, ..
        }) => (phase, last_error),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn waiting_times_out_at_wait_timeout() {
    let (pool, manager, clock) = pool(1);
    let held = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(29));
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "not before the deadline");
    clock.advance(Duration::from_secs(2));
    let result = waiter.await.unwrap();
    let message = match &result {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    assert_eq!(phase(result), TimeoutPhase::Waiting);
    assert!(message.contains("in use"), "{message}");
    let status = pool.status();
    assert_eq!((status.waiters, status.size, status.in_use), (0, 1, 1));
    assert_eq!(status.counters.timeouts, 1);
    drop(held);
    assert_eq!(manager.counts.live(), 1);
    assert_eq!(pool.status().idle, 1);
}

#[tokio::test]
async fn a_per_call_timeout_overrides_wait_timeout() {
    let (pool, _manager, clock) = pool(1);
    let _held = pool.get_connection().await.unwrap();
    let waiter = spawn_get_timeout(&pool, Duration::from_secs(2));
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(3));
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
}

/// `get_connection_timeout`'s docs: a longer per-call limit does not lift a step's own
/// limit, and the error says which step and which limit ran out.
#[tokio::test]
async fn a_per_call_timeout_longer_than_connection_timeout_still_ends_a_hung_create() {
    let (pool, manager, clock) = pool(1);
    manager.counts.set_create(Gate::Hang);
    let getter = spawn_get_timeout(&pool, Duration::from_secs(60));
    eventually("create was called", || manager.counts.create_calls() == 1).await;
    clock.advance(Duration::from_secs(11));
    let result = getter.await.unwrap();
    let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
    let (phase, last_error) = timeout(result);
    assert_eq!(phase, TimeoutPhase::Creating);
    assert!(
        last_error.is_some_and(|e| e.contains("connection_timeout")),
        "the last error names the limit that ran out: {message}"
    );
}

#[tokio::test]
async fn a_hanging_create_times_out_and_frees_its_slot() {
    let (pool, manager, clock) = pool(1);
    manager.counts.set_create(Gate::Hang);
    let getter = spawn_get(&pool);
    eventually("create was called", || manager.counts.create_calls() == 1).await;
    assert_eq!(pool.status().size, 1, "the creation holds a slot");
    clock.advance(Duration::from_secs(11));
    assert_eq!(phase(getter.await.unwrap()), TimeoutPhase::Creating);
    assert_eq!(pool.status().size, 0, "slot released");
    assert_eq!(pool.status().counters.create_failures, 1);
    manager.counts.set_create(Gate::Ok);
    // The governor lets the next creation start once its retry delay has passed.
    clock.advance(connection_pool::CREATE_BACKOFF_MAX);
    assert!(pool.get_connection().await.is_ok());
}

#[tokio::test]
async fn the_wait_deadline_also_bounds_creation() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .wait_timeout(Duration::from_secs(3))
        .connection_timeout(Duration::from_secs(10))
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    manager.counts.set_create(Gate::Hang);
    let getter = spawn_get(&pool);
    eventually("create was called", || manager.counts.create_calls() == 1).await;
    clock.advance(Duration::from_secs(4));
    match getter.await.unwrap() {
        Err(e @ PoolError::Timeout { .. }) => {
            let PoolError::Timeout {
                phase, last_error, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(*phase, TimeoutPhase::Creating);
            // Nothing failed, so nothing blames connection_timeout: the attempt is reported
            // as dropped when the call's own time ran out.
            let last_error = last_error.as_deref().expect("the dropped attempt");
            assert!(
                last_error.contains("abandoned after 4.0s")
                    && last_error.contains("not counted as a failure"),
                "{last_error}"
            );
            assert!(e.to_string().contains("wait_timeout"), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let status = pool.status();
    assert_eq!(status.size, 0);
    // The caller ran out of time, the backend did not fail: no failure, no backoff, and the
    // next call creates at once (the clock does not move).
    assert_eq!(status.counters.create_failures, 0);
    manager.counts.set_create(Gate::Ok);
    let next = tokio::time::timeout(Duration::from_secs(5), pool.get_connection()).await;
    assert!(matches!(next, Ok(Ok(_))), "{next:?}");
}

#[tokio::test]
async fn a_hanging_validation_destroys_the_connection_and_the_call_moves_on() {
    let (pool, manager, clock) = pool(1);
    drop(pool.get_connection().await.unwrap());
    manager.counts.set_validate(Gate::Hang);
    let getter = spawn_get(&pool);
    eventually("validation started", || manager.counts.validations() == 1).await;
    // Past validation_timeout (5 s), well inside wait_timeout (30 s): the silent connection is
    // destroyed and a new one created in its slot, which is new and needs no check.
    clock.advance(Duration::from_secs(6));
    let id = getter.await.unwrap().expect("a fresh connection");
    assert_eq!(id, 1, "the second connection ever created");
    let status = pool.status();
    assert_eq!((status.size, status.idle), (1, 1));
    assert_eq!(status.counters.destroyed.validation_aborted, 1);
    assert_eq!(status.counters.timeouts, 0);
    assert_eq!(manager.counts.live(), 1);
}

#[tokio::test]
async fn a_validation_cut_short_by_the_wait_deadline_is_a_validating_timeout() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .wait_timeout(Duration::from_secs(3))
        .validation_timeout(Duration::from_secs(10))
        .validation(ValidationPolicy::Always)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap());
    manager.counts.set_validate(Gate::Hang);
    let getter = spawn_get(&pool);
    eventually("validation started", || manager.counts.validations() == 1).await;
    clock.advance(Duration::from_secs(4));
    assert_eq!(phase(getter.await.unwrap()), TimeoutPhase::Validating);
    let status = pool.status();
    assert_eq!((status.size, status.idle), (0, 0));
    assert_eq!(status.counters.destroyed.validation_aborted, 1);
    assert_eq!(manager.counts.live(), 0);
}

#[tokio::test]
async fn a_timeout_carries_the_last_creation_failure() {
    let (pool, manager, clock) = pool(2);
    let _held = pool.get_connection().await.unwrap();
    manager.counts.set_create(Gate::Hang);
    let first = spawn_get(&pool);
    eventually("first create started", || {
        manager.counts.create_calls() == 2
    })
    .await;
    let second = spawn_get(&pool);
    eventually("second call waits", || pool.status().waiters == 1).await;
    // The first create times out; once the governor's retry delay has passed, the waiter
    // creates, and hangs too.
    clock.advance(Duration::from_secs(11));
    assert_eq!(phase(first.await.unwrap()), TimeoutPhase::Creating);
    clock.advance(connection_pool::CREATE_BACKOFF_MAX);
    eventually("second create started", || {
        manager.counts.create_calls() == 3
    })
    .await;
    clock.advance(Duration::from_secs(11));
    match second.await.unwrap() {
        Err(e @ PoolError::Timeout { .. }) => {
            let PoolError::Timeout { last_error, .. } = &e else {
                unreachable!()
            };
            assert!(last_error.is_some(), "{e}");
            assert!(
                e.to_string()
                    .contains("did not finish within connection_timeout (10s)"),
                "{e}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(pool.status().size, 1, "only the held connection");
}

/// A runtime whose clock never moves while its timers run in real time: the pool must trust
/// its timers for every deadline, as the `Runtime` contract lets it.
struct FrozenClock(std::time::Instant);

impl connection_pool::Runtime for FrozenClock {
    fn spawn(&self, task: connection_pool::BoxFuture<()>) {
        drop(tokio::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> connection_pool::BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn now(&self) -> std::time::Instant {
        self.0
    }
}

#[tokio::test]
async fn a_wait_times_out_by_its_timer_even_when_the_clock_stands_still() {
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(1)
        .wait_timeout(Duration::from_millis(20))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(FrozenClock(std::time::Instant::now()))
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    // Before, the woken waiter read the clock, found its deadline not yet passed and queued
    // again, for ever.
    let waited = tokio::time::timeout(Duration::from_secs(5), pool.get_connection()).await;
    let result = waited
        .expect("the call returns at its deadline")
        .map(|c| c.id);
    assert_eq!(phase(result), TimeoutPhase::Waiting);
    drop(held);
}

#[tokio::test]
async fn a_timeout_while_the_pool_backs_off_names_the_failure_that_started_it() {
    let (pool, manager, clock) = pool(4);
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Backend(_))
    ));
    // This call begins after the failure, and spends its time held back by the backoff.
    clock.advance(Duration::from_millis(1));
    let getter = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(5);
            pool.get_connection_timeout(timeout).await.map(|c| c.id)
        })
    };
    eventually("the call is held back", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_millis(10));
    let result = getter.await.unwrap();
    let message = result.as_ref().err().map(ToString::to_string);
    let (phase, last_error) = timeout(result);
    assert_eq!(phase, TimeoutPhase::Waiting);
    // Before, no error: the message blamed connections in use, in a pool of size 0.
    let last_error = last_error.expect("the failure that started the backoff");
    assert!(last_error.contains("refused by the test"), "{last_error}");
    assert!(!message.unwrap().contains("in use"));
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn a_create_timeout_without_wait_timeout_reports_the_failure() {
    // A real clock: the failure has to be recorded strictly before the timeout is reported,
    // which a manual clock that stands still cannot show.
    let timed_out_after = Arc::new(std::sync::Mutex::new(None));
    let pool = ConnectionPool::builder(TestManager::new())
        .wait_timeout(None)
        .connection_timeout(Duration::from_millis(20))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .observer(TimeoutWatch(Arc::clone(&timed_out_after)))
        .runtime(RealRuntime)
        .build()
        .unwrap();
    pool.manager().counts.set_create(Gate::Hang);
    let result = pool.get_connection().await.map(|c| c.id);
    assert_eq!(pool.status().counters.create_failures, 1);
    // Measured from the call's start, not from the moment it timed out.
    let waited = timed_out_after
        .lock()
        .unwrap()
        .expect("on_timeout was called");
    assert!(waited >= Duration::from_millis(20), "{waited:?}");
    let (phase, last_error) = timeout(result);
    assert_eq!(phase, TimeoutPhase::Creating);
    let last_error = last_error.expect("the timed-out attempt");
    assert!(last_error.contains("connection_timeout"), "{last_error}");
}

#[tokio::test]
async fn the_backoff_ends_by_its_timer_even_when_the_clock_stands_still() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(2)
        .wait_timeout(Duration::from_secs(5))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(FrozenClock(std::time::Instant::now()))
        .build()
        .unwrap();
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Backend(_))
    ));
    manager.counts.set_create(Gate::Ok);
    // Before, the call woke when its retry timer fired, found the clock still short of the
    // retry instant, and slept again, for ever.
    let got = tokio::time::timeout(Duration::from_secs(3), pool.get_connection()).await;
    let conn = got.expect("the call probes once its backoff timer fired");
    assert!(conn.is_ok(), "{:?}", conn.map(|c| c.id));
}

/// Records the wait an observer is told about when a call times out.
struct TimeoutWatch(Arc<std::sync::Mutex<Option<Duration>>>);

impl connection_pool::PoolObserver for TimeoutWatch {
    fn on_timeout(&self, _phase: TimeoutPhase, waited: Duration) {
        *self.0.lock().unwrap() = Some(waited);
    }
}

#[tokio::test]
async fn a_connection_handed_over_as_the_deadline_passes_is_passed_on_not_destroyed() {
    let (pool, manager, clock) = pool(1);
    let held = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // The waiter's deadline passes and the connection reaches it before it runs again.
    manager.counts.set_validate(Gate::Hang);
    clock.advance(Duration::from_secs(31));
    drop(held);
    // Before, it was validated with no time left and destroyed as a Validating timeout.
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
    let status = pool.status();
    assert_eq!(status.counters.destroyed.total(), 0, "{status:?}");
    assert_eq!((status.size, status.idle), (1, 1));
    assert_eq!(manager.counts.live(), 1);
}

#[tokio::test]
async fn a_slot_granted_as_the_deadline_passes_is_passed_on_not_dialled_with() {
    let (pool, manager, clock) = pool(1);
    let mut held = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // The waiter's deadline passes, and its place is granted the slot the broken connection
    // frees, before it runs again.
    clock.advance(Duration::from_secs(31));
    held.mark_broken();
    drop(held);
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
    assert_eq!(
        manager.counts.create_calls(),
        1,
        "no dial with no time left"
    );
    let status = pool.status();
    assert_eq!((status.size, status.connecting), (0, 0), "{status:?}");
}

/// A pool on tokio's own timers, which round a zero-length sleep up to the next millisecond.
fn pool_on_tokio_timers(manager: &TestManager) -> ConnectionPool<TestManager> {
    ConnectionPool::builder(manager.clone())
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .cleanup_interval(None)
        .runtime(RealRuntime)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_zero_timeout_polls_a_creation_once_even_where_a_zero_timer_is_not_ready_at_once() {
    let manager = TestManager::new();
    let pool = pool_on_tokio_timers(&manager);
    // The creation is pending on its first poll and fails on its second.
    manager.counts.set_create(Gate::Fail);
    let result = pool
        .get_connection_timeout(Duration::ZERO)
        .await
        .map(|c| c.id);
    assert_eq!(phase(result), TimeoutPhase::Creating);
    assert_eq!(
        pool.status().counters.create_failures,
        0,
        "an attempt the call's own deadline cut short is no failure of the backend"
    );
    assert_eq!(pool.status().size, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_zero_timeout_polls_a_check_once_even_where_a_zero_timer_is_not_ready_at_once() {
    let manager = TestManager::new();
    let pool = pool_on_tokio_timers(&manager);
    drop(pool.get_connection().await.unwrap());
    // The check is pending on its first poll and fails on its second.
    manager.counts.set_validate(Gate::Fail);
    let result = pool
        .get_connection_timeout(Duration::ZERO)
        .await
        .map(|c| c.id);
    assert_eq!(phase(result), TimeoutPhase::Validating);
    let destroyed = pool.status().counters.destroyed;
    assert_eq!(
        (destroyed.validation_aborted, destroyed.validation_failed),
        (1, 0),
        "the check was cut short after one poll, not failed on a second"
    );
}

#[tokio::test]
async fn a_zero_timeout_still_checks_an_idle_connection_that_answers_at_once() {
    let (pool, manager, _clock) = pool(1);
    drop(pool.get_connection().await.unwrap());
    let conn = pool
        .get_connection_timeout(Duration::ZERO)
        .await
        .expect("an idle connection whose check completes on its first poll");
    assert_eq!(manager.counts.validations(), 1);
    drop(conn);
}

#[tokio::test]
async fn a_connection_taken_in_place_of_a_late_grant_is_passed_on_not_checked() {
    let (pool, manager, clock) = pool(2);
    let mut first = pool.get_connection().await.unwrap();
    let second = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // Past the waiter's deadline: a broken return grants it a slot, then a healthy return
    // goes idle (nobody counts as waiting), all before the waiter runs.
    clock.advance(Duration::from_secs(31));
    first.mark_broken();
    drop(first);
    drop(second);
    manager.counts.set_validate(Gate::Hang);
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
    let status = pool.status();
    assert_eq!(status.counters.destroyed.total(), 1, "only the broken one");
    assert_eq!((status.size, status.idle), (1, 1), "{status:?}");
}

#[tokio::test]
async fn a_late_hand_off_that_expired_meanwhile_is_not_replaced_with_no_time_left() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .wait_timeout(Duration::from_secs(30))
        .max_lifetime(Duration::from_secs(40))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(31));
    drop(held);
    // Handed over after the deadline, and past its lifetime before the waiter runs.
    clock.advance(Duration::from_secs(10));
    manager.counts.set_create(Gate::Hang);
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
    assert_eq!(
        manager.counts.create_calls(),
        1,
        "no dial with no time left"
    );
    let status = pool.status();
    assert_eq!((status.size, status.connecting), (0, 0), "{status:?}");
}

/// Timers that follow one [`ManualClock`] and `now()` another, moved apart by the test: a
/// clock that lags its timers, as the `Runtime` contract allows.
struct LaggingClock {
    timers: ManualRuntime,
    now: Arc<ManualClock>,
}

impl connection_pool::Runtime for LaggingClock {
    fn spawn(&self, task: connection_pool::BoxFuture<()>) {
        self.timers.spawn(task);
    }

    fn sleep(&self, duration: Duration) -> connection_pool::BoxFuture<()> {
        self.timers.sleep(duration)
    }

    fn now(&self) -> std::time::Instant {
        self.now.now()
    }
}

#[tokio::test]
async fn a_hand_off_after_the_timer_fired_is_passed_on_even_if_the_clock_lags() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let runtime = LaggingClock {
        timers: ManualRuntime::new(&clock),
        now: ManualClock::new(),
    };
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .wait_timeout(Duration::from_secs(30))
        .validation(ValidationPolicy::Always)
        .cleanup_interval(None)
        .runtime(runtime)
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // The waiter's timer fires, and the connection reaches it before it runs; the pool's
    // clock still says no time has passed.
    clock.advance(Duration::from_secs(31));
    manager.counts.set_validate(Gate::Hang);
    drop(held);
    // Before, it validated the connection, and the check (which hangs) outlived the test's
    // clock: bounded here in real time, so that the test fails rather than hangs.
    let result = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the call returns at once");
    assert_eq!(phase(result.unwrap()), TimeoutPhase::Waiting);
    assert_eq!(manager.counts.validations(), 0, "checked with no time left");
    let status = pool.status();
    assert_eq!((status.size, status.idle), (1, 1), "{status:?}");
}

#[tokio::test]
async fn a_late_hand_off_that_expired_with_no_permit_to_replace_it_ends_the_call() {
    let manager = TestManager::new();
    let (timer_clock, pool_clock) = (ManualClock::new(), ManualClock::new());
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(2)
        .max_connecting(1)
        .wait_timeout(Duration::from_secs(30))
        .max_lifetime(Duration::from_secs(40))
        .connection_timeout(None)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(LaggingClock {
            timers: ManualRuntime::new(&timer_clock),
            now: Arc::clone(&pool_clock),
        })
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    // A creation that never ends holds the only connect permit and the second slot.
    manager.counts.set_create(Gate::Hang);
    let creating = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.get_connection_timeout(Duration::MAX)
                .await
                .map(|c| c.id)
        }
    });
    eventually("the creation is in flight", || {
        pool.status().connecting == 1
    })
    .await;
    pool_clock.advance(Duration::from_secs(35));
    let waiter = spawn_get(&pool);
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // The waiter's timer fires, the connection reaches it, and by the pool's clock (which
    // lags the timer: 10 s of its 30 are left) the connection then outlives max_lifetime
    // before the waiter runs. Its slot cannot become a creation: no permit is free.
    timer_clock.advance(Duration::from_secs(31));
    drop(held);
    pool_clock.advance(Duration::from_secs(10));
    // Before, it queued again for the 10 s the pool's clock said were left, on a timer that
    // never fires here: bounded in real time, so that the test fails rather than hangs.
    let result = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the call returns at once");
    assert_eq!(phase(result.unwrap()), TimeoutPhase::Waiting);
    let status = pool.status();
    assert_eq!(status.counters.destroyed.max_lifetime, 1, "{status:?}");
    assert_eq!(
        (status.size, status.connecting, status.waiters),
        (1, 1, 0),
        "only the creation in flight"
    );
    creating.abort();
}

#[tokio::test]
async fn a_creation_given_no_time_is_not_reported_to_later_timeouts() {
    let (pool, manager, _clock) = pool(2);
    manager.counts.set_create(Gate::Hang);
    // "Only if ready": the creation is polled once and dropped. That says nothing about the
    // server, so the next call's timeout (the clock stands still: same instant) must not
    // report it as its last connection attempt.
    for _ in 0..2 {
        let result = pool.get_connection_timeout(Duration::ZERO).await;
        let (phase, last_error) = timeout(result);
        assert_eq!(phase, TimeoutPhase::Creating);
        assert_eq!(last_error, None);
    }
    assert_eq!(manager.counts.create_calls(), 2);
}
