//! Bad input gives a clear error or a warning naming the place; never a panic and never a
//! silently smaller result.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use statealyzr::{Config, Error};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write test input");
    p
}

/// Runs the binary; returns (exit code, stdout, stderr).
fn cli(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_statealyzr"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run statealyzr");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_file_that_does_not_compile_is_named_with_the_compiler_error() {
    let d = tempfile::tempdir().unwrap();
    let f = write(
        d.path(),
        "broken.c",
        "int main(void) { return nosuch + ; }\n",
    );
    let err = common::analyse(&[f], &[], &Config::default())
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::Compile { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("broken.c") && msg.contains("error"), "{msg}");
    let (code, _, stderr) = cli(&["analyze", "broken.c"], d.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("broken.c") && stderr.contains("does not compile"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_program_without_a_receive_call_is_an_error_that_names_the_way_out() {
    let d = tempfile::tempdir().unwrap();
    let src = "extern int dev_rx(unsigned char *buf, int len);\n\
               int count; unsigned char last;\n\
               int main(void) { unsigned char b[64];\n\
                 for (;;) { int n = dev_rx(b, sizeof b); if (n <= 0) break; count++; last = b[0]; }\n\
                 return count; }\n";
    let f = write(d.path(), "custom.c", src);
    let err = common::analyse(std::slice::from_ref(&f), &[], &Config::default())
        .err()
        .expect("must fail");
    assert!(matches!(err, Error::NoReceive), "{err}");
    assert!(err.to_string().contains("--recv-fn"));
    let (code, _, stderr) = cli(&["analyze", "custom.c"], d.path());
    assert_eq!(code, 1);
    assert!(stderr.contains("no packet receive call"), "{stderr}");

    // Naming the receive function makes the state visible.
    let cfg = Config {
        recv_fns: vec!["dev_rx".into()],
        ..Config::default()
    };
    let run = common::analyse(&[f], &[], &cfg).expect("analysis with --recv-fn");
    let var = |n: &str| run.analysis.vars.iter().find(|v| v.name == n).expect(n);
    assert!(var("count").top_level && var("count").updateable);
    assert!(var("last").top_level && var("last").updateable);
    let b = var("b");
    assert!(
        b.top_level && b.updateable,
        "the receive buffer is written by every receive"
    );
}

#[test]
fn inline_assembly_is_a_warning_with_its_line_and_is_treated_as_an_update() {
    let d = tempfile::tempdir().unwrap();
    let src = "#include <pcap.h>\n\
               unsigned long counter;\n\
               static void cb(u_char *u, const struct pcap_pkthdr *h, const u_char *p) {\n\
                 (void)u; (void)h; (void)p;\n\
                 __asm__ volatile(\"\" : : \"r\"(&counter) : \"memory\");\n\
               }\n\
               int main(void) { char e[PCAP_ERRBUF_SIZE]; pcap_t *in = pcap_open_offline(\"x\", e);\n\
                 return pcap_loop(in, -1, cb, 0); }\n";
    let f = write(d.path(), "asm.c", src);
    let run = common::analyse(&[f], &[], &Config::default()).expect("analysis");
    let w: Vec<String> = run
        .diags
        .warnings()
        .map(|x| statealyzr::Diags::render(x, &run.program.files))
        .collect();
    assert!(
        w.iter()
            .any(|m| m.contains("asm.c:5") && m.contains("inline assembly")),
        "{w:?}"
    );
    let c = run
        .analysis
        .vars
        .iter()
        .find(|v| v.name == "counter")
        .unwrap();
    assert!(c.updateable, "what the assembly can reach may be updated");
}

#[test]
fn a_function_pointer_from_outside_the_program_is_conservative_and_warned() {
    let d = tempfile::tempdir().unwrap();
    let src = "#include <pcap.h>\n#include <dlfcn.h>\n\
               int state; int other;\n\
               static void (*hook)(int *);\n\
               static void cb(u_char *u, const struct pcap_pkthdr *h, const u_char *p) {\n\
                 (void)u; (void)h; (void)p; hook(&state); other = 1; }\n\
               int main(void) { char e[PCAP_ERRBUF_SIZE];\n\
                 hook = (void (*)(int *))dlsym(RTLD_DEFAULT, \"plugin_hook\");\n\
                 pcap_t *in = pcap_open_offline(\"x\", e); return pcap_loop(in, -1, cb, 0); }\n";
    let f = write(d.path(), "hook.c", src);
    let run = common::analyse(&[f], &[], &Config::default()).expect("analysis");
    let w: Vec<String> = run
        .diags
        .warnings()
        .map(|x| statealyzr::Diags::render(x, &run.program.files))
        .collect();
    assert!(
        w.iter()
            .any(|m| m.contains("hook.c:6") && m.contains("outside the program")),
        "{w:?}"
    );
    let state = run
        .analysis
        .vars
        .iter()
        .find(|v| v.name == "state")
        .unwrap();
    assert!(state.updateable, "the plugin may write what it is handed");
}

#[test]
fn unreadable_inputs_are_named() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope.c");
    let err = common::analyse(&[missing], &[], &Config::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("nope.c") && err.to_string().contains("no such file"),
        "{err}"
    );

    let txt = write(d.path(), "notes.txt", "hello");
    let err = common::analyse(&[txt], &[], &Config::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("notes.txt"), "{err}");

    let db = write(d.path(), "compile_commands.json", "{\"not\": \"an array\"}");
    let err = common::analyse(&[db], &[], &Config::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("compile_commands.json")
            && err.to_string().contains("compilation database"),
        "{err}"
    );

    let ll = write(d.path(), "garbage.ll", "this is not LLVM IR\n");
    let err = common::analyse(&[ll], &[], &Config::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("garbage.ll"), "{err}");

    let (code, _, stderr) = cli(&["analyze", "nope.c"], d.path());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("nope.c") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn several_broken_files_are_all_reported() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "a.c", "int f(void) { return x; }\n");
    let b = write(d.path(), "b.c", "int g(void) { return y; }\n");
    let msg = common::analyse(&[a, b], &[], &Config::default())
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("a.c") && msg.contains("b.c"), "{msg}");
}
