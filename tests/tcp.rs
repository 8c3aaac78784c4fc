//! `TcpConnectionManager` against a loopback line server: the default `NotClosed` health
//! check, what `has_broken` destroys on return (bytes left unread, `mark_failed`), and socket
//! options. (tests/runtimes.rs runs `PingPong`, a write with no read and end of stream on
//! every runtime.)

#![cfg(all(feature = "tcp", feature = "tokio"))]

use connection_pool::{
    ConnectionPool, HealthCheck, PingPong, TcpConnection, TcpConnectionManager, TokioRuntime,
    ValidationPolicy,
};
use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
};

/// Replies to each line with the line, except `TWO` (two lines: `one`, `two`) and `BYE`
/// (replies `bye`, closes the connection, then reports it on `closed`).
struct LineServer {
    addr: SocketAddr,
    closed: mpsc::Receiver<()>,
}

impl LineServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let (closed_tx, closed) = mpsc::channel();
        // The acceptor and connection threads end with the test process.
        thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let closed = closed_tx.clone();
                thread::spawn(move || serve(socket, &closed));
            }
        });
        Self { addr, closed }
    }
}

fn serve(socket: TcpStream, closed: &mpsc::Sender<()>) {
    let Ok(mut writer) = socket.try_clone() else {
        return;
    };
    for line in BufReader::new(socket).lines() {
        let reply = match line.as_deref() {
            Err(_) => return,
            Ok("BYE") => {
                let _ = writer.write_all(b"bye\n");
                let _ = writer.shutdown(std::net::Shutdown::Both);
                let _ = closed.send(());
                return;
            }
            Ok("TWO") => "one\ntwo",
            Ok(other) => other,
        };
        // One write per reply; `writeln!` on a socket may split it into several.
        if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn pool(server: &LineServer, validation: ValidationPolicy) -> ConnectionPool<TcpConnectionManager> {
    ConnectionPool::builder(TcpConnectionManager::new(server.addr))
        .max_size(1)
        .validation(validation)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap()
}

/// One connection, checked by the manager's health check on every checkout.
fn checked_on_every_checkout<H: HealthCheck>(
    manager: TcpConnectionManager<H>,
) -> ConnectionPool<TcpConnectionManager<H>> {
    ConnectionPool::builder(manager)
        .max_size(1)
        .validation(ValidationPolicy::Always)
        .runtime(TokioRuntime::current())
        .build()
        .unwrap()
}

async fn request(conn: &mut TcpConnection, line: &str) -> String {
    conn.write_all(format!("{line}\n").as_bytes())
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_line(&mut reply).await.unwrap();
    reply
}

#[tokio::test]
async fn the_default_check_replaces_a_connection_the_server_closed() {
    let server = LineServer::start();
    let pool = pool(&server, ValidationPolicy::Always);
    let mut conn = pool.get_connection().await.unwrap();
    let first = conn.local_addr().unwrap();
    assert_eq!(request(&mut conn, "hello").await, "hello\n");
    // The server answers, then closes the connection, which goes back to the pool whole:
    // nothing was read past the reply.
    assert_eq!(request(&mut conn, "BYE").await, "bye\n");
    server.closed.recv().unwrap();
    drop(conn);
    assert_eq!(pool.status().idle, 1);

    let mut conn = pool.get_connection().await.unwrap();
    assert_ne!(conn.local_addr().unwrap(), first, "a new connection");
    assert_eq!(request(&mut conn, "again").await, "again\n");
    assert_eq!(pool.status().counters.destroyed.validation_failed, 1);
}

#[tokio::test]
async fn bytes_left_unread_destroy_the_connection_on_return() {
    let server = LineServer::start();
    let pool = pool(&server, ValidationPolicy::Never);
    let mut conn = pool.get_connection().await.unwrap();
    // Two lines come back; the user reads one, so the other sits in the read buffer.
    assert_eq!(request(&mut conn, "TWO").await, "one\n");
    // Read in with the first or not, `fill_buf` has (some of) it buffered now.
    assert!(conn.fill_buf().await.unwrap().starts_with(b"t"));
    let first = conn.local_addr().unwrap();
    drop(conn);
    assert_eq!(pool.status().counters.destroyed.broken, 1);
    let mut conn = pool.get_connection().await.unwrap();
    assert_ne!(conn.local_addr().unwrap(), first);
    assert_eq!(request(&mut conn, "clean").await, "clean\n", "not `two`");
}

#[tokio::test]
async fn a_connection_marked_failed_is_destroyed_on_return() {
    let server = LineServer::start();
    let pool = pool(&server, ValidationPolicy::Never);
    let mut conn = pool.get_connection().await.unwrap();
    assert_eq!(request(&mut conn, "hi").await, "hi\n");
    assert!(!conn.has_failed());
    conn.mark_failed();
    drop(conn);
    assert_eq!(pool.status().counters.destroyed.broken, 1);
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn nodelay_is_set_as_configured() {
    let server = LineServer::start();
    for nodelay in [true, false] {
        let manager = TcpConnectionManager::new(server.addr).nodelay(nodelay);
        let pool = ConnectionPool::builder(manager)
            .runtime(TokioRuntime::current())
            .build()
            .unwrap();
        let conn = pool.get_connection().await.unwrap();
        assert_eq!(conn.nodelay().unwrap(), nodelay);
    }
}

#[tokio::test]
async fn set_nodelay_changes_the_socket_option() {
    let server = LineServer::start();
    let pool = pool(&server, ValidationPolicy::Never);
    let conn = pool.get_connection().await.unwrap();
    assert!(conn.nodelay().unwrap());
    conn.set_nodelay(false).unwrap();
    assert!(!conn.nodelay().unwrap());
}

#[cfg(unix)]
#[tokio::test]
async fn the_socket_handle_is_the_connections_own() {
    use std::os::fd::AsFd;
    let server = LineServer::start();
    let pool = pool(&server, ValidationPolicy::Never);
    let conn = pool.get_connection().await.unwrap();
    let socket = std::net::TcpStream::from(conn.as_fd().try_clone_to_owned().unwrap());
    assert_eq!(socket.peer_addr().unwrap(), conn.peer_addr().unwrap());
    assert_eq!(socket.local_addr().unwrap(), conn.local_addr().unwrap());
}

#[tokio::test]
async fn a_check_that_passes_with_bytes_left_over_fails_and_the_caller_gets_a_clean_connection() {
    let server = LineServer::start();
    // The server answers `TWO` with two lines in one write: the check reads the first and
    // leaves the second in the read buffer.
    let manager =
        TcpConnectionManager::new(server.addr).health_check(PingPong::new("TWO\n", "one\n"));
    let pool = checked_on_every_checkout(manager);
    let first = pool.get_connection().await.unwrap().local_addr().unwrap();
    let mut conn = pool.get_connection().await.unwrap();
    assert!(conn.buffered().is_empty(), "{:?}", conn.buffered());
    assert_ne!(conn.local_addr().unwrap(), first, "a new connection");
    assert_eq!(request(&mut conn, "mine").await, "mine\n", "not `two`");
    assert_eq!(pool.status().counters.destroyed.validation_failed, 1);
}

#[tokio::test]
async fn a_check_whose_request_gets_no_reply_does_not_make_the_connection_look_broken() {
    // A server that accepts and never writes: the check's request is a no-op to it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The thread, and the sockets it keeps open, end with the test process.
    thread::spawn(move || {
        let mut open = Vec::new();
        for socket in listener.incoming().flatten() {
            open.push(socket);
        }
    });
    let manager = TcpConnectionManager::new(addr).health_check(PingPong::new("NOOP\n", ""));
    let pool = checked_on_every_checkout(manager);
    let first = pool.get_connection().await.unwrap().local_addr().unwrap();
    for _ in 0..3 {
        let conn = pool.get_connection().await.unwrap();
        assert_eq!(conn.local_addr().unwrap(), first, "the same connection");
    }
    assert_eq!(pool.status().counters.destroyed.broken, 0);
}

/// A custom check that writes a request and reads nothing of its reply.
struct WriteOnly;

impl HealthCheck for WriteOnly {
    async fn check(&self, conn: &mut TcpConnection) -> std::io::Result<()> {
        conn.write_all(b"LATE\n").await?;
        conn.flush().await
    }
}

#[tokio::test]
async fn a_check_whose_reply_is_still_on_its_way_does_not_reach_the_next_user() {
    let server = LineServer::start();
    let manager = TcpConnectionManager::new(server.addr).health_check(WriteOnly);
    let pool = checked_on_every_checkout(manager);
    drop(pool.get_connection().await.unwrap());
    // Checked (the server will answer `LATE`), then returned untouched: destroyed, since the
    // reply is on its way. try_get_connection never checks, so it would hand that reply over.
    drop(pool.get_connection().await.unwrap());
    assert_eq!(pool.status().counters.destroyed.broken, 1);
    assert!(pool.try_get_connection().is_none());
    let mut conn = pool.get_connection().await.unwrap();
    assert_eq!(request(&mut conn, "mine").await, "mine\n");
}

/// tokio's paused clock jumps to the next timer whenever tokio has nothing to run, and it
/// cannot see these sockets (async-io drives them), so on `TokioRuntime` the pool's timeouts
/// fire while a loopback connect or check is still on its way. The docs send such tests to
/// `SmolRuntime`, whose timers run on async-io's clock: a paused tokio test works with it.
#[cfg(feature = "smol")]
#[tokio::test(start_paused = true)]
async fn under_a_paused_tokio_clock_a_pool_on_smol_runtime_connects_and_checks() {
    let server = LineServer::start();
    let pool = ConnectionPool::builder(
        TcpConnectionManager::new(server.addr).health_check(PingPong::new("ping\n", "ping\n")),
    )
    .max_size(1)
    .validation(ValidationPolicy::Always)
    .runtime(connection_pool::SmolRuntime::new())
    .build()
    .unwrap();
    for round in 0..20 {
        let mut conn = pool.get_connection().await.unwrap();
        assert_eq!(request(&mut conn, "hello").await, "hello\n");
        if round % 2 == 0 {
            conn.mark_broken(); // the next round connects anew
        }
    }
    let counters = pool.status().counters;
    assert_eq!(counters.created, 11, "round 0 and each odd round connect");
    assert_eq!(counters.destroyed.validation_aborted, 0);
}
