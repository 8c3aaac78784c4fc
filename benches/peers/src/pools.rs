//! The contenders: our pool, four peers and two baselines, behind [`BenchPool`], plus the
//! pre-warming and the timed get+drop run they share.
//!
//! Every pool gets a no-op manager (creating a connection returns `0`, checks succeed) and is
//! configured at its defaults except for three things, the same for all:
//! * health checks on checkout are off where they can be (ours `ValidationPolicy::Never`,
//!   bb8 `test_on_check_out(false)`, mobc `test_on_check_out(false)`, qp `acquire_unchecked`);
//!   deadpool always calls `Manager::recycle`, here a no-op;
//! * the wait timeout is the benchmark's (none in the grid; bb8 cannot go without one, so it gets
//!   an hour there, which still costs it a timer per `get`; qp has none, so it is wrapped in the
//!   executor's timeout when one is asked for);
//! * mobc keeps `max_idle` = pool size (its default of 2 would measure connection churn).

use crate::exec::{Flavor, Progress, Spawner};
use crossbeam_queue::ArrayQueue;
use std::{
    collections::VecDeque,
    convert::Infallible,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// The "connection" every manager hands out.
pub type Conn = u64;

/// The contenders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `connection-pool` (this repository).
    Ours,
    /// deadpool 0.13, managed.
    Deadpool,
    /// bb8 0.9.
    Bb8,
    /// mobc 0.9.
    Mobc,
    /// qp 0.2.
    Qp,
    /// Baseline: a bare `crossbeam_queue::ArrayQueue`, pop and push; an empty queue is retried
    /// after a yield (no waiting, no fairness). The floor.
    ArrayQueue,
    /// Baseline: `std::sync::Mutex<VecDeque>` behind a fair tokio `Semaphore`, deadpool's design
    /// without its extras.
    MutexSemaphore,
}

impl Kind {
    /// Every contender, in table order.
    pub const ALL: [Self; 7] = [
        Self::Ours,
        Self::Deadpool,
        Self::Bb8,
        Self::Mobc,
        Self::Qp,
        Self::ArrayQueue,
        Self::MutexSemaphore,
    ];

    /// The name used in tables and files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Deadpool => "deadpool",
            Self::Bb8 => "bb8",
            Self::Mobc => "mobc",
            Self::Qp => "qp",
            Self::ArrayQueue => "arrayqueue",
            Self::MutexSemaphore => "mutex+sem",
        }
    }

    /// Parses a name from [`name`](Self::name).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// A real pool from another crate (not ours, not a baseline).
    pub fn is_peer(self) -> bool {
        matches!(self, Self::Deadpool | Self::Bb8 | Self::Mobc | Self::Qp)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a pool is set up for a run.
#[derive(Clone, Copy, Debug)]
pub struct PoolOpts {
    /// Most connections at once.
    pub size: usize,
    /// Bound on one checkout; `None`: wait for ever where the pool allows it.
    pub wait_timeout: Option<Duration>,
}

/// What the benchmarks need from a pool.
pub trait BenchPool: Send + Sync + 'static {
    /// Checks a connection out, runs `then` while holding it, and returns it to the pool.
    /// `false` when the checkout timed out (`then` did not run).
    fn checkout_then<F, Fut>(&self, then: F) -> impl Future<Output = bool> + Send
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send;

    /// How many connections are idle now (used to wait for returns to land after warming).
    fn idle(&self) -> impl Future<Output = usize> + Send;
}

/// Our pool's no-op manager; public for the micro-benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopManager;

impl connection_pool::ConnectionManager for NoopManager {
    type Connection = Conn;
    type Error = Infallible;

    async fn create_connection(&self) -> Result<Conn, Infallible> {
        Ok(0)
    }

    async fn is_valid(&self, _conn: &mut Conn) -> Result<(), Infallible> {
        Ok(())
    }
}

/// `connection-pool`, on the run's runtime (`TokioRuntime` or `SmolRuntime`).
#[derive(Debug)]
pub struct Ours(connection_pool::ConnectionPool<NoopManager>);

impl Ours {
    /// Builds the pool; call it inside the run's executor.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        let builder = connection_pool::ConnectionPool::builder(NoopManager)
            .max_size(opts.size)
            .validation(connection_pool::ValidationPolicy::Never)
            .wait_timeout(opts.wait_timeout);
        let builder = match spawner {
            Spawner::Tokio(handle) => {
                builder.runtime(connection_pool::TokioRuntime::from_handle(handle.clone()))
            }
            Spawner::Smol(_) => builder.runtime(connection_pool::SmolRuntime::new()),
        };
        Self(builder.build().expect("valid configuration"))
    }
}

impl BenchPool for Ours {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        match self.0.get_connection().await {
            Ok(conn) => {
                then().await;
                drop(conn);
                true
            }
            Err(connection_pool::PoolError::Timeout { .. }) => false,
            Err(error) => panic!("ours: {error}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.status().idle
    }
}

/// deadpool's no-op manager.
#[derive(Debug)]
pub struct DeadpoolManager;

impl deadpool::managed::Manager for DeadpoolManager {
    type Type = Conn;
    type Error = Infallible;

    async fn create(&self) -> Result<Conn, Infallible> {
        Ok(0)
    }

    async fn recycle(
        &self,
        _conn: &mut Conn,
        _metrics: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

/// deadpool 0.13, managed.
#[derive(Debug)]
pub struct Deadpool(deadpool::managed::Pool<DeadpoolManager>);

impl Deadpool {
    /// Builds the pool. A wait timeout needs one of deadpool's runtimes; without one it runs
    /// on any executor.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        let mut builder = deadpool::managed::Pool::builder(DeadpoolManager).max_size(opts.size);
        if let Some(timeout) = opts.wait_timeout {
            let runtime = match spawner.flavor() {
                Flavor::Tokio => deadpool::Runtime::Tokio1,
                Flavor::Smol => deadpool::Runtime::Smol2,
            };
            builder = builder.wait_timeout(Some(timeout)).runtime(runtime);
        }
        Self(builder.build().expect("valid configuration"))
    }
}

impl BenchPool for Deadpool {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        match self.0.get().await {
            Ok(conn) => {
                then().await;
                drop(conn);
                true
            }
            Err(deadpool::managed::PoolError::Timeout(_)) => false,
            Err(error) => panic!("deadpool: {error:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.status().available
    }
}

/// bb8's no-op manager.
#[derive(Debug)]
pub struct Bb8Manager;

impl bb8::ManageConnection for Bb8Manager {
    type Connection = Conn;
    type Error = Infallible;

    async fn connect(&self) -> Result<Conn, Infallible> {
        Ok(0)
    }

    async fn is_valid(&self, _conn: &mut Conn) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _conn: &mut Conn) -> bool {
        false
    }
}

/// bb8 0.9.
#[derive(Debug)]
pub struct Bb8(bb8::Pool<Bb8Manager>);

/// bb8 has no "wait for ever": the grid gives it this instead.
const BB8_NO_TIMEOUT: Duration = Duration::from_secs(3600);

impl Bb8 {
    /// Builds the pool; it spawns its reaper with `tokio::spawn`, so it needs a tokio context.
    pub fn new(opts: PoolOpts) -> Self {
        let size = u32::try_from(opts.size).expect("pool size fits u32");
        let pool = bb8::Pool::builder()
            .max_size(size)
            .test_on_check_out(false)
            .connection_timeout(opts.wait_timeout.unwrap_or(BB8_NO_TIMEOUT))
            .build_unchecked(Bb8Manager);
        Self(pool)
    }
}

impl BenchPool for Bb8 {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        match self.0.get().await {
            Ok(conn) => {
                then().await;
                drop(conn);
                true
            }
            Err(bb8::RunError::TimedOut) => false,
            Err(error) => panic!("bb8: {error:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.state().idle_connections as usize
    }
}

/// mobc's no-op manager. mobc returns every connection from a spawned task; this manager
/// spawns it on the run's executor (with tokio that is what mobc does by default).
#[derive(Debug)]
pub struct MobcManager {
    spawner: Spawner,
}

#[mobc::async_trait]
impl mobc::Manager for MobcManager {
    type Connection = Conn;
    type Error = Infallible;

    fn spawn_task<T>(&self, task: T)
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        self.spawner.spawn_detached(task);
    }

    async fn connect(&self) -> Result<Conn, Infallible> {
        Ok(0)
    }

    async fn check(&self, conn: Conn) -> Result<Conn, Infallible> {
        Ok(conn)
    }
}

/// mobc 0.9, with `max_idle` = pool size.
#[derive(Debug)]
pub struct Mobc(mobc::Pool<MobcManager>);

impl Mobc {
    /// Builds the pool.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        let size = opts.size as u64;
        let pool = mobc::Pool::builder()
            .max_open(size)
            .max_idle(size)
            .test_on_check_out(false)
            .get_timeout(opts.wait_timeout)
            .build(MobcManager {
                spawner: spawner.clone(),
            });
        Self(pool)
    }
}

impl BenchPool for Mobc {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        match self.0.get().await {
            Ok(conn) => {
                then().await;
                drop(conn);
                true
            }
            Err(mobc::Error::Timeout) => false,
            Err(error) => panic!("mobc: {error:?}"),
        }
    }

    async fn idle(&self) -> usize {
        self.0.state().await.idle as usize
    }
}

/// qp's no-op manager.
#[derive(Debug)]
pub struct QpManager;

#[qp::async_trait]
impl qp::resource::Manage for QpManager {
    type Output = Conn;
    type Error = Infallible;

    async fn try_create(&self) -> Result<Conn, Infallible> {
        Ok(0)
    }
}

/// qp 0.2, checking out with `acquire_unchecked` (no validation, like the others).
pub struct Qp {
    pool: qp::Pool<QpManager>,
    /// qp has no timeout of its own: the executor's wraps the acquire when one is asked for.
    timeout: Option<(Duration, Flavor)>,
}

impl fmt::Debug for Qp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qp").finish_non_exhaustive()
    }
}

impl Qp {
    /// Builds the pool.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        Self {
            pool: qp::Pool::new(QpManager, opts.size),
            timeout: opts.wait_timeout.map(|t| (t, spawner.flavor())),
        }
    }
}

impl BenchPool for Qp {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        let acquired = match self.timeout {
            None => Some(self.pool.acquire_unchecked().await),
            Some((limit, flavor)) => flavor.timeout(limit, self.pool.acquire_unchecked()).await,
        };
        match acquired {
            Some(Ok(conn)) => {
                then().await;
                drop(conn);
                true
            }
            None => false,
            Some(Err(never)) => match never {},
        }
    }

    async fn idle(&self) -> usize {
        // Free permits; a permit is released right after its resource is pushed back.
        self.pool.size()
    }
}

/// Baseline: a bare `ArrayQueue` filled with `size` connections at construction.
#[derive(Debug)]
pub struct BareQueue {
    queue: ArrayQueue<Conn>,
    flavor: Flavor,
    timeout: Option<Duration>,
}

impl BareQueue {
    /// Builds the queue, full.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        let queue = ArrayQueue::new(opts.size);
        for _ in 0..opts.size {
            queue.push(0).expect("queue has room");
        }
        Self {
            queue,
            flavor: spawner.flavor(),
            timeout: opts.wait_timeout,
        }
    }
}

impl BenchPool for BareQueue {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        // Read the clock only once the queue was found empty, so the fast path has none.
        let mut started = None;
        loop {
            if let Some(conn) = self.queue.pop() {
                then().await;
                self.queue.push(conn).expect("a popped connection has room");
                return true;
            }
            if let Some(limit) = self.timeout {
                let start = *started.get_or_insert_with(Instant::now);
                if start.elapsed() >= limit {
                    return false;
                }
            }
            self.flavor.yield_now().await;
        }
    }

    async fn idle(&self) -> usize {
        self.queue.len()
    }
}

/// Baseline: `Mutex<VecDeque>` behind a fair tokio `Semaphore`, filled at construction.
#[derive(Debug)]
pub struct MutexSemaphore {
    idle: Mutex<VecDeque<Conn>>,
    permits: tokio::sync::Semaphore,
    timeout: Option<(Duration, Flavor)>,
}

impl MutexSemaphore {
    /// Builds the pool, full.
    pub fn new(opts: PoolOpts, spawner: &Spawner) -> Self {
        Self {
            idle: Mutex::new(std::iter::repeat_n(0, opts.size).collect()),
            permits: tokio::sync::Semaphore::new(opts.size),
            timeout: opts.wait_timeout.map(|t| (t, spawner.flavor())),
        }
    }
}

impl BenchPool for MutexSemaphore {
    async fn checkout_then<F, Fut>(&self, then: F) -> bool
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        let permit = match self.timeout {
            None => Some(self.permits.acquire().await),
            Some((limit, flavor)) => flavor.timeout(limit, self.permits.acquire()).await,
        };
        let Some(permit) = permit else {
            return false;
        };
        let permit = permit.expect("semaphore never closed");
        let conn = self
            .idle
            .lock()
            .expect("not poisoned")
            .pop_front()
            .expect("a permit guarantees an idle connection");
        then().await;
        // Queue the connection before giving the permit back, as deadpool does.
        self.idle.lock().expect("not poisoned").push_back(conn);
        drop(permit);
        true
    }

    async fn idle(&self) -> usize {
        self.idle.lock().expect("not poisoned").len()
    }
}

/// Checks out `size` connections at once (so that the pool creates all of them), returns
/// them, and waits until they are all idle again (mobc returns them from spawned tasks).
pub async fn prewarm<P: BenchPool>(pool: &Arc<P>, size: usize, spawner: &Spawner) {
    let flavor = spawner.flavor();
    let held = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let holders: Vec<_> = (0..size)
        .map(|_| {
            let pool = Arc::clone(pool);
            let held = Arc::clone(&held);
            let release = Arc::clone(&release);
            spawner.spawn(async move {
                let got = pool
                    .checkout_then(|| async move {
                        held.fetch_add(1, Ordering::SeqCst);
                        release.acquire().await.expect("never closed").forget();
                    })
                    .await;
                assert!(got, "a checkout timed out while warming the pool");
            })
        })
        .collect();
    while held.load(Ordering::SeqCst) < size {
        flavor.yield_now().await;
    }
    release.add_permits(size);
    for holder in holders {
        holder.await;
    }
    let start = Instant::now();
    while pool.idle().await < size {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "returned connections did not become idle"
        );
        flavor.yield_now().await;
    }
}

/// How many get+drops a task does between reports to the run's [`Progress`]: rarely enough
/// that the store costs nothing next to them, often enough that a run of 1,024 tasks making
/// progress shows it long before the stall limit.
pub const REPORT_EVERY: usize = 16;

/// What one timed run measured.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// From the release to the last task's end.
    pub elapsed: Duration,
    /// The largest share of the tasks' get+drops that ran on one thread, each task counted on
    /// the thread it finished on. 1.0: one worker did them all, so nothing contended across
    /// cores. Exact in plain mode, where a task never yields; approximate in hold mode.
    pub top_thread_share: f64,
}

/// Runs `tasks` tasks doing `per_task` get+drop each (yielding once while holding the
/// connection when `hold`), all released at once, and returns the wall time from the release
/// to the last task's end. Spawning and pre-warming are not timed. Each task reports its
/// count to `progress` every [`REPORT_EVERY`] get+drops and at its end.
pub async fn timed_get_drop<P: BenchPool>(
    pool: &Arc<P>,
    spawner: &Spawner,
    progress: &Progress,
    tasks: usize,
    per_task: usize,
    hold: bool,
) -> Timed {
    let flavor = spawner.flavor();
    let counters = progress.counters(tasks);
    let ready = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let per_thread: Arc<std::sync::Mutex<Vec<(std::thread::ThreadId, usize)>>> = Arc::default();
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let pool = Arc::clone(pool);
            let ready = Arc::clone(&ready);
            let gate = Arc::clone(&gate);
            let per_thread = Arc::clone(&per_thread);
            let counters = Arc::clone(&counters);
            spawner.spawn(async move {
                let counter = &counters[task];
                ready.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("never closed").forget();
                for done in 1..=per_task {
                    let got = if hold {
                        pool.checkout_then(|| flavor.yield_now()).await
                    } else {
                        pool.checkout_then(|| std::future::ready(())).await
                    };
                    assert!(
                        got,
                        "a checkout timed out: the grid has no use for timeouts (raise --wait-timeout)"
                    );
                    if done % REPORT_EVERY == 0 || done == per_task {
                        counter.set(done);
                    }
                }
                // Once per task, after its loop: a lock here costs every contender alike.
                let thread = std::thread::current().id();
                let mut counts = per_thread.lock().expect("never poisoned");
                match counts.iter_mut().find(|(t, _)| *t == thread) {
                    Some((_, ops)) => *ops += per_task,
                    None => counts.push((thread, per_task)),
                }
            })
        })
        .collect();
    // Every task parked at the gate before the clock starts.
    while ready.load(Ordering::SeqCst) < tasks {
        flavor.yield_now().await;
    }
    let start = Instant::now();
    gate.add_permits(tasks);
    for worker in workers {
        worker.await;
    }
    let elapsed = start.elapsed();
    let counts = per_thread.lock().expect("never poisoned");
    let top = counts.iter().map(|&(_, ops)| ops).max().unwrap_or(0);
    Timed {
        elapsed,
        top_thread_share: top as f64 / (tasks * per_task).max(1) as f64,
    }
}

/// Builds a pool of `kind` (inside the run's executor) and hands it to `body`.
///
/// `body` is generic over the pool type, so every contender runs fully monomorphised code.
pub async fn with_pool<R, B>(kind: Kind, opts: PoolOpts, spawner: &Spawner, body: B) -> R
where
    R: Send,
    B: PoolBody<R> + Send,
{
    match kind {
        Kind::Ours => body.run(Arc::new(Ours::new(opts, spawner))).await,
        Kind::Deadpool => body.run(Arc::new(Deadpool::new(opts, spawner))).await,
        Kind::Bb8 => body.run(Arc::new(Bb8::new(opts))).await,
        Kind::Mobc => body.run(Arc::new(Mobc::new(opts, spawner))).await,
        Kind::Qp => body.run(Arc::new(Qp::new(opts, spawner))).await,
        Kind::ArrayQueue => body.run(Arc::new(BareQueue::new(opts, spawner))).await,
        Kind::MutexSemaphore => body.run(Arc::new(MutexSemaphore::new(opts, spawner))).await,
    }
}

/// Work to do with a freshly built pool of any type (see [`with_pool`]).
pub trait PoolBody<R> {
    /// Does the work.
    fn run<P: BenchPool>(self, pool: Arc<P>) -> impl Future<Output = R> + Send;
}

/// A once-set instant shared by the tasks of a run (the end of a fixed-time run).
pub type SharedInstant = Arc<OnceLock<Instant>>;
