//! get+drop of idle connections from several OS threads at once, without an executor: what
//! the pool costs when every core really works on it. The grid's multi-task cells mix that
//! with the scheduler's luck (tokio sometimes runs all tasks on one worker); here each
//! thread polls its own loop with a no-op waker. Prints the median ns per get+drop per thread
//! for our pool, for qp (`acquire_unchecked`, pre-warmed) and for the bare `ArrayQueue`
//! (pop+push) both are built on, runs interleaved.
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
    let bare = |ops: u64| {
        for _ in 0..ops {
            let conn = loop {
                if let Some(conn) = queue.pop() {
                    break conn;
                }
                std::hint::spin_loop();
            };
            black_box(&conn);
            queue.push(conn).expect("room for the connection taken");
        }
    };

    let (mut ours_runs, mut qp_runs, mut bare_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        ours_runs.push(timed(threads, ops, &ours));
        qp_runs.push(timed(threads, ops, &peer));
        bare_runs.push(timed(threads, ops, &bare));
    }
    let (ours, qp, bare) = (median(ours_runs), median(qp_runs), median(bare_runs));
    println!(
        "{threads} threads, pool size {size}, {ops} get+drops each, median of 7 (ns per \
         get+drop): ours {ours:.1}, qp {qp:.1}, bare ArrayQueue {bare:.1}; ours/qp {:.2}, \
         ours/ArrayQueue {:.2}",
        ours / qp,
        ours / bare,
    );
}
