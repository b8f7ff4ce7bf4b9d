//! The one results format every experiment writes (see BENCHMARKS.md in the project docs).

use serde::Serialize;
use std::path::Path;

#[derive(Serialize, Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
}

impl Machine {
    /// Reads this machine's description from /proc.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".to_string(), |s| s.trim().to_string());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            model,
            kernel,
        }
    }
}

#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    pub ours: f64,
    pub baseline: f64,
    pub baseline_name: String,
    pub ratio: f64,
    pub better: Better,
    pub target_ratio: f64,
    pub min: f64,
    pub max: f64,
}

impl Row {
    /// A row from repeated measurements of ours and of the baseline (medians are reported).
    pub fn from_samples(
        metric: impl Into<String>,
        unit: impl Into<String>,
        ours: &[f64],
        baseline: &[f64],
        baseline_name: impl Into<String>,
        better: Better,
        target_ratio: f64,
    ) -> Row {
        let o = median(ours);
        let b = median(baseline);
        Row {
            metric: metric.into(),
            unit: unit.into(),
            ours: o,
            baseline: b,
            baseline_name: baseline_name.into(),
            ratio: if b != 0.0 { o / b } else { f64::NAN },
            better,
            target_ratio,
            min: ours.iter().copied().fold(f64::INFINITY, f64::min),
            max: ours.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// Whether the row meets its target.
    pub fn meets_target(&self) -> bool {
        match self.better {
            Better::Higher => self.ratio >= self.target_ratio,
            Better::Lower => self.ratio <= self.target_ratio,
        }
    }
}

#[derive(Serialize, Debug, Clone)]
pub struct Results {
    pub experiment: String,
    pub command: String,
    pub machine: Machine,
    pub repetitions: usize,
    pub rows: Vec<Row>,
}

impl Results {
    pub fn new(experiment: &str, repetitions: usize) -> Results {
        Results {
            experiment: experiment.into(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            machine: Machine::detect(),
            repetitions,
            rows: Vec::new(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let s = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, s + "\n")
    }

    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<58} {:>14} {:>14} {:>7} {:>7}\n",
            "metric", "ours", "baseline", "ratio", "target"
        );
        for r in &self.rows {
            s.push_str(&format!(
                "{:<58} {:>14.4} {:>14.4} {:>7.3} {:>6}{}\n",
                r.metric,
                r.ours,
                r.baseline,
                r.ratio,
                if r.better == Better::Higher {
                    ">="
                } else {
                    "<="
                },
                r.target_ratio
            ));
        }
        s
    }
}

/// Median of samples (mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_use_medians_and_directions() {
        let r = Row::from_samples(
            "x",
            "ops/s",
            &[1.0, 9.0, 3.0],
            &[2.0, 2.0],
            "b",
            Better::Higher,
            1.5,
        );
        assert_eq!(r.ours, 3.0);
        assert_eq!(r.ratio, 1.5);
        assert!(r.meets_target());
        let r = Row::from_samples("y", "us", &[3.0], &[2.0], "b", Better::Lower, 1.05);
        assert!(!r.meets_target());
        assert_eq!((r.min, r.max), (3.0, 3.0));
        assert!(median(&[]).is_nan());
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
