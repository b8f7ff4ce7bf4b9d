//! A running store: shard threads, optional TCP listeners, recovery at start.
//!
//! [`Store::start`] recovers each shard from its checkpoint and write-ahead log (when a data
//! directory is given), starts one thread per shard and, if asked, the native protocol and RESP
//! listeners. The same `Store` serves in-process clients ([`Store::client`]) without sockets:
//! that is the embedded default of `chc-dataplane`.

pub mod fuzz;
pub mod resp;
mod worker;

use crate::checkpoint::{self, CheckpointWriter};
use crate::custom::CustomOps;
use crate::names::Names;
use crate::shard::{ClientId, Shard, ShardStats};
use crate::wal::{self, FsyncPolicy, WalWriter};
use bytes::BytesMut;
use chc_proto::wire;
use crossbeam::channel::{self, Receiver, Sender};
use crossbeam::queue::{ArrayQueue, SegQueue};
use mio::{Poll, Waker};
use parking_lot::{Mutex, RwLock};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

pub use resp::RespError;

/// How to run a store.
#[derive(Clone)]
pub struct StoreConfig {
    pub shards: u32,
    /// Where checkpoints and WAL segments live; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    pub fsync: FsyncPolicy,
    pub checkpoint_interval: Duration,
    pub customs: CustomOps,
    /// Native protocol listener.
    pub listen: Option<SocketAddr>,
    /// RESP listener.
    pub resp: Option<SocketAddr>,
    /// When set, both listeners refuse clients that do not present it.
    pub auth_token: Option<String>,
    pub max_frame: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            shards: 1,
            data_dir: None,
            fsync: FsyncPolicy::EverySec,
            checkpoint_interval: Duration::from_millis(150),
            customs: CustomOps::builtin(),
            listen: None,
            resp: None,
            auth_token: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
        }
    }
}

impl StoreConfig {
    /// An in-memory, in-process store with `shards` shard threads.
    pub fn in_memory(shards: u32) -> Self {
        StoreConfig {
            shards,
            ..Default::default()
        }
    }

    fn fsync_name(&self) -> &'static str {
        match self.fsync {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("shard count must be between 1 and 1024, not {0}")]
    Shards(u32),
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("data directory {}: {cause}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("binding {addr}: {cause}")]
    Bind {
        addr: SocketAddr,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Messages to a shard thread.
pub(crate) enum Inbound {
    Batch {
        client: ClientId,
        ops: Vec<wire::Op>,
        mailbox: Arc<Mailbox>,
    },
    Detach {
        client: ClientId,
    },
    Native {
        stream: TcpStream,
        client: ClientId,
        leftover: Vec<u8>,
        /// Clients whose connections must be gone before this one is served.
        supersedes: Vec<ClientId>,
        /// Wait for them without a deadline (`Hello.patient`).
        patient: bool,
    },
    Resp {
        stream: TcpStream,
        client: ClientId,
    },
    Call {
        call: resp::ShardCall,
        from: u32,
        conn: usize,
        slot: u64,
        idx: u32,
    },
    CallResult {
        conn: usize,
        slot: u64,
        idx: u32,
        result: resp::CallResult,
    },
    Shutdown,
}

/// The part of a shard thread others hold: its inbox and a way to wake it.
pub(crate) struct WorkerShared {
    tx: Sender<Inbound>,
    rx: Receiver<Inbound>,
    waker: Waker,
    /// Set while the thread is (about to be) blocked in poll: only then is a wake-up needed,
    /// so a busy shard costs its senders no system call.
    sleeping: AtomicBool,
    /// Set while the thread naps (see `worker::NAP`): it looks at its inbox again by itself
    /// soon, so a batch nobody waits for owes it nothing; one that is waited for unparks it.
    napping: AtomicBool,
    /// The shard's thread, for unparking a nap.
    thread: OnceLock<Thread>,
    /// Until then (ns on [`awake_clock`]) the thread neither naps nor sleeps when idle: a
    /// client about to wait for it several times in a row (a flow move) asked it to stay up.
    awake_until: AtomicU64,
}

/// A token file could not give a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path} is empty")]
    Empty { path: String },
}

/// The token in a token file: its text without surrounding white space. The servers'
/// `--auth-token-file` and the clients' token files are read alike, so one file serves
/// both sides.
pub fn read_token_file(path: &std::path::Path) -> Result<String, TokenFileError> {
    let t = std::fs::read_to_string(path).map_err(|cause| TokenFileError::Read {
        path: path.display().to_string(),
        cause,
    })?;
    let t = t.trim();
    if t.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.display().to_string(),
        });
    }
    Ok(t.to_string())
}

/// Nanoseconds since the first call in this process: the clock of `awake_until`.
pub(crate) fn awake_clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl WorkerShared {
    /// Keeps the thread from napping or sleeping for `d`, and wakes it now.
    pub(crate) fn keep_awake(&self, d: Duration) {
        let until = awake_clock() + d.as_nanos() as u64;
        self.awake_until.fetch_max(until, Ordering::AcqRel);
        self.wake();
    }

    /// Whether a client asked the thread to stay up (see [`WorkerShared::keep_awake`]).
    pub(crate) fn kept_awake(&self) -> bool {
        let until = self.awake_until.load(Ordering::Acquire);
        until != 0 && awake_clock() < until
    }

    pub(crate) fn send(&self, m: Inbound) {
        let _ = self.tx.send(m);
        self.wake();
    }

    /// Queues `m` without waking the thread; returns whether it sleeps, so that the caller
    /// owes it a [`WorkerShared::wake`].
    pub(crate) fn send_quietly(&self, m: Inbound) -> bool {
        let _ = self.tx.send(m);
        self.sleeping.load(Ordering::SeqCst)
    }

    /// Wakes the thread if it sleeps or naps (it then takes everything queued).
    pub(crate) fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        } else if self.napping.load(Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

/// How long a client waiting for a reply spins before it parks.
pub const MAILBOX_SPIN: Duration = Duration::from_micros(100);

/// Calls `poll` until it gives something or `spin` has passed, yielding now and then so that
/// a thread sharing the core (the one that delivers) can run. A waiter that blocks at once
/// pays a thread wake-up on top of the round trip it waits for, which on a loaded VM is as
/// long again.
pub fn spin_poll<T>(spin: Duration, poll: impl FnMut() -> Option<T>) -> Option<T> {
    poll_until(spin, true, poll)
}

/// Calls `poll` until it gives something or `spin` has passed, looking at the time every 64
/// calls and then yielding the CPU if `yields`.
fn poll_until<T>(spin: Duration, yields: bool, mut poll: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        if let Some(x) = poll() {
            return Some(x);
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(64) {
            if start.elapsed() >= spin {
                return None;
            }
            if yields {
                std::thread::yield_now();
                continue;
            }
        }
        std::hint::spin_loop();
    }
}

/// Spent batch buffers a mailbox keeps for its client (a few batches are in flight at once).
const SPENT_BATCHES: usize = 8;
/// Spent folded-increment lists a mailbox keeps (a batch carries one per folded counter).
const SPENT_FOLDS: usize = 32;

/// Where a shard thread leaves frames for an in-process client.
pub struct Mailbox {
    q: SegQueue<(u32, wire::ServerFrame)>,
    waiting: AtomicBool,
    waiter: Mutex<Option<Thread>>,
    /// Batch buffers the shards are done with, emptied, for the client's next batches; and
    /// the lists of folded increments' clocks and operation indexes out of them. A buffer
    /// freed by a shard's thread and allocated again by the client's takes the allocator's
    /// slow path every time (its free went to the other thread's cache), once per batch and
    /// per folded counter on a per-packet path.
    spent: ArrayQueue<Vec<wire::Op>>,
    spent_folds: ArrayQueue<(Vec<u64>, Vec<u32>)>,
}

impl Mailbox {
    pub(crate) fn new() -> Self {
        Mailbox {
            q: SegQueue::new(),
            waiting: AtomicBool::new(false),
            waiter: Mutex::new(None),
            spent: ArrayQueue::new(SPENT_BATCHES),
            spent_folds: ArrayQueue::new(SPENT_FOLDS),
        }
    }

    /// Takes back a batch the shard has applied (see `spent`); what does not fit is freed.
    pub(crate) fn give_back(&self, mut ops: Vec<wire::Op>) {
        for op in &mut ops {
            if op.more_clocks.capacity() > 0 && !self.spent_folds.is_full() {
                let (mut c, mut i) = (
                    std::mem::take(&mut op.more_clocks),
                    std::mem::take(&mut op.more_op_index),
                );
                c.clear();
                i.clear();
                let _ = self.spent_folds.push((c, i));
            }
        }
        ops.clear();
        let _ = self.spent.push(ops);
    }

    /// An empty batch buffer a shard gave back, if any.
    pub(crate) fn take_spent(&self) -> Option<Vec<wire::Op>> {
        self.spent.pop()
    }

    /// Empty lists for a folded increment's clocks and operation indexes, if any came back.
    pub(crate) fn take_spent_folds(&self) -> Option<(Vec<u64>, Vec<u32>)> {
        self.spent_folds.pop()
    }

    pub(crate) fn deliver(&self, shard: u32, frame: wire::ServerFrame) {
        self.q.push((shard, frame));
        if self.waiting.load(Ordering::SeqCst) {
            if let Some(t) = self.waiter.lock().as_ref() {
                t.unpark();
            }
        }
    }

    pub(crate) fn try_take(&self) -> Option<(u32, wire::ServerFrame)> {
        self.q.pop()
    }

    /// Waits up to `timeout` for a frame: spins for up to [`MAILBOX_SPIN`] (a reply from an
    /// in-process shard arrives in microseconds, one over loopback TCP in tens), yielding now
    /// and then so that a reader thread sharing the core can deliver it, then parks. Being
    /// unparked costs a blocking call another thread wake-up on top of the round trip.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<(u32, wire::ServerFrame)> {
        if let Some(f) = spin_poll(MAILBOX_SPIN.min(timeout), || self.q.pop()) {
            return Some(f);
        }
        self.park_for(timeout)
    }

    /// Waits up to `timeout` for a frame by polling alone: for a thread that owns its CPU
    /// (a DPDK lcore). Yielding it to whatever else may run there cost such a wait a few
    /// hundred microseconds at a time, and parking it lets its vCPU halt.
    pub(crate) fn poll_for(&self, timeout: Duration) -> Option<(u32, wire::ServerFrame)> {
        poll_until(timeout, false, || self.q.pop())
    }

    fn park_for(&self, timeout: Duration) -> Option<(u32, wire::ServerFrame)> {
        *self.waiter.lock() = Some(std::thread::current());
        self.waiting.store(true, Ordering::SeqCst);
        let r = match self.q.pop() {
            Some(f) => Some(f),
            None => {
                std::thread::park_timeout(timeout);
                self.q.pop()
            }
        };
        self.waiting.store(false, Ordering::SeqCst);
        r
    }
}

/// A running store.
pub struct Store {
    cfg: Arc<StoreConfig>,
    workers: Arc<Vec<Arc<WorkerShared>>>,
    threads: Vec<JoinHandle<ShardStats>>,
    acceptors: Vec<(Arc<AtomicBool>, Arc<Waker>, JoinHandle<()>)>,
    pub native_addr: Option<SocketAddr>,
    pub resp_addr: Option<SocketAddr>,
    /// Recovery summary per shard: (records replayed, torn tail truncated).
    pub recovery: Vec<wal::RecoveryReport>,
    next_client: AtomicU64,
}

/// High bit marks client ids the server invents for RESP connections.
const RESP_CLIENT_BIT: u64 = 1 << 63;

impl Store {
    /// The shard threads' handles, for a host that places them (a DPDK process keeps them off
    /// its polling cores).
    #[cfg(unix)]
    pub fn shard_threads(&self) -> Vec<std::os::unix::thread::RawPthread> {
        use std::os::unix::thread::JoinHandleExt;
        self.threads.iter().map(|t| t.as_pthread_t()).collect()
    }

    pub fn start(cfg: StoreConfig) -> Result<Store, StoreError> {
        if cfg.shards == 0 || cfg.shards > 1024 {
            return Err(StoreError::Shards(cfg.shards));
        }
        // Each store has its own name registry, filled by declarations and checkpoints.
        let names: Arc<RwLock<Names>> = Arc::default();
        let cfg = Arc::new(cfg);
        // Recover every shard before serving anything.
        let mut shards = Vec::new();
        let mut recovery = Vec::new();
        for id in 0..cfg.shards {
            let mut shard = Shard::new(id, cfg.shards, cfg.customs.clone(), names.clone());
            let mut report = wal::RecoveryReport::default();
            if let Some(dir) = &cfg.data_dir {
                std::fs::create_dir_all(dir).map_err(|cause| StoreError::DataDir {
                    path: dir.clone(),
                    cause,
                })?;
                if let Some(recs) = checkpoint::load(dir, id, cfg.shards)? {
                    for r in recs {
                        shard.load_checkpoint_record(r);
                    }
                }
                report = wal::recover(dir, id, |rec| shard.replay_wal_record(rec))?;
                if let Some((p, off, n)) = &report.truncated {
                    eprintln!(
                        "chc-store: shard {id}: {}: dropped a torn tail of {n} bytes at offset {off}",
                        p.display()
                    );
                }
                shard.set_durable(true);
            }
            shards.push(shard);
            recovery.push(report);
        }
        let mut polls = Vec::new();
        let mut shared = Vec::new();
        for _ in 0..cfg.shards {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), worker::WAKER)?;
            let (tx, rx) = channel::unbounded();
            shared.push(Arc::new(WorkerShared {
                tx,
                rx,
                waker,
                sleeping: AtomicBool::new(false),
                napping: AtomicBool::new(false),
                thread: OnceLock::new(),
                awake_until: AtomicU64::new(0),
            }));
            polls.push(poll);
        }
        let workers = Arc::new(shared);
        let mut threads = Vec::new();
        for (mut shard, poll) in shards.into_iter().zip(polls) {
            let id = shard.id;
            let (wal, ckpt) = match &cfg.data_dir {
                Some(dir) => {
                    let w = WalWriter::create(dir, id, shard.lsn() + 1, cfg.fsync)?;
                    let c = CheckpointWriter::start(dir.clone(), id, cfg.shards);
                    // A fresh checkpoint of the recovered state lets old segments go.
                    c.submit(checkpoint::Job {
                        delta: shard.full_delta(),
                        lsn: shard.lsn(),
                        ts: shard.ts_records(),
                        declarations: shard.declarations().to_vec(),
                    });
                    (Some(w), Some(c))
                }
                None => (None, None),
            };
            let w = worker::Worker::new(
                shard,
                workers[id as usize].clone(),
                workers.clone(),
                cfg.clone(),
                names.clone(),
                poll,
                wal,
                ckpt,
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard-{id}"))
                    .spawn(move || w.run())?,
            );
        }
        let mut store = Store {
            cfg: cfg.clone(),
            workers,
            threads,
            acceptors: Vec::new(),
            native_addr: None,
            resp_addr: None,
            recovery,
            next_client: AtomicU64::new(1),
        };
        if let Some(addr) = cfg.listen {
            let l = TcpListener::bind(addr).map_err(|cause| StoreError::Bind { addr, cause })?;
            store.native_addr = Some(l.local_addr()?);
            store.spawn_acceptor(l, false)?;
        }
        if let Some(addr) = cfg.resp {
            let l = TcpListener::bind(addr).map_err(|cause| StoreError::Bind { addr, cause })?;
            store.resp_addr = Some(l.local_addr()?);
            store.spawn_acceptor(l, true)?;
        }
        Ok(store)
    }

    pub fn shards(&self) -> u32 {
        self.cfg.shards
    }

    pub fn customs(&self) -> &CustomOps {
        &self.cfg.customs
    }

    fn spawn_acceptor(&mut self, l: TcpListener, is_resp: bool) -> Result<(), StoreError> {
        const LISTENER: mio::Token = mio::Token(0);
        const STOP: mio::Token = mio::Token(1);
        l.set_nonblocking(true)?;
        // Waits for connections in poll rather than looking every few milliseconds: a
        // replacement NF's connection is on its recovery's critical path.
        let mut poll = Poll::new()?;
        let mut l = mio::net::TcpListener::from_std(l);
        poll.registry()
            .register(&mut l, LISTENER, mio::Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), STOP)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let workers = self.workers.clone();
        let cfg = self.cfg.clone();
        let name = if is_resp { "resp-accept" } else { "accept" };
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut rr = 0usize;
                let mut resp_id = 0u64;
                let mut events = mio::Events::with_capacity(8);
                while !stop2.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, peer)) => {
                            let s = TcpStream::from(s);
                            let _ = s.set_nonblocking(false);
                            if is_resp {
                                resp_id += 1;
                                let w = &workers[rr % workers.len()];
                                rr += 1;
                                w.send(Inbound::Resp {
                                    stream: s,
                                    client: RESP_CLIENT_BIT | resp_id,
                                });
                            } else {
                                let workers = workers.clone();
                                let cfg = cfg.clone();
                                // The handshake waits for the client; do not hold up others.
                                let _ = std::thread::Builder::new()
                                    .name("handshake".into())
                                    .spawn(move || handshake(s, peer, &cfg, &workers));
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if let Err(e) = poll.poll(&mut events, None) {
                                if e.kind() != std::io::ErrorKind::Interrupted {
                                    eprintln!("chc-store: accept: poll: {e}");
                                    std::thread::sleep(Duration::from_millis(50));
                                }
                            }
                        }
                        Err(e) => {
                            // Out of descriptors, say: give the others time to close.
                            eprintln!("chc-store: accept: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        self.acceptors.push((stop, waker, h));
        Ok(())
    }

    /// An in-process client (no sockets).
    pub fn client(&self, id: ClientId) -> crate::client::StoreClient {
        crate::client::StoreClient::in_process(self, id)
    }

    /// A fresh client id not used by other in-process clients of this store.
    pub fn next_client_id(&self) -> ClientId {
        (1 << 62) | self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn worker(&self, shard: u32) -> &Arc<WorkerShared> {
        &self.workers[shard as usize]
    }

    /// Stops listeners and shard threads, syncing the WAL and writing a final checkpoint.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for (s, w, _) in &self.acceptors {
            s.store(true, Ordering::Relaxed);
            let _ = w.wake();
        }
        for (_, _, h) in self.acceptors.drain(..) {
            let _ = h.join();
        }
        for w in self.workers.iter() {
            w.send(Inbound::Shutdown);
        }
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the client's Hello, checks it and hands the connection to its shard's thread.
fn handshake(mut s: TcpStream, peer: SocketAddr, cfg: &StoreConfig, workers: &[Arc<WorkerShared>]) {
    let refuse = |mut s: TcpStream, why: String| {
        eprintln!("chc-store: refusing {peer}: {why}");
        let mut b = BytesMut::new();
        wire::put_frame(
            &wire::ServerFrame {
                error: why,
                ..Default::default()
            },
            &mut b,
        );
        let _ = s.write_all(&b);
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    let hello = loop {
        match wire::take_frame::<wire::ClientFrame>(&mut buf, 64 * 1024) {
            Ok(Some(f)) => break f,
            Ok(None) => {}
            Err(e) => return refuse(s, format!("bad hello frame: {e}")),
        }
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return refuse(s, format!("no hello: {e}")),
        }
    };
    let _ = s.set_read_timeout(None);
    let Some(h) = hello.hello else {
        return refuse(s, "first frame must carry Hello".into());
    };
    if let Some(t) = &cfg.auth_token {
        if &h.token != t {
            return refuse(s, "authentication failed".into());
        }
    }
    if h.version != wire::PROTOCOL_VERSION {
        return refuse(
            s,
            format!(
                "protocol version {} not supported (server speaks {})",
                h.version,
                wire::PROTOCOL_VERSION
            ),
        );
    }
    if h.shard >= cfg.shards {
        return refuse(
            s,
            format!("no shard {} (the server has {})", h.shard, cfg.shards),
        );
    }
    if h.client_id & RESP_CLIENT_BIT != 0 {
        return refuse(s, "client ids with the top bit set are reserved".into());
    }
    let mut leftover = buf.to_vec();
    // Operations sent along with the Hello are processed right after registration.
    if !hello.ops.is_empty() {
        let mut b = BytesMut::new();
        wire::put_frame(
            &wire::ClientFrame {
                hello: None,
                ops: hello.ops,
            },
            &mut b,
        );
        let mut v = b.to_vec();
        v.extend_from_slice(&leftover);
        leftover = v;
    }
    workers[h.shard as usize].send(Inbound::Native {
        stream: s,
        client: h.client_id,
        leftover,
        supersedes: h.supersedes,
        patient: h.patient,
    });
}
