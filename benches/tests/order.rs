//! Chain-wide ordering (R4): with upstream instances slowed, the Trojan detector finds every
//! planted signature by logical clock, and misses some when it orders by arrival.

use chc_bench::order::{trace, workload, Bed};
use chc_dataplane::Delay;
use std::path::PathBuf;

#[test]
fn clocks_find_every_planted_signature_and_arrival_order_misses_some() {
    check(None);
}

/// The same on the DPDK path: the load balancer's instances on two worker lcores (their
/// outputs reach the detector through a ring or directly), a slowed instance's lcore
/// spinning before each packet.
#[test]
fn on_the_dpdk_path_clocks_find_every_planted_signature_and_arrival_order_misses_some() {
    use chc_dataplane::dpdk::chc_dpdk;
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    check(Some((
        chc_dataplane::cluster::manager::default_bin_dir().join("chc-dataplane"),
        chc_bench::coe::TWO_LCORES.to_string(),
    )));
}

/// On an 8 000-packet background with 11 planted hosts, run in this process or (`dpdk`) by
/// that binary with those EAL arguments: W1 and W3 by clock find every signature and alert
/// on nothing else; W2 by arrival misses some.
fn check(dpdk: Option<(PathBuf, String)>) {
    let d = tempfile::tempdir().unwrap();
    let hosts = 11;
    // One background packet between a host's packets: the delays alone reorder them (with
    // wider spacing only queueing could, and on a fast machine the arrival order then
    // missed nothing in about one run of five).
    let t = trace(d.path(), 8_000, hosts, 1).unwrap();
    let bed = Bed {
        trace: &t,
        dir: d.path(),
        hosts,
        rate: 20_000,
        dpdk,
    };
    let slow = Delay {
        min_us: 50,
        max_us: 100,
    };
    for w in [1, 3] {
        let c = bed.run("clock", false, workload(w, slow), 5).unwrap();
        assert_eq!(c.planted, hosts, "W{w}: every signature is found by clock");
        assert_eq!(c.others, 0, "W{w}: no alert on a host without a signature");
    }
    let a = bed.run("arrival", true, workload(2, slow), 5).unwrap();
    assert!(
        a.planted < hosts,
        "ordering by arrival behind a slowed instance found all {hosts} signatures"
    );
    assert_eq!(a.others, 0);
}
