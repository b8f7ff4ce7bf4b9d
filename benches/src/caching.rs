//! `chc-bench caching`: cross-flow state caching across a change of partitioning (the
//! dissertation's Fig 3.14, Table 3.5 col 5).
//!
//! A portscan detector (eo-c: cross-flow state cached while an instance has it to itself)
//! is partitioned by flow. Alone, it has every host to itself and keeps each host's
//! likelihood, first contacts and pending attempts in its cache. A third of the way through
//! the trace a second instance takes half of the flows: every host's connections now reach
//! both instances, so those objects are shared. The first instance flushes and drops its
//! cache of them (`set_parallelism`, within the handover of the moved flows), and from then
//! on both instances read and update them in the store. Two thirds of the way through, the
//! second instance hands its flows back and the first has the hosts to itself again: it
//! caches them again.
//!
//! Recorded per packet (TCP packets, the ones the detector looks at): the time of its
//! `process()` call plus its share of the burst's flush, as in `chc-bench latency`, and the
//! store round trips the instances made, per phase. The events of the three phases together
//! must be those of one instance alone over the whole trace (checked every run): the
//! sharing phase changes where the state is kept, not what the detector decides.

use crate::results::{Better, Results, Row};
use crate::synth::{trace_or_synth, SynthArgs};
use anyhow::{ensure, Context, Result};
use chc_dataplane::config::Vertex;
use chc_dataplane::instance::{HandedOver, NfInstance};
use chc_dataplane::pcapio::Record;
use chc_dataplane::split::{bucket, key_hash};
use chc_dataplane::Chain;
use chc_proto::meta::ChcMeta;
use chc_store::server::{Store, StoreConfig};
use hdrhistogram::Histogram;
use nfs::nf::PartitionKey;
use nfs::packet::{Packet, PROTO_TCP};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct CachingArgs {
    /// Trace to replay; default: a synthetic one (60 000 packets, 3 000 connections, 300
    /// client hosts).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Repetitions (each with a fresh store and fresh instances).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// A short run (one repetition of a small trace), for a smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Write the results here (shared format, with a `notes` field per row).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The detector's chain: one portscan vertex, partitioned by flow so that a host's
/// connections can reach both instances.
const CHAIN: &str = r#"
[store]
shards = 1

[root]
id = 1

[[vertex]]
name = "portscan"
nf = "portscan"
parallelism = 1
mode = "eo-c"
partition = "flow"
"#;

fn vertex(parallelism: u16) -> Result<Vertex> {
    let mut c = Chain::parse(CHAIN, "the caching experiment's chain")?;
    c.set_parallelism("portscan", parallelism)?;
    Ok(c.vertices[0].clone())
}

/// What one phase measured.
#[derive(Default, Clone, Copy)]
pub struct Phase {
    pub p50_ns: f64,
    pub p99_ns: f64,
    /// TCP packets processed.
    pub packets: u64,
    /// Store round trips (blocking calls) of both instances per TCP packet.
    pub calls_per_packet: f64,
}

/// One run: before (one instance caching), sharing (two instances), after (one again).
pub struct Run {
    pub phases: [Phase; 3],
    /// Events of the run, and of one instance alone over the whole trace, each sorted.
    pub events: Vec<String>,
    pub alone: Vec<String>,
}

/// The TCP packets of the trace with their flow's bucket.
fn tcp_records(recs: Vec<Record>) -> Vec<(Record, usize)> {
    recs.into_iter()
        .filter_map(|r| {
            let mut d = r.data.clone();
            let n = d.len();
            let p = Packet::parse(&mut d, n, r.ts_ns);
            let t = p.five_tuple()?;
            (t.proto == PROTO_TCP).then(|| {
                let b = bucket(key_hash(&p, PartitionKey::Flow));
                (r, b)
            })
        })
        .collect()
}

/// Runs the trace through one instance, or through the three phases; returns the phases'
/// figures (all in the first phase when `alone`) and the sorted events.
fn run_once(recs: &[(Record, usize)], alone: bool) -> Result<([Phase; 3], Vec<String>)> {
    let store = Store::start(StoreConfig::in_memory(1))?;
    let mut a = NfInstance::new(&vertex(1)?, 0, &store).map_err(anyhow::Error::msg)?;
    // The second instance exists from the start, as after a scale-out decision.
    let mut b = NfInstance::new(&vertex(2)?, 1, &store).map_err(anyhow::Error::msg)?;
    b.state.set_fresh(false);
    // The second instance's buckets while it runs: every other one.
    let theirs = |bk: usize| bk % 2 == 1;
    let n = recs.len();
    let bounds = if alone { [n, n] } else { [n / 3, 2 * n / 3] };
    let mut phases = [Phase::default(); 3];
    let mut lines: Vec<String> = Vec::new();
    let mut events: Vec<String> = Vec::new();
    let mut clock = 1u64 << 48;
    let mut buf = Vec::with_capacity(2048);
    let mut times: Vec<u64> = Vec::with_capacity(32);
    for (ph, phase) in phases.iter_mut().enumerate() {
        let (from, to) = match ph {
            0 => (0, bounds[0]),
            1 => (bounds[0], bounds[1]),
            _ => (bounds[1], n),
        };
        match ph {
            1 if from < to => {
                // Scale-out: half of the flows move to the second instance; the first
                // instance's cached cross-flow objects become shared.
                let done = a.hand_over_as(2, &theirs);
                if let HandedOver::ForgetAfter = done {
                    a.forget_moved(&theirs);
                }
                b.take_buckets(&theirs);
                b.set_parallelism(2);
            }
            2 if from < to && bounds[0] < bounds[1] => {
                // Scale-in: the second instance hands its flows back; the first has the
                // hosts to itself again and caches them.
                let done = b.hand_over_as(1, &theirs);
                if let HandedOver::ForgetAfter = done {
                    b.forget_moved(&theirs);
                }
                a.take_buckets(&theirs);
                a.set_parallelism(1);
            }
            _ => {}
        }
        let calls0 = a.state.stats.remote_calls + b.state.stats.remote_calls;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)?;
        for burst in recs[from..to].chunks(32) {
            times.clear();
            for (r, bk) in burst {
                let inst = if ph == 1 && theirs(*bk) {
                    &mut b
                } else {
                    &mut a
                };
                clock += 1;
                let mut meta = ChcMeta {
                    clock,
                    ..Default::default()
                };
                buf.clear();
                buf.extend_from_slice(&r.data);
                let t0 = Instant::now();
                inst.process(
                    &mut buf,
                    r.wire_len as usize,
                    r.ts_ns,
                    &mut meta,
                    &mut lines,
                );
                times.push(t0.elapsed().as_nanos() as u64);
            }
            let t0 = Instant::now();
            a.flush();
            if ph == 1 {
                b.flush();
            }
            let share = t0.elapsed().as_nanos() as u64 / burst.len() as u64;
            for t in &times {
                hist.record((t + share).max(1))?;
            }
            events.append(&mut lines);
        }
        let calls = a.state.stats.remote_calls + b.state.stats.remote_calls - calls0;
        let packets = (to - from) as u64;
        *phase = Phase {
            p50_ns: hist.value_at_quantile(0.5) as f64,
            p99_ns: hist.value_at_quantile(0.99) as f64,
            packets,
            calls_per_packet: calls as f64 / packets.max(1) as f64,
        };
    }
    a.sync();
    b.sync();
    ensure!(
        a.counters.errors == 0 && b.counters.errors == 0,
        "the detector instances reported errors: {:?} {:?}",
        a.counters.first_error,
        b.counters.first_error
    );
    drop((a, b));
    store.shutdown();
    // Which instance raised an event depends on where its host's flows were then.
    let mut events: Vec<String> = events
        .into_iter()
        .map(|l| {
            let mut e: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
            if let Some(o) = e.as_object_mut() {
                o.remove("instance");
            }
            e.to_string()
        })
        .collect();
    events.sort();
    Ok((phases, events))
}

/// One repetition: the three phases, and one instance alone for the events to compare.
pub fn run_one(recs: &[(Record, usize)]) -> Result<Run> {
    let (phases, events) = run_once(recs, false)?;
    let (_, alone) = run_once(recs, true)?;
    Ok(Run {
        phases,
        events,
        alone,
    })
}

fn load(a: &CachingArgs) -> Result<Vec<(Record, usize)>> {
    let recs = trace_or_synth(
        a.trace.as_deref(),
        "caching",
        SynthArgs {
            cmd: None,
            out: PathBuf::new(),
            packets: if a.quick { 12_000 } else { 60_000 },
            connections: if a.quick { 600 } else { 3_000 },
            median_size: 300,
            clients: 300,
            servers: 20,
            ipv6: 0.05,
            duration_s: 10.0,
            seed: 3,
        },
    )?;
    let recs = tcp_records(recs);
    ensure!(recs.len() >= 96, "the trace has fewer than 96 TCP packets");
    Ok(recs)
}

pub fn run_caching(a: &CachingArgs) -> Result<serde_json::Value> {
    let reps = if a.quick { 1 } else { a.reps.max(1) };
    let recs = load(a)?;
    // Warm-up (allocators, page faults), not reported.
    run_once(&recs, false)?;
    let mut p50 = [vec![], vec![], vec![]];
    let mut p99 = [vec![], vec![], vec![]];
    let mut calls = [vec![], vec![], vec![]];
    let mut packets = [0u64; 3];
    let mut events = 0;
    for rep in 0..reps {
        let r = run_one(&recs)?;
        ensure!(
            r.events == r.alone,
            "repetition {rep}: the detector's events differ from one instance alone \
             ({} against {})",
            r.events.len(),
            r.alone.len()
        );
        events = r.events.len();
        for (i, ph) in r.phases.iter().enumerate() {
            p50[i].push(ph.p50_ns / 1e3);
            p99[i].push(ph.p99_ns / 1e3);
            calls[i].push(ph.calls_per_packet);
            packets[i] = ph.packets;
        }
        eprintln!(
            "repetition {}: p50 {:.2} / {:.2} / {:.2} us, store round trips per packet \
             {:.3} / {:.3} / {:.3} (one instance / two sharing / one again)",
            rep + 1,
            r.phases[0].p50_ns / 1e3,
            r.phases[1].p50_ns / 1e3,
            r.phases[2].p50_ns / 1e3,
            r.phases[0].calls_per_packet,
            r.phases[1].calls_per_packet,
            r.phases[2].calls_per_packet,
        );
    }
    let med = |v: &[f64]| crate::results::median(v);
    let what = format!(
        "portscan eo-c partitioned by flow, in-process store (1 shard); {} TCP packets in \
         three phases of {}, {} and {}; per packet: process() plus its share of the burst's \
         flush; store round trips per packet {:.3} / {:.3} / {:.3}, p99 {:.2} / {:.2} / \
         {:.2} us (one instance / two sharing / one again, medians); the {} events are those \
         of one instance alone in every repetition",
        recs.len(),
        packets[0],
        packets[1],
        packets[2],
        med(&calls[0]),
        med(&calls[1]),
        med(&calls[2]),
        med(&p99[0]),
        med(&p99[1]),
        med(&p99[2]),
        events
    );
    let mut res = Results::new("caching", reps);
    let mut notes = Vec::new();
    res.rows.push(Row::from_samples(
        "portscan per-packet time p50, two instances sharing the hosts' state / one caching it",
        "us",
        &p50[1],
        &p50[0],
        "one instance caching the hosts' state (same run)",
        Better::Higher,
        1.0,
    ));
    notes.push(format!(
        "{what}; the cost the cache saves (Fig 3.14: latency rises while hosts are shared): \
         the target says sharing must cost more than caching"
    ));
    res.rows.push(Row::from_samples(
        "portscan per-packet time p50, one instance caching again / before the sharing",
        "us",
        &p50[2],
        &p50[0],
        "one instance caching the hosts' state (same run)",
        Better::Lower,
        1.25,
    ));
    notes.push(format!(
        "{what}; once the second instance handed its flows back, the first caches the \
         hosts' state again (Fig 3.14: latency drops back)"
    ));
    print!("{}", res.table());
    let mut v = serde_json::to_value(&res)?;
    if let Some(rows) = v["rows"].as_array_mut() {
        for (r, n) in rows.iter_mut().zip(&notes) {
            r["notes"] = n.clone().into();
        }
    }
    v["phases"] = serde_json::json!({
        "names": ["one instance", "two sharing", "one again"],
        "packets": packets,
        "p50_us": [med(&p50[0]), med(&p50[1]), med(&p50[2])],
        "p99_us": [med(&p99[0]), med(&p99[1]), med(&p99[2])],
        "store_round_trips_per_packet": [med(&calls[0]), med(&calls[1]), med(&calls[2])],
    });
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(v)
}
