//! The `get_connection` state machine: pop an idle connection, or create one in a free slot,
//! or wait to be woken, all under one deadline. See the "Implementation details" in `pool.rs`.

use crate::{
    connection::PooledConnection,
    error::{PoolError, TimeoutPhase},
    manager::ConnectionManager,
    pool::{ConnectionPool, Shared, Slot},
    runtime::run_bounded,
    status::{DestroyReason, Stats},
    sync::{Arc, Ordering},
};
use std::time::{Duration, Instant};

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
    /// * [`PoolError::Backend`] when `create_connection` fails (its slot is freed at once);
    /// * [`PoolError::Timeout`] when `wait_timeout` passes (whatever the phase), when one
    ///   `create_connection` outlives `connection_timeout`, or one `is_valid` outlives
    ///   `validation_timeout`;
    /// * [`PoolError::Closed`] when the pool is or gets closed.
    ///
    /// A connection that fails validation is destroyed and the call moves on to the next one.
    ///
    /// # Cancellation
    ///
    /// Dropping the future at any await point is safe and leaks nothing: a wait ends (its
    /// wake-up, if any, passes to the next waiter), a creation in flight is dropped and its
    /// slot freed, and a connection being validated is destroyed (it may hold a half-read
    /// reply) and its slot freed.
    pub async fn get_connection(&self) -> Result<PooledConnection<M>, PoolError<M::Error>> {
        checkout(&self.shared, self.shared.config.wait_timeout).await
    }

    /// Like [`get_connection`](Self::get_connection), with `timeout` instead of the configured
    /// `wait_timeout` for this call.
    ///
    /// # Errors
    ///
    /// As `get_connection`, plus [`PoolError::NoRuntime`] when the pool has no runtime to time
    /// the call with.
    pub async fn get_connection_timeout(
        &self,
        timeout: Duration,
    ) -> Result<PooledConnection<M>, PoolError<M::Error>> {
        self.runtime_or_err("get_connection_timeout")?;
        checkout(&self.shared, Some(timeout)).await
    }
}

/// The one absolute deadline of a `get_connection` call, computed at its first slow step so
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

    /// The earlier of the call's deadline and `phase_timeout` from now.
    fn limit<M: ConnectionManager>(
        &mut self,
        shared: &Shared<M>,
        phase_timeout: Option<Duration>,
    ) -> Option<Instant> {
        let (_, deadline) = self.start(shared);
        let phase = phase_timeout.and_then(|t| shared.now().checked_add(t));
        match (deadline, phase) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Counts the call among the pool's waiters while it listens.
struct Waiting<'a> {
    waiters: &'a crate::sync::AtomicUsize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

fn timed_out<M: ConnectionManager>(
    shared: &Shared<M>,
    phase: TimeoutPhase,
    deadline: &mut Deadline,
) -> PoolError<M::Error> {
    let (start, _) = deadline.start(shared);
    Stats::bump(&shared.stats.timeouts);
    let last_error = shared.create_error_since(start);
    log::warn!(
        "{}: get_connection timed out {phase}; size {}, idle {}, waiters {}",
        shared.config.name,
        shared.size.load(Ordering::Relaxed),
        shared.idle.len(),
        shared.waiters.load(Ordering::Relaxed),
    );
    PoolError::Timeout { phase, last_error }
}

pub(crate) async fn checkout<M: ConnectionManager>(
    shared: &Arc<Shared<M>>,
    wait_timeout: Option<Duration>,
) -> Result<PooledConnection<M>, PoolError<M::Error>> {
    let runtime = shared.runtime.as_deref();
    let mut deadline = Deadline::new(wait_timeout);
    let mut listener = None;
    let mut waiting = None;
    loop {
        if shared.is_closed() {
            return Err(PoolError::Closed);
        }

        // 1. An idle connection.
        if let Some(conn) = shared.idle.pop() {
            let now = shared.now();
            if let Some(reason) = shared.expiry(&conn, now) {
                shared.destroy(conn, reason);
                continue;
            }
            if !shared.needs_validation(&conn, now) {
                log::trace!("{}: checked out an idle connection", shared.config.name);
                return Ok(PooledConnection::new(Arc::clone(shared), conn));
            }
            // Cancelled or timed out mid-check: the guard destroys the connection.
            let mut slot = Slot::holding(shared, conn, DestroyReason::ValidationAborted);
            let limit = deadline.limit(shared, shared.config.validation_timeout);
            let check = shared.manager.is_valid(&mut slot.conn_mut().raw);
            match run_bounded(runtime, limit, check).await {
                Ok(Ok(())) => {
                    log::trace!("{}: checked out a validated connection", shared.config.name);
                    return Ok(PooledConnection::new(Arc::clone(shared), slot.into_conn()));
                }
                Ok(Err(error)) => {
                    log::debug!(
                        "{}: idle connection failed validation: {error}",
                        shared.config.name
                    );
                    slot.destroy(DestroyReason::ValidationFailed);
                    continue;
                }
                Err(_) => {
                    drop(slot);
                    return Err(timed_out(shared, TimeoutPhase::Validating, &mut deadline));
                }
            }
        }

        // 2. A free slot: create a connection in it.
        if let Some(slot) = Slot::reserve(shared) {
            let limit = deadline.limit(shared, shared.config.connection_timeout);
            let created = run_bounded(runtime, limit, shared.manager.create_connection()).await;
            let now = shared.now();
            match created {
                Ok(Ok(raw)) => {
                    Stats::bump(&shared.stats.created);
                    let conn = slot.fill(shared.new_conn(raw, now));
                    if shared.is_closed() {
                        shared.destroy(conn, DestroyReason::Closed);
                        return Err(PoolError::Closed);
                    }
                    log::debug!(
                        "{}: created a connection; size {}, waiters {}",
                        shared.config.name,
                        shared.size.load(Ordering::Relaxed),
                        shared.waiters.load(Ordering::Relaxed),
                    );
                    return Ok(PooledConnection::new(Arc::clone(shared), conn));
                }
                Ok(Err(error)) => {
                    drop(slot);
                    shared.record_create_error(error.to_string(), now);
                    return Err(PoolError::Backend(error));
                }
                Err(_) => {
                    drop(slot);
                    let error = timed_out(shared, TimeoutPhase::Creating, &mut deadline);
                    // Tell the waiters that time out behind this call why nothing came free.
                    let message = "create_connection did not finish in time".to_owned();
                    shared.record_create_error(message, now);
                    return Err(error);
                }
            }
        }

        // 3. Nothing free: listen, re-check (loop again), and only then wait.
        match listener.take() {
            None => {
                listener = Some(shared.event.listen());
                if waiting.is_none() {
                    shared.waiters.fetch_add(1, Ordering::AcqRel);
                    Stats::bump(&shared.stats.waited);
                    waiting = Some(Waiting {
                        waiters: &shared.waiters,
                    });
                }
            }
            Some(listener) => {
                let limit = deadline.limit(shared, None);
                if run_bounded(runtime, limit, listener).await.is_err() {
                    return Err(timed_out(shared, TimeoutPhase::Waiting, &mut deadline));
                }
            }
        }
    }
}
