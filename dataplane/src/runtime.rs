//! The chain runtime on the embedded default: one thread per NF instance, a root thread
//! that reads the input, an output thread that writes the output and the events log, and
//! the store's shard threads in the same process.
//!
//! Instances exchange batches through bounded channels; a splitter after every instance
//! routes each packet by its downstream vertex's partition key. An instance whose packet
//! leaves the chain (an exit vertex, a drop, the end of an off-path branch) first queues the
//! packet's delete request for the root and only then its output, as §3.4.4 requires.
//!
//! Framework rules for imperfect input: malformed frames are dropped at the root and
//! counted; non-IP frames bypass the NFs and are output unchanged (counted); IP fragments
//! without an L4 header go through the chain and each NF decides (`NetworkFunction::fragment`).

use crate::config::{Chain, Vertex};
use crate::instance::{HandedOver, NfCounters, NfInstance};
use crate::pcapio::{self, PcapError};
use crate::split::{bucket, key_hash, Allocation, BUCKETS};
use crate::stores::{self, StateStore};
use crate::summary::{CloneSummary, Decision, MoveSummary, Summary, VertexSummary};
use chc_proto::meta::{ChcMeta, MetaFlags};
use chc_root::{Root, RootConfig, FULL};
use chc_store::client::cache::{Mode, StateStats};
use chc_store::client::ops;
use chc_store::Value;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;
use hdrhistogram::Histogram;
use nfs::nf::{tuple_json, Event, Verdict};
use nfs::packet::{Packet, Shape};
use nfs::PartitionKey;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a clone that has replayed the log may take to overtake its straggler.
pub(crate) const RACE: Duration = Duration::from_millis(500);

/// Packets per batch between threads.
pub const BATCH: usize = 32;
/// Batches an instance's input channel holds.
const CHANNEL_BATCHES: usize = 256;
/// How often an instance without input looks for moves to mark downstream.
const ORDERS_IDLE_CHECK: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error("starting the store: {0}")]
    Store(String),
    #[error("{0}")]
    Nf(String),
    #[error("writing {path}: {cause}")]
    Events {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0} packets never settled at the root (missing deletes or commits)")]
    Unsettled(usize),
    #[error("an instance thread of {0} panicked")]
    Panicked(String),
}

/// Random per-packet processing delays at one vertex (the paper's R4 experiment).
#[derive(Clone, Copy, Debug)]
pub struct Delay {
    pub min_us: u64,
    pub max_us: u64,
}

impl Delay {
    /// The delay of instance `inst` of vertex `name` in `delays`: given for the instance
    /// (`NAME#I`), else for the vertex.
    pub(crate) fn of(delays: &HashMap<String, Delay>, name: &str, inst: u16) -> Option<Delay> {
        delays
            .get(&format!("{name}#{inst}"))
            .or_else(|| delays.get(name))
            .copied()
    }
}

/// The random lengths of one instance's delays (xorshift): one seed gives an instance the
/// same sequence on both backends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DelayRng(u64);

impl DelayRng {
    pub(crate) fn new(seed: u64, vertex: u16, inst: u16) -> DelayRng {
        DelayRng(
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (u64::from(vertex) << 20 | u64::from(inst))
                | 1,
        )
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `MIN-MAX` (microseconds), or one number for a fixed delay.
impl std::str::FromStr for Delay {
    type Err = String;

    fn from_str(s: &str) -> Result<Delay, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let min_us = a.trim().parse().map_err(|_| "bad minimum".to_string())?;
        let max_us = b.trim().parse().map_err(|_| "bad maximum".to_string())?;
        if min_us > max_us {
            return Err("minimum above maximum".into());
        }
        Ok(Delay { min_us, max_us })
    }
}

/// How to run a chain.
#[derive(Clone)]
pub struct RunOptions {
    pub chain: Chain,
    pub input: PathBuf,
    pub output: PathBuf,
    pub events: Option<PathBuf>,
    /// Per-packet delays, by vertex name (every instance) or `NAME#I` (instance I only).
    pub delays: HashMap<String, Delay>,
    pub seed: u64,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Scaling steps the in-process manager takes, in order.
    pub scaling: Vec<ScaleStep>,
    /// Admit at most this many packets per second (a load level below capacity, so that
    /// latency is processing and not queueing); `None` reads as fast as the chain takes.
    pub rate_pps: Option<u64>,
    /// Stop every instance periodically, as a checkpointing framework (FTMB) does: the
    /// baseline CHC's externalised state makes unnecessary.
    pub pause: Option<Pause>,
    /// The operator's policies the in-process manager runs from the vertex manager's
    /// statistics (scaling decided at run time rather than at fixed points).
    pub policies: Vec<Policy>,
    /// How often the manager looks at the statistics and applies the policies.
    pub policy_period: Duration,
}

/// An operator's policy for one vertex (§3.2: the operator supplies the logic, the vertex
/// manager the statistics it needs).
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub vertex: String,
    pub rule: Rule,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Scale out while the vertex's instances average more than `pps` packets per second
    /// each over the last period (up to `max` instances); scale in while one instance fewer
    /// would average under half of it. One step per period.
    Autoscale { pps: u64, max: u16 },
    /// Clone an instance (once per run) whose time per packet has been more than `pct`
    /// percent above its siblings' median in several looks in a row, or, for an instance
    /// without siblings, above the best it did before (§3.4.3: user logic names the
    /// straggler, the framework clones it, races the two and keeps the faster). See
    /// `StragglerWatch`.
    Stragglers { pct: u32 },
}

impl Policy {
    /// `NAME:PCT`, the straggler rule.
    pub fn stragglers(s: &str) -> Result<Policy, String> {
        let bad = || format!("{s:?}: expected NAME:PCT (percent slower, e.g. nat:50)");
        let (vertex, pct) = s.split_once(':').ok_or_else(bad)?;
        let pct: u32 = pct.parse().map_err(|_| bad())?;
        if vertex.is_empty() || pct == 0 {
            return Err(bad());
        }
        Ok(Policy {
            vertex: vertex.to_string(),
            rule: Rule::Stragglers { pct },
        })
    }
}

/// The vertex manager's view of a vertex under a straggler policy: each instance's time per
/// packet over the last period in which it finished batches of enough packets (a slow
/// instance reports only when it finishes a long batch, so most periods have nothing new
/// of it; a fast one reports every period, so a burst of slow packets at it is soon
/// replaced by its next period's figure).
#[derive(Debug, Default)]
pub(crate) struct StragglerWatch {
    seen: Vec<(u64, u64)>,
    last: Vec<Option<f64>>,
    /// Each instance's best time per packet so far (the reference of a lone instance).
    best: Vec<f64>,
    /// The instance found slow in the last period(s), and for how many in a row.
    suspect: Option<(u16, u32)>,
}

/// Periods in a row an instance must be found slow before it is cloned: a start-up burst
/// (first packets of flows, cold caches) is not a straggler.
const STRAGGLER_PERIODS: u32 = 3;

impl StragglerWatch {
    pub(crate) fn new(instances: usize) -> StragglerWatch {
        StragglerWatch {
            seen: vec![(0, 0); instances],
            last: vec![None; instances],
            best: vec![0.0; instances],
            suspect: None,
        }
    }

    /// One period's look, given each instance's packets and busy nanoseconds so far: the
    /// straggler to clone, if an instance has been more than `pct` percent slower per
    /// packet than its siblings' median (alone: than its own best) in
    /// [`STRAGGLER_PERIODS`] looks in a row, with every instance measured.
    pub(crate) fn observe(&mut self, pct: u32, totals: &[(u64, u64)]) -> Option<u16> {
        for (i, &now) in totals.iter().enumerate() {
            let (n, ns) = (
                now.0.saturating_sub(self.seen[i].0),
                now.1.saturating_sub(self.seen[i].1),
            );
            if n >= STRAGGLER_MIN_PACKETS {
                self.seen[i] = now;
                self.last[i] = Some(ns as f64 / n as f64);
            }
        }
        // Slower than its siblings needs every sibling measured; until then the count of
        // looks in a row waits.
        let per: Vec<f64> = self.last.iter().copied().collect::<Option<_>>()?;
        let found = self.slowest(pct, &per);
        for (b, &p) in self.best.iter_mut().zip(&per) {
            if *b == 0.0 || p < *b {
                *b = p;
            }
        }
        self.suspect = match (found, self.suspect) {
            (Some(i), Some((j, n))) if i == j => Some((i, n + 1)),
            (Some(i), _) => Some((i, 1)),
            (None, _) => None,
        };
        self.suspect
            .filter(|&(_, n)| n >= STRAGGLER_PERIODS)
            .map(|(i, _)| i)
    }

    /// The instance most above its reference, if any is `pct` percent above it.
    fn slowest(&self, pct: u32, per: &[f64]) -> Option<u16> {
        let slow = 1.0 + f64::from(pct) / 100.0;
        let mut found: Option<(u16, f64)> = None;
        for (i, &p) in per.iter().enumerate() {
            let reference = if per.len() == 1 {
                self.best[i]
            } else {
                let mut others: Vec<f64> = per
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, &q)| q)
                    .collect();
                others.sort_by(f64::total_cmp);
                others[others.len() / 2]
            };
            let by = p / reference;
            if reference > 0.0 && by > slow && found.is_none_or(|(_, f)| by > f) {
                found = Some((i as u16, by));
            }
        }
        found.map(|(i, _)| i)
    }

    /// An instance's last measured time per packet, in nanoseconds.
    pub(crate) fn per_packet(&self, i: u16) -> f64 {
        self.last[usize::from(i)].unwrap_or(0.0)
    }
}

/// How many clocks a candidate straggler remembers before it drops those below the
/// root's watermark.
const RECENT_TRIM: usize = 4096;

/// Packets an instance must have finished since its last measurement for a new one.
const STRAGGLER_MIN_PACKETS: u64 = 8;

/// `NAME:PPS[:MAX]`, the autoscale rule (MAX defaults to 4 instances).
impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Policy, String> {
        let bad = || format!("{s:?}: expected NAME:PPS or NAME:PPS:MAX");
        let mut parts = s.split(':');
        let vertex = parts.next().filter(|v| !v.is_empty()).ok_or_else(bad)?;
        let pps: u64 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let max: u16 = match parts.next() {
            Some(m) => m.parse().map_err(|_| bad())?,
            None => 4,
        };
        if parts.next().is_some() || pps == 0 || max == 0 {
            return Err(bad());
        }
        Ok(Policy {
            vertex: vertex.to_string(),
            rule: Rule::Autoscale { pps, max },
        })
    }
}

impl Rule {
    /// The most instances the rule may run for a vertex that starts with `live` (the
    /// vertex's spares are made up to it): a straggler's clone takes one spare.
    pub fn max_instances(self, live: u16) -> u16 {
        match self {
            Rule::Autoscale { max, .. } => max,
            Rule::Stragglers { .. } => live + 1,
        }
    }

    /// The step this rule takes for a vertex with `live` instances that processed `rate`
    /// packets per second over the last period, if any.
    pub fn decide(self, rate: f64, live: u16) -> Option<ScaleAction> {
        match self {
            Rule::Stragglers { .. } => None,
            Rule::Autoscale { pps, max } => {
                let pps = pps as f64;
                if live < max && rate / f64::from(live) > pps {
                    Some(ScaleAction::Out)
                } else if live > 1 && rate / f64::from(live - 1) < pps / 2.0 {
                    Some(ScaleAction::In)
                } else {
                    None
                }
            }
        }
    }
}

impl RunOptions {
    /// A plain run: no events log, no delays, no scaling, input as fast as the chain takes.
    pub fn new(chain: Chain, input: impl Into<PathBuf>, output: impl Into<PathBuf>) -> Self {
        RunOptions {
            chain,
            input: input.into(),
            output: output.into(),
            events: None,
            delays: HashMap::new(),
            seed: 1,
            progress: false,
            scaling: Vec::new(),
            rate_pps: None,
            pause: None,
            policies: Vec::new(),
            policy_period: Duration::from_millis(100),
        }
    }
}

/// A periodic stop of every instance.
#[derive(Clone, Copy, Debug)]
pub struct Pause {
    pub every: Duration,
    pub length: Duration,
}

/// One scaling step of the in-process manager.
#[derive(Clone, Debug)]
pub struct ScaleStep {
    /// Taken once the root has read this many packets.
    pub after_packets: u64,
    pub vertex: String,
    pub action: ScaleAction,
    /// Move flows with the handover of Fig 3.7; `false` switches the splitters at once
    /// (the naive move, kept as a baseline that shows what goes wrong without it).
    pub handover: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleAction {
    /// A new instance takes an even share of every instance's buckets.
    Out,
    /// The highest-numbered live instance gives its buckets to the others and retires.
    In,
    /// Instance N is a straggler: a clone replays the root's log, races it on a copy of its
    /// traffic, and the slower of the two goes (§3.4.3). With `handover: false` the
    /// duplicate outputs are not suppressed (the baseline of Table 3.18).
    Clone(u16),
}

/// A straggler and its clone: the clone has the straggler's identity (its state updates
/// carry the same instance id, so the store's clock log absorbs the second of each) and
/// its own slot.
///
/// A scripted clone (`--scale NAME:clone=I@N`) knows its straggler from the start, and the
/// straggler marks every clock it processes from then on. Under a straggler policy the
/// straggler is chosen while the chain runs: every instance of the vertex remembers the
/// clocks it processed (back to the root's watermark), and the chosen one hands them over
/// as marks when it starts racing; the clone waits for that before it processes anything.
pub struct Cloning {
    pub(crate) vertex: usize,
    /// The straggler's slot and instance id ([`NOT_CHOSEN`] until a policy picks it).
    straggler: std::sync::atomic::AtomicU16,
    /// The clone's slot.
    pub(crate) slot: u16,
    /// The straggler is chosen by a policy while the chain runs.
    pub(crate) on_policy: bool,
    /// The straggler's marks are complete: the clone may process.
    marked: std::sync::atomic::AtomicBool,
    /// Suppress duplicate outputs (off only in the baseline).
    dedup: bool,
    /// Clocks one of the two has emitted and the other not yet.
    twins: Mutex<HashSet<u64>>,
    /// The root's (held) watermark: older clocks are never replayed again.
    pub(crate) wm: AtomicU64,
    /// The last clock each of the two processed (straggler, clone).
    pub(crate) progress: [AtomicU64; 2],
    pub(crate) suppressed: AtomicU64,
}

/// [`Cloning`]'s straggler before a policy chose one.
pub(crate) const NOT_CHOSEN: u16 = u16::MAX;

impl Cloning {
    pub(crate) fn new(vertex: usize, of: u16, slot: u16, dedup: bool) -> Cloning {
        Cloning {
            vertex,
            straggler: of.into(),
            slot,
            on_policy: false,
            marked: true.into(),
            dedup,
            twins: Mutex::new(HashSet::new()),
            wm: AtomicU64::new(0),
            progress: [AtomicU64::new(0), AtomicU64::new(0)],
            suppressed: AtomicU64::new(0),
        }
    }

    /// A clone in `slot` for whichever instance of `vertex` a policy finds straggling.
    pub(crate) fn on_policy(vertex: usize, slot: u16) -> Cloning {
        Cloning {
            straggler: NOT_CHOSEN.into(),
            on_policy: true,
            marked: false.into(),
            ..Cloning::new(vertex, NOT_CHOSEN, slot, true)
        }
    }

    /// The straggler's slot and instance id.
    pub(crate) fn of(&self) -> u16 {
        self.straggler.load(Ordering::Acquire)
    }

    pub(crate) fn choose(&self, of: u16) {
        self.straggler.store(of, Ordering::Release);
    }

    /// The straggler chosen by a policy has processed `clocks` before it started racing:
    /// each counts as emitted by it.
    pub(crate) fn mark_processed(&self, clocks: impl Iterator<Item = u64>) {
        let wm = self.wm.load(Ordering::Relaxed);
        let mut g = self.twins.lock();
        let mut last = 0;
        for c in clocks.filter(|&c| c >= wm) {
            g.insert(c);
            last = last.max(c);
        }
        self.progress[0].fetch_max(last, Ordering::Relaxed);
        drop(g);
        self.marked.store(true, Ordering::Release);
    }

    /// Whether the straggler's marks are complete.
    pub(crate) fn marked(&self) -> bool {
        self.marked.load(Ordering::Acquire)
    }

    /// Whether the clone has processed as far as the straggler.
    pub(crate) fn clone_ahead(&self) -> bool {
        self.progress[1].load(Ordering::Relaxed) >= self.progress[0].load(Ordering::Relaxed)
    }

    /// Whether this copy of `clock` is the first out of the pair.
    pub(crate) fn first(&self, clock: u64, who: usize) -> bool {
        self.progress[who].fetch_max(clock, Ordering::Relaxed);
        if !self.dedup {
            return true;
        }
        let mut g = self.twins.lock();
        if g.remove(&clock) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if g.len() > 1 << 16 {
            let wm = self.wm.load(Ordering::Relaxed);
            g.retain(|&c| c >= wm);
        }
        g.insert(clock);
        true
    }
}

/// From instances to the root (the in-process manager).
enum Ctl {
    /// The clone has replayed the log and processed the traffic it held.
    CaughtUp,
    /// The kept instance has processed every copy sent before the retirement.
    TwinsDone,
    /// The retired instance's state operations have all reached the store. With both,
    /// clocks may be retired again.
    DroppedDone,
}

/// Buckets moving from one instance of a vertex to another.
pub struct Move {
    pub(crate) id: u64,
    pub(crate) from: u16,
    pub(crate) to: u16,
    pub(crate) buckets: Vec<bool>,
    /// Instances the vertex runs once the move is done.
    pub(crate) parallelism: u16,
    handover: bool,
}

impl Move {
    /// What the old instance of `vertex` reports of this move once it handed `objects`
    /// over in `handover_us`.
    pub(crate) fn handed_over(
        &self,
        vertex: &str,
        objects: usize,
        handover_us: f64,
    ) -> MoveSummary {
        MoveSummary {
            id: self.id,
            vertex: vertex.to_string(),
            from: self.from,
            to: self.to,
            buckets: self.buckets.iter().filter(|&&b| b).count(),
            objects,
            handover_us,
            held: 0,
            paused_us: None,
        }
    }

    /// Whether the flows move with the handover (not the naive baseline).
    pub(crate) fn handover(&self) -> bool {
        self.handover
    }

    /// The instance count the old instance hands over as: the vertex's once the move is
    /// done, or, for an instance that is then no longer one of them (scaled in), at least
    /// two. A retiring instance must not take cross-flow objects exclusively: the one left
    /// does, and the retired one may be scaled out again while that one holds them.
    pub(crate) fn handed_over_as(&self) -> u16 {
        if self.from >= self.parallelism {
            self.parallelism.max(2)
        } else {
            self.parallelism
        }
    }

    pub(crate) fn has(&self, b: usize) -> bool {
        self.buckets[b % BUCKETS]
    }
}

/// What the splitters in front of a vertex are told.
#[derive(Clone)]
enum Order {
    Move(Arc<Move>),
    /// Copy the straggler's traffic to its clone.
    Twin,
    /// Stop copying; the straggler's buckets go to `keep`, `drop` discards what it has.
    Retire {
        keep: u16,
        drop: u16,
    },
}

/// The orders published for one vertex; every splitter in front of it applies them in order.
#[derive(Default)]
struct Board {
    epoch: AtomicUsize,
    orders: Mutex<Vec<Order>>,
}

impl Board {
    fn publish(&self, os: impl IntoIterator<Item = Order>) {
        let mut g = self.orders.lock();
        g.extend(os);
        self.epoch.store(g.len(), Ordering::Release);
    }
}

/// One packet in flight.
pub struct Pkt {
    pub data: Vec<u8>,
    pub wire_len: u32,
    pub ts_ns: u64,
    pub meta: ChcMeta,
    /// The share of the root's weight this copy carries.
    pub weight: u64,
    /// Admission time, ns since the run started.
    pub t0: u64,
    /// A straggler's packet copied to its clone.
    pub twin: bool,
    /// The splitter that sent it (set as it routes the packet).
    pub from: u16,
}

impl Pkt {
    /// A copy of this packet in `data` (a recycled buffer or a new one).
    fn copy_into(&self, mut data: Vec<u8>) -> Pkt {
        data.extend_from_slice(&self.data);
        Pkt {
            data,
            wire_len: self.wire_len,
            ts_ns: self.ts_ns,
            meta: self.meta,
            weight: self.weight,
            t0: self.t0,
            twin: self.twin,
            from: self.from,
        }
    }
}

enum ToInstance {
    Batch(Vec<Pkt>),
    Eof,
    /// From each splitter to the old instance: nothing of the move's buckets follows
    /// (handover step 1).
    Last(Arc<Move>),
    /// From each splitter (by its id) to the new instance: the move's buckets follow from
    /// it (step 2).
    First(Arc<Move>, u16),
    /// From the old instance to the new one: the state is handed over and every output of
    /// the moved flows is queued downstream (steps 6 and 8).
    Released(u64),
    /// The end of the root's replay for a clone, behind the replayed packets.
    ReplayEnd,
    /// To the slower of a straggler and its clone: discard what follows.
    Retired,
    /// To the faster: no copies follow.
    TwinEnd,
    /// From the manager to a spare: be the clone of the straggler a policy chose.
    Become(Box<NfInstance>, Arc<Cloning>),
    /// From a straggler chosen by a policy to its clone: its marks are complete.
    Marked,
}

enum ToOutput {
    Packets(Vec<Pkt>),
    Events(Vec<String>),
}

/// Buffers recycled between the root (which fills them) and the threads that retire packets.
type Pool = Arc<ArrayQueue<Vec<u8>>>;

fn recycle(pool: &Pool, mut b: Vec<u8>) {
    b.clear();
    let _ = pool.push(b);
}

/// Routes packets to a vertex's instances.
struct Downstream {
    /// Which splitter this is (packets and "first" marks carry it).
    id: u16,
    txs: Vec<Sender<ToInstance>>,
    /// This splitter's bucket -> instance table (each splitter switches when it marks).
    table: Vec<u16>,
    board: Arc<Board>,
    applied: usize,
    key: PartitionKey,
    pending: Vec<Vec<Pkt>>,
    /// The vertex this splitter feeds.
    to: usize,
    /// A clone in the chain (where replayed packets go), and whether `to` leads to it.
    cloning: Option<Arc<Cloning>>,
    toward_clone: bool,
    /// Copying the straggler's packets to the clone: (straggler slot, clone slot).
    twin: Option<(u16, u16)>,
}

fn bucket_of(pkt: &mut Pkt, key: PartitionKey) -> usize {
    let n = pkt.data.len();
    let p = Packet::parse(&mut pkt.data, n, 0);
    bucket(key_hash(&p, key))
}

impl Downstream {
    fn route(&mut self, mut pkt: Pkt) {
        self.follow_orders();
        pkt.from = self.id;
        let slot = self.table[bucket_of(&mut pkt, self.key)];
        if pkt.meta.flags.has(MetaFlags::REPLAY) {
            // A replayed packet goes only where it leads to the clone.
            match &self.cloning {
                Some(c) if c.vertex == self.to && slot == c.of() => {
                    self.pending[usize::from(c.slot)].push(pkt);
                }
                Some(c) if c.vertex == self.to => {}
                Some(_) if self.toward_clone => self.pending[usize::from(slot)].push(pkt),
                _ => {}
            }
            return;
        }
        if let Some((of, clone)) = self.twin {
            if slot == of {
                let mut copy = pkt.copy_into(Vec::new());
                copy.twin = true;
                self.pending[usize::from(clone)].push(copy);
            }
        }
        self.pending[usize::from(slot) % self.txs.len()].push(pkt);
    }

    /// Whether this splitter feeds the clone's vertex or one that leads to it.
    fn leads_to_clone(&self) -> bool {
        self.toward_clone || self.cloning.as_ref().is_some_and(|c| c.vertex == self.to)
    }

    /// Applies the orders published since the last look (one atomic load when there are
    /// none).
    fn follow_orders(&mut self) {
        if self.board.epoch.load(Ordering::Acquire) != self.applied {
            self.apply_orders();
        }
    }

    /// Sends what is pending for `slot`, then `mark` behind it.
    fn mark(&mut self, slot: usize, mark: ToInstance) {
        let q = std::mem::take(&mut self.pending[slot]);
        if !q.is_empty() {
            let _ = self.txs[slot].send(ToInstance::Batch(q));
        }
        let _ = self.txs[slot].send(mark);
    }

    /// Switches this splitter's table for moves published since the last look: what was
    /// routed to the old instance goes first, then the "last" mark; the "first" mark leads
    /// the moved buckets at the new instance.
    fn apply_orders(&mut self) {
        let orders: Vec<Order> = {
            let g = self.board.orders.lock();
            g[self.applied..].to_vec()
        };
        self.applied += orders.len();
        for o in orders {
            let m = match o {
                Order::Move(m) => m,
                Order::Twin => {
                    if let Some(c) = &self.cloning {
                        self.twin = Some((c.of(), c.slot));
                    }
                    continue;
                }
                Order::Retire { keep, drop } => {
                    self.twin = None;
                    self.mark(usize::from(drop), ToInstance::Retired);
                    self.mark(usize::from(keep), ToInstance::TwinEnd);
                    for e in self.table.iter_mut() {
                        if *e == drop {
                            *e = keep;
                        }
                    }
                    continue;
                }
            };
            let (from, to) = (usize::from(m.from), usize::from(m.to));
            if m.handover {
                self.mark(from, ToInstance::Last(m.clone()));
            }
            for (b, slot) in self.table.iter_mut().enumerate() {
                if m.has(b) {
                    *slot = m.to;
                }
            }
            if m.handover {
                let _ = self.txs[to].send(ToInstance::First(m.clone(), self.id));
            }
        }
    }

    /// Sends everything and the end of input (after any move not yet marked).
    fn finish(&mut self) {
        self.follow_orders();
        self.flush(true);
        for tx in &self.txs {
            let _ = tx.send(ToInstance::Eof);
        }
    }

    /// Passes the end of a replay on, behind everything routed so far.
    fn replay_end(&mut self) {
        self.flush(true);
        for tx in &self.txs {
            let _ = tx.send(ToInstance::ReplayEnd);
        }
    }

    /// Sends full (or, with `all`, every) pending batch; blocks when a channel is full.
    fn flush(&mut self, all: bool) {
        for (i, q) in self.pending.iter_mut().enumerate() {
            if q.is_empty() || (!all && q.len() < BATCH) {
                continue;
            }
            let b = std::mem::take(q);
            let _ = self.txs[i].send(ToInstance::Batch(b));
        }
    }

    /// Like `flush(true)` but gives up on full channels (the root must keep draining deletes).
    fn try_flush(&mut self) -> bool {
        let mut all_sent = true;
        for (i, q) in self.pending.iter_mut().enumerate() {
            if q.is_empty() {
                continue;
            }
            let b = std::mem::take(q);
            match self.txs[i].try_send(ToInstance::Batch(b)) {
                Ok(()) => {}
                Err(TrySendError::Full(ToInstance::Batch(b))) => {
                    *q = b;
                    all_sent = false;
                }
                Err(_) => {}
            }
        }
        all_sent
    }

    fn pending_len(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }
}

struct InstanceStats {
    vertex: usize,
    instance: u16,
    counters: NfCounters,
    hist: Histogram<u64>,
    state: StateStats,
    moves: Vec<MoveSummary>,
}

/// A move this instance takes: packets of its buckets wait until the old instance is done.
struct Incoming {
    m: Arc<Move>,
    released: bool,
    held: Vec<Pkt>,
    /// Splitters whose "first" mark came: their packets of the move's buckets are held.
    firsts: Vec<u16>,
}

struct Instance {
    inst: NfInstance,
    rx: Receiver<ToInstance>,
    next: Option<Downstream>,
    taps: Vec<Downstream>,
    exit: bool,
    on_path: bool,
    root_tx: Sender<Vec<(u64, u64, u32)>>,
    out_tx: Sender<ToOutput>,
    pool: Pool,
    delay: Option<Delay>,
    rng: DelayRng,
    senders: usize,
    start: Instant,
    stats: InstanceStats,
    pause: Option<Pause>,
    next_pause: Instant,
    /// The inputs of this vertex's instances (handovers go straight to the new one).
    siblings: Vec<Sender<ToInstance>>,
    key: PartitionKey,
    /// "Last" marks seen per move, and when the first came.
    lasts: HashMap<u64, (usize, Instant)>,
    incoming: Vec<Incoming>,
    /// Handovers that came before any "first" mark of their move.
    released_early: Vec<u64>,
    /// Moves away from here waiting for moves to here to finish.
    deferred: Vec<Arc<Move>>,
    /// This instance's part in a straggler/clone pair, while outputs are raced.
    race: Option<(Arc<Cloning>, usize)>,
    /// The clone: replaying the root's log (copies of the straggler's traffic wait).
    replaying: bool,
    replay_ends: usize,
    twins_held: Vec<Pkt>,
    /// The clone: clocks it processed (a packet may come both replayed and copied).
    seen: HashSet<u64>,
    /// This vertex leads to the clone's (it passes the end of a replay on).
    toward_clone: bool,
    /// The slower of the pair, retired: it discards what it still gets.
    discarding: bool,
    twin_ends: usize,
    ctl: Sender<Ctl>,
    /// Packets this instance processed, for the vertex manager's statistics.
    processed: Arc<AtomicU64>,
    /// Packets and nanoseconds of the batches it finished (measured only under a
    /// straggler policy).
    busy_ns: Option<Arc<[AtomicU64; 2]>>,
    /// Under a straggler policy: the pair this instance joins if it is chosen, and the
    /// clocks it processed meanwhile (back to the root's watermark).
    candidate: Option<Arc<Cloning>>,
    recent: std::collections::VecDeque<u64>,
    /// The clone, until its straggler's marks are complete: everything that comes.
    gated: std::collections::VecDeque<ToInstance>,
}

/// What one burst produced, sent on at its end.
#[derive(Default)]
struct Burst {
    deletes: Vec<(u64, u64, u32)>,
    out: Vec<Pkt>,
    lines: Vec<String>,
}

impl Instance {
    fn run(mut self) -> InstanceStats {
        let mut eofs = 0;
        let mut b = Burst::default();
        loop {
            // Moves published for the vertices downstream are marked (handover steps 1 and
            // 2) at once, not at the next packet this instance routes: the old instance
            // waits for the "last" mark of every splitter in front of it, spares and idle
            // instances included, and a splitter without traffic would never send it.
            for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
                d.follow_orders();
            }
            self.check_chosen();
            let (msg, kept) = match self.ungated() {
                Some(m) => (m, true),
                None => match self.rx.recv_timeout(ORDERS_IDLE_CHECK) {
                    Ok(m) => (m, false),
                    Err(channel::RecvTimeoutError::Timeout) => continue,
                    Err(channel::RecvTimeoutError::Disconnected) => break,
                },
            };
            // What comes while kept messages wait goes behind them (the marks may have
            // completed while this instance waited for it).
            if self.waits_for_marks() || (!kept && !self.gated.is_empty()) {
                self.gated.push_back(msg);
                continue;
            }
            match msg {
                ToInstance::Batch(batch) if self.discarding => {
                    for p in batch {
                        recycle(&self.pool, p.data);
                    }
                }
                ToInstance::Batch(batch) if self.replaying => {
                    for p in batch {
                        if p.twin {
                            self.twins_held.push(p);
                        } else {
                            self.process(p, &mut b);
                        }
                    }
                    self.end_burst(&mut b);
                }
                ToInstance::Batch(batch) => {
                    // Chosen meanwhile: the copies to the clone may be in this batch, and
                    // the straggler races on every packet the clone also gets.
                    self.check_chosen();
                    let t0 = self
                        .busy_ns
                        .is_some()
                        .then(|| (Instant::now(), batch.len()));
                    self.processed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if let Some(p) = self.pause {
                        if Instant::now() >= self.next_pause {
                            std::thread::sleep(p.length);
                            self.next_pause = Instant::now() + p.every;
                        }
                    }
                    for pkt in batch {
                        if let Some(pkt) = self.hold(pkt) {
                            self.process(pkt, &mut b);
                        }
                    }
                    self.end_burst(&mut b);
                    if let (Some((t0, n)), Some(w)) = (t0, &self.busy_ns) {
                        w[0].fetch_add(n as u64, Ordering::Relaxed);
                        w[1].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                }
                ToInstance::Become(inst, c) => {
                    self.inst = *inst;
                    self.race = Some((c, 1));
                    self.replaying = true;
                }
                ToInstance::Marked => {}
                ToInstance::Eof => eofs += 1,
                ToInstance::Last(m) => {
                    let e = self.lasts.entry(m.id).or_insert((0, Instant::now()));
                    e.0 += 1;
                    if e.0 == self.senders {
                        if self.settled_before(m.id) {
                            self.hand_over(&m);
                        } else {
                            // Packets held for an earlier move may be of these buckets:
                            // they are processed here first.
                            self.deferred.push(m);
                        }
                    }
                }
                ToInstance::First(m, from) => {
                    if let Some(i) = self.incoming.iter_mut().find(|i| i.m.id == m.id) {
                        i.firsts.push(from);
                    }
                    let known = self.incoming.iter().any(|i| i.m.id == m.id);
                    if !known && self.released_early.contains(&m.id) {
                        // Handed over already: the first packet of these buckets may come
                        // next.
                        self.inst.take_buckets(&|b| m.has(b));
                    }
                    if !known && !self.released_early.contains(&m.id) {
                        // Flows new here may have state in the store: misses must ask it.
                        self.inst.state.set_fresh(false);
                        self.incoming.push(Incoming {
                            m,
                            released: false,
                            held: Vec::new(),
                            firsts: vec![from],
                        });
                    }
                }
                ToInstance::Released(id) => self.released(id, &mut b),
                ToInstance::ReplayEnd => {
                    self.replay_ends += 1;
                    if self.replay_ends == self.senders {
                        self.replay_ends = 0;
                        if self.replaying {
                            self.replaying = false;
                            for p in std::mem::take(&mut self.twins_held) {
                                self.process(p, &mut b);
                            }
                            self.end_burst(&mut b);
                            let _ = self.ctl.send(Ctl::CaughtUp);
                        }
                        if self.toward_clone {
                            for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
                                d.replay_end();
                            }
                        }
                    }
                }
                ToInstance::Retired => {
                    self.discarding = true;
                    self.race = None;
                    // Its updates still on the way must meet the clock logs they repeat.
                    self.inst.sync();
                    let _ = self.ctl.send(Ctl::DroppedDone);
                }
                ToInstance::TwinEnd => {
                    self.twin_ends += 1;
                    if self.twin_ends == self.senders {
                        self.race = None;
                        self.seen = HashSet::new();
                        let _ = self.ctl.send(Ctl::TwinsDone);
                    }
                }
            }
            if eofs >= self.senders && self.settled_in() {
                break;
            }
        }
        self.inst.sync();
        for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
            d.finish();
        }
        self.stats.counters = self.inst.counters.clone();
        self.stats.state = self.inst.state.stats;
        self.stats
    }

    /// Sends what a burst produced: deletes to the root before the outputs they cover.
    fn end_burst(&mut self, b: &mut Burst) {
        self.inst.flush();
        if !b.deletes.is_empty() {
            let _ = self.root_tx.send(std::mem::take(&mut b.deletes));
        }
        if !b.out.is_empty() {
            let _ = self
                .out_tx
                .send(ToOutput::Packets(std::mem::take(&mut b.out)));
        }
        if !b.lines.is_empty() {
            let _ = self
                .out_tx
                .send(ToOutput::Events(std::mem::take(&mut b.lines)));
        }
        for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
            d.flush(true);
        }
    }

    /// No move to this instance is waiting for its old instance.
    fn settled_in(&self) -> bool {
        self.incoming.iter().all(|i| i.released)
    }

    /// No move to this instance published before move `id` is waiting for its old
    /// instance. Moves published later do not hold a move away back: their packets come
    /// after its "last" marks, and their old instance may itself wait for this move (an
    /// instance scaled in and out again at once), which would never end.
    fn settled_before(&self, id: u64) -> bool {
        self.incoming.iter().all(|i| i.released || i.m.id > id)
    }

    /// Keeps a packet of a bucket still moving here (handover step 4); returns the others.
    fn hold(&mut self, mut pkt: Pkt) -> Option<Pkt> {
        if self.settled_in() {
            return Some(pkt);
        }
        let b = bucket_of(&mut pkt, self.key);
        // Only what a splitter sent after its "first" mark belongs to a move: before it,
        // this instance still had (or had again) the bucket. Of several moves of the bucket
        // here not yet taken over (it went away and came back meanwhile), the packet
        // belongs to the newest the splitter marked: it waits for that one's state.
        let from = pkt.from;
        match self
            .incoming
            .iter_mut()
            .filter(|i| !i.released && i.m.has(b) && i.firsts.contains(&from))
            .max_by_key(|i| i.m.id)
        {
            Some(i) => {
                i.held.push(pkt);
                None
            }
            None => Some(pkt),
        }
    }

    /// The old instance, after the last packet of the moved buckets: flush and release
    /// their state (step 5; every output is already queued downstream), then tell the new
    /// instance (step 6).
    fn hand_over(&mut self, m: &Move) {
        let since = self.lasts.get(&m.id).map_or_else(Instant::now, |e| e.1);
        let done = if m.handover {
            self.inst.hand_over_as(m.handed_over_as(), &|b| m.has(b))
        } else {
            HandedOver::Done(0)
        };
        let _ = self.siblings[usize::from(m.to)].send(ToInstance::Released(m.id));
        let handover_us = since.elapsed().as_secs_f64() * 1e6;
        // Released by bucket: the moved flows' cached state goes now, after the new instance
        // was told and before this one serves another packet.
        let objects = match done {
            HandedOver::Done(n) => n,
            HandedOver::ForgetAfter => self.inst.forget_moved(&|b| m.has(b)),
        };
        self.stats
            .moves
            .push(m.handed_over(&self.inst.name, objects, handover_us));
    }

    /// The new instance takes over (step 7): the held packets go first, in their order.
    fn released(&mut self, id: u64, b: &mut Burst) {
        let Some(i) = self.incoming.iter().position(|i| i.m.id == id) else {
            self.released_early.push(id);
            return;
        };
        self.incoming[i].released = true;
        let m = self.incoming[i].m.clone();
        self.inst.take_buckets(&|b| m.has(b));
        // The held packets come after the move: the instance counts as one of the vertex's
        // instances then (whatever it was last told, say when it was scaled in before).
        if self.settled_in() {
            self.inst.set_parallelism(m.parallelism);
        }
        let held = std::mem::take(&mut self.incoming[i].held);
        let n = held.len() as u64;
        for pkt in held {
            self.process(pkt, b);
        }
        self.end_burst(b);
        self.stats.moves.push(MoveSummary {
            id,
            vertex: self.inst.name.clone(),
            from: self.incoming[i].m.from,
            to: self.incoming[i].m.to,
            buckets: 0,
            objects: 0,
            handover_us: 0.0,
            held: n,
            paused_us: None,
        });
        let (ready, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|m| self.settled_before(m.id));
        self.deferred = wait;
        for m in ready {
            self.hand_over(&m);
        }
    }

    /// Under a straggler policy: once this instance is chosen, it hands the clocks it
    /// processed to the pair as marks and races from here on; once another is, it stops
    /// remembering them.
    fn check_chosen(&mut self) {
        let Some(c) = &self.candidate else {
            return;
        };
        let of = c.of();
        if of == NOT_CHOSEN {
            return;
        }
        let c = self.candidate.take().expect("checked above");
        let recent = std::mem::take(&mut self.recent);
        if of == self.stats.instance {
            // Its updates so far are in the store before the clone reads any state.
            self.inst.sync();
            c.mark_processed(recent.into_iter());
            let _ = self.siblings[usize::from(c.slot)].send(ToInstance::Marked);
            self.race = Some((c, 0));
        }
    }

    /// The clone, until its straggler's marks are complete, keeps what comes.
    fn waits_for_marks(&self) -> bool {
        matches!(&self.race, Some((c, 1)) if !c.marked())
    }

    /// What the clone kept while it waited, in order, once it may process.
    fn ungated(&mut self) -> Option<ToInstance> {
        if self.gated.is_empty() || self.waits_for_marks() {
            return None;
        }
        self.gated.pop_front()
    }

    fn process(&mut self, mut pkt: Pkt, b: &mut Burst) {
        let Burst {
            deletes,
            out,
            lines,
        } = b;
        let clock = pkt.meta.clock;
        if let Some(c) = &self.candidate {
            self.recent.push_back(clock);
            if self.recent.len() >= RECENT_TRIM {
                let wm = c.wm.load(Ordering::Relaxed);
                while self.recent.front().is_some_and(|&f| f < wm) {
                    self.recent.pop_front();
                }
            }
        }
        let clone = matches!(&self.race, Some((_, 1)));
        if clone && !self.seen.insert(clock) {
            // The clone sees each clock once (a packet may come replayed and copied).
            recycle(&self.pool, pkt.data);
            return;
        }
        // Upstream of the clone, a replayed packet is re-done for it alone: its updates are
        // absorbed by the store's clock log and its events were logged the first time.
        let replayed = !clone && pkt.meta.flags.has(MetaFlags::REPLAY);
        // While the pair races, each may be ahead of the other: both read state as of the
        // packet's clock and let the store decide their updates (a cached value, refreshed
        // by the other's callbacks, could be from a later packet).
        let raced = self.race.is_some();
        if raced {
            pkt.meta.flags.0 |= MetaFlags::REPLAY;
        }
        if let Some(d) = self.delay {
            self.sleep_random(d);
        }
        let mark = lines.len();
        let verdict = self.inst.process(
            &mut pkt.data,
            pkt.wire_len as usize,
            pkt.ts_ns,
            &mut pkt.meta,
            lines,
        );
        if let Some((c, who)) = &self.race {
            if !c.first(clock, *who) {
                // The other of the pair got here first: this copy and its events go.
                lines.truncate(mark);
                recycle(&self.pool, pkt.data);
                return;
            }
        }
        if raced {
            pkt.meta.flags.0 &= !MetaFlags::REPLAY;
            pkt.twin = false;
        }
        if replayed {
            lines.truncate(mark);
            if verdict == Verdict::Drop || self.next.is_none() {
                recycle(&self.pool, pkt.data);
                return;
            }
        }
        if verdict == Verdict::Drop {
            self.retire(pkt, deletes);
            return;
        }
        // Copies for off-path taps: each takes half of the remaining weight, no vector (the
        // main copy carries the vector so far, and the XOR of all terminals adds up).
        for i in 0..self.taps.len() {
            let w = pkt.weight / 2;
            pkt.weight -= w;
            // A replayed packet is copied only for a tap that leads to the clone.
            if replayed && !self.taps[i].leads_to_clone() {
                continue;
            }
            let mut copy = pkt.copy_into(self.pool.pop().unwrap_or_default());
            copy.meta.vector = 0;
            copy.weight = w;
            self.taps[i].route(copy);
        }
        match self.next.as_mut() {
            Some(d) => d.route(pkt),
            None => {
                if self.exit && self.on_path {
                    self.record_latency(&pkt);
                    deletes.push((pkt.meta.clock, pkt.weight, pkt.meta.vector));
                    out.push(pkt);
                } else {
                    // The end of an off-path branch: the copy is consumed here.
                    self.retire(pkt, deletes);
                }
            }
        }
    }

    fn retire(&mut self, pkt: Pkt, deletes: &mut Vec<(u64, u64, u32)>) {
        self.record_latency(&pkt);
        deletes.push((pkt.meta.clock, pkt.weight, pkt.meta.vector));
        recycle(&self.pool, pkt.data);
    }

    fn record_latency(&mut self, pkt: &Pkt) {
        let now = self.start.elapsed().as_nanos() as u64;
        let _ = self.stats.hist.record(now.saturating_sub(pkt.t0).max(1));
    }

    fn sleep_random(&mut self, d: Delay) {
        let span = d.max_us.saturating_sub(d.min_us) + 1;
        let us = d.min_us + self.rng.next() % span;
        let until = Instant::now() + Duration::from_micros(us);
        if us > 200 {
            std::thread::sleep(Duration::from_micros(us));
        } else {
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
}

/// One events-log line.
pub fn event_line(clock: u64, vertex: &str, instance: u16, e: &Event) -> String {
    let mut m = serde_json::Map::new();
    m.insert("clock".into(), clock.into());
    m.insert("vertex".into(), vertex.into());
    m.insert("instance".into(), instance.into());
    m.insert("event".into(), e.kind.into());
    if let Some(t) = &e.flow {
        m.insert("flow".into(), tuple_json(t));
    }
    for (k, v) in &e.fields {
        m.insert(k.clone(), v.clone());
    }
    serde_json::Value::Object(m).to_string()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs a chain over a pcap file. Returns the summary.
pub fn run(opts: &RunOptions) -> Result<Summary, RunError> {
    let started = Instant::now();
    let chain = &opts.chain;
    let mut reader = pcapio::Reader::open(&opts.input)?;
    let snaplen = reader.header.snaplen;
    let store = StateStore::open(&chain.store).map_err(RunError::Store)?;
    let pool: Pool = Arc::new(ArrayQueue::new(1 << 16));
    let (root_tx, root_rx) = channel::unbounded::<Vec<(u64, u64, u32)>>();
    let (out_tx, out_rx) = channel::unbounded::<ToOutput>();

    // Instances per vertex: live at the start, and at most (with every scale-out).
    let live0: Vec<u16> = chain.vertices.iter().map(|v| v.parallelism).collect();
    let mut most = live0.clone();
    // The vertex of each scaling step.
    let mut step_vertex = Vec::with_capacity(opts.scaling.len());
    for st in &opts.scaling {
        let vi = chain
            .vertex_index(&st.vertex)
            .ok_or_else(|| RunError::Nf(format!("scaling: no vertex {:?}", st.vertex)))?;
        step_vertex.push(vi);
        match st.action {
            ScaleAction::Out => most[vi] += 1,
            ScaleAction::In => {}
            ScaleAction::Clone(of) => {
                check_clone(chain, vi, of, opts.scaling.len()).map_err(RunError::Nf)?;
                most[vi] += 1;
            }
        }
    }
    // A vertex under an autoscale rule has spares up to the rule's maximum.
    let policies = check_policies(chain, &opts.policies, &opts.scaling).map_err(RunError::Nf)?;
    for &(vi, rule) in &policies {
        most[vi] = most[vi].max(rule.max_instances(live0[vi]));
    }
    // A straggler's clone takes the first spare slot of its vertex.
    let cloning: Option<Arc<Cloning>> = policies
        .iter()
        .find(|(_, r)| matches!(r, Rule::Stragglers { .. }))
        .map(|&(vi, _)| Arc::new(Cloning::on_policy(vi, live0[vi])))
        .or_else(|| {
            opts.scaling
                .iter()
                .zip(&step_vertex)
                .find_map(|(st, &vi)| match st.action {
                    ScaleAction::Clone(of) => {
                        Some(Arc::new(Cloning::new(vi, of, live0[vi], st.handover)))
                    }
                    _ => None,
                })
        });
    // Which vertices lead to the clone's (they pass replayed packets on).
    let toward: Vec<bool> = (0..chain.vertices.len())
        .map(|u| {
            cloning
                .as_ref()
                .is_some_and(|c| u != c.vertex && reaches(chain, u, c.vertex))
        })
        .collect();
    // Spare instances also end their input with an end-of-input mark downstream.
    let mut senders: Vec<usize> = chain.vertices.iter().map(|v| v.senders).collect();
    for (vi, v) in chain.vertices.iter().enumerate() {
        let extra = usize::from(most[vi] - live0[vi]);
        for o in v.next.iter().chain(v.taps.iter()) {
            senders[*o] += extra;
        }
    }

    // Channels and move boards per vertex.
    let mut txs: Vec<Vec<Sender<ToInstance>>> = Vec::new();
    let mut rxs: Vec<Vec<Option<Receiver<ToInstance>>>> = Vec::new();
    let mut boards = Vec::new();
    for &n in &most {
        let (t, r): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| {
                let (t, r) = channel::bounded(CHANNEL_BATCHES);
                (t, Some(r))
            })
            .unzip();
        txs.push(t);
        rxs.push(r);
        boards.push(Arc::new(Board::default()));
    }
    let splitters = std::sync::atomic::AtomicU16::new(0);
    let downstream = |to: usize| Downstream {
        id: splitters.fetch_add(1, Ordering::Relaxed),
        txs: txs[to].clone(),
        table: Allocation::even(live0[to]).entries(),
        board: boards[to].clone(),
        applied: 0,
        key: chain.vertices[to].partition,
        pending: (0..most[to]).map(|_| Vec::new()).collect(),
        to,
        cloning: cloning.clone(),
        toward_clone: toward[to],
        twin: None,
    };
    let (ctl_tx, ctl_rx) = channel::unbounded::<Ctl>();
    // The vertex manager's statistics: packets each instance processed.
    let processed: Vec<Vec<Arc<AtomicU64>>> = most
        .iter()
        .map(|&n| (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect())
        .collect();
    // And, for a straggler policy, the time they spent on it.
    let timed: Vec<bool> = (0..chain.vertices.len())
        .map(|vi| {
            policies
                .iter()
                .any(|&(pv, r)| pv == vi && matches!(r, Rule::Stragglers { .. }))
        })
        .collect();
    let busy_time: Vec<Vec<Arc<[AtomicU64; 2]>>> = most
        .iter()
        .map(|&n| (0..n).map(|_| Arc::new(Default::default())).collect())
        .collect();

    // Instances: NF, state, init. Spares are built like instances of the scaled-out vertex.
    let mut instances = Vec::new();
    for (vi, v) in chain.vertices.iter().enumerate() {
        for i in 0..most[vi] {
            // A scripted pair races from the start; under a policy, each instance of the
            // vertex is a candidate and the spare becomes the clone when one is chosen.
            let race = cloning
                .as_ref()
                .filter(|c| !c.on_policy && c.vertex == vi && (i == c.of() || i == c.slot))
                .map(|c| (c.clone(), usize::from(i == c.slot)));
            let candidate = cloning
                .as_ref()
                .filter(|c| c.on_policy && c.vertex == vi && i < live0[vi])
                .cloned();
            let is_clone = race.as_ref().is_some_and(|r| r.1 == 1);
            let inst = if i < live0[vi] {
                NfInstance::new(v, i, &store)
            } else if let Some((c, _)) = race.as_ref().filter(|_| is_clone) {
                clone_instance(v, c.of(), &store)
            } else {
                let mut wide = v.clone();
                wide.parallelism = most[vi];
                NfInstance::new(&wide, i, &store)
            }
            .map_err(RunError::Nf)?;
            instances.push(Instance {
                inst,
                rx: rxs[vi][i as usize]
                    .take()
                    .expect("one receiver per instance"),
                next: v.next.map(downstream),
                taps: v.taps.iter().map(|&t| downstream(t)).collect(),
                exit: v.next.is_none(),
                on_path: v.on_path,
                root_tx: root_tx.clone(),
                out_tx: out_tx.clone(),
                pool: pool.clone(),
                // The clone runs elsewhere: it is not slowed like the straggler.
                delay: Delay::of(&opts.delays, &v.name, i).filter(|_| i < live0[vi]),
                rng: DelayRng::new(opts.seed, v.id, i),
                senders: senders[vi],
                start: started,
                stats: InstanceStats {
                    vertex: vi,
                    instance: i,
                    counters: NfCounters::default(),
                    hist: histogram(),
                    state: StateStats::default(),
                    moves: Vec::new(),
                },
                pause: opts.pause,
                next_pause: Instant::now() + opts.pause.map_or(Duration::ZERO, |p| p.every),
                siblings: txs[vi].clone(),
                key: v.partition,
                lasts: HashMap::new(),
                incoming: Vec::new(),
                released_early: Vec::new(),
                deferred: Vec::new(),
                race,
                replaying: is_clone,
                replay_ends: 0,
                twins_held: Vec::new(),
                seen: HashSet::new(),
                toward_clone: toward[vi],
                discarding: false,
                twin_ends: 0,
                ctl: ctl_tx.clone(),
                processed: processed[vi][usize::from(i)].clone(),
                busy_ns: timed[vi].then(|| busy_time[vi][usize::from(i)].clone()),
                candidate,
                recent: Default::default(),
                gated: Default::default(),
            });
        }
    }
    drop(root_tx);
    drop(ctl_tx);

    // Output thread: pcap + events.
    let output = opts.output.clone();
    let events_path = opts.events.clone();
    let out_pool = pool.clone();
    let out_thread = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || -> Result<(u64, u64), RunError> {
            let mut w = pcapio::Writer::create(&output, snaplen)?;
            let mut ev = match &events_path {
                Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(
                    |cause| RunError::Events {
                        path: p.clone(),
                        cause,
                    },
                )?)),
                None => None,
            };
            let mut nev = 0u64;
            for msg in out_rx {
                match msg {
                    ToOutput::Packets(v) => {
                        for p in v {
                            w.write(p.ts_ns, p.wire_len, &p.data)?;
                            recycle(&out_pool, p.data);
                        }
                    }
                    ToOutput::Events(lines) => {
                        nev += lines.len() as u64;
                        if let Some(f) = ev.as_mut() {
                            for l in lines {
                                writeln!(f, "{l}").map_err(|cause| RunError::Events {
                                    path: events_path.clone().unwrap_or_default(),
                                    cause,
                                })?;
                            }
                        }
                    }
                }
            }
            if let Some(mut f) = ev {
                f.flush().map_err(|cause| RunError::Events {
                    path: events_path.clone().unwrap_or_default(),
                    cause,
                })?;
            }
            Ok((w.finish()?, nev))
        })
        .expect("spawn output thread");

    let mut handles = Vec::new();
    for inst in instances {
        let name = format!("{}-{}", inst.inst.name, inst.inst.idx);
        handles.push((
            inst.inst.name.clone(),
            std::thread::Builder::new()
                .name(name)
                .spawn(move || inst.run())
                .expect("spawn instance"),
        ));
    }

    // The root, on this thread.
    let rcfg = RootConfig {
        root_id: chain.root.id,
        log_limit: chain.root.log_limit,
        persist_every: chain.root.persist_every,
    };
    let mut rclient = store.client().map_err(RunError::Store)?;
    let (mut root, clock_key) = stores::start_root(&mut rclient, rcfg).map_err(RunError::Store)?;
    let mut entry = downstream(chain.entry);
    let mut stats = RootRun::default();
    let mut input_done = false;
    let mut eof_sent = false;
    let mut last_retire = Instant::now();
    let mut last_progress = Instant::now();
    let mut finished_at: Option<Instant> = None;
    let mut buf = Vec::new();
    // The manager's view of every vertex: its live instances and bucket table.
    let mut live = live0.clone();
    let mut tables: Vec<Vec<u16>> = live0
        .iter()
        .map(|&n| Allocation::even(n).entries())
        .collect();
    let mut steps = opts.scaling.iter().zip(step_vertex).peekable();
    let mut move_id = 0u64;
    // Clocks below this stay in the store's clock logs (a clone may re-do them).
    let mut hold: Option<u64> = None;
    let mut replayed = 0usize;
    let mut kept_clone: Option<bool> = None;
    let mut race_since: Option<Instant> = None;
    let mut race_ends = 0;
    let mut last_policy = Instant::now();
    // A straggler policy's view of its vertex.
    let mut watches: Vec<StragglerWatch> = live0
        .iter()
        .map(|&n| StragglerWatch::new(usize::from(n)))
        .collect();
    let mut policy_seen = vec![0u64; chain.vertices.len()];
    let mut decisions = Vec::new();
    loop {
        let mut busy = false;
        // The operator's policies, from the vertex manager's statistics, until the end of
        // input is passed on (a move published later would find splitters finished).
        if !policies.is_empty() && !eof_sent && last_policy.elapsed() >= opts.policy_period {
            let dt = last_policy.elapsed().as_secs_f64();
            last_policy = Instant::now();
            for &(vi, rule) in &policies {
                if let (Rule::Stragglers { pct }, Some(c)) = (rule, cloning.as_ref()) {
                    // One clone per run: once it is chosen there is nothing left to watch.
                    if c.of() != NOT_CHOSEN {
                        continue;
                    }
                    let totals: Vec<(u64, u64)> = busy_time[vi][..usize::from(live0[vi])]
                        .iter()
                        .map(|w| (w[0].load(Ordering::Relaxed), w[1].load(Ordering::Relaxed)))
                        .collect();
                    let Some(of) = watches[vi].observe(pct, &totals) else {
                        continue;
                    };
                    let inst =
                        clone_instance(&chain.vertices[vi], of, &store).map_err(RunError::Nf)?;
                    c.choose(of);
                    let _ = txs[vi][usize::from(c.slot)]
                        .send(ToInstance::Become(Box::new(inst), c.clone()));
                    let (h, n) = start_clone(&boards[vi], &mut root, &mut entry, started);
                    hold = Some(h);
                    replayed = n;
                    let per_ns = watches[vi].per_packet(of);
                    let total_of = processed[vi][usize::from(of)].load(Ordering::Relaxed);
                    decisions.push(Decision {
                        after_packets: stats.read,
                        vertex: chain.vertices[vi].name.clone(),
                        action: "clone".into(),
                        instances: live0[vi],
                        rate_pps: total_of as f64 / started.elapsed().as_secs_f64(),
                        straggler: Some(of),
                    });
                    if opts.progress {
                        eprintln!(
                            "chc-dataplane: policy: {} instance {of} took {:.1} us per packet lately: cloning it after {} packets, replaying {n} packets",
                            chain.vertices[vi].name,
                            per_ns / 1e3,
                            stats.read
                        );
                    }
                    continue;
                }
                let total: u64 = processed[vi]
                    .iter()
                    .map(|p| p.load(Ordering::Relaxed))
                    .sum();
                let rate = total.saturating_sub(policy_seen[vi]) as f64 / dt;
                policy_seen[vi] = total;
                let Some(action) = rule.decide(rate, live[vi]) else {
                    continue;
                };
                let st = ScaleStep {
                    after_packets: stats.read,
                    vertex: chain.vertices[vi].name.clone(),
                    action,
                    handover: true,
                };
                decisions.push(Decision {
                    after_packets: stats.read,
                    vertex: st.vertex.clone(),
                    action: if action == ScaleAction::Out {
                        "out"
                    } else {
                        "in"
                    }
                    .into(),
                    instances: live[vi],
                    rate_pps: rate,
                    straggler: None,
                });
                if opts.progress {
                    eprintln!(
                        "chc-dataplane: policy: {} at {rate:.0} pkt/s over {} instances: scaling {:?} after {} packets",
                        st.vertex, live[vi], action, stats.read
                    );
                }
                let ms = plan_moves(&st, &mut live[vi], &mut tables[vi], &mut move_id);
                boards[vi].publish(ms.into_iter().map(|m| Order::Move(Arc::new(m))));
            }
        }
        // 1. Input, while the log has room (a pcap is replayed losslessly: wait, not drop).
        if !input_done && entry.pending_len() < BATCH * entry.txs.len() * 4 {
            let mut room = root.room().min(BATCH * 4);
            if let Some(r) = opts.rate_pps {
                let due = (started.elapsed().as_secs_f64() * r as f64) as u64;
                room = room.min(due.saturating_sub(stats.read) as usize);
            }
            for _ in 0..room {
                // The manager's scaling steps, at their exact place in the input.
                while let Some((st, vi)) = steps.next_if(|(st, _)| stats.read >= st.after_packets) {
                    if let (ScaleAction::Clone(_), Some(c)) = (st.action, cloning.as_ref()) {
                        let (h, n) = start_clone(&boards[c.vertex], &mut root, &mut entry, started);
                        if opts.progress {
                            eprintln!(
                                "chc-dataplane: cloning {} instance {} after {} packets: replaying {n} packets",
                                st.vertex, c.of(), stats.read
                            );
                        }
                        hold = Some(h);
                        replayed = n;
                        continue;
                    }
                    let ms = plan_moves(st, &mut live[vi], &mut tables[vi], &mut move_id);
                    if opts.progress {
                        eprintln!(
                            "chc-dataplane: scaling {} {:?} after {} packets: {} moves",
                            st.vertex,
                            st.action,
                            stats.read,
                            ms.len()
                        );
                    }
                    boards[vi].publish(ms.into_iter().map(|m| Order::Move(Arc::new(m))));
                }
                let mut data = pool.pop().unwrap_or_else(|| Vec::with_capacity(2048));
                let Some((ts_ns, wire_len)) = reader.next_into(&mut buf)? else {
                    input_done = true;
                    recycle(&pool, data);
                    break;
                };
                busy = true;
                stats.read += 1;
                data.extend_from_slice(&buf);
                let shape = {
                    let n = data.len();
                    Packet::parse(&mut data, n, ts_ns).hdr.shape
                };
                match shape {
                    Shape::Malformed(_) => {
                        stats.malformed += 1;
                        recycle(&pool, data);
                        continue;
                    }
                    Shape::NonIp => {
                        stats.non_ip += 1;
                        let _ = out_tx.send(ToOutput::Packets(vec![Pkt {
                            data,
                            wire_len,
                            ts_ns,
                            meta: ChcMeta::default(),
                            weight: 0,
                            t0: 0,
                            twin: false,
                            from: 0,
                        }]));
                        continue;
                    }
                    Shape::Ip | Shape::Fragment => {}
                }
                match root.admit(&data, wire_len, ts_ns) {
                    Some(clock) => {
                        let t0 = started.elapsed().as_nanos() as u64;
                        entry.route(Pkt {
                            data,
                            wire_len,
                            ts_ns,
                            meta: ChcMeta {
                                clock,
                                ..Default::default()
                            },
                            weight: FULL,
                            t0,
                            twin: false,
                            from: 0,
                        });
                    }
                    None => recycle(&pool, data),
                }
            }
        }
        if entry.pending_len() > 0 && !entry.try_flush() {
            busy = true;
        }
        // 2. Deletes from terminals.
        while let Ok(v) = root_rx.try_recv() {
            busy = true;
            for (c, w, x) in v {
                root.on_delete(c, w, x);
            }
        }
        // 3. Commit notifications from the store.
        if !root_is_traditional(chain) {
            if let Err(e) = rclient.poll() {
                eprintln!("chc-dataplane: root: store: {e}");
            }
            while let Some(p) = rclient.take_push() {
                busy = true;
                for c in p.push.commits {
                    root.on_commits(&c);
                }
            }
        }
        // 4. Persist the clock every n packets; retire settled clocks in the store.
        if let Some(counter) = root.persist_due() {
            rclient.submit_nonblocking(clock_key.set(&Value::Int(counter as i64)));
        }
        while let Ok(c) = ctl_rx.try_recv() {
            busy = true;
            match (c, cloning.as_ref()) {
                (Ctl::CaughtUp, Some(_)) => race_since = Some(Instant::now()),
                (Ctl::TwinsDone | Ctl::DroppedDone, _) => {
                    race_ends += 1;
                    if race_ends == 2 {
                        hold = None;
                    }
                }
                _ => {}
            }
        }
        // The race: the clone, done with the replay, is kept if it overtakes the straggler
        // within RACE; otherwise the straggler stays.
        if let (Some(since), Some(cl), None) = (race_since, cloning.as_ref(), kept_clone) {
            let straggler = cl.progress[0].load(Ordering::Relaxed);
            let clone = cl.progress[1].load(Ordering::Relaxed);
            if clone >= straggler || since.elapsed() >= RACE || eof_sent {
                let keep_clone = clone >= straggler;
                kept_clone = Some(keep_clone);
                if opts.progress {
                    eprintln!(
                        "chc-dataplane: clone at clock {clone:#x}, straggler at {straggler:#x}: keeping the {}",
                        if keep_clone { "clone" } else { "straggler" }
                    );
                }
                let (keep, drop) = if keep_clone {
                    (cl.slot, cl.of())
                } else {
                    (cl.of(), cl.slot)
                };
                boards[cl.vertex].publish([Order::Retire { keep, drop }]);
            }
        }
        if last_retire.elapsed() >= Duration::from_millis(2) {
            last_retire = Instant::now();
            let wm = hold.map_or(root.watermark(), |h| h.min(root.watermark()));
            if let Some(c) = &cloning {
                c.wm.store(wm, Ordering::Relaxed);
            }
            for s in 0..rclient.shards() {
                rclient.submit_to(s, stores::nonblocking(ops::retire_clocks(rcfg.root_id, wm)));
            }
            let _ = rclient.flush();
        }
        if opts.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            eprintln!(
                "chc-dataplane: {} packets read, {} in flight, {:.0} pkt/s",
                stats.read,
                root.in_flight(),
                stats.read as f64 / started.elapsed().as_secs_f64()
            );
        }
        // 5. End of input: tell the entry instances once everything is handed over.
        if input_done && !eof_sent && entry.pending_len() == 0 {
            entry.finish();
            eof_sent = true;
        }
        if eof_sent {
            let all_done = handles.iter().all(|(_, h)| h.is_finished());
            if all_done && root_rx.is_empty() {
                if root.in_flight() == 0 {
                    break;
                }
                // Commits may trail the last deletes a little.
                let t = *finished_at.get_or_insert_with(Instant::now);
                if t.elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
        }
        if !busy {
            match root_rx.recv_timeout(Duration::from_micros(200)) {
                Ok(v) => {
                    for (c, w, x) in v {
                        root.on_delete(c, w, x);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
            }
        }
    }
    stores::stop_root(&mut rclient, &root, &clock_key);
    drop(entry);
    let mut inst_stats = Vec::new();
    for (name, h) in handles {
        inst_stats.push(h.join().map_err(|_| RunError::Panicked(name))?);
    }
    drop(out_tx);
    let (written, nevents) = out_thread
        .join()
        .map_err(|_| RunError::Panicked("output".into()))??;
    let unsettled = root.in_flight();
    if unsettled > 0 {
        let left: Vec<String> = root
            .logged_clocks()
            .iter()
            .take(5)
            .map(|c| format!("{c:#x}"))
            .collect();
        eprintln!("chc-dataplane: never settled: {}", left.join(", "));
    }
    let mut summary = summarize(
        chain,
        &root,
        &stats,
        inst_stats,
        written,
        nevents,
        started.elapsed(),
    );
    summary.decisions = decisions;
    summary.store = store.describe();
    summary.clone = cloning
        .as_ref()
        .filter(|c| c.of() != NOT_CHOSEN)
        .map(|c| CloneSummary {
            vertex: chain.vertices[c.vertex].name.clone(),
            of: c.of(),
            replayed: replayed as u64,
            kept: match kept_clone {
                Some(true) => "clone",
                Some(false) => "straggler",
                None => "not cloned",
            }
            .into(),
            duplicates_suppressed: c.suppressed.load(Ordering::Relaxed),
        });
    drop(rclient);
    store.shutdown();
    if unsettled > 0 {
        return Err(RunError::Unsettled(unsettled));
    }
    Ok(summary)
}

/// The root's part in starting a clone: the splitter in front of the straggler copies its
/// traffic to the clone first, then the root replays its log for it, so whatever is in
/// flight reaches the clone one way or the other. Returns the watermark the root holds (its
/// clocks stay in the store's clock logs while the pair may re-do them) and how many
/// packets it replayed.
fn start_clone(
    board: &Board,
    root: &mut Root,
    entry: &mut Downstream,
    started: Instant,
) -> (u64, usize) {
    board.publish([Order::Twin]);
    let hold = root.watermark();
    let log = root.replay();
    let n = log.len();
    for (clock, l) in log {
        entry.route(Pkt {
            data: l.data,
            wire_len: l.wire_len,
            ts_ns: l.ts_ns,
            meta: ChcMeta {
                clock,
                flags: MetaFlags(MetaFlags::REPLAY),
                ..Default::default()
            },
            weight: FULL,
            t0: started.elapsed().as_nanos() as u64,
            twin: false,
            from: 0,
        });
    }
    entry.replay_end();
    (hold, n)
}

/// A straggler's clone: the straggler's identity, its state from the store, no
/// initialisation.
fn clone_instance(v: &Vertex, of: u16, store: &StateStore) -> Result<NfInstance, String> {
    let client = (v.mode != Mode::Traditional)
        .then(|| store.client())
        .transpose()?;
    NfInstance::taking_over(v, of, client)
}

/// The moves of one scaling step, applied to the manager's table of the vertex.
pub(crate) fn plan_moves(
    st: &ScaleStep,
    live: &mut u16,
    table: &mut [u16],
    next_id: &mut u64,
) -> Vec<Move> {
    let mut moves = Vec::new();
    let mut add = |from: u16, to: u16, buckets: Vec<bool>, parallelism: u16| {
        if buckets.iter().any(|&b| b) {
            *next_id += 1;
            moves.push(Move {
                id: *next_id,
                from,
                to,
                buckets,
                parallelism,
                handover: st.handover,
            });
        }
    };
    match st.action {
        ScaleAction::Out => {
            let new = *live;
            let n = usize::from(new) + 1;
            for from in 0..new {
                // Every n-th bucket of each instance: the new one gets about 1/n of all.
                let mut buckets = vec![false; BUCKETS];
                let mine: Vec<usize> = (0..BUCKETS).filter(|&b| table[b] == from).collect();
                for (k, b) in mine.into_iter().enumerate() {
                    if k % n == n - 1 {
                        buckets[b] = true;
                        table[b] = new;
                    }
                }
                add(from, new, buckets, new + 1);
            }
            *live += 1;
        }
        ScaleAction::In if *live > 1 => {
            let old = *live - 1;
            let mut per: Vec<Vec<bool>> = vec![vec![false; BUCKETS]; usize::from(old)];
            let theirs: Vec<usize> = (0..BUCKETS).filter(|&b| table[b] == old).collect();
            for (k, b) in theirs.into_iter().enumerate() {
                let to = (k % usize::from(old)) as u16;
                per[usize::from(to)][b] = true;
                table[b] = to;
            }
            for (to, buckets) in per.into_iter().enumerate() {
                add(old, to as u16, buckets, old);
            }
            *live -= 1;
        }
        ScaleAction::In | ScaleAction::Clone(_) => {}
    }
    moves
}

/// Why a clone of instance `of` of vertex `vi` cannot run, if it cannot: it must be the
/// only scaling step (of `steps`), of a live instance, and its state must be in the store
/// (where the clone takes it from).
/// The policies' vertices (by index) and rules, or why they cannot run beside `steps`: a
/// clone must be the only step, and a vertex's instances are decided by its scripted steps
/// or by its policy, not both (its spares are counted from one or the other).
pub(crate) fn check_policies(
    chain: &Chain,
    policies: &[Policy],
    steps: &[ScaleStep],
) -> Result<Vec<(usize, Rule)>, String> {
    let mut out = Vec::with_capacity(policies.len());
    for p in policies {
        let option = match p.rule {
            Rule::Autoscale { .. } => "--autoscale",
            Rule::Stragglers { .. } => "--clone-stragglers",
        };
        let vi = chain
            .vertex_index(&p.vertex)
            .ok_or_else(|| format!("{option}: no vertex {:?}", p.vertex))?;
        if steps
            .iter()
            .any(|st| matches!(st.action, ScaleAction::Clone(_)))
        {
            return Err("a clone must be the only scaling step: no policy beside it".into());
        }
        if steps.iter().any(|st| st.vertex == p.vertex) {
            return Err(format!(
                "{}: --scale steps and an {option} policy on one vertex (one decides, not both)",
                p.vertex
            ));
        }
        if let Rule::Stragglers { .. } = p.rule {
            // One clone races one straggler at a time, with nothing else moving flows.
            if policies.len() > 1 || !steps.is_empty() {
                return Err(format!(
                    "--clone-stragglers {}: a straggler's clone runs alone: no other policy \
                     or --scale step beside it",
                    p.vertex
                ));
            }
            if chain.vertices[vi].mode == Mode::Traditional {
                return Err(format!(
                    "--clone-stragglers {}: {} keeps its state in the instance (mode \
                     traditional), so a clone has none to take from the store",
                    p.vertex, p.vertex
                ));
            }
        }
        out.push((vi, p.rule));
    }
    Ok(out)
}

pub(crate) fn check_clone(chain: &Chain, vi: usize, of: u16, steps: usize) -> Result<(), String> {
    let v = &chain.vertices[vi];
    if steps != 1 || of >= v.parallelism {
        return Err(format!(
            "--scale {}:clone={of}: a clone must be the only step, of a live instance (0..{})",
            v.name, v.parallelism
        ));
    }
    if v.mode == Mode::Traditional {
        return Err(format!(
            "--scale {}:clone={of}: {} keeps its state in the instance (mode traditional), \
             where a clone cannot take it from",
            v.name, v.name
        ));
    }
    Ok(())
}

/// Whether vertex `to` is reachable from `from` (next hops and taps).
pub(crate) fn reaches(chain: &Chain, from: usize, to: usize) -> bool {
    let mut stack = vec![from];
    let mut seen = vec![false; chain.vertices.len()];
    while let Some(u) = stack.pop() {
        if u == to {
            return true;
        }
        if std::mem::replace(&mut seen[u], true) {
            continue;
        }
        let v = &chain.vertices[u];
        stack.extend(v.next.iter().chain(v.taps.iter()).copied());
    }
    false
}

fn root_is_traditional(chain: &Chain) -> bool {
    chain.vertices.iter().all(|v| v.mode == Mode::Traditional)
}

#[derive(Default)]
struct RootRun {
    read: u64,
    malformed: u64,
    non_ip: u64,
}

fn summarize(
    chain: &Chain,
    root: &Root,
    rr: &RootRun,
    inst: Vec<InstanceStats>,
    written: u64,
    events: u64,
    elapsed: Duration,
) -> Summary {
    let mut hist = histogram();
    let mut vertices: Vec<VertexSummary> = chain.vertices.iter().map(VertexSummary::of).collect();
    let mut moves: Vec<MoveSummary> = Vec::new();
    for s in inst {
        for m in &s.moves {
            match moves.iter_mut().find(|x| x.id == m.id) {
                Some(x) => {
                    x.buckets = x.buckets.max(m.buckets);
                    x.objects += m.objects;
                    x.handover_us = x.handover_us.max(m.handover_us);
                    x.held += m.held;
                }
                None => moves.push(m.clone()),
            }
        }
        vertices[s.vertex].add(s.instance, &s.counters, &s.state);
        let _ = hist.add(&s.hist);
    }
    Summary {
        packets_read: rr.read,
        malformed_dropped: rr.malformed,
        non_ip_passed: rr.non_ip,
        root_stamped: root.stats.stamped,
        root_dropped_log_full: root.stats.dropped_log_full,
        root_log_high_water: root.stats.high_water as u64,
        packets_written: written,
        events,
        latency_p50_us: hist.value_at_quantile(0.5) as f64 / 1e3,
        latency_p75_us: hist.value_at_quantile(0.75) as f64 / 1e3,
        latency_p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
        elapsed_s: elapsed.as_secs_f64(),
        vertices,
        moves: {
            moves.sort_by_key(|m| m.id);
            moves
        },
        clone: None,
        decisions: Vec::new(),
        store: String::new(),
        rejoins: Vec::new(),
        exits_absorbed: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{Delay, Policy, Rule, ScaleAction, StragglerWatch};

    /// Feeds `periods` of per-instance (packets, ns per packet) to a watch; returns its
    /// verdict after each.
    fn watch(pct: u32, periods: &[&[(u64, u64)]]) -> Vec<Option<u16>> {
        let mut w = StragglerWatch::new(periods[0].len());
        let mut totals = vec![(0u64, 0u64); periods[0].len()];
        periods
            .iter()
            .map(|p| {
                for (t, &(n, per)) in totals.iter_mut().zip(p.iter()) {
                    t.0 += n;
                    t.1 += n * per;
                }
                w.observe(pct, &totals)
            })
            .collect()
    }

    #[test]
    fn a_straggler_is_the_instance_slow_for_periods_in_a_row() {
        // Instance 1 takes 3x its siblings' time per packet, period after period.
        let slow: &[(u64, u64)] = &[(100, 1000), (40, 3000), (100, 1100)];
        assert_eq!(
            watch(50, &[slow, slow, slow, slow]),
            vec![None, None, Some(1), Some(1)]
        );
        // A one-period blip (a start-up burst) is not a straggler.
        let even: &[(u64, u64)] = &[(100, 1000), (100, 1000), (100, 1000)];
        let blip: &[(u64, u64)] = &[(100, 5000), (100, 1000), (100, 1000)];
        assert_eq!(watch(50, &[blip, even, even, even]), vec![None; 4]);
        // Under the threshold: 40 % slower is not 50 %.
        let mild: &[(u64, u64)] = &[(100, 1000), (100, 1400)];
        assert_eq!(watch(50, &[mild, mild, mild]), vec![None; 3]);
        // A sibling that has reported nothing yet leaves nothing to compare with.
        let silent: &[(u64, u64)] = &[(100, 1000), (0, 0), (100, 4000)];
        assert_eq!(watch(50, &[silent, silent, silent]), vec![None; 3]);
    }

    #[test]
    fn a_slow_instance_that_finishes_batches_rarely_is_still_measured() {
        // The straggler reports a long batch every third period; its last figure stands
        // for it in the periods in between.
        let report: &[(u64, u64)] = &[(100, 1000), (32, 9000)];
        let quiet: &[(u64, u64)] = &[(100, 1000), (0, 0)];
        let got = watch(50, &[report, quiet, quiet, report, quiet]);
        assert!(got.contains(&Some(1)), "{got:?}");
        assert!(!got.contains(&Some(0)), "{got:?}");
    }

    #[test]
    fn a_lone_instance_is_compared_with_its_own_best() {
        let fast: &[(u64, u64)] = &[(100, 1000)];
        let slow: &[(u64, u64)] = &[(100, 2500)];
        assert_eq!(
            watch(50, &[fast, fast, slow, slow, slow]),
            vec![None, None, None, None, Some(0)]
        );
    }

    #[test]
    fn straggler_policies_parse() {
        let p = Policy::stragglers("nat:50").unwrap();
        assert_eq!(p.rule, Rule::Stragglers { pct: 50 });
        assert_eq!(p.vertex, "nat");
        for bad in ["nat", "nat:0", ":50", "nat:x", "nat:-5"] {
            assert!(Policy::stragglers(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn autoscale_policies_parse_and_decide_with_hysteresis() {
        let p: Policy = "nat:1000:3".parse().unwrap();
        assert_eq!(p.vertex, "nat");
        assert_eq!(p.rule, Rule::Autoscale { pps: 1000, max: 3 });
        let d: Policy = "lb:50".parse().unwrap();
        assert_eq!(d.rule, Rule::Autoscale { pps: 50, max: 4 });
        for bad in ["", "nat", "nat:x", ":5", "nat:0", "nat:5:0", "nat:5:2:1"] {
            assert!(bad.parse::<Policy>().is_err(), "{bad:?} parsed");
        }
        let r = p.rule;
        // Above the threshold per instance: out, up to the maximum.
        assert_eq!(r.decide(1500.0, 1), Some(ScaleAction::Out));
        assert_eq!(r.decide(2500.0, 2), Some(ScaleAction::Out));
        assert_eq!(r.decide(9000.0, 3), None);
        // Between half and the whole threshold: stay.
        assert_eq!(r.decide(1000.0, 1), None);
        assert_eq!(r.decide(1200.0, 2), None);
        // One instance fewer would still be under half: in, never below one.
        assert_eq!(r.decide(400.0, 2), Some(ScaleAction::In));
        assert_eq!(r.decide(0.0, 1), None);
    }

    #[test]
    fn delays_parse_as_a_range_or_one_value() {
        let d: Delay = "50-100".parse().unwrap();
        assert_eq!((d.min_us, d.max_us), (50, 100));
        let d: Delay = "7".parse().unwrap();
        assert_eq!((d.min_us, d.max_us), (7, 7));
        assert_eq!("x-3".parse::<Delay>().unwrap_err(), "bad minimum");
        assert_eq!("3-y".parse::<Delay>().unwrap_err(), "bad maximum");
        assert_eq!("9-1".parse::<Delay>().unwrap_err(), "minimum above maximum");
    }
}
