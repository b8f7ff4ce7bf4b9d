//! The API of the real backend for builds without DPDK. Every constructor returns
//! [`Error::Unavailable`] with the build script's reason, so no value of the handle types can
//! exist and their methods are unreachable (`match self.never {}`). Code written against this
//! crate compiles the same way in both builds; `tests/api.rs` pins the shared signatures.
#![allow(missing_docs, clippy::missing_errors_doc, clippy::len_without_is_empty)]

use std::convert::Infallible;
use std::marker::PhantomData;

use crate::{Burst, Error, LinkStatus, Multi, PortConfig, PortInfo, PortStats, Result, SyncMode};

/// `&self` getters of an uninhabited handle.
macro_rules! unreachable_methods {
    ($($name:ident -> $ty:ty),* $(,)?) => {
        $(pub fn $name(&self) -> $ty {
            match self.never {}
        })*
    };
}

fn off<T>() -> Result<T> {
    Err(Error::Unavailable(chc_dpdk_sys::STATUS))
}

#[derive(Debug)]
pub struct Eal {
    never: Infallible,
}

impl Eal {
    pub fn init<I, S>(args: I) -> Result<Eal>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        drop(args);
        off()
    }
    pub fn is_initialised() -> bool {
        false
    }
    pub fn main_lcore(&self) -> u32 {
        match self.never {}
    }
    /// # Safety
    ///
    /// Nothing to uphold: no EAL can exist in this build.
    pub unsafe fn cleanup(self) -> Result<()> {
        match self.never {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mempool {
    never: Infallible,
}

impl Mempool {
    pub fn pktmbuf(_name: &str, _size: u32, _cache_size: u32, _data_room: u16) -> Result<Mempool> {
        off()
    }
    pub fn pktmbuf_with_private(
        _name: &str,
        _size: u32,
        _cache_size: u32,
        _data_room: u16,
        _private: u16,
    ) -> Result<Mempool> {
        off()
    }
    pub fn lookup(_name: &str) -> Result<Mempool> {
        off()
    }
    pub fn alloc(&self) -> Result<Mbuf> {
        match self.never {}
    }
    pub fn alloc_from(&self, _bytes: &[u8]) -> Result<Mbuf> {
        match self.never {}
    }
    pub fn alloc_bulk(&self, _burst: &mut Burst, _n: usize) -> Result<()> {
        match self.never {}
    }
    pub fn available(&self) -> u32 {
        match self.never {}
    }
    pub fn in_use(&self) -> u32 {
        match self.never {}
    }
    pub fn size(&self) -> u32 {
        match self.never {}
    }
    pub fn name(&self) -> String {
        match self.never {}
    }
}

#[derive(Debug)]
pub struct Mbuf {
    never: Infallible,
}

impl Mbuf {
    pub fn data(&self) -> &[u8] {
        match self.never {}
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        match self.never {}
    }
    pub fn len(&self) -> usize {
        match self.never {}
    }
    pub fn is_empty(&self) -> bool {
        match self.never {}
    }
    pub fn data_len(&self) -> usize {
        match self.never {}
    }
    pub fn segments(&self) -> u16 {
        match self.never {}
    }
    pub fn is_contiguous(&self) -> bool {
        match self.never {}
    }
    pub fn segment_data(&self) -> impl Iterator<Item = &[u8]> + '_ {
        match self.never {}
        #[allow(unreachable_code)]
        std::iter::empty()
    }
    pub fn to_vec(&self) -> Vec<u8> {
        match self.never {}
    }
    pub fn headroom(&self) -> usize {
        match self.never {}
    }
    pub fn tailroom(&self) -> usize {
        match self.never {}
    }
    pub fn prepend(&mut self, _len: usize) -> Result<&mut [u8]> {
        match self.never {}
    }
    pub fn adj(&mut self, _len: usize) -> Result<()> {
        match self.never {}
    }
    pub fn append(&mut self, _len: usize) -> Result<&mut [u8]> {
        match self.never {}
    }
    pub fn trim(&mut self, _len: usize) -> Result<()> {
        match self.never {}
    }
    pub fn linearize(&mut self) -> Result<()> {
        match self.never {}
    }
    pub fn port(&self) -> u16 {
        match self.never {}
    }
    pub fn rss_hash(&self) -> Option<u32> {
        match self.never {}
    }
    pub fn rx_timestamp(&self) -> Option<u64> {
        match self.never {}
    }
    pub fn private_area(&self) -> &[u8] {
        match self.never {}
    }
    pub fn private_area_mut(&mut self) -> &mut [u8] {
        match self.never {}
    }
    pub fn pool(&self) -> Mempool {
        match self.never {}
    }
}

#[derive(Debug)]
pub struct Port {
    never: Infallible,
}

impl Port {
    pub fn open(_name: &str) -> Result<Port> {
        off()
    }
    pub fn open_id(_id: u16) -> Result<Port> {
        off()
    }
    pub fn attach(_devargs: &str) -> Result<Port> {
        off()
    }
    pub fn list() -> Result<Vec<PortInfo>> {
        off()
    }
    pub fn id(&self) -> u16 {
        match self.never {}
    }
    pub fn info(&self) -> Result<PortInfo> {
        match self.never {}
    }
    pub fn start(self, _config: &PortConfig, _pool: &Mempool) -> Result<StartedPort> {
        match self.never {}
    }
    pub fn close(self) -> Result<()> {
        match self.never {}
    }
}

#[derive(Debug)]
pub struct StartedPort {
    pub port: RunningPort,
    pub rx: Vec<RxQueue>,
    pub tx: Vec<TxQueue>,
}

#[derive(Debug, Clone)]
pub struct RunningPort {
    never: Infallible,
}

impl RunningPort {
    pub fn id(&self) -> u16 {
        match self.never {}
    }
    pub fn info(&self) -> Result<PortInfo> {
        match self.never {}
    }
    pub fn rss_hash_functions(&self) -> u64 {
        match self.never {}
    }
    pub fn stats(&self) -> Result<PortStats> {
        match self.never {}
    }
    pub fn reset_stats(&self) -> Result<()> {
        match self.never {}
    }
    pub fn link(&self) -> Result<LinkStatus> {
        match self.never {}
    }
    pub fn stop(self) -> Result<Port> {
        match self.never {}
    }
}

#[derive(Debug)]
pub struct RxQueue {
    never: Infallible,
}

impl RxQueue {
    pub fn rx_burst(&mut self, _burst: &mut Burst) -> usize {
        match self.never {}
    }
    unreachable_methods!(port_id -> u16, queue_id -> u16, port -> RunningPort);
}

#[derive(Debug)]
pub struct TxQueue {
    never: Infallible,
}

impl TxQueue {
    pub fn tx_burst(&mut self, _burst: &mut Burst) -> usize {
        match self.never {}
    }
    unreachable_methods!(port_id -> u16, queue_id -> u16, port -> RunningPort);
}

pub fn mbuf_ring<P: SyncMode, C: SyncMode>(
    _name: &str,
    _capacity: u32,
) -> Result<(RingProducer<P>, RingConsumer<C>)> {
    off()
}

#[derive(Debug)]
pub struct RingProducer<P: SyncMode> {
    never: Infallible,
    _mode: PhantomData<*const P>,
}

#[derive(Debug)]
pub struct RingConsumer<C: SyncMode> {
    never: Infallible,
    _mode: PhantomData<*const C>,
}

// SAFETY: no value of these types can exist; the impls mirror the real backend's.
unsafe impl<P: SyncMode> Send for RingProducer<P> {}
// SAFETY: as above.
unsafe impl Sync for RingProducer<Multi> {}
// SAFETY: as above.
unsafe impl<C: SyncMode> Send for RingConsumer<C> {}
// SAFETY: as above.
unsafe impl Sync for RingConsumer<Multi> {}

impl Clone for RingProducer<Multi> {
    fn clone(&self) -> Self {
        match self.never {}
    }
}

impl Clone for RingConsumer<Multi> {
    fn clone(&self) -> Self {
        match self.never {}
    }
}

impl<P: SyncMode> RingProducer<P> {
    pub fn enqueue_burst(&self, _burst: &mut Burst) -> usize {
        match self.never {}
    }
    pub fn enqueue(&self, m: Mbuf) -> Result<(), Mbuf> {
        match m.never {}
    }
    unreachable_methods!(len -> usize, is_empty -> bool, capacity -> usize);
}

impl<C: SyncMode> RingConsumer<C> {
    pub fn dequeue_burst(&self, _burst: &mut Burst) -> usize {
        match self.never {}
    }
    pub fn dequeue(&self) -> Option<Mbuf> {
        match self.never {}
    }
    unreachable_methods!(len -> usize, is_empty -> bool, capacity -> usize);
}

pub mod lcore {
    //! Without DPDK no thread is an lcore; [`tsc`] counts nanoseconds since first use so
    //! that cycle arithmetic stays monotonic.

    use std::convert::Infallible;
    use std::marker::PhantomData;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::off;
    use crate::Result;

    pub fn id() -> Option<u32> {
        None
    }
    pub fn main() -> Result<u32> {
        off()
    }
    pub fn workers() -> Result<Vec<u32>> {
        off()
    }
    pub fn count() -> Result<u32> {
        off()
    }
    pub fn keep_off_lcores(_thread: std::os::unix::thread::RawPthread) -> Result<bool> {
        off()
    }
    pub fn socket() -> Option<u32> {
        None
    }
    pub fn launch<T, F>(_lcore: u32, _work: F) -> Result<LcoreJoin<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        off()
    }

    #[derive(Debug)]
    pub struct LcoreJoin<T> {
        never: Infallible,
        _result: PhantomData<*const T>,
    }

    impl<T> LcoreJoin<T> {
        pub fn lcore(&self) -> u32 {
            match self.never {}
        }
        pub fn join(self) -> Result<T> {
            match self.never {}
        }
    }

    pub fn tsc() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
    pub fn tsc_hz() -> Result<u64> {
        off()
    }
}
