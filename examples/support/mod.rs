//! Throwaway servers for the examples: a `redis-server` or a PostgreSQL cluster started on a
//! free loopback port in a temp dir, and removed when the handle drops.
//!
//! This is the tests' launcher (`tests/support/`) cut down to what an example needs: start and
//! stop, with no admin link, restarts or counts. As in the tests, the server runs as an
//! unprivileged account (`postgres`, else `nobody`) when the example runs as root, since
//! PostgreSQL refuses to run as root.
//!
//! Each example uses part of this module, so dead code is allowed here.
#![allow(dead_code, unused_imports)]

mod postgres;
mod process;
mod redact;
mod redis;

pub use postgres::PostgresServer;
pub use redact::redacted;
pub use redis::RedisServer;

use std::{fmt, io};

/// Why a server could not be started.
#[derive(Debug)]
pub enum StartError {
    /// The server's binary is not installed.
    Missing {
        /// What was looked for, and where.
        what: String,
        /// How to install it.
        install: &'static str,
    },
    /// The binary is there but the server did not come up.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing { what, install } => {
                write!(f, "{what} is not installed (install it with `{install}`)")
            }
            StartError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Failed(e.to_string())
    }
}
