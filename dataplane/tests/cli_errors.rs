//! What a user sees when `chc-dataplane run` cannot start: one message naming the file and
//! why, the system's reason said once (not again as a separate cause), and a failure exit.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chc-dataplane"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_chain_file_is_named_with_its_reason_once() {
    let d = tempfile::tempdir().unwrap();
    let chain = d.path().join("no-such-chain.toml");
    let out = d.path().join("out.pcap");
    let input = d.path().join("in.pcap");
    std::fs::write(&input, b"").unwrap();
    let (ok, err) = run(&[
        "run",
        "--chain",
        chain.to_str().unwrap(),
        "--pcap-in",
        input.to_str().unwrap(),
        "--pcap-out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a missing chain file must fail the run");
    assert!(err.contains(chain.to_str().unwrap()), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn an_input_that_is_not_a_pcap_file_is_named_with_its_reason_once() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("garbage.pcap");
    std::fs::write(&input, b"not a capture at all").unwrap();
    let out = d.path().join("out.pcap");
    let (ok, err) = run(&[
        "run",
        "--pcap-in",
        input.to_str().unwrap(),
        "--pcap-out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "an input that is not a pcap file must fail the run");
    assert!(err.contains("garbage.pcap"), "{err}");
    assert_eq!(err.matches("not a pcap file").count(), 1, "{err}");
}

#[test]
fn a_rate_of_zero_is_refused_on_both_backends() {
    for backend in ["pcap", "dpdk"] {
        let (ok, err) = run(&[
            "run",
            "--backend",
            backend,
            "--pcap-in",
            "in.pcap",
            "--pcap-out",
            "out.pcap",
            "--rate",
            "0",
        ]);
        assert!(!ok, "{backend}: --rate 0 ran");
        assert!(err.contains("--rate 0"), "{backend}: {err}");
    }
}

/// `run` over the shared mixed.pcap with `extra` arguments (output to a scratch file).
fn run_on_mixed(extra: &[&str]) -> (bool, String) {
    let trace = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/traces/mixed.pcap"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.pcap");
    let mut args = vec![
        "run",
        "--pcap-in",
        trace,
        "--pcap-out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `run` over mixed.pcap with `extra` fails, saying `why`.
fn refused_on_mixed(extra: &[&str], why: &str) {
    let (ok, err) = run_on_mixed(extra);
    assert!(!ok, "{extra:?} ran");
    assert!(err.contains(why), "{extra:?}: {err}");
}

#[test]
fn a_clone_that_cannot_run_is_refused_on_both_backends() {
    for backend in ["pcap", "dpdk"] {
        for (extra, why) in [
            (
                &["--scale", "nat:clone=3@100"][..],
                "a clone must be the only step",
            ),
            (
                &["--scale", "nat:clone=0@100", "--scale", "nat:out@200"][..],
                "a clone must be the only step",
            ),
            (
                &["--scale", "nat:clone=0@100", "--mode", "traditional"][..],
                "keeps its state in the instance",
            ),
        ] {
            let mut args = vec!["--backend", backend];
            args.extend_from_slice(extra);
            refused_on_mixed(&args, why);
        }
    }
}

#[test]
fn an_autoscale_policy_that_cannot_run_is_refused() {
    for (extra, why) in [
        (&["--autoscale", "nat:x"][..], "expected NAME:PPS"),
        (&["--autoscale", "nope:100"][..], "no vertex \"nope\""),
        (
            &["--autoscale", "nat:100", "--scale", "nat:clone=0@10"][..],
            "no policy beside it",
        ),
        (
            &["--autoscale", "nat:100", "--scale", "nat:out@10"][..],
            "one decides, not both",
        ),
        (
            &[
                "--autoscale",
                "nat:100",
                "--scale",
                "nat:out@10",
                "--backend",
                "dpdk",
            ][..],
            "one decides, not both",
        ),
        (
            &[
                "--autoscale",
                "nat:100",
                "--backend",
                "dpdk",
                "--scale",
                "nat:clone=0@10",
            ][..],
            "no policy beside it",
        ),
    ] {
        refused_on_mixed(extra, why);
    }
}

#[test]
fn a_straggler_policy_that_cannot_run_is_refused() {
    for (extra, why) in [
        (&["--clone-stragglers", "nat"][..], "expected NAME:PCT"),
        (&["--clone-stragglers", "nat:0"][..], "expected NAME:PCT"),
        (&["--clone-stragglers", "nope:50"][..], "no vertex \"nope\""),
        (
            &["--clone-stragglers", "nat:50", "--autoscale", "lb:100"][..],
            "a straggler's clone runs alone",
        ),
        (
            &["--clone-stragglers", "nat:50", "--scale", "lb:out@10"][..],
            "a straggler's clone runs alone",
        ),
        (
            &["--clone-stragglers", "nat:50", "--mode", "traditional"][..],
            "keeps its state in the instance",
        ),
        (
            &["--clone-stragglers", "nat:50", "--backend", "dpdk"][..],
            "embedded path only",
        ),
    ] {
        refused_on_mixed(extra, why);
    }
}
