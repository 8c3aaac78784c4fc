//! A throwaway PostgreSQL cluster.

use super::{StartError, process};
use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

/// Where Debian puts PostgreSQL 15, searched before `PATH`.
const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser `initdb` creates; loopback connections use trust authentication.
const SUPERUSER: &str = "postgres";

/// A PostgreSQL cluster made with `initdb` in a temp dir and served on a loopback port of its
/// own, with durability off (the data is thrown away). Dropping it stops the server
/// (`pg_ctl stop -m fast`, or SIGKILL if that fails) and removes the dir.
pub struct PostgresServer {
    port: u16,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    data: PathBuf,
    /// What `initdb` and `pg_ctl` print.
    tool_log: PathBuf,
    /// Declared last so that it is removed after the server is gone.
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Runs `initdb`, then `pg_ctl start` on a free loopback port, waiting until the server
    /// accepts connections. `initdb` takes a second or two.
    pub fn start() -> Result<Self, StartError> {
        let bin = find_bin_dir().ok_or(StartError::Missing {
            what: format!(
                "PostgreSQL (initdb, pg_ctl and postgres; looked in {PG15_BIN} and PATH)"
            ),
            install: "apt-get install -y postgresql-15",
        })?;
        let user = process::server_user()?;
        let dir = process::server_dir("connection-pool-example-postgres-", user)?;
        let mut server = Self {
            port: 0,
            bin,
            user,
            data: dir.path().join("data"),
            tool_log: dir.path().join("tools.log"),
            dir,
        };
        server.init()?;
        let log = server.dir.path().join("postgres.log");
        let mut last_error = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..3 {
            server.port = process::free_port()?;
            let mut start = server.tool("pg_ctl")?;
            start
                .arg("start")
                .arg("--pgdata")
                .arg(&server.data)
                .arg("--log")
                .arg(&log)
                .args(["--wait", "--timeout", "30", "--silent"])
                .arg("-o")
                .arg(format!("-p {}", server.port));
            match process::run(start, "pg_ctl start", &server.tool_log) {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let text = fs::read_to_string(&log).unwrap_or_default();
                    let e = StartError::Failed(format!(
                        "PostgreSQL on port {}: {e}\n{}",
                        server.port,
                        process::log_tail(&log)
                    ));
                    if !text.contains("could not bind") && !text.contains("already in use") {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three tries failed"))
    }

    fn tool(&self, name: &str) -> Result<Command, StartError> {
        process::server_command(
            &self.bin.join(name),
            self.user,
            self.dir.path(),
            &self.tool_log,
        )
    }

    /// `initdb`, then the settings of every start.
    fn init(&self) -> Result<(), StartError> {
        let mut initdb = self.tool("initdb")?;
        initdb
            .arg("--pgdata")
            .arg(&self.data)
            .args(["--username", SUPERUSER, "--auth", "trust"])
            .args(["--encoding", "UTF8", "--locale", "C", "--no-sync"]);
        process::run(initdb, "initdb", &self.tool_log)?;
        // Appending keeps the file's owner (the server's account).
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))?;
        conf.write_all(
            b"\n# connection-pool example\n\
              listen_addresses = '127.0.0.1'\n\
              unix_socket_directories = ''\n\
              fsync = off\n\
              synchronous_commit = off\n\
              full_page_writes = off\n",
        )?;
        Ok(())
    }

    /// A libpq-style URL for the superuser and database `postgres`, without TLS.
    pub fn url(&self) -> String {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// The temp dir the cluster lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let stopped = self.tool("pg_ctl").and_then(|mut stop| {
            stop.arg("stop").arg("--pgdata").arg(&self.data).args([
                "--mode",
                "fast",
                "--wait",
                "--timeout",
                "30",
                "--silent",
            ]);
            process::run(stop, "pg_ctl stop", &self.tool_log)
        });
        if stopped.is_err() {
            // The postmaster's pid is the first line of postmaster.pid.
            let pid = fs::read_to_string(self.data.join("postmaster.pid"))
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
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
    let pg_ctl = process::find_binary("pg_ctl", &[PG15_BIN])?;
    let dir = fs::canonicalize(pg_ctl).ok()?.parent()?.to_path_buf();
    ["initdb", "postgres"]
        .iter()
        .all(|tool| process::is_executable(&dir.join(tool)))
        .then_some(dir)
}
