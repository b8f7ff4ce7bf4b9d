use super::*;
use crate::server::StoreConfig;
use crate::value::Value;
use chc_proto::wire::Value as WV;

#[test]
fn in_process_round_trip_across_shards() {
    let store = Store::start(StoreConfig::in_memory(3)).unwrap();
    let mut c = store.client(1);
    for i in 0..300u32 {
        let k = ObjKey::shared(1, 1, i.to_be_bytes().to_vec());
        c.submit_nonblocking(k.incr(i64::from(i)));
    }
    c.sync().unwrap();
    assert_eq!(c.unacked(), 0);
    for i in (0..300u32).step_by(37) {
        let k = ObjKey::shared(1, 1, i.to_be_bytes().to_vec());
        assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(i64::from(i))));
    }
    // A read sees the client's earlier non-blocking updates on the same shard.
    let k = ObjKey::raw("x");
    for _ in 0..1000 {
        c.submit_nonblocking(k.incr(1));
    }
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(1000)));
    // Callbacks between two clients.
    let mut d = store.client(2);
    d.call(k.subscribe()).unwrap();
    c.call(k.set(&Value::Int(5))).unwrap();
    let p = d
        .wait_push(Duration::from_secs(5))
        .unwrap()
        .expect("a callback");
    assert_eq!(p.push.value, Some(WV::int(5)));
}

/// A reconnection to a store that came back acknowledges what it had applied; a blocking
/// operation among them has no reply to come. Waiting for it must end at once, and only
/// operations that are safe to repeat are repeated.
#[test]
fn a_reply_lost_with_the_store_is_reported_not_waited_for() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    c.call_timeout = Duration::from_secs(30);
    let k = ObjKey::raw("clock");
    // Queued, never sent; then acknowledged the way a reconnection's Hello does.
    let seq = c.submit_to(0, k.set(&Value::Int(7)));
    c.links[0].pending.clear();
    c.links[0].acked = seq;
    let t = Instant::now();
    assert!(matches!(
        c.wait_reply(0, seq),
        Err(ClientError::ReplyLost { shard: 0, .. })
    ));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "it did not wait for the timeout"
    );
    // Reads, sets and updates carrying a packet clock are repeated; a bare increment is not.
    assert!(repeatable(&k.get()) && repeatable(&k.set(&Value::Int(1))));
    let mut bumped = k.incr(1);
    assert!(!repeatable(&bumped));
    bumped.clock = 42;
    assert!(repeatable(&bumped));
    // The client still works.
    c.call(k.set(&Value::Int(9))).unwrap();
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(9)));
}

/// The in-process transport cannot lose a batch: it keeps no copy of what it sent, and
/// still knows what is unacknowledged and waits for it.
#[test]
fn in_process_clients_keep_no_copies_and_still_sync() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut c = store.client(1);
    assert!(!c.keeps_copies);
    let k = ObjKey::raw("n");
    for _ in 0..500 {
        c.submit_nonblocking(k.incr(1));
    }
    c.flush().unwrap();
    assert!(c.links.iter().all(|l| l.outstanding.is_empty()));
    assert!(c.unacked() <= 500);
    c.sync().unwrap();
    assert_eq!(c.unacked(), 0);
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(500)));
    assert_eq!(c.stats.retransmits, 0);
}

/// `flush_coalesced` sends a shard's batch once it is large enough, and otherwise on the
/// next call; a blocking call still sends what was held first.
#[test]
fn coalesced_flushes_hold_small_batches_for_one_call() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    let k = ObjKey::raw("n");
    let batches = c.stats.batches;
    for _ in 0..3 {
        c.submit_nonblocking(k.incr(1));
    }
    c.flush_coalesced(4).unwrap();
    assert_eq!(c.stats.batches, batches, "held back");
    assert_eq!(c.links[0].pending.len(), 3);
    c.flush_coalesced(4).unwrap();
    assert_eq!(c.stats.batches, batches + 1, "sent on the next call");
    assert!(c.links[0].pending.is_empty());
    for _ in 0..4 {
        c.submit_nonblocking(k.incr(1));
    }
    c.flush_coalesced(4).unwrap();
    assert_eq!(c.stats.batches, batches + 2, "large enough: sent at once");
    c.submit_nonblocking(k.incr(1));
    c.flush_coalesced(4).unwrap();
    assert_eq!(c.links[0].pending.len(), 1);
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(8)));
    c.flush_coalesced(4).unwrap();
    assert_eq!(c.stats.batches, batches + 3, "nothing left to send");
}

/// `op` as instance 2's update number `op_index` for the packet of `clock`.
fn clocked(op: wire::Op, clock: u64, op_index: u32) -> wire::Op {
    wire::Op {
        clock,
        op_index,
        instance: 2,
        ..op
    }
}

/// Each packet of `clocks` increments `a`, then `b`, as a packet's two counters.
fn bump_both(c: &mut StoreClient, a: &ObjKey, b: &ObjKey, clocks: std::ops::RangeInclusive<u64>) {
    for clock in clocks {
        c.submit_incr(clocked(a.incr(1), clock, 0));
        c.submit_incr(clocked(b.incr(1), clock, 1));
    }
}

/// A packet counter's increments from several packets travel as one operation, and the store
/// applies, logs and reports each of them as if it had come alone.
#[test]
fn clocked_increments_of_one_key_fold_into_one_operation() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    let k = ObjKey::shared(1, 3, Vec::new());
    let other = ObjKey::shared(1, 4, Vec::new());
    bump_both(&mut c, &k, &other, 1..=40);
    assert_eq!(c.links[0].pending.len(), 2, "one operation per key");
    assert_eq!(c.links[0].queued, 80);
    assert_eq!(c.stats.folded, 78);
    c.sync().unwrap();
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(40)));
    assert_eq!(c.call(other.get()).unwrap().value, Some(WV::int(40)));
}

/// A batch the shard applied comes back to the in-process client empty, and so do the lists
/// of its folded increments, for the next batches to fill.
#[test]
fn applied_batches_come_back_empty_for_the_next_ones() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    let k = ObjKey::shared(1, 3, Vec::new());
    // Clocks with gaps: the folds go in lists, not in a run.
    for clock in [1, 3, 5, 7, 9] {
        c.submit_incr(clocked(k.incr(1), clock, 0));
    }
    c.sync().unwrap();
    let batch = c.mailbox.take_spent().expect("the batch came back");
    assert!(batch.is_empty() && batch.capacity() >= 1);
    let (clocks, indexes) = c
        .mailbox
        .take_spent_folds()
        .expect("its fold lists came back");
    assert!(clocks.is_empty() && clocks.capacity() >= 4);
    assert!(indexes.is_empty() && indexes.capacity() >= 4);
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(5)));
}

/// Folding remembers where each key's increments went; an operation on the key queued since
/// (a set here) makes the next increment its own operation, not one folded ahead of the set,
/// and keys that share a remembered place do not mix.
#[test]
fn an_increment_never_folds_ahead_of_a_later_operation_on_its_key() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    // Objects 3 and 3 + FOLD_HINTS share a hint.
    let k = ObjKey::shared(1, 3, Vec::new());
    let other = ObjKey::shared(1, 3 + FOLD_HINTS as u16, Vec::new());
    bump_both(&mut c, &k, &other, 1..=10);
    c.submit_nonblocking(clocked(k.set(&Value::Int(100)), 11, 0));
    bump_both(&mut c, &k, &other, 12..=20);
    // k's run, other's run, the set, k's new run, other's new run (clock 11 is missing
    // from its counts, so the first run ends).
    let runs: Vec<_> = c.links[0]
        .pending
        .iter()
        .map(|o| (o.clock, o.more_run, o.more_clocks.len()))
        .collect();
    assert_eq!(
        runs,
        vec![(1, 9, 0), (1, 9, 0), (11, 0, 0), (12, 8, 0), (12, 8, 0)]
    );
    c.sync().unwrap();
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(109)));
    assert_eq!(c.call(other.get()).unwrap().value, Some(WV::int(19)));
}

/// The same with one counter alone, so that the place its last fold went is still
/// remembered when the set comes.
#[test]
fn a_lone_counter_does_not_fold_ahead_of_a_set() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    let k = ObjKey::shared(1, 3, Vec::new());
    for clock in 1..=5u64 {
        c.submit_incr(clocked(k.incr(1), clock, 0));
    }
    c.submit_nonblocking(clocked(k.set(&Value::Int(100)), 6, 0));
    for clock in 7..=9u64 {
        c.submit_incr(clocked(k.incr(1), clock, 0));
    }
    // The first carrier, the set, the second carrier.
    assert_eq!(c.links[0].pending.len(), 3);
    assert_eq!(c.links[0].pending[2].more_run, 2);
    assert!(c.links[0].pending[2].more_clocks.is_empty());
    c.sync().unwrap();
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(103)));
}

/// Consecutive clocks with one op index travel as a run; a clock that does not extend the
/// run starts another operation, whose folds go in a list when their clocks have gaps or
/// their op index changes. The store applies and reports each clock once, as if each came
/// alone.
#[test]
fn consecutive_clocks_travel_as_a_run_and_the_others_in_a_list() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    c.submit_to(0, ops::subscribe_commits(0));
    let k = ObjKey::shared(1, 3, Vec::new());
    let sent = [(1, 0), (2, 0), (3, 0), (5, 0), (6, 1), (8, 0)];
    for (clock, index) in sent {
        c.submit_incr(wire::Op {
            flags: wire::OpFlag::FlagCounted as u32,
            ..clocked(k.incr(1), clock, index)
        });
    }
    let carried: Vec<_> = c.links[0]
        .pending
        .iter()
        .skip(1)
        .map(|o| (o.clock, o.more_run, o.more_clocks.clone()))
        .collect();
    assert_eq!(carried, vec![(1, 2, vec![]), (5, 0, vec![6, 8])]);
    c.sync().unwrap();
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(6)));
    let mut committed = Vec::new();
    while committed.len() < sent.len() {
        let p = c
            .wait_push(Duration::from_secs(5))
            .unwrap()
            .expect("commits");
        for cm in &p.push.commits {
            committed.extend(cm.clocks().map(|clock| (clock, cm.id)));
        }
    }
    let want: Vec<_> = sent
        .iter()
        .map(|&(clock, index)| (clock, crate::shard::update_id(1, 2, 3, index)))
        .collect();
    assert_eq!(committed, want);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever mix of counter increments, sets and flushes a client sends over several
    /// shards (objects sharing a remembered fold place among them), the store ends with
    /// what applying them one by one in order gives: a fold never lands ahead of a later
    /// operation on its key.
    #[test]
    fn folded_increments_add_up_as_applied_in_order(
        steps in proptest::collection::vec((0u16..8, 0u8..10), 1..200),
    ) {
        let store = Store::start(StoreConfig::in_memory(2)).unwrap();
        let mut c = store.client(1);
        let key = |o: u16| ObjKey::shared(1, 10 + o, Vec::new());
        let mut model = [0i64; 8];
        for (clock, &(o, what)) in (1u64..).zip(&steps) {
            match what {
                0 => {
                    c.submit_nonblocking(clocked(key(o).set(&Value::Int(1000)), clock, 0));
                    model[usize::from(o)] = 1000;
                }
                1 => c.flush().unwrap(),
                _ => {
                    c.submit_incr(clocked(key(o).incr(1), clock, 0));
                    model[usize::from(o)] += 1;
                }
            }
        }
        c.sync().unwrap();
        for (o, want) in (0u16..).zip(model) {
            let got = c.call(key(o).get()).unwrap().value;
            let want = (want != 0).then(|| WV::int(want));
            proptest::prop_assert_eq!(got, want, "object {}", 10 + o);
        }
    }
}

/// Waits (without sending anything, so without waking the shard) until every operation
/// sent is acknowledged; returns how long that took, or `None` past `limit`.
fn acked_within(c: &mut StoreClient, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while c.unacked() > 0 {
        c.poll().unwrap();
        if t.elapsed() > limit {
            return None;
        }
        std::thread::yield_now();
    }
    Some(t.elapsed())
}

/// A batch that `flush_coalesced` sends to a sleeping shard does not wake it at once, but the
/// wake-up it owes is paid: after `WAKE_AFTER` more calls, by the next `flush`, or by a wait
/// for the reply to an operation in it; never left to the shard's idle timeout (half a
/// second for an in-memory store).
#[test]
fn a_batch_sent_quietly_wakes_the_shard_soon_after() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let limit = Duration::from_millis(300);
    for (id, how) in ["more calls", "flush", "wait for a reply"]
        .into_iter()
        .enumerate()
    {
        let mut c = store.client(id as u64 + 1);
        let k = ObjKey::shared(1, 3, Vec::new());
        // The shard falls asleep with nothing to do.
        std::thread::sleep(Duration::from_millis(30));
        c.submit_nonblocking(k.incr(1));
        let seq = c.submit_to(0, k.get());
        c.flush_coalesced(1).unwrap();
        assert_eq!(c.unacked(), 2);
        let t = Instant::now();
        match how {
            "more calls" => {
                for _ in 0..WAKE_AFTER {
                    c.flush_coalesced(1).unwrap();
                }
            }
            "flush" => c.flush().unwrap(),
            _ => {
                let r = c.wait_reply(0, seq).unwrap();
                assert_eq!(r.value, Some(WV::int(id as i64 + 1)));
            }
        }
        let left = limit.saturating_sub(t.elapsed());
        assert!(
            acked_within(&mut c, left).is_some(),
            "not applied within {limit:?} (woken by {how})"
        );
    }
}

/// A shard that applied an in-process batch a moment ago naps instead of sleeping: a batch
/// sent quietly then owes it no wake-up (no system call on the sender's per-packet path) and
/// is still applied, by the shard looking again on its own.
#[test]
fn a_batch_sent_quietly_to_a_napping_shard_owes_no_wake_up() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    let k = ObjKey::shared(1, 4, Vec::new());
    // A busy machine may delay this thread past the shard's nap window, and the shard then
    // sleeps; only an attempt that found it napping tests anything.
    let mut napped = 0;
    for _ in 0..200 {
        c.call(k.incr(1)).unwrap();
        // Past the short poll after a reply, inside the nap window.
        std::thread::sleep(Duration::from_micros(200));
        c.submit_nonblocking(k.incr(1));
        c.flush_coalesced(1).unwrap();
        if c.links[0].wake_in != 0 {
            c.flush().unwrap();
        } else {
            napped += 1;
            assert!(
                acked_within(&mut c, Duration::from_millis(300)).is_some(),
                "a batch sent to a napping shard was not applied"
            );
        }
        c.sync().unwrap();
        if napped >= 3 {
            break;
        }
    }
    assert!(
        napped >= 3,
        "the shard slept instead of napping ({napped} of 200)"
    );
    let v = c.call(k.get()).unwrap().value;
    assert!(v.and_then(|v| v.as_int()).is_some_and(|n| n >= 6));
}

/// A client that polls for its replies (a DPDK lcore's) gets them as one that parks does,
/// and its waits still end at their timeout.
#[test]
fn a_polling_client_gets_its_replies_and_its_waits_end() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut c = store.client(1);
    c.poll_only = true;
    for i in 0..50u16 {
        let k = ObjKey::shared(1, i, Vec::new());
        c.submit_nonblocking(k.incr(i64::from(i)));
        assert_eq!(
            c.call(k.get()).unwrap().value,
            Some(WV::int(i64::from(i))),
            "object {i}"
        );
    }
    c.sync().unwrap();
    assert_eq!(c.unacked(), 0);
    // Nothing is on its way: a wait for a frame polls until its timeout, then gives up.
    let t = Instant::now();
    assert!(c.mailbox.poll_for(Duration::from_millis(5)).is_none());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(5), "{waited:?}");
}

#[test]
fn keep_awake_holds_every_shard_up_for_the_time_asked_and_no_longer() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let c = store.client(1);
    assert!(!store.worker(0).kept_awake() && !store.worker(1).kept_awake());
    c.keep_awake(Duration::from_secs(60));
    assert!(store.worker(0).kept_awake() && store.worker(1).kept_awake());
    // A shorter request does not cut a longer one short.
    c.keep_awake(Duration::from_millis(1));
    assert!(store.worker(1).kept_awake());
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut c = store.client(1);
    c.keep_awake(Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!store.worker(0).kept_awake());
    // The shard serves as before.
    let k = ObjKey::raw("k");
    c.submit_nonblocking(k.incr(3));
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(3)));
}
