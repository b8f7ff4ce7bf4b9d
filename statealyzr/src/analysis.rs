//! The six stages of the analysis, in the order of the dissertation's chapter 4:
//! persistent variables (Fig 4.6), packet-processing procedures and top-level variables
//! (Fig 4.7), updateable variables (Fig 4.9), flowspaces (Fig 4.10) and output-impacting
//! variables (Fig 4.11). Instrumentation (Fig 4.12) builds on the result in `instrument`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use crate::cfg::{self, FuncCfg};
use crate::debuginfo::TypeShape;
use crate::diag::Diags;
use crate::externs::SpawnKind;
use crate::facts::{Facts, OutKind};
use crate::fields;
use crate::ir::{FuncId, GlobalId, InstId, Kind, Op, Program, Ref, ValDef, ValId};
use crate::pointsto::{ObjId, ObjKind, Options, PointsTo};
use crate::sdg::{Bits, Sdg, NONE};
use crate::Error;

/// What the user tells the analysis beyond the program.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub recv_fns: Vec<String>,
    pub pkt_out_fns: Vec<String>,
    pub log_out_fns: Vec<String>,
    pub pure_fns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    Global,
    Static,
    LoopLocal,
    LoopParam,
}

#[derive(Debug, Clone)]
pub struct Var {
    pub name: String,
    pub function: Option<String>,
    pub file: Option<PathBuf>,
    pub line: u32,
    pub storage: Storage,
    /// The objects that are the variable's storage (global, or stack slot of an address-taken
    /// local).
    pub objs: Vec<ObjId>,
    /// The SSA values a promoted local takes.
    pub ssa: Vec<ValId>,
    /// Objects a promoted local is set to point to by constant assignments (`p = &g`).
    pub pointees: Vec<ObjId>,
    pub shape: TypeShape,
    pub top_level: bool,
    pub updateable: bool,
    pub flowspace: BTreeSet<String>,
    pub pkt_output: bool,
    pub log_output: bool,
    /// Where an update may happen (the instructions), for instrumentation and explanations.
    pub update_sites: Vec<InstId>,
    /// The `DILocalVariable` of a loop-procedure local.
    pub dbg_var: Option<u32>,
}

/// How the packet loop was found, for the report.
#[derive(Debug, Clone)]
pub struct LoopProc {
    pub func: FuncId,
    /// Instructions of the packet loop (the loop containing the receive).
    pub region: BTreeSet<InstId>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Counts {
    pub all: usize,
    pub persistent: usize,
    pub top_level: usize,
    pub updateable: usize,
    pub pkt_output: usize,
    pub log_output: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Timing {
    pub phases: Vec<(String, f64)>,
    pub ir_insts: usize,
    pub functions: usize,
    pub pts_nodes: usize,
    pub objects: usize,
    pub sdg_nodes: usize,
    pub sdg_edges: usize,
}

pub struct Analysis {
    pub vars: Vec<Var>,
    pub packet_procs: BTreeSet<FuncId>,
    pub loop_procs: Vec<LoopProc>,
    pub counts: Counts,
    pub pkt_stmts: Vec<InstId>,
    pub pt: PointsTo,
    pub facts: Facts,
    pub timing: Timing,
}

fn loc_of(p: &Program, i: InstId) -> Option<(u32, u32)> {
    p.insts[i as usize].loc.map(|l| (l.file, l.line))
}

pub fn analyse(p: &Program, cfg: &Config, diags: &mut Diags) -> Result<Analysis, Error> {
    let mut timing = Timing {
        ir_insts: p.insts.len(),
        functions: p.funcs.iter().filter(|f| f.defined).count(),
        ..Timing::default()
    };
    let mut t0 = Instant::now();
    let mut lap = |name: &str, timing: &mut Timing| {
        timing
            .phases
            .push((name.to_owned(), t0.elapsed().as_secs_f64()));
        t0 = Instant::now();
    };
    let opts = Options {
        recv_fns: cfg.recv_fns.iter().cloned().collect(),
        pure_fns: cfg.pure_fns.iter().cloned().collect(),
    };
    for f in &cfg.recv_fns {
        if !p.func_by_name.contains_key(f) {
            diags.warn(
                None,
                format!("--recv-fn {f}: no function of that name is called or defined"),
            );
        }
    }
    let pt = PointsTo::analyse(p, &opts);
    timing.pts_nodes = pt.nodes;
    timing.objects = pt.objs.len();
    lap("points-to", &mut timing);
    if !pt.unknown_externs.is_empty() {
        let names: Vec<&str> = pt
            .unknown_externs
            .iter()
            .map(|&f| p.funcs[f as usize].name.as_str())
            .collect();
        diags.note(
            None,
            format!(
                "{} external function(s) without a model were assumed to read and write \
                 everything reachable from their arguments (declare side-effect-free ones with \
                 --pure-fn): {}",
                names.len(),
                names.join(", ")
            ),
        );
    }
    let pkt_out: HashSet<String> = cfg.pkt_out_fns.iter().cloned().collect();
    let log_out: HashSet<String> = cfg.log_out_fns.iter().cloned().collect();
    let facts = Facts::compute(p, &pt, &opts, &pkt_out, &log_out, diags);
    if facts.recvs.is_empty() {
        return Err(Error::NoReceive);
    }
    let cfgs: Vec<FuncCfg> = p.funcs.iter().map(cfg::analyse).collect();
    lap("facts+cfg", &mut timing);

    let cg = CallGraph::new(p, &facts);
    let loop_procs = find_loop_procs(p, &facts, &cfgs, &cg, diags);
    let in_region: HashMap<FuncId, &BTreeSet<InstId>> =
        loop_procs.iter().map(|l| (l.func, &l.region)).collect();
    let allowed_inst = |i: InstId| -> bool {
        let f = p.insts[i as usize].func;
        match in_region.get(&f) {
            Some(r) => r.contains(&i),
            None => true,
        }
    };

    // Procedures that may run while packets are being processed.
    let mut roots: Vec<FuncId> = Vec::new();
    for l in &loop_procs {
        for &i in &l.region {
            roots.extend(cg.callees_at(i, |k| k != Some(SpawnKind::AtExit)));
        }
    }
    for (&site, t) in &facts.calls {
        for b in &t.defined {
            if let Some((k, _)) = &b.spawn {
                if matches!(
                    k,
                    SpawnKind::Thread | SpawnKind::Signal | SpawnKind::PerPacket
                ) {
                    let _ = site;
                    roots.push(b.callee);
                }
            }
        }
    }
    for r in &facts.recvs {
        let f = p.insts[r.site as usize].func;
        if !in_region.contains_key(&f) {
            roots.push(f);
        }
    }
    let during = cg.closure(p, &roots, &allowed_inst, |k| k != Some(SpawnKind::AtExit));

    let sdg = Sdg::build(p, &pt, &facts, &cfgs);
    timing.sdg_nodes = sdg.n;
    timing.sdg_edges = sdg.edges;
    lap("sdg", &mut timing);
    let mut allowed = Bits::new(sdg.n);
    for v in 0..sdg.n as u32 {
        let f = sdg.node_func[v as usize];
        let ok = if f == NONE {
            true
        } else if in_region.contains_key(&f) {
            let i = sdg.node_inst[v as usize];
            i != NONE && allowed_inst(i)
        } else {
            during.contains(&f)
        };
        if ok {
            allowed.set(v);
        }
    }

    // Fig 4.7: packet-processing procedures are those in the forward slice from every receive.
    let fwd = sdg.forward(&sdg.sources, &allowed);
    let mut slice_procs: BTreeSet<FuncId> = BTreeSet::new();
    for v in fwd.iter() {
        let f = sdg.node_func[v as usize];
        if f != NONE {
            slice_procs.insert(f);
        }
    }
    // Signal handlers run in the middle of packet processing; their writes are updates.
    for t in facts.calls.values() {
        for b in &t.defined {
            if let Some((SpawnKind::Signal, _)) = &b.spawn {
                slice_procs.insert(b.callee);
            }
        }
    }
    // The procedure holding the packet loop processes packets by definition.
    slice_procs.extend(loop_procs.iter().map(|l| l.func));
    let start: Vec<FuncId> = slice_procs.iter().copied().collect();
    let packet_procs: BTreeSet<FuncId> = cg
        .closure(p, &start, &allowed_inst, |k| k != Some(SpawnKind::AtExit))
        .into_iter()
        .collect();
    lap("slicing", &mut timing);

    let mut pkt_stmts: Vec<InstId> = Vec::new();
    for &f in &packet_procs {
        for i in p.func_insts(f) {
            if allowed_inst(i) {
                pkt_stmts.push(i);
            }
        }
    }
    let pkt_set: HashSet<InstId> = pkt_stmts.iter().copied().collect();

    // Fig 4.6: persistent variables.
    let mut vars = persistent_vars(p, &pt, &loop_procs, &cfgs);
    let mut var_of_val: HashMap<ValId, usize> = HashMap::new();
    let mut var_of_obj: HashMap<ObjId, usize> = HashMap::new();
    let mut var_of_global: HashMap<GlobalId, usize> = HashMap::new();
    for (vi, v) in vars.iter().enumerate() {
        for &s in &v.ssa {
            var_of_val.insert(s, vi);
        }
        for &o in &v.objs {
            var_of_obj.insert(o, vi);
            match pt.objs[o as usize].kind {
                ObjKind::Global(g) => {
                    var_of_global.insert(g, vi);
                }
                ObjKind::Alloca(a) => {
                    if let Some(r) = p.insts[a as usize].result {
                        var_of_val.insert(r, vi);
                    }
                }
                _ => {}
            }
        }
    }
    let uses_of = |i: InstId, out: &mut Vec<usize>| {
        for o in Program::operands(&p.insts[i as usize].kind) {
            match o {
                Op::Val(v) => {
                    if let Some(&vi) = var_of_val.get(v) {
                        out.push(vi);
                    }
                }
                Op::Addr(refs) => {
                    for r in refs {
                        if let Ref::Global(g) = r {
                            if let Some(&vi) = var_of_global.get(g) {
                                out.push(vi);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    };

    // Fig 4.7 (second half): top-level variables are persistent ones used in packet processing,
    // directly or through a pointer (a loop-procedure local handed to a callback, ...).
    let mut written: BTreeSet<ObjId> = BTreeSet::new();
    let mut write_sites: Vec<(InstId, Vec<ObjId>)> = Vec::new();
    let mut assigned: Vec<Vec<InstId>> = vec![Vec::new(); vars.len()];
    let var_of_dbg: HashMap<u32, usize> = vars
        .iter()
        .enumerate()
        .filter_map(|(vi, v)| v.dbg_var.map(|d| (d, vi)))
        .collect();
    for &i in &pkt_stmts {
        let ins = &p.insts[i as usize];
        if let Kind::Dbg {
            var,
            declare: false,
            ..
        } = &ins.kind
        {
            if let Some(&vi) = var_of_dbg.get(var) {
                assigned[vi].push(i);
                vars[vi].top_level = true;
            }
            continue;
        }
        let mut used = Vec::new();
        uses_of(i, &mut used);
        let (r, w) = facts.effects(p, &pt, i);
        for o in r.iter().chain(w.iter()) {
            if let Some(&vi) = var_of_obj.get(o) {
                used.push(vi);
            }
        }
        for vi in used {
            vars[vi].top_level = true;
        }
        if !w.is_empty() {
            written.extend(w.iter().copied());
            write_sites.push((i, w));
        }
    }
    for (ri, r) in facts.recvs.iter().enumerate() {
        let active =
            pkt_set.contains(&r.site) || r.callbacks.iter().any(|c| packet_procs.contains(c));
        if active {
            written.extend(r.writes.iter().copied());
            write_sites.push((r.site, r.writes.clone()));
            for o in &r.writes {
                if let Some(&vi) = var_of_obj.get(o) {
                    vars[vi].top_level = true;
                }
            }
        }
        let _ = ri;
    }

    // Fig 4.9: updateable variables: assigned in packet processing, or something reachable
    // from them is written there (through any alias).
    let reach_of: Vec<Vec<ObjId>> = vars
        .iter()
        .map(|v| {
            let mut start = v.objs.clone();
            start.extend_from_slice(&v.pointees);
            for &s in &v.ssa {
                start.extend_from_slice(pt.val(s));
            }
            start.retain(|&o| pt.is_data(o));
            pt.reach(&start)
        })
        .collect();
    // Object -> the instructions that may write it.
    let mut writers: HashMap<ObjId, Vec<InstId>> = HashMap::new();
    for (i, w) in &write_sites {
        for o in w {
            writers.entry(*o).or_default().push(*i);
        }
    }
    for (vi, v) in vars.iter_mut().enumerate() {
        if !v.top_level {
            continue;
        }
        let mut sites: Vec<InstId> = assigned[vi].clone();
        for o in reach_of[vi].iter().filter(|&&o| pt.is_data(o)) {
            if let Some(ws) = writers.get(o) {
                sites.extend(ws.iter().copied());
            }
        }
        sites.sort_unstable();
        sites.dedup();
        v.updateable = !sites.is_empty();
        v.update_sites = sites;
    }
    lap("variables", &mut timing);

    // Fig 4.10: flowspaces.
    let loops: HashMap<FuncId, Vec<cfg::Loop>> = packet_procs
        .iter()
        .map(|&f| {
            (
                f,
                cfg::natural_loops(&p.funcs[f as usize], &cfgs[f as usize]),
            )
        })
        .collect();
    let ethernet: HashSet<ObjId> = facts
        .recvs
        .iter()
        .filter(|r| r.ethernet)
        .flat_map(|r| r.packet.iter().copied())
        .collect();
    let labels = field_labels(p, &pt, &sdg, &allowed, &fwd, &facts, &ethernet, &pkt_stmts);
    let index = FlowIndex::build(p, &pt, &pkt_stmts, &loops, &cfgs, &allowed_inst);
    for (vi, v) in vars.iter_mut().enumerate() {
        if !v.top_level
            || !matches!(
                v.shape,
                TypeShape::Pointer | TypeShape::Array | TypeShape::Struct
            )
        {
            continue;
        }
        let keyed: HashSet<ObjId> = reach_of[vi]
            .iter()
            .copied()
            .filter(|o| pt.is_data(*o) && !facts.packet_objs.contains(o))
            .collect();
        if keyed.is_empty() {
            continue;
        }
        let mut bits = 0u128;
        for t in index.targets(&keyed) {
            bits |= labels.at(sdg.val_node(p, t));
        }
        v.flowspace = labels.names(bits);
    }
    lap("flowspace", &mut timing);

    // Fig 4.11: variables whose values reach packet or log output.
    for kind in [OutKind::Packet, OutKind::Log] {
        let mut crit: Vec<u32> = Vec::new();
        for (site, kinds) in &facts.outputs {
            if !kinds.contains(&kind) || !pkt_set.contains(site) {
                continue;
            }
            crit.push(*site);
            if let Kind::Call { args, .. } = &p.insts[*site as usize].kind {
                let user_defined = facts.calls.get(site).is_some_and(|t| !t.defined.is_empty());
                for a in args {
                    if let Some(v) = a.val() {
                        crit.push(sdg.val_node(p, v));
                    }
                    if user_defined {
                        for o in pt.reach(&pt.op(a)) {
                            if pt.is_data(o) {
                                crit.push(sdg.obj_node(o));
                            }
                        }
                    }
                }
            }
        }
        if crit.is_empty() {
            continue;
        }
        let back = sdg.backward(&crit, &allowed, false);
        let mut hit: HashSet<usize> = HashSet::new();
        let mut objs_in: HashSet<ObjId> = HashSet::new();
        for n in back.iter() {
            if (n as usize) < sdg.ninst {
                let ins = &p.insts[n as usize];
                // A call into the program is in a slice for running its callee; the arguments
                // that matter are in the slice through their own vertices.
                let into_program = matches!(ins.kind, Kind::Call { .. })
                    && facts
                        .calls
                        .get(&n)
                        .is_some_and(|t| !t.defined.is_empty() && t.external.is_empty());
                if into_program {
                    if let Kind::Call {
                        callee: crate::ir::Callee::Indirect(o),
                        ..
                    } = &ins.kind
                    {
                        if let Some(&vi) = o.val().and_then(|v| var_of_val.get(&v)) {
                            hit.insert(vi);
                        }
                    }
                    continue;
                }
                if let (Kind::Alloca, Some(r)) = (&ins.kind, ins.result) {
                    if let Some(&vi) = var_of_val.get(&r) {
                        hit.insert(vi);
                    }
                }
                let mut used = Vec::new();
                uses_of(n, &mut used);
                hit.extend(used);
            } else if sdg.is_obj(n) {
                objs_in.insert(n - sdg.obj_base);
            }
        }
        for (vi, v) in vars.iter_mut().enumerate() {
            if !v.updateable {
                continue;
            }
            let impacts = hit.contains(&vi) || reach_of[vi].iter().any(|o| objs_in.contains(o));
            if impacts {
                match kind {
                    OutKind::Packet => v.pkt_output = true,
                    OutKind::Log => v.log_output = true,
                }
            }
        }
    }
    lap("output", &mut timing);

    let counts = Counts {
        all: p.di.all_variables(),
        persistent: vars.len(),
        top_level: vars.iter().filter(|v| v.top_level).count(),
        updateable: vars.iter().filter(|v| v.updateable).count(),
        pkt_output: vars.iter().filter(|v| v.pkt_output).count(),
        log_output: vars.iter().filter(|v| v.log_output).count(),
    };
    for w in &facts.recvs {
        if !pkt_set.contains(&w.site) && w.callbacks.is_empty() {
            let f = p.insts[w.site as usize].func;
            if !packet_procs.contains(&f) {
                diags.note(
                    loc_of(p, w.site),
                    "this receive call's packet is never used by the program",
                );
            }
        }
    }
    Ok(Analysis {
        vars,
        packet_procs,
        loop_procs,
        counts,
        pkt_stmts,
        pt,
        facts,
        timing,
    })
}

/// The call graph the analyses walk, with how each edge is entered.
pub struct CallGraph {
    /// Call site -> callees (with the spawn kind for callbacks).
    at: HashMap<InstId, Vec<(FuncId, Option<SpawnKind>)>>,
    /// Callee -> ordinary call sites.
    pub callers: HashMap<FuncId, Vec<InstId>>,
}

impl CallGraph {
    pub fn new(p: &Program, facts: &Facts) -> CallGraph {
        let mut at: HashMap<InstId, Vec<(FuncId, Option<SpawnKind>)>> = HashMap::new();
        let mut callers: HashMap<FuncId, Vec<InstId>> = HashMap::new();
        for (&site, t) in &facts.calls {
            for b in &t.defined {
                let kind = b.spawn.as_ref().map(|(k, _)| *k);
                at.entry(site).or_default().push((b.callee, kind));
                if kind.is_none() || kind == Some(SpawnKind::Sync) {
                    callers.entry(b.callee).or_default().push(site);
                }
            }
        }
        for v in callers.values_mut() {
            v.sort_unstable();
        }
        let _ = p;
        CallGraph { at, callers }
    }

    pub fn callees_at(&self, i: InstId, keep: impl Fn(Option<SpawnKind>) -> bool) -> Vec<FuncId> {
        self.at
            .get(&i)
            .into_iter()
            .flatten()
            .filter(|(_, k)| keep(*k))
            .map(|(f, _)| *f)
            .collect()
    }

    /// Functions reachable from `roots` through calls made by allowed instructions.
    pub fn closure(
        &self,
        p: &Program,
        roots: &[FuncId],
        allowed: &dyn Fn(InstId) -> bool,
        keep: impl Fn(Option<SpawnKind>) -> bool,
    ) -> BTreeSet<FuncId> {
        let mut seen: BTreeSet<FuncId> = BTreeSet::new();
        let mut stack: Vec<FuncId> = roots.to_vec();
        while let Some(f) = stack.pop() {
            if !p.funcs[f as usize].defined || !seen.insert(f) {
                continue;
            }
            for i in p.func_insts(f) {
                if !allowed(i) {
                    continue;
                }
                for g in self.callees_at(i, &keep) {
                    if !seen.contains(&g) {
                        stack.push(g);
                    }
                }
            }
        }
        seen
    }
}

/// Finds the procedure(s) holding the packet loop: the first procedure, walking up from each
/// receive call, in which the call (or the call leading to it) sits inside a loop.
fn find_loop_procs(
    p: &Program,
    facts: &Facts,
    cfgs: &[FuncCfg],
    cg: &CallGraph,
    diags: &mut Diags,
) -> Vec<LoopProc> {
    let mut regions: BTreeMap<FuncId, BTreeSet<InstId>> = BTreeMap::new();
    let loop_of = |i: InstId| -> Option<Vec<InstId>> {
        let ins = &p.insts[i as usize];
        let c = &cfgs[ins.func as usize];
        if !c.in_loop(ins.block) {
            return None;
        }
        let scc = c.scc[ins.block as usize];
        Some(
            c.scc_blocks[scc as usize]
                .iter()
                .flat_map(|&b| {
                    p.funcs[ins.func as usize].blocks[b as usize]
                        .insts
                        .iter()
                        .copied()
                })
                .collect(),
        )
    };
    for r in &facts.recvs {
        let f0 = p.insts[r.site as usize].func;
        if let Some(region) = loop_of(r.site) {
            regions.entry(f0).or_default().extend(region);
            continue;
        }
        if r.kind == crate::externs::Recv::PcapLoop {
            // The loop is inside libpcap; the calling procedure's frame lives for all of it.
            regions.entry(f0).or_default().insert(r.site);
            continue;
        }
        // Walk up the callers.
        let mut found = false;
        let mut seen: HashSet<FuncId> = HashSet::new();
        let mut stack = vec![f0];
        while let Some(f) = stack.pop() {
            if !seen.insert(f) {
                continue;
            }
            for &c in cg.callers.get(&f).into_iter().flatten() {
                let q = p.insts[c as usize].func;
                if let Some(region) = loop_of(c) {
                    regions.entry(q).or_default().extend(region);
                    found = true;
                } else {
                    stack.push(q);
                }
            }
        }
        if !found {
            let is_callback = facts.calls.values().any(|t| {
                t.defined
                    .iter()
                    .any(|b| b.callee == f0 && b.spawn.is_some())
            });
            if is_callback {
                // Called back by a library's event loop: each call handles a packet.
                continue;
            }
            diags.warn(
                loc_of(p, r.site),
                format!(
                    "this receive call is not inside a loop (nor called from one); all of `{}` \
                     is treated as the packet loop",
                    p.funcs[f0 as usize].name
                ),
            );
            regions.entry(f0).or_default().extend(p.func_insts(f0));
        }
    }
    regions
        .into_iter()
        .map(|(func, region)| LoopProc { func, region })
        .collect()
}

fn persistent_vars(p: &Program, pt: &PointsTo, loops: &[LoopProc], _cfgs: &[FuncCfg]) -> Vec<Var> {
    let mut vars = Vec::new();
    let mk = |info: crate::debuginfo::VarInfo,
              storage: Storage,
              objs: Vec<ObjId>,
              ssa: Vec<ValId>| Var {
        shape: p.di.type_shape(info.ty),
        name: info.name,
        function: info.function,
        file: info.file,
        line: info.line,
        storage,
        objs,
        ssa,
        pointees: Vec::new(),
        top_level: false,
        updateable: false,
        flowspace: BTreeSet::new(),
        pkt_output: false,
        log_output: false,
        update_sites: Vec::new(),
        dbg_var: None,
    };
    for (gi, g) in p.globals.iter().enumerate() {
        let Some(&dv) = g.di_vars.first() else {
            continue;
        };
        if !g.defined {
            continue;
        }
        let Some(info) = p.di.var_info(dv) else {
            continue;
        };
        let storage = if info.function.is_some() || info.is_local {
            Storage::Static
        } else {
            Storage::Global
        };
        let objs = pt
            .obj_id(&ObjKind::Global(gi as GlobalId))
            .into_iter()
            .collect();
        vars.push(mk(info, storage, objs, Vec::new()));
    }
    for l in loops {
        let fname = &p.funcs[l.func as usize].name;
        let Some(&sub) = p.di.func_sub.get(fname) else {
            continue;
        };
        // Every local the function declares, whether or not it survived to the IR.
        let mut locals: Vec<u32> =
            p.di.nodes
                .iter()
                .filter(|(_, n)| n.kind == "DILocalVariable")
                .filter(|(_, n)| n.node("scope").and_then(|s| p.di.subprogram_of(s)) == Some(sub))
                .map(|(id, _)| *id)
                .collect();
        locals.sort_unstable();
        let mut objs: HashMap<u32, Vec<ObjId>> = HashMap::new();
        let mut ssa: HashMap<u32, Vec<ValId>> = HashMap::new();
        let mut pointees: HashMap<u32, Vec<ObjId>> = HashMap::new();
        for i in p.func_insts(l.func) {
            if let Kind::Dbg { var, vals, declare } = &p.insts[i as usize].kind {
                for c in vals.iter().filter(|v| matches!(v, Op::Addr(_))) {
                    pointees.entry(*var).or_default().extend(pt.op(c));
                }
                for v in vals.iter().filter_map(Op::val) {
                    if *declare {
                        if let ValDef::Inst(a) = p.vals[v as usize] {
                            if let Some(o) = pt.obj_id(&ObjKind::Alloca(a)) {
                                objs.entry(*var).or_default().push(o);
                            }
                        }
                    } else {
                        ssa.entry(*var).or_default().push(v);
                    }
                }
            }
        }
        for id in locals {
            let Some(info) = p.di.var_info(id) else {
                continue;
            };
            let storage = if info.arg > 0 {
                Storage::LoopParam
            } else {
                Storage::LoopLocal
            };
            let o = objs.remove(&id).unwrap_or_default();
            let s = ssa.remove(&id).unwrap_or_default();
            let mut v = mk(info, storage, o, s);
            v.pointees = pointees.remove(&id).unwrap_or_default();
            v.dbg_var = Some(id);
            vars.push(v);
        }
    }
    vars.sort_by(|a, b| (&a.file, a.line, &a.name).cmp(&(&b.file, b.line, &b.name)));
    vars
}

/// Which header fields flow into each SDG vertex: the value-only chops of Fig 4.10 for all
/// targets at once. Labels start at reads of packet header fields and move forward along value
/// dependences with the two-phase rule (out of callees, then into callees; memory resets),
/// which marks exactly the vertices a backward value-only slice from them would reach.
pub struct FieldLabels {
    names: Vec<String>,
    l1: Vec<u128>,
    l2: Vec<u128>,
}

impl FieldLabels {
    fn at(&self, n: u32) -> u128 {
        self.l1[n as usize] | self.l2[n as usize]
    }

    fn names(&self, bits: u128) -> BTreeSet<String> {
        (0..self.names.len())
            .filter(|i| bits & (1u128 << i) != 0)
            .map(|i| self.names[i].clone())
            .collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn field_labels(
    p: &Program,
    pt: &PointsTo,
    sdg: &Sdg,
    allowed: &Bits,
    fwd: &Bits,
    facts: &Facts,
    ethernet: &HashSet<ObjId>,
    stmts: &[InstId],
) -> FieldLabels {
    let mut names: Vec<String> = Vec::new();
    let mut bit_of = |name: String| -> u128 {
        let i = match names.iter().position(|n| *n == name) {
            Some(i) => i,
            None => {
                // Past 127 distinct names the rest share the last bit.
                if names.len() < 127 {
                    names.push(name);
                    names.len() - 1
                } else {
                    if names.len() == 127 {
                        names.push("(other fields)".into());
                    }
                    127
                }
            }
        };
        1u128 << i
    };
    let mut origins: Vec<(u32, u128)> = Vec::new();
    for &i in stmts {
        let ins = &p.insts[i as usize];
        let (addrs, is_load): (Vec<&Op>, bool) = match &ins.kind {
            Kind::Load { addr } => (vec![addr], true),
            Kind::Call { args, .. } => (args.iter().collect(), false),
            _ => continue,
        };
        let mut bits = 0u128;
        for a in addrs {
            let objs = pt.op(a);
            // Reads that can only be of packet memory are named by any member or offset;
            // reads that may also be of other memory (imprecise pointers, copies of packet
            // data) only by well-known header members.
            let raw = !objs.is_empty() && objs.iter().all(|o| facts.packet_objs.contains(o));
            let copied = !raw
                && objs
                    .iter()
                    .any(|&o| facts.packet_objs.contains(&o) || fwd.get(sdg.obj_node(o)));
            if !raw && !copied {
                continue;
            }
            let eth = is_load && objs.iter().any(|o| ethernet.contains(o));
            if let Some(name) = fields::field_of_address(p, a, eth, copied || !is_load) {
                bits |= bit_of(name);
            }
        }
        if bits != 0 {
            let n = match ins.result {
                Some(r) => sdg.val_node(p, r),
                None => i,
            };
            origins.push((n, bits));
            if n != i {
                origins.push((i, bits));
            }
        }
    }
    // The struct field each load and store accesses, when its address is one GEP with
    // constant indices (`c->src`, `e->key.dst`).
    let mut keys: HashMap<u32, (String, Vec<i64>)> = HashMap::new();
    for (i, ins) in p.insts.iter().enumerate() {
        let addr = match &ins.kind {
            Kind::Load { addr } | Kind::Store { addr, .. } => addr,
            _ => continue,
        };
        let Some(g) = addr.val().and_then(|v| p.inst_of_val(v)) else {
            continue;
        };
        if let Kind::Gep { idx, src_type, .. } = &p.insts[g as usize].kind {
            let consts: Option<Vec<i64>> = idx
                .iter()
                .map(|o| match o {
                    Op::Int(k) => Some(*k),
                    _ => None,
                })
                .collect();
            if let Some(c) = consts {
                if c.len() > 1 && c[0] == 0 {
                    keys.insert(i as u32, (src_type.clone(), c[1..].to_vec()));
                }
            }
        }
    }
    let (l1, l2) = sdg.propagate_values(&origins, allowed, &keys);
    FieldLabels { names, l1, l2 }
}

/// Where flowspace chops end, indexed by the objects they are about: indices of table
/// accesses (`t[i]`, `base + off`) and the lookup conditions of loops that walk a structure
/// (Fig 4.10).
struct FlowIndex {
    /// Object -> index values of accesses into it.
    gep: HashMap<ObjId, Vec<ValId>>,
    /// Object -> loops whose exit condition iterates over it.
    walks: HashMap<ObjId, Vec<usize>>,
    /// Per loop: condition operands, each with the objects that make it "entry side" (the
    /// iterator, or a value read through it).
    loops: Vec<Vec<(ValId, Vec<ObjId>)>>,
}

impl FlowIndex {
    fn build(
        p: &Program,
        pt: &PointsTo,
        stmts: &[InstId],
        loops: &HashMap<FuncId, Vec<cfg::Loop>>,
        cfgs: &[FuncCfg],
        allowed: &dyn Fn(InstId) -> bool,
    ) -> FlowIndex {
        let mut gep: HashMap<ObjId, Vec<ValId>> = HashMap::new();
        for &i in stmts {
            if let Kind::Gep { base, idx, .. } = &p.insts[i as usize].kind {
                let vars: Vec<ValId> = idx.iter().filter_map(Op::val).collect();
                if vars.is_empty() {
                    continue;
                }
                for o in pt.op(base) {
                    gep.entry(o).or_default().extend(vars.iter().copied());
                }
            }
        }
        // Strips casts.
        let root = |mut v: ValId| -> ValId {
            for _ in 0..16 {
                match p.inst_of_val(v).map(|i| &p.insts[i as usize].kind) {
                    Some(Kind::Compute { ops }) if ops.len() == 1 => match ops[0].val() {
                        Some(w) => v = w,
                        None => break,
                    },
                    _ => break,
                }
            }
            v
        };
        // The objects through which an operand is "entry side": what the value points to,
        // or what it was loaded from.
        let entry_objs = |v: ValId| -> Vec<ObjId> {
            let r = root(v);
            let mut o = pt.val(r).to_vec();
            if let Some(Kind::Load { addr }) = p.inst_of_val(r).map(|i| &p.insts[i as usize].kind) {
                o.extend(pt.op(addr));
            }
            o
        };
        let mut walks: HashMap<ObjId, Vec<usize>> = HashMap::new();
        let mut all_loops: Vec<Vec<(ValId, Vec<ObjId>)>> = Vec::new();
        for (fid, ls) in loops {
            let f = &p.funcs[*fid as usize];
            let fc = &cfgs[*fid as usize];
            // Blocks from which execution goes on (returns, or keeps looping), unlike the dead
            // ends that lead to abort() or exit().
            let mut live = vec![false; f.blocks.len()];
            let mut stack: Vec<u32> = Vec::new();
            for (bi, b) in f.blocks.iter().enumerate() {
                let t = b.insts.last().map(|&t| &p.insts[t as usize].kind);
                if matches!(t, Some(Kind::Ret { .. })) || fc.in_loop(bi as u32) {
                    live[bi] = true;
                    stack.push(bi as u32);
                }
            }
            while let Some(b) = stack.pop() {
                for &q in &f.blocks[b as usize].preds {
                    if !live[q as usize] {
                        live[q as usize] = true;
                        stack.push(q);
                    }
                }
            }
            for l in ls {
                let body: HashSet<u32> = l.blocks.iter().copied().collect();
                let conds: Vec<(InstId, &Op)> = l
                    .blocks
                    .iter()
                    .filter_map(|&b| {
                        let t = *f.blocks[b as usize].insts.last()?;
                        match &p.insts[t as usize].kind {
                            Kind::CondBr { cond } | Kind::Switch { cond } => Some((t, cond)),
                            _ => None,
                        }
                    })
                    .filter(|(t, _)| allowed(*t))
                    .collect();
                let operands = |c: &Op| -> Vec<ValId> { cond_operands(p, c, 4) };
                let id = all_loops.len();
                let mut ops_here: Vec<(ValId, Vec<ObjId>)> = Vec::new();
                for (t, c) in &conds {
                    let blk = p.insts[*t as usize].block;
                    let exits = f.blocks[blk as usize]
                        .succs
                        .iter()
                        .any(|s| !body.contains(s) && live[*s as usize]);
                    for v in operands(c) {
                        if exits {
                            // A loop-carried pointer, or a value read from the structure.
                            let r = root(v);
                            let iter_objs: Vec<ObjId> =
                                match p.inst_of_val(r).map(|i| &p.insts[i as usize]) {
                                    Some(ins) => match &ins.kind {
                                        Kind::Phi { .. } if body.contains(&ins.block) => {
                                            pt.val(r).to_vec()
                                        }
                                        Kind::Load { addr } => pt.op(addr),
                                        _ => vec![],
                                    },
                                    None => vec![],
                                };
                            for o in iter_objs {
                                let w = walks.entry(o).or_default();
                                if w.last() != Some(&id) {
                                    w.push(id);
                                }
                            }
                        }
                        ops_here.push((v, entry_objs(v)));
                    }
                }
                all_loops.push(ops_here);
            }
        }
        FlowIndex {
            gep,
            walks,
            loops: all_loops,
        }
    }

    /// The chop targets for a variable whose state lives in `keyed`.
    fn targets(&self, keyed: &HashSet<ObjId>) -> Vec<ValId> {
        let mut t: Vec<ValId> = Vec::new();
        let mut loops: BTreeSet<usize> = BTreeSet::new();
        for o in keyed {
            if let Some(v) = self.gep.get(o) {
                t.extend(v.iter().copied());
            }
            if let Some(ls) = self.walks.get(o) {
                loops.extend(ls.iter().copied());
            }
        }
        for l in loops {
            for (v, objs) in &self.loops[l] {
                if !objs.iter().any(|o| keyed.contains(o)) {
                    t.push(*v);
                }
            }
        }
        t.sort_unstable();
        t.dedup();
        t
    }
}

/// The compared values behind a branch condition, looking through the boolean phis and
/// `and`/`or` that `&&`, `||` and `!` compile to.
fn cond_operands(p: &Program, c: &Op, depth: u32) -> Vec<ValId> {
    let Some(v) = c.val() else { return vec![] };
    if depth == 0 {
        return vec![v];
    }
    match p.inst_of_val(v).map(|i| &p.insts[i as usize].kind) {
        Some(Kind::Cmp { a, b }) => [a, b].into_iter().filter_map(Op::val).collect(),
        Some(Kind::Phi { incoming }) if p.narrow[v as usize] => incoming
            .iter()
            .flat_map(|(o, _)| cond_operands(p, o, depth - 1))
            .collect(),
        Some(Kind::Compute { ops }) if p.narrow[v as usize] && ops.len() <= 2 => ops
            .iter()
            .flat_map(|o| cond_operands(p, o, depth - 1))
            .collect(),
        _ => vec![v],
    }
}
