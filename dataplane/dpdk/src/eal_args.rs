//! EAL command lines. The dataplane passes the operator's `--eal "<args>"` string through
//! unchanged; [`EalArgs::virtual_devices`] is the set tests, CI and pcap replay use (no
//! hugepages, no PCI, nothing shared with other DPDK processes).

use std::fmt;
use std::path::Path;

use crate::{Error, Result};

/// An EAL argument list (without a program name, which [`crate::Eal::init`] adds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EalArgs {
    args: Vec<String>,
}

impl EalArgs {
    /// No arguments: the EAL then uses every core, hugepages and every bound PCI device.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arguments for a process that uses only virtual devices: `--no-huge --no-pci -m 256
    /// --no-shconf --no-telemetry --file-prefix chc-<pid>`. No shared config and a
    /// per-process prefix let several such processes (parallel tests) run at once; add
    /// `--vdev`s and `-l` to taste. (`--in-memory` would say the same but the EAL refuses it
    /// together with `--no-huge`.)
    pub fn virtual_devices() -> Self {
        Self::new()
            .arg("--no-huge")
            .arg("--no-pci")
            .arg("-m")
            .arg("256")
            .arg("--no-shconf")
            .arg("--no-telemetry")
            .file_prefix(&format!("chc-{}", std::process::id()))
    }

    /// Splits a command-line string the way a POSIX shell would (quotes, backslashes), so that
    /// `--vdev 'net_pcap0,rx_pcap=/tmp/in file.pcap'` survives intact.
    pub fn parse(line: &str) -> Result<Self> {
        let args = shlex::split(line).ok_or_else(|| {
            Error::InvalidArgument(format!("unbalanced quotes in EAL arguments {line:?}"))
        })?;
        Ok(Self { args })
    }

    /// Appends one argument verbatim.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// `-l LIST`: the lcores to run on, e.g. `"0"` or `"0-3"`; the first is the main lcore.
    pub fn lcores(self, list: &str) -> Self {
        self.arg("-l").arg(list)
    }

    /// `--vdev SPEC`: a virtual device, e.g. `net_ring0` or
    /// `net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`; its port name is the part before the comma.
    pub fn vdev(self, spec: &str) -> Self {
        self.arg("--vdev").arg(spec)
    }

    /// `--vdev NAME,rx_pcap=RX,tx_pcap=TX`: a `net_pcap` port (`NAME` starts with `net_pcap`)
    /// that receives the packets of the file `rx` and writes what it transmits to `tx`.
    /// DPDK splits device arguments at `,` and `=` and cannot quote them, so paths with those
    /// characters are refused rather than misread.
    pub fn pcap_vdev(self, name: &str, rx: Option<&Path>, tx: Option<&Path>) -> Result<Self> {
        if !name.starts_with("net_pcap") || name.contains([',', '=']) {
            return Err(Error::InvalidArgument(format!(
                "pcap port name {name:?} must start with net_pcap and contain no ',' or '='"
            )));
        }
        let mut spec = name.to_string();
        for (key, path) in [("rx_pcap", rx), ("tx_pcap", tx)] {
            let Some(path) = path else { continue };
            let path = path
                .to_str()
                .filter(|p| !p.is_empty() && !p.contains([',', '=']));
            let path = path.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{key} path must be UTF-8 without ',' or '=' (DPDK device arguments cannot \
                     quote them)"
                ))
            })?;
            spec.push_str(&format!(",{key}={path}"));
        }
        Ok(self.vdev(&spec))
    }

    /// `--file-prefix NAME`: separates this process's runtime files from other DPDK processes.
    pub fn file_prefix(self, name: &str) -> Self {
        self.arg("--file-prefix").arg(name)
    }

    /// `-d PATH`: loads a driver library, or every driver in a directory.
    pub fn driver(self, path: &str) -> Self {
        self.arg("-d").arg(path)
    }

    /// The arguments, in order.
    pub fn as_slice(&self) -> &[String] {
        &self.args
    }

    /// Port names of the `--vdev` devices (`net_pcap0` for `net_pcap0,rx_pcap=...`), in order.
    pub fn vdev_names(&self) -> Vec<&str> {
        let mut names = Vec::new();
        let mut it = self.args.iter();
        while let Some(arg) = it.next() {
            let spec = if arg == "--vdev" {
                it.next().map(String::as_str)
            } else {
                arg.strip_prefix("--vdev=")
            };
            if let Some(spec) = spec {
                names.push(spec.split(',').next().unwrap_or(spec));
            }
        }
        names
    }
}

impl fmt::Display for EalArgs {
    /// Shell-quoted, so the output can be pasted back into `--eal "..."`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted =
            shlex::try_join(self.args.iter().map(String::as_str)).map_err(|_| fmt::Error)?;
        f.write_str(&quoted)
    }
}

impl<'a> IntoIterator for &'a EalArgs {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.args.iter()
    }
}

impl IntoIterator for EalArgs {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;
    fn into_iter(self) -> Self::IntoIter {
        self.args.into_iter()
    }
}

impl<S: Into<String>> FromIterator<S> for EalArgs {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self {
            args: iter.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_quoted_vdev_specs_whole() {
        let args = EalArgs::parse(
            "--no-huge -l 0 --vdev 'net_pcap0,rx_pcap=/tmp/a b.pcap' --vdev=net_ring0",
        )
        .unwrap();
        assert_eq!(
            args.as_slice(),
            [
                "--no-huge",
                "-l",
                "0",
                "--vdev",
                "net_pcap0,rx_pcap=/tmp/a b.pcap",
                "--vdev=net_ring0"
            ]
        );
        assert_eq!(args.vdev_names(), ["net_pcap0", "net_ring0"]);
    }

    #[test]
    fn parse_rejects_unbalanced_quotes() {
        assert!(matches!(
            EalArgs::parse("--vdev 'net_ring0"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn display_round_trips_through_parse() {
        let args = EalArgs::virtual_devices()
            .lcores("0")
            .vdev("net_pcap0,rx_pcap=/tmp/with space.pcap,tx_pcap=/tmp/o.pcap");
        assert_eq!(EalArgs::parse(&args.to_string()).unwrap(), args);
    }

    #[test]
    fn pcap_vdev_builds_the_spec_and_refuses_what_dpdk_would_misread() {
        let args = EalArgs::new()
            .pcap_vdev(
                "net_pcap0",
                Some(Path::new("/t/in.pcap")),
                Some(Path::new("/t/o.pcap")),
            )
            .unwrap();
        assert_eq!(
            args.as_slice(),
            ["--vdev", "net_pcap0,rx_pcap=/t/in.pcap,tx_pcap=/t/o.pcap"]
        );
        assert_eq!(args.vdev_names(), ["net_pcap0"]);
        let rx_only = EalArgs::new()
            .pcap_vdev("net_pcap1", Some(Path::new("a")), None)
            .unwrap();
        assert_eq!(rx_only.as_slice()[1], "net_pcap1,rx_pcap=a");
        for bad in ["/t/a,b.pcap", "/t/a=b.pcap", ""] {
            assert!(matches!(
                EalArgs::new().pcap_vdev("net_pcap0", Some(Path::new(bad)), None),
                Err(Error::InvalidArgument(_))
            ));
        }
        assert!(EalArgs::new().pcap_vdev("net_ring0", None, None).is_err());
    }

    #[test]
    fn virtual_devices_disables_hugepages_pci_and_sharing() {
        let args = EalArgs::virtual_devices();
        for flag in ["--no-huge", "--no-pci", "--no-shconf"] {
            assert!(args.as_slice().iter().any(|a| a == flag), "{flag} missing");
        }
        assert!(args.vdev_names().is_empty());
    }
}
