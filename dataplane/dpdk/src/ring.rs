//! `rte_ring`s of mbufs: how NF instances on one host hand bursts to each other between
//! lcores. A ring is made as a pair of ends whose types say whether one or many threads may
//! use them ([`Single`]/[`Multi`]), so the cheaper single-producer/consumer code is used only
//! where no second thread can get at that end.

use std::ffi::c_uint;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use chc_dpdk_sys as sys;

use crate::eal::{c_name, ensure_up, last_error};
use crate::{Burst, Mbuf, Multi, Result, SyncMode};

#[derive(Debug)]
struct RawRing {
    raw: NonNull<sys::rte_ring>,
    capacity: usize,
}

// SAFETY: the ring is DPDK shared memory made for use from several threads; which calls may
// run concurrently is enforced by the end types below, not by RawRing.
unsafe impl Send for RawRing {}
// SAFETY: as above; RawRing's own methods (count, free_count) are racy-but-safe reads.
unsafe impl Sync for RawRing {}

impl Drop for RawRing {
    fn drop(&mut self) {
        // Both ends are gone: this thread is the only user. Free the mbufs still queued, then
        // the ring.
        let mut burst = Burst::with_capacity(64);
        // SAFETY: exclusive access (see above); every object in the ring is an owned mbuf put
        // there by a producer end.
        while unsafe { dequeue(self.raw, &mut burst) } > 0 {
            burst.clear();
        }
        // SAFETY: the ring came from rte_ring_create and nobody refers to it any more.
        unsafe { sys::rte_ring_free(self.raw.as_ptr()) }
    }
}

impl RawRing {
    fn count(&self) -> usize {
        // SAFETY: a live ring; counts are computed from the head/tail indices.
        unsafe { sys::chc_rte_ring_count(self.raw.as_ptr()) as usize }
    }
}

/// Moves packets from the front of `burst` into the ring; returns how many went in.
///
/// # Safety
///
/// The caller may enqueue on this ring (only one thread at a time for a single-producer ring).
#[inline]
unsafe fn enqueue(ring: NonNull<sys::rte_ring>, burst: &mut Burst) -> usize {
    let n = burst.len() as c_uint;
    if n == 0 {
        return 0;
    }
    // SAFETY: the caller has the right to enqueue; the burst's first n slots are owned mbufs,
    // of which the ring takes the first `done`, which the burst then forgets.
    unsafe {
        let done = sys::chc_rte_ring_enqueue_burst(
            ring.as_ptr(),
            burst.as_raw().cast(),
            n,
            std::ptr::null_mut(),
        ) as usize;
        burst.forget_front(done);
        done
    }
}

/// Moves up to `burst.remaining()` packets from the ring into `burst`.
///
/// # Safety
///
/// The caller may dequeue from this ring (only one thread at a time for a single-consumer
/// ring), and the ring holds only owned mbufs.
#[inline]
unsafe fn dequeue(ring: NonNull<sys::rte_ring>, burst: &mut Burst) -> usize {
    let room = burst.remaining() as c_uint;
    if room == 0 {
        return 0;
    }
    // SAFETY: the caller has the right to dequeue; DPDK writes at most `room` mbufs into the
    // free slots, and their ownership passes from the ring to the burst.
    unsafe {
        let done = sys::chc_rte_ring_dequeue_burst(
            ring.as_ptr(),
            burst.spare_raw().cast(),
            room,
            std::ptr::null_mut(),
        ) as usize;
        burst.commit(done);
        done
    }
}

/// Creates a ring named `name` holding up to `capacity` mbufs (exactly; no power-of-two
/// rounding visible) and returns its two ends. `P` and `C` choose single- or multi-threaded
/// producer and consumer: `mbuf_ring::<Single, Single>("a->b", 1024)` for one lcore feeding
/// another. Names must be unique while the ring lives.
pub fn mbuf_ring<P: SyncMode, C: SyncMode>(
    name: &str,
    capacity: u32,
) -> Result<(RingProducer<P>, RingConsumer<C>)> {
    ensure_up()?;
    let cname = c_name("ring", name)?;
    let mut flags = sys::RING_F_EXACT_SZ;
    if P::SINGLE {
        flags |= sys::RING_F_SP_ENQ;
    }
    if C::SINGLE {
        flags |= sys::RING_F_SC_DEQ;
    }
    // SAFETY: the EAL is up and cname is a valid C string; rte_socket_id is callable anywhere.
    let raw = unsafe {
        sys::rte_ring_create(cname.as_ptr(), capacity, sys::rte_socket_id() as i32, flags)
    };
    let raw = NonNull::new(raw).ok_or_else(|| last_error("rte_ring_create"))?;
    let ring = Arc::new(RawRing {
        raw,
        capacity: capacity as usize,
    });
    Ok((
        RingProducer {
            ring: ring.clone(),
            _mode: PhantomData,
        },
        RingConsumer {
            ring,
            _mode: PhantomData,
        },
    ))
}

/// The enqueue end of a ring. For `P = Single` it is `Send` but neither `Sync` nor `Clone`:
/// one thread at a time enqueues. For `P = Multi` it is `Clone` and `Sync`.
#[derive(Debug)]
pub struct RingProducer<P: SyncMode> {
    ring: Arc<RawRing>,
    // *const makes the type !Send and !Sync by default; the impls below grant what P allows.
    _mode: PhantomData<*const P>,
}

/// The dequeue end of a ring; see [`RingProducer`].
#[derive(Debug)]
pub struct RingConsumer<C: SyncMode> {
    ring: Arc<RawRing>,
    _mode: PhantomData<*const C>,
}

// SAFETY: moving an end to another thread keeps "one thread at a time" for Single ends.
unsafe impl<P: SyncMode> Send for RingProducer<P> {}
// SAFETY: a multi-producer ring allows concurrent enqueues from any number of threads.
unsafe impl Sync for RingProducer<Multi> {}
// SAFETY: as for RingProducer.
unsafe impl<C: SyncMode> Send for RingConsumer<C> {}
// SAFETY: a multi-consumer ring allows concurrent dequeues.
unsafe impl Sync for RingConsumer<Multi> {}

impl Clone for RingProducer<Multi> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
            _mode: PhantomData,
        }
    }
}

impl Clone for RingConsumer<Multi> {
    fn clone(&self) -> Self {
        Self {
            ring: self.ring.clone(),
            _mode: PhantomData,
        }
    }
}

/// Occupancy of the ring, readable from either end (a racy snapshot, for telemetry).
macro_rules! occupancy_accessors {
    () => {
        /// Packets in the ring now.
        pub fn len(&self) -> usize {
            self.ring.count()
        }

        /// Whether the ring is empty now.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Most packets the ring holds.
        pub fn capacity(&self) -> usize {
            self.ring.capacity
        }
    };
}

impl<P: SyncMode> RingProducer<P> {
    /// Moves packets from the front of `burst` into the ring, as many as fit; returns how
    /// many. The rest stay in `burst`, in order.
    #[inline]
    pub fn enqueue_burst(&self, burst: &mut Burst) -> usize {
        // SAFETY: this end's type guarantees the ring's producer sync mode is respected.
        unsafe { enqueue(self.ring.raw, burst) }
    }

    /// Enqueues one packet, or hands it back when the ring is full.
    pub fn enqueue(&self, m: Mbuf) -> Result<(), Mbuf> {
        let raw = m.into_raw();
        // SAFETY: as for enqueue_burst; on success the ring owns the mbuf.
        let done = unsafe {
            sys::chc_rte_ring_enqueue_burst(
                self.ring.raw.as_ptr(),
                [raw.as_ptr().cast()].as_ptr(),
                1,
                std::ptr::null_mut(),
            )
        };
        if done == 1 {
            Ok(())
        } else {
            // SAFETY: not enqueued, so we still own it.
            Err(unsafe { Mbuf::from_raw(raw) })
        }
    }

    occupancy_accessors!();
}

impl<C: SyncMode> RingConsumer<C> {
    /// Moves up to `burst.remaining()` packets from the ring to the end of `burst`; returns
    /// how many.
    #[inline]
    pub fn dequeue_burst(&self, burst: &mut Burst) -> usize {
        // SAFETY: this end's type guarantees the consumer sync mode is respected; producers
        // put only owned mbufs in.
        unsafe { dequeue(self.ring.raw, burst) }
    }

    /// Takes one packet, if any.
    pub fn dequeue(&self) -> Option<Mbuf> {
        let mut slot: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: as for dequeue_burst, with a one-slot array.
        let done = unsafe {
            sys::chc_rte_ring_dequeue_burst(
                self.ring.raw.as_ptr(),
                &mut slot,
                1,
                std::ptr::null_mut(),
            )
        };
        if done != 1 {
            return None;
        }
        let raw = NonNull::new(slot.cast())?;
        // SAFETY: the object that came out is an owned mbuf, now ours.
        Some(unsafe { Mbuf::from_raw(raw) })
    }

    occupancy_accessors!();
}
