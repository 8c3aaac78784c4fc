//! The executor-facing side of the pool: spawning, timers and the clock.
//!
//! Getting and returning connections needs no runtime at all. Timeouts and the background
//! cleanup task do, and they reach the executor only through [`Runtime`], so the pool runs on
//! tokio, smol, async-std or any executor a user can write a dozen lines for.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration, time::Instant};

#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

#[cfg(feature = "smol")]
pub use self::smol::SmolRuntime;
#[cfg(feature = "tokio")]
pub use self::tokio::TokioRuntime;

/// A boxed, sendable future, the currency of [`Runtime`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the pool needs from an async executor.
///
/// Implementations ship for tokio ([`TokioRuntime`], feature `tokio`) and smol/async-std
/// ([`SmolRuntime`], feature `smol`). Implement it yourself for another executor, or with a
/// manual clock to test time-dependent behaviour without sleeping.
///
/// # Examples
///
/// A runtime for smol written by hand (the crate's `SmolRuntime` does the same, and also
/// supplies the cheaper coarse clock through [`coarse_now`](Runtime::coarse_now)):
///
/// ```
/// use connection_pool::{BoxFuture, Runtime};
/// use std::time::Duration;
///
/// struct MySmol;
///
/// impl Runtime for MySmol {
///     fn spawn(&self, task: BoxFuture<()>) {
///         smol::spawn(task).detach();
///     }
///
///     fn sleep(&self, duration: Duration) -> BoxFuture<()> {
///         Box::pin(async move {
///             smol::Timer::after(duration).await;
///         })
///     }
/// }
/// ```
pub trait Runtime: Send + Sync + 'static {
    /// Runs `task` to completion in the background. The pool spawns only its cleanup loop and,
    /// when leak detection is on, its leak watcher; both hold only a weak reference to the pool
    /// while they wait, and end when it is dropped. If the task is dropped or never runs, that
    /// background work stops; getting and returning connections (and their timeouts) keep
    /// working.
    ///
    /// While a `min_idle` top-up opens a connection, the cleanup loop holds the pool itself. So
    /// a runtime that owns its executor must keep driving it, or drop its tasks, until the pool
    /// is gone: a task left neither polled nor dropped in the middle of a top-up keeps the pool
    /// alive, and through it this runtime and its executor, for good (tokio drops its tasks
    /// when the runtime shuts down; smol's global executor keeps running). It is called
    /// from [`Builder::build`](crate::Builder::build) and
    /// [`restart_cleanup_task`](crate::ConnectionPool::restart_cleanup_task), and a panic in it
    /// reaches their caller.
    fn spawn(&self, task: BoxFuture<()>);

    /// A future that completes once `duration` has passed on this runtime's clock.
    ///
    /// The pool races it against the work it bounds and drops it early whenever that work
    /// finishes first, so it must be safe to drop before completion (timer futures are).
    ///
    /// A panic in it (when called or when polled) reaches the `get_connection` caller whose
    /// timeout it was. The background loops catch it, log it at `warn` and ask for a timer
    /// again; after three panics in a row, a loop ends with a warning, since it cannot wait
    /// without a timer (restart the cleanup task with
    /// [`restart_cleanup_task`](crate::ConnectionPool::restart_cleanup_task)).
    fn sleep(&self, duration: Duration) -> BoxFuture<()>;

    /// The current time. Deadlines are measured with it, and so are idle times and lifetimes
    /// unless [`coarse_now`](Self::coarse_now) is overridden (as `TokioRuntime` and
    /// `SmolRuntime` do), so a test runtime can drive them all with a manual clock.
    ///
    /// It must move with [`sleep`](Self::sleep)'s timers. Each step of a `get_connection`
    /// call (waiting, creating, checking) arms a timer for what this clock says is left of
    /// the call's time, so with a clock that stands still a call that goes through several
    /// steps can wait a whole timeout in each. It must never go back, as `Instant` promises:
    /// after a step back, the retry delay the pool set after a failed creation lasts until
    /// the clock has caught up again. A manual clock far ahead is fine: past about 438 years
    /// after the system clock's origin, idle times and lifetimes stop advancing.
    fn now(&self) -> Instant {
        Instant::now()
    }

    /// The current time to within a few milliseconds, on the clock idle times and lifetimes
    /// are measured with: the pool reads it on every checkout and return, to stamp a returned
    /// connection and to check an idle one before handing it out, and in each cleanup pass.
    ///
    /// The default returns [`now`](Self::now), so a manual clock drives idle times too.
    /// [`TokioRuntime`] and [`SmolRuntime`] return [`coarse_now`](crate::coarse_now), the
    /// system's coarse monotonic clock (about 7 ns to read on Linux against about 23 ns for
    /// `Instant::now()`); a runtime of your own on the system clock can do the same.
    fn coarse_now(&self) -> Instant {
        self.now()
    }

    /// Whether [`coarse_now`](Self::coarse_now) is the system's coarse clock,
    /// [`crate::coarse_now`]. The pool then reads that clock itself on every checkout and
    /// return, without a call through the runtime and a conversion from `Instant`.
    ///
    /// The default is `false`, which is always correct; [`TokioRuntime`] and [`SmolRuntime`]
    /// return `true`. Return `true` only if `coarse_now` returns `crate::coarse_now()`.
    fn coarse_now_is_system_clock(&self) -> bool {
        false
    }
}

/// Implements [`Runtime`] for a smart pointer to one by forwarding every method.
macro_rules! forward_runtime {
    ($(#[$doc:meta])* $pointer:ident) => {
        $(#[$doc])*
        impl<R: Runtime + ?Sized> Runtime for $pointer<R> {
            fn spawn(&self, task: BoxFuture<()>) {
                (**self).spawn(task);
            }

            fn sleep(&self, duration: Duration) -> BoxFuture<()> {
                (**self).sleep(duration)
            }

            fn now(&self) -> Instant {
                (**self).now()
            }

            fn coarse_now(&self) -> Instant {
                (**self).coarse_now()
            }

            fn coarse_now_is_system_clock(&self) -> bool {
                (**self).coarse_now_is_system_clock()
            }
        }
    };
}

forward_runtime!(
    /// Forwards to the shared runtime, so that one runtime (an `Arc<dyn Runtime>` a library
    /// keeps, for example) can serve several pools.
    Arc
);
forward_runtime!(
    /// Forwards to the boxed runtime, so that a `Box<dyn Runtime>` chosen at run time can be
    /// passed to [`Builder::runtime`](crate::Builder::runtime).
    Box
);

/// Why [`run_bounded`] or [`wait_bounded`] gave up on its future.
pub(crate) struct Elapsed;

/// Polls `future` until it finishes or `limit` passes, whichever is first.
///
/// The future is polled first on every wake-up, so a result that is ready together with the
/// timer is kept.
pub(crate) async fn run_bounded<F: Future>(
    runtime: Option<&dyn Runtime>,
    limit: Option<Instant>,
    future: F,
) -> Result<F::Output, Elapsed> {
    bounded(runtime, limit, future, false).await
}

/// Like [`run_bounded`], but the timer is polled first: when the wake-up and the timer are
/// ready together, the timer wins. For a wait in line, so that the call learns from its own
/// timer that its time is up, rather than from a clock that may lag the timer, and passes on
/// whatever reached it as time ran out.
pub(crate) async fn wait_bounded<F: Future>(
    runtime: Option<&dyn Runtime>,
    limit: Option<Instant>,
    wake_up: F,
) -> Result<F::Output, Elapsed> {
    bounded(runtime, limit, wake_up, true).await
}

/// Races `future` against a timer for `limit`; `timer_first` says which is polled first.
async fn bounded<F: Future>(
    runtime: Option<&dyn Runtime>,
    limit: Option<Instant>,
    future: F,
    timer_first: bool,
) -> Result<F::Output, Elapsed> {
    let (Some(runtime), Some(limit)) = (runtime, limit) else {
        return Ok(future.await);
    };
    let left = limit.saturating_duration_since(runtime.now());
    if left.is_zero() {
        // Already over. A timer armed for no time at all is not ready at once on every runtime
        // (tokio rounds it up to its next millisecond tick), and meanwhile the work could be
        // polled again and again: a zero timeout promises one poll.
        if timer_first {
            return Err(Elapsed);
        }
        return futures_lite::future::poll_once(future).await.ok_or(Elapsed);
    }
    let timer = runtime.sleep(left);
    let work = async { Ok(future.await) };
    let expiry = async {
        timer.await;
        Err(Elapsed)
    };
    if timer_first {
        futures_lite::future::or(expiry, work).await
    } else {
        futures_lite::future::or(work, expiry).await
    }
}

#[cfg(test)]
mod tests {
    use super::{Arc, BoxFuture, Duration, Instant, Runtime};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A runtime whose every answer differs from the trait's defaults, counting its calls.
    struct Distinct {
        origin: Instant,
        spawned: AtomicUsize,
        slept: AtomicUsize,
    }

    impl Runtime for Distinct {
        fn spawn(&self, _task: BoxFuture<()>) {
            self.spawned.fetch_add(1, Ordering::SeqCst);
        }

        fn sleep(&self, _duration: Duration) -> BoxFuture<()> {
            self.slept.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        }

        fn now(&self) -> Instant {
            self.origin + Duration::from_secs(1)
        }

        fn coarse_now(&self) -> Instant {
            self.origin + Duration::from_secs(2)
        }

        fn coarse_now_is_system_clock(&self) -> bool {
            true
        }
    }

    fn assert_forwards(runtime: &dyn Runtime, inner: &Distinct) {
        assert_eq!(runtime.now(), inner.origin + Duration::from_secs(1));
        assert_eq!(runtime.coarse_now(), inner.origin + Duration::from_secs(2));
        assert!(runtime.coarse_now_is_system_clock());
        runtime.spawn(Box::pin(async {}));
        drop(runtime.sleep(Duration::from_secs(1)));
        assert_eq!(inner.spawned.load(Ordering::SeqCst), 1);
        assert_eq!(inner.slept.load(Ordering::SeqCst), 1);
    }

    fn distinct() -> Distinct {
        Distinct {
            origin: Instant::now(),
            spawned: AtomicUsize::new(0),
            slept: AtomicUsize::new(0),
        }
    }

    #[test]
    fn an_arc_or_a_box_of_a_runtime_forwards_every_method() {
        let shared = Arc::new(distinct());
        let as_dyn: Arc<dyn Runtime> = Arc::clone(&shared) as Arc<dyn Runtime>;
        assert_forwards(&as_dyn, &shared);

        let inner = Arc::new(distinct());
        let boxed: Box<dyn Runtime> = Box::new(Arc::clone(&inner));
        assert_forwards(&boxed, &inner);
    }

    struct Nothing;

    impl crate::ConnectionManager for Nothing {
        type Connection = ();
        type Error = std::convert::Infallible;

        async fn create_connection(&self) -> Result<(), Self::Error> {
            Ok(())
        }

        async fn is_valid(&self, _conn: &mut ()) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    #[test]
    fn pools_can_share_one_runtime_behind_an_arc() {
        let inner = Arc::new(distinct());
        let runtime: Arc<dyn Runtime> = Arc::clone(&inner) as Arc<dyn Runtime>;
        let pools: Vec<_> = (0..2)
            .map(|_| {
                crate::ConnectionPool::builder(Nothing)
                    .runtime(Arc::clone(&runtime))
                    .build()
                    .expect("valid settings")
            })
            .collect();
        // Each pool spawned its cleanup task on the one runtime.
        assert_eq!(inner.spawned.load(Ordering::SeqCst), pools.len());
    }
}
