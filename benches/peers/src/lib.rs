//! Shared machinery of the peer benchmarks: the contenders behind one trait, the executors
//! they run on (with a hang limit), a tiny argument parser and the statistics.
//!
//! The binaries are `grid` (median ns per get+drop over pool sizes x task counts) and `tail`
//! (wait-time percentiles with many more tasks than connections); `benches/micro.rs` holds
//! divan micro-benchmarks of our pool alone. See `README.md` for the commands.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod args;
pub mod exec;
pub mod machine;
pub mod poll;
pub mod pools;
pub mod stats;
