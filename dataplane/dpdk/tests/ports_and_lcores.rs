//! Ethdev ports over `net_ring` virtual devices and work launched on a worker lcore. One test
//! function, because launching on lcores is allowed only from the thread that initialised the
//! EAL. A `net_ring` port built from `--vdev` loops back: what queue q transmits, queue q
//! receives.
#![cfg(chc_dpdk)]

use chc_dpdk::{
    lcore, Burst, EalArgs, Error, Mbuf, Mempool, Port, PortConfig, RxQueue, StartedPort, TxQueue,
};

fn frame(queue: u8, seq: u8) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xdd]); // destination MAC
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x55]); // source MAC
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = queue;
    f[15] = seq;
    f
}

fn send(tx: &mut TxQueue, pool: &Mempool, frames: impl Iterator<Item = Vec<u8>>) {
    let mut burst = Burst::with_capacity(64);
    for f in frames {
        burst.push(pool.alloc_from(&f).unwrap()).unwrap();
    }
    let n = burst.len();
    assert_eq!(
        tx.tx_burst(&mut burst),
        n,
        "net_ring takes everything while not full"
    );
}

fn receive_all(rx: &mut RxQueue) -> Vec<Vec<u8>> {
    let mut burst = Burst::with_capacity(64);
    let mut out = Vec::new();
    while rx.rx_burst(&mut burst) > 0 {
        out.extend(burst.iter().map(Mbuf::to_vec));
        burst.clear();
    }
    out
}

#[test]
fn ring_ports_queues_stats_and_lcores() {
    let eal = chc_dpdk::Eal::init(
        EalArgs::virtual_devices()
            .lcores("0,1")
            .vdev("net_ring0")
            .vdev("net_ring1"),
    )
    .expect("EAL init");
    let pool = Mempool::pktmbuf("ports", 2047, 32, chc_dpdk::DEFAULT_DATA_ROOM).unwrap();

    // Lookup by name, driver registration, exclusive claims.
    let names: Vec<(String, String)> = Port::list()
        .unwrap()
        .into_iter()
        .map(|p| (p.name, p.driver))
        .collect();
    for n in ["net_ring0", "net_ring1"] {
        assert!(
            names.contains(&(n.into(), "net_ring".into())),
            "{n} missing in {names:?}"
        );
    }
    let p0 = Port::open("net_ring0").unwrap();
    assert_eq!(
        Port::open("net_ring0").unwrap_err(),
        Error::PortBusy(p0.id())
    );
    let zero_queues = PortConfig {
        rx_queues: 0,
        ..PortConfig::default()
    };
    let p0 = match p0.start(&zero_queues, &pool) {
        Err(Error::InvalidArgument(_)) => Port::open("net_ring0").unwrap(),
        other => panic!("0 queues must be refused, got {other:?}"),
    };

    // Two queues, each its own loop: nothing crosses between queues, order is kept.
    let StartedPort {
        port: ring0,
        rx,
        tx,
    } = p0.start(&PortConfig::with_queues(2), &pool).unwrap();
    assert_eq!((rx.len(), tx.len()), (2, 2));
    assert_eq!(
        ring0.rss_hash_functions(),
        0,
        "net_ring has no RSS, so none may be in effect"
    );
    assert!(ring0.link().unwrap().up);
    let [mut rx0, mut rx1]: [RxQueue; 2] = rx.try_into().unwrap();
    let [mut tx0, mut tx1]: [TxQueue; 2] = tx.try_into().unwrap();
    send(&mut tx0, &pool, (0..10).map(|s| frame(0, s)));
    send(&mut tx1, &pool, (0..5).map(|s| frame(1, s)));
    assert_eq!(
        receive_all(&mut rx1),
        (0..5).map(|s| frame(1, s)).collect::<Vec<_>>()
    );
    assert_eq!(
        receive_all(&mut rx0),
        (0..10).map(|s| frame(0, s)).collect::<Vec<_>>()
    );
    let stats = ring0.stats().unwrap();
    assert_eq!((stats.rx_packets, stats.tx_packets), (15, 15));
    assert_eq!(stats.queues.len(), 2);
    assert_eq!(
        (stats.queues[0].rx_packets, stats.queues[1].rx_packets),
        (10, 5)
    );
    ring0.reset_stats().unwrap();
    assert_eq!(ring0.stats().unwrap().rx_packets, 0);

    // Stopping needs every queue handle back; then the port can be started again.
    let ring0 = match ring0.clone().stop() {
        Err(Error::QueuesInUse(_)) => ring0,
        other => panic!("stop with live queues must fail, got {other:?}"),
    };
    drop((rx0, rx1, tx0, tx1));
    let p0 = ring0.stop().unwrap();
    let StartedPort {
        rx: mut rx_a,
        tx: mut tx_a,
        port: ring0,
    } = p0.start(&PortConfig::default(), &pool).unwrap();
    let p1 = Port::open("net_ring1").unwrap();
    let StartedPort {
        rx: mut rx_b,
        tx: mut tx_b,
        port: _ring1,
    } = p1.start(&PortConfig::default(), &pool).unwrap();

    // Lcores: the test thread is the main lcore, a plain thread is none.
    assert_eq!(lcore::id(), Some(eal.main_lcore()));
    assert_eq!(std::thread::spawn(lcore::id).join().unwrap(), None);
    assert_eq!(lcore::workers().unwrap(), [1]);
    assert_eq!(lcore::count().unwrap(), 2);
    assert!(lcore::tsc_hz().unwrap() > 0);
    let t0 = lcore::tsc();
    assert!(lcore::tsc() >= t0);
    let elsewhere = std::thread::spawn(|| lcore::launch(1, || ()).map(drop))
        .join()
        .unwrap();
    assert_eq!(elsewhere, Err(Error::NotMainLcore("lcore::launch")));

    // A mac-swapping forwarder on lcore 1: net_ring0 queue 0 -> net_ring1 queue 0.
    const N: usize = 1000;
    let (mut rx_in, mut tx_out) = (rx_a.remove(0), tx_b.remove(0));
    let job = lcore::launch(1, move || {
        assert_eq!(lcore::id(), Some(1));
        let mut burst = Burst::with_capacity(32);
        let mut forwarded = 0;
        let deadline = lcore::tsc() + 10 * lcore::tsc_hz().unwrap();
        while forwarded < N && lcore::tsc() < deadline {
            rx_in.rx_burst(&mut burst);
            for m in burst.iter_mut() {
                let d = m.data_mut();
                let (dst, src) = d.split_at_mut(6);
                dst.swap_with_slice(&mut src[..6]);
            }
            while !burst.is_empty() {
                forwarded += tx_out.tx_burst(&mut burst);
            }
        }
        forwarded
    })
    .unwrap();
    assert_eq!(job.lcore(), 1);
    let mut tx_in = tx_a.remove(0);
    for chunk in 0..(N / 50) {
        send(
            &mut tx_in,
            &pool,
            (0..50).map(|s| frame(7, (chunk * 50 + s) as u8)),
        );
    }
    assert_eq!(job.join().unwrap(), N);
    let out = receive_all(&mut rx_b.remove(0));
    assert_eq!(out.len(), N);
    for (i, f) in out.iter().enumerate() {
        let mut want = frame(7, i as u8);
        want[..12].rotate_left(6);
        assert_eq!(f, &want, "packet {i} after the forwarder");
    }
    assert_eq!(ring0.stats().unwrap().rx_packets, N as u64);

    // A panic on a worker lcore comes back to the main lcore through join.
    let job = lcore::launch(1, || -> u32 {
        panic!("intentional panic on lcore 1, expected by the test")
    })
    .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.join()));
    assert!(caught.is_err(), "the worker's panic must resume in join");
    // And the lcore is free again afterwards.
    assert_eq!(lcore::launch(1, || 7).unwrap().join().unwrap(), 7);
}
