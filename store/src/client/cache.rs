//! NF state access with the strategies of the paper's Table 3.5.
//!
//! An NF declares each state object with a scope (per-flow or cross-flow) and an access
//! pattern; [`strategy`] picks how the object is kept for the vertex's [`Mode`]:
//!
//! | scope, access | strategy |
//! |---|---|
//! | any, write-mostly / read-rarely | non-blocking operations, no cache |
//! | per-flow, any other | cache; operations applied locally and forwarded non-blocking |
//! | cross-flow, read-heavy | cache kept fresh by callbacks; updates go to the store |
//! | cross-flow, read/write often | cache while this instance has the object to itself (the upstream split says so), else operations in the store |
//!
//! In `eo` and `eo-c` every operation sent to the store waits for its acknowledgement; in
//! `eo-c-na` the framework does not wait and retransmits instead. `traditional` keeps all state
//! in the instance, applied with the very same operation semantics as the store.
//!
//! Every update sent to the store carries the packet's logical clock and its index within
//! the packet, so the store can suppress duplicates; its id is XORed into the packet's update
//! vector. Updates and reads of cross-flow objects are recorded in the NF-side log
//! ([`super::nflog`]) for store recovery.

use super::nflog::NfLog;
use super::ops::{self, ObjKey};
use super::{ClientError, Pushed, StoreClient};
use crate::bucket::{BucketSet, Buckets, Split};
use crate::custom::CustomOps;
use crate::key::{packed, Key, KeyRef};
use crate::names::KeyKind;
use crate::shard::{apply_update, update_id, NONDET_RANDOM, NONDET_TIME_NS};
use crate::value::Value;
use bytes::Bytes;
use chc_proto::wire::{self, OpCode, OpFlag, PushKind, Status};
use crossbeam::queue::SegQueue;
use hashbrown::HashMap;
use std::sync::{Arc, OnceLock};

/// Scope of a state object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Keyed by a flow: only the instance the flow is assigned to touches it.
    PerFlow,
    /// Shared by flows (a host's counters, a port pool): several instances may touch it.
    CrossFlow,
}

/// How an object is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Updated often, read rarely (counters).
    WriteMostly,
    /// Read often, updated rarely.
    ReadHeavy,
    /// Read and updated often.
    ReadWriteOften,
}

/// Where a vertex keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// In the instance; nothing survives a crash. The baseline.
    Traditional,
    /// In the store; every operation waits for the store.
    Eo,
    /// In the store, cached per Table 3.5; operations sent to the store wait for their ACK.
    EoC,
    /// As `EoC`, without waiting for ACKs.
    EoCNa,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "traditional" => Ok(Mode::Traditional),
            "eo" => Ok(Mode::Eo),
            "eo-c" => Ok(Mode::EoC),
            "eo-c-na" => Ok(Mode::EoCNa),
            _ => Err(format!(
                "mode must be traditional, eo, eo-c or eo-c-na, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Traditional => "traditional",
            Mode::Eo => "eo",
            Mode::EoC => "eo-c",
            Mode::EoCNa => "eo-c-na",
        })
    }
}

/// How one object is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Local,
    Blocking,
    NonBlocking,
    CacheFlush,
    CacheCallback,
    CacheExclusive,
}

/// Table 3.5: the strategy for an object of `scope` and `access` in `mode`.
pub fn strategy(mode: Mode, scope: Scope, access: Access) -> Strategy {
    match mode {
        Mode::Traditional => Strategy::Local,
        Mode::Eo => Strategy::Blocking,
        Mode::EoC | Mode::EoCNa => match (scope, access) {
            (_, Access::WriteMostly) => Strategy::NonBlocking,
            (Scope::PerFlow, _) => Strategy::CacheFlush,
            (Scope::CrossFlow, Access::ReadHeavy) => Strategy::CacheCallback,
            (Scope::CrossFlow, Access::ReadWriteOften) => Strategy::CacheExclusive,
        },
    }
}

/// A state object as an NF declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Unique within the NF; 16 bits as in the update vector.
    pub id: u16,
    /// `nf:object`, shown by the store's RESP face.
    pub name: String,
    pub scope: Scope,
    pub access: Access,
    pub key_kind: KeyKind,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StateError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("object {0} was not declared")]
    UnknownObject(u16),
    #[error("custom operation {0:?} is not registered in the store")]
    UnknownCustomOp(String),
}

#[derive(Clone, Debug)]
struct Cached {
    value: Value,
    version: u64,
}

struct Obj {
    spec: ObjectSpec,
    strategy: Strategy,
    /// CacheExclusive: this instance currently has the object to itself.
    exclusive: bool,
}

/// What [`StateClient::preload_owned`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preloaded {
    /// Per-flow objects loaded into the cache; `None` when they were over the limit.
    pub flows: Option<usize>,
    /// The newest clock this instance id has logged updates or reads for in the store (0:
    /// none). A replacement's predecessor made no store operation for any newer clock, so a
    /// replayed packet with a newer clock never reached it, or left no trace in the state.
    pub newest_clock: u64,
}

/// Counters of state access.
#[derive(Default, Debug, Clone, Copy)]
pub struct StateStats {
    pub ops: u64,
    pub local_ops: u64,
    pub remote_calls: u64,
    pub nonblocking: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub callbacks_applied: u64,
}

/// One NF instance's access to its state.
pub struct StateClient {
    vertex: u16,
    instance: u16,
    mode: Mode,
    objs: Vec<Option<Obj>>,
    customs: CustomOps,
    store: Option<StoreClient>,
    /// Per-flow objects: traditional state and caches. Kept apart from the cross-flow ones so
    /// that dropping either kind (a handover, an object becoming shared) scans only its own.
    flows: HashMap<Key, Cached>,
    /// Cross-flow objects: traditional state and caches.
    shared: HashMap<Key, Cached>,
    /// Per-flow cache misses mean "no state yet" (a fresh instance that saw its flows from
    /// the start); a failover or clone instance must ask the store instead.
    fresh: bool,
    clock: u64,
    op_index: u32,
    vector: u32,
    replay: bool,
    rng: u64,
    nflog: NfLog,
    /// Keep the NF-side log of shared operations (for recovering a remote store).
    log_shared: bool,
    handovers: Vec<(ObjKey, Value)>,
    /// Counters' increments being gathered into runs before they are queued: a slot per
    /// `object % RUN_SLOTS`, `open_runs` of them in use.
    runs: [Option<Run>; RUN_SLOTS],
    open_runs: u8,
    pub stats: StateStats,
}

/// Consecutive packets' blind increments of one cross-flow counter (no key bytes), gathered
/// as one operation (`Op.more_run`) before anything is queued for the store: per packet,
/// one comparison and one addition. Queued (closed) at the end of a burst, before anything
/// else is queued that is not per-flow, and when a packet does not extend it.
#[derive(Clone, Copy, Debug)]
struct Run {
    obj: u16,
    first: u64,
    more: u32,
    op_index: u32,
    num: i64,
    flags: u32,
}

impl Drop for StateClient {
    /// Open runs are queued, for the store client to send as it closes.
    fn drop(&mut self) {
        self.close_runs();
    }
}

/// Counters that can gather runs at once (a packet counter and a per-protocol one are the
/// common pair).
const RUN_SLOTS: usize = 4;
/// The most packets one run carries (the store client's folds stop at the same size).
const RUN_MAX: u32 = 1024;

const F_COUNTED: u32 = OpFlag::FlagCounted as u32;
const F_REPLAY: u32 = OpFlag::FlagReplay as u32;
const F_WANT_TS: u32 = OpFlag::FlagWantTs as u32;

impl StateClient {
    /// State kept in the instance (traditional mode).
    pub fn local(vertex: u16, instance: u16, objects: &[ObjectSpec], customs: CustomOps) -> Self {
        Self::build(vertex, instance, Mode::Traditional, objects, customs, None)
    }

    /// State kept in the store in `mode`. Declares the objects' names to every shard (sent
    /// without waiting: a connection's operations are applied in order, and the names only
    /// label keys for the RESP face).
    pub fn external(
        vertex: u16,
        instance: u16,
        mode: Mode,
        objects: &[ObjectSpec],
        customs: CustomOps,
        mut store: StoreClient,
    ) -> Result<Self, StateError> {
        freer();
        for o in objects {
            for s in 0..store.shards() {
                store.submit_to(s, ops::declare(vertex, o.id, &o.name, o.key_kind));
            }
        }
        store.flush()?;
        Ok(Self::build(
            vertex,
            instance,
            mode,
            objects,
            customs,
            Some(store),
        ))
    }

    fn build(
        vertex: u16,
        instance: u16,
        mode: Mode,
        objects: &[ObjectSpec],
        customs: CustomOps,
        store: Option<StoreClient>,
    ) -> Self {
        let mut objs: Vec<Option<Obj>> = Vec::new();
        for o in objects {
            let i = o.id as usize;
            if objs.len() <= i {
                objs.resize_with(i + 1, || None);
            }
            objs[i] = Some(Obj {
                spec: o.clone(),
                strategy: if store.is_some() {
                    strategy(mode, o.scope, o.access)
                } else {
                    Strategy::Local
                },
                exclusive: true,
            });
        }
        StateClient {
            vertex,
            instance,
            mode: if store.is_some() {
                mode
            } else {
                Mode::Traditional
            },
            objs,
            customs,
            store,
            flows: HashMap::new(),
            shared: HashMap::new(),
            fresh: true,
            clock: 0,
            op_index: 0,
            vector: 0,
            replay: false,
            rng: 0x2545_F491_4F6C_DD1D ^ (u64::from(vertex) << 32 | u64::from(instance)),
            nflog: NfLog::default(),
            log_shared: false,
            handovers: Vec::new(),
            runs: [None; RUN_SLOTS],
            open_runs: 0,
            stats: StateStats::default(),
        }
    }

    /// Adds the current packet's increment of counter `obj` to the counter's open run, or
    /// queues that run (if any) and opens another with it. The caller checked that the
    /// increment may go in a run (blind, cross-flow, no key bytes, clocked, no NF-side log).
    #[inline]
    fn extend_run(&mut self, obj: u16, num: i64, flags: u32, op_index: u32) {
        let clock = self.clock;
        let i = usize::from(obj) % RUN_SLOTS;
        if let Some(r) = &mut self.runs[i] {
            if r.obj == obj
                && r.op_index == op_index
                && r.num == num
                && r.flags == flags
                && r.more < RUN_MAX
                && crate::shard::extends_run(r.first, r.more, clock)
            {
                r.more += 1;
                return;
            }
            self.close_run(i);
        }
        self.runs[i] = Some(Run {
            obj,
            first: clock,
            more: 0,
            op_index,
            num,
            flags,
        });
        self.open_runs += 1;
    }

    /// Queues the open run in slot `i` as one operation.
    fn close_run(&mut self, i: usize) {
        let Some(r) = self.runs[i].take() else {
            return;
        };
        self.open_runs -= 1;
        let op = wire::Op {
            code: OpCode::OpIncr as i32,
            vertex: u32::from(self.vertex),
            object: u32::from(r.obj),
            num: r.num,
            clock: r.first,
            instance: u32::from(self.instance),
            op_index: r.op_index,
            flags: r.flags | OpFlag::FlagNonblocking as u32,
            more_run: r.more,
            ..Default::default()
        };
        if let Some(s) = self.store.as_mut() {
            s.submit_run(op);
        }
    }

    /// Queues every open run: before anything else on a counter, a flush or a wait.
    #[inline]
    fn close_runs(&mut self) {
        if self.open_runs > 0 {
            for i in 0..RUN_SLOTS {
                self.close_run(i);
            }
        }
    }

    /// The store client, with every open run queued first.
    fn store_opt(&mut self) -> Option<&mut StoreClient> {
        self.close_runs();
        self.store.as_mut()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn vertex(&self) -> u16 {
        self.vertex
    }

    pub fn instance(&self) -> u16 {
        self.instance
    }

    pub fn strategy_of(&self, obj: u16) -> Option<Strategy> {
        self.objs.get(obj as usize)?.as_ref().map(|o| o.strategy)
    }

    /// A fresh instance treats per-flow cache misses as "no state"; a replacement or clone
    /// instance (`fresh = false`) loads them from the store.
    pub fn set_fresh(&mut self, fresh: bool) {
        self.fresh = fresh;
    }

    /// Loads every per-flow object this instance owns into the cache (those not cached
    /// already), one call per shard, and from then on treats misses as "no state": a
    /// replacement instance would otherwise wait for the store on the first packet of each of
    /// its flows. Call it only when the store has every update of this instance's flows: after
    /// the failed instance's connections are gone (`TcpOptions::supersedes`). A replay may
    /// follow: what it re-does goes through the store and is cached as the store has it.
    /// Returns how many objects were loaded (`None` if they exceed `limit` bytes of values
    /// on some shard: nothing is loaded then, and misses keep asking the store), and the
    /// newest clock this instance id has logged in the store.
    pub fn preload_owned(&mut self, limit: usize) -> Result<Preloaded, StateError> {
        if self.store.is_none() || self.mode == Mode::Traditional {
            return Ok(Preloaded {
                flows: Some(0),
                newest_clock: 0,
            });
        }
        let (vertex, instance) = (self.vertex, self.instance);
        let s = self.store_mut();
        let mut found = Vec::new();
        let (mut newest_clock, mut overflow) = (0, false);
        for shard in 0..s.shards() {
            let r = s.call_shard(shard, ops::scan_owned(vertex, instance, limit))?;
            newest_clock = newest_clock.max(r.newest_clock);
            overflow |= r.status == Status::Overflow as i32;
            found.push(r);
        }
        self.stats.remote_calls += found.len() as u64;
        if overflow {
            return Ok(Preloaded {
                flows: None,
                newest_clock,
            });
        }
        let mut n = 0;
        for r in found {
            for o in r.owned {
                let Ok(object) = u16::try_from(o.object) else {
                    continue;
                };
                let cached = matches!(
                    self.strategy_of(object),
                    Some(Strategy::CacheFlush | Strategy::CacheExclusive)
                );
                if !cached {
                    continue;
                }
                let k = Key::new(vertex, object, true, &o.sub);
                if let hashbrown::hash_map::Entry::Vacant(e) = self.flows.entry(k) {
                    e.insert(Cached {
                        value: Value::from_wire_owned(o.value.as_ref()),
                        version: r.version,
                    });
                    n += 1;
                }
            }
        }
        self.fresh = true;
        Ok(Preloaded {
            flows: Some(n),
            newest_clock,
        })
    }

    pub fn store(&mut self) -> Option<&mut StoreClient> {
        self.store_opt()
    }

    /// Turns the NF-side log of shared operations on (needed to recover a store that can
    /// fail independently of this instance).
    pub fn set_log_shared(&mut self, on: bool) {
        self.log_shared = on;
    }

    pub fn nflog(&mut self) -> &mut NfLog {
        &mut self.nflog
    }

    /// Starts processing a packet with logical clock `clock` (replayed or not).
    pub fn begin_packet(&mut self, clock: u64, replay: bool) {
        self.clock = clock;
        self.op_index = 0;
        self.vector = 0;
        self.replay = replay;
    }

    /// Ends the packet: the XOR of the ids of every counted update it caused here.
    pub fn end_packet(&mut self) -> u32 {
        self.vector
    }

    /// Sends everything queued to the store and handles what arrived (call once per burst).
    pub fn flush(&mut self) -> Result<(), StateError> {
        if let Some(s) = self.store_opt() {
            s.flush()?;
            s.poll()?;
        }
        self.pump();
        Ok(())
    }

    /// As [`Self::flush`], but a shard's queued operations may wait for the next call when
    /// there are fewer than `min` of them (see [`StoreClient::flush_coalesced`]): for a
    /// dataplane that calls this after every burst and waits for nothing it sent.
    pub fn flush_coalesced(&mut self, min: usize) -> Result<(), StateError> {
        if let Some(s) = self.store_opt() {
            s.flush_coalesced(min)?;
            s.poll()?;
        }
        self.pump();
        Ok(())
    }

    /// Waits until the store has acknowledged every operation sent so far.
    pub fn sync(&mut self) -> Result<(), StateError> {
        if let Some(s) = self.store_opt() {
            s.sync()?;
        }
        self.pump();
        Ok(())
    }

    /// Handles callbacks and handovers that arrived.
    fn pump(&mut self) {
        let Some(s) = self.store.as_mut() else { return };
        while let Some(Pushed { push, .. }) = s.take_push() {
            let k = KeyRef {
                vertex: push.vertex as u16,
                object: push.object as u16,
                per_flow: push.per_flow,
                sub: &push.sub,
            };
            if push.kind == PushKind::PushUpdate as i32 {
                let cache = if k.per_flow {
                    &mut self.flows
                } else {
                    &mut self.shared
                };
                if let Some(c) = cache.get_mut(&k) {
                    if push.version > c.version {
                        c.value = Value::from_wire_owned(push.value.as_ref());
                        c.version = push.version;
                        self.stats.callbacks_applied += 1;
                    }
                }
            } else if push.kind == PushKind::PushHandover as i32 {
                let v = Value::from_wire_owned(push.value.as_ref());
                self.handovers.push((
                    ObjKey {
                        vertex: k.vertex,
                        object: k.object,
                        per_flow: true,
                        sub: push.sub.clone(),
                    },
                    v,
                ));
            }
        }
    }

    /// Ownership grants that arrived since the last call (handover step 6).
    pub fn take_handovers(&mut self) -> Vec<(ObjKey, Value)> {
        self.pump();
        std::mem::take(&mut self.handovers)
    }

    /// Whether this instance has a cross-flow read/write-often object to itself. Becoming
    /// shared flushes (waits for the store to have every update) and drops the cache; objects
    /// of other strategies keep no copy that exclusivity would make valid, so nothing changes
    /// for them.
    pub fn set_exclusive(&mut self, obj: u16, exclusive: bool) -> Result<(), StateError> {
        self.set_exclusive_many(&[(obj, exclusive)], true)
    }

    /// [`Self::set_exclusive`] for several objects at once (a change of the vertex's
    /// parallelism), with one wait for the store whatever the number of objects that become
    /// shared. Without `wait` the caller waits for the store itself before another instance
    /// may use those objects (a handover's release does): the cache holds no update the store
    /// was not sent, so dropping it first is safe.
    pub fn set_exclusive_many(
        &mut self,
        change: &[(u16, bool)],
        wait: bool,
    ) -> Result<(), StateError> {
        // A run gathered under the old strategy goes before anything under the new one.
        self.close_runs();
        let mut shared_now = Vec::new();
        for &(obj, exclusive) in change {
            let (was, strategy) = match self.objs.get_mut(obj as usize).and_then(|o| o.as_mut()) {
                Some(o) => (std::mem::replace(&mut o.exclusive, exclusive), o.strategy),
                None => return Err(StateError::UnknownObject(obj)),
            };
            if was && !exclusive && strategy == Strategy::CacheExclusive {
                shared_now.push(obj);
            }
        }
        if shared_now.is_empty() {
            return Ok(());
        }
        if wait {
            self.sync()?;
        }
        let v = self.vertex;
        let gone: Vec<Value> = self
            .shared
            .extract_if(|k, _| k.vertex == v && shared_now.contains(&k.object))
            .map(|(_, c)| c.value)
            .collect();
        dispose(gone);
        Ok(())
    }

    /// Drops cached per-flow objects of a flow that moved away, after making sure the store
    /// has every update (handover steps 1 and 5).
    pub fn flush_flow(&mut self, obj: u16, sub: &[u8]) -> Result<(), StateError> {
        self.sync()?;
        let k = KeyRef {
            vertex: self.vertex,
            object: obj,
            per_flow: true,
            sub,
        };
        self.flows.remove(&k);
        Ok(())
    }

    /// Hands over the objects of flows that move to another instance (handover step 5):
    /// drops the cached objects `moved` selects (given the key and its declared key kind),
    /// gives up ownership of the per-flow ones so the new instance can take them, and waits
    /// until the store has every earlier update and the releases. Returns how many objects
    /// were handed over.
    ///
    /// The releases go as `OP_RELEASE_MANY` operations, one per shard and per thousand or so
    /// objects, queued behind this instance's earlier updates on the same shard: the store
    /// applies those first, so a waiting instance is handed the final value without a
    /// separate flush round trip.
    pub fn evict(
        &mut self,
        mut moved: impl FnMut(&Key, KeyKind) -> bool,
    ) -> Result<usize, StateError> {
        self.close_runs();
        let Some(store) = self.store.as_mut() else {
            // Traditional state lives only here: it cannot move.
            return Ok(0);
        };
        let (v, instance) = (self.vertex, self.instance);
        let shards = store.shards();
        let objs = &self.objs;
        let mut pick = |k: &Key| external_kind(objs, v, k).is_some_and(|kind| moved(k, kind));
        let mut lists: Vec<Vec<u8>> = vec![Vec::new(); shards as usize];
        let mut gone = Vec::new();
        for (k, c) in self.flows.extract_if(|k, _| pick(k)) {
            let s = k.as_ref().shard(shards);
            let list = &mut lists[s as usize];
            if list.len() + packed::size(k.sub.as_slice()) > RELEASE_LIST_BYTES && !list.is_empty()
            {
                let keys = Bytes::from(std::mem::take(list));
                store.submit_to(s, nonblocking(ops::release_many(v, instance, keys)));
                // The shard starts on these while the scan goes on. A failure to send shows
                // again in the sync below, which also resends.
                let _ = store.flush();
            }
            if !packed::push(list, k.object, k.sub.as_slice()) {
                // A key too long for the packed list goes on its own.
                release_key(store, s, instance, &k);
            }
            gone.push(c.value);
        }
        for (_, c) in self.shared.extract_if(|k, _| pick(k)) {
            gone.push(c.value);
        }
        for (s, list) in lists.into_iter().enumerate() {
            if !list.is_empty() {
                let op = ops::release_many(v, instance, Bytes::from(list));
                store.submit_to(s as u32, nonblocking(op));
            }
        }
        let n = gone.len();
        self.sync()?;
        dispose(gone);
        Ok(n)
    }

    /// The request that names this instance's buckets `set` under `split`, if every
    /// per-flow object it keeps in the store has a bucket under `split` (see
    /// [`crate::bucket::bucketed`]); `None` when some object's keys do not say their bucket,
    /// which then moves object by object ([`Self::evict`]).
    fn bucket_request(&self, split: Split, set: BucketSet) -> Option<Buckets> {
        let mut kinds = Vec::new();
        for o in self.objs.iter().flatten() {
            if o.spec.scope != Scope::PerFlow || o.strategy == Strategy::Local {
                continue;
            }
            if !crate::bucket::bucketed(o.spec.key_kind, split) || kinds.len() == 255 {
                return None;
            }
            kinds.push((o.spec.id, o.spec.key_kind));
        }
        Some(Buckets { split, kinds, set })
    }

    /// Hands over the per-flow objects of whole buckets (handover step 5) without naming
    /// them: one `OP_RELEASE_BUCKETS` per shard, queued behind this instance's earlier updates,
    /// then a wait until the store has everything. The store then reads those objects as
    /// owned by nobody, so the handover costs nothing per flow. Returns false, having done
    /// nothing, when some per-flow object cannot be released by bucket under `split` (use
    /// [`Self::evict`]). The cache still holds the moved flows: [`Self::forget_moved`] drops
    /// them, and must run before this instance serves another packet.
    pub fn release_buckets(&mut self, split: Split, set: BucketSet) -> Result<bool, StateError> {
        let Some(req) = self.bucket_request(split, set) else {
            return Ok(false);
        };
        if self.submit_buckets(OpCode::OpReleaseBuckets, &req) {
            self.sync()?;
        }
        // Without a store (traditional state lives only here) there is nothing to hand over.
        Ok(true)
    }

    /// Takes buckets back (a move to this instance, before its first packet of them): objects
    /// of them that this instance released by bucket, and that nobody took since, are its
    /// own again. Queued behind this instance's earlier operations; nothing to wait for.
    pub fn acquire_buckets(&mut self, split: Split, set: BucketSet) {
        if let Some(req) = self.bucket_request(split, set) {
            self.submit_buckets(OpCode::OpAcquireBuckets, &req);
        }
    }

    /// Queues a bucket request (`code`) to every shard without waiting; false without a store.
    fn submit_buckets(&mut self, code: OpCode, req: &Buckets) -> bool {
        let (v, instance) = (self.vertex, self.instance);
        let Some(store) = self.store_opt() else {
            return false;
        };
        for s in 0..store.shards() {
            store.submit_to(s, nonblocking(ops::buckets(code, v, instance, req)));
        }
        true
    }

    /// Drops the cached objects of flows that moved away after [`Self::release_buckets`]
    /// handed them over; returns how many. A per-flow key the store could not place in a
    /// bucket (malformed for its kind) is released here one by one.
    pub fn forget_moved(
        &mut self,
        mut moved: impl FnMut(&Key, KeyKind) -> Option<bool>,
    ) -> Result<usize, StateError> {
        let v = self.vertex;
        let objs = &self.objs;
        let mut lost = Vec::new();
        let mut pick = |k: &Key, per_flow: bool| match external_kind(objs, v, k) {
            None => false,
            Some(kind) => moved(k, kind).unwrap_or_else(|| {
                if per_flow {
                    lost.push(k.clone());
                }
                true
            }),
        };
        let mut gone: Vec<Value> = self
            .flows
            .extract_if(|k, _| pick(k, true))
            .map(|(_, c)| c.value)
            .collect();
        gone.extend(
            self.shared
                .extract_if(|k, _| pick(k, false))
                .map(|(_, c)| c.value),
        );
        let n = gone.len();
        dispose(gone);
        if !lost.is_empty() {
            let instance = self.instance;
            if let Some(store) = self.store_opt() {
                for k in lost {
                    let s = k.as_ref().shard(store.shards());
                    release_key(store, s, instance, &k);
                }
            }
            self.sync()?;
        }
        Ok(n)
    }

    fn obj(&self, obj: u16) -> Result<(Strategy, Scope, bool), StateError> {
        match self.objs.get(obj as usize).and_then(|o| o.as_ref()) {
            Some(o) => Ok((o.strategy, o.spec.scope, o.exclusive)),
            None => Err(StateError::UnknownObject(obj)),
        }
    }

    fn key(&self, obj: u16, scope: Scope, sub: &[u8]) -> ObjKey {
        ObjKey {
            vertex: self.vertex,
            object: obj,
            per_flow: scope == Scope::PerFlow,
            sub: Bytes::copy_from_slice(sub),
        }
    }

    /// Stamps an update with the packet's clock and counts it in the update vector.
    fn stamp(&mut self, op: wire::Op, obj: u16) -> wire::Op {
        let idx = self.op_index;
        self.op_index += 1;
        let mut flags = F_COUNTED;
        if self.replay {
            flags |= F_REPLAY;
        }
        if self.clock != 0 {
            self.vector ^= update_id(self.vertex, self.instance, obj, idx);
        }
        ops::with_clock(op, self.clock, self.instance, idx, flags)
    }

    /// The cache key of object `obj` (of `scope`) of this vertex; borrows only `sub`, so the
    /// caller may still change the rest of `self` while it holds the key.
    fn key_ref<'a>(&self, obj: u16, scope: Scope, sub: &'a [u8]) -> KeyRef<'a> {
        KeyRef {
            vertex: self.vertex,
            object: obj,
            per_flow: scope == Scope::PerFlow,
            sub,
        }
    }

    fn cache(&self, per_flow: bool) -> &HashMap<Key, Cached> {
        if per_flow {
            &self.flows
        } else {
            &self.shared
        }
    }

    fn cache_mut(&mut self, per_flow: bool) -> &mut HashMap<Key, Cached> {
        if per_flow {
            &mut self.flows
        } else {
            &mut self.shared
        }
    }

    /// The store client, with every open run queued first (see [`Run`]).
    fn store_mut(&mut self) -> &mut StoreClient {
        self.store_for(false)
    }

    /// The store client for an operation on a per-flow key (no run shares one, so the runs
    /// stay open) or on a cross-flow one (every open run queued first).
    fn store_for(&mut self, per_flow: bool) -> &mut StoreClient {
        if !per_flow {
            self.close_runs();
        }
        self.store
            .as_mut()
            .expect("external strategies have a store")
    }

    /// Reads an object through `f`. A value held here (cached, or local state) is lent to
    /// `f` rather than copied: a flow's state is read on every packet. Otherwise as
    /// [`Self::get`].
    pub fn get_with<R>(
        &mut self,
        obj: u16,
        sub: &[u8],
        f: impl FnOnce(&Value) -> R,
    ) -> Result<R, StateError> {
        let (strat, scope, excl) = self.obj(obj)?;
        let held = match strat {
            Strategy::Local => true,
            // A replayed packet reads the store (see `get`).
            Strategy::CacheFlush | Strategy::CacheCallback => !(self.replay && self.clock != 0),
            Strategy::CacheExclusive => excl && !(self.replay && self.clock != 0),
            Strategy::Blocking | Strategy::NonBlocking => false,
        };
        if held {
            let k = self.key_ref(obj, scope, sub);
            let cache = if k.per_flow {
                &self.flows
            } else {
                &self.shared
            };
            if let Some(c) = cache.get(&k) {
                self.stats.ops += 1;
                if strat == Strategy::Local {
                    self.stats.local_ops += 1;
                } else {
                    self.stats.cache_hits += 1;
                }
                return Ok(f(&c.value));
            }
        }
        self.get(obj, sub).map(|v| f(&v))
    }

    /// Reads an object.
    pub fn get(&mut self, obj: u16, sub: &[u8]) -> Result<Value, StateError> {
        self.stats.ops += 1;
        let (strat, scope, excl) = self.obj(obj)?;
        let k = self.key_ref(obj, scope, sub);
        if self.replay && strat != Strategy::Local && self.clock != 0 {
            // A replayed packet sees the state its first processing saw, not the cache.
            let mut op = self.key(obj, scope, sub).get();
            op.clock = self.clock;
            // After this packet's own earlier updates, before its later ones.
            op.op_index = self.op_index;
            op.instance = u32::from(self.instance);
            op.flags |= OpFlag::FlagAsOf as u32;
            self.stats.remote_calls += 1;
            let r = self.store_mut().call(op)?;
            return Ok(Value::from_wire_owned(r.value.as_ref()));
        }
        match strat {
            Strategy::Local => {
                self.stats.local_ops += 1;
                Ok(self
                    .cache(k.per_flow)
                    .get(&k)
                    .map(|c| c.value.clone())
                    .unwrap_or_default())
            }
            Strategy::CacheFlush | Strategy::CacheCallback => self.cached(obj, scope, sub),
            Strategy::CacheExclusive if excl => self.cached(obj, scope, sub),
            Strategy::Blocking | Strategy::NonBlocking | Strategy::CacheExclusive => {
                self.remote_get(obj, scope, sub).map(|(v, _)| v)
            }
        }
    }

    fn remote_get(
        &mut self,
        obj: u16,
        scope: Scope,
        sub: &[u8],
    ) -> Result<(Value, u64), StateError> {
        let key = self.key(obj, scope, sub);
        let mut op = key.get();
        if scope == Scope::CrossFlow {
            op.flags |= F_WANT_TS;
        }
        self.stats.remote_calls += 1;
        let r = self.store_mut().call(op)?;
        let v = Value::from_wire_owned(r.value.as_ref());
        if scope == Scope::CrossFlow && self.log_shared {
            let shard = self.store_mut().shard_of(&key.get());
            self.nflog.record_read(shard, key, v.clone(), r.ts);
        }
        Ok((v, r.version))
    }

    /// The cached value, loading it on a miss. A hit is one table lookup: this is every
    /// packet's read of its flow's state.
    fn cached(&mut self, obj: u16, scope: Scope, sub: &[u8]) -> Result<Value, StateError> {
        let k = self.key_ref(obj, scope, sub);
        let cache = if k.per_flow {
            &self.flows
        } else {
            &self.shared
        };
        if let Some(c) = cache.get(&k) {
            self.stats.cache_hits += 1;
            return Ok(c.value.clone());
        }
        self.stats.cache_misses += 1;
        let c = self.load(obj, scope, sub)?;
        let v = c.value.clone();
        self.cache_mut(k.per_flow).insert(k.to_key(), c);
        Ok(v)
    }

    fn load(&mut self, obj: u16, scope: Scope, sub: &[u8]) -> Result<Cached, StateError> {
        let (strat, _, _) = self.obj(obj)?;
        if strat == Strategy::CacheFlush && self.fresh && !self.replay {
            return Ok(Cached {
                value: Value::Nil,
                version: 0,
            });
        }
        if strat == Strategy::CacheCallback {
            let key = self.key(obj, scope, sub);
            self.stats.remote_calls += 1;
            let r = self.store_mut().call(key.subscribe())?;
            return Ok(Cached {
                value: Value::from_wire_owned(r.value.as_ref()),
                version: r.version,
            });
        }
        let (value, version) = self.remote_get(obj, scope, sub)?;
        Ok(Cached { value, version })
    }

    /// Applies an update; returns its status and result. `need` says whether the caller
    /// uses the result (a blind update of a write-mostly object then costs no wait).
    fn update(
        &mut self,
        obj: u16,
        sub: &[u8],
        op: wire::Op,
        need: bool,
    ) -> Result<(Status, Value), StateError> {
        self.stats.ops += 1;
        let (strat, scope, excl) = self.obj(obj)?;
        let code = OpCode::try_from(op.code).unwrap_or(OpCode::OpNoop);
        let wait_ack = self.mode != Mode::EoCNa;
        match strat {
            Strategy::Local => {
                self.stats.local_ops += 1;
                let k = self.key_ref(obj, scope, sub);
                let cache = if k.per_flow {
                    &mut self.flows
                } else {
                    &mut self.shared
                };
                let (st, res, emptied) = match cache.get_mut(&k) {
                    Some(c) => {
                        let (st, res, _) = apply_update(&self.customs, code, &op, &mut c.value);
                        (st, res, c.value.is_nil())
                    }
                    None => {
                        let mut value = Value::Nil;
                        let (st, res, _) = apply_update(&self.customs, code, &op, &mut value);
                        if !value.is_nil() {
                            cache.insert(k.to_key(), Cached { value, version: 0 });
                        }
                        (st, res, false)
                    }
                };
                if emptied {
                    cache.remove(&k);
                }
                Ok((st, res))
            }
            Strategy::Blocking => self.remote_update(obj, scope, op, true),
            Strategy::NonBlocking => self.remote_update(obj, scope, op, need || wait_ack),
            Strategy::CacheExclusive if !excl => {
                self.remote_update(obj, scope, op, need || wait_ack)
            }
            // Updates are serialised by the store; the cache takes the value the store reports
            // right after this update (and ignores older callbacks).
            Strategy::CacheCallback => self.update_in_store_then_cache(obj, scope, sub, op),
            Strategy::CacheFlush | Strategy::CacheExclusive => {
                if self.replay {
                    // The store decides (it may have applied this update before).
                    return self.update_in_store_then_cache(obj, scope, sub, op);
                }
                let k = self.key_ref(obj, scope, sub);
                // One table lookup on a hit.
                let cache = if k.per_flow {
                    &mut self.flows
                } else {
                    &mut self.shared
                };
                let (st, res) = match cache.get_mut(&k) {
                    Some(c) => {
                        self.stats.cache_hits += 1;
                        let (st, res, _) = apply_update(&self.customs, code, &op, &mut c.value);
                        (st, res)
                    }
                    None => {
                        self.stats.cache_misses += 1;
                        let mut c = self.load(obj, scope, sub)?;
                        let (st, res, _) = apply_update(&self.customs, code, &op, &mut c.value);
                        self.cache_mut(k.per_flow).insert(k.to_key(), c);
                        (st, res)
                    }
                };
                // The operation (not the value) goes to the store: it stays correct however
                // the store interleaves it with others (§3.3.3).
                self.remote_update(obj, scope, op, wait_ack)?;
                Ok((st, res))
            }
        }
    }

    /// Applies an update in the store and caches the value the store holds right after it
    /// (one round trip: the update and a read in one batch).
    fn update_in_store_then_cache(
        &mut self,
        obj: u16,
        scope: Scope,
        sub: &[u8],
        op: wire::Op,
    ) -> Result<(Status, Value), StateError> {
        let key = self.key(obj, scope, sub);
        let code = OpCode::try_from(op.code).unwrap_or(OpCode::OpNoop);
        let stamped = self.stamp(op, obj);
        let (shard, seq) = self.send(key.per_flow, stamped, false);
        self.stats.remote_calls += 1;
        let k = self.key_ref(obj, scope, sub);
        let callback = self.obj(obj)?.0 == Strategy::CacheCallback;
        if self.replay && !callback && is_list_op(code) {
            // A replayed push or pop on a list (a NAT's port pool holds tens of thousands of
            // items): copying the whole list back after every replayed packet made a replay
            // of a few packets take tens of milliseconds. The copy is dropped instead; the
            // first access after the replay loads the list once, with every replayed update
            // applied (the store serves this connection's operations in order).
            let r = self.store_mut().wait_reply(shard, seq)?;
            self.cache_mut(k.per_flow).remove(&k);
            return Ok((status_of(&r), Value::from_wire_owned(r.value.as_ref())));
        }
        let s = self.store_mut();
        let (_, gseq) = s.submit(key.get());
        let r = s.wait_reply(shard, seq)?;
        let g = s.wait_reply(shard, gseq)?;
        self.cache_mut(k.per_flow).insert(
            k.to_key(),
            Cached {
                value: Value::from_wire_owned(g.value.as_ref()),
                version: g.version,
            },
        );
        Ok((status_of(&r), Value::from_wire_owned(r.value.as_ref())))
    }

    fn remote_update(
        &mut self,
        obj: u16,
        scope: Scope,
        op: wire::Op,
        wait: bool,
    ) -> Result<(Status, Value), StateError> {
        let stamped = self.stamp(op, obj);
        let (shard, seq) = self.send(scope == Scope::PerFlow, stamped, !wait);
        if wait {
            self.stats.remote_calls += 1;
            let r = self.store_mut().wait_reply(shard, seq)?;
            Ok((status_of(&r), Value::from_wire_owned(r.value.as_ref())))
        } else {
            self.stats.nonblocking += 1;
            Ok((Status::Ok, Value::Nil))
        }
    }

    /// Queues a stamped update, logging it in the NF-side log if it is shared state.
    #[inline]
    fn send(&mut self, per_flow: bool, mut op: wire::Op, nonblocking: bool) -> (u32, u64) {
        if nonblocking {
            op.flags |= OpFlag::FlagNonblocking as u32;
        }
        let logged = (self.log_shared && !per_flow).then(|| op.clone());
        let (shard, seq) = self.store_for(per_flow).submit(op);
        if let Some(mut op) = logged {
            op.seq = seq;
            self.nflog.record_update(shard, op);
        }
        (shard, seq)
    }

    /// Whether a blind update (its result unused) of `obj` goes to the store without
    /// waiting and without touching a cache: write-mostly objects, and shared read/write-often
    /// ones while shared, in eo-c-na. Returns whether the object is per-flow.
    fn blind_remote(&self, obj: u16) -> Result<Option<bool>, StateError> {
        let (strat, scope, excl) = self.obj(obj)?;
        let remote = match strat {
            Strategy::NonBlocking => true,
            Strategy::CacheExclusive => !excl,
            _ => false,
        };
        Ok((remote && self.mode == Mode::EoCNa).then_some(scope == Scope::PerFlow))
    }

    /// Queues a blind update [`Self::blind_remote`] accepted, as [`Self::update`] would, but
    /// with the operation built once and already stamped: the per-packet path then moves and
    /// copies it as little as possible.
    fn queue_blind(
        &mut self,
        obj: u16,
        per_flow: bool,
        sub: &[u8],
        code: OpCode,
        num: i64,
        val: Option<wire::Value>,
    ) {
        self.stats.ops += 1;
        self.stats.nonblocking += 1;
        let idx = self.op_index;
        self.op_index += 1;
        let mut flags = F_COUNTED;
        if self.replay {
            flags |= F_REPLAY;
        }
        if self.clock != 0 {
            self.vector ^= update_id(self.vertex, self.instance, obj, idx);
        }
        // The NF-side log keeps one entry per sequence number, so folding is for stores that
        // are not recovered from it.
        if code == OpCode::OpIncr && !self.log_shared && self.clock != 0 {
            if !per_flow && sub.is_empty() {
                self.extend_run(obj, num, flags, idx);
                return;
            }
            let k = KeyRef {
                vertex: self.vertex,
                object: obj,
                per_flow,
                sub,
            };
            let flags = flags | OpFlag::FlagNonblocking as u32;
            let (instance, clock) = (u32::from(self.instance), self.clock);
            if self
                .store_for(per_flow)
                .fold_incr(k, num, flags, instance, clock, idx)
                .is_some()
            {
                return;
            }
        }
        let op = wire::Op {
            code: code as i32,
            vertex: u32::from(self.vertex),
            object: u32::from(obj),
            per_flow,
            // Keys of cross-flow counters are often empty: no buffer for those.
            sub: if sub.is_empty() {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(sub)
            },
            num,
            val,
            clock: self.clock,
            instance: u32::from(self.instance),
            op_index: idx,
            flags,
            ..Default::default()
        };
        self.send(per_flow, op, true);
    }

    /// An increment of an NF-local integer (traditional mode: counters every packet
    /// bumps), done in place with no operation built. Only the case whose outcome is
    /// plain (an existing integer that does not overflow) is taken here; every other one
    /// (a new key, another type, overflow) returns false and goes through
    /// [`apply_update`], so both give the same results.
    fn local_incr(&mut self, obj: u16, sub: &[u8], by: i64) -> Result<bool, StateError> {
        let (strat, scope, _) = self.obj(obj)?;
        if strat != Strategy::Local {
            return Ok(false);
        }
        let k = self.key_ref(obj, scope, sub);
        let Some(c) = self.cache_mut(k.per_flow).get_mut(&k) else {
            return Ok(false);
        };
        let Value::Int(i) = &mut c.value else {
            return Ok(false);
        };
        let Some(n) = i.checked_add(by) else {
            return Ok(false);
        };
        *i = n;
        self.stats.ops += 1;
        self.stats.local_ops += 1;
        Ok(true)
    }

    fn obj_op(&self, obj: u16, sub: &[u8], code: OpCode) -> Result<wire::Op, StateError> {
        let (_, scope, _) = self.obj(obj)?;
        Ok(self.key(obj, scope, sub).op(code))
    }

    pub fn set(&mut self, obj: u16, sub: &[u8], v: Value) -> Result<(), StateError> {
        if let Some(per_flow) = self.blind_remote(obj)? {
            self.queue_blind(obj, per_flow, sub, OpCode::OpSet, 0, v.to_wire());
            return Ok(());
        }
        let mut op = self.obj_op(obj, sub, OpCode::OpSet)?;
        op.val = v.to_wire();
        self.update(obj, sub, op, false).map(|_| ())
    }

    pub fn del(&mut self, obj: u16, sub: &[u8]) -> Result<(), StateError> {
        if let Some(per_flow) = self.blind_remote(obj)? {
            self.queue_blind(obj, per_flow, sub, OpCode::OpDel, 0, None);
            return Ok(());
        }
        let op = self.obj_op(obj, sub, OpCode::OpDel)?;
        self.update(obj, sub, op, false).map(|_| ())
    }

    /// Adds `by`; the result is not needed (non-blocking where the strategy allows).
    pub fn incr(&mut self, obj: u16, sub: &[u8], by: i64) -> Result<(), StateError> {
        if let Some(per_flow) = self.blind_remote(obj)? {
            self.queue_blind(obj, per_flow, sub, OpCode::OpIncr, by, None);
            return Ok(());
        }
        if self.local_incr(obj, sub, by)? {
            return Ok(());
        }
        let mut op = self.obj_op(obj, sub, OpCode::OpIncr)?;
        op.num = by;
        self.update(obj, sub, op, false).map(|_| ())
    }

    /// Adds `by` and returns the new value.
    pub fn incr_get(&mut self, obj: u16, sub: &[u8], by: i64) -> Result<i64, StateError> {
        let mut op = self.obj_op(obj, sub, OpCode::OpIncr)?;
        op.num = by;
        let (_, v) = self.update(obj, sub, op, true)?;
        Ok(v.as_int().unwrap_or(0))
    }

    pub fn push_back(&mut self, obj: u16, sub: &[u8], item: Bytes) -> Result<(), StateError> {
        self.push(obj, sub, item, OpCode::OpPushBack)
    }

    pub fn push_front(&mut self, obj: u16, sub: &[u8], item: Bytes) -> Result<(), StateError> {
        self.push(obj, sub, item, OpCode::OpPushFront)
    }

    pub fn pop_front(&mut self, obj: u16, sub: &[u8]) -> Result<Option<Bytes>, StateError> {
        self.pop(obj, sub, OpCode::OpPopFront)
    }

    pub fn pop_back(&mut self, obj: u16, sub: &[u8]) -> Result<Option<Bytes>, StateError> {
        self.pop(obj, sub, OpCode::OpPopBack)
    }

    fn push(&mut self, obj: u16, sub: &[u8], item: Bytes, code: OpCode) -> Result<(), StateError> {
        if let Some(per_flow) = self.blind_remote(obj)? {
            let item = Some(wire::Value::bytes(item));
            self.queue_blind(obj, per_flow, sub, code, 0, item);
            return Ok(());
        }
        let mut op = self.obj_op(obj, sub, code)?;
        op.val = Some(wire::Value::bytes(item));
        self.update(obj, sub, op, false).map(|_| ())
    }

    fn pop(&mut self, obj: u16, sub: &[u8], code: OpCode) -> Result<Option<Bytes>, StateError> {
        let op = self.obj_op(obj, sub, code)?;
        let (st, v) = self.update(obj, sub, op, true)?;
        Ok(match (st, v) {
            (Status::Ok, Value::Bytes(b)) => Some(b),
            _ => None,
        })
    }

    /// Sets `new` if the value equals `expected`; returns whether it did.
    pub fn compare_and_update(
        &mut self,
        obj: u16,
        sub: &[u8],
        expected: &Value,
        new: &Value,
    ) -> Result<bool, StateError> {
        let mut op = self.obj_op(obj, sub, OpCode::OpCompareAndUpdate)?;
        op.val = expected.to_wire();
        op.val2 = new.to_wire();
        let (st, _) = self.update(obj, sub, op, true)?;
        Ok(st == Status::Ok)
    }

    /// Runs a custom operation by name; returns its result (`need`: whether the caller uses it).
    pub fn custom(
        &mut self,
        obj: u16,
        sub: &[u8],
        name: &str,
        arg: &Value,
        need: bool,
    ) -> Result<Value, StateError> {
        let id = self
            .customs
            .id(name)
            .ok_or_else(|| StateError::UnknownCustomOp(name.to_string()))?;
        let mut op = self.obj_op(obj, sub, OpCode::OpCustom)?;
        op.num = i64::from(id);
        op.val = arg.to_wire();
        let (_, v) = self.update(obj, sub, op, need)?;
        Ok(v)
    }

    /// Wall-clock time in ns, the same for every replay of this packet.
    pub fn now_ns(&mut self) -> Result<u64, StateError> {
        let local = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.nondet(NONDET_TIME_NS, local)
    }

    /// A random number, the same for every replay of this packet.
    pub fn random(&mut self) -> Result<u64, StateError> {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let local = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        self.nondet(NONDET_RANDOM, local)
    }

    /// Appendix A.2: a fresh value is computed here and logged in the store without waiting;
    /// a replayed packet asks the store for the logged one.
    fn nondet(&mut self, kind: i64, local: u64) -> Result<u64, StateError> {
        if self.store.is_none() || self.clock == 0 {
            return Ok(local);
        }
        let idx = self.op_index;
        self.op_index += 1;
        let mut op = ops::nondet(self.vertex, self.clock, idx, kind);
        op.instance = u32::from(self.instance);
        if self.replay {
            op.flags |= F_REPLAY;
            let r = self.store_mut().call(op)?;
            return Ok(Value::from_wire(r.value.as_ref())
                .as_int()
                .unwrap_or(local as i64) as u64);
        }
        op.val = Some(wire::Value::int(local as i64));
        self.store_mut().submit_nonblocking(op);
        Ok(local)
    }
}

/// Largest packed key list sent in one release operation (about a thousand flows): a
/// handover of more sends a list as soon as it is full, so the shard works through it while
/// the rest is collected.
const RELEASE_LIST_BYTES: usize = 16 << 10;

/// Cache values with more items than this are freed by a background thread.
const FREE_INLINE_ITEMS: usize = 256;

/// How often that thread looks for values to free after it found some, and at most.
const FREE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
const FREE_INTERVAL_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

fn nonblocking(mut op: wire::Op) -> wire::Op {
    op.flags |= OpFlag::FlagNonblocking as u32;
    op
}

/// The declared key kind of `k` if it is an object of vertex `v` kept outside this instance
/// (any strategy but local state): those are what a handover moves.
fn external_kind(objs: &[Option<Obj>], v: u16, k: &Key) -> Option<KeyKind> {
    match objs.get(k.object as usize) {
        Some(Some(o)) if k.vertex == v && o.strategy != Strategy::Local => Some(o.spec.key_kind),
        _ => None,
    }
}

/// Queues the release of `instance`'s ownership of per-flow object `k` on shard `s`.
fn release_key(store: &mut StoreClient, s: u32, instance: u16, k: &Key) {
    let key = ObjKey::per_flow(k.vertex, k.object, Bytes::copy_from_slice(k.sub.as_slice()));
    store.submit_to(s, nonblocking(key.release(instance)));
}

/// Frees values a cache let go of. A cached list (a NAT's port pool) holds tens of thousands
/// of items, and a handover drops thousands of flows' values: freeing them one by one takes
/// a millisecond or more that a scale-out or a handover would otherwise wait for, so large
/// batches go to a background thread. That thread is never woken (on a busy machine a wake-up
/// can cost the caller its processor); it looks for work periodically.
fn dispose(values: Vec<Value>) {
    let items: usize = values
        .iter()
        .map(|v| match v {
            Value::List(l) => l.len(),
            _ => 1,
        })
        .sum();
    if items <= FREE_INLINE_ITEMS {
        return;
    }
    // Without the thread, the values are freed here.
    if let Some(q) = freer() {
        q.push(values);
    }
}

/// The queue of the thread that frees large values, started on first use (or `None` if it
/// could not start). External caches start it when they are made: spawning a thread takes
/// about 0.1 ms, which the first handover or scale-out would otherwise wait for.
fn freer() -> Option<&'static Arc<SegQueue<Vec<Value>>>> {
    static FREER: OnceLock<Option<Arc<SegQueue<Vec<Value>>>>> = OnceLock::new();
    FREER
        .get_or_init(|| {
            let q = Arc::new(SegQueue::new());
            let work = q.clone();
            std::thread::Builder::new()
                .name("chc-free".into())
                .spawn(move || {
                    let mut pause = FREE_INTERVAL;
                    loop {
                        let mut found = false;
                        while let Some(v) = work.pop() {
                            drop(v);
                            found = true;
                        }
                        // Idle, it looks less and less often: handovers come in bursts.
                        pause = if found {
                            FREE_INTERVAL
                        } else {
                            (pause * 2).min(FREE_INTERVAL_IDLE)
                        };
                        std::thread::sleep(pause);
                    }
                })
                .ok()
                .map(|_| q)
        })
        .as_ref()
}

fn is_list_op(code: OpCode) -> bool {
    matches!(
        code,
        OpCode::OpPushFront | OpCode::OpPushBack | OpCode::OpPopFront | OpCode::OpPopBack
    )
}

fn status_of(r: &wire::Reply) -> Status {
    Status::try_from(r.status).unwrap_or(Status::BadRequest)
}

#[cfg(test)]
mod tests;
