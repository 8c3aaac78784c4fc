//! Checking out an idle connection and returning it allocates nothing: the fast path creates
//! no boxed future, no listener, no record. (Waiting, creating and cleanup may allocate.) And
//! with leak detection on, which records every checkout, memory does not grow with the number
//! of checkouts.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::TestManager;
use connection_pool::{BoxFuture, ConnectionPool, Runtime, TokioRuntime, ValidationPolicy};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    time::Duration,
};

/// The system allocator, counting the allocations made on each thread and the bytes it holds
/// (allocated minus freed there).
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn hold(bytes: usize, sign: isize) {
    HELD.with(|held| held.set(held.get() + sign * bytes as isize));
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a `const`
// thread-local `Cell`, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        hold(layout.size(), 1);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        hold(layout.size(), -1);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        hold(new_size, 1);
        hold(layout.size(), -1);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

fn get_and_drop_many(pool: &ConnectionPool<TestManager>) {
    for _ in 0..1000 {
        let conn = futures_lite::future::block_on(pool.get_connection()).unwrap();
        drop(conn);
        drop(pool.try_get_connection().unwrap());
    }
}

#[test]
fn get_and_drop_of_an_idle_connection_allocate_nothing() {
    let pool = ConnectionPool::builder(TestManager::new())
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .build()
        .unwrap();
    // Warm up: the first connection is created (allocating) and block_on sets up its parker.
    get_and_drop_many(&pool);
    assert_eq!(allocations_during(|| get_and_drop_many(&pool)), 0);
}

#[test]
fn also_with_the_default_validation_policy_and_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = ConnectionPool::builder(TestManager::new())
        .cleanup_interval(None)
        .runtime(TokioRuntime::from_handle(runtime.handle().clone()))
        .build()
        .unwrap();
    get_and_drop_many(&pool);
    assert_eq!(allocations_during(|| get_and_drop_many(&pool)), 0);
}

/// A runtime whose spawned tasks never run: the `Runtime` docs allow it, and it is what a
/// runtime shutting down looks like to the pool. So the leak watcher never looks.
struct DropsTasks;

impl Runtime for DropsTasks {
    fn spawn(&self, task: BoxFuture<()>) {
        drop(task);
    }

    fn sleep(&self, _duration: Duration) -> BoxFuture<()> {
        unreachable!("no timeout or cleanup task is set")
    }
}

#[test]
fn leak_detection_holds_no_more_memory_after_many_checkouts() {
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(4)
        .leak_detection_threshold(Duration::from_secs(60))
        .validation(ValidationPolicy::Never)
        .connection_timeout(None)
        .wait_timeout(None)
        .validation_timeout(None)
        .cleanup_interval(None)
        .runtime(DropsTasks)
        .build()
        .unwrap();
    get_and_drop_many(&pool);
    let before = HELD.with(Cell::get);
    for _ in 0..50 {
        get_and_drop_many(&pool);
    }
    // 100,000 checkouts; a record kept per checkout until the watcher looks would be megabytes.
    let grown = HELD.with(Cell::get) - before;
    assert!(
        grown <= 0,
        "{grown} more bytes held after 100,000 checkouts"
    );
}
