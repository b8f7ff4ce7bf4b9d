//! A shard's thread: the event loop around one [`Shard`].
//!
//! The thread owns its shard, the TCP connections assigned to it (native connections name
//! their shard; RESP connections are spread round-robin) and an inbox through which in-process
//! clients, the acceptors and the other shards' threads reach it. One pass of the loop reads
//! everything that is ready, applies it, appends the pass's WAL records with one write (and
//! one sync under `fsync always`), and only then sends the pass's replies: an acknowledged
//! update is as durable as the policy promises. Connections are closed at the end of a pass
//! too, so not even a closing connection's last replies overtake the log.
//!
//! RESP commands on plain keys of this shard take a direct path (see [`crate::shard::Direct`]):
//! no request object, no copy of the key, the reply encoded straight into the connection's
//! output buffer. Everything else is planned by [`resp::plan`].

use super::resp::{self, CallResult, Combine, Plan, PlanCtx, ShardCall};
use super::{Inbound, Mailbox, StoreConfig, WorkerShared};
use crate::checkpoint::{CheckpointWriter, Job};
use crate::key::KeyRef;
use crate::names::Names;
use crate::shard::{ClientId, Direct, DirectOp, Outputs, Shard, ShardStats};
use crate::wal::{WalWriter, SEGMENT_BYTES};
use bytes::BytesMut;
use chc_proto::wire::{self, PushKind};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use parking_lot::RwLock;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub(crate) const WAKER: Token = Token(0);
/// WAL growth that makes a checkpoint due however much it costs (as Redis rewrites its AOF
/// after 64 MB of growth).
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Stop reading from a connection whose unsent replies exceed this.
const WBUF_HIGH: usize = 64 << 20;
/// How many commands of a RESP pipeline have their keys looked up ahead (`process_resp`).
const PIPELINE_TOUCH: usize = 64;
/// How long a superseding connection waits for the connections it replaces to end before
/// they are closed by force. The manager kills a failed instance before it starts the
/// replacement, so their end is normally already on its way.
const FENCE_WAIT: Duration = Duration::from_secs(2);
/// How long a shard thread keeps looking at its inbox, instead of sleeping, after it replied
/// to an in-process client that waited: such a client often asks again at once (a flow's
/// state after its handover, a pop after a push), and waking a sleeping thread costs more
/// than that on a VM.
const REPLY_SPIN: Duration = Duration::from_micros(20);
/// How long a shard thread naps, instead of sleeping until woken, while in-process clients
/// keep sending ([`NAP_AFTER`]). A client that sends a batch nobody waits for then owes the
/// thread no wake-up: on a VM that is a system call and an interrupt to another vCPU, which
/// a DPDK lcore would otherwise pay every few hundred packets. The kernel's default timer
/// slack (50 us) comes on top; a client that waits for a reply unparks the nap.
const NAP: Duration = Duration::from_micros(20);
/// How long after the last batch of an in-process client the shard thread naps when idle.
const NAP_AFTER: Duration = Duration::from_millis(1);

/// A native connection held back until the connections of the clients it supersedes are
/// gone (see `Hello.supersedes`).
struct Fence {
    token: Token,
    client: ClientId,
    supersedes: Vec<ClientId>,
    leftover: Vec<u8>,
    /// `None` for a patient connection (`Hello.patient`): it waits as long as they live.
    deadline: Option<Instant>,
}

enum Sink {
    Mailbox(Arc<Mailbox>),
    Conn(Token),
}

struct Slot {
    id: u64,
    combine: Option<Combine>,
    results: Vec<Option<CallResult>>,
    missing: usize,
    ready: Option<Vec<u8>>,
}

enum Kind {
    Native {
        client: ClientId,
    },
    Resp {
        client: ClientId,
        authed: bool,
        slots: VecDeque<Slot>,
        next_slot: u64,
    },
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    closing: bool,
    /// Behind a fence: not read until the fence is passed.
    held: bool,
    peer: String,
}

pub(crate) struct Worker {
    pub shard: Shard,
    shared: Arc<WorkerShared>,
    peers: Arc<Vec<Arc<WorkerShared>>>,
    cfg: Arc<StoreConfig>,
    names: Arc<RwLock<Names>>,
    poll: Poll,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    sinks: HashMap<ClientId, Sink>,
    pending: HashMap<ClientId, wire::ServerFrame>,
    out: Outputs,
    wal: Option<WalWriter>,
    ckpt: Option<CheckpointWriter>,
    last_ckpt: Instant,
    /// When a pass last replied to an in-process client (see [`REPLY_SPIN`]).
    replied: Option<Instant>,
    /// When (the start of the pass in which) the inbox last brought an in-process client's
    /// batch (see [`NAP`]).
    batch_at: Option<Instant>,
    /// Shard counters at the last checkpoint: an idle shard writes none.
    ckpt_mark: (u64, u64),
    /// What taking the last checkpoint's delta cost this thread.
    ckpt_cost: Duration,
    /// Time this thread spent working (not waiting) since the last checkpoint.
    busy: Duration,
    /// WAL bytes written at the last checkpoint.
    ckpt_wal_mark: u64,
    wal_scratch: Vec<u8>,
    scratch: Vec<u8>,
    args: Vec<Range<usize>>,
    /// Where the keys of a pipeline's commands are in the read buffer (see `process_resp`).
    keys: Vec<Range<usize>>,
    /// Commands of a pipeline parsed ahead: (length, end of their arguments in `pre_args`).
    pre: Vec<(usize, usize)>,
    pre_args: Vec<Range<usize>>,
    /// The native frame being applied (see `process_native`).
    frame: wire::ClientFrame,
    dirty_conns: Vec<Token>,
    /// Results of calls other shards' RESP connections made here, held until this pass's
    /// WAL append: the other shard acknowledges to its client as soon as it has them.
    call_results: Vec<(u32, Inbound)>,
    fences: Vec<Fence>,
    now_ns: u64,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard: Shard,
        shared: Arc<WorkerShared>,
        peers: Arc<Vec<Arc<WorkerShared>>>,
        cfg: Arc<StoreConfig>,
        names: Arc<RwLock<Names>>,
        poll: Poll,
        wal: Option<WalWriter>,
        ckpt: Option<CheckpointWriter>,
    ) -> Self {
        Worker {
            shard,
            shared,
            peers,
            cfg,
            names,
            poll,
            conns: HashMap::new(),
            next_token: 1,
            sinks: HashMap::new(),
            pending: HashMap::new(),
            out: Outputs::default(),
            wal,
            ckpt,
            last_ckpt: Instant::now(),
            replied: None,
            batch_at: None,
            ckpt_mark: (u64::MAX, u64::MAX),
            ckpt_cost: Duration::ZERO,
            busy: Duration::ZERO,
            ckpt_wal_mark: 0,
            wal_scratch: Vec::new(),
            scratch: vec![0; 256 * 1024],
            args: Vec::new(),
            keys: Vec::new(),
            pre: Vec::new(),
            pre_args: Vec::new(),
            frame: wire::ClientFrame::default(),
            dirty_conns: Vec::new(),
            call_results: Vec::new(),
            fences: Vec::new(),
            now_ns: 0,
        }
    }

    /// Serves until shutdown; returns the shard's final counters.
    pub fn run(mut self) -> ShardStats {
        let mut events = Events::with_capacity(1024);
        let _ = self.shared.thread.set(std::thread::current());
        loop {
            let t0 = Instant::now();
            self.now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let (busy, stop) = self.drain_inbox(t0);
            if stop {
                break;
            }
            self.busy += t0.elapsed();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else if self.replied.is_some_and(|t| t.elapsed() < REPLY_SPIN)
                || self.shared.kept_awake()
            {
                std::hint::spin_loop();
                Some(Duration::ZERO)
            } else if self.batch_at.is_some_and(|t| t.elapsed() < NAP_AFTER) {
                self.shared.napping.store(true, Ordering::SeqCst);
                if self.shared.rx.is_empty() {
                    std::thread::park_timeout(NAP);
                }
                self.shared.napping.store(false, Ordering::SeqCst);
                Some(Duration::ZERO)
            } else {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                if !self.shared.rx.is_empty() {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    continue;
                }
                Some(self.idle_timeout())
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    eprintln!("chc-store: shard {}: poll: {e}", self.shard.id);
                }
            }
            self.shared.sleeping.store(false, Ordering::SeqCst);
            let t1 = Instant::now();
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(t);
                }
                if ev.is_writable() {
                    self.mark_dirty(t);
                }
            }
            self.pass_fences();
            self.finish_pass();
            self.busy += t1.elapsed();
        }
        self.finish_pass();
        if let Some(w) = self.wal.as_mut() {
            let _ = w.sync();
        }
        if let Some(mut c) = self.ckpt.take() {
            self.checkpoint(&mut c);
            c.finish();
        }
        self.shard.stats
    }

    fn idle_timeout(&self) -> Duration {
        let mut t = Duration::from_millis(500);
        if self.ckpt.is_some() {
            t = t.min(
                self.cfg
                    .checkpoint_interval
                    .saturating_sub(self.last_ckpt.elapsed()),
            );
        }
        if self.wal.is_some() {
            t = t.min(Duration::from_millis(200));
        }
        if self.fences.iter().any(|f| f.deadline.is_some()) {
            t = t.min(Duration::from_millis(1));
        }
        t.max(Duration::from_millis(1))
    }

    /// Handles inbox messages (the pass started at `now`); returns (did any work, stop
    /// requested).
    fn drain_inbox(&mut self, now: Instant) -> (bool, bool) {
        let mut n = 0;
        while n < 4096 {
            let Ok(msg) = self.shared.rx.try_recv() else {
                break;
            };
            n += 1;
            match msg {
                Inbound::Batch {
                    client,
                    ops,
                    mailbox,
                } => {
                    if !matches!(self.sinks.get(&client), Some(Sink::Mailbox(m)) if Arc::ptr_eq(m, &mailbox))
                    {
                        self.sinks.insert(client, Sink::Mailbox(mailbox.clone()));
                    }
                    self.apply(client, &ops);
                    mailbox.give_back(ops);
                    self.batch_at = Some(now);
                }
                Inbound::Detach { client } => {
                    if matches!(self.sinks.get(&client), Some(Sink::Mailbox(_))) {
                        self.sinks.remove(&client);
                        self.shard.disconnect(client);
                    }
                }
                Inbound::Native {
                    stream,
                    client,
                    leftover,
                    supersedes,
                    patient,
                } => self.add_native(stream, client, leftover, supersedes, patient),
                Inbound::Resp { stream, client } => self.add_resp(stream, client),
                Inbound::Call {
                    call,
                    from,
                    conn,
                    slot,
                    idx,
                } => {
                    let result = self.exec_call(call, 0);
                    // Answered after this pass's WAL append, like every other reply.
                    self.call_results.push((
                        from,
                        Inbound::CallResult {
                            conn,
                            slot,
                            idx,
                            result,
                        },
                    ));
                }
                Inbound::CallResult {
                    conn,
                    slot,
                    idx,
                    result,
                } => self.on_call_result(conn, slot, idx, result),
                Inbound::Shutdown => return (true, true),
            }
        }
        (n > 0, false)
    }

    /// Applies a batch and routes what it produced.
    fn apply(&mut self, client: ClientId, ops: &[wire::Op]) {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.shard.apply_batch(client, ops, self.now_ns, &mut out);
        let f = self.pending.entry(client).or_default();
        f.replies.append(&mut out.replies);
        f.acked = f.acked.max(out.acked);
        self.route(&mut out);
        self.out = out;
    }

    /// Queues pushes and commit notifications for their clients.
    fn route(&mut self, out: &mut Outputs) {
        for (c, p) in out.pushes.drain(..) {
            self.pending.entry(c).or_default().pushes.push(p);
        }
        // Commits nearly all go to one client (the root's subscription), one per logged
        // update: a run of them for the same client costs one map lookup.
        let mut commits = out.commits.drain(..).peekable();
        while let Some((c, first)) = commits.next() {
            let f = self.pending.entry(c).or_default();
            if f.pushes
                .last()
                .is_none_or(|p| p.kind != PushKind::PushCommits as i32)
            {
                f.pushes.push(wire::Push {
                    kind: PushKind::PushCommits as i32,
                    ..Default::default()
                });
            }
            let p = f.pushes.last_mut().expect("a commits push is last");
            p.commits.push(first);
            while let Some((_, commit)) = commits.next_if(|(c2, _)| *c2 == c) {
                p.commits.push(commit);
            }
        }
    }

    fn add_native(
        &mut self,
        stream: std::net::TcpStream,
        client: ClientId,
        leftover: Vec<u8>,
        supersedes: Vec<ClientId>,
        patient: bool,
    ) {
        let t = self.register(stream, Kind::Native { client });
        let Some(t) = t else { return };
        if supersedes.is_empty() {
            self.admit_native(t, client, leftover);
            return;
        }
        if let Some(c) = self.conns.get_mut(&t) {
            c.held = true;
        }
        self.fences.push(Fence {
            token: t,
            client,
            supersedes,
            leftover,
            deadline: (!patient).then(|| Instant::now() + FENCE_WAIT),
        });
        // Usually passed at once: a killed process's last operations and its end of stream
        // are in its socket already.
        self.pass_fences();
    }

    /// Open native connections (other than `except`) of the given clients.
    fn superseded(&self, clients: &[ClientId], except: Token) -> Vec<Token> {
        self.conns
            .iter()
            .filter(|(t, c)| {
                **t != except
                    && !c.closing
                    && matches!(c.kind, Kind::Native { client } if clients.contains(&client))
            })
            .map(|(t, _)| *t)
            .collect()
    }

    /// Lets fenced connections through whose superseded connections are gone (or, past the
    /// deadline, closes those first).
    fn pass_fences(&mut self) {
        if self.fences.is_empty() {
            return;
        }
        let now = Instant::now();
        for f in std::mem::take(&mut self.fences) {
            if !self.conns.contains_key(&f.token) {
                continue;
            }
            // Edge-triggered readiness may not report an end of stream that arrived with the
            // last data: look for it here. A patient connection waits for a live client, whose
            // end comes as an event of its own; reading it on every pass would cost the live
            // connection a system call per pass for as long as the spare waits.
            if f.deadline.is_some() {
                for old in self.superseded(&f.supersedes, f.token) {
                    self.read_conn(old, true);
                }
            }
            let left = self.superseded(&f.supersedes, f.token);
            if !left.is_empty() && f.deadline.is_none_or(|d| now < d) {
                self.fences.push(f);
                continue;
            }
            for old in left {
                self.close(old, Some(format!("superseded by client {:#x}", f.client)));
            }
            if let Some(c) = self.conns.get_mut(&f.token) {
                c.held = false;
            }
            self.admit_native(f.token, f.client, f.leftover);
            // What arrived while it was held raised no event this connection will see again.
            self.read_conn(f.token, true);
        }
    }

    /// Serves a native connection: its Hello is answered, what came with it applied.
    fn admit_native(&mut self, t: Token, client: ClientId, leftover: Vec<u8>) {
        self.sinks.insert(client, Sink::Conn(t));
        let hello = wire::ServerFrame {
            hello: Some(wire::HelloReply {
                shard: self.shard.id,
                shards: self.shard.shards,
                custom_ops: self.shard.customs().names(),
                applied_seq: self.shard.applied_seq(client),
            }),
            ..Default::default()
        };
        if let Some(c) = self.conns.get_mut(&t) {
            let mut b = BytesMut::new();
            wire::put_frame(&hello, &mut b);
            c.wbuf.extend_from_slice(&b);
            c.rbuf.extend_from_slice(&leftover);
        }
        self.mark_dirty(t);
        self.process_native(t);
    }

    fn add_resp(&mut self, stream: std::net::TcpStream, client: ClientId) {
        let authed = self.cfg.auth_token.is_none();
        if let Some(t) = self.register(
            stream,
            Kind::Resp {
                client,
                authed,
                slots: VecDeque::new(),
                next_slot: 0,
            },
        ) {
            self.sinks.insert(client, Sink::Conn(t));
            self.on_readable(t);
        }
    }

    fn register(&mut self, stream: std::net::TcpStream, kind: Kind) -> Option<Token> {
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        if stream.set_nonblocking(true).is_err() {
            return None;
        }
        let _ = stream.set_nodelay(true);
        let mut stream = TcpStream::from_std(stream);
        let t = Token(self.next_token);
        self.next_token += 1;
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, t, Interest::READABLE | Interest::WRITABLE)
        {
            eprintln!("chc-store: shard {}: register {peer}: {e}", self.shard.id);
            return None;
        }
        self.conns.insert(
            t,
            Conn {
                stream,
                kind,
                rbuf: BytesMut::with_capacity(64 * 1024),
                wbuf: Vec::with_capacity(64 * 1024),
                closing: false,
                held: false,
                peer,
            },
        );
        Some(t)
    }

    fn mark_dirty(&mut self, t: Token) {
        if !self.dirty_conns.contains(&t) {
            self.dirty_conns.push(t);
        }
    }

    fn on_readable(&mut self, t: Token) {
        self.read_conn(t, false);
    }

    /// Reads what a connection has and applies it. `to_end`: read until the socket would
    /// block, so that an end of stream right behind the data is seen now.
    fn read_conn(&mut self, t: Token, to_end: bool) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if c.closing || c.held || c.wbuf.len() > WBUF_HIGH {
            return;
        }
        let mut eof = false;
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    c.rbuf.extend_from_slice(&self.scratch[..n]);
                    // A short read emptied the socket: the next byte raises a new readiness
                    // event, so the extra read that would only say "would block" is skipped.
                    if (n < self.scratch.len() && !to_end)
                        || c.rbuf.len() > self.cfg.max_frame + (1 << 20)
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        match c.kind {
            Kind::Native { .. } => self.process_native(t),
            Kind::Resp { .. } => self.process_resp(t),
        }
        if eof {
            self.close(t, None);
        }
    }

    fn process_native(&mut self, t: Token) {
        // One frame value for every frame: its operations vector is reused.
        let mut frame = std::mem::take(&mut self.frame);
        while let Some(c) = self.conns.get_mut(&t) {
            let Kind::Native { client } = c.kind else {
                break;
            };
            if c.closing {
                break;
            }
            match wire::take_client_frame(&mut c.rbuf, self.cfg.max_frame, &mut frame) {
                Ok(true) => {
                    if frame.hello.is_some() {
                        self.close(t, Some("unexpected second Hello".into()));
                        break;
                    }
                    self.apply(client, &frame.ops);
                }
                Ok(false) => break,
                Err(e) => {
                    self.close(t, Some(format!("bad frame: {e}")));
                    break;
                }
            }
        }
        // Release the keys' references to the read buffer, which can then be reused.
        frame.ops.clear();
        self.frame = frame;
    }

    fn process_resp(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let mut pos = 0;
        let mut args = std::mem::take(&mut self.args);
        // A pipeline's keys are looked up together before its commands run (see
        // `Shard::touch_plain`): with many keys each command's lookup misses the cache.
        // The commands parsed for that are kept (length, end of their arguments in
        // `pre_args`) and not parsed again.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        let mut pre = std::mem::take(&mut self.pre);
        pre.clear();
        let mut pre_args = std::mem::take(&mut self.pre_args);
        pre_args.clear();
        let mut p = 0;
        for _ in 0..PIPELINE_TOUCH {
            match resp::parse(&c.rbuf[p..], &mut args) {
                Ok(Some(n)) => {
                    if let Some(k) = args.get(1) {
                        keys.push(p + k.start..p + k.end);
                    }
                    pre_args.extend_from_slice(&args);
                    pre.push((n, pre_args.len()));
                    p += n;
                }
                _ => break,
            }
        }
        if keys.len() > 1 {
            self.shard
                .touch_plain(keys.iter().map(|r| &c.rbuf[r.clone()]));
        }
        self.keys = keys;
        let mut next = 0;
        while !c.closing {
            let parsed = match pre.get(next) {
                Some(&(n, end)) => {
                    let start = next.checked_sub(1).map_or(0, |i| pre[i].1);
                    args.clear();
                    args.extend_from_slice(&pre_args[start..end]);
                    Ok(Some(n))
                }
                None => resp::parse(&c.rbuf[pos..], &mut args),
            };
            next += 1;
            match parsed {
                Ok(Some(n)) => {
                    let direct = match &c.kind {
                        Kind::Resp {
                            client,
                            authed: true,
                            slots,
                            ..
                        } if slots.is_empty() && !args.is_empty() => direct_resp(
                            &mut self.shard,
                            *client,
                            &c.rbuf[pos..pos + n],
                            &args,
                            &mut c.wbuf,
                        ),
                        _ => false,
                    };
                    if !direct && !args.is_empty() {
                        let argv: Vec<&[u8]> = args
                            .iter()
                            .map(|r| &c.rbuf[pos + r.start..pos + r.end])
                            .collect();
                        let plan = {
                            let Kind::Resp { client, authed, .. } = &mut c.kind else {
                                unreachable!("resp connection")
                            };
                            let names = self.shard_names();
                            let names = names.read();
                            let mut ctx = PlanCtx {
                                shards: self.shard.shards,
                                names: &names,
                                authed,
                                token: self.cfg.auth_token.as_deref(),
                                fsync: self.cfg.fsync_name(),
                                client: *client,
                            };
                            resp::plan(&mut ctx, &argv)
                        };
                        self.run_plan(t, &mut c, plan);
                    }
                    pos += n;
                }
                Ok(None) => break,
                Err(e) => {
                    let mut out = Vec::new();
                    resp::enc::error(&mut out, &format!("ERR {e}"));
                    emit(&mut c, out);
                    eprintln!(
                        "chc-store: shard {}: closing RESP connection {}: {e}",
                        self.shard.id, c.peer
                    );
                    c.closing = true;
                }
            }
        }
        let _ = c.rbuf.split_to(pos);
        self.args = args;
        self.pre = pre;
        self.pre_args = pre_args;
        self.conns.insert(t, c);
        self.mark_dirty(t);
    }

    fn shard_names(&self) -> Arc<RwLock<Names>> {
        self.names.clone()
    }

    fn run_plan(&mut self, t: Token, c: &mut Conn, plan: Plan) {
        match plan {
            Plan::Now(b) => emit(c, b),
            Plan::Quit(b) => {
                emit(c, b);
                c.closing = true;
            }
            Plan::Calls(calls, combine) => {
                let Kind::Resp { client, .. } = c.kind else {
                    return;
                };
                let me = self.shard.id;
                if calls.iter().all(|(s, _)| *s == me) {
                    let results: Vec<CallResult> = calls
                        .into_iter()
                        .map(|(_, call)| self.exec_call(call, client))
                        .collect();
                    let mut out = Vec::new();
                    resp::combine(&combine, &results, &mut out);
                    emit(c, out);
                    return;
                }
                let Kind::Resp {
                    slots, next_slot, ..
                } = &mut c.kind
                else {
                    return;
                };
                let id = *next_slot;
                *next_slot += 1;
                let n = calls.len();
                let mut slot = Slot {
                    id,
                    combine: Some(combine),
                    results: vec![None; n],
                    missing: n,
                    ready: None,
                };
                let mut remote = Vec::new();
                for (idx, (s, call)) in calls.into_iter().enumerate() {
                    if s == me {
                        slot.results[idx] = Some(self.exec_call(call, client));
                        slot.missing -= 1;
                    } else {
                        remote.push((s, idx, call));
                    }
                }
                slots.push_back(slot);
                for (s, idx, call) in remote {
                    self.peers[s as usize].send(Inbound::Call {
                        call,
                        from: me,
                        conn: t.0,
                        slot: id,
                        idx: idx as u32,
                    });
                }
            }
        }
    }

    fn on_call_result(&mut self, conn: usize, slot: u64, idx: u32, result: CallResult) {
        let t = Token(conn);
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        let Kind::Resp { slots, .. } = &mut c.kind else {
            return;
        };
        if let Some(s) = slots.iter_mut().find(|s| s.id == slot) {
            if s.results[idx as usize].replace(result).is_none() {
                s.missing -= 1;
            }
            if s.missing == 0 {
                let mut out = Vec::new();
                let results: Vec<CallResult> = s.results.drain(..).flatten().collect();
                if let Some(comb) = s.combine.take() {
                    resp::combine(&comb, &results, &mut out);
                }
                s.ready = Some(out);
            }
        }
        while slots.front().is_some_and(|s| s.ready.is_some()) {
            let s = slots.pop_front().expect("front");
            c.wbuf.extend_from_slice(&s.ready.expect("ready"));
        }
        self.mark_dirty(t);
    }

    /// Runs one call of a RESP command on this shard.
    fn exec_call(&mut self, call: ShardCall, client: ClientId) -> CallResult {
        match call {
            ShardCall::Op(op) => {
                let mut out = std::mem::take(&mut self.out);
                out.clear();
                self.shard
                    .apply_batch(client, std::slice::from_ref(&op), self.now_ns, &mut out);
                let r = out.replies.pop().unwrap_or_default();
                self.route(&mut out);
                self.out = out;
                CallResult::Reply(r)
            }
            ShardCall::Count => CallResult::Count(self.shard.len() as u64),
            ShardCall::Keys(p) => {
                let names = self.names.read();
                CallResult::Keys(
                    self.shard
                        .iter()
                        .map(|(k, e)| names.render(k.as_ref(), self.shard.owner_of(k.as_ref(), e)))
                        .filter(|k| resp::glob(&p, k))
                        .map(Into::into)
                        .collect(),
                )
            }
            ShardCall::Scan {
                pos,
                count,
                pattern,
            } => {
                let names = self.names.read();
                let mut keys = Vec::new();
                let mut next = None;
                for (i, (k, e)) in self.shard.iter().enumerate().skip(pos as usize) {
                    if i as u64 >= pos + count {
                        next = Some(i as u64);
                        break;
                    }
                    let r = names.render(k.as_ref(), self.shard.owner_of(k.as_ref(), e));
                    if pattern.as_ref().is_none_or(|p| resp::glob(p, &r)) {
                        keys.push(r.into());
                    }
                }
                CallResult::Scan { keys, next }
            }
            ShardCall::Stats => CallResult::Stats(self.shard.stats, self.shard.len() as u64),
        }
    }

    /// Stops reading from a connection and closes it at the end of the pass, after the WAL
    /// append, so the replies it still has to send never overtake the log.
    fn close(&mut self, t: Token, reason: Option<String>) {
        let Some(c) = self.conns.get_mut(&t) else {
            return;
        };
        if let Some(r) = &reason {
            eprintln!(
                "chc-store: shard {}: closing connection {}: {r}",
                self.shard.id, c.peer
            );
            if let Kind::Native { .. } = c.kind {
                let mut b = BytesMut::new();
                wire::put_frame(
                    &wire::ServerFrame {
                        error: r.clone(),
                        ..Default::default()
                    },
                    &mut b,
                );
                c.wbuf.extend_from_slice(&b);
            }
        }
        c.closing = true;
        self.mark_dirty(t);
    }

    /// Closes a connection now: a last non-blocking write of what it has, then forget it.
    fn drop_conn(&mut self, t: Token) {
        let Some(mut c) = self.conns.remove(&t) else {
            return;
        };
        let _ = c.stream.write(&c.wbuf);
        let _ = self.poll.registry().deregister(&mut c.stream);
        let client = match c.kind {
            Kind::Native { client } | Kind::Resp { client, .. } => client,
        };
        if matches!(self.sinks.get(&client), Some(Sink::Conn(x)) if *x == t) {
            self.sinks.remove(&client);
            self.pending.remove(&client);
            self.shard.disconnect(client);
        }
    }

    fn finish_pass(&mut self) {
        // Connections closed during the pass are still dirty: they are written and dropped in
        // step 3, after the log.
        // 1. Make this pass's updates durable (per policy) before anything is acknowledged.
        if let Some(w) = self.wal.as_mut() {
            self.wal_scratch.clear();
            self.shard.take_wal(&mut self.wal_scratch);
            let r = if self.wal_scratch.is_empty() {
                w.tick()
            } else {
                w.append(&self.wal_scratch)
            };
            if let Err(e) = r {
                // Without a working log nothing may be acknowledged: stop serving.
                eprintln!(
                    "chc-store: shard {}: write-ahead log failed: {e}; exiting",
                    self.shard.id
                );
                std::process::exit(70);
            }
        }
        // 2. Deliver replies, acks and pushes; answer other shards' calls.
        for (from, r) in self.call_results.drain(..) {
            self.peers[from as usize].send(r);
        }
        for (client, frame) in self.pending.drain() {
            match self.sinks.get(&client) {
                Some(Sink::Mailbox(m)) => {
                    if !frame.replies.is_empty() {
                        self.replied = Some(Instant::now());
                    }
                    m.deliver(self.shard.id, frame)
                }
                Some(Sink::Conn(t)) => {
                    if let Some(c) = self.conns.get_mut(t) {
                        let mut b = BytesMut::new();
                        wire::put_frame(&frame, &mut b);
                        c.wbuf.extend_from_slice(&b);
                        if !self.dirty_conns.contains(t) {
                            self.dirty_conns.push(*t);
                        }
                    }
                }
                None => {}
            }
        }
        // 3. Write out.
        let dirty = std::mem::take(&mut self.dirty_conns);
        for t in dirty {
            let mut close = false;
            let mut resume = false;
            if let Some(c) = self.conns.get_mut(&t) {
                let was_high = c.wbuf.len() > WBUF_HIGH;
                let mut written = 0;
                while written < c.wbuf.len() {
                    match c.stream.write(&c.wbuf[written..]) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(n) => written += n,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                c.wbuf.drain(..written);
                if c.closing {
                    close = true;
                }
                resume = was_high && c.wbuf.len() <= WBUF_HIGH;
            }
            if close {
                self.drop_conn(t);
            } else if resume {
                self.on_readable(t);
            }
        }
        // 4. Checkpoint when due, something changed and the writer is ready for it. Taking a
        //    delta costs this thread time per changed key; it may take at most a twentieth of
        //    the time the thread worked since the last one, unless the log has grown by
        //    CHECKPOINT_WAL_BYTES (with updates spread over many keys, every operation
        //    changes another key, and only the log's size bounds the interval).
        if let Some(mut c) = self.ckpt.take() {
            let grown = self
                .wal
                .as_ref()
                .map_or(0, |w| w.bytes_written - self.ckpt_wal_mark);
            if self.last_ckpt.elapsed() >= self.cfg.checkpoint_interval
                && (self.busy >= self.ckpt_cost * 20 || grown >= CHECKPOINT_WAL_BYTES)
                && (self.shard.lsn(), self.shard.stats.ops) != self.ckpt_mark
                && c.ready()
            {
                self.checkpoint(&mut c);
            }
            self.ckpt = Some(c);
        }
    }

    fn checkpoint(&mut self, c: &mut CheckpointWriter) {
        let t0 = Instant::now();
        self.last_ckpt = t0;
        let delta = self.shard.take_delta();
        let lsn = self.shard.lsn();
        self.ckpt_mark = (lsn, self.shard.stats.ops);
        self.busy = Duration::ZERO;
        self.ckpt_wal_mark = self.wal.as_ref().map_or(0, |w| w.bytes_written);
        if let Some(w) = self
            .wal
            .as_mut()
            .filter(|w| w.segment_len() >= SEGMENT_BYTES)
        {
            if let Err(e) = w.rotate(lsn + 1) {
                eprintln!(
                    "chc-store: shard {}: WAL rotation failed: {e}; exiting",
                    self.shard.id
                );
                std::process::exit(70);
            }
        }
        c.submit(Job {
            delta,
            lsn,
            ts: self.shard.ts_records(),
            declarations: self.shard.declarations().to_vec(),
        });
        self.ckpt_cost = t0.elapsed();
    }
}

fn emit(c: &mut Conn, bytes: Vec<u8>) {
    match &mut c.kind {
        Kind::Resp {
            slots, next_slot, ..
        } if !slots.is_empty() => {
            let id = *next_slot;
            *next_slot += 1;
            slots.push_back(Slot {
                id,
                combine: None,
                results: Vec::new(),
                missing: 0,
                ready: Some(bytes),
            });
        }
        _ => c.wbuf.extend_from_slice(&bytes),
    }
}

/// Runs a hot RESP command on a plain key of this shard without planning it; returns false
/// (having done nothing) when the command needs the general path: another shard's key, a
/// structured key, an unusual argument count or an entry with metadata.
pub(crate) fn direct_resp(
    shard: &mut Shard,
    client: ClientId,
    req: &[u8],
    args: &[Range<usize>],
    out: &mut Vec<u8>,
) -> bool {
    let arg = |i: usize| &req[args[i].clone()];
    let name = arg(0);
    if name.len() > 6 || args.len() < 2 {
        return false;
    }
    let mut up = [0u8; 6];
    up[..name.len()].copy_from_slice(name);
    up.make_ascii_uppercase();
    let cmd = &up[..name.len()];
    let raw = arg(1);
    // Keys starting with 'v' may be structured (`v2:s:...`): the planner parses those.
    if raw.first() == Some(&b'v') {
        return false;
    }
    let k = KeyRef {
        vertex: 0,
        object: 0,
        per_flow: false,
        sub: raw,
    };
    if k.shard(shard.shards) != shard.id {
        return false;
    }
    let n = args.len();
    let op = match (cmd, n) {
        (b"GET", 2) => {
            match shard.direct_get(k).as_deref() {
                None => out.extend_from_slice(b"$-1\r\n"),
                Some(crate::value::Value::Bytes(b)) => resp::enc::bulk(out, b),
                Some(crate::value::Value::Int(i)) => resp::enc::bulk_int(out, *i),
                Some(_) => resp::enc::error(out, WRONGTYPE),
            }
            return true;
        }
        (b"SET", 3) => DirectOp::Set(arg(2)),
        (b"INCR", 2) => DirectOp::Incr(1),
        (b"DECR", 2) => DirectOp::Incr(-1),
        (b"INCRBY", 3) => match parse_int(arg(2)) {
            Some(d) => DirectOp::Incr(d),
            None => return false,
        },
        (b"DECRBY", 3) => match parse_int(arg(2)).and_then(i64::checked_neg) {
            Some(d) => DirectOp::Incr(d),
            None => return false,
        },
        (b"LPUSH", 3) => DirectOp::PushFront(arg(2)),
        (b"RPUSH", 3) => DirectOp::PushBack(arg(2)),
        (b"LPOP", 2) => DirectOp::PopFront,
        (b"RPOP", 2) => DirectOp::PopBack,
        _ => return false,
    };
    match shard.apply_direct(client, k, op) {
        Direct::Fallback => return false,
        Direct::Ok => out.extend_from_slice(b"+OK\r\n"),
        Direct::Int(i) => resp::enc::int(out, i),
        Direct::Item(b) => resp::enc::bulk(out, &b),
        Direct::Nil => out.extend_from_slice(b"$-1\r\n"),
        Direct::WrongType => resp::enc::error(out, WRONGTYPE),
        Direct::Overflow => resp::enc::error(out, "ERR increment or decrement would overflow"),
    }
    true
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

/// A decimal i64 as Redis accepts it (optional '-', digits, no spaces or '+').
fn parse_int(a: &[u8]) -> Option<i64> {
    if a.is_empty() || a.len() > 20 || a[0] == b'+' {
        return None;
    }
    std::str::from_utf8(a).ok()?.parse().ok()
}
