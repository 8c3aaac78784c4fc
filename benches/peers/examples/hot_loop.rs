//! A single-thread loop of get+drop (or try_get+drop) of one idle connection, for profilers:
//! `perf record ./target/release/examples/hot_loop 20000000` shows where the fast path spends
//! its time without an executor in the picture. Prints ns per operation.
//!
//! Usage: `cargo run --release --example hot_loop -- [ITERATIONS] [get|try]`

use connection_pool::{ConnectionPool, ValidationPolicy};
use connection_pool_peer_benches::{poll::ready, pools::NoopManager};
use std::{hint::black_box, time::Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args
        .next()
        .map_or(50_000_000, |n| n.parse().expect("ITERATIONS is a number"));
    let try_get = match args.next().as_deref() {
        None | Some("get") => false,
        Some("try") => true,
        Some(other) => panic!("unknown mode {other:?}: use get or try"),
    };
    let pool = ConnectionPool::builder(NoopManager)
        .max_size(4)
        .validation(ValidationPolicy::Never)
        .wait_timeout(None)
        .no_runtime()
        .build()
        .expect("valid configuration");
    drop(ready(pool.get_connection()).expect("the first connection is created"));
    let start = Instant::now();
    for _ in 0..iterations {
        let conn = if try_get {
            pool.try_get_connection().expect("a connection is idle")
        } else {
            ready(pool.get_connection()).expect("a connection is idle")
        };
        black_box(&conn);
        drop(conn);
    }
    let mode = if try_get { "try_get+drop" } else { "get+drop" };
    println!(
        "{mode}: {:.1} ns per operation",
        start.elapsed().as_nanos() as f64 / iterations as f64
    );
}
