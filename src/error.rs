//! Errors returned by the pool and by its builder.

use std::{error::Error, fmt};

/// What a timed-out `get_connection` was doing when its time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutPhase {
    /// Waiting for another task to return a connection or free a slot.
    Waiting,
    /// Running [`ConnectionManager::create_connection`](crate::ConnectionManager::create_connection).
    Creating,
    /// Running [`ConnectionManager::is_valid`](crate::ConnectionManager::is_valid) on an idle
    /// connection.
    Validating,
}

impl fmt::Display for TimeoutPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeoutPhase::Waiting => "waiting for a free connection",
            TimeoutPhase::Creating => "creating a connection",
            TimeoutPhase::Validating => "validating an idle connection",
        })
    }
}

/// The error type of every fallible pool operation.
///
/// `E` is the manager's [`ConnectionManager::Error`](crate::ConnectionManager::Error).
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// A deadline passed before a connection was ready.
    ///
    /// Its fields may grow: match it with `Timeout { phase, .. }`.
    #[non_exhaustive]
    Timeout {
        /// What the call was doing when its time ran out.
        phase: TimeoutPhase,
        /// The message of the most recent `create_connection` failure in this pool during the
        /// call, or before it when no creation has succeeded since (the pool is backing off),
        /// if there was one: it usually explains why no connection became free. While nothing
        /// has failed, a creation in this pool dropped unfinished during the call because the
        /// time of the `get` that made it ran out (a `wait_timeout` shorter than a connect
        /// takes: not counted as a failure) is reported here instead. The manager's error
        /// appears as its `Display` text (see
        /// [`ConnectionManager::Error`](crate::ConnectionManager::Error) on keeping secrets out).
        last_error: Option<String>,
    },
    /// The manager failed to create a connection.
    Backend(E),
    /// Creating connections failed with an error the manager classifies as permanent
    /// ([`ConnectionManager::is_permanent_error`](crate::ConnectionManager::is_permanent_error),
    /// for example bad credentials), during this call or shortly before it. Calls that would
    /// have to create a connection fail at once with it instead of waiting for a timeout, until
    /// a retry delay of at most [`CREATE_BACKOFF_MAX`](crate::CREATE_BACKOFF_MAX) (±25 %
    /// jitter) has passed; then the next call that needs a connection (or the `min_idle`
    /// top-up) tries again.
    Rejected(crate::sync::StdArc<E>),
    /// The pool was closed by [`ConnectionPool::close`](crate::ConnectionPool::close) or by
    /// dropping every handle to it.
    Closed,
    /// The configuration was rejected.
    Config(ConfigError),
    /// A timeout, the cleanup task or leak detection was configured (or
    /// [`get_connection_timeout`](crate::ConnectionPool::get_connection_timeout) or
    /// [`restart_cleanup_task`](crate::ConnectionPool::restart_cleanup_task) called) but no
    /// [`Runtime`](crate::Runtime) was given to supply timers and spawning.
    ///
    /// Its fields may grow: match it with `NoRuntime { setting, .. }`.
    #[non_exhaustive]
    NoRuntime {
        /// The setting, or the method, that needs a runtime.
        setting: &'static str,
    },
}

impl<E: fmt::Display> fmt::Display for PoolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Timeout { phase, last_error } => {
                write!(f, "timed out {phase}")?;
                match last_error {
                    Some(e) => write!(f, "; the last connection attempt: {e}"),
                    None if *phase == TimeoutPhase::Waiting => f.write_str(
                        "; no connection came free in time (all in use, or being opened \
                         max_connecting at a time): return guards sooner, raise max_size, or \
                         allow more time (wait_timeout, or get_connection_timeout's argument); \
                         if opening connections is slow, check that the server is reachable \
                         and responsive",
                    ),
                    None if *phase == TimeoutPhase::Creating => f.write_str(
                        "; check that the server is reachable and responsive, and that the \
                         call's time limit (wait_timeout, or get_connection_timeout's \
                         argument) leaves time to open a connection",
                    ),
                    None => f.write_str("; check that the server is reachable and responsive"),
                }
            }
            PoolError::Backend(e) => write!(f, "could not create a connection: {e}"),
            PoolError::Rejected(e) => write!(
                f,
                "a new connection was refused with a permanent error: {e}; fix the cause \
                 (credentials, database name, TLS settings). Calls that need a new connection \
                 fail at once until the retry delay (at most {:?}) has passed; then the next \
                 call retries and the others wait for its result",
                crate::CREATE_BACKOFF_MAX.mul_f64(1.25)
            ),
            PoolError::Closed => f.write_str("the pool is closed; build a new pool to continue"),
            PoolError::Config(e) => write!(f, "invalid pool configuration: {e}"),
            PoolError::NoRuntime { setting } => {
                // The four settings on by default may not have been set by the user at all.
                let by_default = matches!(
                    *setting,
                    "connection_timeout"
                        | "wait_timeout"
                        | "validation_timeout"
                        | "cleanup_interval"
                );
                write!(
                    f,
                    "`{setting}`{} needs a runtime (for its timers or background task): pass \
                     one with Builder::runtime (TokioRuntime::current() with feature `tokio`, \
                     called inside the tokio runtime; SmolRuntime::new() with feature `smol`, \
                     also for async-std)",
                    if by_default {
                        " (set, or on by default)"
                    } else {
                        ""
                    }
                )?;
                match *setting {
                    "get_connection_timeout" => f.write_str(", or call get_connection"),
                    "restart_cleanup_task" => f.write_str(" when building the pool"),
                    _ => write!(
                        f,
                        ", or set `{setting}` to None (Builder::no_runtime() turns off every \
                         timeout, the cleanup task and leak detection set before it)"
                    ),
                }
            }
        }
    }
}

impl<E: Error + 'static> Error for PoolError<E> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            PoolError::Backend(e) => Some(e),
            PoolError::Rejected(e) => Some(&**e),
            PoolError::Config(e) => Some(e),
            _ => None,
        }
    }
}

impl<E> From<ConfigError> for PoolError<E> {
    fn from(e: ConfigError) -> Self {
        PoolError::Config(e)
    }
}

/// A configuration value the builder rejected, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The name of the offending setting, as spelled on the builder.
    field: &'static str,
    /// What is wrong with it and what to use instead.
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the rejected setting, for example `"max_size"`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

impl Error for ConfigError {}
