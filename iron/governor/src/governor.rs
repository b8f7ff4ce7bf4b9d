//! The governor's period loop.
//!
//! Stock kernel: each period, the network softirq time measured on the host is apportioned to
//! containers by their devices' packets and charged as debt; the next period's quota is the
//! configured quota minus what the debt can take out of it (Fig 2.7's `runtime = quota +
//! runtime` with a negative runtime), never below the kernel's 1 ms minimum; a container whose
//! debt outlasts its quota, or whose remaining quota is within `T %`, has its traffic dropped
//! by its gate until the debt is paid. Patched kernel: the kernel does all of that itself; the
//! governor binds queues (`cpu.iron.queue`), makes sure `kernel.sched_iron` is on, and reports.
//!
//! Whatever happens, [`Governor::restore`] (also run on drop) puts every quota back to what it
//! was at start, removes every gate and unbinds every queue: no container is left throttled.

use std::path::PathBuf;

use crate::cgroup::{CpuCgroup, Quota};
use crate::config::{Config, Container};
use crate::enforce::DropGate;
use crate::measure::{apportion, ProcMeter, Reading};
use crate::sys::Exec;

/// The kernel's minimum quota (1 ms).
pub const MIN_QUOTA_US: u64 = 1000;

/// Fig 2.7 for a user-space governor: add `charge_ns` to the debt, take as much of the debt out
/// of the quota as the 1 ms floor allows, and say whether the container must be dropped
/// (debt left over, or the quota left is within `early_pct` % of the configured one).
pub fn next_quota(quota_us: u64, debt_ns: &mut u64, charge_ns: u64, early_pct: u8) -> (u64, bool) {
    *debt_ns += charge_ns;
    let pay_us = (*debt_ns / 1000).min(quota_us.saturating_sub(MIN_QUOTA_US));
    *debt_ns -= pay_us * 1000;
    let q = quota_us - pay_us;
    let drop = *debt_ns >= 1000 || (early_pct > 0 && q * 100 <= quota_us * early_pct as u64);
    (q, drop)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Stock,
    Patched,
}

pub struct Managed {
    pub cfg: Container,
    pub cg: CpuCgroup,
    pub original: Quota,
    pub debt_ns: u64,
    pub quota_us: u64,
    pub dropping: bool,
    pub bound: bool,
}

/// What one period did to one container.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub name: String,
    pub charged_ns: u64,
    pub quota_us: u64,
    pub debt_ns: u64,
    pub dropping: bool,
}

pub struct Governor {
    pub mode: Mode,
    pub managed: Vec<Managed>,
    pub exec: Box<dyn Exec>,
    pub gate: Box<dyn DropGate>,
    pub early_pct: u8,
    pub period_us: u64,
    meter: ProcMeter,
    last: Reading,
    restored: bool,
}

impl Governor {
    /// Opens every container's cgroup; containers whose cgroup is missing are reported through
    /// `warn` and skipped.
    pub fn new(
        cfg: &Config,
        mode: Mode,
        exec: Box<dyn Exec>,
        gate: Box<dyn DropGate>,
        warn: &mut dyn FnMut(String),
    ) -> Governor {
        let mut managed = Vec::new();
        for c in &cfg.containers {
            match CpuCgroup::open(&cfg.cgroup_root, &c.cgroup)
                .and_then(|cg| cg.quota().map(|q| (cg, q)))
            {
                Ok((cg, original)) => managed.push(Managed {
                    cfg: c.clone(),
                    cg,
                    original,
                    debt_ns: 0,
                    quota_us: c.quota_us,
                    dropping: false,
                    bound: false,
                }),
                Err(e) => warn(format!("container {}: {e}; not managing it", c.name)),
            }
        }
        let meter = ProcMeter::new();
        let last = meter.read();
        Governor {
            mode,
            managed,
            exec,
            gate,
            early_pct: cfg.early_drop_pct,
            period_us: cfg.period_ms * 1000,
            meter,
            last,
            restored: false,
        }
    }

    /// Applies the configured quotas (stock) or binds the queues (patched).
    pub fn start(&mut self, warn: &mut dyn FnMut(String)) {
        for m in &mut self.managed {
            let q = Quota {
                quota_us: Some(m.cfg.quota_us),
                period_us: self.period_us,
            };
            if let Err(e) = m.cg.set_quota(self.exec.as_mut(), q) {
                warn(format!("container {}: {e}", m.cfg.name));
            }
            if self.mode == Mode::Patched {
                if let Some(q) = &m.cfg.queue {
                    match self.exec.write(
                        &m.cg.dir.join("cpu.iron.queue"),
                        &format!("{} {}", q.dev, q.index),
                    ) {
                        Ok(()) => m.bound = true,
                        Err(e) => warn(format!(
                            "container {}: binding queue {} {}: {e}",
                            m.cfg.name, q.dev, q.index
                        )),
                    }
                }
            }
        }
    }

    /// One period. Returns what it did per container.
    pub fn period(&mut self, warn: &mut dyn FnMut(String)) -> Vec<Report> {
        let now = self.meter.read();
        let p = self.last.delta(&now);
        self.last = now;
        if self.mode == Mode::Patched {
            return self
                .managed
                .iter()
                .map(|m| {
                    let st = m.cg.iron_stat().unwrap_or_default();
                    let get = |k: &str| {
                        st.iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| *v)
                            .unwrap_or(0)
                    };
                    Report {
                        name: m.cfg.name.clone(),
                        charged_ns: get("charged_usec").max(0) as u64 * 1000,
                        quota_us: m.cfg.quota_us,
                        debt_ns: get("debt_usec").max(0) as u64 * 1000,
                        dropping: get("throttled") != 0,
                    }
                })
                .collect();
        }
        let devs: Vec<Option<&str>> = self
            .managed
            .iter()
            .map(|m| m.cfg.host_iface.as_deref())
            .collect();
        let charges = apportion(&p, &devs);
        let mut out = Vec::new();
        for (m, charge) in self.managed.iter_mut().zip(charges) {
            let (q, drop) = next_quota(m.cfg.quota_us, &mut m.debt_ns, charge, self.early_pct);
            if q != m.quota_us {
                let quota = Quota {
                    quota_us: Some(q),
                    period_us: self.period_us,
                };
                match m.cg.set_quota(self.exec.as_mut(), quota) {
                    Ok(()) => m.quota_us = q,
                    Err(e) => warn(format!("container {}: {e}", m.cfg.name)),
                }
            }
            if let Some(iface) = &m.cfg.host_iface {
                if drop != m.dropping {
                    match self.gate.set(self.exec.as_mut(), iface, drop) {
                        Ok(()) => m.dropping = drop,
                        Err(e) => warn(format!(
                            "container {}: drop gate on {iface}: {e}",
                            m.cfg.name
                        )),
                    }
                }
            }
            out.push(Report {
                name: m.cfg.name.clone(),
                charged_ns: charge,
                quota_us: m.quota_us,
                debt_ns: m.debt_ns,
                dropping: m.dropping,
            });
        }
        out
    }

    /// Puts every quota back, removes every gate, unbinds every queue. Idempotent.
    pub fn restore(&mut self) {
        if self.restored {
            return;
        }
        self.restored = true;
        self.gate.clear_all(self.exec.as_mut());
        for m in &mut self.managed {
            let _ = m.cg.set_quota(self.exec.as_mut(), m.original);
            m.dropping = false;
            if m.bound {
                if let Some(q) = &m.cfg.queue {
                    let _ = self.exec.write(
                        &m.cg.dir.join("cpu.iron.queue"),
                        &format!("-{} {}", q.dev, q.index),
                    );
                }
            }
        }
    }

    /// Which measurement backend the stock mode uses.
    pub fn meter_backend(&self) -> &str {
        &self.meter.backend
    }

    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.managed.iter().map(|m| m.cg.dir.clone()).collect()
    }
}

impl Drop for Governor {
    fn drop(&mut self) {
        self.restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DropMode;
    use crate::enforce::TcGate;
    use crate::sys::DryRun;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn debt_comes_out_of_the_next_quota() {
        let mut debt = 0;
        assert_eq!(next_quota(25_000, &mut debt, 5_000_000, 5), (20_000, false));
        assert_eq!(debt, 0);
        // 30 ms of network work against a 25 ms quota: floor at 1 ms, 6 ms left over, drop.
        assert_eq!(next_quota(25_000, &mut debt, 30_000_000, 5), (1_000, true));
        assert_eq!(debt, 6_000_000);
        assert_eq!(next_quota(25_000, &mut debt, 0, 5), (19_000, false));
        assert_eq!(debt, 0);
    }

    proptest! {
        /// Every charged nanosecond (to the microsecond) is either taken out of a quota or still
        /// owed; quotas never go under the floor or over the configuration.
        #[test]
        fn charges_are_conserved(charges in proptest::collection::vec(0u64..60_000_000, 1..50), quota in 1_000u64..100_000) {
            let mut debt = 0;
            let mut taken_us = 0;
            for c in &charges {
                let (q, _) = next_quota(quota, &mut debt, *c, 5);
                prop_assert!((MIN_QUOTA_US.min(quota)..=quota).contains(&q));
                taken_us += quota - q;
            }
            let total: u64 = charges.iter().sum();
            prop_assert_eq!(taken_us * 1000 + debt, total);
        }
    }

    /// Records writes while forwarding nothing, so restore can be checked after drop.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<String>>>);
    impl Exec for Shared {
        fn write(
            &mut self,
            path: &std::path::Path,
            value: &str,
        ) -> Result<(), crate::sys::SysError> {
            self.0
                .lock()
                .unwrap()
                .push(format!("{}={value}", path.display()));
            Ok(())
        }
        fn run(&mut self, argv: &[&str]) -> Result<String, crate::sys::SysError> {
            self.0.lock().unwrap().push(argv.join(" "));
            Ok(String::new())
        }
    }

    #[test]
    fn missing_cgroup_is_skipped_and_quotas_are_restored_on_drop() {
        let root = std::env::temp_dir().join(format!("iron-gov-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/cpu.max"), "max 100000\n").unwrap();
        let cfg: Config = toml::from_str(&format!(
            "cgroup_root = {:?}\ndrop = \"tc\"\n[[container]]\nname = \"a\"\ncgroup = \"a\"\nquota_us = 20000\nhost_iface = \"va1\"\n[[container]]\nname = \"gone\"\ncgroup = \"gone\"\nquota_us = 20000\n",
            root
        ))
        .unwrap();
        assert_eq!(cfg.drop, DropMode::Tc);
        let rec = Shared::default();
        let mut warnings = Vec::new();
        {
            let mut g = Governor::new(
                &cfg,
                Mode::Stock,
                Box::new(rec.clone()),
                Box::new(TcGate::default()),
                &mut |w| warnings.push(w),
            );
            assert_eq!(g.managed.len(), 1);
            g.start(&mut |w| warnings.push(w));
            g.managed[0].debt_ns = 50_000_000;
            let r = g.period(&mut |w| warnings.push(w));
            assert!(r[0].dropping, "{r:?}");
            assert_eq!(r[0].quota_us, MIN_QUOTA_US);
        }
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("gone") && w.contains("does not exist")),
            "{warnings:?}"
        );
        let log = rec.0.lock().unwrap();
        let last_max = log.iter().rev().find(|l| l.contains("cpu.max")).unwrap();
        assert!(
            last_max.ends_with("=max 100000"),
            "quota not restored: {log:?}"
        );
        assert!(
            log.iter().any(|l| l.contains("filter del dev va1")),
            "gate not removed: {log:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
        let _ = DryRun::default();
    }
}
