//! `chc-bench`: CHC's experiments, each writing the shared results format.

pub mod caching;
pub mod coe;
pub mod dpdkbench;
pub mod dynamics;
pub mod hostcrash;
pub mod nfbench;
pub mod order;
pub mod results;
pub mod store;
pub mod synth;
