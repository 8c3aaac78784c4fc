//! The get+drop grid: median ns per get+drop for every contender, pool size and task count,
//! on tokio and on smol, plain and "hold" (each task yields once while holding the
//! connection, so that tasks really wait and the wake-up path is measured).
//!
//! Within a cell the contenders are interleaved for `--reps` repetitions, each repetition in
//! an order shuffled from `--seed` (A B C, C A B, B C A, ...): on this VM a run's speed
//! seemed to depend on which contender ran just before it, and a rotation keeps each
//! contender's predecessor, so no contender keeps one place or one predecessor (`grid.csv`
//! records each run's predecessor). Every run gets a fresh executor and a fresh, pre-warmed
//! pool. A run in which no
//! get+drop completes for `--hang-secs` is cancelled and the contender is marked HANG for that
//! cell; one still making progress after `--max-secs` is cancelled and marked SLOW.

use connection_pool_peer_benches::{
    args::Args,
    exec::{ExecKind, Limits, Outcome, Progress, Spawner, quiet_panics, run_limited},
    machine,
    pools::{BenchPool, Kind, PoolBody, PoolOpts, Timed, prewarm, timed_get_drop, with_pool},
    stats::{geomean, median},
};
use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

const USAGE: &str = "\
grid: median ns per get+drop, contenders side by side

USAGE: cargo run --release --bin grid -- [OPTIONS]

OPTIONS (lists are comma-separated):
  --quick             short run: --ops 20000 --reps 3 (explicit values win)
  --ops N             get+drops per run, split over the tasks [200000]
  --reps N            repetitions per contender and cell [5]
  --sizes LIST        pool sizes [4,16,64]
  --tasks LIST        task counts [1,4,16,64,256,1024]
  --pools LIST        ours,deadpool,bb8,mobc,qp,arrayqueue,mutex+sem [all]
  --exec LIST         tokio,smol [tokio,smol]
  --modes LIST        plain,hold [plain,hold]
  --hang-secs S       a run in which no get+drop completes for S s is cancelled: HANG [10]
  --max-secs S        a run still going after S s is cancelled: SLOW [120]
  --wait-timeout S    every pool's wait timeout, by its own mechanism [none; bb8 needs one: 1 h];
                      the hang limit is raised to S + 5 if below, so that a timeout shows
  --seed N            the contenders' order in each repetition is shuffled from this [1]
  --threads N         executor worker threads [available CPUs]
  --out DIR           where grid.csv, grid.json and grid.txt go [benches/peers/results]

The environment variable PEERS_QUICK=1 is the same as --quick.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Plain,
    Hold,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Hold => "hold",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "plain" => Some(Self::Plain),
            "hold" => Some(Self::Hold),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Config {
    ops: usize,
    reps: usize,
    sizes: Vec<usize>,
    tasks: Vec<usize>,
    pools: Vec<Kind>,
    execs: Vec<ExecKind>,
    modes: Vec<Mode>,
    limits: Limits,
    /// Every contender's wait timeout; `None`: none (bb8 gets an hour, it cannot go without).
    wait_timeout: Option<Duration>,
    threads: usize,
    /// Seeds the shuffled order of the contenders in each repetition.
    seed: u64,
    out: PathBuf,
}

impl Config {
    fn from_args() -> Self {
        let args = Args::parse(USAGE, &["quick"]);
        let quick = args.flag("quick") || std::env::var("PEERS_QUICK").is_ok_and(|v| v == "1");
        let positive = |text: &str| text.parse::<usize>().ok().filter(|&n| n > 0);
        let wait_timeout = match args.get(USAGE, "wait-timeout", 0.0) {
            secs if secs > 0.0 => Some(Duration::from_secs_f64(secs)),
            _ => None,
        };
        // A pool that times out must show as timing out, not as stalled.
        let stall = Duration::from_secs_f64(args.get(USAGE, "hang-secs", 10.0))
            .max(wait_timeout.map_or(Duration::ZERO, |t| t + Duration::from_secs(5)));
        Self {
            ops: args.get(USAGE, "ops", if quick { 20_000 } else { 200_000 }),
            reps: args.get(USAGE, "reps", if quick { 3 } else { 5 }).max(1),
            sizes: args.list(USAGE, "sizes", vec![4, 16, 64], positive),
            tasks: args.list(USAGE, "tasks", vec![1, 4, 16, 64, 256, 1024], positive),
            pools: args.list(USAGE, "pools", Kind::ALL.to_vec(), Kind::parse),
            execs: args.list(
                USAGE,
                "exec",
                vec![ExecKind::Tokio, ExecKind::Smol],
                ExecKind::parse,
            ),
            modes: args.list(USAGE, "modes", vec![Mode::Plain, Mode::Hold], Mode::parse),
            limits: Limits {
                stall,
                total: Duration::from_secs_f64(args.get(USAGE, "max-secs", 120.0)),
            },
            wait_timeout,
            threads: args.get(USAGE, "threads", machine::cpus()).max(1),
            seed: args.get(USAGE, "seed", 1),
            out: PathBuf::from(args.text("out", concat!(env!("CARGO_MANIFEST_DIR"), "/results"))),
        }
    }
}

/// How a contender fared in one cell.
#[derive(Clone, Debug)]
enum Status {
    Ok,
    /// No get+drop completed for the stall limit.
    Hang,
    /// Still progressing at the total limit.
    Slow,
    Panic(String),
    /// It panicked in the probe run on this executor, so it was not run in the grid.
    Unsupported(String),
}

impl Status {
    fn name(&self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Hang => "hang",
            Self::Slow => "slow",
            Self::Panic(_) => "panic",
            Self::Unsupported(_) => "unsupported",
        }
    }

    fn note(&self) -> &str {
        match self {
            Self::Ok | Self::Hang | Self::Slow => "",
            Self::Panic(message) | Self::Unsupported(message) => message,
        }
    }
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    status: Status,
    /// ns per get+drop, one per finished run.
    samples: Vec<f64>,
    /// For each sample, the largest share of its get+drops that one thread did.
    top_thread_shares: Vec<f64>,
    /// For each sample, the contender that ran just before it (`None`: nothing before it).
    predecessors: Vec<Option<Kind>>,
}

impl Entry {
    /// The median, only when every repetition finished.
    fn median(&self) -> Option<f64> {
        match self.status {
            Status::Ok => median(&self.samples),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Cell {
    exec: ExecKind,
    mode: Mode,
    size: usize,
    tasks: usize,
    per_task: usize,
    entries: Vec<Entry>,
}

impl Cell {
    fn median(&self, kind: Kind) -> Option<f64> {
        self.entries
            .iter()
            .find(|e| e.kind == kind)
            .and_then(Entry::median)
    }

    /// The fastest real peer (not ours, not a baseline) that finished, with its median.
    fn best_peer(&self) -> Option<(Kind, f64)> {
        self.entries
            .iter()
            .filter(|e| e.kind.is_peer())
            .filter_map(|e| e.median().map(|m| (e.kind, m)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    fn ours_over_best_peer(&self) -> Option<(Kind, f64)> {
        let ours = self.median(Kind::Ours)?;
        self.best_peer().map(|(kind, m)| (kind, ours / m))
    }
}

/// Pre-warm, then the timed get+drop run, for whichever pool `with_pool` builds.
struct GetDrop {
    spawner: Spawner,
    progress: Progress,
    size: usize,
    tasks: usize,
    per_task: usize,
    hold: bool,
}

impl PoolBody<Timed> for GetDrop {
    async fn run<P: BenchPool>(self, pool: Arc<P>) -> Timed {
        prewarm(&pool, self.size, &self.spawner).await;
        timed_get_drop(
            &pool,
            &self.spawner,
            &self.progress,
            self.tasks,
            self.per_task,
            self.hold,
        )
        .await
    }
}

struct Run {
    exec: ExecKind,
    kind: Kind,
    size: usize,
    tasks: usize,
    per_task: usize,
    hold: bool,
}

impl Run {
    fn go(&self, config: &Config) -> Outcome<Timed> {
        let &Self {
            kind,
            size,
            tasks,
            per_task,
            hold,
            ..
        } = self;
        let wait_timeout = config.wait_timeout;
        run_limited(
            self.exec,
            config.threads,
            config.limits,
            move |spawner, progress| async move {
                let opts = PoolOpts { size, wait_timeout };
                let body = GetDrop {
                    spawner: spawner.clone(),
                    progress,
                    size,
                    tasks,
                    per_task,
                    hold,
                };
                with_pool(kind, opts, &spawner, body).await
            },
        )
    }
}

fn main() {
    let config = Config::from_args();
    quiet_panics();
    let started = Instant::now();
    let machine = machine::describe();
    eprintln!(
        "grid: {machine}; {} worker threads, {} get+drops per run, {} reps, hang after {:?} \
         without progress, slow after {:?}",
        config.threads, config.ops, config.reps, config.limits.stall, config.limits.total
    );

    let mut cells = Vec::new();
    let mut previous = None;
    for &exec in &config.execs {
        let unsupported = probe(&config, exec);
        for &mode in &config.modes {
            for &size in &config.sizes {
                for &tasks in &config.tasks {
                    let cell = measure_cell(
                        &config,
                        exec,
                        mode,
                        size,
                        tasks,
                        &unsupported,
                        &mut previous,
                    );
                    eprintln!("{}", progress_line(&cell));
                    cells.push(cell);
                }
            }
        }
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "Machine: {machine}. {} worker threads; {} get+drops per run (split over the tasks); \
         median of {} interleaved runs, in an order shuffled each time (seed {}), ns per \
         get+drop; wait timeout {}.",
        config.threads,
        config.ops,
        config.reps,
        config.seed,
        config
            .wait_timeout
            .map_or("none (bb8: 1 h, it needs one)".to_owned(), |t| format!(
                "{t:?} for every pool"
            )),
    );
    for &exec in &config.execs {
        for &mode in &config.modes {
            let group: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.exec == exec && c.mode == mode)
                .collect();
            report.push('\n');
            report.push_str(&table(&config, exec, mode, &group));
            report.push_str(&summary(&config, mode, &group));
        }
    }
    report.push_str(&unsupported_notes(&cells));
    print!("{report}");

    fs::create_dir_all(&config.out).expect("create the output directory");
    let write = |name: &str, text: String| {
        let path = config.out.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("wrote {}", path.display());
    };
    write("grid.txt", report.clone());
    write("grid.csv", csv(&cells));
    write("grid.json", json(&config, &machine, &cells));
    eprintln!("grid: done in {:.0?}", started.elapsed());
}

/// One tiny run per contender on `exec`; the ones that panic (a pool that needs another
/// runtime) are left out of the grid, with the panic message as the reason.
fn probe(config: &Config, exec: ExecKind) -> Vec<(Kind, String)> {
    let mut unsupported = Vec::new();
    for &kind in &config.pools {
        let run = Run {
            exec,
            kind,
            size: 4,
            tasks: 2,
            per_task: 8,
            hold: true,
        };
        match run.go(config) {
            Outcome::Done(_) => {}
            Outcome::Panic(message) => {
                eprintln!("{kind} does not run on {}: {message}", exec.name());
                unsupported.push((kind, message));
            }
            Outcome::Hang | Outcome::Overran => {
                eprintln!("{kind} did not finish the probe run on {}", exec.name());
            }
        }
    }
    unsupported
}

/// Runs one cell; `previous` is the contender that ran last (in this cell or the one before).
fn measure_cell(
    config: &Config,
    exec: ExecKind,
    mode: Mode,
    size: usize,
    tasks: usize,
    unsupported: &[(Kind, String)],
    previous: &mut Option<Kind>,
) -> Cell {
    let per_task = (config.ops / tasks).max(1);
    let mut entries: Vec<Entry> = config
        .pools
        .iter()
        .map(|&kind| Entry {
            kind,
            status: match unsupported.iter().find(|(k, _)| *k == kind) {
                Some((_, message)) => Status::Unsupported(message.clone()),
                None => Status::Ok,
            },
            samples: Vec::new(),
            top_thread_shares: Vec::new(),
            predecessors: Vec::new(),
        })
        .collect();
    let ops = (per_task * tasks) as f64;
    let contenders = entries.len();
    // One stream per cell, so that a rerun of some cells (--sizes, --tasks) repeats their
    // orders.
    let cell_key = [exec.name(), mode.name()]
        .iter()
        .flat_map(|name| name.bytes())
        .fold((size as u64) << 32 ^ tasks as u64, |key, byte| {
            key.rotate_left(5) ^ u64::from(byte)
        });
    let mut rng = fastrand::Rng::with_seed(config.seed ^ cell_key);
    let mut order: Vec<usize> = (0..contenders).collect();
    for _ in 0..config.reps {
        // Interleaved: every contender once, then again, so drift hits them all alike; in a
        // new order each time, so that neither a place nor a predecessor sticks.
        rng.shuffle(&mut order);
        for &index in &order {
            let entry = &mut entries[index];
            if !matches!(entry.status, Status::Ok) {
                continue;
            }
            let run = Run {
                exec,
                kind: entry.kind,
                size,
                tasks,
                per_task,
                hold: mode == Mode::Hold,
            };
            match run.go(config) {
                Outcome::Done(timed) => {
                    entry.samples.push(timed.elapsed.as_nanos() as f64 / ops);
                    entry.top_thread_shares.push(timed.top_thread_share);
                    entry.predecessors.push(*previous);
                }
                Outcome::Hang => entry.status = Status::Hang,
                Outcome::Overran => entry.status = Status::Slow,
                Outcome::Panic(message) => entry.status = Status::Panic(message),
            }
            *previous = Some(entry.kind);
        }
    }
    Cell {
        exec,
        mode,
        size,
        tasks,
        per_task,
        entries,
    }
}

fn show(entry: &Entry) -> String {
    match (&entry.status, entry.median()) {
        (Status::Ok, Some(m)) => format_ns(m),
        (Status::Hang, _) => "HANG".to_owned(),
        (Status::Slow, _) => "SLOW".to_owned(),
        (Status::Panic(_), _) => "PANIC".to_owned(),
        (Status::Unsupported(_), _) => "n/a".to_owned(),
        (Status::Ok, None) => "-".to_owned(),
    }
}

fn format_ns(ns: f64) -> String {
    if ns >= 100.0 {
        format!("{ns:.0}")
    } else {
        format!("{ns:.1}")
    }
}

fn progress_line(cell: &Cell) -> String {
    let mut line = format!(
        "{} {} size {} tasks {}:",
        cell.exec.name(),
        cell.mode.name(),
        cell.size,
        cell.tasks
    );
    for entry in &cell.entries {
        let _ = write!(line, " {} {}", entry.kind, show(entry));
    }
    line
}

fn table(config: &Config, exec: ExecKind, mode: Mode, cells: &[&Cell]) -> String {
    let mut out = String::new();
    let what = match mode {
        Mode::Plain => "get+drop",
        Mode::Hold => "get, yield once, drop",
    };
    let _ = writeln!(out, "{} / {what} (median ns per operation)", exec.name());
    let _ = write!(out, "{:>5} {:>6}", "size", "tasks");
    for kind in &config.pools {
        let _ = write!(out, " {:>10}", kind.name());
    }
    let _ = writeln!(out, "  ours/best peer");
    for cell in cells {
        let _ = write!(out, "{:>5} {:>6}", cell.size, cell.tasks);
        for entry in &cell.entries {
            let _ = write!(out, " {:>10}", show(entry));
        }
        match cell.ours_over_best_peer() {
            Some((kind, ratio)) => {
                let _ = writeln!(out, "  {ratio:.2} ({kind})");
            }
            None => out.push_str("  -\n"),
        }
    }
    out
}

/// A run in which one thread did more than this share of the get+drops used one core.
const ONE_WORKER: f64 = 0.9;

/// "deadpool 0.27 (18 cells), ..., best finishing peer 1.29": the geomean of ours over each
/// other contender across `cells`.
fn geomeans(config: &Config, cells: &[&Cell]) -> String {
    let mut parts = Vec::new();
    for &kind in config.pools.iter().filter(|&&k| k != Kind::Ours) {
        let ratios: Vec<f64> = cells
            .iter()
            .filter_map(|c| Some(c.median(Kind::Ours)? / c.median(kind)?))
            .collect();
        if let Some(g) = geomean(&ratios) {
            parts.push(format!("{kind} {g:.2} ({} cells)", ratios.len()));
        }
    }
    let best: Vec<f64> = cells
        .iter()
        .filter_map(|c| c.ours_over_best_peer().map(|(_, r)| r))
        .collect();
    if let Some(g) = geomean(&best) {
        // The fastest peer that finished each cell: where one hangs, the next one counts.
        parts.push(format!("best finishing peer {g:.2}"));
    }
    parts.join(", ")
}

fn summary(config: &Config, mode: Mode, cells: &[&Cell]) -> String {
    let mut out = String::new();
    if !config.pools.contains(&Kind::Ours) {
        return out;
    }
    let _ = writeln!(out, "geomean ours/X: {}", geomeans(config, cells));
    if mode == Mode::Hold {
        // Only cells with more tasks than connections measure waiting and waking; in the
        // others nobody waits, and the yield is most of the time.
        let (waiting, not_waiting): (Vec<&Cell>, Vec<&Cell>) =
            cells.iter().partition(|c| c.tasks > c.size);
        for (cells, which) in [
            (waiting, "where tasks wait (tasks > size)"),
            (not_waiting, "where nobody waits (tasks <= size)"),
        ] {
            if !cells.is_empty() {
                let _ = writeln!(out, "  {which}: {}", geomeans(config, &cells));
            }
        }
    }
    if mode == Mode::Plain && config.pools.contains(&Kind::ArrayQueue) {
        // A floor run that kept one worker busy and the other idle measured one core, not
        // the two ours shared: take the floor from its two-worker runs (cells of 2+ tasks).
        let ratios: Vec<f64> = cells
            .iter()
            .filter(|c| c.tasks > 1)
            .filter_map(|c| {
                let ours = c.median(Kind::Ours)?;
                let floor = c.entries.iter().find(|e| e.kind == Kind::ArrayQueue)?;
                let shared: Vec<f64> = floor
                    .samples
                    .iter()
                    .zip(&floor.top_thread_shares)
                    .filter(|&(_, &share)| share <= ONE_WORKER)
                    .map(|(&ns, _)| ns)
                    .collect();
                Some(ours / median(&shared)?)
            })
            .collect();
        let floor = match geomean(&ratios) {
            Some(g) => format!("{g:.2} ({} cells of 2+ tasks)", ratios.len()),
            None => "none (each of its runs used one worker)".to_owned(),
        };
        let _ = writeln!(
            out,
            "geomean ours/arrayqueue over its runs on both workers only: {floor}"
        );
    }
    if mode == Mode::Plain {
        // Runs in which the executor left the second worker idle measure one core, not two.
        let mut one_worker = Vec::new();
        for &kind in &config.pools {
            let shares: Vec<f64> = cells
                .iter()
                .filter(|c| c.tasks > 1)
                .filter_map(|c| c.entries.iter().find(|e| e.kind == kind))
                .flat_map(|e| e.top_thread_shares.iter().copied())
                .collect();
            if !shares.is_empty() {
                let alone = shares.iter().filter(|&&s| s > ONE_WORKER).count();
                one_worker.push(format!("{kind} {alone}/{}", shares.len()));
            }
        }
        if !one_worker.is_empty() {
            let _ = writeln!(
                out,
                "runs with one thread doing over {:.0} % of the get+drops (cells of 2+ tasks): {}",
                ONE_WORKER * 100.0,
                one_worker.join(", ")
            );
        }
    }
    if mode == Mode::Hold {
        let worst = cells
            .iter()
            .filter_map(|c| {
                let ratio = c.median(Kind::Ours)? / c.median(Kind::Deadpool)?;
                Some((ratio, c.size, c.tasks))
            })
            .max_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((ratio, size, tasks)) = worst {
            let _ = writeln!(
                out,
                "worst cell ours/deadpool: {ratio:.2} (size {size}, {tasks} tasks)"
            );
        }
    }
    let mut hangs = Vec::new();
    for &kind in &config.pools {
        let bad: Vec<String> = cells
            .iter()
            .filter(|c| {
                c.entries.iter().any(|e| {
                    e.kind == kind
                        && matches!(e.status, Status::Hang | Status::Slow | Status::Panic(_))
                })
            })
            .map(|c| format!("{}x{}", c.size, c.tasks))
            .collect();
        if !bad.is_empty() {
            hangs.push(format!("{kind} in {} (size x tasks)", bad.join(" ")));
        }
    }
    if !hangs.is_empty() {
        let _ = writeln!(out, "hangs, slow runs, panics: {}", hangs.join("; "));
    }
    out
}

fn unsupported_notes(cells: &[Cell]) -> String {
    let mut out = String::new();
    let mut seen: Vec<(ExecKind, Kind)> = Vec::new();
    for cell in cells {
        for entry in &cell.entries {
            if let Status::Unsupported(message) = &entry.status {
                if seen.contains(&(cell.exec, entry.kind)) {
                    continue;
                }
                seen.push((cell.exec, entry.kind));
                let _ = writeln!(
                    out,
                    "n/a: {} does not run on {}: it panicked with \"{message}\"",
                    entry.kind,
                    cell.exec.name()
                );
            }
        }
    }
    if !out.is_empty() {
        out.insert(0, '\n');
    }
    out
}

fn csv(cells: &[Cell]) -> String {
    let mut out = String::from(
        "executor,mode,pool_size,tasks,ops_per_run,contender,status,median_ns,min_ns,max_ns,\
         runs,samples_ns,ours_over_best_peer,best_peer,note,top_thread_shares,predecessors\n",
    );
    for cell in cells {
        let (best, ratio) = match cell.ours_over_best_peer() {
            Some((kind, ratio)) => (kind.name().to_owned(), format!("{ratio:.4}")),
            None => (String::new(), String::new()),
        };
        for entry in &cell.entries {
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_default();
            let min = entry.samples.iter().copied().reduce(f64::min);
            let max = entry.samples.iter().copied().reduce(f64::max);
            let samples: Vec<String> = entry.samples.iter().map(|s| format!("{s:.2}")).collect();
            let shares: Vec<String> = entry
                .top_thread_shares
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect();
            let predecessors: Vec<&str> = entry
                .predecessors
                .iter()
                .map(|p| p.map_or("-", Kind::name))
                .collect();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
                cell.exec.name(),
                cell.mode.name(),
                cell.size,
                cell.tasks,
                cell.per_task * cell.tasks,
                entry.kind,
                entry.status.name(),
                fmt(entry.median()),
                fmt(min),
                fmt(max),
                entry.samples.len(),
                samples.join(";"),
                ratio,
                best,
                machine::csv_field(entry.status.note()),
                shares.join(";"),
                predecessors.join(";"),
            );
        }
    }
    out
}

fn json(config: &Config, machine_text: &str, cells: &[Cell]) -> String {
    let num = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.2}"));
    let mut out = String::from("{\n");
    let _ = writeln!(
        out,
        "  \"machine\": \"{}\",\n  \"unix_time\": {},\n  \"threads\": {},\n  \"ops\": {},\n  \
         \"reps\": {},\n  \"hang_secs\": {},\n  \"max_secs\": {},\n  \"wait_timeout_secs\": {},\n  \"cells\": [",
        machine::json_escape(machine_text),
        machine::unix_time(),
        config.threads,
        config.ops,
        config.reps,
        config.limits.stall.as_secs_f64(),
        config.limits.total.as_secs_f64(),
        config
            .wait_timeout
            .map_or("null".to_owned(), |t| t.as_secs_f64().to_string()),
    );
    for (i, cell) in cells.iter().enumerate() {
        let (best, ratio) = match cell.ours_over_best_peer() {
            Some((kind, ratio)) => (format!("\"{kind}\""), format!("{ratio:.4}")),
            None => ("null".to_owned(), "null".to_owned()),
        };
        let _ = writeln!(
            out,
            "    {{\"executor\": \"{}\", \"mode\": \"{}\", \"pool_size\": {}, \"tasks\": {}, \
             \"ops_per_run\": {}, \"best_peer\": {best}, \"ours_over_best_peer\": {ratio}, \
             \"results\": [",
            cell.exec.name(),
            cell.mode.name(),
            cell.size,
            cell.tasks,
            cell.per_task * cell.tasks,
        );
        for (j, entry) in cell.entries.iter().enumerate() {
            let samples: Vec<String> = entry.samples.iter().map(|s| format!("{s:.2}")).collect();
            let _ = writeln!(
                out,
                "      {{\"contender\": \"{}\", \"status\": \"{}\", \"median_ns\": {}, \
                 \"samples_ns\": [{}], \"note\": \"{}\"}}{}",
                entry.kind,
                entry.status.name(),
                num(entry.median()),
                samples.join(", "),
                machine::json_escape(entry.status.note()),
                if j + 1 < cell.entries.len() { "," } else { "" },
            );
        }
        let _ = writeln!(out, "    ]}}{}", if i + 1 < cells.len() { "," } else { "" });
    }
    out.push_str("  ]\n}\n");
    out
}
