//! Run-time update tracking (dissertation §4.4.2, Fig 4.12).
//!
//! Every updateable top-level variable gets an "updated" bit. Before each statement that may
//! update a value reachable from the variable, the bit is set; a generated function reports
//! (and clears) the bits, so calling it once per packet tells which state that packet touched.
//!
//! Placement: the analysis gives update sites as IR instructions with source positions. libclang
//! finds the full expression around each position and the mark is put in front of it with the
//! comma operator (`(__statealyzr_updated[3] = 1, h->count++)`), which is valid wherever an
//! expression is, including loop headers and conditions; an update inside a declaration's
//! initialiser is marked by a statement before the declaration.
//!
//! Pruning (Fig 4.12b): within a function, a mark is dropped when the same bit is already set
//! on every path reaching it since the function was entered, the last loop iteration began or
//! the last packet arrived. The marks that cannot be placed (no position, header files) make
//! their variable report as always updated, so the report never misses an update.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::analysis::Analysis;
use crate::frontend::Inputs;
use crate::ir::{InstId, Kind, Program};
use crate::Error;

/// The array the marks write.
pub const BITS: &str = "__statealyzr_updated";
/// The generated support file.
pub const SUPPORT_FILE: &str = "statealyzr_updates.c";

/// One instrumented source file.
pub struct FileEdit {
    pub path: PathBuf,
    pub original: String,
    pub instrumented: String,
}

pub struct Instrumented {
    pub files: Vec<FileEdit>,
    pub support: String,
    /// Names of the tracked variables, by bit.
    pub names: Vec<String>,
    /// Marks kept and pruned.
    pub marks: usize,
    pub pruned: usize,
    pub warnings: Vec<String>,
}

static LIBCLANG: Mutex<()> = Mutex::new(());

/// A position where a mark goes, in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Place {
    /// Wrap the full expression spanning these byte offsets.
    Wrap(u32, u32),
    /// Put a statement before the one starting at this offset.
    Before(u32),
}

pub fn instrument(p: &Program, a: &Analysis, inputs: &Inputs) -> Result<Instrumented, Error> {
    let tracked: Vec<usize> = (0..a.vars.len())
        .filter(|&i| a.vars[i].top_level && a.vars[i].updateable)
        .collect();
    let names: Vec<String> = tracked
        .iter()
        .map(|&i| {
            let v = &a.vars[i];
            match &v.function {
                Some(f) => format!("{f}:{}", v.name),
                None => v.name.clone(),
            }
        })
        .collect();
    // Sites: instruction -> bits.
    let mut sites: BTreeMap<InstId, BTreeSet<usize>> = BTreeMap::new();
    for (bit, &vi) in tracked.iter().enumerate() {
        for &i in &a.vars[vi].update_sites {
            let site = site_inst(p, i);
            sites.entry(site).or_default().insert(bit);
        }
    }
    let (kept, pruned) = prune(p, a, &sites);
    let mut warnings = Vec::new();
    let mut always: BTreeSet<usize> = BTreeSet::new();
    // Group kept marks by file.
    let unit_of: HashMap<PathBuf, &crate::frontend::Unit> = inputs
        .units
        .iter()
        .map(|u| (canon(&u.dir.join(&u.file)), u))
        .collect();
    let mut by_file: BTreeMap<PathBuf, Vec<(u32, u32, usize)>> = BTreeMap::new();
    let mut marks = 0;
    for (site, bits) in &kept {
        let ins = &p.insts[*site as usize];
        let Some(loc) = ins.loc.filter(|l| l.line > 0) else {
            warnings.push(format!(
                "an update in `{}` has no source position; {} will always be reported as updated",
                p.funcs[ins.func as usize].name,
                bits.iter()
                    .map(|b| names[*b].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            always.extend(bits.iter().copied());
            continue;
        };
        let path = canon(p.file(&loc));
        if !unit_of.contains_key(&path) {
            warnings.push(format!(
                "{}:{}: update outside the instrumented sources; {} will always be reported as updated",
                path.display(),
                loc.line,
                bits.iter().map(|b| names[*b].as_str()).collect::<Vec<_>>().join(", ")
            ));
            always.extend(bits.iter().copied());
            continue;
        }
        for &b in bits {
            by_file
                .entry(path.clone())
                .or_default()
                .push((loc.line, loc.col, b));
            marks += 1;
        }
    }
    let _guard = LIBCLANG.lock().unwrap_or_else(|e| e.into_inner());
    let clang = clang::Clang::new().map_err(Error::Toolchain)?;
    let index = clang::Index::new(&clang, false, false);
    let mut files = Vec::new();
    for (path, marks_here) in by_file {
        let unit = unit_of[&path];
        let original = std::fs::read_to_string(&path)?;
        let mut args: Vec<String> = unit.flags.clone();
        args.push("-w".into());
        let tu = index
            .parser(&path)
            .arguments(&args)
            .parse()
            .map_err(|e| Error::Compile {
                file: path.clone(),
                diagnostics: format!("libclang could not parse it: {e}"),
            })?;
        let tree = Tree::build(&tu, &path);
        let line_starts = line_starts(&original);
        let mut places: BTreeMap<Place, BTreeSet<usize>> = BTreeMap::new();
        for (line, col, bit) in marks_here {
            let Some(&ls) = line_starts.get(line as usize - 1) else {
                always.insert(bit);
                continue;
            };
            let off = ls + col.saturating_sub(1);
            match tree.place(off, col == 0) {
                Some(pl) => {
                    places.entry(pl).or_default().insert(bit);
                }
                None => {
                    warnings.push(format!(
                        "{}:{line}: cannot place the mark for {}; it will always be reported as updated",
                        path.display(),
                        names[bit]
                    ));
                    always.insert(bit);
                }
            }
        }
        let instrumented = apply(&original, &places);
        files.push(FileEdit {
            path,
            original,
            instrumented,
        });
    }
    // Sources without marks are part of the program too.
    for path in unit_of.keys() {
        if !files.iter().any(|f| &f.path == path) {
            let original = std::fs::read_to_string(path)?;
            files.push(FileEdit {
                path: path.clone(),
                instrumented: original.clone(),
                original,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    drop(index);
    drop(clang);
    let support = support_source(&names, &always);
    Ok(Instrumented {
        files,
        support,
        names,
        marks,
        pruned,
        warnings,
    })
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The instruction whose position stands for an update: a `dbg.value` marks an assignment
/// to a promoted local, whose position is that of the computation assigned.
fn site_inst(p: &Program, i: InstId) -> InstId {
    if let Kind::Dbg { vals, .. } = &p.insts[i as usize].kind {
        for v in vals.iter().filter_map(|o| o.val()) {
            if let Some(d) = p.inst_of_val(v) {
                if !matches!(p.insts[d as usize].kind, Kind::Phi { .. }) {
                    return d;
                }
            }
        }
    }
    i
}

/// Drops marks whose bit is set on every path reaching them (Fig 4.12b). Availability starts
/// empty at function entry, at every loop header (a new iteration may be a new packet) and after
/// every receive call.
fn prune(
    p: &Program,
    a: &Analysis,
    sites: &BTreeMap<InstId, BTreeSet<usize>>,
) -> (BTreeMap<InstId, BTreeSet<usize>>, usize) {
    let recv_sites: HashSet<InstId> = a.facts.recvs.iter().map(|r| r.site).collect();
    let mut by_func: BTreeMap<u32, Vec<InstId>> = BTreeMap::new();
    for &i in sites.keys() {
        by_func.entry(p.insts[i as usize].func).or_default().push(i);
    }
    let mut kept: BTreeMap<InstId, BTreeSet<usize>> = BTreeMap::new();
    let mut pruned = 0;
    for (f, _) in by_func {
        let func = &p.funcs[f as usize];
        let n = func.blocks.len();
        if n == 0 {
            continue;
        }
        // Reverse post-order; edges to earlier-or-equal blocks are retreating (loops).
        let succ = |v: usize| func.blocks[v].succs.iter().map(|&s| s as usize).collect();
        let (order, rpo) = crate::cfg::rpo_order(n, 0, &succ);
        let mut out: Vec<Option<BTreeSet<usize>>> = vec![None; n];
        for &b in &order {
            let preds = &func.blocks[b].preds;
            let retreating = preds.iter().any(|&q| rpo[q as usize] >= rpo[b]);
            let mut avail: BTreeSet<usize> = if b == 0 || retreating {
                BTreeSet::new()
            } else {
                let mut it = preds.iter().filter_map(|&q| out[q as usize].as_ref());
                match it.next() {
                    Some(first) => it.fold(first.clone(), |acc, s| {
                        acc.intersection(s).cloned().collect()
                    }),
                    None => BTreeSet::new(),
                }
            };
            for &i in &func.blocks[b].insts {
                if let Some(bits) = sites.get(&i) {
                    for &bit in bits {
                        if avail.contains(&bit) {
                            pruned += 1;
                        } else {
                            kept.entry(i).or_default().insert(bit);
                        }
                    }
                    // Marks go before the statement, so they hold after it.
                    avail.extend(bits.iter().copied());
                }
                if recv_sites.contains(&i) {
                    avail.clear();
                }
            }
            out[b] = Some(avail);
        }
    }
    (kept, pruned)
}

#[derive(Debug)]
struct Node {
    start: u32,
    end: u32,
    kind: NodeKind,
    parent: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeKind {
    Expr,
    /// A statement that can hold other statements in sequence (a `{...}` block).
    Compound,
    /// A label (`case 1:`, `default:`, `name:`): its sub-statement is in sequence too.
    Label,
    DeclStmt,
    VarDecl,
    Stmt,
    Other,
}

/// The syntax tree of the function bodies of one file, flattened with parent links (libclang
/// has none for statements).
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn build(tu: &clang::TranslationUnit, path: &Path) -> Tree {
        let mut t = Tree { nodes: Vec::new() };
        let root = tu.get_entity();
        for child in root.get_children() {
            if child.get_kind() != clang::EntityKind::FunctionDecl {
                continue;
            }
            let Some(r) = child.get_range() else { continue };
            let start = r.get_start().get_file_location();
            let in_file = start
                .file
                .map(|f| canon(&f.get_path()) == canon(path))
                .unwrap_or(false);
            if !in_file {
                continue;
            }
            t.add(child, usize::MAX);
        }
        t
    }

    fn add(&mut self, e: clang::Entity, parent: usize) {
        use clang::EntityKind as K;
        let Some(r) = e.get_range() else { return };
        let s = r.get_start().get_file_location();
        let en = r.get_end().get_file_location();
        let kind = match e.get_kind() {
            K::CompoundStmt => NodeKind::Compound,
            K::CaseStmt | K::DefaultStmt | K::LabelStmt => NodeKind::Label,
            K::DeclStmt => NodeKind::DeclStmt,
            K::VarDecl => NodeKind::VarDecl,
            _ if e.is_expression() => NodeKind::Expr,
            _ if e.is_statement() => NodeKind::Stmt,
            _ => NodeKind::Other,
        };
        let id = self.nodes.len();
        self.nodes.push(Node {
            start: s.offset,
            end: en.offset,
            kind,
            parent,
        });
        for c in e.get_children() {
            self.add(c, id);
        }
    }

    /// Where the mark for an update at byte offset `off` goes.
    fn place(&self, off: u32, statement_only: bool) -> Option<Place> {
        // Deepest node containing the offset (ties: the later, i.e. deeper, node).
        let mut best: Option<usize> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if n.start <= off && off < n.end.max(n.start + 1) {
                best = match best {
                    Some(b) if self.nodes[b].end - self.nodes[b].start < n.end - n.start => Some(b),
                    _ => Some(i),
                };
            }
        }
        let mut cur = best?;
        if !statement_only {
            // Climb to the full expression.
            let mut full: Option<usize> = None;
            let mut x = cur;
            loop {
                let n = &self.nodes[x];
                if n.kind == NodeKind::Expr {
                    full = Some(x);
                }
                if n.parent == usize::MAX || n.kind != NodeKind::Expr && full.is_some() {
                    break;
                }
                x = n.parent;
            }
            if let Some(e) = full {
                let parent = self.nodes[e].parent;
                let in_decl = parent != usize::MAX && self.nodes[parent].kind == NodeKind::VarDecl;
                if !in_decl {
                    let n = &self.nodes[e];
                    return Some(Place::Wrap(n.start, n.end));
                }
            }
        }
        // A statement in sequence: its parent is a block or a label.
        loop {
            let n = &self.nodes[cur];
            if n.parent == usize::MAX {
                return None;
            }
            let par = &self.nodes[n.parent];
            if matches!(
                n.kind,
                NodeKind::DeclStmt | NodeKind::Stmt | NodeKind::Expr | NodeKind::Compound
            ) && matches!(par.kind, NodeKind::Compound | NodeKind::Label)
            {
                return Some(Place::Before(n.start));
            }
            cur = n.parent;
        }
    }
}

fn line_starts(s: &str) -> Vec<u32> {
    let mut v = vec![0u32];
    for (i, b) in s.bytes().enumerate() {
        if b == b'\n' {
            v.push(i as u32 + 1);
        }
    }
    v
}

fn mark(bits: &BTreeSet<usize>) -> String {
    bits.iter()
        .map(|b| format!("{BITS}[{b}] = 1"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies the marks, from the end of the file backwards so offsets stay valid, and adds the
/// declarations the marks need at the top.
fn apply(src: &str, places: &BTreeMap<Place, BTreeSet<usize>>) -> String {
    let mut edits: Vec<(u32, u8, String)> = Vec::new();
    for (pl, bits) in places {
        match *pl {
            Place::Wrap(s, e) => {
                edits.push((s, 1, format!("({}, ", mark(bits))));
                edits.push((e, 0, ")".to_string()));
            }
            Place::Before(s) => edits.push((s, 2, format!("{}; ", mark(bits)))),
        }
    }
    // Later offsets first; at one offset, closing parens before openings.
    edits.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let mut out = src.to_string();
    for (off, _, text) in edits {
        let off = (off as usize).min(out.len());
        if out.is_char_boundary(off) {
            out.insert_str(off, &text);
        }
    }
    format!(
        "/* statealyzr instrument: update tracking, see {SUPPORT_FILE} */\n\
         #define STATEALYZR_INSTRUMENTED 1\n\
         extern unsigned char {BITS}[];\n\
         int statealyzr_report_updates(void *out);\n\
         #line 1\n{out}"
    )
}

fn c_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if c.is_ascii_graphic() || c == ' ' => o.push(c),
            _ => o.push('?'),
        }
    }
    o.push('"');
    o
}

fn support_source(names: &[String], always: &BTreeSet<usize>) -> String {
    let n = names.len().max(1);
    let name_list = names
        .iter()
        .map(|s| format!("    {},\n", c_string(s)))
        .collect::<String>();
    let always_list = (0..n)
        .map(|i| if always.contains(&i) { "1" } else { "0" })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"/* Generated by statealyzr instrument. Compile and link it with the instrumented sources.
 *
 * Every top-level variable the analysis found updateable has a bit in {BITS};
 * the instrumented code sets it before any statement that may update a value reachable from
 * the variable. Call statealyzr_report_updates() once per packet, after processing it: it
 * prints the variables the packet updated and clears the bits. */
#include <stdio.h>
#include <string.h>

#define STATEALYZR_NVARS {count}

unsigned char {BITS}[{n}];

/* Variables whose updates could not all be marked: always reported. */
static const unsigned char statealyzr_always[{n}] = {{ {always_list} }};

const char *const statealyzr_var_names[{n}] = {{
{name_list}}};

/* Copies the bits into dst (STATEALYZR_NVARS bytes, may be NULL), clears them and returns the
 * number of variables updated since the last call. */
int statealyzr_take_updates(unsigned char *dst)
{{
    int count = 0;
    for (int i = 0; i < STATEALYZR_NVARS; i++) {{
        unsigned char u = {BITS}[i] | statealyzr_always[i];
        if (dst)
            dst[i] = u;
        count += u != 0;
    }}
    memset({BITS}, 0, sizeof {BITS});
    return count;
}}

/* Prints "updated: a b c" (the names of the variables updated since the last call) to out,
 * a FILE *, and clears the bits. Returns the number of variables printed. */
int statealyzr_report_updates(void *out)
{{
    FILE *f = out ? (FILE *)out : stderr;
    int count = 0;
    fputs("updated:", f);
    for (int i = 0; i < STATEALYZR_NVARS; i++) {{
        if ({BITS}[i] | statealyzr_always[i]) {{
            fprintf(f, " %s", statealyzr_var_names[i]);
            count++;
        }}
    }}
    fputc('\n', f);
    memset({BITS}, 0, sizeof {BITS});
    return count;
}}
"#,
        count = names.len(),
    )
}

impl Instrumented {
    /// A unified diff of every instrumented file plus the new support file.
    pub fn unified_diff(&self) -> String {
        let mut s = String::new();
        for f in self.files.iter().filter(|f| f.original != f.instrumented) {
            let shown = crate::report::display_path(&f.path);
            let d = similar::TextDiff::from_lines(&f.original, &f.instrumented);
            s.push_str(
                &d.unified_diff()
                    .context_radius(3)
                    .header(&format!("a/{shown}"), &format!("b/{shown}"))
                    .to_string(),
            );
        }
        let d = similar::TextDiff::from_lines("", &self.support);
        s.push_str(
            &d.unified_diff()
                .context_radius(3)
                .header("/dev/null", &format!("b/{SUPPORT_FILE}"))
                .to_string(),
        );
        s
    }

    /// Writes instrumented copies of the sources under `dir` (by file name) and the support
    /// file; returns the paths written.
    pub fn write_tree(&self, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let mut used: HashSet<String> = HashSet::new();
        for f in &self.files {
            let name = f
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "source.c".into());
            let mut name = name;
            let mut k = 1;
            while !used.insert(name.clone()) {
                k += 1;
                name = format!("{k}_{name}");
            }
            let out = dir.join(&name);
            std::fs::write(&out, &f.instrumented)?;
            written.push(out);
        }
        let out = dir.join(SUPPORT_FILE);
        std::fs::write(&out, &self.support)?;
        written.push(out);
        Ok(written)
    }
}
