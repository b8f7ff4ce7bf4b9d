//! Ownership released by bucket (`OP_RELEASE_BUCKETS`) must mean what releasing each object
//! of those buckets one by one (`OP_RELEASE_MANY`) means.

use super::tests::{one, shard};
use super::*;
use crate::bucket::{key_bucket, BucketSet, Buckets, Split};
use chc_proto::wire::Value as WV;
use proptest::prelude::*;

/// The store key of flow `i`: an IPv4 five-tuple.
fn flow(i: u16) -> Vec<u8> {
    let mut k = vec![6, 10, 0, (i >> 8) as u8, i as u8, 192, 168, 1, 1];
    k.extend_from_slice(&(40000 + i).to_be_bytes());
    k.extend_from_slice(&80u16.to_be_bytes());
    k
}

fn bucket_of(i: u16) -> usize {
    key_bucket(KeyKind::FiveTuple, &flow(i), Split::Flow).unwrap()
}

fn key(sub: &[u8]) -> KeyRef<'_> {
    KeyRef {
        vertex: 1,
        object: 2,
        per_flow: true,
        sub,
    }
}

fn incr(i: u16, instance: u32, n: i64) -> wire::Op {
    wire::Op {
        code: OpCode::OpIncr as i32,
        vertex: 1,
        object: 2,
        per_flow: true,
        sub: Bytes::from(flow(i)),
        instance,
        num: n,
        ..Default::default()
    }
}

fn del(i: u16, instance: u32) -> wire::Op {
    wire::Op {
        code: OpCode::OpDel as i32,
        ..incr(i, instance, 0)
    }
}

fn buckets(code: OpCode, instance: u32, set: BucketSet) -> wire::Op {
    let b = Buckets {
        split: Split::Flow,
        kinds: vec![(2, KeyKind::FiveTuple)],
        set,
    };
    wire::Op {
        code: code as i32,
        vertex: 1,
        per_flow: true,
        instance,
        val: Some(WV::bytes(b.encode())),
        ..Default::default()
    }
}

fn release_many(instance: u32, flows: impl Iterator<Item = u16>) -> wire::Op {
    let mut keys = Vec::new();
    for i in flows {
        assert!(crate::key::packed::push(&mut keys, 2, &flow(i)));
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

fn owner(s: &Shard, i: u16) -> Option<u32> {
    let f = flow(i);
    s.map.get(&key(&f)).map(|e| s.owner_of(key(&f), e))
}

/// What an instance of the chain can see: each stored flow's value and owner (entries with
/// nothing in them are left out: a release one by one removes them at once, a release by
/// bucket when they are next touched).
fn visible(s: &Shard) -> Vec<(Vec<u8>, Value, u32)> {
    let mut v: Vec<_> = s
        .map
        .iter()
        .map(|(k, e)| {
            (
                k.sub.as_slice().to_vec(),
                e.value().into_owned(),
                s.owner_of(k.as_ref(), e),
            )
        })
        .filter(|(_, v, o)| !(v.is_nil() && *o == 0))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_bucket_release_frees_exactly_the_buckets_objects() {
    let mut s = shard();
    for i in 0..200 {
        assert_eq!(one(&mut s, 11, incr(i, 1, 1)).status, Status::Ok as i32);
    }
    let moved = |i: u16| bucket_of(i).is_multiple_of(2);
    let set = BucketSet::from_fn(|b| b % 2 == 0);
    let r = one(&mut s, 11, buckets(OpCode::OpReleaseBuckets, 1, set));
    assert_eq!(r.status, Status::Ok as i32);
    let n_moved = (0..200).filter(|&i| moved(i)).count();
    assert!(n_moved > 50 && n_moved < 150, "{n_moved}");
    for i in 0..200 {
        assert_eq!(owner(&s, i), Some(if moved(i) { 0 } else { 2 }), "flow {i}");
    }
    // The new owner takes a moved flow, with its value; the rest stays refused to it.
    let m = (0..200).find(|&i| moved(i)).unwrap();
    let kept = (0..200).find(|&i| !moved(i)).unwrap();
    let r = one(&mut s, 12, incr(m, 2, 10));
    assert_eq!((r.status, r.value), (Status::Ok as i32, Some(WV::int(11))));
    assert_eq!(owner(&s, m), Some(3));
    assert_eq!(
        one(&mut s, 12, incr(kept, 2, 1)).status,
        Status::NotOwner as i32
    );
    // The old owner's scan no longer lists the moved flows.
    let scan = wire::Op {
        code: OpCode::OpScanOwned as i32,
        vertex: 1,
        instance: 1,
        ..Default::default()
    };
    let r = one(&mut s, 11, scan);
    assert_eq!(r.owned.len(), 200 - n_moved);
    // A checkpoint's snapshot sees the releases.
    s.set_durable(true);
    let want: std::collections::HashMap<Vec<u8>, u32> = (0..200)
        .map(|i| {
            (
                flow(i),
                if i == m {
                    3
                } else if moved(i) {
                    0
                } else {
                    2
                },
            )
        })
        .collect();
    let delta = s.full_delta();
    assert_eq!(delta.len(), 200);
    for (k, e) in delta {
        let e = e.expect("every flow holds a value");
        assert_eq!(Some(&e.owner), want.get(k.sub.as_slice()));
    }
    assert!(
        s.released.is_empty(),
        "the snapshot brought every slot up to date"
    );
}

#[test]
fn taking_buckets_back_returns_what_nobody_took() {
    let mut s = shard();
    for i in 0..100 {
        one(&mut s, 11, incr(i, 1, 1));
    }
    let all = BucketSet::from_fn(|_| true);
    one(
        &mut s,
        11,
        buckets(OpCode::OpReleaseBuckets, 1, all.clone()),
    );
    one(&mut s, 12, incr(7, 2, 1));
    one(&mut s, 11, buckets(OpCode::OpAcquireBuckets, 1, all));
    assert_eq!(owner(&s, 7), Some(3), "taken by instance 2 meanwhile");
    assert_eq!(owner(&s, 8), Some(2));
    assert_eq!(one(&mut s, 11, incr(8, 1, 1)).status, Status::Ok as i32);
    assert_eq!(
        one(&mut s, 11, incr(7, 1, 1)).status,
        Status::NotOwner as i32
    );
}

#[test]
fn an_owner_acting_on_a_bucket_it_gave_up_claims_the_object_for_good() {
    let mut s = shard();
    for i in 0..50 {
        one(&mut s, 11, incr(i, 1, 1));
    }
    one(
        &mut s,
        11,
        buckets(OpCode::OpReleaseBuckets, 1, BucketSet::from_fn(|_| true)),
    );
    assert_eq!(one(&mut s, 11, incr(3, 1, 1)).status, Status::Ok as i32);
    assert_eq!(owner(&s, 3), Some(2));
    assert_eq!(owner(&s, 4), Some(0));
    assert_eq!(
        one(&mut s, 12, incr(3, 2, 1)).status,
        Status::NotOwner as i32
    );
    assert_eq!(one(&mut s, 12, incr(4, 2, 1)).status, Status::Ok as i32);
}

#[test]
fn a_waiter_is_handed_its_object_at_a_bucket_release() {
    let mut s = shard();
    for i in 0..20 {
        one(&mut s, 11, incr(i, 1, 1));
    }
    let acq = wire::Op {
        code: OpCode::OpAcquire as i32,
        ..incr(5, 2, 0)
    };
    assert_eq!(one(&mut s, 12, acq).status, Status::Pending as i32);
    let mut out = Outputs::default();
    let rel = buckets(OpCode::OpReleaseBuckets, 1, BucketSet::from_fn(|_| true));
    s.apply_batch(11, &[rel], 42, &mut out);
    assert_eq!(out.pushes.len(), 1);
    assert_eq!(out.pushes[0].0, 12);
    assert_eq!(owner(&s, 5), Some(3));
    assert_eq!(owner(&s, 6), Some(0));
}

#[test]
fn malformed_bucket_requests_are_refused() {
    let mut s = shard();
    one(&mut s, 11, incr(1, 1, 1));
    for val in [None, Some(WV::bytes(vec![0, 1, 2])), Some(WV::int(3))] {
        let o = wire::Op {
            val,
            ..buckets(OpCode::OpReleaseBuckets, 1, BucketSet::default())
        };
        assert_eq!(one(&mut s, 11, o).status, Status::BadRequest as i32);
    }
    assert_eq!(owner(&s, 1), Some(2));
}

#[test]
fn bucket_releases_replay_from_the_wal() {
    let mut s = shard();
    s.set_durable(true);
    let mut seq = 0;
    let mut next = |mut o: wire::Op| {
        seq += 1;
        o.seq = seq;
        o
    };
    for i in 0..60 {
        one(&mut s, 11, next(incr(i, 1, 1)));
    }
    let set = BucketSet::from_fn(|b| b % 3 == 0);
    one(
        &mut s,
        11,
        next(buckets(OpCode::OpReleaseBuckets, 1, set.clone())),
    );
    let m = (0..60).find(|&i| bucket_of(i).is_multiple_of(3)).unwrap();
    one(&mut s, 12, incr(m, 2, 5));
    one(
        &mut s,
        11,
        next(buckets(
            OpCode::OpAcquireBuckets,
            1,
            BucketSet::from_fn(|b| b % 6 == 0),
        )),
    );
    let (t, _) = super::tests::replayed(&mut s);
    assert_eq!(visible(&s), visible(&t));
    assert_eq!(owner(&t, m), Some(3));
}

#[derive(Clone, Debug)]
enum Step {
    Incr(u16, u32),
    Del(u16, u32),
    Acquire(u16, u32),
    Release(u32, Vec<bool>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u16..24, 0u32..3).prop_map(|(f, i)| Step::Incr(f, i)),
        1 => (0u16..24, 0u32..3).prop_map(|(f, i)| Step::Del(f, i)),
        1 => (0u16..24, 0u32..3).prop_map(|(f, i)| Step::Acquire(f, i)),
        1 => (0u32..3, proptest::collection::vec(any::<bool>(), 8)).prop_map(|(i, m)| Step::Release(i, m)),
    ]
}

proptest! {
    /// Any mix of claims, updates, deletes, waits for ownership and releases: releasing whole buckets leaves every
    /// instance seeing what releasing each of the buckets' objects would.
    #[test]
    fn releasing_by_bucket_is_releasing_each_object(steps in proptest::collection::vec(step(), 1..80)) {
        let (mut lazy, mut eager) = (shard(), shard());
        for st in steps {
            let release = matches!(st, Step::Release(..));
            let (a, b) = match st {
                Step::Incr(f, i) => (one(&mut lazy, 10 + u64::from(i), incr(f, i, 1)), one(&mut eager, 10 + u64::from(i), incr(f, i, 1))),
                Step::Del(f, i) => (one(&mut lazy, 10 + u64::from(i), del(f, i)), one(&mut eager, 10 + u64::from(i), del(f, i))),
                Step::Acquire(f, i) => {
                    let acq = || wire::Op { code: OpCode::OpAcquire as i32, ..incr(f, i, 0) };
                    (one(&mut lazy, 10 + u64::from(i), acq()), one(&mut eager, 10 + u64::from(i), acq()))
                }
                Step::Release(i, mask) => {
                    // Buckets picked by their low bits, so that several flows share them.
                    let set = BucketSet::from_fn(|b| mask[b % 8]);
                    let flows = (0..24).filter(|&f| mask[bucket_of(f) % 8]);
                    (
                        one(&mut lazy, 10 + u64::from(i), buckets(OpCode::OpReleaseBuckets, i, set)),
                        one(&mut eager, 10 + u64::from(i), release_many(i, flows)),
                    )
                }
            };
            prop_assert_eq!(a.status, b.status);
            if !release {
                prop_assert_eq!(a.value, b.value);
            }
            prop_assert_eq!(visible(&lazy), visible(&eager));
        }
    }
}
