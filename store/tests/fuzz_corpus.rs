//! Runs every file of the fuzz regression corpus (`store/fuzz/corpus/<target>/`) through the
//! same entry points the cargo-fuzz targets use, so CI catches a regression on any input the
//! fuzzers ever found interesting without needing a fuzzer or a nightly toolchain.

use std::path::Path;

fn run_corpus(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| f(&data));
        assert!(r.is_ok(), "{} fails on {}", target, path.display());
        n += 1;
    }
    assert!(n > 0, "{}: empty corpus", dir.display());
}

#[test]
fn native_frames_corpus() {
    run_corpus("native_frames", chc_store::server::fuzz::native_frames);
}

#[test]
fn resp_requests_corpus() {
    run_corpus("resp_requests", chc_store::server::fuzz::resp_requests);
}
