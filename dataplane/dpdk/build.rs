//! Carries chc-dpdk-sys's decision (DPDK found or not) over as the `chc_dpdk` cfg, so this
//! crate compiles either the real wrapper or the stubs.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(chc_dpdk)");
    println!("cargo::rerun-if-env-changed=DEP_DPDK_ENABLED");
    if std::env::var("DEP_DPDK_ENABLED").as_deref() == Ok("1") {
        println!("cargo::rustc-cfg=chc_dpdk");
    }
}
