//! The end-of-run summary.

use serde::Serialize;
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
    pub latency_p99_us: f64,
    pub elapsed_s: f64,
    pub vertices: Vec<VertexSummary>,
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
        write!(
            f,
            "wrote {} packets and {} events; root log high-water {}; per-packet latency p50 {:.1} us, p99 {:.1} us",
            self.packets_written, self.events, self.root_log_high_water, self.latency_p50_us, self.latency_p99_us
        )
    }
}
