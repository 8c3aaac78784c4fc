//! A real `redis-server` behind an in-test TCP fault proxy (`tests/support/proxy.rs`): the pool
//! connects through the proxy, and the test makes the network add latency, stall (connections
//! accepted and never answered, traffic held) or reset connections.
//!
//! Each fault test runs 16 tasks doing `INCR` through a pool of 8 in three phases: healthy,
//! faulty, healthy again; it prints one line of figures per phase. It passes when:
//!
//! * no `get_connection` outlives its deadline (`wait_timeout`) by more than
//!   [`DEADLINE_SLACK`] (every call is timed; the figures give the longest);
//! * service resumes within 1 s of the fault ending: a command succeeds;
//! * the manager's live count never exceeds `max_size`, `status().connecting` never exceeds
//!   `max_connecting`, and nothing is left once the pool is dropped (live count 0, and every
//!   connection through the proxy closed).
//!
//! `stalled_creates_release_their_slots` checks, with no other load, that a
//! `create_connection` the proxy stalls gives its slot and connect permit back at
//! `connection_timeout`: `status().size` and `connecting` drop to 0 when the call fails, and
//! the stalled socket is closed.
//!
//! Without `redis-server` installed these tests say SKIPPED on stderr and pass; with `CI=true`
//! they fail instead.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod support;

use connection_pool::{ConnectionPool, PoolError, TimeoutPhase, TokioRuntime};
use redis::{AsyncConnectionConfig, RedisError};
use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use support::{
    Counts, RedisManager, RedisServer,
    proxy::{Fault, FaultProxy},
};
use tokio::{sync::watch, task::JoinHandle};

const MAX_SIZE: usize = 8;
const MAX_CONNECTING: usize = 2;
const TASKS: usize = 16;
const WAIT_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(200);
const VALIDATION_TIMEOUT: Duration = Duration::from_millis(100);
/// The Redis client's own bound on one command: a command on a stalled connection fails after
/// this long and marks the connection broken.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
/// How late past its deadline a `get_connection` may return: timer and scheduling delay on a
/// busy machine.
const DEADLINE_SLACK: Duration = Duration::from_millis(100);
/// Service must resume this soon after a fault ends.
const RECOVERY_LIMIT: Duration = Duration::from_secs(1);
/// A task's pause between operations, so that 16 tasks make steady load, not a busy loop.
const PACE: Duration = Duration::from_millis(4);
/// How often the sampler checks the pool's and the manager's numbers.
const SAMPLE_PERIOD: Duration = Duration::from_millis(5);
/// The added latency of the latency fault, per chunk and direction.
const ADDED_LATENCY: Duration = Duration::from_millis(20);
const HEALTHY: Duration = Duration::from_millis(500);

type Pool = ConnectionPool<RedisManager>;

fn pool(proxy: &FaultProxy) -> (Pool, Arc<Counts>) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let manager = RedisManager::new(proxy.url("redis"))
        .expect("a valid redis URL")
        .with_config(config);
    let counts = manager.counts();
    let pool = ConnectionPool::builder(manager)
        .name("fault-proxy")
        .max_size(MAX_SIZE)
        .max_connecting(MAX_CONNECTING)
        .wait_timeout(WAIT_TIMEOUT)
        .connection_timeout(CONNECTION_TIMEOUT)
        .validation_timeout(VALIDATION_TIMEOUT)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid pool config");
    (pool, counts)
}

/// Prints a figures line straight to stderr, past the harness's capture.
fn report(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Starts `redis-server` (off the runtime's threads: it blocks) and a proxy in front of it.
async fn server_and_proxy() -> Option<(RedisServer, FaultProxy)> {
    let started = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("starting redis-server panicked");
    let server = support::require(started)?;
    let proxy = FaultProxy::start(server.addr())
        .await
        .expect("the proxy binds a loopback port");
    Some((server, proxy))
}

// ---------------------------------------------------------------------------------------------
// What the load saw
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GetOutcome {
    Ok,
    Timeout(TimeoutPhase),
    Backend,
    Rejected,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct GetRecord {
    start: Instant,
    elapsed: Duration,
    outcome: GetOutcome,
}

#[derive(Debug, Clone, Copy)]
struct CmdRecord {
    end: Instant,
    elapsed: Duration,
    ok: bool,
}

/// Everything the tasks and the sampler record, and the violations they found.
struct Log {
    gets: Mutex<Vec<GetRecord>>,
    cmds: Mutex<Vec<CmdRecord>>,
    /// Successful commands so far; the recovery wait is woken by each.
    successes: watch::Sender<usize>,
    violations: Mutex<Vec<String>>,
    peak_live: AtomicUsize,
    peak_size: AtomicUsize,
    peak_connecting: AtomicUsize,
}

impl Log {
    fn new() -> Self {
        Self {
            gets: Mutex::default(),
            cmds: Mutex::default(),
            successes: watch::Sender::new(0),
            violations: Mutex::default(),
            peak_live: AtomicUsize::new(0),
            peak_size: AtomicUsize::new(0),
            peak_connecting: AtomicUsize::new(0),
        }
    }

    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }

    fn get<T>(&self, start: Instant, elapsed: Duration, result: &Result<T, PoolError<RedisError>>) {
        let outcome = match result {
            Ok(_) => GetOutcome::Ok,
            Err(PoolError::Timeout { phase, .. }) => GetOutcome::Timeout(*phase),
            Err(PoolError::Backend(_)) => GetOutcome::Backend,
            Err(PoolError::Rejected(_)) => GetOutcome::Rejected,
            Err(e) => {
                self.violation(format!("unexpected error from get_connection: {e}"));
                GetOutcome::Other
            }
        };
        if elapsed > WAIT_TIMEOUT + DEADLINE_SLACK {
            self.violation(format!(
                "get_connection returned after {} ({outcome:?}), deadline {}",
                ms(elapsed),
                ms(WAIT_TIMEOUT)
            ));
        }
        self.gets.lock().unwrap().push(GetRecord {
            start,
            elapsed,
            outcome,
        });
    }

    fn cmd(&self, end: Instant, elapsed: Duration, ok: bool) {
        self.cmds
            .lock()
            .unwrap()
            .push(CmdRecord { end, elapsed, ok });
        if ok {
            self.successes.send_modify(|n| *n += 1);
        }
    }

    /// The first successful command that ended at or after `since`, waiting for it up to
    /// `limit`.
    async fn first_success_after(&self, since: Instant, limit: Duration) -> Option<Instant> {
        let mut successes = self.successes.subscribe();
        let found = || {
            self.cmds
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.ok && c.end >= since)
                .map(|c| c.end)
                .min()
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            successes.borrow_and_update();
            if let Some(at) = found() {
                return Some(at);
            }
            if tokio::time::timeout_at(deadline, successes.changed())
                .await
                .is_err()
            {
                return found();
            }
        }
    }
}

/// Figures over one phase: the gets and commands that ended in it.
struct Phase {
    gets: usize,
    ok: usize,
    timeouts: [usize; 3],
    backend: usize,
    rejected: usize,
    get_max: Duration,
    get_p99: Duration,
    cmds_ok: usize,
    cmds_failed: usize,
    cmd_p50: Duration,
}

impl Phase {
    fn of(log: &Log, from: Instant, to: Instant) -> Self {
        let gets: Vec<GetRecord> = log
            .gets
            .lock()
            .unwrap()
            .iter()
            .filter(|g| g.start + g.elapsed >= from && g.start + g.elapsed < to)
            .copied()
            .collect();
        let cmds: Vec<CmdRecord> = log
            .cmds
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.end >= from && c.end < to)
            .copied()
            .collect();
        let count = |outcome: GetOutcome| gets.iter().filter(|g| g.outcome == outcome).count();
        let mut get_times: Vec<Duration> = gets.iter().map(|g| g.elapsed).collect();
        get_times.sort_unstable();
        let mut cmd_times: Vec<Duration> =
            cmds.iter().filter(|c| c.ok).map(|c| c.elapsed).collect();
        cmd_times.sort_unstable();
        let quantile = |sorted: &[Duration], q: f64| {
            sorted
                .get(((sorted.len().saturating_sub(1)) as f64 * q).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Self {
            gets: gets.len(),
            ok: count(GetOutcome::Ok),
            timeouts: [
                count(GetOutcome::Timeout(TimeoutPhase::Waiting)),
                count(GetOutcome::Timeout(TimeoutPhase::Creating)),
                count(GetOutcome::Timeout(TimeoutPhase::Validating)),
            ],
            backend: count(GetOutcome::Backend),
            rejected: count(GetOutcome::Rejected),
            get_max: get_times.last().copied().unwrap_or_default(),
            get_p99: quantile(&get_times, 0.99),
            cmds_ok: cmd_times.len(),
            cmds_failed: cmds.iter().filter(|c| !c.ok).count(),
            cmd_p50: quantile(&cmd_times, 0.5),
        }
    }

    fn describe(&self) -> String {
        let [waiting, creating, validating] = self.timeouts;
        format!(
            "gets {} (ok {}, timed out waiting {waiting} / creating {creating} / validating \
             {validating}, backend errors {}, rejected {}), get p99 {} max {} (deadline {}); \
             commands ok {} failed {}, command p50 {}",
            self.gets,
            self.ok,
            self.backend,
            self.rejected,
            ms(self.get_p99),
            ms(self.get_max),
            ms(WAIT_TIMEOUT),
            self.cmds_ok,
            self.cmds_failed,
            ms(self.cmd_p50),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

/// `TASKS` tasks doing `INCR` through the pool, and a sampler checking the numbers.
struct Load {
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(pool: &Pool, counts: &Arc<Counts>) -> Self {
        let log = Arc::new(Log::new());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks: Vec<JoinHandle<()>> = (0..TASKS)
            .map(|_| tokio::spawn(worker(pool.clone(), Arc::clone(&log), Arc::clone(&stop))))
            .collect();
        tasks.push(tokio::spawn(sampler(
            pool.clone(),
            Arc::clone(counts),
            Arc::clone(&log),
            Arc::clone(&stop),
        )));
        Self { log, stop, tasks }
    }

    /// Stops the tasks (each finishes its operation, which is bounded) and waits for them.
    async fn stop(self) -> Arc<Log> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a load task panicked");
        }
        self.log
    }
}

async fn worker(pool: Pool, log: Arc<Log>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let start = Instant::now();
        let got = pool.get_connection().await;
        log.get(start, start.elapsed(), &got);
        if let Ok(mut conn) = got {
            let sent = Instant::now();
            // A failure here (timeout on a stalled connection, reset) marks the connection
            // broken, and the pool destroys it on return.
            let result: redis::RedisResult<i64> = redis::cmd("INCR")
                .arg("fault-proxy")
                .query_async(&mut *conn)
                .await;
            log.cmd(Instant::now(), sent.elapsed(), result.is_ok());
        }
        tokio::time::sleep(PACE).await;
    }
}

/// Checks, every few milliseconds, the pool's numbers and the manager's live count against
/// their limits.
async fn sampler(pool: Pool, counts: Arc<Counts>, log: Arc<Log>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        check_limits(&pool, &counts, &log);
        tokio::time::sleep(SAMPLE_PERIOD).await;
    }
}

fn check_limits(pool: &Pool, counts: &Counts, log: &Log) {
    let status = pool.status();
    let live = counts.live();
    log.peak_live.fetch_max(live, Ordering::SeqCst);
    log.peak_size.fetch_max(status.size, Ordering::SeqCst);
    log.peak_connecting
        .fetch_max(status.connecting, Ordering::SeqCst);
    if live > MAX_SIZE || status.size > MAX_SIZE || status.connecting > MAX_CONNECTING {
        log.violation(format!(
            "over a limit: live {live}, size {}, connecting {}",
            status.size, status.connecting
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The fault scenarios
// ---------------------------------------------------------------------------------------------

/// Healthy load, then `fault` for `duration`, then healthy load again; prints a line per
/// phase and checks the pass criteria. `during` checks the faulty phase's figures.
async fn scenario(name: &str, fault: Fault, duration: Duration, during: impl FnOnce(&Phase)) {
    let test_start = Instant::now();
    let Some((server, proxy)) = server_and_proxy().await else {
        return;
    };
    let (pool, counts) = pool(&proxy);
    let load = Load::start(&pool, &counts);

    let healthy_from = Instant::now();
    tokio::time::sleep(HEALTHY).await;
    let fault_from = Instant::now();
    let connects_before = counts.create_calls();
    let proxy_before = proxy.counts();
    proxy.set(fault);
    tokio::time::sleep(duration).await;
    proxy.set(Fault::None);
    let fault_to = Instant::now();
    let connects = counts.create_calls() - connects_before;
    let proxy_during = proxy.counts();
    let resumed = load
        .log
        .first_success_after(fault_to, RECOVERY_LIMIT * 5)
        .await;
    tokio::time::sleep(HEALTHY).await;
    let after_to = Instant::now();
    let log = load.stop().await;

    let before = Phase::of(&log, healthy_from, fault_from);
    let faulty = Phase::of(&log, fault_from, fault_to);
    let after = Phase::of(&log, fault_to, after_to);
    let recovery = resumed.map(|at| at.saturating_duration_since(fault_to));
    report(&format!(
        "fault_proxy {name} healthy ({}): {}",
        ms(fault_from - healthy_from),
        before.describe()
    ));
    report(&format!(
        "fault_proxy {name} {fault:?} ({}): {}; connect attempts {connects}, proxy accepted {} \
         stalled {} reset {}",
        ms(fault_to - fault_from),
        faulty.describe(),
        proxy_during.accepted - proxy_before.accepted,
        proxy_during.stalled - proxy_before.stalled,
        proxy_during.resets - proxy_before.resets,
    ));
    report(&format!(
        "fault_proxy {name} recovered ({}): first command ok {} after the fault ended; {}; \
         peak live {} size {} connecting {}; test {}",
        ms(after_to - fault_to),
        recovery.map_or_else(|| "never".to_owned(), ms),
        after.describe(),
        log.peak_live.load(Ordering::SeqCst),
        log.peak_size.load(Ordering::SeqCst),
        log.peak_connecting.load(Ordering::SeqCst),
        ms(test_start.elapsed()),
    ));

    // Nothing leaked: the pool's connections, and their sockets through the proxy.
    drop(pool);
    assert_eq!(
        counts.live(),
        0,
        "{name}: connections left after the pool was dropped"
    );
    proxy
        .wait_until(
            "every proxied connection closed",
            Duration::from_secs(5),
            |c| c.open == 0,
        )
        .await;

    let violations = log.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{name}: {} violations:\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
    assert!(
        before.ok > 0 && before.cmds_ok > 0,
        "{name}: no successful command before the fault"
    );
    let recovery = recovery.unwrap_or_else(|| panic!("{name}: service never resumed"));
    assert!(
        recovery <= RECOVERY_LIMIT,
        "{name}: service resumed {} after the fault ended (limit {})",
        ms(recovery),
        ms(RECOVERY_LIMIT)
    );
    during(&faulty);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_latency() {
    scenario(
        "latency",
        Fault::Latency(ADDED_LATENCY),
        Duration::from_secs(1),
        |phase| {
            assert!(
                phase.cmds_ok > 0,
                "latency: no command succeeded under added latency"
            );
            // A request and its reply are each held once.
            assert!(
                phase.cmd_p50 >= ADDED_LATENCY * 2,
                "latency: command p50 {} is below the added round-trip latency {}",
                ms(phase.cmd_p50),
                ms(ADDED_LATENCY * 2)
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections() {
    scenario(
        "stall",
        Fault::Stall,
        Duration::from_millis(1500),
        |phase| {
            assert!(
                phase.cmds_failed > 0,
                "stall: no command failed while the network was stalled"
            );
            assert!(
                phase.timeouts.iter().sum::<usize>() > 0,
                "stall: no get_connection timed out while the network was stalled"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections() {
    scenario("reset", Fault::Reset, Duration::from_secs(1), |phase| {
        assert!(
            phase.cmds_failed + phase.backend + phase.timeouts.iter().sum::<usize>() > 0,
            "reset: nothing failed while every connection was reset"
        );
    })
    .await;
}

/// With no other load: a create the proxy stalls gives its slot and permit back at
/// `connection_timeout`, and its socket is closed; then several at once, never more than
/// `max_connecting` in flight; then service resumes when the stall ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_creates_release_their_slots() {
    let test_start = Instant::now();
    let Some((server, proxy)) = server_and_proxy().await else {
        return;
    };
    let (pool, counts) = pool(&proxy);
    proxy.set(Fault::Stall);

    // One create, stalled.
    let started = Instant::now();
    let get = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let result = pool.get_connection().await.map(drop);
            (result, Instant::now())
        })
    };
    proxy
        .wait_until("a create stalled", Duration::from_secs(2), |c| {
            c.stalled >= 1
        })
        .await;
    let status = pool.status();
    assert_eq!(
        (status.size, status.connecting, counts.live()),
        (1, 1, 0),
        "while the create is stalled it holds one slot and one permit: {status:?}"
    );
    let (result, ended) = get.await.expect("the get task panicked");
    let took = ended - started;
    let status = pool.status();
    assert!(
        matches!(
            result,
            Err(PoolError::Timeout {
                phase: TimeoutPhase::Creating,
                ..
            })
        ),
        "a stalled create ends in a creating timeout, not {result:?}"
    );
    assert!(
        took >= CONNECTION_TIMEOUT && took <= CONNECTION_TIMEOUT + DEADLINE_SLACK,
        "the stalled create failed after {}, connection_timeout {}",
        ms(took),
        ms(CONNECTION_TIMEOUT)
    );
    assert_eq!(
        (status.size, status.connecting, counts.live()),
        (0, 0, 0),
        "the failed create gave its slot and permit back: {status:?}"
    );
    let closed = proxy
        .wait_until(
            "the stalled socket closed by the client",
            Duration::from_secs(1),
            |c| c.abandoned >= 1,
        )
        .await;
    report(&format!(
        "fault_proxy stalled create: failed after {} (connection_timeout {}), then size {} \
         connecting {}; proxy stalled {} abandoned {}",
        ms(took),
        ms(CONNECTION_TIMEOUT),
        status.size,
        status.connecting,
        closed.stalled,
        closed.abandoned,
    ));

    // Eight callers at once, each with its whole deadline.
    let log = Arc::new(Log::new());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sampler(
        pool.clone(),
        Arc::clone(&counts),
        Arc::clone(&log),
        Arc::clone(&stop),
    ));
    let connects_before = counts.create_calls();
    let callers: Vec<_> = (0..MAX_SIZE)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let result = pool.get_connection().await.map(drop);
                (result, start.elapsed())
            })
        })
        .collect();
    let mut longest = Duration::ZERO;
    let mut creating_timeouts = 0;
    for caller in callers {
        let (result, took) = caller.await.expect("a caller panicked");
        longest = longest.max(took);
        match result {
            Err(PoolError::Timeout { phase, .. }) => {
                if phase == TimeoutPhase::Creating {
                    creating_timeouts += 1;
                }
            }
            other => panic!("a caller during the stall got {other:?}, not a timeout"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("the sampler panicked");
    let connects = counts.create_calls() - connects_before;
    let status = pool.status();
    assert!(
        longest <= WAIT_TIMEOUT + DEADLINE_SLACK,
        "a caller returned after {}, deadline {}",
        ms(longest),
        ms(WAIT_TIMEOUT)
    );
    assert_eq!(
        (
            status.size,
            status.connecting,
            status.waiters,
            counts.live()
        ),
        (0, 0, 0, 0),
        "every stalled create gave its slot back: {status:?}"
    );
    let violations = log.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let counts_now = proxy
        .wait_until(
            "every stalled socket closed by the client",
            Duration::from_secs(1),
            |c| c.abandoned == c.stalled,
        )
        .await;
    report(&format!(
        "fault_proxy {MAX_SIZE} callers during a stall: longest {} (deadline {}), \
         {creating_timeouts} creating timeouts, {connects} connect attempts, peak connecting {} \
         (max {MAX_CONNECTING}); then size {} connecting {}; proxy stalled {} abandoned {}",
        ms(longest),
        ms(WAIT_TIMEOUT),
        log.peak_connecting.load(Ordering::SeqCst),
        status.size,
        status.connecting,
        counts_now.stalled,
        counts_now.abandoned,
    ));

    // The stall ends: service resumes within the limit, despite the backoff the failures left.
    proxy.set(Fault::None);
    let cleared = Instant::now();
    let mut attempts = 0;
    let resumed = loop {
        attempts += 1;
        if let Ok(mut conn) = pool.get_connection().await {
            let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut *conn).await;
            if pong.is_ok() {
                break cleared.elapsed();
            }
        }
        assert!(
            cleared.elapsed() < RECOVERY_LIMIT * 5,
            "no successful command {} after the stall ended",
            ms(cleared.elapsed())
        );
    };
    report(&format!(
        "fault_proxy stall ended: first command ok {} later ({attempts} get calls); test {}",
        ms(resumed),
        ms(test_start.elapsed()),
    ));
    assert!(
        resumed <= RECOVERY_LIMIT,
        "service resumed {} after the stall ended (limit {})",
        ms(resumed),
        ms(RECOVERY_LIMIT)
    );
    drop(pool);
    assert_eq!(
        counts.live(),
        0,
        "connections left after the pool was dropped"
    );
    drop(server);
}
