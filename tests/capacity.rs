//! `max_size` is never exceeded, and no connection is held twice, under 64 concurrent tasks on
//! every supported executor. Checked with the test manager's own live count, not the pool's.

// Built only with the `tokio` and `smol` features (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(all(feature = "tokio", feature = "smol"))]

mod common;

use common::{Gate, TestManager};
use connection_pool::{ConnectionPool, Runtime, SmolRuntime, TokioRuntime};
use std::{
    sync::Arc,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

const MAX_SIZE: usize = 8;
const TASKS: usize = 64;
const ITERATIONS: usize = 200;

fn build(runtime: impl Runtime) -> (ConnectionPool<TestManager>, TestManager) {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(MAX_SIZE)
        .wait_timeout(Duration::from_secs(20))
        .runtime(runtime)
        .build()
        .unwrap();
    (pool, manager)
}

/// One task's work: check out, use exclusively, sometimes break the connection, return.
async fn worker(pool: ConnectionPool<TestManager>, task: usize, errors: Arc<AtomicUsize>) {
    for i in 0..ITERATIONS {
        match pool.get_connection().await {
            Ok(mut conn) => {
                let live = pool.manager().counts.live();
                assert!(live <= MAX_SIZE, "{live} live connections, max {MAX_SIZE}");
                // Claimed across the yield, where another task runs: a second holder of this
                // connection would find it claimed.
                let claim = conn.claim();
                futures_lite::future::yield_now().await;
                drop(claim);
                if (task + i) % 37 == 0 {
                    conn.mark_broken();
                }
            }
            Err(e) => {
                // Only the injected create failures are expected.
                assert!(matches!(e, connection_pool::PoolError::Backend(_)), "{e}");
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn check_end_state(pool: &ConnectionPool<TestManager>, manager: &TestManager) {
    let status = pool.status();
    assert!(
        manager.counts.peak() <= MAX_SIZE,
        "peak {}",
        manager.counts.peak()
    );
    assert_eq!(status.waiters, 0);
    assert_eq!(status.in_use, 0, "{status:?}");
    assert_eq!(status.size, manager.counts.live(), "pool and manager agree");
    assert_eq!(status.idle, manager.counts.live());
    assert!(status.counters.destroyed.broken > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_multi_thread() {
    let (pool, manager) = build(TokioRuntime::current());
    let errors = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(worker(pool.clone(), t, errors.clone())))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    check_end_state(&pool, &manager);
}

#[tokio::test(flavor = "current_thread")]
async fn tokio_current_thread_with_failing_creates() {
    let (pool, manager) = build(TokioRuntime::current());
    let errors = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| tokio::spawn(worker(pool.clone(), t, errors.clone())))
        .collect();
    // Fail creates for a while mid-run.
    tokio::task::yield_now().await;
    manager.counts.set_create(Gate::Fail);
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    manager.counts.set_create(Gate::Ok);
    for task in tasks {
        task.await.unwrap();
    }
    check_end_state(&pool, &manager);
    let errors = errors.load(Ordering::Relaxed);
    assert!(errors > 0, "no creation failed while they were set to");
    assert_eq!(
        pool.status().counters.create_failures,
        errors as u64,
        "each failed creation failed one call"
    );
}

#[test]
fn smol_executor() {
    smol::block_on(async {
        let (pool, manager) = build(SmolRuntime::new());
        let errors = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| smol::spawn(worker(pool.clone(), t, errors.clone())))
            .collect();
        for task in tasks {
            task.await;
        }
        check_end_state(&pool, &manager);
    });
}

#[test]
fn async_std_executor() {
    async_std::task::block_on(async {
        let (pool, manager) = build(SmolRuntime::new());
        let errors = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| async_std::task::spawn(worker(pool.clone(), t, errors.clone())))
            .collect();
        for task in tasks {
            task.await;
        }
        check_end_state(&pool, &manager);
    });
}

#[test]
fn async_std_timeouts_fire() {
    async_std::task::block_on(async {
        let (pool, _manager) = build(SmolRuntime::new());
        let held: Vec<_> = futures_lite::stream::iter(0..MAX_SIZE)
            .then(|_| pool.get_connection())
            .collect::<Vec<_>>()
            .await;
        let result = pool.get_connection_timeout(Duration::from_millis(50)).await;
        assert!(matches!(
            result,
            Err(connection_pool::PoolError::Timeout { .. })
        ));
        drop(held);
    });
}

use futures_lite::StreamExt;
