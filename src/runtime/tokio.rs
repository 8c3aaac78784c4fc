//! [`Runtime`] for tokio.

use super::{BoxFuture, Runtime};
use std::{fmt, time::Duration, time::Instant};

/// Runs the pool's timers and cleanup task on a tokio runtime (feature `tokio`).
///
/// It keeps a [`Handle`](::tokio::runtime::Handle), so a pool built with it works even when its
/// methods are called from outside that runtime, as long as something drives that runtime: a
/// multi-thread runtime drives itself, but a current-thread runtime runs its timers and tasks
/// only inside its `block_on`. A call made from another thread while no `block_on` runs there
/// waits without its timeouts (and the cleanup task does not run) until one does.
///
/// Timeouts and the cleanup interval follow tokio's clock, so tests that pause time
/// (`#[tokio::test(start_paused = true)]`) drive them. Idle times and lifetimes are measured
/// with the system's coarse monotonic clock ([`coarse_now`](crate::coarse_now)), which is read
/// on every checkout and return and costs a third of a precise reading; pausing tokio's clock
/// does not age connections. To test expiry without sleeping, build the pool with a
/// [`Runtime`] of your own whose `now` is a manual clock.
///
/// # Panics
///
/// The tokio runtime must have its time driver on (`Builder::enable_time` or `enable_all`;
/// `#[tokio::main]` and `#[tokio::test]` turn it on): without it tokio panics when the pool
/// arms its first timer (a timed `get_connection`, the cleanup task), which tokio offers no
/// way to detect beforehand. The panic reaches a `get_connection` caller; the cleanup task
/// logs it and, after three tries, ends with a warning.
///
/// Once the tokio runtime behind the handle has shut down, tokio panics when the pool arms a
/// timer (a `get_connection` with a timeout): build the pool on the runtime that outlives it,
/// or drop the pool first. Reading the clock does not panic.
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use connection_pool::TokioRuntime;
///
/// let runtime = TokioRuntime::current();
/// # let _ = runtime;
/// # }
/// ```
#[derive(Clone)]
pub struct TokioRuntime {
    /// The runtime that runs the cleanup task and drives the timers.
    handle: ::tokio::runtime::Handle,
}

impl TokioRuntime {
    /// Uses the tokio runtime the caller is running on.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, like
    /// [`Handle::current`](::tokio::runtime::Handle::current). Use [`TokioRuntime::try_current`]
    /// or [`TokioRuntime::from_handle`] there.
    pub fn current() -> Self {
        Self::from_handle(::tokio::runtime::Handle::current())
    }

    /// Uses the tokio runtime the caller is running on, or `None` outside one.
    pub fn try_current() -> Option<Self> {
        ::tokio::runtime::Handle::try_current()
            .ok()
            .map(Self::from_handle)
    }

    /// Uses the runtime behind `handle`.
    pub fn from_handle(handle: ::tokio::runtime::Handle) -> Self {
        Self { handle }
    }
}

impl fmt::Debug for TokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioRuntime").finish_non_exhaustive()
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture<()>) {
        drop(self.handle.spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        // Entering the handle registers the timer with this runtime's driver even when the
        // caller is not on a tokio thread.
        let _entered = self.handle.enter();
        Box::pin(::tokio::time::sleep(duration))
    }

    fn now(&self) -> Instant {
        // On the runtime's own threads tokio's clock (paused or not) is found without entering
        // the handle, which would cost as much again as the clock read; elsewhere it is the
        // system clock, which is what tokio's clock is unless time is paused.
        ::tokio::time::Instant::now().into_std()
    }

    fn coarse_now(&self) -> Instant {
        crate::coarse_now()
    }

    fn coarse_now_is_system_clock(&self) -> bool {
        true
    }
}
