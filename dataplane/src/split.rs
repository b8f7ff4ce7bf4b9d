//! Splitters: which downstream instance gets a packet.
//!
//! A packet's partition key (see [`PartitionKey`]) is hashed with a fixed hash into one of
//! [`BUCKETS`] buckets, and an allocation table maps buckets to instances (like a NIC's RSS
//! indirection table). All splitters in front of a vertex share its table, so they agree on
//! where each flow group goes; moving a group to another instance rewrites bucket entries.

use chc_store::bucket::{self, mix, v4_word, v6_word, Split};
pub use chc_store::bucket::{bucket, BUCKETS};
use chc_store::names::KeyKind;
use nfs::nf::{client_is_src, PartitionKey};
use nfs::packet::{FiveTuple, Packet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU16, Ordering};

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

fn ip_word(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => v4_word(u32::from(a)),
        IpAddr::V6(a) => v6_word(u128::from(a)),
    }
}

/// The hash of one host: a client or server split keeps all of a host's flows (and its
/// host-keyed state) in one bucket.
fn host_hash(ip: IpAddr) -> u64 {
    bucket::host_hash(ip_word(ip))
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

/// The bucket a stored object's key belongs to under `key`, when its key says (a flow's
/// five-tuple always does; a host address does under a client or server split). `None`
/// means the object is not tied to one bucket. The store computes the same (see
/// [`chc_store::bucket`]), which lets a handover release whole buckets.
pub fn key_bucket(kind: KeyKind, sub: &[u8], key: PartitionKey) -> Option<usize> {
    bucket::key_bucket(kind, sub, split_of(key))
}

/// The store's code for a partition key.
pub fn split_of(key: PartitionKey) -> Split {
    match key {
        PartitionKey::Flow => Split::Flow,
        PartitionKey::Client => Split::Client,
        PartitionKey::Server => Split::Server,
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
        /// The store computes a key's bucket from its bytes; it must be the bucket the
        /// splitter sends the flow's packets to.
        #[test]
        fn key_bytes_hash_like_their_tuple(
            proto in proptest::prelude::any::<u8>(),
            src in proptest::prelude::any::<[u8; 16]>(),
            dst in proptest::prelude::any::<[u8; 16]>(),
            sport in 0u16..4,
            dport in 0u16..4,
            wide in proptest::prelude::any::<bool>(),
            v6 in proptest::prelude::any::<bool>(),
        ) {
            // Small ports and sometimes equal addresses reach every tie-break.
            let dst = if wide { dst } else { src };
            let ip = |a: [u8; 16]| if v6 {
                IpAddr::from(a)
            } else {
                IpAddr::from(<[u8; 4]>::try_from(&a[..4]).unwrap())
            };
            let t = FiveTuple {
                proto,
                src: ip(src),
                dst: ip(dst),
                sport: sport * 20000,
                dport: dport * 20000,
            };
            for k in [PartitionKey::Flow, PartitionKey::Client, PartitionKey::Server] {
                proptest::prop_assert_eq!(
                    chc_store::bucket::five_tuple_key_hash(&t.key_bytes(), split_of(k)),
                    Some(tuple_hash(&t, k))
                );
            }
        }
    }
}
