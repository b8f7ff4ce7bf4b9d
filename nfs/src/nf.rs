//! What an NF developer writes against: the [`NetworkFunction`] trait, the per-packet
//! [`Ctx`], typed state handles and events.
//!
//! An NF never sees where its state lives. It declares its objects (scope, access pattern,
//! key kind) and its partitioning scopes; the framework picks the strategy of Table 3.5 for
//! each object and the key metadata (vertex, instance). `process` is called for each packet
//! with its logical clock; the same code runs in all four modes.

use crate::packet::{FiveTuple, Packet};
use bytes::Bytes;
pub use chc_store::client::cache::{Access, Mode, ObjectSpec, Scope, StateClient, StateError};
use chc_store::names::KeyKind;
pub use chc_store::Value;
use serde_json::{Map, Value as Json};
use std::marker::PhantomData;
use std::net::IpAddr;

/// What to do with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the next vertex (or out of the chain).
    Forward,
    Drop,
    /// Out of a given output port (multi-port deployments; the pcap backend has one port).
    Port(u16),
}

/// Header fields traffic can be partitioned on, finest first in an NF's `scopes()`.
///
/// Keys are direction-independent, so both directions of a connection land on one instance:
/// `Flow` hashes the canonical 5-tuple; `Client` is the connection's initiating host, taken
/// as the endpoint with the higher port (the ephemeral one; the lower address on ties);
/// `Server` is the other endpoint.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKey {
    Flow,
    Client,
    Server,
}

impl PartitionKey {
    /// Coarseness rank: a key may stand in for any finer one.
    pub fn rank(self) -> u8 {
        match self {
            PartitionKey::Flow => 0,
            PartitionKey::Client | PartitionKey::Server => 1,
        }
    }
}

impl std::str::FromStr for PartitionKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "flow" | "5-tuple" => Ok(PartitionKey::Flow),
            "client" | "src-host" => Ok(PartitionKey::Client),
            "server" => Ok(PartitionKey::Server),
            _ => Err(format!(
                "partition key must be flow, client or server, not {s:?}"
            )),
        }
    }
}

/// The client (initiator) endpoint of a 5-tuple by the port heuristic; `true` if it is `src`.
pub fn client_is_src(t: &FiveTuple) -> bool {
    if t.sport != t.dport {
        t.sport > t.dport
    } else {
        t.src <= t.dst
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NfError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("configuration of {nf}: {msg}")]
    Config { nf: String, msg: String },
    #[error("unknown NF kind {0:?} (known: nat, portscan, trojan, lb, ratelimit)")]
    UnknownKind(String),
}

impl NfError {
    pub fn config(nf: &str, msg: impl Into<String>) -> NfError {
        NfError::Config {
            nf: nf.to_string(),
            msg: msg.into(),
        }
    }
}

/// An NF decision an operator wants to see (written to the events log).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub flow: Option<FiveTuple>,
    pub fields: Map<String, Json>,
}

impl Event {
    pub fn new(kind: &'static str) -> Self {
        Event {
            kind,
            flow: None,
            fields: Map::new(),
        }
    }
    pub fn flow(mut self, t: FiveTuple) -> Self {
        self.flow = Some(t);
        self
    }
    pub fn with(mut self, k: &str, v: impl Into<Json>) -> Self {
        self.fields.insert(k.to_string(), v.into());
        self
    }
}

/// A 5-tuple as JSON: `{"proto":6,"src":"10.0.0.1","sport":1234,"dst":"...","dport":80}`.
pub fn tuple_json(t: &FiveTuple) -> Json {
    serde_json::json!({
        "proto": t.proto,
        "src": t.src.to_string(),
        "sport": t.sport,
        "dst": t.dst.to_string(),
        "dport": t.dport,
    })
}

/// Everything an NF may use while processing one packet.
pub struct Ctx<'a> {
    /// The packet's logical clock (root id in the high bits; 0 outside a chain).
    pub clock: u64,
    pub vertex: u16,
    pub instance: u16,
    /// The packet is replayed from the root's log (after a failure, or to a clone).
    pub replay: bool,
    state: &'a mut StateClient,
    events: &'a mut Vec<Event>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        clock: u64,
        vertex: u16,
        instance: u16,
        replay: bool,
        state: &'a mut StateClient,
        events: &'a mut Vec<Event>,
    ) -> Self {
        Ctx {
            clock,
            vertex,
            instance,
            replay,
            state,
            events,
        }
    }

    /// Raw access to state (typed handles below are usually nicer).
    pub fn state(&mut self) -> &mut StateClient {
        self.state
    }

    pub fn emit(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Wall-clock time (ns), logged so a replay of this packet sees the same value.
    pub fn now_ns(&mut self) -> Result<u64, NfError> {
        Ok(self.state.now_ns()?)
    }

    /// A random number, logged so a replay of this packet sees the same value.
    pub fn random(&mut self) -> Result<u64, NfError> {
        Ok(self.state.random()?)
    }
}

/// A network function.
pub trait NetworkFunction: Send {
    /// Short kind name: `nat`, `portscan`...
    fn kind(&self) -> &'static str;

    /// The NF's state objects.
    fn objects(&self) -> Vec<ObjectDecl>;

    /// Keys this NF's state is partitioned by, finest first.
    fn scopes(&self) -> Vec<PartitionKey>;

    /// Sets up shared state once per vertex, before any packet (instance 0 of `instances`
    /// calls it; in traditional mode every instance calls it for its own state).
    fn init(&mut self, _ctx: &mut Ctx<'_>, _instances: u16) -> Result<(), NfError> {
        Ok(())
    }

    /// Processes one IP packet (non-IP and malformed frames never get here).
    fn process(&mut self, pkt: &mut Packet<'_>, ctx: &mut Ctx<'_>) -> Result<Verdict, NfError>;

    /// Called for IP fragments without an L4 header; the default passes them on.
    fn fragment(&mut self, _pkt: &mut Packet<'_>, _ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        Ok(Verdict::Forward)
    }
}

/// Something that can key a state object, written into a stack buffer (no allocation).
pub trait StateKey {
    fn write_key(&self, buf: &mut [u8; 40]) -> usize;
}

impl StateKey for FiveTuple {
    fn write_key(&self, buf: &mut [u8; 40]) -> usize {
        buf[0] = self.proto;
        let mut n = 1;
        for ip in [self.src, self.dst] {
            n += write_ip(ip, &mut buf[n..]);
        }
        buf[n..n + 2].copy_from_slice(&self.sport.to_be_bytes());
        buf[n + 2..n + 4].copy_from_slice(&self.dport.to_be_bytes());
        n + 4
    }
}

impl StateKey for IpAddr {
    fn write_key(&self, buf: &mut [u8; 40]) -> usize {
        write_ip(*self, buf)
    }
}

impl StateKey for u64 {
    fn write_key(&self, buf: &mut [u8; 40]) -> usize {
        buf[..8].copy_from_slice(&self.to_be_bytes());
        8
    }
}

impl StateKey for () {
    fn write_key(&self, _buf: &mut [u8; 40]) -> usize {
        0
    }
}

/// A pair of keys (a host and a peer, say).
impl<A: StateKey, B: StateKey> StateKey for (A, B) {
    fn write_key(&self, buf: &mut [u8; 40]) -> usize {
        let mut a = [0u8; 40];
        let n = self.0.write_key(&mut a);
        let mut b = [0u8; 40];
        let m = self.1.write_key(&mut b);
        let m = m.min(40 - n);
        buf[..n].copy_from_slice(&a[..n]);
        buf[n..n + m].copy_from_slice(&b[..m]);
        n + m
    }
}

fn write_ip(ip: IpAddr, buf: &mut [u8]) -> usize {
    match ip {
        IpAddr::V4(a) => {
            buf[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            buf[..16].copy_from_slice(&a.octets());
            16
        }
    }
}

/// A value stored in a state object.
pub trait StateValue: Sized {
    fn to_value(&self) -> Value;
    fn from_value(v: &Value) -> Option<Self>;
}

impl StateValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
    fn from_value(v: &Value) -> Option<Self> {
        v.as_int()
    }
}

impl StateValue for Bytes {
    fn to_value(&self) -> Value {
        Value::Bytes(self.clone())
    }
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }
}

/// A state object as an NF declares it: what the store needs, plus the header field its key
/// is derived from (`None`: one object for all traffic, such as a port pool or a total
/// counter). With the key field the framework knows whether the upstream split gives an
/// object to one instance alone, and so whether that instance may cache it (Table 3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDecl {
    pub spec: ObjectSpec,
    pub keyed_by: Option<PartitionKey>,
}

/// Declares an object.
pub fn object(
    id: u16,
    name: &str,
    scope: Scope,
    access: Access,
    key_kind: KeyKind,
    keyed_by: Option<PartitionKey>,
) -> ObjectDecl {
    ObjectDecl {
        spec: ObjectSpec {
            id,
            name: name.to_string(),
            scope,
            access,
            key_kind,
        },
        keyed_by,
    }
}

/// The specs of a list of declarations.
pub fn specs(decls: &[ObjectDecl]) -> Vec<ObjectSpec> {
    decls.iter().map(|d| d.spec.clone()).collect()
}

/// Whether an object keyed by `keyed_by` is touched by one instance only, when traffic to
/// the vertex is split on `split` over `instances` instances.
pub fn exclusive(keyed_by: Option<PartitionKey>, split: PartitionKey, instances: u16) -> bool {
    if instances <= 1 {
        return true;
    }
    match keyed_by {
        None => false,
        // A flow never spans instances under any split.
        Some(PartitionKey::Flow) => true,
        Some(k) => k == split,
    }
}

/// A typed state object holding values of type `V`, keyed by `K`.
pub struct Cell<K, V> {
    pub id: u16,
    _t: PhantomData<fn(K, V)>,
}

impl<K: StateKey, V: StateValue> Cell<K, V> {
    pub const fn new(id: u16) -> Self {
        Cell {
            id,
            _t: PhantomData,
        }
    }

    pub fn get(&self, ctx: &mut Ctx<'_>, k: &K) -> Result<Option<V>, NfError> {
        self.read(ctx, k, V::from_value)
    }

    /// Reads the value through `f`, which sees it where it is held (the cache or the NF's
    /// local table) instead of a copy: for a record decoded on every packet, such as a NAT's
    /// mapping, this saves cloning it (a reference count, and for a fresh value an
    /// allocation to share it) and dropping the clone.
    pub fn read<R>(
        &self,
        ctx: &mut Ctx<'_>,
        k: &K,
        f: impl FnOnce(&Value) -> Option<R>,
    ) -> Result<Option<R>, NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.get_with(self.id, &b[..n], f)?)
    }

    pub fn set(&self, ctx: &mut Ctx<'_>, k: &K, v: &V) -> Result<(), NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.set(self.id, &b[..n], v.to_value())?)
    }

    pub fn del(&self, ctx: &mut Ctx<'_>, k: &K) -> Result<(), NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.del(self.id, &b[..n])?)
    }

    /// Runs a custom store operation on the value; returns its result.
    pub fn custom(
        &self,
        ctx: &mut Ctx<'_>,
        k: &K,
        op: &str,
        arg: &Value,
    ) -> Result<Value, NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.custom(self.id, &b[..n], op, arg, true)?)
    }

    /// Runs a custom store operation whose result is not needed (non-blocking where allowed).
    pub fn custom_blind(
        &self,
        ctx: &mut Ctx<'_>,
        k: &K,
        op: &str,
        arg: &Value,
    ) -> Result<(), NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        ctx.state.custom(self.id, &b[..n], op, arg, false)?;
        Ok(())
    }
}

impl<K: StateKey> Cell<K, Bytes> {
    /// [`Cell::read`] of a byte record: `f` gets the bytes (a value of another type reads
    /// as absent, as [`StateValue::from_value`] has it).
    pub fn read_bytes<R>(
        &self,
        ctx: &mut Ctx<'_>,
        k: &K,
        f: impl FnOnce(&[u8]) -> Option<R>,
    ) -> Result<Option<R>, NfError> {
        self.read(ctx, k, |v| match v {
            Value::Bytes(b) => f(b),
            _ => None,
        })
    }
}

/// A typed counter keyed by `K`.
pub struct Counter<K> {
    pub id: u16,
    _t: PhantomData<fn(K)>,
}

impl<K: StateKey> Counter<K> {
    pub const fn new(id: u16) -> Self {
        Counter {
            id,
            _t: PhantomData,
        }
    }

    /// Adds `by` without needing the result (non-blocking in eo-c-na).
    pub fn add(&self, ctx: &mut Ctx<'_>, k: &K, by: i64) -> Result<(), NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.incr(self.id, &b[..n], by)?)
    }

    /// Adds `by` and returns the new value.
    pub fn add_get(&self, ctx: &mut Ctx<'_>, k: &K, by: i64) -> Result<i64, NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.incr_get(self.id, &b[..n], by)?)
    }

    pub fn get(&self, ctx: &mut Ctx<'_>, k: &K) -> Result<i64, NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.get(self.id, &b[..n])?.as_int().unwrap_or(0))
    }
}

/// A typed list of byte items keyed by `K`.
pub struct List<K> {
    pub id: u16,
    _t: PhantomData<fn(K)>,
}

impl<K: StateKey> List<K> {
    pub const fn new(id: u16) -> Self {
        List {
            id,
            _t: PhantomData,
        }
    }

    pub fn push_back(&self, ctx: &mut Ctx<'_>, k: &K, item: Bytes) -> Result<(), NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.push_back(self.id, &b[..n], item)?)
    }

    pub fn pop_front(&self, ctx: &mut Ctx<'_>, k: &K) -> Result<Option<Bytes>, NfError> {
        let mut b = [0u8; 40];
        let n = k.write_key(&mut b);
        Ok(ctx.state.pop_front(self.id, &b[..n])?)
    }
}
