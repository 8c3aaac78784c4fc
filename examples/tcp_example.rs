//! A pool of TCP connections to a loopback echo server that this example starts itself.
//!
//! The server echoes every line and answers `PING` with `PONG`; the manager uses that round
//! trip as its health check, because a socket that still has a peer address can be long dead.
//!
//! Run: `cargo run --example tcp_example --features tokio`

use connection_pool::{ConnectionManager, ConnectionPool, TokioRuntime, ValidationPolicy};
use std::{io, net::SocketAddr, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// Starts the echo server on a free loopback port.
async fn start_echo_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply = if line == "PING" {
                        "PONG".to_owned()
                    } else {
                        line
                    };
                    if write
                        .write_all(format!("{reply}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// One line-oriented connection to the server.
struct LineConnection {
    reader: BufReader<TcpStream>,
    /// Set while a request is in flight and left set when it fails: a connection whose request
    /// was cancelled half-way (a timeout, a dropped task) may still have its reply on the way,
    /// and an error leaves the stream in an unknown state, so it must not go back to the pool.
    failed: bool,
}

impl LineConnection {
    async fn request(&mut self, line: &str) -> io::Result<String> {
        // Cleared only once the whole reply is read, unless an earlier request failed (see the
        // crate docs, "Errors and cancellation").
        let failed_before = std::mem::replace(&mut self.failed, true);
        let result = async {
            self.reader
                .get_mut()
                .write_all(format!("{line}\n").as_bytes())
                .await?;
            let mut reply = String::new();
            if self.reader.read_line(&mut reply).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed",
                ));
            }
            Ok(reply.trim_end().to_owned())
        }
        .await;
        self.failed = failed_before || result.is_err();
        result
    }
}

struct LineManager {
    addr: SocketAddr,
}

impl ConnectionManager for LineManager {
    type Connection = LineConnection;
    type Error = io::Error;

    async fn create_connection(&self) -> io::Result<LineConnection> {
        let stream = TcpStream::connect(self.addr).await?;
        Ok(LineConnection {
            reader: BufReader::new(stream),
            failed: false,
        })
    }

    async fn is_valid(&self, conn: &mut LineConnection) -> io::Result<()> {
        match conn.request("PING").await?.as_str() {
            "PONG" => Ok(()),
            other => Err(io::Error::other(format!("expected PONG, got {other:?}"))),
        }
    }

    fn has_broken(&self, conn: &mut LineConnection) -> bool {
        conn.failed
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = start_echo_server().await?;
    println!("echo server listening on {addr}");

    let pool = ConnectionPool::builder(LineManager { addr })
        .name("echo")
        .max_size(4)
        .wait_timeout(Duration::from_secs(5))
        .validation(ValidationPolicy::Always)
        .runtime(TokioRuntime::current())
        .build()?;

    // 16 tasks share 4 connections.
    let mut tasks = Vec::new();
    for task in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.get_connection().await?;
            let reply = conn.request(&format!("hello from task {task}")).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(reply)
        }));
    }
    for task in tasks {
        println!("reply: {}", task.await?.map_err(|e| e.to_string())?);
    }

    let status = pool.status();
    println!(
        "status: size {} (max {}), idle {}, in use {}, created {}, waited {}",
        status.size,
        status.max_size,
        status.idle,
        status.in_use,
        status.counters.created,
        status.counters.waited
    );
    assert!(status.size <= 4);
    Ok(())
}
