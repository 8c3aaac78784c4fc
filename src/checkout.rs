//! The `get_connection` state machine: pop an idle connection, or create one in a free slot,
//! or wait to be woken, all under one deadline. See the "Implementation details" in `pool.rs`.

use crate::{
    connection::Conn,
    connection::PooledConnection,
    error::{PoolError, TimeoutPhase},
    governor::Admission,
    manager::ConnectionManager,
    pool::{Begin, ConnectionPool, Creating, Shared, Slot},
    runtime::{run_bounded, wait_bounded},
    status::{DestroyReason, Stats},
    sync::Arc,
    throttle::HeldBack,
    waitlist::{Resolution, Ticket, WaitSlot},
};
use event_listener::EventListener;
use std::{
    future::Future,
    panic::Location,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

impl<M: ConnectionManager> ConnectionPool<M> {
    /// Checks out a connection, waiting at most the configured `wait_timeout`.
    ///
    /// In order, it takes an idle connection (validating it first if the
    /// [`ValidationPolicy`](crate::ValidationPolicy) asks), creates one if the pool is below
    /// `max_size`, or waits for a connection to be returned. An idle connection that needs no
    /// validation is returned without any await.
    ///
    /// # Errors
    ///
    /// * [`PoolError::Backend`] when this call's `create_connection` fails (its slot is freed
    ///   at once);
    /// * [`PoolError::Rejected`] when creating connections fails with an error the manager
    ///   classifies as permanent: this call's own attempt, or a recent one while this call
    ///   would have had to create (it fails at once instead of waiting);
    /// * [`PoolError::Timeout`] when `wait_timeout` passes (whatever the phase), or when one
    ///   `create_connection` outlives `connection_timeout`; it carries the last creation
    ///   error, if one happened meanwhile or creations have kept failing since;
    /// * [`PoolError::Closed`] when the pool is or gets closed.
    ///
    /// While creations keep failing, the pool lets one call at a time try again, after a
    /// growing delay (see [`CREATE_BACKOFF_MAX`](crate::CREATE_BACKOFF_MAX)); the others wait
    /// for it, up to their deadline.
    ///
    /// A connection that fails validation, or whose `is_valid` outlives `validation_timeout`,
    /// is destroyed and the call moves on to the next one (as deadpool does with a recycle
    /// timeout).
    ///
    /// # Cancellation
    ///
    /// Dropping the future at any await point is safe and leaks nothing: a wait ends and the
    /// call leaves the line (a connection handed to it meanwhile goes to the next waiter, a
    /// wake-up it received wakes the next one), a creation in flight is dropped and its slot
    /// and permit freed, and a connection being validated is destroyed (it may hold a
    /// half-read reply) and its slot freed.
    ///
    /// With leak detection on, the caller's source location is recorded (`#[track_caller]`).
    ///
    /// The future is `Send` and `Unpin` (as are those of the other `get_connection_*`
    /// methods): `tokio::select!` or `futures::future::select` can poll it by reference
    /// without pinning it first.
    #[track_caller]
    pub fn get_connection(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<'_, M>, PoolError<M::Error>>> + Send + Unpin + '_
    {
        GetConnection::new(
            &self.shared,
            self.shared.config.wait_timeout,
            Location::caller(),
        )
    }

    /// Like [`get_connection`](Self::get_connection), but the guard does not borrow this
    /// handle: keep it in a struct or move it into a spawned task (bb8's `get_owned`, except
    /// that the guard does not keep the pool open: see [`PooledConnection`]). It is
    /// [`PooledConnection::into_owned`] applied to the result, one reference-count increment
    /// dearer than a borrowed checkout.
    ///
    /// # Errors
    ///
    /// As `get_connection`.
    ///
    /// # Cancellation
    ///
    /// As `get_connection`: safe at every await point, nothing leaks.
    #[track_caller]
    pub fn get_connection_owned(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<'static, M>, PoolError<M::Error>>>
    + Send
    + Unpin
    + '_ {
        GetOwned(GetConnection::new(
            &self.shared,
            self.shared.config.wait_timeout,
            Location::caller(),
        ))
    }

    /// Like [`get_connection`](Self::get_connection), with `timeout` instead of the configured
    /// `wait_timeout` for this call. A `timeout` too large to add to the clock (such as
    /// `Duration::MAX`) means no limit. `Duration::ZERO` takes an idle connection or a free
    /// slot only if that needs no waiting: `is_valid` and `create_connection` are polled once,
    /// and one not ready then is given up (a connection whose check was cut short is
    /// destroyed, as after any validation timeout). So with a check that takes a round trip,
    /// a zero timeout destroys each healthy connection that needed checking (idle past the
    /// [`ValidationPolicy`](crate::ValidationPolicy)'s threshold); to take an idle connection
    /// only if one is ready without I/O, use
    /// [`try_get_connection`](Self::try_get_connection), which checks nothing.
    ///
    /// # Errors
    ///
    /// As `get_connection`, plus [`PoolError::NoRuntime`] when the pool has no runtime to time
    /// the call with. A [`PoolError::Timeout`] here means `timeout` passed, or that a step's
    /// own limit ran out first (`connection_timeout` for a `create_connection`,
    /// `validation_timeout` for an `is_valid`): its `phase` says which step, and its message
    /// which limit.
    ///
    /// # Cancellation
    ///
    /// As `get_connection`: safe at every await point, nothing leaks.
    #[track_caller]
    pub fn get_connection_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<PooledConnection<'_, M>, PoolError<M::Error>>> + Send + Unpin + '_
    {
        const SETTING: &str = "get_connection_timeout";
        match self.runtime_or_err(SETTING) {
            Ok(()) => GetConnection::new(&self.shared, Some(timeout), Location::caller()),
            Err(_) => GetConnection::refused(SETTING),
        }
    }
}

/// The one absolute deadline of a `get_connection` call, computed when the slow path begins so
/// that the fast path reads no clock for it. It never re-arms when a woken waiter loses a race.
struct Deadline {
    wait_timeout: Option<Duration>,
    /// `(start, deadline)` once started.
    started: Option<(Instant, Option<Instant>)>,
}

impl Deadline {
    fn new(wait_timeout: Option<Duration>) -> Self {
        Self {
            wait_timeout,
            started: None,
        }
    }

    fn start<M: ConnectionManager>(&mut self, shared: &Shared<M>) -> (Instant, Option<Instant>) {
        let wait_timeout = self.wait_timeout;
        *self.started.get_or_insert_with(|| {
            let now = shared.now();
            (now, wait_timeout.and_then(|t| now.checked_add(t)))
        })
    }

    /// The earlier of the call's deadline and `phase_timeout` from now; no clock read when
    /// neither is set.
    fn limit<M: ConnectionManager>(
        &mut self,
        shared: &Shared<M>,
        phase_timeout: Option<Duration>,
    ) -> Option<Instant> {
        if self.wait_timeout.is_none() && phase_timeout.is_none() {
            return None;
        }
        let (_, deadline) = self.start(shared);
        earlier(deadline, from_now(shared, phase_timeout))
    }
}

/// Whether the call's own deadline, rather than the phase's timeout, is what stopped a phase
/// bounded by both; it wins a tie, since the call has no time left either way.
pub(crate) fn call_deadline_first(
    call_deadline: Option<Instant>,
    phase_limit: Option<Instant>,
) -> bool {
    call_deadline.is_some_and(|call| phase_limit.is_none_or(|phase| call <= phase))
}

/// The earlier of two optional instants; `None` only when both are.
pub(crate) fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `timeout` from now; no clock read when it is not set.
fn from_now<M: ConnectionManager>(
    shared: &Shared<M>,
    timeout: Option<Duration>,
) -> Option<Instant> {
    timeout.and_then(|t| shared.now().checked_add(t))
}

/// This call's place in the wait list, while it has one.
///
/// Dropping it (cancellation) gives the place up; a connection handed to it meanwhile goes to
/// the next waiter, and a wake-up it received is passed on.
struct Queued<'a, M: ConnectionManager> {
    shared: &'a Shared<M>,
    slot: Arc<WaitSlot<Conn<M::Connection>>>,
    /// `None` after it fired, until the next wait creates another.
    listener: Option<EventListener>,
    /// `false` once the slot's outcome has been dealt with.
    armed: bool,
}

impl<'a, M: ConnectionManager> Queued<'a, M> {
    /// Takes a place in line: a call that was in line before passes the ticket it drew then
    /// (see the wait list's front lane). Returns the place and the call's ticket.
    fn register(shared: &'a Shared<M>, ticket: Option<Ticket>) -> (Self, Ticket) {
        let (slot, listener, ticket) = shared.waitlist.register(ticket);
        let place = Self {
            shared,
            slot,
            listener: Some(listener),
            armed: true,
        };
        (place, ticket)
    }

    /// Takes the slot's outcome if it has one, leaving the guard disarmed.
    fn resolved(&mut self) -> Option<Resolution<Conn<M::Connection>>> {
        match self.slot.resolution() {
            Resolution::Waiting => None,
            outcome => {
                self.armed = false;
                Some(outcome)
            }
        }
    }

    /// Gives the place up; returns a connection handed over meanwhile, or the wake-up.
    fn abandon(mut self) -> Resolution<Conn<M::Connection>> {
        self.armed = false;
        self.shared.waitlist.abandon(&self.slot)
    }
}

impl<M: ConnectionManager> Drop for Queued<'_, M> {
    fn drop(&mut self) {
        if self.armed {
            match self.shared.waitlist.abandon(&self.slot) {
                Resolution::Served(conn) => self.shared.give(conn),
                // Dropping the reservation passes it to the next waiter.
                Resolution::Granted => drop(Creating::adopt(self.shared)),
                Resolution::Woken => self.shared.wake_creator(),
                Resolution::Waiting | Resolution::Abandoned => {}
            }
        }
    }
}

fn timed_out<M: ConnectionManager>(
    shared: &Shared<M>,
    phase: TimeoutPhase,
    deadline: &mut Deadline,
) -> PoolError<M::Error> {
    // Closed as the time ran out: the caller should stop asking, not retry. Not counted as a
    // timeout.
    if shared.is_closed() {
        return PoolError::Closed;
    }
    let (start, _) = deadline.start(shared);
    Stats::bump(&shared.stats.timeouts);
    if let Some(observer) = &shared.observer {
        observer.on_timeout(phase, shared.now().saturating_duration_since(start));
    }
    let last_error = shared.create_error_since(start);
    // A zero limit asks "only if one is ready": its timeouts are routine, not a warning,
    // except one that cut a check short, which destroyed a connection that may have been
    // healthy. Of the others, one a second is a warning (see `Throttle`).
    let routine =
        deadline.wait_timeout == Some(Duration::ZERO) && phase != TimeoutPhase::Validating;
    let warning = if routine || !log::log_enabled!(log::Level::Warn) {
        None
    } else {
        shared.timeout_warnings.admit(shared.stamp())
    };
    let (level, held_back) = HeldBack::level(warning, "timed out");
    log::log!(
        level,
        "{}: get_connection timed out {phase}; {}{held_back}",
        shared.config.name,
        shared.occupancy(),
    );
    PoolError::Timeout { phase, last_error }
}

/// What `get_connection` returns, until it has: a checkout, the fast path inline, the slow path
/// boxed.
///
/// The slow path's state machine holds the user's `create_connection` and `is_valid` futures
/// and the timers, often several hundred bytes; inline, every `get_connection` future would
/// be that large and each move of it a copy of that size. Boxed, the common case (an idle
/// connection, nobody waiting) stays small and allocation-free, and only a call that has to
/// create, validate or wait pays for one allocation, next to the ones waiting makes anyway.
/// Written by hand rather than as an `async fn` so that the fast path is one plain function
/// call on the first poll, and the future three words and a `Duration`.
struct GetConnection<'a, M: ConnectionManager> {
    state: GetState<'a, M>,
}

type SlowCheckout<'a, M> = Pin<
    Box<
        dyn Future<
                Output = Result<
                    PooledConnection<'a, M>,
                    PoolError<<M as ConnectionManager>::Error>,
                >,
            > + Send
            + 'a,
    >,
>;

enum GetState<'a, M: ConnectionManager> {
    /// Not polled yet.
    Start {
        shared: &'a Arc<Shared<M>>,
        wait_timeout: Option<Duration>,
        location: &'static Location<'static>,
    },
    /// On the slow path.
    Slow(SlowCheckout<'a, M>),
    /// To fail with [`PoolError::NoRuntime`] for this setting when polled.
    NoRuntime(&'static str),
    /// Finished; polling again panics, as with any future.
    Done,
}

impl<'a, M: ConnectionManager> GetConnection<'a, M> {
    fn new(
        shared: &'a Arc<Shared<M>>,
        wait_timeout: Option<Duration>,
        location: &'static Location<'static>,
    ) -> Self {
        Self {
            state: GetState::Start {
                shared,
                wait_timeout,
                location,
            },
        }
    }

    /// A call that fails with [`PoolError::NoRuntime`] for `setting` when polled.
    fn refused(setting: &'static str) -> Self {
        Self {
            state: GetState::NoRuntime(setting),
        }
    }
}

impl<'a, M: ConnectionManager> Future for GetConnection<'a, M> {
    type Output = Result<PooledConnection<'a, M>, PoolError<M::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = &mut self.state;
        if let GetState::Start {
            shared,
            wait_timeout,
            location,
        } = *state
        {
            // Done before the checkout, so that the guard is built straight into the output.
            *state = GetState::Done;
            match fast_checkout(shared, location) {
                Ok(conn) => return Poll::Ready(Ok(conn)),
                Err(pending) => {
                    *state =
                        GetState::Slow(Box::pin(checkout(shared, wait_timeout, location, pending)));
                }
            }
        }
        let GetState::Slow(slow) = state else {
            if let GetState::NoRuntime(setting) = *state {
                *state = GetState::Done;
                return Poll::Ready(Err(PoolError::NoRuntime { setting }));
            }
            panic!("`get_connection` future polled after it completed or panicked");
        };
        let outcome = std::task::ready!(slow.as_mut().poll(cx));
        // Drop the slow path's state (its place in line, its timers) now.
        *state = GetState::Done;
        Poll::Ready(outcome)
    }
}

/// What `get_connection_owned` returns: a `get_connection` whose guard is made owned.
struct GetOwned<'a, M: ConnectionManager>(GetConnection<'a, M>);

impl<M: ConnectionManager> Future for GetOwned<'_, M> {
    type Output = Result<PooledConnection<'static, M>, PoolError<M::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|got| got.map(PooledConnection::into_owned))
    }
}

/// An idle connection that needs neither expiry nor validation, when nobody waits; no await,
/// no clock read for a deadline. Otherwise hands what it popped (if anything) to the slow path.
fn fast_checkout<'a, M: ConnectionManager>(
    shared: &'a Arc<Shared<M>>,
    location: &'static Location<'static>,
) -> Result<PooledConnection<'a, M>, Option<Conn<M::Connection>>> {
    if shared.is_closed() || shared.waitlist.waiting() > 0 {
        return Err(None);
    }
    // The clock before the pop: a custom runtime's clock that panicked with a connection in
    // hand would lose its slot.
    let now = shared.stamp();
    let conn = shared.idle.pop().ok_or(None)?;
    if shared.expiry(&conn, now).is_some() || shared.needs_validation(&conn, now) {
        return Err(Some(conn));
    }
    log::trace!("{}: checked out an idle connection", shared.config.name);
    Ok(Shared::hand_out(shared, conn, location, None))
}

/// The slow path: expiry and validation of `pending`, creation, waiting in line.
pub(crate) async fn checkout<'a, M: ConnectionManager>(
    shared: &'a Arc<Shared<M>>,
    wait_timeout: Option<Duration>,
    location: &'static Location<'static>,
    initial: Option<Conn<M::Connection>>,
) -> Result<PooledConnection<'a, M>, PoolError<M::Error>> {
    let runtime = shared.runtime.as_deref();
    let mut deadline = Deadline::new(wait_timeout);
    // Started here, not at the first step that needs a limit: a timeout reports the creation
    // errors since the call began, and the elapsed time, from this start. The clock is the
    // runtime's code: if it panics, the guard gives the slot of a connection in hand back.
    let held = initial.map(|conn| Slot::holding(shared, conn, DestroyReason::Panicked));
    let (start, _) = deadline.start(shared);
    let initial = held.map(Slot::into_conn);
    // The observer wants the wait time of every checkout.
    let begun = shared.observer.as_ref().map(|_| start);
    // This call's place in line while it waits, and the ticket it drew when it first queued.
    let mut queued: Option<Queued<'_, M>> = None;
    let mut ticket: Option<Ticket> = None;
    // A connection in hand that still needs the expiry and validation checks.
    let mut pending: Option<Conn<M::Connection>> = initial;
    // The governor's retry instant whose timer this call has already slept out, if any.
    let mut slept_until: Option<Instant> = None;
    // A slot and permit reserved for this call while it waited in line; dropped unused, they
    // pass to the next waiter.
    let mut granted: Option<Creating<'_, M>> = None;
    // Whether the connection or grant in hand was given to this call in line (a hand-off or
    // a grant), rather than taken by the call itself: one given after the call's deadline
    // goes on to the next caller instead of being validated or dialled with no time left (a
    // connection that needs no check is handed out: that takes no time).
    let mut given_in_line = false;
    // Set once this call's own wait timer told it the deadline passed. Trusted like the timer
    // in step 3: a clock that lags its timers (a coarse one, or one that stands still) would
    // say there is still time. (With a clock that stands still for good, each later step
    // still gets a whole timeout: `Runtime::now` says so.)
    let mut deadline_passed = false;
    loop {
        // When the governor holds creation back until an instant, wake then to try again.
        let mut retry_at = None;
        let mut candidate = pending.take();
        // This call, in line, found an idle connection and it went back to the queue.
        let mut handed_back = false;

        // 0. In line: was a connection handed over, or was this call woken to re-check?
        if candidate.is_none() {
            if let Some(outcome) = queued.as_mut().and_then(Queued::resolved) {
                queued = None;
                match outcome {
                    Resolution::Served(conn) => {
                        candidate = Some(conn);
                        given_in_line = true;
                    }
                    Resolution::Granted => {
                        granted = Some(Creating::adopt(shared));
                        given_in_line = true;
                    }
                    _ => {}
                }
            }
        }
        if shared.is_closed() {
            // Served by a return that raced `close`: the connection is not handed out.
            if let Some(conn) = candidate {
                shared.destroy(conn, DestroyReason::Closed);
            }
            return Err(PoolError::Closed);
        }
        if deadline_passed && candidate.is_none() && granted.is_none() {
            // This call's timer fired, and what reached it as time ran out is used up (an
            // expired connection whose slot could not be kept): do not take, dial or queue
            // again by a clock that may say time is left.
            return Err(timed_out(shared, TimeoutPhase::Waiting, &mut deadline));
        }
        if candidate.is_none() && granted.is_some() {
            // Granted a slot, yet a connection came back meanwhile and went idle (nobody was
            // counted as waiting any more): take it, and pass the slot on. It stands for what
            // was given in line, deadline rule included.
            if let Some(conn) = shared.idle.pop() {
                drop(granted.take());
                candidate = Some(conn);
            }
        } else if candidate.is_none() {
            match &queued {
                // 1. An idle connection, unless others wait: they are served first.
                None if shared.waitlist.waiting() == 0 => candidate = shared.idle.pop(),
                None => {}
                // In line: an idle connection goes to the oldest waiter, maybe this call.
                Some(_) => {
                    if let Some(conn) = shared.idle.pop() {
                        if shared.give_in_line(conn) {
                            continue;
                        }
                        // No published place took it, so it went back to the idle queue: this
                        // call's own place, still waiting, is in the hands of a producer that
                        // popped it and will serve or wake it, then notify. Wait for that
                        // (step 3) rather than spin on the idle queue until that thread runs
                        // again, and create nothing meanwhile: a connection sits idle, and
                        // any waiter that registers later finds it in its own re-check.
                        handed_back = true;
                    }
                }
            }
        }

        if let Some(conn) = candidate {
            let handed_over = std::mem::take(&mut given_in_line);
            // The clock is the runtime's code: if it panics, the guard gives the slot back.
            let held = Slot::holding(shared, conn, DestroyReason::Panicked);
            let now = shared.stamp();
            let conn = held.into_conn();
            // A connection this call destroys leaves it its slot to create with: granting
            // that slot to the next in line would send this call to the back.
            if let Some(reason) = shared.expiry(&conn, now) {
                granted = shared.destroy_keeping_slot(conn, reason);
                // The kept slot stands for what was given in line, deadline rule included.
                given_in_line = handed_over && granted.is_some();
                continue;
            }
            if !shared.needs_validation(&conn, now) {
                log::trace!("{}: checked out an idle connection", shared.config.name);
                return Ok(Shared::hand_out(shared, conn, location, begun));
            }
            // Cancelled or timed out mid-check: the guard destroys the connection.
            let mut slot = Slot::holding(shared, conn, DestroyReason::ValidationAborted);
            let check_limit = from_now(shared, shared.config.validation_timeout);
            let call_deadline = deadline.limit(shared, None);
            if handed_over
                && (deadline_passed
                    || call_deadline.is_some_and(|deadline| shared.now() >= deadline))
            {
                // Handed over as the call's time ran out: no time is left to check it, and
                // the connection is not at fault. It goes to the next caller, who can. (One
                // the call took itself is checked even so: a zero timeout still gets an
                // instant check, by one poll.)
                shared.give(slot.into_conn());
                return Err(timed_out(shared, TimeoutPhase::Waiting, &mut deadline));
            }
            let limit = earlier(check_limit, call_deadline);
            let check = shared.manager.is_valid(&mut slot.conn_mut().raw);
            match run_bounded(runtime, limit, check).await {
                Ok(Ok(())) => {
                    // The check took time (up to validation_timeout): a lifetime that ran out
                    // meanwhile is not handed out. The clock is the runtime's code: should it
                    // panic, the guard destroys the connection.
                    let conn = slot.conn_mut();
                    if conn.mortal() && conn.expired(shared.stamp()) {
                        granted = slot.destroy_keeping(DestroyReason::MaxLifetime);
                        given_in_line = handed_over && granted.is_some();
                        continue;
                    }
                    log::trace!("{}: checked out a validated connection", shared.config.name);
                    return Ok(Shared::hand_out(shared, slot.into_conn(), location, begun));
                }
                Ok(Err(error)) => {
                    log::debug!(
                        "{}: idle connection failed validation: {error}",
                        shared.config.name
                    );
                    granted = slot.destroy_keeping(DestroyReason::ValidationFailed);
                    given_in_line = handed_over && granted.is_some();
                    continue;
                }
                Err(_) if call_deadline_first(call_deadline, check_limit) => {
                    drop(slot);
                    return Err(timed_out(shared, TimeoutPhase::Validating, &mut deadline));
                }
                Err(_) => {
                    // The connection did not answer in time: destroyed like one that failed
                    // its check (it may hold a half-read reply), and the call moves on. A
                    // warning: the server is not answering, and each such check cost a
                    // caller the whole validation_timeout.
                    log::warn!(
                        "{}: idle connection did not pass validation within \
                         validation_timeout ({:?}); destroyed",
                        shared.config.name,
                        shared.config.validation_timeout.unwrap_or_default(),
                    );
                    granted = slot.destroy_keeping(DestroyReason::ValidationAborted);
                    given_in_line = handed_over && granted.is_some();
                    continue;
                }
            }
        }

        // Step 2 is skipped right after handing an idle connection back (see step 1).
        if !handed_back {
            // 2. A free slot and a connect permit: create a connection. While creations fail, the
            //    governor allows one at a time, after a delay, or rejects at once on a permanent
            //    error (but only a caller that could create: a full pool still waits for returns).
            //    A slot and permit granted to this call while it waited are used first.
            let mut grant = granted.take();
            let grant_given = std::mem::take(&mut given_in_line);
            if grant.is_some() && shared.governor.is_failing() {
                // Reserved before creations began to fail: the governor decides who tries now.
                drop(grant.take());
            }
            if grant.is_some()
                && grant_given
                && (deadline_passed
                    || deadline
                        .limit(shared, None)
                        .is_some_and(|deadline| shared.now() >= deadline))
            {
                // Granted as the call's time ran out: no time is left to create, and the
                // grant goes to the next caller.
                drop(grant);
                return Err(timed_out(shared, TimeoutPhase::Waiting, &mut deadline));
            }
            let creating = match grant {
                Some(creating) => Some(creating),
                None => {
                    let asked = shared.governor.mark();
                    let admission = if asked.failures != 0 {
                        shared.governor.admission(shared.now())
                    } else {
                        Admission::Open
                    };
                    let max_connecting = match admission {
                        Admission::Open => shared.config.max_connecting,
                        Admission::Probe => 1,
                        // This call's timer for that instant fired: the delay is over even if
                        // the clock lags the timer (or stands still), and the call may probe.
                        Admission::Backoff(at) if slept_until.is_some_and(|slept| slept >= at) => 1,
                        Admission::Backoff(at) => {
                            retry_at = Some(at);
                            0
                        }
                        Admission::Rejected(error) => {
                            if shared.size() < shared.config.max_size {
                                Stats::bump(&shared.stats.rejected);
                                return Err(PoolError::Rejected(error));
                            }
                            0
                        }
                    };
                    match Creating::begin_admitted(shared, max_connecting, asked) {
                        Begin::Taken(creating) => Some(creating),
                        Begin::Busy => None,
                        // Nothing in hand: the next round asks the governor again.
                        Begin::AskAgain => continue,
                    }
                }
            };
            if let Some(creating) = creating {
                // Leave the line before creating; a connection handed over meanwhile wins.
                if let Some(place) = queued.take() {
                    match place.abandon() {
                        Resolution::Served(conn) => {
                            drop(creating);
                            pending = Some(conn);
                            given_in_line = true;
                            continue;
                        }
                        // Granted a second slot while taking its own: that one goes on.
                        Resolution::Granted => drop(Creating::adopt(shared)),
                        // Woken for a slot or permit that came free after this call took its own:
                        // the wake-up belongs to the next waiter, who would otherwise stay parked
                        // beside free capacity until this creation ends.
                        Resolution::Woken => shared.wake_creator(),
                        Resolution::Waiting | Resolution::Abandoned => {}
                    }
                }
                let timeout_at = from_now(shared, shared.config.connection_timeout);
                let call_deadline = deadline.limit(shared, None);
                return match creating.run(timeout_at, call_deadline).await {
                    Ok(conn) => {
                        if shared.is_closed() {
                            shared.destroy(conn, DestroyReason::Closed);
                            return Err(PoolError::Closed);
                        }
                        log::debug!(
                            "{}: created a connection; {}",
                            shared.config.name,
                            shared.occupancy(),
                        );
                        Ok(Shared::hand_out(shared, conn, location, begun))
                    }
                    // The failure is recorded all the same (counters, last_error); the
                    // caller of a closed pool is told to stop asking rather than to look
                    // at the backend.
                    Err(_) if shared.is_closed() => Err(PoolError::Closed),
                    Err(Some(Ok(error))) => Err(PoolError::Backend(error)),
                    Err(Some(Err(permanent))) => Err(PoolError::Rejected(permanent)),
                    Err(None) => Err(timed_out(shared, TimeoutPhase::Creating, &mut deadline)),
                };
            }
        }

        // 3. Nothing free: take a place in line, re-check (loop again), only then wait.
        let Some(place) = queued.as_mut() else {
            let (place, drawn) = Queued::register(shared, ticket);
            queued = Some(place);
            if ticket.replace(drawn).is_none() {
                Stats::bump(&shared.stats.waited);
                log::trace!(
                    "{}: no connection free; waiting in line; {}",
                    shared.config.name,
                    shared.occupancy(),
                );
            }
            continue;
        };
        let Some(listener) = place.listener.take() else {
            // The last wake-up was spurious: listen again, then re-check before waiting.
            place.listener = Some(place.slot.listen());
            continue;
        };
        let limit = deadline.limit(shared, None);
        let wake = match (limit, retry_at) {
            (Some(limit), Some(retry)) => Some(limit.min(retry)),
            (limit, retry) => limit.or(retry),
        };
        if wait_bounded(runtime, wake, listener).await.is_ok() {
            continue;
        }
        // The call's deadline passed, or the governor's delay ended and this call may try to
        // create again. Either way it leaves the line, keeping a connection handed over. Which
        // one is told by the timer that fired, as in the other phases, not by the clock: a
        // clock that lags the timer (a coarse one) would send the call to the back of the line
        // for another sleep, and one that stands still would keep it there for ever.
        let expired = limit.is_some_and(|limit| {
            retry_at.is_none_or(|retry| limit <= retry) || shared.now() >= limit
        });
        deadline_passed |= expired;
        if !expired {
            slept_until = retry_at;
        }
        match queued.take().map(Queued::abandon) {
            Some(Resolution::Served(conn)) => {
                pending = Some(conn);
                given_in_line = true;
            }
            // Kept for the next round unless the call is over (then dropping passes it on).
            Some(Resolution::Granted) if !expired => {
                granted = Some(Creating::adopt(shared));
                given_in_line = true;
            }
            Some(Resolution::Granted) => drop(Creating::adopt(shared)),
            Some(Resolution::Woken) if expired => shared.wake_creator(),
            _ => {}
        }
        if expired && pending.is_none() {
            return Err(timed_out(shared, TimeoutPhase::Waiting, &mut deadline));
        }
    }
}
