//! Everything CHC components say to each other or leave on disk.
//!
//! - [`wire`]: the store's network protocol (prost messages generated from `proto/store.proto`)
//!   and the length-delimited framing used on its TCP connections.
//! - [`records`]: CRC-protected rkyv records for write-ahead logs and checkpoints, with a reader
//!   that stops at (and reports) a torn tail instead of accepting it.
//! - [`meta`]: the per-packet CHC metadata (logical clock, update vector, flags, clone id) and
//!   its NSH (RFC 8300, MD type 2) encoding used between hosts.

pub mod meta;
pub mod records;
pub mod wire;

pub use meta::{ChcMeta, MetaFlags};
