//! The one place that names the synchronisation primitives.
//!
//! Every atomic, `Arc`, `Mutex` and the idle queue used by the pool come from here, so that the
//! loom build (`RUSTFLAGS="--cfg loom"`) can swap them for loom's instrumented versions and
//! explore their interleavings. `crossbeam_queue::ArrayQueue` is invisible to loom, so under
//! `cfg(loom)` the idle queue is a `loom::sync::Mutex<VecDeque<T>>` with the same capacity
//! contract. That stand-in is more strongly ordered than `ArrayQueue`: the pool's correctness
//! must rest on its own atomics and on event-listener's fences, never on the queue's ordering.

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

/// Loom stand-in for the wait queue.
#[cfg(loom)]
pub(crate) struct WaitQueue<T> {
    queue: Mutex<std::collections::VecDeque<T>>,
}

#[cfg(loom)]
impl<T> WaitQueue<T> {
    pub(crate) fn new() -> Self {
        Self {
            queue: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Appends `value` at the back.
    pub(crate) fn push(&self, value: T) {
        self.queue.lock().unwrap().push_back(value);
    }

    /// Removes the value at the front.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.lock().unwrap().pop_front()
    }

    /// Whether the queue holds nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.lock().unwrap().is_empty()
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

/// Loom stand-in for the idle queue: a mutex-protected `VecDeque` with the same capacity check.
#[cfg(loom)]
pub(crate) struct IdleQueue<T> {
    /// The queued values, oldest first.
    queue: Mutex<std::collections::VecDeque<T>>,
    /// The most values `queue` may hold.
    capacity: usize,
}

#[cfg(loom)]
impl<T> IdleQueue<T> {
    /// Creates a queue holding at most `capacity` values.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(std::collections::VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Appends `value`, or gives it back if the queue is full.
    pub(crate) fn push(&self, value: T) -> Result<(), T> {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= self.capacity {
            return Err(value);
        }
        queue.push_back(value);
        Ok(())
    }

    /// Removes the oldest value.
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.lock().unwrap().pop_front()
    }

    /// The number of values in the queue.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}
