//! Store keys: vertex id + object id + scope + the object's own key bytes.
//!
//! Per-flow objects additionally carry an owner (an instance id) in their entry's metadata;
//! the owner is not part of the key, so ownership can move between instances without moving
//! the object (the handover of Fig 3.7 only rewrites metadata).

use std::fmt;
use std::hash::{Hash, Hasher};

/// Key bytes up to this length are stored inline. The length makes [`Sub`] as large as its
/// heap form (24 bytes) and a [`Key`] 32: every byte of a key is in the shard's table, which is
/// walked by random lookups whose cost is cache misses, so a longer inline form would slow
/// every key to spare the longest ones (an IPv6 5-tuple, 37 bytes) a pointer chase. IPv4
/// 5-tuples (13 bytes), addresses and integer ids stay inline.
pub const INLINE_SUB: usize = 22;

/// The object's own key bytes (a 5-tuple, a host address, a name...).
#[derive(Clone)]
pub enum Sub {
    Inline { len: u8, buf: [u8; INLINE_SUB] },
    Heap(Box<[u8]>),
}

impl Sub {
    pub fn new(b: &[u8]) -> Self {
        if b.len() <= INLINE_SUB {
            let mut buf = [0u8; INLINE_SUB];
            buf[..b.len()].copy_from_slice(b);
            Sub::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Sub::Heap(b.into())
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Sub::Inline { len, buf } => &buf[..*len as usize],
            Sub::Heap(b) => b,
        }
    }
}

impl fmt::Debug for Sub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", bytes::Bytes::copy_from_slice(self.as_slice()))
    }
}

impl PartialEq for Sub {
    fn eq(&self, o: &Self) -> bool {
        same_bytes(self.as_slice(), o.as_slice())
    }
}

/// Byte-string equality for keys, which are short: up to 16 bytes are compared as two
/// (overlapping) words in line, without calling `memcmp`. That call was a tenth of a table
/// lookup, and an empty string would be worse: an empty `Bytes` points at a dangling
/// address, from which libc's vector `memcmp` still issues a masked load; with nothing to
/// load, the processor takes a slow fault-suppression assist (hundreds of cycles). Keys of
/// cross-flow counters are empty and compared on every packet.
#[inline]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Words from both ends; together they cover the string.
    fn ends<const W: usize>(s: &[u8]) -> ([u8; W], [u8; W]) {
        let n = s.len();
        (
            s[..W].try_into().expect("W bytes"),
            s[n - W..].try_into().expect("W bytes"),
        )
    }
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => ends::<4>(a) == ends::<4>(b),
        8..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}
impl Eq for Sub {}

/// A key as stored in a shard's map.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub vertex: u16,
    pub object: u16,
    pub per_flow: bool,
    pub sub: Sub,
}

/// A borrowed key, used to look up without building a [`Key`].
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    pub vertex: u16,
    pub object: u16,
    pub per_flow: bool,
    pub sub: &'a [u8],
}

impl PartialEq for KeyRef<'_> {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        self.vertex == o.vertex
            && self.object == o.object
            && self.per_flow == o.per_flow
            && same_bytes(self.sub, o.sub)
    }
}
impl Eq for KeyRef<'_> {}

impl Key {
    pub fn new(vertex: u16, object: u16, per_flow: bool, sub: &[u8]) -> Self {
        Key {
            vertex,
            object,
            per_flow,
            sub: Sub::new(sub),
        }
    }
    pub fn as_ref(&self) -> KeyRef<'_> {
        KeyRef {
            vertex: self.vertex,
            object: self.object,
            per_flow: self.per_flow,
            sub: self.sub.as_slice(),
        }
    }
}

impl<'a> KeyRef<'a> {
    pub fn to_key(self) -> Key {
        Key::new(self.vertex, self.object, self.per_flow, self.sub)
    }
    /// The shard (of `shards`) that owns this key. Stable across processes and builds, so
    /// clients and servers agree without coordination.
    pub fn shard(self, shards: u32) -> u32 {
        if shards <= 1 {
            return 0;
        }
        (stable_hash(self) % u64::from(shards)) as u32
    }
}

// Both key forms hash the same field sequence, so a `KeyRef` finds its `Key`.
impl Hash for Key {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.as_ref().hash(h)
    }
}
impl Hash for KeyRef<'_> {
    // Inlined so a table lookup is one short run of code: with a large table its time goes to
    // cache misses, and only short independent lookups let the processor overlap them.
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(
            u64::from(self.vertex) << 40 | u64::from(self.object) << 24 | self.per_flow as u64,
        );
        h.write(self.sub);
    }
}

impl From<&KeyRef<'_>> for Key {
    fn from(k: &KeyRef<'_>) -> Key {
        k.to_key()
    }
}

impl hashbrown::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        *self == k.as_ref()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// Object keys of one vertex packed into one byte string (`OP_RELEASE_MANY`): per key a 2-byte
/// object id, a 2-byte length (both big-endian) and the key bytes. One buffer carries a
/// handover's thousands of keys in one operation and one allocation.
pub mod packed {
    use std::ops::Range;

    /// Appends one key; returns false (appending nothing) if `sub` is longer than the 16-bit
    /// length allows.
    pub fn push(buf: &mut Vec<u8>, object: u16, sub: &[u8]) -> bool {
        let Ok(len) = u16::try_from(sub.len()) else {
            return false;
        };
        buf.extend_from_slice(&object.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(sub);
        true
    }

    /// Bytes one key takes.
    pub fn size(sub: &[u8]) -> usize {
        4 + sub.len()
    }

    /// The keys of `buf` as (object, range of the key bytes in `buf`). Yields `Err(())` once
    /// and stops if the buffer ends inside a key.
    pub fn iter(buf: &[u8]) -> impl Iterator<Item = Result<(u16, Range<usize>), ()>> + '_ {
        let mut at = 0usize;
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || at == buf.len() {
                return None;
            }
            let Some(h) = buf.get(at..at + 4) else {
                failed = true;
                return Some(Err(()));
            };
            let object = u16::from_be_bytes([h[0], h[1]]);
            let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
            let start = at + 4;
            if buf.len() - start < len {
                failed = true;
                return Some(Err(()));
            }
            at = start + len;
            Some(Ok((object, start..at)))
        })
    }

    /// Whether `buf` is a well-formed list of keys.
    pub fn is_valid(buf: &[u8]) -> bool {
        iter(buf).all(|r| r.is_ok())
    }
}

/// A hash with fixed constants (unlike the maps' randomly seeded one) for shard routing.
pub fn stable_hash(k: KeyRef<'_>) -> u64 {
    const M: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h: u64 = (u64::from(k.vertex) << 24 | u64::from(k.object) << 8 | k.per_flow as u64)
        .wrapping_mul(M)
        ^ k.sub.len() as u64;
    let mut chunks = k.sub.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ v).wrapping_mul(M).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail)).wrapping_mul(M);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    proptest::proptest! {
        /// The word-wise comparison agrees with byte-wise equality at every length, for equal
        /// strings and for strings that differ in one byte anywhere.
        #[test]
        fn same_bytes_is_byte_equality(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            at in 0usize..40,
            flip in 1u8..=255,
        ) {
            proptest::prop_assert!(same_bytes(&a, &a.clone()));
            let mut b = a.clone();
            if !b.is_empty() {
                let i = at % b.len();
                b[i] ^= flip;
                proptest::prop_assert!(!same_bytes(&a, &b));
            }
            b.push(0);
            proptest::prop_assert_eq!(same_bytes(&a, &b), false);
        }
    }

    #[test]
    fn inline_and_heap_subs_compare_by_bytes() {
        let long = vec![7u8; 100];
        assert_eq!(Sub::new(&long).as_slice(), &long[..]);
        assert!(matches!(Sub::new(&long), Sub::Heap(_)));
        assert!(matches!(Sub::new(&long[..INLINE_SUB]), Sub::Inline { .. }));
        assert!(matches!(Sub::new(&long[..INLINE_SUB + 1]), Sub::Heap(_)));
        assert_eq!(Sub::new(b"ab"), Sub::new(b"ab"));
        assert_ne!(Sub::new(b"ab"), Sub::new(b"abc"));
    }

    #[test]
    fn keys_stay_small() {
        // The inline length is chosen so the inline form costs no more than the heap one.
        assert_eq!(std::mem::size_of::<Sub>(), 24);
        assert_eq!(std::mem::size_of::<Key>(), 32);
    }

    #[test]
    fn keyref_hashes_like_key() {
        let s = hashbrown::DefaultHashBuilder::default();
        let k = Key::new(3, 4, true, b"hello world");
        assert_eq!(s.hash_one(&k), s.hash_one(k.as_ref()));
        let mut m = hashbrown::HashMap::new();
        m.insert(k.clone(), 1);
        assert_eq!(m.get(&k.as_ref()), Some(&1));
    }

    #[test]
    fn packed_keys_round_trip_and_refuse_truncation() {
        let mut buf = Vec::new();
        assert!(packed::push(&mut buf, 7, b"flow-a"));
        assert!(packed::push(&mut buf, 0xFFFF, b""));
        assert!(packed::push(&mut buf, 1, &[9u8; 300]));
        assert!(!packed::push(&mut buf, 1, &vec![0u8; 70_000]));
        assert_eq!(buf.len(), packed::size(b"flow-a") + packed::size(b"") + 304);
        let got: Vec<_> = packed::iter(&buf)
            .map(|r| r.map(|(o, r)| (o, buf[r].to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                (7, b"flow-a".to_vec()),
                (0xFFFF, Vec::new()),
                (1, vec![9u8; 300])
            ]
        );
        assert!(packed::is_valid(&buf));
        assert!(packed::is_valid(&[]));
        // Every cut inside a key is refused.
        for cut in 1..buf.len() {
            let ends_on_key = [10, 14].contains(&cut);
            assert_eq!(packed::is_valid(&buf[..cut]), ends_on_key, "cut at {cut}");
        }
    }

    #[test]
    fn routing_is_stable_and_spreads() {
        let mut counts = [0u32; 4];
        for i in 0u32..4000 {
            let b = i.to_le_bytes();
            let k = KeyRef {
                vertex: 1,
                object: 2,
                per_flow: false,
                sub: &b,
            };
            counts[k.shard(4) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
        // Pinned: routing must not change between builds, or clients and servers disagree.
        let k = KeyRef {
            vertex: 2,
            object: 1,
            per_flow: true,
            sub: b"10.0.0.1",
        };
        assert_eq!(stable_hash(k), stable_hash(k));
        assert_eq!(k.shard(1), 0);
    }
}
