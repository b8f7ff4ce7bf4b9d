//! What real builds hand the front end: several translation units whose struct types the
//! linker renames, calls through bitcasts to unprototyped functions, a compilation database,
//! ready IR files, and pcap_dispatch in a loop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use statealyzr::Config;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

fn var<'a>(run: &'a common::Run, name: &str) -> &'a statealyzr::analysis::Var {
    run.analysis
        .vars
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

fn procs(run: &common::Run) -> Vec<String> {
    run.analysis
        .packet_procs
        .iter()
        .map(|&f| run.program.funcs[f as usize].name.clone())
        .collect()
}

const MAIN_C: &str = r#"#include <pcap.h>
#include <stdint.h>
struct conn { uint32_t key; int state; };
int handle();
static struct conn last;
static void cb(u_char *u, const struct pcap_pkthdr *h, const u_char *p)
{
    (void)u;
    last.key = p[26];
    handle(p, h->caplen);
}
int main(int argc, char **argv)
{
    char e[PCAP_ERRBUF_SIZE];
    pcap_t *in = pcap_open_offline(argc > 1 ? argv[1] : "x", e);
    if (!in)
        return 1;
    for (;;)
        if (pcap_dispatch(in, 16, cb, 0) <= 0)
            break;
    return 0;
}
"#;

/// A second unit with its own, different `struct conn`: the linker renames one of them.
const HANDLER_C: &str = r#"#include <stdint.h>
#include <stdlib.h>
struct conn { uint16_t port; struct conn *next; long bytes; };
static struct conn *conns[64];
long counter;
int handle(const unsigned char *p, unsigned n)
{
    unsigned i = p[36] % 64;
    struct conn *c = conns[i];
    if (!c) {
        c = calloc(1, sizeof *c);
        if (!c)
            abort();
        conns[i] = c;
    }
    c->bytes += n;
    counter += n;
    return 0;
}
"#;

fn check_two_units(run: &common::Run) {
    assert!(
        procs(run).contains(&"handle".to_string()),
        "{:?}",
        procs(run)
    );
    assert!(procs(run).contains(&"cb".to_string()));
    let c = var(run, "counter");
    assert!(
        c.top_level && c.updateable,
        "counter is updated through the bitcast call"
    );
    let conns = var(run, "conns");
    assert!(conns.updateable);
    assert!(
        conns.flowspace.contains("dst_port"),
        "{:?}",
        conns.flowspace
    );
    assert!(var(run, "last").updateable);
}

#[test]
fn renamed_structs_and_unprototyped_calls_across_units() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "main.c", MAIN_C);
    let b = write(d.path(), "handler.c", HANDLER_C);
    let run = common::analyse(&[a, b], &["-std=gnu99"], &Config::default()).expect("analysis");
    check_two_units(&run);
}

#[test]
fn a_compilation_database_with_command_strings() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "src/main.c", MAIN_C);
    write(d.path(), "src/handler.c", HANDLER_C);
    let dir = d.path().display().to_string();
    let db = format!(
        r#"[{{"directory": "{dir}", "file": "src/main.c", "command": "cc -O2 -std=gnu99 -DNDEBUG -c src/main.c -o build/main.o"}},
           {{"directory": "{dir}", "file": "{dir}/src/handler.c", "arguments": ["gcc", "-O3", "-MD", "-MF", "x.d", "-c", "-o", "build/handler.o", "src/handler.c"]}}]"#
    );
    let db = write(d.path(), "compile_commands.json", &db);
    let run = common::analyse(&[db], &[], &Config::default()).expect("analysis");
    check_two_units(&run);
}

#[test]
fn ready_ir_files_give_the_same_answer_as_sources() {
    let d = tempfile::tempdir().unwrap();
    let a = write(d.path(), "main.c", MAIN_C);
    let b = write(d.path(), "handler.c", HANDLER_C);
    let ll = d.path().join("main.ll");
    let bc = d.path().join("handler.bc");
    for (src, out, kind) in [(&a, &ll, "-S"), (&b, &bc, "-c")] {
        let ok = Command::new("clang-14")
            .args([
                "-g",
                "-O0",
                "-Xclang",
                "-disable-O0-optnone",
                "-fno-discard-value-names",
                "-emit-llvm",
                kind,
            ])
            .arg(src)
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let run = common::analyse(&[ll, bc], &[], &Config::default()).expect("analysis of IR files");
    check_two_units(&run);
}
