//! The guard handed out by the pool, and the record kept for each connection.

use crate::{
    clock::Stamp,
    leak::Checkout,
    manager::ConnectionManager,
    pool::{PanicGuard, Shared},
    sync::Arc,
};
use std::{
    borrow::Cow,
    fmt,
    num::NonZeroU64,
    ops::{Deref, DerefMut},
};

/// A connection the pool holds outside any guard (idle, just created, being validated or
/// handed to a waiter): the connection, its expiry, and since when it has been idle.
pub(crate) struct Conn<C> {
    /// The user's connection.
    pub(crate) raw: C,
    /// When `max_lifetime` (less its jitter) runs out; `Stamp::MAX` without a lifetime. Never
    /// zero, so that `Option<InUse>` in the guard needs no tag word of its own.
    expires_at: NonZeroU64,
    /// When the connection was last put into the idle queue (or created).
    pub(crate) idle_since: Stamp,
}

impl<C> Conn<C> {
    /// A connection created at `now` that expires at `expires_at`.
    pub(crate) fn new(raw: C, now: Stamp, expires_at: Stamp) -> Self {
        Self {
            raw,
            // A stamp of zero is the clock's first nanosecond: one later makes no difference.
            expires_at: NonZeroU64::new(expires_at).unwrap_or(NonZeroU64::MIN),
            idle_since: now,
        }
    }

    /// Whether `max_lifetime` has run out at `now`.
    #[inline]
    pub(crate) fn expired(&self, now: Stamp) -> bool {
        self.expires_at.get() <= now
    }

    /// Whether the connection has a lifetime at all (`max_lifetime` is set).
    #[inline]
    pub(crate) fn mortal(&self) -> bool {
        self.expires_at.get() != Stamp::MAX
    }

    /// The connection as a guard holds it: the idle stamp is rewritten on return anyway.
    #[inline]
    pub(crate) fn check_out(self) -> InUse<C> {
        InUse {
            raw: self.raw,
            expires_at: self.expires_at,
        }
    }
}

/// A value that owns one slot of the pool's size counter: a connection the pool holds, or one
/// a guard holds. `Shared::destroy` takes only these, so that
/// it never gives back the slot of a connection that still lives elsewhere.
pub(crate) trait OwnsSlot {}

impl<C> OwnsSlot for Conn<C> {}

impl<C> OwnsSlot for InUse<C> {}

/// A checked-out connection and its expiry: two words for a word-sized connection, so that
/// it travels in registers from the guard to the return path. Each word more (and the stack
/// copies it forced, which stalled store forwarding) showed in the get+drop time.
pub(crate) struct InUse<C> {
    /// The user's connection.
    pub(crate) raw: C,
    /// As [`Conn`]'s.
    expires_at: NonZeroU64,
}

impl<C> InUse<C> {
    /// Whether `max_lifetime` has run out at `now`.
    #[inline]
    pub(crate) fn expired(&self, now: Stamp) -> bool {
        self.expires_at.get() <= now
    }

    /// The connection as it goes back into the idle queue at `now`.
    #[inline]
    pub(crate) fn idle_from(self, now: Stamp) -> Conn<C> {
        Conn {
            raw: self.raw,
            expires_at: self.expires_at,
            idle_since: now,
        }
    }
}

/// A connection checked out of a [`ConnectionPool`](crate::ConnectionPool).
///
/// It borrows the pool handle it came from (`'a`), as bb8's guard does: checking out and
/// returning then touch no reference count shared by every task, which would cost each
/// checkout a write to one cache line that all cores fight over. To keep a guard beyond that
/// borrow (in a struct, or moved into a spawned task), make it owned with
/// [`into_owned`](Self::into_owned) or check out with
/// [`get_connection_owned`](crate::ConnectionPool::get_connection_owned). An owned guard keeps
/// the pool's memory alive, not the pool: unlike bb8's, it does not count as a handle, so
/// dropping the last [`ConnectionPool`](crate::ConnectionPool) still closes the pool, and the
/// guard's connection is then destroyed when the guard drops instead of returned.
///
/// It dereferences to the connection. Dropping it returns the connection to the pool at once,
/// synchronously, without I/O or spawning; the connection is destroyed instead when it is
/// [broken](Self::mark_broken), when
/// [`ConnectionManager::has_broken`](crate::ConnectionManager::has_broken) says so, when it
/// outlived `max_lifetime`, when the pool is closed, or when the guard is dropped while the
/// thread is panicking (the connection may be mid-transaction).
///
/// A guard dropped because its task was cancelled (a future dropped mid-request) returns the
/// connection as it is. If a cancelled request can leave it mid-protocol, have
/// [`has_broken`](crate::ConnectionManager::has_broken) detect that, for example with a flag
/// the connection sets when a request starts and clears when its reply has been read.
pub struct PooledConnection<'a, M: ConnectionManager> {
    /// `Some` from checkout until `Drop` or `detach` takes it; it owns one slot of the pool's
    /// size counter.
    conn: Option<InUse<M::Connection>>,
    /// The pool the connection goes back to: borrowed from the handle, or owned.
    shared: Cow<'a, Arc<Shared<M>>>,
    /// Set by `mark_broken`: destroy instead of returning.
    broken: bool,
    /// The record of this checkout, only when leak detection or an observer is on: one pointer,
    /// so that the guard (moved on every checkout) stays small when both are off.
    checkout: Option<Arc<Checkout>>,
}

impl<'a, M: ConnectionManager> PooledConnection<'a, M> {
    pub(crate) fn new(
        shared: &'a Arc<Shared<M>>,
        conn: Conn<M::Connection>,
        checkout: Option<Arc<Checkout>>,
    ) -> Self {
        Self {
            conn: Some(conn.check_out()),
            shared: Cow::Borrowed(shared),
            broken: false,
            checkout,
        }
    }

    /// Attaches the record of this checkout (leak detection, observer).
    pub(crate) fn track(&mut self, record: Arc<Checkout>) {
        self.checkout = Some(record);
    }

    /// Turns this guard into one that does not borrow the pool handle, so that it can be kept
    /// in a struct or moved into a spawned task. It costs one reference-count increment now
    /// and a decrement when the guard drops; an owned guard keeps the pool's shared state
    /// alive, and the connection goes back to the pool as usual (or is destroyed if every
    /// handle is gone by then, since that closes the pool).
    ///
    /// # Examples
    ///
    /// ```
    /// # use connection_pool::{ConnectionManager, ConnectionPool, PooledConnection};
    /// # struct Numbers;
    /// # impl ConnectionManager for Numbers {
    /// #     type Connection = u32;
    /// #     type Error = std::io::Error;
    /// #     async fn create_connection(&self) -> Result<u32, std::io::Error> { Ok(7) }
    /// #     async fn is_valid(&self, _: &mut u32) -> Result<(), std::io::Error> { Ok(()) }
    /// # }
    /// # futures_lite::future::block_on(async {
    /// let pool = ConnectionPool::builder(Numbers).no_runtime().build()?;
    /// let conn: PooledConnection<'static, Numbers> = pool.get_connection().await?.into_owned();
    /// drop(pool); // the last handle: the pool closes
    /// assert_eq!(*conn, 7); // the guard still works; its connection is destroyed on drop
    /// # Ok::<(), connection_pool::PoolError<std::io::Error>>(())
    /// # }).unwrap();
    /// ```
    pub fn into_owned(mut self) -> PooledConnection<'static, M> {
        PooledConnection {
            conn: self.conn.take(),
            shared: Cow::Owned(Arc::clone(&self.shared)),
            broken: self.broken,
            checkout: self.checkout.take(),
        }
    }

    /// Tells leak detection and the observer that the connection is back (or gone).
    #[inline]
    fn end_checkout(&mut self) {
        if let Some(record) = self.checkout.take() {
            self.checkout_ended(&record);
        }
    }

    /// [`end_checkout`](Self::end_checkout) in `Drop`, where a panic in the observer's
    /// `on_return` would otherwise drop the connection without giving its slot back.
    #[cold]
    #[inline(never)]
    fn end_checkout_before_return(&mut self) {
        let Some(record) = self.checkout.take() else {
            return;
        };
        let Some(held) = self.conn.take() else {
            self.checkout_ended(&record);
            return;
        };
        let unwinding = PanicGuard::new(&self.shared);
        let conn = held;
        self.checkout_ended(&record);
        unwinding.disarm();
        self.conn = Some(conn);
    }

    /// [`end_checkout`](Self::end_checkout) with a record; out of line, so that the common
    /// return path (no leak detection, no observer) stays small.
    #[cold]
    #[inline(never)]
    fn checkout_ended(&self, record: &Checkout) {
        let shared = &**self.shared;
        // Out of the leak watch first: the clock and the observer are user code, and if they
        // panic the entry must still be free for the next checkout.
        if let Some(watch) = &shared.leaks {
            watch.unfile(record);
        }
        // A clock that panics while the guard is dropped by another panic costs the record,
        // not the process.
        let Some(now) = crate::pool::user_code_in_drop(|| shared.now()) else {
            return;
        };
        if let Some(watch) = &shared.leaks {
            if watch.returned(record, now, &shared.config.name, || shared.occupancy()) {
                crate::status::Stats::bump(&shared.stats.leaks);
            }
        }
        shared.observe_in_drop(|observer| {
            observer.on_return(now.saturating_duration_since(record.at()));
        });
    }

    /// Takes the connection out of the pool for good.
    ///
    /// Its slot is freed at once, so the pool may create a replacement; the connection is no
    /// longer counted, expired or closed by the pool.
    pub fn detach(mut self) -> M::Connection {
        self.end_checkout();
        let conn = self.conn.take().expect("connection present until drop");
        self.shared.detach(conn)
    }

    /// Marks the connection as broken: it is destroyed instead of returned when the guard is
    /// dropped. Call it after an I/O error or a cancelled request left the connection in an
    /// unknown state.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether [`mark_broken`](Self::mark_broken) was called.
    pub fn is_marked_broken(&self) -> bool {
        self.broken
    }

    fn conn(&self) -> &InUse<M::Connection> {
        self.conn.as_ref().expect("connection present until drop")
    }
}

impl<M: ConnectionManager> Deref for PooledConnection<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.conn().raw
    }
}

impl<M: ConnectionManager> DerefMut for PooledConnection<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self
            .conn
            .as_mut()
            .expect("connection present until drop")
            .raw
    }
}

impl<M: ConnectionManager> Drop for PooledConnection<'_, M> {
    fn drop(&mut self) {
        if self.checkout.is_some() {
            self.end_checkout_before_return();
        }
        if let Some(conn) = self.conn.take() {
            self.shared.recycle(conn, self.broken);
        }
    }
}

impl<M: ConnectionManager> fmt::Debug for PooledConnection<'_, M>
where
    M::Connection: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledConnection")
            .field("connection", &self.conn().raw)
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    struct Words;

    impl ConnectionManager for Words {
        type Connection = u64;
        type Error = Infallible;

        async fn create_connection(&self) -> Result<u64, Infallible> {
            Ok(0)
        }

        async fn is_valid(&self, _conn: &mut u64) -> Result<(), Infallible> {
            Ok(())
        }
    }

    /// The guard is moved on every checkout and its connection passed to the return path;
    /// each word more, and a connection no longer fitting two registers, showed in the
    /// get+drop time (see `benches/peers`).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_word_sized_connection_travels_in_two_words_and_its_guard_in_six() {
        assert_eq!(size_of::<Option<InUse<u64>>>(), 16);
        assert_eq!(size_of::<PooledConnection<'_, Words>>(), 48);
    }
}
