//! What users may rely on of the public types' auto traits: the pool, its builder and its
//! errors go anywhere (`Send + Sync`); every `get_connection_*` future is `Send` (spawnable)
//! and `Unpin` (selectable by reference without pinning), for any manager; a guard is `Send`;
//! and a connection type that is `Send` but not `Sync` (a client with a `RefCell` inside)
//! needs nothing more. Most of it is checked by compiling; a regression fails the build.

use connection_pool::{
    Builder, ConnectionManager, ConnectionPool, PoolError, PooledConnection, Status,
    ValidationPolicy,
};
use futures_lite::future::{block_on, poll_once};
use std::{cell::RefCell, convert::Infallible, future::Future, time::Duration};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}
fn send_unpin<F: Future + Send + Unpin>(future: F) -> F {
    future
}

/// Holds for every manager, not only for the ones below.
#[allow(dead_code)]
fn for_any_manager<M: ConnectionManager>(pool: &ConnectionPool<M>) {
    send_sync::<ConnectionPool<M>>();
    send_sync::<Builder<M>>();
    send_sync::<PoolError<M::Error>>();
    send::<PooledConnection<'static, M>>();
    drop(send_unpin(pool.get_connection()));
    drop(send_unpin(pool.get_connection_owned()));
    drop(send_unpin(
        pool.get_connection_timeout(Duration::from_secs(1)),
    ));
}

/// A client that is `Send` but not `Sync`, as many database clients are.
#[derive(Debug)]
struct Client {
    sent: RefCell<Vec<&'static str>>,
}

struct Clients;

impl ConnectionManager for Clients {
    type Connection = Client;
    type Error = Infallible;

    async fn create_connection(&self) -> Result<Client, Infallible> {
        Ok(Client {
            sent: RefCell::new(Vec::new()),
        })
    }

    async fn is_valid(&self, _client: &mut Client) -> Result<(), Infallible> {
        Ok(())
    }
}

fn pool() -> ConnectionPool<Clients> {
    ConnectionPool::builder(Clients)
        .max_size(1)
        .validation(ValidationPolicy::Never)
        .no_runtime()
        .build()
        .unwrap()
}

#[test]
fn a_send_but_not_sync_connection_is_pooled_and_its_guard_crosses_threads() {
    send_sync::<ConnectionPool<Clients>>();
    send_sync::<Status>();
    let pool = pool();
    let guard = block_on(send_unpin(pool.get_connection_owned())).unwrap();
    let guard = std::thread::spawn(move || {
        guard.sent.borrow_mut().push("SELECT 1");
        guard
    })
    .join()
    .unwrap();
    drop(guard);
    let again = block_on(pool.get_connection()).unwrap();
    assert_eq!(
        *again.sent.borrow(),
        ["SELECT 1"],
        "the same client came back"
    );
}

#[test]
fn the_futures_are_polled_by_reference_without_pinning() {
    let pool = pool();
    let mut first = pool.get_connection();
    let held = block_on(poll_once(&mut first)).expect("ready").unwrap();
    let mut second = pool.get_connection_owned();
    assert!(
        block_on(poll_once(&mut second)).is_none(),
        "waits for the one connection"
    );
    drop(held);
    let owned = block_on(&mut second).unwrap();
    drop(owned);
    // Without a runtime a per-call timeout cannot be timed: the error comes on the first poll.
    let mut timed = pool.get_connection_timeout(Duration::from_secs(1));
    let refused = block_on(poll_once(&mut timed)).expect("ready");
    assert!(
        matches!(
            refused,
            Err(PoolError::NoRuntime {
                setting: "get_connection_timeout",
                ..
            })
        ),
        "{refused:?}"
    );
}

/// The future a checkout returns is moved wherever the caller's own future goes: the fast
/// path keeps it at the size of the call's arguments, and the slow path's state is boxed.
#[test]
#[cfg(target_pointer_width = "64")]
fn the_checkout_future_stays_small() {
    let pool = pool();
    assert!(size_of_val(&pool.get_connection()) <= 48);
    assert!(size_of_val(&pool.get_connection_owned()) <= 48);
    assert!(size_of_val(&pool.get_connection_timeout(Duration::ZERO)) <= 48);
}
