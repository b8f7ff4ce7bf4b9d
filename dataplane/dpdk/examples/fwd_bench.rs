//! The baseline for the dataplane's speed figures: `dpdk-testpmd` forwarding between two
//! `net_ring` ports on one lcore (io and macswap modes, 64 B and 1500 B packets) against the
//! same loop written with chc-dpdk, measured in one run, interleaved, with medians.
//!
//! ```text
//! cargo run --release -p chc-dpdk --example fwd_bench -- compare --reps 5 --json fwd.json
//! ```
//!
//! `compare` runs each trial as a separate process (DPDK allows one EAL per process):
//! `dpdk-testpmd` for the baseline and this program's `forward` subcommand for ours. Both
//! forward on CPU 1 with a burst of 32 and 32 packets in flight per port, which loop between
//! the two ports forever (a `net_ring` port receives what it transmits); the rate is the sum
//! of both ports' receive rates.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chc_dpdk::{lcore, Burst, Eal, EalArgs, Mempool, Port, PortConfig, RxQueue, TxQueue};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Forwarding baseline: dpdk-testpmd vs a chc-dpdk forwarder on net_ring vdevs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every mode and size for both forwarders, interleaved, and report medians.
    Compare {
        /// Repetitions of each measurement (medians are reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds measured per trial, after one second of warm-up.
        #[arg(long, default_value_t = 2)]
        seconds: u64,
        /// Packet sizes in bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,1500")]
        sizes: Vec<usize>,
        /// Write the results in the shared JSON format here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// The testpmd binary.
        #[arg(long, default_value = "dpdk-testpmd")]
        testpmd: String,
    },
    /// One trial of the chc-dpdk forwarder; prints one JSON line.
    Forward(Trial),
    /// One trial of dpdk-testpmd; prints one JSON line.
    Testpmd {
        #[command(flatten)]
        trial: Trial,
        /// The testpmd binary.
        #[arg(long, default_value = "dpdk-testpmd")]
        testpmd: String,
    },
}

#[derive(clap::Args, Clone)]
struct Trial {
    /// What the forwarder does to each packet.
    #[arg(long, value_enum, default_value_t = Mode::Io)]
    mode: Mode,
    /// Packet size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds measured, after one second of warm-up.
    #[arg(long, default_value_t = 2)]
    seconds: u64,
    /// The CPU that forwards.
    #[arg(long, default_value_t = 1)]
    cpu: u32,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Mode {
    /// Forward untouched (testpmd `io`).
    Io,
    /// Swap source and destination MAC first (testpmd `macswap`).
    Macswap,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Io => "io",
            Mode::Macswap => "macswap",
        }
    }
}

const BURST: usize = 32;
const IN_FLIGHT_PER_PORT: usize = 32;
const WARMUP: Duration = Duration::from_secs(1);

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Forward(t) => {
            let (m, tsc_hz) = forward(&t)?;
            let mut v = m.to_json();
            v["tsc_hz"] = tsc_hz.into();
            println!("{v}");
        }
        Cmd::Testpmd {
            trial,
            testpmd: bin,
        } => {
            println!("{}", testpmd(&bin, &trial)?.to_json());
        }
        Cmd::Compare {
            reps,
            seconds,
            sizes,
            json,
            testpmd,
        } => compare(reps, seconds, &sizes, json.as_deref(), &testpmd)?,
    }
    Ok(())
}

/// One trial's outcome.
struct Measured {
    /// Packets per second over the measured wall-clock time, in millions.
    mpps: f64,
    /// Packets forwarded while `cpu_seconds` were spent.
    packets: u64,
    /// CPU time the forwarding process got (others share the machine).
    cpu_seconds: f64,
}

impl Measured {
    fn to_json(&self) -> serde_json::Value {
        json!({"mpps": self.mpps, "packets": self.packets, "cpu_seconds": self.cpu_seconds})
    }
}

/// Our forwarder: the two streams testpmd runs (port 0 -> 1, port 1 -> 0) on one lcore.
fn forward(t: &Trial) -> Result<(Measured, u64)> {
    let _eal = Eal::init(
        EalArgs::virtual_devices()
            .lcores(&t.cpu.to_string())
            .vdev("net_ring0")
            .vdev("net_ring1"),
    )?;
    let pool = Mempool::pktmbuf("fwd", 8191, 256, chc_dpdk::DEFAULT_DATA_ROOM)?;
    let mut p0 = Port::open("net_ring0")?.start(&PortConfig::default(), &pool)?;
    let mut p1 = Port::open("net_ring1")?.start(&PortConfig::default(), &pool)?;
    let ports = [p0.port.clone(), p1.port.clone()];
    let (mut rx0, mut tx0) = (p0.rx.remove(0), p0.tx.remove(0));
    let (mut rx1, mut tx1) = (p1.rx.remove(0), p1.tx.remove(0));

    // Like testpmd --tx-first: put packets in flight on both ports.
    let mut frame = vec![0u8; t.size];
    frame[..12].copy_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    for tx in [&mut tx0, &mut tx1] {
        let mut burst = Burst::with_capacity(IN_FLIGHT_PER_PORT);
        for _ in 0..IN_FLIGHT_PER_PORT {
            burst.push(pool.alloc_from(&frame)?).ok();
        }
        tx.tx_burst(&mut burst);
    }

    let hz = lcore::tsc_hz()?;
    let mut burst = Burst::with_capacity(BURST);
    let mut step = |rx: &mut RxQueue, tx: &mut TxQueue| {
        if rx.rx_burst(&mut burst) == 0 {
            return;
        }
        if t.mode == Mode::Macswap {
            for m in burst.iter_mut() {
                macswap(m.data_mut());
            }
        }
        tx.tx_burst(&mut burst);
        burst.clear(); // what the port did not take is dropped, as testpmd does
    };
    let mut run_for = |cycles: u64| {
        let end = lcore::tsc() + cycles;
        while lcore::tsc() < end {
            for _ in 0..64 {
                step(&mut rx0, &mut tx1);
                step(&mut rx1, &mut tx0);
            }
        }
    };
    run_for(hz * WARMUP.as_secs());
    let received =
        || -> Result<u64> { Ok(ports[0].stats()?.rx_packets + ports[1].stats()?.rx_packets) };
    let (n0, c0, cpu0) = (received()?, lcore::tsc(), cpu_seconds("self")?);
    run_for(hz * t.seconds);
    let (n1, c1, cpu1) = (received()?, lcore::tsc(), cpu_seconds("self")?);
    let secs = (c1 - c0) as f64 / hz as f64;
    let measured = Measured {
        mpps: (n1 - n0) as f64 / secs / 1e6,
        packets: n1 - n0,
        cpu_seconds: cpu1 - cpu0,
    };
    Ok((measured, hz))
}

/// User + system CPU seconds of a process (`self` or a pid) or a thread (`pid/task/tid`),
/// from /proc; ticks are USER_HZ, 100 on Linux.
fn cpu_seconds(proc_path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{proc_path}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

#[inline]
fn macswap(d: &mut [u8]) {
    let (dst, rest) = d.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
}

/// testpmd on the same vdevs: main lcore 0 prints statistics every second, lcore `cpu`
/// forwards. The rate is the median over the measured seconds of both ports' Rx-pps; the CPU
/// time is the forwarding thread's over its whole life, against the packets it forwarded.
fn testpmd(bin: &str, t: &Trial) -> Result<Measured> {
    let prefix = format!("testpmd-{}", std::process::id());
    let main_cpu = if t.cpu == 0 { 1 } else { 0 };
    let mut child = Command::new(bin)
        .args([
            "-l",
            &format!("{main_cpu},{}", t.cpu),
            "--main-lcore",
            &main_cpu.to_string(),
        ])
        .args(
            EalArgs::virtual_devices()
                .vdev("net_ring0")
                .vdev("net_ring1")
                .file_prefix(&prefix),
        )
        .args([
            "--",
            &format!("--forward-mode={}", t.mode.name()),
            &format!("--txpkts={}", t.size),
            &format!("--burst={BURST}"),
            "--tx-first",
            "--stats-period=1",
            "--no-lsc-interrupt",
            "--nb-cores=1",
            "--total-num-mbufs=8192",
            "-a",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {bin} (apt-get install dpdk-dev)"))?;
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let periods_needed = WARMUP.as_secs() as usize + t.seconds as usize + 1;
    let mut pps = Vec::new();
    for line in lines.by_ref() {
        if let Some(v) = line?.trim().strip_prefix("Rx-pps:") {
            pps.push(v.split_whitespace().next().unwrap_or("0").parse::<f64>()?);
            if pps.len() >= 2 * periods_needed {
                break;
            }
        }
    }
    let cpu = worker_cpu_seconds(pid)?;
    // SIGINT makes testpmd stop forwarding, print its totals and exit.
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()?;
    let mut packets = None;
    let mut in_totals = false;
    for line in lines {
        let line = line?;
        in_totals |= line.contains("Accumulated forward statistics for all ports");
        if let (true, Some(v)) = (in_totals, line.trim().strip_prefix("RX-packets:")) {
            packets = v
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok());
            in_totals = false;
        }
    }
    child.wait()?;
    // Per period, both ports; skip the period of start-up and the warm-up.
    let totals: Vec<f64> = pps.chunks(2).map(|c| c.iter().sum()).collect();
    let measured = totals.get(1 + WARMUP.as_secs() as usize..).unwrap_or(&[]);
    if measured.is_empty() {
        bail!(
            "testpmd printed {} statistics periods, too few",
            totals.len()
        );
    }
    Ok(Measured {
        mpps: median(measured) / 1e6,
        packets: packets.context("testpmd printed no forwarding totals")?,
        cpu_seconds: cpu,
    })
}

/// CPU seconds of testpmd's forwarding thread (the EAL names it `rte-worker-N`).
fn worker_cpu_seconds(pid: u32) -> Result<f64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?.file_name();
        let tid = tid.to_string_lossy();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))?;
        if comm.starts_with("rte-worker") || comm.starts_with("lcore-worker") {
            return cpu_seconds(&format!("{pid}/task/{tid}"));
        }
    }
    bail!("testpmd has no lcore-worker thread")
}

fn measured(v: &serde_json::Value) -> Result<Measured> {
    Ok(Measured {
        mpps: v["mpps"].as_f64().context("no mpps")?,
        packets: v["packets"].as_u64().context("no packets")?,
        cpu_seconds: v["cpu_seconds"].as_f64().context("no cpu_seconds")?,
    })
}

fn run_self(args: &[String]) -> Result<serde_json::Value> {
    let out = Command::new(std::env::current_exe()?)
        .args(args)
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let line = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(
        line.lines().last().context("no output")?,
    )?)
}

fn compare(
    reps: usize,
    seconds: u64,
    sizes: &[usize],
    json_out: Option<&std::path::Path>,
    testpmd_bin: &str,
) -> Result<()> {
    let mut rows = Vec::new();
    let mut tsc_hz = 0u64;
    for mode in [Mode::Io, Mode::Macswap] {
        for &size in sizes {
            let (mut ours, mut base) = (Vec::<Measured>::new(), Vec::<Measured>::new());
            let common = [
                "--mode".to_string(),
                mode.name().into(),
                "--size".into(),
                size.to_string(),
                "--seconds".into(),
                seconds.to_string(),
            ];
            for rep in 0..reps {
                // Interleave, and alternate which goes first, so drift hits both alike.
                for first in [rep % 2 == 0, rep % 2 != 0] {
                    if first {
                        let mut args = vec![
                            "testpmd".to_string(),
                            "--testpmd".into(),
                            testpmd_bin.into(),
                        ];
                        args.extend(common.iter().cloned());
                        base.push(measured(&run_self(&args)?)?);
                    } else {
                        let mut args = vec!["forward".to_string()];
                        args.extend(common.iter().cloned());
                        let v = run_self(&args)?;
                        ours.push(measured(&v)?);
                        tsc_hz = v["tsc_hz"].as_u64().unwrap_or(tsc_hz);
                    }
                }
                eprintln!(
                    "{} {size} B rep {rep}: ours {:.2} Mpps, testpmd {:.2} Mpps",
                    mode.name(),
                    ours[rep].mpps,
                    base[rep].mpps
                );
            }
            let mpps = |v: &[Measured]| -> Vec<f64> { v.iter().map(|m| m.mpps).collect() };
            // TSC cycles of CPU time actually received per packet: robust to other load.
            let cycles = |v: &[Measured]| -> Vec<f64> {
                v.iter()
                    .map(|m| tsc_hz as f64 * m.cpu_seconds / m.packets.max(1) as f64)
                    .collect()
            };
            let baseline_name = format!("dpdk-testpmd 22.11 {} (same run)", mode.name());
            rows.push(row(
                &format!("{} forwarding, {size} B, 2x net_ring, 1 lcore", mode.name()),
                "Mpps",
                &mpps(&ours),
                &mpps(&base),
                &baseline_name,
                "higher",
                0.9,
            ));
            rows.push(row(
                &format!(
                    "{} forwarding TSC cycles/packet on CPU, {size} B, 1 lcore",
                    mode.name()
                ),
                "cycles/packet",
                &cycles(&ours),
                &cycles(&base),
                &baseline_name,
                "lower",
                1.0 / 0.9,
            ));
        }
    }
    let results = json!({
        "experiment": "dpdk-forwarding-baseline",
        "command": format!(
            "cargo run --release -p chc-dpdk --example fwd_bench -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        "machine": machine(),
        "repetitions": reps,
        "rows": rows,
    });
    for r in &rows {
        println!(
            "{:<58} {:>10.3} {:>10.3} {:>6.3} ({} is better, target {:.2})",
            r["metric"].as_str().unwrap_or(""),
            r["ours"].as_f64().unwrap_or(f64::NAN),
            r["baseline"].as_f64().unwrap_or(f64::NAN),
            r["ratio"].as_f64().unwrap_or(f64::NAN),
            r["better"].as_str().unwrap_or(""),
            r["target_ratio"].as_f64().unwrap_or(f64::NAN),
        );
    }
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn row(
    metric: &str,
    unit: &str,
    ours: &[f64],
    base: &[f64],
    baseline_name: &str,
    better: &str,
    target: f64,
) -> serde_json::Value {
    let (o, b) = (median(ours), median(base));
    json!({
        "metric": metric,
        "unit": unit,
        "ours": o,
        "baseline": b,
        "baseline_name": baseline_name,
        "ratio": o / b,
        "better": better,
        "target_ratio": (target * 1000.0f64).round() / 1000.0,
        "min": ours.iter().copied().fold(f64::INFINITY, f64::min),
        "max": ours.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown", str::trim);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "model": model,
        "kernel": kernel.trim(),
    })
}
