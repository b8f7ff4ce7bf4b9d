//! The CHC dataplane: chain configuration, splitters, the chain runtime, packet I/O.
//!
//! The embedded default ([`runtime::run`]) runs a chain over a pcap file with the store in
//! the same process; the `chc-dataplane` binary wraps it. [`dpdk`] runs the same chain on
//! DPDK ports (real NICs or virtual devices); it compiles everywhere and reports at start-up
//! when this build has no DPDK.

pub mod cluster;
pub mod config;
pub mod dpdk;
pub mod instance;
pub mod pcapio;
pub mod runtime;
pub mod split;
pub mod stores;
pub mod summary;

pub use config::Chain;
pub use runtime::{run, Delay, Pause, Policy, Rule, RunOptions, ScaleAction, ScaleStep};
pub use summary::Summary;
