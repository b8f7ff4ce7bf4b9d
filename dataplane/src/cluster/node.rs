//! `chc-dataplane instance`: one NF instance as its own process.

use super::link::{Frame, LinkPkt, Peer};
use super::net::{In, Inbox, Outlet};
use super::{ancestors, Plan};
use crate::instance::NfInstance;
use crate::split::{bucket, key_hash, Allocation};
use chc_proto::meta::{ChcMeta, MetaFlags};
use chc_store::client::{StoreClient, TcpOptions};
use nfs::nf::{PartitionKey, Verdict};
use nfs::packet::Packet;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Outlets to the instances of one downstream vertex.
struct Down {
    outs: Vec<Outlet>,
    alloc: Allocation,
    key: PartitionKey,
    pending: Vec<Vec<LinkPkt>>,
}

impl Down {
    fn route(&mut self, mut p: LinkPkt) {
        let i = {
            let n = p.data.len();
            let pk = Packet::parse(&mut p.data, n, 0);
            usize::from(self.alloc.instance(bucket(key_hash(&pk, self.key)))) % self.outs.len()
        };
        self.pending[i].push(p);
    }

    fn flush(&mut self) {
        for (i, q) in self.pending.iter_mut().enumerate() {
            if !q.is_empty() {
                self.outs[i].send(&Frame::Packets(std::mem::take(q)));
            } else {
                self.outs[i].flush();
            }
        }
    }

    fn broadcast(&mut self, f: &Frame) {
        self.flush();
        for o in &mut self.outs {
            o.send(f);
        }
    }
}

/// Before anything can pass the packets handled so far on (the end of a batch, or a
/// watermark or end of replay in the middle of one), their state operations go to the store
/// and then their events to the sink.
///
/// State first: a packet passed on (or an event sent) before its updates left this instance
/// would outlive them if it died now, and its replay would then decide anew what the packets
/// already out there carry. Events before anything that can settle the packets they came
/// with (a delete, an output, a packet passed on that the last NF outputs): a packet settled
/// is never replayed, so events sent after it are lost for good if the instance dies in
/// between (a replayed packet's events come again; the sink keeps one copy of each line).
fn state_then_events(inst: &mut NfInstance, sink: &mut Outlet, lines: &mut Vec<String>) {
    inst.flush();
    if !lines.is_empty() {
        sink.send(&Frame::Events(std::mem::take(lines)));
    }
}

/// Frames an instance or the root takes from its inbox per pass of its loop (a pass ends with
/// one flush of state, deletes, outputs and links).
pub const BATCH_FRAMES: usize = 64;

/// How long an instance waits for input when it has nothing else to do.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long it waits while an outlet holds frames its peer has not taken yet.
pub const LEFTOVER_WAIT: Duration = Duration::from_micros(100);

/// The most per-flow state (bytes of values per store shard) a replacement loads in one go.
const PRELOAD_LIMIT: usize = 8 << 20;

/// Runs instance `index` of vertex `vertex` until its senders are done. A `standby` process
/// (a warm spare) first does what does not need its own address: the chain, its links to the
/// root, the sink and the next instances (which are all up), and for a replacement its store
/// connection and NF instance (the store answers once the instance it stands by for is gone).
/// Then it waits for the manager's go ([`super::wait_for_go`]) and says "listening" on its
/// output once it listens.
pub fn run_instance(
    plan: &Plan,
    vertex: &str,
    index: u16,
    replacement: bool,
    standby: bool,
) -> Result<(), String> {
    let chain = plan.chain()?;
    let vi = chain
        .vertices
        .iter()
        .position(|v| v.name == vertex)
        .ok_or_else(|| format!("no vertex {vertex:?} in the chain"))?;
    let v = chain.vertices[vi].clone();
    let addr = *plan
        .instances
        .get(vi)
        .and_then(|a| a.get(index as usize))
        .ok_or_else(|| format!("vertex {vertex} has no instance {index}"))?;
    let me = Peer::Instance(v.id, index);
    let anc = ancestors(&chain);
    // The vertex (chain index) a replay with this clone id is for.
    let target_of = |id: u16| chain.vertices.iter().position(|x| x.id == id);
    let down = |to: usize| Down {
        outs: plan.instances[to]
            .iter()
            .map(|a| Outlet::new(*a, me))
            .collect(),
        alloc: Allocation::even(plan.instances[to].len() as u16),
        key: chain.vertices[to].partition,
        pending: vec![Vec::new(); plan.instances[to].len()],
    };
    let mut next = v.next.map(down);
    let mut taps: Vec<Down> = v.taps.iter().map(|&t| down(t)).collect();
    let mut root = Outlet::new(plan.root, me);
    let mut sink = Outlet::new(plan.sink, me);
    let connect_store = |patient: bool| -> Result<Option<StoreClient>, String> {
        if v.mode == chc_store::client::cache::Mode::Traditional {
            return Ok(None);
        }
        let base = (u64::from(v.id) << 32) | u64::from(index) << 16;
        let id = base | u64::from(replacement);
        let opts = TcpOptions {
            token: None,
            connect_timeout: Duration::from_secs(30),
            // The store serves a replacement once the failed instance's last operations are
            // applied (an earlier replacement of the same instance had the same id).
            supersedes: if replacement {
                vec![base, base | 1]
            } else {
                Vec::new()
            },
            patient,
        };
        let mut c =
            StoreClient::connect(&plan.store, id, opts).map_err(|e| format!("store: {e}"))?;
        c.call_timeout = Duration::from_secs(60);
        Ok(Some(c))
    };
    // One-time initialisation: every traditional instance (its state is its own), else the
    // first instance (shared state), never a replacement.
    let init =
        v.mode == chc_store::client::cache::Mode::Traditional || (!replacement && index == 0);
    let build = |client| NfInstance::with_client(&v, index, client, init);
    let mut go = super::Go::TakeOver;
    let mut inst = if standby {
        let links = next
            .iter_mut()
            .chain(taps.iter_mut())
            .flat_map(|d| d.outs.iter_mut());
        for o in links.chain([&mut root, &mut sink]) {
            o.connect_now();
        }
        // A spare for a replacement connects to the store now: the store answers once the
        // instance it stands by for is gone and every operation it sent is applied, so after
        // a failure its state client is ready, or nearly, when the go comes.
        let inst = if replacement {
            match connect_store(true) {
                Ok(c) => Some(build(c)?),
                Err(e) => {
                    // The store went away while this spare stood by: it cannot tell any more
                    // when the instance is gone. The manager starts another spare.
                    eprintln!("chc-dataplane: {vertex}/{index}: spare retired: {e}");
                    return Ok(());
                }
            }
        } else {
            None
        };
        let Some(g) = super::wait_for_go() else {
            return Ok(());
        };
        go = g;
        match inst {
            Some(i) => i,
            None => build(connect_store(false)?)?,
        }
    } else {
        build(connect_store(false)?)?
    };
    // Listening tells the manager the instance is ready: its state is initialised.
    let mut inbox = Inbox::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    if standby {
        super::say_listening();
    }
    if go == super::Go::TakeOverAndReplay {
        root.send(&Frame::Replay(v.id));
    }
    eprintln!(
        "chc-dataplane: {vertex}/{index} listening on {}{}",
        inbox.addr,
        if replacement { " (replacement)" } else { "" }
    );
    // The newest clock the failed instance left a trace of in the store: a replayed packet
    // with a newer clock never reached it (or left the state as it was), so it is processed
    // as new, without a replay's reads as of its clock (each a round trip to the store).
    let mut newest_logged = u64::MAX;
    if replacement {
        inst.state.set_fresh(false);
        // The store has every update the failed instance made (its connections are gone,
        // and the store read what they still held before answering this one): its flows'
        // state is loaded now, while the root is told to replay, instead of one store
        // round trip per flow for the packets the replay brings. What the replay re-does
        // goes through the store and is cached as the store has it.
        let t = Instant::now();
        match inst.state.preload_owned(PRELOAD_LIMIT) {
            Ok(p) => {
                newest_logged = p.newest_clock;
                match p.flows {
                    Some(n) => eprintln!(
                        "chc-dataplane: {vertex}/{index}: loaded {n} flows' state in {:.2} ms",
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                    None => eprintln!(
                        "chc-dataplane: {vertex}/{index}: flows' state over {PRELOAD_LIMIT} bytes; loading it on demand"
                    ),
                }
            }
            Err(e) => eprintln!(
                "chc-dataplane: {vertex}/{index}: loading the flows' state: {e}; loading it on demand"
            ),
        }
    }

    let mut seen: HashSet<u64> = HashSet::new();
    let mut watermarks: HashMap<u16, u64> = HashMap::new();
    let mut eofs: HashSet<Peer> = HashSet::new();
    // A replacement processes replayed packets first and holds the rest back.
    let mut holding = replacement;
    let mut held: Vec<LinkPkt> = Vec::new();
    // Clocks of the new (not replayed) packets held.
    let mut held_new: HashSet<u64> = HashSet::new();
    let mut replayed_as_new = 0u64;
    let mut replay_done_from: HashSet<Peer> = HashSet::new();
    let mut max_root_seq = 0u64;
    // Connections from a root still open, and a new root's question held until the old
    // root's connection has closed (so none of its packets is still on the way).
    let mut root_conns: HashSet<u64> = HashSet::new();
    let mut query: Option<u64> = None;
    let mut finished = false;
    let mut deletes: Vec<(u64, u64, u32)> = Vec::new();
    let mut outputs: Vec<LinkPkt> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut absorbed = 0u64;
    let senders = v.senders;
    let started = Instant::now();

    // Processes one packet; returns nothing, queues what it produced.
    let handle = |p: LinkPkt,
                  inst: &mut NfInstance,
                  seen: &mut HashSet<u64>,
                  next: &mut Option<Down>,
                  taps: &mut Vec<Down>,
                  deletes: &mut Vec<(u64, u64, u32)>,
                  outputs: &mut Vec<LinkPkt>,
                  lines: &mut Vec<String>,
                  absorbed: &mut u64| {
        let mut p = p;
        let clock = p.meta.clock;
        let replay = p.meta.flags.has(MetaFlags::REPLAY);
        let target = target_of(p.meta.clone_id);
        let upstream_of_target = replay && target.is_some_and(|t| anc[t][vi]);
        if !upstream_of_target && seen.contains(&clock) {
            *absorbed += 1;
            return;
        }
        seen.insert(clock);
        let verdict = inst.process(
            &mut p.data,
            p.wire_len as usize,
            p.ts_ns,
            &mut p.meta,
            lines,
        );
        if verdict == Verdict::Drop {
            deletes.push((clock, p.weight, p.meta.vector));
            return;
        }
        for t in taps.iter_mut() {
            let w = p.weight / 2;
            p.weight -= w;
            t.route(LinkPkt {
                meta: ChcMeta {
                    vector: 0,
                    ..p.meta
                },
                weight: w,
                seq: p.seq,
                ts_ns: p.ts_ns,
                wire_len: p.wire_len,
                data: p.data.clone(),
            });
        }
        match next.as_mut() {
            Some(d) => d.route(p),
            None if v.on_path => outputs.push(p),
            None => deletes.push((clock, p.weight, p.meta.vector)),
        }
    };

    // Packets are handled as their frame comes, so a watermark, an end of replay or an end
    // of input goes on only behind the packets that came before it.
    macro_rules! handle {
        ($p:expr) => {
            handle(
                $p,
                &mut inst,
                &mut seen,
                &mut next,
                &mut taps,
                &mut deletes,
                &mut outputs,
                &mut lines,
                &mut absorbed,
            )
        };
    }
    let mut wait = IDLE_WAIT;
    let tick = super::beat_while_turning();
    while let Some(msgs) = inbox.recv_batch(wait, BATCH_FRAMES) {
        tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut finish = false;
        for m in msgs {
            // The frame may pass the packets handled so far on (a watermark or an end of
            // replay flushes them downstream first): their events go before them.
            let packets = matches!(
                &m,
                In::Frame {
                    frame: Frame::Packets(_),
                    ..
                }
            );
            if !packets {
                state_then_events(&mut inst, &mut sink, &mut lines);
            }
            match m {
                In::Frame { conn, from, frame } => {
                    if from == Peer::Root {
                        root_conns.insert(conn);
                    }
                    match frame {
                        Frame::Packets(ps) => {
                            for p in ps {
                                // And per packet: one turn can be long (a replay re-done
                                // upstream reads the store for every packet), and that is
                                // work, not a hang.
                                tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if from == Peer::Root {
                                    max_root_seq = max_root_seq.max(p.seq);
                                }
                                // A replay for an instance upstream of this one that failed
                                // with it brings only the clocks the instances in between had
                                // not seen: newer clocks than those this replacement's own
                                // replay has yet to bring (whose shared-state updates the
                                // failed instance may never have made). It waits, like new
                                // traffic, until the own replay is through. Replays for this
                                // instance or one downstream come whole, in clock order.
                                let replay = p.meta.flags.has(MetaFlags::REPLAY);
                                let for_upstream =
                                    || target_of(p.meta.clone_id).is_some_and(|t| anc[vi][t]);
                                if holding && (!replay || for_upstream()) {
                                    if !replay {
                                        held_new.insert(p.meta.clock);
                                    }
                                    held.push(p);
                                } else if holding
                                    && (held_new.contains(&p.meta.clock)
                                        || p.meta.clock > newest_logged)
                                    && target_of(p.meta.clone_id) == Some(vi)
                                {
                                    // Its own replay brings a packet that the failed instance
                                    // never had (it also came to this replacement as new), or
                                    // that left no trace in the store (nothing logged for its
                                    // clock or a newer one): it is processed as new, in its
                                    // place in the replay (a copy held is then absorbed),
                                    // instead of on a replay's slow path (reads as of its
                                    // clock, each a round trip to the store). Replays for an
                                    // instance downstream go on as replays, to keep their
                                    // order.
                                    let mut p = p;
                                    p.meta.flags.0 &= !MetaFlags::REPLAY;
                                    replayed_as_new += 1;
                                    handle!(p);
                                } else {
                                    handle!(p);
                                }
                            }
                        }
                        Frame::Watermark(r, wm) => {
                            let w = watermarks.entry(r).or_insert(0);
                            if wm > *w {
                                *w = wm;
                                let shift = chc_root::ROOT_SHIFT;
                                seen.retain(|c| (c >> shift) as u16 != r || *c >= wm);
                            }
                            for d in next.iter_mut().chain(taps.iter_mut()) {
                                d.broadcast(&Frame::Watermark(r, wm));
                            }
                        }
                        Frame::Replay(target) => {
                            // The end of a replay, passed along behind the replayed packets
                            // (a replay is asked for once the replacement listens).
                            for d in next.iter_mut().chain(taps.iter_mut()) {
                                d.outs.iter_mut().for_each(Outlet::retry_now);
                                d.broadcast(&Frame::Replay(target));
                            }
                            if holding && target == v.id {
                                replay_done_from.insert(from);
                                if replay_done_from.len() >= senders {
                                    holding = false;
                                    root.send(&Frame::ReplayDone(v.id));
                                    eprintln!(
                                        "chc-dataplane: {vertex}/{index}: replay through; {replayed_as_new} replayed packets were new here, {} held",
                                        held.len()
                                    );
                                    held_new = HashSet::new();
                                    for p in std::mem::take(&mut held) {
                                        handle!(p);
                                    }
                                    finish = eofs.len() >= senders;
                                }
                            }
                        }
                        Frame::QuerySeq => query = Some(conn),
                        Frame::Eof(p) => {
                            eofs.insert(p);
                            finish = eofs.len() >= senders && !holding;
                        }
                        other => eprintln!(
                            "chc-dataplane: {vertex}/{index}: unexpected {other:?} from {from:?}"
                        ),
                    }
                }
                In::Closed { conn, .. } => {
                    root_conns.remove(&conn);
                }
            }
        }
        if let Some(q) = query {
            if root_conns.iter().all(|&c| c == q) {
                inbox.reply(q, &Frame::SeqReport(max_root_seq));
                query = None;
            }
        }
        // End of a batch: state to the store, then events, deletes, outputs, packets.
        state_then_events(&mut inst, &mut sink, &mut lines);
        if !deletes.is_empty() {
            root.send(&Frame::Deletes(std::mem::take(&mut deletes)));
        } else {
            root.flush();
        }
        if !outputs.is_empty() {
            sink.send(&Frame::Packets(std::mem::take(&mut outputs)));
        } else {
            sink.flush();
        }
        for d in next.iter_mut().chain(taps.iter_mut()) {
            d.flush();
        }
        // What a slow peer did not take yet is offered again soon.
        let left = root.pending()
            + sink.pending()
            + next
                .iter()
                .chain(taps.iter())
                .flat_map(|d| d.outs.iter())
                .map(Outlet::pending)
                .sum::<usize>();
        wait = if left > 0 { LEFTOVER_WAIT } else { IDLE_WAIT };
        // All senders are done: tell the downstream instances and the manager (who waits
        // for every instance, so no event is still on the way when it stops). The instance
        // keeps serving: a replacement downstream may need a replay through it, and a root
        // that takes over asks what it already got.
        if finish && !finished {
            finished = true;
            inst.sync();
            for d in next.iter_mut().chain(taps.iter_mut()) {
                for o in &mut d.outs {
                    o.send_sticky(&Frame::Eof(me));
                }
            }
            sink.send_sticky(&Frame::Eof(me));
            let c = &inst.counters;
            eprintln!(
                "chc-dataplane: {vertex}/{index}: input done: in {} out {} dropped {} absorbed {} errors {} in {:.2} s",
                c.pkts_in,
                c.pkts_out,
                c.dropped,
                absorbed,
                c.errors,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
