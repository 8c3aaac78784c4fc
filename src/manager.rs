//! The trait users implement to plug their connection type into the pool.

use std::future::Future;

/// Creates and checks connections of one kind (TCP, database, HTTP, anything).
///
/// Implement it with plain `async fn`s: the trait declares its methods as returning
/// `impl Future + Send`, so no boxing and no `async-trait` are needed.
///
/// # Examples
///
/// ```
/// use connection_pool::ConnectionManager;
///
/// struct Counter;
///
/// #[derive(Debug)]
/// struct Never;
/// impl std::fmt::Display for Never {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("never fails")
///     }
/// }
/// impl std::error::Error for Never {}
///
/// impl ConnectionManager for Counter {
///     type Connection = u64;
///     type Error = Never;
///
///     async fn create_connection(&self) -> Result<u64, Never> {
///         Ok(42)
///     }
///
///     async fn is_valid(&self, conn: &mut u64) -> Result<(), Never> {
///         // A real manager sends a ping and waits for the pong here.
///         let _ = conn;
///         Ok(())
///     }
/// }
/// ```
pub trait ConnectionManager: Send + Sync + 'static {
    /// The connection type the pool hands out.
    ///
    /// It is moved, not boxed: the idle queue holds `max_size` of them, and each call that
    /// waits allocates a place in line with room for one to be handed over in. The places of
    /// calls that gave up are freed as connections come back, or swept once about a thousand
    /// have piled up: while nothing comes back, a type of several kilobytes (a large inline
    /// buffer) costs up to a thousand times its size in a storm of timed-out waiters. Box such
    /// a type (`Box<MyConnection>`) to keep that small.
    type Connection: Send + 'static;

    /// The error `create_connection` and `is_valid` fail with.
    ///
    /// It must implement `std::error::Error`, which `anyhow::Error` and
    /// `Box<dyn Error + Send + Sync>` do not: wrap those in a newtype that does, or use
    /// `std::io::Error::other(e)`.
    ///
    /// Its `Display` text is logged on every failed creation, at `warn` at most once a second
    /// per pool and at `debug` otherwise (and at `debug` when
    /// `is_valid` fails) and copied into [`PoolError::Timeout`](crate::PoolError::Timeout)'s
    /// `last_error`, which any caller that times out may receive; the error itself travels in
    /// [`PoolError::Backend`](crate::PoolError::Backend) and
    /// [`Rejected`](crate::PoolError::Rejected), whose derived `Debug` (what `unwrap`,
    /// `expect` and `main` returning `Err` print) shows the error's `Debug`. Keep passwords,
    /// tokens and full connection URLs out of both its `Display` and its `Debug`.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new connection.
    ///
    /// The pool bounds it with `connection_timeout` and drops the future on timeout or when the
    /// caller of `get_connection` is cancelled, so it must be safe to drop at any await point.
    ///
    /// # Errors
    ///
    /// An error reaches the caller as [`PoolError::Backend`](crate::PoolError::Backend), or as
    /// [`PoolError::Rejected`](crate::PoolError::Rejected) when
    /// [`is_permanent_error`](Self::is_permanent_error) says so; callers that time out while
    /// it keeps failing see its message in `PoolError::Timeout::last_error`. A panic in it
    /// frees the slot and unwinds into the caller of `get_connection`; in a `min_idle` top-up,
    /// the cleanup task catches it, logs it at `warn` and tries again at its next tick.
    fn create_connection(
        &self,
    ) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send;

    /// Checks that an idle connection still works before it is handed out.
    ///
    /// Make this an application-level round trip (send `PING` and expect `PONG`, run `SELECT 1`):
    /// a socket that still has a peer address can be long dead. Return an error to have the pool
    /// destroy the connection and try another one. It runs only when the pool's
    /// [`ValidationPolicy`](crate::ValidationPolicy) asks for it, bounded by
    /// `validation_timeout`; a connection whose check is cancelled or times out is destroyed,
    /// since it may hold a half-read reply (after a timeout the pool tries another one, as
    /// after an error). A panic in it destroys the connection (counted as
    /// [`DestroyReason::Panicked`](crate::DestroyReason::Panicked)), frees its slot and
    /// unwinds into the caller of `get_connection`.
    fn is_valid(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Whether a `create_connection` error will not go away by retrying (wrong password,
    /// unknown database, bad TLS configuration). The default says no.
    ///
    /// After a permanent error the pool fails calls that need a new connection at once with
    /// [`PoolError::Rejected`](crate::PoolError::Rejected), instead of letting them wait for a
    /// timeout, until the backoff delay has passed; then the next such call retries (nothing
    /// retries on its own, except a `min_idle` top-up) and the others wait for its result,
    /// rejected again only if it fails.
    fn is_permanent_error(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }

    /// Cheap synchronous check run when a connection is returned: `true` destroys it.
    ///
    /// It runs inside `Drop`, so it must not block or do I/O; look at a flag your connection
    /// type keeps (for example "the last read hit EOF"). The default says "not broken". If it
    /// panics, the connection is destroyed and its slot freed while the panic unwinds.
    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        let _ = conn;
        false
    }
}
