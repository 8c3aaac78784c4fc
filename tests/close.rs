//! Closing wakes every waiter with `Closed`, drops idle connections, and destroys connections
//! returned afterwards; dropping the last handle closes the pool and ends the cleanup task.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, eventually, running};
use connection_pool::{ConnectionPool, PoolError, TokioRuntime};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_waiters_parked_and_guards_out() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(3)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
    let a = pool.get_connection().await.unwrap();
    let b = pool.get_connection().await.unwrap();
    drop(pool.get_connection().await.unwrap()); // one idle
    let _c = pool.get_connection().await.unwrap();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
        })
        .collect();
    eventually("three waiters park", || pool.status().waiters == 3).await;

    pool.close();
    assert!(pool.is_closed());
    for waiter in waiters {
        assert!(matches!(waiter.await.unwrap(), Err(PoolError::Closed)));
    }
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Closed)
    ));
    assert!(pool.try_get_connection().is_none());
    drop(a);
    drop(b);
    assert_eq!(pool.status().idle, 0);
    assert_eq!(pool.status().counters.destroyed.closed, 2);
    assert_eq!(manager.counts.live(), 1, "only the guard still held");
}

#[tokio::test]
async fn close_drops_idle_connections_at_once() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
    let a = pool.get_connection().await.unwrap();
    let b = pool.get_connection().await.unwrap();
    drop((a, b));
    assert_eq!(manager.counts.live(), 2);
    pool.close();
    pool.close(); // idempotent
    assert_eq!(manager.counts.live(), 0);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn a_create_finishing_after_close_is_destroyed() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
    manager
        .counts
        .set_create(Gate::Delay(Duration::from_millis(50)));
    let getter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_connection().await.map(|c| c.id) }
    });
    eventually("create started", || manager.counts.create_calls() == 1).await;
    pool.close();
    assert!(matches!(getter.await.unwrap(), Err(PoolError::Closed)));
    assert_eq!(manager.counts.live(), 0);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_pool_and_ends_cleanup() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let runtime = ManualRuntime::new(&clock);
    let spawned = runtime.spawned.clone();
    let pool = ConnectionPool::builder(manager.clone())
        .cleanup_interval(Duration::from_secs(30))
        .runtime(runtime)
        .build()
        .unwrap();
    // Let the cleanup task reach its 30 s sleep, so that only a wake-up can end it early.
    eventually("the cleanup task sleeps", || clock.sleepers() >= 1).await;
    let second_handle = pool.clone();
    // Owned: a borrowed guard could not outlive its handle.
    let guard = pool.get_connection_owned().await.unwrap();
    drop(pool.get_connection().await.unwrap());
    assert_eq!(running(&spawned), 1, "the cleanup task runs");
    drop(pool);
    assert!(!second_handle.is_closed(), "one handle is left");
    drop(second_handle);
    assert_eq!(
        manager.counts.live(),
        1,
        "the idle one is dropped, the held one lives"
    );
    drop(guard);
    assert_eq!(manager.counts.live(), 0, "returned after close: destroyed");
    // At once, not at its next tick: the clock does not move.
    eventually("the cleanup task ends", || running(&spawned) == 0).await;
}

#[tokio::test]
async fn a_waiter_served_as_the_pool_closes_gets_closed_not_the_connection() {
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(1)
        .no_runtime()
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
    };
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    // The return hands the connection to the waiter; the close comes before it runs.
    drop(held);
    pool.close();
    assert!(matches!(waiter.await.unwrap(), Err(PoolError::Closed)));
    let status = pool.status();
    assert_eq!((status.size, status.counters.destroyed.closed), (0, 1));
}

#[tokio::test]
async fn a_check_in_progress_at_close_finishes_and_its_connection_goes_when_the_guard_drops() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .validation(connection_pool::ValidationPolicy::Always)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap());
    manager
        .counts
        .set_validate(Gate::Delay(Duration::from_millis(20)));
    let getter = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get_connection().await?;
            // Held across the close: the pool takes it back only when the guard drops.
            assert_eq!(conn.id, 0);
            Ok::<_, PoolError<common::TestError>>(conn.id)
        }
    });
    eventually("the check started", || manager.counts.validations() == 1).await;
    pool.close();
    assert_eq!(getter.await.unwrap().unwrap(), 0, "the checked connection");
    let status = pool.status();
    assert_eq!((status.size, manager.counts.live()), (0, 0), "{status:?}");
    assert_eq!(status.counters.destroyed.closed, 1);
}

#[tokio::test]
async fn a_waiter_whose_deadline_passes_as_the_pool_closes_gets_closed_not_a_timeout() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    let held = pool.get_connection().await.unwrap();
    let mut waiter = Box::pin(pool.get_connection_timeout(Duration::from_secs(1)));
    assert!(
        futures_lite::future::poll_once(waiter.as_mut())
            .await
            .is_none()
    );
    assert_eq!(pool.status().waiters, 1);
    // Both before the waiter runs again: its timer fires, and the pool closes.
    clock.advance(Duration::from_secs(2));
    pool.close();
    let outcome = waiter.await;
    assert!(
        matches!(outcome, Err(PoolError::Closed)),
        "a closed pool says so: {outcome:?}"
    );
    drop(held);
}

#[tokio::test]
async fn a_create_failing_after_close_gives_closed_and_is_still_recorded() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .no_runtime()
        .build()
        .unwrap();
    manager.counts.set_create(Gate::Fail); // fails after one yield
    let mut getter = Box::pin(pool.get_connection());
    assert!(
        futures_lite::future::poll_once(getter.as_mut())
            .await
            .is_none()
    );
    pool.close();
    let outcome = getter.await;
    assert!(
        matches!(outcome, Err(PoolError::Closed)),
        "a closed pool says so, not the backend: {outcome:?}"
    );
    let status = pool.status();
    assert_eq!(status.counters.create_failures, 1, "{status:?}");
    assert_eq!(status.size, 0);
}

#[tokio::test]
async fn a_create_or_check_timing_out_after_close_gives_closed_not_a_timeout() {
    let (manager, clock) = (TestManager::new(), ManualClock::new());
    let pool = ConnectionPool::builder(manager.clone())
        .validation(connection_pool::ValidationPolicy::Always)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap()); // one idle, checked at its next checkout
    manager.counts.set_validate(Gate::Hang);
    manager.counts.set_create(Gate::Hang);
    // One checks the idle connection, the other creates; each call has 1 s.
    let mut checking = Box::pin(pool.get_connection_timeout(Duration::from_secs(1)));
    let mut creating = Box::pin(pool.get_connection_timeout(Duration::from_secs(1)));
    for call in [checking.as_mut(), creating.as_mut()] {
        assert!(futures_lite::future::poll_once(call).await.is_none());
    }
    assert_eq!(
        (manager.counts.validations(), manager.counts.create_calls()),
        (1, 2)
    );
    // Both before the calls run again: their timers fire, and the pool closes.
    clock.advance(Duration::from_secs(2));
    pool.close();
    for outcome in [checking.await, creating.await] {
        assert!(
            matches!(outcome, Err(PoolError::Closed)),
            "a closed pool says so: {outcome:?}"
        );
    }
    let status = pool.status();
    assert_eq!(status.counters.timeouts, 0, "{status:?}");
    assert_eq!((status.size, manager.counts.live()), (0, 0), "{status:?}");
}
