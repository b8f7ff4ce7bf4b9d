//! The DPDK dataplane replays every shared trace through a `net_pcap` vdev exactly like the
//! embedded path: the same output packets (bytes, capture time, wire length) and the same
//! events, line for line, as multisets (independent flows may interleave differently). With
//! one instance per vertex the output file is byte-identical. Also on several lcores, with
//! instances handing bursts to each other through rte_rings.
//!
//! Each DPDK run is its own `chc-dataplane` process (DPDK allows one EAL per process).

use chc_dataplane::{pcapio, run, Chain, RunOptions};
use std::path::{Path, PathBuf};
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

fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn sorted_records(p: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let mut v: Vec<_> = pcapio::read_all(p)
        .unwrap()
        .into_iter()
        .map(|r| (r.ts_ns, r.wire_len, r.data))
        .collect();
    v.sort();
    v
}

fn dpdk_run(args: &[&str], chain: Option<&Path>, dir: &Path, name: &str) -> serde_json::Value {
    let summary = dir.join(format!("{name}.summary.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chc-dataplane"));
    cmd.args(["run", "--backend", "dpdk", "--summary-json"])
        .arg(&summary)
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
        let s = dpdk_run(
            &[
                "--pcap-in",
                t.to_str().unwrap(),
                "--pcap-out",
                dout.to_str().unwrap(),
                "--events",
                dev.to_str().unwrap(),
            ],
            None,
            dir.path(),
            &name,
        );
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
            sorted_lines(&ee),
            sorted_lines(&dev),
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

/// Several instances per vertex on three lcores: rings between lcores, splitters choosing
/// instances; the outcome is the same multiset of packets and events.
#[test]
fn three_lcores_and_parallel_instances_give_the_same_result() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Deterministic whatever the interleaving: the NAT alone allocates ports, each
    // portscan instance keeps its own hosts' state (no load balancer, whose least-loaded
    // choice depends on the order in which instances' outputs meet).
    let text = r#"
[[vertex]]
name = "nat"
nf = "nat"
[[vertex]]
name = "portscan"
nf = "portscan"
parallelism = 3
[[vertex]]
name = "trojan"
nf = "trojan"
[[edge]]
from = "nat"
to = "portscan"
[[tap]]
from = "nat"
to = "trojan"
"#;
    let chain = Chain::parse(text, "parallel.toml").unwrap();
    assert_eq!(chain.vertex("portscan").unwrap().parallelism, 3);
    let chain_file = dir.path().join("parallel.toml");
    std::fs::write(&chain_file, text).unwrap();
    for t in ["ftp-ipv4.pcap", "scan-nmap-vsn.pcap", "mixed.pcap"] {
        let t = traces().into_iter().find(|p| p.ends_with(t)).unwrap();
        let name = t.file_stem().unwrap().to_string_lossy().to_string();
        let (eo, ee) = (dir.path().join("e.pcap"), dir.path().join("e.jsonl"));
        let (dout, dev) = (dir.path().join("d.pcap"), dir.path().join("d.jsonl"));
        embedded(chain.clone(), &t, &eo, &ee);
        let s = dpdk_run(
            &[
                "--eal",
                "--lcores=0@0,1@1,2@1",
                "--pcap-in",
                t.to_str().unwrap(),
                "--pcap-out",
                dout.to_str().unwrap(),
                "--events",
                dev.to_str().unwrap(),
            ],
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
        assert!(
            sorted_records(&eo) == sorted_records(&dout),
            "{name}: output differs"
        );
        assert_eq!(
            sorted_lines(&ee),
            sorted_lines(&dev),
            "{name}: events differ"
        );
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
