//! The client library: one API over two transports.
//!
//! [`StoreClient`] routes each operation to its shard, batches operations per shard until
//! [`StoreClient::flush`] (or a blocking [`StoreClient::call`]) sends them, and keeps every sent
//! operation until the shard acknowledges it. Operations on one shard are applied in the order
//! they were issued, so a read sees every earlier non-blocking update of the same client.
//! Un-acknowledged operations are sent again after a timeout or a reconnection, flagged as
//! retransmissions; the shard recognises their sequence numbers and does not apply them twice.
//!
//! Transports: in-process (the shard threads of a [`Store`] in this process; batches travel
//! through channels) and TCP (one connection per shard, to one or several `chc-store`
//! processes).

pub mod cache;
pub mod nflog;
pub mod ops;
mod tcp;

use crate::server::{Inbound, Mailbox, Store, WorkerShared, MAILBOX_SPIN};
use crate::shard::ClientId;
use chc_proto::wire::{self, OpCode, OpFlag, PushKind, Status};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use ops::ObjKey;
pub use tcp::TcpOptions;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("no reply from shard {shard} within {waited:?}")]
    Timeout { shard: u32, waited: Duration },
    #[error("store refused the connection: {0}")]
    Refused(String),
    #[error("the store closed the connection: {0}")]
    Closed(String),
    /// The store applied the operation and failed before replying: a reconnection reported
    /// it applied, and the reply is gone. `call` repeats operations that are safe to repeat.
    #[error("shard {shard} applied operation {seq} but its reply was lost in a store failure")]
    ReplyLost { shard: u32, seq: u64 },
}

/// Counters a client keeps.
#[derive(Default, Debug, Clone, Copy)]
pub struct ClientStats {
    pub ops: u64,
    pub batches: u64,
    pub blocking_calls: u64,
    pub retransmits: u64,
    pub reconnects: u64,
    /// Increments folded into an earlier operation ([`StoreClient::fold_incr`]).
    pub folded: u64,
}

/// What arrived from a shard without being asked for: callbacks, handovers, commits.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushed {
    pub shard: u32,
    pub push: wire::Push,
}

struct ShardLink {
    next_seq: u64,
    /// Not yet sent.
    pending: Vec<wire::Op>,
    /// Sent, not yet acknowledged, in sequence order (kept only where a batch can be lost).
    outstanding: VecDeque<wire::Op>,
    /// The last sequence number sent.
    sent: u64,
    /// Updates in `pending`, counting those folded into another operation.
    queued: usize,
    /// [`StoreClient::flush_coalesced`] held the pending batch back once.
    held: bool,
    /// In process: a batch reached the shard while it slept, and it is woken when this many
    /// more calls of [`StoreClient::flush_coalesced`] have passed (0: no wake-up owed).
    wake_in: u8,
    /// In process: a batch went quietly since the shard was last woken. A shard that naps
    /// instead of sleeping owes no wake-up for it, but whoever waits next unparks the nap
    /// ([`StoreClient::flush_shard`]) rather than wait for its end.
    quiet: bool,
    /// Most increments one operation of this link carried in the last batches: a new
    /// carrier makes room for as many, so it does not grow (reallocate and copy) while a
    /// batch fills.
    fold_room: usize,
    acked: u64,
    last_progress: Instant,
    rto: Duration,
}

enum Transport {
    InProc { workers: Vec<Arc<WorkerShared>> },
    Tcp(tcp::TcpLinks),
}

/// A client of the store: an NF instance, a root, a tool.
pub struct StoreClient {
    id: ClientId,
    transport: Transport,
    mailbox: Arc<Mailbox>,
    links: Vec<ShardLink>,
    /// (shard, index in its unsent batch) of the last fold per object id modulo
    /// [`FOLD_HINTS`]: a guess, checked before use.
    fold_hints: [(usize, usize); FOLD_HINTS],
    /// Whether sent operations are kept for retransmission. A TCP connection can fail with
    /// batches in it; the in-process transport hands each batch to the shard thread's
    /// channel, which loses nothing while the shard runs, so it keeps no copies (copying
    /// every operation once more was a good part of a non-blocking update's cost).
    keeps_copies: bool,
    customs: Vec<String>,
    replies: HashMap<(u32, u64), wire::Reply>,
    pushes: VecDeque<Pushed>,
    /// Frames taken from the transport and not yet processed.
    arrived: VecDeque<(u32, wire::ServerFrame)>,
    /// How long a blocking call waits before giving up.
    pub call_timeout: Duration,
    /// In process: wait for replies by polling alone, never yielding or parking. For a
    /// thread that owns its CPU and polls it anyway (a DPDK lcore): see
    /// `Mailbox::poll_for`.
    pub poll_only: bool,
    /// Initial retransmission timeout.
    pub rto: Duration,
    pub stats: ClientStats,
}

const F_NONBLOCKING: u32 = OpFlag::FlagNonblocking as u32;
const F_RETRANSMIT: u32 = OpFlag::FlagRetransmit as u32;
/// How far back in a shard's unsent batch [`StoreClient::fold_incr`] looks for the key.
const FOLD_WINDOW: usize = 8;
/// Most increments one operation carries.
const FOLD_MAX: usize = 1024;
/// Room made for folded increments at a link's first fold (a burst's worth).
const FOLD_RESERVE: usize = 32;
/// Keys whose last fold [`StoreClient::fold_incr`] remembers (by object id).
const FOLD_HINTS: usize = 4;
/// Calls of [`StoreClient::flush_coalesced`] after which a sleeping shard that a batch was
/// sent to quietly is woken.
const WAKE_AFTER: u8 = 32;

impl StoreClient {
    pub(crate) fn in_process(store: &Store, id: ClientId) -> Self {
        let workers = (0..store.shards())
            .map(|s| store.worker(s).clone())
            .collect();
        Self::new(
            id,
            Transport::InProc { workers },
            Arc::new(Mailbox::new()),
            store.shards(),
            store.customs().names(),
        )
    }

    /// Connects to one or more `chc-store` processes; each holds the shards it reports, and
    /// the client numbers them in the order the addresses are given.
    pub fn connect(
        addrs: &[SocketAddr],
        id: ClientId,
        opts: TcpOptions,
    ) -> Result<Self, ClientError> {
        let (links, customs) = tcp::TcpLinks::connect(addrs, id, opts)?;
        let shards = links.shards();
        let mailbox = Arc::new(Mailbox::new());
        let mut c = Self::new(id, Transport::Tcp(links), mailbox, shards, customs);
        // Resume sequence numbers where the shards say this client stopped.
        if let Transport::Tcp(t) = &c.transport {
            for (s, l) in c.links.iter_mut().enumerate() {
                let a = t.applied_seq(s as u32);
                l.next_seq = a + 1;
                l.acked = a;
                l.sent = a;
            }
        }
        Ok(c)
    }

    fn new(
        id: ClientId,
        transport: Transport,
        mailbox: Arc<Mailbox>,
        shards: u32,
        customs: Vec<String>,
    ) -> Self {
        let now = Instant::now();
        StoreClient {
            id,
            keeps_copies: matches!(transport, Transport::Tcp(_)),
            transport,
            mailbox,
            fold_hints: [(usize::MAX, 0); FOLD_HINTS],
            links: (0..shards)
                .map(|_| ShardLink {
                    next_seq: 1,
                    pending: Vec::new(),
                    outstanding: VecDeque::new(),
                    sent: 0,
                    queued: 0,
                    held: false,
                    wake_in: 0,
                    quiet: false,
                    fold_room: FOLD_RESERVE,
                    acked: 0,
                    last_progress: now,
                    rto: Duration::from_millis(200),
                })
                .collect(),
            customs,
            replies: HashMap::new(),
            pushes: VecDeque::new(),
            arrived: VecDeque::new(),
            call_timeout: Duration::from_secs(10),
            poll_only: false,
            rto: Duration::from_millis(200),
            stats: ClientStats::default(),
        }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    pub fn shards(&self) -> u32 {
        self.links.len() as u32
    }

    /// Id of a custom operation by name, as the store registered it.
    pub fn custom_op(&self, name: &str) -> Option<u32> {
        self.customs
            .iter()
            .position(|n| n == name)
            .map(|i| i as u32)
    }

    /// The shard an operation goes to.
    #[inline]
    pub fn shard_of(&self, op: &wire::Op) -> u32 {
        crate::key::KeyRef {
            vertex: op.vertex as u16,
            object: op.object as u16,
            per_flow: op.per_flow,
            sub: &op.sub,
        }
        .shard(self.shards())
    }

    /// Queues an operation for its shard; returns (shard, sequence number). Nothing is sent
    /// until [`StoreClient::flush`] or a blocking call.
    #[inline]
    pub fn submit(&mut self, op: wire::Op) -> (u32, u64) {
        let shard = self.shard_of(&op);
        (shard, self.submit_to(shard, op))
    }

    /// Queues an operation for a given shard (operations that address shards, not keys, such
    /// as clock retirement or commit subscriptions).
    #[inline]
    pub fn submit_to(&mut self, shard: u32, mut op: wire::Op) -> u64 {
        let l = &mut self.links[shard as usize];
        op.seq = l.next_seq;
        l.next_seq += 1;
        l.pending.push(op);
        l.queued += 1;
        self.stats.ops += 1;
        l.next_seq - 1
    }

    /// Queues a non-blocking increment that carries a run of clocks (`Op.more_run`), counted
    /// as the increments it carries.
    pub fn submit_run(&mut self, op: wire::Op) -> (u32, u64) {
        let more = op.more_run as usize;
        let (shard, seq) = self.submit(op);
        self.links[shard as usize].queued += more;
        self.stats.ops += more as u64;
        self.stats.folded += more as u64;
        (shard, seq)
    }

    /// Queues a non-blocking increment made for a packet (`op.clock` set), folded into an
    /// earlier one where [`StoreClient::fold_incr`] can. Returns (shard, sequence number of
    /// the operation that carries it).
    pub fn submit_incr(&mut self, mut op: wire::Op) -> (u32, u64) {
        op.flags |= F_NONBLOCKING;
        if op.code == OpCode::OpIncr as i32 {
            let k = crate::key::KeyRef {
                vertex: op.vertex as u16,
                object: op.object as u16,
                per_flow: op.per_flow,
                sub: &op.sub,
            };
            if let Some(at) =
                self.fold_incr(k, op.num, op.flags, op.instance, op.clock, op.op_index)
            {
                return at;
            }
        }
        self.submit(op)
    }

    /// Folds a packet's non-blocking increment of `k` by `num` into the last unsent operation
    /// on that key, when that one is an increment by the same amount from the same instance
    /// with the same flags and a clock (`Op.more_run` for consecutive clocks with one index,
    /// `Op.more_clocks` otherwise). The shard applies each folded
    /// increment as its own operation, in order, so nothing changes but the cost: a counter
    /// every packet bumps takes one operation per batch instead of one per packet. That other
    /// keys' operations queued in between are overtaken does not matter: the store orders
    /// operations per key, and this key has none in between. Nothing is built or hashed
    /// here; `None` means the caller queues the increment as its own operation. Returns
    /// (shard, sequence number of the operation that carries it).
    pub fn fold_incr(
        &mut self,
        k: crate::key::KeyRef<'_>,
        num: i64,
        flags: u32,
        instance: u32,
        clock: u64,
        op_index: u32,
    ) -> Option<(u32, u64)> {
        if clock == 0 || flags & F_NONBLOCKING == 0 {
            return None;
        }
        let same = |q: &wire::Op| {
            q.object == u32::from(k.object)
                && q.vertex == u32::from(k.vertex)
                && q.per_flow == k.per_flow
                && crate::key::same_bytes(&q.sub, k.sub)
        };
        // The last operation on the key among a shard's last FOLD_WINDOW unsent ones. Where
        // this key's last fold went is tried first: a counter every packet bumps is found
        // there, or just behind, without a pass over the shards.
        let hint = usize::from(k.object) % FOLD_HINTS;
        let (hs, hi) = self.fold_hints[hint];
        let hinted = self.links.get(hs).and_then(|l| {
            let n = l.pending.len();
            (hi < n && n - hi <= FOLD_WINDOW && same(&l.pending[hi]))
                .then(|| hi + l.pending[hi..].iter().rposition(same).unwrap_or(0))
                .map(|i| (hs, i))
        });
        // A key lives on one shard: the first shard whose recent operations touch it decides.
        let (shard, i) = hinted.or_else(|| {
            self.links.iter().enumerate().find_map(|(s, l)| {
                let n = l.pending.len();
                let from = n.saturating_sub(FOLD_WINDOW);
                l.pending[from..]
                    .iter()
                    .rposition(same)
                    .map(|i| (s, from + i))
            })
        })?;
        self.fold_hints[hint] = (shard, i);
        let l = &mut self.links[shard];
        let q = &mut l.pending[i];
        let foldable = q.code == OpCode::OpIncr as i32
            && q.num == num
            && q.flags == flags
            && q.instance == instance
            && q.clock != 0
            && q.carried() <= FOLD_MAX;
        if !foldable {
            return None;
        }
        // The next clock with the same index extends a run: one number, nothing stored per
        // packet (the clocks of consecutive packets through one instance are consecutive).
        // A run that this clock does not extend stays as it is; the clock starts another
        // operation, which may start another run.
        if q.more_clocks.is_empty()
            && op_index == q.op_index
            && crate::shard::extends_run(q.clock, q.more_run, clock)
        {
            q.more_run += 1;
        } else if q.more_run > 0 {
            return None;
        } else {
            if q.more_clocks.is_empty() {
                if q.more_clocks.capacity() == 0 {
                    if let Some((c, i)) = self.mailbox.take_spent_folds() {
                        (q.more_clocks, q.more_op_index) = (c, i);
                    }
                }
                q.more_clocks.reserve(l.fold_room);
                q.more_op_index.reserve(l.fold_room);
            }
            q.more_clocks.push(clock);
            q.more_op_index.push(op_index);
            l.fold_room = l.fold_room.max(q.more_clocks.len());
        }
        l.queued += 1;
        self.stats.ops += 1;
        self.stats.folded += 1;
        Some((shard as u32, q.seq))
    }

    /// Queues a non-blocking operation (no reply, only an acknowledgement).
    pub fn submit_nonblocking(&mut self, mut op: wire::Op) -> (u32, u64) {
        op.flags |= F_NONBLOCKING;
        self.submit(op)
    }

    /// Sends every queued operation and wakes each shard asleep with some of them.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        for s in 0..self.links.len() as u32 {
            self.flush_shard(s)?;
        }
        Ok(())
    }

    /// Wakes shard `s` if a batch sent quietly is waiting for it (asleep, or napping).
    fn pay_wake(&mut self, s: usize) {
        let l = &mut self.links[s];
        let owed = std::mem::take(&mut l.wake_in) != 0;
        if !std::mem::take(&mut l.quiet) && !owed {
            return;
        }
        if let Transport::InProc { workers } = &self.transport {
            workers[s].wake();
        }
    }

    /// Sends the queued operations of each shard that has at least `min` of them, or whose
    /// batch the previous call held back. A caller that flushes once per burst of packets
    /// then sends fewer, larger batches (each one costs it a system call to wake the shard,
    /// and the shard a wake-up), and no operation waits for more than one extra burst.
    /// Operations on one shard still go in the order they were queued.
    ///
    /// In process, a batch that finds its shard asleep does not wake it at once either: the
    /// wake-up (a system call, and on a VM an interrupt to another vCPU, a large part of a
    /// DPDK lcore's time per batch) comes [`WAKE_AFTER`] calls later, when the shard takes
    /// that batch and the ones sent meanwhile together. Nothing waits on these operations;
    /// anything that does ([`StoreClient::flush`], a call, a sync) wakes the shard at once.
    pub fn flush_coalesced(&mut self, min: usize) -> Result<(), ClientError> {
        for s in 0..self.links.len() {
            match self.links[s].wake_in {
                0 => {}
                1 => self.pay_wake(s),
                _ => self.links[s].wake_in -= 1,
            }
            let l = &mut self.links[s];
            if l.pending.is_empty() {
                continue;
            }
            if l.held || l.queued >= min {
                self.flush_shard_with(s as u32, true)?;
            } else {
                l.held = true;
            }
        }
        Ok(())
    }

    /// Sends shard `shard`'s queued operations and wakes it if it sleeps with any (also
    /// with batches sent quietly before): whoever calls this may wait for them next.
    fn flush_shard(&mut self, shard: u32) -> Result<(), ClientError> {
        self.flush_shard_with(shard, false)?;
        self.pay_wake(shard as usize);
        Ok(())
    }

    /// Sends shard `shard`'s queued operations; `quietly`: see
    /// [`StoreClient::flush_coalesced`].
    fn flush_shard_with(&mut self, shard: u32, quietly: bool) -> Result<(), ClientError> {
        let l = &mut self.links[shard as usize];
        l.held = false;
        l.queued = 0;
        if l.pending.is_empty() {
            return Ok(());
        }
        // The batch leaves with its buffer; the next one starts in a buffer a shard gave back
        // (in process), or at this one's size rather than growing again from nothing.
        let n = l.pending.len();
        let next = match self.mailbox.take_spent() {
            Some(mut v) => {
                v.reserve(n);
                v
            }
            None => Vec::with_capacity(n),
        };
        let batch = std::mem::replace(&mut l.pending, next);
        if l.sent == l.acked {
            l.last_progress = Instant::now();
        }
        l.sent = batch.last().map_or(l.sent, |o| o.seq);
        if self.keeps_copies {
            l.outstanding.extend(batch.iter().cloned());
        }
        self.stats.batches += 1;
        self.send(shard, batch, quietly)
    }

    fn send(&mut self, shard: u32, ops: Vec<wire::Op>, quietly: bool) -> Result<(), ClientError> {
        match &mut self.transport {
            Transport::InProc { workers } => {
                let w = &workers[shard as usize];
                let m = Inbound::Batch {
                    client: self.id,
                    ops,
                    mailbox: self.mailbox.clone(),
                };
                let l = &mut self.links[shard as usize];
                if !quietly {
                    w.send(m);
                    // Woken if asleep: it takes the batches sent quietly before too.
                    l.wake_in = 0;
                    l.quiet = false;
                } else {
                    l.quiet = true;
                    if w.send_quietly(m) && l.wake_in == 0 {
                        l.wake_in = WAKE_AFTER;
                    }
                }
                Ok(())
            }
            Transport::Tcp(t) => t.send(shard, ops),
        }
    }

    /// Runs one operation and waits for its reply (everything queued before it on the same
    /// shard is applied first).
    pub fn call(&mut self, op: wire::Op) -> Result<wire::Reply, ClientError> {
        let shard = self.shard_of(&op);
        self.call_shard(shard, op)
    }

    /// Runs a shard-addressed operation and waits for its reply.
    ///
    /// If the store failed after applying it and before replying, an operation that is safe
    /// to repeat (a read; a set, delete or subscription, which land in the same state again;
    /// an update carrying a packet clock, which the store's clock log answers with the
    /// logged result) is sent once more; anything else fails with
    /// [`ClientError::ReplyLost`] rather than be applied twice.
    pub fn call_shard(&mut self, shard: u32, op: wire::Op) -> Result<wire::Reply, ClientError> {
        let again = repeatable(&op).then(|| op.clone());
        let seq = self.submit_to(shard, op);
        self.stats.blocking_calls += 1;
        self.flush_shard(shard)?;
        match (self.wait_reply(shard, seq), again) {
            (Err(ClientError::ReplyLost { .. }), Some(op)) => {
                let seq = self.submit_to(shard, op);
                self.stats.blocking_calls += 1;
                self.flush_shard(shard)?;
                self.wait_reply(shard, seq)
            }
            (r, _) => r,
        }
    }

    /// Waits for the reply to an operation submitted earlier (flushes its shard).
    pub fn wait_reply(&mut self, shard: u32, seq: u64) -> Result<wire::Reply, ClientError> {
        self.flush_shard(shard)?;
        let start = Instant::now();
        loop {
            if let Some(r) = self.replies.remove(&(shard, seq)) {
                return Ok(r);
            }
            // Replies come in the frame that acknowledges their operation; acknowledged
            // without one, it was by a reconnection to a store that came back.
            if self.links[shard as usize].acked >= seq {
                return Err(ClientError::ReplyLost { shard, seq });
            }
            let waited = start.elapsed();
            if waited >= self.call_timeout {
                return Err(ClientError::Timeout { shard, waited });
            }
            self.wait_one(Duration::from_millis(20).min(self.call_timeout - waited))?;
        }
    }

    /// Asks the in-process store's shard threads to stay up (neither nap nor sleep) for
    /// `d`, and wakes them: for a client about to wait for the store several times in a row,
    /// such as a flow move, where waking a sleeping thread each time costs more than the
    /// reply. Over TCP it does nothing.
    pub fn keep_awake(&self, d: Duration) {
        if let Transport::InProc { workers } = &self.transport {
            for w in workers {
                w.keep_awake(d);
            }
        }
    }

    /// Waits until every operation sent so far is acknowledged.
    pub fn sync(&mut self) -> Result<(), ClientError> {
        self.flush()?;
        let start = Instant::now();
        while self.links.iter().any(|l| l.sent > l.acked) {
            let waited = start.elapsed();
            if waited >= self.call_timeout {
                let shard = self
                    .links
                    .iter()
                    .position(|l| l.sent > l.acked)
                    .unwrap_or(0) as u32;
                return Err(ClientError::Timeout { shard, waited });
            }
            self.wait_one(Duration::from_millis(20))?;
        }
        Ok(())
    }

    /// Number of sent operations not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.links
            .iter()
            .map(|l| l.sent.saturating_sub(l.acked) as usize)
            .sum()
    }

    /// Processes whatever has arrived, without waiting; resends timed-out operations.
    pub fn poll(&mut self) -> Result<(), ClientError> {
        self.take_arrived()?;
        self.retransmit_due()
    }

    /// Processes the frames that have arrived; returns how many.
    fn take_arrived(&mut self) -> Result<usize, ClientError> {
        let mut n = 0;
        if let Transport::Tcp(t) = &mut self.transport {
            let frames = &mut self.arrived;
            t.take_frames(|shard, f| frames.push_back((shard, f)));
        } else {
            while let Some(x) = self.mailbox.try_take() {
                self.arrived.push_back(x);
            }
        }
        while let Some((shard, f)) = self.arrived.pop_front() {
            n += 1;
            self.on_frame(shard, f)?;
        }
        Ok(n)
    }

    fn wait_one(&mut self, timeout: Duration) -> Result<(), ClientError> {
        if matches!(self.transport, Transport::InProc { .. }) {
            let got = if self.poll_only {
                self.mailbox.poll_for(timeout)
            } else {
                self.mailbox.wait(timeout)
            };
            if let Some(x) = got {
                self.arrived.push_back(x);
            }
            return self.poll();
        }
        // As for the in-process mailbox: a reply is microseconds away, and a thread that
        // blocks pays a wake-up on top. The spin reads the sockets themselves.
        let mut taken = Ok(0);
        crate::server::spin_poll(MAILBOX_SPIN.min(timeout), || {
            taken = self.take_arrived();
            (!matches!(taken, Ok(0))).then_some(())
        });
        if taken? == 0 {
            if let Transport::Tcp(t) = &mut self.transport {
                t.wait_readable(timeout);
            }
        }
        self.poll()
    }

    /// The next pushed notification, if any has arrived.
    pub fn take_push(&mut self) -> Option<Pushed> {
        self.pushes.pop_front()
    }

    /// Waits up to `timeout` for a pushed notification.
    pub fn wait_push(&mut self, timeout: Duration) -> Result<Option<Pushed>, ClientError> {
        let start = Instant::now();
        loop {
            self.poll()?;
            if let Some(p) = self.pushes.pop_front() {
                return Ok(Some(p));
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Ok(None);
            }
            self.wait_one((timeout - waited).min(Duration::from_millis(20)))?;
        }
    }

    fn on_frame(&mut self, shard: u32, f: wire::ServerFrame) -> Result<(), ClientError> {
        if !f.error.is_empty() {
            if let Transport::Tcp(t) = &mut self.transport {
                t.mark_broken(shard);
            }
            return Err(ClientError::Closed(f.error));
        }
        if let Some(h) = f.hello {
            // A (re)connection: the shard reports how far it got. Everything after that point
            // is sent again, flagged as a retransmission.
            let l = &mut self.links[shard as usize];
            l.acked = l.acked.max(h.applied_seq);
            self.ack(shard, h.applied_seq);
            self.resend(shard)?;
        }
        for r in f.replies {
            self.replies.insert((shard, r.seq), r);
        }
        if f.acked > 0 {
            self.ack(shard, f.acked);
        }
        for p in f.pushes {
            self.pushes.push_back(Pushed { shard, push: p });
        }
        Ok(())
    }

    fn ack(&mut self, shard: u32, upto: u64) {
        let l = &mut self.links[shard as usize];
        while l.outstanding.front().is_some_and(|o| o.seq <= upto) {
            l.outstanding.pop_front();
        }
        if upto > l.acked && l.sent > l.acked {
            l.acked = upto;
            l.last_progress = Instant::now();
            l.rto = self.rto;
        }
    }

    fn resend(&mut self, shard: u32) -> Result<(), ClientError> {
        let l = &mut self.links[shard as usize];
        if l.outstanding.is_empty() {
            return Ok(());
        }
        let ops: Vec<wire::Op> = l
            .outstanding
            .iter()
            .cloned()
            .map(|mut o| {
                o.flags |= F_RETRANSMIT;
                o
            })
            .collect();
        self.stats.retransmits += ops.len() as u64;
        l.last_progress = Instant::now();
        l.rto = (l.rto * 2).min(Duration::from_secs(5));
        self.send(shard, ops, false)
    }

    fn retransmit_due(&mut self) -> Result<(), ClientError> {
        for s in 0..self.links.len() as u32 {
            // A lost connection is re-established at once; everything not acknowledged goes
            // again (the shard ignores what it already applied).
            let broken = matches!(&self.transport, Transport::Tcp(t) if t.is_broken(s));
            if broken {
                let Transport::Tcp(t) = &mut self.transport else {
                    unreachable!()
                };
                let applied = t.reconnect(s)?;
                self.stats.reconnects += 1;
                self.ack(s, applied);
                self.resend(s)?;
                continue;
            }
            let l = &self.links[s as usize];
            if !l.outstanding.is_empty() && l.last_progress.elapsed() >= l.rto {
                self.resend(s)?;
            }
        }
        Ok(())
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        let _ = self.flush();
        if let Transport::InProc { workers } = &self.transport {
            for w in workers {
                w.send(Inbound::Detach { client: self.id });
            }
        }
    }
}

/// Whether applying `op` a second time leaves the store as once and answers the same.
fn repeatable(op: &wire::Op) -> bool {
    use wire::OpCode as C;
    op.clock != 0
        || [
            C::OpGet,
            C::OpReadTs,
            C::OpScanOwned,
            C::OpSet,
            C::OpDel,
            C::OpSubscribe,
            C::OpUnsubscribe,
            C::OpSubscribeCommits,
        ]
        .iter()
        .any(|c| *c as i32 == op.code)
}

/// Whether a reply carries a usable value (OK, possibly as a suppressed duplicate).
pub fn is_ok(r: &wire::Reply) -> bool {
    r.status == Status::Ok as i32
}

/// Whether a push is a handover notification.
pub fn is_handover(p: &wire::Push) -> bool {
    p.kind == PushKind::PushHandover as i32
}

#[cfg(test)]
mod tests;
