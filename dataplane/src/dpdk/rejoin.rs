//! A host of the chain fails and comes back (requirement R6 across hosts).
//!
//! A non-root host that dies (its control connection breaks before FINISH) takes with it
//! the packets on its lcores and links, and whatever its instances had cached. With the
//! chain's state on shared store servers nothing else is lost: the per-flow state its
//! instances forwarded and every shared object are in the store, and each packet it held
//! is still in the root's log (no copy of it reported, or its updates never committed).
//! The root, from its lcore:
//!
//! 1. holds its input as soon as the host is down, and waits for a host of that name to
//!    say hello again (`[root] rejoin_wait_ms`, default 60 s);
//! 2. replays its log with the replay flag, a burst per loop and no more in flight than
//!    its input window. On the root's host a
//!    replayed packet is re-done only on the way to other hosts (the store's clock logs
//!    absorb its updates; its events were written the first time); once it crosses a link
//!    it is processed in full ([`MetaFlags::REDO`]), since the new host remembers nothing.
//!    A copy that had already left the chain is absorbed at its egress (`Io::exited`);
//! 3. holds its input until every replayed packet has settled, then admits again.
//!
//! The new host's instances start from the store's state (`fresh = false`, no
//! initialisation). Without shared servers the failed host's state died with it: the run
//! stops with that reason instead of recovering wrongly.

use super::worker::Worker;
use crate::dpdk::control::HostWatch;
use chc_root::Logged;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the replayed packets may take to settle once the host is back.
const SETTLE_WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Normal,
    /// A host is down: input held.
    Down,
    Replaying,
    Settling,
}

/// One recovery of a failed host, for the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejoinSummary {
    /// Packets the root had read when the host was seen down.
    pub after_packets: u64,
    /// Packets replayed from the root's log.
    pub replayed: u64,
    /// From the host seen down to its successor's hello, and from there to the last
    /// replayed packet settled (ms).
    pub down_ms: f64,
    pub settle_ms: f64,
}

/// The root's watch over the other hosts.
pub struct Rejoin {
    hosts: Arc<HostWatch>,
    /// How long a failed host may take to come back.
    wait: Duration,
    /// Whether the failed host's state survives it (the chain's store is on servers).
    recoverable: bool,
    phase: Phase,
    rejoins_seen: usize,
    log: Vec<(u64, Logged)>,
    next: usize,
    /// Replayed packets before this index have all settled.
    settled: usize,
    since: Instant,
    back_at: Instant,
    after_packets: u64,
    /// Clocks from this one on stay in the store's clock logs while replayed packets are
    /// re-done.
    pub hold: Option<u64>,
    /// The port replayed packets leave by (the first input port's egress).
    egress: u16,
    pub done: Vec<RejoinSummary>,
}

impl Rejoin {
    pub fn new(hosts: Arc<HostWatch>, wait: Duration, recoverable: bool, egress: u16) -> Rejoin {
        Rejoin {
            hosts,
            wait,
            recoverable,
            phase: Phase::Normal,
            rejoins_seen: 0,
            log: Vec::new(),
            next: 0,
            settled: 0,
            since: Instant::now(),
            back_at: Instant::now(),
            after_packets: 0,
            hold: None,
            egress,
            done: Vec::new(),
        }
    }

    /// The root admits nothing meanwhile, and the run does not end.
    pub fn busy(&self) -> bool {
        self.phase != Phase::Normal
    }

    /// A host is down, or its recovery is under way.
    pub fn host_failing(&self) -> bool {
        self.busy() || self.hosts.down.load(Ordering::Acquire) > 0
    }
}

impl Worker {
    /// The root's part of a host's recovery (see the module's documentation).
    pub(super) fn rejoin_step(&mut self) {
        let Some(r) = self.root.as_mut() else {
            return;
        };
        let (read, in_flight, watermark) = (r.run.read, r.root.in_flight(), r.root.watermark());
        let Some(rj) = r.rejoin.as_mut() else {
            return;
        };
        let down = rj.hosts.down.load(Ordering::Acquire) > 0;
        let back = rj.hosts.rejoined.load(Ordering::Acquire) > rj.rejoins_seen;
        if (down || back) && matches!(rj.phase, Phase::Normal | Phase::Replaying | Phase::Settling)
        {
            if !rj.recoverable {
                let e = "a host of the chain failed, and its instances' state was in its own \
                         process: it cannot be recovered (run the chain on shared store \
                         servers, [store] addresses, to survive a host's failure)"
                    .to_string();
                self.io.fail(&self.shared, e);
                return;
            }
            if rj.phase == Phase::Normal {
                rj.after_packets = read;
                rj.hold = Some(watermark);
                eprintln!(
                    "chc-dataplane: a host is down after {read} packets: input held until it \
                     rejoins"
                );
            }
            // A failure during a recovery starts it again: the new log covers the old one.
            rj.phase = Phase::Down;
            rj.since = Instant::now();
        }
        match rj.phase {
            Phase::Normal => {}
            Phase::Down => {
                if down || !back {
                    if rj.since.elapsed() > rj.wait {
                        let e = format!(
                            "a host of the chain failed and did not rejoin within {:?} ([root] \
                             rejoin_wait_ms)",
                            rj.wait
                        );
                        self.io.fail(&self.shared, e);
                    }
                    return;
                }
                rj.rejoins_seen = rj.hosts.rejoined.load(Ordering::Acquire);
                rj.log = r.root.replay();
                rj.next = 0;
                rj.settled = 0;
                rj.back_at = Instant::now();
                rj.phase = Phase::Replaying;
                eprintln!(
                    "chc-dataplane: the host rejoined: replaying {} logged packets",
                    rj.log.len()
                );
            }
            Phase::Replaying => {
                let entry = r.entry.expect("a chain over hosts has vertices");
                // No more in flight than the root admits: the links and rings hold that
                // much, and a replay of a long log would otherwise overflow them.
                while rj.settled < rj.next && r.root.get(rj.log[rj.settled].0).is_none() {
                    rj.settled += 1;
                }
                let room = r.window.saturating_sub(rj.next - rj.settled);
                self.io.replay_burst(
                    &self.routers[entry],
                    &rj.log,
                    &mut rj.next,
                    super::BURST.min(room),
                    rj.egress,
                );
                if rj.next == rj.log.len() {
                    rj.phase = Phase::Settling;
                }
            }
            Phase::Settling => {
                // Input is held: what is in flight is what was replayed.
                if in_flight > 0 {
                    if rj.back_at.elapsed() > SETTLE_WAIT {
                        let e = format!(
                            "{in_flight} replayed packets did not settle within {SETTLE_WAIT:?} \
                             of the host's return"
                        );
                        self.io.fail(&self.shared, e);
                    }
                    return;
                }
                let replayed = std::mem::take(&mut rj.log).len() as u64;
                rj.done.push(RejoinSummary {
                    after_packets: rj.after_packets,
                    replayed,
                    down_ms: (rj.back_at - rj.since).as_secs_f64() * 1e3,
                    settle_ms: rj.back_at.elapsed().as_secs_f64() * 1e3,
                });
                rj.hold = None;
                rj.phase = Phase::Normal;
                eprintln!("chc-dataplane: the {replayed} replayed packets settled: input resumes");
            }
        }
    }
}
