//! Packet-buffer pools. A pool is never freed: DPDK cannot tell whether mbufs from it are
//! still alive, so freeing it safely would need a count on every packet. Pools are made once
//! at start-up and live until the process exits, which is how DPDK applications use them.

use std::ffi::{c_int, c_uint, CStr};
use std::ptr::NonNull;

use chc_dpdk_sys as sys;

use crate::eal::{c_name, ensure_up, last_error};
use crate::{Burst, Error, Mbuf, Result};

/// A handle to an mbuf pool; copies are cheap and refer to the same pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mempool {
    raw: NonNull<sys::rte_mempool>,
}

// SAFETY: pktmbuf pools use DPDK's default "ring_mp_mc" handler, whose get and put are safe
// from any number of threads; per-lcore caches are touched only by the thread owning that
// lcore id (threads without one bypass the cache). The pool itself is never freed.
unsafe impl Send for Mempool {}
// SAFETY: as for Send; every method takes &self and is one of those thread-safe operations.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a pool of `size` packet buffers with `data_room` bytes each (headroom
    /// included; [`crate::DEFAULT_DATA_ROOM`] fits a 1518-byte frame) and a per-lcore cache
    /// of `cache_size` buffers (at most 512). DPDK sizes its ring best when `size` is a power
    /// of two minus one. Errors if the name is taken or memory is short.
    pub fn pktmbuf(name: &str, size: u32, cache_size: u32, data_room: u16) -> Result<Mempool> {
        Mempool::pktmbuf_with_private(name, size, cache_size, data_room, 0)
    }

    /// Like [`Mempool::pktmbuf`], with `private` bytes of per-packet space next to each
    /// buffer ([`Mbuf::private_area`]): where the dataplane keeps a packet's CHC metadata
    /// while the packet moves between lcores on one host. A multiple of 8.
    pub fn pktmbuf_with_private(
        name: &str,
        size: u32,
        cache_size: u32,
        data_room: u16,
        private: u16,
    ) -> Result<Mempool> {
        ensure_up()?;
        if private % 8 != 0 {
            return Err(Error::InvalidArgument(format!(
                "mempool {name:?}: private area of {private} bytes is not a multiple of 8"
            )));
        }
        if size == 0 || data_room <= crate::HEADROOM {
            return Err(Error::InvalidArgument(format!(
                "mempool {name:?}: size {size} and data room {data_room} must exceed 0 and the \
                 {} bytes of headroom",
                crate::HEADROOM
            )));
        }
        let cname = c_name("mempool", name)?;
        // SAFETY: the EAL is up; cname is a valid C string; rte_socket_id is callable from any
        // thread (SOCKET_ID_ANY, i.e. -1 as c_int, outside lcores lets DPDK choose).
        let raw = unsafe {
            sys::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                size as c_uint,
                cache_size as c_uint,
                private,
                data_room,
                sys::rte_socket_id() as c_int,
            )
        };
        NonNull::new(raw)
            .map(|raw| Mempool { raw })
            .ok_or_else(|| last_error("rte_pktmbuf_pool_create"))
    }

    /// Finds a pool made earlier (in this process) by name.
    pub fn lookup(name: &str) -> Result<Mempool> {
        ensure_up()?;
        let cname = c_name("mempool", name)?;
        // SAFETY: the EAL is up and cname is a valid C string.
        let raw = unsafe { sys::rte_mempool_lookup(cname.as_ptr()) };
        NonNull::new(raw)
            .map(|raw| Mempool { raw })
            .ok_or_else(|| last_error("rte_mempool_lookup"))
    }

    /// Wraps a raw pool.
    ///
    /// # Safety
    ///
    /// `raw` must be a pktmbuf pool that is never freed.
    pub unsafe fn from_raw(raw: NonNull<sys::rte_mempool>) -> Mempool {
        Mempool { raw }
    }

    /// Takes one empty packet buffer (data length 0, full headroom).
    pub fn alloc(&self) -> Result<Mbuf> {
        // SAFETY: self.raw is a live pktmbuf pool (pools are never freed).
        let raw = unsafe { sys::chc_rte_pktmbuf_alloc(self.raw.as_ptr()) };
        match NonNull::new(raw) {
            // SAFETY: a freshly allocated mbuf is owned by nobody else.
            Some(raw) => Ok(unsafe { Mbuf::from_raw(raw) }),
            None => Err(self.exhausted(1)),
        }
    }

    /// Takes a buffer and copies `bytes` into it (test traffic, injected packets).
    pub fn alloc_from(&self, bytes: &[u8]) -> Result<Mbuf> {
        let mut m = self.alloc()?;
        m.append(bytes.len())?.copy_from_slice(bytes);
        Ok(m)
    }

    /// Appends `n` empty buffers to `burst` in one bulk operation, all or none.
    pub fn alloc_bulk(&self, burst: &mut Burst, n: usize) -> Result<()> {
        if n > burst.remaining() {
            return Err(Error::InvalidArgument(format!(
                "bulk alloc of {n} mbufs into a burst with room for {}",
                burst.remaining()
            )));
        }
        let spare = burst.spare_raw();
        // SAFETY: spare points at `remaining() >= n` writable slots; on success DPDK wrote n
        // valid, exclusively owned mbuf pointers there, which commit hands to the burst.
        unsafe {
            if sys::chc_rte_pktmbuf_alloc_bulk(self.raw.as_ptr(), spare, n as c_uint) != 0 {
                return Err(self.exhausted(n));
            }
            burst.commit(n);
        }
        Ok(())
    }

    /// Buffers free in the pool (including those in lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: self.raw is a live pool; the count is a racy but safe read.
        unsafe { sys::rte_mempool_avail_count(self.raw.as_ptr()) }
    }

    /// Buffers currently taken from the pool.
    pub fn in_use(&self) -> u32 {
        // SAFETY: as for available.
        unsafe { sys::rte_mempool_in_use_count(self.raw.as_ptr()) }
    }

    /// Total buffers in the pool.
    pub fn size(&self) -> u32 {
        // SAFETY: self.raw is a live pool; `size` is set at creation and never changes.
        unsafe { (*self.raw.as_ptr()).size }
    }

    /// The pool's name.
    pub fn name(&self) -> String {
        // SAFETY: `name` is a NUL-terminated array set at creation and never changed.
        unsafe { CStr::from_ptr((*self.raw.as_ptr()).name.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    /// The raw pool, for DPDK calls this crate does not wrap.
    pub fn as_ptr(&self) -> *mut sys::rte_mempool {
        self.raw.as_ptr()
    }

    fn exhausted(&self, needed: usize) -> Error {
        Error::PoolExhausted {
            needed,
            available: self.available() as usize,
        }
    }
}
