//! CHC's state store.
//!
//! NF state lives here, outside the NF instances, so instances can crash, scale and be cloned
//! without losing it. The store is sharded: each object belongs to exactly one shard, driven by
//! exactly one thread, so operations never take locks and operations on one object are
//! serialised in arrival order. NFs offload operations (increment, push/pop, compare-and-update,
//! custom functions) instead of reading, locking and writing back.
//!
//! - [`shard`]: the per-shard state machine (operations, ownership, callbacks, clock log,
//!   non-deterministic values, TS).
//! - [`bucket`]: the splitters' buckets computed from stored keys, so that a handover releases
//!   whole buckets.
//! - [`wal`] and [`checkpoint`]: durability and recovery of a store process.
//! - [`server`]: shard threads, the native TCP protocol and the RESP (Redis) face.
//! - [`client`]: the library NFs use, in-process or over TCP, with the caching strategies of
//!   the paper's Table 3.5 and the NF-side log used to recover shared state.

pub mod bucket;
pub mod checkpoint;
pub mod client;
pub mod custom;
pub mod key;
pub mod names;
pub mod notify;
pub mod server;
pub mod shard;
pub mod value;
pub mod wal;

pub use custom::{CustomFn, CustomOps};
pub use key::{Key, KeyRef};
pub use shard::{ClientId, Shard};
pub use value::Value;
