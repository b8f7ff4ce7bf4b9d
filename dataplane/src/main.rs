//! `chc-dataplane`: run a chain of network functions.

use anyhow::{Context, Result};
use chc_dataplane::{config::Chain, run, Delay, RunOptions};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "chc-dataplane",
    version,
    about = "Run a chain of stateful network functions (CHC)",
    long_about = "Run a chain of stateful network functions whose state lives in the CHC store. \
On the embedded default the store runs in this process and packets come from a pcap file; \
the output pcap and an events log (one JSON object per NF decision) are written at the end."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a chain over a pcap file (store in-process).
    Run(RunArgs),
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
    /// Input pcap (Ethernet, classic pcap).
    #[arg(long)]
    pcap_in: PathBuf,
    /// Output pcap: every packet that leaves the chain.
    #[arg(long)]
    pcap_out: PathBuf,
    /// Events log (JSON lines): alerts, blocks, mappings, backend choices.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Packet I/O backend: pcap (the embedded default) or dpdk.
    #[arg(long, default_value = "pcap")]
    backend: String,
    /// Run every vertex in this mode (traditional, eo, eo-c, eo-c-na), overriding the chain file.
    #[arg(long)]
    mode: Option<String>,
    /// Random per-packet delay at a vertex, NAME=MIN_US-MAX_US (repeatable).
    #[arg(long = "delay", value_name = "NAME=MIN-MAX")]
    delays: Vec<String>,
    /// Seed for delays and other randomised choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the end-of-run summary as JSON here.
    #[arg(long)]
    summary_json: Option<PathBuf>,
    /// Print progress every second.
    #[arg(long)]
    progress: bool,
}

fn load_chain(p: &Option<PathBuf>) -> Result<Chain> {
    Ok(match p {
        Some(p) => Chain::load(p)?,
        None => Chain::paper(),
    })
}

fn parse_delay(s: &str) -> Result<(String, Delay)> {
    let (name, range) = s
        .split_once('=')
        .with_context(|| format!("--delay {s:?}: expected NAME=MIN-MAX (microseconds)"))?;
    let (a, b) = range.split_once('-').unwrap_or((range, range));
    let min_us: u64 = a
        .parse()
        .with_context(|| format!("--delay {s:?}: bad minimum"))?;
    let max_us: u64 = b
        .parse()
        .with_context(|| format!("--delay {s:?}: bad maximum"))?;
    anyhow::ensure!(min_us <= max_us, "--delay {s:?}: minimum above maximum");
    Ok((name.to_string(), Delay { min_us, max_us }))
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
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
                a.backend == "pcap",
                "--backend {}: this build runs the pcap backend only",
                a.backend
            );
            let mut chain = load_chain(&a.chain)?;
            if let Some(m) = &a.mode {
                chain.set_mode(m.parse().map_err(anyhow::Error::msg)?);
            }
            let mut delays = HashMap::new();
            for d in &a.delays {
                let (n, d) = parse_delay(d)?;
                anyhow::ensure!(chain.vertex(&n).is_some(), "--delay: no vertex named {n:?}");
                delays.insert(n, d);
            }
            let opts = RunOptions {
                chain,
                input: a.pcap_in.clone(),
                output: a.pcap_out.clone(),
                events: a.events.clone(),
                delays,
                seed: a.seed,
                progress: a.progress,
            };
            let s = run(&opts)
                .with_context(|| format!("running the chain over {}", a.pcap_in.display()))?;
            eprintln!("{s}");
            if let Some(p) = &a.summary_json {
                std::fs::write(p, serde_json::to_string_pretty(&s)? + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}
