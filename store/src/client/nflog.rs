//! The NF-side log of shared-state operations, and store recovery from it (Fig 3.10).
//!
//! Each instance records, in issue order, every update it sends for a cross-flow object and
//! every read of one together with the TS the store returned (for each client, the last
//! sequence number the shard had applied). When a store process fails and restarts from an
//! older state (its last checkpoint, or a WAL that lost its unsynced tail), shared state is
//! rolled forward from these logs:
//!
//! 1. For each object, the candidates are the recovered store (with its TS) and every logged
//!    read of the object (value + TS). The most recent read before the crash must stay true,
//!    so the candidate with the latest TS is selected by the paper's rule: walk each
//!    instance's log backwards to its latest update that is the last-applied one of some
//!    candidate TS, and drop the candidates that disagree.
//! 2. The object starts from the selected candidate's value, and every logged update after
//!    that candidate's TS is re-executed. The store's clock log suppresses those it already
//!    had, and updates after the last read may run in any order (Theorem A.3.5.2).
//!
//! TS values are per-client sequence numbers rather than clocks: an instance's operations on
//! one shard are applied in issue order, so "applied up to seq s" is exact even when packets
//! reach the instance out of clock order.

use super::ops::ObjKey;
use crate::shard::ClientId;
use crate::value::Value;
use chc_proto::wire::{self, OpFlag};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A logged read of a shared object.
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedRead {
    pub shard: u32,
    pub key: ObjKey,
    pub value: Value,
    pub ts: Vec<wire::TsEntry>,
}

/// A logged update (with the sequence number it was sent with).
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedUpdate {
    pub shard: u32,
    pub op: wire::Op,
}

/// One instance's log.
#[derive(Debug)]
pub struct NfLog {
    updates: VecDeque<LoggedUpdate>,
    reads: VecDeque<LoggedRead>,
    limit: usize,
    /// Entries were dropped to respect the limit: recovery cannot be exact.
    pub overflowed: bool,
}

impl Default for NfLog {
    fn default() -> Self {
        NfLog {
            updates: VecDeque::new(),
            reads: VecDeque::new(),
            limit: 4 << 20,
            overflowed: false,
        }
    }
}

impl NfLog {
    pub fn with_limit(limit: usize) -> Self {
        NfLog {
            limit,
            ..Default::default()
        }
    }

    pub fn record_update(&mut self, shard: u32, op: wire::Op) {
        if self.updates.len() >= self.limit {
            self.updates.pop_front();
            self.overflowed = true;
        }
        self.updates.push_back(LoggedUpdate { shard, op });
    }

    pub fn record_read(&mut self, shard: u32, key: ObjKey, value: Value, ts: Vec<wire::TsEntry>) {
        if self.reads.len() >= self.limit {
            self.reads.pop_front();
            self.overflowed = true;
        }
        self.reads.push_back(LoggedRead {
            shard,
            key,
            value,
            ts,
        });
    }

    pub fn updates(&self) -> impl DoubleEndedIterator<Item = &LoggedUpdate> {
        self.updates.iter()
    }

    pub fn reads(&self) -> impl Iterator<Item = &LoggedRead> {
        self.reads.iter()
    }

    pub fn len(&self) -> usize {
        self.updates.len() + self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets what a durable checkpoint with TS `ts` of `shard` covers for client `me`.
    pub fn trim(&mut self, shard: u32, me: ClientId, ts: &[wire::TsEntry]) {
        let upto = seq_in(ts, me);
        self.updates.retain(|u| u.shard != shard || u.op.seq > upto);
        self.reads
            .retain(|r| r.shard != shard || !dominates(ts, &r.ts));
    }
}

fn seq_in(ts: &[wire::TsEntry], client: ClientId) -> u64 {
    ts.iter().find(|t| t.client == client).map_or(0, |t| t.seq)
}

/// `a` is at least `b` for every client.
fn dominates(a: &[wire::TsEntry], b: &[wire::TsEntry]) -> bool {
    b.iter().all(|t| seq_in(a, t.client) >= t.seq)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecoveryError {
    #[error("the NF log of client {0} overflowed: shared state cannot be recovered exactly")]
    Overflowed(ClientId),
    #[error("reads of {key:?} carry TSs that no single store history explains")]
    Inconsistent { key: ObjKey },
}

/// What to do to one recovered shard.
#[derive(Debug, Default, PartialEq)]
pub struct RecoveryPlan {
    /// Objects to set to a value some instance read (their most recent read).
    pub restores: Vec<(ObjKey, Value)>,
    /// Updates to re-execute, in order, each with the client that issued it.
    pub ops: Vec<(ClientId, wire::Op)>,
}

/// Plans the roll-forward of `shard` whose recovered TS is `store_ts`, from the logs of the
/// instances that used it.
pub fn plan_recovery(
    shard: u32,
    store_ts: &[wire::TsEntry],
    logs: &[(ClientId, &NfLog)],
) -> Result<RecoveryPlan, RecoveryError> {
    for (c, l) in logs {
        if l.overflowed {
            return Err(RecoveryError::Overflowed(*c));
        }
    }
    // Keys touched on this shard, in a stable order.
    let mut keys: BTreeMap<(u16, u16, bool, Vec<u8>), ObjKey> = BTreeMap::new();
    let id = |k: &ObjKey| (k.vertex, k.object, k.per_flow, k.sub.to_vec());
    for (_, l) in logs {
        for u in l.updates().filter(|u| u.shard == shard) {
            let k = key_of(&u.op);
            keys.entry(id(&k)).or_insert(k);
        }
        for r in l.reads().filter(|r| r.shard == shard) {
            keys.entry(id(&r.key)).or_insert_with(|| r.key.clone());
        }
    }
    let mut plan = RecoveryPlan::default();
    let mut replay: Vec<(u64, ClientId, u64, wire::Op)> = Vec::new();
    for (_, key) in keys {
        // Candidates: the store itself (None) and each read of this key.
        let mut cands: Vec<(Vec<wire::TsEntry>, Option<Value>)> = vec![(store_ts.to_vec(), None)];
        for (_, l) in logs {
            for r in l.reads().filter(|r| r.shard == shard && r.key == key) {
                cands.push((r.ts.clone(), Some(r.value.clone())));
            }
        }
        let chosen = select_ts(&cands, logs, shard)
            .ok_or_else(|| RecoveryError::Inconsistent { key: key.clone() })?;
        let (ts, value) = &cands[chosen];
        if let Some(v) = value {
            plan.restores.push((key.clone(), v.clone()));
        }
        for (c, l) in logs {
            let after = seq_in(ts, *c);
            for u in l.updates().filter(|u| u.shard == shard && u.op.seq > after) {
                if key_of(&u.op) == key {
                    let mut op = u.op.clone();
                    op.flags |= OpFlag::FlagReplay as u32;
                    replay.push((op.clock, *c, op.seq, op));
                }
            }
        }
    }
    // Any order is a valid one after the last read; clock order mirrors arrival.
    replay.sort_by_key(|(clock, c, seq, _)| (*clock, *c, *seq));
    plan.ops = replay.into_iter().map(|(_, c, _, op)| (c, op)).collect();
    Ok(plan)
}

fn key_of(op: &wire::Op) -> ObjKey {
    ObjKey {
        vertex: op.vertex as u16,
        object: op.object as u16,
        per_flow: op.per_flow,
        sub: op.sub.clone(),
    }
}

/// The paper's TS selection: returns the index of the most recent candidate.
///
/// For each instance, walk its updates on this shard backwards to the latest one that is the
/// last-applied update of some candidate, and drop the candidates whose entry for that
/// instance differs (they were taken earlier). Candidates that never mention an instance
/// count as "nothing applied" for it. The survivors must agree; if the survivors do not
/// dominate every candidate the histories are inconsistent.
fn select_ts(
    cands: &[(Vec<wire::TsEntry>, Option<Value>)],
    logs: &[(ClientId, &NfLog)],
    shard: u32,
) -> Option<usize> {
    let mut alive: Vec<usize> = (0..cands.len()).collect();
    for (c, l) in logs {
        let seqs: HashMap<usize, u64> = alive
            .iter()
            .map(|&i| (i, seq_in(&cands[i].0, *c)))
            .collect();
        let latest = l
            .updates()
            .filter(|u| u.shard == shard)
            .map(|u| u.op.seq)
            .rev()
            .find(|s| seqs.values().any(|v| v == s));
        if let Some(s) = latest {
            alive.retain(|i| seqs[i] == s);
        }
    }
    // Prefer a read over the store when they describe the same point: the read's value is
    // what an instance saw.
    let best = alive
        .iter()
        .copied()
        .max_by_key(|&i| (cands[i].1.is_some(), std::cmp::Reverse(i)))?;
    cands
        .iter()
        .all(|(ts, _)| dominates(&cands[best].0, ts))
        .then_some(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ts(v: &[(u64, u64)]) -> Vec<wire::TsEntry> {
        v.iter()
            .map(|&(client, seq)| wire::TsEntry {
                client,
                seq,
                clock: seq * 10,
            })
            .collect()
    }

    fn upd(seq: u64, clock: u64) -> wire::Op {
        let mut op = ObjKey::shared(1, 1, Bytes::from_static(b"S")).incr(1);
        op.seq = seq;
        op.clock = clock;
        op
    }

    /// The scenario of Fig 3.10: four instances, a checkpoint, then reads R18 (by I3) and
    /// R19 (by I4, earlier in store order than R18 despite its clock), with updates before and
    /// after them. The selected TS must be R18's.
    #[test]
    fn fig_3_10_selects_the_most_recent_read() {
        // Per-client seqs stand in for the figure's clocks: I1 applied up to its seq 1 (U15)
        // at R18, I2 up to 1, I3 up to 1, I4 up to 2.
        let (i1, i2, i3, i4) = (1u64, 2u64, 3u64, 4u64);
        let mut l1 = NfLog::default();
        l1.record_update(0, upd(1, 15));
        l1.record_update(0, upd(2, 35));
        let mut l2 = NfLog::default();
        l2.record_update(0, upd(1, 12));
        let mut l3 = NfLog::default();
        l3.record_update(0, upd(1, 14));
        l3.record_update(0, upd(2, 23));
        let mut l4 = NfLog::default();
        l4.record_update(0, upd(1, 11));
        l4.record_update(0, upd(2, 17));
        l4.record_update(0, upd(3, 32));
        let key = ObjKey::shared(1, 1, Bytes::from_static(b"S"));
        // R19 happened before U15 was applied and before I4's second update.
        l4.record_read(
            0,
            key.clone(),
            Value::Int(3),
            ts(&[(i2, 1), (i3, 1), (i4, 1)]),
        );
        // R18 is the most recent read.
        l3.record_read(
            0,
            key.clone(),
            Value::Int(5),
            ts(&[(i1, 1), (i2, 1), (i3, 1), (i4, 2)]),
        );
        // The store came back from a checkpoint older than both reads.
        let store = ts(&[(i2, 1), (i4, 1)]);
        let logs = [(i1, &l1), (i2, &l2), (i3, &l3), (i4, &l4)];
        let plan = plan_recovery(0, &store, &logs).unwrap();
        assert_eq!(plan.restores, vec![(key, Value::Int(5))]);
        // Re-executed: what came after R18's TS: I1's U35, I3's U23, I4's U32.
        let got: Vec<(u64, u64)> = plan.ops.iter().map(|(c, o)| (*c, o.clock)).collect();
        assert_eq!(got, vec![(i3, 23), (i4, 32), (i1, 35)]);
        assert!(plan
            .ops
            .iter()
            .all(|(_, o)| o.flags & OpFlag::FlagReplay as u32 != 0));
    }

    #[test]
    fn without_reads_everything_after_the_store_ts_is_replayed() {
        let mut l = NfLog::default();
        for s in 1..=5 {
            l.record_update(0, upd(s, s));
        }
        l.record_update(1, upd(6, 6));
        let plan = plan_recovery(0, &ts(&[(7, 3)]), &[(7, &l)]).unwrap();
        assert!(plan.restores.is_empty());
        assert_eq!(
            plan.ops.iter().map(|(_, o)| o.seq).collect::<Vec<_>>(),
            vec![4, 5],
            "only this shard's updates after seq 3"
        );
    }

    #[test]
    fn a_store_newer_than_every_read_wins() {
        let mut l = NfLog::default();
        l.record_update(0, upd(1, 1));
        let key = ObjKey::shared(1, 1, Bytes::from_static(b"S"));
        l.record_read(0, key, Value::Int(1), ts(&[(7, 1)]));
        l.record_update(0, upd(2, 2));
        let plan = plan_recovery(0, &ts(&[(7, 2)]), &[(7, &l)]).unwrap();
        assert!(plan.restores.is_empty());
        assert!(plan.ops.is_empty());
    }

    #[test]
    fn trimming_and_overflow() {
        let mut l = NfLog::with_limit(3);
        for s in 1..=3 {
            l.record_update(0, upd(s, s));
        }
        l.trim(0, 7, &ts(&[(7, 2)]));
        assert_eq!(l.updates().map(|u| u.op.seq).collect::<Vec<_>>(), vec![3]);
        for s in 4..=7 {
            l.record_update(0, upd(s, s));
        }
        assert!(l.overflowed);
        assert_eq!(
            plan_recovery(0, &[], &[(7, &l)]),
            Err(RecoveryError::Overflowed(7))
        );
    }
}
