//! Micro-benchmarks of our pool alone, single-threaded and uncontended (divan):
//! get+drop and try_get+drop of an idle connection, checkout alone and the return path
//! (`Drop` of the guard) alone, with no runtime and with `TokioRuntime`, plus the bare
//! `ArrayQueue` pop+push floor for scale.
//!
//! `get_connection` never awaits when a connection is idle, so its future is polled once with
//! a no-op waker instead of going through an executor: the numbers are the pool's own.
//!
//! Run with `cargo bench --bench micro` inside `benches/peers`.

use connection_pool::{ConnectionPool, TokioRuntime, ValidationPolicy};
use connection_pool_peer_benches::{poll::ready, pools::NoopManager};
use crossbeam_queue::ArrayQueue;
use divan::{Bencher, black_box};

fn main() {
    divan::main();
}

/// Connections kept idle for the checkout-only and return-only benchmarks: each sample
/// checks out (or returns) up to this many before putting them back.
const BATCH: usize = 64;

/// Which clock and timers the pool is built with.
#[derive(Debug, Clone, Copy)]
enum Rt {
    /// `.no_runtime()`: `Instant::now()` directly.
    None,
    /// `TokioRuntime` (its clock is read through `dyn Runtime` and a runtime-handle enter).
    Tokio,
}

impl std::fmt::Display for Rt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "no_runtime",
            Self::Tokio => "tokio",
        })
    }
}

const RUNTIMES: [Rt; 2] = [Rt::None, Rt::Tokio];

/// A pool with `size` idle connections; the tokio runtime (if any) must outlive it.
fn warm_pool(
    rt: Rt,
    size: usize,
) -> (Option<tokio::runtime::Runtime>, ConnectionPool<NoopManager>) {
    let builder = ConnectionPool::builder(NoopManager)
        .max_size(size)
        .validation(ValidationPolicy::Never)
        .wait_timeout(None);
    let (runtime, pool) = match rt {
        Rt::None => (None, builder.no_runtime().build()),
        Rt::Tokio => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime");
            let pool = builder
                .runtime(TokioRuntime::from_handle(runtime.handle().clone()))
                .build();
            (Some(runtime), pool)
        }
    };
    let pool = pool.expect("valid configuration");
    let held: Vec<_> = (0..size)
        .map(|_| ready(pool.get_connection()).expect("created"))
        .collect();
    drop(held);
    assert_eq!(pool.status().idle, size);
    (runtime, pool)
}

/// `get_connection().await` then drop, one idle connection in the pool.
#[divan::bench(args = RUNTIMES)]
fn get_drop(bencher: Bencher<'_, '_>, rt: Rt) {
    let (_runtime, pool) = warm_pool(rt, 1);
    bencher.bench_local(|| {
        let conn = ready(pool.get_connection()).expect("idle connection");
        drop(black_box(conn));
    });
}

/// `try_get_connection()` then drop, one idle connection in the pool.
#[divan::bench(args = RUNTIMES)]
fn try_get_drop(bencher: Bencher<'_, '_>, rt: Rt) {
    let (_runtime, pool) = warm_pool(rt, 1);
    bencher.bench_local(|| {
        let conn = pool.try_get_connection().expect("idle connection");
        drop(black_box(conn));
    });
}

/// The checkout alone: `get_connection` of an idle connection; the guards are returned
/// after each sample, outside the timing.
#[divan::bench(args = RUNTIMES, sample_size = BATCH as u32)]
fn checkout_only(bencher: Bencher<'_, '_>, rt: Rt) {
    let (_runtime, pool) = warm_pool(rt, BATCH);
    bencher.bench_local(|| ready(pool.get_connection()).expect("idle connection"));
}

/// The return path alone: dropping a guard (has_broken, lifetime check, push, notify).
#[divan::bench(args = RUNTIMES, sample_size = BATCH as u32)]
fn return_only(bencher: Bencher<'_, '_>, rt: Rt) {
    let (_runtime, pool) = warm_pool(rt, BATCH);
    bencher
        .with_inputs(|| pool.try_get_connection().expect("idle connection"))
        .bench_local_values(drop);
}

/// The floor: pop and push on a bare `ArrayQueue` of one element.
#[divan::bench]
fn arrayqueue_pop_push(bencher: Bencher<'_, '_>) {
    let queue = ArrayQueue::new(1);
    queue.push(0u64).expect("room");
    bencher.bench_local(|| {
        let conn = queue.pop().expect("one element");
        queue.push(black_box(conn)).expect("room");
    });
}

/// Reference costs of the operations the fast path is made of, on this machine.
mod parts {
    use divan::{Bencher, black_box};
    use std::sync::Arc;

    /// `std::time::Instant::now()`: what `.no_runtime()` reads on checkout and on return.
    #[divan::bench]
    fn instant_now() -> std::time::Instant {
        std::time::Instant::now()
    }

    /// What `TokioRuntime::now` does: enter the runtime handle, read tokio's clock.
    #[divan::bench]
    fn tokio_handle_enter_now(bencher: Bencher<'_, '_>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let handle = runtime.handle().clone();
        bencher.bench_local(|| {
            let _entered = handle.enter();
            tokio::time::Instant::now().into_std()
        });
    }

    /// An `Arc` clone and its drop (every guard holds a clone of the pool's `Arc`).
    #[divan::bench]
    fn arc_clone_drop(bencher: Bencher<'_, '_>) {
        let shared = Arc::new(0u64);
        bencher.bench_local(|| drop(black_box(Arc::clone(&shared))));
    }

    /// `Event::notify_additional(1)` with nobody listening (every return does one).
    #[divan::bench]
    fn notify_additional_no_listener(bencher: Bencher<'_, '_>) {
        let event = event_listener::Event::new();
        bencher.bench_local(|| black_box(&event).notify_additional(1));
    }

    /// `std::thread::panicking()` (checked on every return).
    #[divan::bench]
    fn thread_panicking() -> bool {
        std::thread::panicking()
    }
}
