//! iron-sim: replays the paper's interference experiments in the simulator and prints the
//! victim's penalty factor without and with Iron.

use anyhow::{Context, Result};
use clap::Parser;
use iron_model::results::{Machine, Results, Row};
use iron_model::sim::{default_scenarios, run, Mode};

/// Simulates n containers per core (one CPU-bound victim, n-1 interferers receiving or sending
/// traffic, quota = period/n each) and reports the victim's penalty factor: its completion time
/// with the interferers' traffic over its completion time with CPU-bound interferers.
#[derive(Parser, Debug)]
#[command(name = "iron-sim", version)]
struct Args {
    /// Write the rows in the shared results format to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Only run scenarios whose name contains this text (e.g. "TcpRx").
    #[arg(long)]
    only: Option<String>,
    /// Early-drop threshold T in percent of quota (0 disables).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(0..=100))]
    early_drop: u8,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    println!(
        "{:<34} {:>12} {:>12}",
        "scenario", "without Iron", "with Iron"
    );
    for mut s in default_scenarios() {
        if let Some(o) = &args.only {
            if !s.name.contains(o.as_str()) {
                continue;
            }
        }
        s.early_drop = args.early_drop;
        let mut pf = Vec::new();
        for mode in [Mode::Linux, Mode::Iron] {
            let net = run(&s, mode, false);
            let cpu = run(&s, mode, true);
            let (a, b) = (
                net.victim_completion as f64 / 1e9,
                cpu.victim_completion as f64 / 1e9,
            );
            pf.push(a / b);
            let (label, target) = match mode {
                Mode::Linux => ("stock Linux", None),
                Mode::Iron => ("Iron", Some(1.05)),
            };
            rows.push(
                Row::lower_is_better(
                    format!("victim completion, {}, {label} (simulated)", s.name),
                    "s",
                    &[a],
                    &[b],
                    "same victim job with CPU-bound interferers (same run)",
                    target,
                )
                .with_paper(match mode {
                    Mode::Linux => "without Iron: up to 4.45x (UDP rx), 6x (TCP rx), 1.18x (UDP tx), 1.95x (TCP tx)",
                    Mode::Iron => "with Iron: <= 1.05",
                }),
            );
        }
        println!("{:<34} {:>11.3}x {:>11.3}x", s.name, pf[0], pf[1]);
    }
    if let Some(path) = args.json {
        let res = Results {
            experiment: "iron-sim".into(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::this(),
            repetitions: 1,
            rows,
        };
        std::fs::write(&path, serde_json::to_string_pretty(&res)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
