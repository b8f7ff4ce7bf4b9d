//! Soundness of the pointer analysis on generated programs: every alias a generated program
//! shows at run time must be in the computed points-to sets.
//!
//! Each generated C program moves pointers between global and local pointer variables,
//! through double pointers, heap cells, a struct, integers, memcpy, helper functions,
//! a function-pointer table and callbacks, under branches taken by a seeded generator. It
//! prints the address of every object it has, each heap allocation (by source line) and, after
//! every statement, the value of every pointer variable. The test runs it and checks that
//! each value observed for a variable is the address of an object the analysis says the
//! variable may point to.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::process::Command;

use proptest::prelude::*;
use statealyzr::frontend::Inputs;
use statealyzr::ir::Kind;
use statealyzr::pointsto::{ObjKind, Options, PointsTo};
use statealyzr::Diags;

/// `int` objects pointers may target: globals and address-taken locals of main.
const INTS: [&str; 5] = ["g0", "g1", "g2", "l0", "l1"];
/// `int *` variables: globals gp*, locals lp* (promoted to SSA unless address-taken).
const PTRS: [&str; 6] = ["gp0", "gp1", "gp2", "lp0", "lp1", "lp2"];
/// `int **` variables.
const PPTRS: [&str; 2] = ["gq0", "lq0"];

#[derive(Debug, Clone)]
enum Stmt {
    AddrOf(usize, usize),
    Copy(usize, usize),
    Malloc(usize),
    PpAddrOf(usize, usize),
    PpMalloc(usize),
    StoreThrough(usize, usize),
    LoadThrough(usize, usize),
    ViaIdentity(usize, usize),
    ViaTable(usize, usize, usize),
    ViaOutParam(usize, usize),
    ViaStruct(usize, usize),
    ViaInteger(usize, usize),
    ViaMemcpy(usize, usize),
    ViaCallback(usize, usize),
    Maybe(Box<Stmt>),
}

fn stmt_leaf() -> impl Strategy<Value = Stmt> {
    let p = 0..PTRS.len();
    let i = 0..INTS.len();
    let q = 0..PPTRS.len();
    prop_oneof![
        (p.clone(), i).prop_map(|(a, b)| Stmt::AddrOf(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::Copy(a, b)),
        p.clone().prop_map(Stmt::Malloc),
        (q.clone(), p.clone()).prop_map(|(a, b)| Stmt::PpAddrOf(a, b)),
        q.clone().prop_map(Stmt::PpMalloc),
        (q.clone(), p.clone()).prop_map(|(a, b)| Stmt::StoreThrough(a, b)),
        (p.clone(), q).prop_map(|(a, b)| Stmt::LoadThrough(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::ViaIdentity(a, b)),
        (p.clone(), p.clone(), 0..2usize).prop_map(|(a, b, k)| Stmt::ViaTable(a, b, k)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::ViaOutParam(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::ViaStruct(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::ViaInteger(a, b)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Stmt::ViaMemcpy(a, b)),
        (p.clone(), p).prop_map(|(a, b)| Stmt::ViaCallback(a, b)),
    ]
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![4 => stmt_leaf(), 1 => stmt_leaf().prop_map(|s| Stmt::Maybe(Box::new(s)))]
}

fn render_stmt(s: &Stmt, out: &mut String) {
    let p = |i: usize| PTRS[i];
    match s {
        Stmt::AddrOf(a, b) => writeln!(out, "{} = &{};", p(*a), INTS[*b]),
        Stmt::Copy(a, b) => writeln!(out, "{} = {};", p(*a), p(*b)),
        Stmt::Malloc(a) => writeln!(
            out,
            "{} = malloc(sizeof(int)); printf(\"heap %d %p\\n\", __LINE__, (void *){});",
            p(*a),
            p(*a)
        ),
        Stmt::PpAddrOf(q, b) => writeln!(out, "{} = &{};", PPTRS[*q], p(*b)),
        Stmt::PpMalloc(q) => writeln!(
            out,
            "{q} = malloc(sizeof(int *)); *{q} = 0; printf(\"heap %d %p\\n\", __LINE__, (void *){q});",
            q = PPTRS[*q]
        ),
        Stmt::StoreThrough(q, b) => writeln!(out, "if ({q}) *{q} = {};", p(*b), q = PPTRS[*q]),
        Stmt::LoadThrough(a, q) => writeln!(out, "if ({q}) {} = *{q};", p(*a), q = PPTRS[*q]),
        Stmt::ViaIdentity(a, b) => writeln!(out, "{} = identity({});", p(*a), p(*b)),
        Stmt::ViaTable(a, b, k) => writeln!(out, "{} = table[{k}]({});", p(*a), p(*b)),
        Stmt::ViaOutParam(a, b) => writeln!(out, "put(&{}, {});", p(*a), p(*b)),
        Stmt::ViaStruct(a, b) => writeln!(out, "box.x = {}; {} = box.x;", p(*b), p(*a)),
        Stmt::ViaInteger(a, b) => writeln!(out, "{{ uintptr_t t = (uintptr_t){}; {} = (int *)t; }}", p(*b), p(*a)),
        Stmt::ViaMemcpy(a, b) => writeln!(out, "memcpy(&{}, &{}, sizeof(int *));", p(*a), p(*b)),
        Stmt::ViaCallback(a, b) => writeln!(out, "{} = apply(identity, {});", p(*a), p(*b)),
        Stmt::Maybe(inner) => {
            out.push_str("if (coin()) { ");
            render_stmt(inner, out);
            out.push_str("}\n");
            Ok(())
        }
    }
    .expect("write to string");
}

fn address_taken(stmts: &[Stmt]) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    for s in stmts {
        let s = match s {
            Stmt::Maybe(inner) => inner.as_ref(),
            s => s,
        };
        match s {
            Stmt::PpAddrOf(_, b) => {
                out.insert(PTRS[*b]);
            }
            Stmt::ViaOutParam(a, _) => {
                out.insert(PTRS[*a]);
            }
            Stmt::ViaMemcpy(a, b) => {
                out.insert(PTRS[*a]);
                out.insert(PTRS[*b]);
            }
            _ => {}
        }
    }
    out.retain(|n| n.starts_with('l'));
    out
}

fn render(stmts: &[Stmt]) -> String {
    let mut s = String::from(
        "#include <stdint.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\
         int g0, g1, g2;\nint *gp0, *gp1, *gp2;\nint **gq0;\n\
         struct box { int *x; int *y; } box;\n\
         static unsigned seed = 12345;\n\
         static int coin(void) { seed = seed * 1103515245u + 12345u; return (seed >> 16) & 1; }\n\
         static int *identity(int *x) { return x; }\n\
         static int *first(int *x) { return coin() ? x : &g2; }\n\
         static int *(*table[2])(int *) = { identity, first };\n\
         static void put(int **d, int *s) { *d = s; }\n\
         static int *apply(int *(*f)(int *), int *x) { return f(x); }\n\
         int main(void) {\n\
         int l0 = 0, l1 = 0; int *lp0 = 0, *lp1 = 0, *lp2 = 0; int **lq0 = 0;\n\
         printf(\"obj g0 %p\\nobj g1 %p\\nobj g2 %p\\nobj l0 %p\\nobj l1 %p\\n\", (void *)&g0, (void *)&g1, (void *)&g2, (void *)&l0, (void *)&l1);\n\
         printf(\"obj gp0 %p\\nobj gp1 %p\\nobj gp2 %p\\n\", (void *)&gp0, (void *)&gp1, (void *)&gp2);\n",
    );
    // Only locals whose address the program takes are printed: printing the others' addresses
    // would keep them from being promoted to SSA values, which the test also covers.
    for l in address_taken(stmts) {
        writeln!(s, "printf(\"obj {l} %p\\n\", (void *)&{l});").expect("write");
    }
    let dump = "printf(\"val gp0 %p\\nval gp1 %p\\nval gp2 %p\\nval lp0 %p\\nval lp1 %p\\nval lp2 %p\\nval gq0 %p\\nval lq0 %p\\n\", (void *)gp0, (void *)gp1, (void *)gp2, (void *)lp0, (void *)lp1, (void *)lp2, (void *)gq0, (void *)lq0);\n";
    for st in stmts {
        render_stmt(st, &mut s);
        s.push_str(dump);
    }
    s.push_str("return l0 + l1;\n}\n");
    s
}

/// Object name (as the program prints it) of each abstract object the analysis has.
fn object_names(p: &statealyzr::Program, pt: &PointsTo) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for (o, obj) in pt.objs.iter().enumerate() {
        let name = match &obj.kind {
            ObjKind::Global(g) => p.globals[*g as usize].name.clone(),
            ObjKind::Alloca(i) => {
                // The local a stack slot belongs to, from its dbg.declare.
                let r = p.insts[*i as usize].result;
                let decl = p.insts.iter().find_map(|ins| match &ins.kind {
                    Kind::Dbg {
                        var,
                        vals,
                        declare: true,
                    } if vals.iter().any(|v| v.val() == r) => p.di.var_info(*var).map(|v| v.name),
                    _ => None,
                });
                match decl {
                    Some(n) => n,
                    None => continue,
                }
            }
            ObjKind::Heap(i) => match p.insts[*i as usize].loc {
                Some(l) => format!("heap@{}", l.line),
                None => continue,
            },
            _ => continue,
        };
        names.insert(o as u32, name);
    }
    names
}

/// What the analysis says each named pointer variable may point to (object names).
fn computed(p: &statealyzr::Program, pt: &PointsTo) -> HashMap<String, BTreeSet<String>> {
    let names = object_names(p, pt);
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    let add = |out: &mut HashMap<String, BTreeSet<String>>, var: &str, objs: &[u32]| {
        let e = out.entry(var.to_string()).or_default();
        for o in objs {
            if let Some(n) = names.get(o) {
                e.insert(n.clone());
            }
        }
    };
    for (g, gl) in p.globals.iter().enumerate() {
        if let Some(o) = pt.obj_id(&ObjKind::Global(g as u32)) {
            add(&mut out, &gl.name, pt.contents(o));
        }
    }
    for ins in &p.insts {
        if let Kind::Dbg { var, vals, declare } = &ins.kind {
            let Some(info) = p.di.var_info(*var) else {
                continue;
            };
            for v in vals {
                if *declare {
                    for slot in pt.op(v) {
                        add(&mut out, &info.name, pt.contents(slot));
                    }
                } else {
                    add(&mut out, &info.name, &pt.op(v));
                }
            }
        }
    }
    out
}

fn check_program(stmts: &[Stmt]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path().join("gen.c");
    let text = render(stmts);
    std::fs::write(&src, &text).expect("write program");
    let exe = dir.path().join("gen");
    let built = Command::new("clang-14")
        .args(["-O0", "-w", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("run clang-14");
    prop_assert!(
        built.success(),
        "generated program does not compile:\n{text}"
    );
    let run = Command::new(&exe).output().expect("run generated program");
    prop_assert!(run.status.success());
    let stdout = String::from_utf8_lossy(&run.stdout);

    let mut addr_obj: HashMap<String, String> = HashMap::new();
    let mut observed: Vec<(String, String)> = Vec::new();
    for line in stdout.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["obj", name, addr] => {
                addr_obj.insert(addr.to_string(), name.to_string());
            }
            ["heap", line, addr] => {
                addr_obj.insert(addr.to_string(), format!("heap@{line}"));
            }
            ["val", var, addr] => observed.push((var.to_string(), addr.to_string())),
            _ => {}
        }
    }

    let inputs = Inputs::classify(std::slice::from_ref(&src), &[]).expect("inputs");
    let mut diags = Diags::default();
    let work = tempfile::tempdir().expect("temp dir");
    let p = statealyzr::load(&inputs, work.path(), 1, &mut diags).expect("load program");
    let pt = PointsTo::analyse(&p, &Options::default());
    let sets = computed(&p, &pt);

    for (var, addr) in observed {
        if addr == "(nil)" {
            continue;
        }
        // A value that is no object's address would be a bug in the generator.
        let obj = addr_obj
            .get(&addr)
            .unwrap_or_else(|| panic!("{var} = {addr} is not an object of the program"));
        let set = sets.get(&var).cloned().unwrap_or_default();
        prop_assert!(
            set.contains(obj),
            "{var} pointed to {obj} at run time, but the analysis says only {set:?}\n{text}"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_runtime_alias_is_in_the_points_to_sets(stmts in prop::collection::vec(stmt(), 1..20)) {
        check_program(&stmts)?;
    }
}

#[test]
fn a_hand_written_program_with_every_construct() {
    let all = vec![
        Stmt::AddrOf(0, 0),
        Stmt::Malloc(1),
        Stmt::PpAddrOf(0, 3),
        Stmt::StoreThrough(0, 1),
        Stmt::LoadThrough(2, 0),
        Stmt::ViaIdentity(4, 0),
        Stmt::ViaTable(5, 1, 1),
        Stmt::ViaOutParam(3, 4),
        Stmt::ViaStruct(2, 5),
        Stmt::ViaInteger(1, 3),
        Stmt::ViaMemcpy(0, 2),
        Stmt::ViaCallback(4, 1),
        Stmt::PpMalloc(1),
        Stmt::StoreThrough(1, 0),
        Stmt::LoadThrough(5, 1),
        Stmt::Maybe(Box::new(Stmt::AddrOf(3, 4))),
    ];
    check_program(&all).expect("sound on the hand-written program");
}
