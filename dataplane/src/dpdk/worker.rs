//! One lcore's run-to-completion loop.
//!
//! Every iteration: the root (on the first lcore of the root's host) polls the input ports
//! and stamps, logs and splits what came in; the first lcore of another host polls its links
//! and strips NSH; then each NF instance of this lcore, in chain order, processes what its
//! upstream instances on this lcore handed it in this very iteration (a plain vector, no
//! ring) and what instances on other lcores left in its `rte_ring`. Outputs go to the next
//! instance the splitter picks: a local vector, another lcore's ring, or a link (NSH pushed
//! into the headroom). A packet leaving the chain first hands its delete to the root (a
//! direct call on the root's lcore, a lock-free queue from other lcores, the control
//! channel from other hosts) and only then is staged for transmission. Staged bursts are
//! sent at the end of the iteration. Packets are rewritten in place in their mbufs.

use super::control::{Delete, Inbox};
use super::meta::{PktMeta, ENCAP_LEN};
use super::race::{CloneRun, PairPart, Race};
use super::rejoin::Rejoin;
use super::telemetry::LcoreCounters;
use crate::instance::{HandedOver, NfCounters, NfInstance};
use crate::runtime::{plan_moves, DelayRng, Move, ScaleStep};
use crate::split::{bucket, key_hash, Allocation};
use crate::summary::MoveSummary;
use chc_dpdk::{
    lcore, Burst, Mbuf, Mempool, Multi, RingConsumer, RingProducer, RunningPort, RxQueue, Single,
    TxQueue,
};
use chc_proto::meta::MetaFlags;
use chc_root::{Root, RootStats, FULL};
use chc_store::client::cache::StateStats;
use chc_store::client::{ops, ObjKey, StoreClient};
use chc_store::Value;
use crossbeam::queue::SegQueue;
use hdrhistogram::Histogram;
use nfs::nf::Verdict;
use nfs::packet::{Packet, Shape};
use nfs::PartitionKey;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Target vertex of a frame that crosses a link only to leave the chain (non-IP frames
/// whose egress port is on another host).
pub const PASS_THROUGH: u16 = u16::MAX;

/// Store operations an instance queues before they go without waiting for the next burst:
/// nothing on the packet path waits for them (packets leave before their updates commit),
/// and every batch costs a system call here and a wake-up at the shard, so a burst's few
/// operations wait for the next burst's. See `StoreClient::flush_coalesced`.
const STORE_BATCH_OPS: usize = 4 * super::BURST;

/// How long the store's shard threads stay up (neither nap nor sleep) for a flow move: more
/// than a move takes with the chain drained first (under a millisecond here).
const MOVE_AWAKE: std::time::Duration = std::time::Duration::from_millis(2);

pub const RUNNING: u8 = 0;
pub const STOPPING: u8 = 1;

/// State every lcore of the process sees.
#[derive(Debug, Default)]
pub struct Shared {
    pub phase: AtomicU8,
    /// Lcores that saw STOPPING and finished their last iteration.
    pub quiesced: AtomicUsize,
    pub lcores: usize,
    /// Stop taking input, drain, stop (live ports; a benchmark's end).
    pub stop_request: AtomicBool,
    /// Packets in the root's log, for telemetry.
    pub in_flight: AtomicU64,
    /// The root's watermark, for the control channel.
    pub watermark: Arc<AtomicU64>,
    /// Set on other hosts when the root says FINISH (or the channel broke).
    pub finished: Option<Arc<AtomicBool>>,
    /// A step of a flow move for the lcore that runs the instance concerned.
    pub orders: Orders,
}

/// What the lcore running an instance does for a flow move (Fig 3.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The old instance flushes and releases the moved flows' state, and waits until the
    /// store applied that (steps 3-5).
    Release,
    /// The new instance takes the moved flows (step 7): their state comes from the store.
    Take,
}

/// One step of a flow move, posted by the root's lcore.
pub struct Order {
    pub vertex: usize,
    pub inst: u16,
    pub step: Step,
    pub mv: Arc<Move>,
    /// Set by the lcore that took the step: the instance's name, objects handed over and
    /// how long the release took (µs).
    pub done: Option<(String, usize, f64)>,
}

/// The root's lcore posts one order at a time; every lcore looks at it when `posted`
/// changed, so a lcore pays one atomic load per loop for this.
#[derive(Default)]
pub struct Orders {
    pub posted: AtomicU64,
    pub slot: Mutex<Option<Order>>,
}

impl std::fmt::Debug for Orders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orders")
            .field("posted", &self.posted.load(Ordering::Relaxed))
            .finish()
    }
}

impl Orders {
    fn post(&self, o: Order) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
        self.posted.fetch_add(1, Ordering::AcqRel);
    }

    /// The result of the order posted last, once taken (the slot is then empty again).
    fn collect(&self) -> Option<(String, usize, f64)> {
        let mut g = self.slot.try_lock().ok()?;
        if g.as_ref()?.done.is_some() {
            return g.take()?.done;
        }
        None
    }
}

/// Where a packet goes next.
#[derive(Clone, Copy, Debug)]
pub enum Dest {
    /// An instance on this lcore (task index).
    Local(usize),
    /// Another lcore's instance ring (index into the lcore's ring outputs).
    Ring(usize),
    /// Another host (index into the lcore's link outputs).
    Link(usize),
}

/// The splitter in front of one vertex.
pub struct Router {
    pub vertex: u16,
    pub key: PartitionKey,
    pub alloc: Arc<Allocation>,
    /// One per instance.
    pub dests: Vec<Dest>,
    /// In front of a straggler and its clone: the race they run.
    pub race: Option<Arc<Race>>,
    /// The vertex leads to a clone's (replayed packets go on).
    pub toward_clone: bool,
}

/// How a lcore transmits on a port or a link.
pub enum TxPath {
    /// It owns the queue.
    Queue(TxQueue),
    /// Through a ring to the lcore that owns it.
    Ring(RingProducer<Multi>),
}

/// Packets staged for one port or link.
pub struct TxOut {
    pub path: TxPath,
    pub burst: Burst,
    /// Capture time and wire length of every packet sent, in order (pcap output fix-up).
    pub record: Option<Vec<(u64, u32)>>,
    /// Packets staged here carry their metadata in the private area: the port records
    /// them (here, or at the lcore that owns the queue). A packet that came through a ring
    /// has it there already, a copy made on this lcore (for a tap or a clone) not.
    pub keep_meta: bool,
}

/// A link's sending side on this lcore.
pub struct LinkOut {
    pub tx: TxOut,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Largest frame the link carries, NSH included.
    pub max_frame: usize,
}

/// A ring into another lcore's instance, with its staged burst.
pub struct RingOut {
    pub ring: RingProducer<Multi>,
    pub burst: Burst,
}

/// An NF instance on this lcore.
pub struct Task {
    pub vertex: usize,
    pub inst: NfInstance,
    pub ring: RingConsumer<Single>,
    pub next: Option<usize>,
    pub taps: Vec<usize>,
    pub exit: bool,
    pub on_path: bool,
    pub dirty: bool,
    /// A per-packet delay (`--delay`), if this instance is slowed.
    pub delay: Option<Slow>,
    /// A straggler or its clone, while they race.
    pub race: Option<Box<PairPart>>,
    /// Packets processed, for an autoscale policy's statistics (only under one).
    pub processed: Option<Arc<AtomicU64>>,
}

/// A slowed instance: before each packet its lcore spins for a random time in the delay's
/// range (a slow NF holds its lcore; nothing else runs there meanwhile).
pub struct Slow {
    min_ticks: u64,
    span_ticks: u64,
    rng: DelayRng,
}

impl Slow {
    pub fn new(d: crate::runtime::Delay, hz: u64, seed: u64, vertex: u16, inst: u16) -> Slow {
        let ticks = |us: u64| us.saturating_mul(hz) / 1_000_000;
        Slow {
            min_ticks: ticks(d.min_us),
            span_ticks: ticks(d.max_us.saturating_sub(d.min_us)) + 1,
            rng: DelayRng::new(seed, vertex, inst),
        }
    }

    fn wait(&mut self) {
        let until = lcore::tsc() + self.min_ticks + self.rng.next() % self.span_ticks;
        while lcore::tsc() < until {
            std::hint::spin_loop();
        }
    }
}

/// Where deletes go from this lcore.
pub enum DeleteSink {
    /// The root is on this lcore.
    Local,
    /// The root is on another lcore of this host.
    Queue(Arc<Inbox>),
    /// The root is on another host (the control channel's outbox).
    Remote(Arc<SegQueue<Delete>>),
}

/// Input side information of a pcap replay: per record, capture time, wire length and
/// captured length (`net_pcap` delivers neither the wire length nor nanoseconds).
pub struct Replay {
    pub records: Vec<(u64, u32, u32)>,
    pub next: usize,
}

/// Counters of the root's lcore.
#[derive(Debug, Default, Clone, Copy)]
pub struct RootRun {
    pub read: u64,
    pub malformed: u64,
    pub non_ip: u64,
    pub oversize: u64,
}

/// The root and its input.
pub struct RootPart {
    pub root: Root,
    pub client: StoreClient,
    pub traditional: bool,
    pub clock_key: ObjKey,
    pub inbox: Arc<Inbox>,
    /// Input ports: queue, chain port index, egress port index, control handle.
    pub rx: Vec<(RxQueue, u16, u16, RunningPort)>,
    pub entry: Option<usize>,
    pub window: usize,
    pub replay: Option<Replay>,
    pub input_done: bool,
    pub run: RootRun,
    pub last_retire: u64,
    pub last_progress: u64,
    pub last_check: u64,
    pub unsettled: usize,
    pub lost_input: u64,
    /// Scaling steps still to take, and what the vertices look like so far.
    pub scaling: Option<Scaling>,
    /// The admission rate (`--rate`), if any.
    pub pace: Option<Pace>,
    /// A straggler's clone to start (`--scale NAME:clone=I@N`).
    pub clone: Option<CloneRun>,
    /// The recovery of a failed host, on a chain over several hosts.
    pub rejoin: Option<super::rejoin::Rejoin>,
    /// The root's store client's reconnections seen so far (a store that came back).
    pub store_reconnects: u64,
}

/// Admission at a fixed average rate: a burst is read once the time since the first one
/// allows it whole, so the chain sees the load level and bursts of at most one poll.
pub struct Pace {
    /// Packets per second, and TSC ticks per second.
    pps: u64,
    hz: u64,
    start: Option<u64>,
}

impl Pace {
    pub fn new(pps: u64, hz: u64) -> Pace {
        Pace {
            pps: pps.max(1),
            hz,
            start: None,
        }
    }

    /// How many packets may be read at TSC `now`, `read` having been read already.
    fn allowed(&mut self, now: u64, read: u64) -> u64 {
        let start = *self.start.get_or_insert(now);
        let due =
            u128::from(now.wrapping_sub(start)) * u128::from(self.pps) / u128::from(self.hz.max(1));
        (due as u64 + 1).saturating_sub(read)
    }
}

/// Scale-out and scale-in, run from the root's lcore (see [`Worker::scale`]).
pub struct Scaling {
    /// (vertex, step), in the order of their input positions.
    pub steps: std::collections::VecDeque<(usize, ScaleStep)>,
    /// Live instances per vertex.
    pub live: Vec<u16>,
    /// Vertex names, for the summary.
    pub names: Vec<String>,
    /// Bucket -> instance, per vertex, as the moves planned so far leave it.
    pub tables: Vec<Vec<u16>>,
    pub next_id: u64,
    /// Whether a move waits until every admitted packet is through the chain: packets may
    /// wait in rings between lcores (with the whole chain on the root's lcore, none does
    /// between two of its bursts).
    pub drain: bool,
    /// Moves planned and not started, and the one under way.
    pub queue: std::collections::VecDeque<(usize, Arc<Move>)>,
    pub current: Option<Moving>,
    /// The moves done, in order.
    pub moves: Vec<MoveSummary>,
    /// The operator's policies (`--autoscale`), if any.
    pub policies: Option<Policies>,
}

/// Autoscale rules the root's lcore applies from the instances' packet counts.
pub struct Policies {
    pub rules: Vec<(usize, crate::runtime::Rule)>,
    /// Packets processed, per vertex and instance (each instance's lcore adds to its own).
    pub processed: Vec<Vec<Arc<AtomicU64>>>,
    /// Counts at the last look, per vertex.
    pub seen: Vec<u64>,
    /// TSC ticks between looks, and the last look.
    pub period: u64,
    pub last: u64,
    pub hz: u64,
    pub decisions: Vec<crate::summary::Decision>,
}

impl Scaling {
    /// Whether the root holds its input back: a move is planned or under way.
    pub fn busy(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }
}

/// A flow move under way.
pub struct Moving {
    pub vertex: usize,
    pub mv: Arc<Move>,
    pub phase: Phase,
    pub since: Instant,
    /// What the release reported: name, objects, µs.
    pub released: Option<(String, usize, f64)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting until no admitted packet is left in the chain.
    Draining,
    Releasing,
    Taking,
}

/// Everything a lcore returns at the end.
pub struct Report {
    pub instances: Vec<(usize, u16, NfCounters, StateStats)>,
    pub hist: Histogram<u64>,
    pub root: Option<(RootStats, RootRun, usize, u64)>,
    pub records: Vec<(u16, Vec<(u64, u32)>)>,
    pub written: u64,
    pub events: u64,
    pub link_foreign: u64,
    pub errors: Vec<String>,
    pub fatal: Option<String>,
    /// Flow moves between instances (scaling), in order.
    pub moves: Vec<MoveSummary>,
    pub clone: Option<crate::summary::CloneSummary>,
    pub decisions: Vec<crate::summary::Decision>,
    pub rejoins: Vec<super::rejoin::RejoinSummary>,
    /// Copies absorbed at the egress because they had left already (see `Io::exited`).
    pub exits_absorbed: u64,
}

/// Time in ns since the epoch from the TSC.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    pub base_ns: u64,
    pub tsc0: u64,
    /// ns per TSC tick, as a 32.32 fixed-point number.
    pub ns_per_tick_q32: u64,
}

impl WallClock {
    pub fn new(hz: u64) -> WallClock {
        let base_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        WallClock {
            base_ns,
            tsc0: lcore::tsc(),
            ns_per_tick_q32: ((1_000_000_000u128 << 32) / u128::from(hz.max(1))) as u64,
        }
    }
    #[inline]
    pub fn ns(&self, ticks: u64) -> u64 {
        ((u128::from(ticks) * u128::from(self.ns_per_tick_q32)) >> 32) as u64
    }
    #[inline]
    pub fn now_ns(&self, tsc: u64) -> u64 {
        self.base_ns + self.ns(tsc.wrapping_sub(self.tsc0))
    }
}

pub struct Worker {
    pub lcore: u32,
    pub shared: Arc<Shared>,
    pub counters: Arc<LcoreCounters>,
    pub root: Option<RootPart>,
    pub links_rx: Vec<RxQueue>,
    pub tasks: Vec<Task>,
    pub routers: Vec<Router>,
    pub io: Io,
    /// Rings other lcores feed this lcore's ports and links through (owner only).
    pub tx_rings: Vec<(RingConsumer<Single>, TxTarget)>,
    /// Whether this lcore waits for the others before leaving (the owner of the queues).
    pub owner: bool,
    /// A burst reused by every poll (taken out while packets are handled).
    pub scratch: Burst,
    /// Called once per iteration (a traffic source in the same process).
    pub hook: Option<Box<dyn FnMut() + Send>>,
    /// `Orders::posted` when this lcore last looked.
    pub orders_seen: u64,
}

/// Which output a tx ring drains into.
#[derive(Clone, Copy, Debug)]
pub enum TxTarget {
    Port(usize),
    Link(usize),
}

/// What the packet-handling code writes to, apart from the tasks.
pub struct Io {
    pub pending: Vec<Vec<(Mbuf, PktMeta)>>,
    pub rings: Vec<RingOut>,
    /// By chain port index.
    pub ports: Vec<Option<TxOut>>,
    pub links: Vec<LinkOut>,
    pub deletes: DeleteSink,
    pub local_deletes: Vec<Delete>,
    pub events: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
    pub lines: Vec<String>,
    pub events_written: u64,
    pub hist: Histogram<u64>,
    /// Packets that left (or ended) in this iteration and wait for their end time, as
    /// (admission TSC, packets). One TSC read at [`Io::flush`] ends them all, right before
    /// transmission; packets of one input burst share their admission time, so one entry
    /// usually stands for a whole burst and one histogram update records it.
    pub lat_pending: Vec<(u64, u64)>,
    pub clock: WallClock,
    pub pool: Mempool,
    pub jumbo: Mempool,
    pub spi: u32,
    pub drops: u64,
    pub written: u64,
    pub link_foreign: u64,
    pub errors: Vec<String>,
    /// Why the run stopped before its end, if it did (the run fails with it).
    pub fatal: Option<String>,
    /// A straggler's race, if the run has one (replayed packets are counted through it).
    pub race: Option<Arc<Race>>,
    /// On a host of a multi-host chain: the clock last sent out by each slot (clock modulo
    /// the table's size, a power of two at least the root's log limit, so two clocks in
    /// flight never share a slot). A host's replacement re-does packets whose copy may have
    /// left here already: the second copy of a clock is absorbed, as the replay's accounting
    /// expects (see `chc_root::Root::replay`).
    pub exited: Option<Vec<u64>>,
    /// Copies absorbed by `exited`.
    pub exits_absorbed: u64,
    /// A non-root host's terminals' deletes, held until the events of their burst are
    /// written: a host that fails after a packet settled must have written its events.
    pub held_deletes: Vec<Delete>,
}

/// Whether a replayed packet is re-done for a part of the chain only (toward a clone, or
/// on the root's host toward a host that replaced a failed one), rather than in full.
#[inline(always)]
pub(super) fn partial_replay(meta: &PktMeta) -> bool {
    meta.chc.flags.0 & (MetaFlags::REPLAY | MetaFlags::REDO) == MetaFlags::REPLAY
}

/// Largest frame kept in a normal mbuf; larger ones are copied into the jumbo pool.
pub const NORMAL_ROOM: usize = (chc_dpdk::DEFAULT_DATA_ROOM - chc_dpdk::HEADROOM) as usize;

impl Io {
    /// Stops the run: it fails with `e`.
    pub(super) fn fail(&mut self, shared: &Shared, e: String) {
        self.error(e.clone());
        self.fatal.get_or_insert(e);
        shared.phase.store(STOPPING, Ordering::Release);
    }

    pub(super) fn error(&mut self, e: String) {
        if self.errors.len() < 8 {
            eprintln!("chc-dataplane: {e}");
            self.errors.push(e);
        }
    }

    /// Hands a delete to the root.
    ///
    /// Takes the fields, not a [`Delete`]: a tuple built by the caller went through the
    /// stack as two 8-byte stores read back as one 16-byte load, which the CPU cannot
    /// forward and stalls on, once per packet.
    #[inline]
    fn delete(&mut self, clock: u64, weight: u64, vector: u32) {
        match &self.deletes {
            DeleteSink::Local => self.local_deletes.push((clock, weight, vector)),
            DeleteSink::Queue(q) => q.deletes.push((clock, weight, vector)),
            DeleteSink::Remote(_) => self.held_deletes.push((clock, weight, vector)),
        }
    }

    /// Sends the held deletes on (after the events of their burst were written).
    fn release_deletes(&mut self) {
        if let DeleteSink::Remote(q) = &self.deletes {
            for d in self.held_deletes.drain(..) {
                q.push(d);
            }
        }
    }

    /// A copy of the packet (for a tap) in a fresh mbuf.
    pub(super) fn copy(&mut self, m: &Mbuf) -> Option<Mbuf> {
        self.alloc_copy(m.data())
    }

    /// `data` in a fresh mbuf: from the normal pool, or the jumbo one if it needs it.
    pub(super) fn alloc_copy(&self, data: &[u8]) -> Option<Mbuf> {
        let pool = if data.len() <= NORMAL_ROOM {
            self.pool
        } else {
            self.jumbo
        };
        pool.alloc_from(data).ok()
    }

    /// Sends `m` (with `meta`) to the instance `r` picks for it.
    #[inline]
    pub(super) fn route(&mut self, r: &Router, mut m: Mbuf, meta: PktMeta) {
        if r.race.is_some() || partial_replay(&meta) {
            return self.route_raced(r, m, meta);
        }
        let i = Io::pick(r, &mut m);
        self.send_to(r, i, m, meta);
    }

    /// The instance of `r`'s vertex that `m`'s bucket belongs to.
    #[inline]
    pub(super) fn pick(r: &Router, m: &mut Mbuf) -> usize {
        if r.dests.len() == 1 {
            0
        } else {
            let n = m.data_len();
            let p = Packet::parse(m.data_mut(), n, 0);
            usize::from(r.alloc.instance(bucket(key_hash(&p, r.key)))) % r.dests.len()
        }
    }

    /// Sends `m` to instance `i` of `r`'s vertex.
    #[inline]
    pub(super) fn send_to(&mut self, r: &Router, i: usize, mut m: Mbuf, mut meta: PktMeta) {
        meta.vertex = r.vertex;
        meta.instance = i as u16;
        match r.dests[i] {
            Dest::Local(t) => self.pending[t].push((m, meta)),
            Dest::Ring(k) => {
                meta.store(m.private_area_mut());
                let out = &mut self.rings[k];
                if let Err(m) = out.burst.push(m) {
                    flush_ring(out);
                    if let Err(m) = out.burst.push(m) {
                        self.lost(m, meta, "ring staging full");
                    }
                }
                if self.rings[k].burst.is_full() {
                    flush_ring(&mut self.rings[k]);
                }
            }
            Dest::Link(k) => self.send_link(k, m, meta),
        }
    }

    /// Pushes NSH and stages the frame on link `k`.
    fn send_link(&mut self, k: usize, mut m: Mbuf, meta: PktMeta) {
        let (dst, src, spi) = (self.links[k].dst_mac, self.links[k].src_mac, self.spi);
        if m.len() + ENCAP_LEN > self.links[k].max_frame {
            // The device would drop it unreported, and the root would wait for it forever.
            let e = format!(
                "a {}-byte packet does not fit the link with NSH ({} bytes at most): dropped \
                 (raise the link's MTU)",
                m.len(),
                self.links[k].max_frame - ENCAP_LEN
            );
            self.error(e);
            return self.lost(m, meta, "larger than the link's MTU");
        }
        match m.prepend(ENCAP_LEN) {
            Ok(h) => meta.write_encap(dst, src, spi, h),
            Err(e) => {
                self.error(format!("no headroom for NSH: {e}"));
                return self.lost(m, meta, "no headroom");
            }
        }
        meta.store(m.private_area_mut());
        self.stage(TxSel::Link(k), m);
    }

    /// A packet the runtime could not move on: dropped, and its copy reported as gone so
    /// the root does not wait for it.
    fn lost(&mut self, m: Mbuf, meta: PktMeta, why: &str) {
        drop(m);
        self.drops += 1;
        if self.errors.is_empty() {
            self.error(format!("packet dropped: {why}"));
        }
        if meta.chc.clock != 0 {
            self.delete(meta.chc.clock, meta.weight, meta.chc.vector);
        }
    }

    /// The packet leaves the chain by its egress port.
    fn exit(&mut self, m: Mbuf, meta: PktMeta) {
        self.latency(&meta);
        self.out(m, meta);
    }

    /// Transmits by the egress port, deleting first; or hands the packet to the host that
    /// has the port, which deletes it when it transmits (a copy is never reported by one
    /// host and sent out by another, which could fail in between).
    fn out(&mut self, mut m: Mbuf, meta: PktMeta) {
        let port = usize::from(meta.egress);
        if let Some(Some(o)) = self.ports.get(port) {
            let keep_meta = o.keep_meta;
            let clock = meta.chc.clock;
            if clock != 0 {
                if let Some(x) = self.exited.as_mut() {
                    let mask = x.len() - 1;
                    let slot = &mut x[clock as usize & mask];
                    if *slot == clock {
                        drop(m);
                        self.exits_absorbed += 1;
                        return;
                    }
                    *slot = clock;
                }
                self.delete(clock, meta.weight, meta.chc.vector);
            }
            // Only a recording port reads the metadata back; elsewhere writing it would
            // dirty a cache line of the mbuf that nothing else touches on the way out.
            if keep_meta {
                meta.store(m.private_area_mut());
            }
            self.stage(TxSel::Port(port), m);
        } else if self.links.len() == 1 {
            // Not here: the host across the (only) link has it.
            let meta = PktMeta {
                vertex: PASS_THROUGH,
                ..meta
            };
            self.send_link(0, m, meta);
        } else {
            self.drops += 1;
            self.error(format!("egress port {port} is not on this host"));
        }
    }

    #[inline]
    fn latency(&mut self, meta: &PktMeta) {
        match self.lat_pending.last_mut() {
            Some((t0, n)) if *t0 == meta.t0 => *n += 1,
            _ => self.lat_pending.push((meta.t0, 1)),
        }
    }

    /// Ends the pending latencies now.
    fn record_latencies(&mut self) {
        if self.lat_pending.is_empty() {
            return;
        }
        let now = lcore::tsc();
        for &(t0, n) in &self.lat_pending {
            let ns = self.clock.ns(now.wrapping_sub(t0));
            let _ = self.hist.record_n(ns.max(1), n);
        }
        self.lat_pending.clear();
    }

    /// The end of a copy that does not leave the chain (a drop, an off-path branch).
    fn retire(&mut self, m: Mbuf, meta: PktMeta) {
        self.latency(&meta);
        drop(m);
        self.delete(meta.chc.clock, meta.weight, meta.chc.vector);
    }

    fn stage(&mut self, sel: TxSel, m: Mbuf) {
        let out = match sel {
            TxSel::Port(p) => match self.ports.get_mut(p).and_then(Option::as_mut) {
                Some(o) => o,
                None => return,
            },
            TxSel::Link(k) => &mut self.links[k].tx,
        };
        if let Err(m) = out.burst.push(m) {
            let (sent, dropped) = flush_tx(out);
            self.account(sel, sent, dropped);
            let out = match sel {
                TxSel::Port(p) => self.ports[p].as_mut().expect("checked above"),
                TxSel::Link(k) => &mut self.links[k].tx,
            };
            if out.burst.push(m).is_err() {
                self.drops += 1;
            }
        }
    }

    fn account(&mut self, sel: TxSel, sent: usize, dropped: usize) {
        if matches!(sel, TxSel::Port(_)) {
            self.written += sent as u64;
        }
        if dropped > 0 {
            self.drops += dropped as u64;
            self.error(format!(
                "{dropped} packets dropped: the device would not take them"
            ));
        }
    }

    /// Sends everything staged. Returns packets transmitted.
    fn flush(&mut self) -> u64 {
        self.record_latencies();
        for r in &mut self.rings {
            flush_ring(r);
        }
        let mut tx = 0;
        for p in 0..self.ports.len() {
            let Some(out) = self.ports[p].as_mut() else {
                continue;
            };
            if out.burst.is_empty() {
                continue;
            }
            let (sent, dropped) = flush_tx(out);
            tx += sent as u64;
            self.account(TxSel::Port(p), sent, dropped);
        }
        for k in 0..self.links.len() {
            if self.links[k].tx.burst.is_empty() {
                continue;
            }
            let (sent, dropped) = flush_tx(&mut self.links[k].tx);
            tx += sent as u64;
            self.account(TxSel::Link(k), sent, dropped);
        }
        tx
    }

    /// Writes the events of the burst, then lets its deletes go (on a non-root host, once
    /// the events are in the file: the process may be killed right after).
    fn write_events(&mut self) {
        if !self.lines.is_empty() {
            self.events_written += self.lines.len() as u64;
            if let Some(w) = &self.events {
                let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                for l in self.lines.drain(..) {
                    if writeln!(w, "{l}").is_err() {
                        break;
                    }
                }
                if matches!(self.deletes, DeleteSink::Remote(_)) {
                    let _ = w.flush();
                }
            }
            self.lines.clear();
        }
        self.release_deletes();
    }
}

#[derive(Clone, Copy)]
enum TxSel {
    Port(usize),
    Link(usize),
}

fn flush_ring(out: &mut RingOut) {
    if out.burst.is_empty() {
        return;
    }
    // Rings hold the whole window of the root, so they do not fill; if one does, wait.
    let mut spins = 0u32;
    while !out.burst.is_empty() {
        if out.ring.enqueue_burst(&mut out.burst) == 0 {
            spins += 1;
            if spins > 1_000_000 {
                out.burst.clear();
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Transmits a staged burst, retrying while the device makes progress. Returns (sent,
/// dropped).
fn flush_tx(out: &mut TxOut) -> (usize, usize) {
    let mut sent = 0;
    let mut stalls = 0u32;
    while !out.burst.is_empty() {
        let n = match &mut out.path {
            TxPath::Queue(q) => {
                if let Some(rec) = out.record.as_mut() {
                    let metas: Vec<PktMeta> = out
                        .burst
                        .iter()
                        .map(|m| PktMeta::load(m.private_area()))
                        .collect();
                    let n = q.tx_burst(&mut out.burst);
                    rec.extend(metas[..n].iter().map(|m| (m.ts_ns, m.wire_len)));
                    n
                } else {
                    q.tx_burst(&mut out.burst)
                }
            }
            TxPath::Ring(r) => r.enqueue_burst(&mut out.burst),
        };
        sent += n;
        if n == 0 {
            stalls += 1;
            if stalls > 100_000 {
                let dropped = out.burst.len();
                out.burst.clear();
                return (sent, dropped);
            }
            std::hint::spin_loop();
        } else {
            stalls = 0;
        }
    }
    (sent, 0)
}

impl Worker {
    /// Runs until the chain is drained and stopped; returns what the lcore counted.
    pub fn run(mut self) -> Report {
        let mut idle = 0u32;
        let n_lcores = self.shared.lcores;
        loop {
            let start = lcore::tsc();
            let stopping = self.shared.phase.load(Ordering::Acquire) == STOPPING;
            if stopping && !self.owner {
                break;
            }
            if stopping
                && self.owner
                && self.shared.quiesced.load(Ordering::Acquire) + 1 >= n_lcores
            {
                // Everyone else is out: a last pass over what they left in the rings.
                self.drain_tx_rings();
                self.io.flush();
                break;
            }
            let mut n = 0;
            if let Some(h) = self.hook.as_mut() {
                h();
            }
            if self.root.is_some() {
                self.scale();
                self.clone_step();
                self.rejoin_step();
            }
            self.take_orders();
            if self.root.is_some() {
                n += self.poll_root(start);
            }
            n += self.poll_links();
            for t in 0..self.tasks.len() {
                n += self.run_task(t);
            }
            n += self.drain_tx_rings();
            let tx = self.io.flush();
            self.io.write_events();
            let end = lcore::tsc();
            LcoreCounters::add(&self.counters.total_cycles, end.wrapping_sub(start));
            LcoreCounters::add(&self.counters.tx, tx);
            if n > 0 {
                LcoreCounters::add(&self.counters.packets, n as u64);
                LcoreCounters::add(&self.counters.busy_cycles, end.wrapping_sub(start));
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if idle == 64 {
                    self.idle_sync();
                }
                if idle > 1024 {
                    std::thread::yield_now();
                }
            }
            if self.io.drops > 0 {
                LcoreCounters::add(&self.counters.drops, self.io.drops);
                self.io.drops = 0;
            }
            self.check_end(end);
        }
        if !self.owner {
            self.shared.quiesced.fetch_add(1, Ordering::AcqRel);
        }
        self.finish()
    }

    /// Moves flows between instances for the scaling steps whose input position the root
    /// has reached, one move at a time, the root holding its input back meanwhile.
    ///
    /// The handover of Fig 3.7 reduces to its state steps once no packet of the moved
    /// flows can be on its way to the old instance. With the whole chain on the root's lcore
    /// that holds between two of the root's bursts; otherwise the root first waits until
    /// every packet it admitted has left the chain (none then waits in a ring). Then, in
    /// order: the lcore of the old instance has it flush and release the moved flows' state
    /// and wait until the store applied that (steps 3-5); the splitters send the moved
    /// buckets to the new instance (steps 1-2 and 6); its lcore has it take them (step 7),
    /// so a miss asks the store, before the root admits the next packet.
    fn scale(&mut self) {
        let Some(r) = self.root.as_mut() else {
            return;
        };
        let read = r.run.read;
        let travelling = r.root.travelling();
        let Some(sc) = r.scaling.as_mut() else {
            return;
        };
        while sc
            .steps
            .front()
            .is_some_and(|(_, st)| st.after_packets <= read)
        {
            let (vi, st) = sc.steps.pop_front().expect("checked above");
            let ms = plan_moves(&st, &mut sc.live[vi], &mut sc.tables[vi], &mut sc.next_id);
            sc.queue.extend(ms.into_iter().map(|m| (vi, Arc::new(m))));
        }
        if let Some(p) = sc.policies.as_mut() {
            let now = lcore::tsc();
            if !r.input_done && now.wrapping_sub(p.last) >= p.period {
                let dt = now.wrapping_sub(p.last) as f64 / p.hz.max(1) as f64;
                p.last = now;
                for &(vi, rule) in &p.rules {
                    let total: u64 = p.processed[vi]
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .sum();
                    let rate = total.saturating_sub(p.seen[vi]) as f64 / dt;
                    p.seen[vi] = total;
                    let Some(action) = rule.decide(rate, sc.live[vi]) else {
                        continue;
                    };
                    p.decisions.push(crate::summary::Decision {
                        after_packets: read,
                        vertex: sc.names[vi].clone(),
                        action: if action == crate::runtime::ScaleAction::Out {
                            "out"
                        } else {
                            "in"
                        }
                        .into(),
                        instances: sc.live[vi],
                        rate_pps: rate,
                        straggler: None,
                    });
                    let st = ScaleStep {
                        after_packets: read,
                        vertex: sc.names[vi].clone(),
                        action,
                        handover: true,
                    };
                    let ms = plan_moves(&st, &mut sc.live[vi], &mut sc.tables[vi], &mut sc.next_id);
                    sc.queue.extend(ms.into_iter().map(|m| (vi, Arc::new(m))));
                }
            }
        }
        let orders = &self.shared.orders;
        loop {
            let Some(mut cur) = sc.current.take() else {
                let Some((vertex, mv)) = sc.queue.pop_front() else {
                    return;
                };
                if !mv.handover() {
                    // The naive baseline: the splitters switch at once, nothing is handed
                    // over and the root does not wait.
                    let alloc = &self.routers[vertex].alloc;
                    for b in (0..crate::split::BUCKETS).filter(|&b| mv.has(b)) {
                        alloc.set(b, mv.to);
                    }
                    let done = mv.handed_over(&sc.names[vertex], 0, 0.0);
                    sc.moves.push(done);
                    continue;
                }
                // The move waits for the store twice (the release, the new instance's
                // first misses): its shard threads stay up meanwhile.
                r.client.keep_awake(MOVE_AWAKE);
                sc.current = Some(Moving {
                    vertex,
                    mv,
                    phase: Phase::Draining,
                    since: Instant::now(),
                    released: None,
                });
                continue;
            };
            let order = |step: Step, cur: &Moving| Order {
                vertex: cur.vertex,
                inst: match step {
                    Step::Release => cur.mv.from,
                    Step::Take => cur.mv.to,
                },
                step,
                mv: cur.mv.clone(),
                done: None,
            };
            if cur.since.elapsed() > std::time::Duration::from_secs(10) {
                // Packets that never leave, or a step no lcore takes: the run ends with the
                // reason rather than holding its input forever.
                self.io.fail(
                    &self.shared,
                    format!(
                        "flow move {} stuck for 10 s in {:?} ({travelling} packets in the chain)",
                        cur.mv.id, cur.phase
                    ),
                );
                return;
            }
            match cur.phase {
                Phase::Draining => {
                    if sc.drain && travelling > 0 {
                        sc.current = Some(cur);
                        return;
                    }
                    orders.post(order(Step::Release, &cur));
                    cur.phase = Phase::Releasing;
                }
                Phase::Releasing => {
                    let Some(done) = orders.collect() else {
                        sc.current = Some(cur);
                        return;
                    };
                    let alloc = &self.routers[cur.vertex].alloc;
                    for b in (0..crate::split::BUCKETS).filter(|&b| cur.mv.has(b)) {
                        alloc.set(b, cur.mv.to);
                    }
                    cur.released = Some(done);
                    orders.post(order(Step::Take, &cur));
                    cur.phase = Phase::Taking;
                }
                Phase::Taking => {
                    if orders.collect().is_none() {
                        sc.current = Some(cur);
                        return;
                    }
                    let (name, objects, us) = cur.released.take().unwrap_or_default();
                    let mut done = cur.mv.handed_over(&name, objects, us);
                    done.paused_us = Some(cur.since.elapsed().as_secs_f64() * 1e6);
                    sc.moves.push(done);
                    continue;
                }
            }
            // The step just posted may be this lcore's: it is taken in this loop.
            sc.current = Some(cur);
            return;
        }
    }

    /// Takes the step of a flow move posted for one of this lcore's instances.
    fn take_orders(&mut self) {
        let posted = self.shared.orders.posted.load(Ordering::Acquire);
        if posted == self.orders_seen {
            return;
        }
        self.orders_seen = posted;
        let orders = self.shared.clone();
        let mut g = orders.orders.slot.lock().unwrap_or_else(|e| e.into_inner());
        let Some(o) = g.as_mut().filter(|o| o.done.is_none()) else {
            return;
        };
        let Some(t) = self
            .tasks
            .iter()
            .position(|t| t.vertex == o.vertex && t.inst.idx == o.inst)
        else {
            return;
        };
        let inst = &mut self.tasks[t].inst;
        let m = &o.mv;
        o.done = Some(match o.step {
            Step::Release => {
                let since = Instant::now();
                // Waits until the store applied the release (and every earlier update):
                // the new instance may ask for a moved flow's state next.
                let done = inst.hand_over_as(m.handed_over_as(), &|b| m.has(b));
                let us = since.elapsed().as_secs_f64() * 1e6;
                let objects = match done {
                    HandedOver::Done(n) => n,
                    HandedOver::ForgetAfter => inst.forget_moved(&|b| m.has(b)),
                };
                (inst.name.clone(), objects, us)
            }
            Step::Take => {
                // Flows new here may have state in the store: its misses must ask it.
                inst.state.set_fresh(false);
                inst.take_buckets(&|b| m.has(b));
                inst.set_parallelism(m.parallelism);
                (inst.name.clone(), 0, 0.0)
            }
        });
    }

    /// Sends what instances queued for the store and waits for it (when idle).
    fn idle_sync(&mut self) {
        for t in &mut self.tasks {
            if t.dirty {
                t.inst.sync();
                t.dirty = false;
            }
        }
    }

    /// Decides, on the root's lcore, that the run is over.
    fn check_end(&mut self, now: u64) {
        if self.shared.phase.load(Ordering::Acquire) == STOPPING {
            return;
        }
        if let Some(f) = &self.shared.finished {
            if f.load(Ordering::Acquire) {
                self.shared.phase.store(STOPPING, Ordering::Release);
            }
            return;
        }
        let hz_10s = 10_000_000_000u64;
        let Some(r) = self.root.as_mut() else {
            return;
        };
        if self.shared.stop_request.load(Ordering::Acquire) {
            r.input_done = true;
        }
        let inflight = r.root.in_flight();
        self.shared
            .in_flight
            .store(inflight as u64, Ordering::Relaxed);
        // The oldest logged packet holds the log's ring: input stops until it settles.
        let blocked = inflight > 0 && r.root.room() < super::BURST;
        // A move due within the input's last burst is still taken.
        if !(r.input_done || blocked)
            || r.scaling.as_ref().is_some_and(Scaling::busy)
            || r.clone.as_ref().is_some_and(CloneRun::busy)
            || r.rejoin.as_ref().is_some_and(Rejoin::busy)
        {
            return;
        }
        if inflight == 0 {
            self.shared.phase.store(STOPPING, Ordering::Release);
        } else if self.io.clock.ns(now.wrapping_sub(r.last_progress)) > hz_10s {
            r.unsettled = inflight;
            self.io.error(format!(
                "{inflight} packets never settled at the root (missing deletes or commits){}",
                if r.input_done {
                    ""
                } else {
                    "; the oldest held the root's log full, so the input stopped"
                }
            ));
            self.shared.phase.store(STOPPING, Ordering::Release);
        }
    }

    /// Input: stamp, log, split (the root's lcore).
    fn poll_root(&mut self, now: u64) -> usize {
        let Some(r) = self.root.as_mut() else {
            return 0;
        };
        let mut n = 0;
        // Deletes from other lcores and hosts; commits from other hosts' stores.
        while let Some((c, w, x)) = r.inbox.deletes.pop() {
            r.root.on_delete(c, w, x);
            n += 1;
        }
        while let Some((c, id)) = r.inbox.commits.pop() {
            r.root.on_commit(c, id);
        }
        if !r.traditional {
            if let Err(e) = r.client.poll() {
                self.io.error(format!("root: store: {e}"));
            }
            while let Some(p) = r.client.take_push() {
                for c in p.push.commits {
                    r.root.on_commits(&c);
                }
            }
            // A store that came back (see `stores::follow_store_restart`).
            if r.client.stats.reconnects != r.store_reconnects {
                r.store_reconnects = r.client.stats.reconnects;
                if r.rejoin.as_ref().is_some_and(Rejoin::host_failing) {
                    // The failed host's updates that the store had not acknowledged are gone
                    // with it, and the store's commit notifications with the store: which
                    // logged packet still lacks an update cannot be told (Table 3.11).
                    let e = "the store and a host of the chain failed together: the run \
                             cannot be recovered exactly (restart the chain)"
                        .to_string();
                    self.io.fail(&self.shared, e);
                    return n;
                }
                // Subscribed again before another packet is admitted (a burst admitted
                // meanwhile stalled in about 1 of 30 runs).
                if let Err(e) = crate::stores::follow_store_restart(&mut r.client, &mut r.root) {
                    self.io.error(format!("root: {e}"));
                }
            }
        }
        let before = r.root.in_flight();
        let mut burst = std::mem::replace(&mut self.scratch, Burst::with_capacity(0));
        let mut src = None;
        let room = r
            .window
            .saturating_sub(r.root.in_flight())
            .min(r.root.room());
        let moving = r.scaling.as_ref().is_some_and(Scaling::busy)
            || r.clone.as_ref().is_some_and(CloneRun::holds_input)
            || r.rejoin.as_ref().is_some_and(Rejoin::busy);
        let paced = r
            .pace
            .as_mut()
            .is_none_or(|p| p.allowed(now, r.run.read) >= burst.capacity() as u64);
        if !r.input_done && !moving && paced && room >= burst.capacity() {
            for k in 0..r.rx.len() {
                r.rx[k].0.rx_burst(&mut burst);
                if !burst.is_empty() {
                    src = Some(k);
                    break;
                }
            }
        }
        let got = burst.len();
        if got > 0 {
            r.last_progress = now;
        }
        let ts_now = self.io.clock.now_ns(now);
        let egress = src.map_or(0, |k| r.rx[k].2);
        if let Some(k) = src {
            // The next poll starts with the next port.
            r.rx.rotate_left(k + 1);
        }
        for mut m in burst.drain(..) {
            n += 1;
            r.run.read += 1;
            let (ts_ns, wire_len) = match r.replay.as_mut() {
                Some(rp) => {
                    let rec = rp.records.get(rp.next).copied();
                    rp.next += 1;
                    match rec {
                        Some((ts, wl, cap)) if cap as usize == m.len() => (ts, wl),
                        _ => {
                            self.io.error(format!(
                                "input packet {} does not match the pcap file ({} bytes)",
                                rp.next - 1,
                                m.len()
                            ));
                            (ts_now, m.len() as u32)
                        }
                    }
                }
                None => (ts_now, m.len() as u32),
            };
            if !m.is_contiguous() {
                match (m.len() <= 16384).then(|| self.io.jumbo.alloc_from(&m.to_vec())) {
                    Some(Ok(j)) => m = j,
                    _ => {
                        r.run.oversize += 1;
                        self.io.drops += 1;
                        continue;
                    }
                }
            }
            let len = m.data_len();
            let shape = Packet::parse(m.data_mut(), len, ts_ns).hdr.shape;
            let mut meta = PktMeta {
                ts_ns,
                wire_len: wire_len.max(len as u32),
                t0: now,
                egress,
                ..PktMeta::default()
            };
            match shape {
                Shape::Malformed(_) => {
                    r.run.malformed += 1;
                    self.io.drops += 1;
                    continue;
                }
                Shape::NonIp => {
                    r.run.non_ip += 1;
                    self.io.out(m, meta);
                    continue;
                }
                Shape::Ip | Shape::Fragment => {}
            }
            let Some(clock) = r.root.admit(m.data(), meta.wire_len, ts_ns) else {
                self.io.drops += 1;
                continue;
            };
            meta.chc.clock = clock;
            meta.weight = FULL;
            match r.entry {
                Some(v) => self.io.route(&self.routers[v], m, meta),
                None => self.io.exit(m, meta),
            }
        }
        self.scratch = burst;
        // Deletes of packets that left from this lcore.
        for (c, w, x) in self.io.local_deletes.drain(..) {
            r.root.on_delete(c, w, x);
        }
        if let Some(rp) = &r.replay {
            if rp.next >= rp.records.len() {
                r.input_done = true;
            } else if got == 0 && self.io.clock.ns(now.wrapping_sub(r.last_check)) > 1_000_000 {
                // net_pcap drops a packet it has no mbuf for: count those as read.
                r.last_check = now;
                if let Some((_, _, _, port)) = r.rx.first() {
                    if let Ok(s) = port.stats() {
                        let lost = s.rx_no_mbuf + s.rx_errors;
                        if lost > 0 && rp.next as u64 + lost >= rp.records.len() as u64 {
                            r.lost_input = lost;
                            r.input_done = true;
                        }
                    }
                }
            }
        }
        if r.root.in_flight() < before {
            r.last_progress = now;
        }
        // Persist the clock every n packets; retire settled clocks every 2 ms.
        if let Some(counter) = r.root.persist_due() {
            r.client
                .submit_nonblocking(r.clock_key.set(&Value::Int(counter as i64)));
        }
        if self.io.clock.ns(now.wrapping_sub(r.last_retire)) > 2_000_000 {
            r.last_retire = now;
            let mut wm = r.root.watermark();
            if let Some(cr) = &r.clone {
                // Clocks the pair may re-do stay in the store's clock logs.
                wm = cr.hold.map_or(wm, |h| h.min(wm));
                cr.race.cloning.wm.store(wm, Ordering::Relaxed);
            }
            if let Some(h) = r.rejoin.as_ref().and_then(|rj| rj.hold) {
                wm = wm.min(h);
            }
            self.shared.watermark.store(wm, Ordering::Relaxed);
            for s in 0..r.client.shards() {
                r.client
                    .submit_to(s, super::nonblocking(ops::retire_clocks(r.root.id(), wm)));
            }
            let _ = r.client.flush();
        }
        n
    }

    /// Frames from other hosts: strip NSH, hand to the target instance.
    fn poll_links(&mut self) -> usize {
        let mut n = 0;
        let now = lcore::tsc();
        let mut burst = std::mem::replace(&mut self.scratch, Burst::with_capacity(0));
        for k in 0..self.links_rx.len() {
            self.links_rx[k].rx_burst(&mut burst);
            for mut m in burst.drain(..) {
                n += 1;
                let (mut meta, strip) = match PktMeta::read_encap(m.data()) {
                    Ok(x) => x,
                    Err(_) => {
                        // Whatever else the link carries (the kernel's neighbour discovery
                        // on a veth): not ours.
                        self.io.link_foreign += 1;
                        continue;
                    }
                };
                if m.adj(strip).is_err() {
                    self.io.link_foreign += 1;
                    continue;
                }
                meta.t0 = now;
                if meta.chc.flags.has(MetaFlags::REPLAY) {
                    // Replayed toward this host, or back from it: in full from here on.
                    meta.chc.flags.set(MetaFlags::REDO);
                }
                if meta.vertex == PASS_THROUGH {
                    self.io.out(m, meta);
                    continue;
                }
                let v = usize::from(meta.vertex);
                let i = usize::from(meta.instance);
                match self.routers.get(v).and_then(|r| r.dests.get(i)).copied() {
                    Some(Dest::Local(t)) => self.io.pending[t].push((m, meta)),
                    Some(Dest::Ring(k)) => {
                        meta.store(m.private_area_mut());
                        let out = &mut self.io.rings[k];
                        if let Err(m) = out.burst.push(m) {
                            flush_ring(out);
                            let _ = out.burst.push(m);
                        }
                    }
                    _ => {
                        self.io.error(format!(
                            "a packet for vertex {v} instance {i}, which is not here"
                        ));
                        self.io.lost(m, meta, "misrouted");
                    }
                }
            }
        }
        self.scratch = burst;
        n
    }

    /// Processes what instance `t` was handed.
    fn run_task(&mut self, t: usize) -> usize {
        if self.tasks[t].race.is_some() {
            self.race_tick(t);
        }
        let mut input = std::mem::take(&mut self.io.pending[t]);
        let mut n = input.len();
        for (m, meta) in input.drain(..) {
            self.process(t, m, meta);
        }
        // Keep the vector's capacity.
        if self.io.pending[t].is_empty() {
            self.io.pending[t] = input;
        }
        let mut burst = std::mem::replace(&mut self.scratch, Burst::with_capacity(0));
        self.tasks[t].ring.dequeue_burst(&mut burst);
        n += burst.len();
        for m in burst.drain(..) {
            let meta = PktMeta::load(m.private_area());
            self.process(t, m, meta);
        }
        self.scratch = burst;
        // A task with operations queued or held back is flushed even in a loop that brought
        // it nothing, so a held batch waits one loop at most.
        if n > 0 || self.tasks[t].dirty {
            self.tasks[t].inst.flush_coalesced(STORE_BATCH_OPS);
        }
        if n > 0 {
            self.tasks[t].dirty = true;
            if let Some(p) = &self.tasks[t].processed {
                p.fetch_add(n as u64, Ordering::Relaxed);
            }
            if let Some(r) = self.root.as_mut() {
                for (c, w, x) in self.io.local_deletes.drain(..) {
                    r.root.on_delete(c, w, x);
                }
            }
        }
        n
    }

    pub(super) fn process(&mut self, t: usize, mut m: Mbuf, mut meta: PktMeta) {
        if self.tasks[t].race.is_some() {
            return self.process_pair(t, m, meta);
        }
        let mark = self.io.lines.len();
        let verdict = self.run_nf(t, &mut m, &mut meta);
        if partial_replay(&meta) {
            return self.replayed_on(t, m, meta, verdict, mark);
        }
        self.forward(t, m, meta, verdict);
    }

    /// Upstream of a clone, a replayed packet is re-done for it alone: the store's clock log
    /// absorbs its updates and its events (from `mark` on) were written the first time.
    #[cold]
    fn replayed_on(&mut self, t: usize, m: Mbuf, mut meta: PktMeta, verdict: Verdict, mark: usize) {
        self.io.lines.truncate(mark);
        self.copy_to_taps(t, &m, &mut meta, true);
        match (verdict, self.tasks[t].next) {
            (Verdict::Drop, _) | (_, None) => {
                drop(m);
                self.io.replay_done();
            }
            (_, Some(r)) => self.io.route(&self.routers[r], m, meta),
        }
    }

    /// The NF of task `t` on one packet (after the instance's delay, if slowed), rewriting
    /// it and its metadata in place.
    #[inline(always)]
    pub(super) fn run_nf(&mut self, t: usize, m: &mut Mbuf, meta: &mut PktMeta) -> Verdict {
        let task = &mut self.tasks[t];
        if let Some(s) = task.delay.as_mut() {
            s.wait();
        }
        let mut chc = meta.chc;
        let len = m.data_len();
        let verdict = task.inst.process(
            m.data_mut(),
            (meta.wire_len as usize).max(len),
            meta.ts_ns,
            &mut chc,
            &mut self.io.lines,
        );
        meta.chc = chc;
        if let Verdict::Port(p) = verdict {
            if self.io.ports.get(usize::from(p)).is_some() {
                meta.egress = p;
            }
        }
        verdict
    }

    /// Where a processed packet goes: dropped, copied to taps, on to the next vertex, out.
    #[inline(always)]
    pub(super) fn forward(&mut self, t: usize, m: Mbuf, mut meta: PktMeta, verdict: Verdict) {
        if verdict == Verdict::Drop {
            self.io.drops += 1;
            self.io.retire(m, meta);
            return;
        }
        self.copy_to_taps(t, &m, &mut meta, false);
        let task = &self.tasks[t];
        match task.next {
            Some(r) => self.io.route(&self.routers[r], m, meta),
            None if task.exit && task.on_path => self.io.exit(m, meta),
            None => self.io.retire(m, meta),
        }
    }

    /// Copies for off-path taps: each takes half of the remaining weight and no vector. A
    /// replayed packet is copied only for a tap that leads to the clone (its shares of the
    /// weight go as the first time).
    #[inline(always)]
    fn copy_to_taps(&mut self, t: usize, m: &Mbuf, meta: &mut PktMeta, replayed: bool) {
        for k in 0..self.tasks[t].taps.len() {
            let w = meta.weight / 2;
            meta.weight -= w;
            let r = self.tasks[t].taps[k];
            if replayed && self.routers[r].race.is_none() && !self.routers[r].toward_clone {
                continue;
            }
            let copy_meta = PktMeta {
                chc: chc_proto::meta::ChcMeta {
                    vector: 0,
                    ..meta.chc
                },
                weight: w,
                ..*meta
            };
            match self.io.copy(m) {
                Some(c) => {
                    if replayed {
                        self.io.replay_fork();
                    }
                    self.io.route(&self.routers[r], c, copy_meta);
                }
                None if replayed => {
                    self.io
                        .error("mbuf pool exhausted: a replayed tap copy was dropped".into());
                    self.io.replay_lost();
                }
                None => {
                    self.io
                        .error("mbuf pool exhausted: a tap copy was dropped".into());
                    self.io.drops += 1;
                    self.io.delete(copy_meta.chc.clock, w, 0);
                }
            }
        }
    }

    /// Moves what other lcores queued for this lcore's ports and links to their queues.
    fn drain_tx_rings(&mut self) -> usize {
        let mut n = 0;
        for k in 0..self.tx_rings.len() {
            let target = self.tx_rings[k].1;
            let out = match target {
                TxTarget::Port(p) => match self.io.ports[p].as_mut() {
                    Some(o) => o,
                    None => continue,
                },
                TxTarget::Link(l) => &mut self.io.links[l].tx,
            };
            if !out.burst.is_empty() {
                let (sent, dropped) = flush_tx(out);
                let sel = match target {
                    TxTarget::Port(p) => TxSel::Port(p),
                    TxTarget::Link(l) => TxSel::Link(l),
                };
                self.io.account(sel, sent, dropped);
            }
            let out = match target {
                TxTarget::Port(p) => self.io.ports[p].as_mut().expect("present"),
                TxTarget::Link(l) => &mut self.io.links[l].tx,
            };
            n += self.tx_rings[k].0.dequeue_burst(&mut out.burst);
        }
        n
    }

    fn finish(mut self) -> Report {
        self.io.record_latencies();
        for t in &mut self.tasks {
            t.inst.sync();
        }
        self.io.write_events();
        if let Some(w) = &self.io.events {
            let _ = w.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
        let instances = self
            .tasks
            .iter()
            .map(|t| {
                (
                    t.vertex,
                    t.inst.idx,
                    t.inst.counters.clone(),
                    t.inst.state.stats,
                )
            })
            .collect();
        let root = self.root.as_mut().map(|r| {
            crate::stores::stop_root(&mut r.client, &r.root, &r.clock_key);
            (r.root.stats, r.run, r.unsettled, r.lost_input)
        });
        let mut records = Vec::new();
        for (p, out) in self.io.ports.iter_mut().enumerate() {
            if let Some(rec) = out.as_mut().and_then(|o| o.record.take()) {
                records.push((p as u16, rec));
            }
        }
        Report {
            instances,
            hist: std::mem::replace(&mut self.io.hist, super::histogram()),
            root,
            records,
            written: self.io.written,
            events: self.io.events_written,
            link_foreign: self.io.link_foreign,
            errors: std::mem::take(&mut self.io.errors),
            fatal: self.io.fatal.take(),
            moves: self
                .root
                .as_mut()
                .and_then(|r| r.scaling.as_mut())
                .map(|sc| std::mem::take(&mut sc.moves))
                .unwrap_or_default(),
            clone: self
                .root
                .as_ref()
                .and_then(|r| r.clone.as_ref())
                .map(CloneRun::summary),
            decisions: self
                .root
                .as_mut()
                .and_then(|r| r.scaling.as_mut())
                .and_then(|sc| sc.policies.as_mut())
                .map(|p| std::mem::take(&mut p.decisions))
                .unwrap_or_default(),
            rejoins: self
                .root
                .as_mut()
                .and_then(|r| r.rejoin.as_mut())
                .map(|rj| std::mem::take(&mut rj.done))
                .unwrap_or_default(),
            exits_absorbed: self.io.exits_absorbed,
        }
    }
}
