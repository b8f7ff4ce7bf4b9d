//! Updates applied straight from borrowed bytes, and the compact write-ahead log layout.
//!
//! RESP commands carry no sequence number, clock or instance, so most of what
//! [`Shard::apply_batch`] does per operation (the client's TS entry, the cache of replies for
//! retransmissions, the clock log, ownership) has nothing to do for them. The hot commands
//! (SET, INCR*, DECR*, LPUSH/RPUSH, LPOP/RPOP) therefore skip building a `wire::Op`: the key
//! and value are borrowed from the connection's read buffer, the entry is updated in place and
//! the WAL record is written in the compact layout. Whenever the entry holds anything this path
//! does not handle (subscribers, waiters, a clock log, a per-flow owner) the caller is told to
//! take the general path, so a command means the same on both paths, and replaying its WAL
//! record through the general path reproduces it.

use super::{ClientId, Entry, Shard};
use crate::key::KeyRef;
use crate::value::Value;
use bytes::Bytes;
use chc_proto::records::{CompactOp, CompactVal};
use chc_proto::wire::{self, OpCode};
use std::borrow::Cow;
use std::collections::VecDeque;

/// An update the direct path applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectOp<'a> {
    Set(&'a [u8]),
    Incr(i64),
    PushFront(&'a [u8]),
    PushBack(&'a [u8]),
    PopFront,
    PopBack,
}

/// What a direct update produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Direct {
    /// Applied; SET's answer.
    Ok,
    /// Applied; the new integer (INCR) or the list's new length (PUSH).
    Int(i64),
    /// The popped item.
    Item(Bytes),
    /// Nothing to pop.
    Nil,
    WrongType,
    Overflow,
    /// The entry needs the general path (see the module docs); nothing was changed.
    Fallback,
}

impl DirectOp<'_> {
    fn code(self) -> OpCode {
        match self {
            DirectOp::Set(_) => OpCode::OpSet,
            DirectOp::Incr(_) => OpCode::OpIncr,
            DirectOp::PushFront(_) => OpCode::OpPushFront,
            DirectOp::PushBack(_) => OpCode::OpPushBack,
            DirectOp::PopFront => OpCode::OpPopFront,
            DirectOp::PopBack => OpCode::OpPopBack,
        }
    }
}

impl Shard {
    /// Hashes every key of a batch into `self.hashes` (for the operations to use) and looks
    /// the keys up before the batch is applied.
    ///
    /// With a large table nearly every lookup misses the cache, and applying one operation is
    /// too long a stretch of code for the processor to start the next operation's loads while
    /// the current one waits. These bare lookups are short and independent, so their misses
    /// overlap; the operations then find their entries in the cache. The hashes are computed
    /// in a loop of their own first, which keeps the lookup loop shorter still.
    pub(super) fn touch(&mut self, ops: &[wire::Op]) {
        self.hashes.clear();
        let map = &self.map;
        self.hashes.extend(ops.iter().map(|op| {
            map.hash(KeyRef {
                vertex: op.vertex as u16,
                object: op.object as u16,
                per_flow: op.per_flow,
                sub: &op.sub,
            })
        }));
        if ops.len() < 2 {
            return;
        }
        self.touch_all(&self.hashes);
    }

    /// Two passes over the keys with these hashes: every key's control bytes are requested
    /// before any is read, then each slot is found and requested.
    pub(super) fn touch_all(&self, hashes: &[u64]) {
        if let Some(c) = self.map.control() {
            for &h in hashes {
                self.map.prefetch_control(c, h);
            }
        }
        for &h in hashes {
            self.map.touch(h);
        }
    }

    /// [`Shard::touch`] for the plain keys of a pipeline of RESP commands, which are applied
    /// one by one as they are parsed: their lookups are started together first. Two more
    /// passes then request what the slots point to: each boxed part, then each byte-string
    /// value's bytes (a SET or GET of a string on a large table otherwise waits for three
    /// misses in a row: the slot, the box and the bytes).
    pub fn touch_plain<'k>(&mut self, keys: impl Iterator<Item = &'k [u8]> + Clone) {
        self.hashes.clear();
        let map = &self.map;
        let key = |sub| KeyRef {
            vertex: 0,
            object: 0,
            per_flow: false,
            sub,
        };
        self.hashes
            .extend(keys.clone().map(|sub| map.hash(key(sub))));
        if self.hashes.len() < 2 {
            return;
        }
        self.touch_all(&self.hashes);
        for (sub, &h) in keys.clone().zip(&self.hashes) {
            if let Some(e) = map.get_hashed(h, &key(sub)) {
                e.prefetch_cold();
            }
        }
        for (sub, &h) in keys.zip(&self.hashes) {
            if let Some(e) = map.get_hashed(h, &key(sub)) {
                e.prefetch_bytes();
            }
        }
    }

    /// Reads a value for a client without a sequence number (RESP GET and friends).
    pub fn direct_get(&mut self, k: KeyRef<'_>) -> Option<Cow<'_, Value>> {
        self.stats.ops += 1;
        self.map.get(&k).map(Entry::value).filter(|v| !v.is_nil())
    }

    /// Applies an update for a client without sequence numbers or clocks; see the module docs.
    pub fn apply_direct(&mut self, client: ClientId, k: KeyRef<'_>, op: DirectOp<'_>) -> Direct {
        if k.per_flow || !CompactOp::fits(k.sub) {
            return Direct::Fallback;
        }
        let creates = !matches!(op, DirectOp::PopFront | DirectOp::PopBack);
        let e: &mut Entry = if creates {
            self.map.or_default(&k)
        } else {
            match self.map.get_mut(&k) {
                Some(e) => e,
                None => {
                    self.stats.ops += 1;
                    self.stats.updates += 1;
                    return Direct::Nil;
                }
            }
        };
        if e.has_meta() || e.owner() != 0 {
            return Direct::Fallback;
        }
        self.stats.ops += 1;
        self.stats.updates += 1;
        let (result, num, val) = match op {
            DirectOp::Set(v) => {
                if !e.overwrite_bytes(v) {
                    e.set_value(Value::Bytes(Bytes::copy_from_slice(v)));
                }
                (Direct::Ok, 0, CompactVal::Bytes(v))
            }
            DirectOp::Incr(n) => {
                let cur = match e.inline() {
                    Ok(v) => v.unwrap_or(0),
                    Err(c) => match c.value.as_int() {
                        Some(i) => i,
                        None => return Direct::WrongType,
                    },
                };
                let Some(new) = cur.checked_add(n) else {
                    return Direct::Overflow;
                };
                e.set_value(Value::Int(new));
                (Direct::Int(new), n, CompactVal::Nil)
            }
            DirectOp::PushFront(item) | DirectOp::PushBack(item) => {
                let pushed = e.with_value(|v| {
                    if v.is_nil() {
                        *v = Value::List(VecDeque::new());
                    }
                    let Value::List(l) = v else {
                        return None;
                    };
                    let item_b = Bytes::copy_from_slice(item);
                    if matches!(op, DirectOp::PushFront(_)) {
                        l.push_front(item_b);
                    } else {
                        l.push_back(item_b);
                    }
                    Some(l.len() as i64)
                });
                let Some(len) = pushed else {
                    return Direct::WrongType;
                };
                (Direct::Int(len), 0, CompactVal::Bytes(item))
            }
            DirectOp::PopFront | DirectOp::PopBack => {
                let popped = e.with_value(|v| {
                    let Value::List(l) = v else {
                        return Err(Direct::WrongType);
                    };
                    let item = if op == DirectOp::PopFront {
                        l.pop_front()
                    } else {
                        l.pop_back()
                    };
                    if l.is_empty() {
                        *v = Value::Nil;
                    }
                    item.ok_or(Direct::Nil)
                });
                match popped {
                    Ok(b) => (Direct::Item(b), 0, CompactVal::Nil),
                    Err(d) => return d,
                }
            }
        };
        // Checkpoint bookkeeping, as `mark_dirty` does, without a second lookup.
        let vacant = e.value_is_nil();
        if self.track_dirty && !e.is_dirty() {
            e.replace_dirty(true);
            self.dirty.push(k.to_key());
        }
        if vacant {
            // A popped-empty list: the key is gone, as in Redis.
            self.map.remove(&k);
            if self.track_dirty {
                self.dirty.push(k.to_key());
            }
        }
        if self.durable {
            self.lsn += 1;
            let rec = CompactOp {
                lsn: self.lsn,
                client,
                seq: 0,
                code: op.code() as u8,
                vertex: k.vertex,
                object: k.object,
                per_flow: false,
                sub: k.sub,
                num,
                val,
                clock: 0,
                instance: 0,
                op_index: 0,
                flags: 0,
            };
            self.run.push(&rec, &mut self.wal_buf);
        }
        result
    }

    /// Logs `op` in the compact layout if it fits (no `val2`, `val` nil, integer or bytes);
    /// returns whether it did. The caller has checked that logging is on.
    pub(super) fn wal_compact(&mut self, client: ClientId, op: &wire::Op) -> bool {
        use wire::value::Kind;
        if op.val2.is_some()
            || !CompactOp::fits(&op.sub)
            || op.vertex > 0xFFFF
            || op.object > 0xFFFF
            || !(0..=255).contains(&op.code)
        {
            return false;
        }
        let val = match op.val.as_ref().and_then(|v| v.kind.as_ref()) {
            None => CompactVal::Nil,
            Some(Kind::Int(i)) => CompactVal::Int(*i),
            Some(Kind::Bytes(b)) => CompactVal::Bytes(b),
            Some(Kind::List(_)) => return false,
        };
        self.lsn += 1;
        let rec = CompactOp {
            lsn: self.lsn,
            client,
            seq: op.seq,
            code: op.code as u8,
            vertex: op.vertex as u16,
            object: op.object as u16,
            per_flow: op.per_flow,
            sub: &op.sub,
            num: op.num,
            val,
            clock: op.clock,
            instance: op.instance,
            op_index: op.op_index,
            flags: op.flags,
        };
        self.run.push(&rec, &mut self.wal_buf);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom::CustomOps;
    use crate::names::Names;
    use crate::shard::tests::{dump, replayed};
    use chc_proto::records::{FrameReader, WalRecord};
    use parking_lot::RwLock;
    use std::sync::Arc;

    fn shard() -> Shard {
        let mut s = Shard::new(
            0,
            1,
            CustomOps::builtin(),
            Arc::new(RwLock::new(Names::default())),
        );
        s.set_durable(true);
        s
    }

    fn key(s: &str) -> KeyRef<'_> {
        KeyRef {
            vertex: 0,
            object: 0,
            per_flow: false,
            sub: s.as_bytes(),
        }
    }

    /// A SET of a same-length value reuses the value's buffer only while no checkpoint
    /// snapshot shares it: a snapshot keeps the value it was taken with.
    #[test]
    fn a_same_length_set_reuses_the_buffer_unless_a_snapshot_holds_it() {
        let mut s = shard();
        let c = 1 << 63 | 5;
        let ptr = |s: &Shard| match s.get(key("k")).map(|e| e.value().into_owned()) {
            Some(Value::Bytes(b)) => (b.as_ptr(), b),
            other => panic!("not bytes: {other:?}"),
        };
        assert_eq!(
            s.apply_direct(c, key("k"), DirectOp::Set(b"aaa")),
            Direct::Ok
        );
        let (p0, _) = ptr(&s);
        assert_eq!(
            s.apply_direct(c, key("k"), DirectOp::Set(b"bbb")),
            Direct::Ok
        );
        let (p1, v1) = ptr(&s);
        assert_eq!(&v1[..], b"bbb");
        drop(v1);
        assert_eq!(p0, p1, "a unique buffer is overwritten in place");
        let delta = s.take_delta();
        assert_eq!(
            s.apply_direct(c, key("k"), DirectOp::Set(b"ccc")),
            Direct::Ok
        );
        let (p2, v2) = ptr(&s);
        assert_eq!(&v2[..], b"ccc");
        assert_ne!(p2, p1, "a shared buffer is left alone");
        let snap = delta
            .iter()
            .find_map(|(_, e)| e.as_ref())
            .expect("snapshot");
        assert_eq!(snap.value, Value::Bytes(Bytes::from_static(b"bbb")));
        // Other lengths take a new buffer; the log replays to the same state.
        assert_eq!(
            s.apply_direct(c, key("k"), DirectOp::Set(b"dddd")),
            Direct::Ok
        );
        assert_eq!(&ptr(&s).1[..], b"dddd");
        let (t, _) = replayed(&mut s);
        assert_eq!(dump(&t), dump(&s));
    }

    /// The direct path answers as the general path does, and its WAL replays to the same state.
    #[test]
    fn direct_updates_match_the_general_path_and_replay() {
        let mut s = shard();
        let c = 1 << 63 | 5;
        assert_eq!(
            s.apply_direct(c, key("n"), DirectOp::Incr(5)),
            Direct::Int(5)
        );
        assert_eq!(
            s.apply_direct(c, key("n"), DirectOp::Incr(-7)),
            Direct::Int(-2)
        );
        assert_eq!(
            s.apply_direct(c, key("n"), DirectOp::Incr(i64::MIN)),
            Direct::Overflow
        );
        assert_eq!(
            s.apply_direct(c, key("s"), DirectOp::Set(b"12")),
            Direct::Ok
        );
        assert_eq!(
            s.apply_direct(c, key("s"), DirectOp::Incr(1)),
            Direct::Int(13)
        );
        assert_eq!(s.apply_direct(c, key("t"), DirectOp::Set(b"x")), Direct::Ok);
        assert_eq!(
            s.apply_direct(c, key("t"), DirectOp::Incr(1)),
            Direct::WrongType
        );
        assert_eq!(
            s.apply_direct(c, key("t"), DirectOp::PopFront),
            Direct::WrongType
        );
        assert_eq!(
            s.apply_direct(c, key("l"), DirectOp::PushBack(b"b")),
            Direct::Int(1)
        );
        assert_eq!(
            s.apply_direct(c, key("l"), DirectOp::PushFront(b"a")),
            Direct::Int(2)
        );
        assert_eq!(
            s.apply_direct(c, key("l"), DirectOp::PushBack(b"c")),
            Direct::Int(3)
        );
        assert_eq!(
            s.apply_direct(c, key("l"), DirectOp::PopBack),
            Direct::Item(Bytes::from_static(b"c"))
        );
        assert_eq!(
            s.apply_direct(c, key("e"), DirectOp::PushBack(b"z")),
            Direct::Int(1)
        );
        assert_eq!(
            s.apply_direct(c, key("e"), DirectOp::PopFront),
            Direct::Item(Bytes::from_static(b"z"))
        );
        assert_eq!(s.apply_direct(c, key("e"), DirectOp::PopFront), Direct::Nil);
        assert!(s.direct_get(key("e")).is_none(), "an emptied list is gone");
        assert_eq!(s.direct_get(key("n")).as_deref(), Some(&Value::Int(-2)));
        // The same commands through the general path give the same state.
        let mut g = shard();
        let gen = |code: OpCode, k: &str, num: i64, val: Option<&[u8]>| wire::Op {
            code: code as i32,
            sub: Bytes::copy_from_slice(k.as_bytes()),
            num,
            val: val.map(|v| wire::Value::bytes(Bytes::copy_from_slice(v))),
            ..Default::default()
        };
        let ops = vec![
            gen(OpCode::OpIncr, "n", 5, None),
            gen(OpCode::OpIncr, "n", -7, None),
            gen(OpCode::OpSet, "s", 0, Some(b"12")),
            gen(OpCode::OpIncr, "s", 1, None),
            gen(OpCode::OpSet, "t", 0, Some(b"x")),
            gen(OpCode::OpPushBack, "l", 0, Some(b"b")),
            gen(OpCode::OpPushFront, "l", 0, Some(b"a")),
            gen(OpCode::OpPushBack, "l", 0, Some(b"c")),
            gen(OpCode::OpPopBack, "l", 0, None),
            gen(OpCode::OpPushBack, "e", 0, Some(b"z")),
            gen(OpCode::OpPopFront, "e", 0, None),
        ];
        g.apply_batch(c, &ops, 0, &mut Default::default());
        assert_eq!(dump(&s), dump(&g));
        // Replaying the compact records rebuilds the state.
        let (t, recs) = replayed(&mut s);
        assert_eq!(
            recs.len(),
            11,
            "one record per change, none for refused updates"
        );
        assert_eq!(dump(&s), dump(&t));
    }

    #[test]
    fn entries_with_metadata_take_the_general_path() {
        let mut s = shard();
        let sub = wire::Op {
            code: OpCode::OpSubscribe as i32,
            sub: Bytes::from_static(b"watched"),
            ..Default::default()
        };
        s.apply_batch(9, &[sub], 0, &mut Default::default());
        assert_eq!(
            s.apply_direct(1, key("watched"), DirectOp::Incr(1)),
            Direct::Fallback
        );
        let pf = KeyRef {
            per_flow: true,
            ..key("flow")
        };
        assert_eq!(s.apply_direct(1, pf, DirectOp::Incr(1)), Direct::Fallback);
        assert!(
            s.direct_get(key("watched")).is_none(),
            "nothing was applied"
        );
    }

    #[test]
    fn general_ops_use_the_compact_layout_when_they_fit() {
        let mut s = shard();
        let mut op = wire::Op {
            seq: 3,
            code: OpCode::OpIncr as i32,
            vertex: 2,
            object: 1,
            sub: Bytes::from_static(b"k"),
            num: 4,
            clock: 77,
            instance: 2,
            flags: 8,
            ..Default::default()
        };
        s.apply_batch(4, &[op.clone()], 0, &mut Default::default());
        op.seq = 4;
        op.clock = 0;
        op.code = OpCode::OpCompareAndUpdate as i32;
        op.val = Some(wire::Value::int(4));
        op.val2 = Some(wire::Value::int(9));
        s.apply_batch(4, &[op], 0, &mut Default::default());
        let mut wal = Vec::new();
        s.take_wal(&mut wal);
        // The first record is compact (top bit of its length), the second rkyv.
        assert_ne!(wal[3] & 0x80, 0);
        let mut r = FrameReader::new(&wal);
        let recs: Vec<WalRecord> = std::iter::from_fn(|| r.next_wal()).collect();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].seq, recs[0].op.clock, recs[0].op.num), (3, 77, 4));
        assert_eq!(recs[1].op.val2, chc_proto::records::ValueRec::Int(9));
    }
}
