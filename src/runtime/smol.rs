//! [`Runtime`] for smol and async-std.

use super::{BoxFuture, Runtime};
use std::time::{Duration, Instant};

/// Runs the pool's timers on async-io and its cleanup task on smol's global executor
/// (feature `smol`).
///
/// async-std applications use it too: async-std is built on the same async-io reactor.
///
/// Its timers need no executor of their own (async-io drives them from a thread of its own),
/// so a pool on it works from any executor and outlives any tokio runtime. But the cleanup
/// task's `min_idle` top-up runs [`create_connection`](crate::ConnectionManager::create_connection)
/// on smol's executor: a manager whose connections need a tokio runtime (tokio-postgres, redis
/// with `tokio-comp`) must use [`TokioRuntime`](crate::TokioRuntime) instead, or set no
/// `min_idle`.
///
/// # Examples
///
/// ```
/// use connection_pool::SmolRuntime;
///
/// let runtime = SmolRuntime::new();
/// # let _ = runtime;
/// ```
#[derive(Debug, Clone, Default)]
pub struct SmolRuntime {
    _private: (),
}

impl SmolRuntime {
    /// Creates the runtime; it needs no set-up.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Runtime for SmolRuntime {
    fn spawn(&self, task: BoxFuture<()>) {
        ::smol::spawn(task).detach();
    }

    fn sleep(&self, duration: Duration) -> BoxFuture<()> {
        Box::pin(async move {
            ::smol::Timer::after(duration).await;
        })
    }

    fn coarse_now(&self) -> Instant {
        crate::coarse_now()
    }

    fn coarse_now_is_system_clock(&self) -> bool {
        true
    }
}
