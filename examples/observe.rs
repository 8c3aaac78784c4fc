//! Watches a pool under load with the ready-made `HistogramObserver` and prints its summary:
//! how long checkouts waited, how long connections were held, how long creates took.
//!
//! Run: `cargo run --example observe --features tokio`

use connection_pool::{ConnectionManager, ConnectionPool, HistogramObserver, TokioRuntime};
use std::{sync::Arc, time::Duration};

/// Connections that take a moment to open, like a TCP + TLS handshake would.
struct SlowToOpen;

impl ConnectionManager for SlowToOpen {
    type Connection = u64;
    type Error = std::io::Error;

    async fn create_connection(&self) -> Result<u64, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(fastrand::u64(..))
    }

    async fn is_valid(&self, _conn: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Arc::new(HistogramObserver::new());
    let pool = ConnectionPool::builder(SlowToOpen)
        .name("observed")
        .max_size(8)
        .observer(Arc::clone(&metrics))
        .runtime(TokioRuntime::current())
        .build()?;

    // 64 tasks share 8 connections, each holding one for 0 to 2 ms at a time.
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let conn = pool.get_connection().await?;
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(..2000))).await;
                    drop(conn);
                }
                Ok::<_, connection_pool::PoolError<std::io::Error>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }

    println!("after 3,200 checkouts by 64 tasks on 8 connections:");
    println!("{}", metrics.summary());
    println!("{:?}", pool.status());
    Ok(())
}
