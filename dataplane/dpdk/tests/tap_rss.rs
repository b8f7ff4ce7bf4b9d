//! Several receive queues with RSS on a `net_tap` device (a kernel TAP interface): flows sent
//! by the kernel spread over both queues, and every packet of a flow lands on one queue. (On a
//! TAP device the spreading is the kernel's multiqueue TAP flow hash; on a NIC it is the
//! NIC's Toeplitz hash. The port-side contract tested here is the same.) Needs root to create
//! the interface; without it the test says so and passes.
#![cfg(chc_dpdk)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use chc_dpdk::{Burst, Eal, EalArgs, Mempool, Port, PortConfig, Rss};

fn ip(args: &str) -> bool {
    Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn flows_spread_over_queues_and_stay_on_one() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !is_root || !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipped: needs root and /dev/net/tun to create a TAP interface");
        return;
    }
    let ifname = format!("chcrss{}", std::process::id() % 10000);
    let _eal = Eal::init(
        EalArgs::virtual_devices()
            .lcores("0")
            .vdev(&format!("net_tap0,iface={ifname}")),
    )
    .expect("EAL init with net_tap");
    let pool = Mempool::pktmbuf("rss", 4095, 0, chc_dpdk::DEFAULT_DATA_ROOM).unwrap();
    let port = Port::open("net_tap0").unwrap();
    let mac = port.info().unwrap().mac;
    let config = PortConfig {
        rss: Rss::IpTcpUdp,
        ..PortConfig::with_queues(2)
    };
    let mut started = port.start(&config, &pool).unwrap();
    assert_ne!(started.port.rss_hash_functions(), 0, "net_tap supports RSS");

    // The kernel side: an address on the TAP interface and a static neighbour behind it, so
    // UDP datagrams to it leave through the interface without ARP.
    let mac_s: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert!(ip(&format!("addr add 10.213.0.1/24 dev {ifname}")));
    assert!(ip(&format!("link set dev {ifname} up")));
    assert!(ip(&format!(
        "neigh replace 10.213.0.2 lladdr {} dev {ifname}",
        mac_s.join(":")
    )));

    const FLOWS: u16 = 32;
    const PER_FLOW: usize = 4;
    let sockets: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| UdpSocket::bind("10.213.0.1:0").unwrap())
        .collect();
    for round in 0..PER_FLOW {
        for (i, s) in sockets.iter().enumerate() {
            s.send_to(&[round as u8; 16], ("10.213.0.2", 9000 + i as u16))
                .unwrap();
        }
    }

    // Source port of each UDP/IPv4 datagram received, by queue.
    let mut by_queue: Vec<BTreeMap<u16, usize>> = vec![BTreeMap::new(); 2];
    let mut burst = Burst::with_capacity(32);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut total = 0;
    while total < FLOWS as usize * PER_FLOW && Instant::now() < deadline {
        for (q, rx) in started.rx.iter_mut().enumerate() {
            rx.rx_burst(&mut burst);
            for m in burst.iter() {
                let d = m.data();
                // IPv4 (no options) carrying UDP to our destination port range.
                if d.len() >= 42 && d[12..14] == [8, 0] && d[23] == 17 {
                    let dport = u16::from_be_bytes([d[36], d[37]]);
                    if (9000..9000 + FLOWS).contains(&dport) {
                        let sport = u16::from_be_bytes([d[34], d[35]]);
                        *by_queue[q].entry(sport).or_default() += 1;
                        total += 1;
                    }
                }
            }
            burst.clear();
        }
    }
    ip(&format!("link del {ifname}"));
    eprintln!(
        "flows per queue: {} / {}",
        by_queue[0].len(),
        by_queue[1].len()
    );
    assert_eq!(
        total,
        FLOWS as usize * PER_FLOW,
        "every datagram arrived: {by_queue:?}"
    );
    let q0: BTreeSet<u16> = by_queue[0].keys().copied().collect();
    let q1: BTreeSet<u16> = by_queue[1].keys().copied().collect();
    assert!(
        q0.is_disjoint(&q1),
        "a flow was split across queues: {by_queue:?}"
    );
    assert!(
        !q0.is_empty() && !q1.is_empty(),
        "all {FLOWS} flows on one queue: {by_queue:?}"
    );
    let stats = started.port.stats().unwrap();
    assert!(
        stats.queues[0].rx_packets > 0 && stats.queues[1].rx_packets > 0,
        "{stats:?}"
    );
}
