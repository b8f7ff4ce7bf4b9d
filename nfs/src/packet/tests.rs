use super::build::frame;
use super::*;
use proptest::prelude::*;

/// Verifies the IPv4 header checksum and the L4 checksum by full recomputation.
fn checksums_ok(p: &Packet<'_>) -> bool {
    let d = p.data();
    let h = &p.hdr;
    let l4 = &d[h.l4_off..h.ip_end];
    let pseudo = match (h.src, h.dst) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            let ihl = usize::from(d[h.l3] & 0xf) * 4;
            if checksum(&[&d[h.l3..h.l3 + ihl]]) != 0 {
                return false;
            }
            [
                &s.octets()[..],
                &t.octets()[..],
                &[0, h.proto],
                &(l4.len() as u16).to_be_bytes(),
            ]
            .concat()
        }
        (IpAddr::V6(s), IpAddr::V6(t)) => [
            &s.octets()[..],
            &t.octets()[..],
            &(l4.len() as u32).to_be_bytes(),
            &[0, 0, 0, h.proto],
        ]
        .concat(),
        _ => return false,
    };
    if h.proto == PROTO_ICMP {
        return checksum(&[l4]) == 0;
    }
    checksum(&[&pseudo, l4]) == 0
}

fn ip4() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b)))
}
fn ip6() -> impl Strategy<Value = IpAddr> {
    any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b)))
}

fn tuple() -> impl Strategy<Value = FiveTuple> {
    let proto = prop_oneof![Just(PROTO_TCP), Just(PROTO_UDP)];
    prop_oneof![(ip4(), ip4()), (ip6(), ip6())].prop_flat_map(move |(s, d)| {
        (proto.clone(), any::<u16>(), any::<u16>()).prop_map(move |(p, sp, dp)| FiveTuple {
            proto: p,
            src: s,
            dst: d,
            sport: sp,
            dport: dp,
        })
    })
}

proptest! {
    #[test]
    fn rewrites_keep_checksums_valid(t in tuple(), payload in proptest::collection::vec(any::<u8>(), 0..64),
                                     new in tuple()) {
        let mut f = frame(&t, tcp_flags::SYN, &payload);
        let len = f.len();
        let mut p = Packet::parse(&mut f, len, 0);
        prop_assert_eq!(p.hdr.shape, Shape::Ip);
        prop_assert_eq!(p.five_tuple(), Some(t));
        prop_assert!(checksums_ok(&p));
        prop_assert_eq!(p.payload(), &payload[..]);
        // Rewrite to the new tuple's addresses (same family) and ports.
        let (ns, nd) = if t.src.is_ipv4() == new.src.is_ipv4() { (new.src, new.dst) } else { (t.dst, t.src) };
        prop_assert!(p.set_src(ns));
        prop_assert!(p.set_dst(nd));
        prop_assert!(p.set_sport(new.sport));
        prop_assert!(p.set_dport(new.dport));
        prop_assert!(checksums_ok(&p));
        // The parsed view and a fresh parse agree.
        let after = p.five_tuple().unwrap();
        let len = p.len();
        let mut copy = p.data().to_vec();
        let q = Packet::parse(&mut copy, len, 0);
        prop_assert_eq!(q.five_tuple(), Some(after));
        prop_assert_eq!(after, FiveTuple { proto: t.proto, src: ns, dst: nd, sport: new.sport, dport: new.dport });
    }

    #[test]
    fn any_bytes_parse_without_panic(mut b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let len = b.len();
        let mut p = Packet::parse(&mut b, len, 0);
        let _ = p.five_tuple();
        let _ = p.payload();
        let _ = p.set_src(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        let _ = p.set_sport(5);
    }

    #[test]
    fn key_bytes_round_trip(t in tuple()) {
        prop_assert_eq!(FiveTuple::from_key_bytes(&t.key_bytes()), Some(t));
        prop_assert_eq!(t.canonical(), t.reversed().canonical());
    }
}

#[test]
fn every_truncation_is_classified() {
    let t = FiveTuple {
        proto: PROTO_TCP,
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        sport: 1000,
        dport: 80,
    };
    let f = frame(&t, tcp_flags::SYN, b"hello");
    for cut in 0..f.len() {
        let mut b = f[..cut].to_vec();
        let p = Packet::parse(&mut b, f.len(), 0);
        let want = if cut < ETH_HLEN {
            Shape::Malformed(Malformed::ShortEthernet)
        } else if cut < ETH_HLEN + 20 {
            Shape::Malformed(Malformed::ShortIp)
        } else if cut < ETH_HLEN + 40 {
            Shape::Malformed(Malformed::ShortL4)
        } else {
            Shape::Ip
        };
        assert_eq!(p.hdr.shape, want, "cut {cut}");
    }
}

#[test]
fn fragments_vlan_and_ipv6_extensions() {
    let t = FiveTuple {
        proto: PROTO_UDP,
        src: "10.0.0.1".parse().unwrap(),
        dst: "10.0.0.2".parse().unwrap(),
        sport: 53,
        dport: 5353,
    };
    // A non-first IPv4 fragment has no ports.
    let mut f = frame(&t, 0, b"payload!");
    f[ETH_HLEN + 6] = 0x00;
    f[ETH_HLEN + 7] = 0x10;
    let n = f.len();
    let p = Packet::parse(&mut f, n, 0);
    assert_eq!(p.hdr.shape, Shape::Fragment);
    assert!(p.five_tuple().is_none());
    // A VLAN-tagged frame.
    let mut f = frame(&t, 0, b"x");
    f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
    let n = f.len();
    let p = Packet::parse(&mut f, n, 0);
    assert_eq!(p.five_tuple(), Some(t));
    // IPv6 with a hop-by-hop and a destination-options header before TCP.
    let t6 = FiveTuple {
        proto: PROTO_TCP,
        src: "2001:db8::1".parse().unwrap(),
        dst: "2001:db8::2".parse().unwrap(),
        sport: 4000,
        dport: 22,
    };
    let mut f = frame(&t6, tcp_flags::SYN, b"");
    let l3 = ETH_HLEN;
    let ext = [PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
    let hbh = [60u8, 0, 0, 0, 0, 0, 0, 0];
    f[l3 + 6] = 0; // next: hop-by-hop
    let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) + 16;
    f[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    f.splice(l3 + 40..l3 + 40, hbh.iter().chain(ext.iter()).copied());
    let n = f.len();
    let p = Packet::parse(&mut f, n, 0);
    assert_eq!(p.hdr.shape, Shape::Ip);
    assert_eq!(p.five_tuple(), Some(t6));
    // ARP is not IP.
    let mut arp = vec![0u8; 42];
    arp[12] = 0x08;
    arp[13] = 0x06;
    assert_eq!(Packet::parse(&mut arp, 42, 0).hdr.shape, Shape::NonIp);
}
