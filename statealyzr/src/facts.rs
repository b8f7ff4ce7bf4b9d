//! Facts about single instructions that several analyses share: which objects an instruction
//! reads and writes, which calls receive packets, which produce packet or log output.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::externs::{self, ArgSet, Model, Output, Recv, RetKind};
use crate::ir::{Callee, FuncId, InstId, Kind, Op, Program};
use crate::pointsto::{Binding, ObjId, ObjKind, Options, PointsTo};

/// Where the model for a function without a body comes from, with the user's overrides.
pub fn model_of(p: &Program, opts: &Options, f: FuncId) -> Model {
    let name = &p.funcs[f as usize].name;
    if opts.recv_fns.contains(name) {
        return Model::user_recv();
    }
    let m = externs::model(name);
    if !m.known && opts.pure_fns.contains(name) {
        return Model {
            known: true,
            deep: false,
            writes: ArgSet::NONE,
            ret: RetKind::Library,
            ..m
        };
    }
    m
}

/// What a call site may invoke.
#[derive(Debug, Clone, Default)]
pub struct CallTargets {
    pub defined: Vec<Binding>,
    pub external: Vec<(FuncId, Model)>,
}

/// A receive call and what it delivers.
#[derive(Debug, Clone)]
pub struct RecvSite {
    pub site: InstId,
    pub kind: Recv,
    /// Objects the receive writes (packet data, capture headers, pointer slots).
    pub writes: Vec<ObjId>,
    /// The objects holding packet bytes (what header fields are read from).
    pub packet: Vec<ObjId>,
    /// Whether the packet is an Ethernet frame from libpcap (raw offsets can be named).
    pub ethernet: bool,
    /// Callbacks invoked once per packet (pcap_loop).
    pub callbacks: Vec<FuncId>,
    /// The call's result carries packet data (or its length).
    pub result: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutKind {
    Packet,
    Log,
}

pub struct Facts {
    pub calls: HashMap<InstId, CallTargets>,
    pub recvs: Vec<RecvSite>,
    /// Output call sites with the kinds of output they may produce.
    pub outputs: Vec<(InstId, Vec<OutKind>)>,
    pub packet_objs: BTreeSet<ObjId>,
}

impl Facts {
    pub fn compute(
        p: &Program,
        pt: &PointsTo,
        opts: &Options,
        pkt_out_fns: &HashSet<String>,
        log_out_fns: &HashSet<String>,
        diags: &mut crate::diag::Diags,
    ) -> Facts {
        let mut calls = HashMap::new();
        for (i, ins) in p.insts.iter().enumerate() {
            let i = i as InstId;
            let Kind::Call { callee, .. } = &ins.kind else {
                continue;
            };
            let mut t = CallTargets {
                defined: pt.bindings.get(&i).cloned().unwrap_or_default(),
                external: Vec::new(),
            };
            if let Callee::Direct(f) = callee {
                if !p.funcs[*f as usize].defined {
                    t.external.push((*f, model_of(p, opts, *f)));
                }
            }
            for f in pt.ext_targets.get(&i).into_iter().flatten() {
                if !t.external.iter().any(|(g, _)| g == f) {
                    t.external.push((*f, model_of(p, opts, *f)));
                }
            }
            let at = ins.loc.map(|l| (l.file, l.line));
            match callee {
                Callee::Indirect(_) if t.defined.is_empty() && t.external.is_empty() => {
                    let msg = if pt.opaque_sites.contains(&i) {
                        "through a function pointer from outside the program: assumed to read \
                         and write everything reachable from its arguments"
                    } else {
                        "through a function pointer that is never set to a function of the \
                         program (always null?): it is assumed never to be taken"
                    };
                    diags.warn(
                        at,
                        format!(
                            "indirect call in `{}` {msg}",
                            p.funcs[ins.func as usize].name
                        ),
                    );
                }
                Callee::Asm => diags.warn(
                    at,
                    format!(
                        "inline assembly in `{}`: assumed to read and write everything reachable \
                         from its operands",
                        p.funcs[ins.func as usize].name
                    ),
                ),
                _ => {}
            }
            calls.insert(i, t);
        }
        let mut facts = Facts {
            calls,
            recvs: Vec::new(),
            outputs: Vec::new(),
            packet_objs: BTreeSet::new(),
        };
        facts.find_receives(p, pt, opts, diags);
        facts.find_outputs(p, pt, pkt_out_fns, log_out_fns, diags);
        facts
    }

    fn args(p: &Program, i: InstId) -> &[Op] {
        match &p.insts[i as usize].kind {
            Kind::Call { args, .. } => args,
            _ => &[],
        }
    }

    fn find_receives(
        &mut self,
        p: &Program,
        pt: &PointsTo,
        opts: &Options,
        diags: &mut crate::diag::Diags,
    ) {
        let mut sites: Vec<InstId> = self.calls.keys().copied().collect();
        sites.sort_unstable();
        for i in sites {
            let t = &self.calls[&i];
            let args = Self::args(p, i);
            let arg_pts = |k: usize| args.get(k).map(|a| pt.op(a)).unwrap_or_default();
            let mut kinds: Vec<Recv> = t.external.iter().filter_map(|(_, m)| m.recv).collect();
            if t.defined.iter().any(|b| {
                b.spawn.is_none() && opts.recv_fns.contains(&p.funcs[b.callee as usize].name)
            }) {
                kinds.push(Recv::User);
            }
            for kind in kinds {
                let obj = |k: ObjKind| pt.obj_id(&k);
                let mut r = RecvSite {
                    site: i,
                    kind,
                    writes: Vec::new(),
                    packet: Vec::new(),
                    ethernet: false,
                    callbacks: Vec::new(),
                    result: p.insts[i as usize].result.is_some(),
                };
                match kind {
                    Recv::PcapNext => {
                        r.packet.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(arg_pts(1));
                        r.ethernet = true;
                    }
                    Recv::PcapNextEx => {
                        r.packet.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(obj(ObjKind::PktHdr(i)));
                        r.writes.extend(arg_pts(1));
                        r.writes.extend(arg_pts(2));
                        r.ethernet = true;
                    }
                    Recv::PcapLoop => {
                        r.packet.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(obj(ObjKind::Packet(i)));
                        r.writes.extend(obj(ObjKind::PktHdr(i)));
                        r.ethernet = true;
                        r.result = false;
                        r.callbacks = t
                            .defined
                            .iter()
                            .filter(|b| b.spawn.is_some())
                            .map(|b| b.callee)
                            .collect();
                        if r.callbacks.is_empty() {
                            diags.warn(
                                p.insts[i as usize].loc.map(|l| (l.file, l.line)),
                                "the callback passed to pcap_loop/pcap_dispatch could not be \
                                 resolved to a function of the program",
                            );
                        }
                    }
                    Recv::Buffers(set) => {
                        for (k, a) in args.iter().enumerate() {
                            if set.contains(k) {
                                let o = pt.op(a);
                                let deep = t.external.iter().any(|(_, m)| m.deep);
                                let o = if deep { pt.reach(&o) } else { o };
                                r.packet.extend(o.iter().copied());
                                r.writes.extend(o);
                            }
                        }
                    }
                    Recv::FdRead => {
                        let fd = args.first();
                        let (sock, file) = fd_kinds(pt, fd);
                        let constant = matches!(fd, Some(Op::Int(_)));
                        if constant || (file && !sock) {
                            continue;
                        }
                        if !sock {
                            diags.note(
                                p.insts[i as usize].loc.map(|l| (l.file, l.line)),
                                "read() on a descriptor of unknown origin is treated as a \
                                 packet receive",
                            );
                        }
                        let o = arg_pts(1);
                        let o = if t.external.iter().any(|(_, m)| m.deep) {
                            pt.reach(&o)
                        } else {
                            o
                        };
                        r.packet.extend(o.iter().copied());
                        r.writes.extend(o);
                    }
                    Recv::User => {
                        r.packet.extend(obj(ObjKind::Packet(i)));
                        for a in args {
                            r.packet.extend(pt.op(a));
                        }
                        if let Some(v) = p.insts[i as usize].result {
                            r.packet.extend(pt.val(v).iter().copied());
                        }
                        r.writes = r.packet.clone();
                    }
                }
                r.writes.retain(|&o| pt.is_data(o));
                r.packet.retain(|&o| pt.is_data(o));
                r.writes.sort_unstable();
                r.writes.dedup();
                r.packet.sort_unstable();
                r.packet.dedup();
                self.packet_objs.extend(r.packet.iter().copied());
                self.recvs.push(r);
            }
        }
    }

    fn find_outputs(
        &mut self,
        p: &Program,
        pt: &PointsTo,
        pkt_out_fns: &HashSet<String>,
        log_out_fns: &HashSet<String>,
        _diags: &mut crate::diag::Diags,
    ) {
        let mut sites: Vec<InstId> = self.calls.keys().copied().collect();
        sites.sort_unstable();
        for i in sites {
            let t = &self.calls[&i];
            let mut kinds = Vec::new();
            let mut names: Vec<&str> = t
                .defined
                .iter()
                .filter(|b| b.spawn.is_none())
                .map(|b| p.funcs[b.callee as usize].name.as_str())
                .collect();
            names.extend(
                t.external
                    .iter()
                    .map(|(f, _)| p.funcs[*f as usize].name.as_str()),
            );
            for n in &names {
                if pkt_out_fns.contains(*n) {
                    kinds.push(OutKind::Packet);
                }
                if log_out_fns.contains(*n) {
                    kinds.push(OutKind::Log);
                }
            }
            for (_, m) in &t.external {
                match m.output {
                    Some(Output::Packet) => kinds.push(OutKind::Packet),
                    Some(Output::Log) => kinds.push(OutKind::Log),
                    Some(Output::ByFd) => {
                        let fd = Self::args(p, i).first();
                        match fd {
                            Some(Op::Int(1 | 2)) => kinds.push(OutKind::Log),
                            _ => {
                                let (sock, file) = fd_kinds(pt, fd);
                                if sock || !file {
                                    kinds.push(OutKind::Packet);
                                }
                                if file || !sock {
                                    kinds.push(OutKind::Log);
                                }
                            }
                        }
                    }
                    None => {}
                }
            }
            kinds.sort_by_key(|k| *k as u8);
            kinds.dedup();
            if !kinds.is_empty() {
                self.outputs.push((i, kinds));
            }
        }
    }

    /// Objects an instruction reads and writes (program data only).
    pub fn effects(&self, p: &Program, pt: &PointsTo, i: InstId) -> (Vec<ObjId>, Vec<ObjId>) {
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        match &p.insts[i as usize].kind {
            Kind::Load { addr } | Kind::VaArg { list: addr } => reads = pt.op(addr),
            Kind::Store { addr, .. } => writes = pt.op(addr),
            Kind::AtomicRmw { addr, .. } | Kind::CmpXchg { addr, .. } => {
                reads = pt.op(addr);
                writes = reads.clone();
            }
            Kind::Call { args, .. } => {
                if pt.opaque_sites.contains(&i) {
                    let all: Vec<ObjId> = args.iter().flat_map(|a| pt.op(a)).collect();
                    reads = pt.reach(&all);
                    writes = reads.clone();
                }
                if let Some(t) = self.calls.get(&i) {
                    for (_, m) in &t.external {
                        for (k, a) in args.iter().enumerate() {
                            let r = m.reads.contains(k);
                            let w = m.writes.contains(k) || (m.frees && k == 0);
                            if !r && !w {
                                continue;
                            }
                            let o = pt.op(a);
                            let o = if m.deep { pt.reach(&o) } else { o };
                            if r {
                                reads.extend(o.iter().copied());
                            }
                            if w {
                                writes.extend(o);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        reads.retain(|&o| pt.is_data(o));
        writes.retain(|&o| pt.is_data(o));
        reads.sort_unstable();
        reads.dedup();
        writes.sort_unstable();
        writes.dedup();
        (reads, writes)
    }
}

/// Whether a descriptor operand may be a socket and may be a file.
pub fn fd_kinds(pt: &PointsTo, fd: Option<&Op>) -> (bool, bool) {
    let Some(fd) = fd else {
        return (false, false);
    };
    let mut sock = false;
    let mut file = false;
    for o in pt.op(fd) {
        if let ObjKind::Fd { socket, .. } = pt.objs[o as usize].kind {
            if socket {
                sock = true;
            } else {
                file = true;
            }
        }
    }
    (sock, file)
}
