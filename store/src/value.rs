//! Stored values and their conversions to the wire and to durable records.

use bytes::Bytes;
use chc_proto::records::ValueRec;
use chc_proto::wire;
use std::collections::VecDeque;

/// A list's items in the wire's packed form (see `List` in store.proto).
fn pack_list(l: &VecDeque<Bytes>) -> Bytes {
    let mut buf = Vec::with_capacity(l.iter().map(|b| b.len() + 1).sum());
    for item in l {
        prost::encoding::encode_varint(item.len() as u64, &mut buf);
        buf.extend_from_slice(item);
    }
    Bytes::from(buf)
}

/// Where each item of a wire list's `packed` field lies in it. A malformed packed tail (a bad
/// length, an item cut short) ends the list there: what came before it is kept.
fn packed_ranges(packed: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut rest = packed;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = prost::encoding::decode_varint(&mut rest).ok()?;
        let len = usize::try_from(len).ok().filter(|&n| n <= rest.len())?;
        let at = packed.len() - rest.len();
        rest = &rest[len..];
        Some(at..at + len)
    })
}

/// The items of a wire list's `packed` field, as slices of it (no copy). Readers take them
/// after the list's `items`.
fn unpack_list(packed: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    packed_ranges(packed).map(|r| packed.slice(r))
}

/// How many items [`unpack_list`] yields, without making them.
fn packed_len(packed: &[u8]) -> usize {
    packed_ranges(packed).count()
}

/// A value in the store. `Nil` is "absent".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Value {
    #[default]
    Nil,
    Int(i64),
    Bytes(Bytes),
    List(VecDeque<Bytes>),
}

impl Value {
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// The integer this value holds, accepting decimal strings as Redis does.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn from_wire(v: Option<&wire::Value>) -> Value {
        use wire::value::Kind;
        match v.and_then(|v| v.kind.as_ref()) {
            None => Value::Nil,
            Some(Kind::Int(i)) => Value::Int(*i),
            Some(Kind::Bytes(b)) => Value::Bytes(b.clone()),
            Some(Kind::List(l)) => Value::List(
                l.items
                    .iter()
                    .cloned()
                    .chain(unpack_list(&l.packed))
                    .collect(),
            ),
        }
    }

    /// Like [`Value::from_wire`] but copies byte payloads so the stored value does not keep a
    /// whole received frame alive.
    ///
    /// A list's items are copied into one buffer that they all share: a list of tens of
    /// thousands of small items (a port pool) then costs one allocation to load and one to
    /// free instead of one per item.
    pub fn from_wire_owned(v: Option<&wire::Value>) -> Value {
        use wire::value::Kind;
        match v.and_then(|v| v.kind.as_ref()) {
            None => Value::Nil,
            Some(Kind::Int(i)) => Value::Int(*i),
            Some(Kind::Bytes(b)) => Value::Bytes(Bytes::copy_from_slice(b)),
            Some(Kind::List(l)) => {
                // One copy of the packed items; the items are slices of it. The list is sized
                // once: grown by doubling, a port pool's 2 MB of items touched twice as many
                // fresh pages, and a first touch is a page fault.
                let packed = Bytes::copy_from_slice(&l.packed);
                let mut items: VecDeque<Bytes> =
                    VecDeque::with_capacity(l.items.len() + packed_len(&packed));
                items.extend(l.items.iter().map(|b| Bytes::copy_from_slice(b)));
                items.extend(unpack_list(&packed));
                Value::List(items)
            }
        }
    }

    /// Roughly the bytes the value takes on the wire (for limits, not for encoding).
    pub fn approx_len(&self) -> usize {
        match self {
            Value::Nil => 0,
            Value::Int(_) => 8,
            Value::Bytes(b) => b.len(),
            Value::List(l) => l.iter().map(|b| b.len() + 2).sum(),
        }
    }

    pub fn to_wire(&self) -> Option<wire::Value> {
        use wire::value::Kind;
        let kind = match self {
            Value::Nil => return None,
            Value::Int(i) => Kind::Int(*i),
            Value::Bytes(b) => Kind::Bytes(b.clone()),
            Value::List(l) => Kind::List(wire::List {
                items: Vec::new(),
                packed: pack_list(l),
            }),
        };
        Some(wire::Value { kind: Some(kind) })
    }

    pub fn to_rec(&self) -> ValueRec {
        match self {
            Value::Nil => ValueRec::Nil,
            Value::Int(i) => ValueRec::Int(*i),
            Value::Bytes(b) => ValueRec::Bytes(b.to_vec()),
            Value::List(l) => ValueRec::List(l.iter().map(|b| b.to_vec()).collect()),
        }
    }

    pub fn from_rec(r: &ValueRec) -> Value {
        match r {
            ValueRec::Nil => Value::Nil,
            ValueRec::Int(i) => Value::Int(*i),
            ValueRec::Bytes(b) => Value::Bytes(Bytes::copy_from_slice(b)),
            ValueRec::List(l) => Value::List(l.iter().map(|b| Bytes::copy_from_slice(b)).collect()),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "none",
            Value::Int(_) | Value::Bytes(_) => "string",
            Value::List(_) => "list",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_travel_packed_and_come_back_whole() {
        let items: VecDeque<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![i as u8; (i % 300) as usize]))
            .collect();
        let v = Value::List(items);
        let w = v.to_wire();
        let Some(wire::value::Kind::List(l)) = w.as_ref().and_then(|w| w.kind.as_ref()) else {
            panic!("a list goes out as a list");
        };
        assert!(l.items.is_empty(), "senders write the packed form only");
        assert_eq!(Value::from_wire(w.as_ref()), v);
        assert_eq!(Value::from_wire_owned(w.as_ref()), v);
    }

    #[test]
    fn packed_len_counts_what_unpacking_yields() {
        let mut packed = Vec::new();
        for item in [&b"ab"[..], b"", b"c", &[7u8; 300][..]] {
            prost::encoding::encode_varint(item.len() as u64, &mut packed);
            packed.extend_from_slice(item);
        }
        let whole = Bytes::from(packed.clone());
        assert_eq!(packed_len(&whole), 4);
        assert_eq!(packed_len(&whole), unpack_list(&whole).count());
        for tail in [&[5u8, b'x'][..], &[0xff; 11][..]] {
            let mut p = packed.clone();
            p.extend_from_slice(tail);
            let p = Bytes::from(p);
            assert_eq!(packed_len(&p), 4);
            assert_eq!(packed_len(&p), unpack_list(&p).count());
        }
        assert_eq!(packed_len(&[]), 0);
    }

    #[test]
    fn unpacked_items_come_first_and_a_malformed_packed_tail_is_cut() {
        use wire::value::Kind;
        let mut packed = Vec::new();
        for item in [&b"ab"[..], b"", b"c"] {
            prost::encoding::encode_varint(item.len() as u64, &mut packed);
            packed.extend_from_slice(item);
        }
        let good = packed.len();
        packed.extend_from_slice(&[5, b'x']); // an item of 5 bytes with only 1 there
        let w = wire::Value {
            kind: Some(Kind::List(wire::List {
                items: vec![Bytes::from_static(b"first")],
                packed: Bytes::from(packed.clone()),
            })),
        };
        let expect = Value::List(
            [&b"first"[..], b"ab", b"", b"c"]
                .into_iter()
                .map(Bytes::from_static)
                .collect(),
        );
        assert_eq!(Value::from_wire(Some(&w)), expect);
        assert_eq!(Value::from_wire_owned(Some(&w)), expect);
        // A length whose varint never ends.
        packed.truncate(good);
        packed.extend_from_slice(&[0xff; 11]);
        let w = wire::Value {
            kind: Some(Kind::List(wire::List {
                items: Vec::new(),
                packed: Bytes::from(packed),
            })),
        };
        assert_eq!(Value::from_wire(Some(&w)).approx_len(), 3 + 2 * 3);
    }

    #[test]
    fn wire_and_record_round_trips() {
        let vals = [
            Value::Nil,
            Value::Int(-3),
            Value::Bytes(Bytes::from_static(b"x")),
            Value::List(VecDeque::from(vec![Bytes::from_static(b"a"), Bytes::new()])),
        ];
        for v in vals {
            assert_eq!(Value::from_wire(v.to_wire().as_ref()), v);
            assert_eq!(Value::from_wire_owned(v.to_wire().as_ref()), v);
            assert_eq!(Value::from_rec(&v.to_rec()), v);
        }
    }

    #[test]
    fn decimal_strings_count_as_integers() {
        assert_eq!(Value::Bytes(Bytes::from_static(b"-12")).as_int(), Some(-12));
        assert_eq!(Value::Bytes(Bytes::from_static(b"1x")).as_int(), None);
    }
}
