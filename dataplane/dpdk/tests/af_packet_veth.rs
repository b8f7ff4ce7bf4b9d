//! The transport between hosts: two `net_af_packet` ports on the two ends of a veth pair.
//! Frames sent on one end arrive unchanged, in order, on the other, including frames wrapped
//! in an outer Ethernet + NSH header pushed into the headroom (how CHC metadata crosses
//! hosts). Needs root to create the veth pair; without it the test says so and passes.
#![cfg(chc_dpdk)]

use std::process::Command;
use std::time::{Duration, Instant};

use chc_dpdk::{Burst, Eal, EalArgs, Mbuf, Mempool, Port, PortConfig};

/// An ethertype from the range IEEE reserves for local experiments, so the test's frames are
/// told apart from what the kernel sends on a fresh link (IPv6 neighbour discovery).
const EXPERIMENTAL: [u8; 2] = [0x88, 0xb5];
/// NSH's ethertype (RFC 8300).
const NSH: [u8; 2] = [0x89, 0x4f];

fn ip(args: &str) -> bool {
    Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .is_ok_and(|s| s.success())
}

fn frame(seq: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xaa]);
    f[12..14].copy_from_slice(&EXPERIMENTAL);
    f[14..16].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[16..].iter_mut().enumerate() {
        *b = (i as u16).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    f
}

/// Length of the encapsulation: outer Ethernet header (ethertype NSH) plus NSH's base and
/// service path headers (RFC 8300, MD type 2 without context TLVs, next protocol Ethernet).
const ENCAP: usize = 14 + 8;

/// Wraps the whole frame in an outer Ethernet + NSH header, in the headroom: the way an NF
/// host hands a packet to the next hop.
fn encapsulate(m: &mut Mbuf) {
    let h = m.prepend(ENCAP).unwrap();
    h[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xb2]);
    h[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xa2]);
    h[12..14].copy_from_slice(&NSH);
    h[14..18].copy_from_slice(&[0x0f, 0xc2, 0x02, 0x03]); // TTL 63, 2 words, MD 2, Ethernet
    h[18..22].copy_from_slice(&[0, 0, 1, 0xff]); // service path 1, index 255
}

#[test]
fn veth_pair_carries_frames_and_nsh_unchanged() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    let (a, b) = (
        format!("chcva{}", std::process::id() % 10000),
        format!("chcvb{}", std::process::id() % 10000),
    );
    if !is_root || !ip(&format!("link add {a} type veth peer name {b}")) {
        eprintln!("skipped: needs root to create a veth pair");
        return;
    }
    // The encapsulation makes a full-size frame 22 bytes longer than a 1500-byte MTU allows:
    // links between NF hosts need the headroom (deploy/README.md says so too).
    for ifc in [&a, &b] {
        ip(&format!("link set dev {ifc} mtu 1600 up"));
    }
    let eal = Eal::init(
        EalArgs::virtual_devices()
            .lcores("0")
            .vdev(&format!("net_af_packet0,iface={a}"))
            .vdev(&format!("net_af_packet1,iface={b}")),
    );
    let result = std::panic::catch_unwind(|| {
        eal.expect("EAL init with net_af_packet");
        exchange();
    });
    ip(&format!("link del {a}"));
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn exchange() {
    let pool = Mempool::pktmbuf("veth", 2047, 0, chc_dpdk::DEFAULT_DATA_ROOM).unwrap();
    let mut p0 = Port::open("net_af_packet0")
        .unwrap()
        .start(&PortConfig::default(), &pool)
        .unwrap();
    let mut p1 = Port::open("net_af_packet1")
        .unwrap()
        .start(&PortConfig::default(), &pool)
        .unwrap();
    let (tx, rx) = (&mut p0.tx[0], &mut p1.rx[0]);

    const N: u16 = 200;
    let mut expected = Vec::new();
    let mut burst = Burst::with_capacity(32);
    for seq in 0..N {
        let len = [60, 64, 128, 1000, 1514][usize::from(seq) % 5];
        let mut m = pool.alloc_from(&frame(seq, len)).unwrap();
        if seq % 2 == 1 {
            encapsulate(&mut m);
        }
        expected.push(m.to_vec());
        burst.push(m).unwrap();
        if burst.is_full() || seq == N - 1 {
            while !burst.is_empty() {
                tx.tx_burst(&mut burst);
            }
        }
    }

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < expected.len() && Instant::now() < deadline {
        rx.rx_burst(&mut burst);
        for m in burst.iter() {
            let d = m.data();
            if d.len() >= 14 && (d[12..14] == EXPERIMENTAL || d[12..14] == NSH) {
                got.push(d.to_vec());
            }
        }
        burst.clear();
    }
    assert_eq!(got.len(), expected.len(), "frames lost on the veth pair");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "frame {i} changed on the way");
    }
    // Stripping the encapsulation gives back the original frame (frame 1 is 64 bytes long).
    let mut m = pool.alloc_from(&got[1]).unwrap();
    m.adj(ENCAP).unwrap();
    assert_eq!(m.data(), &frame(1, 64)[..]);
}
