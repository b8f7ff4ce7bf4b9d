//! With the `bpf` feature, compiles bpf/softirq.bpf.c with clang into the object the eBPF
//! meter loads (include_bytes! from OUT_DIR). Without it, does nothing.

fn main() {
    println!("cargo:rerun-if-changed=bpf/softirq.bpf.c");
    println!("cargo:rerun-if-env-changed=IRON_BPF_CLANG");
    if std::env::var_os("CARGO_FEATURE_BPF").is_none() {
        return;
    }
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("softirq.bpf.o");
    let clang = std::env::var("IRON_BPF_CLANG").unwrap_or_else(|_| {
        ["clang", "clang-14", "clang-16", "clang-19"]
            .into_iter()
            .find(|c| {
                std::process::Command::new(c)
                    .arg("--version")
                    .output()
                    .is_ok()
            })
            .unwrap_or("clang")
            .to_string()
    });
    let status = std::process::Command::new(&clang)
        .args([
            "-target",
            "bpf",
            "-O2",
            "-g",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
            "bpf/softirq.bpf.c",
            "-o",
        ])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("running {clang} (set IRON_BPF_CLANG; apt-get install clang libbpf-dev): {e}")
        });
    assert!(
        status.success(),
        "{clang} failed to compile bpf/softirq.bpf.c"
    );
}
