//! The queue of `get_connection` calls waiting for a connection, served first come, first
//! served by direct hand-off (HikariCP's trick; no other Rust pool does it).
//!
//! A waiter publishes a [`WaitSlot`] at the back of a FIFO and parks on the slot's own
//! `event-listener` event. A returned connection is not put into the idle queue while anyone
//! waits: it is placed into the oldest waiting slot, which is marked `SERVED` and woken. So a
//! task that returns a connection and asks again at once cannot take it back ahead of the
//! waiters (the barging that gives bb8 its multi-second tail, bb8#243), and a woken waiter never
//! finds its connection gone and has to queue again at the back.
//!
//! Each slot moves out of `WAITING` exactly once, by compare-and-swap, to one of:
//!
//! * `SERVED`: a connection was placed in the slot (before the swap) and is the waiter's;
//! * `GRANTED`: a slot and a connect permit came free and were reserved for this waiter (before
//!   the swap), which now owns them and creates a connection with them: a caller that comes
//!   along before the waiter runs cannot take them;
//! * `WOKEN`: the pool closed, or the connect governor changed its mind (or, while creations
//!   fail, a slot or permit came free with no creation in flight), or a sweep of abandoned places emptied the list: the
//!   waiter re-checks everything and may queue again;
//! * `ABANDONED`: the waiter gave up (timeout, cancellation, or it found what it needed on
//!   its own); whoever pops the slot later skips it.
//!
//! A call that has to queue again after leaving the line (its handed-over connection failed
//! its check while no connect permit was free to replace it, it was woken to re-check, its
//! backoff timer fired) has waited longer than every call that queued for the first time
//! since: it takes a place in a second lane, the front lane, which producers serve first.
//! Sending it to the back would let every newer caller go first, once per stale connection
//! during a failover. The front lane is ordered by the ticket each call drew when it first
//! queued, not by when it queued again: an older call whose check took longer, or which was
//! woken alone to ask the connect governor and told to wait, goes back ahead of younger ones.
//! It is a short sorted list under a lock, touched only while it holds anyone (producers read
//! its length first), so the common wait, which never queues again, takes no lock.
//!
//! Whoever moves a slot out of `WAITING` decrements `waiting`, so it counts waiting slots
//! exactly. A waiter that is cancelled after being served hands the connection on; one that is
//! cancelled after being granted passes the reservation on; one that is cancelled after being
//! woken wakes the next waiter, so no hand-off, reservation or wake-up is lost.

use crate::sync::{
    Arc, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, PoisonError, WaitQueue, fence,
};
use event_listener::{Event, EventListener};
use std::collections::VecDeque;

/// A call's place in the order of arrival: drawn when it first queues, kept when it queues
/// again.
pub(crate) type Ticket = u64;

const WAITING: usize = 0;
const SERVED: usize = 1;
const WOKEN: usize = 2;
const ABANDONED: usize = 3;
const GRANTED: usize = 4;

/// One waiting `get_connection` call.
pub(crate) struct WaitSlot<C> {
    /// `WAITING`, then one of `SERVED`, `GRANTED`, `WOKEN`, `ABANDONED`, for good.
    state: AtomicUsize,
    /// The handed-off connection: filled just before `state` becomes `SERVED`.
    conn: HandOff<C>,
    /// Notified once when `state` leaves `WAITING` by hand-off or wake-up.
    event: Event,
}

/// How a waiter's slot ended, as seen by the waiter.
pub(crate) enum Resolution<C> {
    /// Still waiting.
    Waiting,
    /// A connection was handed to it.
    Served(C),
    /// A slot and a connect permit were reserved for it.
    Granted,
    /// It was woken to re-check.
    Woken,
    /// The waiter itself gave up first.
    Abandoned,
}

impl<C> WaitSlot<C> {
    fn new() -> Self {
        Self {
            state: AtomicUsize::new(WAITING),
            conn: HandOff::new(),
            event: Event::new(),
        }
    }

    /// Parks on the slot; create it before re-checking the state, so no wake-up is missed.
    pub(crate) fn listen(&self) -> EventListener {
        self.event.listen()
    }

    /// What happened to the slot, without changing it.
    pub(crate) fn resolution(&self) -> Resolution<C> {
        match self.state.load(Ordering::Acquire) {
            WAITING => Resolution::Waiting,
            SERVED => Resolution::Served(self.take_served()),
            GRANTED => Resolution::Granted,
            WOKEN => Resolution::Woken,
            _ => Resolution::Abandoned,
        }
    }

    fn take_served(&self) -> C {
        self.conn
            .take()
            .expect("a served slot holds its connection until the waiter takes it")
    }
}

/// The cell a connection is handed over in: filled by the producer before it moves the slot
/// out of `WAITING`, emptied by whichever side the state then says owns the connection (the
/// waiter if `SERVED`, else the producer taking it back). Only the producer that popped the
/// slot from the queue fills it, once (each wait has a slot of its own), and the state
/// machine keeps the two sides apart in time, so the lock is never contended; it is there to
/// keep this safe code. It sits in the slot's own allocation, next to `state`, where a
/// one-place `ArrayQueue` took two padded cache lines plus a buffer of its own, each a cache
/// miss on a hand-off between cores.
struct HandOff<C> {
    /// The connection between the producer's `put` and the owner's `take`; `None` otherwise.
    cell: Mutex<Option<C>>,
}

impl<C> HandOff<C> {
    /// An empty cell.
    fn new() -> Self {
        Self {
            cell: Mutex::new(None),
        }
    }

    /// Fills the cell, which is empty: a slot is served at most once.
    fn put(&self, conn: C) {
        let previous = self.lock().replace(conn);
        debug_assert!(
            previous.is_none(),
            "a wait slot was offered two connections"
        );
    }

    /// Empties the cell.
    fn take(&self) -> Option<C> {
        self.lock().take()
    }

    /// No code that can panic runs under the lock, so it is never poisoned; if it were, the
    /// `Option` inside is still whole.
    fn lock(&self) -> MutexGuard<'_, Option<C>> {
        self.cell.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Slots of calls queueing again, lowest ticket first.
struct FrontLane<T> {
    /// Sorted by ticket. Short: only calls that left the line and came back are here.
    entries: Mutex<VecDeque<(Ticket, T)>>,
    /// `entries.len()`, read without the lock: producers look at it on every hand-off while
    /// anyone waits, and it is nearly always zero. Changed under the lock, by read-modify-
    /// writes ahead of the registering waiter's fence (see `WaitList::register`).
    len: AtomicUsize,
}

impl<T> FrontLane<T> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    /// Inserts `value` behind every entry with a lower ticket.
    fn push(&self, ticket: Ticket, value: T) {
        let mut entries = self.lock();
        let at = entries.partition_point(|(queued, _)| *queued < ticket);
        entries.insert(at, (ticket, value));
        self.len.fetch_add(1, Ordering::SeqCst);
    }

    /// Removes the entry with the lowest ticket.
    fn pop(&self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let mut entries = self.lock();
        let (_, value) = entries.pop_front()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(value)
    }

    /// Whether the lane holds nothing; a snapshot.
    fn is_empty(&self) -> bool {
        self.len.load(Ordering::SeqCst) == 0
    }

    /// No code that can panic runs under the lock (a `VecDeque` that cannot grow aborts), so
    /// it is never poisoned; if it were, the list is still whole.
    fn lock(&self) -> MutexGuard<'_, VecDeque<(Ticket, T)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waiting `get_connection` calls, oldest first.
pub(crate) struct WaitList<C> {
    /// Published slots of calls queueing again, served before `queue`; lowest ticket first,
    /// and like `queue` may still hold slots that left `WAITING`.
    front: FrontLane<Arc<WaitSlot<C>>>,
    /// Published slots of calls queueing for the first time, oldest first; may still hold
    /// slots that left `WAITING`.
    queue: WaitQueue<Arc<WaitSlot<C>>>,
    /// Slots in state `WAITING`.
    waiting: AtomicUsize,
    /// The next call to queue for the first time draws this ticket. Next to `waiting`, which
    /// the same registration has just written: no further cache line moves.
    next_ticket: AtomicU64,
    /// Abandoned slots still in `front` or `queue` (counted before the swap, so never below
    /// the truth). Producers skip them as they meet them, but behind a waiting slot they would stay; a
    /// pool whose callers keep timing out while nothing comes back would pile them up.
    abandoned: AtomicUsize,
}

/// Abandoned slots tolerated in the queue before the whole list is swept.
const SWEEP_AFTER: usize = 1024;

impl<C> WaitList<C> {
    pub(crate) fn new() -> Self {
        Self {
            front: FrontLane::new(),
            queue: WaitQueue::new(),
            waiting: AtomicUsize::new(0),
            next_ticket: AtomicU64::new(0),
            abandoned: AtomicUsize::new(0),
        }
    }

    /// Calls waiting now; a snapshot.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Publishes a new slot, already listened to: at the back of the line with a new ticket,
    /// or, for a call that was in line before (with the ticket it drew then), in the front
    /// lane behind every older call there. Returns the slot, its listener and the ticket.
    pub(crate) fn register(
        &self,
        ticket: Option<Ticket>,
    ) -> (Arc<WaitSlot<C>>, EventListener, Ticket) {
        // A fresh slot each time: recycling slots through a shared queue of spares made the
        // hold-mode cells where tasks wait about 10-30 % slower (the spare queue's and the
        // recycled slot's cache lines moved between cores on every wait; a fresh allocation
        // comes from this thread's malloc cache).
        let slot = Arc::new(WaitSlot::new());
        let listener = slot.listen();
        // Count first, publish second: a producer that sees the count but not yet the slot
        // leaves its connection idle, and this waiter's re-check after publishing finds it.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let ticket = match ticket {
            Some(ticket) => {
                self.front.push(ticket, Arc::clone(&slot));
                ticket
            }
            None => {
                // Only the order matters, and the registration publishes it.
                let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                self.queue.push(Arc::clone(&slot));
                ticket
            }
        };
        // Publish before the caller re-checks the idle queue; pairs with the fence in
        // `Shared::give` between its push and its look at the wait list.
        fence(Ordering::SeqCst);
        (slot, listener, ticket)
    }

    /// Gives up `slot` on the waiter's side. Returns what the waiter must now deal with: a
    /// connection handed to it, a wake-up to pass on, or nothing.
    pub(crate) fn abandon(&self, slot: &WaitSlot<C>) -> Resolution<C> {
        // Count first, so that a producer that pops this slot and finds it abandoned never
        // takes the count below zero.
        let abandoned = self.abandoned.fetch_add(1, Ordering::AcqRel) + 1;
        match slot
            .state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                if abandoned > SWEEP_AFTER && abandoned > 4 * self.waiting() {
                    // Mostly dead entries: pop them all. The waiting ones are woken, re-check
                    // and queue again, keeping their deadlines.
                    self.wake_all();
                }
                Resolution::Abandoned
            }
            Err(state) => {
                self.abandoned.fetch_sub(1, Ordering::AcqRel);
                match state {
                    SERVED => Resolution::Served(slot.take_served()),
                    GRANTED => Resolution::Granted,
                    WOKEN => Resolution::Woken,
                    _ => Resolution::Abandoned,
                }
            }
        }
    }

    /// Hands `conn` to the oldest waiting call, or gives it back when nobody waits.
    pub(crate) fn offer(&self, mut conn: C) -> Result<(), C> {
        while let Some(slot) = self.pop() {
            // The connection goes in before the swap, so a served waiter always finds it; if
            // the swap fails the waiter never touches it and it is taken back.
            slot.conn.put(conn);
            match slot
                .state
                .compare_exchange(WAITING, SERVED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    slot.event.notify(1);
                    return Ok(());
                }
                Err(_) => {
                    // Abandoned: skip it.
                    self.abandoned.fetch_sub(1, Ordering::AcqRel);
                    conn = slot.take_served();
                }
            }
        }
        Err(conn)
    }

    /// Wakes the oldest waiting call to re-check; returns whether there was one.
    pub(crate) fn wake_one(&self) -> bool {
        while let Some(slot) = self.pop() {
            if self.resolve(&slot, WOKEN) {
                return true;
            }
        }
        false
    }

    /// Gives the oldest waiting call a slot and permit the caller reserved for it; returns
    /// `false`, the reservation still the caller's, when no published place is waiting.
    pub(crate) fn grant(&self) -> bool {
        while let Some(slot) = self.pop() {
            if self.resolve(&slot, GRANTED) {
                return true;
            }
        }
        false
    }

    /// Wakes every waiting call to re-check.
    pub(crate) fn wake_all(&self) {
        while let Some(slot) = self.pop() {
            self.resolve(&slot, WOKEN);
        }
    }

    /// Moves a popped slot from `WAITING` to `outcome` (`WOKEN` or `GRANTED`) and notifies
    /// its waiter; `false` when it was abandoned.
    fn resolve(&self, slot: &WaitSlot<C>, outcome: usize) -> bool {
        let woken = slot
            .state
            .compare_exchange(WAITING, outcome, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if woken {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            slot.event.notify(1);
        } else {
            // Abandoned: dropped from the queue here.
            self.abandoned.fetch_sub(1, Ordering::AcqRel);
        }
        woken
    }

    /// The oldest published slot: the front lane's first.
    fn pop(&self) -> Option<Arc<WaitSlot<C>>> {
        self.front.pop().or_else(|| self.queue.pop())
    }

    /// Whether no slot is published (a waiter may be between counting and publishing).
    pub(crate) fn is_empty(&self) -> bool {
        self.front.is_empty() && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pile_of_abandoned_slots_is_swept_and_the_waiting_ones_woken() {
        let list = WaitList::<u32>::new();
        let (first, _listener, _) = list.register(None);
        let mut peak = 0;
        for _ in 0..5 * SWEEP_AFTER {
            let (slot, _listener, _) = list.register(None);
            assert!(matches!(list.abandon(&slot), Resolution::Abandoned));
            peak = peak.max(list.abandoned.load(Ordering::SeqCst));
        }
        assert!(peak <= SWEEP_AFTER + 1, "{peak} abandoned slots piled up");
        assert!(matches!(first.resolution(), Resolution::Woken));
        assert_eq!(list.waiting(), 0);
        // Whatever is left behind the last sweep is skipped, and counted out, by a producer.
        assert_eq!(list.offer(7), Err(7));
        assert_eq!(list.abandoned.load(Ordering::SeqCst), 0);
        assert!(list.is_empty());
    }

    #[test]
    fn grant_resolves_the_oldest_waiting_slot_and_skips_abandoned_ones() {
        let list = WaitList::<u32>::new();
        let (gone, _l1, _) = list.register(None);
        let (oldest, _l2, _) = list.register(None);
        assert!(matches!(list.abandon(&gone), Resolution::Abandoned));
        assert!(list.grant());
        assert!(matches!(oldest.resolution(), Resolution::Granted));
        // Abandoning afterwards tells the waiter it holds the grant, to pass on.
        assert!(matches!(list.abandon(&oldest), Resolution::Granted));
        assert_eq!(list.waiting(), 0);
        assert!(!list.grant(), "nobody left to grant to");
        assert_eq!(list.abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn offer_serves_the_oldest_waiting_slot_and_skips_abandoned_ones() {
        let list = WaitList::<u32>::new();
        let (gone, _l1, _) = list.register(None);
        let (oldest, _l2, _) = list.register(None);
        let (younger, _l3, _) = list.register(None);
        assert!(matches!(list.abandon(&gone), Resolution::Abandoned));
        assert_eq!(list.offer(1), Ok(()));
        assert!(matches!(oldest.resolution(), Resolution::Served(1)));
        assert!(matches!(younger.resolution(), Resolution::Waiting));
        assert_eq!(list.waiting(), 1);
        assert!(list.wake_one());
        assert!(matches!(younger.resolution(), Resolution::Woken));
        assert!(matches!(list.abandon(&younger), Resolution::Woken));
        assert_eq!(list.abandoned.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn calls_queueing_again_are_served_by_first_arrival_ahead_of_newcomers() {
        let list = WaitList::<u32>::new();
        // Three calls queue; the two oldest leave the line (served a connection that then
        // failed its check), the younger of them coming back first.
        let (_, _l1, oldest) = list.register(None);
        let (_, _l2, middle) = list.register(None);
        let (_, _l3, _) = list.register(None);
        assert!(oldest < middle);
        assert_eq!(list.offer(1), Ok(()));
        assert_eq!(list.offer(2), Ok(()));
        let (middle_again, _l4, kept) = list.register(Some(middle));
        assert_eq!(kept, middle);
        let (oldest_again, _l5, _) = list.register(Some(oldest));
        let (newcomer, _l6, newest) = list.register(None);
        assert!(newest > middle);
        assert_eq!(list.offer(3), Ok(()));
        assert!(matches!(oldest_again.resolution(), Resolution::Served(3)));
        assert_eq!(list.offer(4), Ok(()));
        assert!(matches!(middle_again.resolution(), Resolution::Served(4)));
        // Then the first-time line: the third call, then the newcomer.
        assert_eq!(list.offer(5), Ok(()));
        assert!(matches!(newcomer.resolution(), Resolution::Waiting));
        assert_eq!(list.offer(6), Ok(()));
        assert!(matches!(newcomer.resolution(), Resolution::Served(6)));
        assert!(list.is_empty());
        assert_eq!(list.waiting(), 0);
    }
}
