//! The paper's chain on every shared trace, on the embedded default.

use chc_dataplane::{pcapio, run, Chain, RunOptions};
use std::path::{Path, PathBuf};

fn traces_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces")
}

fn traces() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(traces_dir())
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

fn events(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every events line is JSON"))
        .collect()
}

#[test]
fn paper_chain_on_every_trace() {
    let dir = tempfile::tempdir().unwrap();
    for t in traces() {
        let name = t.file_stem().unwrap().to_string_lossy().to_string();
        let out = dir.path().join(format!("{name}.out.pcap"));
        let ev = dir.path().join(format!("{name}.jsonl"));
        let s = run(&RunOptions {
            events: Some(ev.clone()),
            ..RunOptions::new(Chain::paper(), t.clone(), out.clone())
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let input = pcapio::read_all(&t).unwrap();
        let output = pcapio::read_all(&out).unwrap();
        // Conservation: every packet read is written, dropped by an NF, or malformed.
        let nf_drops: u64 = s
            .vertices
            .iter()
            .filter(|v| v.name != "trojan")
            .map(|v| v.dropped)
            .sum();
        assert_eq!(s.packets_read, input.len() as u64, "{name}");
        assert_eq!(
            output.len() as u64 + nf_drops + s.malformed_dropped,
            input.len() as u64,
            "{name}: packets lost or duplicated"
        );
        assert_eq!(s.packets_written, output.len() as u64);
        assert_eq!(
            s.vertices.iter().map(|v| v.errors).sum::<u64>(),
            0,
            "{name}: NF errors"
        );
        // The Trojan detector sees a copy of everything the NAT emits.
        let nat = &s.vertices[0];
        let trojan = s.vertices.iter().find(|v| v.name == "trojan").unwrap();
        assert_eq!(trojan.packets_in, nat.packets_out, "{name}");
        let evs = events(&ev);
        for e in &evs {
            assert!(
                e["clock"].as_u64().unwrap() > 0
                    && e["vertex"].is_string()
                    && e["event"].is_string()
            );
        }
        let kinds: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
        match name.as_str() {
            "scan-nmap-vsn" => {
                assert!(
                    kinds.contains(&"block"),
                    "the nmap scan is detected: {kinds:?}"
                );
                assert!(
                    s.vertices[1].dropped > 0,
                    "the scanner's later packets are dropped"
                );
            }
            "bad-ipv4-fragmented" => {
                assert!(s.vertices.iter().map(|v| v.fragments).sum::<u64>() > 0);
            }
            "echo-connections" => {
                let created = kinds.iter().filter(|k| **k == "mapping_created").count();
                assert_eq!(created, 500, "one NAT mapping per connection");
            }
            _ => {}
        }
        for k in &kinds {
            assert!(
                *k != "alert" || name == "scan-nmap-vsn",
                "{name}: unexpected alert"
            );
        }
    }
}

#[test]
fn a_corrupt_pcap_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(traces_dir().join("irc-basic.pcap")).unwrap();
    let bad = dir.path().join("cut.pcap");
    std::fs::write(&bad, &src[..src.len() - 7]).unwrap();
    let err = run(&RunOptions::new(
        Chain::paper(),
        bad,
        dir.path().join("o.pcap"),
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("cut.pcap") && err.contains("byte"), "{err}");
}
