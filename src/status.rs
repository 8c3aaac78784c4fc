//! Point-in-time numbers about a pool, and the counters behind them.

use crate::sync::{AtomicU64, Ordering};
use std::fmt;

/// Why the pool closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DestroyReason {
    /// [`ConnectionManager::has_broken`](crate::ConnectionManager::has_broken) said so, or the
    /// holder called [`PooledConnection::mark_broken`](crate::PooledConnection::mark_broken).
    Broken,
    /// [`ConnectionManager::is_valid`](crate::ConnectionManager::is_valid) failed.
    ValidationFailed,
    /// Validation was cancelled or timed out, so the connection may hold a half-read reply.
    ValidationAborted,
    /// It sat idle longer than `max_idle_time`.
    IdleTimeout,
    /// It lived longer than `max_lifetime`.
    MaxLifetime,
    /// The pool was closed.
    Closed,
    /// Its guard was dropped while the thread was panicking, so it may be mid-transaction; or
    /// user code the pool ran for it panicked (`is_valid`, `has_broken`, the observer's
    /// `on_checkout` or `on_return`, the runtime's clock).
    Panicked,
}

impl DestroyReason {
    /// Every reason, in declaration order. A slice, so that a reason added in a later release
    /// changes no type.
    pub const ALL: &'static [DestroyReason] = &[
        DestroyReason::Broken,
        DestroyReason::ValidationFailed,
        DestroyReason::ValidationAborted,
        DestroyReason::IdleTimeout,
        DestroyReason::MaxLifetime,
        DestroyReason::Closed,
        DestroyReason::Panicked,
    ];

    /// A short description, as used in log messages.
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyReason::Broken => "broken",
            DestroyReason::ValidationFailed => "validation failed",
            DestroyReason::ValidationAborted => "validation cancelled or timed out",
            DestroyReason::IdleTimeout => "idle timeout",
            DestroyReason::MaxLifetime => "max lifetime",
            DestroyReason::Closed => "pool closed",
            DestroyReason::Panicked => "dropped during a panic",
        }
    }
}

/// A snapshot of a pool's state, from [`ConnectionPool::status`](crate::ConnectionPool::status).
///
/// The fields are read one by one without a lock, so under load they may not add up exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Status {
    /// The configured `max_size`.
    pub max_size: usize,
    /// Connections that exist, plus creations in flight or reserved for a waiter that has not
    /// run yet.
    pub size: usize,
    /// Connections waiting in the pool to be checked out.
    pub idle: usize,
    /// `size - idle`: connections held by callers, being validated or being created (or
    /// reserved for a waiter to create).
    pub in_use: usize,
    /// `get_connection` calls currently waiting for a connection; a waiter that was just
    /// handed a connection or a slot no longer counts, even before it runs.
    pub waiters: usize,
    /// `create_connection` calls in flight, counting a slot and permit reserved for a waiter
    /// that has not run yet (at most `max_connecting`).
    pub connecting: usize,
    /// Totals since the pool was built.
    pub counters: Counters,
}

/// Cumulative counts since the pool was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Connections created.
    pub created: u64,
    /// `create_connection` calls that failed or timed out (by `connection_timeout`). Not
    /// counted: one that panicked (the panic goes to the caller, and no backoff follows), and
    /// one dropped unfinished because its caller's own time ran out.
    pub create_failures: u64,
    /// Connections taken out of the pool with
    /// [`PooledConnection::detach`](crate::PooledConnection::detach).
    pub detached: u64,
    /// Connections destroyed, by reason.
    pub destroyed: DestroyedCounts,
    /// `get_connection` calls that found nothing free and joined the line of waiters. Some
    /// find a connection in the re-check right after joining and never sleep; counting them
    /// too keeps the check-out path free of another counter update.
    pub waited: u64,
    /// `get_connection` calls that timed out.
    pub timeouts: u64,
    /// `get_connection` calls failed at once with
    /// [`PoolError::Rejected`](crate::PoolError::Rejected) because a recent creation failed
    /// with a permanent error. A call whose own creation failed that way also gets `Rejected`,
    /// but is counted in `create_failures`, not here.
    pub rejected: u64,
    /// Checkouts held longer than `leak_detection_threshold` (each counted once).
    pub leaks: u64,
}

/// Connections destroyed, one count per [`DestroyReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DestroyedCounts {
    /// See [`DestroyReason::Broken`].
    pub broken: u64,
    /// See [`DestroyReason::ValidationFailed`].
    pub validation_failed: u64,
    /// See [`DestroyReason::ValidationAborted`].
    pub validation_aborted: u64,
    /// See [`DestroyReason::IdleTimeout`].
    pub idle_timeout: u64,
    /// See [`DestroyReason::MaxLifetime`].
    pub max_lifetime: u64,
    /// See [`DestroyReason::Closed`].
    pub closed: u64,
    /// See [`DestroyReason::Panicked`].
    pub panicked: u64,
}

impl DestroyedCounts {
    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.broken
            + self.validation_failed
            + self.validation_aborted
            + self.idle_timeout
            + self.max_lifetime
            + self.closed
            + self.panicked
    }
}

/// The live counters. Only slow events (create, destroy, wait, timeout) touch them, so an
/// uncontended checkout writes none of these cache lines.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) created: AtomicU64,
    pub(crate) create_failures: AtomicU64,
    pub(crate) detached: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) leaks: AtomicU64,
    /// Indexed by `DestroyReason as usize`.
    pub(crate) destroyed: [AtomicU64; 7],
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn destroyed(&self, reason: DestroyReason) {
        Self::bump(&self.destroyed[reason as usize]);
    }

    pub(crate) fn snapshot(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let destroyed = |r: DestroyReason| get(&self.destroyed[r as usize]);
        Counters {
            created: get(&self.created),
            create_failures: get(&self.create_failures),
            detached: get(&self.detached),
            waited: get(&self.waited),
            timeouts: get(&self.timeouts),
            rejected: get(&self.rejected),
            leaks: get(&self.leaks),
            destroyed: DestroyedCounts {
                broken: destroyed(DestroyReason::Broken),
                validation_failed: destroyed(DestroyReason::ValidationFailed),
                validation_aborted: destroyed(DestroyReason::ValidationAborted),
                idle_timeout: destroyed(DestroyReason::IdleTimeout),
                max_lifetime: destroyed(DestroyReason::MaxLifetime),
                closed: destroyed(DestroyReason::Closed),
                panicked: destroyed(DestroyReason::Panicked),
            },
        }
    }
}

/// The pool's counts as log lines give them (`size 3, idle 1, waiters 2`), so that every
/// message about a pool's state can be read the same way.
pub(crate) struct Occupancy {
    pub(crate) size: usize,
    pub(crate) idle: usize,
    pub(crate) waiters: usize,
}

impl fmt::Display for Occupancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "size {}, idle {}, waiters {}",
            self.size, self.idle, self.waiters
        )
    }
}
