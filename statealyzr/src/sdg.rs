//! The system dependence graph and slicing over it.
//!
//! Vertices: one per instruction, one per call result (the actual-out), one per parameter
//! (formal-in), an entry and a return (formal-out) per function, one per abstract memory object,
//! and one "source" per receive call standing for the packet it delivers.
//!
//! Dependences through registers are exact (SSA). Dependences through memory go through the
//! object vertices: a write to an object reaches every read of it. Object vertices belong to no
//! calling context, so slices that pass through memory may return to any caller; everything
//! else is sliced context-sensitively with summary edges (the two-phase algorithm of Horwitz,
//! Reps and Binkley).

use std::collections::HashMap;

use crate::cfg::FuncCfg;
use crate::externs::ParamSrc;
use crate::facts::Facts;
use crate::ir::{Callee, FuncId, InstId, Kind, Op, Program, ValDef, ValId};
use crate::pointsto::{ObjId, PointsTo};

pub const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Ek {
    /// A value computed from another value.
    Data = 0,
    /// The address an access uses (kept apart so value-only chops can skip it).
    Addr = 1,
    Control = 2,
    /// Call site -> callee entry.
    Call = 3,
    /// Actual argument -> formal parameter.
    ParamIn = 4,
    /// Callee return -> call result.
    ParamOut = 5,
    /// Argument -> call result, when the callee's return depends on that parameter.
    Summary = 6,
    MemWrite = 7,
    MemRead = 8,
}

/// A fixed-size set of vertices.
#[derive(Clone, Debug)]
pub struct Bits(Vec<u64>);

impl Bits {
    pub fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    pub fn get(&self, i: u32) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Sets the bit; returns whether it was clear.
    pub fn set(&mut self, i: u32) -> bool {
        let w = &mut self.0[(i / 64) as usize];
        let m = 1 << (i % 64);
        let was = *w & m == 0;
        *w |= m;
        was
    }
    pub fn union(&mut self, o: &Bits) {
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a |= *b;
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let t = w.trailing_zeros();
                w &= w - 1;
                Some(wi as u32 * 64 + t)
            })
        })
    }
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

struct Csr {
    off: Vec<u32>,
    to: Vec<u32>,
    kind: Vec<u8>,
}

impl Csr {
    fn build(n: usize, edges: &[(u32, u32, Ek)], reverse: bool) -> Csr {
        let mut off = vec![0u32; n + 1];
        for &(a, b, _) in edges {
            let s = if reverse { b } else { a };
            off[s as usize + 1] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        let mut pos = off.clone();
        let mut to = vec![0u32; edges.len()];
        let mut kind = vec![0u8; edges.len()];
        for &(a, b, k) in edges {
            let (s, t) = if reverse { (b, a) } else { (a, b) };
            let p = &mut pos[s as usize];
            to[*p as usize] = t;
            kind[*p as usize] = k as u8;
            *p += 1;
        }
        Csr { off, to, kind }
    }
    fn adj(&self, v: u32) -> impl Iterator<Item = (u32, u8)> + '_ {
        let (a, b) = (
            self.off[v as usize] as usize,
            self.off[v as usize + 1] as usize,
        );
        self.to[a..b]
            .iter()
            .copied()
            .zip(self.kind[a..b].iter().copied())
    }
}

pub struct Sdg {
    pub n: usize,
    pub ninst: usize,
    pub res_node: Vec<u32>,
    /// Parameter vertex of each argument value (`NONE` for other values).
    pub param_node: HashMap<ValId, u32>,
    pub entry: Vec<u32>,
    pub ret: Vec<u32>,
    pub va: Vec<u32>,
    pub obj_base: u32,
    /// Source vertex of each receive site, in `Facts::recvs` order.
    pub sources: Vec<u32>,
    /// The function a vertex belongs to (`NONE` for objects and sources).
    pub node_func: Vec<u32>,
    /// The instruction a vertex stands for (instructions and call results).
    pub node_inst: Vec<u32>,
    pub edges: usize,
    fwd: Csr,
    bwd: Csr,
}

impl Sdg {
    pub fn val_node(&self, p: &Program, v: ValId) -> u32 {
        match p.vals[v as usize] {
            ValDef::Arg { .. } => self.param_node[&v],
            ValDef::Inst(i) => {
                let r = self.res_node[i as usize];
                if r != NONE {
                    r
                } else {
                    i
                }
            }
        }
    }

    pub fn obj_node(&self, o: ObjId) -> u32 {
        self.obj_base + o
    }

    pub fn is_obj(&self, n: u32) -> bool {
        n >= self.obj_base && (n as usize) < self.sources.first().map_or(self.n, |&s| s as usize)
    }

    pub fn build(p: &Program, pt: &PointsTo, facts: &Facts, cfgs: &[FuncCfg]) -> Sdg {
        let ninst = p.insts.len();
        let mut node_func: Vec<u32> = p.insts.iter().map(|i| i.func).collect();
        let mut node_inst: Vec<u32> = (0..ninst as u32).collect();
        let new_node = |f: u32, inst: u32, nf: &mut Vec<u32>, ni: &mut Vec<u32>| {
            let id = nf.len() as u32;
            nf.push(f);
            ni.push(inst);
            id
        };
        let mut res_node = vec![NONE; ninst];
        for (i, ins) in p.insts.iter().enumerate() {
            if let (Kind::Call { .. }, Some(_)) = (&ins.kind, ins.result) {
                res_node[i] = new_node(ins.func, i as u32, &mut node_func, &mut node_inst);
            }
        }
        let mut param_node = HashMap::new();
        let mut entry = Vec::new();
        let mut ret = Vec::new();
        let mut va = Vec::new();
        for (fi, f) in p.funcs.iter().enumerate() {
            let fi = fi as u32;
            entry.push(new_node(fi, NONE, &mut node_func, &mut node_inst));
            ret.push(new_node(fi, NONE, &mut node_func, &mut node_inst));
            va.push(new_node(fi, NONE, &mut node_func, &mut node_inst));
            for &prm in &f.params {
                param_node.insert(prm, new_node(fi, NONE, &mut node_func, &mut node_inst));
            }
        }
        let obj_base = node_func.len() as u32;
        for _ in 0..pt.objs.len() {
            new_node(NONE, NONE, &mut node_func, &mut node_inst);
        }
        let mut sources = Vec::new();
        for r in &facts.recvs {
            sources.push(new_node(NONE, r.site, &mut node_func, &mut node_inst));
        }
        let mut g = Sdg {
            n: node_func.len(),
            ninst,
            res_node,
            param_node,
            entry,
            ret,
            va,
            obj_base,
            sources,
            node_func,
            node_inst,
            edges: 0,
            fwd: Csr::build(0, &[], false),
            bwd: Csr::build(0, &[], true),
        };
        let mut edges: Vec<(u32, u32, Ek)> = Vec::new();
        // Call sites with their argument vertices, for summary edges.
        let mut normal_calls: Vec<(InstId, FuncId)> = Vec::new();
        for (fi, f) in p.funcs.iter().enumerate() {
            if !f.defined {
                continue;
            }
            g.build_function(
                p,
                pt,
                facts,
                &cfgs[fi],
                fi as FuncId,
                &mut edges,
                &mut normal_calls,
            );
        }
        for (ri, r) in facts.recvs.iter().enumerate() {
            let s = g.sources[ri];
            for &o in &r.writes {
                edges.push((s, g.obj_node(o), Ek::MemWrite));
            }
            if r.result && g.res_node[r.site as usize] != NONE {
                edges.push((s, g.res_node[r.site as usize], Ek::Data));
            }
            for &cb in &r.callbacks {
                edges.push((s, g.entry[cb as usize], Ek::Control));
                for (k, &prm) in p.funcs[cb as usize].params.iter().enumerate() {
                    if k >= 1 {
                        edges.push((s, g.param_node[&prm], Ek::Data));
                    }
                }
            }
        }
        g.add_summaries(p, &mut edges, &normal_calls);
        g.edges = edges.len();
        g.fwd = Csr::build(g.n, &edges, false);
        g.bwd = Csr::build(g.n, &edges, true);
        g
    }

    fn op_node(&self, p: &Program, o: &Op) -> Option<u32> {
        o.val().map(|v| self.val_node(p, v))
    }

    #[allow(clippy::too_many_arguments)]
    fn build_function(
        &self,
        p: &Program,
        pt: &PointsTo,
        facts: &Facts,
        cfg: &FuncCfg,
        fi: FuncId,
        edges: &mut Vec<(u32, u32, Ek)>,
        normal_calls: &mut Vec<(InstId, FuncId)>,
    ) {
        let f = &p.funcs[fi as usize];
        let entry = self.entry[fi as usize];
        for &prm in &f.params {
            edges.push((entry, self.param_node[&prm], Ek::Control));
        }
        let term = |b: u32| *f.blocks[b as usize].insts.last().unwrap_or(&0);
        for (bi, b) in f.blocks.iter().enumerate() {
            let controllers: Vec<u32> = if cfg.cd.get(bi).is_some_and(|c| !c.is_empty()) {
                cfg.cd[bi].iter().map(|&a| term(a)).collect()
            } else {
                vec![entry]
            };
            for &i in &b.insts {
                let ins = &p.insts[i as usize];
                if matches!(ins.kind, Kind::Dbg { .. }) {
                    continue;
                }
                for &c in &controllers {
                    edges.push((c, i, Ek::Control));
                }
                let dep = |o: &Op, k: Ek, edges: &mut Vec<(u32, u32, Ek)>| {
                    if let Some(n) = self.op_node(p, o) {
                        edges.push((n, i, k));
                    }
                };
                let mem = |edges: &mut Vec<(u32, u32, Ek)>| {
                    let (r, w) = facts.effects(p, pt, i);
                    for o in r {
                        edges.push((self.obj_node(o), i, Ek::MemRead));
                    }
                    for o in w {
                        edges.push((i, self.obj_node(o), Ek::MemWrite));
                    }
                };
                match &ins.kind {
                    Kind::Load { addr } | Kind::VaArg { list: addr } => {
                        dep(addr, Ek::Addr, edges);
                        mem(edges);
                    }
                    Kind::Store { val, addr } => {
                        dep(val, Ek::Data, edges);
                        dep(addr, Ek::Addr, edges);
                        mem(edges);
                    }
                    Kind::AtomicRmw { addr, val } => {
                        dep(val, Ek::Data, edges);
                        dep(addr, Ek::Addr, edges);
                        mem(edges);
                    }
                    Kind::CmpXchg { addr, cmp, new } => {
                        dep(cmp, Ek::Data, edges);
                        dep(new, Ek::Data, edges);
                        dep(addr, Ek::Addr, edges);
                        mem(edges);
                    }
                    Kind::Phi { incoming } => {
                        for (o, pb) in incoming {
                            dep(o, Ek::Data, edges);
                            let pblk = &f.blocks[*pb as usize];
                            if pblk.succs.len() > 1 {
                                edges.push((term(*pb), i, Ek::Control));
                            }
                            for &a in cfg.cd.get(*pb as usize).into_iter().flatten() {
                                edges.push((term(a), i, Ek::Control));
                            }
                        }
                    }
                    Kind::Select { cond, a, b } => {
                        dep(cond, Ek::Control, edges);
                        dep(a, Ek::Data, edges);
                        dep(b, Ek::Data, edges);
                    }
                    Kind::Ret { val } => {
                        if let Some(v) = val {
                            dep(v, Ek::Data, edges);
                        }
                        edges.push((i, self.ret[fi as usize], Ek::Data));
                    }
                    Kind::Call { callee, args } => {
                        if let Callee::Indirect(o) = callee {
                            dep(o, Ek::Data, edges);
                        }
                        let res = self.res_node[i as usize];
                        let t = facts.calls.get(&i);
                        let unresolved =
                            t.is_none_or(|t| t.defined.is_empty() && t.external.is_empty());
                        let mut any_ext = matches!(callee, Callee::Asm) || unresolved;
                        if let Some(t) = t {
                            for (_, m) in &t.external {
                                any_ext = true;
                                for (k, a) in args.iter().enumerate() {
                                    // An argument whose pointees the call reads or writes is an
                                    // address; anything else (ntohs(x), abs(x)) is a value.
                                    let is_ptr = !pt.op(a).is_empty();
                                    let kind = if m.known
                                        && is_ptr
                                        && (m.reads.contains(k) || m.writes.contains(k))
                                    {
                                        Ek::Addr
                                    } else {
                                        Ek::Data
                                    };
                                    dep(a, kind, edges);
                                }
                                if m.va_start {
                                    edges.push((self.va[fi as usize], i, Ek::Data));
                                }
                            }
                            for bnd in &t.defined {
                                let gf = bnd.callee;
                                let gparams = &p.funcs[gf as usize].params;
                                edges.push((i, self.entry[gf as usize], Ek::Call));
                                match &bnd.spawn {
                                    None => {
                                        normal_calls.push((i, gf));
                                        for (k, a) in args.iter().enumerate() {
                                            if let Some(an) = self.op_node(p, a) {
                                                let to = match gparams.get(k) {
                                                    Some(prm) => self.param_node[prm],
                                                    None => self.va[gf as usize],
                                                };
                                                edges.push((an, to, Ek::ParamIn));
                                            }
                                        }
                                        if res != NONE {
                                            edges.push((self.ret[gf as usize], res, Ek::ParamOut));
                                        }
                                    }
                                    Some((_, srcs)) => {
                                        for (k, s) in srcs.iter().enumerate() {
                                            if let (ParamSrc::Arg(j), Some(prm)) =
                                                (s, gparams.get(k))
                                            {
                                                if let Some(an) = args
                                                    .get(*j as usize)
                                                    .and_then(|a| self.op_node(p, a))
                                                {
                                                    edges.push((
                                                        an,
                                                        self.param_node[prm],
                                                        Ek::ParamIn,
                                                    ));
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        if matches!(callee, Callee::Asm) || unresolved {
                            for a in args {
                                dep(a, Ek::Data, edges);
                            }
                        }
                        if any_ext {
                            mem(edges);
                            if res != NONE {
                                edges.push((i, res, Ek::Data));
                            }
                        }
                        if res != NONE {
                            edges.push((i, res, Ek::Control));
                        }
                    }
                    other => {
                        for o in Program::operands(other) {
                            dep(o, Ek::Data, edges);
                        }
                    }
                }
            }
        }
    }

    /// Adds an edge from each argument to the call's result when the callee's return value
    /// depends on that parameter without going through memory (memory is context-free anyway).
    fn add_summaries(
        &self,
        p: &Program,
        edges: &mut Vec<(u32, u32, Ek)>,
        normal_calls: &[(InstId, FuncId)],
    ) {
        let intra: Vec<(u32, u32, Ek)> = edges
            .iter()
            .copied()
            .filter(|&(a, b, k)| {
                matches!(k, Ek::Data | Ek::Addr | Ek::Control)
                    && self.node_func.get(a as usize) == self.node_func.get(b as usize)
                    && self.node_func[a as usize] != NONE
            })
            .collect();
        let csr = Csr::build(self.n, &intra, false);
        let nf = p.funcs.len();
        let mut callers: Vec<Vec<InstId>> = vec![Vec::new(); nf];
        let mut callees: Vec<Vec<usize>> = vec![Vec::new(); nf];
        for &(site, g) in normal_calls {
            callers[g as usize].push(site);
            let f = p.insts[site as usize].func as usize;
            callees[f].push(g as usize);
        }
        let (_, comps) = crate::cfg::sccs(nf, &|f| callees[f].clone());
        let mut summ: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut has: Vec<Vec<bool>> = p
            .funcs
            .iter()
            .map(|f| vec![false; f.params.len()])
            .collect();
        let mut seen = Bits::new(self.n);
        let mut touched: Vec<u32> = Vec::new();
        for comp in comps {
            loop {
                let mut changed = false;
                for &fi in &comp {
                    let f = &p.funcs[fi];
                    if !f.defined {
                        continue;
                    }
                    for (k, prm) in f.params.iter().enumerate() {
                        if has[fi][k] {
                            continue;
                        }
                        let start = self.param_node[prm];
                        let target = self.ret[fi];
                        let mut stack = vec![start];
                        seen.set(start);
                        touched.push(start);
                        let mut found = false;
                        while let Some(v) = stack.pop() {
                            if v == target {
                                found = true;
                                break;
                            }
                            let next = csr
                                .adj(v)
                                .map(|(t, _)| t)
                                .chain(summ.get(&v).into_iter().flatten().copied());
                            for t in next.collect::<Vec<_>>() {
                                if seen.set(t) {
                                    touched.push(t);
                                    stack.push(t);
                                }
                            }
                        }
                        for t in touched.drain(..) {
                            seen.0[(t / 64) as usize] &= !(1 << (t % 64));
                        }
                        if found {
                            has[fi][k] = true;
                            changed = true;
                            for &site in &callers[fi] {
                                let res = self.res_node[site as usize];
                                if res == NONE {
                                    continue;
                                }
                                if let Kind::Call { args, .. } = &p.insts[site as usize].kind {
                                    if let Some(an) = args.get(k).and_then(|a| self.op_node(p, a)) {
                                        summ.entry(an).or_default().push(res);
                                        edges.push((an, res, Ek::Summary));
                                    }
                                }
                            }
                        }
                    }
                }
                if !changed || comp.len() == 1 && !callees[comp[0]].contains(&comp[0]) {
                    break;
                }
            }
        }
    }

    /// Forward slice from `criteria`, restricted to `allowed` vertices.
    pub fn forward(&self, criteria: &[u32], allowed: &Bits) -> Bits {
        self.slice(criteria, allowed, true, false)
    }

    /// Backward slice; `value_only` follows only how values flow (no control or address
    /// dependences), which is what a flowspace chop needs.
    pub fn backward(&self, criteria: &[u32], allowed: &Bits, value_only: bool) -> Bits {
        self.slice(criteria, allowed, false, value_only)
    }

    fn slice(&self, criteria: &[u32], allowed: &Bits, forward: bool, value_only: bool) -> Bits {
        let mut v1 = Bits::new(self.n);
        let mut v2 = Bits::new(self.n);
        let mut wl1: Vec<u32> = Vec::new();
        let mut wl2: Vec<u32> = Vec::new();
        for &c in criteria {
            if v1.set(c) {
                wl1.push(c);
            }
        }
        let csr = if forward { &self.fwd } else { &self.bwd };
        // Edges that change calling context: entering a callee and leaving to a caller.
        let (descend, ascend): (&[u8], &[u8]) = if forward {
            (&[Ek::ParamIn as u8, Ek::Call as u8], &[Ek::ParamOut as u8])
        } else {
            (&[Ek::ParamOut as u8], &[Ek::ParamIn as u8, Ek::Call as u8])
        };
        let skip = |k: u8| {
            value_only && (k == Ek::Control as u8 || k == Ek::Addr as u8 || k == Ek::Call as u8)
        };
        loop {
            if let Some(v) = wl1.pop() {
                for (t, k) in csr.adj(v) {
                    if skip(k) || !allowed.get(t) {
                        continue;
                    }
                    if descend.contains(&k) && !self.is_obj(t) {
                        if !v1.get(t) && v2.set(t) {
                            wl2.push(t);
                        }
                    } else if v1.set(t) {
                        wl1.push(t);
                    }
                }
            } else if let Some(v) = wl2.pop() {
                if v1.get(v) {
                    continue;
                }
                for (t, k) in csr.adj(v) {
                    if skip(k) || !allowed.get(t) || ascend.contains(&k) {
                        continue;
                    }
                    if self.is_obj(t) {
                        // Memory belongs to no context: what reads it may return anywhere.
                        if v1.set(t) {
                            wl1.push(t);
                        }
                    } else if !v1.get(t) && v2.set(t) {
                        wl2.push(t);
                    }
                }
            } else {
                break;
            }
        }
        v1.union(&v2);
        v1
    }
}

impl Sdg {
    /// Forward propagation of label bits along value dependences (data, summary, parameters,
    /// memory), with the two-phase rule of `slice`. Returns the phase-1 and phase-2 labels of
    /// every vertex.
    /// `keys` gives, for loads and stores, the struct field they access (absent: unknown or
    /// not a single field): through memory, a label written to one field only reaches reads of
    /// fields it may overlap (same struct type and one field path a prefix of the other, or
    /// different types, or unknown).
    pub fn propagate_values(
        &self,
        origins: &[(u32, u128)],
        allowed: &Bits,
        keys: &HashMap<u32, (String, Vec<i64>)>,
    ) -> (Vec<u128>, Vec<u128>) {
        type Key<'k> = Option<&'k (String, Vec<i64>)>;
        let compatible = |a: Key, b: Key| match (a, b) {
            (Some((ta, pa)), Some((tb, pb))) => {
                ta != tb || pa.iter().zip(pb.iter()).all(|(x, y)| x == y)
            }
            _ => true,
        };
        // Labels held by each object, per writer key.
        let mut obj_labels: HashMap<u32, Vec<(Key, u128)>> = HashMap::new();
        let mut l1 = vec![0u128; self.n];
        let mut l2 = vec![0u128; self.n];
        let mut wl: Vec<(u32, bool)> = Vec::new();
        for &(n, b) in origins {
            if l1[n as usize] | b != l1[n as usize] {
                l1[n as usize] |= b;
                wl.push((n, true));
            }
        }
        let value = |k: u8| {
            k == Ek::Data as u8
                || k == Ek::Summary as u8
                || k == Ek::ParamIn as u8
                || k == Ek::ParamOut as u8
                || k == Ek::MemWrite as u8
                || k == Ek::MemRead as u8
        };
        while let Some((v, phase1)) = wl.pop() {
            let bits = if phase1 {
                l1[v as usize]
            } else {
                l2[v as usize]
            };
            let from_obj = self.is_obj(v);
            for (t, k) in self.fwd.adj(v) {
                if !value(k) || !allowed.get(t) {
                    continue;
                }
                if k == Ek::MemWrite as u8 && self.is_obj(t) {
                    // Remember under which field the labels were written.
                    let key = keys.get(&v);
                    let e = obj_labels.entry(t).or_default();
                    let grew = match e.iter_mut().find(|(kk, _)| *kk == key) {
                        Some((_, b)) => {
                            let old = *b;
                            *b |= bits;
                            *b != old
                        }
                        None => {
                            e.push((key, bits));
                            true
                        }
                    };
                    if grew {
                        l1[t as usize] |= bits;
                        wl.push((t, true));
                    }
                    continue;
                }
                let bits = if from_obj && k == Ek::MemRead as u8 {
                    let key = keys.get(&t);
                    obj_labels
                        .get(&v)
                        .map(|e| {
                            e.iter()
                                .filter(|(kk, _)| compatible(*kk, key))
                                .fold(0u128, |acc, (_, b)| acc | b)
                        })
                        .unwrap_or(bits)
                } else {
                    bits
                };
                if bits == 0 {
                    continue;
                }
                let to_phase1 = if self.is_obj(t) {
                    true
                } else if k == Ek::ParamIn as u8 {
                    false
                } else if k == Ek::ParamOut as u8 {
                    if !phase1 {
                        continue;
                    }
                    true
                } else {
                    phase1
                };
                let slot = if to_phase1 {
                    &mut l1[t as usize]
                } else {
                    &mut l2[t as usize]
                };
                if *slot | bits != *slot {
                    *slot |= bits;
                    wl.push((t, to_phase1));
                }
            }
        }
        (l1, l2)
    }
}
