//! Builders for store operations.

use crate::shard::{NONDET_OBJECT, ROOT_SHIFT};
use crate::value::Value;
use bytes::Bytes;
use chc_proto::wire::{self, OpCode};

/// The key of a state object as NFs name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjKey {
    pub vertex: u16,
    pub object: u16,
    pub per_flow: bool,
    pub sub: Bytes,
}

impl ObjKey {
    pub fn shared(vertex: u16, object: u16, sub: impl Into<Bytes>) -> Self {
        ObjKey {
            vertex,
            object,
            per_flow: false,
            sub: sub.into(),
        }
    }

    pub fn per_flow(vertex: u16, object: u16, sub: impl Into<Bytes>) -> Self {
        ObjKey {
            vertex,
            object,
            per_flow: true,
            sub: sub.into(),
        }
    }

    /// A plain Redis-style key (vertex 0, object 0).
    pub fn raw(name: impl Into<Bytes>) -> Self {
        Self::shared(0, 0, name)
    }

    pub fn op(&self, code: OpCode) -> wire::Op {
        wire::Op {
            code: code as i32,
            vertex: u32::from(self.vertex),
            object: u32::from(self.object),
            per_flow: self.per_flow,
            sub: self.sub.clone(),
            ..Default::default()
        }
    }

    pub fn get(&self) -> wire::Op {
        self.op(OpCode::OpGet)
    }
    pub fn set(&self, v: &Value) -> wire::Op {
        wire::Op {
            val: v.to_wire(),
            ..self.op(OpCode::OpSet)
        }
    }
    pub fn del(&self) -> wire::Op {
        self.op(OpCode::OpDel)
    }
    pub fn incr(&self, by: i64) -> wire::Op {
        wire::Op {
            num: by,
            ..self.op(OpCode::OpIncr)
        }
    }
    pub fn push_front(&self, item: impl Into<Bytes>) -> wire::Op {
        wire::Op {
            val: Some(wire::Value::bytes(item.into())),
            ..self.op(OpCode::OpPushFront)
        }
    }
    pub fn push_back(&self, item: impl Into<Bytes>) -> wire::Op {
        wire::Op {
            val: Some(wire::Value::bytes(item.into())),
            ..self.op(OpCode::OpPushBack)
        }
    }
    pub fn pop_front(&self) -> wire::Op {
        self.op(OpCode::OpPopFront)
    }
    pub fn pop_back(&self) -> wire::Op {
        self.op(OpCode::OpPopBack)
    }
    pub fn compare_and_update(&self, expected: &Value, new: &Value) -> wire::Op {
        wire::Op {
            val: expected.to_wire(),
            val2: new.to_wire(),
            ..self.op(OpCode::OpCompareAndUpdate)
        }
    }
    pub fn custom(&self, id: u32, arg: &Value) -> wire::Op {
        wire::Op {
            num: i64::from(id),
            val: arg.to_wire(),
            ..self.op(OpCode::OpCustom)
        }
    }
    pub fn acquire(&self, instance: u16) -> wire::Op {
        wire::Op {
            instance: u32::from(instance),
            ..self.op(OpCode::OpAcquire)
        }
    }
    pub fn release(&self, instance: u16) -> wire::Op {
        wire::Op {
            instance: u32::from(instance),
            ..self.op(OpCode::OpRelease)
        }
    }
    pub fn restore(&self, v: &Value, instance: u16) -> wire::Op {
        wire::Op {
            val: v.to_wire(),
            instance: u32::from(instance),
            ..self.op(OpCode::OpRestore)
        }
    }
    pub fn subscribe(&self) -> wire::Op {
        self.op(OpCode::OpSubscribe)
    }
    pub fn unsubscribe(&self) -> wire::Op {
        self.op(OpCode::OpUnsubscribe)
    }
}

/// Stamps an operation with the packet context that caused it.
pub fn with_clock(
    mut op: wire::Op,
    clock: u64,
    instance: u16,
    op_index: u32,
    flags: u32,
) -> wire::Op {
    op.clock = clock;
    op.instance = u32::from(instance);
    op.op_index = op_index;
    op.flags |= flags;
    op
}

/// A non-deterministic value for `clock` (kind: `shard::NONDET_TIME_NS` or `NONDET_RANDOM`).
pub fn nondet(vertex: u16, clock: u64, op_index: u32, kind: i64) -> wire::Op {
    wire::Op {
        code: OpCode::OpNondet as i32,
        vertex: u32::from(vertex),
        object: u32::from(NONDET_OBJECT),
        sub: Bytes::copy_from_slice(&clock.to_be_bytes()),
        num: kind,
        clock,
        op_index,
        ..Default::default()
    }
}

/// Clocks of `root` below `watermark` are retired.
pub fn retire_clocks(root: u16, watermark: u64) -> wire::Op {
    wire::Op {
        code: OpCode::OpRetireClocks as i32,
        instance: u32::from(root),
        num: watermark as i64,
        ..Default::default()
    }
}

/// Ask for the commit notifications of `root`.
pub fn subscribe_commits(root: u16) -> wire::Op {
    wire::Op {
        code: OpCode::OpSubscribeCommits as i32,
        instance: u32::from(root),
        ..Default::default()
    }
}

/// Declare a readable name for an object (send to every shard).
pub fn declare(vertex: u16, object: u16, name: &str, kind: crate::names::KeyKind) -> wire::Op {
    wire::Op {
        code: OpCode::OpDeclare as i32,
        vertex: u32::from(vertex),
        object: u32::from(object),
        num: kind as i64,
        val: Some(wire::Value::bytes(Bytes::copy_from_slice(name.as_bytes()))),
        ..Default::default()
    }
}

/// Give up `instance`'s ownership of many per-flow objects of `vertex` at once (one operation
/// per shard); `keys` is built with [`crate::key::packed`].
pub fn release_many(vertex: u16, instance: u16, keys: Bytes) -> wire::Op {
    wire::Op {
        code: OpCode::OpReleaseMany as i32,
        vertex: u32::from(vertex),
        per_flow: true,
        instance: u32::from(instance),
        val: Some(wire::Value::bytes(keys)),
        ..Default::default()
    }
}

/// Give up `instance`'s per-flow objects of `vertex` in whole buckets (send to every shard);
/// `code` is `OpReleaseBuckets`, or `OpAcquireBuckets` to take buckets back.
pub fn buckets(code: OpCode, vertex: u16, instance: u16, req: &crate::bucket::Buckets) -> wire::Op {
    wire::Op {
        code: code as i32,
        vertex: u32::from(vertex),
        per_flow: true,
        instance: u32::from(instance),
        val: Some(wire::Value::bytes(Bytes::from(req.encode()))),
        ..Default::default()
    }
}

/// Read every per-flow object of `vertex` owned by `instance` (send to every shard); the
/// shard answers OVERFLOW instead when the values exceed `limit` bytes (0: no limit).
pub fn scan_owned(vertex: u16, instance: u16, limit: usize) -> wire::Op {
    wire::Op {
        code: OpCode::OpScanOwned as i32,
        vertex: u32::from(vertex),
        per_flow: true,
        instance: u32::from(instance),
        num: i64::try_from(limit).unwrap_or(i64::MAX),
        ..Default::default()
    }
}

/// Move every per-flow object owned by `from` to `to` (send to every shard).
pub fn reassign_owner(from: u16, to: u16) -> wire::Op {
    wire::Op {
        code: OpCode::OpReassignOwner as i32,
        num: i64::from(from),
        instance: u32::from(to),
        ..Default::default()
    }
}

pub fn read_ts() -> wire::Op {
    wire::Op {
        code: OpCode::OpReadTs as i32,
        ..Default::default()
    }
}

/// A logical clock from a root id and a counter.
pub fn clock(root: u16, counter: u64) -> u64 {
    u64::from(root) << ROOT_SHIFT | (counter & ((1 << ROOT_SHIFT) - 1))
}
