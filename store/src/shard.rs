//! One shard: the state machine that owns a partition of the store's objects.
//!
//! A shard does no I/O and reads no clock of its own (the driver passes wall-clock time for
//! non-deterministic values): it takes a batch of operations from one client and produces
//! replies, pushes to other clients (callbacks, handovers), commit notifications for roots,
//! and write-ahead log bytes. Exactly one thread drives a shard, so no operation ever takes a
//! lock; operations on one object are applied in the order they arrive.
//!
//! Duplicate suppression: every update that carries a packet's logical clock logs its result
//! under `(clock, op_index)` in the entry until the root retires the clock. An update that
//! finds its `(clock, op_index)` already logged is not applied again; the logged result is
//! returned with `duplicate = true`. This covers clones replaying packets, failover replays
//! and client retransmissions alike.

use crate::bucket::Buckets;
use crate::custom::CustomOps;
use crate::key::{packed, Key, KeyRef};
use crate::names::{KeyKind, Names};
use crate::value::Value;
use bytes::Bytes;
use chc_proto::records::{
    CheckpointRecord, ClockLogRec, FrameWriter, KeyRec, OpRec, RunWriter, TsRec, WalRecord,
};
use chc_proto::wire::{self, OpCode, OpFlag, PushKind, Status};
use hashbrown::HashMap;
use parking_lot::RwLock;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

mod clocklog;
mod direct;
mod table;
use clocklog::ClockLog;
pub use direct::{Direct, DirectOp};
use table::Table;

/// Identifies a client connection (an NF instance, a root, a tool) to a shard.
pub type ClientId = u64;

/// Bits of a logical clock below the root id.
pub const ROOT_SHIFT: u32 = 48;

/// The root that issued `clock`.
pub fn root_of(clock: u64) -> u16 {
    (clock >> ROOT_SHIFT) as u16
}

/// Whether `clock` comes right after a run of clocks `first ..= first + more`, from the same
/// root (`Op.more_run`).
pub fn extends_run(first: u64, more: u32, clock: u64) -> bool {
    first.checked_add(u64::from(more) + 1) == Some(clock) && root_of(clock) == root_of(first)
}

/// Object id reserved for non-deterministic values.
pub const NONDET_OBJECT: u16 = 0xFFFF;

/// Kinds of non-deterministic values (`num` of `OP_NONDET`).
pub const NONDET_TIME_NS: i64 = 1;
pub const NONDET_RANDOM: i64 = 2;

/// How many replies to blocking updates a shard keeps per client for retransmissions.
const RECENT_REPLIES: usize = 1024;

const F_NONBLOCKING: u32 = OpFlag::FlagNonblocking as u32;
const F_COUNTED: u32 = OpFlag::FlagCounted as u32;
const F_FOLLOWED: u32 = OpFlag::FlagFollowed as u32;
const F_WANT_TS: u32 = OpFlag::FlagWantTs as u32;
const F_AS_OF: u32 = OpFlag::FlagAsOf as u32;

/// A logged update result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRec {
    pub clock: u64,
    pub op_index: u32,
    pub status: i32,
    pub result: Value,
    /// The object's value after the update (for reads "as of" a clock); not kept for lists,
    /// whose copies would be large and which NFs change only through operations.
    pub after: Option<Value>,
}

impl LogRec {
    /// A successful `op`'s result, without the value after it (a read, a non-deterministic
    /// value).
    fn answer(op: &wire::Op, result: Value) -> Self {
        LogRec {
            clock: op.clock,
            op_index: op.op_index,
            status: Status::Ok as i32,
            result,
            after: None,
        }
    }
}

/// Rarely present parts of an entry, kept in its cold part.
#[derive(Default, Debug)]
pub struct Meta {
    /// Instances waiting for ownership: (client, instance).
    pub waiters: VecDeque<(ClientId, u32)>,
    /// Clients to notify when another client updates the object.
    pub subscribers: Vec<ClientId>,
    /// Results of updates whose clocks are still in flight.
    pub log: ClockLog,
    /// The value before the oldest logged update (`None` for lists, or when nothing is logged).
    pub base: Option<Value>,
    /// Values returned to reads "as of" a clock still in flight: a second copy of a packet
    /// (a straggler and its clone racing, a replay) reads what the first copy read. Without
    /// it, an update of an earlier clock by another instance that reaches the store between
    /// the two reads makes the copies take different branches and issue different updates,
    /// which no clock log can reconcile.
    pub reads: ClockLog,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty() && self.subscribers.is_empty() && !self.has_records()
    }

    /// Whether clock-log records (of updates or of reads) are kept: the entry's key is then
    /// in the shard's list of logged keys.
    fn has_records(&self) -> bool {
        !self.log.is_empty() || !self.reads.is_empty()
    }

    fn find(&self, clock: u64, op_index: u32) -> Option<&LogRec> {
        self.log.find(clock, op_index)
    }

    /// Logs `rec`, issued by `instance`, in the log `which` picks (updates or reads); returns
    /// whether it is the entry's first record, whose key then joins the shard's logged keys.
    fn record(
        &mut self,
        which: fn(&mut Meta) -> &mut ClockLog,
        instance: u32,
        rec: LogRec,
    ) -> bool {
        let first = !self.has_records();
        which(self).insert(instance, rec);
        first
    }

    /// The value as it was just before update `op_index` of clock `clock` (after the same
    /// packet's earlier updates), if the log can tell.
    fn as_of(&self, clock: u64, op_index: u32) -> Option<&Value> {
        match self.log.before(clock, op_index) {
            None => self.base.as_ref(),
            Some(r) => r.after.as_ref(),
        }
    }
}

/// What releasing one per-flow object did.
enum Released {
    /// Not stored, or owned by nobody.
    Absent,
    /// Owned by another instance; left alone.
    NotOwner,
    /// Nobody owns it now.
    Freed,
    /// The first waiter owns it now.
    Granted,
}

/// A stored object.
///
/// The map holds a million or more of these and an update touches one at random, so its time
/// goes to cache misses and the entry is kept to 16 bytes: a nil or integer value without any
/// metadata (the counters that make up most objects) lives inline next to the owner, and
/// everything else (byte strings, lists, waiters, subscribers, clock logs) moves to a boxed
/// [`Cold`] part that only the objects needing it pay for. The slot's variant is the flag that
/// says whether the cold part exists; see [`Entry::is_settled`] for the invariant. Owner and
/// dirty flag are repeated in every variant because that is what lets them share the variant
/// tag's word.
#[derive(Debug)]
pub struct Entry {
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    Nil {
        /// Owning instance + 1 for per-flow objects; 0 = no owner.
        owner: u32,
        /// In the shard's list of keys changed since the last checkpoint delta.
        dirty: bool,
    },
    Int {
        owner: u32,
        dirty: bool,
        value: i64,
    },
    Cold {
        owner: u32,
        dirty: bool,
        cold: Box<Cold>,
    },
}

/// The rarely present parts of an entry, together so an entry pays for one box at most.
#[derive(Default, Debug)]
struct Cold {
    value: Value,
    meta: Meta,
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            slot: Slot::Nil {
                owner: 0,
                dirty: false,
            },
        }
    }
}

impl Entry {
    /// Owning instance + 1 for per-flow objects; 0 = no owner.
    pub fn owner(&self) -> u32 {
        match self.slot {
            Slot::Nil { owner, .. } | Slot::Int { owner, .. } | Slot::Cold { owner, .. } => owner,
        }
    }

    fn set_owner(&mut self, to: u32) {
        match &mut self.slot {
            Slot::Nil { owner, .. } | Slot::Int { owner, .. } | Slot::Cold { owner, .. } => {
                *owner = to
            }
        }
    }

    fn is_dirty(&self) -> bool {
        match self.slot {
            Slot::Nil { dirty, .. } | Slot::Int { dirty, .. } | Slot::Cold { dirty, .. } => dirty,
        }
    }

    /// Sets the dirty flag; returns its old state.
    fn replace_dirty(&mut self, to: bool) -> bool {
        match &mut self.slot {
            Slot::Nil { dirty, .. } | Slot::Int { dirty, .. } | Slot::Cold { dirty, .. } => {
                std::mem::replace(dirty, to)
            }
        }
    }

    /// Starts fetching the boxed part, if any, without waiting for it (see
    /// `Shard::release_many`).
    #[inline]
    fn prefetch_cold(&self) {
        if let Slot::Cold { cold, .. } = &self.slot {
            let p = (&**cold as *const Cold).cast::<u8>();
            table::prefetch(p);
            table::prefetch(p.wrapping_add(std::mem::size_of::<Cold>() - 1));
        }
    }

    /// Starts fetching a byte-string value's bytes, when the entry holds one (its boxed
    /// part should be in the cache by now, see [`Entry::prefetch_cold`]).
    #[inline]
    fn prefetch_bytes(&self) {
        if let Slot::Cold { cold, .. } = &self.slot {
            if let Value::Bytes(b) = &cold.value {
                table::prefetch(b.as_ptr());
            }
        }
    }

    fn cold(&self) -> Option<&Cold> {
        match &self.slot {
            Slot::Cold { cold, .. } => Some(cold),
            _ => None,
        }
    }

    /// The inline value (`None` = nil), or `Err` when the value lives in the cold part.
    fn inline(&self) -> Result<Option<i64>, &Cold> {
        match &self.slot {
            Slot::Nil { .. } => Ok(None),
            Slot::Int { value, .. } => Ok(Some(*value)),
            Slot::Cold { cold, .. } => Err(cold),
        }
    }

    /// Replaces the slot by an inline value, dropping any cold part.
    fn set_inline(&mut self, v: Option<i64>) {
        let (owner, dirty) = (self.owner(), self.is_dirty());
        self.slot = match v {
            None => Slot::Nil { owner, dirty },
            Some(value) => Slot::Int {
                owner,
                dirty,
                value,
            },
        };
    }

    /// The object's value: borrowed when it lives in the cold part, built when it is inline.
    pub fn value(&self) -> Cow<'_, Value> {
        match self.inline() {
            Ok(None) => Cow::Owned(Value::Nil),
            Ok(Some(i)) => Cow::Owned(Value::Int(i)),
            Err(c) => Cow::Borrowed(&c.value),
        }
    }

    pub fn value_is_nil(&self) -> bool {
        match self.inline() {
            Ok(v) => v.is_none(),
            Err(c) => c.value.is_nil(),
        }
    }

    fn value_is_list(&self) -> bool {
        self.cold()
            .is_some_and(|c| matches!(c.value, Value::List(_)))
    }

    /// The entry's metadata, if it has a cold part (the metadata may be empty when the cold
    /// part is there for a byte-string or list value).
    pub fn meta(&self) -> Option<&Meta> {
        self.cold().map(|c| &c.meta)
    }

    /// Whether waiters, subscribers or a clock log exist: the fast paths leave such entries to
    /// the general one.
    fn has_meta(&self) -> bool {
        self.meta().is_some_and(|m| !m.is_empty())
    }

    /// The cold part, made if needed. Callers that may leave it with nothing a cold part is
    /// needed for call [`Entry::settle`] afterwards.
    fn cold_mut(&mut self) -> &mut Cold {
        if let Ok(v) = self.inline() {
            let (owner, dirty) = (self.owner(), self.is_dirty());
            let cold = Box::new(Cold {
                value: v.map_or(Value::Nil, Value::Int),
                meta: Meta::default(),
            });
            self.slot = Slot::Cold { owner, dirty, cold };
        }
        match &mut self.slot {
            Slot::Cold { cold, .. } => cold,
            _ => unreachable!("made cold above"),
        }
    }

    fn meta_mut(&mut self) -> &mut Meta {
        &mut self.cold_mut().meta
    }

    /// Moves the value out (leaving nil); [`Entry::set_value`] puts it back.
    fn take_value(&mut self) -> Value {
        match &mut self.slot {
            Slot::Nil { .. } => Value::Nil,
            Slot::Int { value, .. } => {
                let v = Value::Int(*value);
                self.set_inline(None);
                v
            }
            Slot::Cold { cold, .. } => std::mem::take(&mut cold.value),
        }
    }

    fn set_value(&mut self, v: Value) {
        match (&mut self.slot, v) {
            (Slot::Cold { cold, .. }, v) => {
                cold.value = v;
                self.settle();
            }
            (_, Value::Nil) => self.set_inline(None),
            (_, Value::Int(i)) => self.set_inline(Some(i)),
            (_, v) => self.cold_mut().value = v,
        }
    }

    /// Replaces a byte-string value by `v` of the same length in its own buffer, when no one
    /// else holds that buffer (a checkpoint being written may): no allocation and no free
    /// of the old value, which with many keys is a cache miss of its own. Returns false,
    /// having changed nothing, when that is not possible.
    fn overwrite_bytes(&mut self, v: &[u8]) -> bool {
        let Slot::Cold { cold, .. } = &mut self.slot else {
            return false;
        };
        let Value::Bytes(b) = &mut cold.value else {
            return false;
        };
        if b.len() != v.len() || v.is_empty() {
            return false;
        }
        match std::mem::take(b).try_into_mut() {
            Ok(mut m) => {
                m.copy_from_slice(v);
                *b = m.freeze();
                true
            }
            Err(shared) => {
                *b = shared;
                false
            }
        }
    }

    /// Applies `f` to the value, keeping the layout settled whatever `f` does.
    fn with_value<R>(&mut self, f: impl FnOnce(&mut Value) -> R) -> R {
        let mut v = self.take_value();
        let r = f(&mut v);
        self.set_value(v);
        r
    }

    /// Returns a cold entry whose metadata is empty and whose value fits inline to the inline
    /// layout, so the fast paths take it again (after a clock log is retired, a subscriber
    /// leaves, a waiter is granted...).
    fn settle(&mut self) {
        if let Err(c) = self.inline() {
            if c.meta.is_empty() {
                match c.value {
                    Value::Nil => self.set_inline(None),
                    Value::Int(i) => self.set_inline(Some(i)),
                    _ => {}
                }
            }
        }
    }

    /// The layout invariant: the cold part exists only for a value that cannot be inline or
    /// for non-empty metadata.
    #[cfg(test)]
    fn is_settled(&self) -> bool {
        self.cold()
            .is_none_or(|c| !c.meta.is_empty() || !matches!(c.value, Value::Nil | Value::Int(_)))
    }

    /// Nothing worth keeping: no value, no owner, no metadata.
    fn is_vacant(&self) -> bool {
        self.owner() == 0
            && match self.inline() {
                Ok(v) => v.is_none(),
                Err(c) => c.value.is_nil() && c.meta.is_empty(),
            }
    }
}

#[derive(Default, Debug)]
struct ClientState {
    applied_seq: u64,
    last_clock: u64,
    recent: VecDeque<wire::Reply>,
}

/// What applying a batch produced besides the state change.
#[derive(Default, Debug)]
pub struct Outputs {
    /// Replies to the batch's client, in operation order (blocking operations only).
    pub replies: Vec<wire::Reply>,
    /// Highest sequence number applied for the batch's client.
    pub acked: u64,
    /// Pushes to other clients: callbacks and ownership handovers.
    pub pushes: Vec<(ClientId, wire::Push)>,
    /// Commit notifications, addressed to the client that subscribed for the clock's root.
    pub commits: Vec<(ClientId, wire::Commit)>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.replies.clear();
        self.acked = 0;
        self.pushes.clear();
        self.commits.clear();
    }
}

/// Counters a shard keeps about itself.
#[derive(Default, Debug, Clone, Copy)]
pub struct ShardStats {
    pub ops: u64,
    pub updates: u64,
    pub duplicates_suppressed: u64,
    pub retransmits_ignored: u64,
    pub not_owner: u64,
    pub bad_requests: u64,
    pub logged_records: u64,
}

/// A change since the last checkpoint delta: the entry as it is now, or `None` if deleted.
pub type Delta = Vec<(Key, Option<CheckpointEntry>)>;

/// A snapshot of one entry for the checkpoint writer. The value is the in-memory one (byte
/// strings are shared, not copied): the shard thread only takes the snapshot, the writer
/// thread does the encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointEntry {
    pub value: Value,
    pub owner: u32,
    pub log: Vec<ClockLogRec>,
}

pub struct Shard {
    pub id: u32,
    pub shards: u32,
    customs: CustomOps,
    names: Arc<RwLock<Names>>,
    map: Table,
    /// Hashes of the keys of the batch being applied (see `touch`).
    hashes: Vec<u64>,
    clients: HashMap<ClientId, ClientState>,
    commit_subs: HashMap<u16, ClientId>,
    /// Clients that subscribed to or wait for some object: only their disconnection needs a
    /// scan of the map.
    watchers: hashbrown::HashSet<ClientId>,
    /// Waiters queued on all entries (never less than the true number): while it is zero a
    /// release need not look at the entry's metadata, which is another cache miss per object
    /// in a handover of thousands.
    waiting: usize,
    watermarks: HashMap<u16, u64>,
    /// Buckets whose per-flow objects an owner gave up without naming them
    /// (`OP_RELEASE_BUCKETS`), by (vertex, owner = instance + 1). An object whose slot still
    /// names such an owner, in such a bucket, is owned by nobody: the handover of a bucket
    /// costs nothing per flow. A slot is brought up to date when it is next touched, and
    /// every slot before a checkpoint takes its snapshot ([`Shard::settle_released`]).
    released: HashMap<(u16, u32), Buckets>,
    /// Keys whose entries may hold clock-log records (may contain stale keys).
    logged: Vec<Key>,
    declarations: Vec<(u16, u16, String, u32)>,
    /// Write-ahead logging on: mutations append records to `wal_buf`.
    durable: bool,
    /// Checkpointing on: mutated keys are remembered in `dirty`.
    track_dirty: bool,
    dirty: Vec<Key>,
    wal: FrameWriter,
    /// Compact records go into `wal_buf` as runs; the open run is finished before anything
    /// else is appended to `wal_buf` and before the bytes are taken.
    run: RunWriter,
    wal_buf: Vec<u8>,
    lsn: u64,
    rng: u64,
    /// Set while re-executing the WAL: no outputs, recorded non-deterministic results.
    replaying: Option<Value>,
    pub stats: ShardStats,
}

impl Shard {
    pub fn new(id: u32, shards: u32, customs: CustomOps, names: Arc<RwLock<Names>>) -> Self {
        Shard {
            id,
            shards,
            customs,
            names,
            map: Table::default(),
            hashes: Vec::new(),
            clients: HashMap::new(),
            commit_subs: HashMap::new(),
            watchers: hashbrown::HashSet::new(),
            waiting: 0,
            watermarks: HashMap::new(),
            released: HashMap::new(),
            logged: Vec::new(),
            declarations: Vec::new(),
            durable: false,
            track_dirty: false,
            dirty: Vec::new(),
            wal: FrameWriter::new(),
            run: RunWriter::new(),
            wal_buf: Vec::new(),
            lsn: 0,
            rng: 0x853c_49e6_748f_ea9b ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            replaying: None,
            stats: ShardStats::default(),
        }
    }

    /// Turns on write-ahead logging and dirty tracking for checkpoints.
    pub fn set_durable(&mut self, durable: bool) {
        self.durable = durable;
        self.track_dirty = durable;
    }

    pub fn customs(&self) -> &CustomOps {
        &self.customs
    }

    /// Number of objects with a value.
    pub fn len(&self) -> usize {
        self.map.values().filter(|e| !e.value_is_nil()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The highest sequence number applied for `client` (its resume point after reconnecting).
    pub fn applied_seq(&self, client: ClientId) -> u64 {
        self.clients.get(&client).map_or(0, |c| c.applied_seq)
    }

    /// Takes the write-ahead log bytes produced since the last call.
    pub fn take_wal(&mut self, into: &mut Vec<u8>) {
        self.run.finish(&mut self.wal_buf);
        into.append(&mut self.wal_buf);
    }

    pub fn wal_pending(&self) -> bool {
        !self.wal_buf.is_empty()
    }

    pub fn get(&self, k: KeyRef<'_>) -> Option<&Entry> {
        self.map.get(&k)
    }

    /// Iterates objects that hold a value.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.map.iter().filter(|(_, e)| !e.value_is_nil())
    }

    /// The shard's TS: for each client, the last sequence number and clock applied.
    pub fn ts(&self) -> Vec<wire::TsEntry> {
        let mut v: Vec<_> = self
            .clients
            .iter()
            .filter(|(_, c)| c.applied_seq != 0 || c.last_clock != 0)
            .map(|(&client, c)| wire::TsEntry {
                client,
                seq: c.applied_seq,
                clock: c.last_clock,
            })
            .collect();
        v.sort_by_key(|t| t.client);
        v
    }

    /// Forgets connection-bound state of a client that went away: subscriptions, waits.
    pub fn disconnect(&mut self, client: ClientId) {
        self.commit_subs.retain(|_, c| *c != client);
        if !self.watchers.remove(&client) {
            return;
        }
        // Entries kept only for the client's subscriptions or waits go too, as an unsubscribe
        // would remove them; otherwise they would stay in the table for good.
        let (waiting, dirty) = (&mut self.waiting, &mut self.dirty);
        let track_dirty = self.track_dirty;
        self.map.retain(|k, e| {
            if e.meta().is_none() {
                return true;
            }
            let m = e.meta_mut();
            m.subscribers.retain(|c| *c != client);
            let before = m.waiters.len();
            m.waiters.retain(|(c, _)| *c != client);
            *waiting -= before - m.waiters.len();
            e.settle();
            if !e.is_vacant() {
                return true;
            }
            if track_dirty {
                dirty.push(k.clone());
            }
            false
        });
    }

    /// Applies a batch of operations from `client`.
    pub fn apply_batch(
        &mut self,
        client: ClientId,
        ops: &[wire::Op],
        now_ns: u64,
        out: &mut Outputs,
    ) {
        self.touch(ops);
        let mut cs = self.clients.remove(&client).unwrap_or_default();
        for (i, op) in ops.iter().enumerate() {
            self.stats.ops += 1;
            let blocking = op.flags & F_NONBLOCKING == 0;
            if op.seq != 0 && op.seq <= cs.applied_seq {
                // Already applied: a retransmission. Reads are re-executed; updates answer
                // from the replies kept for this purpose.
                self.stats.retransmits_ignored += 1;
                if blocking {
                    if op.code == OpCode::OpGet as i32 || op.code == OpCode::OpReadTs as i32 {
                        let r = self.apply_op(client, op, now_ns, out);
                        out.replies.push(r);
                    } else if let Some(r) = cs.recent.iter().find(|r| r.seq == op.seq) {
                        out.replies.push(r.clone());
                    } else {
                        out.replies.push(wire::Reply {
                            seq: op.seq,
                            status: Status::Ok as i32,
                            duplicate: true,
                            ..Default::default()
                        });
                    }
                }
                continue;
            }
            if !blocking && self.quick_incr(client, op, self.hashes[i]) {
                self.stats.updates += 1;
                if op.seq != 0 {
                    cs.applied_seq = op.seq;
                }
                continue;
            }
            let reply = if !op.is_folded() {
                self.apply_op(client, op, now_ns, out)
            } else {
                self.apply_folded(client, op, self.hashes[i], now_ns, out)
            };
            if op.seq != 0 {
                cs.applied_seq = op.seq;
            }
            if op.clock != 0 {
                cs.last_clock = op.last_carried_clock();
            }
            if blocking {
                if is_update(op.code) {
                    if cs.recent.len() == RECENT_REPLIES {
                        cs.recent.pop_front();
                    }
                    cs.recent.push_back(reply.clone());
                }
                out.replies.push(reply);
            }
        }
        out.acked = cs.applied_seq;
        self.clients.insert(client, cs);
    }

    /// A non-blocking increment of a shared object without a clock, applied in place: no
    /// reply, clock log, owner or callback is involved, so the general path's reply and
    /// bookkeeping are skipped (this is the bulk of a counter-heavy client's traffic).
    /// Returns false, having changed nothing, when the operation or the entry needs the
    /// general path (metadata, a value that is not an integer, an overflow).
    /// `hash` is the key's hash from `touch`.
    fn quick_incr(&mut self, client: ClientId, op: &wire::Op, hash: u64) -> bool {
        if op.code != OpCode::OpIncr as i32
            || op.clock != 0
            || op.is_folded()
            || op.per_flow
            || op.vertex > 0xFFFF
            || op.object > 0xFFFF
        {
            return false;
        }
        let k = shared_key(op);
        let e = self.map.or_default_hashed(hash, k);
        // Anything in the cold part (metadata, a byte string that may hold a decimal) takes
        // the general path.
        let Ok(cur) = e.inline() else {
            return false;
        };
        let Some(new) = cur.unwrap_or(0).checked_add(op.num) else {
            return false;
        };
        e.set_inline(Some(new));
        if self.track_dirty && !e.is_dirty() {
            e.replace_dirty(true);
            self.dirty.push(k.to_key());
        }
        self.wal_record(client, op, &Value::Nil);
        true
    }

    /// Applies a non-blocking increment that carries further packets' increments of the same
    /// key (`Op.more_clocks` or `Op.more_run`): each one exactly as if it had come as its own
    /// operation. Only clocked, non-blocking increments may be folded, a run neither with a
    /// list nor past its root's clocks; anything else is refused whole.
    /// `hash` is the key's hash from `touch`.
    fn apply_folded(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        hash: u64,
        now_ns: u64,
        out: &mut Outputs,
    ) -> wire::Reply {
        let foldable = op.code == OpCode::OpIncr as i32
            && op.flags & F_NONBLOCKING != 0
            && op.clock != 0
            && op.more_clocks.len() == op.more_op_index.len()
            && !op.more_clocks.contains(&0)
            && op.more_run <= wire::MAX_RUN
            && (op.more_run == 0
                || op.more_clocks.is_empty()
                    && op
                        .clock
                        .checked_add(u64::from(op.more_run))
                        .is_some_and(|last| root_of(last) == root_of(op.clock)));
        if !foldable {
            let reply = wire::Reply {
                seq: op.seq,
                ..Default::default()
            };
            return self.bad(reply);
        }
        if let Some(reply) = self.apply_folded_quick(client, op, hash, out) {
            return reply;
        }
        let mut reply = None;
        for_each_folded(op, |i, one| {
            if i > 0 {
                self.stats.ops += 1;
            }
            let r = self.apply_op(client, one, now_ns, out);
            reply.get_or_insert(r);
        });
        reply.expect("at least the carrier's own clock")
    }

    /// The common case of [`Shard::apply_folded`] in one lookup instead of one general
    /// update per clock: a shared counter holding an integer (or nothing) that nobody
    /// subscribes to, every clock of the operation newer than all its logged records (so
    /// none is a duplicate, and each record goes at the end of its instance's run), and no
    /// overflow along the way. The effects are those of the clocks applied one by one: the
    /// same value, clock-log records, WAL records, commits and counts. `None`, having changed
    /// nothing but perhaps created the (empty) entry the general path creates too, otherwise.
    fn apply_folded_quick(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        hash: u64,
        out: &mut Outputs,
    ) -> Option<wire::Reply> {
        if op.per_flow || self.replaying.is_some() || op.vertex > 0xFFFF || op.object > 0xFFFF {
            return None;
        }
        let first = (op.clock, op.op_index);
        let clocks = op.carried_clocks();
        if op.more_run == 0 && !clocks.clone().is_sorted_by(|a, b| a < b) {
            return None;
        }
        let k = shared_key(op);
        let e = self.map.or_default_hashed(hash, k);
        let before = match e.inline() {
            Ok(v) => v,
            Err(c) => match c.value {
                Value::Nil => None,
                Value::Int(i) => Some(i),
                _ => return None,
            },
        };
        let (had_records, log_was_empty) = match e.meta() {
            Some(m) if !m.subscribers.is_empty() || m.log.newest().is_some_and(|n| n >= first) => {
                return None
            }
            Some(m) => (m.has_records(), m.log.is_empty()),
            None => (false, true),
        };
        let n = op.carried() as i64;
        // The values in between lie between the first and the last: checking the total
        // checks every step.
        let cur = before.unwrap_or(0);
        cur.checked_add(op.num.checked_mul(n)?)?;
        let c = e.cold_mut();
        if log_was_empty {
            c.meta.base = Some(before.map_or(Value::Nil, Value::Int));
        }
        let mut v = cur;
        for (clock, op_index) in clocks.clone() {
            v += op.num;
            let rec = LogRec {
                clock,
                op_index,
                status: Status::Ok as i32,
                result: Value::Int(v),
                after: Some(Value::Int(v)),
            };
            c.meta.log.insert(op.instance, rec);
        }
        c.value = Value::Int(v);
        let reply = wire::Reply {
            seq: op.seq,
            version: self.stats.ops,
            status: Status::Ok as i32,
            value: Value::Int(cur + op.num).to_wire(),
            ..Default::default()
        };
        let extra = (n - 1) as u64;
        self.stats.ops += extra;
        self.stats.updates += extra + 1;
        self.stats.logged_records += extra + 1;
        if !had_records {
            self.logged.push(k.to_key());
        }
        self.mark_dirty(k);
        if self.durable {
            for_each_folded(op, |_, one| self.wal_record(client, one, &Value::Nil));
        }
        if op.flags & F_COUNTED != 0 && op.more_run > 0 {
            // One commit for the run: every clock of it has the same id.
            if let Some(&to) = self.commit_subs.get(&root_of(op.clock)) {
                let id = update_id(
                    op.vertex as u16,
                    op.instance as u16,
                    op.object as u16,
                    op.op_index,
                );
                out.commits.push((
                    to,
                    wire::Commit {
                        clock: op.clock,
                        id,
                        run: op.more_run,
                    },
                ));
            }
        } else if op.flags & F_COUNTED != 0 {
            let mut sub = None;
            for (clock, op_index) in clocks {
                let root = root_of(clock);
                let to = match sub {
                    Some((r, to)) if r == root => to,
                    _ => {
                        let to = self.commit_subs.get(&root).copied();
                        sub = Some((root, to));
                        to
                    }
                };
                if let Some(to) = to {
                    let id = update_id(
                        op.vertex as u16,
                        op.instance as u16,
                        op.object as u16,
                        op_index,
                    );
                    out.commits.push((to, wire::Commit { clock, id, run: 0 }));
                }
            }
        }
        Some(reply)
    }

    fn apply_op(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        now_ns: u64,
        out: &mut Outputs,
    ) -> wire::Reply {
        let mut reply = wire::Reply {
            seq: op.seq,
            version: self.stats.ops,
            ..Default::default()
        };
        let Ok(code) = OpCode::try_from(op.code) else {
            return self.bad(reply);
        };
        if op.vertex > 0xFFFF || op.object > 0xFFFF {
            return self.bad(reply);
        }
        let k = KeyRef {
            vertex: op.vertex as u16,
            object: op.object as u16,
            per_flow: op.per_flow,
            sub: &op.sub,
        };
        match code {
            OpCode::OpNoop => {}
            OpCode::OpGet if op.flags & F_AS_OF != 0 && op.clock != 0 => {
                let v = self.read_as_of(op, k);
                if v.is_nil() {
                    reply.status = Status::NotFound as i32;
                } else {
                    reply.value = v.to_wire();
                }
            }
            OpCode::OpGet => match self.map.get(&k).map(|e| e.value()) {
                Some(v) if !v.is_nil() => reply.value = v.to_wire(),
                _ => reply.status = Status::NotFound as i32,
            },
            OpCode::OpSet
            | OpCode::OpDel
            | OpCode::OpIncr
            | OpCode::OpPushFront
            | OpCode::OpPushBack
            | OpCode::OpPopFront
            | OpCode::OpPopBack
            | OpCode::OpCompareAndUpdate
            | OpCode::OpCustom => {
                self.stats.updates += 1;
                self.update(client, op, code, k, &mut reply, out);
            }
            OpCode::OpAcquire => self.acquire(client, op, k, &mut reply),
            OpCode::OpRelease => self.release(op, k, &mut reply, out),
            OpCode::OpReleaseMany => self.release_many(client, op, &mut reply, out),
            OpCode::OpScanOwned => self.scan_owned(op, &mut reply),
            OpCode::OpReleaseBuckets => self.release_buckets(client, op, &mut reply, out),
            OpCode::OpAcquireBuckets => self.acquire_buckets(client, op, &mut reply),
            OpCode::OpReassignOwner => {
                let (from, to) = (op.num as u32 + 1, op.instance + 1);
                self.settle_released();
                let mut n = 0;
                let mut changed = Vec::new();
                for (key, e) in self.map.iter_mut() {
                    if key.per_flow && e.owner() == from {
                        e.set_owner(to);
                        n += 1;
                        changed.push(key.clone());
                    }
                }
                for key in changed {
                    self.mark_dirty(key.as_ref());
                }
                if n > 0 {
                    self.wal_record(client, op, &Value::Nil);
                }
                reply.value = Value::Int(n).to_wire();
            }
            OpCode::OpSubscribe => {
                let e = self.map.or_default(&k);
                let m = e.meta_mut();
                if !m.subscribers.contains(&client) {
                    m.subscribers.push(client);
                }
                self.watchers.insert(client);
                reply.value = e.value().to_wire();
            }
            OpCode::OpUnsubscribe => {
                if let Some(e) = self.map.get_mut(&k) {
                    if e.meta().is_some() {
                        e.meta_mut().subscribers.retain(|c| *c != client);
                        e.settle();
                    }
                }
                self.remove_if_vacant(k);
            }
            OpCode::OpNondet => self.nondet(client, op, k, now_ns, &mut reply),
            OpCode::OpRetireClocks => {
                let root = op.instance as u16;
                let wm = self.watermarks.entry(root).or_insert(0);
                let advanced = op.num as u64 > *wm;
                *wm = (*wm).max(op.num as u64);
                // Records of clocks below an unchanged watermark were swept already (a late
                // one waits for the next advance): the walk over every logged object, every
                // few milliseconds, is skipped while the root's log stands still.
                if advanced {
                    self.sweep_logs();
                }
                // Logged so recovery forgets the same clock-log records: otherwise a replayed
                // update could be suppressed as a duplicate that the live shard applied.
                self.wal_record(client, op, &Value::Nil);
            }
            OpCode::OpSubscribeCommits => {
                self.commit_subs.insert(op.instance as u16, client);
            }
            OpCode::OpDeclare => {
                let name = op
                    .val
                    .as_ref()
                    .and_then(|v| v.as_bytes())
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_string);
                match name {
                    Some(name) if !name.is_empty() => {
                        self.declare(k.vertex, k.object, &name, op.num as u32);
                        self.wal_record(client, op, &Value::Nil);
                    }
                    _ => return self.bad(reply),
                }
            }
            OpCode::OpRestore => {
                self.settle_released_key(k, op.instance + 1);
                let v = Value::from_wire_owned(op.val.as_ref());
                let e = self.map.or_default(&k);
                e.with_value(|old| *old = v);
                if k.per_flow {
                    e.set_owner(op.instance + 1);
                }
                self.mark_dirty(k);
                self.wal_record(client, op, &Value::Nil);
                self.remove_if_vacant(k);
            }
            OpCode::OpReadTs => reply.ts = self.ts(),
        }
        if code == OpCode::OpGet && !k.per_flow && op.flags & F_WANT_TS != 0 {
            reply.ts = self.ts();
        }
        reply
    }

    fn bad(&mut self, mut reply: wire::Reply) -> wire::Reply {
        self.stats.bad_requests += 1;
        reply.status = Status::BadRequest as i32;
        reply
    }

    pub fn declare(&mut self, vertex: u16, object: u16, name: &str, kind: u32) {
        self.names
            .write()
            .declare(vertex, object, name, KeyKind::from_u32(kind));
        if let Some(d) = self
            .declarations
            .iter_mut()
            .find(|d| d.0 == vertex && d.1 == object)
        {
            d.2 = name.to_string();
            d.3 = kind;
        } else {
            self.declarations
                .push((vertex, object, name.to_string(), kind));
        }
    }

    /// A read "as of" a clock in flight: the value just before the packet's update
    /// `op_index` (after its earlier ones), or what an earlier read by the same position of
    /// the same packet returned. The first such read is logged until its clock retires.
    fn read_as_of(&mut self, op: &wire::Op, k: KeyRef<'_>) -> Value {
        // A read that finds nothing is logged too: the object may appear before the second
        // copy reads it.
        let e = self.map.or_default(&k);
        if let Some(r) = e.meta().and_then(|m| m.reads.find(op.clock, op.op_index)) {
            return r.result.clone();
        }
        let v = match e.meta().filter(|m| !m.log.is_empty()) {
            Some(m) => m
                .as_of(op.clock, op.op_index)
                .map_or_else(|| e.value(), Cow::Borrowed)
                .into_owned(),
            None => e.value().into_owned(),
        };
        let first =
            e.meta_mut()
                .record(|m| &mut m.reads, op.instance, LogRec::answer(op, v.clone()));
        self.stats.logged_records += 1;
        if first {
            self.logged.push(k.to_key());
        }
        v
    }

    fn update(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        code: OpCode,
        k: KeyRef<'_>,
        reply: &mut wire::Reply,
        out: &mut Outputs,
    ) {
        let logged = op.clock != 0;
        // An entry is created even for updates that find nothing (a pop on a missing list)
        // when the result must be logged: a replay must see the same outcome.
        let creates = logged
            || matches!(
                code,
                OpCode::OpSet
                    | OpCode::OpIncr
                    | OpCode::OpPushFront
                    | OpCode::OpPushBack
                    | OpCode::OpCompareAndUpdate
                    | OpCode::OpCustom
            );
        if !creates && !self.map.contains_key(&k) {
            reply.status = Status::NotFound as i32;
            return;
        }
        if k.per_flow {
            self.settle_released_key(k, op.instance + 1);
        }
        let e = self.map.or_default(&k);
        if logged {
            if let Some(rec) = e.meta().and_then(|m| m.find(op.clock, op.op_index)) {
                self.stats.duplicates_suppressed += 1;
                reply.status = rec.status;
                reply.value = rec.result.to_wire();
                reply.duplicate = true;
                return;
            }
        }
        let me = op.instance + 1;
        if k.per_flow && e.owner() != 0 && e.owner() != me {
            self.stats.not_owner += 1;
            reply.status = Status::NotOwner as i32;
            if e.is_vacant() {
                self.map.remove(&k);
            }
            return;
        }
        let mut claimed = false;
        if k.per_flow && e.owner() == 0 {
            e.set_owner(me);
            claimed = true;
        }
        // The first logged update of an object remembers the value before it (reads "as of"
        // a clock start there).
        let base = (logged && e.meta().is_none_or(|m| m.log.is_empty()))
            .then(|| (!e.value_is_list()).then(|| e.value().into_owned()));
        let (status, result, mutated) = e.with_value(|v| apply_update(&self.customs, code, op, v));
        reply.status = status as i32;
        reply.value = result.to_wire();
        if logged {
            let after = (!e.value_is_list()).then(|| e.value().into_owned());
            let m = e.meta_mut();
            if let Some(b) = base {
                m.base = b;
            }
            let rec = LogRec {
                clock: op.clock,
                op_index: op.op_index,
                status: status as i32,
                result,
                after,
            };
            self.stats.logged_records += 1;
            if m.record(|m| &mut m.log, op.instance, rec) {
                self.logged.push(k.to_key());
            }
        }
        // A per-flow object its owner emptied (the flow's state deleted) leaves nothing to own.
        // Kept, the ownership would outlive the owner's interest: its cache no longer holds the
        // key, so a handover would not release it, and the next flow with the same key, served
        // by another instance after a move, would be refused.
        if k.per_flow && e.value_is_nil() && e.meta().is_none_or(|m| m.waiters.is_empty()) {
            e.set_owner(0);
        }
        let vacant = e.is_vacant();
        let subscribers = if mutated && self.replaying.is_none() {
            e.meta()
                .map(|m| {
                    m.subscribers
                        .iter()
                        .copied()
                        .filter(|c| *c != client)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if !subscribers.is_empty() {
            let value = e.value().to_wire();
            for c in subscribers {
                out.pushes.push((
                    c,
                    wire::Push {
                        kind: PushKind::PushUpdate as i32,
                        vertex: op.vertex,
                        object: op.object,
                        per_flow: op.per_flow,
                        sub: op.sub.clone(),
                        value: value.clone(),
                        commits: Vec::new(),
                        version: self.stats.ops,
                    },
                ));
            }
        }
        if mutated || claimed || logged {
            self.mark_dirty(k);
        }
        if mutated || claimed {
            self.wal_record(client, op, &Value::Nil);
        }
        if logged && op.flags & F_COUNTED != 0 && self.replaying.is_none() {
            if let Some(&sub) = self.commit_subs.get(&root_of(op.clock)) {
                out.commits.push((
                    sub,
                    wire::Commit {
                        clock: op.clock,
                        id: update_id(
                            op.vertex as u16,
                            op.instance as u16,
                            op.object as u16,
                            op.op_index,
                        ),
                        run: 0,
                    },
                ));
            }
        }
        if !logged && vacant {
            self.remove_if_vacant(k);
        }
    }

    fn acquire(&mut self, client: ClientId, op: &wire::Op, k: KeyRef<'_>, reply: &mut wire::Reply) {
        if !k.per_flow {
            reply.status = Status::BadRequest as i32;
            return;
        }
        let me = op.instance + 1;
        self.settle_released_key(k, me);
        let e = self.map.or_default(&k);
        if e.owner() == 0 || e.owner() == me {
            let changed = e.owner() != me;
            e.set_owner(me);
            reply.value = e.value().to_wire();
            if changed {
                self.mark_dirty(k);
                self.wal_record(client, op, &Value::Nil);
            }
        } else {
            let m = e.meta_mut();
            if !m.waiters.iter().any(|w| w.0 == client) {
                m.waiters.push_back((client, op.instance));
                self.waiting += 1;
            }
            self.watchers.insert(client);
            reply.status = Status::Pending as i32;
        }
    }

    fn release(
        &mut self,
        op: &wire::Op,
        k: KeyRef<'_>,
        reply: &mut wire::Reply,
        out: &mut Outputs,
    ) {
        let hash = self.map.hash(k);
        match self.release_one(hash, k, || op.sub.clone(), op.instance, op.seq, out) {
            Released::NotOwner => reply.status = Status::NotOwner as i32,
            Released::Freed => self.wal_record(0, op, &Value::Nil),
            Released::Absent | Released::Granted => {}
        }
    }

    /// Releases every key of an `OP_RELEASE_MANY` (see the proto): as many `OP_RELEASE`s, in
    /// one pass and with one WAL record for the keys that became free.
    fn release_many(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        reply: &mut wire::Reply,
        out: &mut Outputs,
    ) {
        let keys = match op.val.as_ref().and_then(|v| v.kind.as_ref()) {
            Some(wire::value::Kind::Bytes(b)) if op.vertex <= 0xFFFF && packed::is_valid(b) => {
                b.clone()
            }
            None if op.vertex <= 0xFFFF => Bytes::new(),
            _ => {
                self.stats.bad_requests += 1;
                reply.status = Status::BadRequest as i32;
                return;
            }
        };
        let vertex = op.vertex as u16;
        let key = |object, r: std::ops::Range<usize>| KeyRef {
            vertex,
            object,
            per_flow: true,
            sub: &keys[r],
        };
        // Every key's slot is fetched first, together (a handover releases about a thousand
        // keys at once, each a table miss); the releases then find them in the cache. The
        // batch's own hashes (`self.hashes`) are still in use by the operations after this one.
        let hashes: Vec<u64> = packed::iter(&keys)
            .flatten()
            .map(|(object, r)| self.map.hash(key(object, r)))
            .collect();
        self.touch_all(&hashes);
        // Then the boxed part of each (a flow's byte-string value), which a release reads to
        // see whether anything is left once the owner is gone.
        for ((object, r), &hash) in packed::iter(&keys).flatten().zip(&hashes) {
            if let Some(e) = self.map.get_hashed(hash, &key(object, r)) {
                e.prefetch_cold();
            }
        }
        let (mut moved, mut freed) = (0i64, false);
        for ((object, r), hash) in packed::iter(&keys).flatten().zip(hashes) {
            let sub = || keys.slice(r.clone());
            let k = key(object, r.clone());
            match self.release_one(hash, k, sub, op.instance, op.seq, out) {
                Released::Freed => {
                    moved += 1;
                    freed = true;
                }
                Released::Granted => moved += 1,
                Released::Absent | Released::NotOwner => {}
            }
        }
        if freed {
            // Replay frees the keys the instance still owns then; keys granted to a waiter
            // are logged as that waiter's acquisitions and are no longer the instance's.
            self.wal_record(client, op, &Value::Nil);
        }
        reply.value = Value::Int(moved).to_wire();
    }

    /// The buckets of an `OP_RELEASE_BUCKETS` / `OP_ACQUIRE_BUCKETS`; a malformed one is
    /// refused.
    fn bucket_request(&mut self, op: &wire::Op, reply: &mut wire::Reply) -> Option<Buckets> {
        let req = match op.val.as_ref().and_then(|v| v.as_bytes()) {
            Some(b) if op.vertex <= 0xFFFF => Buckets::decode(b),
            _ => None,
        };
        if req.is_none() {
            self.stats.bad_requests += 1;
            reply.status = Status::BadRequest as i32;
        }
        req
    }

    /// `OP_RELEASE_BUCKETS`: `op.instance` gives up its per-flow objects of whole buckets.
    /// Nothing is done per object now: the buckets are remembered and the objects' slots are
    /// read as unowned from here on. With waiters queued anywhere in the shard, the objects
    /// are released one by one instead (a waiter must be handed the object now).
    fn release_buckets(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        reply: &mut wire::Reply,
        out: &mut Outputs,
    ) {
        let Some(req) = self.bucket_request(op, reply) else {
            return;
        };
        let (vertex, me) = (op.vertex as u16, op.instance + 1);
        if self.waiting > 0 && self.replaying.is_none() {
            let keys: Vec<Key> = self
                .map
                .iter()
                .filter(|(key, e)| {
                    key.vertex == vertex
                        && key.per_flow
                        && e.owner() == me
                        && req.holds(key.object, key.sub.as_slice())
                })
                .map(|(key, _)| key.clone())
                .collect();
            let mut freed = false;
            for key in keys {
                let hash = self.map.hash(key.as_ref());
                let sub = || Bytes::copy_from_slice(key.sub.as_slice());
                freed |= matches!(
                    self.release_one(hash, key.as_ref(), sub, op.instance, op.seq, out),
                    Released::Freed
                );
            }
            if freed {
                // Replay releases by bucket what the instance still owns then; objects
                // granted to a waiter were logged as the waiter's acquisitions.
                self.wal_record(client, op, &Value::Nil);
            }
            return;
        }
        match self.released.get_mut(&(vertex, me)) {
            Some(r) if r.split == req.split && r.kinds == req.kinds => r.set.union(&req.set),
            Some(_) => {
                // Buckets computed another way: bring every slot up to date with the old
                // ones before remembering the new.
                self.settle_released();
                self.released.insert((vertex, me), req);
            }
            None => {
                self.released.insert((vertex, me), req);
            }
        }
        self.wal_record(client, op, &Value::Nil);
    }

    /// `OP_ACQUIRE_BUCKETS`: `op.instance` takes buckets back; its objects there that it
    /// released by bucket and that nobody took since are its own again.
    fn acquire_buckets(&mut self, client: ClientId, op: &wire::Op, reply: &mut wire::Reply) {
        let Some(req) = self.bucket_request(op, reply) else {
            return;
        };
        let key = (op.vertex as u16, op.instance + 1);
        if let Some(r) = self.released.get_mut(&key) {
            r.set.remove_all(&req.set);
            if r.set.is_empty() {
                self.released.remove(&key);
            }
            self.wal_record(client, op, &Value::Nil);
        }
    }

    /// Brings the slot of `k` up to date before `me` (an instance + 1) acts on it: if its
    /// owner released the object's bucket, nobody owns it now. When `me` itself released the
    /// bucket (it acts on a bucket it gave up without taking it back), every slot is brought
    /// up to date, so that its claim now is not undone by its own earlier release.
    fn settle_released_key(&mut self, k: KeyRef<'_>, me: u32) {
        if self.released.is_empty()
            || !k.per_flow
            || !self.released.keys().any(|&(v, _)| v == k.vertex)
        {
            return;
        }
        if released(&self.released, k, me) {
            self.settle_released();
            return;
        }
        let owner = match self.map.get(&k) {
            Some(e) => e.owner(),
            None => return,
        };
        if !released(&self.released, k, owner) {
            return;
        }
        if let Some(e) = self.map.get_mut(&k) {
            e.set_owner(0);
        }
        self.mark_dirty(k);
        self.remove_if_vacant(k);
    }

    /// Applies every bucket release to the slots it covers and forgets the releases (before
    /// a checkpoint's snapshot, a move of every object of an instance, or a claim by an
    /// instance of an object it released). A pass over the shard.
    fn settle_released(&mut self) {
        if self.released.is_empty() {
            return;
        }
        let rel = std::mem::take(&mut self.released);
        let freed: Vec<Key> = self
            .map
            .iter_mut()
            .filter_map(|(key, e)| {
                if !released(&rel, key.as_ref(), e.owner()) {
                    return None;
                }
                // Released by bucket only while no waiter was queued, and a waiter queues
                // only behind an owned object: nobody waits for these.
                debug_assert!(e.meta().is_none_or(|m| m.waiters.is_empty()));
                e.set_owner(0);
                Some(key.clone())
            })
            .collect();
        for key in freed {
            self.mark_dirty(key.as_ref());
            self.remove_if_vacant(key.as_ref());
        }
    }

    /// The owner of `k` as the shard answers for it (`e` is its entry): instance + 1, or 0.
    pub fn owner_of(&self, k: KeyRef<'_>, e: &Entry) -> u32 {
        let owner = e.owner();
        if released(&self.released, k, owner) {
            0
        } else {
            owner
        }
    }

    /// Every per-flow object of `op.vertex` that `op.instance` owns, with its value, and the
    /// newest clock `op.instance` has logged on the vertex's objects. Cost is a pass over the
    /// shard (as OP_REASSIGN_OWNER), paid once per replacement instance.
    fn scan_owned(&mut self, op: &wire::Op, reply: &mut wire::Reply) {
        if op.vertex > 0xFFFF {
            self.stats.bad_requests += 1;
            reply.status = Status::BadRequest as i32;
            return;
        }
        let (vertex, me, limit) = (op.vertex as u16, op.instance + 1, op.num.max(0) as usize);
        let mut bytes = 0usize;
        let mut overflow = false;
        for (key, e) in self.map.iter() {
            if key.vertex != vertex {
                continue;
            }
            if let Some(m) = e.meta() {
                let newest = m
                    .log
                    .newest_of(op.instance)
                    .max(m.reads.newest_of(op.instance));
                reply.newest_clock = reply.newest_clock.max(newest.unwrap_or(0));
            }
            if overflow || !key.per_flow || self.owner_of(key.as_ref(), e) != me || e.value_is_nil()
            {
                continue;
            }
            let value = e.value();
            let sub = key.sub.as_slice();
            bytes += sub.len() + value.approx_len();
            if limit > 0 && bytes > limit {
                reply.owned.clear();
                reply.status = Status::Overflow as i32;
                overflow = true;
                continue;
            }
            reply.owned.push(wire::Owned {
                object: u32::from(key.object),
                sub: Bytes::copy_from_slice(sub),
                value: value.to_wire(),
            });
        }
        reply.version = self.stats.ops;
    }

    /// Gives up `instance`'s ownership of one per-flow object: the first waiter gets it (and
    /// a `PushHandover` with the value), or nobody owns it. The caller logs a `Freed` release;
    /// a grant is logged here as the waiter's acquisition.
    fn release_one(
        &mut self,
        hash: u64,
        k: KeyRef<'_>,
        sub: impl FnOnce() -> Bytes,
        instance: u32,
        seq: u64,
        out: &mut Outputs,
    ) -> Released {
        let me = instance + 1;
        self.settle_released_key(k, me);
        let Some(e) = self.map.get_mut_hashed(hash, &k) else {
            // Nothing stored: nothing owned.
            return Released::Absent;
        };
        if e.owner() != me {
            return if e.owner() != 0 {
                Released::NotOwner
            } else {
                Released::Absent
            };
        }
        let newly_dirty = self.track_dirty && !e.replace_dirty(true);
        let next = if self.waiting > 0 && e.meta().is_some() {
            let next = e.meta_mut().waiters.pop_front();
            e.settle();
            next
        } else {
            None
        };
        let result = match next {
            Some((waiter, instance)) => {
                self.waiting -= 1;
                e.set_owner(instance + 1);
                let sub = sub();
                if self.replaying.is_none() {
                    out.pushes.push((
                        waiter,
                        wire::Push {
                            kind: PushKind::PushHandover as i32,
                            vertex: u32::from(k.vertex),
                            object: u32::from(k.object),
                            per_flow: true,
                            sub: sub.clone(),
                            value: e.value().to_wire(),
                            commits: Vec::new(),
                            version: self.stats.ops,
                        },
                    ));
                }
                if self.durable && self.replaying.is_none() {
                    let grant = wire::Op {
                        seq,
                        code: OpCode::OpAcquire as i32,
                        vertex: u32::from(k.vertex),
                        object: u32::from(k.object),
                        per_flow: true,
                        sub: sub.clone(),
                        instance,
                        ..Default::default()
                    };
                    self.wal_record(waiter, &grant, &Value::Nil);
                }
                Released::Granted
            }
            None => {
                e.set_owner(0);
                if e.is_vacant() {
                    // Its key is (or is about to be) in the dirty list: the checkpoint sees
                    // the deletion.
                    self.map.remove(&k);
                }
                Released::Freed
            }
        };
        if newly_dirty {
            self.dirty.push(k.to_key());
        }
        result
    }

    fn nondet(
        &mut self,
        client: ClientId,
        op: &wire::Op,
        k: KeyRef<'_>,
        now_ns: u64,
        reply: &mut wire::Reply,
    ) {
        if op.clock == 0 {
            reply.status = Status::BadRequest as i32;
            return;
        }
        let e = self.map.or_default(&k);
        if let Some(rec) = e.meta().and_then(|m| m.find(op.clock, op.op_index)) {
            self.stats.duplicates_suppressed += 1;
            reply.value = rec.result.to_wire();
            reply.duplicate = true;
            return;
        }
        let v = if let Some(v) = self.replaying.clone() {
            v
        } else if op.val.is_some() {
            // The instance computed the value and logs it here (Appendix A.2).
            Value::from_wire(op.val.as_ref())
        } else {
            match op.num {
                NONDET_TIME_NS => Value::Int(now_ns as i64),
                NONDET_RANDOM => {
                    // xorshift64*: plenty for NF randomness, and cheap.
                    self.rng ^= self.rng >> 12;
                    self.rng ^= self.rng << 25;
                    self.rng ^= self.rng >> 27;
                    Value::Int(self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) as i64)
                }
                _ => {
                    reply.status = Status::BadRequest as i32;
                    return;
                }
            }
        };
        let first = e
            .meta_mut()
            .record(|m| &mut m.log, op.instance, LogRec::answer(op, v.clone()));
        self.stats.logged_records += 1;
        if first {
            self.logged.push(k.to_key());
        }
        reply.value = v.to_wire();
        self.mark_dirty(k);
        self.wal_record(client, op, &v);
    }

    fn mark_dirty(&mut self, k: KeyRef<'_>) {
        if !self.track_dirty {
            return;
        }
        match self.map.get_mut(&k) {
            Some(e) if e.is_dirty() => {}
            Some(e) => {
                e.replace_dirty(true);
                self.dirty.push(k.to_key());
            }
            None => self.dirty.push(k.to_key()),
        }
    }

    fn remove_if_vacant(&mut self, k: KeyRef<'_>) {
        if self.map.get(&k).is_some_and(Entry::is_vacant) {
            self.map.remove(&k);
            if self.track_dirty {
                self.dirty.push(k.to_key());
            }
        }
    }

    fn wal_record(&mut self, client: ClientId, op: &wire::Op, result: &Value) {
        if !self.durable || self.replaying.is_some() {
            return;
        }
        if result.is_nil() && self.wal_compact(client, op) {
            return;
        }
        self.lsn += 1;
        let rec = WalRecord {
            lsn: self.lsn,
            client,
            seq: op.seq,
            op: op_rec(op),
            result: result.to_rec(),
        };
        self.run.finish(&mut self.wal_buf);
        // Records are small and bounded by the frame limit; failure here is a bug.
        self.wal
            .append(&rec, &mut self.wal_buf)
            .expect("WAL record serialises");
    }

    /// Drops clock-log records of retired clocks and entries left with nothing.
    fn sweep_logs(&mut self) {
        let wms = &self.watermarks;
        let retired = |clock: u64| wms.get(&root_of(clock)).is_some_and(|&w| clock < w);
        let mut keep = Vec::with_capacity(self.logged.len());
        let mut dead = Vec::new();
        for key in self.logged.drain(..) {
            let Some(e) = self.map.get_mut(&key.as_ref()) else {
                continue;
            };
            if e.meta().is_none() {
                continue;
            }
            let m = e.meta_mut();
            let gone = m.log.retire(retired, root_of);
            if let Some(after) = gone.newest_after {
                // The newest retired record's value becomes the base of what stays.
                m.base = after;
            }
            if m.log.is_empty() {
                m.base = None;
            }
            let removed = gone.removed + m.reads.retire(retired, root_of).removed;
            let log_left = m.has_records();
            e.settle();
            self.stats.logged_records = self.stats.logged_records.saturating_sub(removed as u64);
            if log_left {
                keep.push(key);
            } else if e.is_vacant() {
                dead.push(key);
            } else if removed > 0 && !e.is_dirty() && self.track_dirty {
                e.replace_dirty(true);
                self.dirty.push(key);
            }
        }
        self.logged = keep;
        for key in dead {
            self.map.remove(&key.as_ref());
            if self.track_dirty {
                self.dirty.push(key);
            }
        }
    }

    /// Takes every change since the last call, for the checkpoint writer.
    pub fn take_delta(&mut self) -> Delta {
        self.settle_released();
        let mut delta = Vec::with_capacity(self.dirty.len());
        for key in std::mem::take(&mut self.dirty) {
            let snap = self.map.get_mut(&key.as_ref()).map(|e| {
                e.replace_dirty(false);
                snapshot(e)
            });
            delta.push((key, snap));
        }
        delta
    }

    /// Every entry, as a delta (for the first checkpoint after start).
    pub fn full_delta(&mut self) -> Delta {
        self.settle_released();
        self.dirty.clear();
        self.map
            .iter_mut()
            .map(|(k, e)| {
                e.replace_dirty(false);
                (k.clone(), Some(snapshot(e)))
            })
            .collect()
    }

    pub fn ts_records(&self) -> Vec<TsRec> {
        self.ts()
            .into_iter()
            .map(|t| TsRec {
                client: t.client,
                seq: t.seq,
                clock: t.clock,
            })
            .collect()
    }

    pub fn declarations(&self) -> &[(u16, u16, String, u32)] {
        &self.declarations
    }

    /// Restores state from a checkpoint record (recovery).
    pub fn load_checkpoint_record(&mut self, rec: CheckpointRecord) {
        match rec {
            CheckpointRecord::Header { lsn, .. } => self.lsn = lsn,
            CheckpointRecord::Ts(ts) => {
                for t in ts {
                    let c = self.clients.entry(t.client).or_default();
                    c.applied_seq = t.seq;
                    c.last_clock = t.clock;
                }
            }
            CheckpointRecord::Declare {
                vertex,
                object,
                name,
                kind,
            } => self.declare(vertex as u16, object as u16, &name, kind),
            CheckpointRecord::Entry {
                key,
                value,
                owner,
                log,
            } => {
                let k = Key::new(key.vertex as u16, key.object as u16, key.per_flow, &key.sub);
                let mut e = Entry::default();
                e.set_owner(owner);
                e.set_value(Value::from_rec(&value));
                if !log.is_empty() {
                    let m = e.meta_mut();
                    for r in log {
                        m.log.insert_restored(LogRec {
                            clock: r.clock,
                            op_index: r.op_index,
                            status: Status::Ok as i32,
                            result: Value::from_rec(&r.result),
                            after: None,
                        });
                    }
                    self.logged.push(k.clone());
                }
                self.map.insert(k, e);
            }
            CheckpointRecord::Footer { .. } => {}
        }
    }

    /// Re-executes one write-ahead log record (recovery). Records at or below the shard's
    /// LSN are already reflected and skipped.
    pub fn replay_wal_record(&mut self, rec: &WalRecord) {
        if rec.lsn <= self.lsn {
            return;
        }
        self.lsn = rec.lsn;
        let op = rec_op(&rec.op, rec.seq);
        self.replaying = Some(Value::from_rec(&rec.result));
        let mut out = Outputs::default();
        if rec.op.code == OpCode::OpRelease as i32 && rec.client == 0 {
            // A release without a waiter.
            let k = op_key(&op);
            if let Some(e) = self.map.get_mut(&k.as_ref()) {
                e.set_owner(0);
            }
            self.remove_if_vacant(k.as_ref());
        } else if rec.op.code == OpCode::OpReleaseMany as i32 {
            // Keys that went to a waiter were logged before as the waiter's acquisitions, so
            // only those the instance still owns are freed.
            let me = op.instance + 1;
            if let Some(keys) = op.val.as_ref().and_then(|v| v.as_bytes()) {
                for (object, r) in packed::iter(keys).flatten() {
                    let k = KeyRef {
                        vertex: op.vertex as u16,
                        object,
                        per_flow: true,
                        sub: &keys[r],
                    };
                    if let Some(e) = self.map.get_mut(&k) {
                        if e.owner() == me {
                            e.set_owner(0);
                            self.remove_if_vacant(k);
                        }
                    }
                }
            }
            let cs = self.clients.entry(rec.client).or_default();
            cs.applied_seq = cs.applied_seq.max(op.seq);
        } else if rec.op.code == OpCode::OpAcquire as i32 {
            let k = op_key(&op);
            let e = self.map.or_default(&k.as_ref());
            e.set_owner(op.instance + 1);
        } else {
            // Ops replayed through the normal path keep identical semantics. The client's
            // sequence number is re-applied only if it advances.
            let mut cs = self.clients.remove(&rec.client).unwrap_or_default();
            let _ = self.apply_op(rec.client, &op, 0, &mut out);
            if op.seq > cs.applied_seq && op.flags & F_FOLLOWED == 0 {
                cs.applied_seq = op.seq;
            }
            if op.clock != 0 {
                cs.last_clock = op.clock;
            }
            self.clients.insert(rec.client, cs);
        }
        self.replaying = None;
    }
}

/// Whether `owner` (an instance + 1) gave up `k` by releasing its bucket.
fn released(rel: &HashMap<(u16, u32), Buckets>, k: KeyRef<'_>, owner: u32) -> bool {
    if rel.is_empty() || owner == 0 || !k.per_flow {
        return false;
    }
    rel.get(&(k.vertex, owner))
        .is_some_and(|r| r.holds(k.object, k.sub))
}

fn snapshot(e: &Entry) -> CheckpointEntry {
    CheckpointEntry {
        value: e.value().into_owned(),
        owner: e.owner(),
        log: e
            .meta()
            .map(|m| {
                m.log
                    .sorted()
                    .into_iter()
                    .map(|r| ClockLogRec {
                        clock: r.clock,
                        op_index: r.op_index,
                        result: r.result.to_rec(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// The key of an operation on a shared object whose ids were checked to fit.
fn shared_key(op: &wire::Op) -> KeyRef<'_> {
    KeyRef {
        vertex: op.vertex as u16,
        object: op.object as u16,
        per_flow: false,
        sub: &op.sub,
    }
}

/// Calls `f` with each operation a folded increment stands for, in order: the carrier's
/// fields with each of its clocks and op indexes, `F_FOLLOWED` on all but the last.
fn for_each_folded(op: &wire::Op, mut f: impl FnMut(usize, &wire::Op)) {
    let mut one = wire::Op {
        seq: op.seq,
        code: op.code,
        vertex: op.vertex,
        object: op.object,
        per_flow: op.per_flow,
        sub: op.sub.clone(),
        num: op.num,
        instance: op.instance,
        ..Default::default()
    };
    let last = op.carried() - 1;
    for (i, (clock, op_index)) in op.carried_clocks().enumerate() {
        (one.clock, one.op_index) = (clock, op_index);
        one.flags = if i < last {
            op.flags | F_FOLLOWED
        } else {
            op.flags & !F_FOLLOWED
        };
        f(i, &one);
    }
}

/// The 32-bit id a counted update contributes to its packet's update vector (and reports in
/// its commit notification). The root settles a packet when the XOR of its vector and of
/// the ids committed for its clock is zero, so two updates of one packet with equal ids
/// that are both lost cancel out and the loss goes unseen (a host that fails with both
/// queued). The id therefore mixes everything that tells a packet's updates apart (vertex,
/// instance, object, index within the instance's part of the packet) through a bijective
/// 64-bit mixer before folding to 32 bits, so equal ids among one packet's few updates are
/// as unlikely as a random 32-bit match; and it is never 0, which the XOR would not see.
pub fn update_id(vertex: u16, instance: u16, object: u16, op_index: u32) -> u32 {
    let mut x = (u64::from(vertex) << 48 | u64::from(instance) << 32 | u64::from(object) << 16)
        ^ u64::from(op_index).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    match (x ^ (x >> 32)) as u32 {
        0 => 1,
        id => id,
    }
}

/// Whether `code` changes an object's value.
pub fn is_update(code: i32) -> bool {
    matches!(
        OpCode::try_from(code),
        Ok(OpCode::OpSet
            | OpCode::OpDel
            | OpCode::OpIncr
            | OpCode::OpPushFront
            | OpCode::OpPushBack
            | OpCode::OpPopFront
            | OpCode::OpPopBack
            | OpCode::OpCompareAndUpdate
            | OpCode::OpCustom)
    )
}

/// Applies an update to a value: (status, result, whether the value changed). Shared by the
/// shards and by NF-local state (traditional mode, caches), so both behave identically.
pub fn apply_update(
    customs: &CustomOps,
    code: OpCode,
    op: &wire::Op,
    v: &mut Value,
) -> (Status, Value, bool) {
    match code {
        OpCode::OpSet => {
            let new = Value::from_wire_owned(op.val.as_ref());
            let old = std::mem::replace(v, new);
            (Status::Ok, old, true)
        }
        OpCode::OpDel => {
            if v.is_nil() {
                (Status::NotFound, Value::Nil, false)
            } else {
                (Status::Ok, std::mem::take(v), true)
            }
        }
        OpCode::OpIncr => {
            let cur = match &*v {
                Value::Nil => 0,
                other => match other.as_int() {
                    Some(i) => i,
                    None => return (Status::WrongType, Value::Nil, false),
                },
            };
            match cur.checked_add(op.num) {
                Some(n) => {
                    *v = Value::Int(n);
                    (Status::Ok, Value::Int(n), true)
                }
                None => (Status::Overflow, Value::Nil, false),
            }
        }
        OpCode::OpPushFront | OpCode::OpPushBack => {
            let item = match Value::from_wire_owned(op.val.as_ref()) {
                Value::Bytes(b) => b,
                Value::Int(i) => Bytes::from(i.to_string()),
                _ => return (Status::BadRequest, Value::Nil, false),
            };
            if v.is_nil() {
                *v = Value::List(VecDeque::new());
            }
            let Value::List(l) = v else {
                return (Status::WrongType, Value::Nil, false);
            };
            if code == OpCode::OpPushFront {
                l.push_front(item);
            } else {
                l.push_back(item);
            }
            (Status::Ok, Value::Int(l.len() as i64), true)
        }
        OpCode::OpPopFront | OpCode::OpPopBack => {
            let Value::List(l) = v else {
                return if v.is_nil() {
                    (Status::NotFound, Value::Nil, false)
                } else {
                    (Status::WrongType, Value::Nil, false)
                };
            };
            let item = if code == OpCode::OpPopFront {
                l.pop_front()
            } else {
                l.pop_back()
            };
            let empty = l.is_empty();
            if empty {
                *v = Value::Nil;
            }
            match item {
                Some(b) => (Status::Ok, Value::Bytes(b), true),
                None => (Status::NotFound, Value::Nil, false),
            }
        }
        OpCode::OpCompareAndUpdate => {
            let expected = Value::from_wire(op.val.as_ref());
            let same = match (&*v, &expected) {
                (Value::Int(a), b) | (b, Value::Int(a)) if !matches!(b, Value::Nil) => {
                    b.as_int() == Some(*a)
                }
                (a, b) => a == b,
            };
            if same {
                let old = std::mem::replace(v, Value::from_wire_owned(op.val2.as_ref()));
                (Status::Ok, old, true)
            } else {
                (Status::CompareFailed, v.clone(), false)
            }
        }
        OpCode::OpCustom => {
            let Some(f) = u32::try_from(op.num).ok().and_then(|id| customs.get(id)) else {
                return (Status::UnknownCustomOp, Value::Nil, false);
            };
            let arg = Value::from_wire_owned(op.val.as_ref());
            let before = v.clone();
            match f(v, &arg) {
                Ok(r) => {
                    let changed = *v != before;
                    (Status::Ok, r, changed)
                }
                Err(_) => {
                    *v = before;
                    (Status::CustomOpFailed, Value::Nil, false)
                }
            }
        }
        _ => (Status::BadRequest, Value::Nil, false),
    }
}

fn op_rec(op: &wire::Op) -> OpRec {
    OpRec {
        code: op.code,
        key: KeyRec {
            vertex: op.vertex,
            object: op.object,
            per_flow: op.per_flow,
            sub: op.sub.to_vec(),
        },
        num: op.num,
        val: Value::from_wire(op.val.as_ref()).to_rec(),
        val2: Value::from_wire(op.val2.as_ref()).to_rec(),
        clock: op.clock,
        instance: op.instance,
        op_index: op.op_index,
        flags: op.flags,
    }
}

fn rec_op(r: &OpRec, seq: u64) -> wire::Op {
    wire::Op {
        seq,
        code: r.code,
        vertex: r.key.vertex,
        object: r.key.object,
        per_flow: r.key.per_flow,
        sub: Bytes::copy_from_slice(&r.key.sub),
        num: r.num,
        val: Value::from_rec(&r.val).to_wire(),
        val2: Value::from_rec(&r.val2).to_wire(),
        clock: r.clock,
        instance: r.instance,
        op_index: r.op_index,
        flags: r.flags,
        ..Default::default()
    }
}

fn op_key(op: &wire::Op) -> Key {
    Key::new(op.vertex as u16, op.object as u16, op.per_flow, &op.sub)
}

#[cfg(test)]
mod bucket_tests;
#[cfg(test)]
mod tests;
