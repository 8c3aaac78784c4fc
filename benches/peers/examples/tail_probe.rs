//! What the tail benchmark's percentiles are made of: the `tail` scenario (1,000 tasks on 50
//! connections, each holding its connection 1 ms with a tokio sleep) with every checkout
//! ticketed and every hold timed.
//!
//! * Order: each request takes a ticket from one counter before it calls the pool, and each
//!   serve one from another as the connection arrives. In a first-come, first-served pool the
//!   two numbers of a checkout differ only by the few requests that raced it between the ticket
//!   and the pool's own queue; a pool that lets newcomers barge shows large differences.
//! * Holds: from the connection in hand to its return, which is the sleep plus however long
//!   the task waited to be polled after the timer fired. Holds over 3 ms that come in a cluster
//!   (many within 2 ms of each other) mean the whole process stalled; every wait that spans a
//!   stall grows by its length, so the tail's p99 and p99.9 move with the number of stalls.
//!
//! The first 500 ms of each run are left out (the tasks start together). Runs are interleaved
//! (A B A B ...).
//!
//! Usage: `cargo run --release --example tail_probe -- [POOLS] [ROUNDS] [SECS]`, where
//! `POOLS` is a comma-separated list of `ours`, `deadpool`, `mobc`, `mutex+sem` and the others
//! the `tail` binary knows (default `ours,deadpool`), `ROUNDS` defaults to 3 and `SECS` to 4.

use connection_pool_peer_benches::{
    exec::{ExecKind, Limits, Outcome, Spawner, run_limited},
    pools::{BenchPool, Kind, PoolBody, PoolOpts, prewarm, with_pool},
    stats::percentile,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const TASKS: usize = 1000;
const SIZE: usize = 50;
const HOLD: Duration = Duration::from_millis(1);
const WAIT_TIMEOUT: Duration = Duration::from_secs(5);
const SKIP: Duration = Duration::from_millis(500);
/// A hold longer than this is late: the sleep fired at least one timer tick behind.
const LATE_HOLD: Duration = Duration::from_micros(3_050);
/// Late holds closer than this to the previous one belong to the same stall.
const STALL_GAP: Duration = Duration::from_millis(2);
/// A stall that delayed at least this many holds at once.
const STALL_MIN_HOLDS: usize = 5;

/// What one run recorded, after the first `SKIP`.
#[derive(Debug, Default)]
struct Probe {
    /// How far the serve ticket is from the request ticket, per checkout.
    order_lags: Vec<u64>,
    /// Hold per checkout, ns.
    holds: Vec<u64>,
    /// Wait per checkout, ns.
    waits: Vec<u64>,
    /// When each late hold began, µs after `SKIP`.
    late_at: Vec<u64>,
    timeouts: usize,
}

impl Probe {
    fn merge(&mut self, other: Self) {
        self.order_lags.extend(other.order_lags);
        self.holds.extend(other.holds);
        self.waits.extend(other.waits);
        self.late_at.extend(other.late_at);
        self.timeouts += other.timeouts;
    }
}

struct ProbeBody {
    spawner: Spawner,
    secs: f64,
}

impl PoolBody<Probe> for ProbeBody {
    async fn run<P: BenchPool>(self, pool: Arc<P>) -> Probe {
        prewarm(&pool, SIZE, &self.spawner).await;
        let requested = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let begin = Instant::now();
        let counted_from = begin + SKIP;
        let end = begin + Duration::from_secs_f64(self.secs);
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let pool = Arc::clone(&pool);
                let requested = Arc::clone(&requested);
                let served = Arc::clone(&served);
                self.spawner.spawn(async move {
                    let mut mine = Probe::default();
                    while Instant::now() < end {
                        let start = Instant::now();
                        let request = requested.fetch_add(1, Ordering::SeqCst);
                        let mut serve = None;
                        let got = pool
                            .checkout_then(|| {
                                serve =
                                    Some((served.fetch_add(1, Ordering::SeqCst), Instant::now()));
                                tokio::time::sleep(HOLD)
                            })
                            .await;
                        if start < counted_from {
                            continue;
                        }
                        let Some((serve, in_hand)) = serve.filter(|_| got) else {
                            mine.timeouts += 1;
                            continue;
                        };
                        let hold = in_hand.elapsed();
                        mine.order_lags.push(serve.abs_diff(request) as u64);
                        mine.holds.push(hold.as_nanos() as u64);
                        mine.waits.push((in_hand - start).as_nanos() as u64);
                        if hold > LATE_HOLD {
                            mine.late_at
                                .push((in_hand - counted_from).as_micros() as u64);
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = Probe::default();
        for task in tasks {
            all.merge(task.await);
        }
        all
    }
}

/// Groups the late holds' start times into stalls: (start in ms, holds delayed).
fn stalls(late_at: &mut [u64]) -> Vec<(u64, usize)> {
    late_at.sort_unstable();
    let gap = STALL_GAP.as_micros() as u64;
    let mut groups: Vec<(u64, u64, usize)> = Vec::new();
    for &at in late_at.iter() {
        match groups.last_mut() {
            Some((_, last, count)) if at - *last < gap => {
                *last = at;
                *count += 1;
            }
            _ => groups.push((at, at, 1)),
        }
    }
    groups
        .into_iter()
        .filter(|&(_, _, count)| count >= STALL_MIN_HOLDS)
        .map(|(first, _, count)| (first / 1000, count))
        .collect()
}

fn report(kind: Kind, round: usize, mut probe: Probe) {
    if probe.holds.is_empty() {
        println!(
            "round {round} {:>10}: no checkout finished ({} timeouts)",
            kind.name(),
            probe.timeouts
        );
        return;
    }
    probe.order_lags.sort_unstable();
    probe.holds.sort_unstable();
    probe.waits.sort_unstable();
    let n = probe.holds.len();
    let ms = |ns: u64| ns as f64 / 1e6;
    let at = |sorted: &[u64], p: f64| percentile(sorted, p).expect("checked non-empty above");
    let late = probe.late_at.len();
    let stalls = stalls(&mut probe.late_at);
    println!(
        "round {round} {:>10}: {n} checkouts, {} timeouts; |serve - request| p99 {} p99.9 {} \
         max {}; hold mean {:.3} ms, p99.9 {:.2} ms, late (> 3 ms) {late}; wait p50 {:.2} \
         p99 {:.2} p99.9 {:.2} ms",
        kind.name(),
        probe.timeouts,
        at(&probe.order_lags, 99.0),
        at(&probe.order_lags, 99.9),
        probe.order_lags[n - 1],
        ms(probe.holds.iter().sum::<u64>() / n as u64),
        ms(at(&probe.holds, 99.9)),
        ms(at(&probe.waits, 50.0)),
        ms(at(&probe.waits, 99.0)),
        ms(at(&probe.waits, 99.9)),
    );
    println!("{:>18}  stalls (start ms, holds delayed): {stalls:?}", "");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let kinds: Vec<Kind> = args
        .next()
        .unwrap_or_else(|| "ours,deadpool".to_owned())
        .split(',')
        .map(|name| Kind::parse(name).unwrap_or_else(|| panic!("unknown pool {name:?}")))
        .collect();
    let rounds: usize = args
        .next()
        .map_or(3, |n| n.parse().expect("ROUNDS is a number"));
    let secs: f64 = args
        .next()
        .map_or(4.0, |s| s.parse().expect("SECS is a number"));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "tail_probe: {TASKS} tasks on {SIZE} connections, hold {HOLD:?}, {secs} s per run \
         (first {SKIP:?} left out), tokio with {threads} workers"
    );
    let mut totals = vec![(0usize, 0usize); kinds.len()];
    for round in 1..=rounds {
        for (index, &kind) in kinds.iter().enumerate() {
            let opts = PoolOpts {
                size: SIZE,
                wait_timeout: Some(WAIT_TIMEOUT),
            };
            // A fixed-time run reports no progress: it is judged by its total time alone.
            let limit = Duration::from_secs_f64(secs) + Duration::from_secs(10);
            let limits = Limits {
                stall: limit,
                total: limit,
            };
            let outcome = run_limited(
                ExecKind::Tokio,
                threads,
                limits,
                move |spawner, _| async move {
                    let body = ProbeBody {
                        spawner: spawner.clone(),
                        secs,
                    };
                    with_pool(kind, opts, &spawner, body).await
                },
            );
            match outcome {
                Outcome::Done(probe) => {
                    totals[index].0 += probe.late_at.len();
                    totals[index].1 += 1;
                    report(kind, round, probe);
                }
                Outcome::Hang | Outcome::Overran => {
                    println!("round {round} {:>10}: HANG", kind.name())
                }
                Outcome::Panic(message) => {
                    println!("round {round} {:>10}: PANIC {message}", kind.name())
                }
            }
        }
    }
    for (kind, (late, runs)) in kinds.iter().zip(totals) {
        println!("{:>10}: {late} late holds in {runs} runs", kind.name());
    }
}
