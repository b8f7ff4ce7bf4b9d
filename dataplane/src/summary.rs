//! The end-of-run summary.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Serialize)]
pub struct VertexSummary {
    pub name: String,
    pub nf: String,
    pub mode: String,
    pub parallelism: u16,
    pub partition: String,
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: u64,
    pub fragments: u64,
    pub errors: u64,
    pub state_ops: u64,
    pub remote_calls: u64,
    pub per_instance_in: Vec<u64>,
}

impl VertexSummary {
    /// Vertex `v` before any counts are added.
    pub fn of(v: &crate::config::Vertex) -> VertexSummary {
        VertexSummary {
            name: v.name.clone(),
            nf: v.nf.clone(),
            mode: v.mode.to_string(),
            parallelism: v.parallelism,
            partition: format!("{:?}", v.partition).to_lowercase(),
            packets_in: 0,
            packets_out: 0,
            dropped: 0,
            fragments: 0,
            errors: 0,
            state_ops: 0,
            remote_calls: 0,
            per_instance_in: vec![0; v.parallelism as usize],
        }
    }

    /// Adds instance `idx`'s counts (two instances may report under one id: a straggler and
    /// its clone on the DPDK path).
    pub fn add(
        &mut self,
        idx: u16,
        c: &crate::instance::NfCounters,
        s: &chc_store::client::cache::StateStats,
    ) {
        self.packets_in += c.pkts_in;
        self.packets_out += c.pkts_out;
        self.dropped += c.dropped;
        self.fragments += c.fragments;
        self.errors += c.errors;
        self.state_ops += s.ops;
        self.remote_calls += s.remote_calls;
        let i = usize::from(idx);
        if self.per_instance_in.len() <= i {
            self.per_instance_in.resize(i + 1, 0);
        }
        self.per_instance_in[i] += c.pkts_in;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub packets_read: u64,
    pub malformed_dropped: u64,
    pub non_ip_passed: u64,
    pub root_stamped: u64,
    pub root_dropped_log_full: u64,
    pub root_log_high_water: u64,
    pub packets_written: u64,
    pub events: u64,
    pub latency_p50_us: f64,
    pub latency_p75_us: f64,
    pub latency_p99_us: f64,
    pub elapsed_s: f64,
    pub vertices: Vec<VertexSummary>,
    /// Flow moves between instances (scaling), in the order they completed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<MoveSummary>,
    /// A straggler's clone, when one was started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clone: Option<CloneSummary>,
    /// The steps the operator's policies took, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub decisions: Vec<Decision>,
    /// Where the state lived: the in-process store or the servers' addresses.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub store: String,
    /// Failed hosts the root recovered (DPDK path, a chain over several hosts).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub rejoins: Vec<crate::dpdk::rejoin::RejoinSummary>,
    /// Copies of a replayed packet that had left the chain already, absorbed at the egress.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub exits_absorbed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A step an operator's policy took (`--autoscale`, `--clone-stragglers`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// Packets the root had read when it was taken.
    pub after_packets: u64,
    pub vertex: String,
    /// "out", "in" or "clone".
    pub action: String,
    /// Instances before the step, and the packets per second they processed together over
    /// the last period (for a clone: the straggler alone, since the start).
    pub instances: u16,
    pub rate_pps: f64,
    /// The straggler a clone races.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub straggler: Option<u16>,
}

/// A straggler's clone (§3.4.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneSummary {
    pub vertex: String,
    /// The straggler's instance id (the clone has it too).
    pub of: u16,
    /// Packets the root replayed from its log for the clone.
    pub replayed: u64,
    /// Which of the two was kept: "clone", "straggler" (or "not cloned").
    pub kept: String,
    /// Second copies of a clock the pair emitted, suppressed.
    pub duplicates_suppressed: u64,
}

/// One flow move: from the old instance's last mark to its handover.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveSummary {
    pub id: u64,
    pub vertex: String,
    pub from: u16,
    pub to: u16,
    pub buckets: usize,
    /// State objects the old instance handed over.
    pub objects: usize,
    /// From the last "last" mark to the handover sent, microseconds.
    pub handover_us: f64,
    /// Packets the new instance held until the handover.
    pub held: u64,
    /// On the DPDK path: how long the root held its input back for the move (the chain
    /// draining, then the release and the take), microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_us: Option<f64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "read {} packets in {:.2} s ({:.0} pkt/s): {} into the chain, {} malformed dropped, {} non-IP passed through, {} dropped at the root (log full)",
            self.packets_read,
            self.elapsed_s,
            self.packets_read as f64 / self.elapsed_s.max(1e-9),
            self.root_stamped,
            self.malformed_dropped,
            self.non_ip_passed,
            self.root_dropped_log_full
        )?;
        writeln!(
            f,
            "{:<12} {:<10} {:<12} {:>4} {:<9} {:>10} {:>10} {:>9} {:>6} {:>10}",
            "vertex", "nf", "mode", "inst", "split", "in", "out", "dropped", "errors", "store ops"
        )?;
        for v in &self.vertices {
            writeln!(
                f,
                "{:<12} {:<10} {:<12} {:>4} {:<9} {:>10} {:>10} {:>9} {:>6} {:>10}",
                v.name,
                v.nf,
                v.mode,
                v.parallelism,
                v.partition,
                v.packets_in,
                v.packets_out,
                v.dropped,
                v.errors,
                v.state_ops
            )?;
        }
        for m in &self.moves {
            writeln!(
                f,
                "moved {} buckets of {} from instance {} to {}: {} objects handed over in {:.1} us, {} packets held",
                m.buckets, m.vertex, m.from, m.to, m.objects, m.handover_us, m.held
            )?;
        }
        if let Some(c) = &self.clone {
            writeln!(
                f,
                "cloned {} instance {}: {} packets replayed, {} kept, {} duplicate outputs suppressed",
                c.vertex, c.of, c.replayed, c.kept, c.duplicates_suppressed
            )?;
        }
        for r in &self.rejoins {
            writeln!(
                f,
                "a host failed after {} packets: back in {:.0} ms, {} packets replayed and settled in {:.1} ms",
                r.after_packets, r.down_ms, r.replayed, r.settle_ms
            )?;
        }
        if self.exits_absorbed > 0 {
            writeln!(
                f,
                "{} replayed copies had left the chain already and were absorbed at the egress",
                self.exits_absorbed
            )?;
        }
        if !self.store.is_empty() {
            writeln!(f, "state: {}", self.store)?;
        }
        write!(
            f,
            "wrote {} packets and {} events; root log high-water {}; per-packet latency p50 {:.1} us, p99 {:.1} us",
            self.packets_written, self.events, self.root_log_high_water, self.latency_p50_us, self.latency_p99_us
        )
    }
}
