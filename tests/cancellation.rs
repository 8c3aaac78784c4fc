//! Dropping a `get_connection` future at any await point leaks nothing, and a woken waiter
//! that is cancelled passes its wake-up on.

mod common;

use common::{Gate, TestManager, poll_once_then_drop};
use connection_pool::{ConnectionPool, ValidationPolicy};
use futures_lite::future;
use std::task::Poll;

fn pool(
    max_size: usize,
    validation: ValidationPolicy,
) -> (ConnectionPool<TestManager>, TestManager) {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .validation(validation)
        .no_runtime()
        .build()
        .unwrap();
    (pool, manager)
}

#[test]
fn dropped_while_waiting() {
    future::block_on(async {
        let (pool, manager) = pool(1, ValidationPolicy::Never);
        let held = pool.get_connection().await.unwrap();
        assert!(poll_once_then_drop(pool.get_connection()).is_pending());
        assert_eq!(pool.status().waiters, 0, "the waiter is gone");
        drop(held);
        let status = pool.status();
        assert_eq!((status.size, status.idle), (1, 1));
        assert_eq!(manager.counts.live(), 1);
    });
}

#[test]
fn dropped_while_creating() {
    future::block_on(async {
        let (pool, manager) = pool(1, ValidationPolicy::Never);
        manager.counts.set_create(Gate::Hang);
        assert!(poll_once_then_drop(pool.get_connection()).is_pending());
        assert_eq!(manager.counts.create_calls(), 1);
        assert_eq!(pool.status().size, 0, "the reserved slot is back");
        manager.counts.set_create(Gate::Ok);
        assert!(pool.get_connection().await.is_ok());
    });
}

#[test]
fn dropped_while_validating() {
    future::block_on(async {
        let (pool, manager) = pool(1, ValidationPolicy::Always);
        drop(pool.get_connection().await.unwrap());
        manager.counts.set_validate(Gate::Hang);
        assert!(poll_once_then_drop(pool.get_connection()).is_pending());
        let status = pool.status();
        assert_eq!((status.size, status.idle), (0, 0));
        assert_eq!(status.counters.destroyed.validation_aborted, 1);
        assert_eq!(
            manager.counts.live(),
            0,
            "a half-checked connection is not reused"
        );
    });
}

#[test]
fn a_woken_then_cancelled_waiter_passes_the_wake_up_on() {
    future::block_on(async {
        let (pool, manager) = pool(1, ValidationPolicy::Never);
        let held = pool.get_connection().await.unwrap();
        let id = held.id;

        let mut first = Box::pin(pool.get_connection());
        let mut second = Box::pin(pool.get_connection());
        assert!(future::poll_once(&mut first).await.is_none());
        assert!(future::poll_once(&mut second).await.is_none());
        assert_eq!(pool.status().waiters, 2);

        drop(held); // wakes `first`, the oldest waiter
        drop(first); // cancelled before it ran: the wake-up must reach `second`
        let conn = second.await.unwrap();
        assert_eq!(conn.id, id);
        assert_eq!(manager.counts.create_calls(), 1);
    });
}

#[test]
fn two_returns_before_the_waiters_run_wake_two_waiters() {
    future::block_on(async {
        let (pool, manager) = pool(2, ValidationPolicy::Never);
        let a = pool.get_connection().await.unwrap();
        let b = pool.get_connection().await.unwrap();
        let mut first = Box::pin(pool.get_connection());
        let mut second = Box::pin(pool.get_connection());
        assert!(future::poll_once(&mut first).await.is_none());
        assert!(future::poll_once(&mut second).await.is_none());
        drop(a);
        drop(b);
        // Both must complete without any further return.
        let (x, y) = future::zip(first, second).await;
        assert!(x.is_ok() && y.is_ok());
        assert_eq!(manager.counts.create_calls(), 2);
    });
}

#[test]
fn poll_once_helper_sees_ready_results() {
    let (pool, _manager) = pool(1, ValidationPolicy::Never);
    match poll_once_then_drop(pool.get_connection()) {
        Poll::Ready(Ok(_)) => {}
        other => panic!("an immediate create is ready at once: {other:?}"),
    }
    assert_eq!(pool.status().idle, 1, "the guard was returned");
}
