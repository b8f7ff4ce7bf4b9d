//! `chc-bench coe`: chain output equivalence.
//!
//! Runs the ideal chain (one instance per vertex, nothing slowed, nothing failing) and the
//! chain under a scenario on the same trace, then compares them by these rules:
//!
//! 1. **Output packets, as a multiset**, after canonicalising the choices that may
//!    legitimately differ: the NAT's public port and the load balancer's backend. Each run's
//!    own events say which connection got which public endpoint and backend; every output
//!    packet is rewritten back to the connection's original endpoints and its checksums are
//!    zeroed. What remains (every other byte, the wire length and the timestamp) must match
//!    one for one, with the same multiplicity.
//! 2. **Each connection mapped consistently**: in the run, a connection never has two NAT
//!    mappings (or two backend choices) alive at once, and no two live connections share a
//!    public endpoint.
//! 3. **The same alerts and blocked hosts**: the sets of (event, detector, host) for `alert`
//!    and `block` events are equal.
//!
//! Scenarios: `parallel` (2-4 instances per vertex, chosen by the seed), `delay` (random
//! per-packet delays of 50-100 us at vertices chosen by the seed, as in the paper's R4
//! experiment), `scale-out` / `scale-in` (vertices scaled at seeded points while packets are
//! queued, flows moved with the handover of Fig 3.7), `autoscale` (seeded vertices under an
//! operator's autoscale policy, every 2 ms, the trace paced to last a tenth of a second or
//! more, so instances come, go and come back), `straggler` (a slowed instance cloned at a
//! seeded point, §3.4.3), `straggler-policy` (a slowed instance found by the manager's
//! straggler policy and cloned while the chain runs), and the process scenarios
//! (`processes`, `nf-crash`, `root-crash`, `store-crash`, `correlated`, and `nf-hang` /
//! `root-hang` / `store-hang`, which stop a process instead of killing it: the manager
//! finds it by its missing heartbeats, or the store by its unanswered probes). Two baselines run without a mechanism and are
//! expected to differ: `naive-move` (splitters switch at once) and `straggler-nodedup` (the
//! pair's duplicate outputs are not suppressed). `--keep DIR` leaves ideal.pcap,
//! ideal-events.jsonl, run.pcap and run-events.jsonl there.

use crate::results::{Better, Results, Row};
use crate::synth::Rng;
use anyhow::{bail, Context, Result};
use chc_dataplane::cluster::manager::{
    default_bin_dir, run_cluster, ClusterOptions, Fault, Victim,
};
use chc_dataplane::runtime::RunError;
use chc_dataplane::{
    pcapio, run, Chain, Delay, Policy, Rule, RunOptions, ScaleAction, ScaleStep, Summary,
};
use nfs::packet::{FiveTuple, Packet};
use nfs::PartitionKey;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug, Clone)]
pub struct CoeArgs {
    /// Chain configuration; default: the paper's chain.
    #[arg(long)]
    pub chain: Option<PathBuf>,
    /// Input trace (pcap).
    #[arg(long)]
    pub trace: PathBuf,
    /// parallel | delay | scale-out | scale-in | autoscale | straggler | straggler-policy |
    /// processes | nf-crash | root-crash | store-crash | correlated | nf-hang | root-hang |
    /// store-hang;
    /// baselines without a mechanism: naive-move |
    /// straggler-nodedup
    #[arg(long)]
    pub scenario: String,
    /// Seed for the scenario's random choices (replays a run exactly).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the results (shared format, with every difference listed) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep ideal.pcap, ideal-events.jsonl, run.pcap and run-events.jsonl in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Process scenarios: start each replacement after the failure instead of waking the
    /// manager's warm spare.
    #[arg(long)]
    pub no_spares: bool,
    /// Run the scenario's chain on this backend: pcap (the embedded runtime) or dpdk (a
    /// `chc-dataplane run --backend dpdk` process, a net_pcap vdev replaying the trace;
    /// scenarios parallel, delay, scale-out, scale-in, autoscale, naive-move, straggler and
    /// straggler-nodedup; and nf-crash / store-crash: the chain split over two hosts in
    /// network namespaces, the second host or the store server killed and restarted, which
    /// needs root). The ideal chain always runs embedded.
    #[arg(long, default_value = "pcap")]
    pub backend: String,
    /// With --backend dpdk: EAL arguments of the run, such as its lcores
    /// ("--lcores=0@0,1@1,2@1" spreads the instances over two worker lcores, as the CI tests
    /// do); default one lcore.
    #[arg(long, allow_hyphen_values = true)]
    pub eal: Option<String>,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub equivalent: bool,
    pub ideal_packets: usize,
    pub run_packets: usize,
    pub matched: usize,
    pub missing_in_run: usize,
    pub extra_in_run: usize,
    pub inconsistent_mappings: usize,
    pub ideal_alerts: Vec<String>,
    pub run_alerts: Vec<String>,
    /// Every difference, described.
    pub differences: Vec<String>,
    pub scenario: String,
    /// Failures injected and how long recovering took.
    pub recoveries: Vec<chc_dataplane::cluster::manager::Recovery>,
    /// Processes the manager killed because their heartbeats stopped (the hang scenarios).
    pub hung_killed: u64,
    /// Second copies of a clock dropped at the egress.
    pub duplicates_suppressed: u64,
    /// Flow moves of the scaling scenarios.
    pub moves: Vec<chc_dataplane::summary::MoveSummary>,
    /// Packets whose state updates never all committed (the run ended with them logged).
    pub unsettled: usize,
    /// The straggler scenarios' clone.
    pub clone: Option<chc_dataplane::summary::CloneSummary>,
    /// The autoscale scenario's policy decisions.
    pub decisions: Vec<chc_dataplane::summary::Decision>,
    /// `nf-crash` / `store-crash` on the DPDK path: the root's recoveries of a failed host.
    pub rejoins: Vec<chc_dataplane::dpdk::rejoin::RejoinSummary>,
}

/// Raw comparison: the same packets, byte for byte, as a multiset.
pub fn strict_differences(ideal: &Path, run: &Path) -> Result<Vec<String>> {
    let mut counts: BTreeMap<(Vec<u8>, u32, u64), i64> = BTreeMap::new();
    for r in pcapio::read_all(ideal)? {
        *counts.entry((r.data, r.wire_len, r.ts_ns)).or_insert(0) += 1;
    }
    for r in pcapio::read_all(run)? {
        *counts.entry((r.data, r.wire_len, r.ts_ns)).or_insert(0) -= 1;
    }
    Ok(counts
        .into_iter()
        .filter(|(_, c)| *c != 0)
        .map(|((d, w, t), c)| {
            let r = pcapio::Record {
                data: d,
                wire_len: w,
                ts_ns: t,
            };
            if c > 0 {
                format!("bytes differ: {c}x only in ideal: {}", describe(&r))
            } else {
                format!("bytes differ: {}x only in run: {}", -c, describe(&r))
            }
        })
        .collect())
}

/// (proto, address, port, address, port): a connection seen from one of its endpoints.
type ConnKey = (u8, IpAddr, u16, IpAddr, u16);

/// Maps rewritten endpoints back to the originals, from one run's events.
#[derive(Default)]
struct Canon {
    /// (proto, public ip, public port, server ip, server port) -> client endpoint.
    nat: HashMap<ConnKey, (IpAddr, u16)>,
    /// (proto, client ip, client port, backend ip, server port) -> server ip.
    lb: HashMap<ConnKey, IpAddr>,
    alerts: BTreeSet<String>,
    inconsistent: Vec<String>,
}

fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    s.parse::<SocketAddr>().ok().map(|a| (a.ip(), a.port()))
}

fn tuple(v: &serde_json::Value) -> Option<FiveTuple> {
    Some(FiveTuple {
        proto: v["proto"].as_u64()? as u8,
        src: v["src"].as_str()?.parse().ok()?,
        dst: v["dst"].as_str()?.parse().ok()?,
        sport: v["sport"].as_u64()? as u16,
        dport: v["dport"].as_u64()? as u16,
    })
}

fn load_events(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v: Vec<serde_json::Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    v.sort_by_key(|e| e["clock"].as_u64().unwrap_or(0));
    Ok(v)
}

impl Canon {
    fn from_events(evs: &[serde_json::Value]) -> Canon {
        let mut c = Canon::default();
        // Live mappings per connection and per public endpoint, for the consistency rule.
        let mut live_conn: HashMap<(String, FiveTuple), ()> = HashMap::new();
        let mut live_public: HashMap<(String, String), FiveTuple> = HashMap::new();
        for e in evs {
            let vertex = e["vertex"].as_str().unwrap_or("").to_string();
            match e["event"].as_str().unwrap_or("") {
                "mapping_created" => {
                    let (Some(t), Some(p)) =
                        (tuple(&e["tuple"]), e["public"].as_str().and_then(endpoint))
                    else {
                        continue;
                    };
                    c.nat
                        .insert((t.proto, p.0, p.1, t.dst, t.dport), (t.src, t.sport));
                    let key = t.canonical();
                    if live_conn.insert((vertex.clone(), key), ()).is_some() {
                        c.inconsistent.push(format!(
                            "{vertex}: a second mapping for live connection {t}"
                        ));
                    }
                    let pk = (
                        vertex.clone(),
                        e["public"].as_str().unwrap_or("").to_string(),
                    );
                    if let Some(other) = live_public.insert(pk, t) {
                        c.inconsistent.push(format!(
                            "{vertex}: public endpoint {} given to {t} while {other} still holds it",
                            e["public"]
                        ));
                    }
                }
                "mapping_removed" => {
                    if let Some(t) = tuple(&e["flow"]) {
                        live_conn.remove(&(vertex.clone(), t.canonical()));
                    }
                    live_public.remove(&(vertex, e["public"].as_str().unwrap_or("").to_string()));
                }
                "backend_chosen" => {
                    let (Some(t), Some(server), Some(client), Some(backend)) = (
                        tuple(&e["tuple"]),
                        e["server"].as_str().and_then(endpoint),
                        e["client"].as_str().and_then(endpoint),
                        e["backend"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
                    ) else {
                        continue;
                    };
                    c.lb.insert((t.proto, client.0, client.1, backend, server.1), server.0);
                }
                "alert" | "block" => {
                    c.alerts.insert(format!(
                        "{} by {} on {}",
                        e["event"].as_str().unwrap_or(""),
                        e["detector"].as_str().unwrap_or("?"),
                        e["host"].as_str().unwrap_or("?")
                    ));
                }
                _ => {}
            }
        }
        c
    }

    /// The packet with rewritten endpoints restored and checksums zeroed.
    fn canonical(&self, rec: &pcapio::Record) -> Vec<u8> {
        let mut d = rec.data.clone();
        let n = d.len();
        let mut p = Packet::parse(&mut d, n, 0);
        if let Some(t) = p.five_tuple() {
            // Undo the LB (it ran last), then the NAT.
            if let Some(s) = self.lb.get(&(t.proto, t.src, t.sport, t.dst, t.dport)) {
                p.set_dst(*s);
            } else if let Some(s) = self.lb.get(&(t.proto, t.dst, t.dport, t.src, t.sport)) {
                p.set_src(*s);
            }
            let t = p.five_tuple().expect("still parses");
            if let Some((ip, port)) = self.nat.get(&(t.proto, t.src, t.sport, t.dst, t.dport)) {
                p.set_src(*ip);
                p.set_sport(*port);
            } else if let Some((ip, port)) =
                self.nat.get(&(t.proto, t.dst, t.dport, t.src, t.sport))
            {
                p.set_dst(*ip);
                p.set_dport(*port);
            }
        }
        let h = p.hdr;
        zero_checksums(&mut d, &h);
        d
    }
}

fn zero_checksums(d: &mut [u8], h: &nfs::packet::Headers) {
    use nfs::packet::{Shape, L4};
    if !matches!(h.shape, Shape::Ip | Shape::Fragment) {
        return;
    }
    if !h.ipv6 && d.len() >= h.l3 + 12 {
        d[h.l3 + 10] = 0;
        d[h.l3 + 11] = 0;
    }
    let off = match h.l4 {
        Some(L4::Tcp { .. }) => Some(h.l4_off + 16),
        Some(L4::Udp { .. }) => Some(h.l4_off + 6),
        Some(L4::Icmp { .. }) => Some(h.l4_off + 2),
        _ => None,
    };
    if let Some(o) = off {
        if o + 2 <= d.len() {
            d[o] = 0;
            d[o + 1] = 0;
        }
    }
}

fn describe(rec: &pcapio::Record) -> String {
    let mut d = rec.data.clone();
    let n = d.len();
    let p = Packet::parse(&mut d, n, 0);
    let what = match p.five_tuple() {
        Some(t) => t.to_string(),
        None => format!("{:?} frame", p.hdr.shape),
    };
    format!(
        "t={}.{:09} {} ({} bytes)",
        rec.ts_ns / 1_000_000_000,
        rec.ts_ns % 1_000_000_000,
        what,
        rec.wire_len
    )
}

/// Compares a run against the ideal one (file paths as `--keep` leaves them).
pub fn compare(
    ideal_pcap: &Path,
    ideal_ev: &Path,
    run_pcap: &Path,
    run_ev: &Path,
) -> Result<Report> {
    let ci = Canon::from_events(&load_events(ideal_ev)?);
    let cr = Canon::from_events(&load_events(run_ev)?);
    let ip = pcapio::read_all(ideal_pcap)?;
    let rp = pcapio::read_all(run_pcap)?;
    let mut counts: BTreeMap<(Vec<u8>, u32, u64), (i64, usize)> = BTreeMap::new();
    for (i, r) in ip.iter().enumerate() {
        counts
            .entry((ci.canonical(r), r.wire_len, r.ts_ns))
            .or_insert((0, i))
            .0 += 1;
    }
    let mut extra = Vec::new();
    for r in &rp {
        match counts.get_mut(&(cr.canonical(r), r.wire_len, r.ts_ns)) {
            Some(c) => c.0 -= 1,
            None => extra.push(r),
        }
    }
    let mut rep = Report {
        ideal_packets: ip.len(),
        run_packets: rp.len(),
        ideal_alerts: ci.alerts.iter().cloned().collect(),
        run_alerts: cr.alerts.iter().cloned().collect(),
        inconsistent_mappings: cr.inconsistent.len(),
        ..Default::default()
    };
    for (_, (c, i)) in counts {
        if c > 0 {
            rep.missing_in_run += c as usize;
            rep.differences
                .push(format!("missing in run ({c}x): {}", describe(&ip[i])));
        } else if c < 0 {
            rep.extra_in_run += (-c) as usize;
            rep.differences.push(format!(
                "duplicated in run ({}x extra): {}",
                -c,
                describe(&ip[i])
            ));
        }
    }
    for r in extra {
        rep.extra_in_run += 1;
        rep.differences
            .push(format!("not in ideal: {}", describe(r)));
    }
    rep.matched = rp.len() - rep.extra_in_run.min(rp.len());
    for a in ci.alerts.symmetric_difference(&cr.alerts) {
        let side = if ci.alerts.contains(a) {
            "ideal only"
        } else {
            "run only"
        };
        rep.differences.push(format!("{a}: {side}"));
    }
    rep.differences.extend(cr.inconsistent.iter().cloned());
    rep.equivalent = rep.differences.is_empty();
    Ok(rep)
}

/// How a scenario changes the chain: its parallelism, delays and scaling steps.
pub struct Setup {
    pub chain: Chain,
    pub delays: HashMap<String, Delay>,
    pub scaling: Vec<ScaleStep>,
    /// Operator policies the manager runs (the autoscale scenario).
    pub policies: Vec<Policy>,
    /// Admission rate, packets per second (the autoscale scenario: the policies act on
    /// rates over time, so the trace is spread over a tenth of a second or more).
    pub rate_pps: Option<u64>,
}

/// How often the manager applies the autoscale scenario's policies: often enough that the
/// shared traces (a few thousand packets) see several decisions.
pub const POLICY_PERIOD: std::time::Duration = std::time::Duration::from_millis(2);

/// The setup of an in-process scenario over a trace of `packets` packets.
pub fn scenario(chain: &Chain, name: &str, seed: u64, packets: u64) -> Result<Setup> {
    let mut c = chain.clone();
    let mut rng = Rng::new(seed);
    let mut delays = HashMap::new();
    let mut scaling = Vec::new();
    let mut policies = Vec::new();
    match name {
        "scale-out" | "scale-in" | "naive-move" => {
            let out = name != "scale-in";
            let names: Vec<String> = chain.vertices.iter().map(|v| v.name.clone()).collect();
            let mut picked: Vec<&String> = names.iter().filter(|_| rng.below(2) == 0).collect();
            if picked.is_empty() {
                picked.push(&names[rng.below(names.len() as u64) as usize]);
            }
            for n in picked {
                let steps = 1 + rng.below(2);
                let start = if out {
                    1 + rng.below(2)
                } else {
                    steps + 1 + rng.below(2)
                };
                c.set_parallelism(n, start as u16)?;
                // A little work per packet, so moves happen with packets queued at the old
                // instance (the case the handover exists for).
                delays.insert(
                    n.clone(),
                    Delay {
                        min_us: 0,
                        max_us: 10,
                    },
                );
                for _ in 0..steps {
                    scaling.push(ScaleStep {
                        after_packets: packets / 20 + rng.below((packets * 7 / 10).max(1)),
                        vertex: n.clone(),
                        action: if out {
                            ScaleAction::Out
                        } else {
                            ScaleAction::In
                        },
                        handover: name != "naive-move",
                    });
                }
            }
            scaling.sort_by_key(|s| s.after_packets);
        }
        "straggler" | "straggler-nodedup" => {
            // One instance is slowed and cloned at a seeded point (the paper's R5 experiment).
            let names: Vec<String> = chain.vertices.iter().map(|v| v.name.clone()).collect();
            let n = &names[rng.below(names.len() as u64) as usize];
            let p = 1 + rng.below(2) as u16;
            c.set_parallelism(n, p)?;
            // Odd seeds: the paper's mild straggler (the clone, replaying a long log, may
            // not overtake it); even seeds: a badly slowed one.
            let (min_us, max_us) = if seed % 2 == 1 { (3, 10) } else { (150, 300) };
            delays.insert(n.clone(), Delay { min_us, max_us });
            scaling.push(ScaleStep {
                after_packets: packets / 20 + rng.below((packets * 7 / 10).max(1)),
                vertex: n.clone(),
                action: ScaleAction::Clone(rng.below(u64::from(p)) as u16),
                handover: name == "straggler",
            });
        }
        "straggler-policy" => {
            // One instance of a seeded vertex (with a sibling to compare with) is slowed; the
            // manager's straggler policy finds it from the vertex manager's statistics and
            // clones it while the chain runs. The vertex is one whose instances share the
            // traffic: the entry, or one split by flow (behind the paper's NAT every
            // packet has the NAT's address as client, so a vertex split by client sends
            // all of it to one instance, which has no sibling at work to be slower than).
            let names: Vec<String> = chain
                .vertices
                .iter()
                .enumerate()
                .filter(|(i, v)| *i == chain.entry || v.partition == PartitionKey::Flow)
                .map(|(_, v)| v.name.clone())
                .collect();
            let n = &names[rng.below(names.len() as u64) as usize];
            let p = 2 + rng.below(2) as u16;
            c.set_parallelism(n, p)?;
            let slow = rng.below(u64::from(p));
            let (min_us, max_us) = if seed % 2 == 1 { (20, 40) } else { (150, 300) };
            delays.insert(format!("{n}#{slow}"), Delay { min_us, max_us });
            policies.push(Policy {
                vertex: n.clone(),
                rule: Rule::Stragglers { pct: 50 },
            });
        }
        "autoscale" => {
            // Seeded vertices under an autoscale rule whose threshold the chain crosses in
            // both directions as its rate swings from one short period to the next, so
            // instances come and go (and come back) while packets are queued.
            for v in chain.vertices.iter() {
                if rng.below(2) == 0 && !policies.is_empty() {
                    continue;
                }
                let pps = [5_000, 20_000, 60_000][rng.below(3) as usize];
                let max = 2 + rng.below(3) as u16;
                policies.push(Policy {
                    vertex: v.name.clone(),
                    rule: Rule::Autoscale { pps, max },
                });
                delays.insert(
                    v.name.clone(),
                    Delay {
                        min_us: 0,
                        max_us: 10,
                    },
                );
            }
        }
        "parallel" => {
            for v in chain.vertices.iter() {
                c.set_parallelism(&v.name, 2 + rng.below(3) as u16)?;
            }
        }
        "delay" => {
            let names: Vec<String> = chain.vertices.iter().map(|v| v.name.clone()).collect();
            let mut picked = false;
            for n in &names {
                if rng.below(2) == 0 {
                    delays.insert(
                        n.clone(),
                        Delay {
                            min_us: 50,
                            max_us: 100,
                        },
                    );
                    picked = true;
                }
            }
            if !picked {
                let n = &names[rng.below(names.len() as u64) as usize];
                delays.insert(
                    n.clone(),
                    Delay {
                        min_us: 50,
                        max_us: 100,
                    },
                );
            }
        }
        other => bail!(
            "unknown scenario {other:?} (available: {})",
            SCENARIOS.join(", ")
        ),
    }
    let rate_pps = (!policies.is_empty()).then(|| (packets * 10).clamp(20_000, 200_000));
    Ok(Setup {
        chain: c,
        delays,
        scaling,
        policies,
        rate_pps,
    })
}

/// Every scenario `chc-bench coe` knows.
pub const SCENARIOS: &[&str] = &[
    "parallel",
    "delay",
    "scale-out",
    "scale-in",
    "autoscale",
    "naive-move",
    "straggler",
    "straggler-nodedup",
    "straggler-policy",
    "processes",
    "nf-crash",
    "root-crash",
    "store-crash",
    "correlated",
    "nf-hang",
    "root-hang",
    "store-hang",
];

/// Scenarios that run the chain as separate processes and kill some of them.
pub fn is_cluster(s: &str) -> bool {
    matches!(
        s,
        "processes"
            | "nf-crash"
            | "root-crash"
            | "store-crash"
            | "correlated"
            | "nf-hang"
            | "root-hang"
            | "store-hang"
    )
}

/// The faults of a process scenario, placed by the seed among the `packets` the chain outputs.
pub fn faults(chain: &Chain, name: &str, seed: u64, packets: u64) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let at = packets / 10 + rng.below((packets * 6 / 10).max(1));
    let n = chain.vertices.len();
    let pick = |rng: &mut Rng| {
        let vi = rng.below(n as u64) as usize;
        Victim::Instance(
            vi,
            rng.below(u64::from(chain.vertices[vi].parallelism)) as u16,
        )
    };
    let victims = match name {
        "nf-crash" | "nf-hang" => vec![pick(&mut rng)],
        "root-crash" | "root-hang" => vec![Victim::Root],
        "store-crash" | "store-hang" => vec![Victim::Store],
        "correlated" => {
            let a = pick(&mut rng);
            let mut b = pick(&mut rng);
            while b == a {
                b = pick(&mut rng);
            }
            vec![a, b]
        }
        _ => return Vec::new(),
    };
    vec![Fault {
        after_output: at.max(1),
        victims,
        // Stopped, not killed: the manager finds it by its missing heartbeats.
        hang: name.ends_with("-hang"),
    }]
}

/// One run; returns its summary.
pub fn run_chain(setup: Setup, trace: &Path, pcap: &Path, ev: &Path, seed: u64) -> Result<Summary> {
    run(&RunOptions {
        events: Some(ev.to_path_buf()),
        delays: setup.delays,
        seed,
        scaling: setup.scaling,
        policies: setup.policies,
        policy_period: POLICY_PERIOD,
        rate_pps: setup.rate_pps,
        ..RunOptions::new(setup.chain, trace, pcap)
    })
    .with_context(|| format!("running the chain over {}", trace.display()))
}

/// The whole experiment; returns the report (and writes what was asked).
pub fn coe(a: &CoeArgs) -> Result<Report> {
    let chain = match &a.chain {
        Some(p) => Chain::load(p)?,
        None => Chain::paper(),
    };
    if !chain.store.addresses.is_empty() {
        bail!(
            "the chain keeps its state on store servers ([store] addresses): the ideal run \
             and the scenario would share them, the second starting from the first's state; \
             compare with a chain without addresses (each run then has a store of its own)"
        );
    }
    let tmp;
    let dir = match &a.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempdir()?;
            tmp.clone()
        }
    };
    let cluster = is_cluster(&a.scenario);
    if !cluster && !SCENARIOS.contains(&a.scenario.as_str()) {
        bail!(
            "unknown scenario {:?} (available: {})",
            a.scenario,
            SCENARIOS.join(", ")
        );
    }
    if a.backend == "dpdk"
        && !matches!(
            a.scenario.as_str(),
            "parallel"
                | "delay"
                | "scale-out"
                | "scale-in"
                | "autoscale"
                | "naive-move"
                | "straggler"
                | "straggler-nodedup"
                | "nf-crash"
                | "store-crash"
        )
    {
        bail!(
            "scenario {:?} runs on the embedded backend only; with --backend dpdk: parallel, \
             delay, scale-out, scale-in, autoscale, naive-move, straggler, straggler-nodedup, \
             nf-crash (a host of two killed and restarted), store-crash (the store server \
             killed and restarted)",
            a.scenario
        );
    }
    let dpdk_crash =
        a.backend == "dpdk" && matches!(a.scenario.as_str(), "nf-crash" | "store-crash");
    if a.backend != "dpdk" && a.backend != "pcap" {
        bail!("unknown backend {:?} (pcap or dpdk)", a.backend);
    }
    let mut ideal = chain.clone();
    for v in chain.vertices.iter() {
        ideal.set_parallelism(&v.name, 1)?;
    }
    let (ip, ie, rp, re) = (
        dir.join("ideal.pcap"),
        dir.join("ideal-events.jsonl"),
        dir.join("run.pcap"),
        dir.join("run-events.jsonl"),
    );
    let ideal_run = run_chain(
        Setup {
            chain: ideal,
            delays: HashMap::new(),
            scaling: Vec::new(),
            policies: Vec::new(),
            rate_pps: None,
        },
        &a.trace,
        &ip,
        &ie,
        a.seed,
    )?;
    let mut rep = if dpdk_crash {
        let text = chain_text(a)?;
        let ideal_bytes = std::fs::metadata(&ip)?.len();
        let run = crate::hostcrash::run(&crate::hostcrash::CrashRun {
            chain_text: &text,
            chain: &chain,
            trace: &a.trace,
            out: &rp,
            events: &re,
            dir: &dir,
            bin_dir: &default_bin_dir(),
            ideal_out_bytes: ideal_bytes,
            input_packets: ideal_run.packets_read,
            seed: a.seed,
            victim: if a.scenario == "store-crash" {
                crate::hostcrash::Victim::Store
            } else {
                crate::hostcrash::Victim::Host
            },
        })
        .with_context(|| format!("scenario {} on the DPDK path", a.scenario))?;
        let mut rep = compare(&ip, &ie, &rp, &re)?;
        rep.rejoins = run.rejoins;
        rep.duplicates_suppressed = run.exits_absorbed;
        let want = usize::from(a.scenario == "nf-crash");
        if rep.rejoins.len() != want {
            rep.differences.push(format!(
                "the root recovered a failed host {} times ({want} expected)",
                rep.rejoins.len()
            ));
        }
        add_strict_differences(&mut rep, &chain, &ip, &rp)?;
        rep.equivalent = rep.differences.is_empty();
        rep
    } else if cluster {
        let text = chain_text(a)?;
        let packets = pcapio::read_all(&ip)?.len() as u64;
        let run = run_cluster(&ClusterOptions {
            chain: chain.clone(),
            chain_toml: text,
            input: a.trace.clone(),
            output: rp.clone(),
            events: Some(re.clone()),
            run_dir: dir.join("cluster"),
            bin_dir: default_bin_dir(),
            store_shards: 2,
            fsync: if a.scenario.starts_with("store-") {
                "always".into()
            } else {
                "everysec".into()
            },
            faults: faults(&chain, &a.scenario, a.seed, packets),
            window: 256,
            // Generous for the machine (a run takes seconds), short enough to fail a hang.
            deadline: std::time::Duration::from_secs(120 + packets / 500),
            rate_pps: None,
            spares: !a.no_spares,
            heartbeat_timeout: chc_dataplane::cluster::manager::HEARTBEAT_TIMEOUT,
        })
        .with_context(|| format!("scenario {}", a.scenario))?;
        let mut rep = compare(&ip, &ie, &rp, &re)?;
        rep.recoveries = run.recoveries;
        rep.hung_killed = run.hung_killed;
        rep.duplicates_suppressed = run.duplicates_at_egress;
        add_strict_differences(&mut rep, &chain, &ip, &rp)?;
        rep
    } else if a.backend == "dpdk" {
        let setup = scenario(&chain, &a.scenario, a.seed, ideal_run.packets_read)?;
        match run_dpdk(&setup, a, &rp, &re, &dir) {
            Ok(s) => {
                let mut rep = compare(&ip, &ie, &rp, &re)?;
                rep.moves = summary_moves(&s)?;
                if !s["clone"].is_null() {
                    rep.clone = Some(serde_json::from_value(s["clone"].clone())?);
                }
                if !s["decisions"].is_null() {
                    rep.decisions = serde_json::from_value(s["decisions"].clone())?;
                }
                rep
            }
            // As below: a baseline's lost updates leave packets unsettled; the output is
            // written all the same.
            Err(e) => match unsettled_in(&format!("{e:#}")) {
                Some(n) if a.scenario == "naive-move" => {
                    unsettled_report(compare(&ip, &ie, &rp, &re)?, n)
                }
                _ => return Err(e.context(format!("scenario {} on the DPDK path", a.scenario))),
            },
        }
    } else {
        let setup = scenario(&chain, &a.scenario, a.seed, ideal_run.packets_read)?;
        match run_chain(setup, &a.trace, &rp, &re, a.seed) {
            Ok(s) => {
                let mut rep = compare(&ip, &ie, &rp, &re)?;
                rep.moves = s.moves;
                rep.clone = s.clone;
                rep.decisions = s.decisions;
                rep
            }
            // A baseline without the mechanism may lose state updates: the run still wrote
            // its output, and the loss is one of its differences.
            Err(e) => match e.downcast_ref::<RunError>() {
                Some(RunError::Unsettled(n)) => unsettled_report(compare(&ip, &ie, &rp, &re)?, *n),
                _ => return Err(e),
            },
        }
    };
    rep.scenario = a.scenario.clone();
    if a.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(j) = &a.json {
        write_json(j, a, &rep)?;
    }
    Ok(rep)
}

/// The chain file's text (the paper's chain without `--chain`), for runs that start other
/// processes on it.
fn chain_text(a: &CoeArgs) -> Result<String> {
    Ok(match &a.chain {
        Some(p) => std::fs::read_to_string(p)?,
        None => chc_dataplane::config::PAPER_CHAIN.to_string(),
    })
}

/// With one instance per vertex nothing may differ, not even a NAT port: the byte-for-byte
/// comparison's differences join the report's.
fn add_strict_differences(rep: &mut Report, chain: &Chain, ideal: &Path, run: &Path) -> Result<()> {
    if chain.vertices.iter().all(|v| v.parallelism == 1) {
        rep.differences.extend(strict_differences(ideal, run)?);
        rep.equivalent = rep.differences.is_empty();
    }
    Ok(())
}

/// A run that ended with `n` packets never settled: not equivalent, whatever its output.
fn unsettled_report(mut rep: Report, n: usize) -> Report {
    rep.unsettled = n;
    rep.differences.push(format!(
        "{n} packets never settled at the root: state updates the store refused or never committed"
    ));
    rep.equivalent = false;
    rep
}

/// The count of "N packets never settled" in a failed run's error output.
fn unsettled_in(err: &str) -> Option<usize> {
    let at = err.find(" packets never settled")?;
    err[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// EAL lcores that put the root on one worker lcore and spread the instances over two (the
/// main lcore and the first worker on CPU 0 and 1, the second worker on CPU 1 too).
pub const TWO_LCORES: &str = "--lcores=0@0,1@1,2@1";

/// `BIN run --backend dpdk` replaying `trace` into `out` (events into `ev`, if given) on the
/// lcores `eal` gives; the caller adds the chain and the run's other options.
pub fn dpdk_command(
    bin: &Path,
    trace: &Path,
    out: &Path,
    ev: Option<&Path>,
    eal: Option<&str>,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["run", "--backend", "dpdk", "--pcap-in"])
        .arg(trace)
        .arg("--pcap-out")
        .arg(out);
    if let Some(ev) = ev {
        cmd.arg("--events").arg(ev);
    }
    if let Some(e) = eal {
        cmd.arg(format!("--eal={e}"));
    }
    cmd
}

/// Adds `--delay NAME=MIN-MAX` for each delay (in name order) and the seed of their lengths.
pub fn delay_args(cmd: &mut std::process::Command, delays: &HashMap<String, Delay>, seed: u64) {
    let mut ds: Vec<_> = delays.iter().collect();
    ds.sort_by(|x, y| x.0.cmp(y.0));
    for (name, d) in ds {
        cmd.arg("--delay")
            .arg(format!("{name}={}-{}", d.min_us, d.max_us));
    }
    cmd.arg("--seed").arg(seed.to_string());
}

/// Runs a scenario's chain as `chc-dataplane run --backend dpdk` (one process: one EAL);
/// returns its summary.
fn run_dpdk(
    setup: &Setup,
    a: &CoeArgs,
    pcap: &Path,
    ev: &Path,
    dir: &Path,
) -> Result<serde_json::Value> {
    let summary = dir.join("run-summary.json");
    let bin = default_bin_dir().join("chc-dataplane");
    let mut cmd = dpdk_command(&bin, &a.trace, pcap, Some(ev), a.eal.as_deref());
    if let Some(c) = &a.chain {
        cmd.arg("--chain").arg(c);
    }
    for v in &setup.chain.vertices {
        cmd.arg("--parallelism")
            .arg(format!("{}={}", v.name, v.parallelism));
    }
    delay_args(&mut cmd, &setup.delays, a.seed);
    for st in &setup.scaling {
        let what = match st.action {
            ScaleAction::Out => "out".to_string(),
            ScaleAction::In => "in".to_string(),
            ScaleAction::Clone(i) => format!("clone={i}"),
        };
        cmd.arg("--scale")
            .arg(format!("{}:{what}@{}", st.vertex, st.after_packets));
    }
    if setup.scaling.iter().any(|st| !st.handover) {
        cmd.arg("--naive-move");
    }
    for p in &setup.policies {
        match p.rule {
            Rule::Autoscale { pps, max } => cmd
                .arg("--autoscale")
                .arg(format!("{}:{pps}:{max}", p.vertex)),
            Rule::Stragglers { pct } => cmd
                .arg("--clone-stragglers")
                .arg(format!("{}:{pct}", p.vertex)),
        };
    }
    if !setup.policies.is_empty() {
        cmd.arg("--policy-period-ms")
            .arg(POLICY_PERIOD.as_millis().to_string());
    }
    if let Some(r) = setup.rate_pps {
        cmd.arg("--rate").arg(r.to_string());
    }
    dpdk_summary(cmd, &summary)
}

/// Runs a `chc-dataplane run --backend dpdk` command (given everything but its summary
/// file) and returns the flow moves of its summary; a failure comes with its error output,
/// EAL lines left out.
pub fn dpdk_moves(
    cmd: std::process::Command,
    summary: &Path,
) -> Result<Vec<chc_dataplane::summary::MoveSummary>> {
    summary_moves(&dpdk_summary(cmd, summary)?)
}

/// The flow moves of a `chc-dataplane` summary.
fn summary_moves(s: &serde_json::Value) -> Result<Vec<chc_dataplane::summary::MoveSummary>> {
    // A run without moves leaves the field out.
    match &s["moves"] {
        serde_json::Value::Null => Ok(Vec::new()),
        m => Ok(serde_json::from_value(m.clone())?),
    }
}

/// Runs a `chc-dataplane run --backend dpdk` command (given everything but its summary
/// file) and returns its summary; a failure comes with its error output, EAL lines left
/// out.
pub fn dpdk_summary(mut cmd: std::process::Command, summary: &Path) -> Result<serde_json::Value> {
    let bin = cmd.get_program().to_string_lossy().to_string();
    let out = cmd
        .arg("--summary-json")
        .arg(summary)
        .output()
        .with_context(|| format!("starting {bin}"))?;
    if !out.status.success() {
        bail!(
            "{bin} --backend dpdk failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .filter(|l| !l.starts_with("EAL:"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(summary)?)?)
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "chc-coe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn write_json(path: &Path, a: &CoeArgs, rep: &Report) -> Result<()> {
    let mut r = Results::new("coe", 1);
    r.rows.push(Row::from_samples(
        format!(
            "output packets matching the ideal chain ({}, {})",
            a.scenario,
            a.trace.display()
        ),
        "packets",
        &[rep.matched as f64],
        &[rep.ideal_packets as f64],
        "ideal chain (same run)",
        Better::Higher,
        1.0,
    ));
    let mut v = serde_json::to_value(&r)?;
    v["equivalent"] = rep.equivalent.into();
    v["scenario"] = a.scenario.clone().into();
    v["trace"] = a.trace.display().to_string().into();
    v["seed"] = a.seed.into();
    v["report"] = serde_json::to_value(rep)?;
    std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unsettled_in;

    #[test]
    fn the_unsettled_count_is_read_from_a_failed_runs_error() {
        let e = "chc-dataplane --backend dpdk failed: chc-dataplane: x\nError: running the \
                 chain on DPDK\n\nCaused by:\n    412 packets never settled at the root";
        assert_eq!(unsettled_in(e), Some(412));
        assert_eq!(unsettled_in("never settled"), None);
        assert_eq!(unsettled_in("the store is gone"), None);
    }
}
