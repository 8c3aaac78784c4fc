//! The wake-up that ends the pool's background loops (the cleanup task and the leak watcher)
//! as soon as they are no longer wanted, instead of at their next tick.
//!
//! A loop sleeps for a whole `cleanup_interval` (30 s by default, often minutes) or half the
//! leak threshold. Checking whether it should stop only after each sleep would leave it, and
//! the runtime's timer, alive that long after the pool closed or was dropped, and every
//! `restart_cleanup_task` would add one more such task. So each sleep is raced against this
//! signal, which `close`, `stop_cleanup_task` and `restart_cleanup_task` fire.
//!
//! The sleep itself is the runtime's code: a panic in making or polling the timer is caught
//! here, and a loop gives up only after a few in a row (see [`TimerFaults`]).
//!
//! A runtime that shuts down drops the loops it runs without a word; [`Unfinished`] says so.

#[cfg(not(loom))]
use crate::{
    ConnectionManager,
    pool::Shared,
    runtime::{BoxFuture, Runtime},
    sync::Weak,
};
use event_listener::{Event, EventListener};
#[cfg(not(loom))]
use futures_lite::FutureExt;
#[cfg(not(loom))]
use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::Pin,
    task::Poll,
    time::Duration,
};

/// Fired whenever a background loop may have to end; each loop re-checks its own condition.
pub(crate) struct StopSignal {
    event: Event,
}

impl StopSignal {
    pub(crate) fn new() -> Self {
        Self {
            event: Event::new(),
        }
    }

    // Only the background loops listen, and they do not exist under loom.
    #[cfg_attr(loom, allow(dead_code))]
    /// Starts listening. Take the listener before checking whether to go on, so that a stop
    /// that comes after the check is not missed. It keeps the signal alive on its own, so a
    /// loop can hold it without keeping the pool alive.
    pub(crate) fn listen(&self) -> EventListener {
        self.event.listen()
    }

    /// Wakes every loop, after the state it should re-check has changed.
    pub(crate) fn fire(&self) {
        self.event.notify(usize::MAX);
    }
}

/// Dropped with the pool's shared state, the signal wakes the loops, which find the pool gone
/// and end. Closing fires it first on every other way the state goes; this catches a `build`
/// that spawned the cleanup task and then panicked, where a loop would otherwise sleep out a
/// whole tick (30 s by default) with its timer.
impl Drop for StopSignal {
    fn drop(&mut self) {
        self.fire();
    }
}

/// How a background loop's sleep ended.
#[cfg(not(loom))]
pub(crate) enum Slept {
    /// The timer fired and the loop is still wanted.
    Elapsed,
    /// The pool is gone, or the loop is no longer wanted: it should end.
    Unwanted,
    /// The runtime's timer panicked (when created or polled): nobody knows how long passed.
    TimerPanicked,
}

/// The runtime's timer for `duration`, or `None` if creating it panicked (the runtime is user
/// code, and the loop must not die with it).
#[cfg(not(loom))]
pub(crate) fn timer(runtime: &dyn Runtime, duration: Duration) -> Option<BoxFuture<()>> {
    std::panic::catch_unwind(AssertUnwindSafe(|| runtime.sleep(duration))).ok()
}

/// Sleeps until `tick` completes, waking early whenever `stop` fires to re-check `wanted` on
/// the pool. `stop` must have been taken before the caller last checked `wanted`.
#[cfg(not(loom))]
pub(crate) async fn sleep_while_wanted<M: ConnectionManager>(
    pool: &Weak<Shared<M>>,
    tick: Option<BoxFuture<()>>,
    mut stop: EventListener,
    wanted: impl Fn(&Shared<M>) -> bool,
) -> Slept {
    let Some(tick) = tick else {
        return Slept::TimerPanicked;
    };
    let mut tick = std::pin::pin!(FutureExt::catch_unwind(AssertUnwindSafe(tick)));
    loop {
        match unless_stopped(tick.as_mut(), &mut stop).await {
            Some(Ok(())) => return Slept::Elapsed,
            Some(Err(_)) => return Slept::TimerPanicked,
            None => {}
        }
        let Some(shared) = pool.upgrade() else {
            return Slept::Unwanted;
        };
        stop = shared.background_stop.listen();
        if !wanted(&shared) {
            return Slept::Unwanted;
        }
    }
}

/// A background loop's count of timer panics in a row. Without a timer a loop cannot wait,
/// so it tries a few times (a one-off fault passes) and then ends rather than spin.
#[cfg(not(loom))]
pub(crate) struct TimerFaults {
    in_a_row: u32,
}

/// Timer panics in a row after which a background loop ends.
#[cfg(not(loom))]
const TIMER_PANICS_TOLERATED: u32 = 3;

#[cfg(not(loom))]
impl TimerFaults {
    pub(crate) fn new() -> Self {
        Self { in_a_row: 0 }
    }

    /// A timer fired.
    pub(crate) fn elapsed(&mut self) {
        self.in_a_row = 0;
    }

    /// A timer panicked: logs it and returns whether the loop should go on, after yielding
    /// to the executor; not if the pool is gone or the timer keeps panicking. `task` names
    /// the loop, `without` says what the application loses when it ends.
    pub(crate) async fn panicked<M: ConnectionManager>(
        &mut self,
        pool: &Weak<Shared<M>>,
        task: &str,
        without: &str,
    ) -> bool {
        let Some(shared) = pool.upgrade() else {
            return false;
        };
        let name = &shared.config.name;
        self.in_a_row += 1;
        if self.in_a_row >= TIMER_PANICS_TOLERATED {
            log::warn!(
                "{name}: the runtime's timer panicked {} times in a row in the {task}, which \
                 now stops: {without}",
                self.in_a_row,
            );
            return false;
        }
        log::warn!("{name}: the runtime's timer panicked in the {task}; it tries again");
        // Not holding the pool while the loop is away.
        drop(shared);
        futures_lite::future::yield_now().await;
        true
    }
}

/// Runs `work` until it finishes (its output) or `stop` fires (`None`; `work` may be resumed
/// or dropped). `work` is polled first, so a result ready together with the stop is kept.
#[cfg(not(loom))]
pub(crate) async fn unless_stopped<F: Future + ?Sized>(
    mut work: Pin<&mut F>,
    stop: &mut EventListener,
) -> Option<F::Output> {
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if Pin::new(&mut *stop).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Warns if a background loop's future is dropped before the loop ended while the pool still
/// wants it: the runtime it was spawned on shut down (a pool that outlives one
/// `#[tokio::test]`) or dropped the task, and what the loop did is lost without a trace.
#[cfg(not(loom))]
pub(crate) struct Unfinished<M: ConnectionManager, W: Fn(&Shared<M>) -> bool> {
    pool: Weak<Shared<M>>,
    /// Whether the pool still wants the loop.
    wanted: W,
    /// The loop's name, and what the application loses without it.
    task: &'static str,
    without: &'static str,
    armed: bool,
}

#[cfg(not(loom))]
impl<M: ConnectionManager, W: Fn(&Shared<M>) -> bool> Unfinished<M, W> {
    pub(crate) fn new(
        pool: Weak<Shared<M>>,
        wanted: W,
        task: &'static str,
        without: &'static str,
    ) -> Self {
        Self {
            pool,
            wanted,
            task,
            without,
            armed: true,
        }
    }

    /// The loop ended by itself.
    pub(crate) fn finished(mut self) {
        self.armed = false;
    }
}

#[cfg(not(loom))]
impl<M: ConnectionManager, W: Fn(&Shared<M>) -> bool> Drop for Unfinished<M, W> {
    fn drop(&mut self) {
        // Dropped by a panic (in the loop, or in the runtime's `spawn`): that panic is
        // reported where it is caught, and a logger that panics here would abort.
        if !self.armed || std::thread::panicking() {
            return;
        }
        let Some(shared) = self.pool.upgrade() else {
            return;
        };
        if (self.wanted)(&shared) {
            log::warn!(
                "{}: the {} was dropped before it ended, most likely because the runtime it \
                 ran on shut down: {}",
                shared.config.name,
                self.task,
                self.without,
            );
        }
    }
}
