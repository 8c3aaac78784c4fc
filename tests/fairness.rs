//! Waiters are served first come, first served: a returned connection is handed to the oldest
//! waiter, a slot freed by a destroyed connection is reserved for the oldest waiter, and a task
//! that returns a connection and asks again queues behind the others.

mod common;

use common::{Gate, TestManager, eventually};
use connection_pool::{ConnectionPool, ValidationPolicy};
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

fn pool(max_size: usize) -> ConnectionPool<TestManager> {
    ConnectionPool::builder(TestManager::new())
        .max_size(max_size)
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .build()
        .unwrap()
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order_and_a_returner_cannot_jump_the_line() {
    let pool = pool(1);
    let held = pool.get_connection().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (task_pool, order) = (pool.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let conn = task_pool.get_connection().await.unwrap();
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            drop(conn);
        }));
        eventually("the task waits in line", || pool.status().waiters == i + 1).await;
    }

    // The holder returns its connection and asks again at once: it must not get it back.
    drop(held);
    assert!(
        pool.try_get_connection().is_none(),
        "try_get jumped the line"
    );
    let again = pool.get_connection().await.unwrap();
    order.lock().unwrap().push(99);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4, 99]);
    assert_eq!(again.id, 0, "one connection served everyone");
    assert_eq!(pool.status().counters.created, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn under_contention_no_waiter_is_overtaken_more_than_once_by_each_other_task() {
    // With barging (the pool before hand-off), the worst task was overtaken 1,499 times.
    let pool = pool(2);
    let worst = contend(&pool, false).await;
    assert!(worst <= 2 * 31, "a waiter was overtaken {worst} times");
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.waiters), (2, 2, 0));
    assert!(status.counters.waited >= 32, "the tasks really queued");
}

#[tokio::test(flavor = "current_thread")]
async fn a_slot_freed_by_a_destroyed_connection_goes_to_the_oldest_waiter() {
    // Every return destroys its connection, so each frees a slot instead of handing over a
    // connection. Before slots were reserved for the waiter they wake, whoever asked next took
    // the slot and the woken waiter queued again at the back: the worst task was overtaken
    // 1,499 times here, as with barging.
    let pool = pool(2);
    let worst = contend(&pool, true).await;
    assert!(worst <= 2 * 31, "a waiter was overtaken {worst} times");
    let status = pool.status();
    assert_eq!((status.size, status.idle, status.waiters), (0, 0, 0));
    assert_eq!(status.counters.destroyed.broken, 32 * 50);
}

/// 32 tasks on the pool, each checking out 50 times and holding across a yield (and marking
/// the connection broken when `broken`); returns the most checkouts counted while one task
/// waited. A global count of checkouts tells how many others were counted as served while a
/// task waited. First come, first served lets each of the other 31 tasks be counted at most
/// twice: once for a hand-off that happened before this task queued but was counted after it
/// arrived, once for being ahead of it in line; a task that re-asks goes behind it.
///
/// Run on one thread on purpose: on a worker pool the OS can pause the thread that holds a
/// served but not yet polled task, and the other thread then counts hundreds of checkouts that
/// say nothing about the pool's order.
async fn contend(pool: &ConnectionPool<TestManager>, broken: bool) -> usize {
    let served = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (pool, served, worst) = (pool.clone(), Arc::clone(&served), Arc::clone(&worst));
            tokio::spawn(async move {
                for _ in 0..50 {
                    let arrived = served.load(Ordering::SeqCst);
                    let mut conn = pool.get_connection().await.unwrap();
                    let overtaken = served.fetch_add(1, Ordering::SeqCst) - arrived;
                    worst.fetch_max(overtaken, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    if broken {
                        conn.mark_broken();
                    }
                    drop(conn);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    worst.load(Ordering::SeqCst)
}

#[test]
fn a_freed_slot_is_reserved_for_the_woken_waiter_not_taken_by_a_newcomer() {
    use futures_lite::future::{block_on, poll_once};
    let pool = pool(1);
    let mut held = block_on(pool.get_connection()).unwrap();
    let mut first = Box::pin(pool.get_connection());
    let mut second = Box::pin(pool.get_connection());
    assert!(block_on(poll_once(first.as_mut())).is_none(), "waits");
    assert!(block_on(poll_once(second.as_mut())).is_none(), "waits");
    held.mark_broken();
    // The slot comes free and the oldest waiter is woken; a newcomer asks before it runs.
    drop(held);
    let mut newcomer = Box::pin(pool.get_connection());
    assert!(
        block_on(poll_once(newcomer.as_mut())).is_none(),
        "the newcomer took the slot freed for the oldest waiter"
    );
    let conn = block_on(poll_once(first.as_mut())).expect("the oldest waiter is served");
    drop(conn.unwrap());
    // The return goes to the next in line, not to the newcomer, who comes after it.
    let second_conn = block_on(poll_once(second.as_mut())).expect("the second is served");
    assert!(block_on(poll_once(newcomer.as_mut())).is_none());
    drop(second_conn.unwrap());
    assert!(block_on(poll_once(newcomer.as_mut())).is_some());
}

#[test]
fn a_waiter_whose_connection_fails_validation_creates_with_its_slot_and_keeps_its_place() {
    use futures_lite::future::{block_on, poll_once};
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .no_runtime()
        .build()
        .unwrap();
    let held = block_on(pool.get_connection()).unwrap();
    let mut first = Box::pin(pool.get_connection());
    let mut second = Box::pin(pool.get_connection());
    assert!(block_on(poll_once(first.as_mut())).is_none(), "waits");
    assert!(block_on(poll_once(second.as_mut())).is_none(), "waits");
    // The connection reaches the oldest waiter and fails its check there.
    manager.counts.set_validate(Gate::Fail);
    drop(held);
    // Polled a few times (a failing check yields once), never awaited: before, it queued
    // again behind `second`, and awaiting it would hang.
    let conn = (0..10)
        .find_map(|_| block_on(poll_once(first.as_mut())))
        .expect("the oldest waiter creates with the freed slot")
        .unwrap();
    manager.counts.set_validate(Gate::Ok);
    assert_eq!(manager.counts.create_calls(), 2);
    assert!(
        block_on(poll_once(second.as_mut())).is_none(),
        "still waits"
    );
    drop(conn);
    assert!(block_on(poll_once(second.as_mut())).is_some());
}

#[test]
fn a_waiter_whose_connection_fails_validation_while_every_permit_is_busy_keeps_its_place() {
    use futures_lite::future::{block_on, poll_once};
    with_the_only_permit_held(2, |pool, manager, mut held| {
        let (b, a) = (held.pop().unwrap(), held.pop().unwrap());
        let mut first = Box::pin(pool.get_connection());
        let mut second = Box::pin(pool.get_connection());
        assert!(block_on(poll_once(first.as_mut())).is_none(), "waits");
        assert!(block_on(poll_once(second.as_mut())).is_none(), "waits");
        // The connection reaches the oldest waiter and fails its check there; with no permit
        // free to create with, that waiter has to queue again.
        manager.counts.set_validate(Gate::Fail);
        drop(a);
        for _ in 0..10 {
            assert!(block_on(poll_once(first.as_mut())).is_none(), "waits again");
        }
        assert_eq!(pool.status().waiters, 2);
        manager.counts.set_validate(Gate::Ok);
        // The next connection back goes to it, not to the waiter that queued after it.
        drop(b);
        let oldest = block_on(poll_once(first.as_mut()));
        assert!(matches!(oldest, Some(Ok(_))), "the oldest waiter is served");
        let younger = block_on(poll_once(second.as_mut()));
        assert!(
            younger.is_none(),
            "the younger one still waits: {younger:?}"
        );
    });
}

#[test]
fn waiters_woken_by_a_failed_creation_stay_ahead_of_callers_that_came_after_them() {
    use futures_lite::future::{block_on, poll_once};
    with_backoff_that_holds(2, |pool, manager| {
        let held = block_on(pool.get_connection()).unwrap();
        manager.counts.set_create(Gate::Fail);
        let mut failing = Box::pin(pool.get_connection());
        assert!(block_on(poll_once(failing.as_mut())).is_none(), "creating");
        let mut first = Box::pin(pool.get_connection());
        let mut second = Box::pin(pool.get_connection());
        assert!(block_on(poll_once(first.as_mut())).is_none(), "waits");
        assert!(block_on(poll_once(second.as_mut())).is_none(), "waits");
        // The creation fails and wakes every waiter to re-check; a caller comes along before
        // they run, and they queue again (the governor holds creations back).
        assert!(block_on(poll_once(failing.as_mut())).is_some_and(|got| got.is_err()));
        let mut newcomer = Box::pin(pool.get_connection());
        assert!(block_on(poll_once(newcomer.as_mut())).is_none(), "waits");
        assert!(block_on(poll_once(first.as_mut())).is_none(), "waits again");
        assert!(
            block_on(poll_once(second.as_mut())).is_none(),
            "waits again"
        );
        assert_eq!(pool.status().waiters, 3);
        drop(held);
        let oldest = block_on(poll_once(first.as_mut()));
        assert!(matches!(oldest, Some(Ok(_))), "the oldest waiter is served");
        assert!(block_on(poll_once(second.as_mut())).is_none());
        assert!(block_on(poll_once(newcomer.as_mut())).is_none());
    });
}

#[test]
fn waiters_that_queue_again_keep_their_order_of_arrival_not_the_order_they_came_back_in() {
    use futures_lite::future::{block_on, poll_once};
    with_the_only_permit_held(3, |pool, manager, mut held| {
        let (c, b, a) = (
            held.pop().unwrap(),
            held.pop().unwrap(),
            held.pop().unwrap(),
        );
        let mut older = Box::pin(pool.get_connection());
        let mut younger = Box::pin(pool.get_connection());
        assert!(block_on(poll_once(older.as_mut())).is_none(), "waits");
        assert!(block_on(poll_once(younger.as_mut())).is_none(), "waits");
        // Each is handed a connection that fails its check, and queues again: the younger
        // first, since it runs first (the older one's check might just take longer).
        manager.counts.set_validate(Gate::Fail);
        drop(a);
        drop(b);
        for _ in 0..10 {
            assert!(block_on(poll_once(younger.as_mut())).is_none());
        }
        for _ in 0..10 {
            assert!(block_on(poll_once(older.as_mut())).is_none());
        }
        assert_eq!(pool.status().waiters, 2);
        manager.counts.set_validate(Gate::Ok);
        drop(c);
        let oldest = block_on(poll_once(older.as_mut()));
        assert!(matches!(oldest, Some(Ok(_))), "the older waiter is served");
        let other = block_on(poll_once(younger.as_mut()));
        assert!(other.is_none(), "the younger one still waits: {other:?}");
    });
}

#[test]
fn a_waiter_woken_alone_during_an_outage_and_told_to_wait_keeps_its_place() {
    use futures_lite::future::{block_on, poll_once};
    with_backoff_that_holds(3, |pool, manager| {
        let mut held: Vec<_> = (0..3)
            .map(|_| block_on(pool.get_connection()).unwrap())
            .collect();
        let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(pool.get_connection())).collect();
        for waiter in &mut waiters {
            assert!(block_on(poll_once(waiter.as_mut())).is_none(), "waits");
        }
        // A broken connection's slot goes to the first waiter, whose creation fails: the
        // outage begins, and the other two are woken, re-check and queue again.
        manager.counts.set_create(Gate::Fail);
        let mut broken = held.pop().unwrap();
        broken.mark_broken();
        drop(broken);
        let failed = (0..10).find_map(|_| block_on(poll_once(waiters[0].as_mut())));
        assert!(matches!(failed, Some(Err(_))), "{failed:?}");
        for waiter in &mut waiters[1..] {
            assert!(
                block_on(poll_once(waiter.as_mut())).is_none(),
                "waits again"
            );
        }
        // Another breakage wakes the oldest alone to ask the governor, which says wait.
        let mut broken = held.pop().unwrap();
        broken.mark_broken();
        drop(broken);
        assert!(
            block_on(poll_once(waiters[1].as_mut())).is_none(),
            "waits again"
        );
        assert!(block_on(poll_once(waiters[2].as_mut())).is_none());
        assert_eq!(pool.status().waiters, 2);
        // The last connection comes back healthy: it goes to the older of the two.
        drop(held.pop());
        let oldest = block_on(poll_once(waiters[1].as_mut()));
        assert!(matches!(oldest, Some(Ok(_))), "the older waiter is served");
        let other = block_on(poll_once(waiters[2].as_mut()));
        assert!(other.is_none(), "the younger one still waits: {other:?}");
    });
}

/// Runs `test` on a pool of `max_size` whose runtime's clock stands still, so that once a
/// creation fails, the governor's backoff holds for the whole test.
fn with_backoff_that_holds(
    max_size: usize,
    test: impl FnOnce(&ConnectionPool<TestManager>, &TestManager),
) {
    let manager = TestManager::new();
    // The manual runtime spawns on tokio.
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let _context = tokio.enter();
    let clock = common::ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(common::ManualRuntime::new(&clock))
        .build()
        .unwrap();
    test(&pool, &manager);
}

/// Runs `test` on a pool of four that checks every checkout and opens one connection at a
/// time, with `held` connections checked out (handed to `test`, oldest first) and the only
/// connect permit taken by a creation that never ends (think: a failover, with reconnects in
/// flight while the pooled connections are stale).
fn with_the_only_permit_held(
    held: usize,
    test: impl for<'p> FnOnce(
        &'p ConnectionPool<TestManager>,
        &TestManager,
        Vec<connection_pool::PooledConnection<'p, TestManager>>,
    ),
) {
    use futures_lite::future::{block_on, poll_once};
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(4)
        .max_connecting(1)
        .validation(ValidationPolicy::Always)
        .no_runtime()
        .build()
        .unwrap();
    let connections = (0..held)
        .map(|_| block_on(pool.get_connection()).unwrap())
        .collect();
    manager.counts.set_create(Gate::Hang);
    let mut creating = Box::pin(pool.get_connection());
    assert!(block_on(poll_once(creating.as_mut())).is_none());
    test(&pool, &manager, connections);
}
