//! Ethdev ports. The life of a port in types:
//!
//! - [`Port`]: claimed by this handle (no other handle can configure it), stopped.
//! - [`Port::start`] configures queues and RSS, starts it, and returns a [`StartedPort`]: a
//!   [`RunningPort`] for control (statistics, link, MAC; clone it freely) plus one
//!   [`RxQueue`]/[`TxQueue`] handle per queue. Handing a queue handle to a lcore gives that
//!   lcore the exclusive right to poll the queue, which is the rule DPDK sets.
//! - The port stops when the last of these handles is dropped, or explicitly with
//!   [`RunningPort::stop`] once every queue handle is gone.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_uint, CStr};
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard};

use chc_dpdk_sys as sys;

use crate::eal::{c_name, check, ensure_up};
use crate::{
    Burst, Error, LinkStatus, Mempool, PortConfig, PortInfo, PortStats, QueueStats, Result, Rss,
};

/// Linux's ENOTSUP (= EOPNOTSUPP), which drivers return for features they lack.
const ENOTSUP: i32 = 95;

/// Ports some handle owns. Only the control path (open, stop) takes the lock.
static CLAIMED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn claimed() -> MutexGuard<'static, BTreeSet<u16>> {
    // A panic while holding the lock leaves the set consistent (single inserts/removes).
    CLAIMED.lock().unwrap_or_else(|e| e.into_inner())
}

/// A claimed, stopped port.
#[derive(Debug)]
pub struct Port {
    id: u16,
}

impl Drop for Port {
    fn drop(&mut self) {
        claimed().remove(&self.id);
    }
}

impl Port {
    /// Claims the port named `name`: a virtual device's name as given to `--vdev`
    /// (`net_pcap0`) or a PCI address (`0000:3b:00.0`).
    pub fn open(name: &str) -> Result<Port> {
        ensure_up()?;
        let cname = c_name("port", name)?;
        let mut id = 0u16;
        // SAFETY: the EAL is up; cname is a valid C string and id a valid out-pointer.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret != 0 {
            let known: Vec<String> = port_ids().map(port_name).collect();
            return Err(Error::PortNotFound {
                name: name.into(),
                known: if known.is_empty() {
                    format!("none; drivers load from {}", plugin_dir())
                } else {
                    known.join(", ")
                },
            });
        }
        Port::open_id(id)
    }

    /// Claims the port with DPDK id `id`.
    pub fn open_id(id: u16) -> Result<Port> {
        ensure_up()?;
        // SAFETY: the EAL is up; any id may be asked about.
        if unsafe { sys::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(Error::PortNotFound {
                name: format!("#{id}"),
                known: port_ids().map(port_name).collect::<Vec<_>>().join(", "),
            });
        }
        if !claimed().insert(id) {
            return Err(Error::PortBusy(id));
        }
        Ok(Port { id })
    }

    /// Creates a device after start-up (`rte_dev_probe`), e.g.
    /// `net_pcap1,rx_pcap=in.pcap,tx_pcap=out.pcap` or a PCI address, and claims its port.
    pub fn attach(devargs: &str) -> Result<Port> {
        ensure_up()?;
        let cargs = c_name("device", devargs)?;
        // SAFETY: the EAL is up and cargs is a valid C string; probing is a control-path call.
        check("rte_dev_probe", unsafe {
            sys::rte_dev_probe(cargs.as_ptr())
        })?;
        Port::open(devargs.split(',').next().unwrap_or(devargs))
    }

    /// Every port DPDK knows, claimed or not.
    pub fn list() -> Result<Vec<PortInfo>> {
        ensure_up()?;
        port_ids().map(port_info).collect()
    }

    /// DPDK's id of the port.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The port's name, driver and capabilities.
    pub fn info(&self) -> Result<PortInfo> {
        port_info(self.id)
    }

    /// Configures `config.rx_queues` receive queues (buffers from `pool`) and
    /// `config.tx_queues` transmit queues, RSS, MTU and promiscuous mode, and starts the port.
    pub fn start(self, config: &PortConfig, pool: &Mempool) -> Result<StartedPort> {
        let id = self.id;
        let info = raw_info(id)?;
        if config.rx_queues == 0
            || config.tx_queues == 0
            || config.rx_queues > info.max_rx_queues
            || config.tx_queues > info.max_tx_queues
        {
            return Err(Error::InvalidArgument(format!(
                "port {id}: {} rx / {} tx queues asked, the device offers 1..={} / 1..={}",
                config.rx_queues, config.tx_queues, info.max_rx_queues, info.max_tx_queues
            )));
        }
        let mut conf = sys::rte_eth_conf::default();
        let mut key = [0u8; 52];
        let rss_hf = rss_functions(config, &info);
        if rss_hf != 0 {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
            if config.symmetric_rss {
                // 0x6d5a repeated: Toeplitz gives the same hash with source and destination
                // swapped, so both directions of a flow meet in one queue.
                let len = match info.hash_key_size {
                    0 => 40,
                    n => (n as usize).min(key.len()),
                };
                for (i, b) in key[..len].iter_mut().enumerate() {
                    *b = if i % 2 == 0 { 0x6d } else { 0x5a };
                }
                conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
                conf.rx_adv_conf.rss_conf.rss_key_len = len as u8;
            }
            // SAFETY: returns a constant.
            let hash_offload = unsafe { sys::chc_rte_eth_rx_offload_rss_hash() };
            if info.rx_offload_capa & hash_offload != 0 {
                conf.rxmode.offloads |= hash_offload;
            }
        }
        if config.rx_timestamps {
            // SAFETY: returns a constant.
            let timestamp = unsafe { sys::chc_rte_eth_rx_offload_timestamp() };
            // NICs timestamp as an offload; some virtual devices (net_pcap) always do, without
            // advertising it. Either way the field must exist once the port runs (below).
            if info.rx_offload_capa & timestamp != 0 {
                conf.rxmode.offloads |= timestamp;
            }
        }
        // SAFETY: the port is valid and claimed by us, so nobody else configures it; conf
        // (and the key it points to) is valid for the call, which copies what it needs.
        check("rte_eth_dev_configure", unsafe {
            sys::rte_eth_dev_configure(id, config.rx_queues, config.tx_queues, &conf)
        })?;
        let (mut rx_desc, mut tx_desc) = (config.rx_descriptors, config.tx_descriptors);
        // SAFETY: valid, configured port; both out-pointers are valid.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(id, &mut rx_desc, &mut tx_desc)
        })?;
        // SAFETY: valid port. SOCKET_ID_ANY (-1) becomes the "any socket" value queue setup
        // expects when cast to unsigned.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) } as c_uint;
        for q in 0..config.rx_queues {
            // SAFETY: configured port, q below the configured count; NULL selects the
            // driver's default rx config; the pool is a live pktmbuf pool that is never freed.
            check("rte_eth_rx_queue_setup", unsafe {
                sys::rte_eth_rx_queue_setup(id, q, rx_desc, socket, std::ptr::null(), pool.as_ptr())
            })?;
        }
        for q in 0..config.tx_queues {
            // SAFETY: as above, for a transmit queue.
            check("rte_eth_tx_queue_setup", unsafe {
                sys::rte_eth_tx_queue_setup(id, q, tx_desc, socket, std::ptr::null())
            })?;
        }
        if let Some(mtu) = config.mtu {
            // SAFETY: configured port, control path.
            check("rte_eth_dev_set_mtu", unsafe {
                sys::rte_eth_dev_set_mtu(id, mtu)
            })?;
        }
        // SAFETY: configured port with all queues set up.
        check("rte_eth_dev_start", unsafe { sys::rte_eth_dev_start(id) })?;
        if config.rx_timestamps {
            // The driver registered the timestamp field when probed or configured.
            crate::mbuf::find_rx_timestamps().map_err(|_| {
                Error::InvalidArgument(format!("port {id} cannot timestamp received packets"))
            })?;
        }
        if config.promiscuous {
            // SAFETY: started port. Virtual devices without the notion answer -ENOTSUP, which
            // is harmless: they receive everything anyway.
            let ret = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if ret < 0 && ret != -ENOTSUP {
                check("rte_eth_promiscuous_enable", ret)?;
            }
        }
        // The claim moves from the Port to the shared state, which releases it on drop.
        let port = ManuallyDrop::new(self);
        let shared = Arc::new(Shared {
            id: port.id,
            rss_hf,
            rx_queues: config.rx_queues,
            tx_queues: config.tx_queues,
        });
        Ok(StartedPort {
            rx: (0..config.rx_queues)
                .map(|queue| RxQueue {
                    shared: shared.clone(),
                    port: id,
                    queue,
                })
                .collect(),
            tx: (0..config.tx_queues)
                .map(|queue| TxQueue {
                    shared: shared.clone(),
                    port: id,
                    queue,
                })
                .collect(),
            port: RunningPort { shared },
        })
    }

    /// Closes the port (`rte_eth_dev_close`), releasing the device: a virtual device is gone
    /// afterwards (a `net_pcap` output file is complete), a PCI port needs a new probe.
    pub fn close(self) -> Result<()> {
        // SAFETY: claimed, stopped port; nothing polls it (no queue handles exist).
        check("rte_eth_dev_close", unsafe {
            sys::rte_eth_dev_close(self.id)
        })
        .map(drop)
    }
}

/// What [`Port::start`] returns: the control handle and the queue handles, to be moved to
/// the lcores that poll them.
#[derive(Debug)]
pub struct StartedPort {
    /// Statistics, link state, stopping.
    pub port: RunningPort,
    /// One handle per receive queue, in queue order.
    pub rx: Vec<RxQueue>,
    /// One handle per transmit queue, in queue order.
    pub tx: Vec<TxQueue>,
}

#[derive(Debug)]
struct Shared {
    id: u16,
    rss_hf: u64,
    rx_queues: u16,
    tx_queues: u16,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the last handle of a started port is going away, so no thread polls it.
        // A failure to stop cannot be reported from drop; the port stays claimed then.
        if unsafe { sys::rte_eth_dev_stop(self.id) } == 0 {
            claimed().remove(&self.id);
        }
    }
}

/// Control handle of a started port; clones refer to the same port. Reading statistics while
/// lcores poll the queues is how DPDK intends them to be read.
#[derive(Debug, Clone)]
pub struct RunningPort {
    shared: Arc<Shared>,
}

impl RunningPort {
    /// DPDK's id of the port.
    pub fn id(&self) -> u16 {
        self.shared.id
    }

    /// The port's name, driver and capabilities.
    pub fn info(&self) -> Result<PortInfo> {
        port_info(self.shared.id)
    }

    /// The RSS hash functions in effect (`RTE_ETH_RSS_*` bits): those asked for that the
    /// device supports; 0 when the port has one queue, RSS was off, or the device has none
    /// (then every packet arrives on queue 0, or wherever the device puts it).
    pub fn rss_hash_functions(&self) -> u64 {
        self.shared.rss_hf
    }

    /// Counters since start or the last [`RunningPort::reset_stats`].
    pub fn stats(&self) -> Result<PortStats> {
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: started port, valid out-pointer; reading counters concurrently with
        // polling is the intended use.
        check("rte_eth_stats_get", unsafe {
            sys::rte_eth_stats_get(self.shared.id, &mut s)
        })?;
        let queues =
            usize::from(self.shared.rx_queues.max(self.shared.tx_queues)).min(s.q_ipackets.len());
        Ok(PortStats {
            rx_packets: s.ipackets,
            tx_packets: s.opackets,
            rx_bytes: s.ibytes,
            tx_bytes: s.obytes,
            rx_missed: s.imissed,
            rx_errors: s.ierrors,
            tx_errors: s.oerrors,
            rx_no_mbuf: s.rx_nombuf,
            queues: (0..queues)
                .map(|q| QueueStats {
                    rx_packets: s.q_ipackets[q],
                    tx_packets: s.q_opackets[q],
                    rx_bytes: s.q_ibytes[q],
                    tx_bytes: s.q_obytes[q],
                })
                .collect(),
        })
    }

    /// Zeroes the counters.
    pub fn reset_stats(&self) -> Result<()> {
        // SAFETY: started port; control path.
        check("rte_eth_stats_reset", unsafe {
            sys::rte_eth_stats_reset(self.shared.id)
        })
        .map(drop)
    }

    /// Link state, without waiting for negotiation.
    pub fn link(&self) -> Result<LinkStatus> {
        let mut link = sys::rte_eth_link::default();
        // SAFETY: started port, valid out-pointer.
        check("rte_eth_link_get_nowait", unsafe {
            sys::rte_eth_link_get_nowait(self.shared.id, &mut link)
        })?;
        Ok(LinkStatus {
            up: link.link_status() != 0,
            speed_mbps: link.link_speed,
            full_duplex: link.link_duplex() != 0,
        })
    }

    /// Stops the port and gives back the stopped, still claimed [`Port`] (to reconfigure or
    /// close it). Errors with [`Error::QueuesInUse`] while any queue handle or other clone of
    /// this handle is alive; the port then keeps running until the last one is dropped.
    pub fn stop(self) -> Result<Port> {
        let id = self.shared.id;
        let shared = Arc::try_unwrap(self.shared).map_err(|_| Error::QueuesInUse(id))?;
        let shared = ManuallyDrop::new(shared);
        // SAFETY: this was the only handle, so no thread polls the port.
        check("rte_eth_dev_stop", unsafe {
            sys::rte_eth_dev_stop(shared.id)
        })?;
        Ok(Port { id })
    }
}

/// Which port and queue a queue handle is for (the same for both directions).
macro_rules! queue_accessors {
    () => {
        /// The port's id.
        pub fn port_id(&self) -> u16 {
            self.port
        }

        /// The queue's index.
        pub fn queue_id(&self) -> u16 {
            self.queue
        }

        /// Control handle of the port.
        pub fn port(&self) -> RunningPort {
            RunningPort {
                shared: self.shared.clone(),
            }
        }
    };
}

/// The right to poll one receive queue. `Send`, so it can move to the lcore that polls it;
/// polling takes `&mut self`, so one thread polls at a time.
#[derive(Debug)]
pub struct RxQueue {
    shared: Arc<Shared>,
    port: u16,
    queue: u16,
}

impl RxQueue {
    /// Receives up to `burst.remaining()` packets, appended to `burst`; returns how many.
    #[inline]
    pub fn rx_burst(&mut self, burst: &mut Burst) -> usize {
        let room = burst.remaining().min(usize::from(u16::MAX)) as u16;
        if room == 0 {
            return 0;
        }
        // SAFETY: the port is started and stays so while this handle (holding `shared`)
        // lives; only this handle polls (port, queue); the burst has `room` free slots.
        unsafe {
            let n = sys::chc_rte_eth_rx_burst(self.port, self.queue, burst.spare_raw(), room);
            // SAFETY: the driver wrote n <= room owned mbufs into those slots.
            burst.commit(usize::from(n));
            usize::from(n)
        }
    }

    queue_accessors!();
}

/// The right to transmit on one queue; see [`RxQueue`].
#[derive(Debug)]
pub struct TxQueue {
    shared: Arc<Shared>,
    port: u16,
    queue: u16,
}

impl TxQueue {
    /// Hands packets from the front of `burst` to the device and returns how many it took;
    /// those leave the burst, the rest stay in order (retry them, or `burst.clear()` to drop).
    #[inline]
    pub fn tx_burst(&mut self, burst: &mut Burst) -> usize {
        let n = burst.len().min(usize::from(u16::MAX)) as u16;
        if n == 0 {
            return 0;
        }
        // SAFETY: started port (kept so by `shared`); only this handle transmits on the
        // queue; the first n slots hold owned mbufs.
        unsafe {
            let sent = sys::chc_rte_eth_tx_burst(self.port, self.queue, burst.as_raw(), n);
            // SAFETY: the driver now owns the first `sent` mbufs.
            burst.forget_front(usize::from(sent));
            usize::from(sent)
        }
    }

    queue_accessors!();
}

fn rss_functions(config: &PortConfig, info: &sys::rte_eth_dev_info) -> u64 {
    if config.rx_queues < 2 {
        return 0;
    }
    // SAFETY: these return constants.
    let wanted = unsafe {
        match config.rss {
            Rss::Off => 0,
            Rss::Ip => sys::chc_rte_eth_rss_ip(),
            Rss::IpTcpUdp => {
                sys::chc_rte_eth_rss_ip() | sys::chc_rte_eth_rss_tcp() | sys::chc_rte_eth_rss_udp()
            }
        }
    };
    wanted & info.flow_type_rss_offloads
}

fn port_ids() -> impl Iterator<Item = u16> {
    // SAFETY: iterating valid port ids is always allowed once the EAL is up.
    let first = unsafe { sys::rte_eth_find_next(0) };
    std::iter::successors(Some(first), |&id| {
        // SAFETY: as above.
        Some(unsafe { sys::rte_eth_find_next(id + 1) })
    })
    .take_while(|&id| u32::from(id) < sys::RTE_MAX_ETHPORTS)
}

fn port_name(id: u16) -> String {
    let mut buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
    // SAFETY: buf has the RTE_ETH_NAME_MAX_LEN bytes the call may write, NUL included.
    if unsafe { sys::rte_eth_dev_get_name_by_port(id, buf.as_mut_ptr()) } != 0 {
        return format!("#{id}");
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn raw_info(id: u16) -> Result<sys::rte_eth_dev_info> {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: valid out-pointer; DPDK checks the id.
    check("rte_eth_dev_info_get", unsafe {
        sys::rte_eth_dev_info_get(id, &mut info)
    })?;
    Ok(info)
}

fn port_info(id: u16) -> Result<PortInfo> {
    let info = raw_info(id)?;
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: a non-null driver name is a static NUL-terminated string of the driver.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    let mut mac = sys::rte_ether_addr::default();
    // SAFETY: valid out-pointer; DPDK checks the id.
    check("rte_eth_macaddr_get", unsafe {
        sys::rte_eth_macaddr_get(id, &mut mac)
    })?;
    // SAFETY: DPDK checks the id.
    let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
    Ok(PortInfo {
        id,
        name: port_name(id),
        driver,
        max_rx_queues: info.max_rx_queues,
        max_tx_queues: info.max_tx_queues,
        rss_offloads: info.flow_type_rss_offloads,
        mac: mac.addr_bytes,
        socket: u32::try_from(socket).ok(),
    })
}

fn plugin_dir() -> &'static str {
    match sys::PMD_DIR {
        "" => "the EAL's plugin directory (add -d <dir> to the EAL arguments)",
        dir => dir,
    }
}
