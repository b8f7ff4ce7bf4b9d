//! Small helpers for NF configuration.

use crate::nf::NfError;
use std::net::IpAddr;

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(a) & m == u32::from(b) & m
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?
        };
        Ok(Prefix { addr, len })
    }
}

pub fn cfg_u64(c: &toml::Table, nf: &str, key: &str, default: u64) -> Result<u64, NfError> {
    match c.get(key) {
        None => Ok(default),
        Some(toml::Value::Integer(i)) if *i >= 0 => Ok(*i as u64),
        Some(v) => Err(NfError::config(
            nf,
            format!("{key} must be a non-negative integer, not {v}"),
        )),
    }
}

pub fn cfg_f64(c: &toml::Table, nf: &str, key: &str, default: f64) -> Result<f64, NfError> {
    match c.get(key) {
        None => Ok(default),
        Some(toml::Value::Float(f)) => Ok(*f),
        Some(toml::Value::Integer(i)) => Ok(*i as f64),
        Some(v) => Err(NfError::config(
            nf,
            format!("{key} must be a number, not {v}"),
        )),
    }
}

pub fn cfg_ip(c: &toml::Table, nf: &str, key: &str, default: &str) -> Result<IpAddr, NfError> {
    let s = match c.get(key) {
        None => default,
        Some(toml::Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(NfError::config(
                nf,
                format!("{key} must be an address string, not {v}"),
            ))
        }
    };
    s.parse()
        .map_err(|_| NfError::config(nf, format!("{key} = {s:?} is not an IP address")))
}

pub fn cfg_strings(
    c: &toml::Table,
    nf: &str,
    key: &str,
    default: &[&str],
) -> Result<Vec<String>, NfError> {
    match c.get(key) {
        None => Ok(default.iter().map(|s| s.to_string()).collect()),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(NfError::config(
                    nf,
                    format!("{key} must be a list of strings, found {v}"),
                )),
            })
            .collect(),
        Some(v) => Err(NfError::config(
            nf,
            format!("{key} must be a list of strings, not {v}"),
        )),
    }
}

pub fn cfg_ports(
    c: &toml::Table,
    nf: &str,
    key: &str,
    default: &[u16],
) -> Result<Vec<u16>, NfError> {
    match c.get(key) {
        None => Ok(default.to_vec()),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|v| match v {
                toml::Value::Integer(i) if (1..=65535).contains(i) => Ok(*i as u16),
                v => Err(NfError::config(
                    nf,
                    format!("{key} must list ports 1..=65535, found {v}"),
                )),
            })
            .collect(),
        Some(v) => Err(NfError::config(
            nf,
            format!("{key} must be a list of ports, not {v}"),
        )),
    }
}

pub fn cfg_prefixes(c: &toml::Table, nf: &str, key: &str) -> Result<Vec<Prefix>, NfError> {
    cfg_strings(c, nf, key, &[])?
        .iter()
        .map(|s| s.parse().map_err(|e: String| NfError::config(nf, e)))
        .collect()
}

pub fn cfg_ips(
    c: &toml::Table,
    nf: &str,
    key: &str,
    default: &[&str],
) -> Result<Vec<IpAddr>, NfError> {
    cfg_strings(c, nf, key, default)?
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| NfError::config(nf, format!("{key}: {s:?} is not an IP address")))
        })
        .collect()
}

/// Rejects keys the NF does not know, so a typo in a chain file is an error, not a default.
pub fn check_keys(c: &toml::Table, nf: &str, known: &[&str]) -> Result<(), NfError> {
    for k in c.keys() {
        if !known.contains(&k.as_str()) {
            return Err(NfError::config(
                nf,
                format!("unknown setting {k:?} (known: {})", known.join(", ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let p: Prefix = "10.0.0.0/8".parse().unwrap();
        assert!(p.contains("10.1.2.3".parse().unwrap()));
        assert!(!p.contains("11.0.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let p: Prefix = "2001:db8::/32".parse().unwrap();
        assert!(p.contains("2001:db8::5".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Prefix>().is_err());
        assert!("nonsense".parse::<Prefix>().is_err());
    }
}
