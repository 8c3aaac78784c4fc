//! get+drop of idle connections from several OS threads at once, without an executor: what
//! the pool costs when every core really works on it. The grid's multi-task cells mix that
//! with the executor's scheduling (how much of the work runs on both workers at once); here
//! each thread polls its own loop with a no-op waker. Prints the median ns per get+drop per thread
//! for our pool, for qp (`acquire_unchecked`, pre-warmed) and for the bare `ArrayQueue`
//! (pop+push) both are built on, runs interleaved.
//!
//! A fourth contender, "ArrayQueue + work", is the bare queue with a busy loop between pop and
//! push, calibrated on one thread to take as long per operation as our pool does. It separates
//! what contention costs the queue itself from what it costs the pool's logic: a tight
//! pop+push loop is several times cheaper under contention than the same queue with any work
//! in between (presumably because its cache lines then stay on one core for many operations
//! at a time), so the tight loop is a floor no pool that does work between the two can reach.
//!
//! Usage: `cargo run --release --example two_threads -- [THREADS] [OPS_PER_THREAD] [POOL_SIZE]`
//!
//! The threads are not pinned: on a machine with SMT they may share a physical core, which
//! shares its caches. Pin them to separate cores (`taskset -c 0,2 ...`) for the cross-core cost.

use connection_pool::{ConnectionPool, ValidationPolicy};
use connection_pool_peer_benches::{
    poll::ready,
    pools::{NoopManager, QpManager},
};
use crossbeam_queue::ArrayQueue;
use std::{hint::black_box, sync::Barrier, thread, time::Instant};

/// Runs `work(ops)` on `threads` threads started together; the slowest thread's ns per op.
fn timed(threads: usize, ops: u64, work: &(dyn Fn(u64) + Sync)) -> f64 {
    let barrier = Barrier::new(threads);
    let slowest = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    work(ops);
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("worker thread"))
            .max()
            .expect("at least one thread")
    });
    slowest.as_nanos() as f64 / ops as f64
}

/// A busy loop of `iterations` steps that the optimiser cannot remove: the stand-in for a
/// pool's own work between taking a connection and giving it back.
fn busy(iterations: u32) {
    for step in 0..iterations {
        black_box(step);
    }
}

/// The number of [`busy`] steps that makes `with_work(steps)` (ns per operation on one
/// thread) take `target` ns: a linear estimate from two probes, then two corrections, since a
/// noisy probe can be well off.
fn calibrate(target: f64, with_work: &dyn Fn(u32) -> f64) -> u32 {
    const PROBE: u32 = 256;
    let measure = |steps: u32| median((0..5).map(|_| with_work(steps)).collect());
    let base = measure(0);
    let per_step = (measure(PROBE) - base) / f64::from(PROBE);
    assert!(per_step > 0.0, "the busy loop took no time");
    let mut steps = ((target - base) / per_step).max(0.0);
    for _ in 0..2 {
        let error = target - measure(steps.round() as u32);
        steps = (steps + error / per_step).max(0.0);
    }
    steps.round() as u32
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |default: u64, what: &str| {
        args.next().map_or(default, |n| {
            n.parse().unwrap_or_else(|_| panic!("{what} is a number"))
        })
    };
    let threads = usize::try_from(number(2, "THREADS")).expect("THREADS fits usize");
    let ops = number(2_000_000, "OPS_PER_THREAD");
    let size = usize::try_from(number(16, "POOL_SIZE")).expect("POOL_SIZE fits usize");
    assert!(
        size >= threads,
        "POOL_SIZE must be at least THREADS: nobody may wait"
    );

    let pool = ConnectionPool::builder(NoopManager)
        .max_size(size)
        .validation(ValidationPolicy::Never)
        .wait_timeout(None)
        .no_runtime()
        .build()
        .expect("valid configuration");
    // Every contender starts with `size` idle connections: ours creates on demand, so check
    // out `size` at once and give them back (otherwise it would run on THREADS + 1 or so,
    // a different cache pattern from the full queues of the others).
    let warm: Vec<_> = (0..size)
        .map(|_| ready(pool.get_connection()).expect("the pool creates a connection"))
        .collect();
    drop(warm);
    assert_eq!(pool.status().idle, size);
    let queue = ArrayQueue::new(size);
    for n in 0..size {
        queue.push(n as u64).expect("room for every connection");
    }
    let qp = qp::Pool::new(QpManager, size);
    // Pre-warm qp with every connection (ours creates on demand and keeps them).
    let warm: Vec<_> = (0..size)
        .map(|_| ready(qp.acquire_unchecked()).expect("qp creates a connection"))
        .collect();
    drop(warm);
    let ours = |ops: u64| {
        for _ in 0..ops {
            let conn = ready(pool.get_connection()).expect("a connection is idle");
            black_box(&conn);
            drop(conn);
        }
    };
    let peer = |ops: u64| {
        for _ in 0..ops {
            let conn = ready(qp.acquire_unchecked()).expect("a connection is idle");
            black_box(&conn);
            drop(conn);
        }
    };
    let bare_with = |ops: u64, work: u32| {
        for _ in 0..ops {
            let conn = loop {
                if let Some(conn) = queue.pop() {
                    break conn;
                }
                std::hint::spin_loop();
            };
            black_box(&conn);
            busy(work);
            queue.push(conn).expect("room for the connection taken");
        }
    };
    let bare = |ops: u64| bare_with(ops, 0);

    // The work that makes the bare queue as slow as our pool on one thread.
    let ours_alone = median((0..7).map(|_| timed(1, ops, &ours)).collect());
    let work = calibrate(ours_alone, &|steps| timed(1, ops, &|n| bare_with(n, steps)));
    let worked = |ops: u64| bare_with(ops, work);
    let worked_alone = median((0..5).map(|_| timed(1, ops, &worked)).collect());

    let mut runs = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..7 {
        runs[0].push(timed(threads, ops, &ours));
        runs[1].push(timed(threads, ops, &peer));
        runs[2].push(timed(threads, ops, &bare));
        runs[3].push(timed(threads, ops, &worked));
    }
    let [ours, qp, bare, worked] = runs.map(median);
    println!(
        "{threads} threads, pool size {size}, {ops} get+drops each, median of 7 (ns per \
         get+drop): ours {ours:.1}, qp {qp:.1}, bare ArrayQueue {bare:.1}, ArrayQueue + work \
         {worked:.1}; ours/qp {:.2}, ours/ArrayQueue {:.2}, ours/(ArrayQueue + work) {:.2}",
        ours / qp,
        ours / bare,
        ours / worked,
    );
    println!(
        "one thread: ours {ours_alone:.1}, ArrayQueue + work {worked_alone:.1} ns per \
         get+drop ({work} busy-loop steps between pop and push)"
    );
}
