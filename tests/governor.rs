//! The connect governor: at most `max_connecting` creations at once, one prober with a growing
//! delay while creations fail, fail-fast on permanent errors, and recovery as soon as the
//! backend answers again. Time is a manual clock.

mod common;

use common::{Gate, ManualClock, ManualRuntime, TestManager, advance_until, eventually};
use connection_pool::{CREATE_BACKOFF_MAX, ConnectionPool, PoolError, ValidationPolicy};
use futures_lite::future::{block_on, poll_once};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

fn pool(
    max_size: usize,
    max_connecting: usize,
) -> (ConnectionPool<TestManager>, TestManager, Arc<ManualClock>) {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(max_size)
        .max_connecting(max_connecting)
        .wait_timeout(Duration::from_secs(30))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    (pool, manager, clock)
}

fn spawn_gets(
    pool: &ConnectionPool<TestManager>,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<usize, PoolError<common::TestError>>>> {
    (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get_connection().await.map(|c| c.id) })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creations_in_flight_never_exceed_max_connecting() {
    for max_connecting in [1, 2, 4] {
        let (pool, manager, _clock) = pool(16, max_connecting);
        manager
            .counts
            .set_create(Gate::Delay(Duration::from_millis(5)));
        for task in spawn_gets(&pool, 32) {
            task.await.unwrap().expect("every call is served");
        }
        let peak = manager.counts.peak_connecting();
        assert!(
            (1..=max_connecting).contains(&peak),
            "{peak} creations at once with max_connecting {max_connecting}"
        );
        assert_eq!(pool.status().connecting, 0);
    }
}

#[tokio::test]
async fn while_creations_fail_one_prober_retries_with_a_growing_delay() {
    let (pool, manager, clock) = pool(8, 2);
    manager.counts.set_create(Gate::Fail);
    let tasks = spawn_gets(&pool, 64);
    eventually("the first two attempts failed", || {
        pool.status().counters.create_failures >= 2 && pool.status().waiters > 0
    })
    .await;
    assert_eq!(
        manager.counts.peak_connecting(),
        2,
        "max_connecting at first"
    );
    assert_eq!(manager.counts.connecting.load(Ordering::SeqCst), 0);
    manager.counts.peak_connecting.store(0, Ordering::SeqCst);

    // Two simulated seconds of outage, in 10 ms steps. Each failing attempt yields before it
    // fails, so a second prober would be seen in flight beside it.
    for _ in 0..200 {
        clock.advance(Duration::from_millis(10));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        manager.counts.peak_connecting(),
        1,
        "one prober at a time while creations fail"
    );
    let attempts = manager.counts.create_calls();
    // 20 ms doubling to 500 ms, +-25 %: about 8 in 2 s, plus the first two in parallel.
    assert!(
        (5..=14).contains(&attempts),
        "{attempts} connect attempts during a 2 s outage with 64 waiters"
    );

    // The backend comes back: the next probe succeeds and everyone is served soon after.
    manager.counts.set_create(Gate::Ok);
    let outage_end = clock.now();
    advance_until(&clock, Duration::from_millis(10), "all served", || {
        tasks.iter().all(|t| t.is_finished())
    })
    .await;
    let recovery = clock.now() - outage_end;
    assert!(
        recovery <= CREATE_BACKOFF_MAX + Duration::from_millis(200),
        "recovered after {recovery:?}"
    );
    let mut served = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => served += 1,
            Err(PoolError::Backend(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(
        served + attempts,
        64,
        "each failed attempt fails one call; the rest are served"
    );
    assert!(manager.counts.live() <= 8);
}

#[tokio::test]
async fn a_permanent_error_fails_callers_at_once_until_a_retry_succeeds() {
    let (pool, manager, clock) = pool(4, 2);
    manager.counts.set_create(Gate::Reject);
    let first = pool.get_connection().await.unwrap_err();
    assert!(matches!(first, PoolError::Rejected(_)), "{first}");
    assert!(first.to_string().contains("bad password"), "{first}");

    // Within the retry delay, callers that would have to create fail without dialling.
    for _ in 0..10 {
        let error = pool.get_connection().await.unwrap_err();
        assert!(matches!(error, PoolError::Rejected(_)), "{error}");
    }
    assert_eq!(manager.counts.create_calls(), 1);
    assert_eq!(pool.status().counters.rejected, 10);
    assert_eq!(pool.status().size, 0);

    // After the delay one call probes again; once the cause is fixed the pool works.
    clock.advance(CREATE_BACKOFF_MAX + CREATE_BACKOFF_MAX / 4);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Rejected(_))
    ));
    assert_eq!(manager.counts.create_calls(), 2);
    manager.counts.set_create(Gate::Ok);
    clock.advance(CREATE_BACKOFF_MAX + CREATE_BACKOFF_MAX / 4);
    let conn = pool.get_connection().await.expect("works again");
    drop(conn);
    assert!(pool.get_connection().await.is_ok());
}

#[test]
fn without_a_runtime_a_permanent_error_still_fails_callers_without_dialling() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .no_runtime()
        .build()
        .unwrap();
    manager.counts.set_create(Gate::Reject);
    // The retry delay runs on the real clock here (15 ms at least): of calls made back to
    // back, all but those after each delay ends must be refused without dialling.
    let calls = 100;
    for _ in 0..calls {
        let error = futures_lite::future::block_on(pool.get_connection()).unwrap_err();
        assert!(matches!(error, PoolError::Rejected(_)), "{error}");
    }
    let dialled = manager.counts.create_calls();
    assert!(
        dialled < calls / 2,
        "{dialled} of {calls} calls dialled with bad credentials"
    );
    assert_eq!(pool.status().counters.rejected as usize, calls - dialled);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn idle_connections_are_still_handed_out_while_creations_are_rejected() {
    let (pool, manager, _clock) = pool(2, 2);
    let held = pool.get_connection().await.unwrap();
    let id = held.id;
    manager.counts.set_create(Gate::Reject);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Rejected(_))
    ));
    // A caller that was rejected takes the connection once it is returned: idle
    // connections are handed out whatever the governor says.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            // Rejected at once (a slot is free, so it would have to create)...
            assert!(matches!(
                pool.get_connection().await,
                Err(PoolError::Rejected(_))
            ));
            // ...but an idle connection needs no creation.
            loop {
                if let Some(conn) = pool.try_get_connection() {
                    return conn.id;
                }
                tokio::task::yield_now().await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap(), id);
    assert_eq!(pool.get_connection().await.unwrap().id, id);
    assert_eq!(
        manager.counts.create_calls(),
        2,
        "the rejected calls did not dial"
    );
}

#[tokio::test]
async fn slots_granted_before_creations_began_to_fail_obey_the_governor() {
    use futures_lite::future::poll_once;
    let (pool, manager, _clock) = pool(3, 3);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.get_connection().await.unwrap());
    }
    let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(pool.get_connection())).collect();
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).await.is_none(), "waits");
    }
    // Each broken return grants its slot to a waiter; then the backend starts refusing.
    manager.counts.set_create(Gate::Reject);
    for mut conn in held {
        conn.mark_broken();
        drop(conn);
    }
    for waiter in &mut waiters {
        let result = poll_once(waiter.as_mut()).await.expect("done at once");
        assert!(matches!(result, Err(PoolError::Rejected(_))), "{result:?}");
    }
    assert_eq!(
        manager.counts.create_calls(),
        4,
        "after the first refusal the other grantees are rejected without dialling"
    );
    let status = pool.status();
    assert_eq!((status.size, status.connecting), (0, 0), "{status:?}");
}

#[test]
fn while_a_probe_is_in_flight_a_freed_slot_does_not_send_the_oldest_waiter_to_the_back() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(3)
        .max_connecting(2)
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .build()
        .unwrap();
    let a = block_on(pool.get_connection()).unwrap();
    let mut b = block_on(pool.get_connection()).unwrap();
    // A creation fails: one creation at a time from now on.
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        block_on(pool.get_connection()),
        Err(PoolError::Backend(_))
    ));
    // The next call probes, and hangs: the pool is full, one creation in flight.
    manager.counts.set_create(Gate::Hang);
    let mut probe = Box::pin(pool.get_connection());
    assert!(block_on(poll_once(probe.as_mut())).is_none());
    assert_eq!(pool.status().connecting, 1);
    let mut first = Box::pin(pool.get_connection());
    let mut second = Box::pin(pool.get_connection());
    assert!(block_on(poll_once(first.as_mut())).is_none());
    assert!(block_on(poll_once(second.as_mut())).is_none());
    assert_eq!(pool.status().waiters, 2);
    // A slot comes free, but no second creation may start beside the probe.
    b.mark_broken();
    drop(b);
    assert!(block_on(poll_once(first.as_mut())).is_none());
    assert_eq!(pool.status().waiters, 2);
    // A healthy connection comes back: it is the oldest waiter's.
    drop(a);
    let first_got = block_on(poll_once(first.as_mut()));
    assert!(
        matches!(first_got, Some(Ok(_))),
        "the oldest waiter is served first"
    );
    assert!(block_on(poll_once(second.as_mut())).is_none());
    assert_eq!(pool.status().waiters, 1);
    // The probe's end still reaches the one left waiting: here it is cancelled.
    drop(probe);
    manager.counts.set_create(Gate::Ok);
    assert!(
        matches!(block_on(poll_once(second.as_mut())), Some(Ok(_))),
        "the second waiter probes with the freed permit"
    );
    drop(first_got);
}

/// An observer that panics in `on_create` or `on_create_failure` once armed, a single time.
#[derive(Default)]
struct PanicsOnce {
    on_create: std::sync::atomic::AtomicBool,
    on_create_failure: std::sync::atomic::AtomicBool,
}

impl connection_pool::PoolObserver for PanicsOnce {
    fn on_create(&self, _took: Duration) {
        assert!(
            !self.on_create.swap(false, Ordering::SeqCst),
            "on_create panics on purpose"
        );
    }

    fn on_create_failure(&self, _took: Duration, _failure: connection_pool::CreateFailure<'_>) {
        assert!(
            !self.on_create_failure.swap(false, Ordering::SeqCst),
            "on_create_failure panics on purpose"
        );
    }
}

fn observed_pool(
    observer: &Arc<PanicsOnce>,
) -> (ConnectionPool<TestManager>, TestManager, Arc<ManualClock>) {
    let manager = TestManager::new();
    let clock = ManualClock::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(8)
        .max_connecting(2)
        .wait_timeout(Duration::from_secs(30))
        .validation(ValidationPolicy::Never)
        .cleanup_interval(None)
        .observer(Arc::clone(observer))
        .runtime(ManualRuntime::new(&clock))
        .build()
        .unwrap();
    (pool, manager, clock)
}

#[tokio::test]
async fn an_observer_panicking_on_create_still_ends_the_outage() {
    let observer = Arc::new(PanicsOnce::default());
    let (pool, manager, clock) = observed_pool(&observer);
    manager.counts.set_create(Gate::Fail);
    let failed = spawn_gets(&pool, 1).pop().unwrap();
    assert!(matches!(failed.await.unwrap(), Err(PoolError::Backend(_))));
    // The backend is back; after the backoff a probe's creation succeeds, and the observer
    // panics over it.
    manager.counts.set_create(Gate::Ok);
    observer.on_create.store(true, Ordering::SeqCst);
    clock.advance(CREATE_BACKOFF_MAX * 2);
    let probe = spawn_gets(&pool, 1).pop().unwrap();
    assert!(
        probe.await.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    assert_eq!(pool.status().counters.created, 1);
    // The governor knows the backend works: creations run max_connecting at a time again,
    // not one probe at a time.
    manager.counts.set_create(Gate::Hang);
    let creating = spawn_gets(&pool, 2);
    eventually("two creations at once", || {
        manager.counts.connecting.load(Ordering::SeqCst) == 2
    })
    .await;
    creating.iter().for_each(tokio::task::JoinHandle::abort);
}

#[tokio::test]
async fn an_observer_panicking_on_a_create_failure_still_starts_the_backoff() {
    let observer = Arc::new(PanicsOnce::default());
    let (pool, manager, _clock) = observed_pool(&observer);
    manager.counts.set_create(Gate::Fail);
    observer.on_create_failure.store(true, Ordering::SeqCst);
    let first = spawn_gets(&pool, 1).pop().unwrap();
    assert!(
        first.await.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    assert_eq!(pool.status().size, 0, "the failed creation's slot is free");
    // The failure was recorded: the next caller waits out the backoff (the clock stands
    // still) instead of dialling a backend that just failed.
    let second = spawn_gets(&pool, 1).pop().unwrap();
    eventually("the next caller waits", || pool.status().waiters == 1).await;
    assert_eq!(manager.counts.create_calls(), 1);
    second.abort();
}

/// A creation fails through `gate`, whose error panics in the pool's hands: the panic reaches
/// the caller, and the failure is still recorded as a transient one, so that the next caller
/// waits out the backoff (the clock stands still) instead of dialling at once or failing fast.
async fn a_panicking_error_still_starts_the_backoff(gate: Gate) {
    let (pool, manager, _clock) = pool(8, 2);
    manager.counts.set_create(gate);
    let first = spawn_gets(&pool, 1).pop().unwrap();
    assert!(
        first.await.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    let status = pool.status();
    assert_eq!(status.size, 0, "the failed creation's slot is free");
    assert_eq!(status.counters.create_failures, 1);
    let second = spawn_gets(&pool, 1).pop().unwrap();
    eventually("the next caller waits", || pool.status().waiters == 1).await;
    assert_eq!(manager.counts.create_calls(), 1);
    second.abort();
}

#[tokio::test]
async fn an_error_whose_display_panics_still_starts_the_backoff() {
    a_panicking_error_still_starts_the_backoff(Gate::FailUnprintable).await;
}

#[tokio::test]
async fn an_is_permanent_error_that_panics_counts_the_failure_as_transient() {
    a_panicking_error_still_starts_the_backoff(Gate::FailUnclassifiable).await;
}

#[tokio::test]
async fn the_first_success_after_failures_wakes_every_waiter_to_create_at_once() {
    let (pool, manager, clock) = pool(8, 2);
    manager.counts.set_create(Gate::Fail);
    assert!(matches!(
        pool.get_connection().await,
        Err(PoolError::Backend(_))
    ));
    // Past the delay: the next creation is the one probe allowed while failing.
    clock.advance(CREATE_BACKOFF_MAX * 2);
    static PROBE_MAY_FINISH: AtomicBool = AtomicBool::new(false);
    manager
        .counts
        .set_create(Gate::Until(|| PROBE_MAY_FINISH.load(Ordering::SeqCst)));
    // The probe keeps its connection, so the waiters can only be served by creating.
    let probe = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _conn = pool.get_connection().await.expect("the probe is served");
            std::future::pending::<()>().await;
        })
    };
    eventually("the probe is creating", || pool.status().connecting == 1).await;
    // Two calls queue behind the probe, with no backoff timer of their own.
    manager.counts.set_create(Gate::Hang);
    let waiters = spawn_gets(&pool, 2);
    eventually("two calls wait", || pool.status().waiters == 2).await;
    // The probe succeeds: the backend works, and both waiters create at once (max_connecting
    // 2), not one after the other.
    PROBE_MAY_FINISH.store(true, Ordering::SeqCst);
    eventually("both waiters create", || {
        manager.counts.connecting.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(pool.status().counters.created, 1);
    probe.abort();
    waiters.iter().for_each(tokio::task::JoinHandle::abort);
}
