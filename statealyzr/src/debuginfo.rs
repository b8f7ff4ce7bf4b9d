//! Debug metadata read from the textual IR.
//!
//! The `llvm-ir` crate drops metadata operands, so the variable a `llvm.dbg.value` or
//! `llvm.dbg.declare` describes, the `DIGlobalVariable` behind a global and the names of struct
//! members are read here from `llvm-dis` output. Metadata nodes are one per line in that output,
//! which keeps this a line-oriented reader rather than a second IR parser.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

/// One field value of a specialised metadata node.
#[derive(Debug, Clone, PartialEq)]
pub enum MdVal {
    Ref(u32),
    Str(String),
    Int(i64),
    /// Enumerators and flags such as `DW_TAG_member` or `DIFlagBitField | DIFlagPrivate`.
    Word(String),
    Null,
    Other(String),
}

/// A metadata node: `kind` is the specialised node name (`DILocalVariable`, ...) or `tuple`.
#[derive(Debug, Clone)]
pub struct MdNode {
    pub kind: String,
    pub fields: Vec<(String, MdVal)>,
    /// Elements of a `!{...}` tuple.
    pub elems: Vec<MdVal>,
}

impl MdNode {
    pub fn get(&self, key: &str) -> Option<&MdVal> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(MdVal::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key) {
            Some(MdVal::Int(i)) => Some(*i),
            _ => None,
        }
    }
    pub fn node(&self, key: &str) -> Option<u32> {
        match self.get(key) {
            Some(MdVal::Ref(r)) => Some(*r),
            _ => None,
        }
    }
    pub fn word(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(MdVal::Word(w)) => Some(w),
            _ => None,
        }
    }
}

/// A `llvm.dbg.value`/`declare` call as written: which SSA names it binds to which variable.
#[derive(Debug, Clone, PartialEq)]
pub struct DbgCall {
    pub declare: bool,
    /// Local names (without `%`) of the SSA operands; empty for constants and `undef`.
    pub operands: Vec<String>,
    /// Globals a constant operand refers to (`p = &g` leaves `metadata i32* @g`).
    pub globals: Vec<String>,
    pub var: u32,
}

/// What a variable's debug info says about it.
#[derive(Debug, Clone, PartialEq)]
pub struct VarInfo {
    pub name: String,
    pub file: Option<PathBuf>,
    pub line: u32,
    /// 1-based parameter number for parameters, 0 for other locals and globals.
    pub arg: u32,
    /// The function whose scope holds the variable (locals and static locals).
    pub function: Option<String>,
    /// For globals: `isLocal` (internal linkage).
    pub is_local: bool,
    pub ty: Option<u32>,
}

/// The shape of a variable's type, after typedefs and qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeShape {
    Pointer,
    Array,
    Struct,
    Scalar,
    Unknown,
}

#[derive(Debug, Default)]
pub struct DebugInfo {
    pub nodes: HashMap<u32, MdNode>,
    /// Function name -> its `DISubprogram`.
    pub func_sub: HashMap<String, u32>,
    /// IR global name -> its `DIGlobalVariable`s (through `DIGlobalVariableExpression`).
    pub global_vars: HashMap<String, Vec<u32>>,
    /// Function name -> its debug intrinsic calls in textual order.
    pub dbg_calls: HashMap<String, Vec<DbgCall>>,
    /// Every struct/union member name the program declares.
    pub member_names: HashSet<String>,
}

impl DebugInfo {
    pub fn parse(text: &str) -> DebugInfo {
        let mut di = DebugInfo::default();
        let mut cur_fn: Option<String> = None;
        for line in text.lines() {
            if let Some(f) = &cur_fn {
                if line == "}" {
                    cur_fn = None;
                    continue;
                }
                if let Some(c) = parse_dbg_call(line) {
                    di.dbg_calls.entry(f.clone()).or_default().push(c);
                }
                continue;
            }
            if line.starts_with("define ") {
                if let Some(name) = global_name_after(line, line.find('@').unwrap_or(0)) {
                    if let Some(sub) = dbg_refs(line).last() {
                        di.func_sub.insert(name.clone(), *sub);
                    }
                    cur_fn = Some(name);
                }
                continue;
            }
            if line.starts_with('@') {
                if let Some(name) = global_name_after(line, 0) {
                    let refs = dbg_refs(line);
                    if !refs.is_empty() {
                        di.global_vars.insert(name, refs);
                    }
                }
                continue;
            }
            if line.starts_with('!') && line.as_bytes().get(1).is_some_and(u8::is_ascii_digit) {
                if let Some((id, node)) = parse_md_line(line) {
                    di.nodes.insert(id, node);
                }
            }
        }
        // Resolve DIGlobalVariableExpression -> DIGlobalVariable.
        let resolved: HashMap<String, Vec<u32>> = di
            .global_vars
            .iter()
            .map(|(g, refs)| {
                let vars = refs
                    .iter()
                    .filter_map(|r| {
                        let n = di.nodes.get(r)?;
                        match n.kind.as_str() {
                            "DIGlobalVariableExpression" => n.node("var"),
                            "DIGlobalVariable" => Some(*r),
                            _ => None,
                        }
                    })
                    .collect();
                (g.clone(), vars)
            })
            .collect();
        di.global_vars = resolved;
        di.member_names = di
            .nodes
            .values()
            .filter(|n| n.kind == "DIDerivedType" && n.word("tag") == Some("DW_TAG_member"))
            .filter_map(|n| n.str("name").map(str::to_owned))
            .collect();
        di
    }

    pub fn file_path(&self, file: u32) -> Option<PathBuf> {
        let f = self.nodes.get(&file)?;
        let name = f.str("filename")?;
        let p = PathBuf::from(name);
        if p.is_absolute() {
            return Some(p);
        }
        match f.str("directory") {
            Some(d) if !d.is_empty() => Some(PathBuf::from(d).join(p)),
            _ => Some(p),
        }
    }

    /// The `DISubprogram` enclosing a scope (lexical blocks walk up to it).
    pub fn subprogram_of(&self, mut scope: u32) -> Option<u32> {
        for _ in 0..256 {
            let n = self.nodes.get(&scope)?;
            match n.kind.as_str() {
                "DISubprogram" => return Some(scope),
                "DILexicalBlock" | "DILexicalBlockFile" => scope = n.node("scope")?,
                _ => return None,
            }
        }
        None
    }

    pub fn subprogram_name(&self, sub: u32) -> Option<&str> {
        self.nodes.get(&sub)?.str("name")
    }

    pub fn var_info(&self, id: u32) -> Option<VarInfo> {
        let n = self.nodes.get(&id)?;
        if n.kind != "DILocalVariable" && n.kind != "DIGlobalVariable" {
            return None;
        }
        let function = n
            .node("scope")
            .and_then(|s| self.subprogram_of(s))
            .and_then(|s| self.subprogram_name(s))
            .map(str::to_owned);
        Some(VarInfo {
            name: n.str("name").unwrap_or("").to_owned(),
            file: n.node("file").and_then(|f| self.file_path(f)),
            line: n.int("line").unwrap_or(0).max(0) as u32,
            arg: n.int("arg").unwrap_or(0).max(0) as u32,
            function,
            is_local: n.word("isLocal") == Some("true"),
            ty: n.node("type"),
        })
    }

    pub fn type_shape(&self, ty: Option<u32>) -> TypeShape {
        let mut cur = match ty {
            Some(t) => t,
            None => return TypeShape::Unknown,
        };
        for _ in 0..64 {
            let Some(n) = self.nodes.get(&cur) else {
                return TypeShape::Unknown;
            };
            match n.kind.as_str() {
                "DIBasicType" => return TypeShape::Scalar,
                "DISubroutineType" => return TypeShape::Scalar,
                "DICompositeType" => {
                    return match n.word("tag") {
                        Some("DW_TAG_array_type") => TypeShape::Array,
                        Some("DW_TAG_structure_type") | Some("DW_TAG_union_type") => {
                            TypeShape::Struct
                        }
                        _ => TypeShape::Scalar,
                    }
                }
                "DIDerivedType" => match n.word("tag") {
                    Some("DW_TAG_pointer_type") => return TypeShape::Pointer,
                    _ => match n.node("baseType") {
                        Some(b) => cur = b,
                        None => return TypeShape::Unknown,
                    },
                },
                _ => return TypeShape::Unknown,
            }
        }
        TypeShape::Unknown
    }

    /// Every variable node the program declares (for the "all variables" count).
    pub fn all_variables(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| {
                n.kind == "DILocalVariable"
                    || (n.kind == "DIGlobalVariable" && n.word("isDefinition") != Some("false"))
            })
            .count()
    }
}

/// Reads `@name` (plain or quoted) starting at byte `at` (which must be the `@`).
fn global_name_after(line: &str, at: usize) -> Option<String> {
    let rest = line.get(at..)?.strip_prefix('@')?;
    if let Some(q) = rest.strip_prefix('"') {
        let end = q.find('"')?;
        return Some(unescape(&q[..end]));
    }
    let end = rest
        .find(|c: char| {
            !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' || c == '-')
        })
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some(rest[..end].to_owned())
}

fn dbg_refs(line: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("!dbg !") {
        rest = &rest[i + 6..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if let Ok(n) = rest[..end].parse() {
            out.push(n);
        }
    }
    out
}

fn parse_dbg_call(line: &str) -> Option<DbgCall> {
    let (declare, at) = if let Some(i) = line.find("@llvm.dbg.declare(metadata ") {
        (true, i + "@llvm.dbg.declare(metadata ".len())
    } else if let Some(i) = line.find("@llvm.dbg.value(metadata ") {
        (false, i + "@llvm.dbg.value(metadata ".len())
    } else if let Some(i) = line.find("@llvm.dbg.addr(metadata ") {
        (true, i + "@llvm.dbg.addr(metadata ".len())
    } else {
        return None;
    };
    let rest = &line[at..];
    let sep = rest.find(", metadata !")?;
    let first = &rest[..sep];
    let after = &rest[sep + ", metadata !".len()..];
    let end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let var: u32 = after[..end].parse().ok()?;
    let globals = globals_in(first);
    let operands = if first.starts_with("!DIArgList(") {
        locals_in(first)
    } else {
        // The operand is last; a quoted name may contain spaces, so start at its `%`.
        match first.rfind(" %") {
            Some(at) => locals_in(&first[at + 1..]),
            None => Vec::new(),
        }
    };
    Some(DbgCall {
        declare,
        operands,
        globals,
        var,
    })
}

/// Names of `@globals` in a snippet of IR text (not intrinsics).
fn globals_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in s.match_indices('@') {
        if let Some(n) = global_name_after(s, i) {
            if !n.starts_with("llvm.") {
                out.push(n);
            }
        }
    }
    out
}

/// Names of `%locals` in a snippet of IR text.
fn locals_in(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let rest = &s[i + 1..];
            if let Some(q) = rest.strip_prefix('"') {
                if let Some(end) = q.find('"') {
                    out.push(unescape(&q[..end]));
                    i += end + 3;
                    continue;
                }
            }
            let end = rest
                .find(|c: char| {
                    !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' || c == '-')
                })
                .unwrap_or(rest.len());
            if end > 0 {
                out.push(rest[..end].to_owned());
            }
            i += end + 1;
        } else {
            i += 1;
        }
    }
    out
}

/// LLVM escapes non-printable bytes in names and strings as `\XX`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 2 < b.len() + 1 {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
                continue;
            }
            if let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2)) {
                let hex = |c: u8| (c as char).to_digit(16);
                if let (Some(h), Some(l)) = (hex(*h), hex(*l)) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_md_line(line: &str) -> Option<(u32, MdNode)> {
    let rest = &line[1..];
    let eq = rest.find(" = ")?;
    let id: u32 = rest[..eq].parse().ok()?;
    let mut body = &rest[eq + 3..];
    if let Some(b) = body.strip_prefix("distinct ") {
        body = b;
    }
    let body = body.strip_prefix('!')?;
    if let Some(t) = body.strip_prefix('{') {
        let inner = t.strip_suffix('}')?;
        let elems = split_top(inner)
            .into_iter()
            .map(|e| parse_val(e.trim()))
            .collect();
        return Some((
            id,
            MdNode {
                kind: "tuple".into(),
                fields: Vec::new(),
                elems,
            },
        ));
    }
    let open = body.find('(')?;
    let kind = body[..open].to_owned();
    let close = body.rfind(')')?;
    let inner = &body[open + 1..close];
    let mut fields = Vec::new();
    for part in split_top(inner) {
        let part = part.trim();
        if let Some(colon) = part.find(": ") {
            fields.push((
                part[..colon].to_owned(),
                parse_val(part[colon + 2..].trim()),
            ));
        }
    }
    Some((
        id,
        MdNode {
            kind,
            fields,
            elems: Vec::new(),
        },
    ))
}

/// Splits on commas that are outside quotes, parentheses and braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut in_str = false;
    let mut start = 0;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if in_str {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'(' | b'{' | b'[' | b'<' => depth += 1,
                b')' | b'}' | b']' | b'>' => depth -= 1,
                b',' if depth == 0 => {
                    out.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        i += 1;
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn parse_val(v: &str) -> MdVal {
    if v == "null" {
        return MdVal::Null;
    }
    if let Some(r) = v.strip_prefix('!') {
        if let Ok(n) = r.parse() {
            return MdVal::Ref(n);
        }
        return MdVal::Other(v.to_owned());
    }
    if let Some(s) = v.strip_prefix('"') {
        return MdVal::Str(unescape(s.strip_suffix('"').unwrap_or(s)));
    }
    if let Ok(i) = v.parse::<i64>() {
        return MdVal::Int(i);
    }
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ' ' || c == '|')
    {
        return MdVal::Word(v.to_owned());
    }
    MdVal::Other(v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
@hosts = common dso_local global %struct.host* null, align 8, !dbg !0
@cb.calls = internal global i32 0, align 4, !dbg !82
define internal void @cb(i8* noundef %u, %struct.pcap_pkthdr* noundef %h) #0 !dbg !84 {
entry:
  call void @llvm.dbg.value(metadata i8* %u, metadata !159, metadata !DIExpression()), !dbg !160
  call void @llvm.dbg.declare(metadata { i32, i32 }* %"odd name", metadata !161, metadata !DIExpression()), !dbg !160
  call void @llvm.dbg.value(metadata i32 0, metadata !161, metadata !DIExpression()), !dbg !160
  call void @llvm.dbg.value(metadata i32* @total, metadata !161, metadata !DIExpression()), !dbg !160
  ret void
}
!0 = !DIGlobalVariableExpression(var: !1, expr: !DIExpression())
!1 = distinct !DIGlobalVariable(name: "hosts", scope: !2, file: !3, line: 6, type: !117, isLocal: false, isDefinition: true)
!3 = !DIFile(filename: "t.c", directory: "/tmp/sa")
!82 = !DIGlobalVariableExpression(var: !83, expr: !DIExpression())
!83 = distinct !DIGlobalVariable(name: "calls", scope: !84, file: !3, line: 10, type: !81, isLocal: true, isDefinition: true)
!84 = distinct !DISubprogram(name: "cb", scope: !3, file: !3, line: 9, type: !85, scopeLine: 9, flags: DIFlagPrototyped, spFlags: DISPFlagLocalToUnit | DISPFlagDefinition, unit: !2, retainedNodes: !113)
!117 = !DIDerivedType(tag: DW_TAG_pointer_type, baseType: !6, size: 64)
!81 = !DIBasicType(name: "int", size: 32, encoding: DW_ATE_signed)
!159 = !DILocalVariable(name: "u", arg: 1, scope: !170, file: !3, line: 9, type: !117)
!170 = distinct !DILexicalBlock(scope: !84, file: !3, line: 9, column: 3)
!200 = !DIDerivedType(tag: DW_TAG_member, name: "ip_src", scope: !7, file: !8, line: 128, baseType: !27, size: 32, offset: 96)
!201 = !{!0, !82}
"#;

    #[test]
    fn reads_globals_functions_and_dbg_calls() {
        let di = DebugInfo::parse(SAMPLE);
        assert_eq!(di.global_vars["hosts"], vec![1]);
        assert_eq!(di.func_sub["cb"], 84);
        let calls = &di.dbg_calls["cb"];
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[3].globals, vec!["total"]);
        assert_eq!(calls[0].operands, vec!["u"]);
        assert!(calls[0].globals.is_empty());
        assert!(calls[1].declare);
        assert_eq!(calls[1].operands, vec!["odd name"]);
        assert!(calls[2].operands.is_empty());
        let calls_var = di.var_info(di.global_vars["cb.calls"][0]).unwrap();
        assert_eq!(calls_var.name, "calls");
        assert_eq!(calls_var.function.as_deref(), Some("cb"));
        assert!(calls_var.is_local);
        let u = di.var_info(159).unwrap();
        assert_eq!((u.arg, u.line), (1, 9));
        assert_eq!(
            u.function.as_deref(),
            Some("cb"),
            "lexical blocks walk up to the function"
        );
        assert_eq!(u.file, Some(PathBuf::from("/tmp/sa/t.c")));
        assert_eq!(di.type_shape(Some(117)), TypeShape::Pointer);
        assert_eq!(di.type_shape(Some(81)), TypeShape::Scalar);
        assert!(di.member_names.contains("ip_src"));
        assert_eq!(di.nodes[&201].elems, vec![MdVal::Ref(0), MdVal::Ref(82)]);
    }
}
