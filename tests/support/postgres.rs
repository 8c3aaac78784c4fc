//! A real PostgreSQL server for the tests, and a pool manager for it.

use super::{
    counts::{Counts, LiveToken},
    servers::{self, ServerUser, StartError},
};
use connection_pool::ConnectionManager;
use std::{
    fmt, fs,
    io::Write,
    net::SocketAddr,
    ops::Deref,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio_postgres::{
    Client, Config, Error, NoTls, Row, SimpleQueryMessage, ToStatement, config::SslMode,
    error::Severity, types::ToSql,
};

/// Where Debian puts PostgreSQL 15, searched before `PATH`.
const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser `initdb` creates; connections use trust authentication on loopback.
const SUPERUSER: &str = "postgres";

/// The `application_name` of the admin link, so that counts can leave it out.
const ADMIN_APP: &str = "connection-pool-admin";

/// The `application_name` of connections made with [`PostgresServer::connection_config`].
pub const TEST_APP: &str = "connection-pool-test";

/// Bound on the admin link's connect, so that a test never hangs on it.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Seconds `pg_ctl` waits for a start or a stop.
const PG_CTL_WAIT_SECS: &str = "30";

/// A PostgreSQL cluster of this test (`initdb` in a temp dir), served on a loopback port of its
/// own, no Unix socket, and removed with it.
///
/// It runs as the unprivileged [`ServerUser`] when the tests run as root. Durability is off
/// (`fsync`, `synchronous_commit`, `full_page_writes`): the data is thrown away anyway.
/// [`stop`](Self::stop) is `pg_ctl stop -m immediate` (backends die without a goodbye, the next
/// start runs crash recovery); [`restart`](Self::restart) starts it again on the same port.
/// Dropping it stops the server (SIGKILL to the postmaster if `pg_ctl` cannot) and removes the
/// dir.
pub struct PostgresServer {
    port: u16,
    /// Holds `pg_ctl`, `initdb` and `postgres`.
    bin: PathBuf,
    user: Option<ServerUser>,
    data: PathBuf,
    /// The server's own log (`pg_ctl -l`).
    log: PathBuf,
    /// What `initdb` and `pg_ctl` print.
    tool_log: PathBuf,
    state: Mutex<State>,
    /// Declared last so that it is removed after the server is gone.
    dir: tempfile::TempDir,
}

/// What changes while the server runs.
#[derive(Default)]
struct State {
    /// Whether this handle started the server and has not stopped it since.
    running: bool,
    /// The admin link, made on first use and dropped on stop or once closed.
    admin: Option<Arc<Client>>,
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("running", &self.state().running)
            .finish()
    }
}

impl PostgresServer {
    /// Creates a cluster with `initdb`, starts it with `pg_ctl` on a free loopback port and
    /// waits until it accepts connections.
    ///
    /// [`StartError::Missing`] when the PostgreSQL binaries are not installed: pass the result
    /// to [`require`](super::require).
    pub fn start() -> Result<Self, StartError> {
        let bin = find_bin_dir().ok_or(StartError::Missing {
            what: format!(
                "PostgreSQL (initdb, pg_ctl and postgres; looked in {PG15_BIN} and PATH)"
            ),
            install: "apt-get install -y postgresql-15",
        })?;
        let user = servers::server_user()?;
        let dir = servers::server_dir("connection-pool-postgres-", user.as_ref())?;
        let mut server = PostgresServer {
            port: 0,
            bin,
            user,
            data: dir.path().join("data"),
            log: dir.path().join("postgres.log"),
            tool_log: dir.path().join("tools.log"),
            state: Mutex::new(State::default()),
            dir,
        };
        server.init()?;
        let mut last_error = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..3 {
            server.port = servers::free_port()?;
            let before = fs::read_to_string(&server.log).map_or(0, |log| log.len());
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_taken = fs::read_to_string(&server.log).is_ok_and(|log| {
                        log[before..].contains("could not bind")
                            || log[before..].contains("Address already in use")
                    });
                    if !port_taken {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three tries failed"))
    }

    fn tool(&self, name: &str) -> Result<Command, StartError> {
        servers::server_command(
            &self.bin.join(name),
            self.user.as_ref(),
            self.dir.path(),
            &self.tool_log,
        )
    }

    /// `initdb`, then the settings every start uses.
    fn init(&self) -> Result<(), StartError> {
        let mut initdb = self.tool("initdb")?;
        initdb
            .arg("--pgdata")
            .arg(&self.data)
            .args(["--username", SUPERUSER, "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"]);
        servers::run(initdb, "initdb", &self.tool_log)?;
        // Appending keeps the file's owner (the server's user).
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        conf.write_all(
            b"\n# connection-pool tests\n\
              listen_addresses = '127.0.0.1'\n\
              unix_socket_directories = ''\n\
              fsync = off\n\
              synchronous_commit = off\n\
              full_page_writes = off\n",
        )?;
        Ok(())
    }

    /// `pg_ctl start`, waiting until the server accepts connections. The state lock is not
    /// held meanwhile, so admin calls never wait for a start.
    fn launch(&self) -> Result<(), StartError> {
        debug_assert!(!self.state().running, "launch while running");
        let mut start = self.tool("pg_ctl")?;
        start
            .arg("start")
            .arg("--pgdata")
            .arg(&self.data)
            .arg("--log")
            .arg(&self.log)
            .args(["--wait", "--timeout", PG_CTL_WAIT_SECS, "--silent"])
            .arg("-o")
            .arg(format!("-p {}", self.port));
        match servers::run(start, "pg_ctl start", &self.tool_log) {
            Ok(_) => {
                self.state().running = true;
                Ok(())
            }
            Err(e) => Err(StartError::Failed(format!(
                "PostgreSQL on port {}: {e}\n{}",
                self.port,
                servers::log_tail(&self.log)
            ))),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The loopback port, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// How to reach the server as its superuser, database `postgres`, without TLS, with
    /// `application_name` [`TEST_APP`].
    pub fn connection_config(&self) -> Config {
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(SUPERUSER)
            .dbname("postgres")
            .ssl_mode(SslMode::Disable)
            .application_name(TEST_APP);
        config
    }

    /// The server's temp dir (data dir, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        servers::log_tail(&self.log)
    }

    /// `pg_ctl stop -m immediate`: every backend is killed at once, clients see their
    /// connection closed. Blocking; a no-op when it is not running; panics if `pg_ctl` fails.
    pub fn stop(&self) {
        let (running, admin) = {
            let mut state = self.state();
            (std::mem::take(&mut state.running), state.admin.take())
        };
        drop(admin);
        if running {
            if let Err(e) = self.pg_ctl_stop() {
                panic!("stopping PostgreSQL: {e}");
            }
        }
    }

    fn pg_ctl_stop(&self) -> Result<(), StartError> {
        let mut stop = self.tool("pg_ctl")?;
        stop.arg("stop")
            .arg("--pgdata")
            .arg(&self.data)
            .args([
                "--mode",
                "immediate",
                "--wait",
                "--timeout",
                PG_CTL_WAIT_SECS,
            ])
            .arg("--silent");
        servers::run(stop, "pg_ctl stop", &self.tool_log).map(drop)
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until
    /// it accepts connections; it runs crash recovery after an immediate stop. Blocking; panics
    /// if it does not come up.
    pub fn restart(&self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("restarting PostgreSQL: {e}");
        }
    }

    /// The admin link, made on first use; a closed one is replaced.
    async fn admin(&self) -> Result<Arc<Client>, Error> {
        if let Some(admin) = &self.state().admin {
            if !admin.is_closed() {
                return Ok(Arc::clone(admin));
            }
        }
        let mut config = self.connection_config();
        config
            .application_name(ADMIN_APP)
            .connect_timeout(ADMIN_TIMEOUT);
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(connection);
        let client = Arc::new(client);
        self.state().admin = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Runs `sql` (one or more statements, no parameters) on the admin link: a connection of
    /// its own, kept open between calls and left out of [`client_backends`](Self::client_backends).
    pub async fn admin_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.admin().await?.simple_query(sql).await
    }

    /// Runs `sql` on the admin link and reads the first column of its first row as a number.
    async fn admin_count(&self, sql: &str) -> Result<usize, Error> {
        let messages = self.admin_query(sql).await?;
        let value = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        });
        let value = value.unwrap_or_else(|| panic!("no row from {sql:?}"));
        Ok(value
            .parse()
            .unwrap_or_else(|_| panic!("{sql:?} returned {value:?}, not a count")))
    }

    /// How many client backends `pg_stat_activity` shows, admin links left out: the server's
    /// own count of the pool's connections.
    pub async fn client_backends(&self) -> Result<usize, Error> {
        self.admin_count(&format!(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND application_name IS DISTINCT FROM '{ADMIN_APP}'"
        ))
        .await
    }

    /// `pg_terminate_backend` on every client backend but the admin links; returns how many it
    /// signalled.
    pub async fn terminate_backends(&self) -> Result<usize, Error> {
        self.admin_count(&format!(
            // In FILTER, not WHERE: SQL does not promise to evaluate WHERE conditions left to
            // right, so the server could signal the admin session before excluding it.
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND application_name IS DISTINCT FROM '{ADMIN_APP}'"
        ))
        .await
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.admin = None;
        state.running = false;
        // Whatever this handle believes (a stop or start may have panicked half-way), a
        // postmaster.pid means a server may be running.
        let Ok(pid_file) = fs::read_to_string(self.data.join("postmaster.pid")) else {
            return;
        };
        if self.pg_ctl_stop().is_err() {
            // The postmaster's pid is the first line of postmaster.pid.
            let pid = pid_file
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                // The shell's own `kill`: no procps needed.
                let _ = Command::new("sh")
                    .args(["-c", "kill -KILL \"$0\"", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: Debian's PostgreSQL 15 first, then
/// wherever `pg_ctl` is on `PATH` (following symlinks, which is how Debian links them).
fn find_bin_dir() -> Option<PathBuf> {
    let pg_ctl = servers::find_binary("pg_ctl", &[PathBuf::from(PG15_BIN)])?;
    let dir = fs::canonicalize(pg_ctl).ok()?.parent()?.to_path_buf();
    ["initdb", "postgres"]
        .iter()
        .all(|tool| servers::is_executable(&dir.join(tool)))
        .then_some(dir)
}

/// A pool manager for PostgreSQL over `tokio-postgres` (tokio), without TLS.
///
/// `is_valid` runs `SELECT 1` and checks the answer. `has_broken` reads two cheap signals: the
/// connection's own flag, set when a query through [`PostgresConn`]'s methods failed in a way
/// that ends the session, and [`Client::is_closed`], which turns true once the connection task
/// has seen the socket close. Its [`Counts`] are kept independently of the pool.
#[derive(Debug)]
pub struct PostgresManager {
    config: Config,
    counts: Arc<Counts>,
}

impl PostgresManager {
    /// A manager connecting with `config` (see [`PostgresServer::connection_config`]).
    ///
    /// Set no `connect_timeout` in it to let the pool's `connection_timeout` be the one that
    /// acts.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            counts: Counts::new(),
        }
    }

    /// The counts of this manager's connections, shared.
    pub fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }
}

impl ConnectionManager for PostgresManager {
    type Connection = PostgresConn;
    type Error = Error;

    async fn create_connection(&self) -> Result<PostgresConn, Error> {
        let connect = async {
            let (client, connection) = self.config.connect(NoTls).await?;
            // The connection task ends once the client is dropped or the socket dies.
            tokio::spawn(connection);
            Ok(client)
        };
        let (client, live) = self.counts.track_create(connect).await?;
        Ok(PostgresConn {
            client,
            broken: AtomicBool::new(false),
            _live: live,
        })
    }

    async fn is_valid(&self, conn: &mut PostgresConn) -> Result<(), Error> {
        let result = conn.simple_query("SELECT 1").await.map(|messages| {
            let one = messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(row) => row.get(0),
                _ => None,
            });
            // The protocol layer already checked the reply's shape; a wrong value would be a
            // bug in the client or the server, not a dead connection.
            assert_eq!(one, Some("1"), "SELECT 1 answered {one:?}");
        });
        self.counts.record_validation(result)
    }

    fn has_broken(&self, conn: &mut PostgresConn) -> bool {
        self.counts.record_broken(conn.is_broken())
    }
}

/// Whether `e` means the session is over: the connection closed, an I/O error, or a FATAL
/// (or PANIC) report from the server, such as `pg_terminate_backend`'s "terminating connection
/// due to administrator command".
///
/// After a FATAL report the server closes the socket, but the client learns of it a moment
/// later: a connection returned right after such an error still says `is_closed() == false`.
fn ends_session(e: &Error) -> bool {
    let fatal = e.as_db_error().is_some_and(|db| {
        matches!(
            db.parsed_severity(),
            Some(Severity::Fatal | Severity::Panic)
        )
    });
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    e.is_closed() || fatal || io
}

/// A pooled PostgreSQL connection: derefs to [`tokio_postgres::Client`].
///
/// Its own `query`, `query_one`, `execute`, `simple_query` and `batch_execute` (which shadow
/// the client's) remember an error that ended the session, for the manager's `has_broken`;
/// calls made through the deref are seen only once the client reports itself closed, unless
/// their result is passed through [`note`](Self::note).
pub struct PostgresConn {
    client: Client,
    /// Set once a query failed in a way that ends the session.
    broken: AtomicBool,
    _live: LiveToken,
}

impl fmt::Debug for PostgresConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConn")
            .field("broken", &self.broken)
            .field("closed", &self.client.is_closed())
            .finish_non_exhaustive()
    }
}

impl PostgresConn {
    /// The connection's number, unique among the connections of its manager.
    pub fn id(&self) -> u64 {
        self._live.id()
    }

    /// Whether the session is known to be over: a query failed fatally, or the client closed.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed) || self.client.is_closed()
    }

    /// Passes `result` through, remembering an error that ended the session.
    pub fn note<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result {
            if ends_session(e) {
                self.broken.store(true, Ordering::Relaxed);
            }
        }
        result
    }

    /// [`Client::query`], remembering a fatal error.
    pub async fn query<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.note(self.client.query(statement, params).await)
    }

    /// [`Client::query_one`], remembering a fatal error.
    pub async fn query_one<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.note(self.client.query_one(statement, params).await)
    }

    /// [`Client::execute`], remembering a fatal error.
    pub async fn execute<T>(
        &self,
        statement: &T,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error>
    where
        T: ?Sized + ToStatement,
    {
        self.note(self.client.execute(statement, params).await)
    }

    /// [`Client::simple_query`], remembering a fatal error.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        self.note(self.client.simple_query(sql).await)
    }

    /// [`Client::batch_execute`], remembering a fatal error.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        self.note(self.client.batch_execute(sql).await)
    }
}

impl Deref for PostgresConn {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}
