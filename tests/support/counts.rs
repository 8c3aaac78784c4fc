//! What a manager counts about its connections, independent of the pool's own numbers.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

/// Counters shared by a manager and every connection it made.
///
/// `live` is created minus dropped: each connection carries a [`LiveToken`] that takes one off
/// when the connection is dropped, whoever drops it (the pool, a test, a panic). The token also
/// numbers the connection, so that a test can tell connections apart.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections that exist now.
    live: AtomicUsize,
    /// The highest `live` ever seen.
    peak: AtomicUsize,
    /// Calls to `create_connection`, counted when they start: the connect attempts.
    create_calls: AtomicUsize,
    /// `create_connection` calls running now (a cancelled one stops counting when dropped).
    connecting: AtomicUsize,
    /// The highest `connecting` ever seen.
    peak_connecting: AtomicUsize,
    /// Calls to `create_connection` that returned an error.
    create_errors: AtomicUsize,
    /// Calls to `is_valid`.
    validations: AtomicUsize,
    /// Calls to `is_valid` that returned an error.
    validation_failures: AtomicUsize,
    /// Calls to `has_broken` that answered `true`.
    broken_on_return: AtomicUsize,
    /// The id of the next connection made.
    next_id: AtomicU64,
}

impl Counts {
    /// Fresh counters, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Connections that exist now (created minus dropped).
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// The highest number of connections that ever existed at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Connect attempts, successful or not.
    pub fn create_calls(&self) -> usize {
        self.create_calls.load(Ordering::SeqCst)
    }

    /// The most `create_connection` calls that ever ran at once.
    pub fn peak_connecting(&self) -> usize {
        self.peak_connecting.load(Ordering::SeqCst)
    }

    /// Connect attempts that failed.
    pub fn create_errors(&self) -> usize {
        self.create_errors.load(Ordering::SeqCst)
    }

    /// Health checks run.
    pub fn validations(&self) -> usize {
        self.validations.load(Ordering::SeqCst)
    }

    /// Health checks that failed.
    pub fn validation_failures(&self) -> usize {
        self.validation_failures.load(Ordering::SeqCst)
    }

    /// Returns on which `has_broken` said the connection was broken.
    pub fn broken_on_return(&self) -> usize {
        self.broken_on_return.load(Ordering::SeqCst)
    }

    /// Runs one `create_connection` attempt, counting it from its start; a success yields the
    /// new connection's token.
    pub(crate) async fn track_create<T, E>(
        self: &Arc<Self>,
        connect: impl Future<Output = Result<T, E>>,
    ) -> Result<(T, LiveToken), E> {
        self.create_calls.fetch_add(1, Ordering::SeqCst);
        let connecting = self.connecting.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_connecting.fetch_max(connecting, Ordering::SeqCst);
        // Counts the attempt as over even when the pool drops this future mid-connect.
        let _attempt = Connecting(self);
        match connect.await {
            Ok(conn) => {
                let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(live, Ordering::SeqCst);
                let id = self.next_id.fetch_add(1, Ordering::SeqCst);
                Ok((conn, LiveToken(Arc::clone(self), id)))
            }
            Err(e) => {
                self.create_errors.fetch_add(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Records the outcome of one `is_valid`.
    pub(crate) fn record_validation<E>(&self, result: Result<(), E>) -> Result<(), E> {
        self.validations.fetch_add(1, Ordering::SeqCst);
        if result.is_err() {
            self.validation_failures.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    /// Records the answer of one `has_broken`.
    pub(crate) fn record_broken(&self, broken: bool) -> bool {
        if broken {
            self.broken_on_return.fetch_add(1, Ordering::SeqCst);
        }
        broken
    }
}

/// Held by each live connection; dropping it counts the connection as gone.
#[derive(Debug)]
pub struct LiveToken(Arc<Counts>, u64);

impl LiveToken {
    /// The connection's number, unique among the connections of one [`Counts`] (0, 1, ...).
    pub fn id(&self) -> u64 {
        self.1
    }
}

impl Drop for LiveToken {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes one off `connecting` when a create attempt ends, finished or cancelled.
struct Connecting<'a>(&'a Counts);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.connecting.fetch_sub(1, Ordering::SeqCst);
    }
}
