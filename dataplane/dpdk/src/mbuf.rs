//! One packet in a DPDK buffer, owned: dropping an [`Mbuf`] returns it to its pool. The
//! packet's bytes are read and rewritten in place ([`Mbuf::data`], [`Mbuf::data_mut`]), and
//! headers are pushed into or stripped from the headroom without copying the payload
//! ([`Mbuf::prepend`], [`Mbuf::adj`]).
//!
//! Most packets fit one segment. A frame larger than the pool's data room arrives as a chain
//! of segments: [`Mbuf::data`] is then only the first segment, [`Mbuf::len`] the whole
//! packet, and [`Mbuf::linearize`] or [`Mbuf::to_vec`] give the rest.

use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::{fmt, slice};

use chc_dpdk_sys as sys;

use crate::eal::last_error;
use crate::{Error, Mempool, Result};

/// Where drivers put receive timestamps: a dynamic mbuf field (offset into the mbuf) and a
/// flag bit in `ol_flags` saying the field is set. Registered once per process by the first
/// driver asked to timestamp; a mask of 0 means no port timestamps.
static RX_TIMESTAMP_OFFSET: AtomicUsize = AtomicUsize::new(0);
static RX_TIMESTAMP_FLAG: AtomicU64 = AtomicU64::new(0);

/// Looks up the timestamp field and flag after a port with timestamps started.
pub(crate) fn find_rx_timestamps() -> Result<()> {
    // SAFETY: the names are NUL-terminated constants; NULL asks for no parameters back.
    let offset = unsafe {
        sys::rte_mbuf_dynfield_lookup(
            sys::RTE_MBUF_DYNFIELD_TIMESTAMP_NAME.as_ptr().cast(),
            std::ptr::null_mut(),
        )
    };
    if offset < 0 {
        return Err(last_error("rte_mbuf_dynfield_lookup"));
    }
    // SAFETY: as above.
    let bit = unsafe {
        sys::rte_mbuf_dynflag_lookup(
            sys::RTE_MBUF_DYNFLAG_RX_TIMESTAMP_NAME.as_ptr().cast(),
            std::ptr::null_mut(),
        )
    };
    if !(0..64).contains(&bit) {
        return Err(last_error("rte_mbuf_dynflag_lookup"));
    }
    RX_TIMESTAMP_OFFSET.store(offset as usize, Ordering::Relaxed);
    // Release: a reader that sees the flag also sees the offset.
    RX_TIMESTAMP_FLAG.store(1 << bit, Ordering::Release);
    Ok(())
}

/// An owned packet buffer.
///
/// `#[repr(transparent)]` over the `rte_mbuf` pointer, so a `[Mbuf]` is exactly the
/// `struct rte_mbuf *[]` that rx/tx burst and ring calls take.
#[repr(transparent)]
pub struct Mbuf {
    raw: NonNull<sys::rte_mbuf>,
}

// SAFETY: an Mbuf is the only handle to its buffer, so moving it to another thread moves the
// ownership; freeing from any thread is allowed (the pool's ring is multi-producer).
unsafe impl Send for Mbuf {}
// SAFETY: through &Mbuf only reads are possible; all mutation needs &mut Mbuf.
unsafe impl Sync for Mbuf {}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf (and its chain); after this nobody refers to it.
        unsafe { sys::chc_rte_pktmbuf_free(self.raw.as_ptr()) }
    }
}

/// `len` as the u16 DPDK's length arguments take, if it is at most `available`.
fn fit(len: usize, available: usize) -> Result<u16> {
    u16::try_from(len)
        .ok()
        .filter(|&n| usize::from(n) <= available)
        .ok_or(Error::NoRoom {
            needed: len,
            available,
        })
}

impl Mbuf {
    /// Takes ownership of a raw mbuf.
    ///
    /// # Safety
    ///
    /// `raw` must be a valid packet mbuf (from a pktmbuf pool) that nothing else owns or will
    /// free, with reference count 1 and its own (not attached) data buffer.
    #[inline]
    pub unsafe fn from_raw(raw: NonNull<sys::rte_mbuf>) -> Mbuf {
        Mbuf { raw }
    }

    /// Gives up ownership without freeing; the caller must free or hand on the pointer.
    #[inline]
    pub fn into_raw(self) -> NonNull<sys::rte_mbuf> {
        ManuallyDrop::new(self).raw
    }

    /// The raw mbuf, for DPDK calls this crate does not wrap.
    #[inline]
    pub fn as_ptr(&self) -> *mut sys::rte_mbuf {
        self.raw.as_ptr()
    }

    #[inline]
    fn head(&self) -> &sys::rte_mbuf {
        // SAFETY: we own a valid mbuf; shared access matches &self.
        unsafe { self.raw.as_ref() }
    }

    /// The bytes of the first segment: the whole packet when [`Mbuf::is_contiguous`].
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.head();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's buffer and holds
        // initialised packet bytes; we own the buffer, so nobody writes it meanwhile.
        unsafe {
            slice::from_raw_parts(
                m.buf_addr.cast::<u8>().add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// The bytes of the first segment, writable in place.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        let m = self.head();
        let (addr, off, len) = (m.buf_addr.cast::<u8>(), m.data_off, m.data_len);
        // SAFETY: as in data(); &mut self makes this the only access to the bytes.
        unsafe { slice::from_raw_parts_mut(addr.add(off as usize), len as usize) }
    }

    /// Length of the whole packet (all segments).
    #[inline]
    pub fn len(&self) -> usize {
        self.head().pkt_len as usize
    }

    /// Whether the packet has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Length of the first segment ([`Mbuf::data`]).
    #[inline]
    pub fn data_len(&self) -> usize {
        self.head().data_len as usize
    }

    /// Number of segments.
    #[inline]
    pub fn segments(&self) -> u16 {
        self.head().nb_segs
    }

    /// Whether the whole packet is in the first segment.
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.head().nb_segs == 1
    }

    /// The segments' bytes, in order.
    pub fn segment_data(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut seg: *const sys::rte_mbuf = self.raw.as_ptr();
        std::iter::from_fn(move || {
            // SAFETY: seg is the head or a `next` link of a chain we own; each segment stays
            // valid while &self lives, and its data range is initialised.
            let m = unsafe { seg.as_ref()? };
            seg = m.next;
            // SAFETY: as in data(), for this segment.
            Some(unsafe {
                slice::from_raw_parts(
                    m.buf_addr.cast::<u8>().add(m.data_off as usize),
                    m.data_len as usize,
                )
            })
        })
    }

    /// A copy of the whole packet.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for seg in self.segment_data() {
            out.extend_from_slice(seg);
        }
        out
    }

    /// Free bytes in front of the data (for prepending headers).
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head().data_off as usize
    }

    fn last_segment(&self) -> &sys::rte_mbuf {
        // SAFETY: we own a valid chain; its last segment lives as long as the head.
        unsafe { &*sys::chc_rte_pktmbuf_lastseg(self.raw.as_ptr()) }
    }

    /// Free bytes after the data in the last segment.
    pub fn tailroom(&self) -> usize {
        let last = self.last_segment();
        last.buf_len as usize - last.data_off as usize - last.data_len as usize
    }

    /// Grows the packet at the front by `len` bytes taken from the headroom and returns them
    /// (uninitialised garbage until written), e.g. to push an NSH header before Ethernet.
    pub fn prepend(&mut self, len: usize) -> Result<&mut [u8]> {
        let available = self.headroom();
        let n = fit(len, available)?;
        // SAFETY: we own the mbuf; n <= headroom, so DPDK moves data_off back and succeeds.
        let p = unsafe { sys::chc_rte_pktmbuf_prepend(self.raw.as_ptr(), n) };
        if p.is_null() {
            return Err(Error::NoRoom {
                needed: len,
                available,
            });
        }
        Ok(&mut self.data_mut()[..len])
    }

    /// Strips `len` bytes from the front of the packet (into the headroom), e.g. to pop an
    /// encapsulation header; they must lie in the first segment.
    pub fn adj(&mut self, len: usize) -> Result<()> {
        let available = self.data_len();
        let n = fit(len, available)?;
        // SAFETY: we own the mbuf; n <= data_len of the first segment, so DPDK succeeds.
        let p = unsafe { sys::chc_rte_pktmbuf_adj(self.raw.as_ptr(), n) };
        if p.is_null() {
            return Err(Error::NoRoom {
                needed: len,
                available,
            });
        }
        Ok(())
    }

    /// Grows the packet at the end by `len` bytes of the last segment's tailroom and returns
    /// them (uninitialised until written).
    pub fn append(&mut self, len: usize) -> Result<&mut [u8]> {
        let available = self.tailroom();
        let n = fit(len, available)?;
        // SAFETY: we own the mbuf; n <= tailroom of the last segment, so DPDK extends it.
        let p = unsafe { sys::chc_rte_pktmbuf_append(self.raw.as_ptr(), n) };
        if p.is_null() {
            return Err(Error::NoRoom {
                needed: len,
                available,
            });
        }
        // SAFETY: p points at the n appended bytes inside the last segment's buffer, which we
        // own exclusively for as long as &mut self is borrowed.
        Ok(unsafe { slice::from_raw_parts_mut(p.cast::<u8>(), len) })
    }

    /// Removes `len` bytes from the end of the packet; they must lie in the last segment.
    pub fn trim(&mut self, len: usize) -> Result<()> {
        let available = self.last_segment().data_len as usize;
        let n = fit(len, available)?;
        // SAFETY: we own the mbuf; n <= data_len of the last segment, so DPDK succeeds.
        if unsafe { sys::chc_rte_pktmbuf_trim(self.raw.as_ptr(), n) } != 0 {
            return Err(Error::NoRoom {
                needed: len,
                available,
            });
        }
        Ok(())
    }

    /// Copies a chained packet into its first segment, so [`Mbuf::data`] covers all of it.
    /// Errors when the first segment's buffer is too small.
    pub fn linearize(&mut self) -> Result<()> {
        if self.is_contiguous() {
            return Ok(());
        }
        let head = self.head();
        let (needed, available) = (self.len(), head.buf_len as usize - head.data_off as usize);
        // SAFETY: we own the whole chain; DPDK copies into the head and frees the rest.
        if unsafe { sys::chc_rte_pktmbuf_linearize(self.raw.as_ptr()) } != 0 {
            return Err(Error::NoRoom { needed, available });
        }
        Ok(())
    }

    /// The per-packet space of a pool made with [`Mempool::pktmbuf_with_private`] (empty
    /// otherwise). It travels with the mbuf through rings; drivers never touch it, and it
    /// keeps whatever the buffer's previous packet left there until written.
    #[inline]
    pub fn private_area(&self) -> &[u8] {
        let len = usize::from(self.head().priv_size);
        // SAFETY: DPDK lays the private area out right after struct rte_mbuf, `priv_size`
        // bytes long, inside the pool's memory; we own the mbuf.
        unsafe {
            slice::from_raw_parts(
                self.raw
                    .as_ptr()
                    .cast::<u8>()
                    .add(std::mem::size_of::<sys::rte_mbuf>()),
                len,
            )
        }
    }

    /// The per-packet space, writable.
    #[inline]
    pub fn private_area_mut(&mut self) -> &mut [u8] {
        let len = usize::from(self.head().priv_size);
        // SAFETY: as in private_area; &mut self makes this the only access.
        unsafe {
            slice::from_raw_parts_mut(
                self.raw
                    .as_ptr()
                    .cast::<u8>()
                    .add(std::mem::size_of::<sys::rte_mbuf>()),
                len,
            )
        }
    }

    /// The port the packet was received on.
    #[inline]
    pub fn port(&self) -> u16 {
        self.head().port
    }

    /// The NIC's RSS hash of the packet, when the port computed one.
    #[inline]
    pub fn rss_hash(&self) -> Option<u32> {
        let m = self.head();
        if m.ol_flags & u64::from(sys::RTE_MBUF_F_RX_RSS_HASH) != 0 {
            // SAFETY: the flag says the driver wrote the `rss` member of the hash union.
            Some(unsafe { m.__bindgen_anon_2.hash.rss })
        } else {
            None
        }
    }

    /// When the device received the packet, if its port was started with
    /// [`crate::PortConfig::rx_timestamps`]. DPDK leaves unit and epoch to the device: NICs
    /// count in their own clock; `net_pcap` gives the capture time recorded in the file, in
    /// microseconds since the Unix epoch.
    #[inline]
    pub fn rx_timestamp(&self) -> Option<u64> {
        let flag = RX_TIMESTAMP_FLAG.load(Ordering::Acquire);
        if flag == 0 || self.head().ol_flags & flag == 0 {
            return None;
        }
        let offset = RX_TIMESTAMP_OFFSET.load(Ordering::Relaxed);
        // SAFETY: the flag says the driver wrote the registered 8-byte field at `offset`,
        // which DPDK placed inside the mbuf structure we own.
        Some(unsafe {
            self.raw
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<u64>()
                .read_unaligned()
        })
    }

    /// The pool this buffer returns to.
    pub fn pool(&self) -> Mempool {
        // SAFETY: every pktmbuf records its (never freed) pool.
        unsafe { Mempool::from_raw(NonNull::new_unchecked(self.head().pool)) }
    }
}

impl fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mbuf")
            .field("len", &self.len())
            .field("segments", &self.segments())
            .field("headroom", &self.headroom())
            .field("port", &self.port())
            .finish()
    }
}
