//! A ready [`ConnectionManager`] for plain TCP connections (feature `tcp`).
//!
//! It is built on async-net, whose sockets are driven by async-io's reactor, so it needs no
//! particular executor: under smol and async-std the reactor is the one they already run; under
//! tokio or an executor of your own, async-io drives it from a thread of its own. A library
//! can therefore offer pooled TCP connections without choosing a runtime for its users. (In a
//! tokio test that pauses time, give the pool [`SmolRuntime`](crate::SmolRuntime), whose timers
//! are async-io's: the paused clock cannot see these sockets and would jump past the pool's
//! timeouts while a connect is on its way.)
//!
//! Each connection keeps a read buffer for its whole life, so it implements `AsyncBufRead`
//! (read a line, a length-prefixed frame, ...) as well as `AsyncRead` and `AsyncWrite`. It
//! remembers any I/O error or end of stream it sees, and whether something was written that
//! nothing has been read after. When the connection is returned, the manager's
//! [`has_broken`](ConnectionManager::has_broken) destroys it if it failed, if bytes were left
//! unread, or if something was written and nothing read after it (a cancelled request: its
//! reply would reach the next user). It cannot count requests and replies: the rest of a reply
//! read only in part, or the replies to further requests sent at once (pipelining) after the
//! first reply was read, may still be on their way. Mark such a connection failed yourself.

mod connect;

use crate::{manager::ConnectionManager, pool::ConnectionPool};
use futures_lite::{
    future,
    io::{
        AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
        BufReader,
    },
};
use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

/// A pool of TCP connections: `ConnectionPool<TcpConnectionManager<H>>`.
pub type TcpConnectionPool<H = NotClosed> = ConnectionPool<TcpConnectionManager<H>>;

/// Opens TCP connections to one address and checks them with a pluggable [`HealthCheck`]
/// (feature `tcp`).
///
/// The address is resolved on every connect, so a DNS change is followed by the connections
/// opened after it; an `ip:port` is parsed without a lookup, a host name is looked up on the
/// `blocking` crate's thread pool. New connections have `TCP_NODELAY` set (request/response
/// traffic should not wait for Nagle's algorithm); turn it off with
/// [`nodelay(false)`](Self::nodelay).
///
/// The default health check, [`NotClosed`], costs no round trip and catches a connection the
/// server closed or reset, or one with unexpected bytes waiting. It cannot tell that a server
/// stopped answering: give the manager a [`PingPong`] or your own [`HealthCheck`] when the
/// protocol has a ping, and the pool a runtime, so that `validation_timeout` bounds the round
/// trip (without one, a check of a server that stopped answering waits for ever).
///
/// A connection returned after a write with no read since is destroyed, since the reply may
/// still arrive and reach the next user. For a protocol in which the server does not answer
/// every write (log shipping, a publisher), turn that off with
/// [`expect_replies(false)`](Self::expect_replies).
///
/// # Examples
///
/// A pool of connections to a line-based server. It needs no runtime feature; with one, pass
/// `.runtime(...)` instead of `.no_runtime()` to get timeouts and the cleanup task (and then
/// a [`PingPong`] check, bounded by `validation_timeout`, for a server that says `PONG`).
///
/// ```
/// use connection_pool::{ConnectionPool, TcpConnectionManager};
/// use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt};
/// use std::io::{BufRead, BufReader, Write};
///
/// // A tiny server on a thread: PING gets PONG, anything else is echoed.
/// let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let addr = listener.local_addr()?;
/// std::thread::spawn(move || {
///     for socket in listener.incoming().flatten() {
///         std::thread::spawn(move || {
///             let mut writer = socket.try_clone().unwrap();
///             for line in BufReader::new(socket).lines().map_while(Result::ok) {
///                 let reply = if line == "PING" { "PONG".to_owned() } else { line };
///                 if writeln!(writer, "{reply}").is_err() {
///                     break;
///                 }
///             }
///         });
///     }
/// });
///
/// let manager = TcpConnectionManager::new(addr);
/// let pool = ConnectionPool::builder(manager).max_size(2).no_runtime().build()?;
///
/// futures_lite::future::block_on(async {
///     let mut conn = pool.get_connection().await?;
///     conn.write_all(b"hello\n").await?;
///     let mut reply = String::new();
///     conn.read_line(&mut reply).await?;
///     assert_eq!(reply, "hello\n");
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct TcpConnectionManager<H = NotClosed> {
    /// `host:port` or `ip:port`, resolved on every connect.
    address: String,
    /// Run by `is_valid`, when the pool's validation policy asks for it.
    health_check: H,
    /// Whether new connections get `TCP_NODELAY`.
    nodelay: bool,
    /// Whether a connection returned with a request unanswered is destroyed.
    expect_replies: bool,
}

impl TcpConnectionManager<NotClosed> {
    /// A manager for `address`: a [`SocketAddr`], or a string such as `"127.0.0.1:6379"` or
    /// `"db.internal:5432"`, with the [`NotClosed`] health check.
    ///
    /// Nothing is resolved or connected here: a bad address shows up as the error of the
    /// first `create_connection` ([`PoolError::Backend`](crate::PoolError::Backend) from
    /// `get_connection`).
    pub fn new(address: impl fmt::Display) -> Self {
        Self {
            address: address.to_string(),
            health_check: NotClosed,
            nodelay: true,
            expect_replies: true,
        }
    }
}

impl<H: HealthCheck> TcpConnectionManager<H> {
    /// Replaces the health check that `is_valid` runs.
    pub fn health_check<C: HealthCheck>(self, check: C) -> TcpConnectionManager<C> {
        TcpConnectionManager {
            address: self.address,
            health_check: check,
            nodelay: self.nodelay,
            expect_replies: self.expect_replies,
        }
    }

    /// Whether new connections get `TCP_NODELAY` (default `true`).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// Whether every write expects a reply (default `true`): a connection returned after a
    /// write that no read followed is then destroyed, because the reply may still arrive and
    /// would be read by the next user. Turn it off for a protocol in which the server does not
    /// answer every write; the connection is then kept, and requests abandoned half-way must be
    /// marked failed by hand ([`TcpConnection::mark_failed`]).
    ///
    /// Any read after the last write counts as the reply: with several requests in flight at
    /// once (pipelining), abandoning the connection after the first reply is not caught, so
    /// mark it failed then too.
    pub fn expect_replies(mut self, expect_replies: bool) -> Self {
        self.expect_replies = expect_replies;
        self
    }

    /// The address connections are opened to, as given.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl<H: HealthCheck> ConnectionManager for TcpConnectionManager<H> {
    type Connection = TcpConnection;
    type Error = io::Error;

    /// Resolves the address and connects to the first of its addresses that accepts.
    ///
    /// With several addresses (a name with IPv6 and IPv4 records, a round-robin record), the
    /// next is tried when the one before has failed or has had 250 ms to itself, without
    /// giving up the attempts already in flight (RFC 8305, "Happy Eyeballs"), alternating
    /// between IPv6 and IPv4. So an address that drops packets costs a quarter of a second
    /// rather than the whole `connection_timeout`.
    ///
    /// The error names the address, and when every address failed, each with its failure.
    /// Dropping the future (the pool's `connection_timeout`, a
    /// cancelled `get_connection`) abandons the lookup or the connect; no socket is left open.
    async fn create_connection(&self) -> io::Result<TcpConnection> {
        let stream = connect::connect(&self.address).await?;
        stream.set_nodelay(self.nodelay)?;
        Ok(TcpConnection {
            io: BufReader::new(stream),
            failed: false,
            unanswered: false,
        })
    }

    /// Runs the health check; a failure also marks the connection failed.
    ///
    /// A connection the check passed goes to the caller as the check left it, without the
    /// return-time look of [`has_broken`](ConnectionManager::has_broken), so part of that look
    /// is taken here: the check fails if the connection saw an error or an end of stream, or
    /// if bytes are left in its read buffer (more than the check's reply; the caller would
    /// read them as the reply to its own request). A check that writes and reads nothing
    /// after leaves the connection marked as awaiting a reply, so it is destroyed if returned
    /// untouched (see [`expect_replies`](Self::expect_replies)); [`PingPong`] with an empty
    /// reply counts its request as answered.
    async fn is_valid(&self, conn: &mut TcpConnection) -> io::Result<()> {
        let mut result = self.health_check.check(conn).await;
        if result.is_ok() {
            if conn.failed {
                result = Err(io::Error::other(
                    "the connection failed during a health check that passed",
                ));
            } else if !conn.buffered().is_empty() {
                result = Err(unexpected_bytes(conn.buffered().len()));
            }
        }
        if result.is_err() {
            conn.failed = true;
        }
        result
    }

    /// A connection that saw an I/O error or end of stream, or was returned with bytes left
    /// unread or (with [`expect_replies`](Self::expect_replies)) with a request whose reply
    /// was never read, is destroyed: the next user would read the previous user's reply.
    fn has_broken(&self, conn: &mut TcpConnection) -> bool {
        conn.failed || !conn.io.buffer().is_empty() || (self.expect_replies && conn.unanswered)
    }
}

/// A pooled TCP connection from [`TcpConnectionManager`].
///
/// Read and write it with futures-lite's (or the `futures` crate's) `AsyncReadExt`,
/// `AsyncBufReadExt` and `AsyncWriteExt`. Its read buffer lives as long as the connection.
/// An I/O error, an end of stream, a `close` or a failed health check marks it failed, and the
/// pool destroys a failed connection when its guard is dropped. So is one returned after a
/// write that no read followed (see [`TcpConnectionManager::expect_replies`]). When a request
/// is abandoned after its reply was read in part (a timeout around it, a cancelled task), the
/// rest may still arrive later: call [`mark_failed`](Self::mark_failed), or
/// [`PooledConnection::mark_broken`](crate::PooledConnection::mark_broken) on the guard.
///
/// tokio code that wants tokio's I/O traits can wrap it with `tokio_util::compat`.
#[derive(Debug)]
pub struct TcpConnection {
    /// The socket behind a read buffer that persists across checkouts.
    io: BufReader<async_net::TcpStream>,
    /// Set once an I/O error, an end of stream or a failed health check was seen.
    failed: bool,
    /// Something was written and nothing read since: a reply may be on its way.
    unanswered: bool,
}

impl TcpConnection {
    /// The address of the server end.
    ///
    /// # Errors
    ///
    /// The operating system's error, for example when the socket is no longer connected.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().peer_addr()
    }

    /// The address of this end.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.get_ref().local_addr()
    }

    /// Whether `TCP_NODELAY` is set on the socket.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.io.get_ref().nodelay()
    }

    /// Sets or clears `TCP_NODELAY` on the socket.
    ///
    /// # Errors
    ///
    /// The operating system's error.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.io.get_ref().set_nodelay(nodelay)
    }

    /// Bytes received but not read yet.
    pub fn buffered(&self) -> &[u8] {
        self.io.buffer()
    }

    /// Whether an I/O error, an end of stream, a `close` or a failed health check was seen, or
    /// [`mark_failed`](Self::mark_failed) was called.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Marks the connection as unusable: the pool destroys it when it is returned.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// Marks the connection failed when `result` is an error.
    fn note<T>(&mut self, result: &Poll<io::Result<T>>) {
        if let Poll::Ready(Err(_)) = result {
            self.failed = true;
        }
    }
}

/// The socket's handle, for options this type has no method for (for example through
/// `socket2::SockRef::from(&conn)`). Reading or writing through it bypasses the read buffer and
/// the failure tracking. A borrowed standard handle rather than async-net's own socket type, so
/// that async-net stays out of this crate's public API.
#[cfg(unix)]
impl std::os::fd::AsFd for TcpConnection {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

/// The socket's handle, for options this type has no method for (for example through
/// `socket2::SockRef::from(&conn)`). Reading or writing through it bypasses the read buffer and
/// the failure tracking.
#[cfg(windows)]
impl std::os::windows::io::AsSocket for TcpConnection {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.io.get_ref().as_socket()
    }
}

impl AsyncRead for TcpConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        match result {
            Poll::Ready(Ok(0)) => this.failed |= !buf.is_empty(),
            Poll::Ready(Ok(_)) => this.unanswered = false,
            _ => {}
        }
        this.note(&result);
        result
    }
}

impl AsyncBufRead for TcpConnection {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        // `io` and `failed` are disjoint fields: the returned slice borrows only `io`.
        match Pin::new(&mut this.io).poll_fill_buf(cx) {
            Poll::Ready(Ok(buf)) => {
                if buf.is_empty() {
                    this.failed = true;
                } else {
                    this.unanswered = false;
                }
                Poll::Ready(Ok(buf))
            }
            Poll::Ready(Err(e)) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.get_mut().io).consume(amt);
    }
}

impl AsyncWrite for TcpConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(1..)) = result {
            this.unanswered = true;
        }
        this.note(&result);
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.note(&result);
        result
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A closed connection cannot be reused, whatever the outcome.
        this.failed = true;
        Pin::new(&mut this.io).poll_close(cx)
    }
}

/// How [`TcpConnectionManager`] checks an idle connection before handing it out.
///
/// The pool runs it only when its [`ValidationPolicy`](crate::ValidationPolicy) asks (by
/// default for connections idle longer than 500 ms), bounded by `validation_timeout`. An error
/// destroys the connection and the checkout moves on to another one; so does a check that
/// outlives `validation_timeout`, since it may have left a reply half-read. A check cut short
/// by the caller (its `wait_timeout`, or a dropped `get`) destroys the connection too.
///
/// # Examples
///
/// A check for a protocol whose ping reply is a line of varying content:
///
/// ```
/// use connection_pool::{HealthCheck, NotClosed, TcpConnection, TcpConnectionManager};
/// use futures_lite::io::{AsyncBufReadExt, AsyncWriteExt};
/// use std::io;
///
/// /// Sends `STATUS`, expects a line starting with `OK`.
/// struct StatusOk;
///
/// impl HealthCheck for StatusOk {
///     async fn check(&self, conn: &mut TcpConnection) -> io::Result<()> {
///         NotClosed.check(conn).await?; // nothing stale waiting to be misread as the reply
///         conn.write_all(b"STATUS\n").await?;
///         let mut line = String::new();
///         conn.read_line(&mut line).await?;
///         if line.starts_with("OK") {
///             Ok(())
///         } else {
///             Err(io::Error::other(format!("unhealthy: {}", line.trim_end())))
///         }
///     }
/// }
///
/// let manager = TcpConnectionManager::new("127.0.0.1:7000").health_check(StatusOk);
/// # let _ = manager;
/// ```
pub trait HealthCheck: Send + Sync + 'static {
    /// Checks that `conn` still works; an error has the connection destroyed. The manager
    /// also fails a check that passed but left bytes unread or saw the connection fail. A
    /// check that writes a request and reads none of its reply leaves the connection marked
    /// as awaiting one: returned untouched, it is destroyed.
    fn check(&self, conn: &mut TcpConnection) -> impl Future<Output = io::Result<()>> + Send;
}

/// The default [`HealthCheck`]: without a round trip, checks that the server has not closed
/// or reset the connection and that no bytes are waiting that nobody asked for.
///
/// It reads the socket once without waiting. It catches a server that restarted or dropped an
/// idle connection, but not one that is alive at the TCP level and no longer answers: use
/// [`PingPong`] or your own check for that.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotClosed;

impl HealthCheck for NotClosed {
    async fn check(&self, conn: &mut TcpConnection) -> io::Result<()> {
        if !conn.buffered().is_empty() {
            return Err(unexpected_bytes(conn.buffered().len()));
        }
        // One poll: `None` means the read would block, so the peer is still there and quiet.
        match future::poll_once(conn.fill_buf()).await {
            None => Ok(()),
            Some(Ok([])) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            Some(Ok(bytes)) => Err(unexpected_bytes(bytes.len())),
            Some(Err(e)) => Err(e),
        }
    }
}

fn unexpected_bytes(n: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{n} bytes arrived that no request asked for"),
    )
}

/// A [`HealthCheck`] that sends a fixed request and expects a fixed reply: `PING\r\n` and
/// `+PONG\r\n` for Redis, `PING\n` and `PONG\n` for a line protocol.
///
/// It first runs [`NotClosed`] (stale bytes would be misread as the reply), then writes the
/// request and reads exactly as many bytes as the expected reply has. A reply still in flight
/// for an abandoned request is caught when it differs from the expected reply, not when it is
/// the same (a user's own cancelled `PING`): mark connections whose requests are abandoned
/// half-way failed, as [`TcpConnection`] says.
///
/// Give the pool a runtime with it: the round trip is bounded by `validation_timeout` (5 s by
/// default), and without a runtime there is none, so a server that accepts connections but no
/// longer answers would keep the check, and the `get_connection` running it, waiting for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingPong {
    /// Sent as is.
    request: Box<[u8]>,
    /// Expected byte for byte.
    reply: Box<[u8]>,
}

impl PingPong {
    /// A check that sends `request` and expects exactly `reply`.
    pub fn new(request: impl Into<Vec<u8>>, reply: impl Into<Vec<u8>>) -> Self {
        Self {
            request: request.into().into_boxed_slice(),
            reply: reply.into().into_boxed_slice(),
        }
    }
}

impl HealthCheck for PingPong {
    async fn check(&self, conn: &mut TcpConnection) -> io::Result<()> {
        NotClosed.check(conn).await?;
        conn.write_all(&self.request).await?;
        conn.flush().await?;
        let mut reply = vec![0; self.reply.len()];
        conn.read_exact(&mut reply).await?;
        if *reply == *self.reply {
            // The whole reply is in (an empty one: the server answers nothing), so no reply to
            // this request is still on its way.
            conn.unanswered = false;
            Ok(())
        } else {
            // Not the bytes themselves: they may be a late reply to another user's request,
            // and this error is logged.
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "health check expected {:?}, got {} other bytes",
                    String::from_utf8_lossy(&self.reply),
                    reply.len()
                ),
            ))
        }
    }
}
