//! Helpers shared by the dataplane's end-to-end tests (each test file uses some of them).
#![allow(dead_code)]

use chc_dataplane::pcapio;
use std::path::{Path, PathBuf};

/// The lines of the files, together and sorted (events logs compared as multisets).
pub fn sorted_lines(paths: &[&Path]) -> Vec<String> {
    let mut v: Vec<String> = paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    v.sort();
    v
}

/// A pcap file's records (capture time, wire length, bytes), sorted.
pub fn sorted_records(p: &Path) -> Vec<(u64, u32, Vec<u8>)> {
    let mut v: Vec<_> = pcapio::read_all(p)
        .unwrap()
        .into_iter()
        .map(|r| (r.ts_ns, r.wire_len, r.data))
        .collect();
    v.sort();
    v
}

/// The `chc-store` binary built beside `chc-dataplane`.
pub fn chc_store_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_chc-dataplane")).with_file_name("chc-store");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build --release --workspace)",
        bin.display()
    );
    bin
}
