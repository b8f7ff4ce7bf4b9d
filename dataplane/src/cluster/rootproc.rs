//! `chc-dataplane root`: the chain's root as its own process.
//!
//! A root started with `--recover` takes over after a failed one: it resumes the clock at
//! the persisted value + n (so clocks keep increasing), asks each entry instance for the
//! highest ingress sequence number the old root delivered to it (after that root's
//! connection closed, so nothing of it is still on the way), and skips those packets when
//! the source sends them again. The source holds input back meanwhile.

use super::link::{Frame, LinkPkt, Peer};
use super::net::{In, Inbox, Outlet};
use super::Plan;
use crate::split::{bucket, key_hash, Allocation};
use chc_proto::meta::{ChcMeta, MetaFlags};
use chc_root::{Root, RootConfig, FULL};
use chc_store::client::{ops, ObjKey, StoreClient, TcpOptions};
use chc_store::Value;
use nfs::packet::Packet;
use std::time::{Duration, Instant};

/// How long a recovering root spins for an entry instance's sequence report before it blocks.
pub const SEQ_SPIN: Duration = Duration::from_micros(200);

/// How far behind the newest ingress sequence number a repeated one may come (the source's
/// window is far smaller).
const TAKEN_SPAN: usize = 4096;

/// Runs the root; a woken spare (`standby`) says "listening" on its output once it listens.
pub fn run_root(plan: &Plan, recover: bool, standby: bool) -> Result<(), String> {
    let chain = plan.chain()?;
    let cfg = RootConfig {
        root_id: chain.root.id,
        log_limit: chain.root.log_limit,
        persist_every: chain.root.persist_every,
    };
    let mut inbox =
        Inbox::bind(plan.root).map_err(|e| format!("listening on {}: {e}", plan.root))?;
    if standby {
        super::say_listening();
    }
    let opts = TcpOptions {
        token: None,
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let mut store =
        StoreClient::connect(&plan.store, 0x7F00_0000_0000 | u64::from(cfg.root_id), opts)
            .map_err(|e| format!("store: {e}"))?;
    store.call_timeout = Duration::from_secs(60);
    let clock_key = ObjKey::raw(format!("chc:root:{}:clock", cfg.root_id));
    crate::stores::subscribe_commits(&mut store, cfg.root_id)?;
    let entry = chain.entry;
    let n = plan.instances[entry].len();
    // Only recovery reads what entry instances send back, in this thread.
    let mut outs: Vec<Outlet> = plan.instances[entry]
        .iter()
        .map(|a| Outlet::new(*a, Peer::Root))
        .collect();
    let alloc = Allocation::even(n as u16);
    let key = chain.vertices[entry].partition;
    if recover {
        // Ask every entry instance what it already has before reading the clock: the
        // answers travel while the store is read, so recovery takes one round trip.
        for o in outs.iter_mut() {
            o.wait_connected(Duration::from_secs(30));
            o.send(&Frame::QuerySeq);
        }
    }
    let mut root = if recover {
        let r = store
            .call(clock_key.get())
            .map_err(|e| format!("store: {e}"))?;
        let last = Value::from_wire(r.value.as_ref())
            .as_int()
            .unwrap_or(0)
            .max(0) as u64;
        eprintln!(
            "chc-dataplane: root recovering: persisted clock {last}, resuming at {}",
            last + cfg.persist_every
        );
        Root::recover(cfg, last)
    } else {
        Root::new(cfg, 1)
    };
    // What the previous root delivered to each entry instance.
    let mut skip = vec![0u64; n];
    if recover {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, o) in outs.iter_mut().enumerate() {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match o.read_reply(SEQ_SPIN, left) {
                    Some(Frame::SeqReport(s)) => {
                        skip[i] = s;
                        break;
                    }
                    Some(_) => {}
                    None if Instant::now() >= deadline => {
                        return Err(format!("entry instance {i} did not report"))
                    }
                    None => {
                        // The connection failed: ask the instance (or its replacement) again.
                        if o.wait_connected(left) {
                            o.send(&Frame::QuerySeq);
                        }
                    }
                }
            }
        }
        eprintln!("chc-dataplane: root recovering: entry instances had up to {skip:?}");
    }
    let mut pending: Vec<Vec<LinkPkt>> = vec![Vec::new(); n];
    let mut backlog: std::collections::VecDeque<LinkPkt> = Default::default();
    let mut last_wm = Instant::now();
    let mut replays: std::collections::HashMap<u16, u64> = Default::default();
    let mut input_done = false;
    let mut eof_sent = false;
    let mut source_conn = None;
    // Ingress sequence numbers admitted or skipped (all of them up to the floor).
    let mut taken: std::collections::HashSet<u64> = Default::default();
    let mut taken_floor = 0u64;
    let mut drained_sent = false;
    let mut store_reconnects = store.stats.reconnects;
    let route = |p: &mut LinkPkt| -> usize {
        let len = p.data.len();
        let pk = Packet::parse(&mut p.data, len, 0);
        usize::from(alloc.instance(bucket(key_hash(&pk, key)))) % n
    };
    let tick = super::beat_while_turning();
    loop {
        tick.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // What a slow instance did not take yet is offered again soon.
        let wait = if outs.iter().any(|o| o.pending() > 0) {
            super::node::LEFTOVER_WAIT
        } else {
            Duration::from_millis(2)
        };
        let msgs = inbox
            .recv_batch(wait, super::node::BATCH_FRAMES)
            .unwrap_or_default();
        for m in msgs {
            let In::Frame { conn, from, frame } = m else {
                continue;
            };
            match frame {
                Frame::Packets(ps) if from == Peer::Source => {
                    source_conn = Some(conn);
                    backlog.extend(ps);
                }
                Frame::Deletes(v) => {
                    for (c, w, x) in v {
                        root.on_delete(c, w, x);
                    }
                }
                Frame::Replay(target) => {
                    let log = root.replay();
                    // Until the replacement says the replay went through, the store keeps
                    // the clock logs of every replayed clock: an upstream instance re-doing a
                    // packet whose other copies completed meanwhile still needs them.
                    if let Some(&(first, _)) = log.first() {
                        replays.insert(target, first);
                    }
                    eprintln!(
                        "chc-dataplane: root: replaying {} packets for vertex {target}",
                        log.len()
                    );
                    for (clock, l) in log {
                        let mut p = LinkPkt {
                            meta: ChcMeta {
                                clock,
                                vector: 0,
                                flags: MetaFlags(MetaFlags::REPLAY),
                                clone_id: target,
                            },
                            weight: FULL,
                            seq: 0,
                            ts_ns: l.ts_ns,
                            wire_len: l.wire_len,
                            data: l.data,
                        };
                        let i = route(&mut p);
                        pending[i].push(p);
                    }
                    for (i, q) in pending.iter_mut().enumerate() {
                        // A replay is asked for once the replacement listens.
                        outs[i].retry_now();
                        outs[i].send(&Frame::Packets(std::mem::take(q)));
                        outs[i].send(&Frame::Replay(target));
                    }
                }
                Frame::ReplayDone(target) => {
                    replays.remove(&target);
                }
                Frame::Eof(Peer::Source) => {
                    input_done = true;
                    source_conn = Some(conn);
                }
                other => eprintln!("chc-dataplane: root: unexpected {other:?} from {from:?}"),
            }
        }
        // Admit input while the log has room (the source keeps what is not acknowledged, so a
        // full log makes it wait instead of losing packets).
        let mut hi = 0;
        while root.room() > 0 {
            let Some(mut p) = backlog.pop_front() else {
                break;
            };
            hi = p.seq;
            // On reconnecting, the source sends again everything not acknowledged: a batch
            // sent while it reconnected to this root comes twice (possibly out of order).
            if p.seq <= taken_floor || !taken.insert(p.seq) {
                continue;
            }
            if taken.len() > 8 * TAKEN_SPAN {
                taken_floor = p.seq.saturating_sub(TAKEN_SPAN as u64);
                taken.retain(|&s| s > taken_floor);
            }
            let i = route(&mut p);
            if p.seq <= skip[i] {
                continue;
            }
            // The clock is durable before it is passed by n: a root that takes over resumes
            // at the persisted value + n and must never issue a clock this one issued.
            if let Some(c) = root.persist_due() {
                if let Err(e) = store.call(clock_key.set(&Value::Int(c as i64))) {
                    return Err(format!("persisting the clock: {e}"));
                }
            }
            let clock = root
                .admit(&p.data, p.wire_len, p.ts_ns)
                .expect("the log has room");
            p.meta = ChcMeta {
                clock,
                ..Default::default()
            };
            p.weight = FULL;
            pending[i].push(p);
        }
        for (i, q) in pending.iter_mut().enumerate() {
            if !q.is_empty() {
                outs[i].send(&Frame::Packets(std::mem::take(q)));
            }
        }
        if hi > 0 {
            if let Some(c) = source_conn {
                inbox.reply(c, &Frame::Ack(hi));
            }
        }
        if input_done && backlog.is_empty() && !eof_sent {
            eof_sent = true;
            for o in &mut outs {
                o.send_sticky(&Frame::Eof(Peer::Root));
            }
        }
        settle(&mut root, &mut store);
        // A store that came back lost the commit notifications it had not sent.
        if store.stats.reconnects != store_reconnects {
            store_reconnects = store.stats.reconnects;
            let _ = crate::stores::follow_store_restart(&mut store, &mut root);
        }
        if last_wm.elapsed() >= Duration::from_millis(5) {
            last_wm = Instant::now();
            let wm = replays.values().fold(root.watermark(), |w, &f| w.min(f));
            for s in 0..store.shards() {
                let mut op = ops::retire_clocks(cfg.root_id, wm);
                op.flags |= chc_proto::wire::OpFlag::FlagNonblocking as u32;
                store.submit_to(s, op);
            }
            let _ = store.flush();
            for o in &mut outs {
                o.send(&Frame::Watermark(cfg.root_id, wm));
            }
        }
        for o in &mut outs {
            o.flush();
        }
        if input_done && backlog.is_empty() && root.in_flight() == 0 && !drained_sent {
            if let Some(c) = source_conn {
                inbox.reply(c, &Frame::Drained);
                drained_sent = true;
            }
        }
    }
}

/// Applies commit notifications that arrived, without blocking.
fn settle(root: &mut Root, store: &mut StoreClient) {
    if let Err(e) = store.poll() {
        eprintln!("chc-dataplane: root: store: {e}");
    }
    while let Some(p) = store.take_push() {
        for c in p.push.commits {
            root.on_commits(&c);
        }
    }
}
