//! `chc-bench latency` and `chc-bench throughput`: each NF alone, in every state mode.
//!
//! One NF instance processes a trace in batches of 32 on this thread, with the store's
//! shard thread beside it (in-process, as on the embedded default). The time of a packet
//! is its `process()` call plus its share of the batch's state flush (sending queued
//! operations to the store), recorded in an HDR histogram; throughput is packets over the
//! total of those times. The modes run interleaved (traditional, eo, eo-c, eo-c-na,
//! traditional, ...) so drift on a shared machine hits all of them, and every figure is a
//! median over repetitions. Baselines: traditional (same run) for the ratios, and the
//! paper's Fig 3.13 ratios for eo and eo-c where it gives them.

use crate::results::{Better, Results, Row};
use crate::synth::{trace_or_synth, SynthArgs};
use anyhow::Result;
use chc_dataplane::pcapio::Record;
use chc_store::client::cache::{Mode, StateClient};
use chc_store::server::{Store, StoreConfig};
use chc_store::CustomOps;
use hdrhistogram::Histogram;
use nfs::nf::{Ctx, Verdict};
use nfs::packet::{Packet, Shape};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct NfBenchArgs {
    /// Trace to replay; default: a synthetic one (100 000 packets, 2 000 connections).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// NFs to measure.
    #[arg(long, value_delimiter = ',', default_value = "nat,portscan,trojan,lb")]
    pub nfs: Vec<String>,
    /// Repetitions of each (NF, mode).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Write the results here (shared format).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Use at most this many packets of the trace.
    #[arg(long)]
    pub max_packets: Option<usize>,
}

pub const MODES: [Mode; 4] = [Mode::Traditional, Mode::Eo, Mode::EoC, Mode::EoCNa];

/// One measured run.
pub struct Measured {
    pub hist: Histogram<u64>,
    pub pps: f64,
}

fn load(a: &NfBenchArgs) -> Result<Vec<Record>> {
    let mut recs = trace_or_synth(
        a.trace.as_deref(),
        "nfbench",
        SynthArgs {
            cmd: None,
            out: PathBuf::new(),
            packets: 100_000,
            connections: 2_000,
            median_size: 1434,
            clients: 200,
            servers: 50,
            ipv6: 0.05,
            duration_s: 10.0,
            seed: 1,
        },
    )?;
    recs.retain(|r| {
        let mut d = r.data.clone();
        let n = d.len();
        Packet::parse(&mut d, n, 0).hdr.shape == Shape::Ip
    });
    if let Some(m) = a.max_packets {
        recs.truncate(m);
    }
    anyhow::ensure!(!recs.is_empty(), "the trace has no IP packets");
    Ok(recs)
}

/// Runs one NF in one mode over the records.
pub fn measure(
    kind: &str,
    mode: Mode,
    recs: &[Record],
    store: &Store,
    vertex: u16,
) -> Result<Measured> {
    let mut nf = nfs::build(kind, &toml::Table::new())?;
    let objs = nfs::nf::specs(&nf.objects());
    let mut state = match mode {
        Mode::Traditional => StateClient::local(vertex, 0, &objs, CustomOps::builtin()),
        m => StateClient::external(
            vertex,
            0,
            m,
            &objs,
            CustomOps::builtin(),
            store.client(store.next_client_id()),
        )?,
    };
    let mut events = Vec::new();
    {
        let mut ctx = Ctx::new(0, vertex, 0, false, &mut state, &mut events);
        nf.init(&mut ctx, 1)?;
    }
    state.sync()?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
    let mut total_ns: u128 = 0;
    let mut buf = Vec::with_capacity(2048);
    let mut times = Vec::with_capacity(32);
    let mut clock = 1u64 << 48;
    for batch in recs.chunks(32) {
        times.clear();
        for r in batch {
            buf.clear();
            buf.extend_from_slice(&r.data);
            let n = buf.len();
            clock += 1;
            let t0 = Instant::now();
            let mut p = Packet::parse(&mut buf, n, r.ts_ns);
            state.begin_packet(clock, false);
            let v = {
                let mut ctx = Ctx::new(clock, vertex, 0, false, &mut state, &mut events);
                nf.process(&mut p, &mut ctx)?
            };
            state.end_packet();
            std::hint::black_box(v == Verdict::Drop);
            times.push(t0.elapsed().as_nanos() as u64);
        }
        let t0 = Instant::now();
        state.flush()?;
        let flush = t0.elapsed().as_nanos() as u64;
        let share = flush / batch.len() as u64;
        for t in &times {
            let t = t + share;
            total_ns += u128::from(t);
            hist.record(t.max(1))?;
        }
        events.clear();
    }
    state.sync()?;
    Ok(Measured {
        hist,
        pps: recs.len() as f64 / (total_ns as f64 / 1e9),
    })
}

/// The paper's Fig 3.13 ratios to traditional at the median, where given.
fn paper_ratio(kind: &str, mode: Mode) -> Option<f64> {
    match (kind, mode) {
        ("nat", Mode::Eo) => Some((2.07 + 190.67) / 2.07),
        ("lb", Mode::Eo) => Some((2.25 + 109.87) / 2.25),
        ("nat", Mode::EoC) => Some((2.07 + 190.67 - 111.98) / 2.07),
        ("lb", Mode::EoC) => Some((2.25 + 109.87 - 55.94) / 2.25),
        ("nat", Mode::EoCNa) => Some(2.61 / 2.07),
        ("lb", Mode::EoCNa) => Some(2.27 / 2.25),
        _ => None,
    }
}

/// Runs every (NF, mode) `reps` times, interleaved; returns medians per (NF, mode).
pub fn sweep(a: &NfBenchArgs) -> Result<Vec<(String, Mode, Vec<Measured>)>> {
    let recs = load(a)?;
    let store = Store::start(StoreConfig::in_memory(1)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out: Vec<(String, Mode, Vec<Measured>)> = Vec::new();
    for kind in &a.nfs {
        for m in MODES {
            out.push((kind.clone(), m, Vec::new()));
        }
    }
    let mut vertex = 100u16;
    for rep in 0..a.reps {
        for (kind, mode, v) in out.iter_mut() {
            vertex += 1;
            let m = measure(kind, *mode, &recs, &store, vertex)?;
            eprintln!(
                "chc-bench: {kind:<9} {:<11} rep {}: p50 {:.2} us, {:.0} pkt/s",
                mode.to_string(),
                rep + 1,
                m.hist.value_at_quantile(0.5) as f64 / 1e3,
                m.pps
            );
            v.push(m);
        }
    }
    Ok(out)
}

fn pct(m: &Measured, q: f64) -> f64 {
    m.hist.value_at_quantile(q) as f64 / 1e3
}

pub fn latency(a: &NfBenchArgs) -> Result<Results> {
    let data = sweep(a)?;
    let mut r = Results::new("latency", a.reps);
    for kind in &a.nfs {
        let base: &Vec<Measured> = &data
            .iter()
            .find(|(k, m, _)| k == kind && *m == Mode::Traditional)
            .expect("traditional measured")
            .2;
        for (k, mode, ms) in &data {
            if k != kind || *mode == Mode::Traditional {
                continue;
            }
            let qs: &[(f64, &str)] = if *mode == Mode::EoCNa {
                &[
                    (0.05, "p5"),
                    (0.25, "p25"),
                    (0.5, "p50"),
                    (0.75, "p75"),
                    (0.95, "p95"),
                ]
            } else {
                &[(0.5, "p50")]
            };
            for (q, name) in qs {
                let ours: Vec<f64> = ms.iter().map(|m| pct(m, *q)).collect();
                let b: Vec<f64> = base.iter().map(|m| pct(m, *q)).collect();
                let (target, bname) = match (*mode, *name) {
                    (Mode::EoCNa, "p50") => (1.05, "traditional NF (same run); target from the issue".to_string()),
                    _ => (
                        paper_ratio(kind, *mode).unwrap_or(1.0),
                        "traditional NF (same run); target = the paper's Fig 3.13 ratio where given".to_string(),
                    ),
                };
                r.rows.push(Row::from_samples(
                    format!("{kind} {mode} {name} per-packet time"),
                    "us",
                    &ours,
                    &b,
                    bname,
                    Better::Lower,
                    target,
                ));
            }
        }
    }
    Ok(r)
}

pub fn throughput(a: &NfBenchArgs) -> Result<Results> {
    let data = sweep(a)?;
    let mut r = Results::new("throughput", a.reps);
    for kind in &a.nfs {
        let base: Vec<f64> = data
            .iter()
            .find(|(k, m, _)| k == kind && *m == Mode::Traditional)
            .expect("traditional measured")
            .2
            .iter()
            .map(|m| m.pps)
            .collect();
        for (k, mode, ms) in &data {
            if k != kind || *mode == Mode::Traditional {
                continue;
            }
            let ours: Vec<f64> = ms.iter().map(|m| m.pps).collect();
            r.rows.push(Row::from_samples(
                format!("{kind} {mode} packets per second, one instance"),
                "pkt/s",
                &ours,
                &base,
                "traditional NF (same run)",
                Better::Higher,
                if *mode == Mode::EoCNa { 0.95 } else { 0.0 },
            ));
        }
    }
    Ok(r)
}
