//! Pool settings, their defaults and their validation.

use crate::error::ConfigError;
use std::time::{Duration, Instant};

/// Default for [`Builder::max_size`](crate::Builder::max_size).
pub const DEFAULT_MAX_SIZE: usize = 10;
/// Default for [`Builder::max_idle_time`](crate::Builder::max_idle_time): 5 minutes.
pub const DEFAULT_MAX_IDLE_TIME: Duration = Duration::from_secs(5 * 60);
/// Default for [`Builder::max_lifetime`](crate::Builder::max_lifetime): 30 minutes.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Default for [`Builder::connection_timeout`](crate::Builder::connection_timeout): 10 seconds.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Builder::wait_timeout`](crate::Builder::wait_timeout): 30 seconds.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Builder::validation_timeout`](crate::Builder::validation_timeout): 5 seconds.
pub const DEFAULT_VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`Builder::max_connecting`](crate::Builder::max_connecting).
pub const DEFAULT_MAX_CONNECTING: usize = 2;
/// Default for [`Builder::cleanup_interval`](crate::Builder::cleanup_interval): 30 seconds.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(30);
/// Default idle threshold of [`ValidationPolicy::IdleLongerThan`]: 500 ms, as HikariCP.
pub const DEFAULT_VALIDATION_IDLE_THRESHOLD: Duration = Duration::from_millis(500);
/// The largest accepted `max_size`: the idle queue allocates one slot per connection up front.
pub const MAX_POOL_SIZE: usize = 1 << 16;

/// When `get_connection` runs [`ConnectionManager::is_valid`](crate::ConnectionManager::is_valid)
/// on an idle connection before handing it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationPolicy {
    /// Before every checkout of an idle connection: one round trip per `get`.
    Always,
    /// Never; rely on [`ConnectionManager::has_broken`](crate::ConnectionManager::has_broken)
    /// and on your own retries.
    Never,
    /// Only when the connection has been idle longer than this. A connection returned a moment
    /// ago was working a moment ago, so a busy pool pays no round trip per checkout. The default
    /// is `IdleLongerThan(500 ms)`. Idle time is read from a coarse clock (a few milliseconds
    /// per tick on Linux), so even a zero threshold skips the check for a connection reused
    /// within the tick it came back in; use `Always` to check every time.
    IdleLongerThan(Duration),
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        ValidationPolicy::IdleLongerThan(DEFAULT_VALIDATION_IDLE_THRESHOLD)
    }
}

/// The settings of a pool. Set them one by one on [`Builder`](crate::Builder), or start from
/// `Config::default()` (always with `..Config::default()` in a struct literal, so that a field
/// added in a later release still compiles) and pass it to
/// [`Builder::config`](crate::Builder::config); read them back, validated, with
/// [`ConnectionPool::config`](crate::ConnectionPool::config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Name used in log messages, so that several pools can be told apart.
    pub name: String,
    /// The most connections that exist at once, idle or in use.
    pub max_size: usize,
    /// Idle connections the cleanup task keeps ready, and never expires for idleness.
    pub min_idle: usize,
    /// Idle connections older than this are closed, by the cleanup task or at their next
    /// checkout, while more than `min_idle` are idle; `None` keeps them.
    pub max_idle_time: Option<Duration>,
    /// Connections are closed this long after creation (less up to 2.5 % random jitter), on
    /// return, at checkout or by the cleanup task; `None` lets them live for ever.
    pub max_lifetime: Option<Duration>,
    /// Bound on one `create_connection` call; `None` waits for ever (a `get_connection`
    /// still only as long as its `wait_timeout`; the cleanup task's `min_idle` top-up gives an
    /// attempt up after one `cleanup_interval` or 10 s, whichever is longer, when there is no
    /// `connection_timeout` or a longer one).
    pub connection_timeout: Option<Duration>,
    /// Bound on a whole `get_connection` call; `None` waits for ever.
    pub wait_timeout: Option<Duration>,
    /// Bound on one `is_valid` call; `None` waits for ever.
    pub validation_timeout: Option<Duration>,
    /// When idle connections are validated on checkout.
    pub validation: ValidationPolicy,
    /// Period of the background cleanup task, at least 1 ms; `None` runs no task.
    pub cleanup_interval: Option<Duration>,
    /// The most `create_connection` calls in flight at once; while creations fail, one.
    pub max_connecting: usize,
    /// Warn (once per checkout) about connections held longer than this; `None` is off.
    pub leak_detection_threshold: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "connection-pool".to_owned(),
            max_size: DEFAULT_MAX_SIZE,
            min_idle: 0,
            max_idle_time: Some(DEFAULT_MAX_IDLE_TIME),
            max_lifetime: Some(DEFAULT_MAX_LIFETIME),
            connection_timeout: Some(DEFAULT_CONNECTION_TIMEOUT),
            wait_timeout: Some(DEFAULT_WAIT_TIMEOUT),
            validation_timeout: Some(DEFAULT_VALIDATION_TIMEOUT),
            validation: ValidationPolicy::default(),
            cleanup_interval: Some(DEFAULT_CLEANUP_INTERVAL),
            max_connecting: DEFAULT_MAX_CONNECTING,
            leak_detection_threshold: None,
        }
    }
}

impl Config {
    /// Checks every setting, naming the first bad one.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_size == 0 {
            return Err(ConfigError::new(
                "max_size",
                "must be at least 1; a pool of 0 connections can never serve a request",
            ));
        }
        if self.max_size > MAX_POOL_SIZE {
            return Err(ConfigError::new(
                "max_size",
                format!(
                    "is {}; use at most {MAX_POOL_SIZE} (the idle queue is allocated up front)",
                    self.max_size
                ),
            ));
        }
        if self.min_idle > self.max_size {
            return Err(ConfigError::new(
                "min_idle",
                format!(
                    "is {} but max_size is {}; min_idle must not exceed max_size",
                    self.min_idle, self.max_size
                ),
            ));
        }
        if self.max_connecting == 0 {
            return Err(ConfigError::new(
                "max_connecting",
                "must be at least 1; with 0 the pool could never create a connection",
            ));
        }
        if self.min_idle > 0 && self.cleanup_interval.is_none() {
            return Err(ConfigError::new(
                "min_idle",
                "needs the cleanup task to keep connections ready; set cleanup_interval (which \
                 needs a runtime) or use min_idle 0",
            ));
        }
        let durations = [
            ("max_idle_time", self.max_idle_time),
            ("max_lifetime", self.max_lifetime),
            ("connection_timeout", self.connection_timeout),
            ("wait_timeout", self.wait_timeout),
            ("validation_timeout", self.validation_timeout),
            ("cleanup_interval", self.cleanup_interval),
            ("leak_detection_threshold", self.leak_detection_threshold),
        ];
        for (field, duration) in durations {
            if let Some(duration) = duration {
                let (if_zero, if_too_large) = match field {
                    "wait_timeout" => (
                        "use None to wait without limit, or try_get_connection() not to wait \
                         at all",
                        "use None to wait without limit",
                    ),
                    _ => (SET_NONE, SET_NONE),
                };
                check_duration_or(field, duration, if_zero, if_too_large)?;
            }
        }
        if let Some(interval) = self.cleanup_interval {
            check_cleanup_interval(interval, SET_NONE)?;
        }
        if let ValidationPolicy::IdleLongerThan(threshold) = self.validation {
            // Zero is allowed here: it means "validate any connection that was idle at all".
            if Instant::now().checked_add(threshold).is_none() {
                return Err(ConfigError::new(
                    "validation",
                    "is too large to add to the clock; use ValidationPolicy::Never to skip \
                     validation",
                ));
            }
        }
        Ok(())
    }
}

/// The shortest `cleanup_interval`. A pass inspects every idle connection, so a shorter
/// period only spins: a 1 ns interval kept a whole core busy under smol, whose timers have no
/// resolution floor.
pub(crate) const MIN_CLEANUP_INTERVAL: Duration = Duration::from_millis(1);

/// The advice when a setting that can be `None` is out of range.
const SET_NONE: &str = "use None to turn it off";

/// Checks a `cleanup_interval`; `to_turn_off` says how to do without the task where it is set.
pub(crate) fn check_cleanup_interval(
    interval: Duration,
    to_turn_off: &str,
) -> Result<(), ConfigError> {
    if interval < MIN_CLEANUP_INTERVAL {
        return Err(ConfigError::new(
            "cleanup_interval",
            format!(
                "must be at least {MIN_CLEANUP_INTERVAL:?}, since each pass inspects every idle \
                 connection; {to_turn_off}"
            ),
        ));
    }
    check_duration_or("cleanup_interval", interval, to_turn_off, to_turn_off)
}

/// Checks that `duration` is neither zero nor too large to add to the clock; each error ends
/// with the matching advice.
fn check_duration_or(
    field: &'static str,
    duration: Duration,
    if_zero: &str,
    if_too_large: &str,
) -> Result<(), ConfigError> {
    if duration.is_zero() {
        return Err(ConfigError::new(
            field,
            format!("must be greater than zero; {if_zero}"),
        ));
    }
    // Deadlines are computed as `now + duration`; refuse values that cannot be represented,
    // with a margin for the time the pool will run.
    let margin = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    match Instant::now()
        .checked_add(duration)
        .and_then(|t| t.checked_add(margin))
    {
        Some(_) => Ok(()),
        None => Err(ConfigError::new(
            field,
            format!("is too large to add to the clock; {if_too_large} instead"),
        )),
    }
}
