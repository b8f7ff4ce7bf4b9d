//! Splitters: which downstream instance gets a packet.
//!
//! A packet's partition key (see [`PartitionKey`]) is hashed with a fixed hash into one of
//! [`BUCKETS`] buckets, and an allocation table maps buckets to instances (like a NIC's RSS
//! indirection table). All splitters in front of a vertex share its table, so they agree on
//! where each flow group goes; moving a group to another instance rewrites bucket entries.

use chc_store::names::KeyKind;
use nfs::nf::{client_is_src, PartitionKey};
use nfs::packet::{FiveTuple, Packet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};

pub const BUCKETS: usize = 1024;

/// Bucket -> instance for one vertex.
#[derive(Debug)]
pub struct Allocation {
    table: Vec<AtomicU16>,
}

impl Allocation {
    /// Buckets spread round-robin over `n` instances.
    pub fn even(n: u16) -> Allocation {
        Allocation {
            table: (0..BUCKETS)
                .map(|b| AtomicU16::new((b % usize::from(n.max(1))) as u16))
                .collect(),
        }
    }

    pub fn instance(&self, bucket: usize) -> u16 {
        self.table[bucket % BUCKETS].load(Ordering::Relaxed)
    }

    pub fn set(&self, bucket: usize, instance: u16) {
        self.table[bucket % BUCKETS].store(instance, Ordering::Relaxed);
    }

    /// The table as plain entries (a splitter's own copy).
    pub fn entries(&self) -> Vec<u16> {
        (0..BUCKETS).map(|b| self.instance(b)).collect()
    }

    pub fn buckets_of(&self, instance: u16) -> Vec<usize> {
        (0..BUCKETS)
            .filter(|&b| self.instance(b) == instance)
            .collect()
    }
}

fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v;
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

fn ip_word(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(17)
        }
    }
}

/// The hash of one host: a client or server split keeps all of a host's flows (and its
/// host-keyed state) in one bucket.
fn host_hash(ip: IpAddr) -> u64 {
    mix(0, ip_word(ip))
}

/// A fixed hash of the packet's partition key (both directions of a connection agree).
pub fn key_hash(pkt: &Packet<'_>, key: PartitionKey) -> u64 {
    match pkt.five_tuple() {
        Some(t) => tuple_hash(&t, key),
        None => {
            // Fragments without ports: the address pair (ordered) stands in.
            let (a, b) = (pkt.hdr.src.min(pkt.hdr.dst), pkt.hdr.src.max(pkt.hdr.dst));
            match key {
                PartitionKey::Flow => mix(mix(ip_word(a), ip_word(b)), u64::from(pkt.hdr.proto)),
                PartitionKey::Client | PartitionKey::Server => host_hash(a),
            }
        }
    }
}

pub fn tuple_hash(t: &FiveTuple, key: PartitionKey) -> u64 {
    match key {
        PartitionKey::Flow => {
            let c = t.canonical();
            let h = mix(mix(ip_word(c.src), ip_word(c.dst)), u64::from(c.proto));
            mix(h, u64::from(c.sport) << 16 | u64::from(c.dport))
        }
        PartitionKey::Client => host_hash(if client_is_src(t) { t.src } else { t.dst }),
        PartitionKey::Server => host_hash(if client_is_src(t) { t.dst } else { t.src }),
    }
}

pub fn bucket(hash: u64) -> usize {
    (hash % BUCKETS as u64) as usize
}

/// The bucket a stored object's key belongs to under `key`, when its key says (a flow's
/// five-tuple always does; a host address does under a client or server split). `None`
/// means the object is not tied to one bucket.
pub fn key_bucket(kind: KeyKind, sub: &[u8], key: PartitionKey) -> Option<usize> {
    match kind {
        KeyKind::FiveTuple => match <&[u8; 13]>::try_from(sub) {
            Ok(v4) => Some(bucket(v4_key_hash(v4, key))),
            Err(_) => FiveTuple::from_key_bytes(sub).map(|t| bucket(tuple_hash(&t, key))),
        },
        KeyKind::Host if key != PartitionKey::Flow => {
            let ip = match sub.len() {
                4 => IpAddr::from(<[u8; 4]>::try_from(sub).ok()?),
                16 => IpAddr::from(<[u8; 16]>::try_from(sub).ok()?),
                _ => return None,
            };
            Some(bucket(host_hash(ip)))
        }
        _ => None,
    }
}

/// [`tuple_hash`] of an IPv4 five-tuple read straight from its 13 key bytes (proto, src, dst,
/// sport, dport). A handover asks for the bucket of every cached flow, so this skips building
/// a [`FiveTuple`] of `IpAddr`s and comparing them as enums: an IPv4 address orders and
/// hashes as its big-endian `u32`.
fn v4_key_hash(b: &[u8; 13], key: PartitionKey) -> u64 {
    let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let (src, dst, sport, dport) = (word(1), word(5), port(9), port(11));
    let src_is_client = if sport != dport {
        sport > dport
    } else {
        src <= dst
    };
    match key {
        PartitionKey::Flow => {
            let ((a, ap), (c, cp)) = if (src, sport) <= (dst, dport) {
                ((src, sport), (dst, dport))
            } else {
                ((dst, dport), (src, sport))
            };
            let h = mix(mix(u64::from(a), u64::from(c)), u64::from(b[0]));
            mix(h, u64::from(ap) << 16 | u64::from(cp))
        }
        PartitionKey::Client => mix(0, u64::from(if src_is_client { src } else { dst })),
        PartitionKey::Server => mix(0, u64::from(if src_is_client { dst } else { src })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs::packet::PROTO_TCP;

    fn t(s: &str, sp: u16, d: &str, dp: u16) -> FiveTuple {
        FiveTuple {
            proto: PROTO_TCP,
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            sport: sp,
            dport: dp,
        }
    }

    #[test]
    fn both_directions_and_all_flows_of_a_client_agree() {
        let a = t("10.0.0.1", 40000, "1.1.1.1", 80);
        for k in [
            PartitionKey::Flow,
            PartitionKey::Client,
            PartitionKey::Server,
        ] {
            assert_eq!(tuple_hash(&a, k), tuple_hash(&a.reversed(), k), "{k:?}");
        }
        let b = t("10.0.0.1", 40001, "2.2.2.2", 443);
        assert_eq!(
            tuple_hash(&a, PartitionKey::Client),
            tuple_hash(&b, PartitionKey::Client)
        );
        assert_ne!(
            tuple_hash(&a, PartitionKey::Flow),
            tuple_hash(&b, PartitionKey::Flow)
        );
    }

    #[test]
    fn allocation_spreads_and_moves() {
        let al = Allocation::even(3);
        let counts: Vec<usize> = (0..3).map(|i| al.buckets_of(i).len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), BUCKETS);
        assert!(counts.iter().all(|&c| c >= BUCKETS / 3));
        al.set(5, 2);
        assert_eq!(al.instance(5), 2);
    }

    #[test]
    fn stored_keys_fall_in_their_flows_bucket() {
        let a = t("10.0.0.1", 40000, "1.1.1.1", 80);
        for k in [
            PartitionKey::Flow,
            PartitionKey::Client,
            PartitionKey::Server,
        ] {
            let want = bucket(tuple_hash(&a, k));
            for sub in [
                a.key_bytes(),
                a.reversed().key_bytes(),
                a.canonical().key_bytes(),
            ] {
                assert_eq!(key_bucket(KeyKind::FiveTuple, &sub, k), Some(want), "{k:?}");
            }
        }
        let client = [10, 0, 0, 1];
        assert_eq!(
            key_bucket(KeyKind::Host, &client, PartitionKey::Client),
            Some(bucket(tuple_hash(&a, PartitionKey::Client)))
        );
        assert_eq!(key_bucket(KeyKind::Host, &client, PartitionKey::Flow), None);
        assert_eq!(key_bucket(KeyKind::Raw, b"x", PartitionKey::Flow), None);
        assert_eq!(
            key_bucket(KeyKind::FiveTuple, b"short", PartitionKey::Flow),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn v4_key_bytes_hash_like_their_tuple(
            proto in proptest::prelude::any::<u8>(),
            src in proptest::prelude::any::<[u8; 4]>(),
            dst in proptest::prelude::any::<[u8; 4]>(),
            sport in 0u16..4,
            dport in 0u16..4,
            wide in proptest::prelude::any::<bool>(),
        ) {
            // Small ports and sometimes equal addresses reach every tie-break.
            let dst = if wide { dst } else { src };
            let t = FiveTuple {
                proto,
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                sport: sport * 30000,
                dport: dport * 30000,
            };
            let b: [u8; 13] = t.key_bytes().try_into().unwrap();
            for k in [PartitionKey::Flow, PartitionKey::Client, PartitionKey::Server] {
                proptest::prop_assert_eq!(v4_key_hash(&b, k), tuple_hash(&t, k));
            }
        }
    }
}
