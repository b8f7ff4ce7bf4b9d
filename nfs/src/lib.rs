//! Network functions for CHC chains, and what an NF developer writes against.
pub mod packet;
