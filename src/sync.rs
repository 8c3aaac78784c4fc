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
/// and under loom a `LoomQueue` stand-in (below) so that models see its interleavings.
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
            queue: LoomQueue::new(Crossbeam::SegQueue),
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
            queue: LoomQueue::new(Crossbeam::ArrayQueue),
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
use std::cell::Cell;

#[cfg(loom)]
std::thread_local! {
    /// Whether `LoomQueue` pops fence where crossbeam's do. Per thread: loom runs all the
    /// threads of a model on the thread that checks it.
    static CROSSBEAM_FENCES: Cell<bool> = const { Cell::new(true) };
}

/// Loom builds only: whether the stand-in queues' `pop` issues the `fence(SeqCst)` that
/// crossbeam-queue 0.3's does (the default), or leaves it out, as nothing in crossbeam's
/// documentation promises it. For the models checked afterwards on the calling thread.
#[cfg(loom)]
pub fn loom_queues_fence_like_crossbeam(fence: bool) {
    CROSSBEAM_FENCES.with(|cell| cell.set(fence));
}

/// Which crossbeam queue a `LoomQueue` stands in for: they fence in different places.
#[cfg(loom)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crossbeam {
    /// `ArrayQueue`: a pop fences only when the head slot looks empty.
    ArrayQueue,
    /// `SegQueue`: a pop fences whenever head and tail may share a block, which in a queue
    /// that has taken fewer than 31 pushes is every time.
    SegQueue,
}

/// `SegQueue`'s block size: past this many pushes head and tail can be a block apart, and its
/// pop then skips the fence, which the stand-in does not model.
#[cfg(loom)]
const SEG_BLOCK_CAP: usize = 31;

/// The loom model of crossbeam's `ArrayQueue` and `SegQueue` (crossbeam-queue 0.3.14, read for
/// this): a FIFO whose values sit under a loom `Mutex`, and whose number also sits in `len`, a
/// loom atomic read without the lock.
///
/// Moving a value: a push appends under the lock, then increments `len`; a pop first reserves
/// a value by decrementing `len` with a compare-and-swap (`SeqCst`, failing `Relaxed`, as
/// crossbeam moves its head index), and only then takes the lock to remove the oldest value.
/// The lock is a fair model of crossbeam's hand-over through the slot: a `Release` store and an
/// `Acquire` load of the slot's stamp (`ArrayQueue`) or state (`SegQueue`). (Two racing pops
/// may take their values in the other order than they reserved them, which nothing can tell
/// apart from the pops having run the other way round.)
///
/// Looking: a stand-in that locked to answer `len`, `is_empty` or an empty pop would order
/// memory more strongly than crossbeam, where those are index loads: a lock synchronises with
/// the last unlock and releases to the next locker, and can stand in for a fence the pool
/// forgot. So they read `len` alone:
///
/// * `len` and `is_empty` load the tail and head indices with `SeqCst` (both queues); here one
///   `SeqCst` load of `len`, which push and pop change by `SeqCst` read-modify-write as
///   crossbeam moves its indices. (Loom handles `SeqCst` accesses as `AcqRel`: if anything it
///   explores executions crossbeam cannot have, never fewer.)
/// * `ArrayQueue::pop` loads the head slot's stamp (`Acquire`); only if that says empty does it
///   issue `fence(SeqCst)` and load the tail index (`Relaxed`), returning `None` if it equals
///   the head. `SegQueue::pop`, while head and tail may share a block, always issues the fence
///   and loads the tail (`Relaxed`) before it moves the head. Here the same fences, where
///   crossbeam has them, then `Relaxed` loads of `len`. The stamp's `Acquire` is left out: it
///   synchronises with whoever emptied that one slot a lap earlier, which one counter cannot
///   single out, and an `Acquire` load of `len` would synchronise with every push and pop
///   before it, more than crossbeam does. (Making it `Acquire` changes no model's outcome.)
///
/// The fences in a pop are crossbeam's implementation, not its documented contract, and the
/// pool's comments say it must not rely on them. [`loom_queues_fence_like_crossbeam`]`(false)`
/// leaves them out, so that a model checks the pool against queues that promise no ordering
/// beyond handing each value over; loom-tests checks every model both ways.
#[cfg(loom)]
struct LoomQueue<T> {
    /// The queued values, oldest first (including values reserved by a pop that has not yet
    /// taken them), and the pushes ever made.
    items: Mutex<(std::collections::VecDeque<T>, usize)>,
    /// Values queued and not reserved by a pop; changed by push under the lock, by pop without.
    len: AtomicUsize,
    /// Where its pop fences.
    kind: Crossbeam,
}

#[cfg(loom)]
impl<T> LoomQueue<T> {
    fn new(kind: Crossbeam) -> Self {
        Self {
            items: Mutex::new((std::collections::VecDeque::new(), 0)),
            len: AtomicUsize::new(0),
            kind,
        }
    }

    /// Appends `value`, or gives it back if the queue already holds `capacity` values.
    fn push(&self, value: T, capacity: usize) -> Result<(), T> {
        let mut items = self.items.lock().unwrap();
        let (queued, pushes) = &mut *items;
        if queued.len() >= capacity {
            return Err(value);
        }
        *pushes += 1;
        assert!(
            self.kind != Crossbeam::SegQueue || *pushes < SEG_BLOCK_CAP,
            "the SegQueue stand-in models a queue whose head and tail share a block"
        );
        queued.push_back(value);
        self.len.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Removes the oldest value; finding the queue empty takes no lock.
    fn pop(&self) -> Option<T> {
        let fences = CROSSBEAM_FENCES.with(Cell::get);
        loop {
            let len = match self.kind {
                Crossbeam::ArrayQueue => match self.len.load(Ordering::Relaxed) {
                    0 => {
                        if fences {
                            fence(Ordering::SeqCst);
                        }
                        self.len.load(Ordering::Relaxed)
                    }
                    len => len,
                },
                Crossbeam::SegQueue => {
                    if fences {
                        fence(Ordering::SeqCst);
                    }
                    self.len.load(Ordering::Relaxed)
                }
            };
            if len == 0 {
                return None;
            }
            if self
                .len
                .compare_exchange(len, len - 1, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        let value = self.items.lock().unwrap().0.pop_front();
        debug_assert!(value.is_some(), "a reserved value is in the queue");
        value
    }

    /// The number of values; a snapshot, read without the lock.
    fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }
}
