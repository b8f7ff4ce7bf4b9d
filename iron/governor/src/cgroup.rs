//! A container's CPU quota, on cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`), and, on a
//! kernel with the Iron patch, its `cpu.iron.*` files.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::sys::{Exec, SysError};

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup {0} does not exist")]
    Missing(PathBuf),
    #[error("cgroup {0} has no cpu controller files (cpu.max or cpu.cfs_quota_us); on cgroup v2 enable it with '+cpu' in the parent's cgroup.subtree_control")]
    NoCpuController(PathBuf),
    #[error("reading {path}: {msg}")]
    Read { path: PathBuf, msg: String },
    #[error(transparent)]
    Sys(#[from] SysError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V2,
    V1,
}

/// A quota: `None` is unlimited ("max" / -1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub quota_us: Option<u64>,
    pub period_us: u64,
}

#[derive(Clone, Debug)]
pub struct CpuCgroup {
    pub dir: PathBuf,
    pub version: Version,
}

fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|e| CgroupError::Read {
        path: path.into(),
        msg: e.to_string(),
    })
}

impl CpuCgroup {
    pub fn open(root: &Path, rel: &Path) -> Result<CpuCgroup, CgroupError> {
        let dir = root.join(rel);
        if !dir.is_dir() {
            return Err(CgroupError::Missing(dir));
        }
        let version = if dir.join("cpu.max").exists() {
            Version::V2
        } else if dir.join("cpu.cfs_quota_us").exists() {
            Version::V1
        } else {
            return Err(CgroupError::NoCpuController(dir));
        };
        Ok(CpuCgroup { dir, version })
    }

    pub fn quota(&self) -> Result<Quota, CgroupError> {
        match self.version {
            Version::V2 => {
                parse_cpu_max(&read(&self.dir.join("cpu.max"))?).ok_or_else(|| CgroupError::Read {
                    path: self.dir.join("cpu.max"),
                    msg: "unexpected format".into(),
                })
            }
            Version::V1 => {
                let q: i64 = read(&self.dir.join("cpu.cfs_quota_us"))?
                    .trim()
                    .parse()
                    .unwrap_or(-1);
                let p: u64 = read(&self.dir.join("cpu.cfs_period_us"))?
                    .trim()
                    .parse()
                    .unwrap_or(100_000);
                Ok(Quota {
                    quota_us: (q > 0).then_some(q as u64),
                    period_us: p,
                })
            }
        }
    }

    pub fn set_quota(&self, exec: &mut dyn Exec, q: Quota) -> Result<(), CgroupError> {
        match self.version {
            Version::V2 => {
                let v = match q.quota_us {
                    Some(u) => format!("{u} {}", q.period_us),
                    None => format!("max {}", q.period_us),
                };
                exec.write(&self.dir.join("cpu.max"), &v)?;
            }
            Version::V1 => {
                exec.write(
                    &self.dir.join("cpu.cfs_period_us"),
                    &q.period_us.to_string(),
                )?;
                let v = q
                    .quota_us
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| "-1".into());
                exec.write(&self.dir.join("cpu.cfs_quota_us"), &v)?;
            }
        }
        Ok(())
    }

    /// CPU time used by the container so far, in ns (0 when the kernel does not say).
    pub fn usage_ns(&self) -> u64 {
        match self.version {
            Version::V2 => read(&self.dir.join("cpu.stat"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("usage_usec ")
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    })
                })
                .map(|u| u * 1000)
                .unwrap_or(0),
            Version::V1 => read(&self.dir.join("cpuacct.usage"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
        }
    }

    /// `cpu.iron.stat` as (key, value) pairs, if the kernel has Iron.
    pub fn iron_stat(&self) -> Option<Vec<(String, i64)>> {
        let s = read(&self.dir.join("cpu.iron.stat")).ok()?;
        Some(
            s.lines()
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v)))
                .collect(),
        )
    }
}

/// Parses cgroup v2 `cpu.max` ("max 100000" or "25000 100000").
pub fn parse_cpu_max(s: &str) -> Option<Quota> {
    let mut it = s.split_whitespace();
    let q = it.next()?;
    let period_us = it.next().map(|p| p.parse().ok()).unwrap_or(Some(100_000))?;
    let quota_us = if q == "max" {
        None
    } else {
        Some(q.parse().ok()?)
    };
    Some(Quota {
        quota_us,
        period_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::DryRun;

    #[test]
    fn cpu_max_formats() {
        assert_eq!(
            parse_cpu_max("max 100000\n"),
            Some(Quota {
                quota_us: None,
                period_us: 100_000
            })
        );
        assert_eq!(
            parse_cpu_max("25000 50000"),
            Some(Quota {
                quota_us: Some(25_000),
                period_us: 50_000
            })
        );
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn v1_and_v2_are_detected_and_written() {
        let t = std::env::temp_dir().join(format!("iron-cg-{}", std::process::id()));
        let v2 = t.join("v2/a");
        let v1 = t.join("v1/a");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v2.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(v1.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(v1.join("cpu.cfs_period_us"), "100000\n").unwrap();
        let a = CpuCgroup::open(&t.join("v2"), Path::new("a")).unwrap();
        let b = CpuCgroup::open(&t.join("v1"), Path::new("a")).unwrap();
        assert_eq!(a.version, Version::V2);
        assert_eq!(b.version, Version::V1);
        assert_eq!(b.quota().unwrap().quota_us, None);
        let mut d = DryRun {
            quiet: true,
            ..Default::default()
        };
        let q = Quota {
            quota_us: Some(20_000),
            period_us: 100_000,
        };
        a.set_quota(&mut d, q).unwrap();
        b.set_quota(&mut d, q).unwrap();
        assert!(d.log[0].contains("\"20000 100000\"") && d.log[0].ends_with("cpu.max"));
        assert!(d
            .log
            .iter()
            .any(|l| l.contains("\"20000\"") && l.ends_with("cpu.cfs_quota_us")));
        assert!(matches!(
            CpuCgroup::open(&t.join("v2"), Path::new("nope")),
            Err(CgroupError::Missing(_))
        ));
        std::fs::create_dir_all(t.join("v2/empty")).unwrap();
        let e = CpuCgroup::open(&t.join("v2"), Path::new("empty")).unwrap_err();
        assert!(e.to_string().contains("+cpu"));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
