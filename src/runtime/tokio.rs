//! [`Runtime`] for tokio.

use super::{BoxFuture, Runtime};
use std::{fmt, time::Duration, time::Instant};

/// Runs the pool's timers and cleanup task on a tokio runtime (feature `tokio`).
///
/// Made with [`current`](Self::current), [`try_current`](Self::try_current) or
/// [`from_handle`](Self::from_handle), it keeps a [`Handle`](::tokio::runtime::Handle) and
/// arms every timer and spawns every task on that runtime, whichever thread or runtime a call
/// comes from, as long as something drives that runtime: a multi-thread runtime drives
/// itself, but a current-thread runtime runs its timers and tasks only inside its `block_on`.
/// A call made from another thread while no `block_on` runs there waits without its timeouts
/// (and the cleanup task does not run) until one does. The same holds inside the runtime: a
/// synchronous `block_on` (futures' or async-std's) nested in a task of a current-thread
/// runtime, or of a multi-thread runtime with one worker, blocks the thread that would drive
/// the timers, so the call it waits for has no timeout; block only where another thread
/// drives the runtime, or give such a pool [`SmolRuntime`](crate::SmolRuntime), whose timers
/// run on a thread of their own.
///
/// Made with [`follow_caller`](Self::follow_caller), it arms a call's timers on the tokio
/// runtime the call is made on, as deadpool and bb8 do: for a pool kept in a `static` and
/// shared by several `#[tokio::test]`s, each with a runtime of its own, which must keep
/// working after the runtime that built it has shut down.
///
/// Timeouts and the cleanup interval follow tokio's clock, so tests that pause time
/// (`#[tokio::test(start_paused = true)]`) drive them. A paused clock jumps to the next timer
/// whenever tokio has nothing to run, so a manager whose I/O tokio does not drive (the
/// [`TcpConnectionManager`](crate::TcpConnectionManager)'s, on async-io) sees its timeouts
/// fire while its I/O is still on its way: give such a pool
/// [`SmolRuntime`](crate::SmolRuntime) in paused tests. Idle times and lifetimes are measured
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
/// Once the runtime the pool's timers are armed on has shut down, tokio panics when the pool
/// arms a timer (a `get_connection` that waits, creates or validates with a timeout): build
/// the pool on a runtime that outlives it, drop the pool first, or use `follow_caller`.
/// Reading the clock does not panic. The cleanup task and the leak watcher end with the
/// runtime they run on, with a warning.
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
    /// The runtime that runs the cleanup task and drives the timers, unless `follow_caller`
    /// and the caller is on a runtime.
    handle: ::tokio::runtime::Handle,
    /// Whether a caller's own runtime takes the place of `handle`.
    follow_caller: bool,
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

    /// Arms each call's timers on the tokio runtime the call is made on, and spawns a
    /// [`restart_cleanup_task`](crate::ConnectionPool::restart_cleanup_task) there; the
    /// runtime the caller is running on now serves calls made outside any runtime, and runs
    /// the cleanup task started by [`build`](crate::Builder::build). For a pool that outlives
    /// the runtime that built it, such as one in a `static` shared by several
    /// `#[tokio::test]`s: restart its cleanup task from each later runtime if it needs one
    /// (the pool warns when a runtime drops it).
    ///
    /// A call's own runtime must drive its timers while the call waits: a call made on a
    /// runtime without its time driver panics, and one made from a synchronous `block_on`
    /// nested in a tokio task, or from a thread that entered a runtime nothing drives, waits
    /// without its timeouts. [`current`](Self::current) avoids both while the runtime it keeps
    /// is driven by another thread (see the type's docs for a current-thread runtime).
    ///
    /// A call made outside any tokio runtime (a plain thread, `smol`, async-std) arms its
    /// timers on the runtime that was current here: once that runtime has shut down, such a
    /// call panics when it arms one, as with `current`. Only calls made on a tokio runtime
    /// follow the caller.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime, like [`current`](Self::current).
    pub fn follow_caller() -> Self {
        Self {
            handle: ::tokio::runtime::Handle::current(),
            follow_caller: true,
        }
    }

    /// Uses the runtime behind `handle`.
    pub fn from_handle(handle: ::tokio::runtime::Handle) -> Self {
        Self {
            handle,
            follow_caller: false,
        }
    }

    /// The runtime to spawn a task on, for a caller on this thread.
    fn spawner(&self) -> std::borrow::Cow<'_, ::tokio::runtime::Handle> {
        if self.follow_caller {
            if let Ok(current) = ::tokio::runtime::Handle::try_current() {
                return std::borrow::Cow::Owned(current);
            }
        }
        std::borrow::Cow::Borrowed(&self.handle)
    }
}

impl fmt::Debug for TokioRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioRuntime")
            .field("follow_caller", &self.follow_caller)
            .finish_non_exhaustive()
    }
}

impl Runtime for TokioRuntime {
    fn spawn(&self, task: BoxFuture<()>) {
        drop(self.spawner().spawn(task));
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        if self.follow_caller && ::tokio::runtime::Handle::try_current().is_ok() {
            return Box::pin(::tokio::time::sleep(duration));
        }
        // Entering the handle registers the timer with that runtime's driver even when the
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
