//! Everything the governor does to the system goes through [`Exec`], so `--dry-run` prints the
//! same actions instead of doing them, and tests can record them.

use std::path::Path;
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SysError {
    #[error("writing {value:?} to {path}: {cause}")]
    Write {
        path: String,
        value: String,
        cause: std::io::Error,
    },
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
}

/// Side effects: file writes (cgroup, sysctl) and commands (tc, ethtool).
pub trait Exec {
    fn write(&mut self, path: &Path, value: &str) -> Result<(), SysError>;
    fn run(&mut self, argv: &[&str]) -> Result<String, SysError>;
    fn dry(&self) -> bool {
        false
    }
}

/// Does it.
#[derive(Default)]
pub struct Real;

impl Exec for Real {
    fn write(&mut self, path: &Path, value: &str) -> Result<(), SysError> {
        std::fs::write(path, value).map_err(|cause| SysError::Write {
            path: path.display().to_string(),
            value: value.to_string(),
            cause,
        })
    }

    fn run(&mut self, argv: &[&str]) -> Result<String, SysError> {
        let cmd = argv.join(" ");
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .output()
            .map_err(|e| SysError::Command {
                cmd: cmd.clone(),
                msg: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(SysError::Command {
                cmd,
                msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Prints what it would do; records it for tests.
#[derive(Default)]
pub struct DryRun {
    pub log: Vec<String>,
    pub quiet: bool,
}

impl Exec for DryRun {
    fn write(&mut self, path: &Path, value: &str) -> Result<(), SysError> {
        let line = format!("would write {:?} to {}", value.trim_end(), path.display());
        if !self.quiet {
            println!("{line}");
        }
        self.log.push(line);
        Ok(())
    }

    fn run(&mut self, argv: &[&str]) -> Result<String, SysError> {
        let line = format!("would run: {}", argv.join(" "));
        if !self.quiet {
            println!("{line}");
        }
        self.log.push(line);
        Ok(String::new())
    }

    fn dry(&self) -> bool {
        true
    }
}

/// Effective capabilities of this process (CapEff of /proc/self/status).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

pub fn has_cap(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}
