//! `ConnectionPool` and the state its handles and guards share.
//!
//! # Implementation details
//!
//! ## State
//!
//! * `idle`: a bounded lock-free queue (crossbeam's `ArrayQueue`) of connections nobody holds,
//!   with capacity `max_size`.
//! * `capacity`: the number of *slots* in use (`size`) and of creations in flight, in one
//!   atomic word (see `capacity.rs`). A slot is taken together with a connect permit (by one
//!   compare-and-swap, never past `max_size` or `max_connecting`) before a connection is
//!   created; the permit is given back when the creation ends, the slot travels with the
//!   connection through the idle queue and every guard, and is given back only after the
//!   connection value has been dropped (or detached). Every connection that exists owns a
//!   slot, so at most `max_size` connections ever exist and a push into the idle queue can
//!   never find it full.
//! * `waitlist`: the `get_connection` calls waiting in line, oldest first, each parked on its
//!   own `event-listener` event (see `waitlist.rs`), and the count of those still waiting.
//! * `governor`: failures in a row, the next instant a creation may start while failing, and
//!   the last creation error (see `governor.rs`).
//! * `closed`: set once by `close()`; never cleared.
//!
//! ## Checkout and hand-off
//!
//! A getter tries, in order: pop an idle connection (only when nobody waits: waiters are
//! served first); take a slot and a permit and create one. When both fail it takes a place at
//! the back of the wait list, re-checks, and only then waits on its place.
//!
//! A connection that becomes available (a return, the cleanup pass keeping one, the
//! `min_idle` top-up) goes through [`Shared::give`]: it is handed straight to the oldest
//! waiter, which wakes up owning it; only when nobody waits does it enter the idle queue. So a
//! task that returns a connection and asks again at once queues behind the waiters instead of
//! taking it back (bb8#243), and a woken waiter never finds its connection gone.
//!
//! When a slot or permit comes free and a creation could begin now (a slot *and* a permit
//! free; both live in one atomic word, so whoever frees the second sees both), both are
//! reserved and granted to the oldest waiter, which creates with them (while creations fail,
//! that waiter is only woken to ask the governor, and only when no creation is in flight:
//! the governor then allows one at a time, and that creation's end wakes waiters itself). A
//! getter that destroys the connection it holds (expired, failed validation) keeps its slot
//! and creates with it, if a permit is free, rather than grant it to the next in line and
//! queue behind. A creation failure and the first
//! success after failures wake every waiter, so that each recomputes what the connect governor
//! allows.
//!
//! ## Lost wake-ups
//!
//! Two races could strand a waiter next to an idle connection, and both are closed by "write,
//! full fence, read" on each side, so that at least one side sees the other:
//!
//! * A getter publishes its place, then looks at the idle queue; `give` pushes into the idle
//!   queue, then looks at the wait list. If the getter finds a connection it passes it through
//!   `give`, which serves the oldest waiter (perhaps the getter itself). If `give` finds a
//!   waiter it takes a connection back out of the idle queue and hands it over. A getter that
//!   has counted itself but not yet published its place is left to find the connection itself.
//! * A getter publishes its place, then tries to create; a slot or permit release frees
//!   capacity, then looks at the wait list and wakes the oldest waiter. A failed
//!   compare-and-swap on the capacity word is only a load, so the release side fences too
//!   (`wake_creator`, `create_failed`) instead of relying on the wait queue's internals.
//!
//! A waiter that gives up (timeout, cancellation) after being handed a connection gives the
//! connection on to the next waiter; one that gives up after being woken wakes the next.
//!
//! ## Closing
//!
//! `close()` sets `closed`, fences, wakes every waiter, then drains the idle queue. A
//! concurrent `give` pushes its connection, fences and then re-reads `closed`, draining the
//! queue itself if it is set, so no connection stays idle in a closed pool.
//!
//! ## Slots and cancellation
//!
//! Every slot that is not inside a `PooledConnection` or the idle queue is held by a [`Slot`]
//! or [`Creating`] guard, so a dropped `get` future, a failed or timed-out create, a failed
//! validation and a panic in user code all give the slot (and permit) back and wake a waiter.

use crate::{
    background::StopSignal,
    capacity::Capacity,
    checkout::{call_deadline_first, earlier},
    clock::{self, Stamp},
    config::{Config, ValidationPolicy},
    connection::{Conn, InUse, OwnsSlot, PooledConnection},
    error::PoolError,
    governor::{FailureMark, Governor},
    leak::{Checkout, LeakWatch},
    manager::ConnectionManager,
    observer::{CreateFailure, PoolObserver},
    runtime::Runtime,
    runtime::run_bounded,
    status::{DestroyReason, Occupancy, Stats, Status},
    sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, IdleQueue, Ordering, StdArc, fence},
    throttle::{HeldBack, Throttle},
    waitlist::WaitList,
};
use std::{
    fmt,
    panic::Location,
    time::{Duration, Instant},
};

/// An async pool of connections created by a [`ConnectionManager`].
///
/// Cloning is cheap and every clone refers to the same pool; it is `Send + Sync`. Dropping the
/// last handle closes the pool (see [`close`](Self::close)); connections still checked out are
/// destroyed when their guards drop. A handle kept inside the pool, by its manager, observer
/// or runtime, is a reference cycle: that pool stays open until [`close`](Self::close) is
/// called, and its memory is never freed.
///
/// # Examples
///
/// ```
/// # use connection_pool::{ConnectionManager, ConnectionPool};
/// # struct Numbers;
/// # impl ConnectionManager for Numbers {
/// #     type Connection = u32;
/// #     type Error = std::io::Error;
/// #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
/// #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
/// # }
/// # futures_lite::future::block_on(async {
/// let pool = ConnectionPool::builder(Numbers)
///     .max_size(4)
///     .no_runtime() // no timeouts, no cleanup task: nothing needs an executor
///     .build()?;
///
/// let conn = pool.get_connection().await?;
/// assert_eq!(*conn, 7);
/// drop(conn); // back in the pool
/// assert_eq!(pool.status().idle, 1);
/// # Ok::<(), connection_pool::PoolError<std::io::Error>>(())
/// # }).unwrap();
/// ```
pub struct ConnectionPool<M: ConnectionManager> {
    pub(crate) shared: Arc<Shared<M>>,
}

/// State shared by the pool's handles, its guards and its cleanup task.
pub(crate) struct Shared<M: ConnectionManager> {
    pub(crate) manager: M,
    pub(crate) config: Config,
    /// Supplies timers, spawning and the clock; `None` only when nothing needs it.
    pub(crate) runtime: Option<Box<dyn Runtime>>,
    /// Connections nobody holds. Each owns one slot of `size`.
    pub(crate) idle: IdleQueue<Conn<M::Connection>>,
    /// Slots in use (connections plus creations in flight, never above `max_size`) and
    /// creations in flight (never above `max_connecting`).
    pub(crate) capacity: Capacity,
    /// Backoff and fail-fast after creation failures; the last creation error.
    pub(crate) governor: Governor<M::Error>,
    /// Checkout records for leak detection; `None` (and free) unless a threshold is set.
    pub(crate) leaks: Option<LeakWatch>,
    /// Set once by `close`.
    pub(crate) closed: AtomicBool,
    /// Live `ConnectionPool` handles; the last one to drop closes the pool.
    pub(crate) handles: AtomicUsize,
    /// `get_connection` calls waiting in line, served oldest first by hand-off.
    pub(crate) waitlist: WaitList<Conn<M::Connection>>,
    pub(crate) stats: Stats,
    /// Keeps a timeout on every waiting call (an outage) from writing a warning each.
    pub(crate) timeout_warnings: Throttle,
    /// Likewise for creation failures: without a runtime there is no backoff, and every
    /// call that needs a connection during an outage dials and fails.
    create_failure_warnings: Throttle,
    /// Receives the pool's events; `None` (one branch per event site) unless set.
    pub(crate) observer: Option<Box<dyn PoolObserver>>,
    /// Bumped to stop the running cleanup loop; a loop runs while its number is current.
    pub(crate) cleanup_generation: AtomicU64,
    /// Wakes the background loops to re-check whether they should end.
    pub(crate) background_stop: StopSignal,
    /// The expiry and validation settings in the units of a [`Stamp`].
    limits: Limits,
    /// The runtime's coarse clock is the system's (or there is no runtime): read it directly.
    system_clock: bool,
}

/// `max_idle_time` and the validation policy as nanoseconds, for the checks on every checkout.
struct Limits {
    /// `Stamp::MAX` when unset.
    max_idle: u64,
    validation: Validation,
}

enum Validation {
    Always,
    Never,
    /// When idle for more than this many nanoseconds.
    IdleOver(u64),
}

impl Limits {
    fn new(config: &Config) -> Self {
        Self {
            max_idle: config.max_idle_time.map_or(Stamp::MAX, clock::nanos),
            validation: match config.validation {
                ValidationPolicy::Always => Validation::Always,
                ValidationPolicy::Never => Validation::Never,
                ValidationPolicy::IdleLongerThan(t) => Validation::IdleOver(clock::nanos(t)),
            },
        }
    }
}

impl<M: ConnectionManager> Shared<M> {
    pub(crate) fn new(
        manager: M,
        config: Config,
        runtime: Option<Box<dyn Runtime>>,
        observer: Option<Box<dyn PoolObserver>>,
    ) -> Self {
        let epoch = runtime.as_ref().map_or_else(Instant::now, |r| r.now());
        let system_clock = runtime
            .as_ref()
            .is_none_or(|r| r.coarse_now_is_system_clock());
        Self {
            limits: Limits::new(&config),
            system_clock,
            idle: IdleQueue::new(config.max_size),
            capacity: Capacity::new(config.max_size),
            governor: Governor::new(epoch, runtime.is_some()),
            leaks: config
                .leak_detection_threshold
                .map(|threshold| LeakWatch::new(threshold, config.max_size)),
            manager,
            config,
            runtime,
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            waitlist: WaitList::new(),
            stats: Stats::default(),
            timeout_warnings: Throttle::new(),
            create_failure_warnings: Throttle::new(),
            observer,
            cleanup_generation: AtomicU64::new(0),
            background_stop: StopSignal::new(),
        }
    }

    /// The pool's clock: the runtime's, or the system's when there is no runtime.
    pub(crate) fn now(&self) -> Instant {
        match &self.runtime {
            Some(runtime) => runtime.now(),
            None => Instant::now(),
        }
    }

    /// The clock idle times and lifetimes are measured with: cheap enough for every checkout
    /// and return, and within a few milliseconds of [`now`](Self::now) (see
    /// [`Runtime::coarse_now`]).
    pub(crate) fn coarse_now(&self) -> Instant {
        match &self.runtime {
            Some(runtime) => runtime.coarse_now(),
            None => crate::clock::coarse_now(),
        }
    }

    /// [`coarse_now`](Self::coarse_now) as a [`Stamp`], what connections are stamped with.
    #[inline]
    pub(crate) fn stamp(&self) -> Stamp {
        match &self.runtime {
            Some(runtime) if !self.system_clock => clock::stamp_of(runtime.coarse_now()),
            _ => clock::coarse_stamp(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Wraps a freshly created connection, stamping its lifetime with up to 2.5 % jitter so
    /// that connections created in a burst do not all expire together.
    pub(crate) fn new_conn(&self, raw: M::Connection, now: Stamp) -> Conn<M::Connection> {
        let expires_at = self.config.max_lifetime.map_or(Stamp::MAX, |lifetime| {
            let jitter = lifetime.mul_f64(fastrand::f64() * 0.025);
            now.saturating_add(clock::nanos(lifetime - jitter))
        });
        Conn::new(raw, now, expires_at)
    }

    /// Why an idle connection must not be handed out any more, if it must not.
    #[inline]
    pub(crate) fn expiry(&self, conn: &Conn<M::Connection>, now: Stamp) -> Option<DestroyReason> {
        if conn.expired(now) {
            return Some(DestroyReason::MaxLifetime);
        }
        // Connections up to `min_idle` are kept warm however long they wait.
        if now.saturating_sub(conn.idle_since) >= self.limits.max_idle
            && self.idle.len() >= self.config.min_idle
        {
            return Some(DestroyReason::IdleTimeout);
        }
        None
    }

    #[inline]
    pub(crate) fn needs_validation(&self, conn: &Conn<M::Connection>, now: Stamp) -> bool {
        match self.limits.validation {
            Validation::Always => true,
            Validation::Never => false,
            Validation::IdleOver(threshold) => now.saturating_sub(conn.idle_since) > threshold,
        }
    }

    /// Slots in use: connections that exist plus creations in flight.
    pub(crate) fn size(&self) -> usize {
        self.capacity.size()
    }

    /// Gives a slot back; the oldest waiter may now create with it (see `wake_creator`).
    ///
    /// While someone waits and creations work, the slot is not freed first: it becomes a
    /// creation in flight (a permit added to it) and goes straight to the oldest waiter as a
    /// grant, so that a caller arriving in between cannot take it and leave that waiter
    /// parked. With nobody in line to take the grant, or no permit free, the slot is freed and
    /// `wake_creator` does the rest.
    pub(crate) fn release_slot(&self) {
        if self.grants_pass_on() && self.capacity.try_add_permit(self.config.max_connecting) {
            if self.waitlist.grant() {
                return;
            }
            self.capacity.abort_create();
        } else {
            self.capacity.release_slot();
        }
        self.wake_creator();
    }

    /// Whether capacity coming free should go straight to the oldest waiter as a grant,
    /// never free in between (see `release_slot`): someone waits, and creations work (while
    /// they fail the governor decides who tries; see `wake_creator`).
    fn grants_pass_on(&self) -> bool {
        self.waitlist.waiting() != 0 && !self.governor.is_failing()
    }

    /// When a slot and a permit are free, reserves them and grants them to the oldest waiter,
    /// which creates a connection with them (while creations fail, it wakes that waiter to ask
    /// the governor instead, if no creation is in flight). Whoever frees the second of the two
    /// sees both free (they share one atomic word), so the grant is not lost; reserving them
    /// first keeps a caller that comes along before the waiter runs from taking them and
    /// sending it to the back. (While someone waits and creations work, a destroyed
    /// connection's slot, a finished creation's permit and a dropped creation's slot and
    /// permit skip this: they pass to the oldest waiter without being free in between; see
    /// `release_slot`.)
    pub(crate) fn wake_creator(&self) {
        // Pairs with the fence a new waiter issues between publishing its place and trying to
        // take a slot: either it sees the slot or permit just freed, or this sees its place.
        // (crossbeam's `SegQueue::pop` happens to fence too; the pool must not rely on that.)
        fence(Ordering::SeqCst);
        if self.governor.is_failing() {
            // While creations fail the governor decides who may try: wake the oldest to ask.
            // It allows one creation at a time, so while one is in flight a woken waiter could
            // only queue again (in the front lane, in its order of arrival); that
            // creation's end (success, failure or drop) wakes waiters itself.
            if self.capacity.can_create(1) {
                self.waitlist.wake_one();
            }
            return;
        }
        // Reserve the slot and permit for the oldest waiter, so that a caller that comes along
        // before it runs cannot take them and send it to the back of the line.
        while self.capacity.try_begin_create(self.config.max_connecting) {
            if self.waitlist.grant() {
                return;
            }
            self.capacity.abort_create();
            // A waiter that published its place after `grant` found none may have seen the
            // reservation and parked: look again (each round pops what it finds, so this ends).
            fence(Ordering::SeqCst);
            if self.waitlist.is_empty() {
                return;
            }
        }
    }

    /// Drops a connection (idle or checked out), then gives its slot back.
    pub(crate) fn destroy(&self, conn: impl OwnsSlot, reason: DestroyReason) {
        // The connection's `Drop` is user code: should it panic, the guard still counts it and
        // gives its slot back, or a pool of size 1 could never serve again.
        let unwinding = PanicGuard::for_reason(self, reason);
        drop(conn);
        unwinding.disarm();
        self.destroyed(reason);
    }

    /// Destroys a connection the calling `get` held and keeps its slot for the call's next
    /// try, as a creation with a permit added, so that the call does not grant the slot to the
    /// next in line and then queue behind it. Gives the slot back as [`destroy`](Self::destroy)
    /// does (`None`) while creations fail (the governor decides who tries) or when no permit
    /// is free.
    pub(crate) fn destroy_keeping_slot(
        &self,
        conn: impl OwnsSlot,
        reason: DestroyReason,
    ) -> Option<Creating<'_, M>> {
        if self.governor.is_failing() {
            self.destroy(conn, reason);
            return None;
        }
        // As in `destroy`: should the connection's `Drop` panic, the guard counts it, gives
        // its slot back and tells the observer.
        let unwinding = PanicGuard::for_reason(self, reason);
        drop(conn);
        unwinding.disarm();
        if !self.capacity.try_add_permit(self.config.max_connecting) {
            self.destroyed(reason);
            return None;
        }
        // The slot and the permit are the creation's now: should the observer panic, dropping
        // it gives both back.
        let creating = Creating {
            shared: self,
            armed: true,
        };
        self.stats.destroyed(reason);
        self.observe_in_drop(|observer| observer.on_destroy(reason));
        self.log_destroyed(reason);
        Some(creating)
    }

    /// Counts a connection that was just dropped and gives its slot back.
    fn destroyed(&self, reason: DestroyReason) {
        self.stats.destroyed(reason);
        // Slot first: an observer that panics must not take the slot with it.
        self.release_slot();
        self.observe_in_drop(|observer| observer.on_destroy(reason));
        self.log_destroyed(reason);
    }

    fn log_destroyed(&self, reason: DestroyReason) {
        log::debug!(
            "{}: destroyed a connection ({}); {}",
            self.config.name,
            reason.as_str(),
            self.occupancy(),
        );
    }

    /// Calls the observer, if there is one, from code that guards run in `Drop`; see
    /// [`user_code_in_drop`].
    pub(crate) fn observe_in_drop(&self, event: impl FnOnce(&dyn PoolObserver)) {
        if let Some(observer) = self.observer.as_deref() {
            user_code_in_drop(|| event(observer));
        }
    }

    /// Makes a connection (which owns a slot) available: to the oldest waiter if anyone
    /// waits, else into the idle queue. Synchronous and bounded: each retry consumes an entry
    /// of the wait list.
    ///
    /// Inlined, so that the connection goes from the caller's registers into the queue: passed
    /// by reference to an out-of-line `give`, it was written and read back at different widths,
    /// a store-forwarding stall measured at about 4 ns of an uncontended return.
    #[inline(always)]
    pub(crate) fn give(&self, conn: Conn<M::Connection>) {
        // Nobody counted as waiting: skip the wait list (the common, uncontended return). A
        // waiter counted after this load is caught by the re-check after the push below.
        if self.waitlist.waiting() != 0 {
            self.give_in_line(conn);
            return;
        }
        self.push_idle(conn);
    }

    /// [`give`](Self::give) while someone waits: hands `conn` to the oldest waiting place
    /// (`true`), or puts it into the idle queue when no published place is waiting (`false`).
    /// Out of line, so that the uncontended return stays small.
    #[inline(never)]
    pub(crate) fn give_in_line(&self, conn: Conn<M::Connection>) -> bool {
        match self.waitlist.offer(conn) {
            Ok(()) => true,
            Err(conn) => {
                self.push_idle(conn);
                false
            }
        }
    }

    /// Puts a connection into the idle queue, then makes sure no waiter that showed up
    /// meanwhile is left waiting with it there.
    #[inline(always)]
    fn push_idle(&self, conn: Conn<M::Connection>) {
        if let Err(conn) = self.idle.push(conn) {
            self.overflow(conn);
            return;
        }
        self.recheck_waiters();
    }

    /// Unreachable: every queued connection owns one of `max_size` slots.
    #[cold]
    #[inline(never)]
    fn overflow(&self, conn: Conn<M::Connection>) {
        debug_assert!(false, "idle queue overflow: slot accounting is broken");
        self.destroy(conn, DestroyReason::Closed);
    }

    /// The re-check after a push into the idle queue. Each retry consumes an entry of the wait
    /// list.
    fn recheck_waiters(&self) {
        loop {
            // Pairs with the fence a new waiter issues between publishing its place and looking
            // at the idle queue, and with the one in `close` (see "Lost wake-ups" and
            // "Closing" above). It is 4-9 ns of an uncontended get+drop
            // (benches/peers/results/ab-return-fence.txt); the push's own compare-and-swap
            // would order it in crossbeam-queue 0.3, but crossbeam does not promise that.
            fence(Ordering::SeqCst);
            if self.closed.load(Ordering::SeqCst) {
                self.drain_idle();
                return;
            }
            // A waiter that published its place after `offer` looked may have checked the
            // idle queue before the push: hand it a connection now. One still publishing
            // (counted, not yet queued) will find the connection itself.
            if self.waitlist.waiting() == 0 || self.waitlist.is_empty() {
                return;
            }
            let Some(idle) = self.idle.pop() else { return };
            match self.waitlist.offer(idle) {
                Ok(()) => return,
                Err(back) => {
                    if let Err(conn) = self.idle.push(back) {
                        self.overflow(conn);
                        return;
                    }
                }
            }
        }
    }

    /// The return path of `PooledConnection::drop`: synchronous, bounded, no I/O, no spawning.
    pub(crate) fn recycle(&self, conn: InUse<M::Connection>, broken: bool) {
        if std::thread::panicking() {
            self.destroy(conn, DestroyReason::Panicked);
            return;
        }
        if broken {
            self.destroy(conn, DestroyReason::Broken);
            return;
        }
        // `has_broken` is user code. If it panics, unwinding drops `conn` (declared after the
        // guard, so dropped first) and then the guard, which gives the slot back. The guard
        // holds no connection, so the common path moves none in and out of it.
        let unwinding = PanicGuard::new(self);
        let mut conn = conn;
        let broken = self.manager.has_broken(&mut conn.raw);
        // The runtime's clock is user code too, so it is read under the guard as well.
        let now = self.stamp();
        unwinding.disarm();
        if broken {
            self.destroy(conn, DestroyReason::Broken);
            return;
        }
        if self.is_closed() {
            self.destroy(conn, DestroyReason::Closed);
            return;
        }
        if conn.expired(now) {
            self.destroy(conn, DestroyReason::MaxLifetime);
            return;
        }
        self.give(conn.idle_from(now));
        log::trace!(
            "{}: connection returned; idle {}",
            self.config.name,
            IdleCount(&self.idle)
        );
    }

    /// Takes a checked-out connection out of the pool's accounting for good.
    pub(crate) fn detach(&self, conn: InUse<M::Connection>) -> M::Connection {
        Stats::bump(&self.stats.detached);
        self.release_slot();
        log::debug!(
            "{}: connection detached; {}",
            self.config.name,
            self.occupancy(),
        );
        // Last, as the observer is user code: should it panic, the slot is already free and
        // the connection is dropped with the unwinding caller's frame.
        if let Some(observer) = &self.observer {
            observer.on_detach();
        }
        conn.raw
    }

    /// Destroys every idle connection; used once the pool is closed.
    ///
    /// A panic in user code (an observer's `on_destroy`, a connection's `Drop`) does not stop
    /// the drain, which would leave connections open in a closed pool; the first one is
    /// resumed once every idle connection is gone (unless the thread unwinds already).
    pub(crate) fn drain_idle(&self) {
        let mut first_panic = None;
        while let Some(conn) = self.idle.pop() {
            let destroyed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.destroy(conn, DestroyReason::Closed)
            }));
            if let Err(panic) = destroyed {
                first_panic.get_or_insert(panic);
            }
        }
        // Not while the thread unwinds already (the last handle, or a guard that met a closed
        // pool, dropped by a panic): resumed from inside a destructor, the panic would abort
        // the process. The panic under way is the one the application sees.
        if let Some(panic) = first_panic {
            if !std::thread::panicking() {
                std::panic::resume_unwind(panic);
            }
        }
    }

    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        log::debug!("{}: closing; {}", self.config.name, self.occupancy(),);
        // Wake every waiter: each re-checks `closed` and fails with `Closed`. The fence orders
        // the store above before the drain below (see "Closing").
        fence(Ordering::SeqCst);
        self.waitlist.wake_all();
        // Before the drain, which runs user code that may panic.
        self.background_stop.fire();
        self.drain_idle();
    }

    /// Records a failed creation with the governor (which schedules the next attempt), gives
    /// its slot and permit back, and wakes every waiter so that each recomputes what it may do.
    /// A permanent error comes back shared, for the callers that fail fast with it.
    pub(crate) fn create_failed(
        &self,
        creating: Creating<'_, M>,
        error: Option<M::Error>,
        started: Instant,
        now: Instant,
    ) -> Option<Result<M::Error, StdArc<M::Error>>> {
        Stats::bump(&self.stats.create_failures);
        // The error's `Display` and `is_permanent_error` are user code. Should either panic,
        // the failure is still recorded (with a stand-in message if `Display` panicked, as
        // transient if `is_permanent_error` did) so that its
        // backoff holds, and the panic resumes once the bookkeeping below is done.
        let mut user_panic = None;
        let mut guarded = |user_code: &mut dyn FnMut()| {
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(user_code)) {
                user_panic.get_or_insert(panic);
            }
        };
        let (message, outcome) = match error {
            None => (
                format!(
                    "create_connection did not finish within connection_timeout ({:?})",
                    self.config.connection_timeout.unwrap_or_default()
                ),
                None,
            ),
            Some(error) => {
                let mut message = String::from("(the error's Display implementation panicked)");
                guarded(&mut || message = error.to_string());
                let mut permanent = false;
                guarded(&mut || permanent = self.manager.is_permanent_error(&error));
                if permanent {
                    (message, Some(Err(StdArc::new(error))))
                } else {
                    (message, Some(Ok(error)))
                }
            }
        };
        let permanent = match &outcome {
            Some(Err(error)) => Some(StdArc::clone(error)),
            _ => None,
        };
        let kind = if permanent.is_some() {
            "permanent"
        } else {
            "transient"
        };
        // Schedule the backoff before the slot is free, so that a caller that asks the
        // governor once it is free waits, and one that asked while this creation still ran
        // and then takes the slot finds the governor's mark changed and asks again
        // (`Creating::begin_admitted`; loom model m17e).
        let failures = self.governor.failed(now, message.clone(), permanent);
        creating.abort();
        // As in `wake_creator`: the freed slot and permit before the look at the wait list.
        fence(Ordering::SeqCst);
        self.waitlist.wake_all();
        // The count in a row says how many were held back at debug.
        let admitted = self.create_failure_warnings.admit(clock::stamp_of(now));
        let (level, held_back) = HeldBack::level(admitted, "failed");
        log::log!(
            level,
            "{}: could not create a connection ({kind}, {failures} in a row): {message}; \
             {}{held_back}",
            self.config.name,
            self.occupancy(),
        );
        // Last, as the observer is user code: should it panic, the failure is recorded (the
        // backoff holds), the slot is free and the waiters are awake.
        if let Some(observer) = &self.observer {
            let failure = match &outcome {
                Some(Ok(error)) => CreateFailure::Error(error),
                Some(Err(error)) => CreateFailure::Error(&**error),
                None => CreateFailure::TimedOut,
            };
            observer.on_create_failure(now.saturating_duration_since(started), failure);
        }
        if let Some(panic) = user_panic {
            std::panic::resume_unwind(panic);
        }
        outcome
    }

    /// Notes a creation dropped unfinished, between `started` and `now`, because the time of
    /// the call that made it ran out: not a failure, but what the timeouts of calls waiting
    /// on it report when nothing failed.
    #[cold]
    pub(crate) fn note_dropped_creation(&self, started: Instant, now: Instant) {
        let connection_timeout = match self.config.connection_timeout {
            Some(limit) => format!("{limit:.1?}"),
            None => "not set".to_owned(),
        };
        self.governor.abandoned(
            now,
            format!(
                "opening a connection was abandoned after {:.1?}, when the call that started \
                 it ran out of time (its wait_timeout or get_connection_timeout's argument, or \
                 a min_idle top-up's limit; connection_timeout {connection_timeout}); not \
                 counted as a failure: check that the server is reachable and responsive, or \
                 give calls more time than opening a connection takes",
                now.saturating_duration_since(started)
            ),
        );
    }

    /// Records a successful creation, which ended `failures` failures in a row (the governor's
    /// [`succeeded`](Governor::succeeded), called before the permit went back); the first
    /// one after failures wakes every waiter that the governor held back.
    pub(crate) fn create_succeeded(&self, started: Instant, now: Instant, failures: usize) {
        Stats::bump(&self.stats.created);
        if failures > 0 {
            log::info!(
                "{}: creating connections works again, after {failures} failed attempt{}; {}",
                self.config.name,
                if failures == 1 { "" } else { "s" },
                self.occupancy(),
            );
            // As in `create_failed`: the governor's new state before the look at the wait
            // list, pairing with the fence a new waiter issues after publishing its place, so
            // that a waiter this pass misses has seen the recovery itself.
            fence(Ordering::SeqCst);
            self.waitlist.wake_all();
        }
        // After the governor: the observer is user code, and should it panic, the backend
        // still worked, so the pool must stop holding creations back.
        if let Some(observer) = &self.observer {
            observer.on_create(now.saturating_duration_since(started));
        }
    }

    /// The most recent creation failure, if it happened at or after `since`.
    pub(crate) fn create_error_since(&self, since: Instant) -> Option<String> {
        self.governor.error_since(since)
    }

    /// Wraps a checked-out connection in its guard, recording the checkout for leak
    /// detection and the observer when they are on. `begun` is when the `get` started, read
    /// only when there is an observer.
    // An associated function, not a method: loom's `Arc` cannot be a `self` type.
    #[inline]
    pub(crate) fn hand_out<'a>(
        this: &'a Arc<Self>,
        conn: Conn<M::Connection>,
        location: &'static Location<'static>,
        begun: Option<Instant>,
    ) -> PooledConnection<'a, M> {
        if this.leaks.is_none() && this.observer.is_none() {
            return PooledConnection::new(this, conn, None);
        }
        Self::hand_out_tracked(this, conn, location, begun)
    }

    /// [`hand_out`](Self::hand_out) with leak detection or an observer on; out of line, so
    /// that the common case stays small.
    ///
    /// The guard comes first: if the runtime's clock or the observer (user code) panics, the
    /// guard is dropped while unwinding, which destroys the connection and gives its slot back.
    /// The record is attached last, so that such a guard reports no return and leaves no entry
    /// in the leak watch.
    #[inline(never)]
    fn hand_out_tracked<'a>(
        this: &'a Arc<Self>,
        conn: Conn<M::Connection>,
        location: &'static Location<'static>,
        begun: Option<Instant>,
    ) -> PooledConnection<'a, M> {
        let mut guard = PooledConnection::new(this, conn, None);
        let now = this.now();
        if let Some(observer) = &this.observer {
            observer
                .on_checkout(begun.map_or(Duration::ZERO, |b| now.saturating_duration_since(b)));
        }
        let record = match &this.leaks {
            Some(watch) => watch.watch(now, location),
            None => Checkout::new(now, location),
        };
        guard.track(record);
        guard
    }

    /// The counts log lines end with; a snapshot, each read once.
    pub(crate) fn occupancy(&self) -> Occupancy {
        Occupancy {
            size: self.size(),
            idle: self.idle.len(),
            waiters: self.waitlist.waiting(),
        }
    }

    pub(crate) fn status(&self) -> Status {
        let (size, connecting) = self.capacity.read();
        // Read after `size`: a creation and a return in between can make the queue hold more
        // than `size` said. Each idle connection holds a slot, so at most `size` are idle
        // (minus those being created) at any one instant; the snapshot keeps to that.
        let idle = self.idle.len().min(size - connecting);
        Status {
            max_size: self.config.max_size,
            size,
            idle,
            in_use: size - idle,
            connecting,
            waiters: self.waitlist.waiting(),
            counters: self.stats.snapshot(),
        }
    }
}

/// One slot of the pool's size counter, held while no guard or queue holds it.
///
/// Dropping it (cancellation, error, panic) destroys the connection it may hold and gives the
/// slot back, waking a waiter.
pub(crate) struct Slot<'a, M: ConnectionManager> {
    shared: &'a Shared<M>,
    /// A connection that owns this slot, while it is being validated or inspected.
    conn: Option<Conn<M::Connection>>,
    /// `false` once ownership of the slot has passed elsewhere.
    armed: bool,
    /// Why the connection is destroyed if the guard is dropped while armed.
    drop_reason: DestroyReason,
}

impl<'a, M: ConnectionManager> Slot<'a, M> {
    /// Guards the slot owned by `conn`.
    pub(crate) fn holding(
        shared: &'a Shared<M>,
        conn: Conn<M::Connection>,
        drop_reason: DestroyReason,
    ) -> Self {
        Self {
            shared,
            conn: Some(conn),
            armed: true,
            drop_reason,
        }
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Conn<M::Connection> {
        self.conn.as_mut().expect("slot holds a connection")
    }

    /// Hands the slot to `conn` (or to the connection already held) and disarms the guard.
    pub(crate) fn into_conn(mut self) -> Conn<M::Connection> {
        self.armed = false;
        self.conn.take().expect("slot holds a connection")
    }

    /// Destroys the held connection and keeps the slot for the caller's next try, as
    /// [`Shared::destroy_keeping_slot`] does.
    pub(crate) fn destroy_keeping(mut self, reason: DestroyReason) -> Option<Creating<'a, M>> {
        self.armed = false;
        let conn = self.conn.take().expect("slot holds a connection");
        self.shared.destroy_keeping_slot(conn, reason)
    }
}

impl<M: ConnectionManager> Drop for Slot<'_, M> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Dropped by a panic (in `is_valid`, say): counted as a panic, whatever the guard
        // was for.
        let reason = if std::thread::panicking() {
            DestroyReason::Panicked
        } else {
            self.drop_reason
        };
        match self.conn.take() {
            Some(conn) => self.shared.destroy(conn, reason),
            None => self.shared.release_slot(),
        }
    }
}

/// Runs user code (an observer, the runtime's clock) from code that guards run in `Drop`.
/// While the thread unwinds (a guard dropped by a panic, or after a first panic in user code),
/// a panic in it is caught and dropped (`None`): escaping a destructor mid-unwind, it would
/// abort the process.
pub(crate) fn user_code_in_drop<R>(user_code: impl FnOnce() -> R) -> Option<R> {
    if std::thread::panicking() {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(user_code)).ok()
    } else {
        Some(user_code())
    }
}

/// Gives back the slot of a connection that user code panicked over, once unwinding has dropped
/// the connection. Bind the connection after the guard, so that unwinding drops it first: the
/// slot is never free while the connection still exists.
pub(crate) struct PanicGuard<'a, M: ConnectionManager> {
    shared: &'a Shared<M>,
    armed: bool,
    /// What the connection is counted as destroyed by.
    reason: DestroyReason,
}

impl<'a, M: ConnectionManager> PanicGuard<'a, M> {
    /// Armed: dropped before [`disarm`](Self::disarm), it counts a connection destroyed by a
    /// panic and gives its slot back.
    pub(crate) fn new(shared: &'a Shared<M>) -> Self {
        Self::for_reason(shared, DestroyReason::Panicked)
    }

    /// Armed, for a connection already being destroyed for `reason`.
    pub(crate) fn for_reason(shared: &'a Shared<M>, reason: DestroyReason) -> Self {
        Self {
            shared,
            armed: true,
            reason,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<M: ConnectionManager> Drop for PanicGuard<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.destroyed(self.reason);
        }
    }
}

/// A slot and a connect permit, held while `create_connection` runs.
///
/// Dropping it (cancellation, timeout, panic in `create_connection`) gives both back and wakes
/// a waiter; failures go through [`Shared::create_failed`] instead, which also records them.
pub(crate) struct Creating<'a, M: ConnectionManager> {
    shared: &'a Shared<M>,
    /// `false` once the slot has passed to a connection or both were given back.
    armed: bool,
}

impl<'a, M: ConnectionManager> Creating<'a, M> {
    /// Takes a slot and a permit together, if a slot is free and fewer than `max_connecting`
    /// creations are in flight.
    pub(crate) fn begin(shared: &'a Shared<M>, max_connecting: usize) -> Option<Self> {
        // Build the guard only once both are ours (`then`, not the eager `then_some`):
        // dropping an armed guard gives both back.
        shared
            .capacity
            .try_begin_create(max_connecting)
            .then(|| Self {
                shared,
                armed: true,
            })
    }

    /// [`begin`](Self::begin) for a caller that asked the governor with `asked`, the
    /// governor's [`mark`](Governor::mark) read just before. Asking and taking are two steps:
    /// a creation that failed in between may have freed the very slot and permit taken here,
    /// and its delay binds this caller as much as one that asked after it. The failure is on
    /// record before its slot is freed, and taking the slot reads the freeing, so the mark
    /// read after the take shows it; the slot and permit then go back (waking a waiter as any
    /// dropped creation does) and the caller must ask again. The mark counts every failure
    /// ever recorded, so a success and a new failure in between are caught too (loom model
    /// m17g).
    pub(crate) fn begin_admitted(
        shared: &'a Shared<M>,
        max_connecting: usize,
        asked: FailureMark,
    ) -> Begin<'a, M> {
        let Some(creating) = Self::begin(shared, max_connecting) else {
            return Begin::Busy;
        };
        if shared.governor.failed_since(asked) {
            drop(creating);
            log::trace!(
                "{}: a creation failed while this caller took a slot to create; it asks the \
                 connect governor again",
                shared.config.name
            );
            return Begin::AskAgain;
        }
        Begin::Taken(creating)
    }

    /// Takes over a slot and permit that [`Shared::wake_creator`] reserved and granted to this
    /// caller's place in line. Dropping it unused passes them on to the next waiter.
    pub(crate) fn adopt(shared: &'a Shared<M>) -> Self {
        Self {
            shared,
            armed: true,
        }
    }

    /// Hands the slot to the created connection and gives the permit back, waking a waiter
    /// that may now create. While someone waits, the permit goes with a free slot straight
    /// to the oldest waiter as a grant (as in `Shared::release_slot`).
    fn finish(mut self, conn: Conn<M::Connection>) -> Conn<M::Connection> {
        self.armed = false;
        let shared = self.shared;
        if shared.grants_pass_on() && shared.capacity.try_add_slot() {
            if shared.waitlist.grant() {
                return conn;
            }
            shared.capacity.abort_create();
        } else {
            shared.capacity.finish_create();
        }
        shared.wake_creator();
        conn
    }

    /// Runs `create_connection`, bounded by `connection_timeout` (the instant `timeout_at`)
    /// and by the calling `get`'s own deadline `call_deadline`, and records the outcome: the
    /// new connection, which takes over the slot, or the failure (`None`: it timed out), with
    /// the slot and permit given back as [`Shared::create_failed`] describes. Dropping the
    /// future drops the guard, which gives both back.
    ///
    /// Cut short by the caller's deadline, the attempt is not a failure of the backend: it is
    /// dropped like a cancelled one (`Err(None)`, no failure recorded, no backoff), so that a
    /// short `wait_timeout` does not make a healthy backend look broken to the other callers.
    /// It is noted for the timeouts to report (see [`Governor::abandoned`]) unless the call
    /// gave it no time at all (a zero timeout: "only if ready").
    pub(crate) async fn run(
        self,
        timeout_at: Option<Instant>,
        call_deadline: Option<Instant>,
    ) -> Result<Conn<M::Connection>, Option<Result<M::Error, StdArc<M::Error>>>> {
        let shared = self.shared;
        let started = shared.now();
        let limit = earlier(timeout_at, call_deadline);
        let created = run_bounded(
            shared.runtime.as_deref(),
            limit,
            shared.manager.create_connection(),
        )
        .await;
        let now = shared.now();
        let error = match created {
            Ok(Ok(raw)) => {
                // The success goes on record before the permit goes back: a probe that the
                // freed permit lets start could otherwise fail first and have its failure, and
                // its delay, wiped by this older success (loom model m17g).
                let failures = shared.governor.succeeded();
                let created = self.finish(shared.new_conn(raw, shared.stamp()));
                // The observer's `on_create` is user code: should it panic, the new
                // connection is destroyed and its slot given back.
                let unwinding = PanicGuard::new(shared);
                let conn = created;
                shared.create_succeeded(started, now, failures);
                unwinding.disarm();
                return Ok(conn);
            }
            Ok(Err(error)) => Some(error),
            Err(_) if call_deadline_first(call_deadline, timeout_at) => {
                if call_deadline.is_some_and(|deadline| deadline > started) {
                    shared.note_dropped_creation(started, now);
                }
                log::debug!(
                    "{}: a creation outlived its caller's deadline (a get's wait_timeout, or \
                     the give-up time of a min_idle top-up); \
                     the attempt is dropped (not counted as a failure); {}",
                    shared.config.name,
                    shared.occupancy(),
                );
                drop(self);
                return Err(None);
            }
            Err(_) => None,
        };
        Err(shared.create_failed(self, error, started, now))
    }

    /// Gives the slot and the permit back without waking anyone; the caller wakes everyone.
    fn abort(mut self) {
        self.armed = false;
        self.shared.capacity.abort_create();
    }
}

/// What [`Creating::begin_admitted`] got.
pub(crate) enum Begin<'a, M: ConnectionManager> {
    /// A slot and a permit, the caller's to create with.
    Taken(Creating<'a, M>),
    /// No slot, or no permit, was free.
    Busy,
    /// A creation failed after the caller asked the governor: ask again.
    AskAgain,
}

impl<M: ConnectionManager> Drop for Creating<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            // Unused (cancelled, a grant passed on, or given back to ask the governor again):
            // straight to the oldest waiter while someone waits, as in `Shared::release_slot`.
            if self.shared.grants_pass_on() && self.shared.waitlist.grant() {
                return;
            }
            self.shared.capacity.abort_create();
            self.shared.wake_creator();
        }
    }
}

/// The idle count, read only when a log record is formatted. A `log` macro evaluates its
/// arguments whenever the global maximum level lets the record through, and a logger raises
/// that to the most verbose directive it has for any module, so another crate's `trace`
/// would otherwise put this read on every return.
struct IdleCount<'a, C>(&'a IdleQueue<C>);

impl<C> fmt::Display for IdleCount<'_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.len())
    }
}

impl<M: ConnectionManager> ConnectionPool<M> {
    /// Wraps freshly built shared state; it starts with one handle.
    pub(crate) fn from_shared(shared: Arc<Shared<M>>) -> Self {
        Self { shared }
    }

    /// Returns an idle connection at once if one is ready, without waiting, creating or
    /// validating.
    ///
    /// Returns `None` when no idle connection is ready, when the pool is closed, and when other
    /// tasks are already waiting in `get_connection` (so that it never jumps the queue). It does
    /// no I/O: connections are not validated here, only checked for expiry (expired ones are
    /// destroyed on the way). It never fails otherwise and, being synchronous, cannot be
    /// cancelled half-way.
    #[track_caller]
    pub fn try_get_connection(&self) -> Option<PooledConnection<'_, M>> {
        let location = Location::caller();
        let shared = &self.shared;
        if shared.is_closed() || shared.waitlist.waiting() > 0 {
            return None;
        }
        loop {
            // The clock before the pop, as in `get_connection`: a custom runtime's clock that
            // panicked with a connection in hand would lose its slot.
            let now = shared.stamp();
            let conn = shared.idle.pop()?;
            match shared.expiry(&conn, now) {
                Some(reason) => shared.destroy(conn, reason),
                None => {
                    log::trace!("{}: try_get checked out a connection", shared.config.name);
                    return Some(Shared::hand_out(shared, conn, location, None));
                }
            }
        }
    }

    /// A snapshot of sizes and cumulative counters.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Closes the pool.
    ///
    /// New `get_connection` calls fail with [`PoolError::Closed`], waiting ones wake up with
    /// it, idle connections are dropped now and checked-out ones when their guards drop. A
    /// call that is creating a connection finishes its create, destroys the new connection and
    /// fails with `Closed`, and so does one whose create fails or runs out of time meanwhile;
    /// one validating an idle connection finishes the check and its connection is destroyed
    /// when its guard drops (or, when the check fails or the call's time runs out, the call
    /// fails with `Closed`). The cleanup task and the leak
    /// watcher are woken and end as soon as their executor polls them. Closing twice does
    /// nothing; it never fails or blocks.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether [`close`](Self::close) was called or every handle was dropped.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// The settings the pool was built with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The manager that creates this pool's connections.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }

    /// The time idle times and lifetimes are measured with, the one
    /// [`cleanup_pass`](Self::cleanup_pass) expects: the runtime's
    /// [`coarse_now`](Runtime::coarse_now), or [`coarse_now`](crate::coarse_now) without a
    /// runtime. Timeouts are measured with the runtime's [`now`](Runtime::now).
    pub fn now(&self) -> Instant {
        self.shared.coarse_now()
    }

    pub(crate) fn runtime_or_err(&self, setting: &'static str) -> Result<(), PoolError<M::Error>> {
        match self.shared.runtime {
            Some(_) => Ok(()),
            None => Err(PoolError::NoRuntime { setting }),
        }
    }
}

impl<M: ConnectionManager> Clone for ConnectionPool<M> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: ConnectionManager> Drop for ConnectionPool<M> {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<M: ConnectionManager> fmt::Debug for ConnectionPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("name", &self.shared.config.name)
            .field("status", &self.shared.status())
            .finish()
    }
}
