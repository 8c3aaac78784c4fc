//! Panics in user code never leak a slot, and connections dropped while unwinding are
//! destroyed rather than reused.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod common;

use common::{Gate, TestManager};
use connection_pool::{ConnectionPool, TokioRuntime, ValidationPolicy};
use futures_lite::future::block_on;
use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

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
    // Counted as a panic, not as a check cut short.
    let destroyed = pool.status().counters.destroyed;
    assert_eq!(
        (destroyed.panicked, destroyed.validation_aborted),
        (1, 0),
        "{destroyed:?}"
    );
    manager.counts.set_validate(Gate::Ok);
    assert!(pool.get_connection().await.is_ok());
}

/// A manager whose `has_broken` panics, counting its live connections.
struct PanickyReturns {
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl connection_pool::ConnectionManager for PanickyReturns {
    type Connection = Counted;
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<Counted, std::io::Error> {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Counted(self.live.clone()))
    }

    async fn is_valid(&self, _conn: &mut Counted) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Counted) -> bool {
        panic!("has_broken panics on purpose")
    }
}

#[test]
fn a_panicking_has_broken_destroys_the_connection_and_frees_its_slot() {
    let live = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pool = ConnectionPool::builder(PanickyReturns { live: live.clone() })
        .max_size(1)
        .no_runtime()
        .build()
        .unwrap();
    for round in 1..=2 {
        let conn = futures_lite::future::block_on(pool.get_connection()).unwrap();
        assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 1);
        let returned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(conn)));
        assert!(returned.is_err(), "the panic reaches the caller");
        let status = pool.status();
        assert_eq!((status.size, status.idle), (0, 0));
        assert_eq!(status.counters.destroyed.panicked, round);
        assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

/// An observer whose `on_checkout` panics.
struct PanickyCheckouts;

impl connection_pool::PoolObserver for PanickyCheckouts {
    fn on_checkout(&self, _wait: std::time::Duration) {
        panic!("on_checkout panics on purpose")
    }
}

#[test]
fn a_panicking_observer_at_checkout_destroys_the_connection_and_frees_its_slot() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .no_runtime()
        .observer(PanickyCheckouts)
        .build()
        .unwrap();
    for round in 1..=2 {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures_lite::future::block_on(pool.get_connection()).map(|conn| conn.id)
        }));
        assert!(got.is_err(), "the panic reaches the caller");
        let status = pool.status();
        assert_eq!((status.size, status.idle), (0, 0), "round {round}");
        assert_eq!(status.counters.destroyed.panicked, round);
        assert_eq!(manager.counts.live(), 0, "round {round}");
    }
}

/// An observer that panics in one hook, the first time it is called.
struct PanicsOnceIn(&'static str, std::sync::atomic::AtomicBool);

impl PanicsOnceIn {
    fn hook(&self, hook: &str) {
        if hook == self.0 && !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("{hook} panics on purpose");
        }
    }
}

impl connection_pool::PoolObserver for PanicsOnceIn {
    fn on_create(&self, _took: std::time::Duration) {
        self.hook("on_create");
    }

    fn on_return(&self, _held: std::time::Duration) {
        self.hook("on_return");
    }

    fn on_destroy(&self, _reason: connection_pool::DestroyReason) {
        self.hook("on_destroy");
    }

    fn on_detach(&self) {
        self.hook("on_detach");
    }
}

#[test]
fn an_observer_panicking_on_create_return_or_destroy_never_takes_the_slot_with_it() {
    for hook in ["on_create", "on_return", "on_destroy"] {
        let manager = TestManager::new();
        let pool = ConnectionPool::builder(manager.clone())
            .max_size(1)
            .no_runtime()
            .observer(PanicsOnceIn(hook, Default::default()))
            .build()
            .unwrap();
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut conn = futures_lite::future::block_on(pool.get_connection()).unwrap();
            conn.mark_broken(); // destroyed on return: reaches on_destroy
            drop(conn);
        }));
        assert!(got.is_err(), "{hook}: the panic reaches the caller");
        let status = pool.status();
        assert_eq!((status.size, manager.counts.live()), (0, 0), "{hook}");
        // A connection the observer panicked over is counted as destroyed by a panic; the one
        // whose `on_destroy` panicked was already counted as broken.
        let destroyed = status.counters.destroyed;
        let by_panic = u64::from(hook != "on_destroy");
        assert_eq!(
            (destroyed.panicked, destroyed.broken),
            (by_panic, 1 - by_panic),
            "{hook}"
        );
        // With `max_size` 1, a lost slot would leave nothing to create.
        let next = futures_lite::future::block_on(pool.get_connection());
        assert!(next.is_ok(), "{hook}: the pool still serves");
    }
}

#[test]
fn an_observer_panicking_on_detach_leaves_the_slot_free_and_drops_the_connection() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .no_runtime()
        .observer(PanicsOnceIn("on_detach", Default::default()))
        .build()
        .unwrap();
    let conn = futures_lite::future::block_on(pool.get_connection()).unwrap();
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conn.detach()));
    assert!(got.is_err(), "the panic reaches the caller");
    let status = pool.status();
    assert_eq!((status.size, status.counters.detached), (0, 1));
    assert_eq!(
        manager.counts.live(),
        0,
        "the connection went with the unwinding frame"
    );
    let next = futures_lite::future::block_on(pool.get_connection());
    assert!(next.is_ok(), "the pool still serves");
}

/// An observer whose every `on_return` and `on_destroy` panics, and its first `on_create`: the
/// pool calls `on_destroy` for the connection the first panic was about while unwinding from it.
struct KeepsPanicking(std::sync::atomic::AtomicBool);

impl connection_pool::PoolObserver for KeepsPanicking {
    fn on_create(&self, _took: std::time::Duration) {
        if !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("on_create panics on purpose");
        }
    }

    fn on_return(&self, _held: std::time::Duration) {
        panic!("on_return panics on purpose");
    }

    fn on_destroy(&self, _reason: connection_pool::DestroyReason) {
        panic!("on_destroy panics on purpose");
    }
}

const KEEPS_PANICKING: &str =
    "an_observer_that_panics_again_while_unwinding_does_not_abort_the_process";

/// Whether this is the child process that runs the test named `test`. A second panic
/// escaping a destructor mid-unwind aborts the whole process, test harness included, so such
/// a scenario runs in a child: this same test binary, with a variable set. In the parent,
/// runs the child, asserts that it passed, and returns `false`.
fn in_child_process(test: &str) -> bool {
    if std::env::var_os("POOL_TEST_CHILD").is_some() {
        return true;
    }
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1"])
        .env("POOL_TEST_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(
        child.status.success() && stdout.contains(&format!("{test} ... ok")),
        "{:?}\n{stdout}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stderr)
    );
    false
}

#[test]
fn an_observer_that_panics_again_while_unwinding_does_not_abort_the_process() {
    if !in_child_process(KEEPS_PANICKING) {
        return;
    }
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(1)
        .no_runtime()
        .observer(KeepsPanicking(Default::default()))
        .build()
        .unwrap();
    // `on_create` panics, then `on_destroy` for the new connection.
    let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(futures_lite::future::block_on(pool.get_connection()));
    }));
    assert!(created.is_err());
    assert_eq!((pool.status().size, manager.counts.live()), (0, 0));
    // `on_return` panics, then `on_destroy`.
    let returned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(futures_lite::future::block_on(pool.get_connection()).unwrap());
    }));
    assert!(returned.is_err());
    assert_eq!((pool.status().size, manager.counts.live()), (0, 0));
}

/// A runtime whose clock panics on the `n`th read from now when the test arms it, and whose
/// tasks never run (no timeout or cleanup task is set).
struct FaultyClock(Arc<AtomicUsize>);

impl FaultyClock {
    /// The clock's `reads`th read from now panics (1: the next one).
    fn panic_at_read(&self, reads: usize) {
        self.0.store(reads, Ordering::SeqCst);
    }
}

impl connection_pool::Runtime for FaultyClock {
    fn spawn(&self, task: connection_pool::BoxFuture<()>) {
        drop(task);
    }

    fn sleep(&self, _duration: Duration) -> connection_pool::BoxFuture<()> {
        unreachable!("no timeout or cleanup task is set")
    }

    fn now(&self) -> Instant {
        let left = self.0.load(Ordering::SeqCst);
        if left > 0 {
            self.0.store(left - 1, Ordering::SeqCst);
            assert!(left != 1, "the clock panics on purpose");
        }
        Instant::now()
    }
}

fn pool_with_faulty_clock(
    validation: ValidationPolicy,
) -> (ConnectionPool<TestManager>, FaultyClock) {
    let countdown = Arc::new(AtomicUsize::new(0));
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(1)
        .validation(validation)
        .no_runtime()
        .runtime(FaultyClock(Arc::clone(&countdown)))
        .build()
        .unwrap();
    (pool, FaultyClock(countdown))
}

/// The one slot is free again: a checkout succeeds at once.
fn assert_slot_free(pool: &ConnectionPool<TestManager>) {
    let status = pool.status();
    assert_eq!(status.in_use, 0, "{status:?}");
    drop(block_on(pool.get_connection()).expect("the slot came back"));
}

#[test]
fn a_clock_that_panics_as_a_connection_is_returned_frees_its_slot() {
    let (pool, clock) = pool_with_faulty_clock(ValidationPolicy::Never);
    let conn = block_on(pool.get_connection()).unwrap();
    clock.panic_at_read(1);
    let returned = catch_unwind(AssertUnwindSafe(|| drop(conn)));
    assert!(returned.is_err(), "the clock's panic reaches the caller");
    assert_eq!(pool.status().size, 0, "the connection was destroyed");
    assert_eq!(pool.status().counters.destroyed.panicked, 1);
    assert_slot_free(&pool);
}

const CLOCK_PANICS_AGAIN: &str =
    "a_clock_that_panics_while_a_guard_is_dropped_by_a_panic_does_not_abort_the_process";

#[test]
fn a_clock_that_panics_while_a_guard_is_dropped_by_a_panic_does_not_abort_the_process() {
    if !in_child_process(CLOCK_PANICS_AGAIN) {
        return;
    }
    let countdown = Arc::new(AtomicUsize::new(0));
    let clock = FaultyClock(Arc::clone(&countdown));
    // With an observer, the return reads the clock for `on_return`.
    let pool = ConnectionPool::builder(TestManager::new())
        .max_size(1)
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .runtime(FaultyClock(countdown))
        .observer(CountsDestroys::default())
        .build()
        .unwrap();
    let conn = block_on(pool.get_connection()).unwrap();
    clock.panic_at_read(1);
    let held = catch_unwind(AssertUnwindSafe(move || {
        let _conn = conn;
        panic!("the holder panics on purpose");
    }));
    assert!(held.is_err());
    assert_eq!(pool.status().counters.destroyed.panicked, 1);
    assert_slot_free(&pool);
}

#[test]
fn a_clock_that_panics_in_try_get_connection_leaves_the_idle_connection_idle() {
    let (pool, clock) = pool_with_faulty_clock(ValidationPolicy::Never);
    drop(block_on(pool.get_connection()).unwrap());
    clock.panic_at_read(1);
    let tried = catch_unwind(AssertUnwindSafe(|| pool.try_get_connection().is_some()));
    assert!(tried.is_err(), "the clock's panic reaches the caller");
    let status = pool.status();
    assert_eq!((status.size, status.idle), (1, 1), "{status:?}");
    assert_slot_free(&pool);
}

#[test]
fn a_clock_that_panics_on_the_slow_path_with_a_connection_in_hand_frees_its_slot() {
    // With validation on, a checkout reads the clock three times: before the pop (nothing in
    // hand), then on the slow path twice with the popped connection in hand.
    for read in [2, 3] {
        let (pool, clock) = pool_with_faulty_clock(ValidationPolicy::Always);
        drop(block_on(pool.get_connection()).unwrap());
        clock.panic_at_read(read);
        let got = catch_unwind(AssertUnwindSafe(|| block_on(pool.get_connection()).is_ok()));
        assert!(
            got.is_err(),
            "read {read}: the clock's panic reaches the caller"
        );
        let status = pool.status();
        assert_eq!(
            (status.size, status.in_use),
            (0, 0),
            "read {read}: {status:?}"
        );
        assert_eq!(status.counters.destroyed.panicked, 1, "read {read}");
        assert_slot_free(&pool);
    }
}

/// An observer whose first `on_destroy` panics.
#[derive(Default)]
struct FirstDestroyPanics(std::sync::atomic::AtomicBool);

impl connection_pool::PoolObserver for FirstDestroyPanics {
    fn on_destroy(&self, _reason: connection_pool::DestroyReason) {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("on_destroy panics on purpose");
        }
    }
}

#[test]
fn an_observer_panic_while_closing_still_drops_every_idle_connection() {
    let manager = TestManager::new();
    let pool = ConnectionPool::builder(manager.clone())
        .max_size(3)
        .no_runtime()
        .observer(FirstDestroyPanics::default())
        .build()
        .unwrap();
    let held: Vec<_> = (0..3)
        .map(|_| block_on(pool.get_connection()).unwrap())
        .collect();
    drop(held);
    assert_eq!(pool.status().idle, 3);
    let closed = catch_unwind(AssertUnwindSafe(|| pool.close()));
    assert!(closed.is_err(), "the observer's panic reaches the caller");
    let status = pool.status();
    assert_eq!(
        (status.idle, status.size, manager.counts.live()),
        (0, 0, 0),
        "close() drops idle connections now, panic or not"
    );
    assert_eq!(status.counters.destroyed.closed, 3);
}

/// A connection whose `Drop` panics (unless the thread already unwinds).
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the connection's Drop panics on purpose");
        }
    }
}

/// Makes [`Bomb`]s; with `fails_checks`, every `is_valid` fails.
struct BombManager {
    fails_checks: bool,
}

impl connection_pool::ConnectionManager for BombManager {
    type Connection = Bomb;
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<Bomb, std::io::Error> {
        Ok(Bomb)
    }

    async fn is_valid(&self, _conn: &mut Bomb) -> Result<(), std::io::Error> {
        match self.fails_checks {
            true => Err(std::io::Error::other("the check fails on purpose")),
            false => Ok(()),
        }
    }
}

/// Counts `on_destroy` calls.
#[derive(Default)]
struct CountsDestroys(AtomicUsize);

impl connection_pool::PoolObserver for CountsDestroys {
    fn on_destroy(&self, _reason: connection_pool::DestroyReason) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_connection_whose_drop_panics_after_a_failed_check_is_counted_and_observed() {
    let observer = Arc::new(CountsDestroys::default());
    let pool = ConnectionPool::builder(BombManager { fails_checks: true })
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .observer(Arc::clone(&observer))
        .no_runtime()
        .build()
        .unwrap();
    drop(block_on(pool.get_connection()).unwrap());
    // The check fails, and dropping the connection panics out of the `get`.
    let got = catch_unwind(AssertUnwindSafe(|| block_on(pool.get_connection())));
    assert!(got.is_err());
    let status = pool.status();
    assert_eq!(
        (
            status.size,
            status.connecting,
            status.counters.destroyed.validation_failed
        ),
        (0, 0, 1),
        "{status:?}"
    );
    assert_eq!(
        observer.0.load(Ordering::SeqCst),
        1,
        "the observer was told"
    );
}

#[test]
fn a_connection_whose_drop_panics_still_gives_its_slot_back() {
    let pool = ConnectionPool::builder(BombManager {
        fails_checks: false,
    })
    .max_size(1)
    .no_runtime()
    .build()
    .unwrap();
    let mut conn = block_on(pool.get_connection()).unwrap();
    conn.mark_broken();
    assert!(catch_unwind(AssertUnwindSafe(|| drop(conn))).is_err());
    let status = pool.status();
    assert_eq!(
        (status.size, status.in_use, status.counters.destroyed.broken),
        (0, 0, 1),
        "{status:?}"
    );
    // With `max_size` 1, a lost slot would leave nothing to create.
    let next = block_on(pool.get_connection()).unwrap();
    // Keep the pool's drop from dropping it, and this test from panicking there.
    std::mem::forget(connection_pool::PooledConnection::detach(next));
}

/// A connection whose `Drop` panics every time, even while the thread unwinds.
struct AlwaysBomb(Arc<AtomicUsize>);

impl Drop for AlwaysBomb {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("the connection's Drop panics on purpose, always");
    }
}

/// Makes [`AlwaysBomb`]s sharing one count of drops.
struct AlwaysBombManager(Arc<AtomicUsize>);

impl connection_pool::ConnectionManager for AlwaysBombManager {
    type Connection = AlwaysBomb;
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<AlwaysBomb, std::io::Error> {
        Ok(AlwaysBomb(Arc::clone(&self.0)))
    }

    async fn is_valid(&self, _conn: &mut AlwaysBomb) -> Result<(), std::io::Error> {
        Ok(())
    }
}

const LAST_HANDLE_UNWINDS: &str =
    "dropping_the_last_handle_in_a_panic_does_not_abort_on_a_connection_whose_drop_panics";

#[test]
fn dropping_the_last_handle_in_a_panic_does_not_abort_on_a_connection_whose_drop_panics() {
    if !in_child_process(LAST_HANDLE_UNWINDS) {
        return;
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let pool = ConnectionPool::builder(AlwaysBombManager(Arc::clone(&dropped)))
        .max_size(2)
        .no_runtime()
        .build()
        .unwrap();
    let both = [
        block_on(pool.get_connection()).unwrap(),
        block_on(pool.get_connection()).unwrap(),
    ];
    drop(both);
    assert_eq!(pool.status().idle, 2);
    // The pool closes as the panic drops it, and each connection's panic is caught: the one
    // under way is what the caller sees.
    let owner = catch_unwind(AssertUnwindSafe(move || {
        let _pool = pool;
        panic!("the pool's owner panics on purpose");
    }));
    let panic = owner.unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"the pool's owner panics on purpose")
    );
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "every idle connection dropped"
    );
}
