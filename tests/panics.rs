//! Panics in user code never leak a slot, and connections dropped while unwinding are
//! destroyed rather than reused.

mod common;

use common::{Gate, TestManager};
use connection_pool::{ConnectionPool, TokioRuntime, ValidationPolicy};

fn pool(manager: &TestManager) -> ConnectionPool<TestManager> {
    ConnectionPool::builder(manager.clone())
        .max_size(2)
        .validation(ValidationPolicy::Always)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_panicking_create_releases_its_slot() {
    let manager = TestManager::new();
    let pool = pool(&manager);
    manager.counts.set_create(Gate::Panic);
    let task = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_connection().await.map(|c| c.id) }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(pool.status().size, 0);
    manager.counts.set_create(Gate::Ok);
    assert!(pool.get_connection().await.is_ok());
}

#[tokio::test]
async fn a_panic_while_holding_a_guard_destroys_the_connection() {
    let manager = TestManager::new();
    let pool = pool(&manager);
    let task = tokio::spawn({
        let pool = pool.clone();
        async move {
            let _conn = pool.get_connection().await.unwrap();
            panic!("user code fails mid-transaction");
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    let status = pool.status();
    assert_eq!((status.size, status.idle), (0, 0));
    assert_eq!(status.counters.destroyed.panicked, 1);
    assert_eq!(manager.counts.live(), 0);
}

#[tokio::test]
async fn a_panicking_validation_destroys_the_connection() {
    let manager = TestManager::new();
    let pool = pool(&manager);
    drop(pool.get_connection().await.unwrap());
    manager.counts.set_validate(Gate::Panic);
    let task = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get_connection().await.map(|c| c.id) }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(pool.status().size, 0);
    assert_eq!(manager.counts.live(), 0);
    manager.counts.set_validate(Gate::Ok);
    assert!(pool.get_connection().await.is_ok());
}
