//! Analyses each fixture middlebox and checks every classification against the ground truth
//! written beside it (`tests/fixtures/NAME.truth.json`, format in the README there).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use statealyzr::analysis::Storage;
use statealyzr::Config;

fn storage_word(s: Storage) -> &'static str {
    match s {
        Storage::Global => "global",
        Storage::Static => "static",
        Storage::LoopLocal => "loop_local",
        Storage::LoopParam => "loop_param",
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn check(name: &str) {
    let truth: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture(&format!("{name}.truth.json")))
            .expect("truth file"),
    )
    .expect("truth file is JSON");
    let opts = truth.get("options");
    let cfg = Config {
        recv_fns: strings(opts.and_then(|o| o.get("recv_fn"))),
        pkt_out_fns: strings(opts.and_then(|o| o.get("pkt_out_fn"))),
        log_out_fns: strings(opts.and_then(|o| o.get("log_out_fn"))),
        pure_fns: strings(opts.and_then(|o| o.get("pure_fn"))),
    };
    let run = common::analyse(&[common::fixture(&format!("{name}.c"))], &[], &cfg)
        .unwrap_or_else(|e| panic!("{name}: analysis failed: {e}"));
    let mut problems = Vec::new();

    let procs: BTreeSet<String> = run
        .analysis
        .packet_procs
        .iter()
        .map(|&f| run.program.funcs[f as usize].name.clone())
        .collect();
    let want_procs: BTreeSet<String> = strings(truth.get("packet_procedures"))
        .into_iter()
        .collect();
    if procs != want_procs {
        problems.push(format!(
            "packet procedures: got {procs:?}, want {want_procs:?}"
        ));
    }

    let want: BTreeMap<String, Vec<String>> = truth["variables"]
        .as_object()
        .expect("variables object")
        .iter()
        .map(|(k, v)| (k.clone(), strings(Some(v))))
        .collect();
    let mut seen = BTreeSet::new();
    for v in &run.analysis.vars {
        let k = common::key(v);
        seen.insert(k.clone());
        let Some(flags) = want.get(&k) else {
            problems.push(format!(
                "{k}: reported as persistent but not in the truth file"
            ));
            continue;
        };
        let has = |f: &str| flags.iter().any(|x| x == f);
        let fs: BTreeSet<String> = flags
            .iter()
            .find_map(|x| x.strip_prefix("fs="))
            .map(|s| s.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        let mut check = |what: &str, got: String, want: String| {
            if got != want {
                problems.push(format!("{k}: {what} is {got}, want {want}"));
            }
        };
        let storage = flags.first().cloned().unwrap_or_default();
        check("storage", storage_word(v.storage).into(), storage);
        check("top_level", v.top_level.to_string(), has("top").to_string());
        check(
            "updateable",
            v.updateable.to_string(),
            has("upd").to_string(),
        );
        check(
            "pkt_output",
            v.pkt_output.to_string(),
            has("pkt").to_string(),
        );
        check(
            "log_output",
            v.log_output.to_string(),
            has("log").to_string(),
        );
        check("flowspace", format!("{:?}", v.flowspace), format!("{fs:?}"));
    }
    for k in want.keys() {
        if !seen.contains(k) {
            problems.push(format!(
                "{k}: in the truth file but not reported as persistent"
            ));
        }
    }
    // The counts in the report agree with the variables.
    let c = &run.analysis.counts;
    assert_eq!(c.persistent, run.analysis.vars.len());
    assert_eq!(
        c.top_level,
        run.analysis.vars.iter().filter(|v| v.top_level).count()
    );
    assert_eq!(
        c.updateable,
        run.analysis.vars.iter().filter(|v| v.updateable).count()
    );
    assert!(
        c.all >= c.persistent,
        "all variables include the persistent ones"
    );
    assert!(
        problems.is_empty(),
        "{name}: {} mismatch(es) against the ground truth:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[test]
fn event_queue_two_threads() {
    check("event_queue");
}

#[test]
fn pcap_loop_plugins_and_signal_handlers() {
    check("plugins");
}

#[test]
fn hash_tables_and_lists_keyed_by_different_fields() {
    check("tables");
}

#[test]
fn updates_through_aliases() {
    check("aliasing");
}

#[test]
fn per_packet_scratch_globals() {
    check("scratch");
}
