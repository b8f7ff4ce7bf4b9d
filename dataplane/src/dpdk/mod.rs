//! The DPDK dataplane (`chc-dataplane run --backend dpdk`): the chain of the embedded
//! runtime on DPDK ports, run to completion on lcores.
//!
//! - Ports come from the chain file (`[[port]]`: PCI addresses or vdev strings) or, with
//!   `--pcap-in/--pcap-out`, from one `net_pcap` vdev made here (no hugepages, no PCI).
//! - Each chain lcore runs a `worker::Worker`: the root (stamp, log, split) on the first
//!   lcore of the root's host, NF instances ([`crate::instance::NfInstance`], the same
//!   per-packet step as the embedded runtime) on all of them, bursts handed between lcores
//!   through `rte_ring`s and between hosts over links with NSH ([`meta`]).
//! - Deletes and commits reach the root from other hosts over [`control`].
//! - Scaling (`--scale NAME:out|in@N`, one host): the root holds its input back for each
//!   move, lets the chain drain when instances run on other lcores, and has the lcores of
//!   the old and the new instance release and take the moved flows' state (see
//!   `Worker::scale`). `--autoscale` policies plan such moves from the instances' packet
//!   counts, looked at from the root's lcore every policy period.
//! - A straggler's clone (`--scale NAME:clone=I@N`, one host): the root replays its log for
//!   the clone, the splitter copies the straggler's traffic to it, the faster of the two is
//!   kept and duplicate outputs are suppressed (module `race`).
//! - `--rate` paces the root; `--delay` makes an instance's lcore spin before each packet.
//! - [`telemetry`] counts per port and per lcore, served in Prometheus format.
//!
//! The module builds without DPDK too: `chc-dpdk`'s stubs then make [`start`] fail with
//! "the DPDK backend is off" and the reason.

/// The DPDK wrapper, for programs that feed a running dataplane from the same process.
pub use chc_dpdk;

pub mod control;
pub mod meta;
pub mod plan;
mod race;
pub mod rejoin;
pub mod telemetry;
mod worker;

use crate::config::{Chain, PortFile};
use crate::instance::NfInstance;
use crate::pcapio::{self, PcapError};
use crate::runtime::{Delay, Rule, ScaleAction, ScaleStep};
use crate::split::Allocation;
use crate::stores::{self, StateStore};
use crate::summary::{Summary, VertexSummary};
use chc_dpdk::{
    lcore, mbuf_ring, Burst, Eal, EalArgs, Mempool, Multi, Port, PortConfig, RingConsumer,
    RingProducer, RunningPort, RxQueue, Single, TxQueue,
};
use chc_root::RootConfig;
use chc_store::client::cache::Mode;
use chc_store::client::{ops, StoreClient};
use chc_store::server::Store;
use control::{ControlError, Inbox, PeerControl, PeerStore, RootControl};
use crossbeam::queue::SegQueue;
use hdrhistogram::Histogram;
use meta::PRIVATE_LEN;
use plan::{Placement, Plan, PlanError};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use telemetry::{Figures, LcoreCounters, LcoreFigures, PortFigures, RingFigures, Source};
use worker::{DeleteSink, Dest, Io, LinkOut, Replay, RingOut, RootPart, Router, Shared, Task};
use worker::{TxOut, TxPath, TxTarget, Worker};

/// Packets per burst.
pub const BURST: usize = 32;

/// A pcap replay through a `net_pcap` vdev.
#[derive(Clone, Debug)]
pub struct PcapReplay {
    pub input: PathBuf,
    pub output: PathBuf,
}

/// How to run a chain under DPDK.
#[derive(Clone)]
pub struct DpdkOptions {
    pub chain: Chain,
    /// The operator's EAL arguments (shell-quoted, passed through).
    pub eal: Option<String>,
    /// Replay a pcap file (sets up `--no-huge --no-pci` and the `net_pcap` vdev).
    pub pcap: Option<PcapReplay>,
    pub events: Option<PathBuf>,
    /// Which host of the chain this is.
    pub host: Option<String>,
    /// Serve telemetry on this address (`127.0.0.1:9100`).
    pub telemetry: Option<String>,
    /// Mbufs in the packet pool.
    pub pool_size: u32,
    pub progress: bool,
    /// Scale-out and scale-in steps (`--scale`), run from the root's lcore.
    pub scaling: Vec<ScaleStep>,
    /// Admit at most this many packets per second, on average (`--rate`; a load level).
    pub rate_pps: Option<u64>,
    /// Per-packet delays, by vertex name (every instance) or `NAME#I` (instance I only):
    /// the instance's lcore spins that long before each packet, as a slow NF would.
    pub delays: std::collections::HashMap<String, Delay>,
    /// Seed of the delays' random lengths.
    pub seed: u64,
    /// The operator's autoscale policies (`--autoscale`), applied from the root's lcore.
    pub policies: Vec<crate::runtime::Policy>,
    pub policy_period: Duration,
}

impl DpdkOptions {
    pub fn new(chain: Chain) -> DpdkOptions {
        DpdkOptions {
            chain,
            eal: None,
            pcap: None,
            events: None,
            host: None,
            telemetry: None,
            pool_size: 16383,
            progress: false,
            scaling: Vec::new(),
            rate_pps: None,
            delays: Default::default(),
            seed: 1,
            policies: Vec::new(),
            policy_period: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DpdkError {
    #[error(transparent)]
    Dpdk(#[from] chc_dpdk::Error),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Pcap(#[from] PcapError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("starting the store: {0}")]
    Store(String),
    #[error("{0}")]
    Nf(String),
    #[error("{0}")]
    Config(String),
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("{0} packets never settled at the root (missing deletes or commits)")]
    Unsettled(usize),
    #[error("{0} input packets were lost by the input port (no mbuf)")]
    LostInput(u64),
    #[error("the connection to another host broke before the end")]
    PeerLost,
    #[error("{0}")]
    Failed(String),
}

/// Port and lcore figures of the end of a run, next to the chain's [`Summary`].
#[derive(Debug, Clone, Serialize)]
pub struct DpdkSummary {
    #[serde(flatten)]
    pub chain: Summary,
    pub host: String,
    pub eal: String,
    pub figures: Figures,
    /// Frames on links that were not CHC's (neighbour discovery and the like).
    pub link_foreign: u64,
    /// What the lcores reported going wrong (also printed as it happened).
    pub errors: Vec<String>,
}

impl std::fmt::Display for DpdkSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.chain)?;
        if !self.host.is_empty() {
            writeln!(f, "host {}", self.host)?;
        }
        writeln!(
            f,
            "{:<12} {:<40} {:>10} {:>10} {:>9}",
            "port", "device", "rx", "tx", "rx drops"
        )?;
        for p in &self.figures.ports {
            writeln!(
                f,
                "{:<12} {:<40} {:>10} {:>10} {:>9}",
                p.name, p.device, p.rx_packets, p.tx_packets, p.rx_dropped
            )?;
        }
        write!(
            f,
            "{:<6} {:>10} {:>8} {:>10} {:>14}",
            "lcore", "packets", "drops", "tx", "cycles/packet"
        )?;
        for l in &self.figures.lcores {
            write!(
                f,
                "\n{:<6} {:>10} {:>8} {:>10} {:>14.1}",
                l.lcore, l.packets, l.drops, l.tx, l.cycles_per_packet
            )?;
        }
        Ok(())
    }
}

/// Queues the chain does not use, for a traffic source in the same process (benchmarks).
pub struct SpareQueue {
    pub port: String,
    pub rx: Option<RxQueue>,
    pub tx: Option<TxQueue>,
}

/// Asks a running dataplane to stop taking input, drain and stop.
#[derive(Clone)]
pub struct StopHandle(Arc<Shared>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.stop_request.store(true, Ordering::Release);
    }
}

/// Telemetry of a running dataplane.
pub struct TelemetryView {
    ports: Vec<(String, String, RunningPort)>,
    lcores: Vec<(u32, Arc<LcoreCounters>)>,
    rings: Vec<(String, RingProducer<Multi>)>,
    shared: Arc<Shared>,
}

impl Source for TelemetryView {
    fn figures(&self) -> Figures {
        Figures {
            ports: self
                .ports
                .iter()
                .map(|(name, device, p)| {
                    let s = p.stats().unwrap_or_default();
                    PortFigures {
                        name: name.clone(),
                        device: device.clone(),
                        rx_packets: s.rx_packets,
                        tx_packets: s.tx_packets,
                        rx_bytes: s.rx_bytes,
                        tx_bytes: s.tx_bytes,
                        rx_dropped: s.rx_missed + s.rx_no_mbuf + s.rx_errors,
                        tx_errors: s.tx_errors,
                    }
                })
                .collect(),
            lcores: self
                .lcores
                .iter()
                .map(|(l, c)| LcoreFigures::read(*l, c))
                .collect(),
            rings: self
                .rings
                .iter()
                .map(|(name, r)| RingFigures {
                    name: name.clone(),
                    len: r.len() as u64,
                    capacity: r.capacity() as u64,
                })
                .collect(),
            root_in_flight: self.shared.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// A started dataplane.
pub struct Dataplane {
    started: Instant,
    eal: String,
    plan: Plan,
    chain: Chain,
    shared: Arc<Shared>,
    view: Arc<TelemetryView>,
    joins: Vec<lcore::LcoreJoin<worker::Report>>,
    on_main: Option<Worker>,
    unlaunched: Vec<Worker>,
    main: u32,
    spare: Vec<SpareQueue>,
    ports: Vec<(PortPlanName, RunningPort)>,
    _server: Option<telemetry::Server>,
    root_control: Option<RootControl>,
    peer_control: Option<PeerControl>,
    store: Option<StateStore>,
    pcap_out: Option<(PathBuf, u32)>,
    progress: bool,
}

type PortPlanName = String;

/// EAL arguments that name no lcores get `-l 0`: one lcore runs everything.
fn has_lcores(args: &EalArgs) -> bool {
    args.as_slice()
        .iter()
        .any(|a| a == "-l" || a == "-c" || a.starts_with("--lcores") || a.starts_with("-l"))
}

/// Whether a device string names a virtual device (created with `--vdev`).
fn is_vdev(device: &str) -> bool {
    let name = device.split(',').next().unwrap_or(device);
    name.starts_with("net_") || name.starts_with("eth_") || name.starts_with("crypto_")
}

fn port_name(device: &str) -> &str {
    device.split(',').next().unwrap_or(device)
}

pub(crate) use crate::stores::nonblocking;

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// The chain of an empty pipeline: the root stamps, logs and deletes; no NF runs.
pub fn empty_chain(base: &Chain) -> Chain {
    let mut c = base.clone();
    c.vertices.clear();
    c.entry = 0;
    c
}

/// Starts a dataplane: EAL, ports, store, instances, lcores.
pub fn start(opts: &DpdkOptions) -> Result<Dataplane, DpdkError> {
    let mut dp = prepare(opts)?;
    dp.launch()?;
    Ok(dp)
}

/// Sets a dataplane up without starting its lcores (see [`Dataplane::launch`]).
pub fn prepare(opts: &DpdkOptions) -> Result<Dataplane, DpdkError> {
    let started = Instant::now();
    let mut chain = opts.chain.clone();
    // Scaling: instances a vertex gets by scaling out exist from the start (placed, with
    // their rings and state clients) and are given buckets when their step comes.
    let live0: Vec<u16> = chain.vertices.iter().map(|v| v.parallelism).collect();
    let mut scale_steps = Vec::new();
    // A straggler's clone: (vertex, straggler, step). It takes a new slot of the vertex.
    let mut clone_step: Option<(usize, u16, ScaleStep)> = None;
    for st in &opts.scaling {
        let vi = chain
            .vertices
            .iter()
            .position(|v| v.name == st.vertex)
            .ok_or_else(|| {
                DpdkError::Config(format!("--scale: no vertex named {:?}", st.vertex))
            })?;
        match st.action {
            ScaleAction::Out => chain.vertices[vi].parallelism += 1,
            ScaleAction::In => {}
            ScaleAction::Clone(of) => {
                crate::runtime::check_clone(&chain, vi, of, opts.scaling.len())
                    .map_err(DpdkError::Config)?;
                chain.vertices[vi].parallelism += 1;
                clone_step = Some((vi, of, st.clone()));
                continue;
            }
        }
        scale_steps.push((vi, st.clone()));
    }
    scale_steps.sort_by_key(|(_, st)| st.after_packets);
    // Autoscale policies: the vertex's spares up to the rule's maximum exist from the start.
    let rules = crate::runtime::check_policies(&chain, &opts.policies, &opts.scaling)
        .map_err(DpdkError::Config)?;
    for &(vi, rule) in &rules {
        if let Rule::Stragglers { .. } = rule {
            return Err(DpdkError::Config(format!(
                "--clone-stragglers {}: runs on the embedded path only (a clone on the DPDK \
                 path is scripted: --scale NAME:clone=I@N)",
                chain.vertices[vi].name
            )));
        }
        let v = &mut chain.vertices[vi];
        v.parallelism = v.parallelism.max(rule.max_instances(v.parallelism));
    }
    let mut replay = None;
    let mut args = match &opts.pcap {
        Some(p) => {
            if !chain.links.is_empty() {
                return Err(DpdkError::Config(
                    "--pcap-in runs the whole chain on this host; the chain file has [[link]]s"
                        .into(),
                ));
            }
            for v in &mut chain.vertices {
                v.host = None;
            }
            replay = Some(read_replay(&p.input)?);
            chain.ports = vec![PortFile {
                name: "pcap".into(),
                device: "net_pcap0".into(),
                host: None,
                rx: true,
                egress: None,
                mtu: None,
            }];
            let mut a = EalArgs::virtual_devices();
            if let Some(extra) = &opts.eal {
                for x in EalArgs::parse(extra)? {
                    a = a.arg(x);
                }
            }
            if !has_lcores(&a) {
                a = a.lcores("0");
            }
            a.pcap_vdev("net_pcap0", Some(&p.input), Some(&p.output))?
        }
        None => EalArgs::parse(opts.eal.as_deref().unwrap_or(""))?,
    };
    if chain.ports.is_empty() && chain.links.is_empty() {
        return Err(DpdkError::Config(
            "the chain has no [[port]]: give ports in the chain file, or --pcap-in/--pcap-out"
                .into(),
        ));
    }
    // Virtual devices of this host's ports and links that the EAL arguments do not create.
    let all: Vec<u32> = (0..1024).collect();
    let pre = plan::plan(&chain, opts.host.as_deref(), &all)?;
    let known: Vec<String> = args.vdev_names().iter().map(|s| s.to_string()).collect();
    for dev in pre
        .ports
        .iter()
        .map(|p| &p.device)
        .chain(pre.links.iter().map(|l| &l.device))
    {
        if is_vdev(dev) && !known.iter().any(|k| k == port_name(dev)) {
            args = args.vdev(dev);
        }
    }
    let eal_line = args.to_string();
    // The store: the servers of `[store] addresses`, or one in this process (other hosts
    // then have their own for their vertices). An in-process store starts before the EAL
    // pins this thread to the main lcore's CPU, so that its shard threads keep the
    // process's CPUs, and is then kept off the lcores' CPUs: a store host's work does not
    // take turns with a polling lcore (where it would only run when the lcore is
    // preempted, or preempt it when woken there).
    let store = StateStore::open(&chain.store).map_err(DpdkError::Store)?;
    let eal = Eal::init(&args)?;
    // The shard threads keep the CPUs no lcore polls, where there are such CPUs. Then an
    // lcore waiting for a reply polls for it (`StoreClient::poll_only`); a shard sharing its
    // CPU needs the lcore to yield instead. A client of servers reads its sockets.
    let mut shards_apart = true;
    for t in store.local().map(|s| s.shard_threads()).unwrap_or_default() {
        match chc_dpdk::lcore::keep_off_lcores(t) {
            Ok(apart) => shards_apart &= apart,
            Err(e) => {
                shards_apart = false;
                eprintln!("chc-dataplane: store shard thread placement: {e}");
            }
        }
    }
    let main = eal.main_lcore();
    let workers = lcore::workers()?;
    let chain_lcores = if workers.is_empty() {
        vec![main]
    } else {
        workers.clone()
    };
    let mut plan = plan::plan(&chain, opts.host.as_deref(), &chain_lcores)?;
    // Flows move between instances while the root holds its input back (see
    // `Worker::scale`); the lcores of this host take the steps, so every instance of a
    // scaled vertex runs here.
    if let Some(name) = scale_steps
        .first()
        .map(|(_, st)| &st.vertex)
        .or(clone_step.as_ref().map(|(_, _, st)| &st.vertex))
        .or(opts.policies.first().map(|p| &p.vertex))
    {
        if plan.multi_host {
            return Err(DpdkError::Config(format!(
                "--scale/--autoscale {name}: with --backend dpdk, scaling runs on one host (the \
                 chain spans several)"
            )));
        }
    }
    // The vertex manager's statistics for the policies: packets per instance.
    let processed: Vec<Vec<Arc<AtomicU64>>> = chain
        .vertices
        .iter()
        .map(|v| {
            (0..v.parallelism)
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect()
        })
        .collect();
    let race = clone_step.as_ref().map(|(vi, of, st)| {
        Arc::new(race::Race::new(crate::runtime::Cloning::new(
            *vi,
            *of,
            live0[*vi],
            st.handover,
        )))
    });
    if let Some((vi, of, st)) = &clone_step {
        if plan.ports.iter().filter(|p| p.rx).count() != 1 {
            return Err(DpdkError::Config(format!(
                "--scale {}:clone: a clone needs exactly one input port (the root's log does \
                 not keep each packet's port)",
                st.vertex
            )));
        }
        // The clone runs on another lcore than its straggler, where there is one.
        if let Placement::Local { slot } = plan.placement[*vi][usize::from(*of)] {
            let n = plan.lcores.len();
            plan.placement[*vi][usize::from(live0[*vi])] = Placement::Local {
                slot: (slot + 1) % n,
            };
        }
    }
    // With every instance on the root's lcore, nothing waits in a ring between two of the
    // root's bursts; otherwise a move first lets the chain drain.
    let drain = plan
        .placement
        .iter()
        .flatten()
        .any(|p| !matches!(p, Placement::Local { slot: 0 }));
    // A net_pcap input named in the chain file is replayed like --pcap-in: to its end.
    let rx_pcaps: Vec<&str> = plan
        .ports
        .iter()
        .filter(|p| p.rx)
        .filter_map(|p| devarg(&p.device, "rx_pcap"))
        .collect();
    if replay.is_none()
        && plan.root_here
        && rx_pcaps.len() == 1
        && plan.ports.iter().filter(|p| p.rx).count() == 1
    {
        replay = Some(read_replay(std::path::Path::new(rx_pcaps[0]))?);
    }
    let snaplen = replay.as_ref().map_or(65535, |r| r.1);
    let hz = lcore::tsc_hz()?;

    // Buffers: the packet pool and a few large buffers for frames above one mbuf.
    let pool = Mempool::pktmbuf_with_private(
        "chc-pkts",
        opts.pool_size,
        256,
        chc_dpdk::DEFAULT_DATA_ROOM,
        PRIVATE_LEN,
    )?;
    let jumbo = Mempool::pktmbuf_with_private(
        "chc-jumbo",
        255,
        0,
        16384 + chc_dpdk::HEADROOM,
        PRIVATE_LEN,
    )?;

    // Ports and links: all queues belong to the first chain lcore.
    let egress_targets: Vec<u16> = plan
        .ports
        .iter()
        .map(|p| p.index)
        .filter(|i| {
            chain.ports.iter().enumerate().any(|(j, q)| {
                q.rx && match &q.egress {
                    Some(e) => {
                        chain.ports.iter().position(|x| &x.name == e) == Some(usize::from(*i))
                    }
                    None => j == usize::from(*i),
                }
            })
        })
        .collect();
    let mut rx_ports = Vec::new();
    let mut tx_ports: Vec<(u16, TxQueue)> = Vec::new();
    let mut spare = Vec::new();
    let mut running = Vec::new();
    let mut record_port = None;
    for p in &plan.ports {
        let config = PortConfig {
            mtu: p.mtu,
            ..PortConfig::default()
        };
        let mut s = open_port(&p.device, &config, &pool)?;
        let info = s.port.info()?;
        running.push((p.name.clone(), s.port.clone()));
        let (rx, tx) = (s.rx.remove(0), s.tx.remove(0));
        let mut sp = SpareQueue {
            port: p.name.clone(),
            rx: None,
            tx: None,
        };
        if p.rx {
            rx_ports.push((rx, p.index, p.egress, s.port.clone()));
        } else {
            sp.rx = Some(rx);
        }
        if egress_targets.contains(&p.index) || !plan.root_here {
            if info.driver == "net_pcap" {
                let out = match &opts.pcap {
                    Some(r) => Some(r.output.clone()),
                    None => devarg(&p.device, "tx_pcap").map(PathBuf::from),
                };
                if let Some(out) = out {
                    record_port = Some((p.index, out));
                }
            }
            tx_ports.push((p.index, tx));
        } else {
            sp.tx = Some(tx);
        }
        if sp.rx.is_some() || sp.tx.is_some() {
            spare.push(sp);
        }
    }
    let mut link_queues = Vec::new();
    // Largest frame each link carries (its MTU and the Ethernet header).
    let mut link_frame = Vec::new();
    for l in &plan.links {
        let config = PortConfig {
            mtu: l.mtu,
            ..PortConfig::default()
        };
        let mut s = open_port(&l.device, &config, &pool)?;
        let mac = s.port.info()?.mac;
        // Without an MTU in the chain file, the device's is not to be trusted (net_af_packet
        // says 1500 whatever the interface has); no link carries more than a 9000-byte one.
        link_frame.push(usize::from(l.mtu.unwrap_or(9000)) + 14);
        running.push((format!("link-{}", l.peer), s.port.clone()));
        link_queues.push((s.rx.remove(0), s.tx.remove(0), mac, l.peer_mac));
    }

    let local_instances = plan.runs_instances();

    let shared_watermark = Arc::new(AtomicU64::new(0));
    let inbox = Arc::new(Inbox::default());
    let outbox = Arc::new(SegQueue::new());
    let mut root_control = None;
    let mut peer_control = None;
    let mut finished = None;
    if plan.multi_host {
        let addr = plan.control.clone().expect("checked by the plan");
        if plan.root_here {
            root_control = Some(RootControl::listen(
                &addr,
                inbox.clone(),
                shared_watermark.clone(),
            )?);
            // A host that fails and comes back cannot know what it sent out before: the
            // replay may send a packet twice through a port it owns.
            for p in &chain.ports {
                if let Some(h) = p.host.as_deref().filter(|h| *h != plan.host) {
                    eprintln!(
                        "chc-dataplane: note: port {:?} is on host {h:?}; if that host fails, \
                         packets it sent just before may leave again after its recovery \
                         (ports on the root's host leave each packet once)",
                        p.name
                    );
                }
            }
        } else {
            let pc = PeerControl::connect(
                &addr,
                &plan.host,
                outbox.clone(),
                match store.local() {
                    Some(local) => Box::new(CommitForwarder::new(local, chain.root.id)?),
                    // The servers tell the root of every host's commits, and the root
                    // retires its clocks there.
                    None => Box::new(SharedStore),
                },
                Duration::from_secs(60),
            )?;
            finished = Some(pc.finished());
            peer_control = Some(pc);
        }
    }
    let rejoining = peer_control.as_ref().is_some_and(PeerControl::rejoining);
    if rejoining {
        eprintln!(
            "chc-dataplane: host {} replaces one that failed: its instances start from the \
             store's state",
            plan.host
        );
    }
    let n_lcores = plan.lcores.len();
    let shared = Arc::new(Shared {
        lcores: n_lcores,
        watermark: shared_watermark,
        finished,
        ..Shared::default()
    });

    // Instance rings (one per local instance) and tx rings (other lcores to the owner).
    let mut rings: Vec<Vec<Option<InstanceRing>>> = Vec::new();
    let capacity = (ring_capacity(&chain, opts.pool_size)) as u32;
    let mut view_rings = Vec::new();
    for (vi, v) in chain.vertices.iter().enumerate() {
        let mut per = Vec::new();
        for i in 0..v.parallelism {
            match plan.placement[vi][usize::from(i)] {
                Placement::Local { .. } => {
                    let name = format!("chc-v{vi}-{i}");
                    let (p, c) = mbuf_ring::<Multi, Single>(&name, capacity)?;
                    view_rings.push((format!("{}-{i}", v.name), p.clone()));
                    per.push(Some((p, Some(c))));
                }
                Placement::Remote { .. } => per.push(None),
            }
        }
        rings.push(per);
    }
    let mut port_tx_rings = Vec::new();
    let mut link_tx_rings = Vec::new();
    if n_lcores > 1 {
        for (idx, _) in &tx_ports {
            let (p, c) = mbuf_ring::<Multi, Single>(&format!("chc-txp{idx}"), capacity)?;
            view_rings.push((format!("tx-port-{idx}"), p.clone()));
            port_tx_rings.push((usize::from(*idx), p, Some(c)));
        }
        for (k, _) in link_queues.iter().enumerate() {
            let (p, c) = mbuf_ring::<Multi, Single>(&format!("chc-txl{k}"), capacity)?;
            view_rings.push((format!("tx-link-{k}"), p.clone()));
            link_tx_rings.push((k, p, Some(c)));
        }
    }

    // Instances, per lcore, in chain order.
    let allocs: Vec<Arc<Allocation>> = live0
        .iter()
        .map(|&n| Arc::new(Allocation::even(n)))
        .collect();
    let mut per_lcore_tasks: Vec<Vec<(usize, u16)>> = vec![Vec::new(); n_lcores];
    for &vi in &plan.topo {
        for (i, p) in plan.placement[vi].iter().enumerate() {
            if let Placement::Local { slot } = p {
                per_lcore_tasks[*slot].push((vi, i as u16));
            }
        }
    }
    let events = match &opts.events {
        Some(p) => Some(Arc::new(Mutex::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|cause| DpdkError::Io {
                what: format!("creating {}", p.display()),
                cause,
            })?,
        )))),
        None => None,
    };
    let clock = worker::WallClock::new(hz);
    let taps: usize = chain.vertices.iter().map(|v| v.taps.len()).sum();
    // Mbufs a packet in flight may hold: itself and its tap copies; while a straggler races
    // its clone, also the copy for the clone and a replayed packet with its tap copies.
    let per_packet = if race.is_some() {
        2 * (1 + taps) + 1
    } else {
        1 + taps
    };
    let window = chain
        .root
        .log_limit
        .min((opts.pool_size as usize).saturating_sub(2048) / per_packet)
        .max(BURST);
    let n_ports = chain.ports.len();
    let mut tx_ports: Vec<Option<(u16, TxQueue)>> = tx_ports.into_iter().map(Some).collect();
    let mut link_queues: Vec<Option<_>> = link_queues.into_iter().map(Some).collect();
    let mut rx_ports = Some(rx_ports);
    let mut counters = Vec::new();
    let mut workers_built = Vec::new();
    for (slot, on_lcore) in per_lcore_tasks.iter().enumerate() {
        let owner = slot == 0;
        // Tasks and where each vertex's instances are, seen from this lcore.
        let mut tasks = Vec::new();
        let mut task_of = std::collections::HashMap::new();
        for &(vi, i) in on_lcore {
            let v = &chain.vertices[vi];
            // Instances of the start run as the chain file says; those added by scaling
            // out are built for the vertex at its widest, as the embedded runtime does.
            let mut v0 = v.clone();
            v0.parallelism = live0[vi];
            let clone_of = clone_step
                .as_ref()
                .filter(|(cv, _, _)| *cv == vi && i == live0[vi])
                .map(|(_, of, _)| *of);
            let replaces = clone_of.or(rejoining.then_some(i));
            let mut inst = if let Some(of) = replaces {
                // The straggler's identity (or, on a host that replaces a failed one, its
                // own), its state from the store, no initialisation.
                let client = (v.mode != Mode::Traditional)
                    .then(|| store.client())
                    .transpose()
                    .map_err(DpdkError::Store)?;
                NfInstance::taking_over(&v0, of, client)
            } else if i < live0[vi] {
                NfInstance::new(&v0, i, &store)
            } else {
                NfInstance::new(v, i, &store)
            }
            .map_err(DpdkError::Nf)?;
            if let Some(c) = inst.state.store() {
                // The lcore polls its CPU anyway: a blocking call polls for its reply too.
                c.poll_only = shards_apart;
            }
            let consumer = rings[vi][usize::from(i)]
                .as_mut()
                .and_then(|r| r.1.take())
                .expect("one ring per local instance");
            task_of.insert((vi, i), tasks.len());
            let delay = Delay::of(&opts.delays, &v.name, i)
                // Instances added by scaling out run elsewhere: they are not slowed, as on
                // the embedded path.
                .filter(|_| i < live0[vi])
                .map(|d| worker::Slow::new(d, hz, opts.seed, v.id, i));
            let pair = race
                .as_ref()
                .filter(|r| r.cloning.vertex == vi)
                .and_then(|r| {
                    let who = if i == r.cloning.of() {
                        0
                    } else if i == r.cloning.slot {
                        1
                    } else {
                        return None;
                    };
                    Some(Box::new(race::PairPart::new(r.clone(), who)))
                });
            tasks.push(Task {
                vertex: vi,
                inst,
                ring: consumer,
                next: v.next,
                taps: v.taps.clone(),
                exit: v.next.is_none(),
                on_path: v.on_path,
                dirty: false,
                delay,
                race: pair,
                processed: rules
                    .iter()
                    .any(|(rv, _)| *rv == vi)
                    .then(|| processed[vi][usize::from(i)].clone()),
            });
        }
        let mut ring_outs = Vec::new();
        let mut routers = Vec::new();
        for (vi, v) in chain.vertices.iter().enumerate() {
            let mut dests = Vec::new();
            for i in 0..v.parallelism {
                let d = match plan.placement[vi][usize::from(i)] {
                    Placement::Local { slot: s } if s == slot => Dest::Local(task_of[&(vi, i)]),
                    Placement::Local { .. } => {
                        let p = rings[vi][usize::from(i)].as_ref().expect("local").0.clone();
                        ring_outs.push(RingOut {
                            ring: p,
                            burst: Burst::with_capacity(BURST * 4),
                        });
                        Dest::Ring(ring_outs.len() - 1)
                    }
                    Placement::Remote { link } => Dest::Link(link),
                };
                dests.push(d);
            }
            routers.push(Router {
                vertex: vi as u16,
                key: v.partition,
                alloc: allocs[vi].clone(),
                dests,
                race: race.clone().filter(|r| r.cloning.vertex == vi),
                toward_clone: race.as_ref().is_some_and(|r| {
                    vi != r.cloning.vertex && crate::runtime::reaches(&chain, vi, r.cloning.vertex)
                }) || reaches_another_host(&chain, &plan, vi),
            });
        }
        // Transmission: the owner holds the queues; others go through its rings.
        let mut ports: Vec<Option<TxOut>> = (0..n_ports).map(|_| None).collect();
        let mut links = Vec::new();
        let mut tx_rings = Vec::new();
        let mut links_rx = Vec::new();
        if owner {
            for e in tx_ports.iter_mut() {
                let (idx, q) = e.take().expect("taken once");
                let records = record_port.as_ref().is_some_and(|(i, _)| *i == idx);
                ports[usize::from(idx)] = Some(TxOut {
                    path: TxPath::Queue(q),
                    burst: Burst::with_capacity(BURST * 4),
                    record: records.then(Vec::new),
                    keep_meta: records,
                });
            }
            for l in link_queues.iter_mut() {
                let (rxq, txq, mac, peer) = l.take().expect("taken once");
                links.push(LinkOut {
                    tx: TxOut {
                        path: TxPath::Queue(txq),
                        burst: Burst::with_capacity(BURST * 4),
                        record: None,
                        keep_meta: false,
                    },
                    dst_mac: peer,
                    src_mac: mac,
                    max_frame: link_frame[links.len()],
                });
                links_rx.push(rxq);
            }
            for (idx, _, c) in port_tx_rings.iter_mut() {
                tx_rings.push((c.take().expect("taken once"), TxTarget::Port(*idx)));
            }
            for (k, _, c) in link_tx_rings.iter_mut() {
                tx_rings.push((c.take().expect("taken once"), TxTarget::Link(*k)));
            }
        } else {
            for (idx, p, _) in &port_tx_rings {
                ports[*idx] = Some(TxOut {
                    path: TxPath::Ring(p.clone()),
                    burst: Burst::with_capacity(BURST * 4),
                    record: None,
                    // The owner records this port's packets from their metadata.
                    keep_meta: record_port
                        .as_ref()
                        .is_some_and(|(i, _)| usize::from(*i) == *idx),
                });
            }
            for (k, p, _) in &link_tx_rings {
                links.push(LinkOut {
                    tx: TxOut {
                        path: TxPath::Ring(p.clone()),
                        burst: Burst::with_capacity(BURST * 4),
                        record: None,
                        keep_meta: false,
                    },
                    dst_mac: plan.links[*k].peer_mac,
                    src_mac: [0; 6],
                    max_frame: link_frame[*k],
                });
            }
            // The source MAC is the link port's own.
            for (k, l) in links.iter_mut().enumerate() {
                l.src_mac = link_macs_for(&running, &plan, k);
            }
        }
        let root = if owner && plan.root_here {
            let rcfg = RootConfig {
                root_id: chain.root.id,
                log_limit: chain.root.log_limit,
                persist_every: chain.root.persist_every,
            };
            let mut client = store.client().map_err(DpdkError::Store)?;
            client.poll_only = shards_apart;
            let (root, clock_key) =
                stores::start_root(&mut client, rcfg).map_err(DpdkError::Store)?;
            Some(RootPart {
                root,
                client,
                traditional: chain.vertices.iter().all(|v| v.mode == Mode::Traditional),
                clock_key,
                inbox: inbox.clone(),
                rx: rx_ports.take().unwrap_or_default(),
                entry: (!chain.vertices.is_empty()).then_some(chain.entry),
                window,
                replay: replay
                    .take()
                    .map(|(records, _)| Replay { records, next: 0 }),
                input_done: false,
                run: worker::RootRun::default(),
                last_retire: 0,
                last_progress: lcore::tsc(),
                last_check: 0,
                unsettled: 0,
                lost_input: 0,
                pace: opts.rate_pps.map(|pps| worker::Pace::new(pps, hz)),
                store_reconnects: 0,
                rejoin: root_control.as_ref().map(|rc| {
                    rejoin::Rejoin::new(
                        rc.hosts(),
                        Duration::from_millis(chain.root.rejoin_wait_ms),
                        // A failed host's state survives it only on shared servers.
                        store.local().is_none()
                            && chain.vertices.iter().all(|v| v.mode != Mode::Traditional),
                        plan.ports.iter().find(|p| p.rx).map_or(0, |p| p.egress),
                    )
                }),
                clone: race
                    .as_ref()
                    .zip(clone_step.as_ref())
                    .map(|(r, (vi, _, st))| {
                        race::CloneRun::new(
                            r.clone(),
                            chain.vertices[*vi].name.clone(),
                            st.after_packets,
                            plan.ports.iter().find(|p| p.rx).map_or(0, |p| p.egress),
                        )
                    }),
                scaling: (!scale_steps.is_empty() || !rules.is_empty()).then(|| worker::Scaling {
                    steps: std::mem::take(&mut scale_steps).into(),
                    live: live0.clone(),
                    names: chain.vertices.iter().map(|v| v.name.clone()).collect(),
                    tables: allocs.iter().map(|a| a.entries()).collect(),
                    next_id: 0,
                    drain,
                    queue: Default::default(),
                    current: None,
                    moves: Vec::new(),
                    policies: (!rules.is_empty()).then(|| worker::Policies {
                        rules: rules.clone(),
                        processed: processed.clone(),
                        seen: vec![0; chain.vertices.len()],
                        period: (opts.policy_period.as_nanos() as u64)
                            .saturating_mul(hz)
                            .checked_div(1_000_000_000)
                            .unwrap_or(1)
                            .max(1),
                        last: lcore::tsc(),
                        hz,
                        decisions: Vec::new(),
                    }),
                }),
            })
        } else {
            None
        };
        let deletes = if plan.root_here {
            if owner {
                DeleteSink::Local
            } else {
                DeleteSink::Queue(inbox.clone())
            }
        } else {
            DeleteSink::Remote(outbox.clone())
        };
        let c = Arc::new(LcoreCounters::default());
        counters.push((plan.lcores[slot], c.clone()));
        let pending = (0..tasks.len()).map(|_| Vec::new()).collect();
        workers_built.push(Worker {
            lcore: plan.lcores[slot],
            shared: shared.clone(),
            counters: c,
            root,
            links_rx,
            tasks,
            routers,
            io: Io {
                pending,
                rings: ring_outs,
                ports,
                links,
                deletes,
                local_deletes: Vec::new(),
                events: events.clone(),
                lines: Vec::new(),
                events_written: 0,
                hist: histogram(),
                lat_pending: Vec::with_capacity(64),
                clock,
                pool,
                jumbo,
                spi: u32::from(chain.root.id),
                drops: 0,
                written: 0,
                link_foreign: 0,
                errors: Vec::new(),
                fatal: None,
                race: race.clone(),
                exited: plan
                    .multi_host
                    .then(|| vec![0; chain.root.log_limit.next_power_of_two().max(1024)]),
                exits_absorbed: 0,
                held_deletes: Vec::new(),
            },
            tx_rings,
            owner,
            hook: None,
            orders_seen: 0,
            scratch: Burst::with_capacity(BURST),
        });
    }
    let _ = local_instances;
    let view = Arc::new(TelemetryView {
        ports: plan
            .ports
            .iter()
            .map(|p| p.device.clone())
            .chain(plan.links.iter().map(|l| l.device.clone()))
            .zip(running.iter())
            .map(|(dev, (name, port))| (name.clone(), dev, port.clone()))
            .collect(),
        lcores: counters,
        rings: view_rings,
        shared: shared.clone(),
    });
    let server = match &opts.telemetry {
        Some(addr) => Some(
            telemetry::Server::start(addr, view.clone()).map_err(|cause| DpdkError::Io {
                what: format!("telemetry on {addr}"),
                cause,
            })?,
        ),
        None => None,
    };
    if let Some(rc) = &root_control {
        let others = plan_other_hosts(&chain, &plan);
        rc.wait_peers(others, Duration::from_secs(60))?;
    }
    // Launch: worker lcores run their loops; the main lcore runs one itself only when it
    // is the sole lcore.
    let pcap_out = record_port.map(|(_, path)| (path, snaplen));
    Ok(Dataplane {
        started,
        eal: eal_line,
        plan,
        chain,
        shared,
        view,
        joins: Vec::new(),
        on_main: None,
        unlaunched: workers_built,
        main,
        spare,
        ports: running,
        _server: server,
        root_control,
        peer_control,
        store: Some(store),
        pcap_out,
        progress: opts.progress,
    })
}

fn open_port(
    device: &str,
    config: &PortConfig,
    pool: &Mempool,
) -> Result<chc_dpdk::StartedPort, DpdkError> {
    Port::open(port_name(device))
        .and_then(|p| p.start(config, pool))
        .map_err(|e| DpdkError::Config(format!("port {device}: {e}")))
}

/// An instance's input ring: the producer end (cloned to senders), the consumer end
/// (taken by the instance's lcore).
type InstanceRing = (RingProducer<Multi>, Option<RingConsumer<Single>>);

/// Per input record: capture time, wire length, captured length.
type Records = Vec<(u64, u32, u32)>;

/// Capture time, wire length and captured length of every record, and the snap length.
fn read_replay(path: &std::path::Path) -> Result<(Records, u32), DpdkError> {
    let mut records = Vec::new();
    let mut reader = pcapio::Reader::open(path)?;
    let mut buf = Vec::new();
    while let Some((ts, wire_len)) = reader.next_into(&mut buf)? {
        records.push((ts, wire_len, buf.len() as u32));
    }
    Ok((records, reader.header.snaplen))
}

/// The value of `key=` in a device string (`net_pcap0,rx_pcap=in.pcap`).
fn devarg<'a>(device: &'a str, key: &str) -> Option<&'a str> {
    device
        .split(',')
        .skip(1)
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Whether vertex `vi` runs on another host or leads to one (a replay for a failed host
/// goes that way).
fn reaches_another_host(chain: &Chain, plan: &Plan, vi: usize) -> bool {
    let remote = |w: usize| {
        plan.placement[w]
            .iter()
            .any(|p| matches!(p, Placement::Remote { .. }))
    };
    remote(vi)
        || (0..chain.vertices.len())
            .any(|w| w != vi && remote(w) && crate::runtime::reaches(chain, vi, w))
}

/// Hosts other than the root's that take part in the chain.
fn plan_other_hosts(chain: &Chain, plan: &Plan) -> usize {
    let mut hosts = std::collections::BTreeSet::new();
    for l in &chain.links {
        for e in &l.ends {
            if e.host != plan.host {
                hosts.insert(e.host.clone());
            }
        }
    }
    for v in &chain.vertices {
        if let Some(h) = &v.host {
            if *h != plan.host {
                hosts.insert(h.clone());
            }
        }
    }
    hosts.len()
}

/// Ring capacity: every packet the root may have in flight, with its tap copies, fits in
/// any one ring, so a ring never fills.
fn ring_capacity(chain: &Chain, pool: u32) -> usize {
    let taps: usize = chain.vertices.iter().map(|v| v.taps.len()).sum();
    (pool as usize + 1024).max(chain.root.log_limit.min(pool as usize) * (1 + taps))
}

fn link_macs_for(running: &[(String, RunningPort)], plan: &Plan, k: usize) -> [u8; 6] {
    let name = format!("link-{}", plan.links[k].peer);
    running
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, p)| p.info().ok())
        .map_or([0; 6], |i| i.mac)
}

/// Forwards this host's store's commit notifications to the root; retires clocks.
struct CommitForwarder {
    client: StoreClient,
    root_id: u16,
}

impl CommitForwarder {
    fn new(store: &Store, root_id: u16) -> Result<CommitForwarder, DpdkError> {
        let mut client = store.client(store.next_client_id());
        for s in 0..client.shards() {
            client.submit_to(s, ops::subscribe_commits(root_id));
        }
        client.sync().map_err(|e| DpdkError::Store(e.to_string()))?;
        Ok(CommitForwarder { client, root_id })
    }
}

impl PeerStore for CommitForwarder {
    fn commits(&mut self, out: &mut Vec<(u64, u32)>) {
        let _ = self.client.poll();
        while let Some(p) = self.client.take_push() {
            for c in &p.push.commits {
                out.extend(c.clocks().map(|clock| (clock, c.id)));
            }
        }
    }
    fn retire(&mut self, watermark: u64) {
        for s in 0..self.client.shards() {
            self.client
                .submit_to(s, nonblocking(ops::retire_clocks(self.root_id, watermark)));
        }
        let _ = self.client.flush();
    }
}

/// A host whose store is the chain's servers has nothing to forward or retire.
struct SharedStore;

impl PeerStore for SharedStore {
    fn commits(&mut self, _: &mut Vec<(u64, u32)>) {}
    fn retire(&mut self, _: u64) {}
}

impl Dataplane {
    /// Has `hook` called once per iteration of the first chain lcore, before it polls
    /// its ports: a traffic source in the same process runs there, like `testpmd
    /// --tx-first` keeps its packets looping on its own lcore. Call before launching.
    pub fn attach_hook(&mut self, hook: Box<dyn FnMut() + Send>) {
        if let Some(w) = self.unlaunched.first_mut() {
            w.hook = Some(hook);
        }
    }

    /// Starts the worker lcores (the main lcore's share runs in [`Dataplane::wait`]).
    pub fn launch(&mut self) -> Result<(), DpdkError> {
        for w in std::mem::take(&mut self.unlaunched) {
            if w.lcore == self.main {
                self.on_main = Some(w);
            } else {
                let l = w.lcore;
                self.joins.push(lcore::launch(l, move || w.run())?);
            }
        }
        Ok(())
    }

    /// The live figures, for a thread that watches the run.
    pub fn telemetry(&self) -> Arc<dyn Source> {
        self.view.clone()
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.shared.clone())
    }

    /// The running figures (ports, lcores, rings).
    pub fn figures(&self) -> Figures {
        self.view.figures()
    }

    /// The queues no part of the chain polls (a traffic source in this process may use them).
    pub fn take_spare_queues(&mut self) -> Vec<SpareQueue> {
        std::mem::take(&mut self.spare)
    }

    /// Lcores that run the chain.
    pub fn lcores(&self) -> &[u32] {
        &self.plan.lcores
    }

    /// Runs the main lcore's share (if it is a chain lcore), waits for every lcore, and
    /// returns the summary.
    pub fn wait(mut self) -> Result<DpdkSummary, DpdkError> {
        self.launch()?;
        let progress = self.progress.then(|| {
            let view = self.view.clone();
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                while shared.phase.load(Ordering::Acquire) == worker::RUNNING {
                    std::thread::sleep(Duration::from_secs(1));
                    let f = view.figures();
                    let n: u64 = f.lcores.iter().map(|l| l.packets).sum();
                    eprintln!(
                        "chc-dataplane: {} packets handled ({} in the last second), {} in the root's log",
                        n,
                        n - last,
                        f.root_in_flight
                    );
                    last = n;
                }
            })
        });
        let mut reports = Vec::new();
        let mut panicked = None;
        if let Some(w) = self.on_main.take() {
            reports.push(w.run());
        }
        for j in self.joins.drain(..) {
            let l = j.lcore();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| j.join())) {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(e)) => panicked = Some(format!("lcore {l}: {e}")),
                Err(_) => panicked = Some(format!("lcore {l} panicked")),
            }
        }
        self.shared.phase.store(worker::STOPPING, Ordering::Release);
        if let Some(p) = progress {
            let _ = p.join();
        }
        let figures = self.view.figures();
        if let Some(rc) = &self.root_control {
            rc.finish();
        }
        // A host that failed and came back (the root replayed to it) is not lost.
        let peer_lost = self.root_control.as_ref().is_some_and(RootControl::lost);
        drop(self.peer_control.take());
        // Stopping the ports closes net_pcap's output file.
        drop(self._server.take());
        let names: Vec<String> = self.ports.iter().map(|(n, _)| n.clone()).collect();
        self.ports.clear();
        self.spare.clear();
        drop(self.view);
        let _ = names;
        // A step that could not finish (a stuck move or clone) fails the run.
        let mut errors: Vec<String> = reports.iter().filter_map(|r| r.fatal.clone()).collect();
        let mut summary = summarize(&self.chain, &reports, self.started.elapsed());
        summary.store = self
            .store
            .as_ref()
            .map(|s| s.describe())
            .unwrap_or_default();
        if let Some((path, snaplen)) = &self.pcap_out {
            let recs: Vec<(u64, u32)> = reports
                .iter()
                .flat_map(|r| r.records.iter().flat_map(|(_, v)| v.iter().copied()))
                .collect();
            if let Err(e) = fix_pcap_times(path, *snaplen, &recs) {
                errors.push(e.to_string());
            }
        }
        if let Some(s) = self.store.take() {
            s.shutdown();
        }
        let link_foreign = reports.iter().map(|r| r.link_foreign).sum();
        let unsettled: usize = reports.iter().filter_map(|r| r.root.map(|x| x.2)).sum();
        let lost: u64 = reports.iter().filter_map(|r| r.root.map(|x| x.3)).sum();
        let out = DpdkSummary {
            chain: summary,
            host: self.plan.host.clone(),
            eal: self.eal.clone(),
            figures,
            link_foreign,
            errors: reports
                .iter()
                .flat_map(|r| r.errors.iter().cloned())
                .collect(),
        };
        if let Some(p) = panicked {
            return Err(DpdkError::Failed(p));
        }
        if unsettled > 0 {
            return Err(DpdkError::Unsettled(unsettled));
        }
        if lost > 0 {
            return Err(DpdkError::LostInput(lost));
        }
        if peer_lost {
            return Err(DpdkError::PeerLost);
        }
        if let Some(e) = errors.into_iter().next() {
            return Err(DpdkError::Failed(e));
        }
        Ok(out)
    }
}

/// Runs a chain under DPDK to the end of its input (or until stopped).
pub fn run(opts: &DpdkOptions) -> Result<DpdkSummary, DpdkError> {
    start(opts)?.wait()
}

/// `net_pcap` stamps what it writes with the time of writing and the captured length as
/// the wire length; the embedded path writes each packet's capture time and wire length.
/// Rewrites the file's record headers with those, in transmission order.
fn fix_pcap_times(
    path: &std::path::Path,
    snaplen: u32,
    recs: &[(u64, u32)],
) -> Result<(), DpdkError> {
    let written = pcapio::read_all(path)?;
    if written.len() != recs.len() {
        return Err(DpdkError::Failed(format!(
            "{}: {} packets written, {} transmitted",
            path.display(),
            written.len(),
            recs.len()
        )));
    }
    let tmp = path.with_extension("pcap.tmp");
    let mut w = pcapio::Writer::create(&tmp, snaplen)?;
    for (r, (ts, wire_len)) in written.iter().zip(recs) {
        w.write(*ts, *wire_len, &r.data)?;
    }
    w.finish()?;
    std::fs::rename(&tmp, path).map_err(|cause| DpdkError::Io {
        what: format!("replacing {}", path.display()),
        cause,
    })
}

fn summarize(chain: &Chain, reports: &[worker::Report], elapsed: Duration) -> Summary {
    let mut hist = histogram();
    let mut vertices: Vec<VertexSummary> = chain.vertices.iter().map(VertexSummary::of).collect();
    let mut s = Summary {
        packets_read: 0,
        malformed_dropped: 0,
        non_ip_passed: 0,
        root_stamped: 0,
        root_dropped_log_full: 0,
        root_log_high_water: 0,
        packets_written: 0,
        events: 0,
        latency_p50_us: 0.0,
        latency_p75_us: 0.0,
        latency_p99_us: 0.0,
        elapsed_s: elapsed.as_secs_f64(),
        vertices: Vec::new(),
        moves: reports
            .iter()
            .flat_map(|r| r.moves.iter().cloned())
            .collect(),
        clone: reports.iter().find_map(|r| r.clone.clone()),
        decisions: reports
            .iter()
            .flat_map(|r| r.decisions.iter().cloned())
            .collect(),
        store: String::new(),
        rejoins: reports
            .iter()
            .flat_map(|r| r.rejoins.iter().cloned())
            .collect(),
        exits_absorbed: reports.iter().map(|r| r.exits_absorbed).sum(),
    };
    for r in reports {
        let _ = hist.add(&r.hist);
        s.packets_written += r.written;
        s.events += r.events;
        if let Some((stats, run, _, _)) = &r.root {
            s.packets_read += run.read;
            s.malformed_dropped += run.malformed;
            s.non_ip_passed += run.non_ip;
            s.root_stamped += stats.stamped;
            s.root_dropped_log_full += stats.dropped_log_full;
            s.root_log_high_water = s.root_log_high_water.max(stats.high_water as u64);
        }
        for (vi, idx, c, state) in &r.instances {
            vertices[*vi].add(*idx, c, state);
        }
    }
    s.latency_p50_us = hist.value_at_quantile(0.5) as f64 / 1e3;
    s.latency_p75_us = hist.value_at_quantile(0.75) as f64 / 1e3;
    s.latency_p99_us = hist.value_at_quantile(0.99) as f64 / 1e3;
    s.vertices = vertices;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdevs_and_lcore_arguments_are_recognised() {
        assert!(is_vdev("net_pcap0,rx_pcap=a.pcap"));
        assert!(is_vdev("net_af_packet0,iface=veth0"));
        assert!(!is_vdev("0000:3b:00.0"));
        assert_eq!(port_name("net_ring0,x=y"), "net_ring0");
        assert!(has_lcores(&EalArgs::parse("--no-huge -l 0-1").unwrap()));
        assert!(has_lcores(&EalArgs::parse("--lcores=0@0").unwrap()));
        assert!(!has_lcores(&EalArgs::parse("--no-huge -m 256").unwrap()));
    }

    #[test]
    fn without_ports_the_error_says_what_to_do() {
        let opts = DpdkOptions::new(Chain::paper());
        let e = start(&opts).err().expect("no ports").to_string();
        assert!(e.contains("[[port]]") && e.contains("--pcap-in"), "{e}");
    }

    #[test]
    fn rings_hold_every_packet_in_flight() {
        let c = Chain::paper();
        assert!(ring_capacity(&c, 16383) >= 16383);
        let e = empty_chain(&c);
        assert!(e.vertices.is_empty());
    }
}
