//! The public API is the same whether or not the build found DPDK: this file names every
//! item's signature and compiles in both builds (CI builds the stubs with
//! `CHC_DPDK_DISABLE=1` in scripts/test.d/dpdk.sh). Its tests check what each build promises.

use chc_dpdk::lcore::{self, LcoreJoin};
use chc_dpdk::{
    mbuf_ring, Burst, Eal, EalArgs, Error, LinkStatus, Mbuf, Mempool, Multi, Port, PortConfig,
    PortInfo, PortStats, Result, RingConsumer, RingProducer, RunningPort, RxQueue, Single,
    StartedPort, TxQueue,
};

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

/// Never called: it only has to compile, identically in both builds.
#[allow(dead_code, clippy::type_complexity)]
fn signatures() {
    let _: fn(EalArgs) -> Result<Eal> = Eal::init::<EalArgs, String>;
    let _ = |a: &EalArgs| Eal::init(a);
    let _ = |a: EalArgs, p: &std::path::Path| a.pcap_vdev("net_pcap0", Some(p), None);
    let _: fn() -> bool = Eal::is_initialised;
    let _: fn(&Eal) -> u32 = Eal::main_lcore;

    let _: fn(&str, u32, u32, u16) -> Result<Mempool> = Mempool::pktmbuf;
    let _: fn(&str, u32, u32, u16, u16) -> Result<Mempool> = Mempool::pktmbuf_with_private;
    let _: fn(&str) -> Result<Mempool> = Mempool::lookup;
    let _: fn(&Mempool) -> Result<Mbuf> = Mempool::alloc;
    let _: fn(&Mempool, &[u8]) -> Result<Mbuf> = Mempool::alloc_from;
    let _: fn(&Mempool, &mut Burst, usize) -> Result<()> = Mempool::alloc_bulk;
    let _: fn(&Mempool) -> u32 = Mempool::available;
    let _: fn(&Mempool) -> u32 = Mempool::in_use;
    let _: fn(&Mempool) -> u32 = Mempool::size;
    let _: fn(&Mempool) -> String = Mempool::name;

    let _: for<'a> fn(&'a Mbuf) -> &'a [u8] = Mbuf::data;
    let _: for<'a> fn(&'a mut Mbuf) -> &'a mut [u8] = Mbuf::data_mut;
    let _: fn(&Mbuf) -> usize = Mbuf::len;
    let _: fn(&Mbuf) -> bool = Mbuf::is_empty;
    let _: fn(&Mbuf) -> usize = Mbuf::data_len;
    let _: fn(&Mbuf) -> u16 = Mbuf::segments;
    let _: fn(&Mbuf) -> bool = Mbuf::is_contiguous;
    let _: fn(&Mbuf) -> Vec<u8> = Mbuf::to_vec;
    let _: fn(&Mbuf) -> usize = Mbuf::headroom;
    let _: fn(&Mbuf) -> usize = Mbuf::tailroom;
    let _: for<'a> fn(&'a mut Mbuf, usize) -> Result<&'a mut [u8]> = Mbuf::prepend;
    let _: fn(&mut Mbuf, usize) -> Result<()> = Mbuf::adj;
    let _: for<'a> fn(&'a mut Mbuf, usize) -> Result<&'a mut [u8]> = Mbuf::append;
    let _: fn(&mut Mbuf, usize) -> Result<()> = Mbuf::trim;
    let _: fn(&mut Mbuf) -> Result<()> = Mbuf::linearize;
    let _: fn(&Mbuf) -> u16 = Mbuf::port;
    let _: fn(&Mbuf) -> Option<u32> = Mbuf::rss_hash;
    let _: fn(&Mbuf) -> Option<u64> = Mbuf::rx_timestamp;
    let _: for<'a> fn(&'a Mbuf) -> &'a [u8] = Mbuf::private_area;
    let _: for<'a> fn(&'a mut Mbuf) -> &'a mut [u8] = Mbuf::private_area_mut;
    let _: fn(&Mbuf) -> Mempool = Mbuf::pool;
    let _ = |m: &Mbuf| m.segment_data().map(<[u8]>::len).sum::<usize>();

    let _: fn(usize) -> Burst = Burst::with_capacity;
    let _: fn(&Burst) -> usize = Burst::capacity;
    let _: fn(&Burst) -> usize = Burst::remaining;
    let _: fn(&Burst) -> bool = Burst::is_full;
    let _: fn(&mut Burst, Mbuf) -> std::result::Result<(), Mbuf> = Burst::push;
    let _: fn(&mut Burst) -> Option<Mbuf> = Burst::pop;
    let _: fn(&mut Burst, usize) -> Mbuf = Burst::swap_remove;
    let _: fn(&mut Burst) = Burst::clear;
    let _ = |b: &mut Burst| {
        b.retain_mut(|m| m.len() > 60);
        b.drain(..1).count() + b.iter_mut().len() + b.len()
    };

    let _: fn(&str) -> Result<Port> = Port::open;
    let _: fn(u16) -> Result<Port> = Port::open_id;
    let _: fn(&str) -> Result<Port> = Port::attach;
    let _: fn() -> Result<Vec<PortInfo>> = Port::list;
    let _: fn(&Port) -> u16 = Port::id;
    let _: fn(&Port) -> Result<PortInfo> = Port::info;
    let _: fn(Port, &PortConfig, &Mempool) -> Result<StartedPort> = Port::start;
    let _: fn(Port) -> Result<()> = Port::close;
    let _ = |s: StartedPort| -> (RunningPort, Vec<RxQueue>, Vec<TxQueue>) { (s.port, s.rx, s.tx) };
    let _: fn(&RunningPort) -> u16 = RunningPort::id;
    let _: fn(&RunningPort) -> Result<PortInfo> = RunningPort::info;
    let _: fn(&RunningPort) -> u64 = RunningPort::rss_hash_functions;
    let _: fn(&RunningPort) -> Result<PortStats> = RunningPort::stats;
    let _: fn(&RunningPort) -> Result<()> = RunningPort::reset_stats;
    let _: fn(&RunningPort) -> Result<LinkStatus> = RunningPort::link;
    let _: fn(RunningPort) -> Result<Port> = RunningPort::stop;
    let _: fn(&mut RxQueue, &mut Burst) -> usize = RxQueue::rx_burst;
    let _: fn(&RxQueue) -> (u16, u16, RunningPort) = |q| (q.port_id(), q.queue_id(), q.port());
    let _: fn(&mut TxQueue, &mut Burst) -> usize = TxQueue::tx_burst;
    let _: fn(&TxQueue) -> (u16, u16, RunningPort) = |q| (q.port_id(), q.queue_id(), q.port());

    let _: fn(&str, u32) -> Result<(RingProducer<Single>, RingConsumer<Single>)> =
        mbuf_ring::<Single, Single>;
    let _: fn(&str, u32) -> Result<(RingProducer<Multi>, RingConsumer<Multi>)> =
        mbuf_ring::<Multi, Multi>;
    let _: fn(&RingProducer<Single>, &mut Burst) -> usize = RingProducer::enqueue_burst;
    let _: fn(&RingProducer<Single>, Mbuf) -> std::result::Result<(), Mbuf> = RingProducer::enqueue;
    let _: fn(&RingProducer<Multi>) -> (usize, bool, usize) =
        |r| (r.len(), r.is_empty(), r.capacity());
    let _: fn(&RingConsumer<Single>, &mut Burst) -> usize = RingConsumer::dequeue_burst;
    let _: fn(&RingConsumer<Single>) -> Option<Mbuf> = RingConsumer::dequeue;
    let _: fn(&RingConsumer<Multi>) -> (usize, bool, usize) =
        |r| (r.len(), r.is_empty(), r.capacity());
    let _: fn(&RingProducer<Multi>) -> RingProducer<Multi> = RingProducer::clone;
    let _: fn(&RingConsumer<Multi>) -> RingConsumer<Multi> = RingConsumer::clone;

    let _: fn() -> Option<u32> = lcore::id;
    let _: fn() -> Result<u32> = lcore::main;
    let _: fn() -> Result<Vec<u32>> = lcore::workers;
    let _: fn() -> Result<u32> = lcore::count;
    let _: fn() -> Option<u32> = lcore::socket;
    let _: fn(std::os::unix::thread::RawPthread) -> Result<bool> = lcore::keep_off_lcores;
    let _: fn() -> u64 = lcore::tsc;
    let _: fn() -> Result<u64> = lcore::tsc_hz;
    let _: fn(u32, fn() -> u8) -> Result<LcoreJoin<u8>> = lcore::launch::<u8, fn() -> u8>;
    let _: fn(LcoreJoin<u8>) -> Result<u8> = LcoreJoin::join;
    let _: fn(&LcoreJoin<u8>) -> u32 = LcoreJoin::lcore;
}

#[test]
fn thread_safety_markers() {
    // Owned packets and handles move between lcores.
    assert_send::<Mbuf>();
    assert_send::<Burst>();
    assert_send::<Mempool>();
    assert_sync::<Mempool>();
    assert_send::<RxQueue>();
    assert_send::<TxQueue>();
    assert_send::<RunningPort>();
    assert_sync::<RunningPort>();
    assert_send::<RingProducer<Single>>();
    assert_send::<RingConsumer<Single>>();
    assert_sync::<RingProducer<Multi>>();
    assert_sync::<RingConsumer<Multi>>();
    assert_send::<Eal>();
    assert_sync::<Eal>();
}

/// `RingProducer<Single>` must not be `Sync` (two threads enqueuing on a single-producer ring
/// corrupt it). Checked by method resolution: the trait method below is found on the
/// inherent-blanket impl only when the type is not `Sync`.
#[test]
fn single_ends_are_not_sync() {
    trait NotSync {
        fn is_sync(&self) -> bool {
            false
        }
    }
    impl<T: ?Sized> NotSync for T {}
    struct Probe<T: ?Sized>(std::marker::PhantomData<T>);
    impl<T: ?Sized + Sync> Probe<T> {
        fn is_sync(&self) -> bool {
            true
        }
    }
    assert!(!Probe::<RingProducer<Single>>(std::marker::PhantomData).is_sync());
    assert!(!Probe::<RingConsumer<Single>>(std::marker::PhantomData).is_sync());
    assert!(Probe::<RingProducer<Multi>>(std::marker::PhantomData).is_sync());
}

#[test]
fn build_reports_its_backend() {
    if chc_dpdk::is_available() {
        assert!(
            chc_dpdk::backend_status().starts_with("on: DPDK 22.11"),
            "{}",
            chc_dpdk::backend_status()
        );
    } else {
        assert!(chc_dpdk::backend_status().starts_with("off: "));
        // Without DPDK every entry point says so instead of failing obscurely.
        match Eal::init(EalArgs::virtual_devices()) {
            Err(Error::Unavailable(why)) => assert_eq!(why, chc_dpdk::backend_status()),
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            Mempool::pktmbuf("p", 63, 0, 2176),
            Err(Error::Unavailable(_))
        ));
        assert!(matches!(
            Port::open("net_ring0"),
            Err(Error::Unavailable(_))
        ));
        assert!(matches!(
            mbuf_ring::<Single, Single>("r", 8),
            Err(Error::Unavailable(_))
        ));
        assert_eq!(lcore::id(), None);
        assert!(Burst::with_capacity(32).is_empty());
    }
}
