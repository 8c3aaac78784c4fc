//! A lock-free, runtime-agnostic async connection pool.
//!
//! Plug any connection type in with a [`ConnectionManager`], build a [`ConnectionPool`] with
//! [`ConnectionPool::builder`], and check connections out with
//! [`get_connection`](ConnectionPool::get_connection). Idle connections wait in a lock-free
//! queue; tasks that find none park on an `event-listener` event and are woken one per
//! returned connection; an atomic slot counter keeps the pool at or below `max_size` at every
//! instant. Returning a connection is a synchronous push in the guard's `Drop`.
//!
//! Timeouts and the background cleanup task come from a [`Runtime`]: [`TokioRuntime`]
//! (feature `tokio`), [`SmolRuntime`] (feature `smol`, also for async-std), or your own.
//!
//! # Example (tokio)
//!
//! ```
//! use connection_pool::{ConnectionManager, ConnectionPool, TokioRuntime};
//!
//! struct Numbers;
//!
//! impl ConnectionManager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!
//!     async fn create_connection(&self) -> Result<u32, std::io::Error> {
//!         Ok(7)
//!     }
//!
//!     async fn is_valid(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = ConnectionPool::builder(Numbers)
//!     .max_size(4)
//!     .runtime(TokioRuntime::current())
//!     .build()?;
//! let conn = pool.get_connection().await?;
//! assert_eq!(*conn, 7);
//! # Ok(())
//! # }
//! ```
//!
//! # Example (smol)
//!
//! ```
//! # use connection_pool::ConnectionManager;
//! # struct Numbers;
//! # impl ConnectionManager for Numbers {
//! #     type Connection = u32;
//! #     type Error = std::io::Error;
//! #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
//! #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
//! # }
//! use connection_pool::{ConnectionPool, SmolRuntime};
//!
//! smol::block_on(async {
//!     let pool = ConnectionPool::builder(Numbers)
//!         .runtime(SmolRuntime::new())
//!         .build()?;
//!     let conn = pool.get_connection().await?;
//!     assert_eq!(*conn, 7);
//!     Ok::<_, connection_pool::PoolError<std::io::Error>>(())
//! })
//! .unwrap();
//! ```
//!
//! # Features
//!
//! * `tokio`: [`TokioRuntime`].
//! * `smol`: [`SmolRuntime`], for smol and async-std.
//!
//! None is on by default, so that a library can depend on this crate without choosing an
//! executor for its users, and an application compiles only the runtime it uses.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod builder;
mod capacity;
mod checkout;
mod cleanup;
mod config;
mod connection;
mod error;
mod governor;
mod histogram;
mod leak;
mod manager;
mod observer;
mod pool;
mod runtime;
mod status;
mod sync;
mod waitlist;

pub use builder::Builder;
pub use cleanup::CleanupReport;
pub use config::{
    Config, DEFAULT_CLEANUP_INTERVAL, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_MAX_CONNECTING,
    DEFAULT_MAX_IDLE_TIME, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_SIZE,
    DEFAULT_VALIDATION_IDLE_THRESHOLD, DEFAULT_VALIDATION_TIMEOUT, DEFAULT_WAIT_TIMEOUT,
    MAX_POOL_SIZE, ValidationPolicy,
};
pub use connection::PooledConnection;
pub use error::{ConfigError, PoolError, TimeoutPhase};
pub use governor::{CREATE_BACKOFF_MAX, CREATE_BACKOFF_MIN};
pub use histogram::{Histogram, HistogramObserver};
pub use manager::ConnectionManager;
pub use observer::{CreateFailure, PoolObserver};
pub use pool::ConnectionPool;
#[cfg(feature = "smol")]
pub use runtime::SmolRuntime;
#[cfg(feature = "tokio")]
pub use runtime::TokioRuntime;
pub use runtime::{BoxFuture, Runtime};
pub use status::{Counters, DestroyReason, DestroyedCounts, Status};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
