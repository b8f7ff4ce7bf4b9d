//! A generated middlebox (modules behind a const ops table, tables keyed by chosen fields,
//! lists, counter arrays, signature tables, rate limiters) analysed end to end: every planted
//! variable gets the classification the generator knows it must have, and its flowspace
//! contains every field that keys it.

mod common;

use statealyzr::Config;

#[test]
fn generated_middlebox_state_is_found_and_classified() {
    let s = statealyzr::synth::generate(10, 1, 7);
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, text) in &s.files {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        if name.ends_with(".c") {
            files.push(p);
        }
    }
    let run = common::analyse(&files, &[], &Config::default()).expect("analysis");
    let mut problems = Vec::new();
    for want in &s.planted {
        let Some(v) = run.analysis.vars.iter().find(|v| v.name == want.name) else {
            problems.push(format!("{}: not reported", want.name));
            continue;
        };
        let fs: Vec<&str> = v.flowspace.iter().map(String::as_str).collect();
        // Every field that keys the state is found. Extra fields can come in through the
        // shared hash helper, which reads every module's key through one pointer parameter
        // (memory is context-insensitive); README "Limits" says so.
        let missing = want.flowspace.iter().any(|f| !fs.contains(f));
        if v.top_level != want.top_level || v.updateable != want.updateable || missing {
            problems.push(format!(
                "{}: top_level {} updateable {} flowspace {:?}, want {} {} {:?}",
                want.name,
                v.top_level,
                v.updateable,
                fs,
                want.top_level,
                want.updateable,
                want.flowspace
            ));
        }
    }
    // Start-up code is not packet processing: the ops table is constant, so the packet loop
    // calls only the modules' process/report/reload functions.
    let procs: Vec<&str> = run
        .analysis
        .packet_procs
        .iter()
        .map(|&f| run.program.funcs[f as usize].name.as_str())
        .collect();
    for p in &procs {
        if p.ends_with("_init") || p.contains("_check_") || p.starts_with("cfg_") {
            problems.push(format!(
                "{p} is start-up code but reported as packet processing"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
