//! `chc-bench order`: chain-wide ordering (R4), the CHC paper's Trojan experiment.
//!
//! Trojan signatures (one host: an SSH connection, then FTP downloads of an HTML, a ZIP and an
//! EXE file, then IRC) are planted at `--hosts` points of a synthetic trace, each host's
//! packets spread between background packets. The chain is a load balancer with three
//! instances (split by flow, so one host's SSH, FTP and IRC connections take different
//! instances) and the Trojan detector on a copy of its output. Workloads as in the paper: W1,
//! one upstream instance adds a random delay of `--delay` µs to each packet; W2, two do; W3,
//! all three. Each workload runs with the detector ordering by logical clock (CHC) and by
//! arrival at the detector (`order = "arrival"`: a framework without chain-wide clocks), on
//! the same trace; rows count the planted signatures found.

use crate::coe::{delay_args, dpdk_command, dpdk_summary, TWO_LCORES};
use crate::results::{Better, Results, Row};
use crate::synth::{ftp_session, synth, SynthArgs};
use anyhow::{ensure, Context, Result};
use chc_dataplane::pcapio::{self, Record};
use chc_dataplane::Delay;
use chc_dataplane::{run, Chain, RunOptions};
use nfs::packet::{build::frame, tcp_flags::SYN, FiveTuple, PROTO_TCP};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The chain: three load balancer instances split by flow, the Trojan detector on a tap.
/// (The in-process store and the root keep their defaults.)
pub const R4_CHAIN: &str = r#"
[[vertex]]
name = "lb"
nf = "lb"
parallelism = 3
partition = "flow"
mode = "eo-c-na"
[vertex.config]
backends = ["10.10.0.1", "10.10.0.2", "10.10.0.3", "10.10.0.4"]
backends6 = ["2001:db8:10::1", "2001:db8:10::2"]

[[vertex]]
name = "trojan"
nf = "trojan"
parallelism = 1
mode = "eo-c-na"

[[tap]]
from = "lb"
to = "trojan"
"#;

/// Signatures the paper's OpenNF baseline found of 11 in W1-W3 (it missed 7, 10 and 11).
const PAPER_NO_CLOCKS_FOUND: [f64; 3] = [4.0, 1.0, 0.0];

/// Arguments of `chc-bench order`.
#[derive(clap::Args, Debug, Clone)]
pub struct OrderArgs {
    /// Write the results here (shared results format, with a `notes` field per row).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Runs of each workload and ordering, each with its own delay seed (medians reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Hosts with a planted Trojan signature.
    #[arg(long, default_value_t = 11)]
    pub hosts: usize,
    /// Background packets (a synthetic trace the signatures are spread through).
    #[arg(long, default_value_t = 20_000)]
    pub background: u64,
    /// Background packets between two packets of a planted host. At the default rate one
    /// background packet puts 100 µs between a host's packets, which the delays' 50 µs spread
    /// can reorder; with wider spacing only queueing behind a slowed instance can, and
    /// whether it does depends on how fast the rest of the chain runs.
    #[arg(long, default_value_t = 1)]
    pub spacing: usize,
    /// Packets per second admitted (a load the slowed instances keep up with, so queues stay
    /// short and reordering comes from the delays, not from backlog).
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Per-packet delay at a slowed instance, MIN-MAX microseconds.
    #[arg(long, default_value = "50-100")]
    pub delay: String,
    /// Keep the trace, the output and the events logs here.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Run the chain on this backend: pcap (the embedded runtime, a thread per instance) or
    /// dpdk (`chc-dataplane run --backend dpdk`, instances on lcores; a slowed instance's
    /// lcore spins before each packet).
    #[arg(long, default_value = "pcap")]
    pub backend: String,
    /// With --backend dpdk: EAL arguments (default "--lcores=0@0,1@1,2@1": the load
    /// balancer's instances on two worker lcores, so their outputs reach the detector by
    /// different paths).
    #[arg(long, allow_hyphen_values = true)]
    pub eal: Option<String>,
}

/// The address of planted host `k`.
pub fn planted_host(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 20, (k / 250) as u8, (k % 250) as u8 + 1))
}

/// The packets of one planted signature, in order: SSH, an FTP session downloading the
/// three file types, IRC.
fn signature(k: usize) -> Result<Vec<Vec<u8>>> {
    let host = planted_host(k);
    let syn_to = |sport: u16, dst: [u8; 4], dport: u16| {
        let t = FiveTuple {
            proto: PROTO_TCP,
            src: host,
            dst: IpAddr::V4(Ipv4Addr::from(dst)),
            sport,
            dport,
        };
        frame(&t, SYN, &[])
    };
    let mut pkts = vec![syn_to(51_000, [198, 51, 100, 22], 22)];
    pkts.extend(
        ftp_session(host, "html,zip,exe", 7)?
            .into_iter()
            .map(|r| r.data),
    );
    pkts.push(syn_to(52_000, [198, 51, 100, 67], 6667));
    Ok(pkts)
}

/// Spreads the signatures of `hosts` hosts through `background`, one planted packet after
/// every `spacing` background packets from each host's starting point; timestamps follow the
/// background packet before.
pub fn plant(background: &[Record], hosts: usize, spacing: usize) -> Result<Vec<Record>> {
    let sigs: Vec<Vec<Vec<u8>>> = (0..hosts).map(signature).collect::<Result<_>>()?;
    let need = sigs.iter().map(Vec::len).max().unwrap_or(0) * spacing.max(1);
    ensure!(
        background.len() >= need * (hosts + 1),
        "{} background packets are too few for {hosts} signatures spaced by {spacing}",
        background.len()
    );
    // Planted packets by the background index they follow.
    let mut after: HashMap<usize, Vec<Vec<u8>>> = HashMap::new();
    for (k, sig) in sigs.into_iter().enumerate() {
        let start = (k + 1) * background.len() / (hosts + 1) - need / 2;
        for (j, p) in sig.into_iter().enumerate() {
            after.entry(start + j * spacing.max(1)).or_default().push(p);
        }
    }
    let mut out =
        Vec::with_capacity(background.len() + after.values().map(Vec::len).sum::<usize>());
    for (i, r) in background.iter().enumerate() {
        out.push(r.clone());
        for data in after.remove(&i).unwrap_or_default() {
            out.push(Record {
                ts_ns: r.ts_ns,
                wire_len: data.len() as u32,
                data,
            });
        }
    }
    Ok(out)
}

/// Hosts the Trojan detector alerted on, from an events log.
pub fn trojan_alerts(events: &Path) -> Result<BTreeSet<String>> {
    let text =
        std::fs::read_to_string(events).with_context(|| format!("reading {}", events.display()))?;
    let mut hosts = BTreeSet::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["event"] == "alert" && e["detector"] == "trojan" {
            if let Some(h) = e["host"].as_str() {
                hosts.insert(h.to_string());
            }
        }
    }
    Ok(hosts)
}

/// The R4 chain's text with the detector ordering by clock or by arrival (for a
/// `chc-dataplane` process).
pub fn chain_text(by_arrival: bool) -> String {
    if by_arrival {
        R4_CHAIN.replace(
            "name = \"trojan\"\nnf = \"trojan\"\nparallelism = 1\nmode = \"eo-c-na\"\n",
            "name = \"trojan\"\nnf = \"trojan\"\nparallelism = 1\nmode = \"eo-c-na\"\n\
             [vertex.config]\norder = \"arrival\"\n",
        )
    } else {
        R4_CHAIN.to_string()
    }
}

/// The R4 chain with the detector ordering by clock or by arrival.
pub fn chain(by_arrival: bool) -> Result<Chain> {
    let c = Chain::parse(&chain_text(by_arrival), "the R4 chain")?;
    let v = c
        .vertices
        .iter()
        .find(|v| v.name == "trojan")
        .context("the chain has a trojan vertex")?;
    ensure!(
        (v.config.get("order").and_then(|o| o.as_str()) == Some("arrival")) == by_arrival,
        "the R4 chain's detector does not order as asked"
    );
    Ok(c)
}

/// The delays of workload `w` (1-3): the first `w` load balancer instances are slowed.
pub fn workload(w: usize, d: Delay) -> HashMap<String, Delay> {
    if w >= 3 {
        return HashMap::from([("lb".to_string(), d)]);
    }
    (0..w).map(|i| (format!("lb#{i}"), d)).collect()
}

/// What one run found.
pub struct Found {
    /// Planted hosts alerted on.
    pub planted: usize,
    /// Alerts on hosts without a planted signature.
    pub others: usize,
}

/// Where and how the runs of one experiment go.
pub struct Bed<'a> {
    /// The trace with the planted signatures.
    pub trace: &'a Path,
    /// Outputs and events logs go here.
    pub dir: &'a Path,
    /// Hosts with a planted signature.
    pub hosts: usize,
    /// Packets per second admitted.
    pub rate: u64,
    /// Run each chain as `chc-dataplane run --backend dpdk` (this binary, these EAL
    /// arguments) instead of in this process.
    pub dpdk: Option<(PathBuf, String)>,
}

impl Bed<'_> {
    /// One run of the R4 chain.
    pub fn run(
        &self,
        tag: &str,
        by_arrival: bool,
        delays: HashMap<String, Delay>,
        seed: u64,
    ) -> Result<Found> {
        let out = self.dir.join(format!("{tag}.pcap"));
        let ev = self.dir.join(format!("{tag}.jsonl"));
        match &self.dpdk {
            None => {
                run(&RunOptions {
                    events: Some(ev.clone()),
                    delays,
                    seed,
                    rate_pps: Some(self.rate),
                    ..RunOptions::new(chain(by_arrival)?, self.trace, &out)
                })
                .with_context(|| format!("run {tag}"))?;
            }
            Some((bin, eal)) => {
                let file = self.dir.join(format!("{tag}.toml"));
                std::fs::write(&file, chain_text(by_arrival))?;
                let mut cmd = dpdk_command(bin, self.trace, &out, Some(&ev), Some(eal));
                cmd.arg("--chain")
                    .arg(&file)
                    .arg("--rate")
                    .arg(self.rate.to_string());
                delay_args(&mut cmd, &delays, seed);
                dpdk_summary(cmd, &self.dir.join(format!("{tag}.summary.json")))
                    .with_context(|| format!("run {tag}"))?;
            }
        }
        let alerted = trojan_alerts(&ev)?;
        let planted: BTreeSet<String> = (0..self.hosts)
            .map(|k| planted_host(k).to_string())
            .collect();
        Ok(Found {
            planted: alerted.intersection(&planted).count(),
            others: alerted.difference(&planted).count(),
        })
    }
}

/// Builds the trace (background + planted signatures) in `dir`.
pub fn trace(dir: &Path, background: u64, hosts: usize, spacing: usize) -> Result<PathBuf> {
    let bg = dir.join("background.pcap");
    synth(&SynthArgs {
        cmd: None,
        out: bg.clone(),
        packets: background,
        connections: (background / 15).max(1),
        median_size: 200,
        clients: 2000,
        servers: 300,
        ipv6: 0.05,
        duration_s: 5.0,
        seed: 4,
    })?;
    let recs = plant(&pcapio::read_all(&bg)?, hosts, spacing)?;
    let out = dir.join("r4.pcap");
    let mut w = pcapio::Writer::create(&out, 65535)?;
    for r in &recs {
        w.write(r.ts_ns, r.wire_len, &r.data)?;
    }
    w.finish()?;
    Ok(out)
}

/// Runs the experiment: prints the table and writes `--json`.
pub fn run_order(a: &OrderArgs) -> Result<serde_json::Value> {
    ensure!(
        a.hosts > 0 && a.reps > 0,
        "--hosts and --reps must be at least 1"
    );
    let d: Delay = a
        .delay
        .parse()
        .map_err(|e| anyhow::anyhow!("--delay {:?}: {e}", a.delay))?;
    let tmp = tempfile::tempdir()?;
    let dir = match &a.keep {
        Some(k) => {
            std::fs::create_dir_all(k).with_context(|| format!("creating {}", k.display()))?;
            k.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let trace = trace(&dir, a.background, a.hosts, a.spacing)?;
    let bed = Bed {
        trace: &trace,
        dir: &dir,
        hosts: a.hosts,
        rate: a.rate,
        dpdk: match a.backend.as_str() {
            "pcap" => None,
            "dpdk" => Some((
                chc_dataplane::cluster::manager::default_bin_dir().join("chc-dataplane"),
                a.eal.clone().unwrap_or_else(|| TWO_LCORES.to_string()),
            )),
            other => anyhow::bail!("unknown backend {other:?} (pcap or dpdk)"),
        },
    };
    let ideal = bed.run("ideal", false, HashMap::new(), 1)?;
    ensure!(
        ideal.planted == a.hosts,
        "the chain without delays found {} of {} planted signatures: the trace is wrong",
        ideal.planted,
        a.hosts
    );
    // Control: without delays, arrival order at the detector is already not input order
    // (three instances run side by side), but far less so.
    let calm = bed.run("calm-arrival", true, HashMap::new(), 1)?;
    eprintln!(
        "no delays, arrival order: {} of {} found",
        calm.planted, a.hosts
    );
    let mut res = Results::new("order", a.reps);
    let mut notes = Vec::new();
    let n = a.hosts as f64;
    for w in 1..=3 {
        let (mut clocks, mut arrival, mut false_alerts) = (Vec::new(), Vec::new(), 0);
        for rep in 0..a.reps {
            let seed = 1 + rep as u64;
            for by_arrival in [false, true] {
                let tag = format!(
                    "w{w}-{}-{seed}",
                    if by_arrival { "arrival" } else { "clock" }
                );
                let f = bed.run(&tag, by_arrival, workload(w, d), seed)?;
                eprintln!(
                    "W{w} seed {seed} {}: {} of {} found, {} other alerts",
                    if by_arrival { "arrival" } else { "clocks " },
                    f.planted,
                    a.hosts,
                    f.others
                );
                if by_arrival {
                    arrival.push(f.planted as f64);
                } else {
                    clocks.push(f.planted as f64);
                    false_alerts += f.others;
                }
            }
        }
        let slowed = if w == 3 {
            "all three".into()
        } else {
            format!("{w} of 3")
        };
        res.rows.push(Row::from_samples(
            format!("W{w}: Trojan signatures found with clocks, of {}", a.hosts),
            "signatures",
            &clocks,
            &[n],
            "signatures planted (the paper: CHC finds all 11)",
            Better::Higher,
            1.0,
        ));
        notes.push(format!(
            "{slowed} load balancer instances add {}-{} us per packet; the Trojan detector \
             orders by logical clock; {} alerts on unplanted hosts over {} runs",
            d.min_us, d.max_us, false_alerts, a.reps
        ));
        res.rows.push(Row::from_samples(
            format!(
                "W{w}: Trojan signatures found without clocks (arrival order), of {}",
                a.hosts
            ),
            "signatures",
            &arrival,
            &[n],
            "signatures planted",
            Better::Lower,
            (n - 1.0) / n,
        ));
        notes.push(format!(
            "baseline without chain-wide clocks: the same runs with the detector ordering by \
             arrival; the target says it must miss at least one; the paper's OpenNF found {} \
             of 11; without any delay, arrival order found {} of {}",
            PAPER_NO_CLOCKS_FOUND[w - 1],
            calm.planted,
            a.hosts
        ));
    }
    if let Some((_, eal)) = &bed.dpdk {
        for n in &mut notes {
            n.push_str(&format!(
                "; chain run by chc-dataplane --backend dpdk (EAL {eal}; a slowed instance's \
                 lcore spins before each packet)"
            ));
        }
        res.rows
            .iter_mut()
            .for_each(|r| r.metric = format!("{} (DPDK path)", r.metric));
    }
    print!("{}", res.table());
    let mut v = serde_json::to_value(&res)?;
    if let Some(rows) = v["rows"].as_array_mut() {
        for (r, n) in rows.iter_mut().zip(&notes) {
            r["notes"] = n.clone().into();
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planting_keeps_the_background_and_each_signature_in_order() {
        // Background frames of a length no planted frame has.
        let bg: Vec<Record> = (0..400u64)
            .map(|i| Record {
                ts_ns: i,
                wire_len: 1000,
                data: vec![i as u8; 1000],
            })
            .collect();
        let out = plant(&bg, 3, 4).unwrap();
        let sig_len = signature(0).unwrap().len();
        assert_eq!(out.len(), 400 + 3 * sig_len);
        // The background, in order, once each.
        let kept: Vec<&Record> = out.iter().filter(|r| r.wire_len == 1000).collect();
        assert_eq!(kept.len(), bg.len());
        assert!(kept.iter().zip(&bg).all(|(a, b)| a.data == b.data));
        // Each signature's packets, in order, never adjacent to each other.
        for k in 0..3 {
            let sig = signature(k).unwrap();
            // (Some frames of a session repeat byte for byte: search on from the last one.)
            let mut at: Vec<usize> = Vec::new();
            for p in &sig {
                let from = at.last().map_or(0, |i| i + 1);
                let i = out[from..].iter().position(|r| &r.data == p).unwrap();
                at.push(from + i);
            }
            assert!(at.windows(2).all(|w| w[1] > w[0] + 1), "{at:?}");
        }
        assert!(out.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    }

    #[test]
    fn workloads_slow_one_two_or_all_instances() {
        let d = Delay {
            min_us: 50,
            max_us: 100,
        };
        assert_eq!(workload(1, d).len(), 1);
        assert!(workload(2, d).contains_key("lb#1"));
        assert!(workload(3, d).contains_key("lb"));
        assert!(chain(true).is_ok() && chain(false).is_ok());
    }
}
