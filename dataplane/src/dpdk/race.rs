//! A straggler's clone on the DPDK path (§3.4.3, requirement R5), on one host.
//!
//! The straggler races from the start: it marks every clock it emits in the pair's shared
//! set ([`Cloning::first`]), so that a clone emitting the same clock later is suppressed.
//! At the clone step the root, in this order:
//!
//! 1. has the splitter in front of the straggler's vertex copy every packet of the
//!    straggler's buckets to the clone (the copy carries [`TWIN`] as its clone id, the
//!    original [`RACED`]);
//! 2. replays its log (packets some copy of which has not reported) with the replay flag,
//!    a burst per loop and its input held meanwhile. Upstream instances re-do a replayed
//!    packet for the clone alone (the store's clock log absorbs their updates, their events
//!    were written the first time) and splitters pass it on only toward the clone. Whatever
//!    was in flight reaches the clone one way or the other; the clone processes each clock
//!    once, the replay first: it holds the copies until every replayed packet has ended
//!    (reached it, or been dropped on the way), which a counter tells without marks in the
//!    rings;
//! 3. keeps the clone if it overtakes the straggler within [`RACE`] of catching up (the
//!    splitter then gives it the straggler's buckets), the straggler otherwise, and retires
//!    the other: it discards what it still gets, after its store operations went out;
//! 4. holds its input until the chain has drained and every raced copy is done, then lets
//!    the store forget the clocks it kept for the pair.
//!
//! Both of the pair process with the replay flag while they race: each reads state as of
//! the packet's clock and the store decides their updates (the second of each is absorbed).

use super::meta::PktMeta;
use super::worker::{Io, Router, Worker};
use crate::runtime::{Cloning, RACE};
use crate::split::BUCKETS;
use crate::summary::CloneSummary;
use chc_dpdk::{lcore, Mbuf};
use chc_proto::meta::{ChcMeta, MetaFlags};
use chc_root::{Logged, FULL};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Clone id of a straggler's packet copied to its clone.
pub const TWIN: u16 = 1;
/// Clone id of the original of a copied packet (to the straggler).
pub const RACED: u16 = 2;

const IDLE: u8 = 0;
const COPYING: u8 = 1;
const RETIRED: u8 = 2;

/// Replayed packets not yet counted: the replay has not started.
const NOT_STARTED: u64 = u64::MAX;

/// How long a phase that waits for the chain may take before the run ends with the reason.
const STUCK: Duration = Duration::from_secs(10);

/// A straggler and its clone, seen by every lcore.
pub struct Race {
    pub cloning: Cloning,
    /// Idle, copying the straggler's packets to the clone, or retired (the splitter's
    /// table already switched: it is read after this).
    state: AtomicU8,
    /// The retired one of the pair: 0 the straggler, 1 the clone.
    dropped: AtomicU8,
    replay_left: AtomicU64,
    caught_up: AtomicBool,
    dropped_synced: AtomicBool,
    /// Packets copied or raced (both copies count), and those of them processed or discarded.
    raced_sent: AtomicU64,
    raced_done: AtomicU64,
    /// Every raced copy is done: the kept instance processes as usual.
    over: AtomicBool,
    /// A copy for the clone could not be made (no mbuf): the clone never takes over.
    incomplete: AtomicBool,
}

impl Race {
    pub fn new(cloning: Cloning) -> Race {
        Race {
            cloning,
            state: AtomicU8::new(IDLE),
            dropped: AtomicU8::new(0),
            replay_left: AtomicU64::new(NOT_STARTED),
            caught_up: AtomicBool::new(false),
            dropped_synced: AtomicBool::new(false),
            raced_sent: AtomicU64::new(0),
            raced_done: AtomicU64::new(0),
            over: AtomicBool::new(false),
            incomplete: AtomicBool::new(false),
        }
    }

    /// A replayed packet ended (reached the clone, or was dropped on the way).
    pub fn replay_done(&self) {
        self.replay_left.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of the pair on its lcore.
pub struct PairPart {
    pub race: Arc<Race>,
    /// 0: the straggler; 1: the clone.
    pub who: usize,
    /// The clone, until the replay has ended: copies wait in `held`.
    pub replaying: bool,
    pub held: Vec<(Mbuf, PktMeta)>,
    /// The clone: clocks processed (a packet may come both replayed and copied).
    pub seen: HashSet<u64>,
    pub discarding: bool,
}

impl PairPart {
    pub fn new(race: Arc<Race>, who: usize) -> PairPart {
        PairPart {
            race,
            who,
            replaying: who == 1,
            held: Vec::new(),
            seen: HashSet::new(),
            discarding: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Waiting,
    Replaying,
    Racing,
    Retiring,
    Done,
}

/// The clone step, run from the root's lcore.
pub struct CloneRun {
    pub race: Arc<Race>,
    pub vertex_name: String,
    pub after_packets: u64,
    pub phase: Phase,
    log: Vec<(u64, Logged)>,
    next: usize,
    replayed: u64,
    /// When the current phase began, and when the clone caught up.
    since: Instant,
    caught_up_at: Option<Instant>,
    kept: Option<bool>,
    /// Clocks from this one on stay in the store's clock logs (the pair may re-do them).
    pub hold: Option<u64>,
    /// The port replayed packets leave by (the only input port's egress).
    egress: u16,
}

impl CloneRun {
    pub fn new(race: Arc<Race>, vertex_name: String, after_packets: u64, egress: u16) -> CloneRun {
        CloneRun {
            race,
            vertex_name,
            after_packets,
            phase: Phase::Waiting,
            log: Vec::new(),
            next: 0,
            replayed: 0,
            since: Instant::now(),
            caught_up_at: None,
            kept: None,
            hold: None,
            egress,
        }
    }

    /// The root admits nothing meanwhile.
    pub fn holds_input(&self) -> bool {
        matches!(self.phase, Phase::Replaying | Phase::Retiring)
    }

    /// Started and not finished: the run does not end meanwhile.
    pub fn busy(&self) -> bool {
        matches!(
            self.phase,
            Phase::Replaying | Phase::Racing | Phase::Retiring
        )
    }

    pub fn summary(&self) -> CloneSummary {
        CloneSummary {
            vertex: self.vertex_name.clone(),
            of: self.race.cloning.of(),
            replayed: self.replayed,
            kept: match self.kept {
                Some(true) => "clone",
                Some(false) => "straggler",
                None => "not cloned",
            }
            .into(),
            duplicates_suppressed: self.race.cloning.suppressed.load(Ordering::Relaxed),
        }
    }
}

impl Io {
    /// Routing in front of the pair, and of replayed packets anywhere.
    pub(super) fn route_raced(&mut self, r: &Router, mut m: Mbuf, mut meta: PktMeta) {
        let replayed = meta.chc.flags.has(MetaFlags::REPLAY);
        let Some(rc) = r.race.clone() else {
            // A replayed packet goes on only where it leads to the clone.
            if replayed && !r.toward_clone {
                drop(m);
                self.replay_done();
                return;
            }
            let i = Io::pick(r, &mut m);
            return self.send_to(r, i, m, meta);
        };
        let c = &rc.cloning;
        // The state first: once it says retired, the table read next is the switched one.
        let state = rc.state.load(Ordering::Acquire);
        let i = Io::pick(r, &mut m);
        if replayed {
            if i == usize::from(c.of()) {
                self.send_to(r, usize::from(c.slot), m, meta);
            } else {
                drop(m);
                self.replay_done();
            }
            return;
        }
        if state == COPYING && i == usize::from(c.of()) {
            match self.copy(&m) {
                Some(copy) => {
                    rc.raced_sent.fetch_add(2, Ordering::AcqRel);
                    meta.chc.clone_id = RACED;
                    let twin = PktMeta {
                        chc: ChcMeta {
                            clone_id: TWIN,
                            ..meta.chc
                        },
                        ..meta
                    };
                    self.send_to(r, usize::from(c.slot), copy, twin);
                }
                None => rc.incomplete.store(true, Ordering::Release),
            }
        }
        self.send_to(r, i, m, meta)
    }

    /// Replays up to `max` packets of `log` from `*next` on through `entry`, each in a fresh
    /// mbuf with the replay flag and the whole weight, leaving by `egress`; advances
    /// `*next`. Without an mbuf the rest waits for the next call.
    pub(super) fn replay_burst(
        &mut self,
        entry: &Router,
        log: &[(u64, Logged)],
        next: &mut usize,
        max: usize,
        egress: u16,
    ) {
        for (clock, l) in log.iter().skip(*next).take(max) {
            let Some(m) = self.alloc_copy(&l.data) else {
                return;
            };
            let meta = PktMeta {
                chc: ChcMeta {
                    clock: *clock,
                    flags: MetaFlags(MetaFlags::REPLAY),
                    ..ChcMeta::default()
                },
                weight: FULL,
                ts_ns: l.ts_ns,
                t0: lcore::tsc(),
                wire_len: l.wire_len,
                egress,
                ..PktMeta::default()
            };
            self.route(entry, m, meta);
            *next += 1;
        }
    }

    pub(super) fn replay_done(&mut self) {
        if let Some(rc) = &self.race {
            rc.replay_done();
        }
    }

    /// A replayed packet was copied for a tap toward the clone: one more end to wait for.
    pub(super) fn replay_fork(&mut self) {
        if let Some(rc) = &self.race {
            rc.replay_left.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A replayed packet's copy toward the clone could not be made: the clone misses a
    /// packet, so it may not take over.
    pub(super) fn replay_lost(&mut self) {
        if let Some(rc) = &self.race {
            rc.incomplete.store(true, Ordering::Release);
        }
    }
}

impl Worker {
    /// What the pair's instance `t` learns between bursts: the end of the replay (the
    /// clone), its retirement, the end of the race.
    pub(super) fn race_tick(&mut self, t: usize) {
        let Some(p) = self.tasks[t].race.as_mut() else {
            return;
        };
        let rc = p.race.clone();
        if p.replaying && rc.replay_left.load(Ordering::Acquire) == 0 {
            p.replaying = false;
            let held = std::mem::take(&mut p.held);
            for (m, meta) in held {
                self.process_pair(t, m, meta);
            }
            rc.caught_up.store(true, Ordering::Release);
            return;
        }
        if p.discarding {
            return;
        }
        if rc.state.load(Ordering::Acquire) == RETIRED
            && usize::from(rc.dropped.load(Ordering::Acquire)) == p.who
        {
            p.discarding = true;
            // Its updates still on the way must meet the clock logs they repeat.
            self.tasks[t].inst.sync();
            rc.dropped_synced.store(true, Ordering::Release);
        } else if rc.over.load(Ordering::Acquire) {
            self.tasks[t].race = None;
        }
    }

    /// One packet at an instance of the pair.
    pub(super) fn process_pair(&mut self, t: usize, mut m: Mbuf, mut meta: PktMeta) {
        let Some(p) = self.tasks[t].race.as_mut() else {
            return self.process(t, m, meta);
        };
        let rc = p.race.clone();
        let who = p.who;
        let raced = meta.chc.clone_id != 0;
        let replayed = meta.chc.flags.has(MetaFlags::REPLAY);
        let clock = meta.chc.clock;
        let done = |io: &mut Io| {
            if raced {
                rc.raced_done.fetch_add(1, Ordering::AcqRel);
            }
            if replayed {
                io.replay_done();
            }
        };
        if p.discarding {
            drop(m);
            return done(&mut self.io);
        }
        if who == 1 {
            if p.replaying && meta.chc.clone_id == TWIN {
                p.held.push((m, meta));
                return;
            }
            if !p.seen.insert(clock) {
                drop(m);
                return done(&mut self.io);
            }
        }
        meta.chc.flags.set(MetaFlags::REPLAY);
        let mark = self.io.lines.len();
        let verdict = self.run_nf(t, &mut m, &mut meta);
        let first = rc.cloning.first(clock, who);
        done(&mut self.io);
        if !first {
            // The other of the pair got here first: this copy and its events go.
            self.io.lines.truncate(mark);
            drop(m);
            return;
        }
        meta.chc.flags.clear(MetaFlags::REPLAY);
        meta.chc.clone_id = 0;
        self.forward(t, m, meta, verdict);
    }

    /// The root's part of the clone step (see the module's documentation).
    pub(super) fn clone_step(&mut self) {
        let Some(r) = self.root.as_mut() else {
            return;
        };
        let (read, input_done, travelling) = (r.run.read, r.input_done, r.root.travelling());
        let Some(cr) = r.clone.as_mut() else {
            return;
        };
        let rc = cr.race.clone();
        if cr.busy() && cr.phase != Phase::Racing && cr.since.elapsed() > STUCK {
            let e = format!(
                "the clone of {} instance {} stuck for 10 s in {:?} ({travelling} packets in \
                 the chain, {} replayed packets not through)",
                cr.vertex_name,
                rc.cloning.of(),
                cr.phase,
                rc.replay_left.load(Ordering::Relaxed)
            );
            self.io.fail(&self.shared, e);
            return;
        }
        match cr.phase {
            Phase::Waiting if read >= cr.after_packets => {
                // Copies of the straggler's traffic first, then the log: whatever is in
                // flight reaches the clone one way or the other.
                rc.state.store(COPYING, Ordering::SeqCst);
                cr.hold = Some(r.root.watermark());
                cr.log = r.root.replay();
                cr.replayed = cr.log.len() as u64;
                rc.replay_left.store(cr.replayed, Ordering::Release);
                cr.phase = Phase::Replaying;
                cr.since = Instant::now();
            }
            Phase::Replaying => {
                let entry = r.entry.expect("a chain with a clone has vertices");
                self.io.replay_burst(
                    &self.routers[entry],
                    &cr.log,
                    &mut cr.next,
                    super::BURST,
                    cr.egress,
                );
                if cr.next == cr.log.len() {
                    cr.log = Vec::new();
                    cr.phase = Phase::Racing;
                    cr.since = Instant::now();
                }
            }
            Phase::Racing => {
                if !rc.caught_up.load(Ordering::Acquire) {
                    if cr.since.elapsed() > STUCK {
                        let e = format!(
                            "the clone of {} instance {} did not get through the replay in 10 s \
                             ({} replayed packets not through)",
                            cr.vertex_name,
                            rc.cloning.of(),
                            rc.replay_left.load(Ordering::Relaxed)
                        );
                        self.io.fail(&self.shared, e);
                    }
                    return;
                }
                let at = *cr.caught_up_at.get_or_insert_with(Instant::now);
                let ahead = rc.cloning.clone_ahead() && !rc.incomplete.load(Ordering::Acquire);
                if !(ahead || at.elapsed() >= RACE || input_done) {
                    return;
                }
                let c = &rc.cloning;
                if ahead {
                    let alloc = &self.routers[c.vertex].alloc;
                    for b in 0..BUCKETS {
                        if alloc.instance(b) == c.of() {
                            alloc.set(b, c.slot);
                        }
                    }
                }
                rc.dropped.store(u8::from(!ahead), Ordering::Release);
                rc.state.store(RETIRED, Ordering::SeqCst);
                cr.kept = Some(ahead);
                cr.phase = Phase::Retiring;
                cr.since = Instant::now();
            }
            Phase::Retiring => {
                let done = rc.raced_done.load(Ordering::Acquire);
                let sent = rc.raced_sent.load(Ordering::Acquire);
                if travelling > 0 || done != sent || !rc.dropped_synced.load(Ordering::Acquire) {
                    return;
                }
                cr.hold = None;
                rc.over.store(true, Ordering::Release);
                cr.phase = Phase::Done;
            }
            Phase::Waiting | Phase::Done => {}
        }
    }
}
