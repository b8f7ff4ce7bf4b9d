//! CPU used by a set of cgroups over one measurement window, with every quantity a delta over
//! the same window (`iron-bench cpu-window`, run inside the VM by iron-accuracy.sh).
//!
//! The accuracy test asks what the paper's Fig 2.14a shows: the total CPU used by the containers
//! (their own runtime plus the network processing Iron charged to them) against the 3 x 30 %
//! they were allotted. A shell that forks `awk` for each reading and divides by the nominal
//! `sleep` time has two errors of the size being measured: the readings of the window's two ends
//! happen some milliseconds apart from each other and from the clock, and the window is not the
//! length it is divided by. Here one process reads every counter back to back, takes the
//! monotonic clock in the middle of those reads, and divides by the measured length.
//!
//! CFS bandwidth hands out runtime per period (100 ms), so a group's usage grows in steps: a
//! window whose ends fall at different points of the groups' periods is off by up to the
//! difference of those steps (tens of ms per group, a few tenths of a point over 30 s). Every
//! group's period timer runs on one grid: it is armed with `hrtimer_forward_now()` from an expiry
//! of 0 and forwarded by whole periods (`start_cfs_bandwidth`, `sched_cfs_period_timer`), so its
//! refills fall on multiples of the period of CLOCK_MONOTONIC. The window therefore starts
//! [`LEAD`] before such a multiple, when groups that used their quota are throttled and wait for
//! the refill, and lasts a whole number of periods: both ends see every group at the same point
//! of its period, having used its whole quota for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One group's counters at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSample {
    /// `cpu.stat` usage_usec: the group's own runtime (softirq time left out with IRQ time
    /// accounting).
    pub usage_usec: u64,
    /// `cpu.stat` nr_periods / nr_throttled: bandwidth periods the group was active / throttled.
    pub nr_periods: u64,
    pub nr_throttled: u64,
    /// `cpu.iron.stat` (0 without Iron): network time charged to the group, time credited to it
    /// for work its tasks did for others, and what it still owes.
    pub charged_usec: u64,
    pub credited_usec: u64,
    pub debt_usec: u64,
}

/// A core's `/proc/stat` line in USER_HZ ticks: busy (user, nice, system, irq, softirq) and the
/// total including idle and iowait (steal and guest are not counted in either).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CoreSample {
    pub busy: u64,
    pub irq: u64,
    pub total: u64,
}

/// Sums of `key value` lines (cpu.stat, cpu.iron.stat); a missing file reads as all zeros (no
/// Iron), a missing key as 0.
fn field(text: &str, key: &str) -> Result<u64> {
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some(key) {
            let v = f.next().unwrap_or("");
            return v
                .parse()
                .with_context(|| format!("{key} = {v:?} is not a count"));
        }
    }
    Ok(0)
}

impl GroupSample {
    pub fn parse(cpu_stat: &str, iron_stat: &str) -> Result<GroupSample> {
        if !cpu_stat.lines().any(|l| l.starts_with("usage_usec ")) {
            bail!("cpu.stat has no usage_usec: {cpu_stat:?}");
        }
        Ok(GroupSample {
            usage_usec: field(cpu_stat, "usage_usec")?,
            nr_periods: field(cpu_stat, "nr_periods")?,
            nr_throttled: field(cpu_stat, "nr_throttled")?,
            charged_usec: field(iron_stat, "charged_usec")?,
            credited_usec: field(iron_stat, "credited_usec")?,
            debt_usec: field(iron_stat, "debt_usec")?,
        })
    }

    fn read(dir: &Path) -> Result<GroupSample> {
        let cpu = std::fs::read_to_string(dir.join("cpu.stat"))
            .with_context(|| format!("reading {}/cpu.stat", dir.display()))?;
        let iron = std::fs::read_to_string(dir.join("cpu.iron.stat")).unwrap_or_default();
        GroupSample::parse(&cpu, &iron)
    }
}

impl CoreSample {
    /// The `cpuN` line of `/proc/stat`.
    pub fn parse(proc_stat: &str, cpu: u32) -> Result<CoreSample> {
        let name = format!("cpu{cpu}");
        let line = proc_stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .with_context(|| format!("/proc/stat has no {name} line"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().context("/proc/stat field"))
            .collect::<Result<_>>()?;
        if v.len() < 7 {
            bail!("short /proc/stat line {line:?}");
        }
        // user nice system idle iowait irq softirq [steal guest guest_nice]
        let busy = v[0] + v[1] + v[2] + v[5] + v[6];
        Ok(CoreSample {
            busy,
            irq: v[5] + v[6],
            total: busy + v[3] + v[4],
        })
    }
}

/// How long before a refill of the period grid the window's ends are read.
pub const LEAD: Duration = Duration::from_millis(3);

/// Periods waited between this process's start and the window's. Starting it (exec, page
/// faults, the shell around it) takes the core from the groups for tens of ms; a group left short
/// of its quota when the window opens finishes that quota inside the window, on top of the
/// window's own periods. With one quiet period this added 12-15 ms per window (0.2-0.3 points
/// of a 5 s window) in the VM; with 20 it was gone (within 1 ms).
pub const QUIET: u32 = 10;

/// What `cpu-window` reports, all over the same window.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    pub elapsed: Duration,
    /// Distance of the window from the nearest whole number of bandwidth periods.
    pub off_period: Duration,
    /// The longer of the two readings (all groups and /proc/stat); the window's ends are the
    /// middles of the readings, so this bounds how far apart in time one end's counters are.
    pub read: Duration,
    /// Per group (in the order given): own runtime, network time charged, time credited,
    /// periods, throttled periods, debt at the end (µs), all but the debt as deltas.
    pub groups: Vec<(String, GroupSample)>,
    pub core: CoreSample,
}

fn pct(usec: u64, elapsed: Duration) -> f64 {
    100.0 * usec as f64 / (elapsed.as_secs_f64() * 1e6)
}

impl Window {
    /// The deltas between two samples taken `elapsed` apart.
    pub fn between(
        elapsed: Duration,
        period: Duration,
        names: &[String],
        g0: &[GroupSample],
        g1: &[GroupSample],
        c0: CoreSample,
        c1: CoreSample,
    ) -> Window {
        let groups = names
            .iter()
            .zip(g0.iter().zip(g1))
            .map(|(n, (a, b))| {
                (
                    n.clone(),
                    GroupSample {
                        usage_usec: b.usage_usec.saturating_sub(a.usage_usec),
                        nr_periods: b.nr_periods.saturating_sub(a.nr_periods),
                        nr_throttled: b.nr_throttled.saturating_sub(a.nr_throttled),
                        charged_usec: b.charged_usec.saturating_sub(a.charged_usec),
                        credited_usec: b.credited_usec.saturating_sub(a.credited_usec),
                        debt_usec: b.debt_usec,
                    },
                )
            })
            .collect();
        let p = period.as_nanos().max(1);
        let rem = elapsed.as_nanos() % p;
        let off = rem.min(p - rem);
        Window {
            elapsed,
            off_period: Duration::from_nanos(off as u64),
            read: Duration::ZERO,
            groups,
            core: CoreSample {
                busy: c1.busy.saturating_sub(c0.busy),
                irq: c1.irq.saturating_sub(c0.irq),
                total: c1.total.saturating_sub(c0.total),
            },
        }
    }

    /// A group's total: its own runtime plus the network time charged to it, less the time its
    /// tasks were credited for doing others' network work (what Iron holds to the quota).
    pub fn total_usec(g: &GroupSample) -> u64 {
        (g.usage_usec + g.charged_usec).saturating_sub(g.credited_usec)
    }

    /// `key=value` pairs for an `IRON-RESULT` line. `containers_pct` is the headline: the CPU
    /// used by all groups (own + charged - credited) per elapsed time; `busy_pct` is the core's
    /// busy share from /proc/stat, which also holds kernel work nobody is charged for.
    pub fn kv(&self) -> String {
        let sum = |f: fn(&GroupSample) -> u64| self.groups.iter().map(|(_, g)| f(g)).sum::<u64>();
        let e = self.elapsed;
        let mut s = format!(
            "window_ms={:.3} off_period_us={} read_us={} containers_pct={:.3} own_pct={:.3} charged_pct={:.3} credited_pct={:.3}",
            e.as_secs_f64() * 1e3,
            self.off_period.as_micros(),
            self.read.as_micros(),
            pct(sum(Window::total_usec), e),
            pct(sum(|g| g.usage_usec), e),
            pct(sum(|g| g.charged_usec), e),
            pct(sum(|g| g.credited_usec), e),
        );
        if self.core.total > 0 {
            s += &format!(
                " busy_pct={:.3} irq_pct={:.3}",
                100.0 * self.core.busy as f64 / self.core.total as f64,
                100.0 * self.core.irq as f64 / self.core.total as f64
            );
        }
        for (n, g) in &self.groups {
            s += &format!(
                " {n}_pct={:.3} {n}_own_pct={:.3} {n}_periods={} {n}_throttled={} {n}_debt_end_usec={}",
                pct(Window::total_usec(g), e),
                pct(g.usage_usec, e),
                g.nr_periods,
                g.nr_throttled,
                g.debt_usec
            );
        }
        s
    }
}

/// The bandwidth period of a group (`cpu.max`: "QUOTA PERIOD").
fn period_of(dir: &Path) -> Result<Duration> {
    let s = std::fs::read_to_string(dir.join("cpu.max"))
        .with_context(|| format!("reading {}/cpu.max", dir.display()))?;
    let us: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("cpu.max {s:?} has no period"))?;
    Ok(Duration::from_micros(us))
}

/// CLOCK_MONOTONIC since boot: the clock of the kernel's CFS period timers, which `Instant`
/// uses too but does not expose.
fn now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Sleeps until `at` on CLOCK_MONOTONIC.
fn sleep_until(at: Duration) -> Result<()> {
    let ts = rustix::time::Timespec {
        tv_sec: at.as_secs() as i64,
        tv_nsec: i64::from(at.subsec_nanos()),
    };
    loop {
        match rustix::thread::clock_nanosleep_absolute(rustix::thread::ClockId::Monotonic, &ts) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => bail!("clock_nanosleep: {e}"),
        }
    }
}

/// The first instant at or after `t` that lies `lead` before a multiple of `period`.
pub fn next_edge(t: Duration, period: Duration, lead: Duration) -> Duration {
    let p = period.as_nanos();
    let want = t.as_nanos() + lead.as_nanos();
    let k = want.div_ceil(p);
    Duration::from_nanos((k * p - lead.as_nanos()) as u64)
}

/// Samples every counter back to back; the instant returned is the middle of the reading, so
/// both ends of the window are timed the same way, and the reading's length is returned too.
fn sample(
    dirs: &[PathBuf],
    cpu: u32,
) -> Result<(Vec<GroupSample>, CoreSample, Duration, Duration)> {
    let a = now();
    let g = dirs
        .iter()
        .map(|d| GroupSample::read(d))
        .collect::<Result<Vec<_>>>()?;
    let c = CoreSample::parse(
        &std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?,
        cpu,
    )?;
    let b = now();
    Ok((g, c, a + (b - a) / 2, b - a))
}

/// Measures `periods` bandwidth periods (every group must have the same period), from [`LEAD`]
/// before a refill of the period grid, [`QUIET`] periods or more from now, to the same point
/// `periods` periods later.
pub fn measure(root: &Path, names: &[String], periods: u32, cpu: u32) -> Result<Window> {
    if names.is_empty() {
        bail!("no groups to measure");
    }
    let dirs: Vec<PathBuf> = names.iter().map(|n| root.join(n)).collect();
    let period = period_of(&dirs[0])?;
    for d in &dirs[1..] {
        if period_of(d)? != period {
            bail!(
                "{} has another period than {}",
                d.display(),
                dirs[0].display()
            );
        }
    }
    // Not the next edge: see QUIET.
    let start = next_edge(now() + period * QUIET, period, LEAD);
    sleep_until(start)?;
    let (g0, c0, t0, r0) = sample(&dirs, cpu)?;
    sleep_until(start + period * periods)?;
    let (g1, c1, t1, r1) = sample(&dirs, cpu)?;
    let mut w = Window::between(t1 - t0, period, names, &g0, &g1, c0, c1);
    w.read = r0.max(r1);
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU_STAT: &str = "usage_usec 3000000\nuser_usec 2900000\nsystem_usec 100000\n\
        nr_periods 100\nnr_throttled 90\nthrottled_usec 7000000\nnr_bursts 0\nburst_usec 0\n";
    const IRON_STAT: &str = "charged_usec 400000\ncredited_usec 1000\npending_usec 12\n\
        gained_usec 0\ndebt_usec 250\nforfeited_usec 0\nrx_packets 10\n";

    #[test]
    fn parses_cgroup_counters_with_and_without_iron() {
        let g = GroupSample::parse(CPU_STAT, IRON_STAT).unwrap();
        assert_eq!(g.usage_usec, 3_000_000);
        assert_eq!((g.nr_periods, g.nr_throttled), (100, 90));
        assert_eq!(
            (g.charged_usec, g.credited_usec, g.debt_usec),
            (400_000, 1000, 250)
        );
        let plain = GroupSample::parse(CPU_STAT, "").unwrap();
        assert_eq!(plain.charged_usec, 0);
        assert!(GroupSample::parse("nr_periods 1\n", "").is_err());
    }

    #[test]
    fn parses_one_core_of_proc_stat() {
        let s = "cpu  10 0 20 300 4 5 6 0 0 0\ncpu0 10 1 20 300 4 5 6 7 0 0\ncpu1 1 1 1 1 1 1 1 0 0 0\n";
        let c = CoreSample::parse(s, 0).unwrap();
        assert_eq!(c.busy, 10 + 1 + 20 + 5 + 6);
        assert_eq!(c.irq, 11);
        assert_eq!(c.total, c.busy + 304);
        assert!(CoreSample::parse(s, 2).is_err());
    }

    #[test]
    fn sleeps_to_an_absolute_monotonic_instant() {
        let at = now() + Duration::from_millis(20);
        sleep_until(at).unwrap();
        assert!(now() >= at);
        // An instant already past returns at once.
        sleep_until(Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn windows_start_just_before_a_refill() {
        let p = Duration::from_millis(100);
        let l = Duration::from_millis(3);
        assert_eq!(
            next_edge(Duration::from_millis(1234), p, l),
            Duration::from_millis(1297)
        );
        assert_eq!(
            next_edge(Duration::from_millis(1297), p, l),
            Duration::from_millis(1297)
        );
        assert_eq!(
            next_edge(Duration::from_millis(1298), p, l),
            Duration::from_millis(1397)
        );
        assert_eq!(next_edge(Duration::ZERO, p, l), Duration::from_millis(97));
    }

    #[test]
    fn window_is_a_delta_over_measured_time() {
        let a = GroupSample {
            usage_usec: 1_000_000,
            charged_usec: 500,
            debt_usec: 9,
            ..Default::default()
        };
        let b = GroupSample {
            usage_usec: 1_000_000 + 2_400_000,
            charged_usec: 500 + 600_000,
            credited_usec: 0,
            nr_periods: 100,
            debt_usec: 7,
            ..Default::default()
        };
        let w = Window::between(
            Duration::from_millis(10_001),
            Duration::from_millis(100),
            &["g".to_string()],
            &[a],
            &[b],
            CoreSample::default(),
            CoreSample {
                busy: 900,
                irq: 100,
                total: 1000,
            },
        );
        assert_eq!(w.off_period, Duration::from_millis(1));
        assert_eq!(Window::total_usec(&w.groups[0].1), 3_000_000);
        let kv = w.kv();
        // 3.0 s of 10.001 s, not of the nominal 10 s.
        assert!(kv.contains("containers_pct=29.997"), "{kv}");
        assert!(kv.contains("own_pct=23.998"), "{kv}");
        assert!(kv.contains("busy_pct=90.000"), "{kv}");
        assert!(kv.contains("g_debt_end_usec=7"), "{kv}");
    }
}
