//! Duplicate suppression at scale: a million updates, each arriving more than once, none applied
//! twice.
//!
//! Two kinds of duplicates reach a shard. Retransmissions: the client library sends an
//! unacknowledged operation again with the same sequence number (here after a simulated
//! reconnection, interleaved with new operations). Clock-log duplicates: a clone or a failover
//! instance replays the packet, so the same (clock, op_index) arrives from another client with
//! another sequence number. Every update adds a distinct power-of-two-free amount to its key,
//! so any double apply shows up in the final sums.

mod common;

use bytes::Bytes;
use chc_proto::wire::{self, OpCode, OpFlag};
use chc_store::custom::CustomOps;
use chc_store::names::Names;
use chc_store::shard::{Outputs, Shard};
use chc_store::KeyRef;
use std::sync::Arc;

const UPDATES: u64 = 1_000_000;
const KEYS: u64 = 1000;
const BATCH: u64 = 64;

fn update(j: u64) -> wire::Op {
    wire::Op {
        code: OpCode::OpIncr as i32,
        vertex: 3,
        object: 1,
        sub: Bytes::copy_from_slice(&(j % KEYS).to_be_bytes()),
        num: (j % 7 + 1) as i64,
        // One packet per update; root 1.
        clock: 1 << 48 | (j + 1),
        instance: 2,
        op_index: 0,
        flags: OpFlag::FlagCounted as u32,
        ..Default::default()
    }
}

#[test]
fn a_million_retried_updates_are_applied_once_each() {
    let names = Arc::new(parking_lot::RwLock::new(Names::default()));
    let mut s = Shard::new(0, 1, CustomOps::builtin(), names);
    s.set_durable(true);
    let (nf, clone) = (10u64, 11u64);
    let mut out = Outputs::default();
    let mut expect = vec![0i64; KEYS as usize];
    let mut dups_sent = 0u64;
    let mut retransmits_sent = 0u64;
    let mut wal = Vec::new();
    let mut prev: Vec<wire::Op> = Vec::new();
    for b in 0..UPDATES / BATCH {
        let batch: Vec<wire::Op> = (b * BATCH..(b + 1) * BATCH)
            .map(|j| {
                expect[(j % KEYS) as usize] += (j % 7 + 1) as i64;
                wire::Op {
                    seq: j + 1,
                    ..update(j)
                }
            })
            .collect();
        // The previous batch again (a resend after a lost acknowledgement), then this one.
        let mut resent: Vec<wire::Op> = prev
            .iter()
            .cloned()
            .map(|mut o| {
                o.flags |= OpFlag::FlagRetransmit as u32;
                o
            })
            .collect();
        retransmits_sent += resent.len() as u64;
        resent.extend(batch.iter().cloned());
        out.clear();
        s.apply_batch(nf, &resent, 0, &mut out);
        assert_eq!(out.acked, (b + 1) * BATCH);
        // A clone replays this batch's packets: same clocks and op indexes, its own seqs.
        let replay: Vec<wire::Op> = batch
            .iter()
            .map(|o| wire::Op {
                seq: o.seq,
                flags: o.flags | OpFlag::FlagReplay as u32,
                ..o.clone()
            })
            .collect();
        dups_sent += replay.len() as u64;
        out.clear();
        s.apply_batch(clone, &replay, 0, &mut out);
        for r in &out.replies {
            assert!(r.duplicate, "a replayed update must be recognised");
        }
        prev = batch;
        // The root retires clocks now and then; what is still in flight stays logged.
        if b % 1024 == 1023 {
            let retire = wire::Op {
                code: OpCode::OpRetireClocks as i32,
                instance: 1,
                num: (1 << 48 | (b * BATCH)) as i64,
                ..Default::default()
            };
            out.clear();
            s.apply_batch(99, &[retire], 0, &mut out);
        }
        s.take_wal(&mut wal);
    }
    for k in 0..KEYS {
        let key = k.to_be_bytes();
        let v = s
            .get(KeyRef {
                vertex: 3,
                object: 1,
                per_flow: false,
                sub: &key,
            })
            .map(|e| e.value().into_owned());
        assert_eq!(
            v,
            Some(chc_store::Value::Int(expect[k as usize])),
            "key {k}: every update applied exactly once"
        );
    }
    assert_eq!(
        s.stats.updates - s.stats.duplicates_suppressed,
        UPDATES,
        "only originals change state"
    );
    assert_eq!(s.stats.duplicates_suppressed, dups_sent);
    assert_eq!(s.stats.retransmits_ignored, retransmits_sent);
    // The log holds one record per original update, so recovery cannot double-apply either.
    let mut r = chc_proto::records::FrameReader::new(&wal);
    let mut n = 0u64;
    while let Some(rec) = r.next_wal() {
        if rec.op.code == OpCode::OpIncr as i32 {
            n += 1;
        }
    }
    assert_eq!(n, UPDATES);
}

/// The same over real sockets: a client reconnects and resends everything it sent, flagged as
/// retransmissions; the shard reports where it got to and applies nothing twice.
#[test]
fn retransmissions_after_a_reconnection_are_not_reapplied() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::Proc::start(dir.path(), &["--fsync", "everysec"]);
    let client = 77;
    let mut sent = Vec::new();
    let mut c = common::Native::connect(p.native, client, 0, "").unwrap();
    for b in 0..200u64 {
        let ops: Vec<wire::Op> = (0..50)
            .map(|i| common::incr(&format!("k{}", (b * 50 + i) % 13), 1, true))
            .collect();
        let first = c.send_ops(ops.clone()).unwrap();
        for (i, mut o) in ops.into_iter().enumerate() {
            o.seq = first + i as u64;
            sent.push(o);
        }
    }
    c.wait_acked().unwrap();
    drop(c);
    let mut c = common::Native::connect(p.native, client, 0, "").unwrap();
    assert_eq!(
        c.acked, 10_000,
        "the Hello reply says how far the shard got"
    );
    for chunk in sent.chunks(500) {
        let ops: Vec<wire::Op> = chunk
            .iter()
            .cloned()
            .map(|mut o| {
                o.flags |= OpFlag::FlagRetransmit as u32;
                o
            })
            .collect();
        c.send_frame(&wire::ClientFrame { hello: None, ops })
            .unwrap();
    }
    // One new blocking update behind the resends: once it is answered, they were processed.
    c.send_ops(vec![common::incr("sentinel", 1, false)])
        .unwrap();
    let replies = c.wait_acked().unwrap();
    assert_eq!(
        replies.last().and_then(|r| r.value.clone()),
        Some(wire::Value::int(1))
    );
    let mut r = common::Resp::connect(p.resp);
    let total: i64 = (0..13).map(|k| r.get_int(&format!("k{k}"))).sum();
    assert_eq!(total, 10_000, "10 000 updates sent twice, applied once");
}
