//! Per-function control-flow facts: post-dominators, control dependence and loops.
//!
//! Packet loops usually never exit (`while (1)`), which leaves their blocks without a path to
//! the function's exit and so without post-dominators. Such regions get a fake edge to the exit
//! from one block of each terminal component, the usual fix; it only adds control
//! dependences, so slices stay sound.

use crate::ir::Func;

/// Strongly connected components (Tarjan, iterative). Returns the component of each node and
/// the components in reverse topological order (sinks first).
pub fn sccs(n: usize, succ: &dyn Fn(usize) -> Vec<usize>) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on = vec![false; n];
    let mut stack = Vec::new();
    let mut comp = vec![usize::MAX; n];
    let mut comps: Vec<Vec<usize>> = Vec::new();
    let mut next = 0;
    for s in 0..n {
        if index[s] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, Vec<usize>, usize)> = vec![(s, succ(s), 0)];
        index[s] = next;
        low[s] = next;
        next += 1;
        stack.push(s);
        on[s] = true;
        while !call.is_empty() {
            let top = call.len() - 1;
            let (v, ref ss, k) = call[top];
            if k < ss.len() {
                let w = ss[k];
                call[top].2 += 1;
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on[w] = true;
                    let sw = succ(w);
                    call.push((w, sw, 0));
                } else if on[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(u, _, _)) = call.last() {
                    low[u] = low[u].min(low[v]);
                }
                if low[v] == index[v] {
                    let id = comps.len();
                    let mut c = Vec::new();
                    while let Some(w) = stack.pop() {
                        on[w] = false;
                        comp[w] = id;
                        c.push(w);
                        if w == v {
                            break;
                        }
                    }
                    comps.push(c);
                }
            }
        }
    }
    (comp, comps)
}

#[derive(Debug, Clone)]
pub struct FuncCfg {
    /// For each block, the blocks whose terminator it is control dependent on.
    pub cd: Vec<Vec<u32>>,
    /// Immediate post-dominator of each block (`n` = the virtual exit).
    pub ipdom: Vec<u32>,
    /// Component id of each block.
    pub scc: Vec<u32>,
    /// Whether each component is a loop (more than one block, or a self edge).
    pub cyclic: Vec<bool>,
    pub scc_blocks: Vec<Vec<u32>>,
}

impl FuncCfg {
    pub fn in_loop(&self, b: u32) -> bool {
        self.cyclic[self.scc[b as usize] as usize]
    }
}

pub fn analyse(f: &Func) -> FuncCfg {
    let n = f.blocks.len();
    if n == 0 {
        return FuncCfg {
            cd: vec![],
            ipdom: vec![],
            scc: vec![],
            cyclic: vec![],
            scc_blocks: vec![],
        };
    }
    let succ = |b: usize| -> Vec<usize> { f.blocks[b].succs.iter().map(|&s| s as usize).collect() };
    let (comp, comps) = sccs(n, &succ);
    let cyclic: Vec<bool> = comps
        .iter()
        .map(|c| c.len() > 1 || f.blocks[c[0]].succs.contains(&(c[0] as u32)))
        .collect();

    // Successors with the virtual exit `n`.
    let mut ext_succ: Vec<Vec<usize>> = (0..n).map(&succ).collect();
    for (b, s) in ext_succ.iter_mut().enumerate() {
        if f.blocks[b].succs.is_empty() {
            s.push(n);
        }
    }
    // Blocks that cannot reach the exit: add a fake exit edge from each terminal component.
    loop {
        let reach = reaches_exit(&ext_succ, n);
        if reach.iter().take(n).all(|&r| r) {
            break;
        }
        // Components are in reverse topological order: the first unreaching one is a sink
        // among the unreaching blocks.
        let mut added = false;
        for c in &comps {
            if c.iter().all(|&b| !reach[b])
                && c.iter().all(|&b| {
                    ext_succ[b]
                        .iter()
                        .all(|&s| s == n || comp[s] == comp[b] || reach[s])
                })
            {
                let head = *c.iter().min().unwrap_or(&c[0]);
                ext_succ[head].push(n);
                added = true;
                break;
            }
        }
        if !added {
            // Should not happen; fall back to connecting every unreaching block.
            for b in 0..n {
                if !reach[b] {
                    ext_succ[b].push(n);
                }
            }
        }
    }

    // Post-dominators: dominators of the reverse graph rooted at the exit.
    let mut rpreds: Vec<Vec<usize>> = vec![Vec::new(); n + 1]; // reverse-graph predecessors = successors
    let mut rsucc: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for b in 0..n {
        for &s in &ext_succ[b] {
            rpreds[b].push(s);
            rsucc[s].push(b);
        }
    }
    let (order, rpo) = rpo_order(n + 1, n, &|v| rsucc[v].clone());
    let undef = usize::MAX;
    let mut idom = idoms(&order, &rpo, &|b| rpreds[b].clone());
    for d in idom.iter_mut() {
        if *d == undef {
            *d = n;
        }
    }

    let mut cd: Vec<Vec<u32>> = vec![Vec::new(); n];
    for a in 0..n {
        for &b in &ext_succ[a] {
            if b == idom[a] {
                continue;
            }
            let mut r = b;
            let mut guard = 0;
            while r != idom[a] && r != n && guard <= n {
                if !cd[r].contains(&(a as u32)) {
                    cd[r].push(a as u32);
                }
                r = idom[r];
                guard += 1;
            }
        }
    }
    FuncCfg {
        cd,
        ipdom: idom.iter().take(n).map(|&d| d as u32).collect(),
        scc: comp.iter().map(|&c| c as u32).collect(),
        cyclic,
        scc_blocks: comps
            .iter()
            .map(|c| c.iter().map(|&b| b as u32).collect())
            .collect(),
    }
}

/// A natural loop: the blocks of every back edge into `header`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    pub header: u32,
    pub blocks: Vec<u32>,
}

/// Immediate dominators (block 0 is the entry; unreachable blocks get `u32::MAX`) and the
/// reverse post-order position of each block.
pub fn dominators(f: &Func) -> (Vec<u32>, Vec<usize>) {
    let n = f.blocks.len();
    if n == 0 {
        return (vec![], vec![]);
    }
    let succ = |v: usize| f.blocks[v].succs.iter().map(|&s| s as usize).collect();
    let (order, rpo) = rpo_order(n, 0, &succ);
    let idom = idoms(&order, &rpo, &|b| {
        f.blocks[b].preds.iter().map(|&p| p as usize).collect()
    });
    let idom = idom
        .iter()
        .map(|&d| if d == usize::MAX { u32::MAX } else { d as u32 })
        .collect();
    (idom, rpo)
}

/// Depth-first reverse post-order from `root`: the order, and each node's position in it
/// (`usize::MAX` for nodes not reached).
pub fn rpo_order(
    n: usize,
    root: usize,
    succ: &dyn Fn(usize) -> Vec<usize>,
) -> (Vec<usize>, Vec<usize>) {
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut stack = vec![(root, succ(root), 0usize)];
    seen[root] = true;
    while let Some((v, ss, k)) = stack.last_mut() {
        if *k < ss.len() {
            let w = ss[*k];
            *k += 1;
            if !seen[w] {
                seen[w] = true;
                let sw = succ(w);
                stack.push((w, sw, 0));
            }
        } else {
            order.push(*v);
            stack.pop();
        }
    }
    order.reverse();
    let mut rpo = vec![usize::MAX; n];
    for (i, &v) in order.iter().enumerate() {
        rpo[v] = i;
    }
    (order, rpo)
}

/// Immediate dominators by the iterative algorithm of Cooper, Harvey and Kennedy; the first
/// node of `order` is the root. Unreached nodes get `usize::MAX`.
fn idoms(order: &[usize], rpo: &[usize], preds: &dyn Fn(usize) -> Vec<usize>) -> Vec<usize> {
    let undef = usize::MAX;
    let mut idom = vec![undef; rpo.len()];
    let Some(&root) = order.first() else {
        return idom;
    };
    idom[root] = root;
    let mut changed = true;
    while changed {
        changed = false;
        for &b in order.iter().skip(1) {
            let mut new = undef;
            for p in preds(b) {
                if idom[p] == undef {
                    continue;
                }
                new = if new == undef {
                    p
                } else {
                    let (mut x, mut y) = (p, new);
                    while x != y {
                        while rpo[x] > rpo[y] {
                            x = idom[x];
                        }
                        while rpo[y] > rpo[x] {
                            y = idom[y];
                        }
                    }
                    x
                };
            }
            if new != undef && idom[b] != new {
                idom[b] = new;
                changed = true;
            }
        }
    }
    idom
}

fn dominates(idom: &[u32], a: u32, mut b: u32) -> bool {
    loop {
        if a == b {
            return true;
        }
        let d = idom[b as usize];
        if d == u32::MAX || d == b {
            return false;
        }
        b = d;
    }
}

/// Natural loops, one per header. Back edges whose target does not dominate their source
/// (irreducible flow) are treated as loops over their strongly connected component.
pub fn natural_loops(f: &Func, cfg: &FuncCfg) -> Vec<Loop> {
    let (idom, rpo) = dominators(f);
    let mut by_header: std::collections::BTreeMap<u32, std::collections::BTreeSet<u32>> =
        Default::default();
    for (b, blk) in f.blocks.iter().enumerate() {
        let b = b as u32;
        if idom.get(b as usize) == Some(&u32::MAX) {
            continue;
        }
        for &h in &blk.succs {
            if cfg.scc[h as usize] != cfg.scc[b as usize] || !cfg.in_loop(h) {
                continue;
            }
            if !dominates(&idom, h, b) && rpo[h as usize] > rpo[b as usize] {
                // A forward or cross edge inside the component, not a loop edge.
                continue;
            }
            let body = by_header.entry(h).or_default();
            if dominates(&idom, h, b) {
                body.insert(h);
                let mut stack = vec![b];
                while let Some(x) = stack.pop() {
                    if body.insert(x) {
                        for &p in &f.blocks[x as usize].preds {
                            stack.push(p);
                        }
                    }
                }
            } else {
                body.extend(cfg.scc_blocks[cfg.scc[h as usize] as usize].iter().copied());
            }
        }
    }
    by_header
        .into_iter()
        .map(|(header, blocks)| Loop {
            header,
            blocks: blocks.into_iter().collect(),
        })
        .collect()
}

fn reaches_exit(ext_succ: &[Vec<usize>], n: usize) -> Vec<bool> {
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (b, ss) in ext_succ.iter().enumerate() {
        for &s in ss {
            preds[s].push(b);
        }
    }
    let mut reach = vec![false; n + 1];
    reach[n] = true;
    let mut stack = vec![n];
    while let Some(v) = stack.pop() {
        for &p in &preds[v] {
            if !reach[p] {
                reach[p] = true;
                stack.push(p);
            }
        }
    }
    reach
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Block;

    fn func(edges: &[&[u32]]) -> Func {
        let mut blocks: Vec<Block> = edges
            .iter()
            .enumerate()
            .map(|(i, s)| Block {
                name: format!("b{i}"),
                insts: vec![],
                succs: s.to_vec(),
                preds: vec![],
            })
            .collect();
        for i in 0..blocks.len() {
            for s in blocks[i].succs.clone() {
                blocks[s as usize].preds.push(i as u32);
            }
        }
        Func {
            name: "f".into(),
            defined: true,
            params: vec![],
            blocks,
            variadic: false,
            loc: None,
        }
    }

    #[test]
    fn if_then_else_control_dependence() {
        // 0 -> 1,2 ; 1 -> 3 ; 2 -> 3 ; 3 exit
        let c = analyse(&func(&[&[1, 2], &[3], &[3], &[]]));
        assert_eq!(c.cd[1], vec![0]);
        assert_eq!(c.cd[2], vec![0]);
        assert!(c.cd[3].is_empty());
        assert!(c.cd[0].is_empty());
        assert_eq!(c.ipdom[0], 3);
    }

    #[test]
    fn infinite_loop_gets_control_dependences() {
        // 0 -> 1 ; 1 -> 2,3 ; 2 -> 1 ; 3 -> 1   (while(1) { if (x) a else b })
        let c = analyse(&func(&[&[1], &[2, 3], &[1], &[1]]));
        assert!(c.cd[2].contains(&1));
        assert!(c.cd[3].contains(&1));
        assert!(c.in_loop(1) && c.in_loop(2) && !c.in_loop(0));
    }

    #[test]
    fn nested_natural_loops_are_separate() {
        // 0 -> 1 ; 1 -> 2 ; 2 -> 2,3 ; 3 -> 1   (outer loop 1..3 with inner self loop at 2)
        let f = func(&[&[1], &[2], &[2, 3], &[1]]);
        let c = analyse(&f);
        let loops = natural_loops(&f, &c);
        assert_eq!(loops.len(), 2);
        assert_eq!(
            loops[0],
            Loop {
                header: 1,
                blocks: vec![1, 2, 3]
            }
        );
        assert_eq!(
            loops[1],
            Loop {
                header: 2,
                blocks: vec![2]
            }
        );
    }

    #[test]
    fn loop_body_depends_on_loop_condition() {
        // 0 -> 1 ; 1 -> 2,3 ; 2 -> 1 ; 3 exit   (while (c) body)
        let c = analyse(&func(&[&[1], &[2, 3], &[1], &[]]));
        assert_eq!(c.cd[2], vec![1]);
        assert!(
            c.cd[1].contains(&1),
            "the header depends on itself through the back edge"
        );
        assert!(c.cd[3].is_empty());
    }
}
