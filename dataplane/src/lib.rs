//! chc-dataplane.
