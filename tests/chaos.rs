//! Randomized stress ("chaos"): 64 tasks hammer a pool of 8 with every kind of trouble at once,
//! while the test's own manager counts the connections that really exist.
//!
//! Each task runs thousands of iterations; each iteration picks, from the task's seeded RNG,
//! one of: a plain `get_connection`; a `get_connection` raced against a short timer (the loser
//! is dropped); `get_connection_timeout`; a `get_connection` future polled once and dropped;
//! `try_get_connection`; a child task that checks a connection out and is aborted while holding
//! it; a child task aborted at a random moment of its own checkout; a cleanup pass. A
//! connection that is checked out is held for nothing, a yield or a short sleep, then returned
//! normally, marked broken (`mark_broken`), returned with `has_broken` answering true, returned
//! with `has_broken` panicking, or dropped by a panic in the holder. The manager, from its own
//! seeded RNG, makes `create_connection` and `is_valid` succeed, yield, sleep, fail, fail
//! permanently (create only), hang (ended by `connection_timeout` / `validation_timeout`) or
//! panic. Short `max_lifetime` and `max_idle_time` add expiry at checkout, return and cleanup,
//! and now and then every task pauses together (a lull) so that idle connections do expire.
//!
//! # Invariants, checked continuously
//!
//! * The manager's live count (created minus dropped) never exceeds `max_size`, and its
//!   `create_connection` calls in flight never exceed `max_connecting`.
//! * No connection is held by two parties at once: each carries an in-use flag that a holder
//!   (a task, or `is_valid`) sets on entry and clears on exit; finding it set is a violation, as
//!   is a connection dropped while in use.
//! * No connection is handed out again once the pool must destroy it: after `mark_broken`,
//!   `has_broken` answering true or panicking, a panic in its holder, a failed validation, or a
//!   validation cut short (timeout, cancellation, panic).
//! * No connection is handed out older than `max_lifetime`, or idle longer than
//!   `max_idle_time`, by more than [`EXPIRY_GRACE`].
//! * `status().size` and `status().connecting` never exceed their limits.
//! * No `get_connection` outlives its deadline by more than [`DEADLINE_GRACE`], and none fails
//!   with `Closed` (or any error but the expected ones) while the pool is open.
//! * Once every task has finished: `status()` shows no waiter, no creation, nothing in use,
//!   and `size` equal to the live count; the pool's `created` counter equals the manager's, and
//!   `created - destroyed` equals `size`. After the pool is dropped the live count is 0.
//!
//! Each test prints one line of figures to stderr (past the harness's capture): operations,
//! violations (must be 0), peak live, p50/p99/max latency of the awaited `get_connection`
//! calls, how the calls ended and why connections were destroyed.
//!
//! # Seeds and replay
//!
//! Every run draws a fresh seed and prints it in its figures line and in any failure. Replay
//! one with `CHAOS_SEED=<seed> cargo test --all-features --test chaos <test name>`: the seed
//! fixes the pool's settings, each task's sequence of choices and the manager's sequence of
//! behaviours. Real time (sleeps, timeouts) and, on several threads, the interleaving of tasks
//! still vary, so a replay repeats the same mix of events, not the exact schedule.
//!
//! # Soak
//!
//! `CHAOS_SOAK=1 cargo test --release --all-features --test chaos soak` runs the three
//! runtimes in turn with fresh seeds (or `CHAOS_SEED`) and 20,000 iterations per task, for
//! at least `CHAOS_SOAK_SECS` seconds (default 300; a debug-build run takes about 40 s),
//! printing one line per run and stopping at the first run with a violation. Without
//! `CHAOS_SOAK` (or with `CHAOS_SOAK=0`) the `soak` test returns at once.

// Built only with the `tokio` and `smol` features (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(all(feature = "tokio", feature = "smol"))]

use connection_pool::{
    ConnectionManager, ConnectionPool, Counters, PoolError, PooledConnection, SmolRuntime,
    TokioRuntime, ValidationPolicy,
};
use futures_lite::{FutureExt, future};
use std::{
    fmt,
    future::Future,
    io::Write,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

const TASKS: usize = 64;
const MAX_SIZE: usize = 8;
const MAX_CONNECTING: usize = 2;
/// Iterations per task in the default run.
const ITERATIONS: usize = 1_500;
/// The soak's iterations per task.
const SOAK_ITERATIONS: usize = 20_000;
const WAIT_TIMEOUT: Duration = Duration::from_millis(100);
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(20);
const VALIDATION_TIMEOUT: Duration = Duration::from_millis(10);
/// How far past its deadline a `get_connection` may return before it counts as a violation:
/// room for a busy machine's scheduling, far below what a hang would take.
const DEADLINE_GRACE: Duration = Duration::from_millis(750);
/// How much older than `max_lifetime`, or longer idle than `max_idle_time`, a connection may
/// be when a task or `is_valid` gets it: the pool checks expiry when it pops the connection; a
/// validation (bounded by `validation_timeout`) and the thread being descheduled may follow.
const EXPIRY_GRACE: Duration = Duration::from_millis(100);
/// One in this many of task 0's iterations starts a lull: every task pauses before its next
/// operation until the lull ends, so connections sit idle and expire.
const LULL_ODDS: u32 = 400;
/// Violations described in full in the failure message; the rest are only counted.
const REPORTED_VIOLATIONS: usize = 20;

/// The payload of every panic this test causes on purpose; the panic hook keeps them quiet.
struct ChaosPanic;

/// Installs (once) a panic hook that stays silent for [`ChaosPanic`] and reports every other
/// panic as the default hook does.
fn quiet_deliberate_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<ChaosPanic>() {
                default(info);
            }
        }));
    });
}

fn deliberate_panic() -> ! {
    panic::panic_any(ChaosPanic)
}

// ---------------------------------------------------------------------------------------------
// The manager and its independent counts
// ---------------------------------------------------------------------------------------------

/// What the test knows independently of the pool.
struct Monitor {
    /// The origin of the nanosecond timestamps below.
    epoch: Instant,
    /// Connections that exist now: created minus dropped.
    live: AtomicUsize,
    peak_live: AtomicUsize,
    /// Successful `create_connection` calls.
    created: AtomicU64,
    /// `create_connection` calls in flight, and the most at once.
    creating: AtomicUsize,
    peak_creating: AtomicUsize,
    next_id: AtomicU64,
    /// The pool's `max_lifetime` and `max_idle_time`: no connection older, or idle longer, by
    /// more than [`EXPIRY_GRACE`] may be handed out.
    max_lifetime: Duration,
    max_idle_time: Duration,
    violations: AtomicUsize,
    /// The first [`REPORTED_VIOLATIONS`] violations, described.
    described: Mutex<Vec<String>>,
}

impl Monitor {
    fn new(settings: &Settings) -> Self {
        Self {
            epoch: Instant::now(),
            live: AtomicUsize::new(0),
            peak_live: AtomicUsize::new(0),
            created: AtomicU64::new(0),
            creating: AtomicUsize::new(0),
            peak_creating: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            max_lifetime: settings.max_lifetime,
            max_idle_time: settings.max_idle_time,
            violations: AtomicUsize::new(0),
            described: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since `epoch`.
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn violation(&self, what: impl FnOnce() -> String) {
        self.violations.fetch_add(1, Ordering::SeqCst);
        let mut described = self.described.lock().unwrap_or_else(|e| e.into_inner());
        if described.len() < REPORTED_VIOLATIONS {
            described.push(what());
        }
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

/// A connection that counts itself live until dropped and knows whether someone holds it.
struct ChaosConn {
    id: u64,
    born: Instant,
    /// When a task last let it go (or it was created), in [`Monitor::now`] nanoseconds.
    idle_since: AtomicU64,
    /// Set while a task holds the connection or `is_valid` runs on it.
    in_use: AtomicBool,
    /// Set when the pool must destroy the connection rather than hand it out again: it was
    /// marked broken, reported broken by `has_broken`, dropped by a panicking holder, failed
    /// validation, or had its validation cut short.
    condemned: AtomicBool,
    /// What `has_broken` answers.
    broken: bool,
    /// Makes `has_broken` panic.
    panic_on_return: bool,
    monitor: Arc<Monitor>,
}

impl Drop for ChaosConn {
    fn drop(&mut self) {
        if self.in_use.load(Ordering::SeqCst) {
            let id = self.id;
            self.monitor
                .violation(|| format!("connection {id} dropped while in use"));
        }
        self.monitor.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who uses a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// A task that checked it out; the connection goes back to the pool when it lets go.
    Task,
    /// A task that checked it out and is then aborted.
    AbortedTask,
    /// The pool, through `is_valid`.
    Validation,
}

/// Marks a connection in use for as long as it lives; a connection already in use is a
/// violation (two holders at once).
struct Exclusive<'a> {
    conn: &'a ChaosConn,
    /// Whether this holder set the flag (and so clears it).
    owns: bool,
    holder: Holder,
}

impl<'a> Exclusive<'a> {
    /// Marks `conn` in use by `who`, checking that nobody else uses it and that the pool
    /// should have handed it out at all.
    fn enter(conn: &'a ChaosConn, who: Holder) -> Self {
        let id = conn.id;
        let monitor = &conn.monitor;
        let owns = !conn.in_use.swap(true, Ordering::SeqCst);
        if !owns {
            monitor.violation(|| format!("connection {id} held by two parties ({who:?})"));
        }
        if conn.condemned.load(Ordering::SeqCst) {
            monitor.violation(|| {
                format!("connection {id} handed out again ({who:?}) after it was condemned")
            });
        }
        let age = conn.born.elapsed();
        if age > monitor.max_lifetime + EXPIRY_GRACE {
            monitor.violation(|| {
                format!(
                    "connection {id} handed out ({who:?}) at age {age:?}, max_lifetime {:?}",
                    monitor.max_lifetime
                )
            });
        }
        let idle = Duration::from_nanos(
            monitor
                .now()
                .saturating_sub(conn.idle_since.load(Ordering::SeqCst)),
        );
        if idle > monitor.max_idle_time + EXPIRY_GRACE {
            monitor.violation(|| {
                format!(
                    "connection {id} handed out ({who:?}) after {idle:?} idle, max_idle_time {:?}",
                    monitor.max_idle_time
                )
            });
        }
        Self {
            conn,
            owns,
            holder: who,
        }
    }

    /// The pool must not hand this connection out again.
    fn condemn(&self) {
        self.conn.condemned.store(true, Ordering::SeqCst);
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        if self.holder != Holder::Validation {
            // Idle from now on (the pool stamps its own time a moment later).
            self.conn
                .idle_since
                .store(self.conn.monitor.now(), Ordering::SeqCst);
        }
        if self.owns {
            self.conn.in_use.store(false, Ordering::SeqCst);
        }
    }
}

#[derive(Debug)]
struct ChaosError(&'static str);

impl fmt::Display for ChaosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for ChaosError {}

/// What one manager call does.
#[derive(Debug, Clone, Copy)]
enum Act {
    Ok,
    Yield,
    Sleep(Duration),
    Fail,
    /// An error `is_permanent_error` classifies as permanent (create only).
    Permanent,
    /// Never completes: the pool's own timeout must end it.
    Hang,
    Panic,
}

/// Per-mille odds of each behaviour, in the order of [`Act`].
#[derive(Debug, Clone, Copy)]
struct Odds {
    ok: u32,
    yield_: u32,
    sleep: u32,
    fail: u32,
    permanent: u32,
    hang: u32,
    panic: u32,
}

impl Odds {
    fn draw(&self, rng: &mut fastrand::Rng) -> Act {
        let total = self.ok
            + self.yield_
            + self.sleep
            + self.fail
            + self.permanent
            + self.hang
            + self.panic;
        let mut roll = rng.u32(0..total);
        for (odds, act) in [
            (self.ok, Act::Ok),
            (self.yield_, Act::Yield),
            (
                self.sleep,
                Act::Sleep(Duration::from_micros(rng.u64(100..=2_000))),
            ),
            (self.fail, Act::Fail),
            (self.permanent, Act::Permanent),
            (self.hang, Act::Hang),
        ] {
            if roll < odds {
                return act;
            }
            roll -= odds;
        }
        Act::Panic
    }
}

struct ChaosManager {
    monitor: Arc<Monitor>,
    /// Draws each call's behaviour; seeded, shared by every call.
    rng: Mutex<fastrand::Rng>,
    create: Odds,
    validate: Odds,
}

impl ChaosManager {
    fn draw(&self, odds: &Odds) -> Act {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        odds.draw(&mut rng)
    }
}

/// Counts a `create_connection` call as in flight until dropped, finished or cancelled.
struct InFlight<'a>(&'a Monitor);

impl<'a> InFlight<'a> {
    fn enter(monitor: &'a Monitor) -> Self {
        let now = monitor.creating.fetch_add(1, Ordering::SeqCst) + 1;
        monitor.peak_creating.fetch_max(now, Ordering::SeqCst);
        if now > MAX_CONNECTING {
            monitor.violation(|| {
                format!("{now} create_connection calls in flight, max_connecting {MAX_CONNECTING}")
            });
        }
        Self(monitor)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.creating.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Carries out `act`: `Ok(())` for the successful behaviours.
async fn perform(act: Act) -> Result<(), ChaosError> {
    match act {
        Act::Ok => Ok(()),
        Act::Yield => {
            future::yield_now().await;
            Ok(())
        }
        Act::Sleep(d) => {
            // async-io's timer thread serves every executor this test runs on.
            smol::Timer::after(d).await;
            Ok(())
        }
        Act::Fail => Err(ChaosError("chaos: transient failure")),
        Act::Permanent => Err(ChaosError("chaos: permanent failure")),
        Act::Hang => future::pending().await,
        Act::Panic => deliberate_panic(),
    }
}

impl ConnectionManager for ChaosManager {
    type Connection = ChaosConn;
    type Error = ChaosError;

    async fn create_connection(&self) -> Result<ChaosConn, ChaosError> {
        let act = self.draw(&self.create);
        let in_flight = InFlight::enter(&self.monitor);
        perform(act).await?;
        drop(in_flight);
        // Counted live before the pool sees it: the pool holds its slot already.
        let live = self.monitor.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.monitor.peak_live.fetch_max(live, Ordering::SeqCst);
        if live > MAX_SIZE {
            self.monitor
                .violation(|| format!("{live} connections live, max_size {MAX_SIZE}"));
        }
        self.monitor.created.fetch_add(1, Ordering::SeqCst);
        Ok(ChaosConn {
            id: self.monitor.next_id.fetch_add(1, Ordering::SeqCst),
            born: Instant::now(),
            idle_since: AtomicU64::new(self.monitor.now()),
            in_use: AtomicBool::new(false),
            condemned: AtomicBool::new(false),
            broken: false,
            panic_on_return: false,
            monitor: Arc::clone(&self.monitor),
        })
    }

    async fn is_valid(&self, conn: &mut ChaosConn) -> Result<(), ChaosError> {
        let act = self.draw(&self.validate);
        let checking = Exclusive::enter(conn, Holder::Validation);
        // Condemned unless the check passes: a failed, timed-out, cancelled or panicking
        // validation destroys the connection.
        checking.condemn();
        perform(act).await?;
        conn.condemned.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn is_permanent_error(&self, error: &ChaosError) -> bool {
        error.0 == "chaos: permanent failure"
    }

    fn has_broken(&self, conn: &mut ChaosConn) -> bool {
        if conn.in_use.load(Ordering::SeqCst) {
            let id = conn.id;
            self.monitor
                .violation(|| format!("connection {id} returned while still in use"));
        }
        if conn.panic_on_return {
            deliberate_panic();
        }
        conn.broken
    }
}

// ---------------------------------------------------------------------------------------------
// Executors
// ---------------------------------------------------------------------------------------------

/// The executor the tasks run on: tokio (either flavour) or a smol executor.
#[derive(Clone)]
enum Exec {
    Tokio,
    Smol(Arc<smol::Executor<'static>>),
}

/// A spawned child task.
enum Child {
    Tokio(tokio::task::JoinHandle<()>),
    Smol(smol::Task<()>),
}

impl Exec {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> Child {
        match self {
            Exec::Tokio => Child::Tokio(tokio::spawn(task)),
            Exec::Smol(executor) => Child::Smol(executor.spawn(task)),
        }
    }

    async fn sleep(&self, duration: Duration) {
        match self {
            Exec::Tokio => tokio::time::sleep(duration).await,
            Exec::Smol(_) => {
                smol::Timer::after(duration).await;
            }
        }
    }
}

impl Child {
    /// Waits for the task to finish; a panic in it (never deliberate: tasks catch those) is
    /// passed on.
    async fn join(self) {
        match self {
            Child::Tokio(handle) => {
                if let Err(e) = handle.await {
                    panic::resume_unwind(e.into_panic());
                }
            }
            Child::Smol(task) => task.await,
        }
    }

    /// Aborts the task and waits until its future has been dropped.
    async fn abort(self) {
        match self {
            Child::Tokio(handle) => {
                handle.abort();
                if let Err(e) = handle.await {
                    if e.is_panic() {
                        panic::resume_unwind(e.into_panic());
                    }
                }
            }
            Child::Smol(task) => {
                task.cancel().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tasks
// ---------------------------------------------------------------------------------------------

/// What a task records about its operations.
#[derive(Default)]
struct Tally {
    ops: u64,
    gets_ok: u64,
    timeouts: u64,
    backend: u64,
    rejected: u64,
    /// Operations ended by a deliberate panic (in the manager or in the holder).
    panics: u64,
    /// Gets abandoned on purpose: raced against a timer, polled once, aborted.
    cancelled: u64,
    /// Lulls started (by task 0).
    lulls: u64,
    /// Latency of every awaited `get_connection` that returned, in microseconds.
    latencies: Vec<u32>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.gets_ok += other.gets_ok;
        self.timeouts += other.timeouts;
        self.backend += other.backend;
        self.rejected += other.rejected;
        self.panics += other.panics;
        self.cancelled += other.cancelled;
        self.lulls += other.lulls;
        self.latencies.extend(other.latencies);
    }
}

struct Ctx {
    pool: ConnectionPool<ChaosManager>,
    monitor: Arc<Monitor>,
    exec: Exec,
    /// The end of the current lull, in [`Monitor::now`] nanoseconds.
    lull_until: AtomicU64,
}

type Pool = ConnectionPool<ChaosManager>;
type Guard<'p> = PooledConnection<'p, ChaosManager>;
type GetResult<'p> = Result<Guard<'p>, PoolError<ChaosError>>;

/// Checks the pool's own numbers against their limits.
fn check_status(ctx: &Ctx) {
    let status = ctx.pool.status();
    if status.size > MAX_SIZE {
        ctx.monitor
            .violation(|| format!("status().size {} above max_size", status.size));
    }
    if status.connecting > MAX_CONNECTING {
        ctx.monitor.violation(|| {
            format!(
                "status().connecting {} above max_connecting",
                status.connecting
            )
        });
    }
    let live = ctx.monitor.live();
    if live > MAX_SIZE {
        ctx.monitor
            .violation(|| format!("{live} connections live, max_size {MAX_SIZE}"));
    }
}

/// Sorts a finished `get` into the tally; returns the guard on success.
fn record<'p>(ctx: &Ctx, tally: &mut Tally, result: GetResult<'p>) -> Option<Guard<'p>> {
    match result {
        Ok(guard) => {
            tally.gets_ok += 1;
            Some(guard)
        }
        Err(PoolError::Timeout { .. }) => {
            tally.timeouts += 1;
            None
        }
        Err(PoolError::Backend(_)) => {
            tally.backend += 1;
            None
        }
        Err(PoolError::Rejected(_)) => {
            tally.rejected += 1;
            None
        }
        Err(e) => {
            ctx.monitor
                .violation(|| format!("unexpected error from an open pool: {e}"));
            None
        }
    }
}

/// Awaits `get`, recording its latency and checking it against `deadline`.
async fn timed_get<'p>(
    ctx: &Ctx,
    tally: &mut Tally,
    deadline: Duration,
    get: impl Future<Output = GetResult<'p>>,
) -> Option<Guard<'p>> {
    let start = Instant::now();
    let result = get.await;
    let elapsed = start.elapsed();
    tally
        .latencies
        .push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
    if elapsed > deadline + DEADLINE_GRACE {
        ctx.monitor.violation(|| {
            format!("get_connection took {elapsed:?}, its deadline was {deadline:?}")
        });
    }
    record(ctx, tally, result)
}

/// Holds a checked-out connection, then lets it go in one of the ways a caller can, possibly
/// by panicking (deliberately).
async fn hold(ctx: &Ctx, rng: &mut fastrand::Rng, mut guard: Guard<'_>) {
    {
        let held = Exclusive::enter(&guard, Holder::Task);
        match rng.u32(0..100) {
            0..70 => {}
            70..90 => future::yield_now().await,
            _ => {
                ctx.exec
                    .sleep(Duration::from_micros(rng.u64(50..=1_000)))
                    .await;
            }
        }
        if rng.u32(0..1000) < 10 {
            // Dropped while the thread panics: the pool must destroy it.
            held.condemn();
            deliberate_panic();
        }
    }
    match rng.u32(0..1000) {
        0..10 => guard.mark_broken(),
        10..20 => guard.broken = true,
        20..23 => guard.panic_on_return = true,
        _ => {}
    }
    if guard.is_marked_broken() || guard.broken || guard.panic_on_return {
        guard.condemned.store(true, Ordering::SeqCst);
    }
    drop(guard);
}

/// `get_connection` and, on success, [`hold`].
async fn get_and_hold(ctx: &Ctx, rng: &mut fastrand::Rng, tally: &mut Tally) {
    if let Some(guard) = timed_get(ctx, tally, WAIT_TIMEOUT, ctx.pool.get_connection()).await {
        hold(ctx, rng, guard).await;
    }
}

/// One iteration of a task.
async fn operation(ctx: &Arc<Ctx>, rng: &mut fastrand::Rng, tally: &mut Tally) {
    match rng.u32(0..100) {
        0..50 => get_and_hold(ctx, rng, tally).await,
        50..60 => {
            // A caller's own timeout around `get`: the loser of the race is dropped.
            let limit = Duration::from_micros(rng.u64(100..=3_000));
            let raced = future::or(async { Some(ctx.pool.get_connection().await) }, async {
                ctx.exec.sleep(limit).await;
                None
            })
            .await;
            match raced {
                Some(result) => {
                    if let Some(guard) = record(ctx, tally, result) {
                        hold(ctx, rng, guard).await;
                    }
                }
                None => tally.cancelled += 1,
            }
        }
        60..66 => {
            let timeout = Duration::from_millis(rng.u64(1..=20));
            if let Some(guard) = timed_get(
                ctx,
                tally,
                timeout,
                ctx.pool.get_connection_timeout(timeout),
            )
            .await
            {
                hold(ctx, rng, guard).await;
            }
        }
        66..74 => {
            // Polled once (with a real waker, which may be woken later) and dropped.
            match future::poll_once(ctx.pool.get_connection()).await {
                Some(result) => {
                    if let Some(guard) = record(ctx, tally, result) {
                        hold(ctx, rng, guard).await;
                    }
                }
                None => tally.cancelled += 1,
            }
        }
        74..80 => {
            if let Some(guard) = ctx.pool.try_get_connection() {
                hold(ctx, rng, guard).await;
            }
        }
        80..85 => abort_while_holding(ctx, rng, tally).await,
        85..89 => abort_at_random(ctx, rng, tally).await,
        89..90 => {
            ctx.pool.cleanup_pass(ctx.pool.now());
        }
        _ => get_and_hold(ctx, rng, tally).await,
    }
}

/// Runs `op`, catching a deliberate panic (then returns `true`) and passing on any other.
async fn catching(op: impl Future<Output = ()>) -> bool {
    match AssertUnwindSafe(op).catch_unwind().await {
        Ok(()) => false,
        Err(payload) if payload.is::<ChaosPanic>() => true,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// A child task checks a connection out and holds it until it is aborted.
async fn abort_while_holding(ctx: &Arc<Ctx>, rng: &mut fastrand::Rng, tally: &mut Tally) {
    let (tx, rx) = smol::channel::bounded::<bool>(1);
    let child_ctx = Arc::clone(ctx);
    let child = ctx.exec.spawn(async move {
        let ctx = child_ctx;
        let mut scratch = Tally::default();
        catching(async {
            let got = timed_get(&ctx, &mut scratch, WAIT_TIMEOUT, ctx.pool.get_connection()).await;
            if let Some(guard) = got {
                let _held = Exclusive::enter(&guard, Holder::AbortedTask);
                let _ = tx.send(true).await;
                future::pending::<()>().await;
            }
        })
        .await;
        // Reached only when the checkout failed (or panicked): say so.
        let _ = tx.try_send(false);
    });
    let holding = rx.recv().await.unwrap_or(false);
    if holding {
        // Sometimes let it hold on a little longer before the abort.
        if rng.bool() {
            future::yield_now().await;
        }
        tally.cancelled += 1;
    }
    child.abort().await;
}

/// A child task runs a whole checkout-and-hold and is aborted at a random point of it.
async fn abort_at_random(ctx: &Arc<Ctx>, rng: &mut fastrand::Rng, tally: &mut Tally) {
    let child_ctx = Arc::clone(ctx);
    let mut child_rng = fastrand::Rng::with_seed(rng.u64(..));
    let child = ctx.exec.spawn(async move {
        let ctx = child_ctx;
        catching(get_and_hold(&ctx, &mut child_rng, &mut Tally::default())).await;
    });
    if rng.bool() {
        for _ in 0..rng.u32(0..4) {
            future::yield_now().await;
        }
    } else {
        ctx.exec
            .sleep(Duration::from_micros(rng.u64(50..=2_000)))
            .await;
    }
    tally.cancelled += 1;
    child.abort().await;
}

async fn task(ctx: Arc<Ctx>, index: usize, seed: u64, iterations: usize) -> Tally {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tally = Tally::default();
    for _ in 0..iterations {
        if index == 0 && rng.u32(0..LULL_ODDS) == 0 {
            let length = Duration::from_millis(rng.u64(50..=200));
            ctx.lull_until.store(
                ctx.monitor.now() + u64::try_from(length.as_nanos()).unwrap_or(u64::MAX),
                Ordering::SeqCst,
            );
            tally.lulls += 1;
        }
        let lull_left = ctx
            .lull_until
            .load(Ordering::SeqCst)
            .saturating_sub(ctx.monitor.now());
        if lull_left > 0 {
            ctx.exec.sleep(Duration::from_nanos(lull_left)).await;
        }
        if catching(operation(&ctx, &mut rng, &mut tally)).await {
            tally.panics += 1;
        }
        tally.ops += 1;
        check_status(&ctx);
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// A run
// ---------------------------------------------------------------------------------------------

/// The settings a seed chooses.
#[derive(Debug, Clone, Copy)]
struct Settings {
    validation: ValidationPolicy,
    max_lifetime: Duration,
    max_idle_time: Duration,
}

impl Settings {
    fn from_seed(rng: &mut fastrand::Rng) -> Self {
        let validation = match rng.u32(0..3) {
            0 => ValidationPolicy::Always,
            1 => ValidationPolicy::IdleLongerThan(Duration::from_micros(rng.u64(100..=2_000))),
            _ => ValidationPolicy::Never,
        };
        Self {
            validation,
            max_lifetime: Duration::from_millis(rng.u64(5..=100)),
            max_idle_time: Duration::from_millis(rng.u64(5..=100)),
        }
    }
}

/// The outcome of a run, as printed.
struct Figures {
    runtime: &'static str,
    seed: u64,
    settings: Settings,
    tally: Tally,
    violations: usize,
    described: Vec<String>,
    peak_live: usize,
    peak_creating: usize,
    created: u64,
    /// The pool's counters once the tasks had finished.
    counters: Counters,
    wall: Duration,
}

impl Figures {
    fn line(&self) -> String {
        let mut latencies = self.tally.latencies.clone();
        latencies.sort_unstable();
        let quantile = |q: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let index = ((latencies.len() - 1) as f64 * q).round() as usize;
            f64::from(latencies[index]) / 1000.0
        };
        let t = &self.tally;
        let d = &self.counters.destroyed;
        format!(
            "chaos {runtime} seed={seed}: ops {ops}, violations {violations}, peak live \
             {peak}/{max} (creating {creating}/{max_connecting}), get latency p50 {p50:.3} ms \
             p99 {p99:.3} ms max {pmax:.3} ms over {gets} gets; ok {ok}, timeouts {timeouts}, \
             backend errors {backend}, rejected {rejected}, deliberate panics {panics}, \
             cancelled {cancelled}, lulls {lulls}; created {created}, destroyed: broken \
             {broken}, panicked {panicked}, validation failed {failed} / aborted {aborted}, \
             lifetime {aged}, idle {idled}; {validation:?}, max_lifetime {lifetime:?}, \
             max_idle_time {idle:?}; wall {wall:.2} s",
            runtime = self.runtime,
            seed = self.seed,
            ops = t.ops,
            violations = self.violations,
            peak = self.peak_live,
            max = MAX_SIZE,
            creating = self.peak_creating,
            max_connecting = MAX_CONNECTING,
            p50 = quantile(0.5),
            p99 = quantile(0.99),
            pmax = quantile(1.0),
            gets = latencies.len(),
            ok = t.gets_ok,
            timeouts = t.timeouts,
            backend = t.backend,
            rejected = t.rejected,
            panics = t.panics,
            cancelled = t.cancelled,
            lulls = t.lulls,
            created = self.created,
            broken = d.broken,
            panicked = d.panicked,
            failed = d.validation_failed,
            aborted = d.validation_aborted,
            aged = d.max_lifetime,
            idled = d.idle_timeout,
            validation = self.settings.validation,
            lifetime = self.settings.max_lifetime,
            idle = self.settings.max_idle_time,
            wall = self.wall.as_secs_f64(),
        )
    }

    /// Prints the figures and fails the test on any violation, naming the seed to replay.
    fn report(&self, test: &str) {
        let line = self.line();
        // Straight to stderr, past the harness's capture, so that it shows for a passing test.
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
        assert!(
            self.violations == 0,
            "{line}\n{} violations; the first ones:\n  {}\nreplay: CHAOS_SEED={} cargo test \
             --all-features --test chaos {test} -- --nocapture",
            self.violations,
            self.described.join("\n  "),
            self.seed,
        );
    }
}

/// One chaos run on the current executor: build the pool, run the tasks, check quiescence,
/// drop the pool, check that nothing is left.
async fn run(
    runtime: &'static str,
    exec: Exec,
    pool_runtime: impl connection_pool::Runtime,
    seed: u64,
    iterations: usize,
) -> Figures {
    quiet_deliberate_panics();
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let settings = Settings::from_seed(&mut rng);
    let monitor = Arc::new(Monitor::new(&settings));
    let manager = ChaosManager {
        monitor: Arc::clone(&monitor),
        rng: Mutex::new(fastrand::Rng::with_seed(rng.u64(..))),
        create: Odds {
            ok: 930,
            yield_: 30,
            sleep: 20,
            fail: 8,
            permanent: 1,
            hang: 6,
            panic: 5,
        },
        validate: Odds {
            ok: 900,
            yield_: 40,
            sleep: 20,
            fail: 20,
            permanent: 0,
            hang: 10,
            panic: 10,
        },
    };
    let pool: Pool = ConnectionPool::builder(manager)
        .name("chaos")
        .max_size(MAX_SIZE)
        .max_connecting(MAX_CONNECTING)
        .wait_timeout(WAIT_TIMEOUT)
        .connection_timeout(CONNECTION_TIMEOUT)
        .validation_timeout(VALIDATION_TIMEOUT)
        .validation(settings.validation)
        .max_lifetime(settings.max_lifetime)
        .max_idle_time(settings.max_idle_time)
        // Cleanup passes come from the tasks, so that nothing runs once they have finished.
        .cleanup_interval(None)
        .runtime(pool_runtime)
        .build()
        .expect("a valid pool config");
    let ctx = Arc::new(Ctx {
        pool,
        monitor: Arc::clone(&monitor),
        exec: exec.clone(),
        lull_until: AtomicU64::new(0),
    });

    let results = Arc::new(Mutex::new(Tally::default()));
    let tasks: Vec<Child> = (0..TASKS)
        .map(|index| {
            let ctx = Arc::clone(&ctx);
            let results = Arc::clone(&results);
            let task_seed = rng.u64(..);
            exec.spawn(async move {
                let tally = task(ctx, index, task_seed, iterations).await;
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .merge(tally);
            })
        })
        .collect();
    for task in tasks {
        task.join().await;
    }

    // Quiescent: every task and child has finished, no cleanup task exists.
    let status = ctx.pool.status();
    let live = monitor.live();
    let counters = status.counters;
    let quiet = [
        ("status().size equals the live count", status.size == live),
        ("no creation in flight", status.connecting == 0),
        (
            "no manager call in flight",
            monitor.creating.load(Ordering::SeqCst) == 0,
        ),
        ("no waiter", status.waiters == 0),
        (
            "nothing checked out",
            status.in_use == 0 && status.idle == status.size,
        ),
        (
            "the pool created what the manager created",
            counters.created == monitor.created.load(Ordering::SeqCst),
        ),
        (
            "created - destroyed - detached equals size",
            counters.created - counters.destroyed.total() - counters.detached == status.size as u64,
        ),
    ];
    for (what, holds) in quiet {
        if !holds {
            monitor
                .violation(|| format!("once quiescent, not true: {what}: {status:?}, live {live}"));
        }
    }
    drop(ctx);
    let left = monitor.live();
    if left != 0 {
        monitor.violation(|| format!("{left} connections still live after the pool was dropped"));
    }

    let tally = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
    Figures {
        runtime,
        seed,
        settings,
        tally,
        violations: monitor.violations.load(Ordering::SeqCst),
        described: monitor
            .described
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        peak_live: monitor.peak_live.load(Ordering::SeqCst),
        peak_creating: monitor.peak_creating.load(Ordering::SeqCst),
        created: monitor.created.load(Ordering::SeqCst),
        counters,
        wall: started.elapsed(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Flavor {
    TokioMultiThread,
    TokioCurrentThread,
    Smol,
}

impl Flavor {
    const ALL: [Flavor; 3] = [
        Flavor::TokioMultiThread,
        Flavor::TokioCurrentThread,
        Flavor::Smol,
    ];

    fn name(self) -> &'static str {
        match self {
            Flavor::TokioMultiThread => "tokio-multi-thread",
            Flavor::TokioCurrentThread => "tokio-current-thread",
            Flavor::Smol => "smol",
        }
    }

    /// Runs one chaos run on a fresh executor of this flavour (two threads, but one for tokio
    /// current-thread).
    fn run(self, seed: u64, iterations: usize) -> Figures {
        match self {
            Flavor::TokioMultiThread | Flavor::TokioCurrentThread => {
                let mut builder = match self {
                    Flavor::TokioMultiThread => {
                        let mut b = tokio::runtime::Builder::new_multi_thread();
                        b.worker_threads(2);
                        b
                    }
                    _ => tokio::runtime::Builder::new_current_thread(),
                };
                let rt = builder.enable_all().build().expect("a tokio runtime");
                rt.block_on(async {
                    run(
                        self.name(),
                        Exec::Tokio,
                        TokioRuntime::current(),
                        seed,
                        iterations,
                    )
                    .await
                })
            }
            Flavor::Smol => {
                let executor = Arc::new(smol::Executor::new());
                let (stop, stopped) = smol::channel::bounded::<()>(1);
                std::thread::scope(|scope| {
                    let helper = Arc::clone(&executor);
                    scope.spawn(move || smol::block_on(helper.run(stopped.recv())));
                    let figures = smol::block_on(executor.run(run(
                        self.name(),
                        Exec::Smol(Arc::clone(&executor)),
                        SmolRuntime::new(),
                        seed,
                        iterations,
                    )));
                    drop(stop);
                    figures
                })
            }
        }
    }
}

/// `CHAOS_SEED` (decimal or 0x-hex) if set, else a fresh random seed.
fn seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CHAOS_SEED={text:?} is not a u64"))
        }
        Err(_) => fastrand::u64(..),
    }
}

fn chaos(flavor: Flavor, test: &str) {
    flavor.run(seed(), ITERATIONS).report(test);
}

#[test]
fn tokio_multi_thread_1() {
    chaos(Flavor::TokioMultiThread, "tokio_multi_thread_1");
}

#[test]
fn tokio_multi_thread_2() {
    chaos(Flavor::TokioMultiThread, "tokio_multi_thread_2");
}

#[test]
fn tokio_multi_thread_3() {
    chaos(Flavor::TokioMultiThread, "tokio_multi_thread_3");
}

#[test]
fn tokio_current_thread_1() {
    chaos(Flavor::TokioCurrentThread, "tokio_current_thread_1");
}

#[test]
fn tokio_current_thread_2() {
    chaos(Flavor::TokioCurrentThread, "tokio_current_thread_2");
}

#[test]
fn tokio_current_thread_3() {
    chaos(Flavor::TokioCurrentThread, "tokio_current_thread_3");
}

#[test]
fn smol_1() {
    chaos(Flavor::Smol, "smol_1");
}

#[test]
fn smol_2() {
    chaos(Flavor::Smol, "smol_2");
}

#[test]
fn smol_3() {
    chaos(Flavor::Smol, "smol_3");
}

/// The long variant; see the module docs. Without `CHAOS_SOAK` it returns at once.
#[test]
fn soak() {
    if std::env::var_os("CHAOS_SOAK").is_none_or(|v| v.is_empty() || v == "0") {
        return;
    }
    let seconds = std::env::var("CHAOS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0;
    while Instant::now() < until {
        let flavor = Flavor::ALL[runs % Flavor::ALL.len()];
        flavor.run(seed(), SOAK_ITERATIONS).report("soak");
        runs += 1;
    }
    eprintln!("chaos soak: {runs} runs in {seconds} s, no violation");
}
