//! One container's CFS bandwidth state with Iron's refill algorithms (Figs 2.7 and 2.8).
//!
//! Ported to Linux 6.12 semantics: the global pool is refilled by `runtime += quota` and capped
//! at `quota + burst`, and Iron's charges can drive it below zero, so the pool is signed here
//! (the kernel keeps the negative part in a separate `iron_debt` field because its `runtime` is
//! unsigned). `gained` is the credit a container earned by processing others' packets.

use crate::Ns;

/// A container's global bandwidth pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bandwidth {
    pub quota: Ns,
    pub period: Ns,
    pub burst: Ns,
    /// Global runtime left in this period; negative is debt from network charges.
    runtime: i64,
    /// Credit earned for work done on behalf of other containers (Fig 2.7/2.8 `gained`).
    gained: Ns,
    /// Whether the container asked for runtime since the last refill (CFS's `idle` flag,
    /// inverted): a container limited by its own demand gets no carry-over.
    asked: bool,
    pub stats: Stats,
}

/// Running totals, for the invariants and for `cpu.iron.stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Network time charged (positive `cpuusage` merged).
    pub charged: Ns,
    /// Credit earned (negative `cpuusage` merged).
    pub credited: Ns,
    /// Runtime handed out that came from `gained` (local refill corner case and global refill).
    pub from_credit: Ns,
    /// Credit spent to offset charges.
    pub credit_offset: Ns,
    /// Credit dropped because the container idled through a period.
    pub credit_forfeited: Ns,
    /// Runtime handed out in total.
    pub granted: Ns,
    /// Number of refills that found the pool exhausted (throttles).
    pub throttles: u64,
}

impl Bandwidth {
    /// A container with `quota` ns per `period` ns and no burst; the pool starts full.
    pub fn new(quota: Ns, period: Ns) -> Self {
        Self::with_burst(quota, period, 0)
    }

    pub fn with_burst(quota: Ns, period: Ns, burst: Ns) -> Self {
        Bandwidth {
            quota,
            period,
            burst,
            runtime: quota as i64,
            gained: 0,
            asked: false,
            stats: Stats::default(),
        }
    }

    pub fn runtime(&self) -> i64 {
        self.runtime
    }

    pub fn gained(&self) -> Ns {
        self.gained
    }

    /// Throttled: no global runtime and no credit to draw on, so a local refill yields nothing.
    pub fn throttled(&self) -> bool {
        self.runtime <= 0 && self.gained == 0
    }

    /// Global refill at the end of a period (Fig 2.7, with 6.12's cap at quota + burst).
    /// Returns the runtime available for the new period.
    pub fn refill_global(&mut self) -> i64 {
        let idled = !self.asked;
        let cap = (self.quota + self.burst) as i64;
        if idled {
            // Lines 5-7: a container limited by its own demand keeps nothing; its credit may
            // still pay off debt, and the rest is forfeited rather than carried over.
            if self.runtime < 0 {
                let pay = self.gained.min(self.runtime.unsigned_abs());
                self.runtime += pay as i64;
                self.stats.credit_offset += pay;
                self.gained -= pay;
            }
            self.stats.credit_forfeited += self.gained;
            self.gained = 0;
            self.runtime = self.runtime.min(0);
            self.runtime = (self.runtime + self.quota as i64).min(cap);
        } else {
            // Line 8 first, then lines 1-4: credits become runtime up to the 6.12 cap; what
            // does not fit stays in `gained` for the local refill (lines 14-18) to hand out,
            // instead of being cut off by the cap.
            self.runtime = (self.runtime + self.quota as i64).min(cap);
            let room = (cap - self.runtime).max(0) as Ns;
            let used = self.gained.min(room);
            self.runtime += used as i64;
            self.gained -= used;
            self.stats.from_credit += used;
        }
        self.asked = false;
        self.runtime
    }

    /// Merges pending usage into the pool (Fig 2.8 lines 3-13): a charge is paid from credit
    /// first and the rest from runtime (possibly into debt); a credit adds to `gained`. The
    /// kernel does this in the local refill and, for containers that did not run, in the period
    /// timer before the global refill.
    pub fn merge(&mut self, cpuusage: i64) {
        if cpuusage > 0 {
            let c = cpuusage as Ns;
            self.stats.charged += c;
            if c > self.gained {
                self.stats.credit_offset += self.gained;
                self.runtime -= (c - self.gained) as i64;
                self.gained = 0;
            } else {
                self.stats.credit_offset += c;
                self.gained -= c;
            }
        } else if cpuusage < 0 {
            let c = cpuusage.unsigned_abs();
            self.stats.credited += c;
            self.gained += c;
        }
    }

    /// Local refill (Fig 2.8), called under the bandwidth lock when a CPU's local runtime
    /// `rt_remain` has run out. `cpuusage` is the container's merged pending usage from the
    /// [`crate::accounting::Ledger`] (positive: charge, negative: credit). Returns the amount
    /// added to the CPU's local runtime; zero means the container is throttled on that CPU.
    pub fn refill_local(&mut self, cpuusage: i64, rt_remain: i64, slice: Ns) -> Ns {
        self.asked = true;
        let mut amount: Ns = 0;
        let min_amount = (slice as i64 - rt_remain).max(0) as Ns;
        self.merge(cpuusage);
        // Lines 14-18: pool empty but credit earned: use it.
        if self.runtime == 0 && self.gained > 0 {
            let refill = min_amount.min(self.gained);
            self.runtime = refill as i64;
            self.gained -= refill;
            self.stats.from_credit += refill;
        }
        // Lines 19-22: the unchanged CFS path.
        if self.runtime > 0 {
            amount = (self.runtime as Ns).min(min_amount);
            self.runtime -= amount as i64;
        }
        if amount == 0 && min_amount > 0 {
            self.stats.throttles += 1;
        }
        self.stats.granted += amount;
        amount
    }

    /// Remaining runtime as a fraction of quota, in percent (negative when in debt); used by
    /// early drop.
    pub fn remaining_pct(&self) -> f64 {
        if self.quota == 0 {
            return 0.0;
        }
        (self.runtime + self.gained as i64) as f64 * 100.0 / self.quota as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Ns = 1_000_000;

    #[test]
    fn charges_become_debt_that_shrinks_the_next_refill() {
        let mut b = Bandwidth::new(10 * MS, 100 * MS);
        assert_eq!(b.refill_local(0, 0, 5 * MS), 5 * MS);
        // 12 ms of network time charged: pool 5 ms -> -7 ms.
        assert_eq!(b.refill_local(12 * MS as i64, 0, 5 * MS), 0);
        assert_eq!(b.runtime(), -7 * MS as i64);
        assert!(b.throttled());
        assert_eq!(b.refill_global(), 3 * MS as i64);
    }

    #[test]
    fn credit_refills_an_empty_pool() {
        let mut b = Bandwidth::new(10 * MS, 100 * MS);
        assert_eq!(b.refill_local(0, 0, 10 * MS), 10 * MS);
        assert_eq!(b.runtime(), 0);
        // 3 ms done for others: lines 14-18 hand it out.
        assert_eq!(b.refill_local(-3 * MS as i64, 0, 5 * MS), 3 * MS);
        assert_eq!(b.stats.from_credit, 3 * MS);
    }

    #[test]
    fn charge_is_paid_from_credit_first() {
        let mut b = Bandwidth::new(10 * MS, 100 * MS);
        b.refill_local(-4 * MS as i64, 0, 0);
        assert_eq!(b.gained(), 4 * MS);
        b.refill_local(3 * MS as i64, 0, 0);
        assert_eq!(b.gained(), MS);
        assert_eq!(b.runtime(), 10 * MS as i64);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Local { usage: i64, rt_remain: i64 },
        Period,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (-5_000_000i64..8_000_000, -2_000_000i64..1_000_000)
                    .prop_map(|(usage, rt_remain)| Op::Local { usage, rt_remain }),
                1 => Just(Op::Period),
            ],
            1..200,
        )
    }

    proptest! {
        /// Invariant 2: a throttled container never gains runtime from charges or from the
        /// passage of local refills; only its own credit or the period refill can unthrottle it.
        #[test]
        fn throttled_never_gains_runtime(prefix in ops(), usage in 0i64..8_000_000, rt in -2_000_000i64..0) {
            let mut b = Bandwidth::new(10 * MS, 100 * MS);
            for op in prefix {
                match op {
                    Op::Local { usage, rt_remain } => { b.refill_local(usage, rt_remain, 5 * MS); }
                    Op::Period => { b.refill_global(); }
                }
            }
            if b.throttled() {
                let before = b.runtime();
                prop_assert_eq!(b.refill_local(usage, rt, 5 * MS), 0);
                prop_assert!(b.runtime() <= before);
                prop_assert!(b.throttled());
            }
        }

        /// Invariant 3: runtime never carries over a period in which the container idled: the
        /// new pool is at most one quota and no credit survives.
        #[test]
        fn no_carry_over_an_idle_period(prefix in ops(), burst in 0u64..5_000_000) {
            let mut b = Bandwidth::with_burst(10 * MS, 100 * MS, burst);
            for op in prefix {
                match op {
                    Op::Local { usage, rt_remain } => { b.refill_local(usage, rt_remain, 5 * MS); }
                    Op::Period => { b.refill_global(); }
                }
            }
            b.refill_global(); // end of a period in which it may have run
            let r = b.refill_global(); // end of a period with no request: idled
            prop_assert!(r <= (10 * MS) as i64, "carried {} over an idle period", r);
            prop_assert_eq!(b.gained(), 0);
        }

        /// Invariant 4: runtime that came from credit is bounded by the credit earned, i.e. by
        /// the work done for others; and credit is conserved (earned = held + used + offset +
        /// forfeited).
        #[test]
        fn credit_bounded_by_work_for_others(prefix in ops()) {
            let mut b = Bandwidth::new(10 * MS, 100 * MS);
            for op in prefix {
                match op {
                    Op::Local { usage, rt_remain } => { b.refill_local(usage, rt_remain, 5 * MS); }
                    Op::Period => { b.refill_global(); }
                }
                let s = &b.stats;
                prop_assert!(s.from_credit <= s.credited);
                prop_assert_eq!(s.credited, b.gained() + s.from_credit + s.credit_offset + s.credit_forfeited);
            }
        }

        /// The pool never exceeds quota + burst, whatever the history.
        #[test]
        fn pool_capped(prefix in ops(), burst in 0u64..5_000_000) {
            let mut b = Bandwidth::with_burst(10 * MS, 100 * MS, burst);
            for op in prefix {
                if let Op::Period = op {
                    prop_assert!(b.refill_global() <= (10 * MS + burst) as i64);
                } else if let Op::Local { usage, rt_remain } = op {
                    b.refill_local(usage, rt_remain, 5 * MS);
                }
            }
        }
    }
}
