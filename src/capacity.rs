//! Slots and connect permits, packed into one atomic word.
//!
//! A *slot* is one of `max_size` places for a connection: it is taken before a connection is
//! created and given back after the connection is dropped. A *permit* is one of
//! `max_connecting` places for a `create_connection` call in flight. Creating needs both, and
//! they are taken together by one compare-and-swap on one word, so a getter never holds one
//! while failing to get the other. That matters for the wake-up protocol: a getter that briefly
//! held a permit and then gave it back because the pool was full would make a concurrent
//! getter see "no permit" and sleep, and giving it back would then need a wake-up of its own,
//! which two such getters would bounce between for ever.
//!
//! Layout: bits 0..32 count slots in use (`size`), bits 32..64 count creations in flight.
//! `max_size` is at most 2^16, so neither half can overflow into the other.

use crate::sync::{AtomicU64, Ordering};

const SLOT: u64 = 1;
const PERMIT: u64 = 1 << 32;
const SLOT_MASK: u64 = PERMIT - 1;

/// The pool's size counter and its count of creations in flight.
pub(crate) struct Capacity {
    /// `connecting << 32 | size`; `size <= max_size` and `connecting <= size` always.
    word: AtomicU64,
    max_size: usize,
}

impl Capacity {
    pub(crate) fn new(max_size: usize) -> Self {
        Self {
            word: AtomicU64::new(0),
            max_size,
        }
    }

    /// Slots in use: connections that exist plus creations in flight.
    pub(crate) fn size(&self) -> usize {
        (self.word.load(Ordering::Acquire) & SLOT_MASK) as usize
    }

    /// `create_connection` calls in flight.
    pub(crate) fn connecting(&self) -> usize {
        self.read().1
    }

    /// Slots in use and creations in flight, read together: `connecting <= size` holds
    /// between the two, as it does not between a `size()` and a later `connecting()`.
    pub(crate) fn read(&self) -> (usize, usize) {
        let word = self.word.load(Ordering::Acquire);
        ((word & SLOT_MASK) as usize, (word >> 32) as usize)
    }

    /// Takes a slot and a permit together, if a slot is free and fewer than `max_connecting`
    /// creations are in flight. Compare-and-swap, so racing callers cannot overshoot either.
    pub(crate) fn try_begin_create(&self, max_connecting: usize) -> bool {
        let (max_size, max_connecting) = (self.max_size as u64, max_connecting as u64);
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (size, connecting) = (word & SLOT_MASK, word >> 32);
                (size < max_size && connecting < max_connecting).then_some(word + PERMIT + SLOT)
            })
            .is_ok()
    }

    /// Adds a permit to a slot the caller already holds (a connection it just destroyed), if
    /// fewer than `max_connecting` creations are in flight.
    pub(crate) fn try_add_permit(&self, max_connecting: usize) -> bool {
        let max_connecting = max_connecting as u64;
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (size, connecting) = (word & SLOT_MASK, word >> 32);
                debug_assert!(size > connecting, "no slot held outside a creation");
                (connecting < max_connecting).then_some(word + PERMIT)
            })
            .is_ok()
    }

    /// Gives a permit the caller holds (its creation just finished, its slot going with the
    /// connection) a new slot, if one is free: a creation begins without the permit ever
    /// being free in between.
    pub(crate) fn try_add_slot(&self) -> bool {
        let max_size = self.max_size as u64;
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                debug_assert!(word >> 32 > 0, "no permit held");
                ((word & SLOT_MASK) < max_size).then_some(word + SLOT)
            })
            .is_ok()
    }

    /// Whether a creation could begin now: a slot and a permit are free.
    pub(crate) fn can_create(&self, max_connecting: usize) -> bool {
        let word = self.word.load(Ordering::Acquire);
        ((word & SLOT_MASK) as usize) < self.max_size && ((word >> 32) as usize) < max_connecting
    }

    /// A creation finished with a connection: its permit is free, its slot goes with the
    /// connection.
    pub(crate) fn finish_create(&self) {
        let previous = self.word.fetch_sub(PERMIT, Ordering::AcqRel);
        debug_assert!(previous >> 32 > 0, "finished a creation that never began");
    }

    /// A creation failed or was abandoned: both its permit and its slot are free.
    pub(crate) fn abort_create(&self) {
        let previous = self.word.fetch_sub(PERMIT + SLOT, Ordering::AcqRel);
        debug_assert!(
            previous >> 32 > 0 && previous & SLOT_MASK > 0,
            "aborted a creation that never began"
        );
    }

    /// A connection was dropped or detached: its slot is free.
    pub(crate) fn release_slot(&self) {
        let previous = self.word.fetch_sub(SLOT, Ordering::AcqRel);
        debug_assert!(
            previous & SLOT_MASK > previous >> 32,
            "released a slot that no connection held"
        );
    }
}
