//! `chc-bench`: CHC's experiments, each writing the shared results format.

pub mod results;
pub mod store;
