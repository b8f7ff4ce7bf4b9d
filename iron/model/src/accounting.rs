//! Receive and transmit cost accounting for one softirq pass (dissertation §2.2.1).
//!
//! A pass is what one `do_softirq` iteration does on one CPU after a hard interrupt. Per-packet
//! receive costs come from the thread clock around `__netif_receive_skb`
//! (`time = cumtime + (now - swaptime)`, so preemption inside the call is not counted); transmit
//! costs are measured per `net_tx_action` batch and split evenly over the batch's packets. The
//! fixed cost of the interrupt, `O = H - Σ S_i`, is shared by softirq type in proportion to `S_i`,
//! and the network types' share is split evenly over the packets of the pass, together with the
//! part of `S_RX` spent outside `__netif_receive_skb` (driver poll, GRO flush).
//!
//! All arithmetic is integer nanoseconds with exact remainders, so every nanosecond the pass
//! measured as network time is charged to exactly one owner.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::{GroupId, Ns};

/// The softirq types of Linux, in the kernel's order (`include/linux/interrupt.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SoftirqKind {
    Hi = 0,
    Timer = 1,
    NetTx = 2,
    NetRx = 3,
    Block = 4,
    IrqPoll = 5,
    Tasklet = 6,
    Sched = 7,
    Hrtimer = 8,
    Rcu = 9,
}

/// Number of softirq types.
pub const NR_SOFTIRQS: usize = 10;

/// Who a packet is charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A container (cgroup id).
    Group(GroupId),
    /// No container could be found (e.g. a packet for the host); the time stays with the host.
    Unattributed,
}

/// Where the pass ran, which decides who gets a credit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// In the context of a task of `group`, interrupted by the softirq. `runtime_paid` says
    /// whether the kernel charged the pass to that task's runtime (true without
    /// `CONFIG_IRQ_TIME_ACCOUNTING`, as on the paper's kernel); only then is a credit owed.
    Process { group: GroupId, runtime_paid: bool },
    /// In a task outside any bandwidth-limited container (e.g. the host).
    Host,
    /// In `ksoftirqd` or a threaded-NAPI kthread: nobody's runtime paid for it.
    Kthread,
}

/// A thread clock reading: the scheduler's cumulative runtime and the time the thread was last
/// switched in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadClock {
    pub cumtime: Ns,
    pub swaptime: Ns,
}

impl ThreadClock {
    /// The thread's runtime at `now`: `cumtime + (now - swaptime)`.
    pub fn at(&self, now: Ns) -> Result<Ns, AccountingError> {
        let on_cpu = now
            .checked_sub(self.swaptime)
            .ok_or(AccountingError::ClockBeforeSwap {
                now,
                swaptime: self.swaptime,
            })?;
        Ok(self.cumtime + on_cpu)
    }
}

/// Cost of one packet from thread-clock readings taken when `__netif_receive_skb` starts and
/// ends. Only the thread's own runtime counts, so time spent preempted in between is excluded.
pub fn packet_cost(
    start: ThreadClock,
    start_now: Ns,
    end: ThreadClock,
    end_now: Ns,
) -> Result<Ns, AccountingError> {
    let a = start.at(start_now)?;
    let b = end.at(end_now)?;
    b.checked_sub(a)
        .ok_or(AccountingError::NegativeCost { start: a, end: b })
}

/// One received packet: its owner and its measured cost inside `__netif_receive_skb`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RxPacket {
    pub owner: Owner,
    pub cost: Ns,
}

/// One `net_tx_action` batch: its measured cost and the owner of each packet in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxBatch {
    pub cost: Ns,
    pub owners: Vec<Owner>,
}

/// Everything measured during one softirq pass on one CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SoftirqPass {
    /// `H`: total time of the interrupt, hard part and all softirqs run at its end.
    pub hard_irq_total: Ns,
    /// `S_i`: time spent in each softirq type's handler.
    pub softirq: [Ns; NR_SOFTIRQS],
    pub rx: Vec<RxPacket>,
    pub tx: Vec<TxBatch>,
}

/// What a pass costs whom.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassAccount {
    /// Time charged per owner (unattributed packets under [`Owner::Unattributed`]).
    pub charges: BTreeMap<Owner, Ns>,
    /// The group whose runtime paid for the pass and the part of it that was others' work.
    pub credit: Option<(GroupId, Ns)>,
    /// Network time of the pass: `S_RX + S_TX` plus their share of `O` (when they had packets).
    pub network_time: Ns,
    /// Time not charged to packets: other softirq types and their share of `O`.
    pub other_time: Ns,
    /// Number of packets in the pass.
    pub packets: usize,
}

impl PassAccount {
    /// Total charged to all owners.
    pub fn charged(&self) -> Ns {
        self.charges.values().sum()
    }

    /// Charged to one owner.
    pub fn charged_to(&self, owner: Owner) -> Ns {
        self.charges.get(&owner).copied().unwrap_or(0)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccountingError {
    #[error("clock read at {now} ns is before the thread was switched in at {swaptime} ns")]
    ClockBeforeSwap { now: Ns, swaptime: Ns },
    #[error("packet ends at thread time {end} ns before it starts at {start} ns")]
    NegativeCost { start: Ns, end: Ns },
    #[error("hard interrupt total {hard} ns is less than the softirq time {soft} ns it contains")]
    HardIrqShorterThanSoftirqs { hard: Ns, soft: Ns },
    #[error("receive packets cost {packets} ns, more than the NET_RX softirq time {softirq} ns")]
    RxPacketsExceedSoftirq { packets: Ns, softirq: Ns },
    #[error("transmit batches cost {batches} ns, more than the NET_TX softirq time {softirq} ns")]
    TxBatchesExceedSoftirq { batches: Ns, softirq: Ns },
    #[error("a transmit batch costing {0} ns has no packets")]
    EmptyTxBatch(Ns),
}

/// Splits `total` into `n` parts that differ by at most one and add up to `total`.
pub fn split_even(total: Ns, n: usize) -> impl Iterator<Item = Ns> {
    let n = n.max(1) as u64;
    let (q, r) = (total / n, total % n);
    (0..n).map(move |i| q + u64::from(i < r))
}

/// `o * part / whole` rounded down, without overflow.
fn share(o: Ns, part: Ns, whole: Ns) -> Ns {
    if whole == 0 {
        return 0;
    }
    (u128::from(o) * u128::from(part) / u128::from(whole)) as Ns
}

impl SoftirqPass {
    /// Splits the pass into charges per owner and the credit owed to the interrupted container.
    pub fn account(&self, ctx: Context) -> Result<PassAccount, AccountingError> {
        let soft: Ns = self.softirq.iter().sum();
        if self.hard_irq_total < soft {
            return Err(AccountingError::HardIrqShorterThanSoftirqs {
                hard: self.hard_irq_total,
                soft,
            });
        }
        let overhead = self.hard_irq_total - soft;
        let s_rx = self.softirq[SoftirqKind::NetRx as usize];
        let s_tx = self.softirq[SoftirqKind::NetTx as usize];
        let o_rx = share(overhead, s_rx, soft);
        let o_tx = share(overhead, s_tx, soft);

        let rx_measured: Ns = self.rx.iter().map(|p| p.cost).sum();
        if rx_measured > s_rx {
            return Err(AccountingError::RxPacketsExceedSoftirq {
                packets: rx_measured,
                softirq: s_rx,
            });
        }
        let tx_measured: Ns = self.tx.iter().map(|b| b.cost).sum();
        if tx_measured > s_tx {
            return Err(AccountingError::TxBatchesExceedSoftirq {
                batches: tx_measured,
                softirq: s_tx,
            });
        }
        if let Some(b) = self.tx.iter().find(|b| b.owners.is_empty()) {
            return Err(AccountingError::EmptyTxBatch(b.cost));
        }

        let mut acct = PassAccount::default();
        let mut charge = |owner: Owner, ns: Ns| {
            if ns > 0 {
                *acct.charges.entry(owner).or_insert(0) += ns;
            }
        };

        // Receive: measured cost per packet, plus an even share of the fixed part (the RX share
        // of O and the NET_RX time outside __netif_receive_skb).
        let mut network = 0;
        if !self.rx.is_empty() {
            let fixed = o_rx + (s_rx - rx_measured);
            for (p, f) in self.rx.iter().zip(split_even(fixed, self.rx.len())) {
                charge(p.owner, p.cost + f);
            }
            network += s_rx + o_rx;
        }
        // Transmit: each batch split evenly over its packets; the TX share of O and the NET_TX
        // time outside batches split evenly over all transmitted packets.
        let tx_packets: usize = self.tx.iter().map(|b| b.owners.len()).sum();
        if tx_packets > 0 {
            let fixed = o_tx + (s_tx - tx_measured);
            let mut fixed_parts = split_even(fixed, tx_packets);
            for b in &self.tx {
                for (owner, part) in b.owners.iter().zip(split_even(b.cost, b.owners.len())) {
                    charge(*owner, part + fixed_parts.next().unwrap_or(0));
                }
            }
            network += s_tx + o_tx;
        }
        acct.network_time = network;
        acct.other_time = self.hard_irq_total - network;
        acct.packets = self.rx.len() + tx_packets;

        if let Context::Process {
            group,
            runtime_paid: true,
        } = ctx
        {
            let own = acct.charged_to(Owner::Group(group));
            let others = network - own;
            if others > 0 {
                acct.credit = Some((group, others));
            }
        }
        Ok(acct)
    }
}

/// Per-CPU pending usage per container, as the kernel keeps it between scheduler merges:
/// positive = still to be charged, negative = still to be credited (Fig 2.8's `cpuusage`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    usage: BTreeMap<GroupId, i64>,
}

impl Ledger {
    /// Adds a pass's charges and credit.
    pub fn apply(&mut self, acct: &PassAccount) {
        for (owner, ns) in &acct.charges {
            if let Owner::Group(g) = owner {
                *self.usage.entry(*g).or_insert(0) += *ns as i64;
            }
        }
        if let Some((g, ns)) = acct.credit {
            *self.usage.entry(g).or_insert(0) -= ns as i64;
        }
    }

    /// Adds a raw charge (positive) or credit (negative), as the simulator does per step.
    pub fn add(&mut self, group: GroupId, ns: i64) {
        *self.usage.entry(group).or_insert(0) += ns;
    }

    /// Takes a container's pending usage, leaving zero: the merge done under the scheduler's lock.
    pub fn take(&mut self, group: GroupId) -> i64 {
        self.usage.remove(&group).unwrap_or(0)
    }

    /// Pending usage without taking it.
    pub fn pending(&self, group: GroupId) -> i64 {
        self.usage.get(&group).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pass(
        h: Ns,
        rx_s: Ns,
        tx_s: Ns,
        timer_s: Ns,
        rx: Vec<RxPacket>,
        tx: Vec<TxBatch>,
    ) -> SoftirqPass {
        let mut softirq = [0; NR_SOFTIRQS];
        softirq[SoftirqKind::NetRx as usize] = rx_s;
        softirq[SoftirqKind::NetTx as usize] = tx_s;
        softirq[SoftirqKind::Timer as usize] = timer_s;
        SoftirqPass {
            hard_irq_total: h,
            softirq,
            rx,
            tx,
        }
    }

    #[test]
    fn thread_clock_excludes_preemption() {
        // Start: ran 100 ns, switched in at t=1000, read at t=1010 -> 110.
        // Preempted, back at t=5000 having run 150 ns; read at t=5020 -> 170. Cost 60, not 4010.
        let s = ThreadClock {
            cumtime: 100,
            swaptime: 1000,
        };
        let e = ThreadClock {
            cumtime: 150,
            swaptime: 5000,
        };
        assert_eq!(packet_cost(s, 1010, e, 5020), Ok(60));
        assert!(packet_cost(s, 999, e, 5020).is_err());
    }

    #[test]
    fn overhead_is_shared_by_type_and_split_per_packet() {
        // H = 1000, S_RX = 600, S_TIMER = 200 -> O = 200, O_RX = 150.
        // Two packets measured 250 each: fixed = 150 + (600 - 500) = 250 -> 125 each.
        let p = pass(
            1000,
            600,
            0,
            200,
            vec![
                RxPacket {
                    owner: Owner::Group(1),
                    cost: 250,
                },
                RxPacket {
                    owner: Owner::Group(2),
                    cost: 250,
                },
            ],
            vec![],
        );
        let a = p
            .account(Context::Process {
                group: 3,
                runtime_paid: true,
            })
            .unwrap();
        assert_eq!(a.charged_to(Owner::Group(1)), 375);
        assert_eq!(a.charged_to(Owner::Group(2)), 375);
        assert_eq!(a.network_time, 750);
        assert_eq!(a.other_time, 250);
        assert_eq!(a.credit, Some((3, 750)));
    }

    #[test]
    fn own_packets_are_not_credited_and_kthreads_get_nothing() {
        let p = pass(
            100,
            100,
            0,
            0,
            vec![RxPacket {
                owner: Owner::Group(7),
                cost: 80,
            }],
            vec![],
        );
        let a = p
            .account(Context::Process {
                group: 7,
                runtime_paid: true,
            })
            .unwrap();
        assert_eq!(a.credit, None);
        assert_eq!(a.charged_to(Owner::Group(7)), 100);
        let a = p.account(Context::Kthread).unwrap();
        assert_eq!(a.credit, None);
        let a = p
            .account(Context::Process {
                group: 8,
                runtime_paid: false,
            })
            .unwrap();
        assert_eq!(
            a.credit, None,
            "with IRQ time accounting the kernel never charged group 8"
        );
    }

    #[test]
    fn tx_batch_cost_is_split_per_packet() {
        let p = pass(
            90,
            0,
            90,
            0,
            vec![],
            vec![TxBatch {
                cost: 90,
                owners: vec![Owner::Group(1), Owner::Group(1), Owner::Group(2)],
            }],
        );
        let a = p.account(Context::Host).unwrap();
        assert_eq!(a.charged_to(Owner::Group(1)), 60);
        assert_eq!(a.charged_to(Owner::Group(2)), 30);
    }

    #[test]
    fn inconsistent_measurements_are_errors() {
        let p = pass(10, 20, 0, 0, vec![], vec![]);
        assert!(matches!(
            p.account(Context::Host),
            Err(AccountingError::HardIrqShorterThanSoftirqs { .. })
        ));
        let p = pass(
            100,
            50,
            0,
            0,
            vec![RxPacket {
                owner: Owner::Unattributed,
                cost: 60,
            }],
            vec![],
        );
        assert!(matches!(
            p.account(Context::Host),
            Err(AccountingError::RxPacketsExceedSoftirq { .. })
        ));
        let p = pass(
            100,
            0,
            50,
            0,
            vec![],
            vec![TxBatch {
                cost: 10,
                owners: vec![],
            }],
        );
        assert_eq!(
            p.account(Context::Host),
            Err(AccountingError::EmptyTxBatch(10))
        );
    }

    fn arb_pass() -> impl Strategy<Value = (SoftirqPass, GroupId)> {
        let owner = prop_oneof![Just(Owner::Unattributed), (0u32..4).prop_map(Owner::Group)];
        (
            proptest::collection::vec((owner.clone(), 0u64..5_000), 0..40),
            proptest::collection::vec((0u64..20_000, proptest::collection::vec(owner, 1..8)), 0..6),
            0u64..50_000,
            0u64..50_000,
            0u64..50_000,
            0u64..50_000,
            0u32..4,
        )
            .prop_map(|(rx, tx, rx_extra, tx_extra, other, o, ctx)| {
                let rx: Vec<RxPacket> = rx
                    .into_iter()
                    .map(|(owner, cost)| RxPacket { owner, cost })
                    .collect();
                let tx: Vec<TxBatch> = tx
                    .into_iter()
                    .map(|(cost, owners)| TxBatch { cost, owners })
                    .collect();
                let s_rx = rx.iter().map(|p| p.cost).sum::<Ns>() + rx_extra;
                let s_tx = tx.iter().map(|b| b.cost).sum::<Ns>() + tx_extra;
                (
                    pass(s_rx + s_tx + other + o, s_rx, s_tx, other, rx, tx),
                    ctx,
                )
            })
    }

    proptest! {
        /// Invariant 1: every nanosecond of measured network time is charged to exactly one
        /// owner, and for the interrupted container its own charge plus its credit equal the
        /// measured network time of the pass.
        #[test]
        fn charged_plus_credited_equals_measured((p, g) in arb_pass()) {
            let a = p.account(Context::Process { group: g, runtime_paid: true }).unwrap();
            prop_assert_eq!(a.charged(), a.network_time);
            let credit = a.credit.map(|(_, c)| c).unwrap_or(0);
            prop_assert_eq!(a.charged_to(Owner::Group(g)) + credit, a.network_time);
            prop_assert_eq!(a.network_time + a.other_time, p.hard_irq_total);
        }

        /// Invariant 4 (accounting side): a credit never exceeds the work done for others.
        #[test]
        fn credit_bounded_by_work_for_others((p, g) in arb_pass()) {
            let a = p.account(Context::Process { group: g, runtime_paid: true }).unwrap();
            let for_others: Ns = a.charges.iter().filter(|(o, _)| **o != Owner::Group(g)).map(|(_, n)| n).sum();
            prop_assert!(a.credit.map(|(_, c)| c).unwrap_or(0) <= for_others);
        }

        #[test]
        fn split_even_adds_up(total in 0u64..1_000_000, n in 1usize..100) {
            let parts: Vec<Ns> = split_even(total, n).collect();
            prop_assert_eq!(parts.len(), n);
            prop_assert_eq!(parts.iter().sum::<Ns>(), total);
            prop_assert!(parts.iter().max().unwrap() - parts.iter().min().unwrap() <= 1);
        }
    }
}
