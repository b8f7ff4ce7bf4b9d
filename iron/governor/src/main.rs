//! iron-governor: charges containers for the network softirq time they cause, through their
//! CPU quota, and drops a throttled container's traffic.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use iron_governor::config::{Config, DropMode};
use iron_governor::enforce::{self, DropGate, EthtoolNtuple, NoGate, QueueSteering, TcGate};
use iron_governor::governor::{Governor, Mode};
use iron_governor::measure::bpf_probe;
use iron_governor::sys::{
    effective_caps, has_cap, DryRun, Exec, Real, CAP_NET_ADMIN, CAP_SYS_ADMIN,
};

/// Charges containers for their network softirq processing and enforces it.
///
/// On a kernel with the Iron patch (kernel.sched_iron exists) it binds the configured NIC queues
/// with cpu.iron.queue and reports cpu.iron.stat; on a stock kernel it measures softirq time,
/// charges it through the containers' quotas (cgroup v2 cpu.max or v1 cpu.cfs_quota_us) and
/// drops a throttled container's traffic with a tc gate. Every quota and gate is restored on
/// exit (SIGINT, SIGTERM, error).
#[derive(Parser, Debug)]
#[command(name = "iron-governor", version)]
struct Args {
    /// TOML configuration (see iron/governor/README in the repository).
    #[arg(long, short)]
    config: PathBuf,
    /// Print what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Use the stock-kernel mode even on a patched kernel.
    #[arg(long)]
    stock: bool,
    /// Stop after this many periods (0: run until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    periods: u64,
    /// Print a line per container and period.
    #[arg(long, short)]
    verbose: bool,
}

fn patched_kernel() -> bool {
    Path::new("/proc/sys/kernel/sched_iron").exists()
}

fn main() {
    if let Err(e) = run() {
        eprintln!("iron-governor: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    let cfg = Config::load(&args.config)?;
    let caps = effective_caps();
    let mut warn = |w: String| eprintln!("iron-governor: warning: {w}");

    // Unprivileged checks first: say exactly what is missing and what that costs.
    let mode = if !args.stock && patched_kernel() {
        Mode::Patched
    } else {
        Mode::Stock
    };
    println!(
        "iron-governor: {} mode, period {} ms, {} containers",
        if mode == Mode::Patched {
            "patched-kernel"
        } else {
            "stock-kernel"
        },
        cfg.period_ms,
        cfg.containers.len()
    );
    let wants_drop =
        cfg.drop != DropMode::None && cfg.containers.iter().any(|c| c.host_iface.is_some());
    let can_tc = has_cap(caps, CAP_NET_ADMIN);
    let gate: Box<dyn DropGate> = if mode == Mode::Stock && wants_drop && (can_tc || args.dry_run) {
        Box::new(TcGate::default())
    } else {
        if mode == Mode::Stock && wants_drop {
            warn("missing CAP_NET_ADMIN: cannot install tc drop gates; throttled containers are charged through their quota only".into());
        }
        Box::new(NoGate)
    };
    let exec: Box<dyn Exec> = if args.dry_run {
        Box::new(DryRun::default())
    } else {
        Box::new(Real)
    };
    let mut gov = Governor::new(&cfg, mode, exec, gate, &mut warn);
    if mode == Mode::Stock {
        println!("iron-governor: measuring with {}", gov.meter_backend());
        if !cfg!(feature = "bpf") {
            println!("iron-governor: eBPF backend: {}", bpf_probe(caps));
        }
    }
    if gov.managed.is_empty() {
        bail!("none of the configured containers could be opened; nothing to govern");
    }
    for dir in gov.cgroup_dirs() {
        let f = dir.join(if dir.join("cpu.max").exists() {
            "cpu.max"
        } else {
            "cpu.cfs_quota_us"
        });
        if !args.dry_run && std::fs::OpenOptions::new().write(true).open(&f).is_err() {
            bail!("cannot write {} (needs write permission on the cgroup, usually root or a delegated cgroup); run with --dry-run to see the plan", f.display());
        }
    }
    if mode == Mode::Patched && !args.dry_run {
        let on = std::fs::read_to_string("/proc/sys/kernel/sched_iron")
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        if !on {
            gov.exec.write(Path::new("/proc/sys/kernel/sched_iron"), "1").context("kernel.sched_iron is 0 and cannot be switched on (needs CAP_SYS_ADMIN); use --stock")?;
        }
    }
    // Queue steering and threaded-NAPI moves (stock mode): best effort, reported.
    if mode == Mode::Stock {
        let mut steer = EthtoolNtuple;
        for m in &gov.managed {
            if let Some(q) = &m.cfg.queue {
                match steer.check(gov.exec.as_mut(), &q.dev) {
                    Ok(()) => {
                        if let Err(e) = steer.steer(gov.exec.as_mut(), q) {
                            warn(format!(
                                "container {}: steering to {} queue {}: {e}",
                                m.cfg.name, q.dev, q.index
                            ));
                        }
                    }
                    Err(why) => warn(format!(
                        "container {}: no queue steering ({why}); its traffic shares queues",
                        m.cfg.name
                    )),
                }
                if enforce::napi_threaded(&q.dev) {
                    if !has_cap(caps, CAP_SYS_ADMIN) && !args.dry_run {
                        warn(format!(
                            "container {}: missing CAP_SYS_ADMIN to move {}'s NAPI kthreads",
                            m.cfg.name, q.dev
                        ));
                    } else {
                        match enforce::move_napi_threads(gov.exec.as_mut(), &q.dev, &m.cg.dir) {
                            Ok(n) => println!("iron-governor: moved {n} NAPI kthreads of {} into {}", q.dev, m.cg.dir.display()),
                            Err(e) => warn(format!("this kernel does not let NAPI kthreads of {} join a cgroup ({e}); using drop gates instead", q.dev)),
                        }
                    }
                }
            }
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    gov.start(&mut warn);
    let period = Duration::from_millis(cfg.period_ms);
    let mut next = Instant::now() + period;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && (args.periods == 0 || n < args.periods) {
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait.min(Duration::from_millis(20)));
            continue;
        }
        next += period;
        n += 1;
        let reports = gov.period(&mut warn);
        if args.verbose || args.dry_run {
            for r in reports {
                println!(
                    "period {n}: {} charged {:.3} ms, quota {} us, debt {:.3} ms, {}",
                    r.name,
                    r.charged_ns as f64 / 1e6,
                    r.quota_us,
                    r.debt_ns as f64 / 1e6,
                    if r.dropping { "dropping" } else { "passing" }
                );
            }
        }
    }
    gov.restore();
    println!("iron-governor: stopped after {n} periods; quotas restored, gates removed");
    Ok(())
}
