//! Mbufs, bursts, mempools and rings, without ports. DPDK allows one EAL per process, so the
//! tests of this binary share one (`eal()`), which works both under nextest (a process per
//! test) and `cargo test` (threads in one process).
#![cfg(chc_dpdk)]

use std::sync::OnceLock;
use std::thread;

use chc_dpdk::{mbuf_ring, Burst, Eal, EalArgs, Error, Mempool, Multi, Port, Single};

fn eal() -> &'static Eal {
    static EAL: OnceLock<Eal> = OnceLock::new();
    EAL.get_or_init(|| Eal::init(EalArgs::virtual_devices().lcores("0")).expect("EAL init"))
}

/// A pool per test, so tests running as threads of one process do not see each other's
/// buffers in the counts they check.
fn pool(name: &str, size: u32) -> Mempool {
    eal();
    Mempool::pktmbuf(name, size, 0, chc_dpdk::DEFAULT_DATA_ROOM).expect("mempool")
}

fn frame(i: u32, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len).map(|b| (b as u32 * 7 + i) as u8).collect();
    v[..4].copy_from_slice(&i.to_be_bytes());
    v
}

fn tag(m: &chc_dpdk::Mbuf) -> u32 {
    u32::from_be_bytes(m.data()[..4].try_into().unwrap())
}

#[test]
fn second_init_is_refused() {
    eal();
    assert_eq!(
        Eal::init(EalArgs::virtual_devices()).unwrap_err(),
        Error::AlreadyInitialised
    );
    assert!(Eal::is_initialised());
}

#[test]
fn mbuf_holds_bytes_and_prepend_adj_round_trips() {
    let pool = pool("prepend", 63);
    let payload = frame(1, 200);
    let mut m = pool.alloc_from(&payload).unwrap();
    assert_eq!(m.data(), &payload[..]);
    assert_eq!((m.len(), m.data_len(), m.segments()), (200, 200, 1));
    assert_eq!(m.headroom(), chc_dpdk::HEADROOM as usize);

    // Push a 24-byte encapsulation header in front, then strip it again.
    let header: Vec<u8> = (100..124).collect();
    m.prepend(header.len()).unwrap().copy_from_slice(&header);
    assert_eq!(m.len(), 224);
    assert_eq!(&m.data()[..24], &header[..]);
    assert_eq!(&m.data()[24..], &payload[..]);
    assert_eq!(m.headroom(), chc_dpdk::HEADROOM as usize - 24);
    m.adj(24).unwrap();
    assert_eq!(m.data(), &payload[..]);
    assert_eq!(m.headroom(), chc_dpdk::HEADROOM as usize);

    // Rewrite in place, grow and shrink the tail.
    m.data_mut()[5] = 0xee;
    m.append(3).unwrap().copy_from_slice(&[1, 2, 3]);
    assert_eq!(&m.data()[200..], &[1, 2, 3]);
    assert_eq!(m.data()[5], 0xee);
    m.trim(3).unwrap();
    assert_eq!(m.len(), 200);
    assert_eq!(m.to_vec().len(), 200);
}

#[test]
fn mbuf_refuses_what_does_not_fit() {
    let pool = pool("noroom", 15);
    let mut m = pool.alloc_from(&[0u8; 60]).unwrap();
    let headroom = m.headroom();
    assert_eq!(
        m.prepend(headroom + 1).unwrap_err(),
        Error::NoRoom {
            needed: headroom + 1,
            available: headroom
        }
    );
    assert!(matches!(
        m.adj(61),
        Err(Error::NoRoom {
            needed: 61,
            available: 60
        })
    ));
    assert!(matches!(m.trim(61), Err(Error::NoRoom { .. })));
    let tail = m.tailroom();
    assert!(matches!(m.append(tail + 1), Err(Error::NoRoom { .. })));
    // Nothing changed after the refusals.
    assert_eq!((m.len(), m.headroom()), (60, headroom));
    assert!(pool.alloc_from(&vec![0u8; 70_000]).is_err());
}

#[test]
fn mbufs_return_to_their_pool_on_drop_and_clear() {
    let pool = pool("lifecycle", 127);
    let total = pool.available();
    assert_eq!(total, 127);
    let one = pool.alloc().unwrap();
    assert_eq!(pool.in_use(), 1);
    assert_eq!(one.pool(), pool);
    drop(one);
    assert_eq!(pool.available(), total);

    let mut burst = Burst::with_capacity(64);
    pool.alloc_bulk(&mut burst, 50).unwrap();
    assert_eq!((burst.len(), burst.remaining()), (50, 14));
    assert_eq!(pool.available(), total - 50);
    assert!(matches!(
        pool.alloc_bulk(&mut burst, 15),
        Err(Error::InvalidArgument(_))
    ));
    burst.clear();
    assert_eq!(pool.available(), total);

    // Exhaust the pool: a bulk request that cannot be met takes nothing.
    let mut all = Burst::with_capacity(200);
    pool.alloc_bulk(&mut all, 127).unwrap();
    assert!(matches!(pool.alloc(), Err(Error::PoolExhausted { .. })));
    let mut more = Burst::with_capacity(8);
    assert!(matches!(
        pool.alloc_bulk(&mut more, 1),
        Err(Error::PoolExhausted { .. })
    ));
    assert!(more.is_empty());
    drop(all);
    assert_eq!(pool.available(), total);
}

#[test]
fn burst_push_pop_retain_keep_order() {
    let pool = pool("burst", 63);
    let mut burst = Burst::with_capacity(4);
    for i in 0..4 {
        burst.push(pool.alloc_from(&frame(i, 64)).unwrap()).unwrap();
    }
    let extra = pool.alloc_from(&frame(9, 64)).unwrap();
    let extra = burst.push(extra).unwrap_err();
    assert_eq!(tag(&extra), 9);
    drop(extra);
    burst.retain_mut(|m| tag(m) % 2 == 0);
    assert_eq!(burst.iter().map(tag).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(burst.pop().map(|m| tag(&m)), Some(2));
    drop(burst);
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn spsc_ring_keeps_order_across_threads() {
    let pool = pool("spsc", 1023);
    let (tx, rx) = mbuf_ring::<Single, Single>("spsc", 256).unwrap();
    assert_eq!(tx.capacity(), 256);
    const N: u32 = 5000;
    let producer = thread::spawn(move || {
        let mut burst = Burst::with_capacity(32);
        let mut next = 0;
        while next < N || !burst.is_empty() {
            while next < N && !burst.is_full() {
                burst
                    .push(pool.alloc_from(&frame(next, 64)).unwrap())
                    .unwrap();
                next += 1;
            }
            tx.enqueue_burst(&mut burst);
        }
    });
    let mut burst = Burst::with_capacity(32);
    let mut expect = 0;
    while expect < N {
        rx.dequeue_burst(&mut burst);
        for m in burst.iter() {
            assert_eq!(tag(m), expect, "packets left the ring out of order");
            expect += 1;
        }
        burst.clear();
    }
    producer.join().unwrap();
    assert!(rx.is_empty());
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn mpmc_ring_delivers_every_packet_exactly_once() {
    let pool = pool("mpmc", 2047);
    let (tx, rx) = mbuf_ring::<Multi, Multi>("mpmc", 512).unwrap();
    const PER_PRODUCER: u32 = 3000;
    let producers: Vec<_> = (0..2u32)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let mut m = pool.alloc_from(&frame(p * PER_PRODUCER + i, 64)).unwrap();
                    while let Err(back) = tx.enqueue(m) {
                        m = back;
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                let mut seen = Vec::new();
                let mut burst = Burst::with_capacity(16);
                let mut idle = 0;
                while idle < 200_000 {
                    if rx.dequeue_burst(&mut burst) == 0 {
                        idle += 1;
                        thread::yield_now();
                        continue;
                    }
                    idle = 0;
                    seen.extend(burst.iter().map(tag));
                    burst.clear();
                    if seen.len() as u32 == 2 * PER_PRODUCER {
                        break;
                    }
                }
                seen
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all: Vec<u32> = consumers
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.extend(std::iter::from_fn(|| rx.dequeue().map(|m| tag(&m))));
    all.sort_unstable();
    assert_eq!(all, (0..2 * PER_PRODUCER).collect::<Vec<_>>());
    assert_eq!(pool.in_use(), 0);
}

#[test]
fn private_area_carries_metadata_through_a_ring_between_threads() {
    eal();
    let plain = pool("noprivate", 15);
    assert!(plain.alloc().unwrap().private_area().is_empty());
    assert!(matches!(
        Mempool::pktmbuf_with_private("odd", 15, 0, 2176, 12),
        Err(Error::InvalidArgument(_))
    ));
    let pool = Mempool::pktmbuf_with_private("private", 255, 0, 2176, 24).unwrap();
    let (tx, rx) = mbuf_ring::<Single, Single>("meta", 64).unwrap();
    let producer = thread::spawn(move || {
        for i in 0..50u64 {
            let mut m = pool.alloc_from(&frame(i as u32, 64)).unwrap();
            let meta = m.private_area_mut();
            assert_eq!(meta.len(), 24);
            meta[..8].copy_from_slice(&(i * 1000).to_le_bytes()); // e.g. a logical clock
            meta[8..12].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
            tx.enqueue(m).unwrap();
        }
    });
    producer.join().unwrap();
    for i in 0..50u64 {
        let m = rx.dequeue().expect("queued packet");
        assert_eq!(tag(&m), i as u32);
        let meta = m.private_area();
        assert_eq!(u64::from_le_bytes(meta[..8].try_into().unwrap()), i * 1000);
        assert_eq!(&meta[8..12], &0xdead_beef_u32.to_le_bytes());
        // The packet bytes do not overlap the private area.
        assert_eq!(m.data(), &frame(i as u32, 64)[..]);
    }
}

#[test]
fn full_ring_takes_what_fits_and_frees_leftovers_on_drop() {
    let pool = pool("ringfull", 127);
    let (tx, rx) = mbuf_ring::<Single, Single>("full", 10).unwrap();
    let mut burst = Burst::with_capacity(16);
    for i in 0..16 {
        burst.push(pool.alloc_from(&frame(i, 64)).unwrap()).unwrap();
    }
    assert_eq!(tx.enqueue_burst(&mut burst), 10);
    assert_eq!(
        burst.iter().map(tag).collect::<Vec<_>>(),
        (10..16).collect::<Vec<_>>()
    );
    assert_eq!(rx.len(), 10);
    assert_eq!(rx.dequeue().map(|m| tag(&m)), Some(0));
    drop(burst);
    assert_eq!(pool.in_use(), 9);
    drop((tx, rx));
    assert_eq!(
        pool.in_use(),
        0,
        "dropping the ring must free the mbufs still queued"
    );
}

#[test]
fn dpdk_errors_carry_rte_errno_text() {
    pool("dup", 15);
    match Mempool::pktmbuf("dup", 15, 0, chc_dpdk::DEFAULT_DATA_ROOM) {
        Err(Error::Dpdk {
            call,
            errno,
            message,
        }) => {
            assert_eq!(call, "rte_pktmbuf_pool_create");
            assert_eq!(errno, 17, "EEXIST");
            assert!(message.to_lowercase().contains("exist"), "{message}");
        }
        other => panic!("expected EEXIST, got {other:?}"),
    }
    match Port::open("net_nonexistent0") {
        Err(e @ Error::PortNotFound { .. }) => assert!(e.to_string().contains("--vdev")),
        other => panic!("expected PortNotFound, got {other:?}"),
    }
    assert!(matches!(
        Mempool::pktmbuf("bad\0name", 15, 0, 2176),
        Err(Error::InvalidArgument(_))
    ));
}
