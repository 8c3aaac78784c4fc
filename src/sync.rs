//! The one place that names the synchronisation primitives.
//!
//! Every atomic, `Arc`, `Mutex` and the idle queue used by the pool come from here, so that the
//! loom build (`RUSTFLAGS="--cfg loom"`) can swap them for loom's instrumented versions and
//! explore their interleavings. crossbeam's queues are invisible to loom, so under `cfg(loom)`
//! the idle queue and the wait queue are `LoomQueue`s: the values under a loom `Mutex`, their
//! number in a loom atomic that the lock-free questions (`len`, `is_empty`, a `pop` that finds
//! nothing) read without the lock, ordered as crossbeam orders them and no more strongly (see
//! `LoomQueue` for why). The pool's correctness must rest on its own atomics and fences and on
//! event-listener's, never on the queues' ordering.

#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard, Weak,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
};

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence},
};

/// The busy-wait hint, for a retry that waits on another thread's progress: the processor's
/// spin-loop hint, and under loom a yield, without which loom keeps running the spinning thread
/// and never the one it waits for (and gives up at its branch limit).
#[cfg(not(loom))]
pub(crate) use std::hint::spin_loop;
#[cfg(loom)]
pub(crate) use loom::hint::spin_loop;
#[cfg(loom)]
use std::cell::Cell;

/// std's poisoning error, under loom too: loom's `Mutex::lock` returns std's `LockResult`.
pub(crate) use std::sync::PoisonError;

/// std's `Arc`, under loom too, for values the public API shares: the permanent creation
/// error callers fail fast with, and observers. They are immutable or synchronise themselves,
/// so there is no interleaving in the `Arc` for loom to explore.
pub(crate) use std::sync::Arc as StdArc;

/// A bounded lock-free queue of the free entries of the leak watch's table (crossbeam's
/// `ArrayQueue`). Leak detection needs a runtime, which loom models never have, so the loom
/// build keeps the same type: no model ever uses it.
pub(crate) use crossbeam_queue::ArrayQueue as LeakEntries;

/// An unbounded FIFO of waiting `get_connection` calls: crossbeam's lock-free `SegQueue`,
/// and under loom a `loom::sync::Mutex<VecDeque<T>>` so that models see its interleavings.
#[cfg(not(loom))]
pub(crate) struct WaitQueue<T> {
    queue: crossbeam_queue::SegQueue<T>,
}

#[cfg(not(loom))]
impl<T> WaitQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: crossbeam_queue::SegQueue::new(),
        }
    }

    /// Appends `value` at the back.
    pub(crate) fn push(&self, value: T) {
        self.queue.push(value);
    }

    /// Removes the value at the front.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Whether the queue holds nothing; a snapshot.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Loom stand-in for the wait queue: a `LoomQueue` without a bound.
#[cfg(loom)]
pub(crate) struct WaitQueue<T> {
    queue: LoomQueue<T>,
}

#[cfg(loom)]
impl<T> WaitQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: LoomQueue::new(),
        }
    }

    /// Appends `value` at the back.
    pub(crate) fn push(&self, value: T) {
        let pushed = self.queue.push(value, usize::MAX);
        debug_assert!(pushed.is_ok(), "an unbounded queue is never full");
    }

    /// Removes the value at the front.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Whether the queue holds nothing; a snapshot.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.len() == 0
    }
}

/// A bounded multi-producer multi-consumer queue of idle connections.
///
/// `push` hands the value back when the queue is full; the pool's size counter makes that
/// impossible (a value only exists while it holds one of `capacity` slots), and the pool
/// `debug_assert!`s it.
#[cfg(not(loom))]
pub(crate) struct IdleQueue<T> {
    /// Lock-free bounded queue (Dmitry Vyukov's bounded MPMC array queue, as in crossbeam).
    queue: crossbeam_queue::ArrayQueue<T>,
}

#[cfg(not(loom))]
impl<T> IdleQueue<T> {
    /// Creates a queue holding at most `capacity` values; `capacity` must be at least 1.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: crossbeam_queue::ArrayQueue::new(capacity),
        }
    }

    /// Appends `value`, or gives it back if the queue is full.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        self.queue.push(value)
    }

    /// Removes the oldest value.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// The number of values in the queue; a snapshot that may be stale at once.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

/// Loom stand-in for the idle queue: a `LoomQueue` holding at most `capacity` values.
#[cfg(loom)]
pub(crate) struct IdleQueue<T> {
    queue: LoomQueue<T>,
    /// The most values `queue` may hold.
    capacity: usize,
}

#[cfg(loom)]
impl<T> IdleQueue<T> {
    /// Creates a queue holding at most `capacity` values.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: LoomQueue::new(),
            capacity,
        }
    }

    /// Appends `value`, or gives it back if the queue is full.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        self.queue.push(value, self.capacity)
    }

    /// Removes the oldest value.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// The number of values in the queue; a snapshot that may be stale at once.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(loom)]
std::thread_local! {
    /// Whether a `LoomQueue` pop that finds nothing fences, as crossbeam's does. Per thread:
    /// loom runs all the threads of a model on the thread that checks it.
    static FENCE_EMPTY_POPS: Cell<bool> = const { Cell::new(true) };
}

/// Loom builds only: whether the stand-in queues' `pop` fences (`SeqCst`) when it finds the
/// queue empty, as crossbeam-queue 0.3's does (the default), or not, as nothing in crossbeam's
/// documentation promises. For the models checked afterwards on the calling thread.
#[cfg(loom)]
pub fn loom_queues_fence_empty_pops(fence: bool) {
    FENCE_EMPTY_POPS.with(|cell| cell.set(fence));
}

/// The loom model of crossbeam's `ArrayQueue` and `SegQueue` (crossbeam-queue 0.3.14, read for
/// this): a FIFO whose values sit under a loom `Mutex`, and whose number also sits in `len`, a
/// loom atomic that `push` and a successful `pop` update while they hold the lock.
///
/// Locking is a fair model of the operations that move a value: in crossbeam a push moves the
/// tail and a pop the head by `SeqCst` compare-and-swap, and each slot hands its value over by
/// a `Release` store and an `Acquire` load of its stamp (`ArrayQueue`) or state (`SegQueue`), so
/// those operations synchronise with one another much as lockers do.
///
/// It is not a fair model of the operations that only look, and a stand-in that locked for
/// them would order memory more strongly than crossbeam does: a lock synchronises with the last
/// unlock and releases to the next locker, which can stand in for a fence the pool forgot. So
/// those read `len` alone, with no lock, as crossbeam reads its indices:
///
/// * `len` and `is_empty` load the tail and head indices with `SeqCst` (both queues): here one
///   `SeqCst` load of `len`, which the updates write by `SeqCst` read-modify-write as crossbeam
///   moves the indices. (Loom treats `SeqCst` loads and read-modify-writes as `AcqRel`, which
///   if anything lets it explore executions crossbeam cannot have; it hides none.)
/// * A `pop` that finds the queue empty loads the head slot's stamp (`Acquire`), issues
///   `fence(SeqCst)` and then loads the tail index `Relaxed`, and returns `None` if it equals
///   the head (`ArrayQueue::pop`; `SegQueue::pop` likewise fences before its `Relaxed` tail
///   load). Here: the same fence, then a `Relaxed` load of `len`; only when that is non-zero
///   does it take the lock. The stamp's `Acquire` is left out: it synchronises with whoever
///   emptied that one slot a lap earlier, which a single counter cannot single out (an
///   `Acquire` load of `len` would synchronise with every push and pop before it, stronger than
///   crossbeam); the pool reads nothing that that edge would publish.
///
/// The fence in a failed pop is crossbeam's implementation, not its documented contract, and
/// the pool's comments say it must not rely on it. [`loom_queues_fence_empty_pops`]`(false)`
/// leaves it out, so that a model checks the pool against queues that promise no ordering on an
/// empty pop; loom-tests checks every model both ways.
#[cfg(loom)]
struct LoomQueue<T> {
    /// The queued values, oldest first.
    items: Mutex<std::collections::VecDeque<T>>,
    /// `items.len()`, written only under the lock, read without it.
    len: AtomicUsize,
}

#[cfg(loom)]
impl<T> LoomQueue<T> {
    fn new() -> Self {
        Self {
            items: Mutex::new(std::collections::VecDeque::new()),
            len: AtomicUsize::new(0),
        }
    }

    /// Appends `value`, or gives it back if the queue already holds `capacity` values.
    fn push(&self, value: T, capacity: usize) -> Result<(), T> {
        let mut items = self.items.lock().unwrap();
        if items.len() >= capacity {
            return Err(value);
        }
        items.push_back(value);
        self.len.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the oldest value; an empty queue is seen without the lock.
    fn pop(&self) -> Option<T> {
        if FENCE_EMPTY_POPS.with(Cell::get) {
            fence(Ordering::SeqCst);
        }
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut items = self.items.lock().unwrap();
        let value = items.pop_front()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(value)
    }

    /// The number of values; a snapshot, read without the lock.
    fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }
}
