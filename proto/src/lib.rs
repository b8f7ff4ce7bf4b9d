//! chc-proto.
