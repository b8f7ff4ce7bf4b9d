//! `statealyzr instrument` end to end: the instrumented middlebox, run on a trace, reports
//! for every packet exactly the counters whose value that packet changed (each update here
//! changes its variable, so the report must neither miss one nor add one), and a variable
//! assigned a value equal to the old one may be reported but is never missing. The patch
//! form applies to the sources and gives the same program.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn counter_c() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/instrument/counter.c")
}

/// One Ethernet/IPv4 frame: protocol, source address, total frame length.
fn frame(proto: u8, src: [u8; 4], len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len.max(54)];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&[10, 0, 0, 1]);
    f
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).expect("write pcap");
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run command");
    assert!(
        o.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn build_and_run(srcs: &[PathBuf], dir: &Path, pcap: &Path) -> String {
    let exe = dir.join("counter");
    run(Command::new("clang-14")
        .args(["-O0", "-w", "-o"])
        .arg(&exe)
        .args(srcs)
        .arg("-lpcap"));
    run(Command::new(&exe).arg(pcap))
}

/// The state line of one packet (name, value) and the variables reported updated.
type Packet = (Vec<(String, String)>, BTreeSet<String>);

fn parse(out: &str) -> Vec<Packet> {
    let mut v = Vec::new();
    let mut state = None;
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("state ") {
            state = Some(
                s.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            );
        } else if let Some(u) = line.strip_prefix("updated:") {
            let reported = u.split_whitespace().map(str::to_string).collect();
            v.push((state.take().expect("state line before report"), reported));
        }
    }
    v
}

#[test]
fn instrumented_counter_reports_what_each_packet_changed() {
    let dir = tempfile::tempdir().unwrap();
    let src_dir = dir.path().join("src");
    std::fs::create_dir(&src_dir).unwrap();
    let src = src_dir.join("counter.c");
    std::fs::copy(counter_c(), &src).unwrap();
    let frames = vec![
        frame(6, [192, 168, 0, 1], 60),
        frame(17, [192, 168, 0, 1], 1200),
        frame(6, [192, 168, 0, 2], 1500),
        frame(17, [192, 168, 0, 3], 61),
        frame(6, [192, 168, 0, 2], 60),
        frame(1, [192, 168, 0, 1], 77),
    ];
    let pcap = dir.path().join("in.pcap");
    write_pcap(&pcap, &frames);

    let out_dir = dir.path().join("inst");
    let bin = env!("CARGO_BIN_EXE_statealyzr");
    let o = Command::new(bin)
        .args(["instrument", "-o"])
        .arg(&out_dir)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inst_c = out_dir.join("counter.c");
    let support = out_dir.join("statealyzr_updates.c");
    let text = std::fs::read_to_string(&inst_c).unwrap();
    // The doubled increment of big_pkts is marked once (Fig 4.12's pruning).
    let big_marks = text
        .lines()
        .filter(|l| l.contains("big_pkts++") && l.contains("__statealyzr_updated"))
        .count();
    assert_eq!(big_marks, 1, "second big_pkts++ should be pruned:\n{text}");

    let stdout = build_and_run(&[inst_c.clone(), support.clone()], dir.path(), &pcap);
    let per_packet = parse(&stdout);
    assert_eq!(per_packet.len(), frames.len(), "{stdout}");
    // Every variable starts at zero (the digests of empty structures are zero too).
    let mut prev: Vec<(String, String)> = per_packet[0]
        .0
        .iter()
        .map(|(k, _)| (k.clone(), "0".to_string()))
        .collect();
    for (i, (state, reported)) in per_packet.iter().enumerate() {
        let changed: BTreeSet<String> = state
            .iter()
            .zip(&prev)
            .filter(|((_, v), (_, old))| v != old)
            .map(|((name, _), _)| name.clone())
            .collect();
        // Soundness: nothing that changed is missing.
        assert!(
            changed.is_subset(reported),
            "packet {i}: changed {changed:?} but reported {reported:?}\n{stdout}"
        );
        // Precision: only last_len may be reported without changing (it is assigned the
        // packet length, which can repeat).
        let extra: BTreeSet<&String> = reported.difference(&changed).collect();
        assert!(
            extra.iter().all(|v| v.as_str() == "last_len"),
            "packet {i}: reported {extra:?} without a change\n{stdout}"
        );
        prev = state.clone();
    }

    // The same program from the patch form.
    let patch = Command::new(bin)
        .args(["instrument", "--diff"])
        .arg(&src)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(patch.status.success());
    let patch_file = dir.path().join("inst.patch");
    std::fs::write(&patch_file, &patch.stdout).unwrap();
    run(Command::new("git")
        .args(["apply", "--unsafe-paths", "-p1"])
        .arg(&patch_file)
        .current_dir(dir.path()));
    assert_eq!(
        std::fs::read_to_string(&src).unwrap(),
        text,
        "patched source = -o output"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("statealyzr_updates.c")).unwrap(),
        std::fs::read_to_string(&support).unwrap()
    );
}
