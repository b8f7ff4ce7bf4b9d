//! A chain as separate processes: every NF instance, the root and the store run as their
//! own processes, so a failure is a real `kill -9` and recovery is real.
//!
//! - `chc-store serve` holds the state (with its WAL and checkpoints);
//! - `chc-dataplane root` stamps clocks, logs packets, settles deletes against commits, and
//!   replays its log when told an instance was replaced;
//! - `chc-dataplane instance` runs one NF instance;
//! - the manager ([`manager::run_cluster`]) starts them, feeds the input to the root (keeping
//!   every packet until the root says it forwarded it), writes the output (dropping copies of
//!   a clock it already wrote, and reporting deletes to the root), watches the processes,
//!   kills them when a scenario says so, and starts replacements.
//!
//! Duplicates are handled by clock. Every instance remembers the clocks it processed until
//! the root retires them. A replayed packet is processed again by the vertices upstream of
//! the replaced one (reading the state as of its clock, while the store suppresses its
//! updates as duplicates) and by the replaced one; anywhere else a clock seen before is
//! absorbed, and so is a second output of a clock at the egress. A replacement instance
//! holds back new traffic until the replay has gone by, so it processes in clock order.

pub mod link;
pub mod manager;
pub mod net;
pub mod node;
pub mod rootproc;

use crate::config::Chain;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ends this process when the process that started it goes away (a manager killed with
/// SIGKILL cannot stop its children, and an orphaned instance or root would keep its ports
/// and keep serving a chain nobody runs). A process started by init has nothing to follow.
pub fn exit_with_parent(what: String) {
    let parent = std::os::unix::process::parent_id();
    if parent == 1 {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if std::os::unix::process::parent_id() != parent {
                eprintln!("chc-dataplane: {what}: the manager (pid {parent}) is gone; exiting");
                std::process::exit(1);
            }
        });
}

/// What the manager tells a warm spare when it wakes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Go {
    /// Take over; the manager asks the root for the replay once the spare listens.
    TakeOver,
    /// Take over and ask the root for the replay as soon as listening. The manager says so
    /// when this is the only recovery under way: there is then no order among replays to
    /// keep (see the manager), and the request skips the hop through the manager.
    TakeOverAndReplay,
}

impl Go {
    fn line(self) -> &'static str {
        match self {
            Go::TakeOver => "go",
            Go::TakeOverAndReplay => "go replay",
        }
    }
}

/// A warm spare waits here until the manager says go (a line on standard input); `None` when
/// its input ends first (the manager no longer needs it). The process has loaded its binary
/// and libraries and read its plan by then, which is most of a start.
pub fn wait_for_go() -> Option<Go> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(n) if n > 0 => Some(if line.trim_end() == Go::TakeOverAndReplay.line() {
            Go::TakeOverAndReplay
        } else {
            Go::TakeOver
        }),
        _ => None,
    }
}

/// A woken spare tells the manager it listens (one line on its standard output, which the
/// manager reads; quicker than being probed).
pub fn say_listening() {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening");
    let _ = out.flush();
}

/// How often a process of a cluster tells the manager it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(20);

/// Says "beat" on standard output every [`HEARTBEAT`] while the returned counter moves: the
/// process's main loop bumps it every turn (it turns at least every few milliseconds, idle
/// or not), so a process that hangs (stopped, deadlocked, stuck in a call) falls silent
/// even though it has not exited, and the manager replaces it. The beats stop when the
/// manager stops reading them.
pub fn beat_while_turning() -> Arc<AtomicU64> {
    let tick = Arc::new(AtomicU64::new(0));
    let t = tick.clone();
    let _ = std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || {
            // The first beat goes at once: a process stopped within its first period
            // must not pass for one still starting.
            let mut last = u64::MAX;
            loop {
                let now = t.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    let mut out = std::io::stdout().lock();
                    if writeln!(out, "beat").and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
                std::thread::sleep(HEARTBEAT);
            }
        });
    tick
}

/// Where everything of one cluster run is.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// The chain file's text: every process compiles the same chain.
    pub chain_toml: String,
    pub store: Vec<SocketAddr>,
    pub root: SocketAddr,
    pub sink: SocketAddr,
    /// Per vertex (chain order), per instance: where it listens.
    pub instances: Vec<Vec<SocketAddr>>,
}

impl Plan {
    pub fn load(path: &Path) -> Result<Plan, String> {
        let t = std::fs::read_to_string(path)
            .map_err(|e| format!("reading plan {}: {e}", path.display()))?;
        serde_json::from_str(&t).map_err(|e| format!("plan {}: {e}", path.display()))
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        std::fs::write(
            path,
            serde_json::to_string_pretty(self).expect("plan serialises"),
        )
        .map_err(|e| format!("writing plan {}: {e}", path.display()))
    }

    /// The chain with the parallelism this plan gives each vertex.
    pub fn chain(&self) -> Result<Chain, String> {
        let mut c = Chain::parse(&self.chain_toml, "plan").map_err(|e| e.to_string())?;
        let names: Vec<String> = c.vertices.iter().map(|v| v.name.clone()).collect();
        if names.len() != self.instances.len() {
            return Err("plan and chain disagree on the vertices".into());
        }
        for (n, addrs) in names.iter().zip(&self.instances) {
            c.set_parallelism(n, addrs.len() as u16)
                .map_err(|e| e.to_string())?;
        }
        Ok(c)
    }
}

/// `ancestors(chain)[d][a]`: packets from vertex `a` reach vertex `d` (`a` is upstream of `d`).
pub fn ancestors(chain: &Chain) -> Vec<Vec<bool>> {
    let n = chain.vertices.len();
    let mut out = vec![vec![false; n]; n];
    for (a, v) in chain.vertices.iter().enumerate() {
        let mut stack: Vec<usize> = v.next.into_iter().chain(v.taps.iter().copied()).collect();
        let mut seen = vec![false; n];
        while let Some(d) = stack.pop() {
            if std::mem::replace(&mut seen[d], true) {
                continue;
            }
            out[d][a] = true;
            stack.extend(chain.vertices[d].next);
            stack.extend(chain.vertices[d].taps.iter().copied());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_of_the_paper_chain() {
        let c = Chain::paper();
        let a = ancestors(&c);
        let idx = |n: &str| c.vertices.iter().position(|v| v.name == n).unwrap();
        let (nat, scan, lb, trojan) = (idx("nat"), idx("portscan"), idx("lb"), idx("trojan"));
        assert!(a[lb][nat] && a[lb][scan] && a[scan][nat] && a[trojan][nat]);
        assert!(!a[trojan][scan] && !a[nat][lb] && !a[nat][nat] && !a[scan][trojan]);
    }
}
