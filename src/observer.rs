//! An optional hook for metrics: the pool calls a [`PoolObserver`] on each event worth
//! counting. Without one, each event site costs a single `Option` check.

use crate::{error::TimeoutPhase, status::DestroyReason, sync::StdArc};
use std::{error::Error, time::Duration};

/// Why a `create_connection` call produced no connection.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum CreateFailure<'a> {
    /// It returned this error.
    Error(&'a (dyn Error + 'static)),
    /// It did not finish within `connection_timeout`. (An attempt cut short by the calling
    /// `get`'s own `wait_timeout` is dropped like a cancelled one and not reported.)
    TimedOut,
}

/// Receives the pool's events, for metrics, tracing or tests.
///
/// Every method has an empty default, so an observer implements only what it needs. The pool
/// calls them synchronously on the task (or in the `Drop`) where the event happens, so they
/// must be quick and must not block: add to a counter or a histogram, send to a channel. They
/// must not call back into the pool. [`HistogramObserver`](crate::HistogramObserver) is a
/// ready implementation.
///
/// A panic in a method reaches the code that caused the event (the `get_connection` caller,
/// the code dropping the guard, `close`) after the pool has put its own state right: no slot
/// or connection is lost. The cleanup task catches one, logs it at `warn` and goes on. A
/// panic in [`on_checkout`](Self::on_checkout) reaches the `get_connection` caller in place of
/// the connection, which is closed (reported as
/// [`DestroyReason::Panicked`](crate::DestroyReason::Panicked)) and its slot freed; one in
/// [`on_return`](Self::on_return) reaches the code dropping the guard, and the connection is
/// closed the same way instead of returned. A panic while the thread already unwinds (the
/// guard dropped by another panic) is caught and dropped, as it would otherwise abort the
/// process.
///
/// # Examples
///
/// ```
/// use connection_pool::{DestroyReason, PoolObserver};
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// #[derive(Default)]
/// struct CountDestroys(AtomicU64);
///
/// impl PoolObserver for CountDestroys {
///     fn on_destroy(&self, _reason: DestroyReason) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
pub trait PoolObserver: Send + Sync + 'static {
    /// A connection was created; `duration` is how long `create_connection` took.
    fn on_create(&self, duration: Duration) {
        let _ = duration;
    }

    /// A `create_connection` call failed or timed out after `duration`.
    fn on_create_failure(&self, duration: Duration, failure: CreateFailure<'_>) {
        let _ = (duration, failure);
    }

    /// A connection was checked out; `wait` is how long the `get_connection` call took
    /// (zero for `try_get_connection`).
    fn on_checkout(&self, wait: Duration) {
        let _ = wait;
    }

    /// A checkout ended after `held`: its guard was dropped (whether the connection then went
    /// back to the pool or was destroyed) or [detached](crate::PooledConnection::detach).
    fn on_return(&self, held: Duration) {
        let _ = held;
    }

    /// A `get_connection` call timed out in `phase` after `waited`.
    fn on_timeout(&self, phase: TimeoutPhase, waited: Duration) {
        let _ = (phase, waited);
    }

    /// The pool closed a connection for `reason`.
    fn on_destroy(&self, reason: DestroyReason) {
        let _ = reason;
    }

    /// A connection left the pool through
    /// [`PooledConnection::detach`](crate::PooledConnection::detach): the pool no longer
    /// counts or closes it. Creations minus destructions minus detaches is the number of
    /// connections the pool holds. (Its checkout ends first, with
    /// [`on_return`](Self::on_return).)
    fn on_detach(&self) {}
}

/// Lets the pool share an observer the application keeps a handle to.
impl<T: PoolObserver + ?Sized> PoolObserver for StdArc<T> {
    fn on_create(&self, duration: Duration) {
        (**self).on_create(duration);
    }

    fn on_create_failure(&self, duration: Duration, failure: CreateFailure<'_>) {
        (**self).on_create_failure(duration, failure);
    }

    fn on_checkout(&self, wait: Duration) {
        (**self).on_checkout(wait);
    }

    fn on_return(&self, held: Duration) {
        (**self).on_return(held);
    }

    fn on_timeout(&self, phase: TimeoutPhase, waited: Duration) {
        (**self).on_timeout(phase, waited);
    }

    fn on_destroy(&self, reason: DestroyReason) {
        (**self).on_destroy(reason);
    }

    fn on_detach(&self) {
        (**self).on_detach();
    }
}
