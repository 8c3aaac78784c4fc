//! The runtime matrix: the same scenarios on every runtime the crate claims to support.
//!
//! * tokio, multi-thread and current-thread, with [`TokioRuntime`];
//! * smol, with [`SmolRuntime`];
//! * async-std, with [`SmolRuntime`] (both run on async-io's reactor);
//! * a runtime written here the way a user would, from `async-executor` and `async-io` alone;
//! * and, for the core alone, no runtime at all on futures-lite's `block_on`.
//!
//! Each runtime runs: get, return and reuse (also from many tasks at once); a waiter woken by a
//! return; `wait_timeout` and a per-call timeout firing on that runtime's timers; the cleanup
//! task creating `min_idle` connections and expiring idle ones; and, with feature `tcp`, the
//! [`TcpConnectionManager`] against a loopback server, its health checks included. Every
//! scenario ends by dropping the pool and checking that every connection and the manager were
//! dropped: the cleanup task must not keep the pool alive.
//!
//! Tasks are spawned with each runtime's own spawn function, and the pool's `Runtime` is the
//! one a user of that runtime would pass, so a scenario exercises the executor, its timers and
//! its threads exactly as an application would.

use connection_pool::{
    BoxFuture, ConnectionManager, ConnectionPool, PoolError, Runtime, TimeoutPhase,
};
use futures_lite::future;
use std::{
    future::Future,
    io,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// The longest any scenario may run before it counts as hung.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);

/// What a scenario needs from the runtime under test.
trait Harness {
    /// The [`Runtime`] a user of this executor passes to the pool.
    type Rt: Runtime + Clone;

    fn runtime(&self) -> Self::Rt;

    /// Runs `future` to completion on this runtime, from the test's thread.
    fn block_on<F: Future>(&self, future: F) -> F::Output;

    /// Spawns `future` with this runtime's own spawn function; the result is its join handle.
    fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> BoxFuture<T>;
}

/// Runs `scenario` on `harness`, failing it if it takes longer than [`SCENARIO_LIMIT`].
fn run<H: Harness>(harness: &H, scenario: impl Future<Output = ()>) {
    let runtime = harness.runtime();
    harness.block_on(future::or(scenario, async move {
        runtime.sleep(SCENARIO_LIMIT).await;
        panic!("the scenario did not finish within {SCENARIO_LIMIT:?}");
    }));
}

/// Generates one test module per runtime, with one test per scenario.
macro_rules! matrix {
    ($($(#[$attr:meta])* $runtime:ident => $harness:expr;)*) => {$(
        $(#[$attr])*
        mod $runtime {
            use super::*;

            #[test]
            fn get_return_reuse() {
                let harness = $harness;
                run(&harness, scenarios::get_return_reuse(&harness));
            }

            #[test]
            fn wait_woken_by_a_return() {
                let harness = $harness;
                run(&harness, scenarios::wait_woken_by_a_return(&harness));
            }

            #[test]
            fn wait_timeout_fires() {
                let harness = $harness;
                run(&harness, scenarios::wait_timeout_fires(&harness));
            }

            #[test]
            fn cleanup_task_runs() {
                let harness = $harness;
                run(&harness, scenarios::cleanup_task_runs(&harness));
            }

            #[cfg(feature = "tcp")]
            #[test]
            fn tcp_manager() {
                let harness = $harness;
                run(&harness, scenarios::tcp_manager(&harness));
            }
        }
    )*};
}

matrix! {
    #[cfg(feature = "tokio")]
    tokio_multi_thread => harnesses::Tokio::multi_thread();
    #[cfg(feature = "tokio")]
    tokio_current_thread => harnesses::Tokio::current_thread();
    #[cfg(feature = "smol")]
    smol => harnesses::Smol;
    #[cfg(feature = "smol")]
    async_std => harnesses::AsyncStd;
    custom_executor => harnesses::Executor::new(2);
}

/// A manager of numbered connections that counts them independently of the pool.
struct Numbers(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// Connections created so far; also the next connection's number.
    created: AtomicU32,
    /// Connections that exist now.
    live: AtomicUsize,
    /// The highest `live` seen.
    peak: AtomicUsize,
}

/// A connection: its number, and the counts it takes itself off when dropped.
struct Conn {
    id: u32,
    counts: Arc<Counts>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnectionManager for Numbers {
    type Connection = Conn;
    type Error = io::Error;

    async fn create_connection(&self) -> io::Result<Conn> {
        let id = self.0.created.fetch_add(1, Ordering::SeqCst);
        let live = self.0.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.peak.fetch_max(live, Ordering::SeqCst);
        Ok(Conn {
            id,
            counts: Arc::clone(&self.0),
        })
    }

    async fn is_valid(&self, _conn: &mut Conn) -> io::Result<()> {
        Ok(())
    }
}

mod scenarios {
    use super::*;
    use connection_pool::Builder;

    /// A pool of [`Numbers`] on the harness's runtime, set up further by `configure`.
    fn pool<H: Harness>(
        harness: &H,
        configure: impl FnOnce(Builder<Numbers>) -> Builder<Numbers>,
    ) -> (ConnectionPool<Numbers>, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        let builder = ConnectionPool::builder(Numbers(Arc::clone(&counts)))
            .wait_timeout(Duration::from_secs(10))
            .runtime(harness.runtime());
        let pool = configure(builder).build().expect("a valid pool");
        (pool, counts)
    }

    /// Polls `condition` every 5 ms on the runtime's timer until it holds; panics after
    /// `limit`.
    async fn eventually(
        runtime: &impl Runtime,
        what: &str,
        limit: Duration,
        mut condition: impl FnMut() -> bool,
    ) {
        let start = Instant::now();
        while !condition() {
            assert!(start.elapsed() < limit, "not {what} after {limit:?}");
            runtime.sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops the pool and waits until every connection and the manager are gone: nothing,
    /// the cleanup task included, keeps the pool alive.
    async fn drop_pool<H: Harness>(
        harness: &H,
        pool: ConnectionPool<Numbers>,
        counts: Arc<Counts>,
    ) {
        drop(pool);
        eventually(
            &harness.runtime(),
            "the pool's connections and manager dropped",
            Duration::from_secs(5),
            || Arc::strong_count(&counts) == 1,
        )
        .await;
        assert_eq!(counts.live.load(Ordering::SeqCst), 0);
    }

    pub(super) async fn get_return_reuse<H: Harness>(harness: &H) {
        let (pool, counts) = pool(harness, |b| b.max_size(2));

        let first = pool.get_connection().await.expect("a connection");
        let id = first.id;
        drop(first);
        assert_eq!(
            pool.status().idle,
            1,
            "the dropped guard returned its connection"
        );
        let again = pool.get_connection().await.expect("a connection");
        assert_eq!(again.id, id, "the returned connection is reused");
        let second = pool.get_connection().await.expect("a second connection");
        assert_ne!(second.id, id);
        drop((again, second));
        assert_eq!(counts.created.load(Ordering::SeqCst), 2);

        // Eight tasks on the runtime share the two connections.
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                harness.spawn(async move {
                    for _ in 0..25 {
                        let conn = pool.get_connection().await.expect("a connection");
                        future::yield_now().await;
                        drop(conn);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        assert!(
            counts.peak.load(Ordering::SeqCst) <= 2,
            "more than max_size connections existed"
        );
        let status = pool.status();
        assert_eq!(
            (status.size, status.idle, status.waiters),
            (2, 2, 0),
            "{status:?}"
        );
        drop_pool(harness, pool, counts).await;
    }

    pub(super) async fn wait_woken_by_a_return<H: Harness>(harness: &H) {
        let runtime = harness.runtime();
        let (pool, counts) = pool(harness, |b| b.max_size(1));

        let held = pool.get_connection().await.expect("a connection");
        let id = held.id;
        let waiter = harness.spawn({
            let pool = pool.clone();
            async move { pool.get_connection().await.map(|conn| conn.id) }
        });
        eventually(&runtime, "waiting", Duration::from_secs(5), || {
            pool.status().waiters == 1
        })
        .await;
        drop(held);
        let got = waiter
            .await
            .expect("the waiter gets the returned connection");
        assert_eq!(
            got, id,
            "the waiter got the returned connection, not a new one"
        );
        assert_eq!(counts.created.load(Ordering::SeqCst), 1);
        assert_eq!(pool.status().counters.waited, 1);
        drop_pool(harness, pool, counts).await;
    }

    pub(super) async fn wait_timeout_fires<H: Harness>(harness: &H) {
        // Far apart, so that a per-call timeout that fires before `WAIT` shows it was used
        // even on a loaded machine.
        const WAIT: Duration = Duration::from_secs(1);
        const PER_CALL: Duration = Duration::from_millis(30);
        // Timers never fire early; the margin covers clock granularity only.
        const MARGIN: Duration = Duration::from_millis(5);
        let (pool, counts) = pool(harness, |b| b.max_size(1).wait_timeout(WAIT));
        let held = pool.get_connection().await.expect("a connection");

        let start = Instant::now();
        let error = pool
            .get_connection()
            .await
            .err()
            .expect("the only connection is held");
        let waited = start.elapsed();
        assert!(
            matches!(
                error,
                PoolError::Timeout {
                    phase: TimeoutPhase::Waiting,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            waited + MARGIN >= WAIT && waited < Duration::from_secs(5),
            "{waited:?}"
        );

        let start = Instant::now();
        let error = pool
            .get_connection_timeout(PER_CALL)
            .await
            .err()
            .expect("the only connection is held");
        let waited = start.elapsed();
        assert!(
            matches!(
                error,
                PoolError::Timeout {
                    phase: TimeoutPhase::Waiting,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(waited + MARGIN >= PER_CALL && waited < WAIT, "{waited:?}");

        let status = pool.status();
        assert_eq!(
            (status.counters.timeouts, status.waiters),
            (2, 0),
            "{status:?}"
        );
        drop(held);
        // The timed-out calls left nothing behind: the connection is idle for the next one.
        let conn = pool
            .try_get_connection()
            .expect("the connection is idle again");
        drop(conn);
        drop_pool(harness, pool, counts).await;
    }

    pub(super) async fn cleanup_task_runs<H: Harness>(harness: &H) {
        let runtime = harness.runtime();
        let (pool, counts) = pool(harness, |b| {
            b.max_size(4)
                .min_idle(1)
                .max_idle_time(Duration::from_millis(100))
                .cleanup_interval(Duration::from_millis(20))
        });

        // Nobody asked for a connection: the cleanup task makes the `min_idle` one.
        eventually(
            &runtime,
            "warmed up to min_idle",
            Duration::from_secs(5),
            || pool.status().idle == 1,
        )
        .await;
        assert_eq!(counts.created.load(Ordering::SeqCst), 1);

        let mut burst = Vec::new();
        for _ in 0..3 {
            burst.push(pool.get_connection().await.expect("a connection"));
        }
        drop(burst);
        // A cleanup pass may hold one it is inspecting for a moment.
        eventually(
            &runtime,
            "the burst is idle",
            Duration::from_secs(5),
            || pool.status().idle == 3,
        )
        .await;

        // The two above `min_idle` expire; the warm one stays however long it idles.
        eventually(
            &runtime,
            "expired down to min_idle",
            Duration::from_secs(5),
            || {
                let status = pool.status();
                status.idle == 1 && status.counters.destroyed.idle_timeout == 2
            },
        )
        .await;
        assert_eq!(counts.live.load(Ordering::SeqCst), 1);
        drop_pool(harness, pool, counts).await;
    }

    #[cfg(feature = "tcp")]
    pub(super) async fn tcp_manager<H: Harness>(harness: &H) {
        use super::line_server::LineServer;
        use connection_pool::{PingPong, TcpConnection, TcpConnectionManager, ValidationPolicy};
        use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt};

        async fn request(conn: &mut TcpConnection, line: &str) -> io::Result<String> {
            conn.write_all(format!("{line}\n").as_bytes()).await?;
            let mut reply = String::new();
            conn.read_line(&mut reply).await?;
            Ok(reply)
        }

        let runtime = harness.runtime();
        let server = LineServer::start();
        let manager = TcpConnectionManager::new(server.addr())
            .health_check(PingPong::new("PING\n", "PONG\n"));
        let pool = ConnectionPool::builder(manager)
            .max_size(2)
            .wait_timeout(Duration::from_secs(10))
            .validation(ValidationPolicy::Always)
            .runtime(runtime.clone())
            .build()
            .expect("a valid pool");

        // Requests, each on a connection checked with PING/PONG first, all on one connection.
        for i in 0..3 {
            let mut conn = pool.get_connection().await.expect("a connection");
            let reply = request(&mut conn, &format!("hello {i}"))
                .await
                .expect("a reply");
            assert_eq!(reply, format!("hello {i}\n"));
        }
        let status = pool.status();
        assert_eq!(status.counters.created, 1, "{status:?}");
        assert_eq!(status.counters.destroyed.total(), 0, "{status:?}");

        // A request abandoned before its reply was read (a cancelled task): the connection is
        // destroyed on return, so the late reply never reaches the next user.
        {
            let mut conn = pool.get_connection().await.expect("a connection");
            conn.write_all(b"the first user's secret\n")
                .await
                .expect("sent");
            conn.flush().await.expect("flushed");
        }
        runtime.sleep(Duration::from_millis(50)).await;
        let mut conn = pool.get_connection().await.expect("a fresh connection");
        assert_eq!(
            request(&mut conn, "the second user")
                .await
                .expect("a reply"),
            "the second user\n"
        );
        drop(conn);
        let status = pool.status();
        assert_eq!(status.counters.destroyed.broken, 1, "{status:?}");
        assert_eq!(status.counters.created, 2, "{status:?}");

        // The server closes an idle connection: the check on the next checkout notices, and
        // the caller gets a fresh connection instead. (`BYE` has no reply; this pool is told
        // not to expect one for every write.)
        let quiet = ConnectionPool::builder(
            TcpConnectionManager::new(server.addr())
                .health_check(PingPong::new("PING\n", "PONG\n"))
                .expect_replies(false),
        )
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .runtime(runtime.clone())
        .build()
        .expect("a valid pool");
        {
            let mut conn = quiet.get_connection().await.expect("a connection");
            conn.write_all(b"BYE\n").await.expect("sent");
            conn.flush().await.expect("flushed");
        }
        assert_eq!(quiet.status().idle, 1, "kept: no reply was expected");
        runtime.sleep(Duration::from_millis(50)).await;
        let mut conn = quiet.get_connection().await.expect("a fresh connection");
        assert_eq!(
            request(&mut conn, "still there?").await.expect("a reply"),
            "still there?\n"
        );
        drop(conn);
        let status = quiet.status();
        assert_eq!(status.counters.destroyed.validation_failed, 1, "{status:?}");
        assert_eq!(status.counters.created, 2, "{status:?}");

        // A connection that read the end of the stream is failed, and destroyed on return.
        {
            let mut conn = pool.get_connection().await.expect("a connection");
            conn.write_all(b"BYE\n").await.expect("sent");
            let mut reply = String::new();
            assert_eq!(conn.read_line(&mut reply).await.expect("end of stream"), 0);
            assert!(conn.has_failed());
        }
        assert_eq!(pool.status().counters.destroyed.broken, 2);

        // Nothing listening: the caller gets the connect error, naming the address.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let dead_addr = dead.local_addr().expect("an address");
        drop(dead);
        let dead_pool = ConnectionPool::builder(TcpConnectionManager::new(dead_addr))
            .runtime(runtime)
            .build()
            .expect("a valid pool");
        match dead_pool.get_connection().await {
            Err(PoolError::Backend(e)) => {
                assert!(e.to_string().contains(&dead_addr.to_string()), "{e}");
            }
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }
}

/// A line server on std threads for the TCP scenario: `PING` gets `PONG`, `BYE` closes the
/// connection without a reply, anything else is echoed.
#[cfg(feature = "tcp")]
mod line_server {
    use std::{
        io::{BufRead, BufReader, Write},
        net::{SocketAddr, TcpListener, TcpStream},
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        thread,
    };

    pub(super) struct LineServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        acceptor: Option<thread::JoinHandle<()>>,
    }

    impl LineServer {
        pub(super) fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
            let addr = listener.local_addr().expect("an address");
            let stop = Arc::new(AtomicBool::new(false));
            let acceptor = thread::spawn({
                let stop = Arc::clone(&stop);
                move || {
                    for socket in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        if let Ok(socket) = socket {
                            // Each connection thread ends when its client goes away.
                            thread::spawn(move || serve(socket));
                        }
                    }
                }
            });
            Self {
                addr,
                stop,
                acceptor: Some(acceptor),
            }
        }

        pub(super) fn addr(&self) -> SocketAddr {
            self.addr
        }
    }

    fn serve(socket: TcpStream) {
        let Ok(mut writer) = socket.try_clone() else {
            return;
        };
        for line in BufReader::new(socket).lines() {
            let reply = match line.as_deref() {
                Ok("BYE") | Err(_) => return,
                Ok("PING") => "PONG",
                Ok(other) => other,
            };
            if writeln!(writer, "{reply}").is_err() {
                return;
            }
        }
    }

    impl Drop for LineServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the acceptor so that it sees the flag.
            let _ = TcpStream::connect(self.addr);
            if let Some(acceptor) = self.acceptor.take() {
                let _ = acceptor.join();
            }
        }
    }
}

/// The runtimes under test.
mod harnesses {
    use super::*;

    /// tokio, with tasks spawned by `Runtime::spawn` on it and `TokioRuntime` for the pool.
    #[cfg(feature = "tokio")]
    pub(super) struct Tokio(tokio::runtime::Runtime);

    #[cfg(feature = "tokio")]
    impl Tokio {
        pub(super) fn multi_thread() -> Self {
            Self(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime"),
            )
        }

        pub(super) fn current_thread() -> Self {
            Self(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime"),
            )
        }
    }

    #[cfg(feature = "tokio")]
    impl Harness for Tokio {
        type Rt = connection_pool::TokioRuntime;

        fn runtime(&self) -> Self::Rt {
            connection_pool::TokioRuntime::from_handle(self.0.handle().clone())
        }

        fn block_on<F: Future>(&self, future: F) -> F::Output {
            self.0.block_on(future)
        }

        fn spawn<T: Send + 'static>(
            &self,
            future: impl Future<Output = T> + Send + 'static,
        ) -> BoxFuture<T> {
            let task = self.0.spawn(future);
            Box::pin(async move { task.await.expect("the task panicked") })
        }
    }

    /// smol: its global executor and async-io timers.
    #[cfg(feature = "smol")]
    pub(super) struct Smol;

    #[cfg(feature = "smol")]
    impl Harness for Smol {
        type Rt = connection_pool::SmolRuntime;

        fn runtime(&self) -> Self::Rt {
            connection_pool::SmolRuntime::new()
        }

        fn block_on<F: Future>(&self, future: F) -> F::Output {
            ::smol::block_on(future)
        }

        fn spawn<T: Send + 'static>(
            &self,
            future: impl Future<Output = T> + Send + 'static,
        ) -> BoxFuture<T> {
            Box::pin(::smol::spawn(future))
        }
    }

    /// async-std's executor for the test's tasks; `SmolRuntime` for the pool, as the crate
    /// documents for async-std.
    #[cfg(feature = "smol")]
    pub(super) struct AsyncStd;

    #[cfg(feature = "smol")]
    impl Harness for AsyncStd {
        type Rt = connection_pool::SmolRuntime;

        fn runtime(&self) -> Self::Rt {
            connection_pool::SmolRuntime::new()
        }

        fn block_on<F: Future>(&self, future: F) -> F::Output {
            ::async_std::task::block_on(future)
        }

        fn spawn<T: Send + 'static>(
            &self,
            future: impl Future<Output = T> + Send + 'static,
        ) -> BoxFuture<T> {
            Box::pin(::async_std::task::spawn(future))
        }
    }

    /// A runtime as a user would write it, from `async-executor` (tasks) and `async-io`
    /// (timers) alone.
    #[derive(Clone)]
    pub(super) struct ExecutorRuntime {
        executor: Arc<async_executor::Executor<'static>>,
    }

    impl Runtime for ExecutorRuntime {
        fn spawn(&self, task: BoxFuture<()>) {
            self.executor.spawn(task).detach();
        }

        fn sleep(&self, duration: Duration) -> BoxFuture<()> {
            Box::pin(async move {
                async_io::Timer::after(duration).await;
            })
        }
    }

    /// [`ExecutorRuntime`] run by worker threads of its own plus the test's thread, which
    /// joins in while it blocks on a scenario.
    pub(super) struct Executor {
        runtime: ExecutorRuntime,
        stop: Arc<std::sync::atomic::AtomicBool>,
        workers: Vec<std::thread::JoinHandle<()>>,
    }

    impl Executor {
        pub(super) fn new(workers: usize) -> Self {
            let runtime = ExecutorRuntime {
                executor: Arc::new(async_executor::Executor::new()),
            };
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let workers = (0..workers)
                .map(|_| {
                    let (executor, stop) = (Arc::clone(&runtime.executor), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        // Run tasks until told to stop; the flag is checked every few ms.
                        async_io::block_on(executor.run(async {
                            while !stop.load(Ordering::SeqCst) {
                                async_io::Timer::after(Duration::from_millis(5)).await;
                            }
                        }));
                    })
                })
                .collect();
            Self {
                runtime,
                stop,
                workers,
            }
        }
    }

    impl Drop for Executor {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            for worker in self.workers.drain(..) {
                let _ = worker.join();
            }
        }
    }

    impl Harness for Executor {
        type Rt = ExecutorRuntime;

        fn runtime(&self) -> Self::Rt {
            self.runtime.clone()
        }

        fn block_on<F: Future>(&self, future: F) -> F::Output {
            async_io::block_on(self.runtime.executor.run(future))
        }

        fn spawn<T: Send + 'static>(
            &self,
            future: impl Future<Output = T> + Send + 'static,
        ) -> BoxFuture<T> {
            Box::pin(self.runtime.executor.spawn(future))
        }
    }
}

/// The core needs no runtime: with `.no_runtime()` a pool gets, returns and wakes waiters on
/// any executor, here futures-lite's `block_on`, which has no timers and spawns nothing.
mod no_runtime {
    use super::*;

    #[test]
    fn get_return_and_a_woken_wait() {
        let counts = Arc::new(Counts::default());
        let pool = ConnectionPool::builder(Numbers(Arc::clone(&counts)))
            .max_size(1)
            .no_runtime()
            .build()
            .expect("a valid pool");
        future::block_on(async {
            let held = pool.get_connection().await.expect("a connection");
            let id = held.id;
            let returner = async {
                // Let the waiter park first.
                while pool.status().waiters == 0 {
                    future::yield_now().await;
                }
                drop(held);
            };
            let (got, ()) = future::zip(pool.get_connection(), returner).await;
            assert_eq!(got.expect("woken by the return").id, id);
        });
        assert_eq!(counts.created.load(Ordering::SeqCst), 1);
        drop(pool);
        assert_eq!(Arc::strong_count(&counts), 1);
    }
}

/// Which tokio runtime a pool's timers run on, when calls come from other runtimes or from
/// synchronous bridges.
#[cfg(feature = "tokio")]
mod tokio_lifecycle {
    use super::*;
    use connection_pool::{TokioRuntime, ValidationPolicy};

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    }

    /// A pool kept in a `static` and shared by several `#[tokio::test]`s outlives the runtime
    /// that built it: with `follow_caller`, later calls run on runtimes of their own.
    #[test]
    fn a_pool_following_its_callers_outlives_the_runtime_that_built_it() {
        let counts = Arc::new(Counts::default());
        let first = current_thread();
        let pool = first.block_on(async {
            ConnectionPool::builder(Numbers(Arc::clone(&counts)))
                .max_size(1)
                .min_idle(1)
                .wait_timeout(Duration::from_millis(50))
                .validation(ValidationPolicy::Always)
                .runtime(TokioRuntime::follow_caller())
                .build()
                .expect("a valid pool")
        });
        drop(first);
        current_thread().block_on(async {
            // Creating, waiting and validating each arm a timer: on this runtime, not the
            // one that is gone (where tokio panics).
            let held = pool.get_connection().await.expect("created");
            let waited = pool.get_connection().await.map(|c| c.id);
            assert!(
                matches!(
                    waited,
                    Err(PoolError::Timeout {
                        phase: TimeoutPhase::Waiting,
                        ..
                    })
                ),
                "{waited:?}"
            );
            drop(held);
            let validated = pool.get_connection().await.expect("validated");
            // The cleanup task died with the first runtime; restarted from this one, it runs
            // here and puts back the min_idle connection this detach takes away.
            drop(validated.detach());
            pool.restart_cleanup_task(Duration::from_millis(5))
                .expect("restarted");
            let start = Instant::now();
            while pool.status().idle < 1 {
                assert!(start.elapsed() < SCENARIO_LIMIT, "min_idle not restored");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        drop(pool);
        assert_eq!(counts.live.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_pool_given_a_handle_keeps_to_that_runtime() {
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let pool = ConnectionPool::builder(Numbers(Arc::new(Counts::default())))
            .max_size(1)
            .wait_timeout(Duration::from_millis(50))
            .runtime(TokioRuntime::from_handle(background.handle().clone()))
            .build()
            .expect("a valid pool");
        // A runtime without timers: the pool's timers are armed on `background` instead.
        let no_timers = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        no_timers.block_on(async {
            let _held = pool.get_connection().await.expect("created");
            let waited = pool.get_connection().await.map(|c| c.id);
            assert!(
                matches!(waited, Err(PoolError::Timeout { .. })),
                "{waited:?}"
            );
        });
    }

    /// `current()` keeps to the runtime that built the pool, so a call made where no runtime
    /// drives its own timers (a synchronous `block_on` nested in a current-thread runtime's
    /// `block_on`, a thread that entered a runtime) still times out.
    #[test]
    fn a_pool_on_the_current_runtime_times_out_from_synchronous_bridges() {
        let background = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let pool = background.block_on(async {
            ConnectionPool::builder(Numbers(Arc::new(Counts::default())))
                .max_size(1)
                .wait_timeout(Duration::from_millis(50))
                .runtime(TokioRuntime::current())
                .build()
                .expect("a valid pool")
        });
        let held = future::block_on(pool.get_connection()).expect("created");
        let (done, outcome) = std::sync::mpsc::channel();
        let caller = pool.clone();
        std::thread::spawn(move || {
            let nested = current_thread();
            let in_block_on =
                nested.block_on(async { future::block_on(caller.get_connection()).map(|c| c.id) });
            let _entered = nested.enter();
            let entered = future::block_on(caller.get_connection()).map(|c| c.id);
            let _ = done.send((in_block_on, entered));
        });
        let (in_block_on, entered) = outcome
            .recv_timeout(SCENARIO_LIMIT)
            .expect("the calls time out instead of hanging");
        for waited in [in_block_on, entered] {
            assert!(
                matches!(waited, Err(PoolError::Timeout { .. })),
                "{waited:?}"
            );
        }
        drop(held);
    }

    /// Timeouts follow tokio's clock: a test that pauses time drives them without waiting.
    #[tokio::test(start_paused = true)]
    async fn a_paused_clock_drives_the_timeouts() {
        let pool = ConnectionPool::builder(Numbers(Arc::new(Counts::default())))
            .max_size(1)
            .wait_timeout(Duration::from_secs(30))
            .runtime(TokioRuntime::current())
            .build()
            .expect("a valid pool");
        let _held = pool.get_connection().await.expect("created");
        let started = Instant::now();
        let waited = pool.get_connection().await.map(|c| c.id);
        assert!(
            matches!(waited, Err(PoolError::Timeout { .. })),
            "{waited:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
}
