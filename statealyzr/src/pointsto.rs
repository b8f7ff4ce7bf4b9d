//! Andersen's inclusion-based pointer analysis: flow-, context- and field-insensitive, with the
//! call graph resolved on the fly as function objects reach the callee of an indirect call.
//!
//! Every SSA value is a node (integers too: C code moves pointers through integers, and the
//! socket/file descriptor tokens ride on the same propagation). Each abstract object (global,
//! function, stack slot, heap allocation site, library memory, received packet) has one
//! `content` node standing for everything stored in it.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::externs::{self, ParamSrc, RetKind, SpawnKind, Stored};
use crate::ir::{Callee, FuncId, GlobalId, InstId, Kind, Op, Program, Ref, ValId};

pub type NodeId = u32;
pub type ObjId = u32;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjKind {
    Global(GlobalId),
    Func(FuncId),
    Alloca(InstId),
    /// Allocated at this call site.
    Heap(InstId),
    /// Memory owned by a library, per function name (getenv's buffer, errno, ...).
    Library(String),
    /// The packet a receive call at this site delivers.
    Packet(InstId),
    /// The capture header (`struct pcap_pkthdr`) delivered with it.
    PktHdr(InstId),
    /// A descriptor produced at this site: socket or file.
    Fd {
        socket: bool,
        site: InstId,
    },
}

#[derive(Debug, Clone)]
pub struct Obj {
    pub kind: ObjKind,
    pub content: NodeId,
}

/// How a resolved callee is entered from a call site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub callee: FuncId,
    /// `None` for an ordinary call (parameter i gets argument i, the result gets the return
    /// value); `Some` for a function pointer a library function will invoke.
    pub spawn: Option<(SpawnKind, Vec<ParamSrc>)>,
}

/// Knobs that change what external calls are assumed to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra receive functions (`--recv-fn`).
    pub recv_fns: HashSet<String>,
    /// Unknown functions the user declares pure (`--pure-fn`).
    pub pure_fns: HashSet<String>,
}

/// A load of a constant field path from what `base` points to: precise for constant objects.
struct FieldLoad {
    path: Vec<Op>,
    src_type: String,
    dst: NodeId,
}

struct CallCons {
    site: InstId,
    args: Vec<Vec<NodeId>>,
    result: Option<NodeId>,
    spawn: Option<(SpawnKind, Vec<ParamSrc>)>,
}

pub struct PointsTo {
    pts: Vec<Vec<u32>>,
    rep: Vec<NodeId>,
    pub objs: Vec<Obj>,
    obj_index: HashMap<ObjKind, ObjId>,
    pub func_ret: Vec<NodeId>,
    pub func_va: Vec<NodeId>,
    pub bindings: HashMap<InstId, Vec<Binding>>,
    /// Functions without a body an (indirect) call site may reach.
    pub ext_targets: HashMap<InstId, Vec<FuncId>>,
    /// Unknown external functions that were modelled conservatively.
    pub unknown_externs: Vec<FuncId>,
    /// Calls into code nobody can see: inline assembly, function pointers from outside.
    pub opaque_sites: HashSet<InstId>,
    pub nodes: usize,
    pub collapsed: usize,
}

struct Solver<'p> {
    p: &'p Program,
    opts: &'p Options,
    pts: Vec<Vec<u32>>,
    prev: Vec<Vec<u32>>,
    succ: Vec<Vec<NodeId>>,
    loads: Vec<Vec<NodeId>>,
    stores: Vec<Vec<NodeId>>,
    calls: Vec<Vec<u32>>,
    field_loads: Vec<Vec<u32>>,
    fl: Vec<FieldLoad>,
    rep: Vec<NodeId>,
    /// Nodes that only keep descriptor tokens (narrow integers and floats).
    narrow: Vec<bool>,
    edges: HashSet<u64>,
    wl: VecDeque<NodeId>,
    in_wl: Vec<bool>,
    objs: Vec<Obj>,
    obj_index: HashMap<ObjKind, ObjId>,
    addr_node: HashMap<ObjId, NodeId>,
    func_ret: Vec<NodeId>,
    func_va: Vec<NodeId>,
    cons: Vec<CallCons>,
    bound: HashSet<(InstId, FuncId, bool)>,
    bindings: HashMap<InstId, Vec<Binding>>,
    ext_targets: HashMap<InstId, Vec<FuncId>>,
    modelled: HashSet<(InstId, FuncId)>,
    unknown: HashSet<FuncId>,
    opaque_sites: HashSet<InstId>,
    edges_since_collapse: usize,
    collapsed: usize,
}

/// Merges sorted `src` into sorted `dst`; returns whether `dst` grew.
fn union_into(dst: &mut Vec<u32>, src: &[u32]) -> bool {
    if src.is_empty() {
        return false;
    }
    if dst.is_empty() {
        dst.extend_from_slice(src);
        return true;
    }
    if src.len() == 1 {
        return match dst.binary_search(&src[0]) {
            Ok(_) => false,
            Err(i) => {
                dst.insert(i, src[0]);
                true
            }
        };
    }
    let mut out = Vec::with_capacity(dst.len() + src.len());
    let (mut i, mut j) = (0, 0);
    let mut grew = false;
    while i < dst.len() && j < src.len() {
        match dst[i].cmp(&src[j]) {
            std::cmp::Ordering::Less => {
                out.push(dst[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(src[j]);
                j += 1;
                grew = true;
            }
            std::cmp::Ordering::Equal => {
                out.push(dst[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&dst[i..]);
    if j < src.len() {
        grew = true;
        out.extend_from_slice(&src[j..]);
    }
    if grew {
        *dst = out;
    }
    grew
}

fn difference(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

fn intersection(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            out.push(x);
        }
    }
    out
}

impl<'p> Solver<'p> {
    fn new_node(&mut self) -> NodeId {
        let n = self.pts.len() as NodeId;
        self.pts.push(Vec::new());
        self.prev.push(Vec::new());
        self.succ.push(Vec::new());
        self.loads.push(Vec::new());
        self.stores.push(Vec::new());
        self.calls.push(Vec::new());
        self.field_loads.push(Vec::new());
        self.narrow.push(false);
        self.rep.push(n);
        self.in_wl.push(false);
        n
    }

    fn find(&mut self, mut n: NodeId) -> NodeId {
        let mut root = n;
        while self.rep[root as usize] != root {
            root = self.rep[root as usize];
        }
        while self.rep[n as usize] != root {
            let next = self.rep[n as usize];
            self.rep[n as usize] = root;
            n = next;
        }
        root
    }

    fn push(&mut self, n: NodeId) {
        if !self.in_wl[n as usize] {
            self.in_wl[n as usize] = true;
            self.wl.push_back(n);
        }
    }

    fn obj(&mut self, kind: ObjKind) -> ObjId {
        if let Some(o) = self.obj_index.get(&kind) {
            return *o;
        }
        let content = self.new_node();
        let id = self.objs.len() as ObjId;
        if let ObjKind::Library(_) = kind {
            // Library memory may hold pointers to more library memory.
            self.pts[content as usize].push(id);
            self.push(content);
        }
        self.objs.push(Obj {
            kind: kind.clone(),
            content,
        });
        self.obj_index.insert(kind, id);
        id
    }

    /// A node whose points-to set is exactly `{o}`.
    fn addr(&mut self, o: ObjId) -> NodeId {
        if let Some(n) = self.addr_node.get(&o) {
            return *n;
        }
        let n = self.new_node();
        self.pts[n as usize].push(o);
        self.push(n);
        self.addr_node.insert(o, n);
        n
    }

    fn ref_obj(&mut self, r: Ref) -> ObjId {
        match r {
            Ref::Global(g) => self.obj(ObjKind::Global(g)),
            Ref::Func(f) => self.obj(ObjKind::Func(f)),
        }
    }

    fn nodes(&mut self, op: &Op) -> Vec<NodeId> {
        match op {
            Op::Val(v) => vec![*v],
            Op::Addr(refs) => refs
                .iter()
                .map(|r| {
                    let o = self.ref_obj(*r);
                    self.addr(o)
                })
                .collect(),
            _ => vec![],
        }
    }

    /// What a node may receive: everything, or only descriptor tokens for narrow values.
    fn admit(&self, to: NodeId, set: &[u32]) -> Option<Vec<u32>> {
        if !self.narrow[to as usize] {
            return None;
        }
        Some(
            set.iter()
                .copied()
                .filter(|&o| matches!(self.objs[o as usize].kind, ObjKind::Fd { .. }))
                .collect(),
        )
    }

    fn flow(&mut self, to: NodeId, set: &[u32]) -> bool {
        match self.admit(to, set) {
            Some(f) => union_into(&mut self.pts[to as usize], &f),
            None => union_into(&mut self.pts[to as usize], set),
        }
    }

    fn add_edge(&mut self, a: NodeId, b: NodeId) {
        let a = self.find(a);
        let b = self.find(b);
        if a == b {
            return;
        }
        if !self.edges.insert(((a as u64) << 32) | b as u64) {
            return;
        }
        self.succ[a as usize].push(b);
        self.edges_since_collapse += 1;
        if !self.pts[a as usize].is_empty() {
            let src = std::mem::take(&mut self.pts[a as usize]);
            let grew = self.flow(b, &src);
            self.pts[a as usize] = src;
            if grew {
                self.push(b);
            }
        }
    }

    fn add_edges(&mut self, from: &[NodeId], to: NodeId) {
        for &f in from {
            self.add_edge(f, to);
        }
    }

    /// `dst ⊇ *ptr`
    fn add_load(&mut self, ptr: NodeId, dst: NodeId) {
        let p = self.find(ptr);
        self.loads[p as usize].push(dst);
        for o in self.pts[p as usize].clone() {
            let c = self.objs[o as usize].content;
            self.add_edge(c, dst);
        }
    }

    /// `dst ⊇ ptr->path`, field-precise for constant objects.
    fn add_field_load(&mut self, ptr: NodeId, fl: FieldLoad) {
        let id = self.fl.len() as u32;
        self.fl.push(fl);
        let p = self.find(ptr);
        self.field_loads[p as usize].push(id);
        for o in self.pts[p as usize].clone() {
            self.field_load_obj(id, o);
        }
    }

    fn field_load_obj(&mut self, id: u32, o: ObjId) {
        let dst = self.fl[id as usize].dst;
        if let ObjKind::Global(g) = self.objs[o as usize].kind {
            let gl = &self.p.globals[g as usize];
            let f = &self.fl[id as usize];
            if gl.constant && gl.value_type == f.src_type {
                if let Some(refs) = gl.init.as_ref().and_then(|i| i.at(&f.path)) {
                    for r in refs {
                        let ro = self.ref_obj(r);
                        let a = self.addr(ro);
                        self.add_edge(a, dst);
                    }
                    return;
                }
            }
        }
        let c = self.objs[o as usize].content;
        self.add_edge(c, dst);
    }

    /// `*ptr ⊇ src`
    fn add_store(&mut self, ptr: NodeId, src: NodeId) {
        let p = self.find(ptr);
        self.stores[p as usize].push(src);
        for o in self.pts[p as usize].clone() {
            let c = self.objs[o as usize].content;
            self.add_edge(src, c);
        }
    }

    fn add_call(&mut self, callee: NodeId, c: CallCons) {
        let id = self.cons.len() as u32;
        self.cons.push(c);
        let n = self.find(callee);
        self.calls[n as usize].push(id);
        for o in self.pts[n as usize].clone() {
            self.resolve(id, o);
        }
    }

    fn resolve(&mut self, ci: u32, o: ObjId) {
        let ObjKind::Func(f) = self.objs[o as usize].kind else {
            return;
        };
        let c = &self.cons[ci as usize];
        let site = c.site;
        let spawn = c.spawn.clone();
        let args = c.args.clone();
        let result = c.result;
        if self.p.funcs[f as usize].defined {
            self.bind(site, f, &args, result, spawn);
        } else if spawn.is_none() {
            self.apply_model(site, f, &args, result);
        }
    }

    fn bind(
        &mut self,
        site: InstId,
        f: FuncId,
        args: &[Vec<NodeId>],
        result: Option<NodeId>,
        spawn: Option<(SpawnKind, Vec<ParamSrc>)>,
    ) {
        if !self.bound.insert((site, f, spawn.is_some())) {
            return;
        }
        let params = self.p.funcs[f as usize].params.clone();
        for (i, a) in args.iter().enumerate() {
            match params.get(i) {
                Some(&prm) => self.add_edges(a, prm),
                None => {
                    let va = self.func_va[f as usize];
                    self.add_edges(a, va);
                }
            }
        }
        if let Some(r) = result {
            let ret = self.func_ret[f as usize];
            self.add_edge(ret, r);
        }
        self.bindings
            .entry(site)
            .or_default()
            .push(Binding { callee: f, spawn });
    }

    fn apply_model(
        &mut self,
        site: InstId,
        f: FuncId,
        args: &[Vec<NodeId>],
        result: Option<NodeId>,
    ) {
        if !self.modelled.insert((site, f)) {
            return;
        }
        self.ext_targets.entry(site).or_default().push(f);
        let m = crate::facts::model_of(self.p, self.opts, f);
        let name = self.p.funcs[f as usize].name.clone();
        let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
        let all: Vec<NodeId> = args.iter().flatten().copied().collect();
        if let Some(r) = result {
            match m.ret {
                RetKind::Nothing => {}
                RetKind::Fresh => {
                    let o = self.obj(ObjKind::Heap(site));
                    let a = self.addr(o);
                    self.add_edge(a, r);
                }
                RetKind::FreshOrArg0 => {
                    let o = self.obj(ObjKind::Heap(site));
                    let a = self.addr(o);
                    self.add_edge(a, r);
                    let a0 = arg(0);
                    self.add_edges(&a0, r);
                    let t = self.new_node();
                    for n in a0 {
                        self.add_load(n, t);
                    }
                    let c = self.objs[o as usize].content;
                    self.add_edge(t, c);
                }
                RetKind::Library => {
                    let o = self.obj(ObjKind::Library(name.clone()));
                    let a = self.addr(o);
                    self.add_edge(a, r);
                }
                RetKind::FromArgs(set) => {
                    for (i, a) in args.iter().enumerate() {
                        if set.contains(i) {
                            self.add_edges(a, r);
                        }
                    }
                }
                RetKind::Packet => {
                    let o = self.obj(ObjKind::Packet(site));
                    let a = self.addr(o);
                    self.add_edge(a, r);
                }
                RetKind::SocketFd | RetKind::FileFd => {
                    let o = self.obj(ObjKind::Fd {
                        socket: m.ret == RetKind::SocketFd,
                        site,
                    });
                    let a = self.addr(o);
                    self.add_edge(a, r);
                }
                RetKind::Unknown => {}
            }
        }
        for (i, s) in &m.stores {
            let src = match s {
                Stored::PktHdr => {
                    let o = self.obj(ObjKind::PktHdr(site));
                    vec![self.addr(o)]
                }
                Stored::Packet => {
                    let o = self.obj(ObjKind::Packet(site));
                    vec![self.addr(o)]
                }
                Stored::Fresh => {
                    let o = self.obj(ObjKind::Heap(site));
                    vec![self.addr(o)]
                }
                Stored::SocketFd | Stored::FileFd => {
                    let o = self.obj(ObjKind::Fd {
                        socket: *s == Stored::SocketFd,
                        site,
                    });
                    vec![self.addr(o)]
                }
                Stored::ArgPts(j) => arg(*j as usize),
            };
            for ptr in arg(*i as usize) {
                for &s in &src {
                    self.add_store(ptr, s);
                }
            }
        }
        for (d, s) in &m.copies {
            let t = self.new_node();
            for n in arg(*s as usize) {
                self.add_load(n, t);
            }
            for n in arg(*d as usize) {
                self.add_store(n, t);
            }
        }
        if m.va_start {
            let caller = self.p.insts[site as usize].func;
            let va = self.func_va[caller as usize];
            for n in arg(0) {
                self.add_store(n, va);
            }
        }
        if m.recv == Some(externs::Recv::User) {
            let o = self.obj(ObjKind::Packet(site));
            let a = self.addr(o);
            for &n in &all {
                self.add_store(n, a);
            }
        }
        if let Some(sp) = &m.spawn {
            let mut callee_nodes = arg(sp.fn_arg as usize);
            if sp.in_pointee {
                let t = self.new_node();
                for n in callee_nodes {
                    self.add_load(n, t);
                }
                callee_nodes = vec![t];
            }
            let params: Vec<Vec<NodeId>> = sp
                .params
                .iter()
                .map(|ps| match ps {
                    ParamSrc::Arg(j) => arg(*j as usize),
                    ParamSrc::PktHdr => {
                        let o = self.obj(ObjKind::PktHdr(site));
                        vec![self.addr(o)]
                    }
                    ParamSrc::Packet => {
                        let o = self.obj(ObjKind::Packet(site));
                        vec![self.addr(o)]
                    }
                    ParamSrc::Nothing => vec![],
                })
                .collect();
            for cn in callee_nodes {
                self.add_call(
                    cn,
                    CallCons {
                        site,
                        args: params.clone(),
                        result: None,
                        spawn: Some((sp.kind, sp.params.clone())),
                    },
                );
            }
        }
        if !m.known {
            self.unknown.insert(f);
            // Anything reachable from the arguments may be read, overwritten with anything
            // reachable, returned, or called back.
            let t = self.new_node();
            self.add_edges(&all, t);
            let lib = self.obj(ObjKind::Library(name));
            let la = self.addr(lib);
            self.add_edge(la, t);
            self.add_load(t, t);
            self.add_store(t, t);
            if let Some(r) = result {
                self.add_edge(t, r);
            }
            let n = args.len().max(1);
            self.add_call(
                t,
                CallCons {
                    site,
                    args: vec![vec![t]; n],
                    result: None,
                    spawn: Some((SpawnKind::Sync, vec![ParamSrc::Nothing; n])),
                },
            );
        }
    }

    /// A call to code nobody can see (inline assembly, a function pointer from outside): it
    /// may read, overwrite with and return anything reachable from its operands.
    fn opaque(&mut self, site: InstId, args: &[Vec<NodeId>], res: Option<NodeId>) {
        self.opaque_sites.insert(site);
        let t = self.new_node();
        for a in args {
            self.add_edges(a, t);
        }
        self.add_load(t, t);
        self.add_store(t, t);
        if let Some(r) = res {
            self.add_edge(t, r);
        }
    }

    /// Indirect calls whose pointer holds only memory from outside the program (no function
    /// of it): treated as opaque, which may add points-to facts, so solving resumes.
    fn resolve_outside_calls(&mut self) -> bool {
        let p = self.p;
        let mut added = false;
        for (fi, f) in p.funcs.iter().enumerate() {
            let _ = fi;
            for b in &f.blocks {
                for &i in &b.insts {
                    let ins = &p.insts[i as usize];
                    let Kind::Call {
                        callee: Callee::Indirect(op),
                        args,
                    } = &ins.kind
                    else {
                        continue;
                    };
                    if self.opaque_sites.contains(&i)
                        || self.bindings.contains_key(&i)
                        || self.ext_targets.contains_key(&i)
                    {
                        continue;
                    }
                    let callee_nodes = self.nodes(op);
                    let outside = callee_nodes.iter().any(|&n| {
                        let r = self.find(n);
                        !self.pts[r as usize].is_empty()
                    });
                    if outside {
                        let argn: Vec<Vec<NodeId>> = args.iter().map(|a| self.nodes(a)).collect();
                        self.opaque(i, &argn, ins.result);
                        added = true;
                    }
                }
            }
        }
        added
    }

    /// A load address that is one GEP with a leading zero index (`&base->a.b[i]`): the base
    /// and the path below it.
    #[allow(clippy::type_complexity)]
    fn field_path(&self, addr: &Op, _dst: NodeId) -> Option<(Op, (Vec<Op>, String))> {
        let v = addr.val()?;
        let i = self.p.inst_of_val(v)?;
        match &self.p.insts[i as usize].kind {
            Kind::Gep {
                base,
                idx,
                src_type,
                ..
            } if matches!(idx.first(), Some(Op::Int(0))) && idx.len() > 1 => {
                Some((base.clone(), (idx[1..].to_vec(), src_type.clone())))
            }
            _ => None,
        }
    }

    fn gen(&mut self) {
        let p = self.p;
        for (g, gl) in p.globals.iter().enumerate() {
            let o = self.obj(ObjKind::Global(g as GlobalId));
            let c = self.objs[o as usize].content;
            for r in &gl.init_refs {
                let ro = self.ref_obj(*r);
                let a = self.addr(ro);
                self.add_edge(a, c);
            }
        }
        for (fi, f) in p.funcs.iter().enumerate() {
            if !f.defined {
                continue;
            }
            let ret = self.func_ret[fi];
            for b in &f.blocks {
                for &i in &b.insts {
                    let ins = &p.insts[i as usize];
                    let res = ins.result;
                    match &ins.kind {
                        Kind::Alloca => {
                            let o = self.obj(ObjKind::Alloca(i));
                            let a = self.addr(o);
                            if let Some(r) = res {
                                self.add_edge(a, r);
                            }
                        }
                        Kind::Load { addr } => {
                            if let Some(r) = res {
                                if let Some((base, fl)) = self.field_path(addr, r) {
                                    for n in self.nodes(&base) {
                                        self.add_field_load(
                                            n,
                                            FieldLoad {
                                                path: fl.0.clone(),
                                                src_type: fl.1.clone(),
                                                dst: r,
                                            },
                                        );
                                    }
                                } else {
                                    for n in self.nodes(addr) {
                                        self.add_load(n, r);
                                    }
                                }
                            }
                        }
                        Kind::VaArg { list: addr } => {
                            if let Some(r) = res {
                                for n in self.nodes(addr) {
                                    self.add_load(n, r);
                                }
                            }
                        }
                        Kind::Store { val, addr } => {
                            let vs = self.nodes(val);
                            for a in self.nodes(addr) {
                                for &v in &vs {
                                    self.add_store(a, v);
                                }
                            }
                        }
                        Kind::AtomicRmw { addr, val } | Kind::CmpXchg { addr, new: val, .. } => {
                            let vs = self.nodes(val);
                            for a in self.nodes(addr) {
                                for &v in &vs {
                                    self.add_store(a, v);
                                }
                                if let Some(r) = res {
                                    self.add_load(a, r);
                                }
                            }
                        }
                        Kind::Gep { base, .. } => {
                            if let Some(r) = res {
                                let ns = self.nodes(base);
                                self.add_edges(&ns, r);
                            }
                        }
                        Kind::Phi { incoming } => {
                            if let Some(r) = res {
                                for (o, _) in incoming {
                                    let ns = self.nodes(o);
                                    self.add_edges(&ns, r);
                                }
                            }
                        }
                        Kind::Select { a, b, .. } => {
                            if let Some(r) = res {
                                for o in [a, b] {
                                    let ns = self.nodes(o);
                                    self.add_edges(&ns, r);
                                }
                            }
                        }
                        Kind::Compute { ops } | Kind::Unsupported { ops, .. } => {
                            if let Some(r) = res {
                                for o in ops {
                                    let ns = self.nodes(o);
                                    self.add_edges(&ns, r);
                                }
                            }
                        }
                        Kind::Ret { val: Some(v) } => {
                            let ns = self.nodes(v);
                            self.add_edges(&ns, ret);
                        }
                        Kind::Call { callee, args } => {
                            let argn: Vec<Vec<NodeId>> =
                                args.iter().map(|a| self.nodes(a)).collect();
                            match callee {
                                Callee::Direct(t) => {
                                    if p.funcs[*t as usize].defined {
                                        self.bind(i, *t, &argn, res, None);
                                    } else {
                                        self.apply_model(i, *t, &argn, res);
                                    }
                                }
                                Callee::Indirect(op) => {
                                    for cn in self.nodes(op) {
                                        self.add_call(
                                            cn,
                                            CallCons {
                                                site: i,
                                                args: argn.clone(),
                                                result: res,
                                                spawn: None,
                                            },
                                        );
                                    }
                                }
                                Callee::Asm => self.opaque(i, &argn, res),
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    fn solve(&mut self) {
        let mut pops = 0usize;
        while let Some(n) = self.wl.pop_front() {
            self.in_wl[n as usize] = false;
            if self.find(n) != n {
                continue;
            }
            pops += 1;
            if pops & 4095 == 0 && self.edges_since_collapse > 2000 + self.pts.len() / 16 {
                self.collapse_cycles();
                if self.find(n) != n {
                    continue;
                }
            }
            let delta = difference(&self.pts[n as usize], &self.prev[n as usize]);
            if delta.is_empty() {
                continue;
            }
            self.prev[n as usize] = self.pts[n as usize].clone();
            for &o in &delta {
                let c = self.objs[o as usize].content;
                let nl = self.loads[n as usize].len();
                for k in 0..nl {
                    let d = self.loads[n as usize][k];
                    self.add_edge(c, d);
                }
                let ns = self.stores[n as usize].len();
                for k in 0..ns {
                    let s = self.stores[n as usize][k];
                    self.add_edge(s, c);
                }
                let nc = self.calls[n as usize].len();
                for k in 0..nc {
                    let ci = self.calls[n as usize][k];
                    self.resolve(ci, o);
                }
                let nf = self.field_loads[n as usize].len();
                for k in 0..nf {
                    let fi = self.field_loads[n as usize][k];
                    self.field_load_obj(fi, o);
                }
            }
            let nsucc = self.succ[n as usize].len();
            for k in 0..nsucc {
                let s = self.succ[n as usize][k];
                let s = self.find(s);
                if s == n {
                    continue;
                }
                if self.flow(s, &delta) {
                    self.push(s);
                }
            }
        }
    }

    /// Finds strongly connected components of the copy graph (Tarjan, iterative) and merges
    /// each into one node: members of a cycle always end with equal sets.
    fn collapse_cycles(&mut self) {
        self.edges_since_collapse = 0;
        let n = self.pts.len();
        let mut index = vec![u32::MAX; n];
        let mut low = vec![0u32; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<u32> = Vec::new();
        let mut next = 0u32;
        let mut sccs: Vec<Vec<u32>> = Vec::new();
        for start in 0..n as u32 {
            if self.find(start) != start || index[start as usize] != u32::MAX {
                continue;
            }
            let mut call: Vec<(u32, usize)> = vec![(start, 0)];
            index[start as usize] = next;
            low[start as usize] = next;
            next += 1;
            stack.push(start);
            on_stack[start as usize] = true;
            while let Some(&mut (v, ref mut k)) = call.last_mut() {
                if *k < self.succ[v as usize].len() {
                    let w = self.succ[v as usize][*k];
                    *k += 1;
                    let w = self.find(w);
                    if self.narrow[w as usize] || self.narrow[v as usize] {
                        // A filtering node must keep its own set: never merged.
                        continue;
                    }
                    if index[w as usize] == u32::MAX {
                        index[w as usize] = next;
                        low[w as usize] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w as usize] = true;
                        call.push((w, 0));
                    } else if on_stack[w as usize] {
                        low[v as usize] = low[v as usize].min(index[w as usize]);
                    }
                } else {
                    call.pop();
                    if let Some(&(u, _)) = call.last() {
                        low[u as usize] = low[u as usize].min(low[v as usize]);
                    }
                    if low[v as usize] == index[v as usize] {
                        let mut comp = Vec::new();
                        loop {
                            let w = stack.pop().unwrap_or(v);
                            on_stack[w as usize] = false;
                            comp.push(w);
                            if w == v {
                                break;
                            }
                        }
                        if comp.len() > 1 {
                            sccs.push(comp);
                        }
                    }
                }
            }
        }
        for comp in sccs {
            let root = comp[0];
            for &m in &comp[1..] {
                self.merge(root, m);
            }
            self.push(root);
        }
    }

    fn merge(&mut self, a: NodeId, b: NodeId) {
        let (a, b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        self.collapsed += 1;
        self.rep[b as usize] = a;
        let pb = std::mem::take(&mut self.pts[b as usize]);
        union_into(&mut self.pts[a as usize], &pb);
        let prevb = std::mem::take(&mut self.prev[b as usize]);
        let pa = std::mem::take(&mut self.prev[a as usize]);
        self.prev[a as usize] = intersection(&pa, &prevb);
        for field in [0, 1, 2] {
            let v = match field {
                0 => std::mem::take(&mut self.succ[b as usize]),
                1 => std::mem::take(&mut self.loads[b as usize]),
                _ => std::mem::take(&mut self.stores[b as usize]),
            };
            let dst = match field {
                0 => &mut self.succ[a as usize],
                1 => &mut self.loads[a as usize],
                _ => &mut self.stores[a as usize],
            };
            dst.extend(v);
        }
        let cb = std::mem::take(&mut self.calls[b as usize]);
        self.calls[a as usize].extend(cb);
        let fb = std::mem::take(&mut self.field_loads[b as usize]);
        self.field_loads[a as usize].extend(fb);
        // Drop self-loops and duplicates the merge created.
        let mut succ = std::mem::take(&mut self.succ[a as usize]);
        succ.sort_unstable();
        succ.dedup();
        succ.retain(|&s| s != a && s != b);
        self.succ[a as usize] = succ;
    }
}

impl PointsTo {
    pub fn analyse(p: &Program, opts: &Options) -> PointsTo {
        let mut s = Solver {
            p,
            opts,
            pts: Vec::new(),
            prev: Vec::new(),
            succ: Vec::new(),
            loads: Vec::new(),
            stores: Vec::new(),
            calls: Vec::new(),
            field_loads: Vec::new(),
            fl: Vec::new(),
            rep: Vec::new(),
            narrow: Vec::new(),
            edges: HashSet::new(),
            wl: VecDeque::new(),
            in_wl: Vec::new(),
            objs: Vec::new(),
            obj_index: HashMap::new(),
            addr_node: HashMap::new(),
            func_ret: Vec::new(),
            func_va: Vec::new(),
            cons: Vec::new(),
            bound: HashSet::new(),
            bindings: HashMap::new(),
            ext_targets: HashMap::new(),
            modelled: HashSet::new(),
            unknown: HashSet::new(),
            opaque_sites: HashSet::new(),
            edges_since_collapse: 0,
            collapsed: 0,
        };
        for v in 0..p.vals.len() {
            let n = s.new_node();
            s.narrow[n as usize] = p.narrow.get(v).copied().unwrap_or(false);
        }
        for _ in 0..p.funcs.len() {
            let r = s.new_node();
            let v = s.new_node();
            s.func_ret.push(r);
            s.func_va.push(v);
        }
        s.gen();
        s.solve();
        while s.resolve_outside_calls() {
            s.solve();
        }
        // Normalise: every node answers with its representative's set.
        let n = s.pts.len();
        let mut pts = vec![Vec::new(); n];
        let mut rep = vec![0; n];
        for i in 0..n as u32 {
            let r = s.find(i);
            rep[i as usize] = r;
        }
        for i in 0..n {
            if rep[i] as usize == i {
                pts[i] = std::mem::take(&mut s.pts[i]);
            }
        }
        let mut unknown: Vec<FuncId> = s.unknown.into_iter().collect();
        unknown.sort_unstable();
        for v in s.bindings.values_mut() {
            v.sort_by_key(|b| (b.callee, b.spawn.is_some()));
        }
        for v in s.ext_targets.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        PointsTo {
            pts,
            rep,
            objs: s.objs,
            obj_index: s.obj_index,
            func_ret: s.func_ret,
            func_va: s.func_va,
            bindings: s.bindings,
            ext_targets: s.ext_targets,
            unknown_externs: unknown,
            opaque_sites: s.opaque_sites,
            nodes: n,
            collapsed: s.collapsed,
        }
    }

    pub fn node(&self, n: NodeId) -> &[ObjId] {
        &self.pts[self.rep[n as usize] as usize]
    }

    pub fn val(&self, v: ValId) -> &[ObjId] {
        self.node(v)
    }

    /// Objects an operand may point to.
    pub fn op(&self, op: &Op) -> Vec<ObjId> {
        match op {
            Op::Val(v) => self.val(*v).to_vec(),
            Op::Addr(refs) => {
                let mut v: Vec<ObjId> = refs
                    .iter()
                    .filter_map(|r| {
                        self.obj_index
                            .get(&match r {
                                Ref::Global(g) => ObjKind::Global(*g),
                                Ref::Func(f) => ObjKind::Func(*f),
                            })
                            .copied()
                    })
                    .collect();
                v.sort_unstable();
                v
            }
            _ => Vec::new(),
        }
    }

    pub fn contents(&self, o: ObjId) -> &[ObjId] {
        self.node(self.objs[o as usize].content)
    }

    pub fn obj_id(&self, k: &ObjKind) -> Option<ObjId> {
        self.obj_index.get(k).copied()
    }

    /// Every object reachable from `start` through any number of dereferences (including
    /// `start` itself).
    pub fn reach(&self, start: &[ObjId]) -> Vec<ObjId> {
        let mut seen: HashSet<ObjId> = start.iter().copied().collect();
        let mut stack: Vec<ObjId> = start.to_vec();
        while let Some(o) = stack.pop() {
            for &c in self.contents(o) {
                if seen.insert(c) {
                    stack.push(c);
                }
            }
        }
        let mut v: Vec<ObjId> = seen.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// Whether an object is program data that can be written (not code, not a descriptor).
    pub fn is_data(&self, o: ObjId) -> bool {
        !matches!(
            self.objs[o as usize].kind,
            ObjKind::Func(_) | ObjKind::Fd { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_and_difference() {
        let mut a = vec![1, 4, 9];
        assert!(union_into(&mut a, &[2, 4, 10]));
        assert_eq!(a, vec![1, 2, 4, 9, 10]);
        assert!(!union_into(&mut a, &[1, 10]));
        assert_eq!(difference(&a, &[2, 9]), vec![1, 4, 10]);
        assert_eq!(intersection(&a, &[0, 4, 10, 11]), vec![4, 10]);
    }
}
