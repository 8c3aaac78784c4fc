//! A TCP fault proxy on loopback: it sits between a pool and a real server and, on command,
//! adds latency, stalls traffic, or resets connections.
//!
//! ```ignore
//! let proxy = FaultProxy::start(server.addr()).await?;
//! let manager = RedisManager::new(proxy.url("redis"))?; // connects through the proxy
//! proxy.set(Fault::Stall);
//! proxy.wait_until("a connection stalled", Duration::from_secs(1), |c| c.stalled >= 1).await;
//! proxy.set(Fault::None);
//! ```
//!
//! The fault in force applies to every connection, old and new, from the moment it is set (see
//! [`Fault`]). [`ProxyCounts`] tell a test what the proxy saw; [`FaultProxy::wait_until`] waits
//! for them to reach a state, woken by every change. Dropping the proxy stops accepting and
//! closes every connection it carries.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes as they come.
    None,
    /// Hold every chunk this long before forwarding it, in each direction (a request and its
    /// reply are delayed twice).
    Latency(Duration),
    /// Accept new connections but never connect them upstream nor answer them; hold the next
    /// chunk of every existing connection. When the fault ends, what was held flows on.
    Stall,
    /// Reset new connections as soon as they are accepted, and every existing connection when
    /// the fault begins (an RST to the client; the upstream side is closed).
    Reset,
}

/// What the proxy has seen; all counts are totals since it started except `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyCounts {
    /// Client connections accepted.
    pub accepted: usize,
    /// Client connections open now.
    pub open: usize,
    /// Connections accepted while [`Fault::Stall`] was in force, never answered.
    pub stalled: usize,
    /// Stalled connections that the client closed before the stall ended.
    pub abandoned: usize,
    /// Connections the proxy reset.
    pub resets: usize,
}

/// The proxy; see the module docs.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    counts: Arc<watch::Sender<ProxyCounts>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::None);
        let counts = Arc::new(watch::Sender::new(ProxyCounts::default()));
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            fault.clone(),
            Arc::clone(&counts),
        ));
        Ok(Self {
            addr,
            fault,
            counts,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `scheme://127.0.0.1:port/`, for clients that take a URL.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/", self.addr)
    }

    /// Puts `fault` in force now, for every connection.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// A snapshot of the counts.
    pub fn counts(&self) -> ProxyCounts {
        *self.counts.borrow()
    }

    /// Waits until `condition` holds for the counts (re-checked on every change); panics
    /// naming `what` after `limit`. Returns the counts that satisfied it.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        mut condition: impl FnMut(&ProxyCounts) -> bool,
    ) -> ProxyCounts {
        let mut counts = self.counts.subscribe();
        let start = Instant::now();
        match tokio::time::timeout(limit, counts.wait_for(|c| condition(c))).await {
            Ok(Ok(satisfied)) => *satisfied,
            Ok(Err(_)) => unreachable!("the proxy holds the sender"),
            Err(_) => panic!(
                "proxy: not {what} after {:?}; counts {:?}",
                start.elapsed(),
                self.counts()
            ),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // The connection tasks end when they see the fault channel close.
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    counts: Arc<watch::Sender<ProxyCounts>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or an aborted handshake: the next accept may succeed; pause
            // so that a persistent error does not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counts.send_modify(|c| {
            c.accepted += 1;
            c.open += 1;
        });
        tokio::spawn(serve(
            client,
            upstream,
            fault.subscribe(),
            Arc::clone(&counts),
        ));
    }
}

/// Counts a client connection as open until the task serving it ends.
struct Open(Arc<watch::Sender<ProxyCounts>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|c| c.open -= 1);
    }
}

/// Aborts `client` with an RST.
fn reset(client: TcpStream, counts: &watch::Sender<ProxyCounts>) {
    // SO_LINGER 0: the close sends RST instead of FIN (and never blocks).
    let _ = client.set_zero_linger();
    counts.send_modify(|c| c.resets += 1);
    drop(client);
}

/// How a stall of a new connection ended.
enum StallEnd {
    /// Another fault (or none) is in force.
    Lifted,
    /// The client closed its side first.
    Abandoned,
    /// The proxy was dropped.
    Shutdown,
}

/// Holds a fresh connection unanswered while [`Fault::Stall`] is in force, keeping what the
/// client sends in `held` (so that EOF, the client giving up, can be seen).
async fn stall_new(
    client: &mut TcpStream,
    fault: &mut watch::Receiver<Fault>,
    held: &mut Vec<u8>,
) -> StallEnd {
    loop {
        if *fault.borrow_and_update() != Fault::Stall {
            return StallEnd::Lifted;
        }
        tokio::select! {
            read = client.read_buf(held) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return StallEnd::Abandoned;
                }
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    return StallEnd::Shutdown;
                }
            }
        }
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut fault: watch::Receiver<Fault>,
    counts: Arc<watch::Sender<ProxyCounts>>,
) {
    let _open = Open(Arc::clone(&counts));
    let mut held = Vec::new();
    let at_accept = *fault.borrow_and_update();
    match at_accept {
        Fault::Reset => return reset(client, &counts),
        Fault::Stall => {
            counts.send_modify(|c| c.stalled += 1);
            match stall_new(&mut client, &mut fault, &mut held).await {
                StallEnd::Lifted => {}
                StallEnd::Abandoned => {
                    counts.send_modify(|c| c.abandoned += 1);
                    return;
                }
                StallEnd::Shutdown => return,
            }
            if *fault.borrow() == Fault::Reset {
                return reset(client, &counts);
            }
        }
        Fault::None | Fault::Latency(_) => {}
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client sees what it would see at the server, a reset.
        return reset(client, &counts);
    };
    if !held.is_empty() && server.write_all(&held).await.is_err() {
        return;
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (ends_up, ends_down) = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        tokio::join!(
            pump(&mut client_read, &mut server_write, fault.clone()),
            pump(&mut server_read, &mut client_write, fault.clone()),
        )
    };
    if ends_up == PumpEnd::Reset || ends_down == PumpEnd::Reset {
        reset(client, &counts);
    }
}

/// Why one direction of a connection stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PumpEnd {
    /// EOF or an error on either side.
    Closed,
    /// [`Fault::Reset`] came into force.
    Reset,
    /// The proxy was dropped.
    Shutdown,
}

/// Copies `from` to `to` chunk by chunk, applying the fault in force to each chunk.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    mut fault: watch::Receiver<Fault>,
) -> PumpEnd {
    let mut buf = vec![0; 16 * 1024];
    loop {
        if *fault.borrow_and_update() == Fault::Reset {
            return PumpEnd::Reset;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return PumpEnd::Closed;
                }
                Ok(n) => n,
            },
            changed = fault.changed() => {
                if changed.is_err() {
                    return PumpEnd::Shutdown;
                }
                // Re-checked at the top of the loop: only a reset interrupts a read.
                continue;
            }
        };
        loop {
            let current = *fault.borrow_and_update();
            match current {
                Fault::None => break,
                Fault::Latency(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Fault::Stall => {
                    if fault.changed().await.is_err() {
                        return PumpEnd::Shutdown;
                    }
                }
                Fault::Reset => return PumpEnd::Reset,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return PumpEnd::Closed;
        }
    }
}
