//! A runtime-neutral library built on `connection-pool`, used from tokio, smol and async-std.
//!
//! The module `shouty` stands for a library crate of your own: a client for a tiny line
//! protocol (send a line, get it back in capitals). Its `Cargo.toml` would say
//!
//! ```toml
//! [dependencies]
//! connection-pool = { version = "0.4", default-features = false, features = ["tcp"] }
//! ```
//!
//! so it compiles no executor at all: `tcp` runs on async-io's reactor, which works under any
//! runtime. Its entry points are generic over `Runtime` and take the runtime from their
//! caller. Only the application (here `main`) turns on `tokio` or `smol` and passes
//! `TokioRuntime` or `SmolRuntime`; async-std applications pass `SmolRuntime` too.
//!
//! The server is a few std threads, so it belongs to no runtime either.
//!
//! Run: `cargo run --example runtime_neutral --features tokio,smol,tcp` for all three
//! runtimes, or add `-- tokio`, `-- smol` or `-- async-std` for one.

use connection_pool::{SmolRuntime, TokioRuntime};
use std::{
    error::Error,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    process::ExitCode,
    thread,
};

/// The library: nothing in it names tokio, smol or async-std.
mod shouty {
    use connection_pool::{
        ConnectionPool, PingPong, PoolError, Runtime, Status, TcpConnection, TcpConnectionManager,
        TcpConnectionPool, ValidationPolicy,
    };
    use futures_lite::{
        future,
        io::{AsyncBufReadExt, AsyncWriteExt},
    };
    use std::{fmt, io, net::SocketAddr, time::Duration};

    /// What the library's calls fail with.
    #[derive(Debug)]
    pub enum Error {
        /// No connection could be had (timeout, connect error, closed pool).
        Pool(PoolError<io::Error>),
        /// The request failed on its connection.
        Io(io::Error),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::Pool(e) => write!(f, "no connection to the shouty server: {e}"),
                Error::Io(e) => write!(f, "shouty request failed: {e}"),
            }
        }
    }

    impl std::error::Error for Error {}

    impl From<PoolError<io::Error>> for Error {
        fn from(e: PoolError<io::Error>) -> Self {
            Error::Pool(e)
        }
    }

    impl From<io::Error> for Error {
        fn from(e: io::Error) -> Self {
            Error::Io(e)
        }
    }

    /// A request on its connection. Dropped before `done` (an error, or a cancelled call), it
    /// marks the connection failed: the reply may still be on its way, and the next user would
    /// read it as their own.
    struct InFlight<'c> {
        conn: &'c mut TcpConnection,
        done: bool,
    }

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            if !self.done {
                self.conn.mark_failed();
            }
        }
    }

    /// A client with a pool of connections to one server.
    pub struct Client {
        pool: TcpConnectionPool<PingPong>,
    }

    impl Client {
        /// A client of the server at `addr`, whose pool runs its timers and cleanup task on
        /// `runtime`: whatever the application runs on.
        pub fn new<R: Runtime>(addr: SocketAddr, runtime: R) -> Result<Self, Error> {
            let manager =
                TcpConnectionManager::new(addr).health_check(PingPong::new("PING\n", "PONG\n"));
            let pool = ConnectionPool::builder(manager)
                .name("shouty")
                .max_size(2)
                .wait_timeout(Duration::from_secs(5))
                // Each reuse is checked with PING/PONG first, to show the health check at work.
                .validation(ValidationPolicy::Always)
                .runtime(runtime)
                .build()?;
            Ok(Self { pool })
        }

        /// Sends `words`, returns the server's reply.
        ///
        /// Cancelling it mid-request may leave the reply in flight, so until the reply is in,
        /// the connection is marked failed and would be destroyed, not handed to the next
        /// caller with a stale reply waiting. The PING/PONG check before every reuse cannot
        /// catch that on its own: a late reply to a shouted `pong` reads just like its `PONG`.
        pub async fn shout(&self, words: &str) -> Result<String, Error> {
            let mut conn = self.pool.get_connection().await?;
            let mut request = InFlight {
                conn: &mut conn,
                done: false,
            };
            request
                .conn
                .write_all(format!("{words}\n").as_bytes())
                .await?;
            let mut reply = String::new();
            if request.conn.read_line(&mut reply).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed").into());
            }
            request.done = true;
            Ok(reply.trim_end().to_owned())
        }

        /// The pool's numbers.
        pub fn status(&self) -> Status {
            self.pool.status()
        }
    }

    /// Shouts every word, two requests at a time, on the caller's runtime.
    pub async fn shout_all<R: Runtime>(
        runtime: R,
        addr: SocketAddr,
        words: &[&str],
    ) -> Result<(Vec<String>, Status), Error> {
        let client = Client::new(addr, runtime)?;
        let mut replies = Vec::new();
        for pair in words.chunks(2) {
            match pair {
                [a, b] => {
                    let (a, b) = future::zip(client.shout(a), client.shout(b)).await;
                    replies.extend([a?, b?]);
                }
                [a] => replies.push(client.shout(a).await?),
                _ => unreachable!("chunks of two"),
            }
        }
        Ok((replies, client.status()))
    }
}

const WORDS: [&str; 5] = ["hello", "from", "a", "runtime-neutral", "library"];

/// Starts the shouty server on std threads: `PING` gets `PONG`, any other line comes back in
/// capitals. It lives until the process exits.
fn start_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for socket in listener.incoming().flatten() {
            thread::spawn(move || {
                let Ok(mut writer) = socket.try_clone() else {
                    return;
                };
                for line in BufReader::new(socket).lines().map_while(Result::ok) {
                    let reply = match line.as_str() {
                        "PING" => "PONG".to_owned(),
                        other => other.to_uppercase(),
                    };
                    if writeln!(writer, "{reply}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Calls the library on one runtime and prints what it got.
fn run_on(name: &str, addr: SocketAddr) -> Result<(), Box<dyn Error>> {
    let (replies, status) = match name {
        "tokio" => {
            let tokio = tokio::runtime::Runtime::new()?;
            tokio.block_on(shouty::shout_all(
                TokioRuntime::from_handle(tokio.handle().clone()),
                addr,
                &WORDS,
            ))?
        }
        "smol" => smol::block_on(shouty::shout_all(SmolRuntime::new(), addr, &WORDS))?,
        // async-std runs on the same async-io reactor as smol: SmolRuntime serves it.
        "async-std" => {
            async_std::task::block_on(shouty::shout_all(SmolRuntime::new(), addr, &WORDS))?
        }
        other => return Err(format!("unknown runtime {other:?}").into()),
    };
    println!(
        "{name:<10} {}  ({} connections created, {} destroyed)",
        replies.join(" "),
        status.counters.created,
        status.counters.destroyed.total()
    );
    Ok(())
}

fn main() -> ExitCode {
    let runtimes: Vec<String> = match std::env::args().nth(1) {
        Some(name) if ["tokio", "smol", "async-std"].contains(&name.as_str()) => vec![name],
        Some(other) => {
            eprintln!(
                "unknown runtime {other:?}: use tokio, smol or async-std (or nothing for all)"
            );
            return ExitCode::from(2);
        }
        None => ["tokio", "smol", "async-std"].map(str::to_owned).to_vec(),
    };
    let addr = match start_server() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("cannot start the server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("shouty server on {addr} (std threads); the library is called from each runtime:");
    for name in &runtimes {
        if let Err(e) = run_on(name, addr) {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
