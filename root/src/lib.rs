//! The root of a chain, as a state machine fed with events (no threads, no I/O).
//!
//! The root stamps every input packet with a logical clock (its root id in the high bits),
//! keeps a copy in its log, and forgets the packet only when
//! 1. every copy of it has left the chain or been dropped: each terminal sends a delete
//!    carrying the weight of its copy (the root hands out weight [`FULL`]; a splitter that
//!    copies a packet to an off-path tap splits the weight), and
//! 2. the XOR of the update vectors in those deletes equals the XOR of the ids in the store's
//!    commit notifications for the clock (Fig 3.9): every update the packet caused, blocking
//!    or not, has been applied by the store.
//!
//! Until then the packet can be replayed after a failure. The log is a ring indexed by the
//! clock counter: a packet's slot is found by arithmetic, not by hashing, and consecutive
//! packets sit in consecutive slots, so stamping and deleting touch memory the CPU has just
//! used. When the oldest logged packet is `log_limit` clocks behind the next one the root drops
//! new input (counted) rather than let queues grow without bound. The clock counter is
//! persisted every `persist_every` packets; a new root resumes at the persisted value +
//! `persist_every`, so clocks keep increasing across a root failure.

/// The weight a root gives each packet.
pub const FULL: u64 = 1 << 32;

/// Bits of the clock below the root id (as in the store).
pub const ROOT_SHIFT: u32 = chc_store::shard::ROOT_SHIFT;

const COUNTER_MASK: u64 = (1 << ROOT_SHIFT) - 1;

/// Slots the ring starts with; it doubles when the packets in flight span more.
const FIRST_RING: usize = 256;

#[derive(Clone, Copy, Debug)]
pub struct RootConfig {
    pub root_id: u16,
    /// How far (in clocks) the oldest logged packet may lag the newest before input is
    /// dropped; with every packet settling in order this is the number logged.
    pub log_limit: usize,
    /// Persist the clock every this many packets (n of §3.6.2).
    pub persist_every: u64,
}

impl Default for RootConfig {
    fn default() -> Self {
        RootConfig {
            root_id: 1,
            log_limit: 1 << 16,
            persist_every: 100,
        }
    }
}

/// A logged packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Logged {
    pub data: Vec<u8>,
    pub wire_len: u32,
    pub ts_ns: u64,
}

/// One slot of the ring. A freed slot's packet buffer goes to the root's pool of spare
/// buffers, and the next packet stamped takes the buffer freed last, so the ring stamps
/// without allocating and copies into memory still in cache.
#[derive(Debug, Default)]
struct Entry {
    /// The clock logged here; meaningful only while `live`.
    clock: u64,
    live: bool,
    weight: u64,
    xor: u32,
    waived: bool,
    pkt: Logged,
}

/// Counters a root keeps.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootStats {
    pub stamped: u64,
    pub dropped_log_full: u64,
    pub deleted: u64,
    pub high_water: usize,
    pub orphan_deletes: u64,
    pub orphan_commits: u64,
    pub replayed: u64,
}

/// The result of a delete or a commit notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The packet left the log.
    Deleted,
    /// Still waiting for copies or commits.
    Pending,
    /// No such packet in the log.
    Unknown,
}

pub struct Root {
    cfg: RootConfig,
    /// The next counter to stamp.
    counter: u64,
    /// The oldest counter that may still be logged: every one below it has settled.
    tail: u64,
    /// Slot of counter `c` is `c & (ring.len() - 1)`; the length is a power of two.
    ring: Vec<Entry>,
    /// Packets logged.
    live: usize,
    /// Logged packets some copy of which has not reported its delete: packets still on
    /// their way through the chain (in an instance, a queue or a ring).
    travelling: usize,
    /// Counter value that must be persisted before it is exceeded.
    persisted: u64,
    /// Buffers of freed slots, the last freed on top. A slot that kept its own buffer would
    /// make every stamp copy into the slot the counter reaches, cycling through the whole
    /// ring: one packet waiting long for a commit grows the ring, and the copies then walk
    /// megabytes of cold memory (1500-byte packets took 40 % longer per packet that way).
    spare: Vec<Vec<u8>>,
    pub stats: RootStats,
}

impl Root {
    /// A root starting from clock counter `start` (1 for a fresh chain).
    pub fn new(cfg: RootConfig, start: u64) -> Root {
        let start = start.max(1);
        // Grown to the packets in flight, not sized for the limit: memory the chain never
        // uses is neither allocated nor touched.
        let first = FIRST_RING.min(cfg.log_limit.max(1).next_power_of_two());
        Root {
            cfg,
            counter: start,
            tail: start,
            ring: (0..first).map(|_| Entry::default()).collect(),
            live: 0,
            travelling: 0,
            persisted: 0,
            spare: Vec::new(),
            stats: RootStats::default(),
        }
    }

    /// A root taking over after a failure: the persisted counter was `last`; clocks up to
    /// `last + persist_every` may have been used, so it starts after them.
    pub fn recover(cfg: RootConfig, last: u64) -> Root {
        Root::new(cfg, last + cfg.persist_every)
    }

    pub fn id(&self) -> u16 {
        self.cfg.root_id
    }

    pub fn config(&self) -> &RootConfig {
        &self.cfg
    }

    pub fn clock_of(&self, counter: u64) -> u64 {
        u64::from(self.cfg.root_id) << ROOT_SHIFT | counter
    }

    /// Logged packets.
    pub fn in_flight(&self) -> usize {
        self.live
    }

    /// Logged packets not yet through the chain: some copy has not reported its delete.
    /// When it is 0, no packet the root admitted waits anywhere in the chain.
    pub fn travelling(&self) -> usize {
        self.travelling
    }

    /// Packets `admit` takes before the log is full (the oldest logged packet holds the
    /// window: packets behind it count whether they settled or not).
    pub fn room(&self) -> usize {
        self.cfg
            .log_limit
            .saturating_sub((self.counter - self.tail) as usize)
    }

    fn mask(&self) -> u64 {
        self.ring.len() as u64 - 1
    }

    /// The slot holding `clock`, if it is logged.
    fn slot(&self, clock: u64) -> Option<usize> {
        if clock >> ROOT_SHIFT != u64::from(self.cfg.root_id) {
            return None;
        }
        let c = clock & COUNTER_MASK;
        if c < self.tail || c >= self.counter {
            return None;
        }
        let i = (c & self.mask()) as usize;
        let e = &self.ring[i];
        (e.live && e.clock == clock).then_some(i)
    }

    /// Doubles the ring, keeping every logged packet at its counter's new slot.
    fn grow(&mut self) {
        let mut ring: Vec<Entry> = (0..self.ring.len() * 2).map(|_| Entry::default()).collect();
        let (old, new) = (self.mask(), ring.len() as u64 - 1);
        for c in self.tail..self.counter {
            ring[(c & new) as usize] = std::mem::take(&mut self.ring[(c & old) as usize]);
        }
        self.ring = ring;
    }

    /// Stamps and logs a packet; `None` if the log is full (the packet is dropped).
    pub fn admit(&mut self, data: &[u8], wire_len: u32, ts_ns: u64) -> Option<u64> {
        if self.room() == 0 {
            self.stats.dropped_log_full += 1;
            return None;
        }
        if (self.counter - self.tail) as usize == self.ring.len() {
            self.grow();
        }
        let clock = self.clock_of(self.counter);
        let i = (self.counter & self.mask()) as usize;
        self.counter += 1;
        let buf = self.spare.pop();
        let e = &mut self.ring[i];
        e.clock = clock;
        e.live = true;
        e.weight = 0;
        e.xor = 0;
        e.waived = false;
        if let Some(b) = buf {
            // The slot's own buffer went to the pool when it was freed.
            e.pkt.data = b;
        }
        e.pkt.data.clear();
        e.pkt.data.extend_from_slice(data);
        e.pkt.wire_len = wire_len;
        e.pkt.ts_ns = ts_ns;
        self.live += 1;
        self.travelling += 1;
        self.stats.stamped += 1;
        self.stats.high_water = self.stats.high_water.max(self.live);
        Some(clock)
    }

    /// The counter to persist now, if a multiple of `persist_every` was reached.
    pub fn persist_due(&mut self) -> Option<u64> {
        if self.counter >= self.persisted + self.cfg.persist_every {
            self.persisted = self.counter;
            Some(self.counter)
        } else {
            None
        }
    }

    /// A terminal's delete request for one copy of packet `clock`.
    pub fn on_delete(&mut self, clock: u64, weight: u64, vector: u32) -> Settled {
        let Some(i) = self.slot(clock) else {
            self.stats.orphan_deletes += 1;
            return Settled::Unknown;
        };
        let e = &mut self.ring[i];
        if e.weight < FULL && e.weight + weight >= FULL {
            self.travelling -= 1;
        }
        e.weight += weight;
        if !e.waived {
            e.xor ^= vector;
        }
        // More than the whole weight: a copy that had reported was processed again by a
        // replacement that did not know (two instances on one path failed together). Its
        // second vector names updates the store suppressed as duplicates, so the commit check
        // cannot balance; the weight alone decides.
        if e.weight > FULL {
            e.waived = true;
            e.xor = 0;
        }
        self.settle(i)
    }

    /// The store's notification that the update with `id` caused by `clock` was applied.
    pub fn on_commit(&mut self, clock: u64, id: u32) -> Settled {
        let Some(i) = self.slot(clock) else {
            self.stats.orphan_commits += 1;
            return Settled::Unknown;
        };
        let e = &mut self.ring[i];
        if !e.waived {
            e.xor ^= id;
        }
        self.settle(i)
    }

    /// A store's commit notification: the update with its id applied for its clock and for
    /// every clock of its run.
    pub fn on_commits(&mut self, c: &chc_proto::wire::Commit) {
        for clock in c.clocks() {
            self.on_commit(clock, c.id);
        }
    }

    fn settle(&mut self, i: usize) -> Settled {
        let e = &mut self.ring[i];
        if e.weight < FULL || e.xor != 0 {
            return Settled::Pending;
        }
        e.live = false;
        self.spare.push(std::mem::take(&mut e.pkt.data));
        self.live -= 1;
        self.stats.deleted += 1;
        // Retire the settled prefix; each counter is passed once.
        let mask = self.mask();
        while self.tail < self.counter && !self.ring[(self.tail & mask) as usize].live {
            self.tail += 1;
        }
        Settled::Deleted
    }

    /// Logged slots, oldest first.
    fn logged(&self) -> impl Iterator<Item = &Entry> {
        let mask = self.mask();
        (self.tail..self.counter)
            .map(move |c| &self.ring[(c & mask) as usize])
            .filter(|e| e.live)
    }

    /// The counter the next packet gets: what a root persists when it stops cleanly, so
    /// that a successor on the same store starts past every clock this one gave out.
    pub fn next_counter(&self) -> u64 {
        self.counter
    }

    /// The oldest clock still logged (or the next one): clocks below it are retired.
    pub fn watermark(&self) -> u64 {
        self.clock_of(self.tail)
    }

    /// The clocks still logged, in order.
    pub fn logged_clocks(&self) -> Vec<u64> {
        self.logged().map(|e| e.clock).collect()
    }

    /// The logged packets in clock order, for replay.
    ///
    /// Accounting carries over: copies that completed before the replay have reported; a
    /// replayed copy that reaches an instance which already saw its clock is absorbed there
    /// without reporting, and the copies that were lost report when the replay brings them
    /// to a terminal. Weights and vectors therefore add up once per copy.
    pub fn replay(&mut self) -> Vec<(u64, Logged)> {
        let out: Vec<(u64, Logged)> = self.logged().map(|e| (e.clock, e.pkt.clone())).collect();
        self.stats.replayed += out.len() as u64;
        out
    }

    /// After the store came back from a failure, commit notifications it had not delivered
    /// are gone; the client library retransmitted every unacknowledged update, so the logged
    /// packets' updates are applied. Their commit check is waived: they settle on their
    /// deletes' weights alone, and those whose copies have all reported leave the log now
    /// (no later event would come to settle them). Returns how many left.
    pub fn waive_commits(&mut self) -> usize {
        let mask = self.mask();
        let mut left = 0;
        for c in self.tail..self.counter {
            let i = (c & mask) as usize;
            let e = &mut self.ring[i];
            if !e.live {
                continue;
            }
            e.xor = 0;
            e.waived = true;
            if self.settle(i) == Settled::Deleted {
                left += 1;
            }
        }
        left
    }

    /// A logged packet.
    pub fn get(&self, clock: u64) -> Option<&Logged> {
        self.slot(clock).map(|i| &self.ring[i].pkt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn root(limit: usize) -> Root {
        Root::new(
            RootConfig {
                root_id: 3,
                log_limit: limit,
                persist_every: 10,
            },
            1,
        )
    }

    #[test]
    fn clocks_carry_the_root_id_and_increase() {
        let mut r = root(100);
        let a = r.admit(b"a", 1, 0).unwrap();
        let b = r.admit(b"b", 1, 0).unwrap();
        assert_eq!(a >> ROOT_SHIFT, 3);
        assert!(b > a);
        assert_eq!(r.get(a).unwrap().data, b"a");
    }

    #[test]
    fn a_packet_leaves_only_when_all_copies_and_commits_are_in() {
        let mut r = root(100);
        let c = r.admit(b"p", 1, 0).unwrap();
        // Two copies (main path and a tap), three updates, one committed late.
        assert_eq!(r.on_commit(c, 0x0001_0002), Settled::Pending);
        assert_eq!(
            r.on_delete(c, FULL / 2, 0x0001_0002 ^ 0x0003_0001),
            Settled::Pending
        );
        assert_eq!(r.on_commit(c, 0x0003_0001), Settled::Pending);
        assert_eq!(r.travelling(), 1, "a copy is still in the chain");
        assert_eq!(
            r.on_delete(c, FULL / 2, 0x0007_0001),
            Settled::Pending,
            "a commit is missing"
        );
        assert_eq!(
            r.travelling(),
            0,
            "both copies left; only a commit is awaited"
        );
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.on_commit(c, 0x0007_0001), Settled::Deleted);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.on_delete(c, FULL, 0), Settled::Unknown);
    }

    #[test]
    fn a_full_log_drops_input_and_slots_are_reused() {
        let mut r = root(2);
        let a = r.admit(b"a", 1, 0).unwrap();
        let _b = r.admit(b"b", 1, 0).unwrap();
        assert!(r.admit(b"c", 1, 0).is_none());
        assert_eq!(r.stats.dropped_log_full, 1);
        r.on_delete(a, FULL, 0);
        let d = r.admit(b"dd", 2, 0).unwrap();
        assert_eq!(r.get(d).unwrap().data, b"dd");
        assert_eq!(r.ring.len(), 2, "the freed slot was reused");
        assert_eq!(r.stats.high_water, 2);
    }

    /// One packet held for long makes the ring grow past the packets in flight; stamping
    /// still copies into the buffer freed last, not into the buffer of whichever slot the
    /// counter reaches.
    #[test]
    fn stamps_reuse_the_buffer_freed_last() {
        let mut r = root(1 << 16);
        let _held = r.admit(&[0u8; 1500], 1500, 0).unwrap();
        let first = r.admit(&[1u8; 1500], 1500, 0).unwrap();
        let mut buf = r.get(first).unwrap().data.as_ptr();
        r.on_delete(first, FULL, 0);
        for i in 0..5000u32 {
            let c = r.admit(&[i as u8; 1500], 1500, 0).unwrap();
            let data = &r.get(c).unwrap().data;
            assert_eq!(data.as_ptr(), buf, "packet {i} copied into another buffer");
            assert_eq!(data[..], [i as u8; 1500][..]);
            buf = data.as_ptr();
            r.on_delete(c, FULL, 0);
        }
        assert!(r.ring.len() > 4096, "the held packet kept the ring growing");
        assert_eq!(r.in_flight(), 1);
        assert!(r.spare.len() <= 2);
    }

    #[test]
    fn recovery_never_reuses_a_clock() {
        let mut r = root(1000);
        let mut persisted = 0;
        let mut last = 0;
        for _ in 0..37 {
            last = r.admit(b"x", 1, 0).unwrap();
            if let Some(p) = r.persist_due() {
                persisted = p;
            }
        }
        let mut r2 = Root::recover(*r.config(), persisted);
        let next = r2.admit(b"y", 1, 0).unwrap();
        assert!(next > last, "{next} > {last}");
    }

    #[test]
    fn replay_is_in_clock_order_and_keeps_what_was_reported() {
        let mut r = root(100);
        let cs: Vec<u64> = (0..5).map(|i| r.admit(&[i], 1, 0).unwrap()).collect();
        r.on_delete(cs[2], FULL, 0);
        r.on_delete(cs[4], FULL / 2, 0x5);
        let rp = r.replay();
        assert_eq!(
            rp.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![cs[0], cs[1], cs[3], cs[4]]
        );
        assert_eq!(rp[0].1.data, vec![0]);
        // The copy of cs[4] that completed before the replay still counts; the lost one
        // completes now.
        assert_eq!(r.on_commit(cs[4], 0x5), Settled::Pending);
        assert_eq!(r.on_delete(cs[4], FULL / 2, 0), Settled::Deleted);
        assert_eq!(r.watermark(), cs[0]);
    }

    #[test]
    fn a_copy_reported_twice_settles_on_weight() {
        let mut r = root(100);
        let c = r.admit(b"p", 1, 0).unwrap();
        r.on_commit(c, 0x5);
        assert_eq!(r.on_delete(c, FULL / 2, 0x5), Settled::Pending);
        // The same copy again after a replay: its updates were duplicates, no commits come.
        assert_eq!(r.on_delete(c, FULL / 2, 0x5), Settled::Pending);
        assert_eq!(r.on_delete(c, FULL / 2, 0), Settled::Deleted);
    }

    #[test]
    fn a_packet_waiting_only_for_lost_commits_leaves_when_they_are_waived() {
        let mut r = root(100);
        let a = r.admit(b"a", 1, 0).unwrap();
        let b = r.admit(b"b", 1, 0).unwrap();
        // Every copy of `a` reported; its commit notification died with the store.
        assert_eq!(r.on_delete(a, FULL, 0x42), Settled::Pending);
        r.on_delete(b, FULL / 2, 0x7);
        assert_eq!(r.waive_commits(), 1);
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.watermark(), b);
        assert_eq!(r.on_delete(b, FULL / 2, 0x9), Settled::Deleted);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn waived_commits_settle_on_weight() {
        let mut r = root(100);
        let c = r.admit(b"p", 1, 0).unwrap();
        r.on_delete(c, FULL / 2, 0x77);
        assert_eq!(r.waive_commits(), 0);
        assert_eq!(r.on_commit(c, 0x1234), Settled::Pending);
        assert_eq!(r.on_delete(c, FULL / 2, 0x99), Settled::Deleted);
    }

    #[test]
    fn an_unsettled_packet_holds_the_window() {
        let mut r = root(4);
        let old = r.admit(b"old", 1, 0).unwrap();
        for _ in 0..3 {
            let c = r.admit(b"x", 1, 0).unwrap();
            assert_eq!(r.on_delete(c, FULL, 0), Settled::Deleted);
        }
        // Only one packet is logged, but it is four clocks behind: input waits for it.
        assert_eq!(r.in_flight(), 1);
        assert!(r.admit(b"y", 1, 0).is_none());
        assert_eq!(r.watermark(), old);
        assert_eq!(r.on_delete(old, FULL, 0), Settled::Deleted);
        let y = r.admit(b"y", 1, 0).unwrap();
        assert_eq!(r.watermark(), y);
    }

    #[test]
    fn clocks_of_another_root_or_outside_the_window_are_unknown() {
        let mut r = root(8);
        let c = r.admit(b"p", 1, 0).unwrap();
        let other = (u64::from(4u16) << ROOT_SHIFT) | (c & COUNTER_MASK);
        assert_eq!(r.on_delete(other, FULL, 0), Settled::Unknown);
        assert_eq!(r.on_delete(c + 1, FULL, 0), Settled::Unknown);
        assert_eq!(r.on_commit(c - 1, 1), Settled::Unknown);
        assert_eq!(r.stats.orphan_deletes, 2);
        assert_eq!(r.stats.orphan_commits, 1);
        assert_eq!(r.on_delete(c, FULL, 0), Settled::Deleted);
        assert_eq!(r.on_delete(c, FULL, 0), Settled::Unknown, "settled once");
    }

    proptest! {
        /// The ring behaves as a map from clock to packet: whatever packets are admitted and
        /// settled in whatever order (the ring growing on the way), the logged clocks, their
        /// data, the watermark and the replay order are those of a plain ordered map.
        #[test]
        fn the_ring_is_an_ordered_map(steps in proptest::collection::vec((any::<bool>(), any::<u16>()), 1..600), limit in 1usize..700) {
            let mut r = root(limit);
            let mut model: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
            for (i, (add, pick)) in steps.into_iter().enumerate() {
                if add || model.is_empty() {
                    let data = (i as u32).to_le_bytes().to_vec();
                    let oldest = model.keys().next().copied().unwrap_or(r.clock_of(r.counter));
                    let full = r.clock_of(r.counter) - oldest >= limit as u64;
                    prop_assert_eq!(r.room() == 0, full);
                    match r.admit(&data, 4, 0) {
                        Some(c) => {
                            prop_assert!(!full);
                            model.insert(c, data);
                        }
                        None => prop_assert!(full),
                    }
                } else {
                    let c = *model.keys().nth(pick as usize % model.len()).unwrap();
                    prop_assert_eq!(r.on_delete(c, FULL, 0), Settled::Deleted);
                    model.remove(&c);
                }
                prop_assert_eq!(r.in_flight(), model.len());
                let wm = model.keys().next().copied().unwrap_or(r.clock_of(r.counter));
                prop_assert_eq!(r.watermark(), wm);
            }
            prop_assert_eq!(r.logged_clocks(), model.keys().copied().collect::<Vec<_>>());
            for (c, d) in &model {
                prop_assert_eq!(&r.get(*c).unwrap().data, d);
            }
            let replayed: Vec<(u64, Vec<u8>)> = r.replay().into_iter().map(|(c, l)| (c, l.data)).collect();
            prop_assert_eq!(replayed, model.into_iter().collect::<Vec<_>>());
        }
    }

    proptest! {
        /// Whatever order deletes and commits arrive in, a packet is deleted exactly when the
        /// last of them arrives (update ids of one packet are distinct).
        #[test]
        fn settles_exactly_at_the_last_event(ids in proptest::collection::btree_set(1u32.., 0..6), split in 1u64..4, seed: u64) {
            let mut r = root(10);
            let c = r.admit(b"p", 1, 0).unwrap();
            let vector = ids.iter().fold(0, |a, b| a ^ b);
            // `split` deletes share the weight; the vector rides on the first.
            let mut events: Vec<(bool, u64, u32)> = ids.iter().map(|&i| (false, 0, i)).collect();
            let w = FULL / split;
            for k in 0..split {
                let weight = if k + 1 == split { FULL - w * (split - 1) } else { w };
                events.push((true, weight, if k == 0 { vector } else { 0 }));
            }
            // Shuffle deterministically.
            let mut s = seed | 1;
            for i in (1..events.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                events.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let n = events.len();
            let mut reported = 0;
            for (i, (del, weight, v)) in events.into_iter().enumerate() {
                let got = if del { r.on_delete(c, weight, v) } else { r.on_commit(c, v) };
                reported += u64::from(del);
                // Through the chain exactly when every copy reported, commits or not.
                prop_assert_eq!(r.travelling(), usize::from(reported < split));
                if i + 1 == n {
                    prop_assert_eq!(got, Settled::Deleted);
                } else {
                    prop_assert_eq!(got, Settled::Pending);
                }
            }
        }
    }
}
