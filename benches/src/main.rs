//! `chc-bench`: CHC's experiments.

use anyhow::Result;
use chc_bench::{coe, nfbench, synth};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chc-bench",
    version,
    about = "CHC experiments: traces, equivalence checks and benchmarks",
    long_about = "CHC experiments. Every experiment takes --json FILE and writes the shared results \
format (ours vs a baseline measured in the same run, medians over repetitions)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic trace (defaults shaped like the paper's Trace2), or compose parts.
    Synth(synth::SynthArgs),
    /// Chain output equivalence: the ideal chain vs a scenario, on one trace.
    Coe(coe::CoeArgs),
    /// Per-packet processing time of each NF in each state mode (Fig 3.13).
    Latency(nfbench::NfBenchArgs),
    /// Packets per second of each NF in each state mode (Fig 3.15).
    Throughput(nfbench::NfBenchArgs),
    /// Store throughput: in-process, native TCP, and RESP side by side with a real Redis.
    Store(chc_bench::store::StoreArgs),
    /// The DPDK dataplane on one lcore vs dpdk-testpmd, and its chains against each other.
    Dpdk(chc_bench::dpdkbench::DpdkArgs),
    /// Timings under dynamics (state move, NF/root/store recovery, FTMB-style pauses), each
    /// beside the CHC paper's figure.
    Dynamics(chc_bench::dynamics::DynamicsArgs),
    /// Chain-wide ordering (R4): planted Trojan signatures found with and without logical
    /// clocks while upstream instances run slow.
    Order(chc_bench::order::OrderArgs),
    /// Cross-flow state caching across a change of partitioning (Fig 3.14): a portscan
    /// detector's per-packet time alone, with a second instance sharing its hosts, and alone
    /// again.
    Caching(chc_bench::caching::CachingArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Synth(a) => match &a.cmd {
            Some(synth::SynthCmd::Compose(c)) => {
                let n = synth::compose(c)?;
                eprintln!("chc-bench: wrote {n} packets to {}", c.out.display());
                Ok(())
            }
            None => {
                let (n, c) = synth::synth(&a)?;
                eprintln!(
                    "chc-bench: wrote {n} packets in {c} connections to {}",
                    a.out.display()
                );
                Ok(())
            }
        },
        Cmd::Coe(a) => {
            let rep = coe::coe(&a)?;
            println!(
                "{}: {} of {} output packets match the ideal chain; {} missing, {} extra; alerts ideal {:?}, run {:?}",
                if rep.equivalent { "EQUIVALENT" } else { "NOT EQUIVALENT" },
                rep.matched,
                rep.ideal_packets,
                rep.missing_in_run,
                rep.extra_in_run,
                rep.ideal_alerts,
                rep.run_alerts
            );
            for r in &rep.rejoins {
                println!(
                    "  the killed host was back in {:.0} ms; {} packets replayed, settled in {:.1} ms",
                    r.down_ms, r.replayed, r.settle_ms
                );
            }
            for d in rep.differences.iter().take(20) {
                println!("  {d}");
            }
            if rep.differences.len() > 20 {
                println!("  ... {} more (see --json)", rep.differences.len() - 20);
            }
            if !rep.equivalent {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Latency(a) => {
            let r = nfbench::latency(&a)?;
            print!("{}", r.table());
            if let Some(p) = &a.json {
                r.write(p)?;
            }
            Ok(())
        }
        Cmd::Throughput(a) => {
            let r = nfbench::throughput(&a)?;
            print!("{}", r.table());
            if let Some(p) = &a.json {
                r.write(p)?;
            }
            Ok(())
        }
        Cmd::Store(a) => chc_bench::store::run(&a),
        Cmd::Dpdk(a) => chc_bench::dpdkbench::run(&a),
        Cmd::Dynamics(a) => chc_bench::dynamics::run_dynamics(&a).map(|_| ()),
        Cmd::Order(a) => chc_bench::order::run_order(&a).map(|_| ()),
        Cmd::Caching(a) => chc_bench::caching::run_caching(&a).map(|_| ()),
    }
}
