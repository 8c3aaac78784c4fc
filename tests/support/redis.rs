//! A real `redis-server` for the tests, and a pool manager for it.

use super::{
    counts::{Counts, LiveToken},
    servers::{self, ServerUser, StartError},
};
use connection_pool::ConnectionManager;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisError, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, MultiplexedConnection},
};
use std::{
    fmt, fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Child,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

/// How long a start may take before it counts as failed.
const START_LIMIT: Duration = Duration::from_secs(10);

/// Bound on each admin connect and command, so that a test never hangs on its own admin link.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` process of this test, on a loopback port of its own, in a temp dir that
/// goes away with it.
///
/// It runs as the unprivileged [`ServerUser`] when the tests run as root, with no persistence.
/// [`stop`](Self::stop) kills it with SIGKILL; [`restart`](Self::restart) starts it again on the
/// same port, with the settings of its config file: a `CONFIG SET` does not survive a restart.
/// Dropping it kills the process and removes the dir.
pub struct RedisServer {
    port: u16,
    binary: PathBuf,
    user: Option<ServerUser>,
    /// The config file every (re)start reads.
    config: PathBuf,
    /// The server's stdout and stderr, appended across restarts.
    log: PathBuf,
    state: Mutex<State>,
    /// Declared last so that it is removed after the process is gone.
    dir: tempfile::TempDir,
}

/// What changes while the server runs.
#[derive(Default)]
struct State {
    /// The running process; `None` while stopped.
    child: Option<Child>,
    /// The password a `CONFIG SET requirepass` set since the last start.
    password: Option<String>,
    /// The admin link, made on first use and dropped on stop or on an I/O error.
    admin: Option<MultiplexedConnection>,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("running", &self.is_running())
            .finish()
    }
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    ///
    /// [`StartError::Missing`] when `redis-server` is not installed: pass the result to
    /// [`require`](super::require).
    pub fn start() -> Result<Self, StartError> {
        let binary = servers::find_binary(
            "redis-server",
            &[PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")],
        )
        .ok_or(StartError::Missing {
            what: "redis-server (looked in /usr/bin, /usr/local/bin and PATH)".to_owned(),
            install: "apt-get install -y redis-server",
        })?;
        let user = servers::server_user()?;
        let dir = servers::server_dir("connection-pool-redis-", user.as_ref())?;
        let mut server = RedisServer {
            port: 0,
            binary,
            user,
            config: dir.path().join("redis.conf"),
            log: dir.path().join("redis.log"),
            state: Mutex::new(State::default()),
            dir,
        };
        let mut last_error = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..3 {
            server.port = servers::free_port()?;
            server.write_config()?;
            let before = fs::read_to_string(&server.log).map_or(0, |log| log.len());
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_taken = fs::read_to_string(&server.log)
                        .is_ok_and(|log| log[before..].contains("Address already in use"));
                    if !port_taken {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three tries failed"))
    }

    fn write_config(&self) -> Result<(), StartError> {
        let config = format!(
            "port {port}\n\
             bind 127.0.0.1\n\
             daemonize no\n\
             dir {dir}\n\
             logfile \"\"\n\
             save \"\"\n\
             appendonly no\n",
            port = self.port,
            dir = self.dir.path().display(),
        );
        fs::write(&self.config, config)?;
        Ok(())
    }

    /// Spawns the process and waits until it answers `PING`; on failure it is killed and
    /// reaped. The state lock is not held meanwhile, so admin calls never wait for a start.
    fn launch(&self) -> Result<(), StartError> {
        debug_assert!(self.state().child.is_none(), "launch while running");
        let mut command =
            servers::server_command(&self.binary, self.user.as_ref(), self.dir.path(), &self.log)?;
        command.arg(&self.config);
        let mut child = command.spawn().map_err(|e| {
            StartError::Failed(format!("cannot run {}: {e}", self.binary.display()))
        })?;
        let addr = self.addr();
        let ready = servers::wait_until(START_LIMIT, || {
            if let Some(status) = child.try_wait()? {
                return Err(StartError::Failed(format!("redis-server exited: {status}")));
            }
            Ok(answers_ping(addr))
        });
        match ready {
            Ok(()) => {
                let mut state = self.state();
                state.child = Some(child);
                // A fresh process has only its config file's settings.
                state.password = None;
                state.admin = None;
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(StartError::Failed(format!(
                    "redis-server on port {}: {e}\n{}",
                    self.port,
                    servers::log_tail(&self.log)
                )))
            }
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

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// How to reach the server, without a password.
    pub fn connection_info(&self) -> ConnectionInfo {
        ("127.0.0.1", self.port)
            .into_connection_info()
            .expect("a host and port always make a connection info")
    }

    /// The server's temp dir (config, log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        servers::log_tail(&self.log)
    }

    /// Whether the process is running (it may have been killed from outside).
    pub fn is_running(&self) -> bool {
        let mut state = self.state();
        match state.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                state.child = None;
                false
            }
            None => false,
        }
    }

    /// Kills the server with SIGKILL (no shutdown, clients see a reset or EOF) and reaps it.
    /// Blocking; a no-op when it is not running.
    pub fn stop(&self) {
        let (child, admin) = {
            let mut state = self.state();
            (state.child.take(), state.admin.take())
        };
        drop(admin);
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it runs) and waits until
    /// it answers `PING`. Blocking; panics if it does not come up.
    pub fn restart(&self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("restarting redis-server: {e}");
        }
    }

    /// The admin link, made on first use (with the current password).
    async fn admin(&self) -> RedisResult<MultiplexedConnection> {
        let password = {
            let state = self.state();
            if let Some(admin) = &state.admin {
                return Ok(admin.clone());
            }
            state.password.clone()
        };
        let mut info = self.connection_info();
        if let Some(password) = password {
            info = info.set_redis_settings(RedisConnectionInfo::default().set_password(password));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(ADMIN_TIMEOUT))
            .set_response_timeout(Some(ADMIN_TIMEOUT));
        let admin = Client::open(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.state().admin = Some(admin.clone());
        Ok(admin)
    }

    /// Runs `cmd` on the admin link: one connection of its own, kept open between calls and
    /// counted in `connected_clients`. A link that died (restart, server `timeout`, killed) is
    /// replaced and the command sent once more.
    pub async fn admin_query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut admin = self.admin().await?;
        match cmd.query_async(&mut admin).await {
            Err(e) if e.is_io_error() || e.is_unrecoverable_error() => {
                self.state().admin = None;
                cmd.query_async(&mut self.admin().await?).await
            }
            other => other,
        }
    }

    /// `CONFIG SET parameter value`. Setting `requirepass` also makes the admin link use the new
    /// password for its next connection; a restart forgets both.
    pub async fn config_set(&self, parameter: &str, value: &str) -> RedisResult<()> {
        self.admin_query::<()>(redis::cmd("CONFIG").arg("SET").arg(parameter).arg(value))
            .await?;
        if parameter.eq_ignore_ascii_case("requirepass") {
            self.state().password = (!value.is_empty()).then(|| value.to_owned());
        }
        Ok(())
    }

    /// `CLIENT KILL TYPE normal SKIPME yes`: closes every client connection but the admin
    /// link; returns how many were closed.
    pub async fn kill_clients(&self) -> RedisResult<usize> {
        self.admin_query(
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes"),
        )
        .await
    }

    /// `connected_clients` from `INFO clients`: the server's own count of client connections,
    /// the admin link included.
    pub async fn connected_clients(&self) -> RedisResult<usize> {
        let info: String = self.admin_query(redis::cmd("INFO").arg("clients")).await?;
        info.lines()
            .find_map(|line| line.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| {
                RedisError::from((
                    ErrorKind::UnexpectedReturnType,
                    "INFO clients has no connected_clients line",
                    info.clone(),
                ))
            })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether something on `addr` answers a RESP `PING` with `+PONG`.
fn answers_ping(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.set_read_timeout(Some(Duration::from_millis(500)))?;
        stream.write_all(b"PING\r\n")?;
        let mut reply = [0; 7];
        stream.read_exact(&mut reply)?;
        Ok(&reply == b"+PONG\r\n")
    };
    attempt().unwrap_or(false)
}

/// A pool manager for Redis over the `redis` crate's multiplexed async connection (tokio).
///
/// Each pooled connection is a TCP connection of its own. `is_valid` sends `PING` with a random
/// nonce and checks that the server echoes it; `has_broken` reports a connection on which a
/// command failed with an I/O error (see [`RedisConn`]). Its [`Counts`] are kept independently
/// of the pool.
///
/// With [`auth_errors_permanent`](Self::auth_errors_permanent), `is_permanent_error` classifies
/// authentication errors ([`is_auth_error`]) as permanent, so that the pool fails calls fast
/// with [`PoolError::Rejected`](connection_pool::PoolError::Rejected) while the password is
/// wrong; without it every error is transient.
pub struct RedisManager {
    client: Client,
    config: AsyncConnectionConfig,
    counts: Arc<Counts>,
    /// Whether `is_permanent_error` says yes to an authentication error.
    auth_errors_permanent: bool,
}

impl fmt::Debug for RedisManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisManager")
            .field("server", self.client.get_connection_info().addr())
            .field("counts", &self.counts)
            .field("auth_errors_permanent", &self.auth_errors_permanent)
            .finish()
    }
}

impl RedisManager {
    /// The response timeout of [`RedisManager::new`]: a command on a server that stopped
    /// answering fails after this long.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

    /// A manager for the server at `info` (a `redis://` URL, a [`ConnectionInfo`], ...).
    ///
    /// Connects have no timeout of their own, so the pool's `connection_timeout` is the one
    /// that acts; each command times out after [`RESPONSE_TIMEOUT`](Self::RESPONSE_TIMEOUT).
    pub fn new(info: impl IntoConnectionInfo) -> RedisResult<Self> {
        Ok(Self {
            client: Client::open(info)?,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(None)
                .set_response_timeout(Some(Self::RESPONSE_TIMEOUT)),
            counts: Counts::new(),
            auth_errors_permanent: false,
        })
    }

    /// Classifies authentication errors ([`is_auth_error`]) as permanent, so that the pool
    /// rejects calls at once while the server refuses the password, instead of retrying.
    pub fn auth_errors_permanent(mut self) -> Self {
        self.auth_errors_permanent = true;
        self
    }

    /// Replaces the connection settings (timeouts) of new connections.
    pub fn with_config(mut self, config: AsyncConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// The counts of this manager's connections, shared.
    pub fn counts(&self) -> Arc<Counts> {
        Arc::clone(&self.counts)
    }
}

impl ConnectionManager for RedisManager {
    type Connection = RedisConn;
    type Error = RedisError;

    async fn create_connection(&self) -> RedisResult<RedisConn> {
        let connect = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            // The handshake ignores the server's errors, so a server that wants a password
            // (or refuses the client) shows it only on the first command: make that here, so
            // that the pool reports it as a failed create.
            ping_with_nonce(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        let (conn, live) = self.counts.track_create(connect).await?;
        Ok(RedisConn {
            conn,
            broken: false,
            _live: live,
        })
    }

    async fn is_valid(&self, conn: &mut RedisConn) -> RedisResult<()> {
        let result = ping_with_nonce(conn).await;
        if result.is_err() {
            conn.broken = true;
        }
        self.counts.record_validation(result)
    }

    fn has_broken(&self, conn: &mut RedisConn) -> bool {
        self.counts.record_broken(conn.broken)
    }

    fn is_permanent_error(&self, error: &RedisError) -> bool {
        self.auth_errors_permanent && is_auth_error(error)
    }
}

/// Whether `error` says the server refused the client's credentials: a missing password
/// (`NOAUTH`), a wrong one (`WRONGPASS`, or the client's own
/// [`AuthenticationFailed`](ErrorKind::AuthenticationFailed) when `AUTH` fails in the
/// handshake). Retrying does not help until someone changes the password or the client's
/// settings.
pub fn is_auth_error(error: &RedisError) -> bool {
    error.kind() == ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// `PING nonce`, checking that the server echoes the nonce: a reply meant for another command
/// would not match.
async fn ping_with_nonce(conn: &mut impl ConnectionLike) -> RedisResult<()> {
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

/// A pooled Redis connection: run commands on it with `query_async(&mut *conn)` or the
/// `redis::AsyncCommands` methods.
///
/// It remembers whether a command on it failed with an I/O error (reset, EOF, timeout, a reply
/// it could not parse): the cheap, synchronous signal the manager's `has_broken` reads.
pub struct RedisConn {
    conn: MultiplexedConnection,
    /// Set once a command failed in a way that leaves the connection unusable.
    broken: bool,
    _live: LiveToken,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl RedisConn {
    /// The connection's number, unique among the connections of its manager.
    pub fn id(&self) -> u64 {
        self._live.id()
    }

    /// Whether a command on this connection failed with an I/O error.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    fn note<T>(&mut self, result: &RedisResult<T>) {
        if let Err(e) = result {
            if e.is_io_error() || e.is_unrecoverable_error() || e.is_timeout() {
                self.broken = true;
            }
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
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(cmd, offset, count).await;
            self.note(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
