//! Get, return, reuse, try_get, detach, broken connections and validation on checkout.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager};
use connection_pool::{ConnectionPool, PoolError, TokioRuntime, ValidationPolicy};
use std::time::Duration;

fn pool(max_size: usize) -> (ConnectionPool<TestManager>, TestManager) {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap();
    (pool, manager)
}

#[tokio::test]
async fn a_returned_connection_is_reused() {
    let (pool, manager) = pool(4);
    let first = pool.get_connection().await.unwrap();
    let id = first.id;
    drop(first);
    assert_eq!(pool.status().idle, 1);
    let again = pool.get_connection().await.unwrap();
    assert_eq!(again.id, id, "the idle connection is handed out again");
    assert_eq!(manager.counts.create_calls(), 1);
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.in_use), (1, 0, 1));
    assert_eq!(status.counters.created, 1);
}

#[tokio::test]
async fn idle_connections_are_handed_out_oldest_first() {
    let (pool, _manager) = pool(3);
    let a = pool.get_connection().await.unwrap();
    let b = pool.get_connection().await.unwrap();
    let (ida, idb) = (a.id, b.id);
    drop(b);
    drop(a);
    assert_eq!(pool.get_connection().await.unwrap().id, idb);
    assert_eq!(pool.get_connection().await.unwrap().id, ida);
}

#[tokio::test]
async fn try_get_never_creates_and_never_waits() {
    let (pool, manager) = pool(1);
    assert!(
        pool.try_get_connection().is_none(),
        "empty pool: nothing idle"
    );
    assert_eq!(manager.counts.create_calls(), 0);
    let conn = pool.get_connection().await.unwrap();
    assert!(
        pool.try_get_connection().is_none(),
        "the only connection is out"
    );
    drop(conn);
    let conn = pool.try_get_connection().expect("now idle");
    assert_eq!(manager.counts.create_calls(), 1);
    drop(conn);
}

#[tokio::test]
async fn try_get_does_not_jump_the_queue() {
    let (pool, _manager) = pool(1);
    let held = pool.get_connection().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
    };
    common::eventually("the waiter is parked", || pool.status().waiters == 1).await;
    let id = held.id;
    drop(held);
    // The connection was handed to the waiter, which has not run yet (a current-thread
    // runtime, and this task has not yielded): try_get must not find it idle.
    assert!(
        pool.try_get_connection().is_none(),
        "try_get took the waiter's connection"
    );
    assert_eq!(waiter.await.unwrap().unwrap(), id);
}

#[tokio::test]
async fn detach_takes_the_connection_out_and_frees_its_slot() {
    let (pool, manager) = pool(1);
    let conn = pool.get_connection().await.unwrap();
    let raw = conn.detach();
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.status().counters.detached, 1);
    // The slot is free, so a new connection can be created while the detached one lives.
    let second = pool.get_connection().await.unwrap();
    assert_ne!(second.id, raw.id);
    assert_eq!(manager.counts.live(), 2);
    drop(raw);
    drop(second);
    assert_eq!(manager.counts.live(), 1);
}

#[tokio::test]
async fn detaching_while_a_caller_waits_lets_that_caller_create() {
    use futures_lite::future::poll_once;
    let (pool, manager) = pool(1);
    let conn = pool.get_connection().await.unwrap();
    let mut waiter = Box::pin(pool.get_connection());
    assert!(poll_once(waiter.as_mut()).await.is_none(), "waits");
    let raw = conn.detach();
    let served = poll_once(waiter.as_mut())
        .await
        .expect("the freed slot went to the waiter")
        .unwrap();
    assert_ne!(served.id, raw.id);
    assert_eq!(manager.counts.create_calls(), 2);
    let status = pool.status();
    assert_eq!((status.size, status.waiters, status.connecting), (1, 0, 0));
}

#[tokio::test]
async fn a_timeout_too_large_for_the_clock_means_no_limit() {
    let (pool, _manager) = pool(1);
    let held = pool.get_connection().await.unwrap();
    let id = held.id;
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.get_connection_timeout(Duration::MAX)
                .await
                .map(|c| c.id)
        }
    });
    common::eventually("the waiter is parked", || pool.status().waiters == 1).await;
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), id);
}

#[tokio::test]
async fn mark_broken_destroys_on_return() {
    let (pool, manager) = pool(2);
    let mut conn = pool.get_connection().await.unwrap();
    conn.mark_broken();
    assert!(conn.is_marked_broken());
    drop(conn);
    let status = pool.status();
    assert_eq!((status.size, status.idle), (0, 0));
    assert_eq!(status.counters.destroyed.broken, 1);
    assert_eq!(manager.counts.live(), 0);
}

#[tokio::test]
async fn an_owned_guard_can_move_into_a_spawned_task_and_still_returns() {
    let (pool, manager) = pool(2);
    let conn = pool.get_connection_owned().await.unwrap();
    let id = conn.id;
    // 'static: it outlives this borrow of `pool`.
    tokio::spawn(async move { drop(conn) }).await.unwrap();
    assert_eq!(pool.status().idle, 1, "returned by the task");
    let again = pool.get_connection().await.unwrap();
    assert_eq!(again.id, id);

    // `into_owned` keeps the guard's state: a broken mark still destroys on return.
    let mut conn = again;
    conn.mark_broken();
    let conn = conn.into_owned();
    assert!(conn.is_marked_broken());
    drop(conn);
    let status = pool.status();
    assert_eq!((status.size, status.idle), (0, 0));
    assert_eq!(status.counters.destroyed.broken, 1);
    assert_eq!(manager.counts.live(), 0);
}

#[tokio::test]
async fn has_broken_is_checked_on_return() {
    let (pool, manager) = pool(2);
    let a = pool.get_connection().await.unwrap();
    let b = pool.get_connection().await.unwrap();
    manager.counts.break_connection(a.id);
    let keep = b.id;
    drop(a);
    drop(b);
    assert_eq!(pool.status().idle, 1);
    assert_eq!(pool.status().counters.destroyed.broken, 1);
    assert_eq!(pool.get_connection().await.unwrap().id, keep);
    assert_eq!(manager.counts.live(), 1);
}

#[tokio::test]
async fn a_broken_return_wakes_a_waiter_who_creates_a_replacement() {
    let (pool, manager) = pool(1);
    let mut held = pool.get_connection().await.unwrap();
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
    };
    common::eventually("the waiter is parked", || pool.status().waiters == 1).await;
    held.mark_broken();
    drop(held);
    let id = waiter.await.unwrap().unwrap();
    assert_eq!(id, 1, "a fresh connection");
    assert_eq!(manager.counts.live(), 1);
}

#[tokio::test]
async fn create_error_is_returned_and_frees_the_slot() {
    let (pool, manager) = pool(1);
    manager.counts.set_create(Gate::Fail);
    match pool.get_connection().await {
        Err(e @ PoolError::Backend(_)) => {
            assert!(e.to_string().contains("refused by the test"), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.status().counters.create_failures, 1);
    manager.counts.set_create(Gate::Ok);
    assert!(pool.get_connection().await.is_ok());
}

fn manual_pool(
    policy: ValidationPolicy,
) -> (
    ConnectionPool<TestManager>,
    TestManager,
    std::sync::Arc<ManualClock>,
) {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(2)
        .validation(policy)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    (pool, manager, clock)
}

#[tokio::test]
async fn by_default_only_connections_idle_over_500ms_are_validated() {
    let (pool, manager, clock) = manual_pool(ValidationPolicy::default());
    drop(pool.get_connection().await.unwrap());
    clock.advance(Duration::from_millis(400));
    drop(pool.get_connection().await.unwrap());
    assert_eq!(
        manager.counts.validations(),
        0,
        "used 400 ms ago: no round trip"
    );
    clock.advance(Duration::from_millis(600));
    drop(pool.get_connection().await.unwrap());
    assert_eq!(manager.counts.validations(), 1, "idle 600 ms: validated");
}

#[tokio::test]
async fn validation_policy_always_and_never() {
    let (pool, manager, _clock) = manual_pool(ValidationPolicy::Always);
    drop(pool.get_connection().await.unwrap());
    drop(pool.get_connection().await.unwrap());
    drop(pool.get_connection().await.unwrap());
    assert_eq!(
        manager.counts.validations(),
        2,
        "every reuse, not the fresh one"
    );

    let (pool, manager, clock) = manual_pool(ValidationPolicy::Never);
    drop(pool.get_connection().await.unwrap());
    clock.advance(Duration::from_secs(100));
    drop(pool.get_connection().await.unwrap());
    assert_eq!(manager.counts.validations(), 0);
}

#[tokio::test]
async fn a_connection_failing_validation_is_replaced() {
    let (pool, manager, _clock) = manual_pool(ValidationPolicy::Always);
    let first = pool.get_connection().await.unwrap().id;
    manager.counts.set_validate(Gate::Fail);
    let conn = pool.get_connection().await.unwrap();
    assert_ne!(
        conn.id, first,
        "the invalid connection was replaced by a new one"
    );
    assert_eq!(manager.counts.live(), 1);
    assert_eq!(pool.status().counters.destroyed.validation_failed, 1);
}

#[tokio::test]
async fn try_get_skips_validation_but_not_expiry() {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .validation(ValidationPolicy::Always)
        .max_idle_time(Duration::from_secs(10))
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    drop(pool.get_connection().await.unwrap());
    assert!(pool.try_get_connection().is_some());
    assert_eq!(manager.counts.validations(), 0);
    clock.advance(Duration::from_secs(11));
    assert!(
        pool.try_get_connection().is_none(),
        "idle too long: destroyed"
    );
    assert_eq!(manager.counts.live(), 0);
}

#[test]
fn works_without_any_runtime() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .no_runtime()
        .build()
        .unwrap();
    futures_lite::future::block_on(async {
        let conn = pool.get_connection().await.unwrap();
        assert_eq!(conn.id, 0);
    });
    assert_eq!(pool.status().idle, 1);
}

#[test]
fn handles_and_guards_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ConnectionPool<TestManager>>();
    assert_send_sync::<connection_pool::PooledConnection<'static, TestManager>>();
    fn assert_send<T: Send>(_: &T) {}
    let pool = ConnectionPool::builder(TestManager::new())
        .no_runtime()
        .build()
        .unwrap();
    assert_send(&pool.get_connection());
}

#[tokio::test]
async fn a_waiter_granted_a_slot_takes_a_connection_that_went_idle_meanwhile() {
    use futures_lite::future::poll_once;
    let (pool, manager) = pool(2);
    let mut first = pool.get_connection().await.unwrap();
    let second = pool.get_connection().await.unwrap();
    let mut waiter = Box::pin(pool.get_connection());
    assert!(poll_once(waiter.as_mut()).await.is_none(), "waits");
    // A broken return grants its slot to the waiter, which no longer counts as waiting, so
    // the next return goes idle before the waiter runs.
    first.mark_broken();
    drop(first);
    let id = second.id;
    drop(second);
    manager.counts.set_create(Gate::Fail);
    let conn = poll_once(waiter.as_mut())
        .await
        .expect("ready")
        .expect("served with the idle connection, not a failed dial");
    assert_eq!(conn.id, id);
    assert_eq!(manager.counts.create_calls(), 2);
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.connecting), (1, 0, 0));
}
