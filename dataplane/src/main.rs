//! `chc-dataplane`: run a chain of network functions.

use anyhow::{Context, Result};
use chc_dataplane::{config::Chain, run, Delay, RunOptions, ScaleAction, ScaleStep};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "chc-dataplane",
    version,
    about = "Run a chain of stateful network functions (CHC)",
    long_about = "Run a chain of stateful network functions whose state lives in the CHC store. \
On the embedded default the store runs in this process and packets come from a pcap file; \
the output pcap and an events log (one JSON object per NF decision) are written at the end. \
With `[store] addresses` in the chain file, the state lives on those `chc-store serve` servers \
instead, on either backend."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a chain over a pcap file or DPDK ports (store in-process, or the chain's servers).
    Run(Box<RunArgs>),
    /// Run one NF instance of a multi-process chain (started by the manager).
    Instance {
        /// The cluster plan the manager wrote.
        #[arg(long)]
        plan: PathBuf,
        #[arg(long)]
        vertex: String,
        #[arg(long)]
        index: u16,
        /// Take over from a failed instance: load per-flow state from the store and process
        /// the root's replay before new traffic.
        #[arg(long)]
        replacement: bool,
        /// Start as a warm spare: load, read the plan, open the links to the root, the sink
        /// and the next instances, and (with --replacement) connect to the store, which
        /// answers once the instance it stands by for is gone; then wait for a line on
        /// standard input before going on (exit when the input ends), and print "listening"
        /// on standard output once it listens. The manager keeps one ready so that a
        /// recovery does not wait for a process to start.
        #[arg(long)]
        standby: bool,
    },
    /// Run the root of a multi-process chain (started by the manager).
    Root {
        #[arg(long)]
        plan: PathBuf,
        /// Take over from a failed root: resume the persisted clock.
        #[arg(long)]
        recover: bool,
        /// Start as a warm spare: load, read the plan, then wait for a line on standard
        /// input before going on (exit when the input ends), and print "listening" on
        /// standard output once it listens. The manager keeps one ready so that a recovery
        /// does not wait for a process to start.
        #[arg(long)]
        standby: bool,
    },
    /// Check a chain file and print the compiled chain (vertices, modes, partitioning).
    Check {
        /// Chain configuration (TOML); default: the paper's chain.
        #[arg(long)]
        chain: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Chain configuration (TOML); default: the paper's chain (examples/chains/paper.toml).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// Input pcap (Ethernet, classic pcap). Required with the pcap backend; with
    /// `--backend dpdk` it is replayed through a net_pcap vdev (no hugepages, no NIC).
    #[arg(long)]
    pcap_in: Option<PathBuf>,
    /// Output pcap: every packet that leaves the chain.
    #[arg(long)]
    pcap_out: Option<PathBuf>,
    /// Events log (JSON lines): alerts, blocks, mappings, backend choices.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Packet I/O backend: pcap (the embedded default) or dpdk.
    #[arg(long, default_value = "pcap")]
    backend: String,
    /// Run every vertex in this mode (traditional, eo, eo-c, eo-c-na), overriding the chain file.
    #[arg(long)]
    mode: Option<String>,
    /// Run NAME with N instances, overriding the chain file (repeatable).
    #[arg(long = "parallelism", value_name = "NAME=N")]
    parallelism: Vec<String>,
    /// Random per-packet delay at a vertex, NAME=MIN_US-MAX_US, or at one of its instances,
    /// NAME#I=MIN_US-MAX_US (repeatable). With --backend dpdk the instance's lcore spins
    /// that long before each packet.
    #[arg(long = "delay", value_name = "NAME=MIN-MAX")]
    delays: Vec<String>,
    /// Seed for delays and other randomised choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scale a vertex while the trace runs, NAME:out@N or NAME:in@N (after the root has read
    /// N packets; repeatable). Flows move with the state handover of the dissertation's
    /// Fig 3.7; the summary reports each move. NAME:clone=I@N starts a clone of straggling
    /// instance I (§3.4.3): it replays the root's log, races the straggler on a copy of its
    /// traffic, and the slower one goes (alone, not with other steps). With --backend dpdk:
    /// on one host; the root holds its input back during each move, while it replays its
    /// log for a clone and while the slower of the pair retires.
    #[arg(long = "scale", value_name = "NAME:out|in@N")]
    scale: Vec<String>,
    /// Admit at most this many packets per second (default: as fast as the chain takes them).
    #[arg(long, value_name = "PPS")]
    rate: Option<u64>,
    /// An operator's scaling policy the manager runs from the vertex manager's statistics
    /// (repeatable): every --policy-period-ms, scale NAME out while its instances average
    /// more than PPS packets/s each (up to MAX instances, default 4), and in while one
    /// instance fewer would average under PPS/2. Flows move with the handover, as with
    /// --scale; the summary lists each decision. With --backend dpdk on one host, the
    /// root's lcore applies it (the root holds its input during each move, as with --scale).
    #[arg(long, value_name = "NAME:PPS[:MAX]")]
    autoscale: Vec<chc_dataplane::Policy>,
    /// An operator's straggler policy (§3.4.3) the manager runs from the vertex manager's
    /// statistics: every --policy-period-ms, the first instance of NAME whose time per
    /// packet over the period is more than PCT percent above its siblings' median (or,
    /// alone, above its own best period) is cloned, once per run: the clone replays the
    /// root's log, races the straggler on a copy of its traffic, and the slower goes, with
    /// duplicate outputs and state updates suppressed. The summary lists the decision.
    /// Embedded path only; alone (no other policy or --scale step).
    #[arg(long = "clone-stragglers", value_name = "NAME:PCT", value_parser = chc_dataplane::Policy::stragglers)]
    clone_stragglers: Vec<chc_dataplane::Policy>,
    /// How often the manager applies --autoscale and --clone-stragglers policies.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    policy_period_ms: u64,
    /// Move flows without the handover (splitters switch at once), or race a clone without
    /// suppressing duplicate outputs: baselines that show what goes wrong without them.
    #[arg(long)]
    naive_move: bool,
    /// Write the end-of-run summary as JSON here.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Print progress every second.
    #[arg(long)]
    progress: bool,
    /// `--backend dpdk`: EAL arguments, passed to DPDK unchanged (one shell-quoted string),
    /// e.g. "-l 1-3 --main-lcore 1 -a 0000:3b:00.0". With --pcap-in they add to the
    /// built-in "--no-huge --no-pci" set.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    eal: Option<String>,
    /// `--backend dpdk`: serve Prometheus metrics (ports, lcores, rings) on this address.
    #[arg(long, value_name = "ADDR:PORT")]
    telemetry: Option<String>,
    /// `--backend dpdk`: which host of a chain split over several hosts this process is.
    #[arg(long)]
    host: Option<String>,
    /// `--backend dpdk`: mbufs in the packet pool.
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
}

impl RunArgs {
    /// The operator's policies, of every kind.
    fn policies(&self) -> Vec<chc_dataplane::Policy> {
        self.autoscale
            .iter()
            .chain(&self.clone_stragglers)
            .cloned()
            .collect()
    }
}

fn load_chain(p: &Option<PathBuf>) -> Result<Chain> {
    Ok(match p {
        Some(p) => Chain::load(p)?,
        None => Chain::paper(),
    })
}

/// The chain of a run: the file, with `--mode` and `--parallelism` applied.
fn run_chain(a: &RunArgs) -> Result<Chain> {
    let mut chain = load_chain(&a.chain)?;
    if let Some(m) = &a.mode {
        chain.set_mode(m.parse().map_err(anyhow::Error::msg)?);
    }
    for p in &a.parallelism {
        let (name, n) = p
            .split_once('=')
            .with_context(|| format!("--parallelism {p:?}: expected NAME=N"))?;
        let n: u16 = n
            .parse()
            .with_context(|| format!("--parallelism {p:?}: N is a number of instances"))?;
        chain
            .set_parallelism(name, n)
            .with_context(|| format!("--parallelism {p:?}"))?;
    }
    Ok(chain)
}

/// The `--delay` arguments, checked against the chain's vertices and instances.
fn delays_of(chain: &Chain, args: &[String]) -> Result<HashMap<String, Delay>> {
    let mut delays = HashMap::new();
    for d in args {
        let (n, d) = parse_delay(d)?;
        let (vertex, inst) = match n.split_once('#') {
            Some((v, i)) => (v, Some(i)),
            None => (n.as_str(), None),
        };
        let Some(v) = chain.vertex(vertex) else {
            anyhow::bail!("--delay: no vertex named {vertex:?}");
        };
        if let Some(i) = inst {
            let ok = i.parse::<u16>().is_ok_and(|i| i < v.parallelism);
            anyhow::ensure!(
                ok,
                "--delay {n}: {vertex} has instances 0 to {}",
                v.parallelism.saturating_sub(1)
            );
        }
        delays.insert(n, d);
    }
    Ok(delays)
}

fn parse_delay(s: &str) -> Result<(String, Delay)> {
    let (name, range) = s
        .split_once('=')
        .with_context(|| format!("--delay {s:?}: expected NAME=MIN-MAX (microseconds)"))?;
    let d: Delay = range
        .parse()
        .map_err(|e| anyhow::anyhow!("--delay {s:?}: {e}"))?;
    Ok((name.to_string(), d))
}

fn parse_scale(s: &str, handover: bool) -> Result<ScaleStep> {
    let bad = || format!("--scale {s:?}: expected NAME:out@N, NAME:in@N or NAME:clone=I@N");
    let (name, rest) = s.split_once(':').with_context(bad)?;
    let (act, n) = rest.split_once('@').with_context(bad)?;
    let action = match act {
        "out" => ScaleAction::Out,
        "in" => ScaleAction::In,
        "clone" => ScaleAction::Clone(0),
        _ => match act.strip_prefix("clone=") {
            Some(i) => ScaleAction::Clone(i.parse().with_context(bad)?),
            None => anyhow::bail!(bad()),
        },
    };
    Ok(ScaleStep {
        after_packets: n.parse().with_context(bad)?,
        vertex: name.to_string(),
        action,
        handover,
    })
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Instance {
            plan,
            vertex,
            index,
            replacement,
            standby,
        } => {
            let p = chc_dataplane::cluster::Plan::load(&plan).map_err(anyhow::Error::msg)?;
            chc_dataplane::cluster::exit_with_parent(format!("{vertex}/{index}"));
            chc_dataplane::cluster::node::run_instance(&p, &vertex, index, replacement, standby)
                .map_err(anyhow::Error::msg)
        }
        Cmd::Root {
            plan,
            recover,
            standby,
        } => {
            let p = chc_dataplane::cluster::Plan::load(&plan).map_err(anyhow::Error::msg)?;
            chc_dataplane::cluster::exit_with_parent("root".into());
            if standby && chc_dataplane::cluster::wait_for_go().is_none() {
                return Ok(());
            }
            chc_dataplane::cluster::rootproc::run_root(&p, recover, standby)
                .map_err(anyhow::Error::msg)
        }
        Cmd::Check { chain } => {
            let c = load_chain(&chain)?;
            for v in &c.vertices {
                println!(
                    "{:<12} nf={:<9} mode={:<11} parallelism={:<3} split-on={:?}{}{}",
                    v.name,
                    v.nf,
                    v.mode.to_string(),
                    v.parallelism,
                    v.partition,
                    v.next
                        .map_or(String::new(), |n| format!(" -> {}", c.vertices[n].name)),
                    if v.on_path { "" } else { " (off-path)" }
                );
            }
            Ok(())
        }
        Cmd::Run(a) => {
            anyhow::ensure!(
                a.backend == "pcap" || a.backend == "dpdk",
                "--backend {}: the backends are pcap and dpdk",
                a.backend
            );
            anyhow::ensure!(
                a.rate != Some(0),
                "--rate 0: the rate is in packets per second and must be at least 1"
            );
            if a.backend == "dpdk" {
                return run_dpdk(&a);
            }
            let (Some(pcap_in), Some(pcap_out)) = (a.pcap_in.clone(), a.pcap_out.clone()) else {
                anyhow::bail!("the pcap backend needs --pcap-in and --pcap-out");
            };
            let chain = run_chain(&a)?;
            let delays = delays_of(&chain, &a.delays)?;
            let mut scaling = Vec::new();
            for st in &a.scale {
                let st = parse_scale(st, !a.naive_move)?;
                anyhow::ensure!(
                    chain.vertex(&st.vertex).is_some(),
                    "--scale: no vertex named {:?}",
                    st.vertex
                );
                scaling.push(st);
            }
            scaling.sort_by_key(|s| s.after_packets);
            let opts = RunOptions {
                chain,
                input: pcap_in.clone(),
                output: pcap_out,
                events: a.events.clone(),
                delays,
                seed: a.seed,
                progress: a.progress,
                scaling,
                rate_pps: a.rate,
                pause: None,
                policies: a.policies(),
                policy_period: std::time::Duration::from_millis(a.policy_period_ms.max(1)),
            };
            let s = run(&opts)
                .with_context(|| format!("running the chain over {}", pcap_in.display()))?;
            eprintln!("{s}");
            if let Some(p) = &a.summary_json {
                std::fs::write(p, serde_json::to_string_pretty(&s)? + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}

/// `run --backend dpdk`: the chain on DPDK ports (from the chain file, or a net_pcap vdev
/// made from --pcap-in/--pcap-out).
fn run_dpdk(a: &RunArgs) -> Result<()> {
    use chc_dataplane::dpdk::{self, DpdkOptions, PcapReplay};
    let chain = run_chain(a)?;
    // Checked (vertex, action) and put in order where the DPDK path prepares them.
    let scaling = a
        .scale
        .iter()
        .map(|st| parse_scale(st, !a.naive_move))
        .collect::<Result<Vec<_>>>()?;
    let pcap = match (&a.pcap_in, &a.pcap_out) {
        (Some(i), Some(o)) => Some(PcapReplay {
            input: i.clone(),
            output: o.clone(),
        }),
        (None, None) => None,
        _ => anyhow::bail!("--pcap-in and --pcap-out go together"),
    };
    let mut opts = DpdkOptions::new(chain);
    opts.eal = a.eal.clone();
    opts.pcap = pcap;
    opts.events = a.events.clone();
    opts.host = a.host.clone();
    opts.telemetry = a.telemetry.clone();
    opts.pool_size = a.mbufs;
    opts.progress = a.progress;
    opts.scaling = scaling;
    opts.rate_pps = a.rate;
    opts.delays = delays_of(&opts.chain, &a.delays)?;
    opts.seed = a.seed;
    opts.policies = a.policies();
    opts.policy_period = std::time::Duration::from_millis(a.policy_period_ms.max(1));
    let dp = dpdk::start(&opts).context("running the chain on DPDK")?;
    let watch = Watchdog::start(dp.telemetry());
    let s = dp.wait().context("running the chain on DPDK")?;
    drop(watch);
    eprintln!("{s}");
    if let Some(p) = &a.summary_json {
        std::fs::write(p, serde_json::to_string_pretty(&s)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Under a service manager (`Type=notify`): ready once the lcores run, and, with its
/// watchdog, a ping only while every lcore's loop keeps turning (its cycle count moves), so
/// a hung lcore gets the process restarted even though it has not exited. Says it is
/// stopping when dropped.
struct Watchdog {
    notifier: Option<Arc<chc_store::notify::Notifier>>,
    stop: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(src: Arc<dyn chc_dataplane::dpdk::telemetry::Source>) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let notifier = chc_store::notify::Notifier::from_env().map(Arc::new);
        if let Some(n) = &notifier {
            n.ready("chc-dataplane");
            if let Some(every) = n.watchdog_every() {
                let (n, stop) = (n.clone(), stop.clone());
                let _ = std::thread::Builder::new()
                    .name("watchdog".into())
                    .spawn(move || {
                        let mut last: Vec<u64> = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(every);
                            let now: Vec<u64> = src
                                .figures()
                                .lcores
                                .iter()
                                .map(|l| l.total_cycles)
                                .collect();
                            let turning = now.len() == last.len()
                                && now.iter().zip(&last).all(|(a, b)| a != b);
                            if turning || last.is_empty() {
                                let _ = n.send("WATCHDOG=1");
                            }
                            last = now;
                        }
                    });
            }
        }
        Watchdog { notifier, stop }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(n) = &self.notifier {
            let _ = n.send("STOPPING=1");
        }
    }
}
