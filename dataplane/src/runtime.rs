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

use crate::config::Chain;
use crate::instance::{NfCounters, NfInstance};
use crate::pcapio::{self, PcapError};
use crate::split::{bucket, key_hash, Allocation};
use crate::summary::{Summary, VertexSummary};
use chc_proto::meta::ChcMeta;
use chc_root::{Root, RootConfig, FULL};
use chc_store::client::cache::Mode;
use chc_store::client::{ops, ObjKey};
use chc_store::server::{Store, StoreConfig};
use chc_store::Value;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use crossbeam::queue::ArrayQueue;
use hdrhistogram::Histogram;
use nfs::nf::{tuple_json, Event, Verdict};
use nfs::packet::{Packet, Shape};
use nfs::PartitionKey;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Packets per batch between threads.
pub const BATCH: usize = 32;
/// Batches an instance's input channel holds.
const CHANNEL_BATCHES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error("starting the store: {0}")]
    Store(String),
    #[error("{0}")]
    Nf(String),
    #[error("writing {path}: {source}")]
    Events {
        path: PathBuf,
        source: std::io::Error,
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

/// How to run a chain.
#[derive(Clone)]
pub struct RunOptions {
    pub chain: Chain,
    pub input: PathBuf,
    pub output: PathBuf,
    pub events: Option<PathBuf>,
    /// Per-vertex delays, by vertex name.
    pub delays: HashMap<String, Delay>,
    pub seed: u64,
    /// Print progress lines on stderr.
    pub progress: bool,
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
}

enum ToInstance {
    Batch(Vec<Pkt>),
    Eof,
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
    txs: Vec<Sender<ToInstance>>,
    alloc: Arc<Allocation>,
    key: PartitionKey,
    pending: Vec<Vec<Pkt>>,
}

impl Downstream {
    fn route(&mut self, mut pkt: Pkt) {
        let i = {
            let n = pkt.data.len();
            let p = Packet::parse(&mut pkt.data, n, 0);
            usize::from(self.alloc.instance(bucket(key_hash(&p, self.key))))
        };
        self.pending[i % self.txs.len()].push(pkt);
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
    state_ops: u64,
    remote_calls: u64,
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
    rng: u64,
    senders: usize,
    start: Instant,
    stats: InstanceStats,
}

impl Instance {
    fn run(mut self) -> InstanceStats {
        let mut eofs = 0;
        let mut deletes = Vec::with_capacity(BATCH);
        let mut out = Vec::with_capacity(BATCH);
        let mut lines = Vec::new();
        while let Ok(msg) = self.rx.recv() {
            match msg {
                ToInstance::Batch(batch) => {
                    for pkt in batch {
                        self.process(pkt, &mut deletes, &mut out, &mut lines);
                    }
                    self.inst.flush();
                    // Deletes go to the root before the outputs they cover leave.
                    if !deletes.is_empty() {
                        let _ = self.root_tx.send(std::mem::take(&mut deletes));
                    }
                    if !out.is_empty() {
                        let _ = self
                            .out_tx
                            .send(ToOutput::Packets(std::mem::take(&mut out)));
                    }
                    if !lines.is_empty() {
                        let _ = self
                            .out_tx
                            .send(ToOutput::Events(std::mem::take(&mut lines)));
                    }
                    for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
                        d.flush(true);
                    }
                }
                ToInstance::Eof => {
                    eofs += 1;
                    if eofs >= self.senders {
                        break;
                    }
                }
            }
        }
        self.inst.sync();
        for d in self.next.iter_mut().chain(self.taps.iter_mut()) {
            d.flush(true);
            for tx in &d.txs {
                let _ = tx.send(ToInstance::Eof);
            }
        }
        self.stats.counters = self.inst.counters.clone();
        self.stats.state_ops = self.inst.state.stats.ops;
        self.stats.remote_calls = self.inst.state.stats.remote_calls;
        self.stats
    }

    fn process(
        &mut self,
        mut pkt: Pkt,
        deletes: &mut Vec<(u64, u64, u32)>,
        out: &mut Vec<Pkt>,
        lines: &mut Vec<String>,
    ) {
        if let Some(d) = self.delay {
            self.sleep_random(d);
        }
        let verdict = self.inst.process(
            &mut pkt.data,
            pkt.wire_len as usize,
            pkt.ts_ns,
            &mut pkt.meta,
            lines,
        );
        if verdict == Verdict::Drop {
            self.retire(pkt, deletes);
            return;
        }
        // Copies for off-path taps: each takes half of the remaining weight, no vector (the
        // main copy carries the vector so far, and the XOR of all terminals adds up).
        for i in 0..self.taps.len() {
            let w = pkt.weight / 2;
            pkt.weight -= w;
            let mut data = self.pool.pop().unwrap_or_default();
            data.extend_from_slice(&pkt.data);
            let copy = Pkt {
                data,
                wire_len: pkt.wire_len,
                ts_ns: pkt.ts_ns,
                meta: ChcMeta {
                    vector: 0,
                    ..pkt.meta
                },
                weight: w,
                t0: pkt.t0,
            };
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
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = d.max_us.saturating_sub(d.min_us) + 1;
        let us = d.min_us + self.rng % span;
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
    let store = Store::start(StoreConfig::in_memory(chain.store.shards))
        .map_err(|e| RunError::Store(e.to_string()))?;
    let pool: Pool = Arc::new(ArrayQueue::new(1 << 16));
    let (root_tx, root_rx) = channel::unbounded::<Vec<(u64, u64, u32)>>();
    let (out_tx, out_rx) = channel::unbounded::<ToOutput>();

    // Channels and allocation tables per vertex.
    let mut txs: Vec<Vec<Sender<ToInstance>>> = Vec::new();
    let mut rxs: Vec<Vec<Option<Receiver<ToInstance>>>> = Vec::new();
    let mut allocs = Vec::new();
    for v in &chain.vertices {
        let (t, r): (Vec<_>, Vec<_>) = (0..v.parallelism)
            .map(|_| {
                let (t, r) = channel::bounded(CHANNEL_BATCHES);
                (t, Some(r))
            })
            .unzip();
        txs.push(t);
        rxs.push(r);
        allocs.push(Arc::new(Allocation::even(v.parallelism)));
    }
    let downstream = |to: usize| Downstream {
        txs: txs[to].clone(),
        alloc: allocs[to].clone(),
        key: chain.vertices[to].partition,
        pending: (0..chain.vertices[to].parallelism)
            .map(|_| Vec::new())
            .collect(),
    };

    // Instances: NF, state, init.
    let mut instances = Vec::new();
    for (vi, v) in chain.vertices.iter().enumerate() {
        for i in 0..v.parallelism {
            let inst = NfInstance::new(v, i, &store).map_err(RunError::Nf)?;
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
                delay: opts.delays.get(&v.name).copied(),
                rng: opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    ^ (u64::from(v.id) << 20 | u64::from(i))
                    | 1,
                senders: v.senders,
                start: started,
                stats: InstanceStats {
                    vertex: vi,
                    instance: i,
                    counters: NfCounters::default(),
                    hist: histogram(),
                    state_ops: 0,
                    remote_calls: 0,
                },
            });
        }
    }
    drop(root_tx);

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
                    |source| RunError::Events {
                        path: p.clone(),
                        source,
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
                                writeln!(f, "{l}").map_err(|source| RunError::Events {
                                    path: events_path.clone().unwrap_or_default(),
                                    source,
                                })?;
                            }
                        }
                    }
                }
            }
            if let Some(mut f) = ev {
                f.flush().map_err(|source| RunError::Events {
                    path: events_path.clone().unwrap_or_default(),
                    source,
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
    let mut root = Root::new(rcfg, 1);
    let mut rclient = store.client(store.next_client_id());
    for s in 0..rclient.shards() {
        rclient.submit_to(s, ops::subscribe_commits(rcfg.root_id));
    }
    rclient.sync().map_err(|e| RunError::Store(e.to_string()))?;
    let clock_key = ObjKey::raw(format!("chc:root:{}:clock", rcfg.root_id));
    let mut entry = downstream(chain.entry);
    let mut stats = RootRun::default();
    let mut input_done = false;
    let mut eof_sent = false;
    let mut last_retire = Instant::now();
    let mut last_progress = Instant::now();
    let mut finished_at: Option<Instant> = None;
    let mut buf = Vec::new();
    loop {
        let mut busy = false;
        // 1. Input, while the log has room (a pcap is replayed losslessly: wait, not drop).
        if !input_done && entry.pending_len() < BATCH * entry.txs.len() * 4 {
            let room = chain
                .root
                .log_limit
                .saturating_sub(root.in_flight())
                .min(BATCH * 4);
            for _ in 0..room {
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
                    root.on_commit(c.clock, c.id);
                }
            }
        }
        // 4. Persist the clock every n packets; retire settled clocks in the store.
        if let Some(counter) = root.persist_due() {
            rclient.submit_nonblocking(clock_key.set(&Value::Int(counter as i64)));
        }
        if last_retire.elapsed() >= Duration::from_millis(2) {
            last_retire = Instant::now();
            let wm = root.watermark();
            for s in 0..rclient.shards() {
                rclient.submit_to(s, wire_nonblocking(ops::retire_clocks(rcfg.root_id, wm)));
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
            entry.flush(true);
            for tx in &entry.txs {
                let _ = tx.send(ToInstance::Eof);
            }
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
    let _ = rclient.sync();
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
    let summary = summarize(
        chain,
        &root,
        &stats,
        inst_stats,
        written,
        nevents,
        started.elapsed(),
    );
    drop(rclient);
    store.shutdown();
    if unsettled > 0 {
        return Err(RunError::Unsettled(unsettled));
    }
    Ok(summary)
}

fn wire_nonblocking(mut op: chc_proto::wire::Op) -> chc_proto::wire::Op {
    op.flags |= chc_proto::wire::OpFlag::FlagNonblocking as u32;
    op
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
    let mut vertices: Vec<VertexSummary> = chain
        .vertices
        .iter()
        .map(|v| VertexSummary {
            name: v.name.clone(),
            nf: v.nf.clone(),
            mode: v.mode.to_string(),
            parallelism: v.parallelism,
            partition: format!("{:?}", v.partition).to_lowercase(),
            packets_in: 0,
            packets_out: 0,
            dropped: 0,
            fragments: 0,
            errors: 0,
            state_ops: 0,
            remote_calls: 0,
            per_instance_in: vec![0; v.parallelism as usize],
        })
        .collect();
    for s in inst {
        let v = &mut vertices[s.vertex];
        let c = &s.counters;
        v.packets_in += c.pkts_in;
        v.packets_out += c.pkts_out;
        v.dropped += c.dropped;
        v.fragments += c.fragments;
        v.errors += c.errors;
        v.state_ops += s.state_ops;
        v.remote_calls += s.remote_calls;
        v.per_instance_in[s.instance as usize] = c.pkts_in;
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
        latency_p99_us: hist.value_at_quantile(0.99) as f64 / 1e3,
        elapsed_s: elapsed.as_secs_f64(),
        vertices,
    }
}
