//! Iron's algorithms as plain state machines: no clock, no kernel, no I/O.
//!
//! The kernel patch series (`iron/kernel`), the user-space governor and the simulator all follow
//! these functions, so the invariants proven here by property tests are the ones the other parts
//! rely on:
//!
//! * [`accounting`]: turns one softirq pass (hard-IRQ time `H`, per-type softirq times `S_i`,
//!   per-packet receive costs, per-batch transmit costs) into per-container charges and a credit
//!   for the container whose runtime paid for the pass (dissertation §2.2.1).
//! * [`refill`]: the CFS bandwidth state of one container with Iron's global (Fig 2.7) and local
//!   (Fig 2.8) refill, ported to Linux 6.12 semantics (quota + burst cap, signed debt).
//! * [`enforce`]: what happens to a packet of a container near or past its quota (early drop at
//!   `T %`, queue parking for containers with a dedicated queue).
//! * [`sim`]: a small discrete-time simulator of n containers on one core that replays compute
//!   and packet events with and without Iron and reports the victim's penalty factor.
//! * [`results`]: the shared benchmark results format written by `iron-sim` and `iron-bench`.

pub mod accounting;
pub mod enforce;
pub mod refill;
pub mod results;
pub mod sim;

/// Nanoseconds, the unit of every time in this crate (the kernel's unit too).
pub type Ns = u64;

/// A container, identified the way the kernel does it (the cgroup's id).
pub type GroupId = u32;
