//! Shared test support: a manager whose behaviour each test sets (succeed, fail, hang, panic,
//! delay), an independent count of live connections, and a runtime with a manual clock.
#![allow(dead_code)]

use connection_pool::{BoxFuture, ConnectionManager, Runtime};
use std::{
    collections::HashSet,
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// What `create_connection` or `is_valid` does next.
#[derive(Debug, Clone, Copy)]
pub enum Gate {
    Ok,
    /// Fails after yielding once, so that a failing call is in flight while others run.
    Fail,
    /// Fails with an error the manager classifies as permanent (think: wrong password).
    Reject,
    /// Fails with an error whose `Display` panics.
    FailUnprintable,
    /// Fails with an error on which the manager's `is_permanent_error` panics.
    FailUnclassifiable,
    /// Never completes.
    Hang,
    Panic,
    /// Completes successfully after a real delay.
    Delay(Duration),
    /// Completes successfully once the function returns `true` (checked every millisecond):
    /// a creation the test lets finish when it is ready.
    Until(fn() -> bool),
}

#[derive(Debug)]
pub struct TestError(pub &'static str);

/// The message of [`Gate::FailUnprintable`]'s error.
const UNPRINTABLE: &str = "unprintable";

impl fmt::Display for TestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        assert_ne!(
            self.0, UNPRINTABLE,
            "this error's Display panics on purpose"
        );
        f.write_str(self.0)
    }
}

impl std::error::Error for TestError {}

/// Counts kept by the manager, independent of the pool's own numbers.
#[derive(Debug)]
pub struct Counts {
    /// Connections that exist now (created minus dropped).
    pub live: AtomicUsize,
    /// The highest `live` ever seen.
    pub peak: AtomicUsize,
    pub create_calls: AtomicUsize,
    /// `create_connection` calls in flight now, and the most ever in flight at once.
    pub connecting: AtomicUsize,
    pub peak_connecting: AtomicUsize,
    pub validations: AtomicUsize,
    next_id: AtomicUsize,
    create_gate: Mutex<Gate>,
    validate_gate: Mutex<Gate>,
    /// Ids that `has_broken` reports as broken.
    broken: Mutex<HashSet<usize>>,
}

impl Counts {
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub fn create_calls(&self) -> usize {
        self.create_calls.load(Ordering::SeqCst)
    }

    pub fn peak_connecting(&self) -> usize {
        self.peak_connecting.load(Ordering::SeqCst)
    }

    pub fn validations(&self) -> usize {
        self.validations.load(Ordering::SeqCst)
    }

    pub fn set_create(&self, gate: Gate) {
        *self.create_gate.lock().unwrap() = gate;
    }

    pub fn set_validate(&self, gate: Gate) {
        *self.validate_gate.lock().unwrap() = gate;
    }

    pub fn break_connection(&self, id: usize) {
        self.broken.lock().unwrap().insert(id);
    }
}

#[derive(Debug, Clone)]
pub struct TestManager {
    pub counts: Arc<Counts>,
}

impl TestManager {
    pub fn new() -> Self {
        Self {
            counts: Arc::new(Counts {
                live: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                create_calls: AtomicUsize::new(0),
                connecting: AtomicUsize::new(0),
                peak_connecting: AtomicUsize::new(0),
                validations: AtomicUsize::new(0),
                next_id: AtomicUsize::new(0),
                create_gate: Mutex::new(Gate::Ok),
                validate_gate: Mutex::new(Gate::Ok),
                broken: Mutex::new(HashSet::new()),
            }),
        }
    }
}

/// A fake connection that counts itself live until dropped, and detects being used by two
/// holders at once.
#[derive(Debug)]
pub struct TestConn {
    pub id: usize,
    in_use: AtomicBool,
    counts: Arc<Counts>,
}

impl TestConn {
    /// Marks the connection as used until the returned claim is dropped; panics if it already
    /// was, which would mean two tasks hold the same connection.
    pub fn claim(&self) -> Claim<'_> {
        assert!(
            !self.in_use.swap(true, Ordering::SeqCst),
            "connection {} held by two tasks",
            self.id
        );
        Claim(self)
    }
}

/// One holder's use of a [`TestConn`]; see [`TestConn::claim`].
pub struct Claim<'a>(&'a TestConn);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.in_use.store(false, Ordering::SeqCst);
    }
}

impl Drop for TestConn {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn pass(gate: Gate) -> Result<(), TestError> {
    match gate {
        Gate::Ok => Ok(()),
        Gate::Fail => {
            futures_lite::future::yield_now().await;
            Err(TestError("refused by the test"))
        }
        Gate::Reject => Err(TestError("rejected: bad password")),
        Gate::FailUnprintable => Err(TestError(UNPRINTABLE)),
        Gate::FailUnclassifiable => Err(TestError("unclassifiable")),
        Gate::Hang => std::future::pending().await,
        Gate::Panic => panic!("test manager panics on purpose"),
        Gate::Delay(d) => {
            async_io_sleep(d).await;
            Ok(())
        }
        Gate::Until(released) => {
            while !released() {
                async_io_sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        }
    }
}

/// A real-time sleep that works on any executor (async-io runs its own timer thread).
pub async fn async_io_sleep(d: Duration) {
    smol::Timer::after(d).await;
}

impl ConnectionManager for TestManager {
    type Connection = TestConn;
    type Error = TestError;

    async fn create_connection(&self) -> Result<TestConn, TestError> {
        self.counts.create_calls.fetch_add(1, Ordering::SeqCst);
        let gate = *self.counts.create_gate.lock().unwrap();
        let in_flight = InFlight::enter(&self.counts);
        pass(gate).await?;
        drop(in_flight);
        let live = self.counts.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.peak.fetch_max(live, Ordering::SeqCst);
        Ok(TestConn {
            id: self.counts.next_id.fetch_add(1, Ordering::SeqCst),
            in_use: AtomicBool::new(false),
            counts: Arc::clone(&self.counts),
        })
    }

    async fn is_valid(&self, _conn: &mut TestConn) -> Result<(), TestError> {
        self.counts.validations.fetch_add(1, Ordering::SeqCst);
        let gate = *self.counts.validate_gate.lock().unwrap();
        pass(gate).await
    }

    fn is_permanent_error(&self, error: &TestError) -> bool {
        assert_ne!(
            error.0, "unclassifiable",
            "is_permanent_error panics on purpose"
        );
        error.0.starts_with("rejected")
    }

    fn has_broken(&self, conn: &mut TestConn) -> bool {
        self.counts.broken.lock().unwrap().contains(&conn.id)
    }
}

/// Counts a `create_connection` call as in flight until dropped (also when cancelled).
struct InFlight<'a>(&'a Counts);

impl<'a> InFlight<'a> {
    fn enter(counts: &'a Counts) -> Self {
        let now = counts.connecting.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak_connecting.fetch_max(now, Ordering::SeqCst);
        Self(counts)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
    sleepers: Mutex<Vec<Waker>>,
}

impl ManualClock {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            sleepers: Mutex::new(Vec::new()),
        })
    }

    pub fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }

    /// Sleeps parked on this clock since its last advance (a sleep polled twice counts twice).
    pub fn sleepers(&self) -> usize {
        self.sleepers.lock().unwrap().len()
    }

    /// Moves the clock forward and wakes every sleeper so it can check its deadline.
    pub fn advance(&self, by: Duration) {
        *self.offset.lock().unwrap() += by;
        for waker in self.sleepers.lock().unwrap().drain(..) {
            waker.wake();
        }
    }
}

struct ManualSleep {
    clock: Arc<ManualClock>,
    until: Instant,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.until {
            return Poll::Ready(());
        }
        self.clock.sleepers.lock().unwrap().push(cx.waker().clone());
        // Re-check: an advance between the first check and the registration woke nobody.
        if self.clock.now() >= self.until {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A `Runtime` that spawns on tokio but whose timers follow a [`ManualClock`]. It keeps the
/// handles of what it spawned, so tests can tell when the cleanup task has ended.
pub struct ManualRuntime {
    pub clock: Arc<ManualClock>,
    handle: tokio::runtime::Handle,
    pub spawned: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl ManualRuntime {
    pub fn new(clock: &Arc<ManualClock>) -> Self {
        Self {
            clock: Arc::clone(clock),
            handle: tokio::runtime::Handle::current(),
            spawned: Arc::default(),
        }
    }
}

/// How many of the tasks a `ManualRuntime` spawned are still running.
pub fn running(spawned: &Mutex<Vec<tokio::task::JoinHandle<()>>>) -> usize {
    spawned
        .lock()
        .unwrap()
        .iter()
        .filter(|t| !t.is_finished())
        .count()
}

impl Runtime for ManualRuntime {
    fn spawn(&self, task: BoxFuture<()>) {
        let handle = self.handle.spawn(task);
        self.spawned.lock().unwrap().push(handle);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(ManualSleep {
            clock: Arc::clone(&self.clock),
            until: self.clock.now() + duration,
        })
    }

    fn now(&self) -> Instant {
        self.clock.now()
    }
}

/// How the timers and the clock of a [`FlakyTimers`] runtime fail.
#[derive(Debug, Default)]
pub struct TimerFaults {
    /// The clock's next reading panics.
    reading: AtomicBool,
    /// Timers still to fail; `usize::MAX` for every one from now on.
    left: AtomicUsize,
    /// Fail when first polled rather than when created.
    on_poll: AtomicBool,
    /// Timers asked for.
    pub sleeps: AtomicUsize,
}

impl TimerFaults {
    /// The next `timers` timers panic, when created or when first polled.
    pub fn fail(&self, timers: usize, on_poll: bool) {
        self.on_poll.store(on_poll, Ordering::SeqCst);
        self.left.store(timers, Ordering::SeqCst);
    }

    /// The clock's next reading panics.
    pub fn fail_next_reading(&self) {
        self.reading.store(true, Ordering::SeqCst);
    }

    /// Whether the timer being made now fails.
    fn take(&self) -> bool {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                usize::MAX => Some(usize::MAX),
                left => Some(left - 1),
            })
            .is_ok()
    }
}

/// A [`ManualRuntime`] whose timers (or clock) panic when the test says so: a custom
/// runtime's bug, or tokio's timer with the time driver off.
pub struct FlakyTimers {
    pub inner: ManualRuntime,
    pub faults: Arc<TimerFaults>,
}

impl FlakyTimers {
    pub fn new(clock: &Arc<ManualClock>) -> Self {
        Self {
            inner: ManualRuntime::new(clock),
            faults: Arc::default(),
        }
    }
}

impl Runtime for FlakyTimers {
    fn spawn(&self, task: BoxFuture<()>) {
        self.inner.spawn(task);
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        self.faults.sleeps.fetch_add(1, Ordering::SeqCst);
        if !self.faults.take() {
            return self.inner.sleep(duration);
        }
        assert!(
            self.faults.on_poll.load(Ordering::SeqCst),
            "the test's timer fails on purpose when created"
        );
        Box::pin(async { panic!("the test's timer fails on purpose when polled") })
    }

    fn now(&self) -> Instant {
        let fail = self.faults.reading.swap(false, Ordering::SeqCst);
        assert!(!fail, "the test's clock fails on purpose");
        self.inner.now()
    }
}

/// tokio's timers and the system clock, without the crate's `tokio` feature: for the few
/// tests whose point needs real time to pass between two readings.
pub struct RealRuntime;

impl Runtime for RealRuntime {
    fn spawn(&self, task: BoxFuture<()>) {
        drop(tokio::spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Waits (in real time, at most 10 s) until `condition` holds; panics with `what` otherwise.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        async_io_sleep(Duration::from_millis(1)).await;
    }
}

/// Advances `clock` by `step` (letting spawned tasks run in between) until `condition` holds;
/// for driving the background cleanup loop, whose exact tick times a test cannot observe.
pub async fn advance_until(
    clock: &ManualClock,
    step: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        clock.advance(step);
        async_io_sleep(Duration::from_millis(2)).await;
    }
    panic!("the clock advanced 1000 steps and still not {what}");
}

/// Polls `future` once and drops it: how the models and tests express cancellation.
pub fn poll_once_then_drop<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = std::pin::pin!(future);
    let waker = Waker::noop();
    future.as_mut().poll(&mut Context::from_waker(waker))
}
