//! The background cleanup task at work with short intervals: idle connections expire, and
//! the pool is topped back up to `min_idle`.
//!
//! Run: `cargo run --example background_cleanup --features tokio`

use connection_pool::{ConnectionManager, ConnectionPool, Status, TokioRuntime};
use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

struct Numbers(AtomicU32);

impl ConnectionManager for Numbers {
    type Connection = u32;
    type Error = std::io::Error;

    async fn create_connection(&self) -> std::io::Result<u32> {
        Ok(self.0.fetch_add(1, Ordering::Relaxed))
    }

    async fn is_valid(&self, _conn: &mut u32) -> std::io::Result<()> {
        Ok(())
    }
}

fn show(moment: &str, status: &Status) {
    println!(
        "{moment:<34} size {:>2}  idle {:>2}  in use {:>2}  created {:>2}  expired {:>2}",
        status.size,
        status.idle,
        status.in_use,
        status.counters.created,
        status.counters.destroyed.idle_timeout
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ConnectionPool::builder(Numbers(AtomicU32::new(0)))
        .max_size(8)
        .min_idle(2)
        .max_idle_time(Duration::from_millis(400))
        .cleanup_interval(Duration::from_millis(200))
        .runtime(TokioRuntime::current())
        .build()?;

    tokio::time::sleep(Duration::from_millis(50)).await;
    show("after start (min_idle 2):", &pool.status());

    let mut burst = Vec::new();
    for _ in 0..6 {
        burst.push(pool.get_connection().await?);
    }
    show("during a burst of 6:", &pool.status());
    drop(burst);
    show("burst returned:", &pool.status());

    tokio::time::sleep(Duration::from_millis(900)).await;
    show("after 900 ms idle (max 400 ms):", &pool.status());

    pool.close();
    show("after close:", &pool.status());
    Ok(())
}
