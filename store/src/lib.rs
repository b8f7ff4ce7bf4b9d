//! chc-store.
