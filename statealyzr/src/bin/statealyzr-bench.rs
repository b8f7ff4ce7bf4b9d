//! `statealyzr-bench`: generates synthetic middleboxes of a given size and measures the
//! analysis on them (time and peak memory, medians over repetitions), writing the shared
//! results format of the project's benchmarks (`--json FILE`).
//!
//! The baseline is the published figure for the commercial analyser the dissertation used
//! (Table 4.17): PRADS (10K lines) 0.25 h of analysis after 0.2 h of compilation, HAProxy
//! (63K) 6 h after 0.25 h, OpenVPN (62K) 5 h after 0.5 h.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "statealyzr-bench",
    about = "Benchmarks statealyzr on generated middleboxes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic middlebox of about LINES lines (C files, a Makefile and
    /// compile_commands.json) to DIR.
    Gen {
        #[arg(long, default_value_t = 10_000)]
        lines: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        dir: PathBuf,
    },
    /// Analyse generated middleboxes of each size and report medians.
    Run {
        /// Sizes in lines.
        #[arg(long, value_delimiter = ',', default_value = "10000,60000")]
        sizes: Vec<usize>,
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// The statealyzr binary to measure.
        #[arg(long, default_value = "target/release/statealyzr")]
        statealyzr: PathBuf,
        /// Results in the shared benchmark format.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn write_synth(lines: usize, seed: u64, dir: &Path) -> anyhow::Result<usize> {
    let (modules, pad) = statealyzr::synth::shape_for(lines);
    let s = statealyzr::synth::generate(modules, pad, seed);
    std::fs::create_dir_all(dir)?;
    let mut units = Vec::new();
    for (name, text) in &s.files {
        std::fs::write(dir.join(name), text)?;
        if name.ends_with(".c") {
            units.push(name.clone());
        }
    }
    let abs = std::fs::canonicalize(dir)?;
    let db: Vec<serde_json::Value> = units
        .iter()
        .map(|u| {
            serde_json::json!({
                "directory": abs.display().to_string(),
                "file": u,
                "arguments": ["cc", "-O2", "-Wall", "-c", u, "-o", u.replace(".c", ".o")],
            })
        })
        .collect();
    std::fs::write(
        dir.join("compile_commands.json"),
        serde_json::to_string_pretty(&db)?,
    )?;
    let objs: Vec<String> = units.iter().map(|u| u.replace(".c", ".o")).collect();
    std::fs::write(
        dir.join("Makefile"),
        format!(
            "CFLAGS = -O2 -Wall\nmbox: {}\n\t$(CC) -o $@ $^ -lpcap\n",
            objs.join(" ")
        ),
    )?;
    Ok(s.lines())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Gen { lines, seed, dir } => {
            let n = write_synth(lines, seed, &dir)?;
            println!("{n} lines in {}", dir.display());
        }
        Cmd::Run {
            sizes,
            repetitions,
            statealyzr,
            json,
        } => {
            if !statealyzr.is_file() {
                bail!(
                    "{} not found (build it with cargo build --release -p statealyzr)",
                    statealyzr.display()
                );
            }
            let work = tempfile::tempdir()?;
            let mut rows = Vec::new();
            let machine = serde_json::json!({
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "model": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())).unwrap_or_default(),
                "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            });
            for &size in &sizes {
                let dir = work.path().join(format!("mbox{size}"));
                let lines = write_synth(size, 1, &dir)?;
                let mut total = Vec::new();
                let mut analysis = Vec::new();
                let mut rss = Vec::new();
                let mut counts = serde_json::Value::Null;
                for rep in 0..repetitions {
                    let stats = work.path().join(format!("stats{size}-{rep}.json"));
                    let out = Command::new(&statealyzr)
                        .args(["analyze", "--format", "json", "-o"])
                        .arg(work.path().join("out.json"))
                        .arg("--stats-json")
                        .arg(&stats)
                        .arg(dir.join("compile_commands.json"))
                        .output()
                        .context("run statealyzr")?;
                    if !out.status.success() {
                        bail!(
                            "statealyzr failed on {lines} lines:\n{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    let s: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(&stats)?)?;
                    let t = s["total_seconds"].as_f64().unwrap_or(0.0);
                    let compile = s["phases"]
                        .as_array()
                        .and_then(|a| a.iter().find(|p| p["phase"] == "compile+read"))
                        .and_then(|p| p["seconds"].as_f64())
                        .unwrap_or(0.0);
                    total.push(t);
                    analysis.push(t - compile);
                    rss.push(s["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0 / 1024.0);
                    counts = s["counts"].clone();
                    eprintln!(
                        "{lines} lines, run {rep}: {t:.2} s total, {:.2} s analysis, {:.2} GiB",
                        t - compile,
                        rss.last().unwrap_or(&0.0)
                    );
                }
                let (paper_name, paper_total_h, paper_analysis_h, paper_gb) = if size <= 20_000 {
                    ("PRADS, 10K lines (Table 4.17)", 0.45, 0.25, 0.3)
                } else {
                    ("HAProxy, 63K lines (Table 4.17)", 6.25, 6.0, 6.0)
                };
                let (tmin, tmax) = (
                    total.iter().cloned().fold(f64::INFINITY, f64::min),
                    total.iter().cloned().fold(0.0, f64::max),
                );
                let t = median(&mut total);
                let a = median(&mut analysis);
                let m = median(&mut rss);
                rows.push(serde_json::json!({
                    "metric": format!("statealyzr analyze, {lines}-line synthetic middlebox: compile + analysis time"),
                    "unit": "s", "ours": t, "baseline": paper_total_h * 3600.0,
                    "baseline_name": format!("{paper_name}: compile + analysis with CodeSurfer"),
                    "ratio": t / (paper_total_h * 3600.0), "better": "lower", "target_ratio": 0.01,
                    "min": tmin, "max": tmax, "counts": counts,
                }));
                rows.push(serde_json::json!({
                    "metric": format!("statealyzr analyze, {lines}-line synthetic middlebox: analysis time (after compilation)"),
                    "unit": "s", "ours": a, "baseline": paper_analysis_h * 3600.0,
                    "baseline_name": format!("{paper_name}: analysis with CodeSurfer"),
                    "ratio": a / (paper_analysis_h * 3600.0), "better": "lower", "target_ratio": 0.01,
                }));
                rows.push(serde_json::json!({
                    "metric": format!("statealyzr analyze, {lines}-line synthetic middlebox: peak memory"),
                    "unit": "GiB", "ours": m, "baseline": paper_gb,
                    "baseline_name": format!("{paper_name}: peak memory with CodeSurfer"),
                    "ratio": m / paper_gb, "better": "lower", "target_ratio": 1.0,
                }));
            }
            let doc = serde_json::json!({
                "experiment": "statealyzr",
                "command": std::env::args().collect::<Vec<_>>().join(" "),
                "machine": machine,
                "repetitions": repetitions,
                "rows": rows,
            });
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match json {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}
