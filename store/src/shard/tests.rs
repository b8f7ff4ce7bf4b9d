use super::*;
use chc_proto::wire::Value as WV;

pub(super) fn shard() -> Shard {
    Shard::new(
        0,
        1,
        CustomOps::builtin(),
        Arc::new(RwLock::new(Names::default())),
    )
}

fn op(code: OpCode, sub: &str) -> wire::Op {
    wire::Op {
        code: code as i32,
        vertex: 1,
        object: 2,
        sub: Bytes::copy_from_slice(sub.as_bytes()),
        ..Default::default()
    }
}

/// The shard's entries as (key, value, owner), sorted: shards in the same state dump alike.
pub(super) fn dump(s: &Shard) -> Vec<(String, Value, u32)> {
    let mut v: Vec<_> = s
        .map
        .iter()
        .map(|(k, e)| {
            (
                format!("{k:?}"),
                e.value().into_owned(),
                s.owner_of(k.as_ref(), e),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A new shard rebuilt from the WAL `s` wrote so far (which must end cleanly), and the records.
pub(super) fn replayed(s: &mut Shard) -> (Shard, Vec<chc_proto::records::WalRecord>) {
    let mut wal = Vec::new();
    s.take_wal(&mut wal);
    let mut r = chc_proto::records::FrameReader::new(&wal);
    let mut t = shard();
    let mut recs = Vec::new();
    while let Some(rec) = r.next_wal() {
        t.replay_wal_record(&rec);
        recs.push(rec);
    }
    assert!(r.torn().is_none());
    (t, recs)
}

fn run(s: &mut Shard, client: ClientId, ops: Vec<wire::Op>) -> Outputs {
    let mut out = Outputs::default();
    s.apply_batch(client, &ops, 42, &mut out);
    out
}

pub(super) fn one(s: &mut Shard, client: ClientId, o: wire::Op) -> wire::Reply {
    run(s, client, vec![o]).replies.pop().expect("a reply")
}

fn incr(sub: &str, n: i64) -> wire::Op {
    wire::Op {
        num: n,
        ..op(OpCode::OpIncr, sub)
    }
}

#[test]
fn offloaded_operations() {
    let mut s = shard();
    assert_eq!(one(&mut s, 1, incr("c", 5)).value, Some(WV::int(5)));
    assert_eq!(one(&mut s, 1, incr("c", -7)).value, Some(WV::int(-2)));
    let get = one(&mut s, 1, op(OpCode::OpGet, "c"));
    assert_eq!(get.value, Some(WV::int(-2)));
    // Lists at both ends.
    for (code, v) in [
        (OpCode::OpPushBack, "b"),
        (OpCode::OpPushFront, "a"),
        (OpCode::OpPushBack, "c"),
    ] {
        let mut o = op(code, "l");
        o.val = Some(WV::bytes(v.as_bytes().to_vec()));
        assert_eq!(one(&mut s, 1, o).status, Status::Ok as i32);
    }
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpPopBack, "l")).value,
        Some(WV::bytes(&b"c"[..]))
    );
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpPopFront, "l")).value,
        Some(WV::bytes(&b"a"[..]))
    );
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpPopFront, "l")).value,
        Some(WV::bytes(&b"b"[..]))
    );
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpPopFront, "l")).status,
        Status::NotFound as i32
    );
    // Compare and update.
    let mut cas = op(OpCode::OpCompareAndUpdate, "c");
    cas.val = Some(WV::int(-2));
    cas.val2 = Some(WV::int(10));
    assert_eq!(one(&mut s, 1, cas.clone()).status, Status::Ok as i32);
    assert_eq!(one(&mut s, 1, cas).status, Status::CompareFailed as i32);
    // Wrong types.
    let mut set = op(OpCode::OpSet, "s");
    set.val = Some(WV::bytes(&b"abc"[..]));
    one(&mut s, 1, set);
    assert_eq!(
        one(&mut s, 1, incr("s", 1)).status,
        Status::WrongType as i32
    );
    assert_eq!(
        one(&mut s, 1, incr("c", i64::MAX)).status,
        Status::Overflow as i32
    );
    // Custom operation by id.
    let mut c = op(OpCode::OpCustom, "c");
    c.num = s.customs().id("max").unwrap() as i64;
    c.val = Some(WV::int(99));
    assert_eq!(one(&mut s, 1, c).value, Some(WV::int(99)));
    let mut c = op(OpCode::OpCustom, "c");
    c.num = 1000;
    assert_eq!(one(&mut s, 1, c).status, Status::UnknownCustomOp as i32);
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpDel, "c")).status,
        Status::Ok as i32
    );
    assert_eq!(
        one(&mut s, 1, op(OpCode::OpGet, "c")).status,
        Status::NotFound as i32
    );
    // Garbage codes are refused, not applied.
    let mut bad = op(OpCode::OpGet, "c");
    bad.code = 999;
    assert_eq!(one(&mut s, 1, bad).status, Status::BadRequest as i32);
}

#[test]
fn same_clock_and_index_is_applied_once() {
    let mut s = shard();
    let mut o = incr("pkts", 1);
    o.clock = 7;
    o.op_index = 0;
    o.flags = F_COUNTED;
    o.instance = 3;
    let mut sub = Outputs::default();
    // The root subscribes to commits of root 0.
    s.apply_batch(
        100,
        &[wire::Op {
            code: OpCode::OpSubscribeCommits as i32,
            instance: 0,
            ..Default::default()
        }],
        0,
        &mut sub,
    );
    let first = run(&mut s, 1, vec![o.clone()]);
    assert_eq!(first.replies[0].value, Some(WV::int(1)));
    assert_eq!(first.commits.len(), 1);
    assert_eq!(first.commits[0].0, 100);
    assert_eq!(
        first.commits[0].1.id,
        update_id(o.vertex as u16, 3, o.object as u16, 0),
        "the id the client put in the vector"
    );
    // A clone (another client, same logical instance) replays the packet.
    let again = run(&mut s, 2, vec![o.clone()]);
    assert!(again.replies[0].duplicate);
    assert_eq!(again.replies[0].value, Some(WV::int(1)));
    assert!(
        again.commits.is_empty(),
        "a suppressed duplicate commits nothing new"
    );
    // A different op of the same packet is a different update.
    o.op_index = 1;
    assert_eq!(one(&mut s, 2, o.clone()).value, Some(WV::int(2)));
    assert_eq!(s.stats.duplicates_suppressed, 1);
    // Once the clock is retired the log is gone (a later replay could not exist).
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 8;
    r.instance = 0;
    run(&mut s, 100, vec![r]);
    assert_eq!(s.stats.logged_records, 0);
    let e = s
        .get(KeyRef {
            vertex: 1,
            object: 2,
            per_flow: false,
            sub: b"pkts",
        })
        .unwrap();
    assert!(e.meta().is_none_or(|m| m.log.is_empty()));
}

#[test]
fn out_of_order_clocks_are_found() {
    let mut s = shard();
    for clock in [5u64, 3, 9, 1, 4] {
        let mut o = incr("x", 1);
        o.clock = clock;
        one(&mut s, 1, o);
    }
    for clock in [1u64, 3, 4, 5, 9] {
        let mut o = incr("x", 1);
        o.clock = clock;
        assert!(one(&mut s, 1, o).duplicate, "clock {clock}");
    }
    let mut o = incr("x", 1);
    o.clock = 2;
    assert!(!one(&mut s, 1, o).duplicate);
}

#[test]
fn retransmitted_sequence_numbers_are_not_reapplied() {
    let mut s = shard();
    let mut a = incr("k", 1);
    a.seq = 1;
    let mut b = incr("k", 10);
    b.seq = 2;
    let out = run(&mut s, 9, vec![a.clone(), b.clone()]);
    assert_eq!(out.acked, 2);
    let out = run(&mut s, 9, vec![a, b]);
    assert_eq!(
        out.replies[1].value,
        Some(WV::int(11)),
        "the kept reply is returned"
    );
    assert_eq!(
        one(&mut s, 9, op(OpCode::OpGet, "k")).value,
        Some(WV::int(11))
    );
    assert_eq!(s.stats.retransmits_ignored, 2);
}

#[test]
fn per_flow_objects_have_one_owner_and_hand_over() {
    let mut s = shard();
    let pf = |code, inst: u32| wire::Op {
        per_flow: true,
        instance: inst,
        num: 1,
        ..op(code, "flow")
    };
    // Instance 1 claims by updating.
    assert_eq!(
        one(&mut s, 11, pf(OpCode::OpIncr, 1)).status,
        Status::Ok as i32
    );
    assert_eq!(
        one(&mut s, 12, pf(OpCode::OpIncr, 2)).status,
        Status::NotOwner as i32
    );
    // Instance 2 asks for it and waits.
    assert_eq!(
        one(&mut s, 12, pf(OpCode::OpAcquire, 2)).status,
        Status::Pending as i32
    );
    // Instance 1 releases: 2 is told, with the value.
    let out = run(&mut s, 11, vec![pf(OpCode::OpRelease, 1)]);
    assert_eq!(out.pushes.len(), 1);
    assert_eq!(out.pushes[0].0, 12);
    assert_eq!(out.pushes[0].1.kind, PushKind::PushHandover as i32);
    assert_eq!(out.pushes[0].1.value, Some(WV::int(1)));
    assert_eq!(
        one(&mut s, 12, pf(OpCode::OpIncr, 2)).value,
        Some(WV::int(2))
    );
    assert_eq!(
        one(&mut s, 11, pf(OpCode::OpIncr, 1)).status,
        Status::NotOwner as i32
    );
    // Failover: everything of instance 2 goes to instance 5.
    let mut re = pf(OpCode::OpReassignOwner, 5);
    re.num = 2;
    assert_eq!(one(&mut s, 1, re).value, Some(WV::int(1)));
    assert_eq!(
        one(&mut s, 15, pf(OpCode::OpIncr, 5)).value,
        Some(WV::int(3))
    );
}

#[test]
fn subscribers_get_updates_from_others_only() {
    let mut s = shard();
    one(&mut s, 1, op(OpCode::OpSubscribe, "cfg"));
    one(&mut s, 2, op(OpCode::OpSubscribe, "cfg"));
    let mut set = op(OpCode::OpSet, "cfg");
    set.val = Some(WV::int(4));
    let out = run(&mut s, 1, vec![set]);
    assert_eq!(out.pushes.len(), 1);
    assert_eq!(out.pushes[0].0, 2);
    assert_eq!(out.pushes[0].1.value, Some(WV::int(4)));
    s.disconnect(2);
    let out = run(&mut s, 1, vec![incr("cfg", 1)]);
    assert!(out.pushes.is_empty());
}

#[test]
fn nondeterministic_values_repeat_per_clock() {
    let mut s = shard();
    let nd = |clock, idx| wire::Op {
        code: OpCode::OpNondet as i32,
        vertex: 1,
        object: u32::from(NONDET_OBJECT),
        sub: Bytes::copy_from_slice(&u64::to_le_bytes(clock)),
        num: NONDET_RANDOM,
        clock,
        op_index: idx,
        ..Default::default()
    };
    let a = one(&mut s, 1, nd(5, 0)).value;
    let b = one(&mut s, 2, nd(5, 0)).value;
    let c = one(&mut s, 1, nd(5, 1)).value;
    assert_eq!(a, b);
    assert_ne!(a, c);
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 6;
    run(&mut s, 1, vec![r]);
    assert_eq!(
        s.map.len(),
        0,
        "retired non-deterministic values are dropped"
    );
}

#[test]
fn reads_of_shared_state_return_ts() {
    let mut s = shard();
    let mut a = incr("x", 1);
    a.seq = 4;
    a.clock = 40;
    run(&mut s, 7, vec![a]);
    let mut g = op(OpCode::OpGet, "x");
    g.flags = F_WANT_TS;
    let r = one(&mut s, 8, g);
    assert_eq!(
        r.ts,
        vec![wire::TsEntry {
            client: 7,
            seq: 4,
            clock: 40
        }],
        "only clients whose operations were applied appear"
    );
}

/// Everything the WAL records replays to the same state.
#[test]
fn wal_replay_reproduces_state() {
    let mut s = shard();
    s.set_durable(true);
    let mut ops = Vec::new();
    for i in 0..50u64 {
        let mut o = incr(&format!("k{}", i % 7), i as i64);
        o.seq = i + 1;
        o.clock = if i % 3 == 0 { i + 1 } else { 0 };
        ops.push(o);
    }
    let mut p = op(OpCode::OpPushBack, "list");
    p.val = Some(WV::bytes(&b"x"[..]));
    ops.push(p);
    let mut pf = incr("flow", 3);
    pf.per_flow = true;
    pf.instance = 4;
    ops.push(pf);
    let mut nd = op(OpCode::OpNondet, "nd");
    nd.num = NONDET_RANDOM;
    nd.clock = 77;
    ops.push(nd.clone());
    let nd_val = run(&mut s, 3, ops).replies.pop().unwrap().value;
    let (mut t, _) = replayed(&mut s);
    assert_eq!(dump(&s), dump(&t));
    assert_eq!(t.applied_seq(3), 50);
    // The non-deterministic value is the logged one, and still suppressed as a duplicate.
    let again = one(&mut t, 9, nd);
    assert!(again.duplicate);
    assert_eq!(again.value, nd_val);
}

/// A replayed packet reads the state as its first processing saw it.
#[test]
fn reads_as_of_a_clock() {
    let mut s = shard();
    // Before any logged update: the plain value.
    one(&mut s, 1, incr("x", 5));
    for (clock, by) in [(10u64, 1i64), (20, 10), (30, 100)] {
        let mut o = incr("x", by);
        o.clock = clock;
        one(&mut s, 1, o);
    }
    let get_as_of = |s: &mut Shard, clock| {
        let mut g = op(OpCode::OpGet, "x");
        g.clock = clock;
        g.flags = F_AS_OF;
        one(s, 2, g).value
    };
    assert_eq!(get_as_of(&mut s, 10), Some(WV::int(5)), "before clock 10");
    assert_eq!(get_as_of(&mut s, 15), Some(WV::int(6)));
    assert_eq!(get_as_of(&mut s, 20), Some(WV::int(6)));
    assert_eq!(get_as_of(&mut s, 31), Some(WV::int(116)));
    // Retiring clocks below 20 moves the base forward; reads at 20 still see 6.
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 20;
    run(&mut s, 1, vec![r]);
    assert_eq!(get_as_of(&mut s, 20), Some(WV::int(6)));
    assert_eq!(get_as_of(&mut s, 25), Some(WV::int(16)));
    // Within one packet, a read sees the packet's earlier updates and not its later ones.
    for (idx, by) in [(0u32, 1000i64), (1, 10_000)] {
        let mut o = incr("x", by);
        o.clock = 40;
        o.op_index = idx;
        one(&mut s, 1, o);
    }
    let mut g = op(OpCode::OpGet, "x");
    g.clock = 40;
    g.op_index = 1;
    g.flags = F_AS_OF;
    assert_eq!(one(&mut s, 2, g).value, Some(WV::int(1116)));
    // A plain read is the current value.
    assert_eq!(
        one(&mut s, 2, op(OpCode::OpGet, "x")).value,
        Some(WV::int(11116))
    );
}

/// Two copies of one packet read what the first read, even when an update of an earlier
/// clock from another instance lands between the two reads; the record goes with the clock.
#[test]
fn a_second_read_as_of_a_clock_sees_what_the_first_saw() {
    let mut s = shard();
    let read = |s: &mut Shard, clock: u64, instance: u32| {
        let mut g = op(OpCode::OpGet, "l");
        g.clock = clock;
        g.instance = instance;
        g.flags = F_AS_OF;
        one(s, 2, g)
    };
    let push = |clock: u64, instance: u32| {
        let mut o = op(OpCode::OpPushBack, "l");
        o.val = Some(WV::int(clock as i64));
        o.clock = clock;
        o.instance = instance;
        o
    };
    // Nothing there yet: the first copy of clock 30 finds nothing.
    assert_eq!(read(&mut s, 30, 1).status, Status::NotFound as i32);
    // Instance 2's update of clock 20 arrives late; a plain read sees it.
    one(&mut s, 3, push(20, 2));
    assert!(one(&mut s, 3, op(OpCode::OpGet, "l")).value.is_some());
    // The second copy of clock 30 still finds nothing, as the first did.
    assert_eq!(read(&mut s, 30, 1).status, Status::NotFound as i32);
    // Another clock reads the list as it is now.
    let r = read(&mut s, 31, 1);
    assert_eq!(r.status, Status::Ok as i32);
    let seen = r.value.clone();
    one(&mut s, 3, push(25, 2));
    assert_eq!(
        read(&mut s, 31, 1).value,
        seen,
        "a list read is repeated too"
    );
    // Retiring the clocks drops the read records: the entry holds the list alone.
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 40;
    run(&mut s, 1, vec![r]);
    assert_eq!(s.stats.logged_records, 0);
    let k = KeyRef {
        vertex: 1,
        object: 2,
        per_flow: false,
        sub: b"l",
    };
    assert!(s
        .map
        .get(&k)
        .and_then(|e| e.meta())
        .is_some_and(|m| !m.has_records()));
}

/// A per-flow increment of `sub` by `instance`, claiming the object if nobody owns it.
fn pf_incr(sub: &str, instance: u32, n: i64) -> wire::Op {
    wire::Op {
        per_flow: true,
        instance,
        ..incr(sub, n)
    }
}

fn release_many(instance: u32, subs: &[&str]) -> wire::Op {
    let mut keys = Vec::new();
    for s in subs {
        assert!(crate::key::packed::push(&mut keys, 2, s.as_bytes()));
    }
    wire::Op {
        code: OpCode::OpReleaseMany as i32,
        vertex: 1,
        per_flow: true,
        instance,
        val: Some(WV::bytes(keys)),
        ..Default::default()
    }
}

fn owner_of(s: &Shard, sub: &str) -> Option<u32> {
    let k = KeyRef {
        vertex: 1,
        object: 2,
        per_flow: true,
        sub: sub.as_bytes(),
    };
    s.map.get(&k).map(|e| s.owner_of(k, e))
}

/// A flow's state deleted by its owner is owned by nobody: the next flow with the same key may
/// be served by another instance (after a move that the old owner, no longer caching the key,
/// did not release it in), and the entry does not stay behind.
#[test]
fn a_deleted_per_flow_object_is_nobodys() {
    let mut s = shard();
    let pf = |code, inst: u32| wire::Op {
        per_flow: true,
        instance: inst,
        val: Some(WV::int(7)),
        ..op(code, "flow")
    };
    assert_eq!(
        one(&mut s, 11, pf(OpCode::OpSet, 1)).status,
        Status::Ok as i32
    );
    assert_eq!(owner_of(&s, "flow"), Some(2));
    assert_eq!(
        one(&mut s, 11, pf(OpCode::OpDel, 1)).status,
        Status::Ok as i32
    );
    assert_eq!(owner_of(&s, "flow"), None, "nothing left behind");
    assert_eq!(
        one(&mut s, 12, pf(OpCode::OpSet, 2)).status,
        Status::Ok as i32,
        "another instance takes the key"
    );
    assert_eq!(owner_of(&s, "flow"), Some(3));
    assert_eq!(
        one(&mut s, 11, pf(OpCode::OpSet, 1)).status,
        Status::NotOwner as i32
    );
}

/// Fig 3.7 steps 5-6 for many flows in one operation: a waiting instance is handed its
/// object with the value, the others become free, objects of other owners are left alone.
#[test]
fn release_many_hands_over_to_waiters_and_frees_the_rest() {
    let mut s = shard();
    for f in ["f1", "f2", "f3"] {
        assert_eq!(one(&mut s, 11, pf_incr(f, 1, 5)).status, Status::Ok as i32);
    }
    assert_eq!(
        one(&mut s, 13, pf_incr("g", 3, 9)).status,
        Status::Ok as i32
    );
    // Instance 2 waits for f2.
    let acq = wire::Op {
        per_flow: true,
        instance: 2,
        ..op(OpCode::OpAcquire, "f2")
    };
    assert_eq!(one(&mut s, 12, acq).status, Status::Pending as i32);
    let out = run(
        &mut s,
        11,
        vec![release_many(1, &["f1", "f2", "f3", "g", "missing"])],
    );
    assert_eq!(out.replies.len(), 1);
    assert_eq!(out.replies[0].status, Status::Ok as i32);
    assert_eq!(
        out.replies[0].value,
        Some(WV::int(3)),
        "f1, f2 and f3 changed owner; g is not instance 1's, `missing` does not exist"
    );
    assert_eq!(out.pushes.len(), 1, "one handover, to the one waiter");
    let (to, p) = &out.pushes[0];
    assert_eq!(*to, 12);
    assert_eq!(p.kind, PushKind::PushHandover as i32);
    assert_eq!((p.vertex, p.object, p.per_flow), (1, 2, true));
    assert_eq!(&p.sub[..], b"f2");
    assert_eq!(p.value, Some(WV::int(5)));
    assert_eq!(owner_of(&s, "f2"), Some(3), "instance 2 (+1) owns f2");
    assert_eq!(owner_of(&s, "f1"), Some(0));
    assert_eq!(owner_of(&s, "f3"), Some(0));
    assert_eq!(owner_of(&s, "g"), Some(4), "instance 3 keeps g");
    assert_eq!(owner_of(&s, "missing"), None, "nothing is created");
    // The old instance can no longer update what it released; the new owners can, and
    // they see every update made before the release.
    assert_eq!(
        one(&mut s, 11, pf_incr("f1", 1, 1)).status,
        Status::Ok as i32,
        "a free object is claimed by whoever updates it first"
    );
    assert_eq!(
        one(&mut s, 11, pf_incr("f2", 1, 1)).status,
        Status::NotOwner as i32
    );
    assert_eq!(one(&mut s, 12, pf_incr("f2", 2, 1)).value, Some(WV::int(6)));
    assert_eq!(one(&mut s, 14, pf_incr("f3", 4, 1)).value, Some(WV::int(6)));
    assert_eq!(s.waiting, 0);
}

/// A retransmitted release (same sequence number) is not applied again: it cannot take
/// away an object that changed hands since, nor hand it over twice.
#[test]
fn release_many_retransmission_is_not_applied_again() {
    let mut s = shard();
    let mut claim = pf_incr("f1", 1, 5);
    claim.seq = 1;
    let mut claim2 = pf_incr("f2", 1, 7);
    claim2.seq = 2;
    run(&mut s, 11, vec![claim, claim2]);
    let acq = wire::Op {
        per_flow: true,
        instance: 2,
        ..op(OpCode::OpAcquire, "f2")
    };
    assert_eq!(one(&mut s, 12, acq).status, Status::Pending as i32);
    let mut rel = release_many(1, &["f1", "f2"]);
    rel.seq = 3;
    rel.flags = F_NONBLOCKING;
    let out = run(&mut s, 11, vec![rel.clone()]);
    assert_eq!(out.acked, 3);
    assert_eq!(out.pushes.len(), 1);
    // Instance 5 takes f1 over; then the release arrives again.
    assert_eq!(one(&mut s, 15, pf_incr("f1", 5, 1)).value, Some(WV::int(6)));
    rel.flags |= OpFlag::FlagRetransmit as u32;
    let out = run(&mut s, 11, vec![rel]);
    assert_eq!(out.acked, 3);
    assert!(out.pushes.is_empty(), "no second handover");
    assert_eq!(owner_of(&s, "f1"), Some(6), "f1 stays instance 5's");
    assert_eq!(owner_of(&s, "f2"), Some(3), "f2 stays instance 2's");
    assert_eq!(s.stats.retransmits_ignored, 1);
    // Even applied again under a new sequence number, a release only concerns objects the
    // instance still owns.
    let out = run(&mut s, 11, vec![release_many(1, &["f1", "f2"])]);
    assert_eq!(out.replies[0].value, Some(WV::int(0)));
    assert_eq!(owner_of(&s, "f1"), Some(6));
    assert_eq!(owner_of(&s, "f2"), Some(3));
    assert_eq!(one(&mut s, 15, pf_incr("f1", 5, 1)).value, Some(WV::int(7)));
}

#[test]
fn a_malformed_release_list_is_refused_whole() {
    let mut s = shard();
    one(&mut s, 11, pf_incr("f1", 1, 5));
    let mut rel = release_many(1, &["f1"]);
    let Some(wire::value::Kind::Bytes(b)) = rel.val.as_ref().and_then(|v| v.kind.clone()) else {
        unreachable!()
    };
    // The list claims more key bytes than it has.
    let mut bad = b.to_vec();
    bad.extend_from_slice(&[0, 2, 0, 9, b'x']);
    rel.val = Some(WV::bytes(bad));
    let r = one(&mut s, 11, rel.clone());
    assert_eq!(r.status, Status::BadRequest as i32);
    assert_eq!(owner_of(&s, "f1"), Some(2), "nothing was released");
    rel.val = Some(WV::int(3));
    assert_eq!(one(&mut s, 11, rel).status, Status::BadRequest as i32);
    assert_eq!(owner_of(&s, "f1"), Some(2));
}

/// Replaying the WAL of bulk releases, some handed to waiters, gives the same owners and
/// values.
#[test]
fn release_many_replays_from_the_wal() {
    let mut s = shard();
    s.set_durable(true);
    let mut seq = 0;
    let mut next = |mut o: wire::Op| {
        seq += 1;
        o.seq = seq;
        o
    };
    let claims: Vec<_> = (0..20)
        .map(|i| next(pf_incr(&format!("f{i}"), 1, i)))
        .collect();
    run(&mut s, 11, claims);
    for (client, inst, f) in [(12, 2, "f3"), (13, 3, "f7"), (12, 2, "f0")] {
        let acq = wire::Op {
            per_flow: true,
            instance: inst,
            ..op(OpCode::OpAcquire, f)
        };
        assert_eq!(one(&mut s, client, acq).status, Status::Pending as i32);
    }
    let subs: Vec<String> = (0..15).map(|i| format!("f{i}")).collect();
    let subs: Vec<&str> = subs.iter().map(String::as_str).collect();
    let out = run(&mut s, 11, vec![next(release_many(1, &subs))]);
    assert_eq!(out.pushes.len(), 3);
    // Instance 4 claims a freed one afterwards.
    run(&mut s, 14, vec![pf_incr("f9", 4, 100)]);
    let (t, _) = replayed(&mut s);
    assert_eq!(dump(&s), dump(&t));
    assert_eq!(owner_of(&t, "f3"), Some(3));
    assert_eq!(owner_of(&t, "f7"), Some(4));
    assert_eq!(owner_of(&t, "f1"), Some(0));
    assert_eq!(owner_of(&t, "f9"), Some(5));
    assert_eq!(
        owner_of(&t, "f19"),
        Some(2),
        "not in the list: still instance 1's"
    );
    assert_eq!(t.applied_seq(11), 21);
}

/// Non-blocking increments of shared objects take a shorter path; it must mean the same:
/// same values, sequence numbers, refusals, callbacks and WAL as blocking increments.
#[test]
fn nonblocking_increments_match_the_general_path() {
    let (mut quick, mut general) = (shard(), shard());
    quick.set_durable(true);
    general.set_durable(true);
    for s in [&mut quick, &mut general] {
        let mut set = op(OpCode::OpSet, "text");
        set.val = Some(WV::bytes(&b"abc"[..]));
        let mut num = op(OpCode::OpSet, "num");
        num.val = Some(WV::bytes(&b"40"[..]));
        run(s, 1, vec![set, num, op(OpCode::OpSubscribe, "watched")]);
    }
    let subs = ["a", "b", "a", "text", "num", "watched", "a", "big", "big"];
    let ops = |nonblocking: bool| -> Vec<wire::Op> {
        subs.iter()
            .enumerate()
            .map(|(i, sub)| {
                let mut o = incr(
                    sub,
                    if *sub == "big" {
                        i64::MAX
                    } else {
                        i as i64 + 1
                    },
                );
                o.seq = i as u64 + 1;
                if nonblocking {
                    o.flags = F_NONBLOCKING;
                }
                o
            })
            .collect()
    };
    let q = run(&mut quick, 2, ops(true));
    let g = run(&mut general, 2, ops(false));
    assert!(q.replies.is_empty());
    assert_eq!(q.acked, 9);
    assert_eq!(quick.applied_seq(2), 9);
    assert_eq!(g.replies[3].status, Status::WrongType as i32);
    assert_eq!(g.replies[8].status, Status::Overflow as i32);
    // The subscriber (client 1) hears about the watched key on both paths.
    assert_eq!(q.pushes.len(), 1);
    assert_eq!(q.pushes[0].1.value, Some(WV::int(6)));
    assert_eq!(dump(&quick), dump(&general));
    let get = |s: &mut Shard, k| one(s, 3, op(OpCode::OpGet, k)).value;
    assert_eq!(get(&mut quick, "a"), Some(WV::int(1 + 3 + 7)));
    assert_eq!(get(&mut quick, "num"), Some(WV::int(45)));
    assert_eq!(get(&mut quick, "big"), Some(WV::int(i64::MAX)));
    // Its WAL holds the same records and replays to the same state.
    let replay = |s: &mut Shard| {
        let (t, recs) = replayed(s);
        let recs: Vec<_> = recs
            .into_iter()
            .map(|r| (r.client, r.seq, r.op.key.sub, r.op.num))
            .collect();
        (t, recs)
    };
    let (tq, rq) = replay(&mut quick);
    let (tg, rg) = replay(&mut general);
    assert_eq!(rq, rg);
    assert_eq!(dump(&tq), dump(&quick));
    assert_eq!(tq.applied_seq(2), tg.applied_seq(2));
    // Retransmitted, nothing is applied twice.
    let mut again = ops(true);
    for o in &mut again {
        o.flags |= OpFlag::FlagRetransmit as u32;
    }
    run(&mut quick, 2, again);
    assert_eq!(get(&mut quick, "a"), Some(WV::int(11)));
}

fn scan(instance: u32, limit: i64) -> wire::Op {
    wire::Op {
        code: OpCode::OpScanOwned as i32,
        vertex: 1,
        per_flow: true,
        instance,
        num: limit,
        ..Default::default()
    }
}

/// A replacement learns the newest clock its instance id left in the vertex's clock logs
/// (updates, reads as of a clock, shared or per-flow), not another instance's or vertex's
/// clocks, and not retired ones.
#[test]
fn scan_owned_reports_the_newest_clock_the_instance_logged() {
    let mut s = shard();
    let clocked = |mut o: wire::Op, clock: u64| {
        o.clock = clock;
        o
    };
    assert_eq!(
        one(&mut s, 11, scan(1, 0)).newest_clock,
        0,
        "nothing logged"
    );
    one(&mut s, 11, clocked(pf_incr("f1", 1, 1), 5));
    let shared = wire::Op {
        instance: 1,
        ..incr("shared", 1)
    };
    one(&mut s, 11, clocked(shared, 9));
    assert_eq!(one(&mut s, 11, scan(1, 0)).newest_clock, 9);
    // Another instance of the vertex, and another vertex, further on.
    one(&mut s, 12, clocked(pf_incr("g", 2, 1), 20));
    let other_vertex = wire::Op {
        vertex: 3,
        ..clocked(pf_incr("h", 1, 1), 30)
    };
    one(&mut s, 11, other_vertex);
    assert_eq!(one(&mut s, 11, scan(1, 0)).newest_clock, 9);
    assert_eq!(one(&mut s, 12, scan(2, 0)).newest_clock, 20);
    // A read as of a clock is logged too: a replay went that far.
    let mut g = clocked(op(OpCode::OpGet, "shared"), 12);
    g.flags = F_AS_OF;
    g.instance = 1;
    one(&mut s, 11, g);
    assert_eq!(one(&mut s, 11, scan(1, 0)).newest_clock, 12);
    // Retired clocks leave no trace; the limit does not hide the clock.
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 10;
    run(&mut s, 1, vec![r]);
    assert_eq!(one(&mut s, 11, scan(1, 0)).newest_clock, 12);
    let mut r = op(OpCode::OpRetireClocks, "");
    r.num = 13;
    run(&mut s, 1, vec![r]);
    assert_eq!(one(&mut s, 11, scan(1, 0)).newest_clock, 0);
    one(&mut s, 11, clocked(pf_incr("f2", 1, 1), 40));
    let r = one(&mut s, 11, scan(1, 1));
    assert_eq!(r.status, Status::Overflow as i32);
    assert_eq!(r.newest_clock, 40);
}

/// A replacement reads back exactly the per-flow objects its instance owns: not another
/// instance's, not another vertex's, not shared ones, not released ones.
#[test]
fn scan_owned_returns_the_instances_flows_and_nothing_else() {
    let mut s = shard();
    for f in ["f1", "f2", "f3"] {
        assert_eq!(one(&mut s, 11, pf_incr(f, 1, 5)).status, Status::Ok as i32);
    }
    assert_eq!(
        one(&mut s, 12, pf_incr("g", 2, 7)).status,
        Status::Ok as i32
    );
    let other_vertex = wire::Op {
        vertex: 3,
        ..pf_incr("h", 1, 1)
    };
    assert_eq!(one(&mut s, 11, other_vertex).status, Status::Ok as i32);
    assert_eq!(one(&mut s, 11, incr("shared", 1)).status, Status::Ok as i32);
    assert_eq!(
        one(&mut s, 11, release_many(1, &["f3"])).value,
        Some(WV::int(1))
    );
    let r = one(&mut s, 11, scan(1, 0));
    assert_eq!(r.status, Status::Ok as i32);
    let mut got: Vec<(u32, String, Option<WV>)> = r
        .owned
        .iter()
        .map(|o| {
            (
                o.object,
                String::from_utf8_lossy(&o.sub).into_owned(),
                o.value.clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        got,
        vec![
            (2, "f1".to_string(), Some(WV::int(5))),
            (2, "f2".to_string(), Some(WV::int(5))),
        ]
    );
    // Instance 2 has its own; an instance with none gets an empty list.
    assert_eq!(one(&mut s, 12, scan(2, 0)).owned.len(), 1);
    assert!(one(&mut s, 12, scan(7, 0)).owned.is_empty());
    // Past the byte limit: OVERFLOW and nothing, so the caller loads on demand instead.
    let r = one(&mut s, 11, scan(1, 12));
    assert_eq!(r.status, Status::Overflow as i32);
    assert!(r.owned.is_empty());
    // A vertex id that does not fit in 16 bits is a bad request, not a scan of vertex 0.
    let bad = wire::Op {
        vertex: 0x1_0001,
        ..scan(1, 0)
    };
    assert_eq!(one(&mut s, 11, bad).status, Status::BadRequest as i32);
}

/// One step of a random workload over a few keys and clients (see `layout_stays_settled`).
#[derive(Clone, Debug)]
enum Step {
    Quick(u8, i64),
    Clocked(u8, u64, u32, i64),
    SetInt(u8, i64),
    SetBytes(u8),
    Del(u8),
    Push(u8),
    Pop(u8),
    Subscribe(u8),
    Unsubscribe(u8),
    Acquire(u8),
    Release(u8),
    Retire(u64),
    Nondet(u8, u64),
    Disconnect,
    DirectIncr(u8, i64),
    DirectSet(u8),
    DirectPop(u8),
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let k = 0u8..4;
    prop_oneof![
        (k.clone(), -3i64..4).prop_map(|(k, n)| Step::Quick(k, n)),
        (k.clone(), 1u64..12, 0u32..2, -3i64..4).prop_map(|(k, c, i, n)| Step::Clocked(k, c, i, n)),
        (k.clone(), any::<i64>()).prop_map(|(k, n)| Step::SetInt(k, n)),
        k.clone().prop_map(Step::SetBytes),
        k.clone().prop_map(Step::Del),
        k.clone().prop_map(Step::Push),
        k.clone().prop_map(Step::Pop),
        k.clone().prop_map(Step::Subscribe),
        k.clone().prop_map(Step::Unsubscribe),
        k.clone().prop_map(Step::Acquire),
        k.clone().prop_map(Step::Release),
        (1u64..14).prop_map(Step::Retire),
        (k.clone(), 1u64..12).prop_map(|(k, c)| Step::Nondet(k, c)),
        Just(Step::Disconnect),
        (k.clone(), -3i64..4).prop_map(|(k, n)| Step::DirectIncr(k, n)),
        k.clone().prop_map(Step::DirectSet),
        k.prop_map(Step::DirectPop),
    ]
}

fn apply_step(s: &mut Shard, client: ClientId, st: &Step) {
    let name = |k: &u8| format!("k{k}");
    let nb = |mut o: wire::Op| {
        o.flags |= F_NONBLOCKING;
        o
    };
    let pf = |mut o: wire::Op| {
        o.per_flow = true;
        o.instance = client as u32;
        o
    };
    let direct_key = |sub: &str| {
        KeyRef {
            vertex: 1,
            object: 2,
            per_flow: false,
            sub: sub.as_bytes(),
        }
        .to_key()
    };
    let ops = match st {
        Step::Quick(k, n) => vec![nb(incr(&name(k), *n))],
        Step::Clocked(k, c, i, n) => {
            let mut o = pf(incr(&name(k), *n));
            o.clock = *c;
            o.op_index = *i;
            vec![o]
        }
        Step::SetInt(k, n) => vec![wire::Op {
            val: Some(WV::int(*n)),
            ..op(OpCode::OpSet, &name(k))
        }],
        Step::SetBytes(k) => vec![wire::Op {
            val: Some(WV::bytes(Bytes::from_static(b"7"))),
            ..op(OpCode::OpSet, &name(k))
        }],
        Step::Del(k) => vec![op(OpCode::OpDel, &name(k))],
        Step::Push(k) => vec![wire::Op {
            val: Some(WV::bytes(Bytes::from_static(b"i"))),
            ..op(OpCode::OpPushBack, &name(k))
        }],
        Step::Pop(k) => vec![op(OpCode::OpPopFront, &name(k))],
        Step::Subscribe(k) => vec![op(OpCode::OpSubscribe, &name(k))],
        Step::Unsubscribe(k) => vec![op(OpCode::OpUnsubscribe, &name(k))],
        Step::Acquire(k) => vec![pf(op(OpCode::OpAcquire, &name(k)))],
        Step::Release(k) => vec![pf(op(OpCode::OpRelease, &name(k)))],
        Step::Retire(w) => vec![wire::Op {
            num: *w as i64,
            ..op(OpCode::OpRetireClocks, "")
        }],
        Step::Nondet(k, c) => vec![wire::Op {
            vertex: 1,
            object: u32::from(NONDET_OBJECT),
            num: NONDET_RANDOM,
            clock: *c,
            ..op(OpCode::OpNondet, &name(k))
        }],
        Step::Disconnect => {
            s.disconnect(client);
            return;
        }
        Step::DirectIncr(k, n) => {
            let key = direct_key(&name(k));
            s.apply_direct(client, key.as_ref(), DirectOp::Incr(*n));
            return;
        }
        Step::DirectSet(k) => {
            let key = direct_key(&name(k));
            s.apply_direct(client, key.as_ref(), DirectOp::Set(b"x"));
            return;
        }
        Step::DirectPop(k) => {
            let key = direct_key(&name(k));
            s.apply_direct(client, key.as_ref(), DirectOp::PopFront);
            return;
        }
    };
    run(s, client, ops);
}

/// The checks `layout_stays_settled` makes after every step.
fn check_layout(s: &Shard) -> Result<(), proptest::test_runner::TestCaseError> {
    use proptest::prop_assert;
    let mut waiters = 0;
    for (k, e) in s.map.iter() {
        prop_assert!(
            e.is_settled(),
            "{k:?} is cold with nothing cold in it: {e:?}"
        );
        prop_assert!(!e.is_vacant(), "{k:?} is kept with nothing in it");
        waiters += e.meta().map_or(0, |m| m.waiters.len());
    }
    prop_assert!(
        s.waiting == waiters,
        "{} counted, {waiters} queued",
        s.waiting
    );
    Ok(())
}

proptest::proptest! {
    /// Whatever happens to an entry, its cold part exists exactly while it holds something the
    /// inline layout cannot (so the fast paths are taken again afterwards), no empty entry is
    /// kept, and the WAL rebuilds the same values and owners.
    #[test]
    fn layout_stays_settled(
        steps in proptest::collection::vec((1u64..4, step()), 1..60),
    ) {
        let mut s = shard();
        s.set_durable(true);
        for (client, st) in &steps {
            apply_step(&mut s, *client, st);
            check_layout(&s)?;
        }
        let (t, _) = replayed(&mut s);
        // Subscriptions and waits belong to connections and are not logged: only the entries
        // holding a value or an owner must come back.
        let durable = |s: &Shard| {
            let mut d = dump(s);
            d.retain(|(_, v, owner)| !v.is_nil() || *owner != 0);
            d
        };
        proptest::prop_assert_eq!(durable(&t), durable(&s));
    }
}

#[test]
fn entries_stay_small() {
    // The table's size is what random lookups pay for in cache misses (see `Entry`).
    assert_eq!(std::mem::size_of::<Entry>(), 16);
    assert_eq!(std::mem::size_of::<(Key, Entry)>(), 48);
}

/// Makes `s` write a WAL and send client 100 the commit notifications of root 0.
fn logging_with_commits(s: &mut Shard) {
    s.set_durable(true);
    let sub = wire::Op {
        code: OpCode::OpSubscribeCommits as i32,
        ..Default::default()
    };
    run(s, 100, vec![sub]);
}

/// An increment carrying further packets' increments (`more_clocks`) leaves the shard exactly
/// as the separate increments would: the same values, clock-log records (reads as of a clock),
/// duplicate suppression per clock, commit notifications, acknowledgement and WAL.
#[test]
fn folded_increments_match_separate_ones() {
    let (mut folded, mut separate) = (shard(), shard());
    let clocks: Vec<u64> = (1..=12).collect();
    let counted = |clock: u64, seq: u64| wire::Op {
        seq,
        clock,
        op_index: (clock % 3) as u32,
        instance: 3,
        flags: F_COUNTED | F_NONBLOCKING,
        ..incr("pkts", 2)
    };
    for s in [&mut folded, &mut separate] {
        logging_with_commits(s);
        // A clone already applied clock 5 (its replay got there first).
        run(s, 7, vec![counted(5, 1)]);
    }
    let mut carrier = counted(clocks[0], 1);
    carrier.more_clocks = clocks[1..].to_vec();
    carrier.more_op_index = clocks[1..].iter().map(|c| (c % 3) as u32).collect();
    let f = run(&mut folded, 2, vec![carrier.clone()]);
    let ops = clocks.iter().map(|&c| counted(c, c)).collect();
    let s = run(&mut separate, 2, ops);
    assert!(f.replies.is_empty() && s.replies.is_empty());
    let ids = |o: &Outputs| -> Vec<(u64, u32)> {
        o.commits.iter().map(|(_, c)| (c.clock, c.id)).collect()
    };
    assert_eq!(
        ids(&f).len(),
        11,
        "clock 5 was a duplicate: no second commit"
    );
    assert_eq!(ids(&f), ids(&s));
    assert_eq!(folded.stats.duplicates_suppressed, 1);
    assert_eq!(dump(&folded), dump(&separate));
    assert_eq!(dump(&folded)[0].1, Value::Int(24));
    // Every clock has its own record: a replay reads what each packet saw.
    for clock in [1, 5, 6, 12] {
        let as_of = |s: &mut Shard| {
            let mut g = op(OpCode::OpGet, "pkts");
            g.clock = clock;
            g.op_index = (clock % 3) as u32;
            g.flags = F_AS_OF;
            one(s, 9, g).value
        };
        assert_eq!(as_of(&mut folded), as_of(&mut separate), "as of {clock}");
    }
    // The whole carrier is one sequence number: sent again, nothing is applied twice.
    assert_eq!(f.acked, 1);
    carrier.flags |= OpFlag::FlagRetransmit as u32;
    run(&mut folded, 2, vec![carrier]);
    assert_eq!(dump(&folded)[0].1, Value::Int(24));
    // The WAL replays to the same state.
    let (t, _) = replayed(&mut folded);
    assert_eq!(dump(&t), dump(&folded));
}

/// Only clocked, non-blocking increments may carry more clocks; anything else is refused
/// whole and changes nothing.
#[test]
fn malformed_folded_operations_are_refused_whole() {
    let mut s = shard();
    let base = wire::Op {
        clock: 1,
        more_clocks: vec![2, 3],
        more_op_index: vec![0, 0],
        ..incr("pkts", 1)
    };
    let bad = [
        // Blocking: there would be one reply for three updates.
        base.clone(),
        wire::Op {
            flags: F_NONBLOCKING,
            more_op_index: vec![0],
            ..base.clone()
        },
        wire::Op {
            flags: F_NONBLOCKING,
            code: OpCode::OpSet as i32,
            ..base.clone()
        },
        wire::Op {
            flags: F_NONBLOCKING,
            more_clocks: vec![2, 0],
            ..base.clone()
        },
        wire::Op {
            flags: F_NONBLOCKING,
            clock: 0,
            ..base.clone()
        },
        // A run with a list.
        wire::Op {
            flags: F_NONBLOCKING,
            more_run: 2,
            ..base.clone()
        },
        // A run past its root's last clock.
        wire::Op {
            flags: F_NONBLOCKING,
            clock: (1 << crate::shard::ROOT_SHIFT) - 2,
            more_clocks: Vec::new(),
            more_op_index: Vec::new(),
            more_run: 2,
            ..base.clone()
        },
        // A run longer than any store keeps records for.
        wire::Op {
            flags: F_NONBLOCKING,
            more_clocks: Vec::new(),
            more_op_index: Vec::new(),
            more_run: u32::MAX,
            ..base.clone()
        },
        wire::Op {
            flags: F_NONBLOCKING,
            clock: u64::MAX - 1,
            more_clocks: Vec::new(),
            more_op_index: Vec::new(),
            more_run: 2,
            ..base.clone()
        },
    ];
    for (i, o) in bad.into_iter().enumerate() {
        let r = run(&mut s, 1, vec![o]);
        assert!(
            r.replies
                .iter()
                .all(|r| r.status == Status::BadRequest as i32),
            "case {i}"
        );
        assert_eq!(s.stats.bad_requests, i as u64 + 1, "case {i}");
    }
    assert!(dump(&s).is_empty(), "nothing was applied");
}

/// A write-ahead log torn between the records of one folded increment does not count the
/// operation as applied: the client sends it again, and the clocks that made it are not
/// applied twice.
#[test]
fn a_wal_torn_inside_a_folded_increment_has_it_sent_again() {
    let mut s = shard();
    s.set_durable(true);
    let carrier = wire::Op {
        seq: 1,
        clock: 10,
        more_clocks: vec![11, 12, 13],
        more_op_index: vec![0, 0, 0],
        instance: 3,
        flags: F_COUNTED | F_NONBLOCKING,
        ..incr("pkts", 1)
    };
    run(&mut s, 2, vec![carrier.clone()]);
    assert_eq!(s.applied_seq(2), 1);
    let mut wal = Vec::new();
    s.take_wal(&mut wal);
    let mut r = chc_proto::records::FrameReader::new(&wal);
    let recs: Vec<_> = std::iter::from_fn(|| r.next_wal()).collect();
    assert_eq!(recs.len(), 4, "one record per clock");
    // Only the first two records survived.
    let mut t = shard();
    for rec in &recs[..2] {
        t.replay_wal_record(rec);
    }
    assert_eq!(t.applied_seq(2), 0, "the operation is not complete");
    run(&mut t, 2, vec![carrier]);
    assert_eq!(t.applied_seq(2), 1);
    assert_eq!(dump(&t), dump(&s));
    assert_eq!(dump(&t)[0].1, Value::Int(4));
    assert_eq!(t.stats.duplicates_suppressed, 2);
    // The whole log replays to the operation applied.
    let mut u = shard();
    for rec in &recs {
        u.replay_wal_record(rec);
    }
    assert_eq!(u.applied_seq(2), 1);
    assert_eq!(dump(&u), dump(&s));
}

/// One step of [`folded_and_separate_increments_agree`]: increments of one counter for the
/// packets with these (clock, op index) pairs, in this order, by `instance`; or something
/// that sends a folded increment down the general path (a subscriber, a value that is not an
/// integer).
#[derive(Clone, Debug)]
enum FoldStep {
    Incr {
        clocks: Vec<(u64, u32)>,
        num: i64,
        instance: u32,
    },
    /// The same for a run of consecutive clocks with one op index (`Op.more_run`).
    Run {
        first: u64,
        more: u32,
        op_index: u32,
        num: i64,
        instance: u32,
    },
    Subscribe,
    SetBytes,
    /// Clocks below this are retired (the log may empty, and the next logged update starts
    /// it again from the value then).
    Retire(u64),
}

fn fold_step() -> impl proptest::strategy::Strategy<Value = FoldStep> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (
            proptest::collection::vec((1u64..40, 0u32..3), 1..8),
            prop_oneof![Just(1i64), Just(-2), Just(i64::MAX / 4)],
            3u32..5,
        )
            .prop_map(|(clocks, num, instance)| FoldStep::Incr {
                clocks,
                num,
                instance
            }),
        4 => (
            1u64..40,
            1u32..8,
            0u32..3,
            prop_oneof![Just(1i64), Just(-2), Just(i64::MAX / 4)],
            3u32..5,
        )
            .prop_map(|(first, more, op_index, num, instance)| FoldStep::Run {
                first,
                more,
                op_index,
                num,
                instance
            }),
        1 => Just(FoldStep::Subscribe),
        1 => Just(FoldStep::SetBytes),
        2 => (1u64..40).prop_map(FoldStep::Retire),
    ]
}

proptest::proptest! {
    /// A folded increment, whether the shard takes its quick path (clocks in order, newer than
    /// the log) or the general one (duplicates, clocks out of order, a subscriber, a byte
    /// string, an overflow), leaves the shard as the same increments sent one by one: values,
    /// commits, counts, what reads as of each clock return, and what the WAL rebuilds.
    #[test]
    fn folded_and_separate_increments_agree(
        steps in proptest::collection::vec(fold_step(), 1..30),
    ) {
        use proptest::prop_assert_eq;
        let (mut folded, mut separate) = (shard(), shard());
        let mut seq = (0u64, 0u64);
        let mut seen = Vec::new();
        for s in [&mut folded, &mut separate] {
            logging_with_commits(s);
            // The counter exists before the first packet's increment.
            run(s, 2, vec![incr("pkts", 5)]);
        }
        for st in &steps {
            let (f, s) = match st {
                FoldStep::Incr { clocks, num, instance } => {
                    let counted = |(clock, op_index): (u64, u32), seq: u64| wire::Op {
                        seq,
                        clock,
                        op_index,
                        instance: *instance,
                        flags: F_COUNTED | F_NONBLOCKING,
                        ..incr("pkts", *num)
                    };
                    seen.extend(clocks.iter().copied());
                    seq.0 += 1;
                    let mut carrier = counted(clocks[0], seq.0);
                    carrier.more_clocks = clocks[1..].iter().map(|c| c.0).collect();
                    carrier.more_op_index = clocks[1..].iter().map(|c| c.1).collect();
                    let ops = clocks
                        .iter()
                        .map(|&c| {
                            seq.1 += 1;
                            counted(c, seq.1)
                        })
                        .collect();
                    (run(&mut folded, 2, vec![carrier]), run(&mut separate, 2, ops))
                }
                FoldStep::Run { first, more, op_index, num, instance } => {
                    let counted = |clock: u64, seq: u64| wire::Op {
                        seq,
                        clock,
                        op_index: *op_index,
                        instance: *instance,
                        flags: F_COUNTED | F_NONBLOCKING,
                        ..incr("pkts", *num)
                    };
                    let clocks = *first..=*first + u64::from(*more);
                    seen.extend(clocks.clone().map(|c| (c, *op_index)));
                    seq.0 += 1;
                    let carrier = wire::Op {
                        more_run: *more,
                        ..counted(*first, seq.0)
                    };
                    let ops = clocks
                        .map(|c| {
                            seq.1 += 1;
                            counted(c, seq.1)
                        })
                        .collect();
                    (run(&mut folded, 2, vec![carrier]), run(&mut separate, 2, ops))
                }
                FoldStep::Subscribe => {
                    let o = op(OpCode::OpSubscribe, "pkts");
                    (run(&mut folded, 5, vec![o.clone()]), run(&mut separate, 5, vec![o]))
                }
                FoldStep::SetBytes => {
                    let mut o = op(OpCode::OpSet, "pkts");
                    o.val = Some(WV::bytes(Bytes::from_static(b"7")));
                    (run(&mut folded, 6, vec![o.clone()]), run(&mut separate, 6, vec![o]))
                }
                FoldStep::Retire(wm) => {
                    let mut o = op(OpCode::OpRetireClocks, "");
                    o.num = *wm as i64;
                    (run(&mut folded, 100, vec![o.clone()]), run(&mut separate, 100, vec![o]))
                }
            };
            // A run's one commit stands for the commit of each of its clocks.
            let commits = |o: &Outputs| -> Vec<(ClientId, u64, u32)> {
                o.commits
                    .iter()
                    .flat_map(|(to, c)| c.clocks().map(move |k| (*to, k, c.id)))
                    .collect()
            };
            prop_assert_eq!(commits(&f), commits(&s));
            let pushes = |o: &Outputs| -> Vec<(ClientId, Option<WV>)> {
                o.pushes.iter().map(|(to, p)| (*to, p.value.clone())).collect()
            };
            prop_assert_eq!(pushes(&f), pushes(&s));
            prop_assert_eq!(dump(&folded), dump(&separate));
        }
        let counts = |s: &Shard| {
            (s.stats.ops, s.stats.updates, s.stats.logged_records, s.stats.duplicates_suppressed)
        };
        prop_assert_eq!(counts(&folded), counts(&separate));
        for (clock, op_index) in seen {
            let as_of = |s: &mut Shard| {
                let mut g = op(OpCode::OpGet, "pkts");
                g.clock = clock;
                g.op_index = op_index;
                g.flags = F_AS_OF;
                one(s, 9, g).value
            };
            prop_assert_eq!(as_of(&mut folded), as_of(&mut separate), "as of {}", clock);
        }
        // Subscriptions belong to connections and are not logged.
        let durable = |s: &Shard| {
            let mut d = dump(s);
            d.retain(|(_, v, _)| !v.is_nil());
            d
        };
        let (a, _) = replayed(&mut folded);
        let (b, _) = replayed(&mut separate);
        prop_assert_eq!(durable(&a), durable(&b));
        prop_assert_eq!(durable(&a), durable(&folded));
    }
}

/// The ids of one packet's updates must not cancel in the root's XOR: none is 0, and over
/// every vertex, instance, object and index a small chain uses, no two are equal (the old
/// `instance << 16 | object` rotated by the index made, for one, a load balancer's update
/// of object 1 at index 1 equal to its update of object 2 at index 0).
#[test]
fn update_ids_are_distinct_and_never_zero() {
    let mut seen = std::collections::HashSet::new();
    for vertex in 0..8u16 {
        for instance in 0..8u16 {
            for object in 0..16u16 {
                for idx in 0..16u32 {
                    let id = update_id(vertex, instance, object, idx);
                    assert_ne!(id, 0);
                    assert!(
                        seen.insert(id),
                        "{vertex} {instance} {object} {idx}: id {id:#x} taken"
                    );
                }
            }
        }
    }
    assert_ne!(update_id(3, 0, 1, 1), update_id(3, 0, 2, 0));
    assert_ne!(update_id(2, 0, 1, 0), update_id(3, 0, 1, 0));
}
