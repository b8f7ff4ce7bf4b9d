//! Where everything runs: which vertices, ports and links belong to this host, which lcore
//! runs each instance, which host has the root. Pure computation over the chain file, so
//! every rule is tested without DPDK.

use crate::config::{Chain, PortFile};
use std::collections::BTreeSet;

/// Why a chain cannot run under `--backend dpdk` as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chain placement: {0}")]
pub struct PlanError(pub String);

fn bad<T>(m: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(m.into()))
}

/// A port this host opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPlan {
    /// Index in the chain's port list (what packets carry as their egress).
    pub index: u16,
    pub name: String,
    pub device: String,
    pub rx: bool,
    /// Chain port index packets entering here leave by.
    pub egress: u16,
    pub mtu: Option<u16>,
}

/// This host's end of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The host at the other end.
    pub peer: String,
    pub device: String,
    pub peer_mac: [u8; 6],
    pub mtu: Option<u16>,
}

/// Where one instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On this host, on chain lcore number `slot` (an index into [`Plan::lcores`]).
    Local { slot: usize },
    /// On another host, reached over link number `link` (an index into [`Plan::links`]).
    Remote { link: usize },
}

/// Everything this host runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// This host's name ("" when the chain runs on one host).
    pub host: String,
    /// Whether the root runs here.
    pub root_here: bool,
    /// Lcores that run chain work; the first also runs the root or the link receiver and
    /// owns every port's queues.
    pub lcores: Vec<u32>,
    /// `placement[v][i]`: where instance i of vertex v runs.
    pub placement: Vec<Vec<Placement>>,
    /// Vertices in an order where every vertex comes after those that feed it.
    pub topo: Vec<usize>,
    /// Ports of this host.
    pub ports: Vec<PortPlan>,
    /// Links of this host.
    pub links: Vec<LinkPlan>,
    /// Address of the root's control channel (needed when the chain spans hosts).
    pub control: Option<String>,
    /// The chain spans several hosts.
    pub multi_host: bool,
}

impl Plan {
    /// Whether any instance runs on this host.
    pub fn runs_instances(&self) -> bool {
        self.placement
            .iter()
            .flatten()
            .any(|p| matches!(p, Placement::Local { .. }))
    }
}

fn host_of(h: &Option<String>, root_host: &str) -> String {
    h.clone().unwrap_or_else(|| root_host.to_string())
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *m = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// Vertices in topological order (entry first; a vertex after everything that feeds it).
pub fn topo_order(chain: &Chain) -> Vec<usize> {
    let n = chain.vertices.len();
    let mut indeg = vec![0usize; n];
    for v in &chain.vertices {
        for o in v.next.iter().chain(v.taps.iter()) {
            indeg[*o] += 1;
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(v) = ready.pop() {
        order.push(v);
        let outs: Vec<usize> = chain.vertices[v]
            .next
            .iter()
            .chain(chain.vertices[v].taps.iter())
            .copied()
            .collect();
        for o in outs.into_iter().rev() {
            indeg[o] -= 1;
            if indeg[o] == 0 {
                ready.push(o);
            }
        }
    }
    order
}

/// Works out this host's part of `chain`. `host` is the `--host` name (required when the
/// chain names hosts); `lcores` the EAL's chain lcores (workers, or the main lcore alone).
pub fn plan(chain: &Chain, host: Option<&str>, lcores: &[u32]) -> Result<Plan, PlanError> {
    if lcores.is_empty() {
        return bad("no lcore to run on");
    }
    let root_host = if chain.vertices.is_empty() {
        chain
            .ports
            .iter()
            .find_map(|p| p.host.clone())
            .unwrap_or_default()
    } else {
        chain.vertices[chain.entry].host.clone().unwrap_or_default()
    };
    let mut hosts = BTreeSet::new();
    hosts.insert(root_host.clone());
    for v in &chain.vertices {
        hosts.insert(host_of(&v.host, &root_host));
    }
    for p in &chain.ports {
        hosts.insert(host_of(&p.host, &root_host));
    }
    for l in &chain.links {
        for e in &l.ends {
            hosts.insert(e.host.clone());
        }
    }
    let multi_host = hosts.len() > 1;
    let me = match host {
        Some(h) if hosts.contains(h) => h.to_string(),
        Some(h) => {
            return bad(format!(
                "--host {h:?} is not named in the chain (hosts: {})",
                hosts.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        None if multi_host => {
            return bad(format!(
                "the chain spans hosts {}; say which this is with --host",
                hosts.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
        }
        None => root_host.clone(),
    };
    if multi_host && chain.root.control.is_none() {
        return bad("a chain on several hosts needs [root] control = \"ADDR:PORT\" (where the root's host listens for deletes and commits)");
    }

    // Ports.
    let mut names = BTreeSet::new();
    for p in &chain.ports {
        if !names.insert(p.name.as_str()) {
            return bad(format!("port {:?} defined twice", p.name));
        }
    }
    let index_of = |name: &str| chain.ports.iter().position(|p| p.name == name);
    let exit_host = exit_host(chain, &root_host);
    let mut ports = Vec::new();
    for (i, p) in chain.ports.iter().enumerate() {
        let h = host_of(&p.host, &root_host);
        let egress = match &p.egress {
            Some(e) => index_of(e).ok_or_else(|| {
                PlanError(format!(
                    "port {:?}: egress names unknown port {e:?}",
                    p.name
                ))
            })?,
            None => i,
        };
        if p.rx {
            if h != root_host {
                return bad(format!(
                    "port {:?} receives traffic but is on host {h:?}; only the root's host ({root_host:?}) takes input",
                    p.name
                ));
            }
            // Packets that leave the chain on another host than the egress port's cross
            // the exit host's one link to it (and are reported there, as they go out).
            let eh = host_of(&chain.ports[egress].host, &root_host);
            let touches = |l: &crate::config::LinkFile, h: &str| l.ends.iter().any(|e| e.host == h);
            let exit_links = chain
                .links
                .iter()
                .filter(|l| touches(l, &exit_host))
                .count();
            let joined = chain
                .links
                .iter()
                .any(|l| touches(l, &exit_host) && touches(l, &eh));
            if eh != exit_host && !(joined && exit_links == 1) {
                return bad(format!(
                    "port {:?}: its egress {:?} is on host {eh:?}, but packets leave the chain on host {exit_host:?}, which has no single link to it",
                    p.name, chain.ports[egress].name
                ));
            }
        }
        if h == me {
            ports.push(port_plan(i, p, egress));
        }
    }
    if chain.ports.iter().all(|p| !p.rx) && !chain.ports.is_empty() {
        return bad("no port receives traffic (every port has rx = false)");
    }

    // Links: at most one per pair of hosts.
    let mut links = Vec::new();
    let mut link_to = std::collections::BTreeMap::new();
    for l in &chain.links {
        let [a, b] = &l.ends;
        if a.host == b.host {
            return bad(format!("a link joins host {:?} to itself", a.host));
        }
        for (mine, other) in [(a, b), (b, a)] {
            if mine.host != me {
                continue;
            }
            if link_to.insert(other.host.clone(), links.len()).is_some() {
                return bad(format!("two links between {:?} and {:?}", me, other.host));
            }
            let peer_mac = match &mine.peer_mac {
                Some(s) => parse_mac(s)
                    .ok_or_else(|| PlanError(format!("peer_mac {s:?} is not aa:bb:cc:dd:ee:ff")))?,
                None => [0xff; 6],
            };
            links.push(LinkPlan {
                peer: other.host.clone(),
                device: mine.device.clone(),
                peer_mac,
                mtu: l.mtu,
            });
        }
    }

    // Instances: local ones spread over the lcores, remote ones behind a link.
    let topo = topo_order(chain);
    let mut placement = vec![Vec::new(); chain.vertices.len()];
    let mut next_slot = 0usize;
    for &vi in &topo {
        let v = &chain.vertices[vi];
        let h = host_of(&v.host, &root_host);
        for i in 0..v.parallelism {
            let p = if h == me {
                let slot = if v.lcores.is_empty() {
                    let s = next_slot % lcores.len();
                    next_slot += 1;
                    s
                } else {
                    let want = v.lcores[usize::from(i) % v.lcores.len()];
                    lcores.iter().position(|&l| l == want).ok_or_else(|| {
                        PlanError(format!(
                            "vertex {:?} asks for lcore {want}, which is not a chain lcore here ({lcores:?})",
                            v.name
                        ))
                    })?
                };
                Placement::Local { slot }
            } else {
                // Reached through the link to its host (where one exists; an edge that
                // crosses without one is refused below).
                Placement::Remote {
                    link: link_to.get(&h).copied().unwrap_or(usize::MAX),
                }
            };
            placement[vi].push(p);
        }
    }
    // Every edge that crosses from this host needs a link to the other side.
    for (vi, v) in chain.vertices.iter().enumerate() {
        let from = host_of(&v.host, &root_host);
        for &o in v.next.iter().chain(v.taps.iter()) {
            let to = host_of(&chain.vertices[o].host, &root_host);
            if from != to
                && !chain.links.iter().any(|l| {
                    let hs = [&l.ends[0].host, &l.ends[1].host];
                    hs.contains(&&from) && hs.contains(&&to)
                })
            {
                return bad(format!(
                    "{:?} (host {from:?}) feeds {:?} (host {to:?}) but no [[link]] joins the two hosts",
                    v.name, chain.vertices[o].name
                ));
            }
            if from == me && to != me {
                let link = link_to[&to];
                for p in &mut placement[o] {
                    *p = Placement::Remote { link };
                }
            }
        }
        let _ = vi;
    }
    if root_host == me && !chain.vertices.is_empty() {
        let entry_host = host_of(&chain.vertices[chain.entry].host, &root_host);
        debug_assert_eq!(entry_host, root_host);
    }
    Ok(Plan {
        host: me.clone(),
        root_here: me == root_host,
        lcores: lcores.to_vec(),
        placement,
        topo,
        ports,
        links,
        control: chain.root.control.clone(),
        multi_host,
    })
}

fn port_plan(i: usize, p: &PortFile, egress: usize) -> PortPlan {
    PortPlan {
        index: i as u16,
        name: p.name.clone(),
        device: p.device.clone(),
        rx: p.rx,
        egress: egress as u16,
        mtu: p.mtu,
    }
}

/// The host of the last on-path vertex: where packets leave the chain.
fn exit_host(chain: &Chain, root_host: &str) -> String {
    if chain.vertices.is_empty() {
        return root_host.to_string();
    }
    let mut v = chain.entry;
    while let Some(n) = chain.vertices[v].next {
        v = n;
    }
    host_of(&chain.vertices[v].host, root_host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HOSTS: &str = r#"
[root]
control = "127.0.0.1:7100"
[[vertex]]
name = "nat"
nf = "nat"
host = "a"
[[vertex]]
name = "portscan"
nf = "portscan"
host = "b"
[[vertex]]
name = "lb"
nf = "lb"
host = "b"
parallelism = 2
[[vertex]]
name = "trojan"
nf = "trojan"
host = "b"
[[edge]]
from = "nat"
to = "portscan"
[[edge]]
from = "portscan"
to = "lb"
[[tap]]
from = "nat"
to = "trojan"
[[port]]
name = "in"
device = "net_pcap0,rx_pcap=/tmp/in.pcap"
host = "a"
egress = "out"
[[port]]
name = "out"
device = "net_pcap1,tx_pcap=/tmp/out.pcap"
host = "b"
rx = false
[[link]]
ends = [{ host = "a", device = "net_af_packet0,iface=veth0" }, { host = "b", device = "net_af_packet0,iface=veth1", peer_mac = "02:00:00:00:00:01" }]
"#;

    #[test]
    fn a_chain_split_over_two_hosts() {
        let c = Chain::parse(TWO_HOSTS, "t.toml").unwrap();
        let a = plan(&c, Some("a"), &[1, 2]).unwrap();
        assert!(a.root_here && a.multi_host);
        assert_eq!(a.ports.len(), 1);
        assert_eq!(
            a.ports[0].egress, 1,
            "packets from 'in' leave by 'out' on b"
        );
        assert_eq!(a.placement[0], vec![Placement::Local { slot: 0 }]);
        for v in 1..4 {
            assert!(a.placement[v]
                .iter()
                .all(|p| *p == Placement::Remote { link: 0 }));
        }
        let b = plan(&c, Some("b"), &[1, 2]).unwrap();
        assert!(!b.root_here);
        assert_eq!(b.links[0].peer_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(b.links[0].peer, "a");
        // lb's two instances spread over both lcores.
        let lb: Vec<_> = b.placement[2].clone();
        assert_eq!(lb.len(), 2);
        assert_ne!(lb[0], lb[1]);
        assert!(matches!(b.placement[0][0], Placement::Remote { .. }));
        assert!(plan(&c, None, &[1]).unwrap_err().0.contains("--host"));
        assert!(plan(&c, Some("z"), &[1])
            .unwrap_err()
            .0
            .contains("not named"));
    }

    #[test]
    fn the_egress_may_be_across_the_exit_hosts_link() {
        let c = TWO_HOSTS.replace("out.pcap\"\nhost = \"b\"", "out.pcap\"\nhost = \"a\"");
        let c = Chain::parse(&c, "t.toml").unwrap();
        let a = plan(&c, Some("a"), &[1]).unwrap();
        assert_eq!(a.ports.len(), 2, "both ports on a");
        let b = plan(&c, Some("b"), &[1]).unwrap();
        assert!(b.ports.is_empty());
    }

    #[test]
    fn misplacements_say_why() {
        let cases = [
            (TWO_HOSTS.replace("[[link]]", "[[nolink]]"), "unknown field"),
            (
                TWO_HOSTS.replace("control = \"127.0.0.1:7100\"", ""),
                "[root] control",
            ),
            (
                TWO_HOSTS.replace("egress = \"out\"", "egress = \"nope\""),
                "unknown port",
            ),
            (
                TWO_HOSTS.replace("out.pcap\"\nhost = \"b\"", "out.pcap\"\nhost = \"c\""),
                "packets leave the chain on host",
            ),
            (
                TWO_HOSTS.replace("peer_mac = \"02:00:00:00:00:01\"", "peer_mac = \"zz\""),
                "peer_mac",
            ),
        ];
        for (text, needle) in cases {
            let e = match Chain::parse(&text, "t.toml") {
                Err(e) => e.to_string(),
                Ok(c) => plan(&c, Some("b"), &[1]).unwrap_err().to_string(),
            };
            assert!(e.contains(needle), "{needle}: {e}");
        }
        let no_link = TWO_HOSTS.split("[[link]]").next().unwrap().to_string();
        let c = Chain::parse(&no_link, "t.toml").unwrap();
        assert!(plan(&c, Some("a"), &[1])
            .unwrap_err()
            .0
            .contains("no [[link]]"));
    }

    #[test]
    fn one_host_by_default_and_pinned_lcores() {
        let mut c = Chain::paper();
        c.vertices[1].lcores = vec![7];
        let p = plan(&c, None, &[3, 7]).unwrap();
        assert!(p.root_here && !p.multi_host && p.runs_instances());
        assert_eq!(p.placement[1], vec![Placement::Local { slot: 1 }]);
        assert_eq!(p.topo[0], c.entry);
        let pos = |v: usize| p.topo.iter().position(|&x| x == v).unwrap();
        for (i, v) in c.vertices.iter().enumerate() {
            for &o in v.next.iter().chain(v.taps.iter()) {
                assert!(pos(i) < pos(o));
            }
        }
        c.vertices[1].lcores = vec![5];
        assert!(plan(&c, None, &[3, 7]).unwrap_err().0.contains("lcore 5"));
    }
}
