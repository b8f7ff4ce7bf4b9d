//! A discrete-time simulator of n containers sharing one core under CFS bandwidth control,
//! with and without Iron (dissertation §2.1.3 and §2.3).
//!
//! One container, the victim, runs a CPU-bound job; the others are interferers that either run
//! the same CPU job (the baseline) or receive or send traffic. Every container has
//! `quota = period / n`. Each step of `dt`, packets arrive in per-container receive rings,
//! softirq work runs first in the context of whatever is scheduled (or in `ksoftirqd` once the
//! backlog is large, as Linux defers it), and the rest of the step goes to the entity CFS picks
//! (smallest virtual runtime among the runnable, unthrottled ones).
//!
//! Without Iron (the paper's kernel, no IRQ time accounting) softirq time is charged to whoever
//! was interrupted and ksoftirqd's time to nobody. With Iron it is charged to the packet's
//! owner, credited back to the interrupted container, throttled receivers' queues are parked
//! (dedicated queue) or their packets dropped early (shared queue), and the refill follows
//! [`crate::refill`]. The penalty factor is the victim's completion time with traffic over its
//! completion time with CPU-bound interferers.

use serde::Serialize;

use crate::accounting::Ledger;
use crate::enforce::{verdict, EarlyDrop, QueueMode, Verdict};
use crate::refill::Bandwidth;
use crate::{GroupId, Ns};

const US: Ns = 1_000;
const MS: Ns = 1_000_000;

/// What an interfering container does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Workload {
    /// The same CPU-bound job as the victim (baseline).
    Cpu,
    /// Receives UDP at a fixed offered rate.
    UdpRx,
    /// Receives TCP; the sender adapts its rate to drops.
    TcpRx,
    /// Floods UDP through a rate limiter whose dequeue runs in the TX softirq.
    UdpTx,
    /// Sends TCP: TX softirq dequeue plus ACK reception.
    TcpTx,
}

impl Workload {
    fn receives(self) -> bool {
        matches!(self, Workload::UdpRx | Workload::TcpRx)
    }
    fn sends(self) -> bool {
        matches!(self, Workload::UdpTx | Workload::TcpTx)
    }
}

/// Per-packet costs (defaults: the paper's receive costs, Table 2.15).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Costs {
    pub rx_udp: Ns,
    pub rx_tcp: Ns,
    /// Receive-side application work per packet (the `recv` call), in process context.
    pub app_rx: Ns,
    /// Sender application work per packet, in process context.
    pub app_tx: Ns,
    /// Deferred transmit work per UDP packet (qdisc dequeue in `net_tx_action`).
    pub tx_udp: Ns,
    /// Deferred transmit work per TCP packet (dequeue plus ACK processing).
    pub tx_tcp: Ns,
    /// Cost of a software drop early in `__netif_receive_skb`.
    pub drop: Ns,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            rx_udp: 706,
            rx_tcp: 1670,
            app_rx: 400,
            app_tx: 1500,
            tx_udp: 250,
            tx_tcp: 900,
            drop: 60,
        }
    }
}

/// One experiment configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    pub name: String,
    /// Containers on the core, victim included.
    pub n: usize,
    /// The n - 1 interferers.
    pub interferers: Vec<Workload>,
    /// Offered receive rate to the core, packets per second, split evenly over receivers.
    pub offered_pps: f64,
    /// Transmit rate limit of the core (packets per second), for senders.
    pub tx_limit_pps: f64,
    /// CPU time the victim's job needs.
    pub victim_work: Ns,
    pub period: Ns,
    pub early_drop: u8,
    pub queue_mode: QueueMode,
    pub costs: Costs,
    /// Receive ring per container (packets).
    pub ring: usize,
    /// Backlog (ns of pending softirq work) beyond which processing moves to ksoftirqd.
    pub ksoftirqd_after: Ns,
    pub dt: Ns,
}

impl Scenario {
    /// n containers, i of them receiving `kind` at `offered_pps`, the rest CPU-bound.
    pub fn receivers(kind: Workload, n: usize, i: usize, offered_pps: f64) -> Self {
        let mut interferers = vec![kind; i.min(n - 1)];
        interferers.resize(n - 1, Workload::Cpu);
        let mode = if kind == Workload::UdpRx {
            QueueMode::Dedicated
        } else {
            QueueMode::Shared
        };
        Scenario {
            name: format!("{kind:?} n={n} i={i} {:.0} kpps", offered_pps / 1e3),
            n,
            interferers,
            offered_pps,
            tx_limit_pps: 0.0,
            victim_work: 200 * MS,
            period: 100 * MS,
            early_drop: 5,
            queue_mode: mode,
            costs: Costs::default(),
            ring: 1024,
            ksoftirqd_after: 200 * US,
            dt: 20 * US,
        }
    }

    /// n containers, all interferers sending `kind` through a core rate limit of `limit_pps`.
    pub fn senders(kind: Workload, n: usize, limit_pps: f64) -> Self {
        let mut s = Self::receivers(kind, n, 0, 0.0);
        s.interferers = vec![kind; n - 1];
        s.tx_limit_pps = limit_pps;
        s.name = format!("{kind:?} n={n} limit {:.0} kpps", limit_pps / 1e3);
        s
    }
}

/// Kernel behaviour being simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Stock Linux as in the paper: softirq time charged to whoever it interrupts.
    Linux,
    /// Linux with Iron.
    Iron,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    pub victim_completion: Ns,
    pub softirq_ns: Ns,
    pub ksoftirqd_ns: Ns,
    pub delivered: u64,
    pub dropped: u64,
    /// CPU used per container (task time plus charged network time under Iron).
    pub container_cpu: Vec<Ns>,
    pub elapsed: Ns,
    pub finished: bool,
}

struct Group {
    work: Workload,
    bw: Bandwidth,
    rt_remain: i64,
    throttled: bool,
    vruntime: Ns,
    ring: usize,
    sock: usize,
    tx_backlog: usize,
    arrivals: f64,
    tcp_rate: f64,
    period_drops: u64,
    done: Ns,
    cpu: i64,
}

/// Simulates one scenario; `cpu_baseline` replaces every interferer by a CPU-bound job.
pub fn run(s: &Scenario, mode: Mode, cpu_baseline: bool) -> Outcome {
    let n = s.n;
    let quota = s.period / n as Ns;
    let slice = (5 * MS).min(quota);
    let receivers = s.interferers.iter().filter(|w| w.receives()).count().max(1);
    let senders = s.interferers.iter().filter(|w| w.sends()).count().max(1);
    let mut groups: Vec<Group> = (0..n)
        .map(|i| {
            let work = if i == 0 || cpu_baseline {
                Workload::Cpu
            } else {
                s.interferers[i - 1]
            };
            Group {
                work,
                bw: Bandwidth::new(quota, s.period),
                rt_remain: 0,
                throttled: false,
                vruntime: 0,
                ring: 0,
                sock: 0,
                tx_backlog: 0,
                arrivals: 0.0,
                tcp_rate: s.offered_pps / receivers as f64,
                period_drops: 0,
                done: 0,
                cpu: 0,
            }
        })
        .collect();
    let mut ledger = Ledger::default();
    let mut ksoftirqd_vr: Ns = 0;
    let mut ksoftirqd_on = false;
    let mut out = Outcome {
        container_cpu: vec![0; n],
        ..Default::default()
    };
    let mut now: Ns = 0;
    let mut next_period = s.period;
    let mut tx_tokens = 0.0f64;
    let limit = s.victim_work * n as Ns * 50;
    let early = EarlyDrop(s.early_drop);

    while now < limit {
        // Period timer: merge pending usage, refill, unthrottle; TCP senders adapt.
        if now >= next_period {
            next_period += s.period;
            for (i, g) in groups.iter_mut().enumerate() {
                if mode == Mode::Iron {
                    g.bw.merge(ledger.take(i as GroupId));
                }
                g.bw.refill_global();
                g.rt_remain = 0;
                g.throttled = false;
                if g.work == Workload::TcpRx {
                    let max = s.offered_pps / receivers as f64;
                    g.tcp_rate = if g.period_drops > 0 {
                        (g.tcp_rate / 2.0).max(1_000.0)
                    } else {
                        (g.tcp_rate + max / 10.0).min(max)
                    };
                    g.period_drops = 0;
                }
            }
        }
        // Arrivals into each receiver's ring (the NIC drops into a full ring for free).
        for g in groups.iter_mut().filter(|g| g.work.receives()) {
            let rate = if g.work == Workload::TcpRx {
                g.tcp_rate
            } else {
                s.offered_pps / receivers as f64
            };
            g.arrivals += rate * s.dt as f64 / 1e9;
            let k = g.arrivals as usize;
            g.arrivals -= k as f64;
            let fit = k.min(s.ring - g.ring);
            g.ring += fit;
            let lost = (k - fit) as u64;
            out.dropped += lost;
            g.period_drops += lost;
        }

        // CFS pick: smallest vruntime among runnable, unthrottled entities; ksoftirqd competes.
        let runnable = |g: &Group| -> bool {
            !g.throttled
                && match g.work {
                    Workload::Cpu => true,
                    Workload::UdpRx | Workload::TcpRx => g.sock > 0,
                    Workload::UdpTx | Workload::TcpTx => true,
                }
        };
        let pick = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| runnable(g))
            .min_by_key(|(_, g)| g.vruntime)
            .map(|(i, g)| (i, g.vruntime));
        let current: Option<usize> = match pick {
            Some((i, vr)) if !(ksoftirqd_on && ksoftirqd_vr < vr) => Some(i),
            Some(_) => None,
            None => None,
        };
        let in_ksoftirqd = current.is_none() && ksoftirqd_on;

        // Softirq work of this step: receive rings first, then transmit backlogs.
        let mut budget = s.dt;
        let mut soft_in_ctx: Ns = 0;
        if in_ksoftirqd || !ksoftirqd_on {
            let mut progressed = true;
            while budget > 0 && progressed {
                progressed = false;
                for i in 0..n {
                    if budget == 0 {
                        break;
                    }
                    let g = &mut groups[i];
                    let (cost, from_ring) = if g.ring > 0 && g.work.receives() {
                        (
                            if g.work == Workload::TcpRx {
                                s.costs.rx_tcp
                            } else {
                                s.costs.rx_udp
                            },
                            true,
                        )
                    } else if g.tx_backlog > 0 {
                        (
                            if g.work == Workload::TcpTx {
                                s.costs.tx_tcp
                            } else {
                                s.costs.tx_udp
                            },
                            false,
                        )
                    } else {
                        continue;
                    };
                    let mut v = Verdict::Deliver;
                    if mode == Mode::Iron && from_ring {
                        v = verdict(&g.bw, s.queue_mode, early);
                        if g.throttled && s.queue_mode == QueueMode::Dedicated {
                            v = Verdict::Park;
                        }
                    }
                    let spent = match v {
                        Verdict::Park => continue,
                        Verdict::Drop => {
                            g.ring -= 1;
                            out.dropped += 1;
                            g.period_drops += 1;
                            s.costs.drop
                        }
                        Verdict::Deliver => {
                            if from_ring {
                                g.ring -= 1;
                                if g.sock < 4096 {
                                    g.sock += 1;
                                    out.delivered += 1;
                                } else {
                                    out.dropped += 1;
                                    g.period_drops += 1;
                                }
                            } else {
                                g.tx_backlog -= 1;
                            }
                            cost
                        }
                    };
                    let spent = spent.min(budget);
                    budget -= spent;
                    progressed = true;
                    out.softirq_ns += spent;
                    if in_ksoftirqd {
                        out.ksoftirqd_ns += spent;
                    } else {
                        soft_in_ctx += spent;
                    }
                    if mode == Mode::Iron {
                        ledger.add(i as GroupId, spent as i64);
                        groups[i].cpu += spent as i64;
                        if let Some(c) = current {
                            if c != i && !in_ksoftirqd {
                                ledger.add(c as GroupId, -(spent as i64));
                                groups[c].cpu -= spent as i64;
                            }
                        }
                    }
                }
            }
        }
        // Backlog left: Linux hands it to ksoftirqd; ksoftirqd sleeps once it is drained.
        let backlog: Ns = groups
            .iter()
            .map(|g| {
                let rx = if g.work.receives()
                    && !(mode == Mode::Iron && g.throttled && s.queue_mode == QueueMode::Dedicated)
                {
                    g.ring as Ns
                        * if g.work == Workload::TcpRx {
                            s.costs.rx_tcp
                        } else {
                            s.costs.rx_udp
                        }
                } else {
                    0
                };
                rx + g.tx_backlog as Ns * s.costs.tx_udp
            })
            .sum();
        if backlog > s.ksoftirqd_after {
            ksoftirqd_on = true;
        } else if backlog == 0 {
            ksoftirqd_on = false;
        }
        if in_ksoftirqd {
            ksoftirqd_vr += s.dt;
            // Keep ksoftirqd's vruntime near the others' so it competes fairly, like a woken task.
        } else if !ksoftirqd_on {
            let minv = groups.iter().map(|g| g.vruntime).min().unwrap_or(0);
            ksoftirqd_vr = ksoftirqd_vr.max(minv);
        }

        // The picked container runs for the rest of the step; the kernel charges the whole step
        // (its task time and the softirq time in its context) to its runtime.
        if let Some(c) = current {
            let task = budget;
            let g = &mut groups[c];
            match g.work {
                Workload::Cpu => {
                    if g.done < s.victim_work {
                        g.done += task;
                    }
                }
                Workload::UdpRx | Workload::TcpRx => {
                    let k = ((task / s.costs.app_rx) as usize).max(1).min(g.sock);
                    g.sock -= k;
                }
                Workload::UdpTx | Workload::TcpTx => {
                    let want = task as f64 / s.costs.app_tx as f64;
                    tx_tokens =
                        (tx_tokens + s.tx_limit_pps * s.dt as f64 / 1e9 / senders as f64).min(64.0);
                    let k = want.min(tx_tokens.max(0.0)) as usize;
                    tx_tokens -= k as f64;
                    g.tx_backlog = (g.tx_backlog + k).min(4096);
                }
            }
            let used = task + soft_in_ctx;
            g.cpu += used as i64;
            g.vruntime += used;
            g.rt_remain -= used as i64;
            if g.rt_remain <= 0 {
                let usage = if mode == Mode::Iron {
                    ledger.take(c as GroupId)
                } else {
                    0
                };
                let amount = g.bw.refill_local(usage, g.rt_remain, slice);
                g.rt_remain += amount as i64;
                if g.rt_remain <= 0 {
                    g.throttled = true;
                }
            }
        }
        // Under Iron, a receiver whose merged pool is exhausted is throttled even while asleep.
        if mode == Mode::Iron {
            for (i, g) in groups.iter_mut().enumerate() {
                if g.work.receives() && !g.throttled && ledger.pending(i as GroupId) > 0 {
                    g.bw.merge(ledger.take(i as GroupId));
                    if g.bw.throttled() {
                        g.throttled = true;
                    }
                }
            }
        }

        now += s.dt;
        if groups[0].done >= s.victim_work {
            out.finished = true;
            break;
        }
    }
    out.victim_completion = now;
    out.elapsed = now;
    out.container_cpu = groups.iter().map(|g| g.cpu.max(0) as Ns).collect();
    out
}

/// Penalty factor of one scenario under `mode`: victim completion time with the interferers'
/// traffic over its completion time with CPU-bound interferers.
pub fn penalty(s: &Scenario, mode: Mode) -> f64 {
    let net = run(s, mode, false);
    let cpu = run(s, mode, true);
    net.victim_completion as f64 / cpu.victim_completion as f64
}

/// The scenarios `iron-sim` replays by default: the paper's receiver and sender experiments.
pub fn default_scenarios() -> Vec<Scenario> {
    let mut v = Vec::new();
    for i in [1, 4, 7] {
        v.push(Scenario::receivers(Workload::UdpRx, 8, i, 1_000_000.0));
    }
    for i in [1, 4, 7] {
        v.push(Scenario::receivers(Workload::TcpRx, 8, i, 600_000.0));
    }
    v.push(Scenario::senders(Workload::UdpTx, 10, 180_000.0));
    v.push(Scenario::senders(Workload::TcpTx, 10, 180_000.0));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_victim_gets_its_quota() {
        let s = Scenario::receivers(Workload::UdpRx, 4, 3, 500_000.0);
        let o = run(&s, Mode::Linux, true);
        assert!(o.finished);
        // 200 ms of work at 25 % of the core: about 800 ms.
        let t = o.victim_completion as f64 / 1e6;
        assert!((780.0..=900.0).contains(&t), "{t} ms");
    }

    #[test]
    fn receivers_hurt_the_victim_without_iron_and_not_with_it() {
        let s = Scenario::receivers(Workload::UdpRx, 8, 7, 1_000_000.0);
        let linux = penalty(&s, Mode::Linux);
        let iron = penalty(&s, Mode::Iron);
        assert!(linux > 1.3, "stock penalty {linux}");
        assert!(iron <= 1.05, "Iron penalty {iron}");
    }

    #[test]
    fn tcp_receivers_are_isolated_by_software_drop() {
        let s = Scenario::receivers(Workload::TcpRx, 8, 7, 600_000.0);
        assert!(penalty(&s, Mode::Linux) > 1.3);
        assert!(penalty(&s, Mode::Iron) <= 1.05);
    }

    #[test]
    fn iron_keeps_containers_within_their_quota() {
        // CPU-limit accuracy: the containers together use no more than their quotas.
        let s = Scenario::receivers(Workload::UdpRx, 3, 2, 800_000.0);
        let o = run(&s, Mode::Iron, false);
        let total: Ns = o.container_cpu.iter().sum();
        let quota_total = o.elapsed as f64 * (3.0 / 3.0);
        assert!(
            total as f64 <= quota_total * 1.005 + 1e6,
            "{total} > {quota_total}"
        );
    }
}
