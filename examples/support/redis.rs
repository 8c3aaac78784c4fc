//! A throwaway `redis-server`.

use super::{StartError, process};
use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Child,
    time::Duration,
};

/// A `redis-server` process on a loopback port of its own, without persistence, in a temp dir.
/// Dropping it kills the process and removes the dir.
pub struct RedisServer {
    port: u16,
    child: Child,
    /// Declared last so that it is removed after the process is gone.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Result<Self, StartError> {
        let binary = process::find_binary("redis-server", &["/usr/bin", "/usr/local/bin"]).ok_or(
            StartError::Missing {
                what: "redis-server (looked in /usr/bin, /usr/local/bin and PATH)".to_owned(),
                install: "apt-get install -y redis-server",
            },
        )?;
        let user = process::server_user()?;
        let dir = process::server_dir("connection-pool-example-redis-", user)?;
        let config = dir.path().join("redis.conf");
        let log = dir.path().join("redis.log");
        let mut last_error = None;
        // Another process may take the free port before the server binds it: try a few.
        for _ in 0..3 {
            let port = process::free_port()?;
            fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nlogfile \"\"\n\
                     save \"\"\nappendonly no\n",
                    dir.path().display()
                ),
            )?;
            let mut command = process::server_command(&binary, user, dir.path(), &log)?;
            command.arg(&config);
            let mut child = command
                .spawn()
                .map_err(|e| StartError::Failed(format!("cannot run {}: {e}", binary.display())))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let ready = process::wait_until(Duration::from_secs(10), || {
                if let Some(status) = child.try_wait()? {
                    return Err(StartError::Failed(format!("redis-server exited: {status}")));
                }
                Ok(answers_ping(addr))
            });
            match ready {
                Ok(()) => return Ok(Self { port, child, dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let port_taken = fs::read_to_string(&log)
                        .is_ok_and(|text| text.contains("Address already in use"));
                    let e = StartError::Failed(format!(
                        "redis-server on port {port}: {e}\n{}",
                        process::log_tail(&log)
                    ));
                    if !port_taken {
                        return Err(e);
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.expect("three tries failed"))
    }

    /// `redis://127.0.0.1:port/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The temp dir the server runs in.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
