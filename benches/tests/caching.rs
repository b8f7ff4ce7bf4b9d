//! `chc-bench caching` (Fig 3.14): a portscan detector's cross-flow state is cached while
//! one instance has the hosts to itself, read and updated in the store while a second
//! instance shares them, and cached again when it is alone again; its decisions never
//! change.

use chc_bench::caching::{run_caching, CachingArgs};

#[test]
fn sharing_goes_to_the_store_and_caching_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("caching.json");
    // Fails if the events of the three phases differ from one instance alone.
    let v = run_caching(&CachingArgs {
        trace: None,
        reps: 1,
        quick: true,
        json: Some(json.clone()),
    })
    .unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written["experiment"], "caching");
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    let calls: Vec<f64> = v["phases"]["store_round_trips_per_packet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    // Counted, not timed: while the hosts are shared, their objects are read in the store;
    // alone again, the instance serves them from its cache.
    assert!(
        calls[1] > 2.0 * calls[0] && calls[1] > 2.0 * calls[2] && calls[1] >= 0.5,
        "store round trips per packet (alone / sharing / alone again): {calls:?}"
    );
    let packets = v["phases"]["packets"].as_array().unwrap();
    assert!(
        packets.iter().all(|p| p.as_u64().unwrap() > 1000),
        "{packets:?}"
    );
}
