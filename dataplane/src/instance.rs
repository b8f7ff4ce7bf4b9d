//! One NF instance as the runtimes drive it: the NF, its state client, and the per-packet
//! step (clock in, verdict and update vector out, events logged). The threaded runtime and
//! the DPDK run-to-completion lcores both use it.

use crate::config::Vertex;
use crate::runtime::event_line;
use crate::stores::Clients;
use chc_proto::meta::{ChcMeta, MetaFlags};
use chc_store::bucket::BucketSet;
use chc_store::client::cache::{Mode, StateClient};
use chc_store::client::StoreClient;
use chc_store::CustomOps;
use nfs::nf::{Ctx, Event, NetworkFunction, Verdict};
use nfs::packet::{Packet, Shape};
use nfs::PartitionKey;

/// Counters of one instance.
#[derive(Debug, Default, Clone)]
pub struct NfCounters {
    pub pkts_in: u64,
    pub pkts_out: u64,
    pub dropped: u64,
    pub fragments: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

pub struct NfInstance {
    pub vid: u16,
    pub idx: u16,
    pub name: String,
    nf: Box<dyn NetworkFunction>,
    pub state: StateClient,
    events: Vec<Event>,
    pub counters: NfCounters,
    /// Objects and the partition key they are kept by (for exclusivity on scaling).
    keyed: Vec<(u16, Option<PartitionKey>)>,
    partition: PartitionKey,
}

impl NfInstance {
    /// Builds instance `idx` of `v`: its NF, its state (in the store for external modes,
    /// with cross-flow objects cached only where the split makes them exclusive), and runs
    /// the NF's one-time state initialisation (instance 0 for shared state; every instance in
    /// traditional mode).
    pub fn new(v: &Vertex, idx: u16, store: &impl Clients) -> Result<NfInstance, String> {
        let client = (v.mode != Mode::Traditional)
            .then(|| store.new_client())
            .transpose()
            .map_err(|e| format!("{}: {e}", v.name))?;
        Self::with_client(v, idx, client, v.mode == Mode::Traditional || idx == 0)
    }

    /// An instance that takes over instance `idx`'s identity and state (a straggler's clone,
    /// a failed host's replacement): its state comes from the store (per-flow misses load
    /// it), and the NF's one-time initialisation is not run again.
    pub fn taking_over(
        v: &Vertex,
        idx: u16,
        client: Option<StoreClient>,
    ) -> Result<NfInstance, String> {
        let mut n = Self::with_client(v, idx, client, false)?;
        n.state.set_fresh(false);
        Ok(n)
    }

    /// Like [`NfInstance::new`] with a given store client (`None` in traditional mode); `init`
    /// says whether to run the NF's one-time state initialisation (never for a replacement).
    pub fn with_client(
        v: &Vertex,
        idx: u16,
        client: Option<StoreClient>,
        init: bool,
    ) -> Result<NfInstance, String> {
        let mut nf = nfs::build(&v.nf, &v.config).map_err(|e| format!("{}: {e}", v.name))?;
        let decls = nf.objects();
        let objects = nfs::nf::specs(&decls);
        let mut state = match (v.mode, client) {
            (Mode::Traditional, _) | (_, None) => {
                StateClient::local(v.id, idx, &objects, CustomOps::builtin())
            }
            (mode, Some(client)) => {
                StateClient::external(v.id, idx, mode, &objects, CustomOps::builtin(), client)
                    .map_err(|e| format!("{}: store: {e}", v.name))?
            }
        };
        let keyed: Vec<_> = decls.iter().map(|d| (d.spec.id, d.keyed_by)).collect();
        for d in &decls {
            let excl = nfs::nf::exclusive(d.keyed_by, v.partition, v.parallelism);
            state
                .set_exclusive(d.spec.id, excl)
                .map_err(|e| format!("{}: store: {e}", v.name))?;
        }
        if init {
            let mut evs = Vec::new();
            let mut ctx = Ctx::new(0, v.id, idx, false, &mut state, &mut evs);
            nf.init(&mut ctx, v.parallelism)
                .map_err(|e| format!("{}: init: {e}", v.name))?;
            state
                .sync()
                .map_err(|e| format!("{}: store: {e}", v.name))?;
        }
        Ok(NfInstance {
            vid: v.id,
            idx,
            name: v.name.clone(),
            nf,
            state,
            events: Vec::new(),
            counters: NfCounters::default(),
            keyed,
            partition: v.partition,
        })
    }

    fn note_error(&mut self, e: String) {
        self.counters.errors += 1;
        if self.counters.first_error.is_none() {
            eprintln!("chc-dataplane: {} instance {}: {e}", self.name, self.idx);
            self.counters.first_error = Some(e);
        }
    }

    /// Processes one packet in place: XORs this instance's updates into `meta.vector`,
    /// appends the events it produced to `lines` (one JSON object each), returns the verdict.
    /// An NF error (such as an unreachable store) drops the packet and is counted.
    pub fn process(
        &mut self,
        data: &mut [u8],
        wire_len: usize,
        ts_ns: u64,
        meta: &mut ChcMeta,
        lines: &mut Vec<String>,
    ) -> Verdict {
        self.counters.pkts_in += 1;
        let clock = meta.clock;
        let replay = meta.flags.has(MetaFlags::REPLAY);
        self.state.begin_packet(clock, replay);
        let n = data.len();
        let verdict = {
            let mut p = Packet::parse(data, wire_len.max(n), ts_ns);
            let mut ctx = Ctx::new(
                clock,
                self.vid,
                self.idx,
                replay,
                &mut self.state,
                &mut self.events,
            );
            let r = match p.hdr.shape {
                Shape::Fragment => {
                    self.counters.fragments += 1;
                    self.nf.fragment(&mut p, &mut ctx)
                }
                _ => self.nf.process(&mut p, &mut ctx),
            };
            match r {
                Ok(v) => v,
                Err(e) => {
                    self.note_error(e.to_string());
                    Verdict::Drop
                }
            }
        };
        meta.vector ^= self.state.end_packet();
        for e in self.events.drain(..) {
            lines.push(event_line(clock, &self.name, self.idx, &e));
        }
        if verdict == Verdict::Drop {
            self.counters.dropped += 1;
        } else {
            self.counters.pkts_out += 1;
        }
        verdict
    }

    /// Sends queued state operations (once per burst).
    pub fn flush(&mut self) {
        if let Err(e) = self.state.flush() {
            self.note_error(e.to_string());
        }
    }

    /// As [`Self::flush`], letting small batches wait for the next burst (see
    /// `StateClient::flush_coalesced`).
    pub fn flush_coalesced(&mut self, min: usize) {
        if let Err(e) = self.state.flush_coalesced(min) {
            self.note_error(e.to_string());
        }
    }

    /// The vertex now runs `n` instances: objects cached because only this instance used
    /// them are flushed and shared (or cached again when it is alone).
    pub fn set_parallelism(&mut self, n: u16) {
        self.set_parallelism_with(n, true);
    }

    fn set_parallelism_with(&mut self, n: u16, wait: bool) {
        let change: Vec<(u16, bool)> = self
            .keyed
            .iter()
            .map(|&(id, keyed_by)| (id, nfs::nf::exclusive(keyed_by, self.partition, n)))
            .collect();
        if let Err(e) = self.state.set_exclusive_many(&change, wait) {
            self.note_error(e.to_string());
        }
    }

    /// The old instance's part of a move: it becomes one of `n` instances and hands the
    /// buckets `moved` selects over ([`Self::set_parallelism`], then [`Self::hand_over`]).
    /// The handover's wait for the store covers the objects that became shared too, so the
    /// move waits once rather than twice.
    pub fn hand_over_as(&mut self, n: u16, moved: &dyn Fn(usize) -> bool) -> HandedOver {
        self.set_parallelism_with(n, false);
        self.hand_over(moved)
    }

    /// Hands over the state of the buckets `moved` selects to whichever instance takes
    /// them next (handover step 5). Where the store can tell every per-flow key's bucket,
    /// the buckets are released whole and the moved flows stay cached until
    /// [`Self::forget_moved`], which must run before this instance's next packet (after the
    /// new instance was told: it is not waited for); otherwise the flows are dropped and
    /// released one by one.
    pub fn hand_over(&mut self, moved: &dyn Fn(usize) -> bool) -> HandedOver {
        let key = self.partition;
        let set = BucketSet::from_fn(moved);
        match self.state.release_buckets(crate::split::split_of(key), set) {
            Ok(true) => return HandedOver::ForgetAfter,
            Ok(false) => {}
            Err(e) => {
                self.note_error(e.to_string());
                return HandedOver::Done(0);
            }
        }
        match self.state.evict(|k, kind| {
            crate::split::key_bucket(kind, k.sub.as_slice(), key).is_none_or(moved)
        }) {
            Ok(n) => HandedOver::Done(n),
            Err(e) => {
                self.note_error(e.to_string());
                HandedOver::Done(0)
            }
        }
    }

    /// Drops the cached state of flows handed over by bucket; returns how many objects.
    pub fn forget_moved(&mut self, moved: &dyn Fn(usize) -> bool) -> usize {
        let key = self.partition;
        match self.state.forget_moved(|k, kind| {
            crate::split::key_bucket(kind, k.sub.as_slice(), key).map(moved)
        }) {
            Ok(n) => n,
            Err(e) => {
                self.note_error(e.to_string());
                0
            }
        }
    }

    /// Takes buckets moving here (before the first packet of them is processed): what this
    /// instance handed over of them earlier, and nobody took since, is its own again.
    pub fn take_buckets(&mut self, moved: &dyn Fn(usize) -> bool) {
        let split = crate::split::split_of(self.partition);
        self.state.acquire_buckets(split, BucketSet::from_fn(moved));
    }

    /// Waits until the store has every operation (end of run, handovers).
    pub fn sync(&mut self) {
        if let Err(e) = self.state.sync() {
            self.note_error(e.to_string());
        }
    }
}

/// What [`NfInstance::hand_over`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandedOver {
    /// The objects (this many) were dropped and released one by one.
    Done(usize),
    /// Released by bucket: [`NfInstance::forget_moved`] is still to run.
    ForgetAfter,
}
