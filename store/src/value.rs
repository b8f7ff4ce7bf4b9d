//! Stored values and their conversions to the wire and to durable records.

use bytes::Bytes;
use chc_proto::records::ValueRec;
use chc_proto::wire;
use std::collections::VecDeque;

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
            Some(Kind::List(l)) => Value::List(l.items.iter().cloned().collect()),
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
                let mut buf = Vec::with_capacity(l.items.iter().map(|b| b.len()).sum());
                for b in &l.items {
                    buf.extend_from_slice(b);
                }
                let buf = Bytes::from(buf);
                let mut at = 0;
                Value::List(
                    l.items
                        .iter()
                        .map(|b| {
                            at += b.len();
                            buf.slice(at - b.len()..at)
                        })
                        .collect(),
                )
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
                items: l.iter().cloned().collect(),
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
