//! What both servers need: their binaries, an unprivileged account when running as root, a
//! temp dir that account owns, a free loopback port, and running their tools.

use super::StartError;
use std::{
    env, fs,
    net::TcpListener,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Looks for `name` in each of `dirs`, then on `PATH`.
pub fn find_binary(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.iter()
        .map(PathBuf::from)
        .chain(path_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

/// The account a server runs as: `None` (the current user) unless running as root, then
/// `postgres` if it exists, else `nobody`, as `(uid, gid)`.
pub fn server_user() -> Result<Option<(u32, u32)>, StartError> {
    // The owner of /proc/self is this process's effective uid.
    if fs::metadata("/proc/self")?.uid() != 0 {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id_of(name, "-u"), id_of(name, "-g")) {
            return Ok(Some((uid, gid)));
        }
    }
    Err(StartError::Failed(
        "running as root and found neither a `postgres` nor a `nobody` account to run the \
         server as"
            .to_owned(),
    ))
}

/// `id -u NAME` or `id -g NAME`.
fn id_of(name: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, name]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// A fresh temp dir for one server, owned by the server's account.
pub fn server_dir(prefix: &str, user: Option<(u32, u32)>) -> Result<tempfile::TempDir, StartError> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    }
    Ok(dir)
}

/// A loopback port that was free a moment ago. Another process may take it before the server
/// binds it: the launchers retry with a new port when the server cannot bind.
pub fn free_port() -> Result<u16, StartError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A command for a server binary: run as `user`, in `dir`, no stdin, output appended to `log`.
pub fn server_command(
    program: &Path,
    user: Option<(u32, u32)>,
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
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    Ok(command)
}

/// Runs `command` to completion; a non-zero exit is an error naming `what`, with the end of
/// `log`.
pub fn run(mut command: Command, what: &str, log: &Path) -> Result<(), StartError> {
    let status = command
        .status()
        .map_err(|e| StartError::Failed(format!("{what}: could not run: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(StartError::Failed(format!(
            "{what} failed ({status})\n{}",
            log_tail(log)
        )))
    }
}

/// The last lines of a log, for error messages.
pub fn log_tail(log: &Path) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(20);
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
    while !ready()? {
        if start.elapsed() > limit {
            return Err(StartError::Failed(format!("not ready after {limit:?}")));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
