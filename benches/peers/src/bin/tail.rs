//! Tail latency in the shape of bb8 issue #243: many more tasks than connections (1,000 on
//! 50), each holding its connection about 1 ms (`tokio::time::sleep`), for a fixed time.
//! Reports, per pool, the p50 / p99 / p99.9 / max wait for a connection, the checkouts done
//! and the wait timeouts. Fair pools keep the tail close to the median; a pool that lets
//! newcomers barge past waiters may win throughput and lose here.
//!
//! A wait is measured from just before the checkout call to the moment the connection is in
//! hand; a checkout that times out counts as a wait of however long it took (and as a
//! timeout), so timing out never hides a tail. Waits that end in the first `--warmup-ms` of
//! a run (all 1,000 tasks arriving at once) are not recorded; a wait that began then and
//! ends later is, whole, so that a task starved from the start still shows. The pools run
//! in an order shuffled each round from `--seed`, so that none always runs first or right
//! after the same pool.

use connection_pool_peer_benches::{
    args::Args,
    exec::{ExecKind, Limits, Outcome, Spawner, quiet_panics, run_limited},
    machine,
    pools::{BenchPool, Kind, PoolBody, PoolOpts, SharedInstant, prewarm, with_pool},
    stats::percentile,
};
use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const USAGE: &str = "\
tail: wait-time percentiles with many tasks on few connections (bb8 #243)

USAGE: cargo run --release --bin tail -- [OPTIONS]

OPTIONS:
  --quick             short run: --secs 1 (explicit values win)
  --secs S            how long each pool is driven [5]
  --tasks N           concurrent tasks [1000]
  --size N            pool size [50]
  --hold-ms MS        how long each checkout holds its connection (tokio sleep) [1]
  --wait-timeout-ms MS  every pool's wait timeout (qp has none: tokio::time::timeout) [5000]
  --rounds N          repeat the whole set, interleaved, and pool the waits [1]
  --warmup-ms MS      waits ending this early in a run are not recorded [500]
  --seed N            each round's order of the pools is shuffled from this [1]
  --pools LIST        ours,deadpool,bb8,mobc,qp,arrayqueue,mutex+sem [all]
  --hang-secs S       a run not done this long after its end is reported as HANG [10]
  --threads N         tokio worker threads [available CPUs]
  --out DIR           where tail.csv and tail.txt go [benches/peers/results]

The environment variable PEERS_QUICK=1 is the same as --quick.";

#[derive(Debug)]
struct Config {
    secs: f64,
    tasks: usize,
    size: usize,
    hold: Duration,
    wait_timeout: Duration,
    rounds: usize,
    warmup: Duration,
    seed: u64,
    pools: Vec<Kind>,
    hang: Duration,
    threads: usize,
    out: PathBuf,
}

impl Config {
    fn from_args() -> Self {
        let args = Args::parse(USAGE, &["quick"]);
        let quick = args.flag("quick") || std::env::var("PEERS_QUICK").is_ok_and(|v| v == "1");
        Self {
            secs: args.get(USAGE, "secs", if quick { 1.0 } else { 5.0 }),
            tasks: args.get(USAGE, "tasks", 1000usize).max(1),
            size: args.get(USAGE, "size", 50usize).max(1),
            hold: Duration::from_secs_f64(args.get(USAGE, "hold-ms", 1.0) / 1e3),
            wait_timeout: Duration::from_secs_f64(args.get(USAGE, "wait-timeout-ms", 5000.0) / 1e3),
            rounds: args.get(USAGE, "rounds", 1usize).max(1),
            warmup: Duration::from_secs_f64(args.get(USAGE, "warmup-ms", 500.0) / 1e3),
            seed: args.get(USAGE, "seed", 1),
            pools: args.list(USAGE, "pools", Kind::ALL.to_vec(), Kind::parse),
            hang: Duration::from_secs_f64(args.get(USAGE, "hang-secs", 10.0)),
            threads: args.get(USAGE, "threads", machine::cpus()).max(1),
            out: PathBuf::from(args.text("out", concat!(env!("CARGO_MANIFEST_DIR"), "/results"))),
        }
    }
}

/// What one run of one pool produced.
#[derive(Debug, Default)]
struct Waits {
    /// Every wait, ns (timed-out checkouts included).
    waits: Vec<u64>,
    /// Checkouts that timed out.
    timeouts: usize,
    /// From the end of the warm-up to the end of the last task.
    elapsed: Duration,
}

struct TailBody {
    spawner: Spawner,
    size: usize,
    tasks: usize,
    secs: f64,
    warmup: Duration,
    hold: Duration,
}

impl PoolBody<Waits> for TailBody {
    async fn run<P: BenchPool>(self, pool: Arc<P>) -> Waits {
        let flavor = self.spawner.flavor();
        prewarm(&pool, self.size, &self.spawner).await;
        let end: SharedInstant = Arc::new(OnceLock::new());
        let recorded_from: SharedInstant = Arc::new(OnceLock::new());
        let ready = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let workers: Vec<_> = (0..self.tasks)
            .map(|_| {
                let pool = Arc::clone(&pool);
                let end = Arc::clone(&end);
                let recorded_from = Arc::clone(&recorded_from);
                let ready = Arc::clone(&ready);
                let gate = Arc::clone(&gate);
                let hold = self.hold;
                self.spawner.spawn(async move {
                    ready.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.expect("never closed").forget();
                    let end = *end.get().expect("set before the gate opens");
                    let recorded_from = *recorded_from.get().expect("set before the gate opens");
                    let mut mine = Waits::default();
                    while Instant::now() < end {
                        let start = Instant::now();
                        let mut waited = None;
                        let got = pool
                            .checkout_then(|| {
                                waited = Some(start.elapsed());
                                tokio::time::sleep(hold)
                            })
                            .await;
                        let wait = waited.unwrap_or_else(|| start.elapsed());
                        if start + wait < recorded_from {
                            continue;
                        }
                        mine.waits.push(wait.as_nanos() as u64);
                        if !got {
                            mine.timeouts += 1;
                        }
                    }
                    mine
                })
            })
            .collect();
        while ready.load(Ordering::SeqCst) < self.tasks {
            flavor.yield_now().await;
        }
        let start = Instant::now();
        end.set(start + Duration::from_secs_f64(self.secs))
            .expect("set once");
        recorded_from.set(start + self.warmup).expect("set once");
        gate.add_permits(self.tasks);
        let mut all = Waits::default();
        for worker in workers {
            let mine = worker.await;
            all.waits.extend(mine.waits);
            all.timeouts += mine.timeouts;
        }
        all.elapsed = start.elapsed().saturating_sub(self.warmup);
        all
    }
}

#[derive(Debug)]
struct Row {
    kind: Kind,
    status: String,
    waits: Vec<u64>,
    timeouts: usize,
    elapsed: Duration,
}

fn main() {
    let config = Config::from_args();
    quiet_panics();
    let machine = machine::describe();
    eprintln!(
        "tail: {machine}; {} tasks on {} connections, hold {:?}, {} s per pool, wait timeout \
         {:?}, {} round(s)",
        config.tasks, config.size, config.hold, config.secs, config.wait_timeout, config.rounds
    );
    let mut rows: Vec<Row> = config
        .pools
        .iter()
        .map(|&kind| Row {
            kind,
            status: "ok".to_owned(),
            waits: Vec::new(),
            timeouts: 0,
            elapsed: Duration::ZERO,
        })
        .collect();
    // A fixed-time run reports no progress: it is judged by its total time alone.
    let limit = Duration::from_secs_f64(config.secs) + config.hang;
    let limits = Limits {
        stall: limit,
        total: limit,
    };
    let mut rng = fastrand::Rng::with_seed(config.seed);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for round in 0..config.rounds {
        rng.shuffle(&mut order);
        for &index in &order {
            let row = &mut rows[index];
            if row.status != "ok" {
                continue;
            }
            let (kind, size, tasks, secs, warmup, hold) = (
                row.kind,
                config.size,
                config.tasks,
                config.secs,
                config.warmup,
                config.hold,
            );
            let opts = PoolOpts {
                size,
                wait_timeout: Some(config.wait_timeout),
            };
            let outcome = run_limited(
                ExecKind::Tokio,
                config.threads,
                limits,
                move |spawner, _progress| async move {
                    let body = TailBody {
                        spawner: spawner.clone(),
                        size,
                        tasks,
                        secs,
                        warmup,
                        hold,
                    };
                    with_pool(kind, opts, &spawner, body).await
                },
            );
            match outcome {
                Outcome::Done(waits) => {
                    eprintln!(
                        "round {}: {kind}: {} checkouts, {} timeouts",
                        round + 1,
                        waits.waits.len() - waits.timeouts,
                        waits.timeouts
                    );
                    row.waits.extend(waits.waits);
                    row.timeouts += waits.timeouts;
                    row.elapsed += waits.elapsed;
                }
                Outcome::Hang | Outcome::Overran => {
                    eprintln!("round {}: {kind}: HANG", round + 1);
                    row.status = "hang".to_owned();
                }
                Outcome::Panic(message) => {
                    eprintln!("round {}: {kind}: PANIC {message}", round + 1);
                    row.status = format!("panic: {message}");
                }
            }
        }
    }
    for row in &mut rows {
        row.waits.sort_unstable();
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Machine: {machine}. tokio, {} worker threads; {} tasks on {} connections, each holding \
         its connection {:?} (tokio sleep); {} s per pool x {} round(s), the pools in a \
         shuffled order each round (seed {}), waits that ended in the first {:?} of a run \
         not recorded; wait timeout {:?}.",
        config.threads,
        config.tasks,
        config.size,
        config.hold,
        config.secs,
        config.rounds,
        config.seed,
        config.warmup,
        config.wait_timeout
    );
    let _ = writeln!(
        report,
        "{:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "pool", "checkouts", "per sec", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "timeouts"
    );
    let ms = |ns: Option<u64>| ns.map_or("-".to_owned(), |ns| format!("{:.2}", ns as f64 / 1e6));
    for row in &rows {
        if row.status != "ok" {
            let _ = writeln!(
                report,
                "{:>10} {}",
                row.kind.name(),
                row.status.to_uppercase()
            );
            continue;
        }
        let checkouts = row.waits.len() - row.timeouts;
        let _ = writeln!(
            report,
            "{:>10} {:>10} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}",
            row.kind.name(),
            checkouts,
            checkouts as f64 / row.elapsed.as_secs_f64().max(1e-9),
            ms(percentile(&row.waits, 50.0)),
            ms(percentile(&row.waits, 99.0)),
            ms(percentile(&row.waits, 99.9)),
            ms(row.waits.last().copied()),
            row.timeouts
        );
    }
    print!("{report}");

    let mut csv = String::from(
        "pool,status,checkouts,checkouts_per_sec,p50_ms,p99_ms,p999_ms,max_ms,timeouts,\
         secs,rounds,tasks,pool_size,hold_ms,wait_timeout_ms,warmup_ms,seed\n",
    );
    for row in &rows {
        let checkouts = row.waits.len() - row.timeouts;
        let _ = writeln!(
            csv,
            "{},{},{},{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            row.kind,
            machine::csv_field(&row.status),
            checkouts,
            checkouts as f64 / row.elapsed.as_secs_f64().max(1e-9),
            ms(percentile(&row.waits, 50.0)),
            ms(percentile(&row.waits, 99.0)),
            ms(percentile(&row.waits, 99.9)),
            ms(row.waits.last().copied()),
            row.timeouts,
            config.secs,
            config.rounds,
            config.tasks,
            config.size,
            config.hold.as_secs_f64() * 1e3,
            config.wait_timeout.as_secs_f64() * 1e3,
            config.warmup.as_secs_f64() * 1e3,
            config.seed,
        );
    }
    fs::create_dir_all(&config.out).expect("create the output directory");
    for (name, text) in [("tail.txt", &report), ("tail.csv", &csv)] {
        let path = config.out.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    }
}
