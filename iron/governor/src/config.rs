//! The governor's TOML configuration: containers by cgroup path, their quotas, their traffic's
//! host-side device and NIC queue.
//!
//! ```toml
//! period_ms = 100
//! cgroup_root = "/sys/fs/cgroup"   # cgroup v2 root, or the v1 cpu controller's mount
//! drop = "auto"                    # auto | tc | none
//! early_drop_pct = 5
//!
//! [[container]]
//! name = "web"
//! cgroup = "web.slice/web"         # relative to cgroup_root
//! quota_us = 25000                 # per period
//! host_iface = "veth-web"          # host-side device its traffic passes (optional)
//! queue = { dev = "eth0", index = 3, dst = "10.0.0.7" }   # NIC queue to steer it to (optional)
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid configuration")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DropMode {
    /// tc drop gates where permitted, else none.
    #[default]
    Auto,
    /// tc (clsact + matchall drop) on the container's host-side device.
    Tc,
    /// Never drop; only the quota is adjusted.
    None,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    pub dev: String,
    pub index: u32,
    /// Destination address of the container's traffic, for the steering rule.
    pub dst: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub cgroup: PathBuf,
    pub quota_us: u64,
    pub host_iface: Option<String>,
    pub queue: Option<QueueSpec>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_period")]
    pub period_ms: u64,
    #[serde(default = "default_root")]
    pub cgroup_root: PathBuf,
    #[serde(default)]
    pub drop: DropMode,
    #[serde(default = "default_early")]
    pub early_drop_pct: u8,
    #[serde(rename = "container", default)]
    pub containers: Vec<Container>,
}

fn default_period() -> u64 {
    100
}
fn default_root() -> PathBuf {
    PathBuf::from("/sys/fs/cgroup")
}
fn default_early() -> u8 {
    5
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let c: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10_000).contains(&self.period_ms) {
            return Err(ConfigError::Invalid(format!(
                "period_ms = {} is outside 1..=10000",
                self.period_ms
            )));
        }
        if self.early_drop_pct > 100 {
            return Err(ConfigError::Invalid(format!(
                "early_drop_pct = {} is over 100",
                self.early_drop_pct
            )));
        }
        if self.containers.is_empty() {
            return Err(ConfigError::Invalid("no [[container]] configured".into()));
        }
        let period_us = self.period_ms * 1000;
        for (i, c) in self.containers.iter().enumerate() {
            if c.quota_us < 1000 || c.quota_us > period_us * 1024 {
                return Err(ConfigError::Invalid(format!(
                    "container {}: quota_us = {} must be at least 1000 (the kernel's minimum)",
                    c.name, c.quota_us
                )));
            }
            if c.cgroup.is_absolute()
                || c.cgroup
                    .components()
                    .any(|p| matches!(p, std::path::Component::ParentDir))
            {
                return Err(ConfigError::Invalid(format!(
                    "container {}: cgroup {} must be relative to cgroup_root, without '..'",
                    c.name,
                    c.cgroup.display()
                )));
            }
            if self.containers[..i].iter().any(|o| o.name == c.name) {
                return Err(ConfigError::Invalid(format!(
                    "container name {} appears twice",
                    c.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(s).map_err(|source| ConfigError::Parse {
            path: "t".into(),
            source,
        })?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn full_config() {
        let c = parse(
            r#"
            period_ms = 100
            drop = "tc"
            [[container]]
            name = "a"
            cgroup = "a"
            quota_us = 25000
            host_iface = "va1"
            queue = { dev = "eth0", index = 2, dst = "10.0.0.2" }
            "#,
        )
        .unwrap();
        assert_eq!(c.drop, DropMode::Tc);
        assert_eq!(c.containers[0].queue.as_ref().unwrap().index, 2);
        assert_eq!(c.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    }

    #[test]
    fn bad_configs_say_why() {
        let e = parse("[[container]]\nname='a'\ncgroup='/abs'\nquota_us=5000\n").unwrap_err();
        assert!(e.to_string().contains("relative"), "{e}");
        let e = parse("[[container]]\nname='a'\ncgroup='a'\nquota_us=10\n").unwrap_err();
        assert!(e.to_string().contains("at least 1000"), "{e}");
        let e = parse("period_ms = 100\n").unwrap_err();
        assert!(e.to_string().contains("no [[container]]"), "{e}");
        let e = parse("[[container]]\nname='a'\ncgroup='a'\nquota_us=5000\nbogus=1\n").unwrap_err();
        let ConfigError::Parse { source, .. } = e else {
            panic!("not a parse error: {e}")
        };
        assert!(source.to_string().contains("bogus"), "{source}");
    }
}
