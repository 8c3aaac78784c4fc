//! Opening a TCP connection to a name that resolves to several addresses.
//!
//! Trying the addresses one after another lets one that drops packets (broken IPv6 routing, a
//! dead host still in a round-robin record or a headless service) use up the whole
//! `connection_timeout` while the next would have accepted at once, on every connect, since the
//! resolver returns the same order each time. So the attempts are staggered as RFC 8305
//! ("Happy Eyeballs") describes: the next address is tried when the one before has had
//! [`ATTEMPT_DELAY`] to itself or has failed, the earlier attempts stay in flight, and the first
//! to connect wins. The addresses alternate between IPv6 and IPv4, starting with the family the
//! resolver put first.

use async_io::Timer;
use async_net::TcpStream;
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

/// How long an attempt runs alone before the next address is tried beside it: RFC 8305's
/// recommended connection attempt delay.
pub(crate) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Resolves `address` and connects to the first of its addresses that accepts. Errors name
/// `address`, and with several addresses, why each failed.
pub(crate) async fn connect(address: &str) -> io::Result<TcpStream> {
    let addrs = async_net::resolve(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("connecting to {address}: {e}")))?;
    connect_any(address, addrs, ATTEMPT_DELAY).await
}

/// [`connect`] after the lookup, with attempts started `delay` apart.
async fn connect_any(
    address: &str,
    addrs: Vec<SocketAddr>,
    delay: Duration,
) -> io::Result<TcpStream> {
    match addrs.as_slice() {
        [] => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("connecting to {address}: the name resolved to no address"),
        )),
        // The common case: no timer, no boxing.
        [only] => TcpStream::connect(*only)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {address}: {e}"))),
        _ => Staggered::new(interleave_families(addrs), delay)
            .await
            .map_err(|failures| all_failed(address, failures)),
    }
}

/// The addresses alternating between families, each family in the resolver's order, starting
/// with the family of the first (RFC 8305, section 4).
fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_is_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut first, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first_is_v6);
    let mut interleaved = Vec::with_capacity(first.len() + other.len());
    let (mut first, mut other) = (first.drain(..), other.drain(..));
    loop {
        match (first.next(), other.next()) {
            (None, None) => return interleaved,
            (a, b) => interleaved.extend(a.into_iter().chain(b)),
        }
    }
}

/// Every address failed: one error naming each address and its failure, of the last one's kind.
fn all_failed(address: &str, failures: Vec<(SocketAddr, io::Error)>) -> io::Error {
    let kind = failures
        .last()
        .map_or(io::ErrorKind::InvalidInput, |(_, e)| e.kind());
    let each: Vec<String> = failures
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect();
    io::Error::new(
        kind,
        format!(
            "connecting to {address}: every address failed ({})",
            each.join("; ")
        ),
    )
}

type Attempt = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// Connect attempts to several addresses, started `delay` apart or as soon as the one before
/// fails; ends with the first connection, or with every address's failure.
/// Dropping it drops the attempts in flight, which closes their sockets.
struct Staggered {
    /// Addresses not tried yet, the next one last.
    untried: Vec<SocketAddr>,
    in_flight: Vec<(SocketAddr, Attempt)>,
    failures: Vec<(SocketAddr, io::Error)>,
    /// When the next untried address is due, if one is left.
    next_due: Timer,
    delay: Duration,
}

impl Staggered {
    fn new(mut addrs: Vec<SocketAddr>, delay: Duration) -> Self {
        addrs.reverse();
        Self {
            untried: addrs,
            in_flight: Vec::new(),
            failures: Vec::new(),
            next_due: Timer::never(),
            delay,
        }
    }

    fn start_next(&mut self) -> bool {
        let Some(addr) = self.untried.pop() else {
            return false;
        };
        self.in_flight
            .push((addr, Box::pin(TcpStream::connect(addr))));
        if self.untried.is_empty() {
            self.next_due = Timer::never();
        } else {
            self.next_due.set_after(self.delay);
        }
        true
    }
}

impl Future for Staggered {
    type Output = Result<TcpStream, Vec<(SocketAddr, io::Error)>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let mut failed = false;
            let mut i = 0;
            while i < this.in_flight.len() {
                match this.in_flight[i].1.as_mut().poll(cx) {
                    Poll::Ready(Ok(stream)) => return Poll::Ready(Ok(stream)),
                    Poll::Ready(Err(e)) => {
                        let (addr, _) = this.in_flight.remove(i);
                        this.failures.push((addr, e));
                        failed = true;
                    }
                    Poll::Pending => i += 1,
                }
            }
            // A failure starts the next address at once rather than at its due time.
            let due = failed
                || this.in_flight.is_empty()
                || Pin::new(&mut this.next_due).poll(cx).is_ready();
            if due && this.start_next() {
                continue;
            }
            if this.in_flight.is_empty() {
                return Poll::Ready(Err(std::mem::take(&mut this.failures)));
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;
    use std::{
        net::{Ipv4Addr, Ipv6Addr, TcpListener},
        time::Instant,
    };

    fn v4(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    fn v6(port: u16) -> SocketAddr {
        (Ipv6Addr::LOCALHOST, port).into()
    }

    /// A port whose connects hang: a listener whose accept queue is full, so that the kernel
    /// drops further SYNs, as a firewall or a dead route would. The filling connections are
    /// returned with it, to be kept open.
    fn black_hole() -> (TcpListener, Vec<std::net::TcpStream>) {
        let listener = TcpListener::bind(v4(0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut fill = Vec::new();
        while fill.len() < 10_000 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                Ok(stream) => fill.push(stream),
                Err(_) => return (listener, fill),
            }
        }
        panic!("the accept queue never filled: no black hole to test with");
    }

    /// A port nothing listens on: bound, then freed.
    fn refusing() -> SocketAddr {
        TcpListener::bind(v4(0)).unwrap().local_addr().unwrap()
    }

    /// Runs `connect_any` with `delay` for at most `limit`: `None` if it had not finished by
    /// then.
    fn connect_within(
        addrs: Vec<SocketAddr>,
        delay: Duration,
        limit: Duration,
    ) -> Option<io::Result<TcpStream>> {
        future::block_on(future::or(
            async { Some(connect_any("test.name:1", addrs, delay).await) },
            async {
                Timer::after(limit).await;
                None
            },
        ))
    }

    #[test]
    fn an_address_that_drops_packets_does_not_hold_up_the_next() {
        let (hole, _fill) = black_hole();
        let live = TcpListener::bind(v4(0)).unwrap();
        let live_addr = live.local_addr().unwrap();
        let started = Instant::now();
        // One after the other, this would wait for the kernel to give up on the first
        // address, over a minute later.
        let addrs = vec![hole.local_addr().unwrap(), live_addr];
        let stream = connect_within(addrs, ATTEMPT_DELAY, Duration::from_secs(20))
            .expect("still connecting after 20 s: the second address was never tried")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
        assert!(
            started.elapsed() >= ATTEMPT_DELAY,
            "the first address had its delay to itself"
        );
    }

    #[test]
    fn a_refused_address_passes_on_to_the_next_at_once() {
        let live = TcpListener::bind(v4(0)).unwrap();
        let live_addr = live.local_addr().unwrap();
        // A refusal on loopback takes microseconds: the second attempt starts then, long
        // before its delay of a minute.
        let addrs = vec![refusing(), live_addr];
        let stream = connect_within(addrs, Duration::from_secs(60), Duration::from_secs(20))
            .expect("the second address waited for the delay after the first was refused")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), live_addr);
    }

    #[test]
    fn when_every_address_fails_the_error_names_each() {
        let (first, second) = (refusing(), refusing());
        let error = connect_within(vec![first, second], ATTEMPT_DELAY, Duration::from_secs(20))
            .expect("two refusals take no time")
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        let message = error.to_string();
        assert!(
            message.starts_with("connecting to test.name:1: every address failed"),
            "{message}"
        );
        assert!(
            message.contains(&first.to_string()) && message.contains(&second.to_string()),
            "{message}"
        );
    }

    #[test]
    fn one_address_keeps_the_plain_message() {
        let addr = refusing();
        let error = connect_within(vec![addr], ATTEMPT_DELAY, Duration::from_secs(20))
            .unwrap()
            .unwrap_err();
        assert!(
            error.to_string().starts_with("connecting to test.name:1: "),
            "{error}"
        );
        assert!(!error.to_string().contains("every address"), "{error}");
        let none = connect_within(vec![], ATTEMPT_DELAY, Duration::from_secs(1))
            .unwrap()
            .unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let addrs = vec![v6(1), v6(2), v6(3), v4(4), v4(5)];
        assert_eq!(
            interleave_families(addrs),
            vec![v6(1), v4(4), v6(2), v4(5), v6(3)]
        );
        let addrs = vec![v4(1), v6(2), v4(3)];
        assert_eq!(interleave_families(addrs), vec![v4(1), v6(2), v4(3)]);
        assert_eq!(interleave_families(vec![v4(1), v4(2)]), vec![v4(1), v4(2)]);
    }
}
