//! Packets as parsed views over a byte buffer (an mbuf's data or a pcap record).
//!
//! [`Packet::parse`] walks Ethernet (with up to two VLAN tags), IPv4 (with options and
//! fragments) or IPv6 (with its extension headers), then TCP, UDP, ICMP or ICMPv6, and records
//! offsets; it never panics and never copies. Header fields are rewritten in place and the
//! IPv4 and L4 checksums are updated incrementally (RFC 1624), so a rewrite costs a few
//! instructions and stays correct even for captures whose payload was cut short.
//!
//! What the framework does with imperfect input (see [`Shape`]):
//! - non-IP frames (ARP, LLDP...) are forwarded unchanged by every NF and counted;
//! - frames whose IP header or fixed L4 header is cut short or inconsistent are dropped before
//!   any NF sees them and counted as malformed;
//! - IP fragments without an L4 header (non-first fragments) reach the NFs with no ports;
//!   address-rewriting NFs drop them (they cannot be mapped), observers pass them on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_HLEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88A8;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Why a frame is not usable as an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    ShortEthernet,
    /// IP header cut short by the capture or the frame.
    ShortIp,
    /// IP version, header length or total length inconsistent.
    BadIpHeader,
    /// IPv6 extension header chain cut short or too long.
    BadExtHeader,
    /// The fixed TCP/UDP/ICMP header is cut short, or TCP's data offset is invalid.
    ShortL4,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::ShortEthernet => "short ethernet frame",
            Malformed::ShortIp => "truncated IP header",
            Malformed::BadIpHeader => "invalid IP header",
            Malformed::BadExtHeader => "invalid IPv6 extension headers",
            Malformed::ShortL4 => "truncated L4 header",
        })
    }
}

/// What kind of frame this is, for the framework's forwarding rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// IP with a complete fixed L4 header (or an L4 without ports, such as ICMP).
    Ip,
    /// An IP fragment that carries no L4 header.
    Fragment,
    /// Not IP.
    NonIp,
    Malformed(Malformed),
}

/// The transport layer of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Icmp { ty: u8, code: u8 },
    Other,
}

/// Parsed offsets and fields of a packet.
#[derive(Clone, Copy, Debug)]
pub struct Headers {
    pub shape: Shape,
    pub ethertype: u16,
    /// Offset of the IP header.
    pub l3: usize,
    pub ipv6: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the L4 header (valid when `l4` is not `None`).
    pub l4_off: usize,
    pub l4: Option<L4>,
    /// Offset of the L4 payload.
    pub payload_off: usize,
    /// This packet is a fragment (first or not).
    pub fragment: bool,
    /// End of the IP packet within the captured bytes (trailers excluded).
    pub ip_end: usize,
}

impl Default for Headers {
    fn default() -> Self {
        Headers {
            shape: Shape::NonIp,
            ethertype: 0,
            l3: ETH_HLEN,
            ipv6: false,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            proto: 0,
            l4_off: 0,
            l4: None,
            payload_off: 0,
            fragment: false,
            ip_end: 0,
        }
    }
}

/// A connection's 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl FiveTuple {
    pub fn reversed(&self) -> FiveTuple {
        FiveTuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }

    /// The same tuple for both directions (lower endpoint first).
    pub fn canonical(&self) -> FiveTuple {
        if (self.src, self.sport) <= (self.dst, self.dport) {
            *self
        } else {
            self.reversed()
        }
    }

    /// The store's 5-tuple key layout: proto, src, dst, sport, dport (13 or 37 bytes).
    pub fn key_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(37);
        v.push(self.proto);
        push_ip(&mut v, self.src);
        push_ip(&mut v, self.dst);
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        v
    }

    pub fn from_key_bytes(b: &[u8]) -> Option<FiveTuple> {
        let w = match b.len() {
            13 => 4,
            37 => 16,
            _ => return None,
        };
        Some(FiveTuple {
            proto: b[0],
            src: ip_from(&b[1..1 + w])?,
            dst: ip_from(&b[1 + w..1 + 2 * w])?,
            sport: u16::from_be_bytes([b[1 + 2 * w], b[2 + 2 * w]]),
            dport: u16::from_be_bytes([b[3 + 2 * w], b[4 + 2 * w]]),
        })
    }
}

impl fmt::Display for FiveTuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |ip: IpAddr, port: u16| match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        let p = match self.proto {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            PROTO_ICMP => "icmp".to_string(),
            PROTO_ICMPV6 => "icmp6".to_string(),
            p => format!("p{p}"),
        };
        write!(
            f,
            "{p} {} -> {}",
            ep(self.src, self.sport),
            ep(self.dst, self.dport)
        )
    }
}

pub fn push_ip(v: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
    }
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    push_ip(&mut v, ip);
    v
}

pub fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

/// A packet: its bytes (as captured; possibly shorter than on the wire) and parsed headers.
pub struct Packet<'a> {
    data: &'a mut [u8],
    pub hdr: Headers,
    /// Length on the wire (>= `data.len()` for truncated captures).
    pub wire_len: usize,
    /// Capture timestamp (ns since the epoch); what NFs use as "now" for timeouts.
    pub ts_ns: u64,
}

impl<'a> Packet<'a> {
    /// Parses `data`. Never fails: problems are reported in `hdr.shape`.
    #[inline]
    pub fn parse(data: &'a mut [u8], wire_len: usize, ts_ns: u64) -> Packet<'a> {
        let captured = data.len();
        // The headers are parsed into the packet being returned (which the caller's frame
        // holds), not built aside and moved in: the move read each address, written a few
        // bytes at a time just before, with 16-byte loads that the CPU cannot forward from
        // those stores, a stall on every packet at every NF.
        let mut p = Packet {
            data,
            hdr: Headers::default(),
            wire_len: wire_len.max(captured),
            ts_ns,
        };
        parse_headers(p.data, &mut p.hdr);
        p
    }

    pub fn data(&self) -> &[u8] {
        self.data
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        self.data
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The 5-tuple, when the packet has IP and a transport header (ports 0 for ICMP).
    pub fn five_tuple(&self) -> Option<FiveTuple> {
        if self.hdr.shape != Shape::Ip {
            return None;
        }
        let (sport, dport) = match self.hdr.l4? {
            L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
            L4::Icmp { .. } | L4::Other => (0, 0),
        };
        Some(FiveTuple {
            proto: self.hdr.proto,
            src: self.hdr.src,
            dst: self.hdr.dst,
            sport,
            dport,
        })
    }

    pub fn tcp_flags(&self) -> Option<u8> {
        match self.hdr.l4 {
            Some(L4::Tcp { flags, .. }) => Some(flags),
            _ => None,
        }
    }

    /// The captured L4 payload.
    pub fn payload(&self) -> &[u8] {
        match self.hdr.l4 {
            Some(_) if self.hdr.payload_off <= self.hdr.ip_end => {
                &self.data[self.hdr.payload_off..self.hdr.ip_end]
            }
            _ => &[],
        }
    }

    /// Rewrites the source address (same family only); fixes IPv4 and L4 checksums.
    pub fn set_src(&mut self, ip: IpAddr) -> bool {
        self.set_addr(true, ip)
    }

    /// Rewrites the destination address (same family only); fixes checksums.
    pub fn set_dst(&mut self, ip: IpAddr) -> bool {
        self.set_addr(false, ip)
    }

    fn set_addr(&mut self, src: bool, ip: IpAddr) -> bool {
        if !matches!(self.hdr.shape, Shape::Ip | Shape::Fragment) {
            return false;
        }
        // A NAT rewrites an address in every packet: fixed-size copies, no calls.
        match (self.hdr.ipv6, ip) {
            (false, IpAddr::V4(a)) => {
                self.replace_addr(self.hdr.l3 + if src { 12 } else { 16 }, a.octets())
            }
            (true, IpAddr::V6(a)) => {
                self.replace_addr(self.hdr.l3 + if src { 8 } else { 24 }, a.octets())
            }
            _ => return false,
        }
        if src {
            self.hdr.src = ip;
        } else {
            self.hdr.dst = ip;
        }
        true
    }

    /// Writes the address `new` at `off` and fixes the IPv4 and L4 checksums over it.
    fn replace_addr<const N: usize>(&mut self, off: usize, new: [u8; N]) {
        let mut old = [0u8; N];
        old.copy_from_slice(&self.data[off..off + N]);
        self.data[off..off + N].copy_from_slice(&new);
        if !self.hdr.ipv6 {
            let c = self.hdr.l3 + 10;
            csum_replace(&mut self.data[c..c + 2], &old, &new);
        }
        // The pseudo-header covers addresses: fix TCP/UDP/ICMPv6 checksums (not ICMPv4).
        if let Some(c) = self.l4_csum_off() {
            if self.hdr.proto != PROTO_ICMP {
                let udp_zero = self.hdr.proto == PROTO_UDP
                    && !self.hdr.ipv6
                    && self.data[c] == 0
                    && self.data[c + 1] == 0;
                if !udp_zero {
                    csum_replace(&mut self.data[c..c + 2], &old, &new);
                    if self.hdr.proto == PROTO_UDP && self.data[c] == 0 && self.data[c + 1] == 0 {
                        self.data[c..c + 2].copy_from_slice(&[0xff, 0xff]);
                    }
                }
            }
        }
    }

    /// Rewrites the source port (TCP/UDP); fixes the L4 checksum.
    pub fn set_sport(&mut self, port: u16) -> bool {
        self.set_port(true, port)
    }

    /// Rewrites the destination port (TCP/UDP); fixes the L4 checksum.
    pub fn set_dport(&mut self, port: u16) -> bool {
        self.set_port(false, port)
    }

    fn set_port(&mut self, src: bool, port: u16) -> bool {
        let Some(L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport }) = self.hdr.l4 else {
            return false;
        };
        let off = self.hdr.l4_off + if src { 0 } else { 2 };
        let old = [self.data[off], self.data[off + 1]];
        let new = port.to_be_bytes();
        self.data[off..off + 2].copy_from_slice(&new);
        if let Some(c) = self.l4_csum_off() {
            let udp_zero = self.hdr.proto == PROTO_UDP
                && !self.hdr.ipv6
                && self.data[c] == 0
                && self.data[c + 1] == 0;
            if !udp_zero {
                csum_replace(&mut self.data[c..c + 2], &old, &new);
                if self.hdr.proto == PROTO_UDP && self.data[c] == 0 && self.data[c + 1] == 0 {
                    self.data[c..c + 2].copy_from_slice(&[0xff, 0xff]);
                }
            }
        }
        let (s, d) = if src { (port, dport) } else { (sport, port) };
        self.hdr.l4 = Some(match self.hdr.l4 {
            Some(L4::Tcp { flags, .. }) => L4::Tcp {
                sport: s,
                dport: d,
                flags,
            },
            _ => L4::Udp { sport: s, dport: d },
        });
        true
    }

    fn l4_csum_off(&self) -> Option<usize> {
        let rel = match (self.hdr.l4?, self.hdr.proto) {
            (L4::Tcp { .. }, _) => 16,
            (L4::Udp { .. }, _) => 6,
            (L4::Icmp { .. }, _) => 2,
            (L4::Other, _) => return None,
        };
        let off = self.hdr.l4_off + rel;
        (off + 2 <= self.data.len()).then_some(off)
    }
}

/// RFC 1624 incremental update of the checksum at `c` when `old` bytes become `new`.
fn csum_replace(c: &mut [u8], old: &[u8], new: &[u8]) {
    let mut sum = u32::from(!u16::from_be_bytes([c[0], c[1]]));
    for w in old.chunks(2) {
        let v = u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]);
        sum += u32::from(!v);
    }
    for w in new.chunks(2) {
        let v = u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]);
        sum += u32::from(v);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let r = !(sum as u16);
    c.copy_from_slice(&r.to_be_bytes());
}

/// One's-complement sum of `data` folded to 16 bits (for tests and full recomputation).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(h) => sum += u32::from(u16::from_be_bytes([h, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(h) = odd {
        sum += u32::from(u16::from_be_bytes([h, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(d: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([d[o], d[o + 1]])
}

#[inline(always)]
fn parse_headers(d: &[u8], h: &mut Headers) {
    if d.len() < ETH_HLEN {
        h.shape = Shape::Malformed(Malformed::ShortEthernet);
        return;
    }
    let mut et = be16(d, 12);
    let mut off = ETH_HLEN;
    for _ in 0..2 {
        if et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ {
            if d.len() < off + 4 {
                h.shape = Shape::Malformed(Malformed::ShortEthernet);
                return;
            }
            et = be16(d, off + 2);
            off += 4;
        }
    }
    h.ethertype = et;
    h.l3 = off;
    match et {
        ETHERTYPE_IPV4 => parse_v4(d, h),
        ETHERTYPE_IPV6 => parse_v6(d, h),
        _ => h.shape = Shape::NonIp,
    }
}

#[inline(always)]
fn parse_v4(d: &[u8], h: &mut Headers) {
    let o = h.l3;
    if d.len() < o + 20 {
        h.shape = Shape::Malformed(Malformed::ShortIp);
        return;
    }
    let vihl = d[o];
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(be16(d, o + 2));
    if vihl >> 4 != 4 || ihl < 20 || total < ihl {
        h.shape = Shape::Malformed(Malformed::BadIpHeader);
        return;
    }
    if d.len() < o + ihl {
        h.shape = Shape::Malformed(Malformed::ShortIp);
        return;
    }
    h.src = IpAddr::V4(Ipv4Addr::new(d[o + 12], d[o + 13], d[o + 14], d[o + 15]));
    h.dst = IpAddr::V4(Ipv4Addr::new(d[o + 16], d[o + 17], d[o + 18], d[o + 19]));
    h.proto = d[o + 9];
    let frag = be16(d, o + 6);
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    h.fragment = more || offset != 0;
    h.ip_end = (o + total).min(d.len());
    if offset != 0 {
        h.shape = Shape::Fragment;
        return;
    }
    parse_l4(d, h, o + ihl);
}

fn parse_v6(d: &[u8], h: &mut Headers) {
    let o = h.l3;
    h.ipv6 = true;
    if d.len() < o + 40 {
        h.shape = Shape::Malformed(Malformed::ShortIp);
        return;
    }
    if d[o] >> 4 != 6 {
        h.shape = Shape::Malformed(Malformed::BadIpHeader);
        return;
    }
    let plen = usize::from(be16(d, o + 4));
    let mut s = [0u8; 16];
    s.copy_from_slice(&d[o + 8..o + 24]);
    h.src = IpAddr::V6(Ipv6Addr::from(s));
    s.copy_from_slice(&d[o + 24..o + 40]);
    h.dst = IpAddr::V6(Ipv6Addr::from(s));
    h.ip_end = (o + 40 + plen).min(d.len());
    let mut next = d[o + 6];
    let mut off = o + 40;
    // Walk extension headers: hop-by-hop 0, routing 43, fragment 44, dest options 60,
    // mobility 135, HIP 139, shim6 140; AH 51 has its own length unit.
    for _ in 0..16 {
        match next {
            0 | 43 | 60 | 135 | 139 | 140 => {
                if d.len() < off + 2 {
                    h.shape = Shape::Malformed(Malformed::BadExtHeader);
                    return;
                }
                let len = (usize::from(d[off + 1]) + 1) * 8;
                next = d[off];
                off += len;
            }
            51 => {
                if d.len() < off + 2 {
                    h.shape = Shape::Malformed(Malformed::BadExtHeader);
                    return;
                }
                let len = (usize::from(d[off + 1]) + 2) * 4;
                next = d[off];
                off += len;
            }
            44 => {
                if d.len() < off + 8 {
                    h.shape = Shape::Malformed(Malformed::BadExtHeader);
                    return;
                }
                let fo = be16(d, off + 2);
                h.fragment = true;
                next = d[off];
                off += 8;
                if fo & 0xfff8 != 0 {
                    h.proto = next;
                    h.shape = Shape::Fragment;
                    return;
                }
            }
            _ => {
                h.proto = next;
                if off > d.len() {
                    h.shape = Shape::Malformed(Malformed::BadExtHeader);
                    return;
                }
                parse_l4(d, h, off);
                return;
            }
        }
    }
    h.shape = Shape::Malformed(Malformed::BadExtHeader);
}

fn parse_l4(d: &[u8], h: &mut Headers, off: usize) {
    h.l4_off = off;
    let need = match h.proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        PROTO_ICMP | PROTO_ICMPV6 => 4,
        _ => 0,
    };
    if d.len() < off + need {
        // A first fragment too short for the L4 header still counts as a fragment.
        h.shape = if h.fragment {
            Shape::Fragment
        } else {
            Shape::Malformed(Malformed::ShortL4)
        };
        return;
    }
    h.shape = Shape::Ip;
    match h.proto {
        PROTO_TCP => {
            let doff = usize::from(d[off + 12] >> 4) * 4;
            if doff < 20 {
                h.shape = Shape::Malformed(Malformed::ShortL4);
                return;
            }
            h.l4 = Some(L4::Tcp {
                sport: be16(d, off),
                dport: be16(d, off + 2),
                flags: d[off + 13],
            });
            h.payload_off = off + doff;
        }
        PROTO_UDP => {
            h.l4 = Some(L4::Udp {
                sport: be16(d, off),
                dport: be16(d, off + 2),
            });
            h.payload_off = off + 8;
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            h.l4 = Some(L4::Icmp {
                ty: d[off],
                code: d[off + 1],
            });
            h.payload_off = off + 4;
        }
        _ => {
            h.l4 = Some(L4::Other);
            h.payload_off = off;
        }
    }
}

/// Builders for test packets (also used by benchmarks and trace synthesis).
pub mod build {
    use super::*;

    /// An Ethernet + IPv4/IPv6 + TCP/UDP frame with valid checksums.
    pub fn frame(t: &FiveTuple, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        let l4len = match t.proto {
            PROTO_TCP => 20,
            PROTO_UDP => 8,
            _ => 8,
        } + payload.len();
        let mut l4 = vec![0u8; l4len];
        match t.proto {
            PROTO_TCP => {
                l4[0..2].copy_from_slice(&t.sport.to_be_bytes());
                l4[2..4].copy_from_slice(&t.dport.to_be_bytes());
                l4[4..8].copy_from_slice(&1u32.to_be_bytes());
                l4[12] = 5 << 4;
                l4[13] = tcp_flags;
                l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
                l4[20..].copy_from_slice(payload);
            }
            PROTO_UDP => {
                l4[0..2].copy_from_slice(&t.sport.to_be_bytes());
                l4[2..4].copy_from_slice(&t.dport.to_be_bytes());
                l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
                l4[8..].copy_from_slice(payload);
            }
            _ => {
                l4[0] = if t.src.is_ipv4() { 8 } else { 128 };
                l4[8..].copy_from_slice(payload);
            }
        }
        let (ip, csum_off) = match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let mut ip = vec![0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 64;
                ip[9] = t.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum(&[&ip]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                let pseudo = [
                    &s.octets()[..],
                    &d.octets()[..],
                    &[0, t.proto],
                    &(l4len as u16).to_be_bytes(),
                ]
                .concat();
                (ip, pseudo)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
                ip[6] = t.proto;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                let pseudo = [
                    &s.octets()[..],
                    &d.octets()[..],
                    &(l4len as u32).to_be_bytes(),
                    &[0, 0, 0, t.proto],
                ]
                .concat();
                (ip, pseudo)
            }
            _ => panic!("mixed address families"),
        };
        let co = match t.proto {
            PROTO_TCP => Some(16),
            PROTO_UDP => Some(6),
            PROTO_ICMP => Some(2),
            PROTO_ICMPV6 => Some(2),
            _ => None,
        };
        if let Some(co) = co {
            let c = if t.proto == PROTO_ICMP {
                checksum(&[&l4])
            } else {
                checksum(&[&csum_off, &l4])
            };
            l4[co..co + 2].copy_from_slice(&c.to_be_bytes());
        }
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }
}

#[cfg(test)]
mod tests;
