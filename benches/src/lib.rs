//! chc-bench.
