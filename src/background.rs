//! The wake-up that ends the pool's background loops (the cleanup task and the leak watcher)
//! as soon as they are no longer wanted, instead of at their next tick.
//!
//! A loop sleeps for a whole `cleanup_interval` (30 s by default, often minutes) or half the
//! leak threshold. Checking whether it should stop only after each sleep would leave it, and
//! the runtime's timer, alive that long after the pool closed or was dropped, and every
//! `restart_cleanup_task` would add one more such task. So each sleep is raced against this
//! signal, which `close`, `stop_cleanup_task` and `restart_cleanup_task` fire.

#[cfg(not(loom))]
use crate::{ConnectionManager, pool::Shared, runtime::BoxFuture, sync::Weak};
use event_listener::{Event, EventListener};
#[cfg(not(loom))]
use std::{
    future::{Future, poll_fn},
    pin::Pin,
    task::Poll,
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

/// Sleeps until `tick` completes, waking early whenever `stop` fires to re-check `wanted` on
/// the pool. Returns `false` as soon as the pool is gone or `wanted` no longer holds: the
/// loop should end. `stop` must have been taken before the caller last checked `wanted`.
#[cfg(not(loom))]
pub(crate) async fn sleep_while_wanted<M: ConnectionManager>(
    pool: &Weak<Shared<M>>,
    mut tick: BoxFuture<()>,
    mut stop: EventListener,
    wanted: impl Fn(&Shared<M>) -> bool,
) -> bool {
    while !tick_unless_stopped(&mut tick, &mut stop).await {
        let Some(shared) = pool.upgrade() else {
            return false;
        };
        stop = shared.background_stop.listen();
        if !wanted(&shared) {
            return false;
        }
    }
    true
}

/// Waits until `tick` completes (returns `true`) or `stop` fires (returns `false`). After
/// `false`, `tick` may be awaited again; after `true` it must not be.
#[cfg(not(loom))]
async fn tick_unless_stopped(tick: &mut BoxFuture<()>, stop: &mut EventListener) -> bool {
    unless_stopped(tick.as_mut(), stop).await.is_some()
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
