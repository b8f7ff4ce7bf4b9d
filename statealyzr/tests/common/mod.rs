//! Helpers shared by the end-to-end tests: analyse C sources the way the binary does.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use statealyzr::frontend::Inputs;
use statealyzr::{Analysis, Config, Diags, Program};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub struct Run {
    pub program: Program,
    pub analysis: Analysis,
    pub diags: Diags,
}

/// Compiles and analyses `files` (C, .bc/.ll or a compile_commands.json).
pub fn analyse(files: &[PathBuf], cflags: &[&str], cfg: &Config) -> Result<Run, statealyzr::Error> {
    let flags: Vec<String> = cflags.iter().map(|s| s.to_string()).collect();
    let inputs = Inputs::classify(files, &flags)?;
    let work = tempfile::tempdir().expect("temp dir");
    let mut diags = Diags::default();
    let program = statealyzr::load(&inputs, work.path(), 2, &mut diags)?;
    let analysis = statealyzr::analyse(&program, cfg, &mut diags)?;
    Ok(Run {
        program,
        analysis,
        diags,
    })
}

/// The key a variable has in truth files: `name`, or `function:name` for function-scoped ones.
pub fn key(v: &statealyzr::analysis::Var) -> String {
    match &v.function {
        Some(f) => format!("{f}:{}", v.name),
        None => v.name.clone(),
    }
}
