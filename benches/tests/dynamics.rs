//! `chc-bench dynamics --quick` end to end: the JSON it writes is the shared results format,
//! every row compares a positive measurement with the paper's figure, and says what it
//! measured. No timing is asserted (that is what the benchmark reports).

use std::path::Path;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chc-bench"))
}

#[test]
fn quick_run_writes_well_formed_rows() {
    let bin = Path::new(env!("CARGO_BIN_EXE_chc-bench"));
    let bin_dir = bin.parent().expect("the binary has a directory");
    assert!(
        bin_dir.join("chc-store").exists(),
        "the store group needs chc-store next to chc-bench: cargo build --release --workspace"
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("dynamics.json");
    let out = bench()
        .args(["dynamics", "--quick", "--json"])
        .arg(&json)
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("chc-bench runs");
    assert!(
        out.status.success(),
        "chc-bench dynamics --quick failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["experiment"], "dynamics");
    assert_eq!(v["repetitions"], 1);
    assert!(v["command"].as_str().unwrap().contains("dynamics"));
    assert!(v["machine"]["cpus"].as_u64().unwrap() >= 1);
    assert!(!v["machine"]["model"].as_str().unwrap().is_empty());
    let rows = v["rows"].as_array().unwrap();
    // move: 4 (and the DPDK path's two where DPDK is: one lcore, two lcores), ftmb: 2,
    // dupes: 4, root: 1, store: 1 (the end-to-end crash group is not quick).
    let dpdk = chc_dataplane::dpdk::chc_dpdk::is_available();
    assert_eq!(rows.len(), 12 + 2 * usize::from(dpdk), "{rows:#?}");
    assert_eq!(
        rows.iter()
            .filter(|r| r["metric"].as_str().unwrap().contains("--backend dpdk"))
            .count(),
        2 * usize::from(dpdk),
        "the DPDK path's state move rows"
    );
    let mut dupes = 0;
    for r in rows {
        let metric = r["metric"].as_str().unwrap();
        assert!(!metric.is_empty());
        assert!(!r["unit"].as_str().unwrap().is_empty(), "{metric}");
        assert!(!r["notes"].as_str().unwrap().is_empty(), "{metric}");
        if metric.contains("R5") {
            // Duplicates with suppression against the same runs without it: none got
            // through, and without it some did (else the experiment showed nothing).
            dupes += 1;
            assert!(
                r["notes"].as_str().unwrap().contains("Table 3.18"),
                "{metric}"
            );
            assert_eq!(
                r["max"].as_f64(),
                Some(0.0),
                "{metric}: duplicates got through"
            );
            assert!(
                r["baseline"].as_f64().unwrap() > 0.0,
                "{metric}: no duplicates without suppression"
            );
            assert_eq!(r["target_ratio"].as_f64(), Some(0.0), "{metric}");
            continue;
        }
        assert!(
            r["baseline_name"].as_str().unwrap().contains("CHC paper"),
            "{metric}: the baseline is the paper's figure"
        );
        let f = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{metric}: {k} is not a number"))
        };
        for k in ["ours", "baseline", "ratio", "target_ratio", "min", "max"] {
            assert!(f(k).is_finite() && f(k) > 0.0, "{metric}: {k} = {}", r[k]);
        }
        assert!((f("ratio") - f("ours") / f("baseline")).abs() <= 1e-9 * f("ratio"));
        assert!(f("min") <= f("ours") && f("ours") <= f("max"), "{metric}");
        assert!(matches!(r["better"].as_str(), Some("lower" | "higher")));
    }
    assert_eq!(dupes, 4, "the duplicate rows at 30 and 50 % load");
    for group in [
        "state move of 4000 flows",
        "FTMB",
        "root recovery",
        "store recovery",
    ] {
        assert!(
            rows.iter()
                .any(|r| r["metric"].as_str().unwrap().contains(group)),
            "no row for {group}"
        );
    }
}

#[test]
fn an_unknown_group_is_refused_clearly() {
    let out = bench()
        .args(["dynamics", "--quick", "--only", "nope"])
        .output()
        .expect("chc-bench runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown group"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
