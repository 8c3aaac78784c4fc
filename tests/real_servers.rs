//! Smoke tests against real servers the tests start themselves: a `redis-server` and a
//! PostgreSQL 15 cluster on free loopback ports (see `tests/support/`).
//!
//! Each test runs real commands from 16 tasks through a pool of 4, restarts the server on the
//! same port, and checks that the pool recovers both ways it can: on-checkout validation
//! catching the dead idle connections, and `has_broken` destroying a connection whose command
//! failed. The manager's own live count must never pass `max_size` and must be back to 0 once
//! the pools are dropped, and the server's own count of clients must agree.
//!
//! Without `redis-server` or PostgreSQL installed these tests say SKIPPED on stderr and pass;
//! with `CI=true` they fail instead.

// Built only with the `tokio` feature (`cargo test --all-features`), so that a plain
// `cargo test` builds and runs what it can.
#![cfg(feature = "tokio")]

mod support;

use connection_pool::{
    ConnectionManager, ConnectionPool, PoolError, PooledConnection, TokioRuntime, ValidationPolicy,
};
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use support::{Counts, PostgresManager, PostgresServer, RedisManager, RedisServer};

const MAX_SIZE: usize = 4;
const TASKS: usize = 16;
const OPS_PER_TASK: usize = 10;
/// Failed operations a task retries before the test gives up.
const RETRIES: usize = 5;
/// Longer than the default validation threshold (`IdleLongerThan(500 ms)`), so that every idle
/// connection is validated on its next checkout.
const PAST_IDLE_THRESHOLD: Duration = Duration::from_millis(700);

fn pool<M: ConnectionManager>(manager: M, validation: ValidationPolicy) -> ConnectionPool<M> {
    ConnectionPool::builder(manager)
        .max_size(MAX_SIZE)
        .wait_timeout(Duration::from_secs(10))
        .validation(validation)
        .runtime(TokioRuntime::current())
        .build()
        .expect("a valid pool config")
}

/// What one round of load did.
#[derive(Debug)]
struct Load {
    ops: usize,
    /// Operations that failed on a connection the pool handed out, then were retried.
    op_errors: usize,
    /// `get_connection` calls that failed.
    get_errors: usize,
    elapsed: Duration,
}

/// Runs `TASKS` tasks of `OPS_PER_TASK` operations each on `pool`, retrying a failed operation
/// on a fresh checkout; checks the live count against `max_size` after every operation.
async fn load<M, F, Fut>(pool: &ConnectionPool<M>, counts: &Arc<Counts>, op: F) -> Load
where
    M: ConnectionManager,
    F: Fn(PooledConnection<'static, M>, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let op_errors = Arc::new(AtomicUsize::new(0));
    let get_errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (pool, counts, op) = (pool.clone(), Arc::clone(counts), op.clone());
            let (op_errors, get_errors) = (Arc::clone(&op_errors), Arc::clone(&get_errors));
            tokio::spawn(async move {
                for i in 0..OPS_PER_TASK {
                    let n = task * OPS_PER_TASK + i;
                    let mut attempt = 0;
                    loop {
                        attempt += 1;
                        let outcome = match pool.get_connection_owned().await {
                            Ok(conn) => op(conn, n).await.inspect_err(|_| {
                                op_errors.fetch_add(1, Ordering::SeqCst);
                            }),
                            Err(e) => {
                                get_errors.fetch_add(1, Ordering::SeqCst);
                                Err(format!("get_connection: {e}"))
                            }
                        };
                        assert!(
                            counts.live() <= MAX_SIZE,
                            "{} live connections, max_size {MAX_SIZE}",
                            counts.live()
                        );
                        match outcome {
                            Ok(()) => break,
                            Err(e) if attempt <= RETRIES => {
                                eprintln!("task {task} op {i} attempt {attempt}: {e}");
                            }
                            Err(e) => panic!("task {task} op {i} failed {attempt} times: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a load task panicked");
    }
    Load {
        ops: TASKS * OPS_PER_TASK,
        op_errors: op_errors.load(Ordering::SeqCst),
        get_errors: get_errors.load(Ordering::SeqCst),
        elapsed: start.elapsed(),
    }
}

/// Runs a blocking server operation off the runtime's worker, timing it.
async fn blocking(f: impl FnOnce() + Send + 'static) -> Duration {
    let start = Instant::now();
    tokio::task::spawn_blocking(f)
        .await
        .expect("the server operation panicked");
    start.elapsed()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// One Redis operation: `INCR` a shared counter, `SET` and `GET` a key of its own.
async fn redis_op(
    mut conn: PooledConnection<'static, RedisManager>,
    n: usize,
) -> Result<(), String> {
    let key = format!("smoke:{n}");
    let run = async {
        redis::cmd("INCR")
            .arg("smoke:counter")
            .query_async::<i64>(&mut *conn)
            .await?;
        redis::cmd("SET")
            .arg(&key)
            .arg(n)
            .query_async::<()>(&mut *conn)
            .await?;
        redis::cmd("GET")
            .arg(&key)
            .query_async::<usize>(&mut *conn)
            .await
    };
    match run.await {
        Ok(got) if got == n => Ok(()),
        Ok(got) => panic!("GET {key} returned {got}, not {n}"),
        Err(e) => Err(format!("redis: {e}")),
    }
}

async fn redis_counter(server: &RedisServer) -> i64 {
    server
        .admin_query(redis::cmd("GET").arg("smoke:counter"))
        .await
        .expect("GET smoke:counter")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pool_runs_commands_and_recovers_from_a_restart() {
    let Some(server) = support::require(RedisServer::start()) else {
        return;
    };
    let server = Arc::new(server);
    let test_start = Instant::now();
    let expected = (TASKS * OPS_PER_TASK) as i64;

    // Validation on checkout (the default policy) catches the connections a restart killed.
    let manager = RedisManager::new(server.url()).expect("a redis url");
    let counts = manager.counts();
    let validating = pool(manager, ValidationPolicy::default());
    let first = load(&validating, &counts, redis_op).await;
    assert_eq!((first.op_errors, first.get_errors), (0, 0), "{first:?}");
    assert_eq!(redis_counter(&server).await, expected);
    let clients = server.connected_clients().await.unwrap();
    assert!(
        clients <= MAX_SIZE + 1,
        "redis sees {clients} clients: more than {MAX_SIZE} pooled plus the admin link"
    );
    let idle = counts.live();
    let s = Arc::clone(&server);
    let restart = blocking(move || s.restart()).await;
    tokio::time::sleep(PAST_IDLE_THRESHOLD).await;
    let failures = counts.validation_failures();
    let after = load(&validating, &counts, redis_op).await;
    assert_eq!(
        (after.op_errors, after.get_errors),
        (0, 0),
        "validation let a dead connection through: {after:?}"
    );
    assert_eq!(
        counts.validation_failures() - failures,
        idle,
        "each of the {idle} idle connections failed its check once"
    );
    assert_eq!(
        redis_counter(&server).await,
        expected,
        "no persistence: the counter starts again from 0"
    );
    eprintln!(
        "redis validation: {} ops in {} ms, restart {} ms, {idle} dead connections caught by \
         validation, {} ops after the restart in {} ms",
        first.ops,
        ms(first.elapsed),
        ms(restart),
        after.ops,
        ms(after.elapsed)
    );

    // Without validation, the dead connections are handed out once: the command fails, the
    // connection remembers the I/O error, and `has_broken` destroys it on return.
    let manager = RedisManager::new(server.url()).expect("a redis url");
    let unchecked_counts = manager.counts();
    let unchecked = pool(manager, ValidationPolicy::Never);
    let warm = load(&unchecked, &unchecked_counts, redis_op).await;
    assert_eq!((warm.op_errors, warm.get_errors), (0, 0), "{warm:?}");
    let idle = unchecked_counts.live();
    let s = Arc::clone(&server);
    let restart = blocking(move || s.restart()).await;
    let after = load(&unchecked, &unchecked_counts, redis_op).await;
    assert_eq!(after.get_errors, 0, "{after:?}");
    assert!(
        (1..=idle).contains(&after.op_errors),
        "each of the {idle} dead connections fails at most one command: {after:?}"
    );
    assert_eq!(
        unchecked_counts.broken_on_return(),
        after.op_errors,
        "has_broken caught every connection whose command failed"
    );
    eprintln!(
        "redis has_broken: restart {} ms, {} commands failed on dead connections, {} ops \
         after the restart in {} ms",
        ms(restart),
        after.op_errors,
        after.ops,
        ms(after.elapsed)
    );

    // Dropping the pools closes every connection, on our side and on the server's.
    for (name, c) in [("validating", &counts), ("unchecked", &unchecked_counts)] {
        assert!(c.peak() <= MAX_SIZE, "{name}: peak {} live", c.peak());
    }
    drop((validating, unchecked));
    assert_eq!((counts.live(), unchecked_counts.live()), (0, 0));
    support::wait_for(
        "redis sees only the admin link",
        Duration::from_secs(5),
        || async { server.connected_clients().await.unwrap() == 1 },
    )
    .await;
    eprintln!("redis smoke test: {} ms", ms(test_start.elapsed()));
}

/// One PostgreSQL operation: a parameterised query whose answer depends on `n`.
async fn postgres_op(
    conn: PooledConnection<'static, PostgresManager>,
    n: usize,
) -> Result<(), String> {
    let n = i32::try_from(n).expect("a small n");
    match conn.query_one("SELECT $1::int4 + 1", &[&n]).await {
        Ok(row) => {
            let got: i32 = row.get(0);
            assert_eq!(got, n + 1, "SELECT {n} + 1");
            Ok(())
        }
        Err(e) => Err(match e.as_db_error() {
            Some(db) => format!("postgres: {db}"),
            None => format!("postgres: {e}"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pool_runs_queries_and_recovers_from_a_restart() {
    let Some(server) = support::require(PostgresServer::start()) else {
        return;
    };
    let server = Arc::new(server);
    let test_start = Instant::now();

    // Validation on checkout (the default policy) catches the connections a restart killed.
    let manager = PostgresManager::new(server.connection_config());
    let counts = manager.counts();
    let validating = pool(manager, ValidationPolicy::default());
    let first = load(&validating, &counts, postgres_op).await;
    assert_eq!((first.op_errors, first.get_errors), (0, 0), "{first:?}");
    let backends = server.client_backends().await.unwrap();
    assert!(
        backends <= MAX_SIZE,
        "postgres has {backends} client backends for a pool of {MAX_SIZE}"
    );
    let idle = counts.live();
    let s = Arc::clone(&server);
    let restart = blocking(move || s.restart()).await;
    tokio::time::sleep(PAST_IDLE_THRESHOLD).await;
    let failures = counts.validation_failures();
    let after = load(&validating, &counts, postgres_op).await;
    assert_eq!(
        (after.op_errors, after.get_errors),
        (0, 0),
        "validation let a dead connection through: {after:?}"
    );
    assert_eq!(
        counts.validation_failures() - failures,
        idle,
        "each of the {idle} idle connections failed its check once"
    );
    eprintln!(
        "postgres validation: {} ops in {} ms, restart {} ms, {idle} dead connections caught by \
         validation, {} ops after the restart in {} ms",
        first.ops,
        ms(first.elapsed),
        ms(restart),
        after.ops,
        ms(after.elapsed)
    );

    // Without validation, the dead connections are handed out once: the query fails, the
    // client reports itself closed, and `has_broken` destroys it on return.
    let manager = PostgresManager::new(server.connection_config());
    let unchecked_counts = manager.counts();
    let unchecked = pool(manager, ValidationPolicy::Never);
    let warm = load(&unchecked, &unchecked_counts, postgres_op).await;
    assert_eq!((warm.op_errors, warm.get_errors), (0, 0), "{warm:?}");
    let idle = unchecked_counts.live();
    let s = Arc::clone(&server);
    let restart = blocking(move || s.restart()).await;
    let after = load(&unchecked, &unchecked_counts, postgres_op).await;
    assert_eq!(after.get_errors, 0, "{after:?}");
    assert!(
        (1..=idle).contains(&after.op_errors),
        "each of the {idle} dead connections fails at most one query: {after:?}"
    );
    assert_eq!(
        unchecked_counts.broken_on_return(),
        after.op_errors,
        "has_broken caught every connection whose query failed"
    );
    eprintln!(
        "postgres has_broken: restart {} ms, {} queries failed on dead connections, {} ops \
         after the restart in {} ms",
        ms(restart),
        after.op_errors,
        after.ops,
        ms(after.elapsed)
    );

    // pg_terminate_backend kills the backends of the live connections (the validating pool's
    // died with the restart); `has_broken` again destroys each one after its failed query.
    let terminated = server.terminate_backends().await.unwrap();
    assert_eq!(
        terminated,
        unchecked_counts.live(),
        "one backend per live connection"
    );
    let broken = unchecked_counts.broken_on_return();
    let after = load(&unchecked, &unchecked_counts, postgres_op).await;
    assert_eq!(after.get_errors, 0, "{after:?}");
    assert!(
        (1..=terminated).contains(&after.op_errors),
        "each of the {terminated} terminated connections fails at most one query: {after:?}"
    );
    assert_eq!(
        unchecked_counts.broken_on_return() - broken,
        after.op_errors
    );
    eprintln!(
        "postgres pg_terminate_backend: {terminated} backends terminated, {} queries failed, {} \
         ops after it in {} ms",
        after.op_errors,
        after.ops,
        ms(after.elapsed)
    );

    // Dropping the pools closes every connection, on our side and on the server's.
    for (name, c) in [("validating", &counts), ("unchecked", &unchecked_counts)] {
        assert!(c.peak() <= MAX_SIZE, "{name}: peak {} live", c.peak());
    }
    drop((validating, unchecked));
    assert_eq!((counts.live(), unchecked_counts.live()), (0, 0));
    support::wait_for(
        "postgres has no client backend but the admin link",
        Duration::from_secs(5),
        || async { server.client_backends().await.unwrap() == 0 },
    )
    .await;
    eprintln!("postgres smoke test: {} ms", ms(test_start.elapsed()));
}

/// The admin commands the chaos tests build on: `INFO clients`, `CLIENT KILL`, `CONFIG SET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_admin_commands_reach_the_server() {
    let Some(server) = support::require(RedisServer::start()) else {
        return;
    };
    let server = Arc::new(server);
    let manager = RedisManager::new(server.url()).expect("a redis url");
    let counts = manager.counts();
    let unauthed = pool(manager, ValidationPolicy::Always);
    let mut held = Vec::new();
    for _ in 0..MAX_SIZE {
        held.push(unauthed.get_connection().await.unwrap());
    }
    assert_eq!(
        server.connected_clients().await.unwrap(),
        MAX_SIZE + 1,
        "the pool's connections and the admin link"
    );
    drop(held);

    // CLIENT KILL closes the pooled connections but not the admin link; validation replaces
    // them on checkout.
    assert_eq!(server.kill_clients().await.unwrap(), MAX_SIZE);
    let conn = unauthed.get_connection().await.unwrap();
    assert!(
        counts.validation_failures() >= 1,
        "a killed connection failed its check"
    );
    drop(conn);

    // With a password required, a create fails with the server's auth error, not a timeout;
    // the admin link, already authenticated, keeps working.
    server.config_set("requirepass", "s3cret").await.unwrap();
    server.kill_clients().await.unwrap();
    let started = Instant::now();
    match unauthed.get_connection().await {
        Err(PoolError::Backend(e)) => assert!(
            e.to_string().contains("NOAUTH") || e.kind() == redis::ErrorKind::AuthenticationFailed,
            "not an auth error: {e}"
        ),
        Err(e) => panic!("expected the auth error, got: {e}"),
        Ok(_) => panic!("a connection without the password was handed out"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the auth error took {:?}",
        started.elapsed()
    );
    support::wait_for(
        "redis sees only the admin link",
        Duration::from_secs(5),
        || async { server.connected_clients().await.unwrap() == 1 },
    )
    .await;
    let with_password = format!("redis://:s3cret@127.0.0.1:{}/", server.port());
    let authed = pool(
        RedisManager::new(with_password.as_str()).expect("a redis url"),
        ValidationPolicy::Always,
    );
    let mut conn = authed.get_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut *conn).await.unwrap();
    assert_eq!(pong, "PONG");
    drop(conn);

    // CONFIG SET does not survive a restart.
    let s = Arc::clone(&server);
    blocking(move || s.restart()).await;
    let conn = unauthed.get_connection().await.unwrap();
    drop(conn);
    drop((unauthed, authed));
    assert_eq!(counts.live(), 0);
}
