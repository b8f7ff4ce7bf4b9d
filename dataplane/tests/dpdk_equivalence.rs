//! The DPDK dataplane replays every shared trace through a `net_pcap` vdev exactly like the
//! embedded path: the same output packets (bytes, capture time, wire length) and the same
//! events, line for line, as multisets (independent flows may interleave differently). With
//! one instance per vertex the output file is byte-identical. Also on several lcores, with
//! instances handing bursts to each other through rte_rings.
//!
//! Each DPDK run is its own `chc-dataplane` process (DPDK allows one EAL per process).

use chc_dataplane::{pcapio, run, Chain, RunOptions};
use std::path::{Path, PathBuf};

mod common;
use common::{sorted_lines, sorted_records};
use std::process::Command;

fn traces() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the shared traces are next to the repository")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 11,
        "expected the 11 shared traces, found {}",
        v.len()
    );
    v
}

/// A `chc-dataplane run --backend dpdk` replaying `input` into `out`, its events into `ev`,
/// with `args` besides; returns its summary.
fn dpdk_run(
    (input, out, ev): (&Path, &Path, &Path),
    args: &[&str],
    chain: Option<&Path>,
    dir: &Path,
    name: &str,
) -> serde_json::Value {
    let summary = dir.join(format!("{name}.summary.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chc-dataplane"));
    cmd.args(["run", "--backend", "dpdk", "--summary-json"])
        .arg(&summary)
        .arg("--pcap-in")
        .arg(input)
        .arg("--pcap-out")
        .arg(out)
        .arg("--events")
        .arg(ev)
        .args(args);
    if let Some(c) = chain {
        cmd.arg("--chain").arg(c);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{name}: chc-dataplane --backend dpdk failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap()
}

/// The DPDK run's output packets and events are the embedded run's, as multisets.
fn same_as_embedded(eo: &Path, ee: &Path, dout: &Path, dev: &Path, name: &str) {
    assert!(
        sorted_records(eo) == sorted_records(dout),
        "{name}: output differs"
    );
    assert_eq!(
        sorted_lines(&[ee]),
        sorted_lines(&[dev]),
        "{name}: events differ"
    );
}

fn embedded(chain: Chain, input: &Path, out: &Path, ev: &Path) {
    run(&RunOptions {
        events: Some(ev.to_path_buf()),
        ..RunOptions::new(chain, input, out)
    })
    .unwrap_or_else(|e| panic!("{}: embedded run: {e}", input.display()));
}

#[test]
fn every_trace_gives_the_embedded_output_and_events() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for t in traces() {
        let name = t.file_stem().unwrap().to_string_lossy().to_string();
        let (eo, ee) = (
            dir.path().join(format!("{name}.emb.pcap")),
            dir.path().join(format!("{name}.emb.jsonl")),
        );
        let (dout, dev) = (
            dir.path().join(format!("{name}.dpdk.pcap")),
            dir.path().join(format!("{name}.dpdk.jsonl")),
        );
        embedded(Chain::paper(), &t, &eo, &ee);
        let s = dpdk_run((&t, &dout, &dev), &[], None, dir.path(), &name);
        let (a, b) = (sorted_records(&eo), sorted_records(&dout));
        assert_eq!(a.len(), b.len(), "{name}: output packet count");
        assert!(
            a == b,
            "{name}: output packets differ from the embedded path"
        );
        if s["non_ip_passed"].as_u64() == Some(0) {
            // Non-IP frames bypass the chain, so they may leave earlier or later; without
            // them the order is the chain's, the same on both paths.
            assert!(
                std::fs::read(&eo).unwrap() == std::fs::read(&dout).unwrap(),
                "{name}: with one instance per vertex the file is byte-identical"
            );
        }
        assert_eq!(
            sorted_lines(&[&ee]),
            sorted_lines(&[&dev]),
            "{name}: events differ"
        );
        assert_eq!(
            s["packets_written"].as_u64(),
            Some(b.len() as u64),
            "{name}"
        );
        let input = pcapio::read_all(&t).unwrap().len() as u64;
        assert_eq!(
            s["packets_read"].as_u64(),
            Some(input),
            "{name}: packets read"
        );
        let port = &s["figures"]["ports"][0];
        assert_eq!(port["rx_packets"].as_u64(), Some(input), "{name}: {port}");
        assert_eq!(port["tx_packets"].as_u64(), Some(b.len() as u64), "{name}");
        assert!(s["figures"]["lcores"][0]["packets"].as_u64() >= Some(input));
    }
}

/// NAT -> portscan detector (`portscan` instances), the Trojan detector on a tap of the NAT.
/// Deterministic whatever the interleaving: the NAT alone allocates ports, each portscan
/// instance keeps its own hosts' state (no load balancer, whose least-loaded choice depends
/// on the order in which instances' outputs meet). Returns the chain and its file in `dir`.
fn nat_portscan_trojan(dir: &Path, portscan: u16) -> (Chain, PathBuf) {
    let text = format!(
        r#"
[[vertex]]
name = "nat"
nf = "nat"
[[vertex]]
name = "portscan"
nf = "portscan"
parallelism = {portscan}
[[vertex]]
name = "trojan"
nf = "trojan"
[[edge]]
from = "nat"
to = "portscan"
[[tap]]
from = "nat"
to = "trojan"
"#
    );
    let chain = Chain::parse(&text, "chain.toml").unwrap();
    assert_eq!(chain.vertex("portscan").unwrap().parallelism, portscan);
    let file = dir.join("chain.toml");
    std::fs::write(&file, &text).unwrap();
    (chain, file)
}

/// Several instances per vertex on three lcores: rings between lcores, splitters choosing
/// instances; the outcome is the same multiset of packets and events.
#[test]
fn three_lcores_and_parallel_instances_give_the_same_result() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (chain, chain_file) = nat_portscan_trojan(dir.path(), 3);
    for t in ["ftp-ipv4.pcap", "scan-nmap-vsn.pcap", "mixed.pcap"] {
        let t = traces().into_iter().find(|p| p.ends_with(t)).unwrap();
        let name = t.file_stem().unwrap().to_string_lossy().to_string();
        let (eo, ee) = (dir.path().join("e.pcap"), dir.path().join("e.jsonl"));
        let (dout, dev) = (dir.path().join("d.pcap"), dir.path().join("d.jsonl"));
        embedded(chain.clone(), &t, &eo, &ee);
        let s = dpdk_run(
            (&t, &dout, &dev),
            &["--eal", "--lcores=0@0,1@1,2@1"],
            Some(&chain_file),
            dir.path(),
            &name,
        );
        assert_eq!(
            s["figures"]["lcores"].as_array().unwrap().len(),
            2,
            "two worker lcores run the chain"
        );
        assert!(
            s["figures"]["lcores"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["packets"].as_u64().unwrap() > 0),
            "{name}: both lcores worked: {}",
            s["figures"]["lcores"]
        );
        same_as_embedded(&eo, &ee, &dout, &dev, &name);
    }
}

/// Scale-out and scale-in on the DPDK path: the portscan detector goes from two instances to
/// three, then back to two and to one, at a quarter, half and three quarters of each trace,
/// its flows' state handed over at each move. The output packets and events, alerts
/// included, are those of the embedded path without any scaling: a detector instance that
/// lost a host's state on a move would miss (or invent) an alert. Every other trace runs on
/// two worker lcores, the detector's instances spread over both (moves then wait until no
/// packet is in a ring between them).
#[test]
fn scaling_out_and_in_keeps_the_output_and_alerts() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (chain, chain_file) = nat_portscan_trojan(dir.path(), 2);
    let (mut alerts, mut moved_and_alerted) = (0, 0);
    for (k, t) in traces().into_iter().enumerate() {
        let name = t.file_stem().unwrap().to_string_lossy().to_string();
        let spread = k % 2 == 1;
        let n = pcapio::read_all(&t).unwrap().len();
        let (eo, ee) = (dir.path().join("e.pcap"), dir.path().join("e.jsonl"));
        let (dout, dev) = (dir.path().join("d.pcap"), dir.path().join("d.jsonl"));
        embedded(chain.clone(), &t, &eo, &ee);
        let steps = [
            format!("portscan:out@{}", n / 4),
            format!("portscan:in@{}", n / 2),
            format!("portscan:in@{}", 3 * n / 4),
        ];
        let mut args = Vec::new();
        for st in &steps {
            args.extend(["--scale", st.as_str()]);
        }
        if spread {
            args.push("--eal=--lcores=0@0,1@1,2@1");
        }
        let s = dpdk_run(
            (&t, &dout, &dev),
            &args,
            Some(&chain_file),
            dir.path(),
            &name,
        );
        let lcores = s["figures"]["lcores"].as_array().unwrap().len();
        assert_eq!(lcores, if spread { 2 } else { 1 }, "{name}");
        let portscan = s["vertices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "portscan")
            .unwrap();
        let busy = portscan["per_instance_in"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n.as_u64() > Some(0))
            .count();
        let alerted = std::fs::read_to_string(&dev).unwrap().contains("\"alert\"");
        if busy > 1 && alerted {
            // A host's flows went through two instances and its alert still came.
            moved_and_alerted += 1;
        }
        let moves = s["moves"].as_array().unwrap();
        assert!(
            moves.len() >= 3,
            "{name}: out to 3 instances, in to 2, in to 1: {moves:?}"
        );
        assert!(
            sorted_records(&eo) == sorted_records(&dout),
            "{name}: output differs from the embedded path"
        );
        // Which portscan instance raised an event depends on where its host was then.
        let events = without_instance(&ee, "portscan");
        assert_eq!(
            events,
            without_instance(&dev, "portscan"),
            "{name}: events differ"
        );
        alerts += events.iter().filter(|l| l.contains("\"alert\"")).count();
    }
    assert!(
        alerts > 0,
        "some trace raises an alert, so the state moves are tested"
    );
    assert!(
        moved_and_alerted > 0,
        "on some trace an alert comes after the detector's traffic moved between instances"
    );
}

/// The events of a file, sorted, with the instance left out of those of `vertex`.
fn without_instance(p: &Path, vertex: &str) -> Vec<String> {
    let mut v: Vec<String> = sorted_lines(&[p])
        .into_iter()
        .map(|l| {
            let mut e: serde_json::Value = serde_json::from_str(&l).unwrap();
            if e["vertex"] == vertex {
                e.as_object_mut().unwrap().remove("instance");
            }
            e.to_string()
        })
        .collect();
    v.sort();
    v
}

/// What the DPDK path cannot scale is refused with the reason.
#[test]
fn scaling_the_dpdk_path_refuses_what_it_cannot_do() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let bin = env!("CARGO_BIN_EXE_chc-dataplane");
    let t = traces()
        .into_iter()
        .find(|p| p.ends_with("mixed.pcap"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.pcap");
    for (scale, extra, why) in [
        (
            "nat:clone=3@100",
            None,
            "a clone must be the only step, of a live instance",
        ),
        (
            "nat:clone=0@100",
            Some("--scale=nat:out@200"),
            "a clone must be the only step",
        ),
    ] {
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--backend", "dpdk", "--pcap-in"])
            .arg(&t)
            .arg("--pcap-out")
            .arg(&out)
            .args(["--scale", scale]);
        if let Some(e) = extra {
            cmd.arg(e);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{scale} ran");
        assert!(err.contains(why), "{scale}: {err}");
    }
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let bin = env!("CARGO_BIN_EXE_chc-dataplane");
    let out = Command::new(bin)
        .args(["run", "--backend", "dpdk", "--pcap-in", "x.pcap"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pcap-out go together"));
    let out = Command::new(bin)
        .args(["run", "--backend", "dpdk"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[[port]]") || err.contains("DPDK backend is off"),
        "{err}"
    );
    let out = Command::new(bin)
        .args(["run", "--backend", "nic"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("the backends are pcap and dpdk"));
}

/// `--rate` paces the DPDK root: a trace cannot go through faster than the rate allows (in
/// bursts of at most one poll), and `--delay` slows an instance; the output is still the
/// embedded path's.
#[test]
fn the_dpdk_root_admits_at_the_given_rate_and_delays_slow_an_instance() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let t = traces()
        .into_iter()
        .find(|p| p.ends_with("mixed.pcap"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (eo, ee) = (dir.path().join("e.pcap"), dir.path().join("e.jsonl"));
    let (dout, dev) = (dir.path().join("d.pcap"), dir.path().join("d.jsonl"));
    let chain = Chain::parse(chc_dataplane::config::PAPER_CHAIN, "paper").unwrap();
    embedded(chain, &t, &eo, &ee);
    // A run with `extra` arguments; returns (elapsed s, packets read, NAT packets in),
    // having checked its output and events against the embedded path's.
    let replay = |extra: &[&str], name: &str| {
        let s = dpdk_run((&t, &dout, &dev), extra, None, dir.path(), name);
        same_as_embedded(&eo, &ee, &dout, &dev, name);
        (
            s["elapsed_s"].as_f64().unwrap(),
            s["packets_read"].as_u64().unwrap(),
            s["vertices"][0]["packets_in"].as_u64().unwrap(),
        )
    };
    let rate = 2000u64;
    let (took, n, _) = replay(&["--rate", &rate.to_string()], "paced");
    // The first burst goes at once; every other packet waits for its turn.
    let least = n.saturating_sub(32) as f64 / rate as f64;
    assert!(
        took >= least,
        "{n} packets at {rate}/s took {took:.3} s (at least {least:.3} s)"
    );
    // A slowed instance holds its lcore: the NAT, which sees every packet, spinning 400 µs
    // before each makes the run last at least that long per packet.
    let (took, _, nat) = replay(&["--delay", "nat=400-400"], "slowed");
    let least = nat as f64 * 400e-6;
    assert!(
        took >= least,
        "the slowed NAT took {took:.3} s for what takes at least {least:.3} s"
    );
}
