//! What the pool logs, and at which level: faults an operator must see are warnings, routine
//! events are debug or trace, and each message names its pool and gives its counts.

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, eventually};
use connection_pool::{ConnectionPool, PoolError, ValidationPolicy};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Keeps every record logged by this test binary, with its level.
struct Capture(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        self.0.lock().unwrap().push((record.level(), message));
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

/// The levels of the records that start with `prefix` (a pool's name, then the event).
fn levels_of(prefix: &str) -> Vec<log::Level> {
    records_of(prefix)
        .into_iter()
        .map(|(level, _)| level)
        .collect()
}

fn records_of(prefix: &str) -> Vec<(log::Level, String)> {
    CAPTURE
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, message)| message.starts_with(prefix))
        .cloned()
        .collect()
}

/// A pool named `name` (each test its own, as the tests share the logger) on a manual clock.
fn pool(name: &str) -> (ConnectionPool<TestManager>, TestManager, Arc<ManualClock>) {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .name(name)
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .validation_timeout(Duration::from_secs(1))
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    (pool, manager, clock)
}

#[tokio::test]
async fn a_timeout_is_a_warning_but_a_miss_with_a_zero_limit_is_routine() {
    let (pool, _manager, clock) = pool("timeouts");
    let _held = pool.get_connection().await.unwrap();
    let probe = pool.get_connection_timeout(Duration::ZERO).await;
    assert!(matches!(probe, Err(PoolError::Timeout { .. })), "{probe:?}");
    assert_eq!(
        levels_of("timeouts: get_connection timed out"),
        [log::Level::Debug]
    );
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.get_connection_timeout(Duration::from_secs(1))
                .await
                .map(|_| ())
        })
    };
    eventually("the call waits", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(2));
    assert!(matches!(
        waiting.await.unwrap(),
        Err(PoolError::Timeout { .. })
    ));
    assert_eq!(
        levels_of("timeouts: get_connection timed out"),
        [log::Level::Debug, log::Level::Warn]
    );
}

#[tokio::test]
async fn timeouts_of_many_waiters_at_once_give_one_warning_a_second() {
    let (pool, _manager, clock) = pool("outage");
    let _held = pool.get_connection().await.unwrap();
    let wait_all = |calls: usize| {
        (0..calls)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.get_connection_timeout(Duration::from_secs(1))
                        .await
                        .map(|_| ())
                })
            })
            .collect::<Vec<_>>()
    };
    let first = wait_all(5);
    eventually("five calls wait", || pool.status().waiters == 5).await;
    clock.advance(Duration::from_secs(2));
    for call in first {
        assert!(matches!(
            call.await.unwrap(),
            Err(PoolError::Timeout { .. })
        ));
    }
    use log::Level::{Debug, Warn};
    assert_eq!(
        levels_of("outage: get_connection timed out"),
        [Warn, Debug, Debug, Debug, Debug]
    );
    // A second later the next timeout is a warning again, and says what was held back.
    let second = wait_all(1);
    eventually("the call waits", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(2));
    for call in second {
        assert!(call.await.unwrap().is_err());
    }
    let records = records_of("outage: get_connection timed out");
    assert_eq!(records.len(), 6);
    assert_eq!(records[5].0, Warn);
    assert!(
        records[5]
            .1
            .ends_with("; 4 more timed out since the last such warning (logged at debug)"),
        "{}",
        records[5].1
    );
    assert_eq!(pool.status().counters.timeouts, 6, "every one is counted");
}

#[test]
fn failures_to_create_without_a_runtime_give_one_warning_a_second() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .name("no-backoff")
        .no_runtime()
        .build()
        .unwrap();
    // Without a runtime a transient failure does not hold the next call back: each dials.
    manager.counts.set_create(Gate::Fail);
    for _ in 0..4 {
        let failed = futures_lite::future::block_on(pool.get_connection());
        assert!(matches!(failed, Err(PoolError::Backend(_))), "{failed:?}");
    }
    assert_eq!(manager.counts.create_calls(), 4);
    let records = records_of("no-backoff: could not create a connection");
    use log::Level::{Debug, Warn};
    assert_eq!(
        records.iter().map(|(level, _)| *level).collect::<Vec<_>>(),
        [Warn, Debug, Debug, Debug]
    );
    assert!(
        records[3].1.contains("(transient, 4 in a row)"),
        "{}",
        records[3].1
    );
}

#[tokio::test]
async fn the_next_create_failure_warning_says_how_many_were_held_back() {
    let (pool, manager, clock) = pool("backoff");
    manager.counts.set_create(Gate::Fail);
    let fail_once = || {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|_| ()) })
    };
    // Each call after the first waits out the governor's delay (at most 625 ms), then dials.
    for call in 0..3 {
        let failing = fail_once();
        if call > 0 {
            eventually("the call waits out the delay", || {
                pool.status().waiters == 1
            })
            .await;
            clock.advance(Duration::from_millis(700));
        }
        let failed = failing.await.unwrap();
        assert!(matches!(failed, Err(PoolError::Backend(_))), "{failed:?}");
    }
    let records = records_of("backoff: could not create a connection");
    use log::Level::{Debug, Warn};
    assert_eq!(
        records.iter().map(|(level, _)| *level).collect::<Vec<_>>(),
        [Warn, Debug, Warn],
        "{records:?}"
    );
    assert!(
        records[2]
            .1
            .ends_with("; 1 more failed since the last such warning (logged at debug)"),
        "{}",
        records[2].1
    );
}

#[tokio::test]
async fn the_recovery_is_logged_once_with_the_failures_it_ends() {
    let (pool, manager, clock) = pool("recovery");
    manager.counts.set_create(Gate::Fail);
    let get = || {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|_| ()) })
    };
    for call in 0..3 {
        let failing = get();
        if call > 0 {
            eventually("the call waits out the delay", || {
                pool.status().waiters == 1
            })
            .await;
            clock.advance(Duration::from_millis(700));
        }
        assert!(matches!(failing.await.unwrap(), Err(PoolError::Backend(_))));
    }
    manager.counts.set_create(Gate::Ok);
    let recovering = get();
    eventually("the call waits out the delay", || {
        pool.status().waiters == 1
    })
    .await;
    clock.advance(Duration::from_millis(700));
    recovering.await.unwrap().unwrap();
    assert_eq!(
        records_of("recovery: creating connections works again"),
        [(
            log::Level::Info,
            "recovery: creating connections works again, after 3 failed attempts; size 1, \
             idle 0, waiters 0"
                .to_owned()
        )]
    );
}

#[tokio::test]
async fn a_call_that_starts_to_wait_is_logged_once_with_the_counts() {
    let (pool, _manager, _clock) = pool("waits");
    let held = pool.get_connection().await.unwrap();
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|_| ()) })
    };
    eventually("the call waits", || pool.status().waiters == 1).await;
    drop(held);
    waiting.await.unwrap().unwrap();
    assert_eq!(
        records_of("waits: no connection free"),
        [(
            log::Level::Trace,
            "waits: no connection free; waiting in line; size 1, idle 0, waiters 1".to_owned()
        )]
    );
}

#[tokio::test]
async fn a_check_that_outlives_validation_timeout_is_a_warning() {
    let (pool, manager, clock) = pool("checks");
    drop(pool.get_connection().await.unwrap());
    assert_eq!(
        records_of("checks: connection returned"),
        [(
            log::Level::Trace,
            "checks: connection returned; idle 1".to_owned()
        )]
    );
    manager.counts.set_validate(Gate::Hang);
    let getting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
    };
    eventually("the check runs", || manager.counts.validations() == 1).await;
    clock.advance(Duration::from_secs(2));
    // The call moves on and creates a connection in place of the silent one.
    assert_eq!(getting.await.unwrap().unwrap(), 1);
    assert_eq!(
        levels_of("checks: idle connection did not pass validation"),
        [log::Level::Warn]
    );
}

#[tokio::test]
async fn a_zero_limit_call_that_cut_a_check_short_is_a_warning() {
    let (pool, manager, _clock) = pool("probes");
    drop(pool.get_connection().await.unwrap());
    // The check needs a round trip: cut short, it costs the connection.
    manager.counts.set_validate(Gate::Hang);
    let probe = pool.get_connection_timeout(Duration::ZERO).await;
    assert!(matches!(probe, Err(PoolError::Timeout { .. })), "{probe:?}");
    assert_eq!(pool.status().counters.destroyed.validation_aborted, 1);
    assert_eq!(
        levels_of("probes: get_connection timed out validating"),
        [log::Level::Warn]
    );
}

#[cfg(feature = "tokio")]
#[test]
fn background_loops_dropped_by_a_runtime_that_shuts_down_say_so() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Trace);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(async {
        ConnectionPool::builder(TestManager::new())
            .name("orphaned")
            .leak_detection_threshold(Duration::from_secs(60))
            .runtime(connection_pool::TokioRuntime::current())
            .build()
            .unwrap()
    });
    // The runtime drops both loops unpolled as it shuts down, while the pool still wants them.
    drop(runtime);
    let dropped = |task: &str| {
        records_of(&format!("orphaned: the {task} was dropped before it ended"))
            .iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .count()
    };
    assert_eq!(dropped("cleanup task"), 1);
    assert_eq!(dropped("leak watcher"), 1);
    // A pool that closes ends its loops itself: nothing to warn about.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = runtime.block_on(async {
        let closed = ConnectionPool::builder(TestManager::new())
            .name("closed")
            .leak_detection_threshold(Duration::from_secs(60))
            .runtime(connection_pool::TokioRuntime::current())
            .build()
            .unwrap();
        // Let both loops start, then close: they end at once.
        tokio::task::yield_now().await;
        closed.close();
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        closed
    });
    drop(runtime);
    assert!(
        records_of("closed: the").is_empty(),
        "{:?}",
        records_of("closed: the")
    );
    drop((pool, closed));
}
