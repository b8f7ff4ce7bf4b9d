//! chc-root.
