//! A handover by bucket (`OP_RELEASE_BUCKETS`) survives a crash of the store process: the
//! released objects stay released after a restart from the write-ahead log, and after one from
//! a checkpoint taken since, while the objects of the other buckets stay their owner's.

mod common;

use bytes::Bytes;
use chc_proto::wire::{self, OpCode, Status};
use chc_store::bucket::{key_bucket, BucketSet, Buckets, Split};
use chc_store::names::KeyKind;
use common::{Native, Proc, Reply, Resp};
use std::time::Duration;

const FLOWS: u16 = 300;

fn flow(i: u16) -> Vec<u8> {
    let mut k = vec![6, 10, 9, (i >> 8) as u8, i as u8, 172, 16, 0, 1];
    k.extend_from_slice(&(30000 + i).to_be_bytes());
    k.extend_from_slice(&443u16.to_be_bytes());
    k
}

fn moved(i: u16) -> bool {
    key_bucket(KeyKind::FiveTuple, &flow(i), Split::Flow)
        .unwrap()
        .is_multiple_of(2)
}

fn incr(i: u16, instance: u32) -> wire::Op {
    wire::Op {
        code: OpCode::OpIncr as i32,
        vertex: 1,
        object: 2,
        per_flow: true,
        sub: Bytes::from(flow(i)),
        instance,
        num: 1,
        ..Default::default()
    }
}

/// How many per-flow keys of vertex 1 the store shows as owned by nobody and by instance 1.
fn owners(p: &Proc) -> (usize, usize) {
    let mut r = Resp::connect(p.resp);
    let count = |r: &mut Resp, pat: &str| match r.cmd(&["KEYS", pat]) {
        Reply::Array(a) => a.len(),
        other => panic!("KEYS {pat}: {other:?}"),
    };
    (count(&mut r, "v1:i-:*"), count(&mut r, "v1:i1:*"))
}

#[test]
fn bucket_releases_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--shards",
        "1",
        "--fsync",
        "always",
        "--checkpoint-ms",
        "50",
    ];
    let n_moved = (0..FLOWS).filter(|&i| moved(i)).count();
    assert!(n_moved > 100 && n_moved < 200, "{n_moved}");
    let p = Proc::start(dir.path(), &args);
    let mut a = Native::connect(p.native, 0xB0C1, 0, "").unwrap();
    a.send_ops((0..FLOWS).map(|i| incr(i, 1)).collect())
        .unwrap();
    a.wait_acked().unwrap();
    let req = Buckets {
        split: Split::Flow,
        kinds: vec![(2, KeyKind::FiveTuple)],
        set: BucketSet::from_fn(|b| b.is_multiple_of(2)),
    };
    let release = wire::Op {
        code: OpCode::OpReleaseBuckets as i32,
        vertex: 1,
        per_flow: true,
        instance: 1,
        val: Some(wire::Value::bytes(req.encode())),
        ..Default::default()
    };
    a.send_ops(vec![release]).unwrap();
    a.wait_acked().unwrap();
    let want = (n_moved, usize::from(FLOWS) - n_moved);
    assert_eq!(owners(&p), want);
    // Killed right after: the release is in the log, maybe not in a checkpoint.
    p.kill9();
    let p = Proc::start(dir.path(), &args);
    assert_eq!(owners(&p), want, "after a restart from the log");
    // Instance 2 takes one moved flow; then checkpoints are taken, and the store killed again.
    let m = (0..FLOWS).find(|&i| moved(i)).unwrap();
    let mut b = Native::connect(p.native, 0xB0C2, 0, "").unwrap();
    b.send_ops(vec![incr(m, 2)]).unwrap();
    b.wait_acked().unwrap();
    let claimed = std::time::SystemTime::now();
    let ckpt = chc_store::checkpoint::path(dir.path(), 0);
    let written_since = || {
        std::fs::metadata(&ckpt)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > claimed)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !written_since() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(written_since(), "no checkpoint was written after the claim");
    p.kill9();
    let p = Proc::start(dir.path(), &args);
    assert_eq!(
        owners(&p),
        (want.0 - 1, want.1),
        "after a restart from a checkpoint"
    );
    // Instance 2 may take every moved flow, with its value, and none of the others.
    let mut b = Native::connect(p.native, 0xB0C2, 0, "").unwrap();
    for i in 0..FLOWS {
        let mut op = incr(i, 2);
        op.seq = b.next_seq;
        b.next_seq += 1;
        b.send_frame(&wire::ClientFrame {
            hello: None,
            ops: vec![op],
        })
        .unwrap();
        let f = b.read_frame().unwrap();
        let r = &f.replies[0];
        if moved(i) {
            assert_eq!(r.status, Status::Ok as i32, "flow {i}");
            assert_eq!(r.value, Some(wire::Value::int(if i == m { 3 } else { 2 })));
        } else {
            assert_eq!(r.status, Status::NotOwner as i32, "flow {i}");
        }
    }
}
