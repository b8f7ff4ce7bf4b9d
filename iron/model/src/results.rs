//! The project's shared benchmark results format (`shared/BENCHMARKS.md`), written by `iron-sim`
//! and `iron-bench` with `--json FILE`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub experiment: String,
    pub command: String,
    pub machine: Machine,
    pub repetitions: u32,
    pub rows: Vec<Row>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub kernel: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub metric: String,
    pub unit: String,
    /// Median over repetitions.
    pub ours: f64,
    /// Median over repetitions, same run.
    pub baseline: f64,
    pub baseline_name: String,
    /// `ours / baseline`.
    pub ratio: f64,
    /// "lower" or "higher".
    pub better: String,
    /// Goal for `ratio`, if the experiment sets one.
    pub target_ratio: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// The published figure for the same metric, where the paper has one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub paper: Option<String>,
}

impl Machine {
    /// Describes the machine this runs on, from /proc (best effort: unknown fields say so).
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Machine {
            cpus,
            model,
            kernel,
        }
    }
}

/// Median of a non-empty sample (mean of the middle two for even sizes); 0 for an empty one.
pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl Row {
    /// A "lower is better" row from repeated measurements of ours and the baseline.
    pub fn lower_is_better(
        metric: impl Into<String>,
        unit: impl Into<String>,
        ours: &[f64],
        baseline: &[f64],
        baseline_name: impl Into<String>,
        target_ratio: Option<f64>,
    ) -> Row {
        let (o, b) = (median(ours), median(baseline));
        Row {
            metric: metric.into(),
            unit: unit.into(),
            ours: o,
            baseline: b,
            baseline_name: baseline_name.into(),
            ratio: if b > 0.0 { o / b } else { 0.0 },
            better: "lower".into(),
            target_ratio,
            min: ours.iter().copied().fold(f64::INFINITY, f64::min),
            max: ours.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            paper: None,
        }
    }

    pub fn with_paper(mut self, paper: impl Into<String>) -> Row {
        self.paper = Some(paper.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let r = Row::lower_is_better(
            "t",
            "s",
            &[2.0, 4.0, 3.0],
            &[1.0, 1.0, 2.0],
            "b",
            Some(1.05),
        );
        assert_eq!(r.ratio, 3.0);
        assert_eq!((r.min, r.max), (2.0, 4.0));
        let j = serde_json::to_value(&r).unwrap();
        for k in [
            "metric",
            "unit",
            "ours",
            "baseline",
            "baseline_name",
            "ratio",
            "better",
            "target_ratio",
            "min",
            "max",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
    }
}
