//! Plain data describing ports: how to configure one, what it is, what it counted. Shared by
//! the real backend and the stubs, so code that only builds configurations or prints
//! statistics compiles the same way in both.

/// Which header fields the NIC hashes to spread packets over receive queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rss {
    /// No hashing: with several queues the device decides (often: everything on queue 0).
    Off,
    /// IPv4/IPv6 addresses.
    Ip,
    /// Addresses and TCP/UDP ports: one flow always lands on one queue.
    #[default]
    IpTcpUdp,
}

/// How to configure a port before starting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues (each polled through its own [`crate::RxQueue`]).
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per receive queue (the driver may round it to its limits).
    pub rx_descriptors: u16,
    /// Descriptors per transmit queue.
    pub tx_descriptors: u16,
    /// Hash functions for spreading over the receive queues; used when `rx_queues > 1`, and
    /// reduced to what the device supports (see [`crate::RunningPort::rss_hash_functions`]).
    pub rss: Rss,
    /// Use a Toeplitz key with a repeating 16-bit pattern so that both directions of a
    /// connection hash alike and reach the same queue (and so the same NF instance).
    pub symmetric_rss: bool,
    /// Receive every frame whatever its destination MAC (needed for NFs on a wire).
    pub promiscuous: bool,
    /// MTU to set, if not the device's default.
    pub mtu: Option<u16>,
    /// Have the device timestamp received packets ([`crate::Mbuf::rx_timestamp`]; `net_pcap`
    /// gives each packet's capture time from the file). Starting the port fails if the device
    /// cannot.
    pub rx_timestamps: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            rss: Rss::default(),
            symmetric_rss: true,
            promiscuous: true,
            mtu: None,
            rx_timestamps: false,
        }
    }
}

impl PortConfig {
    /// `n` receive and `n` transmit queues, the rest default.
    pub fn with_queues(n: u16) -> Self {
        Self {
            rx_queues: n,
            tx_queues: n,
            ..Self::default()
        }
    }
}

/// What a port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// DPDK's port id.
    pub id: u16,
    /// The device name (`net_ring0`, `0000:3b:00.0`).
    pub name: String,
    /// The driver (`net_ring`, `net_ice`).
    pub driver: String,
    /// Most receive queues the device offers.
    pub max_rx_queues: u16,
    /// Most transmit queues the device offers.
    pub max_tx_queues: u16,
    /// RSS hash functions the device supports (`RTE_ETH_RSS_*` bits; 0 = no RSS).
    pub rss_offloads: u64,
    /// The port's MAC address.
    pub mac: [u8; 6],
    /// NUMA socket of the device, if known.
    pub socket: Option<u32>,
}

/// Link state as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mbit/s (0 if unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

/// Counters of one queue (DPDK keeps them for the first 16 queues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Packets received on this queue.
    pub rx_packets: u64,
    /// Packets transmitted from this queue.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
}

/// A port's counters since start or the last reset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortStats {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets the device dropped because no receive descriptor was free (we polled too slowly).
    pub rx_missed: u64,
    /// Erroneous received packets.
    pub rx_errors: u64,
    /// Failed transmissions.
    pub tx_errors: u64,
    /// Receive failures because the mempool was empty.
    pub rx_no_mbuf: u64,
    /// Per-queue counters for the configured queues (up to 16).
    pub queues: Vec<QueueStats>,
}
