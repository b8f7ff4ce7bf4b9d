//! The one safe interface over DPDK 22.11 for the CHC dataplane.
//!
//! This crate and `chc-dpdk-sys` hold every `unsafe` block of the workspace that touches DPDK;
//! each block says why it is sound. Everything else (the chain runtime, the NFs) uses the
//! types here and stays `#![deny(unsafe_code)]`.
//!
//! What it owns:
//! - [`Eal`]: initialising DPDK once per process from an argument list ([`EalArgs`]).
//! - [`Mempool`] and [`Mbuf`]: packet buffers. An [`Mbuf`] owns one packet and frees it on
//!   drop; NFs read and rewrite its bytes in place ([`Mbuf::data_mut`]) and push or strip
//!   encapsulation headers in the headroom ([`Mbuf::prepend`], [`Mbuf::adj`]).
//! - [`Burst`]: a fixed-capacity array of mbufs reused across polls, so receiving,
//!   transmitting and ring transfers allocate nothing per packet.
//! - [`Port`], [`RunningPort`], [`RxQueue`], [`TxQueue`]: ethdev ports (PCI NICs or virtual
//!   devices such as `net_pcap`, `net_ring`, `net_tap`), several queues with RSS, statistics.
//!   A queue handle is the only way to poll its queue, so two threads cannot poll one queue.
//! - [`mbuf_ring`]: `rte_ring`s of mbufs between lcores, with single- or multi-producer and
//!   consumer ends chosen by type ([`Single`], [`Multi`]).
//! - [`lcore`]: lcore ids, launching work on worker lcores, TSC cycles.
//!
//! When the build found no DPDK (see `chc-dpdk-sys`), the same API exists but
//! [`Eal::init`] and every other constructor return [`Error::Unavailable`]; [`is_available`]
//! tells which build this is.
//!
//! ```no_run
//! use chc_dpdk::{Burst, Eal, EalArgs, Mempool, Port, PortConfig};
//! # fn main() -> Result<(), chc_dpdk::Error> {
//! let _eal = Eal::init(EalArgs::virtual_devices().vdev("net_ring0"))?;
//! let pool = Mempool::pktmbuf("pkts", 4095, 256, chc_dpdk::DEFAULT_DATA_ROOM)?;
//! let mut port = Port::open("net_ring0")?.start(&PortConfig::default(), &pool)?;
//! let (mut rx, mut tx) = (port.rx.remove(0), port.tx.remove(0));
//! let mut burst = Burst::with_capacity(32);
//! loop {
//!     rx.rx_burst(&mut burst);
//!     for pkt in burst.iter_mut() {
//!         pkt.data_mut()[0] ^= 0x02; // rewrite in place
//!     }
//!     tx.tx_burst(&mut burst);
//!     burst.clear(); // drops what the port did not take
//! }
//! # }
//! ```
#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod burst;
mod eal_args;
mod error;
mod port_types;
mod sync_mode;

pub use burst::Burst;
pub use eal_args::EalArgs;
pub use error::{Error, Result};
pub use port_types::{LinkStatus, PortConfig, PortInfo, PortStats, QueueStats, Rss};
pub use sync_mode::{Multi, Single, SyncMode};

#[cfg(chc_dpdk)]
mod eal;
#[cfg(chc_dpdk)]
pub mod lcore;
#[cfg(chc_dpdk)]
mod mbuf;
#[cfg(chc_dpdk)]
mod mempool;
#[cfg(chc_dpdk)]
mod port;
#[cfg(chc_dpdk)]
mod ring;

#[cfg(chc_dpdk)]
pub use {
    eal::Eal,
    mbuf::Mbuf,
    mempool::Mempool,
    port::{Port, RunningPort, RxQueue, StartedPort, TxQueue},
    ring::{mbuf_ring, RingConsumer, RingProducer},
};

#[cfg(not(chc_dpdk))]
mod stub;
#[cfg(not(chc_dpdk))]
pub use stub::{
    lcore, mbuf_ring, Eal, Mbuf, Mempool, Port, RingConsumer, RingProducer, RunningPort, RxQueue,
    StartedPort, TxQueue,
};

/// Bytes of headroom DPDK reserves in front of each packet (`RTE_PKTMBUF_HEADROOM`): room
/// for encapsulation headers such as NSH that [`Mbuf::prepend`] adds without copying.
pub const HEADROOM: u16 = 128;

/// Data room (headroom included) of DPDK's default mbuf (`RTE_MBUF_DEFAULT_BUF_SIZE`): one
/// segment holds a standard 1518-byte frame. Larger frames arrive as chained segments unless
/// the pool is made with a larger room (at most 65535).
pub const DEFAULT_DATA_ROOM: u16 = 2048 + HEADROOM;

/// Whether this build has the DPDK backend (DPDK 22.11 and libclang were found at build time).
pub const fn is_available() -> bool {
    chc_dpdk_sys::ENABLED
}

/// The build's verdict on DPDK, e.g. `on: DPDK 22.11.11 from /usr/lib/x86_64-linux-gnu` or
/// `off: pkg-config does not find libdpdk ...`; worth printing in `--version` or errors.
pub fn backend_status() -> &'static str {
    chc_dpdk_sys::STATUS
}

#[cfg(chc_dpdk)]
const _: () = {
    assert!(HEADROOM as u32 == chc_dpdk_sys::RTE_PKTMBUF_HEADROOM);
    assert!(DEFAULT_DATA_ROOM as u32 == chc_dpdk_sys::RTE_MBUF_DEFAULT_BUF_SIZE);
};
