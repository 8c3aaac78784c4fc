//! Dropping a `get_connection` future at any await point leaks nothing, and a woken waiter
//! that is cancelled passes on what it was given: a connection, a reserved slot, a wake-up.

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, poll_once_then_drop};
use connection_pool::{ConnectionPool, PoolError, ValidationPolicy};
use futures_lite::future;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    time::Duration,
};

/// A future polled by hand, whose waker records whether it was woken since the last poll: a
/// wake-up that is lost leaves a real task parked for good.
struct Polled<F: Future> {
    future: Pin<Box<F>>,
    woken: Arc<WokenFlag>,
}

struct WokenFlag(AtomicBool);

impl Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl<F: Future> Polled<F> {
    fn new(future: F) -> Self {
        Self {
            future: Box::pin(future),
            woken: Arc::new(WokenFlag(AtomicBool::new(false))),
        }
    }

    fn poll(&mut self) -> Poll<F::Output> {
        self.woken.0.store(false, Ordering::SeqCst);
        let waker = Waker::from(Arc::clone(&self.woken));
        self.future.as_mut().poll(&mut Context::from_waker(&waker))
    }

    fn woken(&self) -> bool {
        self.woken.0.load(Ordering::SeqCst)
    }
}

/// Nobody waits or connects, and every slot is an idle connection the manager counts live.
fn assert_settled(pool: &ConnectionPool<TestManager>, manager: &TestManager) {
    let status = pool.status();
    assert_eq!(status.waiters, 0, "{status:?}");
    assert_eq!(status.connecting, 0, "a permit is still taken: {status:?}");
    assert_eq!(
        status.idle, status.size,
        "a slot is held by nobody: {status:?}"
    );
    assert_eq!(manager.counts.live(), status.size, "{status:?}");
}

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

#[test]
fn a_waiter_granted_a_slot_then_cancelled_passes_the_grant_on() {
    let (pool, manager) = pool(1, ValidationPolicy::Never);
    let mut held = future::block_on(pool.get_connection()).unwrap();
    let mut first = Polled::new(pool.get_connection());
    let mut second = Polled::new(pool.get_connection());
    assert!(first.poll().is_pending() && second.poll().is_pending());

    held.mark_broken();
    drop(held); // destroyed: its slot is reserved for `first`
    assert!(first.woken());
    assert_eq!(pool.status().connecting, 1, "the slot is reserved");
    drop(first); // cancelled before it ran
    assert!(second.woken(), "the grant went nowhere");
    assert!(matches!(second.poll(), Poll::Ready(Ok(_))));
    assert_eq!(manager.counts.create_calls(), 2);
    assert_settled(&pool, &manager);
}

#[test]
fn a_waiter_creating_with_its_grant_then_cancelled_frees_the_slot_for_the_next() {
    let (pool, manager) = pool(1, ValidationPolicy::Never);
    let mut held = future::block_on(pool.get_connection()).unwrap();
    let mut first = Polled::new(pool.get_connection());
    let mut second = Polled::new(pool.get_connection());
    assert!(first.poll().is_pending() && second.poll().is_pending());

    manager.counts.set_create(Gate::Hang);
    held.mark_broken();
    drop(held);
    assert!(first.poll().is_pending(), "`first` creates with its grant");
    assert_eq!(manager.counts.create_calls(), 2);
    drop(first);
    assert!(second.woken(), "the freed slot went nowhere");
    manager.counts.set_create(Gate::Ok);
    assert!(matches!(second.poll(), Poll::Ready(Ok(_))));
    assert_settled(&pool, &manager);
}

#[test]
fn a_waiter_checking_a_handed_over_connection_then_cancelled_frees_the_slot_for_the_next() {
    let (pool, manager) = pool(1, ValidationPolicy::Always);
    let held = future::block_on(pool.get_connection()).unwrap();
    let mut first = Polled::new(pool.get_connection());
    let mut second = Polled::new(pool.get_connection());
    assert!(first.poll().is_pending() && second.poll().is_pending());

    manager.counts.set_validate(Gate::Hang);
    drop(held); // handed to `first`, which checks it
    assert!(first.poll().is_pending());
    drop(first); // a half-checked connection is not reused
    assert_eq!(manager.counts.live(), 0);
    assert_eq!(pool.status().counters.destroyed.validation_aborted, 1);
    assert!(second.woken(), "the freed slot went nowhere");
    manager.counts.set_validate(Gate::Ok);
    assert!(matches!(second.poll(), Poll::Ready(Ok(_))));
    assert_eq!(manager.counts.create_calls(), 2);
    assert_settled(&pool, &manager);
}

#[test]
fn a_waiter_woken_to_try_a_failing_backend_then_cancelled_passes_the_wake_up_on() {
    // No runtime: after a transient failure the next caller may try again at once, one
    // creation at a time, so the others wait in line for that attempt to end.
    let (pool, manager) = pool(3, ValidationPolicy::Never);
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        future::block_on(pool.get_connection()),
        Err(PoolError::Backend(_))
    ));
    manager.counts.set_create(Gate::Hang);
    let mut attempt = Polled::new(pool.get_connection());
    assert!(attempt.poll().is_pending());
    let mut first = Polled::new(pool.get_connection());
    let mut second = Polled::new(pool.get_connection());
    assert!(first.poll().is_pending() && second.poll().is_pending());
    assert_eq!(pool.status().waiters, 2);

    drop(attempt); // the attempt ends unfinished: `first` is woken to try
    assert!(first.woken() && !second.woken());
    drop(first); // cancelled before it ran
    assert!(
        second.woken(),
        "the wake-up went nowhere: {:?}",
        pool.status()
    );
    manager.counts.set_create(Gate::Ok);
    assert!(matches!(second.poll(), Poll::Ready(Ok(_))));
    assert_settled(&pool, &manager);
}

#[tokio::test]
async fn a_call_cancelled_while_the_pool_backs_off_leaves_nothing_behind() {
    let clock = ManualClock::new();
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(2)
        .runtime(ManualRuntime::new(&clock))
        .cleanup_interval(None)
        .wait_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Backend(_))
    ));
    let mut backing_off = Polled::new(pool.get_connection());
    assert!(backing_off.poll().is_pending());
    assert_eq!(
        manager.counts.create_calls(),
        1,
        "held back by the retry delay"
    );
    assert_eq!(pool.status().waiters, 1);
    drop(backing_off);
    assert_settled(&pool, &manager);

    manager.counts.set_create(Gate::Ok);
    clock.advance(Duration::from_secs(5)); // past any first retry delay
    let mut after = Polled::new(pool.get_connection());
    assert!(matches!(after.poll(), Poll::Ready(Ok(_))));
    drop(after);
    assert_settled(&pool, &manager);
}
