//! The three output formats: JSON (the stable interface documented in README.md), SARIF 2.1.0
//! for editors and code-scanning UIs, and text for a person, grouped by what the developer has
//! to do with each variable.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;

use crate::analysis::{Analysis, Counts, Storage, Var};
use crate::diag::{Diags, Level};
use crate::ir::Program;

#[derive(Serialize)]
struct JsonVar<'a> {
    name: &'a str,
    function: Option<&'a str>,
    file: Option<String>,
    line: u32,
    storage: Storage,
    persistent: bool,
    top_level: bool,
    updateable: bool,
    flowspace: Vec<&'a str>,
    pkt_output: bool,
    log_output: bool,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    counts: &'a Counts,
    packet_procedures: Vec<&'a str>,
    variables: Vec<JsonVar<'a>>,
}

/// Paths are shown relative to the working directory when they lie under it.
pub fn display_path(p: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = p.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    p.display().to_string()
}

fn proc_names<'a>(p: &'a Program, a: &Analysis) -> Vec<&'a str> {
    let mut v: Vec<&str> = a
        .packet_procs
        .iter()
        .map(|&f| p.funcs[f as usize].name.as_str())
        .collect();
    v.sort_unstable();
    v
}

pub fn json(p: &Program, a: &Analysis) -> String {
    let r = JsonReport {
        counts: &a.counts,
        packet_procedures: proc_names(p, a),
        variables: a
            .vars
            .iter()
            .map(|v| JsonVar {
                name: &v.name,
                function: v.function.as_deref(),
                file: v.file.as_deref().map(display_path),
                line: v.line,
                storage: v.storage,
                persistent: true,
                top_level: v.top_level,
                updateable: v.updateable,
                flowspace: v.flowspace.iter().map(String::as_str).collect(),
                pkt_output: v.pkt_output,
                log_output: v.log_output,
            })
            .collect(),
    };
    let mut s =
        serde_json::to_string_pretty(&r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

fn storage_word(s: Storage) -> &'static str {
    match s {
        Storage::Global => "global",
        Storage::Static => "static",
        Storage::LoopLocal => "loop-procedure local",
        Storage::LoopParam => "loop-procedure parameter",
    }
}

fn describe(v: &Var) -> String {
    let mut s = String::new();
    let place = v
        .file
        .as_deref()
        .map(|f| format!("{}:{}", display_path(f), v.line))
        .unwrap_or_else(|| "?".into());
    let _ = write!(s, "{place:<28} {}", v.name);
    if let Some(f) = &v.function {
        let _ = write!(s, " (in {f})");
    }
    let _ = write!(s, " [{}]", storage_word(v.storage));
    if !v.flowspace.is_empty() {
        let _ = write!(
            s,
            " keyed by {}",
            v.flowspace.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let mut outs = Vec::new();
    if v.pkt_output {
        outs.push("packet output");
    }
    if v.log_output {
        outs.push("log output");
    }
    if !outs.is_empty() {
        let _ = write!(s, "; affects {}", outs.join(" and "));
    }
    s
}

pub fn text(p: &Program, a: &Analysis, diags: &Diags) -> String {
    let mut s = String::new();
    let c = &a.counts;
    for l in &a.loop_procs {
        let f = &p.funcs[l.func as usize];
        let at = f
            .loc
            .map(|loc| format!(" ({}:{})", display_path(p.file(&loc)), loc.line))
            .unwrap_or_default();
        let _ = writeln!(s, "packet loop in {}{at}", f.name);
    }
    let _ = writeln!(
        s,
        "packet-processing procedures: {}",
        proc_names(p, a).join(", ")
    );
    let _ = writeln!(
        s,
        "variables: {} in all, {} persistent, {} top-level, {} updateable, {} affect packet output, {} affect log output",
        c.all, c.persistent, c.top_level, c.updateable, c.pkt_output, c.log_output
    );
    type Pred<'a> = &'a dyn Fn(&Var) -> bool;
    let groups: [(&str, Pred); 3] = [
        (
            "Serialise and migrate: per-/cross-flow state updated while packets are processed",
            &|v: &Var| v.top_level && v.updateable,
        ),
        (
            "Clone once: used by packet processing but never updated by it",
            &|v: &Var| v.top_level && !v.updateable,
        ),
        (
            "Ignore: persistent but not used by packet processing",
            &|v: &Var| !v.top_level,
        ),
    ];
    for (title, pred) in groups {
        let vs: Vec<&Var> = a.vars.iter().filter(|v| pred(v)).collect();
        let _ = writeln!(s, "\n{title} ({}):", vs.len());
        if vs.is_empty() {
            let _ = writeln!(s, "  (none)");
        }
        for v in vs {
            let _ = writeln!(s, "  {}", describe(v));
        }
    }
    let warnings: Vec<String> = diags
        .list
        .iter()
        .map(|d| Diags::render(d, &p.files))
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(s, "\nDiagnostics ({}):", warnings.len());
        for w in warnings {
            let _ = writeln!(s, "  {w}");
        }
    }
    s
}

fn uri(path: &Path) -> String {
    let shown = display_path(path);
    let enc = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                ' ' => "%20".to_string(),
                '#' => "%23".to_string(),
                '%' => "%25".to_string(),
                '?' => "%3F".to_string(),
                c => c.to_string(),
            })
            .collect()
    };
    if PathBuf::from(&shown).is_absolute() {
        format!("file://{}", enc(&shown))
    } else {
        enc(&shown)
    }
}

const RULES: [(&str, &str, &str, &str); 3] = [
    (
        "SA001",
        "UpdateableFlowState",
        "Per-/cross-flow state updated during packet processing",
        "Serialise this variable's value and move or clone it with the flows it belongs to.",
    ),
    (
        "SA002",
        "ReadOnlyFlowState",
        "State read but never updated during packet processing",
        "Copy this variable once when an instance starts; it needs no per-flow handling.",
    ),
    (
        "SA003",
        "UnusedPersistentState",
        "Persistent variable not used by packet processing",
        "Nothing to do for state redistribution.",
    ),
];

pub fn sarif(p: &Program, a: &Analysis, diags: &Diags) -> String {
    let rules: Vec<serde_json::Value> = RULES
        .iter()
        .map(|(id, name, short, help)| {
            json!({
                "id": id,
                "name": name,
                "shortDescription": {"text": short},
                "help": {"text": help},
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = a
        .vars
        .iter()
        .map(|v| {
            let (idx, level) = if v.top_level && v.updateable {
                (0, "warning")
            } else if v.top_level {
                (1, "note")
            } else {
                (2, "none")
            };
            let mut msg = format!("`{}`", v.name);
            if let Some(f) = &v.function {
                let _ = write!(msg, " in {f}");
            }
            let _ = write!(msg, ": {}", RULES[idx].2.to_lowercase());
            if !v.flowspace.is_empty() {
                let _ = write!(
                    msg,
                    "; keyed by {}",
                    v.flowspace.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
            if v.pkt_output {
                msg.push_str("; affects packet output");
            }
            if v.log_output {
                msg.push_str("; affects log output");
            }
            let mut loc = json!({
                "logicalLocations": [{
                    "name": v.name,
                    "fullyQualifiedName": match &v.function { Some(f) => format!("{f}::{}", v.name), None => v.name.clone() },
                    "kind": "variable",
                }]
            });
            if let Some(f) = &v.file {
                loc["physicalLocation"] = json!({
                    "artifactLocation": {"uri": uri(f)},
                    "region": {"startLine": v.line.max(1)},
                });
            }
            json!({
                "ruleId": RULES[idx].0,
                "ruleIndex": idx,
                "level": level,
                "message": {"text": msg},
                "locations": [loc],
                "properties": {
                    "storage": v.storage,
                    "function": v.function,
                    "topLevel": v.top_level,
                    "updateable": v.updateable,
                    "flowspace": v.flowspace,
                    "pktOutput": v.pkt_output,
                    "logOutput": v.log_output,
                }
            })
        })
        .collect();
    let notes: Vec<serde_json::Value> = diags
        .list
        .iter()
        .map(|d| {
            let mut n = json!({
                "level": if d.level == Level::Warning { "warning" } else { "note" },
                "message": {"text": d.msg},
            });
            if let Some((f, l)) = d.loc {
                if let Some(path) = p.files.get(f as usize) {
                    n["locations"] = json!([{
                        "physicalLocation": {
                            "artifactLocation": {"uri": uri(path)},
                            "region": {"startLine": l.max(1)},
                        }
                    }]);
                }
            }
            n
        })
        .collect();
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "statealyzr",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": true,
                "toolExecutionNotifications": notes,
            }],
            "results": results,
            "properties": {
                "counts": a.counts,
                "packetProcedures": proc_names(p, a),
            }
        }]
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}
