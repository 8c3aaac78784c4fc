//! A pool of Redis connections on smol, with the `redis` crate.
//!
//! `is_valid` sends `PING <nonce>` and checks that the nonce comes back, so a reply meant for
//! another command can never pass for a healthy connection; `has_broken` drops a connection on
//! which a command failed with an I/O error. The example runs 16 tasks through a pool of 4,
//! then kills the pool's connections on the server (`CLIENT KILL ID`, only its own) and shows
//! the checkout validation replacing them.
//!
//! The server: `REDIS_URL` if set (for example `redis://127.0.0.1:6379/`). Otherwise the
//! example starts a throwaway `redis-server` on a free loopback port and removes it at the end;
//! when `redis-server` is not installed (`apt-get install redis-server`) it says so and exits.
//!
//! Run: `cargo run --example redis_example --features smol`

mod support;

use connection_pool::{ConnectionManager, ConnectionPool, SmolRuntime};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
    aio::{ConnectionLike, MultiplexedConnection},
};
use std::{env, error::Error, process::ExitCode, time::Duration};
use support::{RedisServer, StartError};

const MAX_SIZE: usize = 4;
const TASKS: usize = 16;
const INCRS_PER_TASK: usize = 25;

/// Creates multiplexed connections (one TCP connection each) and checks them with a nonce PING.
struct RedisManager {
    client: Client,
    config: AsyncConnectionConfig,
}

impl RedisManager {
    fn new(url: &str) -> RedisResult<Self> {
        Ok(Self {
            client: Client::open(url)?,
            // No connect timeout here: the pool's `connection_timeout` bounds connects.
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(Some(Duration::from_secs(2))),
        })
    }
}

impl ConnectionManager for RedisManager {
    type Connection = RedisConn;
    type Error = RedisError;

    async fn create_connection(&self) -> RedisResult<RedisConn> {
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let mut conn = RedisConn {
            conn,
            broken: false,
        };
        // A server that wants a password says so only on the first command: make it here, so
        // that the pool reports a failed create rather than handing out a useless connection.
        ping_with_nonce(&mut conn).await?;
        Ok(conn)
    }

    async fn is_valid(&self, conn: &mut RedisConn) -> RedisResult<()> {
        ping_with_nonce(conn).await
    }

    fn has_broken(&self, conn: &mut RedisConn) -> bool {
        conn.broken
    }
}

/// `PING nonce`, expecting the nonce back.
async fn ping_with_nonce(conn: &mut RedisConn) -> RedisResult<()> {
    let nonce = format!("{:016x}", fastrand::u64(..));
    let echo: String = redis::cmd("PING").arg(&nonce).query_async(conn).await?;
    if echo == nonce {
        Ok(())
    } else {
        Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "PING did not echo its nonce",
            format!("sent {nonce:?}, got {echo:?}"),
        )))
    }
}

/// A pooled connection: run commands with `query_async(&mut *conn)`. It notes a command that
/// failed with an I/O error, for `has_broken`.
struct RedisConn {
    conn: MultiplexedConnection,
    broken: bool,
}

impl RedisConn {
    fn note<T>(&mut self, result: &RedisResult<T>) {
        if let Err(e) = result {
            self.broken |= e.is_io_error() || e.is_unrecoverable_error() || e.is_timeout();
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.note(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// `TASKS` tasks, each incrementing `counter` `INCRS_PER_TASK` times, one checkout per INCR.
async fn load(pool: &ConnectionPool<RedisManager>, counter: &str) -> Result<i64, Box<dyn Error>> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (pool, counter) = (pool.clone(), counter.to_owned());
            smol::spawn(async move {
                for _ in 0..INCRS_PER_TASK {
                    let mut conn = pool.get_connection().await?;
                    redis::cmd("INCR")
                        .arg(&counter)
                        .query_async::<i64>(&mut *conn)
                        .await?;
                }
                Ok::<_, Box<dyn Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e as Box<dyn Error>)?;
    }
    let mut conn = pool.get_connection().await?;
    Ok(redis::cmd("GET")
        .arg(counter)
        .query_async(&mut *conn)
        .await?)
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    // What the output shows of the URL: never its password.
    let shown = support::redacted(url);
    // This build of `redis` also has tokio support (for the tests): use smol, whose runtime
    // this is.
    let _ = redis::aio::prefer_smol();
    let pool = ConnectionPool::builder(RedisManager::new(url)?)
        .name("redis")
        .max_size(MAX_SIZE)
        .wait_timeout(Duration::from_secs(5))
        .runtime(SmolRuntime::new())
        .build()?;

    // The first checkout tells whether anything answers.
    let version = {
        let mut conn = pool.get_connection().await.map_err(|e| {
            format!(
                "nothing usable answers at {shown}: {e}\nstart Redis there, or point REDIS_URL \
                 elsewhere"
            )
        })?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut *conn)
            .await?;
        info.lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("(unknown version)")
            .trim()
            .to_owned()
    };
    println!("Redis {version} answers at {shown}; pool of {MAX_SIZE}, validated with PING <nonce>");

    // Keys of this run only, removed at the end: the server may be yours.
    let counter = format!("connection-pool-example:{:016x}:counter", fastrand::u64(..));
    let total = load(&pool, &counter).await?;
    let status = pool.status();
    println!(
        "{TASKS} tasks x {INCRS_PER_TASK} INCRs through {MAX_SIZE} connections: counter = {total} \
         ({} connections created, {} checkouts waited)",
        status.counters.created, status.counters.waited
    );

    // Kill the pool's own connections on the server side, as a restart or a server-side idle
    // timeout would. The guards are dropped first, so they sit idle in the pool, looking fine.
    let mut ids = Vec::new();
    {
        let mut held = Vec::new();
        for _ in 0..MAX_SIZE {
            held.push(pool.get_connection().await?);
        }
        for conn in &mut held {
            ids.push(
                redis::cmd("CLIENT")
                    .arg("ID")
                    .query_async::<i64>(&mut **conn)
                    .await?,
            );
        }
    }
    let mut admin = pool
        .manager()
        .client
        .get_multiplexed_async_connection()
        .await?;
    let mut killed = 0;
    for id in &ids {
        killed += redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async::<i64>(&mut admin)
            .await?;
    }
    println!("killed the pool's {killed} idle connections on the server (CLIENT KILL ID)");

    // Past the validation threshold (500 ms idle), each checkout PINGs its connection first.
    smol::Timer::after(Duration::from_millis(600)).await;
    let total = load(&pool, &counter).await?;
    let status = pool.status();
    println!(
        "the same load again: counter = {total}; checkout validation caught {} dead connections \
         and the pool replaced them ({} created in all)",
        status.counters.destroyed.validation_failed, status.counters.created
    );

    redis::cmd("DEL")
        .arg(&counter)
        .query_async::<i64>(&mut admin)
        .await?;
    pool.close();
    Ok(())
}

fn main() -> ExitCode {
    let (url, _server) = match env::var("REDIS_URL") {
        Ok(url) => (url, None),
        Err(_) => match RedisServer::start() {
            Ok(server) => {
                println!(
                    "started a throwaway redis-server at {} in {} (set REDIS_URL to use your own)",
                    server.url(),
                    server.dir().display()
                );
                (server.url(), Some(server))
            }
            Err(e @ StartError::Missing { .. }) => {
                println!(
                    "{e}, and REDIS_URL is not set: there is no Redis to run against.\n\
                     Install redis-server, or point REDIS_URL at a server \
                     (REDIS_URL=redis://127.0.0.1:6379/)."
                );
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("could not start redis-server: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match smol::block_on(run(&url)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
