//! `statealyzr`: finds the per-flow and cross-flow state of a C middlebox.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};

use statealyzr::frontend::{split_command, Inputs};
use statealyzr::{analyse, report, Config, Diags};

#[derive(Parser)]
#[command(
    name = "statealyzr",
    version,
    about = "Finds which variables of a C middlebox hold per-flow and cross-flow state",
    long_about = "Finds which variables of a C middlebox hold per-flow and cross-flow state: \
                  which persist across packets, which packet processing uses and updates, which \
                  header fields key them, and which affect packet or log output.\n\n\
                  Inputs are C files (compiled with clang-14 and --cflags), a \
                  compile_commands.json (as written by `bear -- make`), or ready .bc/.ll files."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Classify the middlebox's variables.
    Analyze(AnalyzeArgs),
    /// Emit the middlebox with run-time tracking of which state each packet updated.
    Instrument(InstrumentArgs),
}

#[derive(Args)]
struct Common {
    /// Flags for compiling the C files named on the command line (-I, -D, -std, ...).
    #[arg(long, value_name = "FLAGS", allow_hyphen_values = true)]
    cflags: Option<String>,
    /// A function that receives packets, besides the standard ones (pcap_next, recv, ...);
    /// its result and pointer arguments are taken to hold packet data.
    #[arg(long = "recv-fn", value_name = "F")]
    recv_fn: Vec<String>,
    /// A function that sends packets, besides pcap_inject, pcap_sendpacket, pcap_dump, send...
    #[arg(long = "pkt-out-fn", value_name = "F")]
    pkt_out_fn: Vec<String>,
    /// A function that writes logs, besides the stdio and syslog ones.
    #[arg(long = "log-out-fn", value_name = "F")]
    log_out_fn: Vec<String>,
    /// An external function without a model that neither writes through its arguments nor
    /// calls back (otherwise such functions are assumed to touch everything they can reach).
    #[arg(long = "pure-fn", value_name = "F")]
    pure_fn: Vec<String>,
    /// Parallel compile jobs.
    #[arg(short, long, default_value_t = default_jobs())]
    jobs: usize,
    /// Keep the linked IR (program.bc, program.ll) in this directory.
    #[arg(long, value_name = "DIR")]
    keep_ir: Option<PathBuf>,
    /// Print the time of each phase and the peak memory to stderr.
    #[arg(long)]
    stats: bool,
    /// Write the timing and memory figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    stats_json: Option<PathBuf>,
    /// C files, compile_commands.json (or a directory holding one), .bc or .ll files.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[derive(Copy, Clone, ValueEnum, PartialEq)]
enum Format {
    Text,
    Json,
    Sarif,
}

#[derive(Args)]
struct AnalyzeArgs {
    #[command(flatten)]
    common: Common,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write the report here instead of stdout.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct InstrumentArgs {
    #[command(flatten)]
    common: Common,
    /// Write a unified diff (patch) instead of instrumented copies of the sources.
    #[arg(long)]
    diff: bool,
    /// Output: a directory for instrumented sources, or the patch file with --diff
    /// (stdout when omitted with --diff).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
}

struct Loaded {
    program: statealyzr::Program,
    analysis: statealyzr::Analysis,
    diags: Diags,
    inputs: Inputs,
    phases: Vec<(String, f64)>,
    started: Instant,
}

fn load(c: &Common) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let cflags = match &c.cflags {
        Some(f) => split_command(f).context("--cflags has unbalanced quotes")?,
        None => Vec::new(),
    };
    let inputs = Inputs::classify(&c.inputs, &cflags)?;
    let tmp = tempfile::Builder::new().prefix("statealyzr").tempdir()?;
    let work = match &c.keep_ir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let mut diags = Diags::default();
    let t = Instant::now();
    let program = statealyzr::load(&inputs, &work, c.jobs, &mut diags)?;
    let mut phases = vec![("compile+read".to_string(), t.elapsed().as_secs_f64())];
    let cfg = Config {
        recv_fns: c.recv_fn.clone(),
        pkt_out_fns: c.pkt_out_fn.clone(),
        log_out_fns: c.log_out_fn.clone(),
        pure_fns: c.pure_fn.clone(),
    };
    let analysis = analyse(&program, &cfg, &mut diags)?;
    phases.extend(analysis.timing.phases.iter().cloned());
    Ok(Loaded {
        program,
        analysis,
        diags,
        inputs,
        phases,
        started,
    })
}

/// Peak resident memory of this process, from the kernel's accounting.
fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn report_stats(c: &Common, l: &Loaded) -> anyhow::Result<()> {
    let total = l.started.elapsed().as_secs_f64();
    let rss = peak_rss_kib().unwrap_or(0);
    let t = &l.analysis.timing;
    if c.stats {
        let mut e = std::io::stderr().lock();
        for (name, secs) in &l.phases {
            writeln!(e, "stats: {name:<14} {secs:9.3} s")?;
        }
        writeln!(e, "stats: {:<14} {total:9.3} s", "total")?;
        writeln!(e, "stats: peak memory  {:9.1} MiB", rss as f64 / 1024.0)?;
        writeln!(
            e,
            "stats: {} functions, {} IR instructions, {} points-to nodes, {} objects, SDG {} vertices / {} edges",
            t.functions, t.ir_insts, t.pts_nodes, t.objects, t.sdg_nodes, t.sdg_edges
        )?;
    }
    if let Some(path) = &c.stats_json {
        let j = serde_json::json!({
            "total_seconds": total,
            "peak_rss_kib": rss,
            "phases": l.phases.iter().map(|(n, s)| serde_json::json!({"phase": n, "seconds": s})).collect::<Vec<_>>(),
            "functions": t.functions,
            "ir_instructions": t.ir_insts,
            "pointsto_nodes": t.pts_nodes,
            "objects": t.objects,
            "sdg_vertices": t.sdg_nodes,
            "sdg_edges": t.sdg_edges,
            "counts": l.analysis.counts,
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn print_warnings(l: &Loaded) {
    for d in &l.diags.list {
        eprintln!("{}", Diags::render(d, &l.program.files));
    }
}

fn write_out(path: &Option<PathBuf>, text: &str) -> anyhow::Result<()> {
    match path {
        Some(p) => std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display())),
        None => {
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Analyze(a) => {
            let l = load(&a.common)?;
            let out = match a.format {
                Format::Json => report::json(&l.program, &l.analysis),
                Format::Sarif => report::sarif(&l.program, &l.analysis, &l.diags),
                Format::Text => report::text(&l.program, &l.analysis, &l.diags),
            };
            if a.format != Format::Text || a.output.is_some() {
                print_warnings(&l);
            }
            write_out(&a.output, &out)?;
            report_stats(&a.common, &l)?;
        }
        Cmd::Instrument(a) => {
            if !a.diff && a.output.is_none() {
                bail!("instrument needs -o DIR for instrumented sources, or --diff for a patch");
            }
            let l = load(&a.common)?;
            print_warnings(&l);
            let inst = statealyzr::instrument::instrument(&l.program, &l.analysis, &l.inputs)?;
            for w in &inst.warnings {
                eprintln!("warning: {w}");
            }
            if a.diff {
                write_out(&a.output, &inst.unified_diff())?;
            } else if let Some(dir) = &a.output {
                let written = inst.write_tree(dir)?;
                for p in written {
                    eprintln!("wrote {}", p.display());
                }
            }
            report_stats(&a.common, &l)?;
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("statealyzr: error: {e:#}");
        std::process::exit(1);
    }
}
