//! An object's clock log: the results of its updates whose clocks are still in flight.
//!
//! Records are looked up by (clock, op index): a duplicate update finds its logged result,
//! and a read "as of" a clock finds the value the newest earlier update left. Each issuing
//! instance's updates arrive in the order it sent them, which is its clock order, but the
//! instances sharing an object run at different points of the clock sequence: one that lags
//! by a few thousand packets would insert each record that far from the end of a single
//! sorted log, moving every record after it. So the log keeps one sorted run per instance:
//! an update is appended to its instance's run, and a lookup searches the (few) runs.

use super::LogRec;
use crate::value::Value;
use std::collections::VecDeque;

/// The run of records restored from a checkpoint, whose issuers are not recorded.
const RESTORED: u32 = u32::MAX;

#[derive(Debug)]
struct Run {
    instance: u32,
    /// Sorted by (clock, op_index).
    recs: VecDeque<LogRec>,
}

impl Run {
    /// Index of the first record not before (clock, op_index).
    fn position(&self, clock: u64, op_index: u32) -> usize {
        // Updates mostly come in clock order: one newer than the newest record needs no
        // search through the thousands a shared counter can hold.
        match self.recs.back() {
            None => 0,
            Some(b) if (b.clock, b.op_index) < (clock, op_index) => self.recs.len(),
            Some(_) => self
                .recs
                .partition_point(|r| (r.clock, r.op_index) < (clock, op_index)),
        }
    }
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ClockLog {
    runs: Vec<Run>,
    len: usize,
}

/// What [`ClockLog::retire`] removed.
pub struct Retired {
    pub removed: usize,
    /// The `after` value of the newest removed record, if any was removed.
    pub newest_after: Option<Option<Value>>,
}

impl ClockLog {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The record of update `op_index` of clock `clock`, whoever issued it (a replacement
    /// instance replays its predecessor's clocks).
    pub fn find(&self, clock: u64, op_index: u32) -> Option<&LogRec> {
        self.runs.iter().find_map(|run| {
            run.recs
                .get(run.position(clock, op_index))
                .filter(|r| r.clock == clock && r.op_index == op_index)
        })
    }

    /// The (clock, op index) of the newest record, whoever issued it.
    pub fn newest(&self) -> Option<(u64, u32)> {
        self.runs
            .iter()
            .filter_map(|run| run.recs.back().map(|r| (r.clock, r.op_index)))
            .max()
    }

    /// The newest clock that `instance` logged here, counting records restored from a
    /// checkpoint (their issuer is unknown) as possibly its own.
    pub fn newest_of(&self, instance: u32) -> Option<u64> {
        self.runs
            .iter()
            .filter(|run| run.instance == instance || run.instance == RESTORED)
            .filter_map(|run| run.recs.back().map(|r| r.clock))
            .max()
    }

    /// The newest record before (clock, op_index) in clock order.
    pub fn before(&self, clock: u64, op_index: u32) -> Option<&LogRec> {
        self.runs
            .iter()
            .filter_map(|run| match run.position(clock, op_index) {
                0 => None,
                i => run.recs.get(i - 1),
            })
            .max_by_key(|r| (r.clock, r.op_index))
    }

    /// Logs an update issued by `instance`.
    pub fn insert(&mut self, instance: u32, rec: LogRec) {
        self.len += 1;
        let run = match self.runs.iter().position(|r| r.instance == instance) {
            Some(i) => &mut self.runs[i],
            None => {
                self.runs.push(Run {
                    instance,
                    recs: VecDeque::new(),
                });
                self.runs.last_mut().expect("just pushed")
            }
        };
        let i = run.position(rec.clock, rec.op_index);
        if i == run.recs.len() {
            run.recs.push_back(rec);
        } else {
            run.recs.insert(i, rec);
        }
    }

    /// Logs a record read back from a checkpoint.
    pub fn insert_restored(&mut self, rec: LogRec) {
        self.insert(RESTORED, rec);
    }

    /// Every record, in (clock, op index) order.
    pub fn sorted(&self) -> Vec<&LogRec> {
        let mut all: Vec<&LogRec> = self.runs.iter().flat_map(|r| r.recs.iter()).collect();
        all.sort_by_key(|r| (r.clock, r.op_index));
        all
    }

    /// Removes the records whose clocks are retired.
    pub fn retire(
        &mut self,
        retired: impl Fn(u64) -> bool,
        root_of: impl Fn(u64) -> u16,
    ) -> Retired {
        let mut removed = 0;
        let mut newest: Option<(u64, u32, Option<Value>)> = None;
        let note = |r: &LogRec, newest: &mut Option<(u64, u32, Option<Value>)>| {
            if newest
                .as_ref()
                .is_none_or(|(c, i, _)| (*c, *i) < (r.clock, r.op_index))
            {
                *newest = Some((r.clock, r.op_index, r.after.clone()));
            }
        };
        for run in &mut self.runs {
            let before = run.recs.len();
            let one_root = match (run.recs.front(), run.recs.back()) {
                (Some(a), Some(b)) => root_of(a.clock) == root_of(b.clock),
                _ => true,
            };
            if one_root {
                // A run is in clock order, so its retired records are a prefix: found by
                // bisection, removed without touching the rest.
                let n = run.recs.partition_point(|r| retired(r.clock));
                if n > 0 {
                    note(&run.recs[n - 1], &mut newest);
                    run.recs.drain(..n);
                }
            } else {
                // Clocks of several roots (a root failed over): retired records anywhere.
                if let Some(last) = run.recs.iter().rev().find(|r| retired(r.clock)) {
                    note(last, &mut newest);
                }
                run.recs.retain(|r| !retired(r.clock));
            }
            removed += before - run.recs.len();
        }
        self.runs.retain(|r| !r.recs.is_empty());
        self.len -= removed;
        Retired {
            removed,
            newest_after: newest.map(|(_, _, after)| after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(clock: u64, op_index: u32) -> LogRec {
        LogRec {
            clock,
            op_index,
            status: 0,
            result: Value::Int(clock as i64),
            after: Some(Value::Int(clock as i64 * 10 + i64::from(op_index))),
        }
    }

    proptest! {
        /// Whatever the interleaving of instances, lookups answer as one sorted log would.
        #[test]
        fn runs_answer_like_one_sorted_log(
            ops in prop::collection::vec((0u32..3, 1u64..400, 0u32..2), 1..300),
            probes in prop::collection::vec((1u64..420, 0u32..2), 1..50),
            watermark in 1u64..420,
        ) {
            let mut log = ClockLog::default();
            let mut model: Vec<(u64, u32)> = Vec::new();
            for (inst, clock, idx) in ops {
                if model.contains(&(clock, idx)) {
                    continue; // the store never logs a (clock, op) twice
                }
                log.insert(inst, rec(clock, idx));
                model.push((clock, idx));
            }
            model.sort();
            prop_assert_eq!(log.len(), model.len());
            let sorted: Vec<(u64, u32)> = log.sorted().iter().map(|r| (r.clock, r.op_index)).collect();
            prop_assert_eq!(&sorted, &model);
            for (c, i) in probes {
                prop_assert_eq!(log.find(c, i).map(|r| (r.clock, r.op_index)),
                    model.iter().copied().find(|&k| k == (c, i)));
                prop_assert_eq!(log.before(c, i).map(|r| (r.clock, r.op_index)),
                    model.iter().copied().filter(|&k| k < (c, i)).max());
            }
            let gone = log.retire(|c| c < watermark, |_| 0);
            let expect_gone: Vec<(u64, u32)> = model.iter().copied().filter(|k| k.0 < watermark).collect();
            prop_assert_eq!(gone.removed, expect_gone.len());
            prop_assert_eq!(
                gone.newest_after,
                expect_gone.last().map(|&(c, i)| Some(Value::Int(c as i64 * 10 + i64::from(i))))
            );
            prop_assert_eq!(log.len(), model.len() - expect_gone.len());
            prop_assert!(log.sorted().iter().all(|r| r.clock >= watermark));
        }
    }

    #[test]
    fn a_lagging_instance_does_not_move_the_leaders_records() {
        let mut log = ClockLog::default();
        for c in 1000..5000 {
            log.insert(1, rec(c, 0));
        }
        for c in 1..1000 {
            log.insert(2, rec(c, 0));
        }
        // Each instance's records stay in their own run, appended at its end.
        assert_eq!(log.runs.len(), 2);
        assert_eq!(log.runs[0].recs.len(), 4000);
        assert_eq!(log.before(1000, 0).map(|r| r.clock), Some(999));
        assert_eq!(log.find(4999, 0).map(|r| r.clock), Some(4999));
    }
}
