//! Buckets: the unit in which a splitter assigns flows to instances, computed from a stored
//! per-flow object's key bytes.
//!
//! The dataplane's splitters hash a packet's partition key into one of [`BUCKETS`] buckets
//! and move whole buckets between instances. The store computes the same bucket from a key so
//! that an instance can give up the objects of whole buckets in one operation
//! (`OP_RELEASE_BUCKETS`) instead of naming every object: a handover then costs the store
//! nothing per flow.

use crate::names::KeyKind;

/// Buckets per vertex.
pub const BUCKETS: usize = 1024;

/// Which header fields a splitter keeps together (the dataplane's partition key, as a code
/// the store can keep and log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Both directions of one connection.
    Flow = 0,
    /// Every flow of the client host.
    Client = 1,
    /// Every flow of the server host.
    Server = 2,
}

impl Split {
    pub fn from_code(c: u8) -> Option<Split> {
        match c {
            0 => Some(Split::Flow),
            1 => Some(Split::Client),
            2 => Some(Split::Server),
            _ => None,
        }
    }
}

pub fn mix(mut h: u64, v: u64) -> u64 {
    h ^= v;
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// The hash word of an IPv4 address (its big-endian value).
pub fn v4_word(a: u32) -> u64 {
    u64::from(a)
}

/// The hash word of an IPv6 address (its big-endian value, folded).
pub fn v6_word(a: u128) -> u64 {
    (a as u64) ^ ((a >> 64) as u64).rotate_left(17)
}

/// The hash of one host, from its [`v4_word`] or [`v6_word`].
pub fn host_hash(word: u64) -> u64 {
    mix(0, word)
}

pub fn bucket(hash: u64) -> usize {
    (hash % BUCKETS as u64) as usize
}

/// The splitter hash of a connection given as its two endpoints (address as an ordering
/// value and a hash word, port) and protocol: both directions give the same hash.
fn tuple_hash(
    proto: u8,
    src: (u128, u64),
    sport: u16,
    dst: (u128, u64),
    dport: u16,
    split: Split,
) -> u64 {
    let src_is_client = if sport != dport {
        sport > dport
    } else {
        src.0 <= dst.0
    };
    match split {
        Split::Flow => {
            let ((a, ap), (c, cp)) = if (src.0, sport) <= (dst.0, dport) {
                ((src.1, sport), (dst.1, dport))
            } else {
                ((dst.1, dport), (src.1, sport))
            };
            let h = mix(mix(a, c), u64::from(proto));
            mix(h, u64::from(ap) << 16 | u64::from(cp))
        }
        Split::Client => host_hash(if src_is_client { src.1 } else { dst.1 }),
        Split::Server => host_hash(if src_is_client { dst.1 } else { src.1 }),
    }
}

/// The splitter hash of a five-tuple key (`[proto][src][dst][sport BE][dport BE]`, 13 bytes
/// for IPv4, 37 for IPv6); `None` for any other length.
pub fn five_tuple_key_hash(b: &[u8], split: Split) -> Option<u64> {
    let port = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    match b.len() {
        13 => {
            let w = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            let (s, d) = (w(1), w(5));
            Some(tuple_hash(
                b[0],
                (u128::from(s), v4_word(s)),
                port(9),
                (u128::from(d), v4_word(d)),
                port(11),
                split,
            ))
        }
        37 => {
            let w = |i: usize| u128::from_be_bytes(b[i..i + 16].try_into().expect("16 bytes"));
            let (s, d) = (w(1), w(17));
            Some(tuple_hash(
                b[0],
                (s, v6_word(s)),
                port(33),
                (d, v6_word(d)),
                port(35),
                split,
            ))
        }
        _ => None,
    }
}

/// The bucket a per-flow object's key belongs to under `split`, when its key says (a flow's
/// five-tuple always does; a host address does under a client or server split). `None`
/// means the object is not tied to one bucket.
pub fn key_bucket(kind: KeyKind, sub: &[u8], split: Split) -> Option<usize> {
    match kind {
        KeyKind::FiveTuple => five_tuple_key_hash(sub, split).map(bucket),
        KeyKind::Host if split != Split::Flow => match sub.len() {
            4 => Some(bucket(host_hash(v4_word(u32::from_be_bytes(
                sub.try_into().expect("4 bytes"),
            ))))),
            16 => Some(bucket(host_hash(v6_word(u128::from_be_bytes(
                sub.try_into().expect("16 bytes"),
            ))))),
            _ => None,
        },
        _ => None,
    }
}

/// Whether every key of an object of `kind` that a flow can produce has a bucket under
/// `split` (a handover can then release the object's keys by bucket).
pub fn bucketed(kind: KeyKind, split: Split) -> bool {
    match kind {
        KeyKind::FiveTuple => true,
        KeyKind::Host => split != Split::Flow,
        _ => false,
    }
}

/// A set of buckets, one bit each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BucketSet([u64; BUCKETS / 64]);

impl BucketSet {
    pub const BYTES: usize = BUCKETS / 8;

    pub fn from_fn(mut f: impl FnMut(usize) -> bool) -> BucketSet {
        let mut s = BucketSet::default();
        for b in 0..BUCKETS {
            if f(b) {
                s.insert(b);
            }
        }
        s
    }

    pub fn insert(&mut self, b: usize) {
        self.0[b / 64] |= 1 << (b % 64);
    }

    pub fn contains(&self, b: usize) -> bool {
        self.0[b / 64] & (1 << (b % 64)) != 0
    }

    pub fn union(&mut self, o: &BucketSet) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= b;
        }
    }

    pub fn remove_all(&mut self, o: &BucketSet) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a &= !b;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Little-endian words, [`Self::BYTES`] bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn from_bytes(b: &[u8]) -> Option<BucketSet> {
        if b.len() != Self::BYTES {
            return None;
        }
        let mut s = BucketSet::default();
        for (w, c) in s.0.iter_mut().zip(b.chunks_exact(8)) {
            *w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        }
        Some(s)
    }
}

/// The payload of `OP_RELEASE_BUCKETS` / `OP_ACQUIRE_BUCKETS`: the buckets, and what the
/// store needs to compute a key's bucket (the split and each per-flow object's key kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buckets {
    pub split: Split,
    pub kinds: Vec<(u16, KeyKind)>,
    pub set: BucketSet,
}

impl Buckets {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.split as u8, self.kinds.len() as u8];
        for (o, k) in self.kinds.iter().take(255) {
            v.extend_from_slice(&o.to_be_bytes());
            v.push(*k as u8);
        }
        v.extend_from_slice(&self.set.to_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Option<Buckets> {
        let split = Split::from_code(*b.first()?)?;
        let n = usize::from(*b.get(1)?);
        let rest = b.get(2..)?;
        if rest.len() != n * 3 + BucketSet::BYTES {
            return None;
        }
        let kinds = rest[..n * 3]
            .chunks_exact(3)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    KeyKind::from_u32(u32::from(c[2])),
                )
            })
            .collect();
        Some(Buckets {
            split,
            kinds,
            set: BucketSet::from_bytes(&rest[n * 3..])?,
        })
    }

    /// The bucket of object `object`'s key `sub`, if the object is listed and its key says.
    pub fn bucket_of(&self, object: u16, sub: &[u8]) -> Option<usize> {
        let kind = self.kinds.iter().find(|(o, _)| *o == object)?.1;
        key_bucket(kind, sub, self.split)
    }

    /// Whether object `object`'s key `sub` falls in one of the buckets.
    pub fn holds(&self, object: u16, sub: &[u8]) -> bool {
        self.bucket_of(object, sub)
            .is_some_and(|b| self.set.contains(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bucket_sets_round_trip_and_combine() {
        let a = BucketSet::from_fn(|b| b % 3 == 0);
        assert_eq!(BucketSet::from_bytes(&a.to_bytes()), Some(a.clone()));
        assert_eq!(BucketSet::from_bytes(&[0; 5]), None);
        let mut u = a.clone();
        u.union(&BucketSet::from_fn(|b| b == 1));
        assert!(u.contains(1) && u.contains(3) && !u.contains(2));
        u.remove_all(&a);
        assert_eq!(u.len(), 1);
    }

    #[test]
    fn bucket_requests_round_trip_and_refuse_garbage() {
        let b = Buckets {
            split: Split::Client,
            kinds: vec![(3, KeyKind::FiveTuple), (9, KeyKind::Host)],
            set: BucketSet::from_fn(|b| b < 10),
        };
        let bytes = b.encode();
        assert_eq!(Buckets::decode(&bytes), Some(b.clone()));
        for cut in 0..bytes.len() {
            assert_eq!(Buckets::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 7;
        assert_eq!(Buckets::decode(&bad), None);
        let host = [10, 0, 0, 1];
        let hb = key_bucket(KeyKind::Host, &host, Split::Client).unwrap();
        assert_eq!(b.bucket_of(9, &host), Some(hb));
        assert_eq!(b.holds(9, &host), hb < 10);
        assert_eq!(
            b.bucket_of(4, &host),
            None,
            "an object not listed has no bucket"
        );
    }

    proptest! {
        /// Both directions of a connection fall in one bucket, under every split.
        #[test]
        fn a_connection_and_its_reverse_share_a_bucket(
            proto: u8, s: [u8; 16], d: [u8; 16], sp: u16, dp: u16, v6: bool, split in 0u8..3,
        ) {
            let split = Split::from_code(split).unwrap();
            let w = if v6 { 16 } else { 4 };
            let key = |a: &[u8], ap: u16, b: &[u8], bp: u16| {
                let mut k = vec![proto];
                k.extend_from_slice(&a[..w]);
                k.extend_from_slice(&b[..w]);
                k.extend_from_slice(&ap.to_be_bytes());
                k.extend_from_slice(&bp.to_be_bytes());
                k
            };
            let fwd = key(&s, sp, &d, dp);
            let rev = key(&d, dp, &s, sp);
            let b = key_bucket(KeyKind::FiveTuple, &fwd, split);
            prop_assert!(b.is_some());
            prop_assert_eq!(b, key_bucket(KeyKind::FiveTuple, &rev, split));
        }
    }
}
