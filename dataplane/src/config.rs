//! Chain configuration: the operator's logical DAG, in TOML.
//!
//! ```toml
//! [[vertex]]
//! name = "nat"           # unique; also the store's name prefix for its objects
//! nf = "nat"             # nat | portscan | trojan | lb | ratelimit
//! parallelism = 2        # instances (default 1)
//! mode = "eo-c-na"       # traditional | eo | eo-c | eo-c-na (default eo-c-na)
//! [vertex.config]        # the NF's own settings
//! public_ip = "198.51.100.1"
//!
//! [[edge]]               # on-path: packets flow from -> to
//! from = "nat"
//! to = "portscan"
//!
//! [[tap]]                # off-path: `to` gets a copy of what `from` emits
//! from = "nat"
//! to = "trojan"
//! ```
//!
//! Exactly one vertex has no incoming edge or tap: the entry, fed by the root. A vertex has
//! at most one outgoing edge; a vertex without one is an exit (on-path: its output leaves the
//! chain; off-path: its output is discarded). See `examples/chains/paper.toml`.

use chc_store::client::cache::Mode;
use nfs::nf::PartitionKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("chain: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ChainFile {
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub root: RootSection,
    #[serde(default, rename = "vertex")]
    pub vertices: Vec<VertexFile>,
    #[serde(default, rename = "edge")]
    pub edges: Vec<EdgeFile>,
    #[serde(default, rename = "tap")]
    pub taps: Vec<EdgeFile>,
    /// DPDK ports where traffic enters and leaves the chain (`--backend dpdk`).
    #[serde(default, rename = "port")]
    pub ports: Vec<PortFile>,
    /// DPDK links between the hosts a chain is split over (`--backend dpdk`).
    #[serde(default, rename = "link")]
    pub links: Vec<LinkFile>,
}

/// A DPDK port of the chain: a PCI address or a virtual device string.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortFile {
    /// Unique name, used by `egress` and in telemetry.
    pub name: String,
    /// `0000:3b:00.0`, or a vdev such as `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`
    /// (added to the EAL arguments unless they already create it).
    pub device: String,
    /// The host whose dataplane owns the port (default: the root's host).
    #[serde(default)]
    pub host: Option<String>,
    /// Traffic received here enters the chain (default true; false: output only).
    #[serde(default = "yes")]
    pub rx: bool,
    /// Where packets that entered here leave the chain (default: this port).
    #[serde(default)]
    pub egress: Option<String>,
    /// MTU to set, if not the device's default.
    #[serde(default)]
    pub mtu: Option<u16>,
}

fn yes() -> bool {
    true
}

/// A DPDK link between two hosts; packets crossing it carry CHC metadata in NSH.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkFile {
    /// Both ends: which host, which device there.
    pub ends: [LinkEnd; 2],
    /// MTU to set on both ends (NSH adds about 100 bytes to each frame).
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// One end of a [`LinkFile`].
#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LinkEnd {
    pub host: String,
    pub device: String,
    /// The MAC address frames sent from this end go to (default: broadcast).
    #[serde(default)]
    pub peer_mac: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// Shard threads of the in-process store.
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// External `chc-store` processes (native protocol addresses); empty: in-process.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The servers' `--auth-token-file` (with `addresses`).
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            shards: default_shards(),
            addresses: Vec::new(),
            token_file: None,
        }
    }
}

fn default_shards() -> u32 {
    2
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RootSection {
    #[serde(default = "default_root_id")]
    pub id: u16,
    /// How far (in clocks) the oldest packet in the root log may lag the newest before the
    /// root stops taking input; with packets settling in order, the packets it holds.
    #[serde(default = "default_log_limit")]
    pub log_limit: usize,
    /// Persist the clock every this many packets.
    #[serde(default = "default_persist")]
    pub persist_every: u64,
    /// Where the root's host listens for deletes and commits from the chain's other hosts
    /// (`--backend dpdk` with vertices on several hosts), e.g. `10.0.0.1:7100`.
    #[serde(default)]
    pub control: Option<String>,
    /// How long the root holds its input for a failed host to come back before it gives up
    /// (ms; chains over several hosts, state on store servers).
    #[serde(default = "default_rejoin_wait_ms")]
    pub rejoin_wait_ms: u64,
}

impl Default for RootSection {
    fn default() -> Self {
        RootSection {
            id: default_root_id(),
            log_limit: default_log_limit(),
            persist_every: default_persist(),
            control: None,
            rejoin_wait_ms: default_rejoin_wait_ms(),
        }
    }
}

fn default_rejoin_wait_ms() -> u64 {
    60_000
}

fn default_root_id() -> u16 {
    1
}
fn default_log_limit() -> usize {
    1 << 16
}
fn default_persist() -> u64 {
    100
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct VertexFile {
    pub name: String,
    pub nf: String,
    #[serde(default = "one")]
    pub parallelism: u16,
    #[serde(default)]
    pub mode: Option<String>,
    /// Override the partition key chosen from the NFs' scopes.
    #[serde(default)]
    pub partition: Option<String>,
    #[serde(default)]
    pub config: toml::Table,
    /// The host whose dataplane runs this vertex's instances (`--backend dpdk`; default:
    /// the root's host).
    #[serde(default)]
    pub host: Option<String>,
    /// DPDK lcores for the instances (instance i on `lcores[i % len]`; default: spread).
    #[serde(default)]
    pub lcores: Vec<u32>,
}

fn one() -> u16 {
    1
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct EdgeFile {
    pub from: String,
    pub to: String,
}

/// A vertex of a compiled chain.
#[derive(Debug, Clone)]
pub struct Vertex {
    /// Store vertex id (index + 1).
    pub id: u16,
    pub name: String,
    pub nf: String,
    pub parallelism: u16,
    pub mode: Mode,
    pub config: toml::Table,
    /// What traffic to this vertex is partitioned on.
    pub partition: PartitionKey,
    /// On-path successor.
    pub next: Option<usize>,
    /// Off-path copies.
    pub taps: Vec<usize>,
    /// On the main path (false: reached only through a tap).
    pub on_path: bool,
    /// Upstream instances that send to this vertex (the root counts as one).
    pub senders: usize,
    /// Host running the instances under `--backend dpdk` (`None`: the root's host).
    pub host: Option<String>,
    /// DPDK lcores for the instances (empty: spread over the host's lcores).
    pub lcores: Vec<u32>,
}

/// A validated chain.
#[derive(Debug, Clone)]
pub struct Chain {
    pub vertices: Vec<Vertex>,
    pub entry: usize,
    pub store: StoreSection,
    pub root: RootSection,
    /// Ports and links for `--backend dpdk` (empty for the pcap backend).
    pub ports: Vec<PortFile>,
    pub links: Vec<LinkFile>,
}

/// The built-in default chain (the paper's).
pub const PAPER_CHAIN: &str = include_str!("../../examples/chains/paper.toml");

impl Chain {
    pub fn load(path: &Path) -> Result<Chain, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Chain::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Chain, ConfigError> {
        let f: ChainFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            msg: e.to_string(),
        })?;
        Chain::compile(f)
    }

    pub fn paper() -> Chain {
        Chain::parse(PAPER_CHAIN, "examples/chains/paper.toml")
            .expect("the built-in chain is valid")
    }

    fn compile(f: ChainFile) -> Result<Chain, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        if f.vertices.is_empty() {
            return Err(bad("no [[vertex]] defined".into()));
        }
        if f.vertices.len() > 1000 {
            return Err(bad("at most 1000 vertices".into()));
        }
        let mut index = HashMap::new();
        for (i, v) in f.vertices.iter().enumerate() {
            if v.name.is_empty() || v.name.contains(':') {
                return Err(bad(format!(
                    "vertex name {:?} must be non-empty and without ':'",
                    v.name
                )));
            }
            if index.insert(v.name.clone(), i).is_some() {
                return Err(bad(format!("vertex {:?} defined twice", v.name)));
            }
            if v.parallelism == 0 || v.parallelism > 256 {
                return Err(bad(format!(
                    "vertex {:?}: parallelism must be 1..=256",
                    v.name
                )));
            }
            if !nfs::KINDS.contains(&v.nf.as_str()) {
                return Err(bad(format!(
                    "vertex {:?}: unknown nf {:?} (known: {})",
                    v.name,
                    v.nf,
                    nfs::KINDS.join(", ")
                )));
            }
        }
        let lookup = |n: &str, what: &str| {
            index
                .get(n)
                .copied()
                .ok_or_else(|| bad(format!("{what} names unknown vertex {n:?}")))
        };
        let n = f.vertices.len();
        let mut next = vec![None; n];
        let mut taps = vec![Vec::new(); n];
        let mut incoming = vec![0usize; n];
        for e in &f.edges {
            let (a, b) = (lookup(&e.from, "an edge")?, lookup(&e.to, "an edge")?);
            if next[a].replace(b).is_some() {
                return Err(bad(format!("vertex {:?} has two outgoing edges", e.from)));
            }
            incoming[b] += 1;
        }
        for t in &f.taps {
            let (a, b) = (lookup(&t.from, "a tap")?, lookup(&t.to, "a tap")?);
            taps[a].push(b);
            incoming[b] += 1;
        }
        let entries: Vec<usize> = (0..n).filter(|&i| incoming[i] == 0).collect();
        if entries.len() != 1 {
            return Err(bad(format!(
                "exactly one vertex must have no incoming edge or tap (found: {})",
                entries
                    .iter()
                    .map(|&i| f.vertices[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let entry = entries[0];
        // Reachability, cycles and on-path marking by walking from the entry.
        let mut on_path = vec![false; n];
        let mut cur = Some(entry);
        let mut steps = 0;
        while let Some(v) = cur {
            if on_path[v] {
                return Err(bad("the on-path edges form a cycle".into()));
            }
            on_path[v] = true;
            cur = next[v];
            steps += 1;
            if steps > n {
                return Err(bad("the on-path edges form a cycle".into()));
            }
        }
        let mut reach = vec![false; n];
        let mut stack = vec![(entry, 0usize)];
        while let Some((v, depth)) = stack.pop() {
            if depth > n {
                return Err(bad("edges and taps form a cycle".into()));
            }
            reach[v] = true;
            if let Some(x) = next[v] {
                stack.push((x, depth + 1));
            }
            for &t in &taps[v] {
                stack.push((t, depth + 1));
            }
        }
        if let Some(i) = (0..n).find(|&i| !reach[i]) {
            return Err(bad(format!(
                "vertex {:?} is not reachable from the entry",
                f.vertices[i].name
            )));
        }
        let mut vertices = Vec::with_capacity(n);
        for (i, v) in f.vertices.iter().enumerate() {
            let mode = match &v.mode {
                None => Mode::EoCNa,
                Some(m) => m
                    .parse()
                    .map_err(|e: String| bad(format!("vertex {:?}: {e}", v.name)))?,
            };
            // Validate the NF's own settings now, not at the first packet.
            nfs::build(&v.nf, &v.config).map_err(|e| bad(format!("vertex {:?}: {e}", v.name)))?;
            vertices.push(Vertex {
                id: (i + 1) as u16,
                name: v.name.clone(),
                nf: v.nf.clone(),
                parallelism: v.parallelism,
                mode,
                config: v.config.clone(),
                partition: PartitionKey::Flow,
                next: next[i],
                taps: taps[i].clone(),
                on_path: on_path[i],
                senders: 0,
                host: v.host.clone(),
                lcores: v.lcores.clone(),
            });
        }
        // Senders per vertex: the instances of everything that feeds it (the root for the entry).
        vertices[entry].senders = 1;
        for i in 0..n {
            let p = vertices[i].parallelism as usize;
            let outs: Vec<usize> = vertices[i]
                .next
                .into_iter()
                .chain(vertices[i].taps.clone())
                .collect();
            for o in outs {
                vertices[o].senders += p;
            }
        }
        // Partition each vertex on the coarsest scope declared by it or anything downstream:
        // then a group of flows keyed that way takes one path through the whole chain, in
        // order, and the state an instance keeps for the group is not touched by others.
        for i in 0..n {
            let key = match &f.vertices[i].partition {
                Some(p) => p
                    .parse::<PartitionKey>()
                    .map_err(|e| bad(format!("vertex {:?}: {e}", vertices[i].name)))?,
                None => coarsest_downstream(&vertices, i),
            };
            vertices[i].partition = key;
        }
        Ok(Chain {
            vertices,
            entry,
            store: f.store,
            root: f.root,
            ports: f.ports,
            links: f.links,
        })
    }

    pub fn vertex(&self, name: &str) -> Option<&Vertex> {
        self.vertices.iter().find(|v| v.name == name)
    }

    /// The index of the vertex named `name`.
    pub fn vertex_index(&self, name: &str) -> Option<usize> {
        self.vertices.iter().position(|v| v.name == name)
    }

    /// Sets every vertex's mode (benchmarks compare modes on one chain).
    pub fn set_mode(&mut self, mode: Mode) {
        for v in &mut self.vertices {
            v.mode = mode;
        }
    }

    /// Sets a vertex's parallelism (and recomputes sender counts).
    pub fn set_parallelism(&mut self, name: &str, p: u16) -> Result<(), ConfigError> {
        let i = self
            .vertices
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| ConfigError::Invalid(format!("no vertex {name:?}")))?;
        if p == 0 || p > 256 {
            return Err(ConfigError::Invalid("parallelism must be 1..=256".into()));
        }
        self.vertices[i].parallelism = p;
        for v in &mut self.vertices {
            v.senders = 0;
        }
        self.vertices[self.entry].senders = 1;
        for i in 0..self.vertices.len() {
            let pi = self.vertices[i].parallelism as usize;
            let outs: Vec<usize> = self.vertices[i]
                .next
                .into_iter()
                .chain(self.vertices[i].taps.clone())
                .collect();
            for o in outs {
                self.vertices[o].senders += pi;
            }
        }
        Ok(())
    }
}

/// The coarsest partition key among the scopes of vertex `i` and every vertex after it.
fn coarsest_downstream(vs: &[Vertex], i: usize) -> PartitionKey {
    let mut best = PartitionKey::Flow;
    let mut stack = vec![i];
    let mut seen = vec![false; vs.len()];
    while let Some(v) = stack.pop() {
        if std::mem::replace(&mut seen[v], true) {
            continue;
        }
        if let Ok(nf) = nfs::build(&vs[v].nf, &vs[v].config) {
            for s in nf.scopes() {
                if s.rank() > best.rank() {
                    best = s;
                }
            }
        }
        stack.extend(vs[v].next);
        stack.extend(vs[v].taps.iter().copied());
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paper_chain_compiles() {
        let c = Chain::paper();
        let names: Vec<_> = c.vertices.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["nat", "portscan", "lb", "trojan"]);
        assert_eq!(c.vertices[c.entry].name, "nat");
        let trojan = c.vertex("trojan").unwrap();
        assert!(!trojan.on_path);
        assert_eq!(trojan.senders, 1);
        // NAT is partitioned by client host because the portscan and Trojan detectors keep
        // per-host state downstream; the LB only needs flows.
        assert_eq!(c.vertex("nat").unwrap().partition, PartitionKey::Client);
        assert_eq!(c.vertex("lb").unwrap().partition, PartitionKey::Flow);
    }

    #[test]
    fn invalid_chains_say_why() {
        let cases = [
            ("", "no [[vertex]]"),
            ("[[vertex]]\nname='a'\nnf='nat'\n[[vertex]]\nname='a'\nnf='lb'", "defined twice"),
            ("[[vertex]]\nname='a'\nnf='router'", "unknown nf"),
            ("[[vertex]]\nname='a'\nnf='nat'\n[[edge]]\nfrom='a'\nto='b'", "unknown vertex"),
            ("[[vertex]]\nname='a'\nnf='nat'\n[[vertex]]\nname='b'\nnf='lb'", "exactly one vertex"),
            (
                "[[vertex]]\nname='a'\nnf='nat'\n[[vertex]]\nname='b'\nnf='lb'\n[[edge]]\nfrom='a'\nto='b'\n[[edge]]\nfrom='b'\nto='a'",
                "exactly one vertex",
            ),
            ("[[vertex]]\nname='a'\nnf='nat'\nparallelism=0", "parallelism"),
            ("[[vertex]]\nname='a'\nnf='nat'\nmode='fast'", "mode must be"),
            ("[[vertex]]\nname='a'\nnf='nat'\n[vertex.config]\nport_min=0", "port_min"),
            ("[[vertex]]\nname='a'\nnf='nat'\ncolour='red'", "unknown field"),
        ];
        for (text, needle) in cases {
            let e = Chain::parse(text, "t.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
