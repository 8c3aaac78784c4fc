//! Load for the fault tests (`tests/redis_faults.rs`, `tests/postgres_faults.rs`): tasks that
//! run real operations through a pool while the test breaks the server, and the figures taken
//! from what they saw.
//!
//! * [`Workload`]: the operation a test runs, and how it names a failed `get_connection`.
//! * [`Run`]: a pool under load from N tasks, warmed up, with its healthy throughput measured
//!   (the baseline), its invariants checked as it goes and at [`Run::finish`].
//! * [`Recorder`]: successes per 10 ms by completion time, failures with their time and
//!   latency, and the first success since a [`mark`](Recorder::mark) (the instant a fault
//!   cleared).
//! * [`Sampler`]: the server's own count of clients, sampled every 20 ms.
//! * [`repeated_faults`] and [`outage`]: the two shapes of fault the tests inject.
//!
//! The invariants checked on every checkout: the manager's own live count never above
//! `max_size`, and no connection (by its [`LiveToken`](super::LiveToken) id) held by two tasks.

use super::counts::Counts;
use connection_pool::{ConnectionManager, ConnectionPool, PoolError};
use std::{
    collections::{BTreeMap, HashSet},
    env,
    future::Future,
    io::{self, Write},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;

/// The resolution of the throughput record.
pub const BUCKET: Duration = Duration::from_millis(10);
/// Buckets kept: one hour; later successes count in the last one.
const BUCKETS: usize = 360_000;
/// Throughput is compared over windows this long.
pub const WINDOW: Duration = Duration::from_millis(200);
/// "Full throughput": a window with at least this fraction of the baseline's rate. Generous
/// for a shared, noisy 2-core machine, yet far above what a pool sleeping in a backoff or
/// creating one connection at a time delivers. (On 2 cores, half the connections already
/// carry the whole load: that the pool is back to full size is checked on the server's count
/// of clients instead.)
pub const FULL_THROUGHPUT: f64 = 0.5;
/// How long a task waits after a failed `get_connection` before it asks again, so that a
/// fast failure (`Rejected`) does not turn the task into a busy loop.
pub const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The period of the [`Sampler`].
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(20);
/// The most a stopping task may take to finish its operation.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// `FAULTS_SOAK=N` (N at least 1) repeats every fault 10 x N times as often; unset, 1.
pub fn soak_factor() -> usize {
    match env::var("FAULTS_SOAK") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => 10 * n,
            _ => panic!("FAULTS_SOAK must be a whole number of at least 1, not {v:?}"),
        },
        Err(_) => 1,
    }
}

/// Prints one figures line straight to the process's stderr, past the harness's capture, so
/// that it shows for a passing test too.
pub fn report(line: &str) {
    let _ = io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Milliseconds, for figures.
pub fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// A duration that may be missing, for figures.
pub fn ms_or(d: Option<Duration>, missing: &str) -> String {
    d.map_or_else(|| missing.to_owned(), |d| format!("{} ms", d.as_millis()))
}

type Conn<W> = <<W as Workload>::Manager as ConnectionManager>::Connection;
/// The pool error of a workload's manager.
pub type ErrorOf<W> = PoolError<<<W as Workload>::Manager as ConnectionManager>::Error>;

/// What the load tasks do with a connection.
pub trait Workload: Send + Sync + 'static {
    /// The manager of the pool under test.
    type Manager: ConnectionManager;

    /// The connection's id, unique among the manager's connections.
    fn id(conn: &Conn<Self>) -> u64;

    /// One operation: real commands on `conn`, checked. `task` numbers the load task (from
    /// 0), `n` its operations.
    fn run(
        &self,
        conn: &mut Conn<Self>,
        task: usize,
        n: u64,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// A short name for a failed `get_connection`, counted per name: by default its variant
    /// (`timeout`, `backend`, `rejected`, `closed`, `other`).
    fn classify(error: &ErrorOf<Self>) -> &'static str {
        variant(error)
    }
}

/// The name of a pool error's variant.
pub fn variant<E>(error: &PoolError<E>) -> &'static str {
    match error {
        PoolError::Timeout { .. } => "timeout",
        PoolError::Backend(_) => "backend",
        PoolError::Rejected(_) => "rejected",
        PoolError::Closed => "closed",
        _ => "other",
    }
}

/// One failed `get_connection`.
#[derive(Debug, Clone)]
pub struct GetError {
    /// When it returned, since the recorder's epoch.
    pub at: Duration,
    /// How long the call took.
    pub latency: Duration,
    /// The workload's name for it.
    pub label: &'static str,
    /// Its message.
    pub message: String,
}

/// The first success since the mark, kept under one lock so that a reset cannot race an
/// update.
struct FirstOk {
    mark: u64,
    first: u64,
}

/// What the load tasks saw, in microseconds since `epoch`.
pub struct Recorder {
    epoch: Instant,
    /// Successful operations per [`BUCKET`], by completion time.
    ok: Box<[AtomicU32]>,
    successes: AtomicU64,
    op_errors: AtomicU64,
    /// The first few failed operations' messages.
    op_error_samples: Mutex<Vec<String>>,
    get_errors: Mutex<Vec<GetError>>,
    /// Invariant violations seen by the tasks: must stay empty.
    violations: Mutex<Vec<String>>,
    /// Ids of the connections checked out now.
    held: Mutex<HashSet<u64>>,
    /// Hints for the fast path of [`success`](Self::success); `first_ok` is the truth.
    mark_hint: AtomicU64,
    first_hint: AtomicU64,
    first_ok: Mutex<FirstOk>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Recorder {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            ok: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            successes: AtomicU64::new(0),
            op_errors: AtomicU64::new(0),
            op_error_samples: Mutex::new(Vec::new()),
            get_errors: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            held: Mutex::new(HashSet::new()),
            mark_hint: AtomicU64::new(u64::MAX),
            first_hint: AtomicU64::new(u64::MAX),
            first_ok: Mutex::new(FirstOk {
                mark: u64::MAX,
                first: u64::MAX,
            }),
        }
    }

    /// The time since the epoch.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// The epoch, for a [`Sampler`] on the same clock.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Starts timing a recovery: from now, [`first_ok_since_mark`](Self::first_ok_since_mark)
    /// reports the first operation that checked its connection out at or after now and
    /// succeeded. Returns now.
    pub fn mark(&self) -> Duration {
        let mut first = lock(&self.first_ok);
        let now = self.now();
        first.mark = micros(now);
        first.first = u64::MAX;
        self.first_hint.store(u64::MAX, Ordering::SeqCst);
        self.mark_hint.store(first.mark, Ordering::SeqCst);
        now
    }

    /// How long after the mark the first success since it completed.
    pub fn first_ok_since_mark(&self) -> Option<Duration> {
        let first = lock(&self.first_ok);
        (first.first != u64::MAX).then(|| Duration::from_micros(first.first - first.mark))
    }

    fn success(&self, checked_out: Duration, done: Duration) {
        let bucket = usize::try_from(done.as_nanos() / BUCKET.as_nanos())
            .unwrap_or(usize::MAX)
            .min(BUCKETS - 1);
        self.ok[bucket].fetch_add(1, Ordering::Relaxed);
        self.successes.fetch_add(1, Ordering::Relaxed);
        let (checked_out, done) = (micros(checked_out), micros(done));
        if checked_out >= self.mark_hint.load(Ordering::SeqCst)
            && done < self.first_hint.load(Ordering::SeqCst)
        {
            let mut first = lock(&self.first_ok);
            if checked_out >= first.mark && done < first.first {
                first.first = done;
                self.first_hint.store(done, Ordering::SeqCst);
            }
        }
    }

    fn op_error(&self, message: String) {
        self.op_errors.fetch_add(1, Ordering::Relaxed);
        let mut samples = lock(&self.op_error_samples);
        if samples.len() < 5 {
            samples.push(message);
        }
    }

    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    /// Successful operations so far.
    pub fn successes(&self) -> u64 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Failed operations (on a connection the pool handed out) so far.
    pub fn op_errors(&self) -> u64 {
        self.op_errors.load(Ordering::Relaxed)
    }

    /// The first few failed operations' messages.
    pub fn op_error_samples(&self) -> Vec<String> {
        lock(&self.op_error_samples).clone()
    }

    /// Invariant violations the tasks saw.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.violations).clone()
    }

    /// Failed `get_connection` calls that returned in `[from, to)`.
    pub fn get_errors_between(&self, from: Duration, to: Duration) -> Vec<GetError> {
        lock(&self.get_errors)
            .iter()
            .filter(|e| e.at >= from && e.at < to)
            .cloned()
            .collect()
    }

    /// Every failed `get_connection` call so far.
    pub fn get_errors(&self) -> Vec<GetError> {
        lock(&self.get_errors).clone()
    }

    /// Successes that completed in `[from, to)`, to the bucket.
    pub fn successes_between(&self, from: Duration, to: Duration) -> u64 {
        let index = |d: Duration| {
            usize::try_from(d.as_nanos() / BUCKET.as_nanos())
                .unwrap_or(usize::MAX)
                .min(BUCKETS)
        };
        self.ok[index(from)..index(to)]
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed)))
            .sum()
    }

    /// Operations per second over `[from, to)`.
    pub fn rate(&self, from: Duration, to: Duration) -> f64 {
        let secs = to.saturating_sub(from).as_secs_f64();
        if secs == 0.0 {
            return 0.0;
        }
        self.successes_between(from, to) as f64 / secs
    }

    /// The median rate of the [`WINDOW`]s in `[from, to)`: the baseline, robust to a window
    /// that another process slowed down.
    pub fn median_rate(&self, from: Duration, to: Duration) -> f64 {
        let mut rates = Vec::new();
        let mut start = from;
        while start + WINDOW <= to {
            rates.push(self.rate(start, start + WINDOW));
            start += WINDOW;
        }
        assert!(!rates.is_empty(), "no whole window in {from:?}..{to:?}");
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    }

    /// How long after `from` the first [`WINDOW`] starting at or after `from` and ending by
    /// `until` reached `rate` ops/s ended (sliding by one bucket).
    pub fn full_throughput_after(
        &self,
        from: Duration,
        until: Duration,
        rate: f64,
    ) -> Option<Duration> {
        let mut start = from;
        while start + WINDOW <= until {
            if self.rate(start, start + WINDOW) >= rate {
                return Some(start + WINDOW - from);
            }
            start += BUCKET;
        }
        None
    }
}

/// The load tasks of a [`Run`]; they can be paused and resumed on the same recorder.
pub struct Load<W: Workload> {
    pool: ConnectionPool<W::Manager>,
    workload: Arc<W>,
    counts: Arc<Counts>,
    max_size: usize,
    tasks: usize,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl<W: Workload> Load<W> {
    /// Spawns the tasks (again, after a [`pause`](Self::pause)).
    pub fn resume(&mut self) {
        assert!(self.handles.is_empty(), "the load is running");
        self.stop.store(false, Ordering::SeqCst);
        for task in 0..self.tasks {
            let pool = self.pool.clone();
            let workload = Arc::clone(&self.workload);
            let counts = Arc::clone(&self.counts);
            let recorder = Arc::clone(&self.recorder);
            let stop = Arc::clone(&self.stop);
            let max_size = self.max_size;
            self.handles.push(tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let asked = recorder.now();
                    let mut conn = match pool.get_connection().await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let at = recorder.now();
                            let error = GetError {
                                at,
                                latency: at - asked,
                                label: W::classify(&e),
                                message: e.to_string(),
                            };
                            lock(&recorder.get_errors).push(error);
                            tokio::time::sleep(RETRY_PAUSE).await;
                            continue;
                        }
                    };
                    let checked_out = recorder.now();
                    let id = W::id(&conn);
                    if !lock(&recorder.held).insert(id) {
                        recorder.violation(format!("connection {id} handed to two tasks"));
                    }
                    let live = counts.live();
                    if live > max_size {
                        recorder.violation(format!("{live} live connections, max_size {max_size}"));
                    }
                    let result = workload.run(&mut conn, task, n).await;
                    // Before the guard goes back: another task may take it at once.
                    lock(&recorder.held).remove(&id);
                    drop(conn);
                    match result {
                        Ok(()) => recorder.success(checked_out, recorder.now()),
                        Err(e) => recorder.op_error(e),
                    }
                }
            }));
        }
    }

    /// Stops the tasks after their current operation and waits for them.
    pub async fn pause(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let handles = std::mem::take(&mut self.handles);
        let joined = tokio::time::timeout(STOP_LIMIT, async {
            for handle in handles {
                handle.await.expect("a load task panicked");
            }
        })
        .await;
        assert!(
            joined.is_ok(),
            "the load tasks did not stop within {STOP_LIMIT:?}"
        );
    }

    /// What the tasks saw.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }
}

type CountFn = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<usize>> + Send>> + Send + Sync>;

/// Samples a server's own count of client connections every [`SAMPLE_PERIOD`], keeping
/// `(time, count)`, timed when the query was sent (so that a sample sent after an instant
/// shows the server's state after it); failed samples (server down) are skipped.
pub struct Sampler {
    count: CountFn,
    samples: Arc<Mutex<Vec<(Duration, usize)>>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `count`, timing samples from `epoch`.
    pub fn start<F, Fut>(epoch: Instant, count: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<usize>> + Send + 'static,
    {
        let count: CountFn = Arc::new(move || Box::pin(count()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (count, samples, stop) =
                (Arc::clone(&count), Arc::clone(&samples), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = epoch.elapsed();
                    if let Some(n) = count().await {
                        lock(&samples).push((sent, n));
                    }
                    tokio::time::sleep(SAMPLE_PERIOD).await;
                }
            })
        };
        Self {
            count,
            samples,
            stop,
            task: Some(task),
        }
    }

    /// The highest sample in `[from, to)`, and how many samples there were.
    pub fn peak_between(&self, from: Duration, to: Duration) -> (usize, usize) {
        let samples = lock(&self.samples);
        let inside = samples.iter().filter(|(at, _)| *at >= from && *at < to);
        inside.fold((0, 0), |(peak, n), (_, count)| (peak.max(*count), n + 1))
    }

    /// How long after `from` the first sample of at least `count` was taken.
    pub fn first_reaching(&self, from: Duration, count: usize) -> Option<Duration> {
        let samples = lock(&self.samples);
        samples
            .iter()
            .find(|(at, n)| *at >= from && *n >= count)
            .map(|(at, _)| *at - from)
    }

    /// The highest sample so far, and how many samples there were.
    pub fn peak(&self) -> (usize, usize) {
        self.peak_between(Duration::ZERO, Duration::MAX)
    }

    /// One sample now.
    pub async fn sample(&self) -> Option<usize> {
        (self.count)().await
    }

    /// Stops sampling.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            task.await.expect("the sampler panicked");
        }
    }
}

/// How a pool came back after a fault cleared, measured from the instant it cleared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery {
    /// When the fault cleared, since the recorder's epoch.
    pub clear: Duration,
    /// The first operation that checked out after the fault cleared and succeeded.
    pub first_ok: Option<Duration>,
    /// The end of the first [`WINDOW`] with [`FULL_THROUGHPUT`] of the baseline.
    pub full_throughput: Option<Duration>,
    /// The server's count of the pool's connections back at the run's `size_target` (when
    /// it has one), to the [`SAMPLE_PERIOD`].
    pub full_size: Option<Duration>,
}

/// The limits of the issue: after a fault clears, the first success within 1 s and full
/// throughput within 2 s.
pub const FIRST_OK_LIMIT: Duration = Duration::from_secs(1);
/// See [`FIRST_OK_LIMIT`].
pub const FULL_THROUGHPUT_LIMIT: Duration = Duration::from_secs(2);
/// How long [`Run::observe`] keeps measuring a recovery that missed its limits, so that a
/// failure says by how much.
const GIVE_UP: Duration = Duration::from_secs(5);

/// A pool under load, with its figures.
pub struct Run<W: Workload> {
    /// For figures and messages.
    pub name: String,
    /// The pool's manager's counts.
    pub counts: Arc<Counts>,
    /// The load.
    pub load: Load<W>,
    /// The server's count of clients.
    pub server: Sampler,
    /// Clients the server counts besides the pool's (its admin link).
    pub server_offset: usize,
    /// The pool's `max_size`.
    pub max_size: usize,
    /// Load tasks.
    pub tasks: usize,
    /// The connections a recovered pool gets back to: `max_size` when the tasks outnumber
    /// it (they keep every connection busy), else `None`.
    pub size_target: Option<usize>,
    /// Healthy throughput, ops/s: the median [`WINDOW`] of the second before the first fault.
    pub baseline: f64,
}

/// How long a run warms up (connections created) before its baseline is measured.
const WARM_UP: Duration = Duration::from_millis(500);
/// How long the baseline is measured.
const BASELINE: Duration = Duration::from_secs(1);

impl<W: Workload> Run<W> {
    /// Starts `tasks` tasks on `pool`, warms up and measures the baseline. `server` counts
    /// the server's client connections, `server_offset` of them not the pool's; it is sampled
    /// from now on.
    pub async fn start<F, Fut>(
        name: impl Into<String>,
        pool: &ConnectionPool<W::Manager>,
        counts: &Arc<Counts>,
        workload: W,
        tasks: usize,
        server: F,
        server_offset: usize,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<usize>> + Send + 'static,
    {
        let max_size = pool.status().max_size;
        let recorder = Arc::new(Recorder::new());
        let server = Sampler::start(recorder.epoch(), server);
        let mut load = Load {
            pool: pool.clone(),
            workload: Arc::new(workload),
            counts: Arc::clone(counts),
            max_size,
            tasks,
            recorder,
            stop: Arc::new(AtomicBool::new(false)),
            handles: Vec::new(),
        };
        load.resume();
        let name = name.into();
        tokio::time::sleep(WARM_UP).await;
        let from = load.recorder().now();
        tokio::time::sleep(BASELINE).await;
        let baseline = load.recorder().median_rate(from, from + BASELINE);
        assert!(
            baseline > 0.0,
            "{name}: no operation succeeded while healthy; op errors {:?}, get errors {:?}",
            load.recorder().op_error_samples(),
            load.recorder().get_errors().first()
        );
        Self {
            name,
            counts: Arc::clone(counts),
            load,
            server,
            server_offset,
            max_size,
            tasks,
            size_target: (tasks >= max_size).then_some(max_size),
            baseline,
        }
    }

    /// What the load tasks saw.
    pub fn recorder(&self) -> &Recorder {
        self.load.recorder()
    }

    /// The rate that counts as full throughput.
    pub fn full_rate(&self) -> f64 {
        self.baseline * FULL_THROUGHPUT
    }

    /// Measures the recovery from a fault that cleared at `clear` (a [`Recorder::mark`]):
    /// returns once everything recovered, or after [`GIVE_UP`].
    pub async fn observe(&self, clear: Duration) -> Recovery {
        let recorder = self.recorder();
        let mut recovery = Recovery {
            clear,
            ..Recovery::default()
        };
        loop {
            let now = recorder.now();
            recovery.first_ok = recovery.first_ok.or_else(|| recorder.first_ok_since_mark());
            recovery.full_throughput = recovery
                .full_throughput
                .or_else(|| recorder.full_throughput_after(clear, now, self.full_rate()));
            if let Some(target) = self.size_target {
                recovery.full_size = recovery.full_size.or_else(|| {
                    self.server
                        .first_reaching(clear, target + self.server_offset)
                });
            }
            let done = recovery.first_ok.is_some()
                && recovery.full_throughput.is_some()
                && (self.size_target.is_none() || recovery.full_size.is_some());
            if done || now - clear >= GIVE_UP {
                return recovery;
            }
            tokio::time::sleep(BUCKET).await;
        }
    }

    /// Waits until the first success since the mark at `clear`, for at most `limit`.
    pub async fn first_ok(&self, clear: Duration, limit: Duration) -> Option<Duration> {
        loop {
            if let Some(first) = self.recorder().first_ok_since_mark() {
                return Some(first);
            }
            if self.recorder().now() - clear > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Asserts the limits on `recovery`, naming `what` recovered: the first success
    /// within [`FIRST_OK_LIMIT`]; full throughput, and the pool's connections back on the
    /// server when the run has a `size_target`, within [`FULL_THROUGHPUT_LIMIT`].
    pub fn assert_recovered(&self, what: &str, recovery: &Recovery) {
        let first = recovery.first_ok;
        assert!(
            first.is_some_and(|d| d <= FIRST_OK_LIMIT),
            "{}: after {what}, the first success came after {}, not within {FIRST_OK_LIMIT:?}",
            self.name,
            ms_or(first, "more than 5 s")
        );
        let full = recovery.full_throughput;
        assert!(
            full.is_some_and(|d| d <= FULL_THROUGHPUT_LIMIT),
            "{}: after {what}, full throughput ({:.0} ops/s, {:.0}% of the baseline) came after \
             {}, not within {FULL_THROUGHPUT_LIMIT:?}; per {WINDOW:?} from 1 s before, ops/s: \
             {}; the server's peak count of clients ({} not the pool's): {}; the pool now: {}",
            self.name,
            self.full_rate(),
            FULL_THROUGHPUT * 100.0,
            ms_or(full, "more than 5 s"),
            self.timeline(recovery.clear.saturating_sub(Duration::from_secs(1))),
            self.server_offset,
            self.server_timeline(recovery.clear.saturating_sub(Duration::from_secs(1))),
            self.pool_now()
        );
        if let Some(target) = self.size_target {
            let size = recovery.full_size;
            assert!(
                size.is_some_and(|d| d <= FULL_THROUGHPUT_LIMIT),
                "{}: after {what}, the server counted the pool's {target} connections again \
                 after {}, not within {FULL_THROUGHPUT_LIMIT:?}",
                self.name,
                ms_or(size, "more than 5 s")
            );
        }
    }

    /// The server's peak count in each [`WINDOW`] from `from` to now (`-` for a window with no
    /// sample, the server down), for failure messages: it tells a pool that was slow to
    /// reconnect from one that had its connections and was starved of CPU.
    fn server_timeline(&self, from: Duration) -> String {
        self.per_window(from, |start, end| {
            match self.server.peak_between(start, end) {
                (_, 0) => "-".to_string(),
                (peak, _) => peak.to_string(),
            }
        })
    }

    /// The pool's own counts, and the live connections the manager counts, for failure
    /// messages.
    fn pool_now(&self) -> String {
        let status = self.load.pool.status();
        format!(
            "size {} of {}, idle {}, connecting {}, waiters {}, live {}, created {}, \
             failed creations {}",
            status.size,
            status.max_size,
            status.idle,
            status.connecting,
            status.waiters,
            self.counts.live(),
            status.counters.created,
            status.counters.create_failures
        )
    }

    /// The rate of each [`WINDOW`] from `from` to now, for failure messages.
    fn timeline(&self, from: Duration) -> String {
        let recorder = self.recorder();
        self.per_window(from, |start, end| {
            format!("{:.0}", recorder.rate(start, end))
        })
    }

    /// `show` of each whole [`WINDOW`] from `from` to now, space-separated.
    fn per_window(&self, from: Duration, show: impl Fn(Duration, Duration) -> String) -> String {
        let now = self.recorder().now();
        let mut shown = Vec::new();
        let mut start = from;
        while start + WINDOW <= now {
            shown.push(show(start, start + WINDOW));
            start += WINDOW;
        }
        shown.join(" ")
    }

    /// Stops the load and the sampler, checks the invariants (no violation seen by the tasks,
    /// the live count never above `max_size`, the server's count never above
    /// `server_limit`, no `get_connection` timeout, every failed `get_connection` one of
    /// `allowed` kinds), drops `pool` and checks that nothing leaked: no live connection left,
    /// and the server's count back to `server_idle` within 5 s.
    pub async fn finish(
        mut self,
        pool: ConnectionPool<W::Manager>,
        server_limit: usize,
        server_idle: usize,
        allowed: &[&str],
    ) -> Finished {
        self.load.pause().await;
        let recorder = self.recorder();
        let violations = recorder.violations();
        assert!(violations.is_empty(), "{}: {violations:?}", self.name);
        assert!(
            lock(&recorder.held).is_empty(),
            "{}: connections still marked as held",
            self.name
        );
        let peak_live = self.counts.peak();
        assert!(
            peak_live <= self.max_size,
            "{}: {peak_live} connections lived at once, max_size {}",
            self.name,
            self.max_size
        );
        let get_errors = recorder.get_errors();
        let mut tally = BTreeMap::<&str, usize>::new();
        for e in &get_errors {
            *tally.entry(e.label).or_default() += 1;
        }
        if let Some(bad) = get_errors.iter().find(|e| !allowed.contains(&e.label)) {
            panic!(
                "{}: get_connection failed with a {} error (allowed: {allowed:?}) after {} ms: \
                 {}; all failures: {tally:?}",
                self.name,
                bad.label,
                ms(bad.latency),
                bad.message
            );
        }
        self.server.stop().await;
        let (peak_server, samples) = self.server.peak();
        assert!(
            samples > 0,
            "{}: the server's count was never sampled",
            self.name
        );
        assert!(
            peak_server <= server_limit,
            "{}: the server counted {peak_server} clients, more than {server_limit}",
            self.name
        );
        drop(self.load);
        drop(pool);
        let live = self.counts.live();
        assert_eq!(
            live, 0,
            "{}: {live} connections outlived the pool",
            self.name
        );
        let start = Instant::now();
        loop {
            let now = self.server.sample().await;
            if now == Some(server_idle) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{}: 5 s after the pool was dropped the server still counts {now:?} clients, \
                 not {server_idle}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Finished {
            peak_live,
            peak_server,
            get_errors: tally
                .into_iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The end-of-run figures.
#[derive(Debug)]
pub struct Finished {
    /// The manager's peak live count.
    pub peak_live: usize,
    /// The server's peak count of clients.
    pub peak_server: usize,
    /// Failed `get_connection` calls by kind, `"none"` when there were none.
    pub get_errors: String,
}

impl Finished {
    /// `peak live N, peak server M, get errors: ...`
    pub fn figures(&self) -> String {
        let errors = if self.get_errors.is_empty() {
            "none"
        } else {
            &self.get_errors
        };
        format!(
            "peak live {}, peak server clients {}, get_connection errors: {errors}",
            self.peak_live, self.peak_server
        )
    }
}

/// Figures of [`repeated_faults`].
#[derive(Debug)]
pub struct Repeated {
    /// Faults injected.
    pub rounds: usize,
    /// Connections the faults closed, in all.
    pub closed: usize,
    /// The slowest first success after a fault.
    pub worst_first_ok: Duration,
    /// Faults after which throughput was full again before the next one.
    pub full_before_next: usize,
    /// The slowest of those.
    pub worst_full: Duration,
    /// Connect attempts during the faults.
    pub connect_attempts: usize,
    /// The recovery after the last fault.
    pub last: Recovery,
}

/// Injects `fault` (which returns how many connections it closed) `rounds` times, `interval`
/// apart, under load. After each, the first success must come within [`FIRST_OK_LIMIT`] (the
/// next fault waits for it); after the last, full throughput within [`FULL_THROUGHPUT_LIMIT`].
pub async fn repeated_faults<W, F, Fut>(
    run: &Run<W>,
    what: &str,
    rounds: usize,
    interval: Duration,
    mut fault: F,
) -> Repeated
where
    W: Workload,
    F: FnMut() -> Fut,
    Fut: Future<Output = usize>,
{
    let recorder = run.recorder();
    let attempts = run.counts.create_calls();
    let mut figures = Repeated {
        rounds,
        closed: 0,
        worst_first_ok: Duration::ZERO,
        full_before_next: 0,
        worst_full: Duration::ZERO,
        connect_attempts: 0,
        last: Recovery::default(),
    };
    for round in 0..rounds {
        figures.closed += fault().await;
        let clear = recorder.mark();
        if round + 1 == rounds {
            figures.connect_attempts = run.counts.create_calls() - attempts;
            figures.last = run.observe(clear).await;
            run.assert_recovered(&format!("the last {what}"), &figures.last);
            figures.worst_first_ok = figures
                .worst_first_ok
                .max(figures.last.first_ok.unwrap_or_default());
            break;
        }
        let first = run.first_ok(clear, FIRST_OK_LIMIT).await;
        let Some(first) = first else {
            panic!(
                "{}: no success within {FIRST_OK_LIMIT:?} of {what} {}",
                run.name,
                round + 1
            );
        };
        figures.worst_first_ok = figures.worst_first_ok.max(first);
        let next = clear + interval;
        let now = recorder.now();
        if next > now {
            tokio::time::sleep(next - now).await;
        }
        if let Some(full) = recorder.full_throughput_after(clear, recorder.now(), run.full_rate()) {
            figures.full_before_next += 1;
            figures.worst_full = figures.worst_full.max(full);
        }
    }
    figures
}

/// Figures of [`outage`].
#[derive(Debug)]
pub struct Outage {
    /// From the stop's start to the restart's start.
    pub down: Duration,
    /// How long the restart took until the server accepted connections.
    pub restart: Duration,
    /// Connect attempts from the stop's start to the restart's start.
    pub connect_attempts: usize,
    /// Connect attempts from the restart's start until the end of the recovery, the
    /// successful ones included.
    pub attempts_recovering: usize,
    /// Measured from the end of the restart.
    pub recovery: Recovery,
}

impl Outage {
    /// One line of figures; `start` names how the server came back ("restart", "start").
    pub fn summary(&self, start: &str, max_size: usize) -> String {
        format!(
            "down {} ms, {} connect attempts while down (limit {OUTAGE_CONNECT_LIMIT}); {start} \
             took {} ms; then first success {}, full throughput {}, back to {max_size} \
             connections {}, {} connect attempts while recovering",
            ms(self.down),
            self.connect_attempts,
            ms(self.restart),
            ms_or(self.recovery.first_ok, "none"),
            ms_or(self.recovery.full_throughput, "never"),
            ms_or(self.recovery.full_size, "n/a"),
            self.attempts_recovering,
        )
    }
}

/// The longest outage [`outage`] makes.
pub const OUTAGE: Duration = Duration::from_secs(2);
/// The most connect attempts an [`OUTAGE`] may see, whatever the number of waiters.
pub const OUTAGE_CONNECT_LIMIT: usize = 25;

/// Runs `stop` (blocking: off the runtime), keeps the server down until [`OUTAGE`] after
/// the stop began, runs `start` (blocking) and measures the recovery from the end of the
/// start. Asserts the connect attempts during the outage and the recovery limits.
pub async fn outage<W, S, T>(run: &Run<W>, stop: S, start: T) -> Outage
where
    W: Workload,
    S: FnOnce() + Send + 'static,
    T: FnOnce() + Send + 'static,
{
    let recorder = run.recorder();
    let attempts_before = run.counts.create_calls();
    let down_at = recorder.now();
    tokio::task::spawn_blocking(stop)
        .await
        .expect("stopping the server panicked");
    let up_at = down_at + OUTAGE;
    let now = recorder.now();
    if up_at > now {
        tokio::time::sleep(up_at - now).await;
    }
    let restart_at = recorder.now();
    let attempts_during = run.counts.create_calls() - attempts_before;
    tokio::task::spawn_blocking(start)
        .await
        .expect("starting the server panicked");
    let clear = recorder.mark();
    let recovery = run.observe(clear).await;
    let attempts_recovering = run.counts.create_calls() - attempts_before - attempts_during;
    let figures = Outage {
        down: restart_at - down_at,
        restart: clear - restart_at,
        connect_attempts: attempts_during,
        attempts_recovering,
        recovery,
    };
    assert!(
        figures.connect_attempts <= OUTAGE_CONNECT_LIMIT,
        "{}: {} connect attempts during a {} ms outage, more than {OUTAGE_CONNECT_LIMIT}",
        run.name,
        figures.connect_attempts,
        ms(figures.down)
    );
    run.assert_recovered("the restart", &figures.recovery);
    figures
}
