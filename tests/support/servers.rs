//! What both servers need: their binaries, an unprivileged user when the tests run as root, a
//! temp dir that user owns, a free loopback port, and the rule for a missing binary.

use std::{
    collections::HashSet,
    env, fmt, fs,
    io::{self, Write},
    net::TcpListener,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

/// Why a server could not be started.
#[derive(Debug)]
pub enum StartError {
    /// A binary the server needs is not installed: a skip on a developer machine, a failure in
    /// CI.
    Missing {
        /// What was looked for, and where.
        what: String,
        /// How to install it.
        install: &'static str,
    },
    /// The binary is there but the server did not come up: always a failure.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Missing { what, install } => {
                write!(f, "{what} is not installed (install it with `{install}`)")
            }
            StartError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Failed(e.to_string())
    }
}

/// True when running in CI (`CI=true` or `CI=1`), where a missing server fails the test.
pub fn ci() -> bool {
    env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Unwraps a started server, or decides what a missing one means.
///
/// A missing binary is a panic under `CI=true`; otherwise this prints a loud SKIPPED banner
/// straight to the process's stderr (past the test harness's output capture, so it shows even
/// for a passing test) and returns `None`: the test should `return`. A server that is installed
/// but fails to start is always a panic.
#[track_caller]
pub fn require<T>(started: Result<T, StartError>) -> Option<T> {
    let test = thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    match started {
        Ok(server) => Some(server),
        Err(e @ StartError::Missing { .. }) if !ci() => {
            let banner = format!(
                "\n{bar}\nSKIPPED {test}: {e}.\nThis test needs a real server; with CI=true it fails instead.\n{bar}\n",
                bar = "*".repeat(78)
            );
            // `eprintln!` would be captured by the harness and shown only on failure.
            let _ = io::stderr().write_all(banner.as_bytes());
            None
        }
        Err(e @ StartError::Missing { .. }) => {
            panic!("{test}: {e}; CI=true, so a missing server is a failure")
        }
        Err(StartError::Failed(why)) => panic!("{test}: the server did not start: {why}"),
    }
}

/// Looks for `name` in each of `dirs`, then on `PATH`.
pub fn find_binary(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .chain(&path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The unprivileged account servers run as when the tests run as root (PostgreSQL refuses to
/// run as root; Redis is kept to the same rule).
#[derive(Debug, Clone)]
pub struct ServerUser {
    /// The account's name, for messages.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

/// `None` when the tests do not run as root: the servers then run as the current user.
/// As root: `postgres` if that account exists, else `nobody`.
pub fn server_user() -> Result<Option<ServerUser>, StartError> {
    // The owner of /proc/self is this process's effective uid.
    if fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id_of(name, "-u"), id_of(name, "-g")) {
            return Ok(Some(ServerUser {
                name: name.to_owned(),
                uid,
                gid,
            }));
        }
    }
    Err(StartError::Failed(
        "running as root and found neither a `postgres` nor a `nobody` account to run the \
         server as"
            .to_owned(),
    ))
}

/// `id -u NAME` or `id -g NAME`; `id` asks NSS, so it sees more than /etc/passwd.
fn id_of(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// A fresh temp dir for one server, owned by the server's user.
pub fn server_dir(
    prefix: &str,
    user: Option<&ServerUser>,
) -> Result<tempfile::TempDir, StartError> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if let Some(user) = user {
        std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid))?;
    }
    Ok(dir)
}

/// Ports this process has handed out, so that two servers started at once never get the same.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that was free a moment ago and that this process has not handed out before.
///
/// It is taken below the kernel's ephemeral range when there is room: a client that dials the
/// port while the server is down could otherwise be given that same port as its own source
/// port, connect to itself, and keep the server from binding it again on restart. Another
/// process can still take the port before the server binds it: callers retry with a new port
/// when the server cannot bind.
pub fn free_port() -> Result<u16, StartError> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let below_ephemeral = 15_000..ephemeral_start().unwrap_or(32_768);
    for _ in 0..100 {
        let port = if below_ephemeral.len() >= 1_000 {
            fastrand::u16(below_ephemeral.clone())
        } else {
            0
        };
        let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        let port = listener.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(StartError::Failed(
        "no free loopback port after 100 tries".to_owned(),
    ))
}

/// The first port of the kernel's ephemeral range (Linux).
fn ephemeral_start() -> Option<u16> {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A command for a server binary: run as `user` (when root), in `dir`, no stdin, output to
/// `log` (appended).
pub fn server_command(
    program: &Path,
    user: Option<&ServerUser>,
    dir: &Path,
    log: &Path,
) -> Result<Command, StartError> {
    let log_file = || fs::OpenOptions::new().create(true).append(true).open(log);
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(log_file()?)
        .stderr(log_file()?);
    if let Some(user) = user {
        // std drops the supplementary groups too when it switches from root.
        command.uid(user.uid).gid(user.gid);
    }
    Ok(command)
}

/// Runs `command` to completion; a non-zero exit is an error naming `what`, with the end of
/// `log`.
pub fn run(mut command: Command, what: &str, log: &Path) -> Result<Output, StartError> {
    let out = command
        .output()
        .map_err(|e| StartError::Failed(format!("{what}: could not run: {e}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(StartError::Failed(format!(
            "{what} failed ({}):\n{}",
            out.status,
            log_tail(log)
        )))
    }
}

/// The last lines of a server log, for error messages.
pub fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(30);
            format!(
                "--- last lines of {} ---\n{}",
                log.display(),
                lines[start..].join("\n")
            )
        }
        Err(e) => format!("(no log at {}: {e})", log.display()),
    }
}

/// Polls `ready` every 10 ms until it is true or fails, for at most `limit`.
pub fn wait_until(
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool, StartError>,
) -> Result<(), StartError> {
    let start = Instant::now();
    loop {
        if ready()? {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(StartError::Failed(format!("not ready after {limit:?}")));
        }
        thread::sleep(Duration::from_millis(10));
    }
}
