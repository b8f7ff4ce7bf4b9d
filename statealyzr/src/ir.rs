//! The program as the analyses see it: a compact, index-based copy of the LLVM module.
//!
//! Every analysis walks instructions many times; holding them as small enums over integer ids
//! (instead of `llvm-ir`'s name-keyed structures) keeps those walks cheap and lets the
//! dependence graph and the pointer analysis share one numbering.

use std::collections::HashMap;
use std::path::PathBuf;

use llvm_ir::{Constant, Name, Operand};

use crate::debuginfo::DebugInfo;
use crate::diag::Diags;

pub type FuncId = u32;
pub type InstId = u32;
pub type ValId = u32;
pub type GlobalId = u32;

/// A global or function whose address a constant takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    Global(GlobalId),
    Func(FuncId),
}

/// An instruction operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Val(ValId),
    /// A constant that carries the addresses of these globals/functions (constant expressions
    /// and aggregates are flattened: the analysis is field-insensitive).
    Addr(Vec<Ref>),
    Int(i64),
    /// null, undef, poison, zeroinitializer.
    Null,
    /// Floats, block addresses, metadata, anything carrying no address.
    Other,
}

impl Op {
    pub fn val(&self) -> Option<ValId> {
        match self {
            Op::Val(v) => Some(*v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Callee {
    Direct(FuncId),
    Indirect(Op),
    Asm,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Alloca,
    Load {
        addr: Op,
    },
    Store {
        val: Op,
        addr: Op,
    },
    /// `elem_size`: byte size of the source element when it is an integer type (for raw
    /// packet offsets such as `pkt + 26`).
    Gep {
        base: Op,
        idx: Vec<Op>,
        elem_size: Option<u32>,
        /// The source element type (see `type_key`).
        src_type: String,
    },
    Phi {
        incoming: Vec<(Op, u32)>,
    },
    Select {
        cond: Op,
        a: Op,
        b: Op,
    },
    Cmp {
        a: Op,
        b: Op,
    },
    /// Arithmetic, casts, aggregate and vector operations: the result is computed from `ops`.
    Compute {
        ops: Vec<Op>,
    },
    Call {
        callee: Callee,
        args: Vec<Op>,
    },
    VaArg {
        list: Op,
    },
    AtomicRmw {
        addr: Op,
        val: Op,
    },
    CmpXchg {
        addr: Op,
        cmp: Op,
        new: Op,
    },
    /// `llvm.dbg.value` / `llvm.dbg.declare`: binds source variable `var` to `vals`.
    Dbg {
        var: u32,
        vals: Vec<Op>,
        declare: bool,
    },
    Ret {
        val: Option<Op>,
    },
    Br,
    CondBr {
        cond: Op,
    },
    Switch {
        cond: Op,
    },
    IndirectBr {
        addr: Op,
    },
    Unreachable,
    /// Exception handling and other constructs C does not produce.
    Unsupported {
        what: String,
        ops: Vec<Op>,
    },
}

/// A source position, with the file interned in `Program::files`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Loc {
    pub file: u32,
    pub line: u32,
    pub col: u32,
}

#[derive(Debug, Clone)]
pub struct Inst {
    pub func: FuncId,
    pub block: u32,
    pub kind: Kind,
    pub result: Option<ValId>,
    pub loc: Option<Loc>,
    /// The SSA name of the result, kept because clang names field addresses after the field.
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub name: String,
    /// Instructions in order; the terminator is last.
    pub insts: Vec<InstId>,
    pub succs: Vec<u32>,
    pub preds: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Func {
    pub name: String,
    pub defined: bool,
    pub params: Vec<ValId>,
    pub blocks: Vec<Block>,
    pub variadic: bool,
    pub loc: Option<Loc>,
}

#[derive(Debug, Clone)]
pub struct Global {
    pub name: String,
    pub defined: bool,
    pub init_refs: Vec<Ref>,
    /// A `const` object: the program cannot legally write it, so a load of one of its fields
    /// gives that field's initial value.
    pub constant: bool,
    /// Its value type, printed (`%struct.module`, `[2 x %struct.plugin]`), struct suffixes
    /// added by the linker removed.
    pub value_type: String,
    /// The initialiser by aggregate element, for field-precise loads from constant objects.
    pub init: Option<Init>,
    /// `DIGlobalVariable` ids describing it (several when common symbols were merged).
    pub di_vars: Vec<u32>,
}

/// A constant initialiser, element by element.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    Aggregate(Vec<Init>),
    Leaf(Vec<Ref>),
}

impl Init {
    /// The addresses the element at `path` may hold: constant indices select one element,
    /// other indices any of them. `None` when the path does not fit the shape.
    pub fn at(&self, path: &[Op]) -> Option<Vec<Ref>> {
        match (self, path.split_first()) {
            (Init::Leaf(r), None) => Some(r.clone()),
            (Init::Leaf(r), Some(_)) => {
                // Going into a scalar (or a zeroed aggregate kept as a leaf): nothing finer.
                if r.is_empty() {
                    Some(vec![])
                } else {
                    None
                }
            }
            (Init::Aggregate(v), None) => {
                let mut out = Vec::new();
                for e in v {
                    out.extend(e.at(&[])?);
                }
                Some(out)
            }
            (Init::Aggregate(v), Some((Op::Int(k), rest))) => {
                v.get(usize::try_from(*k).ok()?)?.at(rest)
            }
            (Init::Aggregate(v), Some((_, rest))) => {
                let mut out = Vec::new();
                for e in v {
                    out.extend(e.at(rest)?);
                }
                Some(out)
            }
        }
    }
}

/// A type printed the way the module prints it, without the linker's `.N` suffixes on struct
/// names (two units' `%struct.conn` and `%struct.conn.12` are the same C type).
pub fn type_key(t: &llvm_ir::Type) -> String {
    let s = format!("{t}");
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        out.push(b[i] as char);
        // After a struct name, drop `.digits` when followed by a delimiter.
        if b[i] == b'%' {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'.') {
                j += 1;
            }
            let name = &s[i + 1..j];
            let trimmed = match name.rfind('.') {
                Some(d)
                    if d + 1 < name.len() && name[d + 1..].bytes().all(|c| c.is_ascii_digit()) =>
                {
                    &name[..d]
                }
                _ => name,
            };
            out.push_str(trimmed);
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValDef {
    Arg { func: FuncId, idx: u32 },
    Inst(InstId),
}

#[derive(Debug)]
pub struct Program {
    pub funcs: Vec<Func>,
    pub globals: Vec<Global>,
    pub insts: Vec<Inst>,
    pub vals: Vec<ValDef>,
    /// Per value: an integer narrower than a pointer (or a float): it cannot hold an address,
    /// only a descriptor token.
    pub narrow: Vec<bool>,
    pub files: Vec<PathBuf>,
    pub func_by_name: HashMap<String, FuncId>,
    pub global_by_name: HashMap<String, GlobalId>,
    pub di: DebugInfo,
}

impl Program {
    pub fn func_of_val(&self, v: ValId) -> FuncId {
        match self.vals[v as usize] {
            ValDef::Arg { func, .. } => func,
            ValDef::Inst(i) => self.insts[i as usize].func,
        }
    }

    pub fn inst_of_val(&self, v: ValId) -> Option<InstId> {
        match self.vals[v as usize] {
            ValDef::Inst(i) => Some(i),
            ValDef::Arg { .. } => None,
        }
    }

    pub fn file(&self, loc: &Loc) -> &std::path::Path {
        &self.files[loc.file as usize]
    }

    /// Instructions of a function, in block order.
    pub fn func_insts(&self, f: FuncId) -> impl Iterator<Item = InstId> + '_ {
        self.funcs[f as usize]
            .blocks
            .iter()
            .flat_map(|b| b.insts.iter().copied())
    }

    pub fn callee_name(&self, c: &Callee) -> Option<&str> {
        match c {
            Callee::Direct(f) => Some(&self.funcs[*f as usize].name),
            _ => None,
        }
    }

    /// Operands of an instruction (for "which variables does this statement use").
    pub fn operands(k: &Kind) -> Vec<&Op> {
        match k {
            Kind::Alloca | Kind::Br | Kind::Unreachable => vec![],
            Kind::Load { addr } => vec![addr],
            Kind::Store { val, addr } => vec![val, addr],
            Kind::Gep { base, idx, .. } => std::iter::once(base).chain(idx.iter()).collect(),
            Kind::Phi { incoming } => incoming.iter().map(|(o, _)| o).collect(),
            Kind::Select { cond, a, b } => vec![cond, a, b],
            Kind::Cmp { a, b } => vec![a, b],
            Kind::Compute { ops } => ops.iter().collect(),
            Kind::Call { callee, args } => {
                let mut v: Vec<&Op> = args.iter().collect();
                if let Callee::Indirect(o) = callee {
                    v.push(o);
                }
                v
            }
            Kind::VaArg { list } => vec![list],
            Kind::AtomicRmw { addr, val } => vec![addr, val],
            Kind::CmpXchg { addr, cmp, new } => vec![addr, cmp, new],
            Kind::Dbg { vals, .. } => vals.iter().collect(),
            Kind::Ret { val } => val.iter().collect(),
            Kind::CondBr { cond } | Kind::Switch { cond } => vec![cond],
            Kind::IndirectBr { addr } => vec![addr],
            Kind::Unsupported { ops, .. } => ops.iter().collect(),
        }
    }
}

fn name_str(n: &Name) -> String {
    match n {
        Name::Name(s) => s.to_string(),
        Name::Number(n) => n.to_string(),
    }
}

/// Builds the program from a parsed module and its debug info.
pub fn lower(m: &llvm_ir::Module, di: DebugInfo, diags: &mut Diags) -> Program {
    let mut p = Program {
        funcs: Vec::new(),
        globals: Vec::new(),
        insts: Vec::new(),
        vals: Vec::new(),
        narrow: Vec::new(),
        files: Vec::new(),
        func_by_name: HashMap::new(),
        global_by_name: HashMap::new(),
        di,
    };
    let mut file_ids: HashMap<PathBuf, u32> = HashMap::new();

    for f in &m.functions {
        let id = p.funcs.len() as FuncId;
        p.func_by_name.insert(f.name.clone(), id);
        p.funcs.push(Func {
            name: f.name.clone(),
            defined: true,
            params: Vec::new(),
            blocks: Vec::new(),
            variadic: f.is_var_arg,
            loc: None,
        });
    }
    for f in &m.func_declarations {
        if p.func_by_name.contains_key(&f.name) {
            continue;
        }
        let id = p.funcs.len() as FuncId;
        p.func_by_name.insert(f.name.clone(), id);
        p.funcs.push(Func {
            name: f.name.clone(),
            defined: false,
            params: Vec::new(),
            blocks: Vec::new(),
            variadic: f.is_var_arg,
            loc: None,
        });
    }
    for g in &m.global_vars {
        let name = name_str(&g.name);
        let id = p.globals.len() as GlobalId;
        p.global_by_name.insert(name.clone(), id);
        let di_vars = p.di.global_vars.get(&name).cloned().unwrap_or_default();
        let value_type = match g.ty.as_ref() {
            llvm_ir::Type::PointerType { pointee_type, .. } => type_key(pointee_type),
            _ => String::new(),
        };
        p.globals.push(Global {
            name,
            defined: g.initializer.is_some(),
            init_refs: Vec::new(),
            constant: g.is_constant,
            value_type,
            init: None,
            di_vars,
        });
    }
    // Aliases resolve to what they alias.
    let mut aliases: HashMap<String, Vec<Ref>> = HashMap::new();
    {
        let cx = Cx {
            p: &p,
            aliases: &HashMap::new(),
        };
        for a in &m.global_aliases {
            let mut refs = Vec::new();
            cx.const_refs(&a.aliasee, &mut refs);
            aliases.insert(name_str(&a.name), refs);
        }
    }
    let init_refs: Vec<Vec<Ref>> = {
        let cx = Cx {
            p: &p,
            aliases: &aliases,
        };
        m.global_vars
            .iter()
            .map(|g| {
                let mut refs = Vec::new();
                if let Some(init) = &g.initializer {
                    cx.const_refs(init, &mut refs);
                }
                refs.sort();
                refs.dedup();
                refs
            })
            .collect()
    };
    for (g, r) in p.globals.iter_mut().zip(init_refs) {
        g.init_refs = r;
    }
    let inits: Vec<Option<Init>> = {
        let cx = Cx {
            p: &p,
            aliases: &aliases,
        };
        m.global_vars
            .iter()
            .map(|g| match &g.initializer {
                Some(init) if g.is_constant => Some(cx.init_tree(init)),
                _ => None,
            })
            .collect()
    };
    for (g, i) in p.globals.iter_mut().zip(inits) {
        g.init = i;
    }

    for f in &m.functions {
        let fid = p.func_by_name[&f.name];
        lower_function(&mut p, &m.types, &aliases, &mut file_ids, fid, f, diags);
    }
    for (path, id) in file_ids {
        if p.files.len() <= id as usize {
            p.files.resize(id as usize + 1, PathBuf::new());
        }
        p.files[id as usize] = path;
    }
    p
}

struct Cx<'a> {
    p: &'a Program,
    aliases: &'a HashMap<String, Vec<Ref>>,
}

impl Cx<'_> {
    fn global_ref(&self, n: &Name, out: &mut Vec<Ref>) {
        let s = name_str(n);
        if let Some(g) = self.p.global_by_name.get(&s) {
            out.push(Ref::Global(*g));
        } else if let Some(f) = self.p.func_by_name.get(&s) {
            out.push(Ref::Func(*f));
        } else if let Some(a) = self.aliases.get(&s) {
            out.extend(a.iter().copied());
        }
    }

    /// Collects every global/function address a constant may evaluate to or contain.
    fn const_refs(&self, c: &Constant, out: &mut Vec<Ref>) {
        use Constant as C;
        match c {
            C::GlobalReference { name, .. } => self.global_ref(name, out),
            C::Struct { values, .. } => values.iter().for_each(|v| self.const_refs(v, out)),
            C::Array { elements, .. } => elements.iter().for_each(|v| self.const_refs(v, out)),
            C::Vector(v) => v.iter().for_each(|v| self.const_refs(v, out)),
            C::GetElementPtr(g) => self.const_refs(&g.address, out),
            C::BitCast(x) => self.const_refs(&x.operand, out),
            C::AddrSpaceCast(x) => self.const_refs(&x.operand, out),
            C::PtrToInt(x) => self.const_refs(&x.operand, out),
            C::IntToPtr(x) => self.const_refs(&x.operand, out),
            C::Trunc(x) => self.const_refs(&x.operand, out),
            C::ZExt(x) => self.const_refs(&x.operand, out),
            C::SExt(x) => self.const_refs(&x.operand, out),
            C::Add(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            C::Sub(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            C::And(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            C::Or(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            C::Xor(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            C::Select(x) => {
                self.const_refs(&x.true_value, out);
                self.const_refs(&x.false_value, out)
            }
            C::ExtractValue(x) => self.const_refs(&x.aggregate, out),
            C::InsertValue(x) => {
                self.const_refs(&x.aggregate, out);
                self.const_refs(&x.element, out)
            }
            C::ExtractElement(x) => self.const_refs(&x.vector, out),
            C::InsertElement(x) => {
                self.const_refs(&x.vector, out);
                self.const_refs(&x.element, out)
            }
            C::ShuffleVector(x) => {
                self.const_refs(&x.operand0, out);
                self.const_refs(&x.operand1, out)
            }
            _ => {}
        }
    }

    fn init_tree(&self, c: &Constant) -> Init {
        match c {
            Constant::Struct { values, .. } => {
                Init::Aggregate(values.iter().map(|v| self.init_tree(v)).collect())
            }
            Constant::Array { elements, .. } => {
                Init::Aggregate(elements.iter().map(|v| self.init_tree(v)).collect())
            }
            _ => {
                let mut refs = Vec::new();
                self.const_refs(c, &mut refs);
                refs.sort();
                refs.dedup();
                Init::Leaf(refs)
            }
        }
    }

    fn const_op(&self, c: &Constant) -> Op {
        match c {
            Constant::Int { bits, value } => {
                let v = if *bits < 64 && *bits > 0 {
                    // Sign-extend so -1 stays -1.
                    let shift = 64 - bits;
                    ((*value << shift) as i64) >> shift
                } else {
                    *value as i64
                };
                Op::Int(v)
            }
            Constant::Null(_) | Constant::AggregateZero(_) | Constant::Undef(_) => Op::Null,
            Constant::Poison(_) => Op::Null,
            _ => {
                let mut refs = Vec::new();
                self.const_refs(c, &mut refs);
                if refs.is_empty() {
                    Op::Other
                } else {
                    refs.sort();
                    refs.dedup();
                    Op::Addr(refs)
                }
            }
        }
    }
}

/// Whether a value of this type cannot hold a pointer on a 64-bit target.
fn is_narrow(t: &llvm_ir::Type) -> bool {
    match t {
        llvm_ir::Type::IntegerType { bits } => *bits < 64,
        llvm_ir::Type::FPType(_) => true,
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn lower_function(
    p: &mut Program,
    types: &llvm_ir::types::Types,
    aliases: &HashMap<String, Vec<Ref>>,
    file_ids: &mut HashMap<PathBuf, u32>,
    fid: FuncId,
    f: &llvm_ir::Function,
    diags: &mut Diags,
) {
    use llvm_ir::instruction::Instruction as I;
    use llvm_ir::terminator::Terminator as T;

    let mut names: HashMap<String, ValId> = HashMap::new();
    let mut params = Vec::new();
    for (i, prm) in f.parameters.iter().enumerate() {
        let v = p.vals.len() as ValId;
        p.vals.push(ValDef::Arg {
            func: fid,
            idx: i as u32,
        });
        p.narrow.push(is_narrow(&prm.ty));
        names.insert(name_str(&prm.name), v);
        params.push(v);
    }
    let block_ids: HashMap<String, u32> = f
        .basic_blocks
        .iter()
        .enumerate()
        .map(|(i, b)| (name_str(&b.name), i as u32))
        .collect();
    // First pass: number every instruction and result so phis can refer forward.
    let first_inst = p.insts.len() as InstId;
    let mut next = first_inst;
    for b in &f.basic_blocks {
        for ins in &b.instrs {
            if let Some(n) = ins.try_get_result() {
                let v = p.vals.len() as ValId;
                p.vals.push(ValDef::Inst(next));
                p.narrow.push(is_narrow(&types.type_of(ins)));
                names.insert(name_str(n), v);
            }
            next += 1;
        }
        if let Some(n) = b.term.try_get_result() {
            let v = p.vals.len() as ValId;
            p.vals.push(ValDef::Inst(next));
            p.narrow.push(false);
            names.insert(name_str(n), v);
        }
        next += 1;
    }

    let dbg_calls = p.di.dbg_calls.get(&f.name).cloned().unwrap_or_default();
    let mut dbg_idx = 0usize;
    let mut dbg_ok = true;

    let mut blocks = Vec::new();
    let mut insts = Vec::new();
    let mut inst_id = first_inst;
    {
        let cx = Cx { p, aliases };
        let op = |o: &Operand| -> Op {
            match o {
                Operand::LocalOperand { name, .. } => match names.get(&name_str(name)) {
                    Some(v) => Op::Val(*v),
                    None => Op::Other,
                },
                Operand::ConstantOperand(c) => cx.const_op(c),
                Operand::MetadataOperand => Op::Other,
            }
        };
        let mut loc_of = |d: &Option<llvm_ir::DebugLoc>| -> Option<Loc> {
            let d = d.as_ref()?;
            let mut path = PathBuf::from(&d.filename);
            if path.is_relative() {
                if let Some(dir) = &d.directory {
                    path = PathBuf::from(dir).join(path);
                }
            }
            let n = file_ids.len() as u32;
            let file = *file_ids.entry(path).or_insert(n);
            Some(Loc {
                file,
                line: d.line,
                col: d.col.unwrap_or(0),
            })
        };
        let res = |n: Option<&Name>| n.and_then(|n| names.get(&name_str(n)).copied());
        for (bi, b) in f.basic_blocks.iter().enumerate() {
            let mut ids = Vec::new();
            for ins in &b.instrs {
                use llvm_ir::HasDebugLoc;
                let kind = match ins {
                    I::Add(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::Sub(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::Mul(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::UDiv(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::SDiv(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::URem(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::SRem(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::And(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::Or(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::Xor(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::Shl(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::LShr(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::AShr(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FAdd(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FSub(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FMul(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FDiv(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FRem(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::FNeg(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::ExtractElement(x) => Kind::Compute {
                        ops: vec![op(&x.vector), op(&x.index)],
                    },
                    I::InsertElement(x) => Kind::Compute {
                        ops: vec![op(&x.vector), op(&x.element), op(&x.index)],
                    },
                    I::ShuffleVector(x) => Kind::Compute {
                        ops: vec![op(&x.operand0), op(&x.operand1)],
                    },
                    I::ExtractValue(x) => Kind::Compute {
                        ops: vec![op(&x.aggregate)],
                    },
                    I::InsertValue(x) => Kind::Compute {
                        ops: vec![op(&x.aggregate), op(&x.element)],
                    },
                    I::Alloca(_) => Kind::Alloca,
                    I::Load(x) => Kind::Load {
                        addr: op(&x.address),
                    },
                    I::Store(x) => Kind::Store {
                        val: op(&x.value),
                        addr: op(&x.address),
                    },
                    I::Fence(_) => Kind::Compute { ops: vec![] },
                    I::CmpXchg(x) => Kind::CmpXchg {
                        addr: op(&x.address),
                        cmp: op(&x.expected),
                        new: op(&x.replacement),
                    },
                    I::AtomicRMW(x) => Kind::AtomicRmw {
                        addr: op(&x.address),
                        val: op(&x.value),
                    },
                    I::GetElementPtr(x) => Kind::Gep {
                        base: op(&x.address),
                        idx: x.indices.iter().map(&op).collect(),
                        elem_size: match x.source_element_type.as_ref() {
                            llvm_ir::Type::IntegerType { bits } => Some(bits.div_ceil(8)),
                            _ => None,
                        },
                        src_type: type_key(&x.source_element_type),
                    },
                    I::Trunc(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::ZExt(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::SExt(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::FPTrunc(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::FPExt(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::FPToUI(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::FPToSI(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::UIToFP(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::SIToFP(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::PtrToInt(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::IntToPtr(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::BitCast(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::AddrSpaceCast(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::ICmp(x) => Kind::Cmp {
                        a: op(&x.operand0),
                        b: op(&x.operand1),
                    },
                    I::FCmp(x) => Kind::Cmp {
                        a: op(&x.operand0),
                        b: op(&x.operand1),
                    },
                    I::Phi(x) => Kind::Phi {
                        incoming: x
                            .incoming_values
                            .iter()
                            .map(|(o, b)| {
                                (op(o), block_ids.get(&name_str(b)).copied().unwrap_or(0))
                            })
                            .collect(),
                    },
                    I::Select(x) => Kind::Select {
                        cond: op(&x.condition),
                        a: op(&x.true_value),
                        b: op(&x.false_value),
                    },
                    I::Freeze(x) => Kind::Compute {
                        ops: vec![op(&x.operand)],
                    },
                    I::VAArg(x) => Kind::VaArg {
                        list: op(&x.arg_list),
                    },
                    I::Call(c) => {
                        let args: Vec<Op> = c.arguments.iter().map(|(a, _)| op(a)).collect();
                        let callee = match &c.function {
                            either::Either::Left(_) => Callee::Asm,
                            either::Either::Right(fo) => match op(fo) {
                                Op::Addr(refs) if refs.len() == 1 => match refs[0] {
                                    Ref::Func(t) => Callee::Direct(t),
                                    Ref::Global(_) => Callee::Indirect(Op::Addr(refs)),
                                },
                                other => Callee::Indirect(other),
                            },
                        };
                        let dbg_kind = match &callee {
                            Callee::Direct(t) => match cx.p.funcs[*t as usize].name.as_str() {
                                "llvm.dbg.value" => Some(false),
                                "llvm.dbg.declare" | "llvm.dbg.addr" => Some(true),
                                _ => None,
                            },
                            _ => None,
                        };
                        if let Some(declare) = dbg_kind {
                            let found = dbg_calls.get(dbg_idx).filter(|d| d.declare == declare);
                            dbg_idx += 1;
                            match found {
                                Some(d) if dbg_ok => {
                                    let mut vals: Vec<Op> = d
                                        .operands
                                        .iter()
                                        .filter_map(|n| names.get(n).map(|v| Op::Val(*v)))
                                        .collect();
                                    let mut refs = Vec::new();
                                    for g in &d.globals {
                                        cx.global_ref(&Name::from(g.as_str()), &mut refs);
                                    }
                                    if !refs.is_empty() {
                                        vals.push(Op::Addr(refs));
                                    }
                                    Kind::Dbg {
                                        var: d.var,
                                        vals,
                                        declare,
                                    }
                                }
                                _ => {
                                    if dbg_ok {
                                        diags.warn(
                                            None,
                                            format!(
                                                "debug intrinsics of `{}` do not line up with the \
                                                 textual IR; its local variable names are unknown",
                                                f.name
                                            ),
                                        );
                                    }
                                    dbg_ok = false;
                                    Kind::Compute { ops: vec![] }
                                }
                            }
                        } else {
                            Kind::Call { callee, args }
                        }
                    }
                    other => Kind::Unsupported {
                        what: format!("{other}")
                            .split_whitespace()
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" "),
                        ops: vec![],
                    },
                };
                let loc = loc_of(ins.get_debug_loc());
                insts.push(Inst {
                    func: fid,
                    block: bi as u32,
                    kind,
                    result: res(ins.try_get_result()),
                    loc,
                    name: ins.try_get_result().and_then(|n| match n {
                        Name::Name(s) => Some(s.to_string()),
                        Name::Number(_) => None,
                    }),
                });
                ids.push(inst_id);
                inst_id += 1;
            }
            let blk = |n: &Name| block_ids.get(&name_str(n)).copied();
            let (kind, succs): (Kind, Vec<u32>) = match &b.term {
                T::Ret(r) => (
                    Kind::Ret {
                        val: r.return_operand.as_ref().map(&op),
                    },
                    vec![],
                ),
                T::Br(x) => (Kind::Br, blk(&x.dest).into_iter().collect()),
                T::CondBr(x) => (
                    Kind::CondBr {
                        cond: op(&x.condition),
                    },
                    [blk(&x.true_dest), blk(&x.false_dest)]
                        .into_iter()
                        .flatten()
                        .collect(),
                ),
                T::Switch(x) => {
                    let mut s: Vec<u32> = x.dests.iter().filter_map(|(_, n)| blk(n)).collect();
                    s.extend(blk(&x.default_dest));
                    (
                        Kind::Switch {
                            cond: op(&x.operand),
                        },
                        s,
                    )
                }
                T::IndirectBr(x) => (
                    Kind::IndirectBr {
                        addr: op(&x.operand),
                    },
                    x.possible_dests.iter().filter_map(blk).collect(),
                ),
                T::Unreachable(_) => (Kind::Unreachable, vec![]),
                T::Invoke(x) => (
                    Kind::Unsupported {
                        what: "invoke".into(),
                        ops: x.arguments.iter().map(|(a, _)| op(a)).collect(),
                    },
                    [blk(&x.return_label), blk(&x.exception_label)]
                        .into_iter()
                        .flatten()
                        .collect(),
                ),
                T::CallBr(x) => (
                    Kind::Unsupported {
                        what: "callbr".into(),
                        ops: x.arguments.iter().map(|(a, _)| op(a)).collect(),
                    },
                    blk(&x.return_label).into_iter().collect(),
                ),
                other => (
                    Kind::Unsupported {
                        what: format!("{other}")
                            .split_whitespace()
                            .next()
                            .unwrap_or("?")
                            .to_owned(),
                        ops: vec![],
                    },
                    vec![],
                ),
            };
            let mut succs = succs;
            succs.sort_unstable();
            succs.dedup();
            use llvm_ir::HasDebugLoc;
            let loc = loc_of(b.term.get_debug_loc());
            insts.push(Inst {
                func: fid,
                block: bi as u32,
                kind,
                result: res(b.term.try_get_result()),
                loc,
                name: None,
            });
            ids.push(inst_id);
            inst_id += 1;
            blocks.push(Block {
                name: name_str(&b.name),
                insts: ids,
                succs,
                preds: Vec::new(),
            });
        }
    }
    if dbg_ok && dbg_idx != dbg_calls.len() {
        diags.warn(
            None,
            format!(
                "`{}` has {} debug intrinsics in the textual IR but {} in the module",
                f.name,
                dbg_calls.len(),
                dbg_idx
            ),
        );
    }
    for i in 0..blocks.len() {
        let succs = blocks[i].succs.clone();
        for s in succs {
            blocks[s as usize].preds.push(i as u32);
        }
    }
    for ins in &insts {
        if let Kind::Unsupported { what, .. } = &ins.kind {
            diags.warn(
                ins.loc.map(|l| (l.file, l.line)),
                format!(
                    "unsupported IR construct `{what}` in `{}`: treated conservatively (its operands \
                     may escape and its result may point anywhere they point)",
                    f.name
                ),
            );
        }
    }
    p.insts.extend(insts);
    let sub_loc = p.di.func_sub.get(&f.name).and_then(|s| {
        let n = p.di.nodes.get(s)?;
        let file = p.di.file_path(n.node("file")?)?;
        Some((file, n.int("line").unwrap_or(0) as u32))
    });
    let floc = sub_loc.map(|(path, line)| {
        let n = file_ids.len() as u32;
        let file = *file_ids.entry(path).or_insert(n);
        Loc { file, line, col: 0 }
    });
    let func = &mut p.funcs[fid as usize];
    func.params = params;
    func.blocks = blocks;
    func.loc = floc;
}
