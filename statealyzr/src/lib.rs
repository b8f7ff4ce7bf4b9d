//! StateAlyzr: finds the per-flow and cross-flow state of an existing C middlebox.
//!
//! The C sources are compiled to LLVM IR with debug info (`frontend`), read into a compact
//! program representation (`ir`, `debuginfo`), and analysed in the stages of the
//! dissertation's chapter 4 (`analysis`): persistent variables, packet-processing procedures
//! by forward slicing over a system dependence graph (`sdg`), updateable variables with an
//! Andersen pointer analysis (`pointsto`), flowspaces by chops, and output-impacting variables
//! by backward slices. `instrument` emits the middlebox with run-time update tracking.
//!
//! The analysis is sound in the sense of the dissertation's Appendix A.1: every approximation
//! (unknown library functions, unresolved calls, unsupported IR) errs towards reporting more
//! state, and each one is reported as a warning naming its place.

pub mod analysis;
pub mod cfg;
pub mod debuginfo;
pub mod diag;
pub mod externs;
pub mod facts;
pub mod fields;
pub mod frontend;
pub mod instrument;
pub mod ir;
pub mod pointsto;
pub mod report;
pub mod sdg;
pub mod synth;

use std::path::{Path, PathBuf};

pub use analysis::{analyse, Analysis, Config};
pub use diag::Diags;
pub use ir::Program;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Toolchain(String),
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    #[error("{}: does not compile:\n{diagnostics}", file.display())]
    Compile { file: PathBuf, diagnostics: String },
    #[error("linking the program failed: {0}")]
    Link(String),
    #[error("cannot read the linked IR ({what}): {msg}")]
    Ir { what: String, msg: String },
    #[error(
        "no packet receive call found: the program calls none of pcap_next, pcap_next_ex, \
         pcap_loop, pcap_dispatch, recv, recvfrom, recvmsg or read on a socket; name the \
         function that receives packets with --recv-fn"
    )]
    NoReceive,
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<Error>),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Compiles (or reads) the inputs and lowers them into a `Program`.
///
/// `work` receives the intermediate files (kept when the caller wants them).
pub fn load(
    inputs: &frontend::Inputs,
    work: &Path,
    jobs: usize,
    diags: &mut Diags,
) -> Result<Program, Error> {
    let tc = frontend::Toolchain::discover()?;
    let built = frontend::build(&tc, inputs, work, jobs)?;
    load_built(&built.bc, &built.ll, diags)
}

/// Reads a linked, promoted module (`.bc`) and its textual form (`.ll`).
pub fn load_built(bc: &Path, ll: &Path, diags: &mut Diags) -> Result<Program, Error> {
    let text = std::fs::read_to_string(ll).map_err(|e| Error::Ir {
        what: ll.display().to_string(),
        msg: e.to_string(),
    })?;
    let di = debuginfo::DebugInfo::parse(&text);
    drop(text);
    let bc = bc.to_path_buf();
    // llvm-ir panics on a few constructs it does not implement; turn that into an error that
    // says so instead of taking the process down.
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let parsed = std::panic::catch_unwind(|| llvm_ir::Module::from_bc_path(&bc));
    std::panic::set_hook(prev);
    let module = match parsed {
        Ok(Ok(m)) => m,
        Ok(Err(msg)) => {
            return Err(Error::Ir {
                what: bc.display().to_string(),
                msg,
            })
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown reason".into());
            return Err(Error::Ir {
                what: bc.display().to_string(),
                msg: format!("unsupported IR construct: {msg}"),
            });
        }
    };
    if di.nodes.is_empty() {
        diags.warn(
            None,
            "the IR has no debug info: variable names and lines are unknown (compile with -g)",
        );
    }
    Ok(ir::lower(&module, di, diags))
}
