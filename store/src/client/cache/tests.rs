use super::*;
use crate::server::{Store, StoreConfig};
use proptest::prelude::{
    any, prop_assert_eq, prop_oneof, proptest, Just, ProptestConfig, Strategy as PStrategy,
};
use std::time::Duration;

const PF: u16 = 1; // per-flow, read/write often
const CNT: u16 = 2; // cross-flow, write-mostly
const CFG: u16 = 3; // cross-flow, read-heavy
const POOL: u16 = 4; // cross-flow, read/write often

fn specs() -> Vec<ObjectSpec> {
    let o = |id, name: &str, scope, access| ObjectSpec {
        id,
        name: format!("t:{name}"),
        scope,
        access,
        key_kind: KeyKind::Raw,
    };
    vec![
        o(PF, "flow", Scope::PerFlow, Access::ReadWriteOften),
        o(CNT, "count", Scope::CrossFlow, Access::WriteMostly),
        o(CFG, "cfg", Scope::CrossFlow, Access::ReadHeavy),
        o(POOL, "pool", Scope::CrossFlow, Access::ReadWriteOften),
    ]
}

/// Instance `i` of vertex `vertex` in eo-c-na mode.
fn external(store: &Store, vertex: u16, i: u16) -> StateClient {
    StateClient::external(
        vertex,
        i,
        Mode::EoCNa,
        &specs(),
        CustomOps::builtin(),
        store.client(store.next_client_id()),
    )
    .unwrap()
}

#[test]
fn table_3_5() {
    use Access::*;
    use Scope::*;
    for m in [Mode::EoC, Mode::EoCNa] {
        assert_eq!(strategy(m, PerFlow, WriteMostly), Strategy::NonBlocking);
        assert_eq!(strategy(m, CrossFlow, WriteMostly), Strategy::NonBlocking);
        assert_eq!(strategy(m, PerFlow, ReadHeavy), Strategy::CacheFlush);
        assert_eq!(strategy(m, PerFlow, ReadWriteOften), Strategy::CacheFlush);
        assert_eq!(strategy(m, CrossFlow, ReadHeavy), Strategy::CacheCallback);
        assert_eq!(
            strategy(m, CrossFlow, ReadWriteOften),
            Strategy::CacheExclusive
        );
    }
    assert_eq!(strategy(Mode::Eo, PerFlow, ReadHeavy), Strategy::Blocking);
    assert_eq!(
        strategy(Mode::Traditional, CrossFlow, ReadHeavy),
        Strategy::Local
    );
    assert_eq!("eo-c-na".parse::<Mode>().unwrap(), Mode::EoCNa);
    assert!("fast".parse::<Mode>().is_err());
}

#[derive(Clone, Debug)]
enum Step {
    Incr(u16, u8, i64),
    IncrGet(u16, u8, i64),
    Get(u16, u8),
    Push(u8, u8),
    Pop(u8),
    Set(u16, u8, i64),
    Cas(u16, u8, i64, i64),
    Max(u16, u8, i64),
    Del(u16, u8),
}

/// Key bytes of key `k`; key 4 has none, as a cross-flow counter's (its blind increments
/// gather into runs).
fn key(k: u8) -> Vec<u8> {
    if k == 4 {
        Vec::new()
    } else {
        vec![k]
    }
}

fn step() -> impl PStrategy<Value = Step> {
    let obj = prop_oneof![Just(PF), Just(CNT), Just(CFG), Just(POOL)];
    let k = 0u8..5;
    prop_oneof![
        (obj.clone(), k.clone(), -5i64..5).prop_map(|(o, k, n)| Step::Incr(o, k, n)),
        (obj.clone(), k.clone(), -5i64..5).prop_map(|(o, k, n)| Step::IncrGet(o, k, n)),
        (obj.clone(), k.clone()).prop_map(|(o, k)| Step::Get(o, k)),
        (k.clone(), any::<u8>()).prop_map(|(k, v)| Step::Push(k, v)),
        k.clone().prop_map(Step::Pop),
        (obj.clone(), k.clone(), -3i64..3).prop_map(|(o, k, n)| Step::Set(o, k, n)),
        (obj.clone(), k.clone(), -3i64..3, -3i64..3).prop_map(|(o, k, a, b)| Step::Cas(o, k, a, b)),
        (obj.clone(), k.clone(), -9i64..9).prop_map(|(o, k, n)| Step::Max(o, k, n)),
        (obj, k).prop_map(|(o, k)| Step::Del(o, k)),
    ]
}

/// Runs the steps, one packet each; returns everything the NF could observe.
fn observe(s: &mut StateClient, steps: &[Step]) -> Vec<String> {
    let mut seen = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        s.begin_packet(ops::clock(1, i as u64 + 1), false);
        let r = match st {
            Step::Incr(o, k, n) => format!("{:?}", s.incr(*o, &key(*k), *n)),
            Step::IncrGet(o, k, n) => format!("{:?}", s.incr_get(*o, &key(*k), *n)),
            Step::Get(o, k) => format!("{:?}", s.get(*o, &key(*k))),
            Step::Push(k, v) => format!("{:?}", s.push_back(POOL, &key(*k), Bytes::from(vec![*v]))),
            Step::Pop(k) => format!("{:?}", s.pop_front(POOL, &key(*k))),
            Step::Set(o, k, n) => format!("{:?}", s.set(*o, &key(*k), Value::Int(*n))),
            Step::Cas(o, k, a, b) => format!(
                "{:?}",
                s.compare_and_update(*o, &key(*k), &Value::Int(*a), &Value::Int(*b))
            ),
            Step::Max(o, k, n) => {
                format!("{:?}", s.custom(*o, &key(*k), "max", &Value::Int(*n), true))
            }
            Step::Del(o, k) => format!("{:?}", s.del(*o, &key(*k))),
        };
        s.end_packet();
        seen.push(r);
        if i % 7 == 6 {
            s.flush().unwrap();
        }
    }
    s.sync().unwrap();
    for o in [PF, CNT, CFG, POOL] {
        for k in 0u8..5 {
            seen.push(format!("final {o} {k} {:?}", s.get(o, &key(k))));
        }
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// The same NF code sees the same values in every mode (COE for one instance).
    #[test]
    fn every_mode_behaves_like_traditional(steps in proptest::collection::vec(step(), 1..60)) {
        let mut t = StateClient::local(9, 1, &specs(), CustomOps::builtin());
        let want = observe(&mut t, &steps);
        let store = Store::start(StoreConfig::in_memory(2)).unwrap();
        for (n, mode) in [Mode::Eo, Mode::EoC, Mode::EoCNa].into_iter().enumerate() {
            let vertex = 10 + n as u16;
            let mut e = StateClient::external(vertex, 1, mode, &specs(), CustomOps::builtin(), store.client(store.next_client_id())).unwrap();
            // Vertex ids differ per mode so the runs do not share state.
            let got = observe(&mut e, &steps);
            prop_assert_eq!(&got, &want, "mode {}", mode);
        }
    }
}

#[test]
fn update_vector_matches_commit_notifications() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut root = store.client(store.next_client_id());
    for s in 0..root.shards() {
        root.call_shard(s, ops::subscribe_commits(1)).unwrap();
    }
    let mut nf = StateClient::external(
        3,
        7,
        Mode::EoCNa,
        &specs(),
        CustomOps::builtin(),
        store.client(store.next_client_id()),
    )
    .unwrap();
    let clock = ops::clock(1, 42);
    nf.begin_packet(clock, false);
    nf.incr(CNT, b"a", 1).unwrap();
    nf.incr(CNT, b"a", 1).unwrap(); // twice the same object: must not cancel out
    nf.set(PF, b"f", Value::Int(3)).unwrap();
    nf.push_back(POOL, b"p", Bytes::from_static(b"x")).unwrap();
    let vector = nf.end_packet();
    assert_ne!(vector, 0);
    nf.sync().unwrap();
    let mut acc = 0u32;
    let mut n = 0;
    while let Some(p) = root.wait_push(Duration::from_millis(500)).unwrap() {
        for c in p.push.commits {
            assert_eq!(c.clock, clock);
            acc ^= c.id;
            n += 1;
        }
        if n == 4 {
            break;
        }
    }
    assert_eq!(n, 4, "one commit per update");
    assert_eq!(
        acc ^ vector,
        0,
        "XOR check passes once everything committed"
    );
}

/// A counter's blind increments by consecutive packets go to the store as one operation
/// (a run), queued only at the flush: per-flow updates in between leave the run open. The
/// store still commits every packet's increment, so each packet's update vector balances.
#[test]
fn a_counter_of_consecutive_packets_travels_as_one_run() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut root = store.client(store.next_client_id());
    root.call_shard(0, ops::subscribe_commits(1)).unwrap();
    let mut nf = external(&store, 3, 7);
    let mut vectors = HashMap::new();
    for i in 1..=100u64 {
        let clock = ops::clock(1, i);
        nf.begin_packet(clock, false);
        nf.incr(CNT, b"", 1).unwrap();
        nf.set(PF, &i.to_be_bytes(), Value::Int(1)).unwrap();
        vectors.insert(clock, nf.end_packet());
    }
    let pending = &nf.store.as_ref().unwrap().links[0].pending;
    assert!(
        pending.iter().all(|o| o.per_flow),
        "the counter's run is not queued before the flush"
    );
    nf.flush().unwrap();
    let folded = nf.store.as_ref().unwrap().stats.folded;
    assert_eq!(folded, 99, "one operation carries all 100 increments");
    nf.sync().unwrap();
    assert_eq!(nf.get(CNT, b"").unwrap(), Value::Int(100));
    let mut acc: HashMap<u64, u32> = HashMap::new();
    let mut n = 0;
    while n < 200 {
        let p = root
            .wait_push(Duration::from_secs(5))
            .unwrap()
            .expect("commits");
        for c in &p.push.commits {
            for clock in c.clocks() {
                *acc.entry(clock).or_default() ^= c.id;
                n += 1;
            }
        }
    }
    assert_eq!(acc, vectors, "every packet's updates committed, none twice");
}

/// Anything else on a counter goes behind its open run: a read sees every increment
/// gathered so far, and a set is not overtaken by them.
#[test]
fn an_open_run_goes_before_other_operations_on_its_counter() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut nf = external(&store, 3, 7);
    for i in 1..=5u64 {
        nf.begin_packet(ops::clock(1, i), false);
        nf.incr(CNT, b"", 2).unwrap();
        nf.end_packet();
    }
    nf.begin_packet(ops::clock(1, 6), false);
    assert_eq!(nf.get(CNT, b"").unwrap(), Value::Int(10));
    nf.set(CNT, b"", Value::Int(0)).unwrap();
    nf.end_packet();
    for i in 7..=9u64 {
        nf.begin_packet(ops::clock(1, i), false);
        nf.incr(CNT, b"", 1).unwrap();
        nf.end_packet();
    }
    nf.sync().unwrap();
    assert_eq!(nf.get(CNT, b"").unwrap(), Value::Int(3));
    // A client dropped with a run open still sends it.
    for i in 10..=12u64 {
        nf.begin_packet(ops::clock(1, i), false);
        nf.incr(CNT, b"", 1).unwrap();
        nf.end_packet();
    }
    drop(nf);
    let mut other = external(&store, 3, 8);
    let t = std::time::Instant::now();
    while other.get(CNT, b"").unwrap() != Value::Int(6) {
        assert!(t.elapsed() < Duration::from_secs(5), "the run was lost");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn read_heavy_caches_follow_other_instances() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mk = |i| external(&store, 5, i);
    let (mut a, mut b) = (mk(1), mk(2));
    assert_eq!(a.get(CFG, b"k").unwrap(), Value::Nil);
    assert_eq!(b.get(CFG, b"k").unwrap(), Value::Nil);
    b.set(CFG, b"k", Value::Int(11)).unwrap();
    // a learns through the callback, without asking.
    let calls = a.stats.remote_calls;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.get(CFG, b"k").unwrap() != Value::Int(11) {
        assert!(
            std::time::Instant::now() < deadline,
            "callback never arrived"
        );
        a.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        a.stats.remote_calls, calls,
        "reads were served from the cache"
    );
    assert!(a.stats.callbacks_applied >= 1);
}

#[test]
fn a_clone_replaying_a_packet_does_not_double_count() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut straggler = StateClient::external(
        6,
        1,
        Mode::EoCNa,
        &specs(),
        CustomOps::builtin(),
        store.client(store.next_client_id()),
    )
    .unwrap();
    for i in 1..=3u64 {
        straggler.begin_packet(ops::clock(1, i), false);
        straggler.incr(PF, b"f", 10).unwrap();
        straggler.incr(CNT, b"c", 1).unwrap();
    }
    straggler.sync().unwrap();
    // The clone (same logical instance) starts from the store and replays packets 2..=4.
    let mut clone = StateClient::external(
        6,
        1,
        Mode::EoCNa,
        &specs(),
        CustomOps::builtin(),
        store.client(store.next_client_id()),
    )
    .unwrap();
    clone.set_fresh(false);
    for i in 2..=4u64 {
        clone.begin_packet(ops::clock(1, i), true);
        clone.incr(PF, b"f", 10).unwrap();
        clone.incr(CNT, b"c", 1).unwrap();
    }
    clone.sync().unwrap();
    clone.begin_packet(ops::clock(1, 5), false);
    assert_eq!(clone.get(PF, b"f").unwrap(), Value::Int(40));
    assert_eq!(clone.get(CNT, b"c").unwrap(), Value::Int(4));
}

/// Handover (Fig 3.7 steps 5-7): the old instance's cached per-flow state reaches the new
/// one whole; before the handover the new instance's updates of that flow are refused.
#[test]
fn evicted_flows_move_to_the_new_instance() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mk = |i| external(&store, 8, i);
    let (mut old, mut new) = (mk(0), mk(1));
    new.set_fresh(false);
    for (i, f) in [b"f1", b"f2", b"f3"].iter().enumerate() {
        old.begin_packet(ops::clock(1, i as u64 + 1), false);
        old.incr(PF, *f, 5).unwrap();
        old.incr(PF, *f, 1).unwrap();
    }
    old.sync().unwrap();
    // Still the old instance's: the store refuses another instance's update.
    new.begin_packet(ops::clock(1, 10), false);
    assert_eq!(new.get(PF, b"f1").unwrap(), Value::Int(6));
    let mut op = ObjKey::per_flow(8, PF, Bytes::from_static(b"f1")).incr(1);
    op.instance = 1;
    let r = new.store().unwrap().call(op).unwrap();
    assert_eq!(r.status, Status::NotOwner as i32);
    // f1 and f2 move; f3 stays.
    let n = old.evict(|k, _| k.sub.as_slice() != b"f3").unwrap();
    assert_eq!(n, 2);
    let mut fresh_new = mk(1);
    fresh_new.set_fresh(false);
    fresh_new.begin_packet(ops::clock(1, 11), false);
    fresh_new.incr(PF, b"f1", 1).unwrap();
    fresh_new.incr(PF, b"f2", 1).unwrap();
    fresh_new.sync().unwrap();
    old.begin_packet(ops::clock(1, 12), false);
    old.incr(PF, b"f3", 1).unwrap();
    old.sync().unwrap();
    let mut reader = mk(2);
    reader.set_fresh(false);
    for (f, want) in [(b"f1", 7), (b"f2", 7), (b"f3", 7)] {
        let v = reader
            .store()
            .unwrap()
            .call(ObjKey::per_flow(8, PF, Bytes::from_static(f)).get())
            .unwrap();
        assert_eq!(Value::from_wire_owned(v.value.as_ref()), Value::Int(want));
    }
}

/// A handover of many flows spread over shards, queued right behind their last updates (no
/// flush in between): one release operation per shard; every update reaches the store before
/// the release; a waiting instance is handed each object it asked for, once, with its final
/// value; the other moved objects are free; the flows that stay are still the old instance's.
#[test]
fn evict_releases_many_flows_with_one_operation_per_shard() {
    let store = Store::start(StoreConfig::in_memory(3)).unwrap();
    let mk = |i| external(&store, 12, i);
    let (mut old, mut new, mut third) = (mk(0), mk(1), mk(2));
    new.set_fresh(false);
    let flows: Vec<Bytes> = (0..600u32)
        .map(|i| Bytes::from(format!("flow{i}")))
        .collect();
    let index = |sub: &[u8]| -> usize { std::str::from_utf8(&sub[4..]).unwrap().parse().unwrap() };
    for (i, f) in flows.iter().enumerate() {
        old.begin_packet(ops::clock(1, i as u64 + 1), false);
        old.incr(PF, f, i as i64 + 1).unwrap();
    }
    old.sync().unwrap();
    // The new instance waits for every 50th flow.
    let waited: Vec<usize> = (0..flows.len()).step_by(50).collect();
    for &i in &waited {
        let op = ObjKey::per_flow(12, PF, flows[i].clone()).acquire(1);
        let r = new.store().unwrap().call(op).unwrap();
        assert_eq!(r.status, Status::Pending as i32);
    }
    // Last updates, still queued when the handover starts.
    for (i, f) in flows.iter().enumerate() {
        old.begin_packet(ops::clock(1, 1000 + i as u64), false);
        old.incr(PF, f, 1).unwrap();
    }
    let st = old.store().unwrap().stats;
    let moved = old.evict(|k, _| index(k.sub.as_slice()) % 2 == 0).unwrap();
    assert_eq!(moved, 300);
    let after = old.store().unwrap().stats;
    assert_eq!(after.ops - st.ops, 3, "one release operation per shard");
    assert!(after.batches - st.batches <= 3, "one batch per shard");
    assert_eq!(
        old.store().unwrap().unacked(),
        0,
        "evict waits for the store"
    );
    // Handovers: each waited flow once, with every update applied.
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < waited.len() && std::time::Instant::now() < deadline {
        new.flush().unwrap();
        got.extend(new.take_handovers());
        std::thread::sleep(Duration::from_millis(1));
    }
    got.extend(new.take_handovers());
    let mut seen: Vec<usize> = got.iter().map(|(k, _)| index(&k.sub)).collect();
    seen.sort_unstable();
    assert_eq!(seen, waited, "exactly the waited flows, once each");
    for (k, v) in &got {
        assert_eq!((k.vertex, k.object, k.per_flow), (12, PF, true));
        assert_eq!(*v, Value::Int(index(&k.sub) as i64 + 2), "{:?}", k.sub);
    }
    // Ownership after the move, checked with raw updates by instances 1 and 2.
    let try_incr = |c: &mut StateClient, inst: u16, f: &Bytes| {
        let mut op = ObjKey::per_flow(12, PF, f.clone()).incr(1);
        op.instance = u32::from(inst);
        c.store().unwrap().call(op).unwrap()
    };
    for (i, f) in flows.iter().enumerate() {
        let r = try_incr(&mut third, 2, f);
        if i % 2 == 1 {
            assert_eq!(r.status, Status::NotOwner as i32, "flow {i} stayed");
        } else if waited.contains(&i) {
            assert_eq!(
                r.status,
                Status::NotOwner as i32,
                "flow {i} is the new instance's"
            );
            let r = try_incr(&mut new, 1, f);
            assert_eq!(r.value, Some(wire::Value::int(i as i64 + 3)), "flow {i}");
        } else {
            assert_eq!(r.status, Status::Ok as i32, "flow {i} is free");
            assert_eq!(r.value, Some(wire::Value::int(i as i64 + 3)), "flow {i}");
        }
    }
}

/// An object becoming shared is flushed and dropped from the cache: the next read goes to the
/// store and sees another instance's update.
#[test]
fn a_cache_exclusive_object_becoming_shared_reads_the_store() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mk = |i| external(&store, 13, i);
    let (mut a, mut b) = (mk(0), mk(1));
    for i in 0..1000u32 {
        a.push_back(POOL, b"p", Bytes::from(i.to_be_bytes().to_vec()))
            .unwrap();
    }
    assert_eq!(
        a.pop_front(POOL, b"p").unwrap(),
        Some(Bytes::from(0u32.to_be_bytes().to_vec()))
    );
    a.set_exclusive(POOL, false).unwrap();
    b.set_exclusive(POOL, false).unwrap();
    assert_eq!(a.store().unwrap().unacked(), 0, "flushed");
    assert_eq!(
        b.pop_front(POOL, b"p").unwrap(),
        Some(Bytes::from(1u32.to_be_bytes().to_vec()))
    );
    b.sync().unwrap();
    let calls = a.stats.remote_calls;
    assert_eq!(
        a.pop_front(POOL, b"p").unwrap(),
        Some(Bytes::from(2u32.to_be_bytes().to_vec()))
    );
    assert!(
        a.stats.remote_calls > calls,
        "not served from a stale cache"
    );
}

/// Large values a cache drops are freed by the background thread, not leaked.
#[test]
fn dropped_cache_values_are_freed_in_the_background() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    struct Owner(Arc<AtomicBool>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            b"port"
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let freed = Arc::new(AtomicBool::new(false));
    let item = Bytes::from_owner(Owner(freed.clone()));
    let list: std::collections::VecDeque<Bytes> =
        (0..FREE_INLINE_ITEMS * 4).map(|_| item.clone()).collect();
    drop(item);
    dispose(vec![Value::List(list)]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !freed.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "never freed");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The same handover over the native TCP protocol, with several release operations per
/// shard: a waiting instance on another connection gets its object, the rest is free,
/// nothing is lost.
#[test]
fn evict_over_tcp_hands_over() {
    use crate::client::{StoreClient, TcpOptions};
    let store = Store::start(StoreConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..StoreConfig::in_memory(2)
    })
    .unwrap();
    let addr = store.native_addr.unwrap();
    let mk = |i: u16| {
        let c = StoreClient::connect(&[addr], 0x7C9_0000 + u64::from(i), TcpOptions::default())
            .unwrap();
        StateClient::external(14, i, Mode::EoCNa, &specs(), CustomOps::builtin(), c).unwrap()
    };
    let (mut old, mut new) = (mk(0), mk(1));
    // Enough keys for several release lists per shard.
    let flows: Vec<Bytes> = (0..5000u32)
        .map(|i| Bytes::from(format!("f{i:05}")))
        .collect();
    for (i, f) in flows.iter().enumerate() {
        old.begin_packet(ops::clock(1, i as u64 + 1), false);
        old.incr(PF, f, 3).unwrap();
        if i % 64 == 63 {
            old.flush().unwrap();
        }
    }
    old.sync().unwrap();
    let r = new
        .store()
        .unwrap()
        .call(ObjKey::per_flow(14, PF, flows[7].clone()).acquire(1))
        .unwrap();
    assert_eq!(r.status, Status::Pending as i32);
    assert_eq!(old.evict(|_, _| true).unwrap(), flows.len());
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.is_empty() && std::time::Instant::now() < deadline {
        new.flush().unwrap();
        got = new.take_handovers();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.sub, flows[7]);
    assert_eq!(got[0].1, Value::Int(3));
    for (i, f) in flows.iter().enumerate() {
        let mut op = ObjKey::per_flow(14, PF, f.clone()).incr(1);
        op.instance = 1;
        let r = new.store().unwrap().call(op).unwrap();
        assert_eq!(r.value, Some(wire::Value::int(4)), "flow {i}");
    }
}

/// A replacement loads its failed predecessor's flows in one call per shard: afterwards its
/// reads of those flows, and of flows nobody had, are served without asking the store, and
/// another instance's flows are not taken.
#[test]
fn preload_owned_takes_the_instances_flows_at_once() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut failed = external(&store, 6, 0);
    let mut other = external(&store, 6, 1);
    for f in 0..50u32 {
        failed.begin_packet(ops::clock(1, u64::from(f) + 1), false);
        failed
            .set(PF, &f.to_be_bytes(), Value::Int(i64::from(f)))
            .unwrap();
        failed.end_packet();
    }
    // The other instance is further on; its clocks are not the failed instance's.
    other.begin_packet(ops::clock(1, 90), false);
    other.set(PF, b"theirs", Value::Int(-1)).unwrap();
    other.end_packet();
    failed.sync().unwrap();
    other.sync().unwrap();
    drop(failed);

    let mut r = external(&store, 6, 0);
    r.set_fresh(false);
    assert_eq!(
        r.preload_owned(0).unwrap(),
        Preloaded {
            flows: Some(50),
            newest_clock: ops::clock(1, 50)
        }
    );
    let calls = r.stats.remote_calls;
    for f in 0..50u32 {
        assert_eq!(
            r.get(PF, &f.to_be_bytes()).unwrap(),
            Value::Int(i64::from(f))
        );
    }
    // A flow it never had: no state, and no question to the store (the replacement is
    // fresh again).
    assert_eq!(r.get(PF, b"new").unwrap(), Value::Nil);
    assert_eq!(r.stats.remote_calls, calls, "served from the cache");
    // Instance 1's flow is not instance 0's.
    assert_eq!(r.get(PF, b"theirs").unwrap(), Value::Nil);
    // Past the limit nothing is loaded and misses keep asking the store.
    let mut small = external(&store, 6, 0);
    small.set_fresh(false);
    assert_eq!(small.preload_owned(16).unwrap().flows, None);
    assert_eq!(small.get(PF, &7u32.to_be_bytes()).unwrap(), Value::Int(7));
    assert!(small.stats.remote_calls > 0);
}

/// A replayed pop from a cached list leaves the cache to be loaded again after the replay,
/// in the store's state: the replayed packet gets the item it had the first time, and the
/// next packet the item after it.
#[test]
fn a_replayed_pop_does_not_copy_the_list_back_and_stays_in_step() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut a = external(&store, 8, 0);
    for i in 0..1000u16 {
        a.push_back(POOL, b"p", Bytes::copy_from_slice(&i.to_be_bytes()))
            .unwrap();
    }
    a.sync().unwrap();
    let first = ops::clock(1, 1);
    a.begin_packet(first, false);
    let got = a.pop_front(POOL, b"p").unwrap();
    a.end_packet();
    a.sync().unwrap();
    drop(a);
    let mut r = external(&store, 8, 0);
    r.set_fresh(false);
    r.begin_packet(first, true);
    assert_eq!(r.pop_front(POOL, b"p").unwrap(), got, "the logged item");
    r.end_packet();
    assert!(
        r.shared.is_empty(),
        "the list was copied back during the replay"
    );
    r.begin_packet(ops::clock(1, 2), false);
    assert_eq!(
        r.pop_front(POOL, b"p").unwrap(),
        Some(Bytes::copy_from_slice(&1u16.to_be_bytes())),
        "the next item, as if the first pop happened once"
    );
    r.end_packet();
}

/// Blind updates that go straight to the store (a write-mostly counter, a shared pool) are
/// stamped like any other update: the packet's clock and distinct op indexes (a replayed
/// packet's duplicates are suppressed), counted in the update vector (which the commit
/// notifications balance), and logged for store recovery when the NF-side log is on.
#[test]
fn blind_updates_are_stamped_committed_and_logged() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut root = store.client(store.next_client_id());
    for s in 0..root.shards() {
        root.call_shard(s, ops::subscribe_commits(1)).unwrap();
    }
    let mut nf = external(&store, 15, 4);
    nf.set_log_shared(true);
    nf.set_exclusive(POOL, false).unwrap();
    let run = |nf: &mut StateClient, replay: bool| {
        nf.begin_packet(ops::clock(1, 77), replay);
        nf.incr(CNT, b"", 2).unwrap();
        nf.incr(CNT, b"", 3).unwrap();
        nf.set(CNT, b"s", Value::Int(9)).unwrap();
        nf.del(CNT, b"d").unwrap();
        nf.push_back(POOL, b"p", Bytes::from_static(b"x")).unwrap();
        nf.push_front(POOL, b"p", Bytes::from_static(b"w")).unwrap();
        let v = nf.end_packet();
        nf.sync().unwrap();
        v
    };
    let vector = run(&mut nf, false);
    assert_eq!(nf.stats.nonblocking, 6);
    assert_eq!(nf.stats.remote_calls, 0, "nothing waited");
    let mut acc = 0u32;
    let mut n = 0;
    while n < 6 {
        let Some(p) = root.wait_push(Duration::from_millis(500)).unwrap() else {
            break;
        };
        for c in p.push.commits {
            assert_eq!(c.clock, ops::clock(1, 77));
            acc ^= c.id;
            n += 1;
        }
    }
    assert_eq!(n, 6, "one commit per update");
    assert_eq!(acc, vector, "the update vector balances the commits");
    let logged: Vec<&wire::Op> = nf.nflog().updates().map(|u| &u.op).collect();
    assert_eq!(logged.len(), 6, "every shared update is in the NF log");
    for (i, op) in logged.iter().enumerate() {
        assert_eq!(op.clock, ops::clock(1, 77));
        assert_eq!(op.instance, 4);
        assert_eq!(op.op_index, i as u32);
        assert_ne!(
            op.seq, 0,
            "logged with the sequence number it was sent with"
        );
        let want = F_COUNTED | OpFlag::FlagNonblocking as u32;
        assert_eq!(op.flags & want, want);
    }
    // The packet again, as a replay: the store has all of it already.
    run(&mut nf, true);
    nf.begin_packet(ops::clock(1, 78), false);
    assert_eq!(nf.get(CNT, b"").unwrap(), Value::Int(5));
    assert_eq!(nf.get(CNT, b"s").unwrap(), Value::Int(9));
    let pool = Value::List([b"w", b"x"].map(|b| Bytes::from_static(b)).into());
    assert_eq!(nf.get(POOL, b"p").unwrap(), pool);
}

/// `get_with` lends a cached or local value without a store round trip, reads the store
/// like `get` where nothing is held here (and for a replayed packet), and counts the same.
#[test]
fn get_with_reads_what_get_reads() {
    let store = Store::start(StoreConfig::in_memory(2)).unwrap();
    let mut nf = external(&store, 16, 0);
    nf.begin_packet(ops::clock(1, 1), false);
    nf.set(PF, b"f", Value::Int(4)).unwrap();
    nf.incr(CNT, b"c", 6).unwrap();
    nf.sync().unwrap();
    let (calls, hits) = (nf.stats.remote_calls, nf.stats.cache_hits);
    assert_eq!(nf.get_with(PF, b"f", |v| v.as_int()).unwrap(), Some(4));
    assert_eq!(nf.stats.remote_calls, calls, "served from the cache");
    assert_eq!(nf.stats.cache_hits, hits + 1);
    assert!(nf.get_with(PF, b"g", Value::is_nil).unwrap());
    assert_eq!(nf.get_with(CNT, b"c", |v| v.as_int()).unwrap(), Some(6));
    assert_eq!(
        nf.stats.remote_calls,
        calls + 1,
        "a counter is in the store"
    );
    // A replayed packet sees the store as of its first processing, not the cache.
    nf.begin_packet(ops::clock(1, 2), true);
    let calls = nf.stats.remote_calls;
    assert_eq!(nf.get_with(PF, b"f", |v| v.as_int()).unwrap(), Some(4));
    assert_eq!(nf.stats.remote_calls, calls + 1);
    let mut t = StateClient::local(16, 0, &specs(), CustomOps::builtin());
    t.set(PF, b"f", Value::Int(4)).unwrap();
    assert_eq!(t.get_with(PF, b"f", |v| v.as_int()).unwrap(), Some(4));
    assert!(t.get_with(CNT, b"x", Value::is_nil).unwrap());
    assert_eq!(t.stats.local_ops, 3);
}

/// Local (traditional) increments change an integer in place; every other case keeps the
/// store's rules: a new key starts from 0, an overflow or a non-integer leaves the value.
#[test]
fn local_increments_follow_the_stores_rules() {
    let store = Store::start(StoreConfig::in_memory(1)).unwrap();
    let mut e = external(&store, 17, 0);
    let mut t = StateClient::local(17, 0, &specs(), CustomOps::builtin());
    for s in [&mut t, &mut e] {
        s.begin_packet(ops::clock(1, 1), false);
        s.incr(PF, b"a", 5).unwrap();
        s.incr(PF, b"a", -2).unwrap();
        s.set(PF, b"max", Value::Int(i64::MAX - 1)).unwrap();
        s.incr(PF, b"max", 5).unwrap();
        s.incr(PF, b"max", 1).unwrap();
        s.set(PF, b"text", Value::Bytes(Bytes::from_static(b"x")))
            .unwrap();
        s.incr(PF, b"text", 1).unwrap();
        s.end_packet();
        s.sync().unwrap();
    }
    for s in [&mut t, &mut e] {
        assert_eq!(s.get(PF, b"a").unwrap(), Value::Int(3));
        assert_eq!(s.get(PF, b"max").unwrap(), Value::Int(i64::MAX));
        assert_eq!(
            s.get(PF, b"text").unwrap(),
            Value::Bytes(Bytes::from_static(b"x"))
        );
    }
    assert_eq!(t.stats.local_ops, t.stats.ops, "all of them local");
}

/// Flows handed over by bucket: one operation per shard whatever the number of flows, queued
/// right behind their last updates; the new instance takes each moved flow with its final
/// value; flows of the other buckets stay the old instance's, still cached there; the old
/// cache drops exactly the moved flows afterwards. An object whose keys do not say their
/// bucket makes the instance decline (it then moves object by object).
#[test]
fn flows_move_by_bucket_with_one_operation_per_shard() {
    let store = Store::start(StoreConfig::in_memory(3)).unwrap();
    let mk = |vertex, i, specs: &[ObjectSpec]| {
        StateClient::external(
            vertex,
            i,
            Mode::EoCNa,
            specs,
            CustomOps::builtin(),
            store.client(store.next_client_id()),
        )
        .unwrap()
    };
    move_by_bucket(&mk, 3);
}

#[test]
fn flows_move_by_bucket_over_tcp() {
    use crate::client::{StoreClient, TcpOptions};
    let store = Store::start(StoreConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..StoreConfig::in_memory(2)
    })
    .unwrap();
    let addr = store.native_addr.unwrap();
    let mk = |vertex, i: u16, specs: &[ObjectSpec]| {
        let id = 0x7CA_0000 + u64::from(vertex) * 16 + u64::from(i);
        let c = StoreClient::connect(&[addr], id, TcpOptions::default()).unwrap();
        StateClient::external(vertex, i, Mode::EoCNa, specs, CustomOps::builtin(), c).unwrap()
    };
    move_by_bucket(&mk, 2);
}

fn move_by_bucket(mk: &dyn Fn(u16, u16, &[ObjectSpec]) -> StateClient, shards: u64) {
    use crate::bucket::{key_bucket, BucketSet, Split};
    let tuples = vec![
        ObjectSpec {
            id: PF,
            name: "t:conn".into(),
            scope: Scope::PerFlow,
            access: Access::ReadWriteOften,
            key_kind: KeyKind::FiveTuple,
        },
        ObjectSpec {
            id: CNT,
            name: "t:count".into(),
            scope: Scope::CrossFlow,
            access: Access::WriteMostly,
            key_kind: KeyKind::Raw,
        },
    ];
    let (mut old, mut new) = (mk(12, 0, &tuples), mk(12, 1, &tuples));
    let flows: Vec<Vec<u8>> = (0..400u16)
        .map(|i| {
            let mut k = vec![17, 10, 1, (i >> 8) as u8, i as u8, 8, 8, 8, 8];
            k.extend_from_slice(&(1024 + i).to_be_bytes());
            k.extend_from_slice(&53u16.to_be_bytes());
            k
        })
        .collect();
    let moved = |b: usize| b % 4 < 2;
    let is_moved = |f: &[u8]| moved(key_bucket(KeyKind::FiveTuple, f, Split::Flow).unwrap());
    for (i, f) in flows.iter().enumerate() {
        old.begin_packet(ops::clock(1, i as u64 + 1), false);
        old.incr(PF, f, i as i64 + 1).unwrap();
        old.incr(CNT, b"", 1).unwrap();
    }
    old.sync().unwrap();
    for (i, f) in flows.iter().enumerate() {
        old.begin_packet(ops::clock(1, 1000 + i as u64), false);
        old.incr(PF, f, 1).unwrap();
    }
    let st = old.store().unwrap().stats;
    assert!(old
        .release_buckets(Split::Flow, BucketSet::from_fn(moved))
        .unwrap());
    let after = old.store().unwrap().stats;
    assert_eq!(
        after.ops - st.ops,
        shards,
        "one release operation per shard"
    );
    assert_eq!(
        old.store().unwrap().unacked(),
        0,
        "the release waits for the store"
    );
    let n_moved = flows.iter().filter(|f| is_moved(f)).count();
    assert!(n_moved > 100 && n_moved < 300, "{n_moved}");
    let n = old
        .forget_moved(|k, kind| key_bucket(kind, k.sub.as_slice(), Split::Flow).map(moved))
        .unwrap();
    assert_eq!(n, n_moved);
    for (i, f) in flows.iter().enumerate() {
        let mut op = ObjKey::per_flow(12, PF, Bytes::copy_from_slice(f)).incr(1);
        op.instance = 1;
        let r = new.store().unwrap().call(op).unwrap();
        if is_moved(f) {
            assert_eq!(r.status, Status::Ok as i32);
            assert_eq!(
                Value::from_wire_owned(r.value.as_ref()),
                Value::Int(i as i64 + 3),
                "every update of the old instance came first"
            );
        } else {
            assert_eq!(r.status, Status::NotOwner as i32);
            old.begin_packet(ops::clock(1, 5000 + i as u64), false);
            assert_eq!(old.get(PF, f).unwrap(), Value::Int(i as i64 + 2));
        }
    }
    // A raw-keyed per-flow object cannot be released by bucket.
    let mut raw = mk(13, 0, &specs());
    assert!(!raw
        .release_buckets(Split::Flow, BucketSet::from_fn(|_| true))
        .unwrap());
}
