//! Helpers for the loom models in `tests/models.rs`: a manager whose creates (and checks) follow
//! a script and that counts live connections on its own, a pool built the way every model needs
//! it, a [`ModelRuntime`] whose clock the model moves by hand, and the poll-once-then-drop idiom
//! that models a cancelled or timed-out `get`.
//!
//! Everything here runs only under `RUSTFLAGS="--cfg loom"`; see the README for the command.
#![cfg(loom)]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

use connection_pool::{
    BoxFuture, ConnectionManager, ConnectionPool, PoolError, Runtime, ValidationPolicy,
};
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    // The counts are plain std atomics on purpose: they are the test's independent view, not
    // part of the protocol under test, and loom runs one thread at a time, so they stay exact
    // without adding interleavings of their own to explore.
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// What the next `create_connection` call does; calls past the end of the script succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Succeeds at once.
    Ok,
    /// Fails at once with [`ModelError`].
    Fail,
    /// Returns `Pending` once (waking itself), then succeeds: an await point where a `get` can
    /// be cancelled mid-create.
    PendOnce,
    /// Blocks (a loom condvar) until `ModelManager::open_gate`, then succeeds.
    Gated,
}

/// The error the scripted manager fails with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelError;

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted create failure")
    }
}

impl std::error::Error for ModelError {}

/// Counts kept by the manager, independent of the pool's own bookkeeping.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections that exist now: created minus dropped.
    live: AtomicUsize,
    /// The highest `live` ever reached.
    peak: AtomicUsize,
    /// Connections ever created.
    created: AtomicUsize,
    /// `create_connection` calls, successful or not.
    create_calls: AtomicUsize,
    /// `create_connection` calls running now.
    creating: AtomicUsize,
    /// The highest `creating` ever reached.
    peak_creating: AtomicUsize,
    /// Ids handed to connections.
    next_id: AtomicUsize,
    /// `is_valid` calls.
    checks: AtomicUsize,
    /// The clock's reading at each `create_connection` call, in nanoseconds after its zero,
    /// for a manager given a clock ([`ModelManager::with_clock`]).
    create_times: Mutex<Vec<u64>>,
}

impl Counts {
    /// Connections that exist now.
    pub fn live(&self) -> usize {
        self.live.load(SeqCst)
    }

    /// The highest number of connections that ever existed at once.
    pub fn peak(&self) -> usize {
        self.peak.load(SeqCst)
    }

    /// Connections ever created.
    pub fn created(&self) -> usize {
        self.created.load(SeqCst)
    }

    /// `create_connection` calls, including failed and cancelled ones.
    pub fn create_calls(&self) -> usize {
        self.create_calls.load(SeqCst)
    }

    /// When each `create_connection` call began, by the clock given to
    /// [`ModelManager::with_clock`], in call order; empty without one.
    pub fn create_times(&self) -> Vec<Duration> {
        let times = self.create_times.lock().unwrap();
        times
            .iter()
            .map(|&nanos| Duration::from_nanos(nanos))
            .collect()
    }

    /// The most `create_connection` calls that ever ran at once.
    pub fn peak_creating(&self) -> usize {
        self.peak_creating.load(SeqCst)
    }
}

/// Counts one `create_connection` call as running until dropped, however the call ends.
struct Creating<'a>(&'a Counts);

impl<'a> Creating<'a> {
    fn start(counts: &'a Counts) -> Self {
        let now = counts.creating.fetch_add(1, SeqCst) + 1;
        counts.peak_creating.fetch_max(now, SeqCst);
        Self(counts)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.creating.fetch_sub(1, SeqCst);
    }
}

/// A connection that counts itself live until dropped and detects two simultaneous holders.
#[derive(Debug)]
pub struct ModelConn {
    /// Unique per model execution, in creation order.
    pub id: usize,
    /// Set while a holder is using the connection.
    in_use: AtomicBool,
    counts: Arc<Counts>,
}

impl ModelConn {
    /// Claims the connection for its holder; panics if somebody else holds it too.
    pub fn claim(&self) {
        assert!(
            !self.in_use.swap(true, SeqCst),
            "connection {} is held by two tasks",
            self.id
        );
    }

    /// Gives the claim back before the guard is dropped.
    pub fn unclaim(&self) {
        self.in_use.store(false, SeqCst);
    }
}

impl Drop for ModelConn {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, SeqCst);
    }
}

/// A manager whose creates follow a script and whose connections count themselves.
#[derive(Debug)]
pub struct ModelManager {
    /// The independent live-connection count every model asserts on.
    pub counts: Arc<Counts>,
    script: Mutex<VecDeque<Create>>,
    /// What the next `is_valid` calls answer (`true`: valid); past the end, valid.
    checks: Mutex<VecDeque<bool>>,
    gate: loom::sync::Arc<(loom::sync::Mutex<bool>, loom::sync::Condvar)>,
    /// Read at each `create_connection` call, when set.
    clock: Option<ModelClock>,
}

impl ModelManager {
    /// A manager whose first creates do what `script` says, and whose later ones succeed.
    pub fn new(script: &[Create]) -> Self {
        Self {
            counts: Arc::default(),
            script: Mutex::new(script.iter().copied().collect()),
            checks: Mutex::default(),
            gate: loom::sync::Arc::new((loom::sync::Mutex::new(false), loom::sync::Condvar::new())),
            clock: None,
        }
    }

    /// The same manager, noting when each creation begins by `clock` (see
    /// [`Counts::create_times`]).
    pub fn with_clock(mut self, clock: ModelClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The same manager, whose first `is_valid` calls answer as `checks` says (`false`: the
    /// connection fails its check); later ones pass.
    pub fn with_checks(self, checks: &[bool]) -> Self {
        *self.checks.lock().unwrap() = checks.iter().copied().collect();
        self
    }

    /// `is_valid` calls made so far.
    pub fn checks_made(&self) -> usize {
        self.counts.checks.load(SeqCst)
    }

    /// Lets `Create::Gated` creations finish.
    pub fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    fn new_conn(&self) -> ModelConn {
        let live = self.counts.live.fetch_add(1, SeqCst) + 1;
        self.counts.peak.fetch_max(live, SeqCst);
        self.counts.created.fetch_add(1, SeqCst);
        ModelConn {
            id: self.counts.next_id.fetch_add(1, SeqCst),
            in_use: AtomicBool::new(false),
            counts: Arc::clone(&self.counts),
        }
    }
}

/// Returns `Pending` on its first poll (after waking its waker) and `Ready` after.
struct YieldOnce {
    yielded: bool,
}

impl Future for YieldOnce {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            return Poll::Ready(());
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl ConnectionManager for ModelManager {
    type Connection = ModelConn;
    type Error = ModelError;

    async fn create_connection(&self) -> Result<ModelConn, ModelError> {
        self.counts.create_calls.fetch_add(1, SeqCst);
        if let Some(clock) = &self.clock {
            self.counts.create_times.lock().unwrap().push(clock.nanos());
        }
        let _running = Creating::start(&self.counts);
        let step = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Create::Ok);
        match step {
            Create::Ok => Ok(self.new_conn()),
            Create::Fail => Err(ModelError),
            Create::Gated => {
                let mut open = self.gate.0.lock().unwrap();
                while !*open {
                    open = self.gate.1.wait(open).unwrap();
                }
                drop(open);
                Ok(self.new_conn())
            }
            Create::PendOnce => {
                YieldOnce { yielded: false }.await;
                Ok(self.new_conn())
            }
        }
    }

    async fn is_valid(&self, _conn: &mut ModelConn) -> Result<(), ModelError> {
        self.counts.checks.fetch_add(1, SeqCst);
        match self.checks.lock().unwrap().pop_front() {
            Some(false) => Err(ModelError),
            _ => Ok(()),
        }
    }
}

/// The pool every model uses: no runtime (loom has no time), no validation on checkout, and
/// the default idle time and lifetime, which the real clock never reaches during a model.
pub fn pool(max_size: usize, manager: ModelManager) -> ConnectionPool<ModelManager> {
    pool_connecting(max_size, connection_pool::DEFAULT_MAX_CONNECTING, manager)
}

/// [`pool`] with a cap on creations in flight.
pub fn pool_connecting(
    max_size: usize,
    max_connecting: usize,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    ConnectionPool::builder(manager)
        .max_size(max_size)
        .max_connecting(max_connecting)
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .build()
        .expect("a valid model configuration")
}

/// A [`Runtime`] for loom models: no executor (the pool must never spawn, so build without
/// leak detection; under loom the cleanup task is never started, whatever the interval), and a
/// clock that stands still until the model moves it with [`ModelClock::advance_to`]. Its
/// `sleep` futures are ready once the clock reaches their deadline; that is the only way a
/// timer fires, so a model decides exactly what time it is, and loom explores where in the
/// other threads' work the clock moves.
#[derive(Debug, Clone)]
pub struct ModelRuntime {
    clock: ModelClock,
}

impl ModelRuntime {
    /// A runtime whose clock reads zero (an arbitrary `Instant`) until it is moved.
    pub fn new() -> Self {
        Self {
            clock: ModelClock {
                inner: loom::sync::Arc::new(ClockState {
                    zero: Instant::now(),
                    nanos: AtomicU64::new(0),
                    sleepers: loom::sync::Mutex::new(Sleepers::default()),
                }),
            },
        }
    }

    /// A handle to move this runtime's clock with.
    pub fn clock(&self) -> ModelClock {
        self.clock.clone()
    }
}

impl Default for ModelRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime for ModelRuntime {
    fn spawn(&self, _task: BoxFuture<()>) {
        unreachable!("a loom model's pool has no background task to spawn");
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        // Measured from the clock when the timer is made, as real timers are. Nothing else
        // happens until it is polled: a timer dropped unpolled (the bounded work finished
        // first) adds no step for loom to explore.
        let deadline = self
            .clock
            .nanos()
            .saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
        Box::pin(Sleep {
            clock: self.clock.clone(),
            deadline,
            registered: None,
        })
    }

    fn now(&self) -> Instant {
        self.clock.inner.zero + Duration::from_nanos(self.clock.nanos())
    }
}

/// The clock of a [`ModelRuntime`]: nanoseconds since its zero, and the timers waiting for it
/// under a loom mutex.
///
/// The time is a plain std atomic, like the counts above, not a loom one: loom runs one thread
/// at a time, so every read sees the latest time, as with a real monotonic clock, and the
/// pool's many clock reads add no interleavings of their own. Loom still explores every point
/// in the other threads' work at which the clock moves (the moving thread runs between their
/// loom steps), and a timer's waker passes through the loom mutex. (With a loom atomic, whose
/// reads loom may also answer with an older time, a four-thread draft of model 12a took
/// 646,000 iterations and 68 s instead of 36,000 and 4 s.)
#[derive(Clone)]
pub struct ModelClock {
    inner: loom::sync::Arc<ClockState>,
}

impl fmt::Debug for ModelClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelClock").finish_non_exhaustive()
    }
}

struct ClockState {
    /// What the clock reads as zero.
    zero: Instant,
    /// Nanoseconds since `zero`; only [`ModelClock::advance_to`] moves it, forward only.
    nanos: AtomicU64,
    sleepers: loom::sync::Mutex<Sleepers>,
}

/// Timers that were polled before their deadline: `(id, deadline in nanoseconds, waker)`.
#[derive(Default)]
struct Sleepers {
    next_id: u64,
    waiting: Vec<(u64, u64, Waker)>,
}

impl ModelClock {
    fn nanos(&self) -> u64 {
        self.inner.nanos.load(SeqCst)
    }

    /// Moves the clock forward to `at` after its zero, then wakes every timer whose deadline
    /// has come. (Store first, then take the lock: a timer polled concurrently either sees the
    /// new time under the lock or has registered its waker before this looks.)
    pub fn advance_to(&self, at: Duration) {
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        self.inner.nanos.fetch_max(at, SeqCst);
        let due: Vec<Waker> = {
            let mut sleepers = self.inner.sleepers.lock().unwrap();
            let (due, waiting) = std::mem::take(&mut sleepers.waiting)
                .into_iter()
                .partition(|(_, deadline, _)| *deadline <= at);
            sleepers.waiting = waiting;
            due.into_iter().map(|(_, _, waker)| waker).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }
}

/// A [`ModelRuntime`] timer.
struct Sleep {
    clock: ModelClock,
    deadline: u64,
    /// Its id among the clock's sleepers, once it has registered a waker.
    registered: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut sleepers = this.clock.inner.sleepers.lock().unwrap();
        // Read under the lock, so that an `advance_to` that this misses finds the waker.
        if this.clock.nanos() >= this.deadline {
            if let Some(id) = this.registered.take() {
                sleepers.waiting.retain(|(other, _, _)| *other != id);
            }
            return Poll::Ready(());
        }
        match this.registered {
            Some(id) => {
                if let Some(entry) = sleepers
                    .waiting
                    .iter_mut()
                    .find(|(other, _, _)| *other == id)
                {
                    entry.2.clone_from(cx.waker());
                }
            }
            None => {
                let id = sleepers.next_id;
                sleepers.next_id += 1;
                sleepers
                    .waiting
                    .push((id, this.deadline, cx.waker().clone()));
                this.registered = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.registered.take() {
            let mut sleepers = self.clock.inner.sleepers.lock().unwrap();
            sleepers.waiting.retain(|(other, _, _)| *other != id);
        }
    }
}

/// A pool on a [`ModelRuntime`]: `max_size`, `wait_timeout`, `validation`, no cleanup task
/// (the runtime cannot spawn), and no `connection_timeout` or `validation_timeout`: the
/// scripted creates and checks finish at their first poll, before their timer would be
/// polled, so those timers could never fire.
pub fn timed_pool(
    max_size: usize,
    wait_timeout: Duration,
    validation: ValidationPolicy,
    runtime: ModelRuntime,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    ConnectionPool::builder(manager)
        .max_size(max_size)
        .validation(validation)
        .runtime(runtime)
        .cleanup_interval(None)
        .connection_timeout(None)
        .validation_timeout(None)
        .wait_timeout(wait_timeout)
        .build()
        .expect("a valid model configuration")
}

/// A pool with `min_idle` on a [`ModelRuntime`]: `max_size`, `max_connecting`, `min_idle`, no
/// validation, and no timeouts (see [`timed_pool`]). `min_idle` needs a cleanup interval, but
/// under loom the pool never starts its cleanup task (so the runtime is never asked to spawn):
/// models run the top-up with `ConnectionPool::loom_top_up` and the pass with `cleanup_pass`,
/// on threads of their own.
pub fn min_idle_pool(
    max_size: usize,
    max_connecting: usize,
    min_idle: usize,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    min_idle_pool_on(
        ModelRuntime::new(),
        max_size,
        max_connecting,
        min_idle,
        manager,
    )
}

/// [`min_idle_pool`] on `runtime`, whose clock the model moves.
pub fn min_idle_pool_on(
    runtime: ModelRuntime,
    max_size: usize,
    max_connecting: usize,
    min_idle: usize,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    ConnectionPool::builder(manager)
        .max_size(max_size)
        .max_connecting(max_connecting)
        .min_idle(min_idle)
        .validation(ValidationPolicy::Never)
        .runtime(runtime)
        .cleanup_interval(Some(Duration::from_secs(30)))
        .connection_timeout(None)
        .validation_timeout(None)
        .wait_timeout(None)
        .build()
        .expect("a valid model configuration")
}

/// [`pool`] with `validation`.
pub fn pool_validating(
    max_size: usize,
    validation: ValidationPolicy,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    ConnectionPool::builder(manager)
        .max_size(max_size)
        .validation(validation)
        .no_runtime()
        .build()
        .expect("a valid model configuration")
}

/// [`pool_validating`] with a cap on creations in flight.
pub fn pool_validating_connecting(
    max_size: usize,
    max_connecting: usize,
    validation: ValidationPolicy,
    manager: ModelManager,
) -> ConnectionPool<ModelManager> {
    ConnectionPool::builder(manager)
        .max_size(max_size)
        .max_connecting(max_connecting)
        .validation(validation)
        .no_runtime()
        .build()
        .expect("a valid model configuration")
}

/// The result type of a `get` in a model.
pub type GetResult<'a> =
    Result<connection_pool::PooledConnection<'a, ModelManager>, PoolError<ModelError>>;

/// Runs a `get` to completion on the current loom thread. A get that can never complete makes
/// loom report a deadlock, which is how the models detect lost wake-ups.
pub fn get(pool: &ConnectionPool<ModelManager>) -> GetResult<'_> {
    loom::future::block_on(pool.get_connection())
}

/// [`get`] with a guard that does not borrow `pool`, for guards that cross threads or
/// outlive the handle.
pub fn get_owned(pool: &ConnectionPool<ModelManager>) -> GetResult<'static> {
    loom::future::block_on(pool.get_connection_owned())
}

/// Polls `future` once and drops it: a `get` cancelled, or timed out, at its first await.
pub fn poll_once_then_drop<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = std::pin::pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs `model` under loom with the preemption bound from `LOOM_MAX_PREEMPTIONS` (default 2,
/// so a plain `cargo test` stays fast), printing the iterations explored and the wall time.
///
/// Each model is checked twice: with the stand-in queues' pops fencing where crossbeam-queue
/// 0.3's do, and without, as crossbeam's documentation allows (see `LoomQueue` in the pool's
/// `src/sync.rs`). The first is the pool as it runs; the second checks that its correctness
/// rests on its own fences, not on that detail of crossbeam's. `LOOM_QUEUES=crossbeam` or
/// `LOOM_QUEUES=unfenced` checks only the one.
pub fn check(name: &str, model: impl Fn() + Sync + Send + 'static) {
    let only = std::env::var("LOOM_QUEUES").ok();
    let model = Arc::new(model);
    for (queues, fence) in [("crossbeam", true), ("unfenced", false)] {
        if only.as_deref().is_some_and(|only| only != queues) {
            continue;
        }
        connection_pool::loom_queues_fence_like_crossbeam(fence);
        let model = Arc::clone(&model);
        check_one(&format!("{name} [{queues} queues]"), move || model());
    }
    connection_pool::loom_queues_fence_like_crossbeam(true);
}

fn check_one(name: &str, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let iterations = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&iterations);
    let start = std::time::Instant::now();
    // A model failure can abort the process (loom panics again while unwinding a deadlock),
    // so report how far loom got from the panic hook, which runs before any unwinding.
    MODEL.with(|m| *m.borrow_mut() = Some((name.to_owned(), Arc::clone(&iterations), start)));
    install_failure_hook();
    builder.check(move || {
        counter.fetch_add(1, SeqCst);
        model();
    });
    MODEL.with(|m| m.borrow_mut().take());
    println!(
        "loom model {name}: {} iterations in {:.2?} (preemption bound {:?})",
        iterations.load(SeqCst),
        start.elapsed(),
        builder.preemption_bound,
    );
}

type RunningModel = Option<(String, Arc<AtomicUsize>, std::time::Instant)>;

thread_local! {
    /// The model this test thread is checking (loom runs a model's threads on the caller's).
    static MODEL: std::cell::RefCell<RunningModel> = const { std::cell::RefCell::new(None) };
}

/// Chains a panic hook that names the failing model, its iteration and the time it took.
fn install_failure_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = MODEL.try_with(|m| {
                if let Ok(model) = m.try_borrow() {
                    if let Some((name, iterations, start)) = &*model {
                        eprintln!(
                            "loom model {name} FAILED at iteration {} after {:.2?}",
                            iterations.load(SeqCst),
                            start.elapsed(),
                        );
                    }
                }
            });
            default(info);
        }));
    });
}
