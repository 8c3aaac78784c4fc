//! A lock-free, runtime-agnostic async connection pool.
//!
//! Plug any connection type in with a [`ConnectionManager`], build a [`ConnectionPool`] with
//! [`ConnectionPool::builder`], and check connections out with
//! [`get_connection`](ConnectionPool::get_connection). Idle connections wait in a lock-free
//! queue, an atomic slot counter keeps the pool at or below `max_size` at every instant, and
//! returning a connection is a synchronous push in the guard's `Drop`: no lock, no spawned
//! task, nothing that blocks.
//!
//! Timeouts and the background cleanup task come from a [`Runtime`]: [`TokioRuntime`]
//! (feature `tokio`), [`SmolRuntime`] (feature `smol`, also for async-std), one you write, or
//! none at all. Getting and returning connections needs no runtime.
//!
//! The examples below share this manager:
//!
//! ```
//! use connection_pool::ConnectionManager;
//!
//! struct Numbers;
//!
//! impl ConnectionManager for Numbers {
//!     type Connection = u32;
//!     type Error = std::io::Error;
//!
//!     async fn create_connection(&self) -> Result<u32, std::io::Error> {
//!         Ok(7) // open a socket, log in, ...
//!     }
//!
//!     async fn is_valid(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
//!         Ok(()) // send PING, expect PONG
//!     }
//! }
//! ```
//!
//! # On tokio
//!
//! Feature `tokio`; pass [`TokioRuntime::current()`](TokioRuntime::current), or
//! [`TokioRuntime::from_handle`] outside the runtime. Multi-thread and current-thread
//! runtimes both work: returning a connection never blocks or spawns. (A current-thread
//! runtime runs timers only inside its `block_on`; see [`TokioRuntime`].)
//!
// Compiled and run where the feature is on (`cargo test --all-features`), shown either way.
#![cfg_attr(feature = "tokio", doc = "```")]
#![cfg_attr(not(feature = "tokio"), doc = "```ignore")]
//! # use connection_pool::ConnectionManager;
//! # struct Numbers;
//! # impl ConnectionManager for Numbers {
//! #     type Connection = u32;
//! #     type Error = std::io::Error;
//! #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
//! #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
//! # }
//! use connection_pool::{ConnectionPool, TokioRuntime};
//! use std::time::Duration;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = ConnectionPool::builder(Numbers)
//!         .max_size(4)
//!         .wait_timeout(Duration::from_secs(5))
//!         .runtime(TokioRuntime::current())
//!         .build()?;
//!     let conn = pool.get_connection().await?;
//!     assert_eq!(*conn, 7);
//!     Ok(())
//! }
//! ```
//!
//! # On smol
//!
//! Feature `smol`; pass [`SmolRuntime::new()`](SmolRuntime::new): async-io timers, smol's
//! global executor for the cleanup task.
//!
// Compiled and run where the feature is on (`cargo test --all-features`), shown either way.
#![cfg_attr(feature = "smol", doc = "```")]
#![cfg_attr(not(feature = "smol"), doc = "```ignore")]
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
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     smol::block_on(async {
//!         let pool = ConnectionPool::builder(Numbers)
//!             .runtime(SmolRuntime::new())
//!             .build()?;
//!         let conn = pool.get_connection().await?;
//!         assert_eq!(*conn, 7);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # On async-std
//!
//! Feature `smol` as well: async-std runs on the same async-io reactor, so [`SmolRuntime`]
//! serves it (the cleanup task runs on smol's global executor, next to async-std's).
//!
// Compiled and run where the feature is on (`cargo test --all-features`), shown either way.
#![cfg_attr(feature = "smol", doc = "```")]
#![cfg_attr(not(feature = "smol"), doc = "```ignore")]
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
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     async_std::task::block_on(async {
//!         let pool = ConnectionPool::builder(Numbers)
//!             .runtime(SmolRuntime::new())
//!             .build()?;
//!         let conn = pool.get_connection().await?;
//!         assert_eq!(*conn, 7);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! # On an executor of your own
//!
//! Implement [`Runtime`]: `spawn` (the pool spawns only its cleanup task, and the leak
//! watcher when leak detection is on), `sleep`, and optionally `now` (a manual clock makes
//! time-dependent tests instant). Here timers come from async-io and each spawned task gets a
//! thread of its own; `tests/runtimes.rs` has one on `async-executor`.
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
//! use connection_pool::{BoxFuture, ConnectionPool, Runtime};
//! use std::time::Duration;
//!
//! struct ThreadRuntime;
//!
//! impl Runtime for ThreadRuntime {
//!     fn spawn(&self, task: BoxFuture<()>) {
//!         std::thread::spawn(move || async_io::block_on(task));
//!     }
//!
//!     fn sleep(&self, duration: Duration) -> BoxFuture<()> {
//!         Box::pin(async move {
//!             async_io::Timer::after(duration).await;
//!         })
//!     }
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = ConnectionPool::builder(Numbers)
//!         .wait_timeout(Duration::from_secs(5))
//!         .runtime(ThreadRuntime)
//!         .build()?;
//!     futures_lite::future::block_on(async {
//!         let conn = pool.get_connection().await?;
//!         assert_eq!(*conn, 7);
//!         Ok(())
//!     })
//! }
//! ```
//!
//! Without any runtime, [`Builder::no_runtime`] turns off the timeouts, the cleanup task and
//! leak detection, and creation retries after transient failures come without a delay (still
//! one at a time; a permanent error still fails callers at once until its retry delay has
//! passed); getting, returning and waiting still work on any executor.
//!
//! # In a library
//!
//! A library that pools connections should let its users choose the executor. Depend on this
//! crate with no runtime feature, make the functions that build a pool generic over
//! [`Runtime`], and take the runtime from your caller:
//!
//! ```toml
//! [dependencies]
//! connection-pool = { version = "0.4", default-features = false }
//! ```
//!
//! ```
//! use connection_pool::{ConnectionManager, ConnectionPool, PoolError, Runtime};
//! use std::time::Duration;
//!
//! /// A library type: it compiles no executor and works on its caller's.
//! pub struct Client<M: ConnectionManager> {
//!     pool: ConnectionPool<M>,
//! }
//!
//! impl<M: ConnectionManager> Client<M> {
//!     pub fn new<R: Runtime>(manager: M, runtime: R) -> Result<Self, PoolError<M::Error>> {
//!         let pool = ConnectionPool::builder(manager)
//!             .wait_timeout(Duration::from_secs(5))
//!             .runtime(runtime)
//!             .build()?;
//!         Ok(Self { pool })
//!     }
//! }
//! ```
//!
//! The application enables `tokio` or `smol` and passes `TokioRuntime` or `SmolRuntime`.
//! `examples/runtime_neutral.rs` is a complete one, with a TCP client library called from
//! tokio, smol and async-std.
//!
//! # Features
//!
//! * `tokio`: [`TokioRuntime`].
//! * `smol`: [`SmolRuntime`], for smol and async-std.
//! * `tcp`: [`TcpConnectionManager`], pooled TCP connections with a pluggable
//!   [`HealthCheck`], over async-net; it runs on any executor, so a runtime-neutral library
//!   can use it.
//!
//! None is on by default: a library can depend on this crate without choosing an executor
//! for its users, and an application compiles only the runtime it uses.
//!
//! # Errors and cancellation
//!
//! Every fallible operation returns [`PoolError`], whose variants name what went wrong
//! ([`Timeout`](PoolError::Timeout) carries the phase and the last creation error). Each
//! method's own documentation lists its errors; in short:
//!
//! | Method | Fails with | Cancellation |
//! |---|---|---|
//! | [`Builder::build`] | `Config`, `NoRuntime` | not async |
//! | [`get_connection`](ConnectionPool::get_connection) | `Backend`, `Rejected`, `Timeout`, `Closed` | safe at every await: a wait ends and passes its wake-up or handed-off connection on, a creation in flight is dropped, a connection being validated is destroyed; no slot leaks |
//! | [`get_connection_owned`](ConnectionPool::get_connection_owned) | as `get_connection` | as `get_connection` |
//! | [`get_connection_timeout`](ConnectionPool::get_connection_timeout) | as `get_connection`, and `NoRuntime` | as `get_connection` |
//! | [`try_get_connection`](ConnectionPool::try_get_connection) | never: `None` when nothing is idle | not async |
//! | [`restart_cleanup_task`](ConnectionPool::restart_cleanup_task) | `Config`, `NoRuntime`, `Closed` | not async |
//! | `close`, `status`, `cleanup_pass`, `stop_cleanup_task`, guard methods | never | not async |
//!
//! A [`PooledConnection`] goes back to the pool when it is dropped, also when the task that
//! held it is cancelled mid-request, and the next user could then read a stale reply. Guard
//! against that in the connection type: set a flag before sending and clear it once the reply
//! is read, and have [`has_broken`](ConnectionManager::has_broken) report a connection whose
//! flag is still set; or call [`mark_broken`](PooledConnection::mark_broken) when you abandon
//! a request yourself.
//!
//! The pool drops the futures of [`ConnectionManager::create_connection`] and
//! [`ConnectionManager::is_valid`] on timeout or cancellation, and those of [`Runtime::sleep`]
//! whenever the operation they bound finishes first, so all three must be safe to drop at any
//! await point.

#![forbid(unsafe_code)]
// The docs link to the runtime and TCP types, which exist only with their features; in a
// build without one of them those links render as plain text instead of failing the build.
#![cfg_attr(
    not(all(feature = "tokio", feature = "smol", feature = "tcp")),
    allow(rustdoc::broken_intra_doc_links)
)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod background;
mod builder;
mod capacity;
mod checkout;
mod cleanup;
mod clock;
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
#[cfg(feature = "tcp")]
mod tcp;
mod throttle;
mod waitlist;

pub use builder::Builder;
pub use cleanup::CleanupReport;
pub use clock::coarse_now;
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
/// For loom-tests only, in loom builds only; not part of the API.
#[cfg(loom)]
#[doc(hidden)]
pub use sync::loom_queues_fence_like_crossbeam;
#[cfg(feature = "tcp")]
pub use tcp::{
    HealthCheck, NotClosed, PingPong, TcpConnection, TcpConnectionManager, TcpConnectionPool,
};

/// The README's examples, compiled and run as doc tests. They use `TokioRuntime` and
/// `TcpConnectionManager`, so they run with those features (`cargo test --all-features`).
#[cfg(all(doctest, feature = "tokio", feature = "tcp"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
