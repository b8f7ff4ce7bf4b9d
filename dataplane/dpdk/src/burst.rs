//! A reusable array of mbufs: the unit every poll, transmit and ring transfer works on.
//! Its capacity is fixed when it is made, so the fast path never allocates; a lcore keeps
//! one or a few bursts for its whole life.

use std::ops::{Deref, DerefMut, RangeBounds};

#[cfg(chc_dpdk)]
use chc_dpdk_sys as sys;

use crate::Mbuf;

/// Up to `capacity` owned mbufs, in order. Dereferences to `[Mbuf]` for reading and
/// rewriting packets; dropping or clearing it frees what it holds.
#[derive(Debug)]
pub struct Burst {
    // Never grows past its initial capacity: every push checks, so the Vec never reallocates.
    bufs: Vec<Mbuf>,
}

impl Burst {
    /// An empty burst for up to `capacity` packets (32 or 64 is typical; DPDK bursts are at
    /// most 65535).
    pub fn with_capacity(capacity: usize) -> Burst {
        Burst {
            bufs: Vec::with_capacity(capacity.min(u16::MAX as usize)),
        }
    }

    /// Most packets it can hold.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.bufs.capacity()
    }

    /// Free slots.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bufs.capacity() - self.bufs.len()
    }

    /// Whether no slot is free.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.remaining() == 0
    }

    /// Appends a packet, or hands it back when the burst is full.
    #[inline]
    pub fn push(&mut self, m: Mbuf) -> Result<(), Mbuf> {
        if self.is_full() {
            return Err(m);
        }
        self.bufs.push(m);
        Ok(())
    }

    /// Removes the last packet.
    #[inline]
    pub fn pop(&mut self) -> Option<Mbuf> {
        self.bufs.pop()
    }

    /// Removes packet `i`, moving the last one into its place.
    pub fn swap_remove(&mut self, i: usize) -> Mbuf {
        self.bufs.swap_remove(i)
    }

    /// Removes and yields the packets in `range`, keeping the order of the rest.
    pub fn drain<R: RangeBounds<usize>>(&mut self, range: R) -> impl Iterator<Item = Mbuf> + '_ {
        self.bufs.drain(range)
    }

    /// Keeps the packets for which `keep` is true (in order) and frees the others.
    pub fn retain_mut(&mut self, keep: impl FnMut(&mut Mbuf) -> bool) {
        self.bufs.retain_mut(keep);
    }

    /// Frees every packet with one bulk return to the pools.
    #[cfg(not(chc_dpdk))]
    pub fn clear(&mut self) {
        self.bufs.clear();
    }

    /// Frees every packet with one bulk return to the pools.
    #[cfg(chc_dpdk)]
    pub fn clear(&mut self) {
        let n = self.bufs.len();
        if n == 0 {
            return;
        }
        // SAFETY: the first n slots hold owned mbufs; set_len(0) first so they are not also
        // dropped one by one, then DPDK frees them all (Mbuf is a transparent mbuf pointer).
        unsafe {
            self.bufs.set_len(0);
            sys::rte_pktmbuf_free_bulk(self.bufs.as_mut_ptr().cast(), n as u32);
        }
    }

    #[cfg(chc_dpdk)]
    /// Pointer to the first free slot, for DPDK calls that fill the burst; see `commit`.
    #[inline]
    pub(crate) fn spare_raw(&mut self) -> *mut *mut sys::rte_mbuf {
        self.bufs.spare_capacity_mut().as_mut_ptr().cast()
    }

    #[cfg(chc_dpdk)]
    /// Records that DPDK wrote `n` mbufs into the free slots.
    ///
    /// # Safety
    ///
    /// `n <= remaining()`, and the first `n` free slots hold valid mbufs now owned by this
    /// burst (each non-null, owned by nothing else).
    #[inline]
    pub(crate) unsafe fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.remaining());
        // SAFETY: per the contract, the slots up to len + n are initialised owned mbufs.
        unsafe { self.bufs.set_len(self.bufs.len() + n) }
    }

    #[cfg(chc_dpdk)]
    /// The packets as DPDK's `struct rte_mbuf **`, for calls that take some of them; see
    /// `forget_front`.
    #[inline]
    pub(crate) fn as_raw(&mut self) -> *mut *mut sys::rte_mbuf {
        self.bufs.as_mut_ptr().cast()
    }

    #[cfg(chc_dpdk)]
    /// Drops the first `n` packets from the burst without freeing them, after DPDK took
    /// ownership of them (transmitted or enqueued); the rest move to the front, in order.
    ///
    /// # Safety
    ///
    /// `n <= len()`, and DPDK now owns the first `n` mbufs.
    #[inline]
    pub(crate) unsafe fn forget_front(&mut self, n: usize) {
        let len = self.bufs.len();
        debug_assert!(n <= len);
        // SAFETY: slots n..len are initialised; they move (bitwise, non-overlapping-safe
        // `copy`) to 0..len-n, and the new length excludes the moved-out slots, so each
        // remaining mbuf is owned exactly once and the given-away ones not at all.
        unsafe {
            let p = self.bufs.as_mut_ptr();
            std::ptr::copy(p.add(n), p, len - n);
            self.bufs.set_len(len - n);
        }
    }
}

impl Deref for Burst {
    type Target = [Mbuf];
    #[inline]
    fn deref(&self) -> &[Mbuf] {
        &self.bufs
    }
}

impl DerefMut for Burst {
    #[inline]
    fn deref_mut(&mut self) -> &mut [Mbuf] {
        &mut self.bufs
    }
}

impl Drop for Burst {
    fn drop(&mut self) {
        self.clear();
    }
}
