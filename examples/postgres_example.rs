//! A pool of PostgreSQL connections on tokio, with `tokio-postgres`.
//!
//! `is_valid` runs `SELECT 1`; `has_broken` drops a connection whose client reports itself
//! closed. The example runs 16 tasks inserting rows through a pool of 4, then terminates the
//! pool's idle sessions on the server (`pg_terminate_backend`, only its own, found by
//! `application_name`) and shows the checkout validation replacing them.
//!
//! The server: `DATABASE_URL` if set (for example
//! `postgresql://postgres:secret@127.0.0.1:5432/postgres`; Debian's packaged cluster wants a
//! password on 127.0.0.1, see the README). Otherwise the example creates a throwaway
//! cluster with `initdb` and serves it with `pg_ctl` on a free loopback port, removing it at the
//! end; when PostgreSQL is not installed (`apt-get install postgresql-15`) it says so and
//! exits.
//!
//! Run: `cargo run --example postgres_example --features tokio`

mod support;

use connection_pool::{ConnectionManager, ConnectionPool, TokioRuntime};
use std::{env, error::Error, process::ExitCode, str::FromStr, time::Duration};
use support::{PostgresServer, StartError};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

const MAX_SIZE: usize = 4;
const TASKS: usize = 16;
const INSERTS_PER_TASK: usize = 25;

/// The `application_name` of the pool's sessions, so that the example can find its own.
const APP: &str = "connection-pool-example";

/// Connects with a `tokio_postgres::Config`, without TLS, and checks with `SELECT 1`.
struct PostgresManager {
    config: Config,
}

impl ConnectionManager for PostgresManager {
    type Connection = Client;
    type Error = tokio_postgres::Error;

    async fn create_connection(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection task ends once the client is dropped or the socket dies.
        tokio::spawn(connection);
        Ok(client)
    }

    async fn is_valid(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        client.simple_query("SELECT 1").await.map(drop)
    }

    fn has_broken(&self, client: &mut Client) -> bool {
        client.is_closed()
    }
}

/// The first column of the first row of `sql`'s result, as a number.
async fn count(client: &Client, sql: &str) -> Result<i64, Box<dyn Error>> {
    let messages = client.simple_query(sql).await?;
    let value = messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0),
        _ => None,
    });
    Ok(value.ok_or("no row")?.parse()?)
}

/// `TASKS` tasks, each inserting `INSERTS_PER_TASK` rows into `table`, one checkout per row;
/// returns the table's row count.
async fn load(pool: &ConnectionPool<PostgresManager>, table: &str) -> Result<i64, Box<dyn Error>> {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let (pool, insert) = (
                pool.clone(),
                format!("INSERT INTO {table} (task) VALUES ($1)"),
            );
            tokio::spawn(async move {
                for _ in 0..INSERTS_PER_TASK {
                    let client = pool.get_connection().await?;
                    client.execute(&insert, &[&(task as i32)]).await?;
                }
                Ok::<_, Box<dyn Error + Send + Sync>>(())
            })
        })
        .collect();
    for task in tasks {
        task.await?.map_err(|e| e as Box<dyn Error>)?;
    }
    let client = pool.get_connection().await?;
    count(&client, &format!("SELECT count(*) FROM {table}")).await
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    // What the output shows of the URL: never its password.
    let shown = support::redacted(url);
    let mut config = Config::from_str(url)?;
    config.application_name(APP);
    let pool = ConnectionPool::builder(PostgresManager { config })
        .name("postgres")
        .max_size(MAX_SIZE)
        .wait_timeout(Duration::from_secs(5))
        .runtime(TokioRuntime::current())
        .build()?;

    // The first checkout tells whether anything answers.
    let table = format!("connection_pool_example_{:016x}", fastrand::u64(..));
    {
        let client = pool.get_connection().await.map_err(|e| {
            format!(
                "nothing usable answers at {shown}: {}\nstart PostgreSQL there, or point \
                 DATABASE_URL elsewhere",
                chain(&e)
            )
        })?;
        let version = client.query_one("SHOW server_version", &[]).await?;
        println!(
            "PostgreSQL {} answers at {shown}; pool of {MAX_SIZE}, validated with SELECT 1",
            version.get::<_, String>(0)
        );
        // A table of this run only, dropped at the end: the server may be yours.
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id serial PRIMARY KEY, task int)"
            ))
            .await?;
    }

    let rows = load(&pool, &table).await?;
    let status = pool.status();
    println!(
        "{TASKS} tasks x {INSERTS_PER_TASK} INSERTs through {MAX_SIZE} connections: {rows} rows \
         ({} connections created, {} checkouts waited)",
        status.counters.created, status.counters.waited
    );

    // End the pool's idle sessions from the server side, as a restart or an idle-session
    // timeout would; the session that asks is spared and goes back to the pool.
    let terminated = {
        let client = pool.get_connection().await?;
        // The function runs in the aggregate, so only on the rows the WHERE clause kept: in a
        // WHERE clause it could run before `pid <> pg_backend_pid()` and end this session too.
        count(
            &client,
            &format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = '{APP}' AND pid <> pg_backend_pid()"
            ),
        )
        .await?
    };
    println!("terminated {terminated} of the pool's idle sessions (pg_terminate_backend)");

    // Past the validation threshold (500 ms idle), each checkout runs SELECT 1 first.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rows = load(&pool, &table).await?;
    let status = pool.status();
    println!(
        "the same load again: {rows} rows; checkout validation caught {} dead connections and \
         the pool replaced them ({} created in all)",
        status.counters.destroyed.validation_failed, status.counters.created
    );

    let client = pool.get_connection().await?;
    client.batch_execute(&format!("DROP TABLE {table}")).await?;
    drop(client);
    pool.close();
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let (url, server) = match env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            // initdb and pg_ctl block for a second or two: off the runtime's threads.
            match tokio::task::spawn_blocking(PostgresServer::start).await {
                Ok(Ok(server)) => {
                    println!(
                        "started a throwaway PostgreSQL at {} in {} (set DATABASE_URL to use \
                         your own)",
                        server.url(),
                        server.dir().display()
                    );
                    (server.url(), Some(server))
                }
                Ok(Err(e @ StartError::Missing { .. })) => {
                    println!(
                        "{e}, and DATABASE_URL is not set: there is no PostgreSQL to run \
                         against.\nInstall PostgreSQL, or point DATABASE_URL at a server \
                         (DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres)."
                    );
                    return ExitCode::SUCCESS;
                }
                Ok(Err(e)) => {
                    eprintln!("could not start PostgreSQL: {e}");
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("could not start PostgreSQL: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let outcome = run(&url).await;
    if let Some(server) = server {
        // Stopping the server blocks until it is down: off the runtime's threads too.
        let _ = tokio::task::spawn_blocking(move || drop(server)).await;
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its sources, `: `-separated (tokio-postgres puts the server's message in a source).
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        // `PoolError` already shows its backend error, which is also its source.
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(&format!(": {part}"));
        }
        source = e.source();
    }
    text
}
