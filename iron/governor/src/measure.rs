//! Measuring network softirq time on a stock kernel, and apportioning it to containers.
//!
//! [`ProcMeter`] reads `/proc/stat` (softirq time per CPU), `/proc/softirqs` (which share of
//! softirq events were NET_RX/NET_TX) and ksoftirqd's runtime (`/proc/<pid>/schedstat`), and
//! apportions the network part to containers by the packets their host-side devices moved in
//! the same period. [`bpf_probe`] says whether the eBPF backend's prerequisites (tp_btf on
//! softirq entry/exit and the NAPI tracepoints) are present; this build does not carry the
//! BPF objects, so the governor reports that and uses `/proc`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::sys::{has_cap, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN};

/// Clock ticks per second of /proc/stat (USER_HZ, 100 on every Linux architecture we run on).
const USER_HZ: u64 = 100;

/// A reading of the counters the meter uses.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Softirq time over all CPUs, ns (from /proc/stat ticks).
    pub softirq_ns: u64,
    /// ksoftirqd runtime over all CPUs, ns.
    pub ksoftirqd_ns: u64,
    /// NET_RX + NET_TX softirq events, all CPUs.
    pub net_events: u64,
    /// All softirq events, all CPUs.
    pub all_events: u64,
    /// Packets (rx + tx) per device.
    pub dev_packets: BTreeMap<String, u64>,
    /// NET_RX + NET_TX time measured by the eBPF meter, when it is loaded.
    pub bpf_net_ns: Option<u64>,
}

/// The network softirq time of one period and the packets per device that caused it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Period {
    pub net_ns: u64,
    pub dev_packets: BTreeMap<String, u64>,
}

impl Reading {
    /// What happened between `self` (earlier) and `later`.
    pub fn delta(&self, later: &Reading) -> Period {
        let soft = later.softirq_ns.saturating_sub(self.softirq_ns)
            + later.ksoftirqd_ns.saturating_sub(self.ksoftirqd_ns);
        let ev_all = later.all_events.saturating_sub(self.all_events);
        let ev_net = later.net_events.saturating_sub(self.net_events);
        let net_ns = match (self.bpf_net_ns, later.bpf_net_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ if ev_all == 0 => 0,
            _ => (soft as u128 * ev_net as u128 / ev_all as u128) as u64,
        };
        let dev_packets = later
            .dev_packets
            .iter()
            .map(|(d, p)| {
                (
                    d.clone(),
                    p.saturating_sub(self.dev_packets.get(d).copied().unwrap_or(*p)),
                )
            })
            .collect();
        Period {
            net_ns,
            dev_packets,
        }
    }
}

/// Splits `p.net_ns` over containers by the packets of their device (`None`: no device, gets
/// nothing). Packets of devices no container owns keep their share (the host's).
pub fn apportion(p: &Period, devices: &[Option<&str>]) -> Vec<u64> {
    let total: u64 = p.dev_packets.values().sum();
    devices
        .iter()
        .map(|d| match d {
            Some(d) if total > 0 => {
                let k = p.dev_packets.get(*d).copied().unwrap_or(0);
                (p.net_ns as u128 * k as u128 / total as u128) as u64
            }
            _ => 0,
        })
        .collect()
}

/// Reads /proc, and the eBPF meter where it is built in and loads.
pub struct ProcMeter {
    ksoftirqd: Vec<u32>,
    #[cfg(feature = "bpf")]
    bpf: Option<crate::bpf::BpfMeter>,
    /// Which backend measures, or why eBPF does not.
    pub backend: String,
}

impl ProcMeter {
    pub fn new() -> ProcMeter {
        let mut ksoftirqd = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if std::fs::read_to_string(e.path().join("comm"))
                    .is_ok_and(|c| c.starts_with("ksoftirqd/"))
                {
                    ksoftirqd.push(pid);
                }
            }
        }
        #[cfg(feature = "bpf")]
        {
            let (bpf, backend) = match crate::bpf::BpfMeter::load() {
                Ok(m) => (
                    Some(m),
                    "eBPF tp_btf softirq_entry/softirq_exit".to_string(),
                ),
                Err(e) => (None, format!("/proc (eBPF unavailable: {e})")),
            };
            ProcMeter {
                ksoftirqd,
                bpf,
                backend,
            }
        }
        #[cfg(not(feature = "bpf"))]
        ProcMeter {
            ksoftirqd,
            backend: "/proc (built without the bpf feature)".to_string(),
        }
    }

    pub fn read(&self) -> Reading {
        let mut r = Reading::default();
        if let Ok(s) = std::fs::read_to_string("/proc/stat") {
            r.softirq_ns = parse_stat_softirq(&s) * (1_000_000_000 / USER_HZ);
        }
        if let Ok(s) = std::fs::read_to_string("/proc/softirqs") {
            (r.net_events, r.all_events) = parse_softirqs(&s);
        }
        for pid in &self.ksoftirqd {
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/schedstat")) {
                r.ksoftirqd_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        if let Ok(s) = std::fs::read_to_string("/proc/net/dev") {
            r.dev_packets = parse_net_dev(&s);
        }
        #[cfg(feature = "bpf")]
        {
            r.bpf_net_ns = self.bpf.as_ref().map(|b| b.net_ns());
        }
        r
    }
}

impl Default for ProcMeter {
    fn default() -> Self {
        Self::new()
    }
}

/// The aggregate "cpu" line's softirq field (7th value), in ticks.
pub fn parse_stat_softirq(s: &str) -> u64 {
    s.lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (NET_RX + NET_TX, all) event counts summed over CPUs.
pub fn parse_softirqs(s: &str) -> (u64, u64) {
    let (mut net, mut all) = (0, 0);
    for l in s.lines().skip(1) {
        let mut it = l.split_whitespace();
        let Some(name) = it.next() else { continue };
        let n: u64 = it.filter_map(|v| v.parse::<u64>().ok()).sum();
        all += n;
        if name == "NET_RX:" || name == "NET_TX:" {
            net += n;
        }
    }
    (net, all)
}

/// rx + tx packets per device from /proc/net/dev (loopback excluded).
pub fn parse_net_dev(s: &str) -> BTreeMap<String, u64> {
    s.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            let name = name.trim();
            (v.len() >= 10 && name != "lo").then(|| (name.to_string(), v[1] + v[9]))
        })
        .collect()
}

/// Why the eBPF backend cannot be used here (it never can in this build; the reasons tell the
/// operator what a build with it would additionally need).
pub fn bpf_probe(caps: u64) -> String {
    let mut why =
        vec!["this build carries no BPF objects (measurement comes from /proc)".to_string()];
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        why.push("no /sys/kernel/btf/vmlinux (tp_btf needs kernel BTF)".into());
    }
    if !(has_cap(caps, CAP_SYS_ADMIN) || (has_cap(caps, CAP_BPF) && has_cap(caps, CAP_PERFMON))) {
        why.push("missing CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)".into());
    }
    why.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  10 0 20 300 4 5 7 0 0 0\ncpu0 5 0 10 150 2 2 3 0 0 0\n";
        assert_eq!(parse_stat_softirq(stat), 7);
        let sq = "                    CPU0       CPU1\n          HI:          1          0\n      NET_TX:          2          3\n      NET_RX:         10         20\n       TIMER:        100        100\n";
        assert_eq!(parse_softirqs(sq), (35, 236));
        let dev = "Inter-|   Receive\n face |bytes packets errs drop fifo frame compressed multicast|bytes packets\n    lo: 100 5 0 0 0 0 0 0 100 5 0 0 0 0 0 0\n   va1: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n";
        let d = parse_net_dev(dev);
        assert_eq!(d.get("va1"), Some(&30));
        assert!(!d.contains_key("lo"));
    }

    #[test]
    fn delta_and_apportion() {
        let a = Reading {
            softirq_ns: 0,
            ksoftirqd_ns: 0,
            net_events: 0,
            all_events: 0,
            dev_packets: [("va1".into(), 0), ("va2".into(), 0)].into(),
            bpf_net_ns: None,
        };
        let b = Reading {
            softirq_ns: 6_000_000,
            ksoftirqd_ns: 4_000_000,
            net_events: 90,
            all_events: 100,
            dev_packets: [("va1".into(), 300), ("va2".into(), 100)].into(),
            bpf_net_ns: None,
        };
        let p = a.delta(&b);
        assert_eq!(p.net_ns, 9_000_000);
        // With the eBPF meter on both sides its NET_RX + NET_TX time is used as is.
        let (mut a2, mut b2) = (a.clone(), b.clone());
        a2.bpf_net_ns = Some(1_000);
        b2.bpf_net_ns = Some(5_001_000);
        assert_eq!(a2.delta(&b2).net_ns, 5_000_000);
        let v = apportion(&p, &[Some("va1"), Some("va2"), None, Some("missing")]);
        assert_eq!(v, vec![6_750_000, 2_250_000, 0, 0]);
        assert!(v.iter().sum::<u64>() <= p.net_ns);
    }
}
