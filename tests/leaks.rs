//! Leak detection: a connection held longer than `leak_detection_threshold` is reported once,
//! with the source location of the `get_connection` call; when off, nothing is spawned.

mod common;

use common::{FlakyTimers, ManualClock, ManualRuntime, TestManager, advance_until, running};
use connection_pool::{ConnectionPool, PoolError, ValidationPolicy};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Keeps every warning logged by this test binary.
struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

fn warnings_mentioning(needle: &str) -> usize {
    CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(needle))
        .count()
}

/// The one warning that mentions `needle`.
fn warning_about(needle: &str) -> String {
    let warnings = CAPTURE.0.lock().unwrap();
    let mut matching = warnings.iter().filter(|w| w.contains(needle));
    let warning = matching.next().expect("a warning").clone();
    assert!(matching.next().is_none(), "one warning mentions {needle}");
    warning
}

/// The tasks a `ManualRuntime` spawned.
type Spawned = Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>;

fn pool(
    name: &str,
    threshold: Option<Duration>,
) -> (ConnectionPool<TestManager>, Arc<ManualClock>, Spawned) {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Warn);
    let clock = ManualClock::new();
    let runtime = ManualRuntime::new(&clock);
    let spawned = Arc::clone(&runtime.spawned);
    let pool = ConnectionPool::builder(TestManager::new())
        .name(name)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .leak_detection_threshold(threshold)
        .runtime(runtime)
        .build()
        .unwrap();
    (pool, clock, spawned)
}

#[tokio::test]
async fn a_connection_held_too_long_is_reported_once_with_its_checkout_site() {
    let (pool, clock, _) = pool("leaky", Some(Duration::from_secs(10)));
    let line = line!() + 1;
    let held = pool.get_connection().await.unwrap();
    let site = format!("tests/leaks.rs:{line}:");
    let short = pool.get_connection().await.unwrap();
    drop(short);

    clock.advance(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        pool.status().counters.leaks,
        0,
        "not yet past the threshold"
    );

    advance_until(
        &clock,
        Duration::from_secs(1),
        "the leak is reported",
        || pool.status().counters.leaks == 1,
    )
    .await;
    assert_eq!(warnings_mentioning(&site), 1, "the warning names {site}");
    assert!(warnings_mentioning("leaky: a connection checked out at") >= 1);
    let warning = warning_about(&site);
    assert!(
        warning.ends_with("; size 2, idle 1, waiters 0"),
        "the watcher's warning gives the pool's counts: {warning}"
    );

    // Once per checkout: more time and the return add nothing.
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    assert_eq!(pool.status().counters.leaks, 1);
    assert_eq!(warnings_mentioning(&site), 1);
}

#[tokio::test]
async fn a_long_hold_returned_before_the_watcher_looks_is_reported_on_return() {
    let (pool, clock, _) = pool("slow-return", Some(Duration::from_secs(10)));
    let line = line!() + 1;
    let held = pool.get_connection().await.unwrap();
    let site = format!("tests/leaks.rs:{line}:");
    // Jump past the threshold and return before the watcher's next tick can run.
    clock.advance(Duration::from_secs(11));
    drop(held);
    assert_eq!(pool.status().counters.leaks, 1);
    let warning = warning_about(&site);
    assert!(
        warning.ends_with("; size 1, idle 0, waiters 0"),
        "the warning on return gives the counts before the connection goes back: {warning}"
    );
}

#[tokio::test]
async fn an_owned_checkout_is_watched_from_its_own_call_site() {
    let (pool, clock, _) = pool("owned", Some(Duration::from_secs(10)));
    let line = line!() + 1;
    let held = pool.get_connection_owned().await.unwrap();
    let site = format!("tests/leaks.rs:{line}:");
    let made_owned = pool.get_connection().await.unwrap().into_owned();
    clock.advance(Duration::from_secs(11));
    drop(held);
    drop(made_owned);
    assert_eq!(pool.status().counters.leaks, 2, "each checkout once");
    assert_eq!(warnings_mentioning(&site), 1, "the warning names {site}");
}

#[tokio::test]
async fn leak_detection_off_spawns_nothing_and_reports_nothing() {
    let (pool, clock, spawned) = pool("quiet", None);
    let held = pool.get_connection().await.unwrap();
    clock.advance(Duration::from_secs(3600));
    drop(held);
    assert_eq!(running(&spawned), 0, "no watcher task");
    assert_eq!(pool.status().counters.leaks, 0);
    assert_eq!(warnings_mentioning("quiet:"), 0);
}

/// A pool named `name` with a 10 s leak threshold, on timers the test can make panic.
fn watched_on_flaky_timers(
    name: &str,
) -> (
    ConnectionPool<TestManager>,
    Arc<ManualClock>,
    Arc<common::TimerFaults>,
    Spawned,
) {
    let clock = ManualClock::new();
    let runtime = FlakyTimers::new(&clock);
    let (faults, spawned) = (Arc::clone(&runtime.faults), runtime.inner.spawned.clone());
    let pool = ConnectionPool::builder(TestManager::new())
        .name(name)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .leak_detection_threshold(Duration::from_secs(10))
        .runtime(runtime)
        .build()
        .unwrap();
    (pool, clock, faults, spawned)
}

#[tokio::test]
async fn a_timer_or_clock_that_panics_once_does_not_end_the_leak_watcher() {
    for fault in ["timer", "timer when polled", "clock"] {
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Warn);
        let name = format!("faulty {fault}");
        let (pool, clock, faults, spawned) = watched_on_flaky_timers(&name);
        let held = pool.get_connection().await.unwrap();
        common::eventually("the watcher sleeps", || clock.sleepers() == 1).await;
        match fault {
            "timer" => faults.fail(1, false),
            "timer when polled" => faults.fail(1, true),
            _ => faults.fail_next_reading(),
        }
        // The watcher's next tick meets the fault (its clock reading, or its next timer).
        clock.advance(Duration::from_secs(5));
        common::eventually("the watcher met the fault", || {
            warnings_mentioning(&format!("{name}: the runtime's")) == 1
        })
        .await;
        advance_until(
            &clock,
            Duration::from_secs(1),
            "the leak is reported",
            || pool.status().counters.leaks == 1,
        )
        .await;
        assert_eq!(running(&spawned), 1, "{fault}: the watcher runs on");
        drop(held);
    }
}

#[tokio::test]
async fn timer_panics_with_a_working_timer_between_them_do_not_end_the_leak_watcher() {
    let (pool, clock, faults, spawned) = watched_on_flaky_timers("flaky");
    common::eventually("the watcher sleeps", || clock.sleepers() == 1).await;
    // Two failures, a timer that works, two failures: never three in a row.
    for round in 0..2 {
        faults.fail(2, false);
        let asked = faults.sleeps.load(std::sync::atomic::Ordering::SeqCst);
        clock.advance(Duration::from_secs(5));
        common::eventually("two failed timers, then one that sleeps", || {
            faults.sleeps.load(std::sync::atomic::Ordering::SeqCst) >= asked + 3
                && clock.sleepers() == 1
        })
        .await;
        assert_eq!(running(&spawned), 1, "round {round}");
    }
    drop(pool);
}

#[test]
fn leak_detection_needs_a_runtime_and_a_nonzero_threshold() {
    let refused = ConnectionPool::builder(TestManager::new())
        .no_runtime()
        .leak_detection_threshold(Duration::from_secs(1))
        .build();
    assert!(matches!(
        refused,
        Err(PoolError::NoRuntime {
            setting: "leak_detection_threshold",
            ..
        })
    ));
    let zero = ConnectionPool::builder(TestManager::new())
        .no_runtime()
        .leak_detection_threshold(Duration::ZERO)
        .build();
    match zero {
        Err(PoolError::Config(e)) => assert_eq!(e.field(), "leak_detection_threshold"),
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// A runtime whose clock panics once when the test sets the flag, and whose tasks never run.
struct FaultyClock(Arc<std::sync::atomic::AtomicBool>);

impl connection_pool::Runtime for FaultyClock {
    fn spawn(&self, task: connection_pool::BoxFuture<()>) {
        drop(task);
    }

    fn sleep(&self, _duration: Duration) -> connection_pool::BoxFuture<()> {
        unreachable!("no timeout or cleanup task is set")
    }

    fn now(&self) -> std::time::Instant {
        let fail = self.0.swap(false, std::sync::atomic::Ordering::SeqCst);
        assert!(!fail, "the clock panics on purpose");
        std::time::Instant::now()
    }
}

#[test]
fn a_clock_that_panics_on_return_leaves_the_leak_watch_whole() {
    let fail_next_read = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(1)
        .validation(ValidationPolicy::Never)
        .connection_timeout(None)
        .wait_timeout(None)
        .validation_timeout(None)
        .cleanup_interval(None)
        .leak_detection_threshold(Duration::from_secs(60))
        .runtime(FaultyClock(Arc::clone(&fail_next_read)))
        .build()
        .unwrap();
    let conn = futures_lite::future::block_on(pool.get_connection()).unwrap();
    fail_next_read.store(true, std::sync::atomic::Ordering::SeqCst);
    let returned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(conn)));
    assert!(returned.is_err(), "the clock's panic reaches the caller");
    assert_eq!(pool.status().size, 0, "the connection was destroyed");
    // The one connection's entry in the leak watch is free again: the next checkout is
    // watched like the first.
    for _ in 0..3 {
        drop(futures_lite::future::block_on(pool.get_connection()).unwrap());
    }
    assert_eq!(pool.status().counters.destroyed.panicked, 1);
}
