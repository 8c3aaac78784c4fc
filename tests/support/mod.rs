//! Real servers for the tests: a `redis-server` and a PostgreSQL server started by the test
//! itself on a free loopback port in a temp dir, and pool managers that talk to them.
//!
//! ```ignore
//! mod support;
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn example() {
//!     let Some(server) = support::require(support::RedisServer::start()) else {
//!         return; // skipped, and said so loudly; under CI=true `require` panics instead
//!     };
//!     let manager = support::RedisManager::new(server.url()).unwrap();
//!     // ... build a pool, run commands, `server.stop()`, `server.restart()` ...
//! }
//! ```
//!
//! * [`servers`]: finding binaries, the unprivileged user, temp dirs, free ports, and the
//!   skip-or-fail rule for a missing binary ([`require`]).
//! * [`redis`]: [`RedisServer`] and [`RedisManager`].
//! * [`postgres`]: [`PostgresServer`] and [`PostgresManager`].
//! * [`counts`]: the managers' own count of live connections (created minus dropped),
//!   independent of the pool's numbers.
//! * [`load`]: load tasks, recovery figures and invariant checks for the fault tests.
//!
//! Starting, stopping and restarting a server blocks the calling thread (it waits for the
//! process), so from async code call them through `spawn_blocking` when other tasks must keep
//! running meanwhile. The admin methods are async and need a tokio runtime, as do the managers.
#![allow(dead_code, unused_imports)]

pub mod counts;
pub mod load;
pub mod postgres;
pub mod proxy;
pub mod redis;
pub mod servers;

pub use counts::{Counts, LiveToken};
pub use postgres::{PostgresConn, PostgresManager, PostgresServer};
pub use redis::{RedisConn, RedisManager, RedisServer, is_auth_error};
pub use servers::{StartError, ci, require};

use std::{future::Future, time::Duration};

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
