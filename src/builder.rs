//! `Builder`: the one way to make a `ConnectionPool`, checking every setting first.

use crate::{
    config::{Config, ValidationPolicy},
    connection::Conn,
    error::{ConfigError, PoolError},
    manager::ConnectionManager,
    observer::PoolObserver,
    pool::{ConnectionPool, Shared},
    runtime::Runtime,
    sync::Arc,
};
use std::{fmt, time::Duration};

/// Builds a [`ConnectionPool`]; start with [`ConnectionPool::builder`].
///
/// Settings that take an optional duration accept a `Duration` or `None` (no limit, or no
/// task). The defaults are those of [`Config::default`]. The setters only record values; a bad
/// one (zero, too large, inconsistent with another) comes back from [`build`](Self::build) as
/// [`PoolError::Config`] naming the setting.
///
/// # Examples
///
#[cfg_attr(feature = "tokio", doc = "```")]
#[cfg_attr(not(feature = "tokio"), doc = "```ignore")]
/// # use connection_pool::{ConnectionManager, ConnectionPool, TokioRuntime, ValidationPolicy};
/// # use std::time::Duration;
/// # struct Numbers;
/// # impl ConnectionManager for Numbers {
/// #     type Connection = u32;
/// #     type Error = std::io::Error;
/// #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
/// #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = ConnectionPool::builder(Numbers)
///     .name("numbers")
///     .max_size(16)
///     .min_idle(2)
///     .wait_timeout(Duration::from_secs(5))
///     .max_lifetime(None)
///     .validation(ValidationPolicy::Always)
///     .runtime(TokioRuntime::current())
///     .build()?;
/// # drop(pool);
/// # Ok(())
/// # }
/// ```
pub struct Builder<M: ConnectionManager> {
    manager: M,
    config: Config,
    runtime: Option<Box<dyn Runtime>>,
    observer: Option<Box<dyn PoolObserver>>,
}

impl<M: ConnectionManager> ConnectionPool<M> {
    /// Starts building a pool whose connections `manager` creates.
    pub fn builder(manager: M) -> Builder<M> {
        Builder {
            manager,
            config: Config::default(),
            runtime: None,
            observer: None,
        }
    }
}

impl<M: ConnectionManager> Builder<M> {
    /// Replaces every setting with `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Name used in log messages (default `"connection-pool"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The most connections that exist at once (default 10, at least 1, at most
    /// [`MAX_POOL_SIZE`](crate::MAX_POOL_SIZE)). The idle queue holds `max_size` connections
    /// inline and is allocated when the pool is built: [`build`](Self::build) refuses a
    /// `max_size` whose queue would take over 1 GiB (box a large connection type).
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Idle connections the cleanup task keeps ready (default 0, at most `max_size`). It
    /// creates the missing ones when it starts and at each tick, and tries again sooner (after
    /// 50 ms, doubling) when other creations in flight took every connect permit or the last
    /// slots. It obeys the connect governor like any caller, but never waits for it: while
    /// creations fail it tries at the first tick after the backoff delay is over. Unlike
    /// bb8's, it does not refill as soon as checkouts take idle connections: a burst that
    /// takes them creates on the callers' path until the next tick. An attempt still running
    /// after the longer of `cleanup_interval` and 10 s is given up, not counted as a failure
    /// (a `connection_timeout` no longer than that ends it first, and that counts), so that a hung
    /// connect holds neither a permit nor the cleanup task for long.
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// How long a connection may sit idle before it is closed, by the cleanup task or at its
    /// next checkout, as long as more than `min_idle` are idle (default 5 min).
    pub fn max_idle_time(mut self, max_idle_time: impl Into<Option<Duration>>) -> Self {
        self.config.max_idle_time = max_idle_time.into();
        self
    }

    /// How long a connection may live at all, less up to 2.5 % jitter (default 30 min).
    pub fn max_lifetime(mut self, max_lifetime: impl Into<Option<Duration>>) -> Self {
        self.config.max_lifetime = max_lifetime.into();
        self
    }

    /// Bound on one `create_connection` call (default 10 s).
    pub fn connection_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.connection_timeout = timeout.into();
        self
    }

    /// Bound on a whole `get_connection` call: waiting, creating and validating (default 30 s).
    /// A call whose time runs out while it creates drops that connect attempt: keep the bound
    /// well above the backend's connect time, or no connection is ever made.
    pub fn wait_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.wait_timeout = timeout.into();
        self
    }

    /// Bound on one `is_valid` call (default 5 s). A connection that does not pass its check in
    /// time is destroyed and the `get_connection` call moves on to another one.
    pub fn validation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.validation_timeout = timeout.into();
        self
    }

    /// When idle connections are validated on checkout (default: when idle over 500 ms).
    pub fn validation(mut self, policy: ValidationPolicy) -> Self {
        self.config.validation = policy;
        self
    }

    /// Period of the background cleanup task, at least 1 ms, or `None` for no task (default
    /// 30 s).
    pub fn cleanup_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.cleanup_interval = interval.into();
        self
    }

    /// The most `create_connection` calls in flight at once (default 2, at least 1), so that
    /// a burst of demand or a backend restart does not open a storm of connections. While
    /// creations fail, the pool allows one at a time, with a growing delay between attempts.
    pub fn max_connecting(mut self, max_connecting: usize) -> Self {
        self.config.max_connecting = max_connecting;
        self
    }

    /// Logs a warning, once per checkout, when a connection is held longer than `threshold`,
    /// naming the source location of the `get_connection` call (default `None`: off, and
    /// free). Needs a runtime for its watcher task. When on, each checkout costs one small
    /// allocation, and the records of the checkouts out sit in a table of `max_size` entries,
    /// so memory does not grow with the checkout rate or the threshold.
    pub fn leak_detection_threshold(mut self, threshold: impl Into<Option<Duration>>) -> Self {
        self.config.leak_detection_threshold = threshold.into();
        self
    }

    /// Sends the pool's events (creates, checkouts with their wait, returns with their hold
    /// time, timeouts, destroys) to `observer`. Pass an `Arc` to keep a handle to it, as with
    /// [`HistogramObserver`](crate::HistogramObserver). Without one, nothing is measured. With
    /// one, each checkout records its time in a small heap record (one allocation), which the
    /// return reads for the hold time; without one the guard carries no record at all.
    pub fn observer(mut self, observer: impl PoolObserver) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The executor that supplies timers, spawning and the clock.
    pub fn runtime(mut self, runtime: impl Runtime) -> Self {
        self.runtime = Some(Box::new(runtime));
        self
    }

    /// Turns off every setting that needs a runtime (the three timeouts, the cleanup task and
    /// leak detection), for pools used without one, and drops a runtime passed before it.
    /// Settings made after it still count: a timeout set afterwards makes `build` ask for a
    /// runtime, and a [`runtime`](Self::runtime) passed afterwards is used (its clock, its
    /// spawning), but the timeouts, the cleanup task and leak detection stay off unless set
    /// again. For a pool with a runtime and its defaults, do not call this.
    ///
    /// Without a runtime nothing could wake a caller when a retry delay ends, so after a
    /// transient creation failure the pool does not back off: it only lets one creation run at
    /// a time. After a [permanent](crate::ConnectionManager::is_permanent_error) error, calls
    /// that would have to create are still rejected at once until its delay has passed.
    pub fn no_runtime(mut self) -> Self {
        self.runtime = None;
        self.config.connection_timeout = None;
        self.config.wait_timeout = None;
        self.config.validation_timeout = None;
        self.config.cleanup_interval = None;
        self.config.leak_detection_threshold = None;
        self
    }

    /// Checks the settings and builds the pool. With a cleanup interval, it spawns the
    /// cleanup task on the runtime, which also creates the first `min_idle` connections.
    ///
    /// # Errors
    ///
    /// [`PoolError::Config`] naming the first bad setting, or [`PoolError::NoRuntime`] when a
    /// timeout, the cleanup task or leak detection is set without a runtime.
    ///
    /// # Panics
    ///
    /// Never for a bad setting. Only if the runtime's [`spawn`](Runtime::spawn) panics, as
    /// `tokio::spawn` does outside a tokio runtime; [`TokioRuntime`](crate::TokioRuntime)
    /// spawns through the handle it was made with, so building works anywhere.
    pub fn build(self) -> Result<ConnectionPool<M>, PoolError<M::Error>> {
        let Builder {
            manager,
            config,
            runtime,
            observer,
        } = self;
        config.validate()?;
        check_idle_queue_size::<M::Connection>(config.max_size)?;
        if runtime.is_none() {
            let needs_runtime = [
                ("connection_timeout", config.connection_timeout),
                ("wait_timeout", config.wait_timeout),
                ("validation_timeout", config.validation_timeout),
                ("cleanup_interval", config.cleanup_interval),
                ("leak_detection_threshold", config.leak_detection_threshold),
            ];
            if let Some((setting, _)) = needs_runtime.iter().find(|(_, d)| d.is_some()) {
                return Err(PoolError::NoRuntime { setting });
            }
        }
        let cleanup_interval = config.cleanup_interval;
        log::debug!(
            "{}: pool started; max_size {}, min_idle {}",
            config.name,
            config.max_size,
            config.min_idle
        );
        let shared = Arc::new(Shared::new(manager, config, runtime, observer));
        if let Some(interval) = cleanup_interval {
            crate::cleanup::start(&shared, interval);
        }
        crate::leak::start(&shared);
        Ok(ConnectionPool::from_shared(shared))
    }
}

/// The most the idle queue may take up front (1 GiB). It holds connections inline, one place
/// per slot, allocated when the pool is built; past this, a connection type of many kilobytes
/// times a large `max_size` is almost surely a mistake, and an allocation that fails aborts
/// the process instead of returning an error.
const MAX_IDLE_QUEUE_BYTES: usize = 1 << 30;

fn check_idle_queue_size<C>(max_size: usize) -> Result<(), ConfigError> {
    // A place in crossbeam's `ArrayQueue` is the value and a stamp word.
    let place = size_of::<Conn<C>>() + size_of::<usize>();
    let bytes = place.saturating_mul(max_size);
    if bytes <= MAX_IDLE_QUEUE_BYTES {
        return Ok(());
    }
    Err(ConfigError::new(
        "max_size",
        format!(
            "is {max_size} with a connection type of {} bytes: the idle queue, allocated up \
             front, would take {} MiB (at most {} MiB is accepted); box the connection type (a \
             `Box` is one pointer) or lower max_size",
            size_of::<C>(),
            bytes >> 20,
            MAX_IDLE_QUEUE_BYTES >> 20,
        ),
    ))
}

impl<M: ConnectionManager> fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("runtime", &self.runtime.is_some())
            .field("observer", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}
