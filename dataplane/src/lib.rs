//! The CHC dataplane: chain configuration, splitters, the chain runtime, packet I/O.
//!
//! The embedded default ([`runtime::run`]) runs a chain over a pcap file with the store in
//! the same process; the `chc-dataplane` binary wraps it.

pub mod config;
pub mod instance;
pub mod pcapio;
pub mod runtime;
pub mod split;
pub mod summary;

pub use config::Chain;
pub use runtime::{run, Delay, RunOptions};
pub use summary::Summary;
