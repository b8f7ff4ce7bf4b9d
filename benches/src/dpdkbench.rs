//! `chc-bench dpdk`: the DPDK dataplane's speed on one lcore, as ratios against
//! `dpdk-testpmd` and against itself, measured in one run on the same virtual devices.
//!
//! Setup of every trial (each its own process: DPDK allows one EAL per process), on two
//! `net_ring` ports, `--no-huge --no-pci`, CPU 1 forwarding:
//! - `dpdk-testpmd` io and macswap, through `fwd_bench testpmd` (dataplane/dpdk/examples):
//!   two ports in a loop, 32 packets in flight per port, burst 32;
//! - our chain (`empty`: the root alone, stamping, logging and deleting; `nat-traditional`;
//!   `nat-eo-c-na`; `paper`: NAT, portscan detector, load balancer, off-path Trojan
//!   detector) on lcore 1 (CPU 1): in on `net_ring0`, out on `net_ring1`. Like testpmd's
//!   `--tx-first` loop, the traffic runs round on that one lcore: a source called in every
//!   iteration of the chain's loop takes the chain's output from `net_ring1`, gives each
//!   packet the headers of the next template when the chain rewrites headers (the NAT and
//!   the load balancer do; the empty chain does not, so its packets go round unchanged, as
//!   testpmd's do) and sends it into `net_ring0` again, keeping 128 packets in flight. Its
//!   work counts against us. The templates are 1024 TCP connections, both directions, with original
//!   addresses, as a bump in the wire sees them. The chain's store runs in the same
//!   process, as shard threads the EAL does not pin: they stand for the store hosts of a
//!   deployment and do not share the lcore's CPU (their work is not in the lcore's cycles,
//!   but it is in the Mpps of the `eo-c-na` chains, which wait for it).
//!
//! Figures: Mpps (packets the chain transmitted per wall-clock second after a one-second
//! warm-up), TSC cycles per packet of CPU time the chain lcore received (from
//! /proc, robust to other load on a shared machine), and the chain's per-packet latency
//! (admission at the root to just before the transmitting burst) p50/p99 from its HDR
//! histogram. Trials are interleaved and every figure is a median over repetitions.
//! `--log-limit` sets the root's log capacity (the chain file's default is 65536); the root's
//! log is a ring that grows to the packets in flight, so the limit only bounds it.

use crate::results::{median, Better, Results, Row};
use anyhow::{bail, Context, Result};
use chc_dataplane::config::PortFile;
use chc_dataplane::dpdk::chc_dpdk::{Burst, Mbuf, Mempool, RxQueue, TxQueue};
use chc_dataplane::dpdk::{self, telemetry, DpdkOptions};
use chc_dataplane::Chain;
use chc_store::client::cache::Mode;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct DpdkArgs {
    #[command(subcommand)]
    pub trial: Option<TrialCmd>,
    /// Repetitions of each trial (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Seconds measured per trial, after one second of warm-up.
    #[arg(long, default_value_t = 2)]
    pub seconds: u64,
    /// Packet sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1500")]
    pub sizes: Vec<usize>,
    /// Chains to measure (empty, nat-traditional, nat-eo-c-na, paper).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "empty,nat-traditional,nat-eo-c-na,paper"
    )]
    pub chains: Vec<String>,
    /// Write the results in the shared format here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The dpdk-testpmd binary.
    #[arg(long, default_value = "dpdk-testpmd")]
    pub testpmd: String,
    /// The forwarding-baseline harness (default: examples/fwd_bench next to this binary).
    #[arg(long)]
    pub fwd_bench: Option<PathBuf>,
    /// The root's log capacity (`[root] log_limit`; default: the chain file's default,
    /// 65536). The log grows to the packets in flight (the trials keep 128), so the limit
    /// only bounds it.
    #[arg(long)]
    pub log_limit: Option<usize>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum TrialCmd {
    /// One trial of our chain in this process; prints one JSON line.
    Trial {
        #[arg(long)]
        chain: String,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        /// The root's log capacity (default: the chain file's).
        #[arg(long)]
        log_limit: Option<usize>,
    },
}

/// One trial's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Trial {
    pub mpps: f64,
    pub packets: u64,
    pub cpu_seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub tsc_hz: u64,
    /// Share of the lcore's loop cycles spent in iterations that had packets: below 1, the
    /// chain waited (for the source's packets, or for room in the root's log).
    pub busy_share: f64,
    /// Packets in the root's log, the median of samples taken every 10 ms.
    pub root_in_flight: u64,
    /// CPU time of the in-process store's shard threads per packet, in TSC cycles: what
    /// the store costs beside the lcore.
    pub store_cycles_per_packet: f64,
}

impl Trial {
    fn cycles_per_packet(&self, hz: u64) -> f64 {
        hz as f64 * self.cpu_seconds / self.packets.max(1) as f64
    }
    fn from_json(v: &serde_json::Value) -> Result<Trial> {
        Ok(Trial {
            mpps: v["mpps"].as_f64().context("no mpps")?,
            packets: v["packets"].as_u64().context("no packets")?,
            cpu_seconds: v["cpu_seconds"].as_f64().context("no cpu_seconds")?,
            p50_us: v["p50_us"].as_f64().unwrap_or(0.0),
            p99_us: v["p99_us"].as_f64().unwrap_or(0.0),
            tsc_hz: v["tsc_hz"].as_u64().unwrap_or(0),
            busy_share: v["busy_share"].as_f64().unwrap_or(0.0),
            root_in_flight: v["root_in_flight"].as_u64().unwrap_or(0),
            store_cycles_per_packet: v["store_cycles_per_packet"].as_f64().unwrap_or(0.0),
        })
    }
}

const CHAINS: [&str; 4] = ["empty", "nat-traditional", "nat-eo-c-na", "paper"];
const IN_FLIGHT: usize = 128;
const FLOWS: usize = 1024;

/// The chain of a trial, with its two ports (and `log_limit` for the root, if given).
pub fn chain_of(kind: &str, log_limit: Option<usize>) -> Result<Chain> {
    let paper = Chain::paper();
    let mut c = match kind {
        "empty" => dpdk::empty_chain(&paper),
        "nat-traditional" | "nat-eo-c-na" => {
            let mut c = Chain::parse("[[vertex]]\nname = \"nat\"\nnf = \"nat\"\n", "nat.toml")?;
            c.set_mode(if kind == "nat-traditional" {
                Mode::Traditional
            } else {
                Mode::EoCNa
            });
            c
        }
        "paper" => paper,
        other => bail!("unknown chain {other:?} (known: {})", CHAINS.join(", ")),
    };
    if let Some(l) = log_limit {
        if l < IN_FLIGHT {
            bail!("--log-limit {l} is below the {IN_FLIGHT} packets the trial keeps in flight");
        }
        c.root.log_limit = l;
    }
    c.ports = vec![
        PortFile {
            name: "in".into(),
            device: "net_ring0".into(),
            host: None,
            rx: true,
            egress: Some("out".into()),
            mtu: None,
        },
        PortFile {
            name: "out".into(),
            device: "net_ring1".into(),
            host: None,
            rx: false,
            egress: None,
            mtu: None,
        },
    ];
    Ok(c)
}

/// Packet `i` of the templates: connection `i / 2`, client to server for even `i`.
pub fn template(i: usize, size: usize) -> Vec<u8> {
    let size = size.max(64);
    let conn = (i / 2) % FLOWS;
    let mut f = vec![0u8; size];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let client = [10, 1, (conn >> 8) as u8, conn as u8];
    let server = [203, 0, 113, 1 + (conn % 8) as u8];
    let (cport, sport) = (20000 + conn as u16, 80u16);
    let (src, dst, sp, dp) = if i.is_multiple_of(2) {
        (client, server, cport, sport)
    } else {
        (server, client, sport, cport)
    };
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((size - 14) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = nfs::packet::checksum(&[&f[14..34]]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&sp.to_be_bytes());
    tcp[2..4].copy_from_slice(&dp.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = nfs::packet::tcp_flags::ACK;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f
}

/// Bytes of a template that the chain may rewrite (Ethernet, IP, TCP headers) and the
/// source puts back.
const HEADERS: usize = 54;

/// CPU seconds of one thread of this process (user + system, from /proc).
fn thread_cpu_seconds(tid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// CPU seconds of this process's in-process store shard threads (named `shard-N`).
fn shard_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("shard-"))
        })
        .filter_map(|t| t.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| thread_cpu_seconds(tid).ok())
        .sum()
}

/// The traffic source: keeps `IN_FLIGHT` packets going round through the chain.
struct Source {
    tx: TxQueue,
    rx: RxQueue,
    templates: Vec<Vec<u8>>,
    next: usize,
    in_flight: usize,
    burst: Burst,
    pool: Mempool,
    telemetry: Arc<dyn telemetry::Source>,
    seen_drops: u64,
    polls: u32,
    /// Whether the chain rewrites headers, so each packet needs its template's back.
    rewrites: bool,
}

impl Source {
    /// Gives a packet the headers of the next template (the chain rewrote them).
    fn restore(&mut self, m: &mut Mbuf) {
        let t = &self.templates[self.next % self.templates.len()];
        self.next += 1;
        let d = m.data_mut();
        let n = HEADERS.min(d.len());
        d[..n].copy_from_slice(&t[..n]);
    }

    fn top_up(&mut self) {
        while self.in_flight < IN_FLIGHT && !self.burst.is_full() {
            let t = &self.templates[self.next % self.templates.len()];
            self.next += 1;
            let Ok(m) = self.pool.alloc_from(t) else {
                break;
            };
            let _ = self.burst.push(m);
            self.in_flight += 1;
        }
        self.send();
    }

    fn send(&mut self) {
        let mut tries = 0;
        while !self.burst.is_empty() && tries < 1000 {
            if self.tx.tx_burst(&mut self.burst) == 0 {
                tries += 1;
            }
        }
        self.burst.clear();
    }

    /// One round: take what came out, restore it, send it in again.
    fn step(&mut self) {
        let mut b = std::mem::replace(&mut self.burst, Burst::with_capacity(0));
        self.rx.rx_burst(&mut b);
        if self.rewrites {
            for m in b.iter_mut() {
                self.restore(m);
            }
        }
        self.burst = b;
        self.send();
        self.polls += 1;
        if self.polls.is_multiple_of(4096) {
            // Packets an NF dropped left the loop: send new ones in their place.
            let d: u64 = self
                .telemetry
                .figures()
                .lcores
                .iter()
                .map(|l| l.drops)
                .sum();
            let lost = (d - self.seen_drops).min(self.in_flight as u64) as usize;
            self.in_flight -= lost;
            self.seen_drops = d;
            self.top_up();
        }
    }
}

/// One trial in this process: the chain and its traffic source share lcore 1.
pub fn trial(kind: &str, size: usize, seconds: u64, log_limit: Option<usize>) -> Result<Trial> {
    let mut opts = DpdkOptions::new(chain_of(kind, log_limit)?);
    opts.eal = Some(format!(
        "--no-huge --no-pci -m 512 --no-shconf --no-telemetry -l 1 --file-prefix chcb-{}",
        std::process::id()
    ));
    let mut dp = dpdk::prepare(&opts)?;
    let (mut tx, mut rx) = (None, None);
    for q in dp.take_spare_queues() {
        if q.port == "in" {
            tx = q.tx;
        } else if q.port == "out" {
            rx = q.rx;
        }
    }
    let telemetry = dp.telemetry();
    let mut src = Source {
        tx: tx.context("no spare tx queue on the input port")?,
        rx: rx.context("no spare rx queue on the output port")?,
        templates: (0..2 * FLOWS).map(|i| template(i, size)).collect(),
        next: 0,
        in_flight: 0,
        burst: Burst::with_capacity(64),
        pool: Mempool::lookup("chc-pkts")?,
        telemetry: telemetry.clone(),
        seen_drops: 0,
        polls: 0,
        rewrites: kind != "empty",
    };
    src.top_up();
    dp.attach_hook(Box::new(move || src.step()));
    let hz = chc_dataplane::dpdk::chc_dpdk::lcore::tsc_hz()?;
    let stop = dp.stop_handle();
    // The main lcore runs the chain (in `wait`); this thread measures, then stops it.
    let main_tid = std::process::id();
    let watcher = std::thread::spawn(move || -> Result<(u64, f64, f64, f64, u64, f64)> {
        let transmitted = |f: &telemetry::Figures| {
            f.ports
                .iter()
                .find(|p| p.name == "out")
                .map_or(0, |p| p.tx_packets)
        };
        let cycles = |f: &telemetry::Figures| {
            f.lcores.iter().fold((0u64, 0u64), |(b, t), l| {
                (b + l.busy_cycles, t + l.total_cycles)
            })
        };
        std::thread::sleep(Duration::from_secs(1));
        let f0 = telemetry.figures();
        let (c0, s0, t0) = (
            thread_cpu_seconds(main_tid),
            shard_cpu_seconds(),
            Instant::now(),
        );
        let mut in_flight = Vec::new();
        while t0.elapsed() < Duration::from_secs(seconds) {
            std::thread::sleep(Duration::from_millis(10));
            in_flight.push(telemetry.figures().root_in_flight);
        }
        let f1 = telemetry.figures();
        let (c1, s1, secs) = (
            thread_cpu_seconds(main_tid),
            shard_cpu_seconds(),
            t0.elapsed().as_secs_f64(),
        );
        stop.stop();
        let ((b0, tot0), (b1, tot1)) = (cycles(&f0), cycles(&f1));
        let busy = (b1 - b0) as f64 / ((tot1 - tot0) as f64).max(1.0);
        in_flight.sort_unstable();
        let median = in_flight.get(in_flight.len() / 2).copied().unwrap_or(0);
        Ok((
            transmitted(&f1) - transmitted(&f0),
            c1? - c0?,
            secs,
            busy,
            median,
            s1 - s0,
        ))
    });
    let summary = dp.wait()?;
    let (packets, cpu_seconds, secs, busy_share, root_in_flight, store_seconds) =
        watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;
    Ok(Trial {
        mpps: packets as f64 / secs / 1e6,
        packets,
        cpu_seconds,
        p50_us: summary.chain.latency_p50_us,
        p99_us: summary.chain.latency_p99_us,
        tsc_hz: hz,
        busy_share,
        root_in_flight,
        store_cycles_per_packet: store_seconds * hz as f64 / packets.max(1) as f64,
    })
}

fn run_json(bin: &std::path::Path, args: &[String]) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().context("no output")?;
    Ok(serde_json::from_str(line)?)
}

/// The whole experiment.
pub fn run(a: &DpdkArgs) -> Result<()> {
    if let Some(TrialCmd::Trial {
        chain,
        size,
        seconds,
        log_limit,
    }) = &a.trial
    {
        let t = trial(chain, *size, *seconds, *log_limit)?;
        println!(
            "{}",
            serde_json::json!({
                "mpps": t.mpps, "packets": t.packets, "cpu_seconds": t.cpu_seconds,
                "p50_us": t.p50_us, "p99_us": t.p99_us, "tsc_hz": t.tsc_hz,
                "busy_share": t.busy_share, "root_in_flight": t.root_in_flight,
                "store_cycles_per_packet": t.store_cycles_per_packet,
            })
        );
        return Ok(());
    }
    for c in &a.chains {
        chain_of(c, a.log_limit)?;
    }
    let me = std::env::current_exe()?;
    let fwd = match &a.fwd_bench {
        Some(p) => p.clone(),
        None => me
            .parent()
            .context("no directory")?
            .join("examples/fwd_bench"),
    };
    if !fwd.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p chc-dpdk --example fwd_bench` \
             or pass --fwd-bench",
            fwd.display()
        );
    }
    let mut results = Results::new("dpdk", a.reps);
    // testpmd's trials do not report the TSC rate; ours do.
    let mut known_hz = 0;
    for &size in &a.sizes {
        // samples[name] over repetitions.
        let mut samples: std::collections::BTreeMap<String, Vec<Trial>> = Default::default();
        for rep in 0..a.reps {
            let mut order: Vec<String> = vec!["testpmd-io".into(), "testpmd-macswap".into()];
            order.extend(a.chains.iter().cloned());
            if rep % 2 == 1 {
                order.reverse();
            }
            for name in order {
                let t = match name.strip_prefix("testpmd-") {
                    Some(mode) => {
                        let v = run_json(
                            &fwd,
                            &[
                                "testpmd".into(),
                                "--testpmd".into(),
                                a.testpmd.clone(),
                                "--mode".into(),
                                mode.into(),
                                "--size".into(),
                                size.to_string(),
                                "--seconds".into(),
                                a.seconds.to_string(),
                            ],
                        )?;
                        Trial::from_json(&v)?
                    }
                    None => {
                        let mut args: Vec<String> = vec![
                            "dpdk".into(),
                            "trial".into(),
                            "--chain".into(),
                            name.clone(),
                            "--size".into(),
                            size.to_string(),
                            "--seconds".into(),
                            a.seconds.to_string(),
                        ];
                        if let Some(l) = a.log_limit {
                            args.extend(["--log-limit".into(), l.to_string()]);
                        }
                        Trial::from_json(&run_json(&me, &args)?)?
                    }
                };
                if t.tsc_hz > 0 {
                    known_hz = t.tsc_hz;
                }
                let cycles = match known_hz {
                    0 => "?".to_string(),
                    hz => format!("{:.0}", t.cycles_per_packet(hz)),
                };
                eprintln!(
                    "{size} B rep {rep}: {name:<16} {:>7.2} Mpps  {cycles:>6} cycles/pkt on CPU",
                    t.mpps,
                );
                samples.entry(name).or_default().push(t);
            }
        }
        let hz = samples
            .values()
            .flatten()
            .map(|t| t.tsc_hz)
            .find(|&h| h > 0)
            .unwrap_or(1);
        rows(&mut results.rows, size, &samples, hz);
    }
    print!("{}", results.table());
    if let Some(p) = &a.json {
        results
            .write(p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn rows(
    out: &mut Vec<Row>,
    size: usize,
    s: &std::collections::BTreeMap<String, Vec<Trial>>,
    hz: u64,
) {
    let mpps = |n: &str| -> Vec<f64> {
        s.get(n)
            .map_or(vec![], |v| v.iter().map(|t| t.mpps).collect())
    };
    let cyc = |n: &str| -> Vec<f64> {
        s.get(n).map_or(vec![], |v| {
            v.iter().map(|t| t.cycles_per_packet(hz)).collect()
        })
    };
    let lat = |n: &str, p99: bool| -> Vec<f64> {
        s.get(n).map_or(vec![], |v| {
            v.iter()
                .map(|t| if p99 { t.p99_us } else { t.p50_us })
                .collect()
        })
    };
    let base_name = |n: &str| match n {
        "testpmd-io" => "dpdk-testpmd 22.11 io (same run)".to_string(),
        "testpmd-macswap" => "dpdk-testpmd 22.11 macswap (same run)".to_string(),
        other => format!("our {other} chain (same run)"),
    };
    // (ours, baseline, target for Mpps; None: no target set, the row informs)
    let pairs: [(&str, &str, Option<f64>); 6] = [
        ("empty", "testpmd-macswap", Some(0.9)),
        ("empty", "testpmd-io", None),
        ("nat-eo-c-na", "nat-traditional", Some(0.9)),
        ("nat-traditional", "empty", None),
        ("paper", "empty", None),
        ("paper", "testpmd-macswap", None),
    ];
    for (ours, base, target) in pairs {
        if mpps(ours).is_empty() || mpps(base).is_empty() {
            continue;
        }
        out.push(Row::from_samples(
            format!("{ours} chain Mpps vs {base}, {size} B, net_ring, 1 lcore"),
            "Mpps",
            &mpps(ours),
            &mpps(base),
            base_name(base),
            Better::Higher,
            target.unwrap_or(0.0),
        ));
        out.push(Row::from_samples(
            format!("{ours} chain TSC cycles/packet on CPU vs {base}, {size} B"),
            "cycles/packet",
            &cyc(ours),
            &cyc(base),
            base_name(base),
            Better::Lower,
            target.map_or(f64::INFINITY, |t| (1000.0 / t).round() / 1000.0),
        ));
    }
    for (ours, base) in [
        ("nat-eo-c-na", "nat-traditional"),
        ("paper", "nat-traditional"),
    ] {
        if lat(ours, false).is_empty() || lat(base, false).is_empty() {
            continue;
        }
        for (p99, label) in [(false, "p50"), (true, "p99")] {
            out.push(Row::from_samples(
                format!("{ours} chain latency {label} vs {base}, {size} B (root to transmit)"),
                "us",
                &lat(ours, p99),
                &lat(base, p99),
                base_name(base),
                Better::Lower,
                f64::INFINITY,
            ));
        }
    }
    let _ = median(&[]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs::packet::{Packet, Shape};

    #[test]
    fn templates_are_valid_tcp_in_both_directions() {
        for size in [64, 1500] {
            let a = template(6, size);
            let b = template(7, size);
            assert_eq!(a.len(), size);
            let mut a2 = a.clone();
            let mut b2 = b.clone();
            let pa = Packet::parse(&mut a2, size, 0);
            let pb = Packet::parse(&mut b2, size, 0);
            assert_eq!(pa.hdr.shape, Shape::Ip);
            let (ta, tb) = (pa.five_tuple().unwrap(), pb.five_tuple().unwrap());
            assert_eq!(ta, tb.reversed(), "two directions of one connection");
            assert_eq!(nfs::packet::checksum(&[&a[14..34]]), 0, "IPv4 checksum");
        }
        assert_ne!(
            template(0, 64)[26..34],
            template(2, 64)[26..34],
            "connections differ"
        );
    }

    #[test]
    fn every_chain_kind_has_ports_and_unknown_ones_are_refused() {
        for k in CHAINS {
            let c = chain_of(k, None).unwrap();
            assert_eq!(c.ports.len(), 2);
        }
        assert!(chain_of("empty", None).unwrap().vertices.is_empty());
        assert!(chain_of("fast", None)
            .unwrap_err()
            .to_string()
            .contains("known"));
        assert_eq!(
            chain_of("nat-eo-c-na", Some(1024)).unwrap().root.log_limit,
            1024
        );
        assert!(
            chain_of("empty", Some(8)).is_err(),
            "below the packets in flight"
        );
    }
}
