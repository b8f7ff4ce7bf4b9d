//! Enforcement a user-space governor can do: drop a throttled container's traffic early (tc
//! gate on its host-side device), steer its traffic to its own NIC queue (behind
//! [`QueueSteering`]), and move a queue's threaded-NAPI kthread into its cgroup so the kernel's
//! own bandwidth control throttles the polling (works on 6.12; later kernels refuse to move
//! kthreads, so it is tried and reported, never assumed).

use std::path::Path;

use crate::config::QueueSpec;
use crate::sys::{Exec, SysError};

/// Drops a container's incoming traffic while it is throttled.
pub trait DropGate {
    fn set(&mut self, exec: &mut dyn Exec, iface: &str, drop: bool) -> Result<(), SysError>;
    /// Removes every gate this governor installed.
    fn clear_all(&mut self, exec: &mut dyn Exec);
}

/// clsact qdisc + a matchall drop filter on the egress of the host-side device (the direction
/// towards the container), installed while throttled and removed after.
#[derive(Default)]
pub struct TcGate {
    /// Devices where this governor added the clsact qdisc, and whether the drop is on.
    state: Vec<(String, bool)>,
}

const PREF: &str = "49152";

impl DropGate for TcGate {
    fn set(&mut self, exec: &mut dyn Exec, iface: &str, drop: bool) -> Result<(), SysError> {
        let i = match self.state.iter().position(|(d, _)| d == iface) {
            Some(i) => i,
            None => {
                if !drop {
                    return Ok(());
                }
                // An existing clsact is fine: only our filter (fixed pref) is ours.
                let _ = exec.run(&["tc", "qdisc", "add", "dev", iface, "clsact"]);
                self.state.push((iface.to_string(), false));
                self.state.len() - 1
            }
        };
        if self.state[i].1 == drop {
            return Ok(());
        }
        if drop {
            exec.run(&[
                "tc", "filter", "add", "dev", iface, "egress", "pref", PREF, "matchall", "action",
                "drop",
            ])?;
        } else {
            exec.run(&["tc", "filter", "del", "dev", iface, "egress", "pref", PREF])?;
        }
        self.state[i].1 = drop;
        Ok(())
    }

    fn clear_all(&mut self, exec: &mut dyn Exec) {
        for (iface, on) in self.state.drain(..) {
            if on {
                let _ = exec.run(&["tc", "filter", "del", "dev", &iface, "egress", "pref", PREF]);
            }
        }
    }
}

/// No drops (no permission, or `drop = "none"`).
pub struct NoGate;

impl DropGate for NoGate {
    fn set(&mut self, _: &mut dyn Exec, _: &str, _: bool) -> Result<(), SysError> {
        Ok(())
    }
    fn clear_all(&mut self, _: &mut dyn Exec) {}
}

/// Puts a container's traffic on its own NIC receive queue.
pub trait QueueSteering {
    /// Whether the device can do it; `Err` says why not.
    fn check(&self, exec: &mut dyn Exec, dev: &str) -> Result<(), String>;
    fn steer(&mut self, exec: &mut dyn Exec, q: &QueueSpec) -> Result<(), SysError>;
}

/// ethtool n-tuple rules (`ethtool -N dev flow-type ip4 dst-ip A action Q`).
pub struct EthtoolNtuple;

impl QueueSteering for EthtoolNtuple {
    fn check(&self, exec: &mut dyn Exec, dev: &str) -> Result<(), String> {
        if exec.dry() {
            return Ok(());
        }
        let out = exec
            .run(&["ethtool", "-k", dev])
            .map_err(|e| e.to_string())?;
        match out
            .lines()
            .find(|l| l.trim_start().starts_with("ntuple-filters:"))
        {
            Some(l) if l.contains(": on") => Ok(()),
            Some(l) => Err(format!("{dev}: {}", l.trim())),
            None => Err(format!("{dev}: no ntuple-filters feature")),
        }
    }

    fn steer(&mut self, exec: &mut dyn Exec, q: &QueueSpec) -> Result<(), SysError> {
        let idx = q.index.to_string();
        let mut argv = vec!["ethtool", "-N", &q.dev, "flow-type", "ip4"];
        if let Some(d) = &q.dst {
            argv.extend(["dst-ip", d]);
        }
        argv.extend(["action", &idx]);
        exec.run(&argv).map(|_| ())
    }
}

/// Threaded-NAPI kthreads of a device (`napi/<dev>-<id>`), by pid.
pub fn napi_threads(dev: &str) -> Vec<u32> {
    let prefix = format!("napi/{dev}-");
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim().starts_with(&prefix))
            {
                v.push(pid);
            }
        }
    }
    v
}

/// Whether `dev` has threaded NAPI switched on.
pub fn napi_threaded(dev: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(dev).join("threaded"))
        .is_ok_and(|s| s.trim() == "1")
}

/// Tries to move the device's NAPI kthreads into the container's cgroup. Returns how many
/// moved; an error means this kernel refuses (then the governor drops instead).
pub fn move_napi_threads(
    exec: &mut dyn Exec,
    dev: &str,
    cgroup_dir: &Path,
) -> Result<usize, SysError> {
    let pids = napi_threads(dev);
    for pid in &pids {
        exec.write(&cgroup_dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(pids.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DryRun;

    #[test]
    fn tc_gate_installs_once_and_removes_on_clear() {
        let mut d = DryRun {
            quiet: true,
            ..Default::default()
        };
        let mut g = TcGate::default();
        g.set(&mut d, "va1", false).unwrap();
        assert!(
            d.log.is_empty(),
            "no gate work for an unthrottled container"
        );
        g.set(&mut d, "va1", true).unwrap();
        g.set(&mut d, "va1", true).unwrap();
        assert_eq!(d.log.iter().filter(|l| l.contains("matchall")).count(), 1);
        g.clear_all(&mut d);
        assert!(d.log.last().unwrap().contains("filter del dev va1"));
    }

    #[test]
    fn ntuple_rule() {
        let mut d = DryRun {
            quiet: true,
            ..Default::default()
        };
        EthtoolNtuple
            .steer(
                &mut d,
                &QueueSpec {
                    dev: "eth0".into(),
                    index: 3,
                    dst: Some("10.0.0.7".into()),
                },
            )
            .unwrap();
        assert_eq!(
            d.log[0],
            "would run: ethtool -N eth0 flow-type ip4 dst-ip 10.0.0.7 action 3"
        );
    }
}
