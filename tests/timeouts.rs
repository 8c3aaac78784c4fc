//! Wait, create and validation timeouts return the right error and leak no slot. Time is a
//! manual clock: nothing here sleeps for the length of a timeout.

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, eventually};
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

fn phase<T: std::fmt::Debug>(result: Result<T, PoolError<common::TestError>>) -> TimeoutPhase {
    match result {
        Err(PoolError::Timeout { phase, .. }) => phase,
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
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.get_connection_timeout(Duration::from_secs(2))
                .await
                .map(|c| c.id)
        }
    });
    eventually("the waiter is parked", || pool.status().waiters == 1).await;
    clock.advance(Duration::from_secs(3));
    assert_eq!(phase(waiter.await.unwrap()), TimeoutPhase::Waiting);
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
            let PoolError::Timeout { phase, last_error } = &e else {
                unreachable!()
            };
            assert_eq!(*phase, TimeoutPhase::Creating);
            // Nothing failed: blaming connection_timeout would send the user to the wrong
            // setting.
            assert_eq!(*last_error, None);
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
