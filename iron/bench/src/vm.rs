//! Boots Iron's test kernel under qemu (TCG) with an in-VM test selected on the kernel command
//! line and collects the `IRON-RESULT key=value ...` lines the test prints on the console.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One `IRON-RESULT` line.
pub type Record = BTreeMap<String, String>;

#[derive(Clone, Debug)]
pub struct Vm {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub smp: u32,
    pub mem_mb: u32,
    pub timeout: Duration,
    /// qemu `-icount shift=N,sleep=off` (single-threaded TCG): guest time counts instructions.
    pub icount: Option<u32>,
}

/// The cache directory build.sh uses.
pub fn cache_dir() -> PathBuf {
    if let Ok(c) = std::env::var("IRON_CACHE") {
        return PathBuf::from(c);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
        });
    base.join("iron")
}

impl Vm {
    /// The patched kernel and initramfs from build.sh's cache (or `stock` for the unpatched one).
    pub fn from_cache(stock: bool) -> Result<Vm> {
        let c = cache_dir();
        let (k, i) = if stock {
            (
                c.join("build-stock/arch/x86/boot/bzImage"),
                c.join("initramfs-stock.cpio.gz"),
            )
        } else {
            (
                c.join("build-iron/arch/x86/boot/bzImage"),
                c.join("initramfs-iron.cpio.gz"),
            )
        };
        Vm::new(k, i)
    }

    pub fn new(kernel: PathBuf, initrd: PathBuf) -> Result<Vm> {
        for p in [&kernel, &initrd] {
            if !p.exists() {
                bail!(
                    "{} not found: build it with iron/kernel/build.sh (see iron/kernel/README.md)",
                    p.display()
                );
            }
        }
        Ok(Vm {
            kernel,
            initrd,
            smp: 2,
            mem_mb: 1024,
            timeout: Duration::from_secs(900),
            icount: None,
        })
    }

    /// Boots with `args` appended to the kernel command line; returns the console output. A VM
    /// that dies before the test starts (a boot-time flake of the emulated machine) is booted
    /// once more.
    pub fn run(&self, args: &str, log: Option<&Path>) -> Result<String> {
        match self.run_once(args, log) {
            Err(e) if e.to_string().starts_with("VM did not boot") => {
                eprintln!("iron-bench: VM failed to boot, retrying once");
                self.run_once(args, log)
            }
            r => r,
        }
    }

    fn run_once(&self, args: &str, log: Option<&Path>) -> Result<String> {
        // no_timer_check: under a busy host the emulated CPU can be too slow for the IO-APIC
        // timer check, which then panics the boot.
        let append = format!("console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check {args}");
        let mut cmd = Command::new("qemu-system-x86_64");
        match self.icount {
            Some(shift) => cmd.args([
                "-accel".to_string(),
                "tcg,thread=single".to_string(),
                "-icount".to_string(),
                format!("shift={shift},sleep=off"),
            ]),
            None => cmd.args(["-accel", "tcg"]),
        };
        let mut child = cmd
            .args([
                "-nographic",
                "-no-reboot",
                "-monitor",
                "none",
                "-serial",
                "stdio",
            ])
            .args([
                "-smp",
                &self.smp.to_string(),
                "-m",
                &self.mem_mb.to_string(),
            ])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &append])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
        let mut out = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let text = reader.join().unwrap_or_default();
        if let Some(p) = log {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
        }
        match status {
            None => bail!(
                "VM timed out after {:?}; last output:\n{}",
                self.timeout,
                tail(&text, 20)
            ),
            Some(st) if !text.contains("IRON-START") => {
                bail!("VM did not boot ({st}); last output:\n{}", tail(&text, 10))
            }
            Some(st) if !text.contains("IRON-DONE") => {
                bail!(
                    "VM exited ({st}) before the test finished; last output:\n{}",
                    tail(&text, 30)
                )
            }
            _ => Ok(text),
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `IRON-RESULT` records in a console log.
pub fn records(console: &str) -> Vec<Record> {
    console
        .lines()
        .filter_map(|l| {
            l.trim_end_matches('\r')
                .split_once("IRON-RESULT ")
                .map(|(_, r)| r)
        })
        .map(|r| {
            r.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A numeric field of a record.
pub fn num(r: &Record, k: &str) -> Result<f64> {
    r.get(k)
        .with_context(|| format!("record {r:?} has no {k}"))?
        .parse()
        .with_context(|| format!("record field {k} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_among_kernel_noise() {
        let log = "[    1.0] random: crng init done\r\nIRON-RESULT kind=udp mode=iron victim_ms=120.5\r\nnoise\nIRON-DONE\n";
        let r = records(log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["kind"], "udp");
        assert_eq!(num(&r[0], "victim_ms").unwrap(), 120.5);
        assert!(num(&r[0], "nope").is_err());
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let e = Vm::new("/nonexistent/bzImage".into(), "/nonexistent/initrd".into()).unwrap_err();
        assert!(e.to_string().contains("build.sh"));
    }
}
