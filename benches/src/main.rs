//! `chc-bench`: CHC's experiments.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chc-bench", version, about = "CHC experiments: traces, equivalence checks and benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Store throughput: in-process, native TCP, and RESP side by side with a real Redis.
    Store(chc_bench::store::StoreArgs),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Store(a) => chc_bench::store::run(&a),
    }
}
