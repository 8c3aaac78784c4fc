//! Checking out an idle connection and returning it allocates nothing: the fast path creates
//! no boxed future, no listener, no record. (Waiting, creating and cleanup may allocate.)

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::TestManager;
use connection_pool::{ConnectionPool, TokioRuntime, ValidationPolicy};
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

/// The system allocator, counting the allocations made on each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a `const`
// thread-local `Cell`, which neither allocates nor re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
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
