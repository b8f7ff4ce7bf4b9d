//! Network functions for CHC chains, and what an NF developer writes against.
//!
//! - [`nf`]: the [`NetworkFunction`] trait, the per-packet [`Ctx`], typed state handles
//!   ([`Cell`], [`Counter`], [`List`]) and [`Event`]s.
//! - [`packet`]: parsed packet views with in-place rewriting.
//! - The NFs: [`nat`], [`portscan`], [`trojan`], [`lb`], and [`ratelimit`] (the worked
//!   example of `nfs/README.md`).

pub mod lb;
pub mod nat;
pub mod nf;
pub mod packet;
pub mod portscan;
pub mod ratelimit;
pub mod trojan;
pub mod util;

pub use nf::{Cell, Counter, Ctx, Event, List, NetworkFunction, NfError, PartitionKey, Verdict};

/// The NF kinds this crate provides.
pub const KINDS: &[&str] = &["nat", "portscan", "trojan", "lb", "ratelimit"];

/// Builds an NF from its kind and its configuration table.
pub fn build(kind: &str, config: &toml::Table) -> Result<Box<dyn NetworkFunction>, NfError> {
    Ok(match kind {
        "nat" => Box::new(nat::Nat::from_config(config)?),
        "portscan" => Box::new(portscan::Portscan::from_config(config)?),
        "trojan" => Box::new(trojan::Trojan::from_config(config)?),
        "lb" => Box::new(lb::Lb::from_config(config)?),
        "ratelimit" => Box::new(ratelimit::RateLimit::from_config(config)?),
        other => return Err(NfError::UnknownKind(other.to_string())),
    })
}
