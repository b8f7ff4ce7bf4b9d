//! The manager of a multi-process chain: starts the processes, is the chain's ingress (it
//! feeds the input to the root and keeps each packet until the root forwarded it) and its
//! egress (it writes the output, drops a second copy of a clock, and reports deletes), and
//! recovers from failures: a dead instance gets a replacement and the root replays its log;
//! a dead root gets a successor that resumes the clock; a dead store is restarted on its
//! data directory.

use super::link::{Frame, LinkPkt, Peer};
use super::net::{In, Inbox, Outlet};
use super::{Plan, HEARTBEAT};
use crate::config::Chain;
use crate::pcapio;
use chc_proto::meta::ChcMeta;
use nfs::packet::{Packet, Shape};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Victim {
    /// Vertex index (chain order) and instance.
    Instance(usize, u16),
    Root,
    Store,
}

/// A failure to inject: kill the victims (together) once `after_output` packets have left
/// the chain (so the chain is busy and has packets in flight), or at the end of the input
/// when fewer leave. With `hang`, the victims are stopped (SIGSTOP) instead: they stay
/// alive, connections open, and only their silence tells the manager (heartbeats).
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub after_output: u64,
    pub victims: Vec<Victim>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hang: bool,
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub chain: Chain,
    /// The chain's TOML text (every process compiles it).
    pub chain_toml: String,
    pub input: PathBuf,
    pub output: PathBuf,
    pub events: Option<PathBuf>,
    /// Where plans, logs and the store's data go.
    pub run_dir: PathBuf,
    /// Directory holding the `chc-dataplane` and `chc-store` binaries.
    pub bin_dir: PathBuf,
    pub store_shards: u32,
    pub fsync: String,
    pub faults: Vec<Fault>,
    /// Packets the ingress may have sent and not yet seen forwarded.
    pub window: usize,
    /// A run that has not finished by then fails with [`ClusterError::Timeout`].
    pub deadline: Duration,
    /// Send at most this many packets per second (a load below capacity, so that latency is
    /// processing and not queueing); `None` keeps the window full.
    pub rate_pps: Option<u64>,
    /// Keep a warm spare (a started process waiting with `--standby`) for every NF instance
    /// and the root, so that a recovery does not wait for a process to start.
    pub spares: bool,
    /// A root or instance that has beaten once and then stays silent this long is taken
    /// for hung: it is killed and replaced like a process that died.
    pub heartbeat_timeout: Duration,
}

/// The default of [`ClusterOptions::heartbeat_timeout`]: 50 beats missed. Long enough that
/// a loaded machine's scheduling (the CI runs many chains at once on two cores) does not
/// pass for a hang.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// What happened during a cluster run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterReport {
    pub packets_in: u64,
    pub packets_out: u64,
    pub malformed: u64,
    pub non_ip: u64,
    pub duplicates_at_egress: u64,
    pub events: u64,
    pub recoveries: Vec<Recovery>,
    /// Processes killed because their heartbeats stopped.
    pub hung_killed: u64,
    pub elapsed_s: f64,
    /// Every packet written, in output order: (ms since the start, µs from the source sending
    /// it to the sink receiving it). Replayed packets count from their first sending.
    #[serde(skip)]
    pub latency: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Recovery {
    pub what: String,
    /// When the failure happened (ms since the start of the run).
    pub at_ms: f64,
    /// From the kill to the replacement serving (ms).
    pub ms: f64,
    /// When the replacement was woken or started, once the failed process was reaped (ms
    /// since the start of the run): where a recovery starts if detection is left out.
    pub launched_ms: f64,
    /// A warm spare took over (else a process started after the failure).
    pub spare: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Pcap(#[from] pcapio::PcapError),
    /// A combination of failures Table 3.11 cannot recover; says which and why.
    #[error("cannot recover: {0}")]
    Unrecoverable(String),
    #[error("{0} exited unexpectedly; see {1}")]
    Crashed(String, PathBuf),
    #[error("the run did not finish within {0:?}")]
    Timeout(Duration),
}

/// The directory of the binaries next to the running one (tests run from `deps/`).
pub fn default_bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CHC_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut d = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if d.ends_with("deps") {
        d.pop();
    }
    d
}

/// Distinct free loopback addresses (the probes stay bound until all are chosen, so the OS
/// cannot hand the same port out twice).
///
/// Each run takes its ports on a loopback address of its own (127.0.0.0/8 is all loopback).
/// The probes are released before the processes bind, and two runs at once on 127.0.0.1
/// could be handed the same port in between. One run's store then failed to bind while its
/// instances connected to the other run's store, and both runs hung.
struct Ports(Vec<TcpListener>, IpAddr);

impl Ports {
    fn new() -> Ports {
        static RUNS: AtomicU32 = AtomicU32::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        Ports(Vec::new(), run_address(std::process::id(), run))
    }

    fn take(&mut self) -> Result<SocketAddr, ClusterError> {
        let l = TcpListener::bind((self.1, 0))
            .map_err(|e| ClusterError::Setup(format!("no free port: {e}")))?;
        let a = l
            .local_addr()
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        self.0.push(l);
        Ok(a)
    }
}

/// A loopback address for run `run` of process `pid`, other than 127.0.0.1 and never with
/// an octet 0 or 255.
fn run_address(pid: u32, run: u32) -> IpAddr {
    let v = (pid.wrapping_mul(64).wrapping_add(run % 64)) % (254 * 254 * 254);
    let o = |x: u32| (1 + x % 254) as u8;
    IpAddr::V4(Ipv4Addr::new(127, o(v / (254 * 254)), o(v / 254), o(v)))
}

/// Waits until `addr` accepts connections; false after `timeout`, or as soon as `alive`
/// says the process that should listen there is gone.
fn wait_listening(addr: SocketAddr, timeout: Duration, mut alive: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end && alive() {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        // A replacement's start is on the recovery's critical path: look often.
        std::thread::sleep(Duration::from_micros(200));
    }
    false
}

struct Proc {
    what: Victim,
    name: String,
    child: Child,
    /// When it last said it was alive (ns since the manager's clock started; 0: not yet).
    beat: Arc<AtomicU64>,
    /// When it was added (a process that never beat yet gets [`STARTING`]).
    since: Instant,
}

/// A heartbeat's time: ns on the manager's `clock`, never 0 (0 means "not yet").
fn beat_stamp(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64 | 1
}

/// How long a root or instance may take from its start to its first heartbeat (it beats
/// once its main loop runs, right after it listens).
const STARTING: Duration = Duration::from_secs(10);

/// A process started ahead of a failure, waiting (`--standby`) to take over from `what`.
struct Spare {
    what: Victim,
    name: String,
    log: PathBuf,
    child: Child,
    go: ChildStdin,
    /// Says "listening" once it serves.
    ready: ChildStdout,
}

/// A replacement started and not listening yet. The run goes on meanwhile (the source keeps
/// sending, the sink keeps receiving), as traffic would.
struct Awaited {
    what: Victim,
    killed: Instant,
    launched_ms: f64,
    spare: bool,
    /// A woken spare that asks the root for its replay itself ([`super::Go`]).
    replays_itself: bool,
    /// When it was seen listening.
    ready: Option<Instant>,
}

/// From a thread watching a replacement start: it listens (when), or it died first.
enum Started {
    Listening(Victim, Instant),
    Failed(String, PathBuf),
}

/// How long after a recovery its victim gets a new spare: starting one takes CPU the
/// replacement needs while it works through the backlog.
const SPARE_DELAY: Duration = Duration::from_millis(200);

struct Cluster<'a> {
    o: &'a ClusterOptions,
    plan: Plan,
    plan_path: PathBuf,
    procs: Vec<Proc>,
    spares: Vec<Spare>,
    /// Victims whose spare was used, and when to start the next.
    spares_due: Vec<(Victim, Instant)>,
    /// Processes started so far per name (numbers the logs: a replacement's log is new).
    spawned: HashMap<String, usize>,
    report: ClusterReport,
    started_tx: crossbeam::channel::Sender<Started>,
    /// The clock of the processes' heartbeats.
    clock: Instant,
    /// When the store last answered the manager's probe (ns on `clock`; 0: not since it
    /// started).
    store_beat: Arc<AtomicU64>,
}

/// A run that ends early (an error, a missed deadline) takes its processes with it.
impl Drop for Cluster<'_> {
    fn drop(&mut self) {
        let spares = self.spares.iter_mut().map(|s| &mut s.child);
        for c in self.procs.iter_mut().map(|p| &mut p.child).chain(spares) {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

impl<'a> Cluster<'a> {
    /// Starts the process for `what` (without waiting for it), its stderr in a new log; a
    /// spare's standard input and output are pipes (its wake-up call, its "listening").
    fn launch(
        &mut self,
        what: Victim,
        extra: &[&str],
        spare: bool,
    ) -> Result<(String, PathBuf, Child), ClusterError> {
        let (name, mut cmd) = match what {
            Victim::Store => {
                let mut c = Command::new(self.o.bin_dir.join("chc-store"));
                c.args([
                    "serve",
                    "--listen",
                    &self.plan.store[0].to_string(),
                    "--resp",
                    "off",
                    "--data-dir",
                    &self.o.run_dir.join("store").display().to_string(),
                    "--shards",
                    &self.o.store_shards.to_string(),
                    "--fsync",
                    &self.o.fsync,
                ]);
                ("store".to_string(), c)
            }
            Victim::Root => {
                let mut c = Command::new(self.o.bin_dir.join("chc-dataplane"));
                c.args(["root", "--plan", &self.plan_path.display().to_string()]);
                ("root".to_string(), c)
            }
            Victim::Instance(vi, i) => {
                let v = &self.o.chain.vertices[vi];
                let mut c = Command::new(self.o.bin_dir.join("chc-dataplane"));
                c.args([
                    "instance",
                    "--plan",
                    &self.plan_path.display().to_string(),
                    "--vertex",
                    &v.name,
                    "--index",
                    &i.to_string(),
                ]);
                (format!("{}-{i}", v.name), c)
            }
        };
        cmd.args(extra);
        let n = self.spawned.entry(name.clone()).or_insert(0);
        *n += 1;
        let n = *n - 1;
        let log = self.o.run_dir.join(format!("{name}.{n}.log"));
        let f = std::fs::File::create(&log)
            .map_err(|e| ClusterError::Setup(format!("{}: {e}", log.display())))?;
        let pipe = || if spare { Stdio::piped() } else { Stdio::null() };
        // Roots and instances say "listening" (spares) and "beat" on their output.
        let out = if what == Victim::Store {
            Stdio::null()
        } else {
            Stdio::piped()
        };
        let child = cmd
            .stdin(pipe())
            .stdout(out)
            .stderr(f)
            .spawn()
            .map_err(|e| {
                ClusterError::Setup(format!("starting {name} ({:?}): {e}", cmd.get_program()))
            })?;
        Ok((name, log, child))
    }

    fn addr(&self, what: Victim) -> SocketAddr {
        match what {
            Victim::Store => self.plan.store[0],
            Victim::Root => self.plan.root,
            Victim::Instance(vi, i) => self.plan.instances[vi][i as usize],
        }
    }

    /// Adds a running process and waits until it listens.
    fn started(
        &mut self,
        what: Victim,
        name: String,
        log: PathBuf,
        child: Child,
    ) -> Result<(), ClusterError> {
        let mut child = child;
        let beat = Arc::new(AtomicU64::new(0));
        if let Some(out) = child.stdout.take() {
            self.read_output(what, out, beat.clone(), None);
        }
        self.procs.push(Proc {
            what,
            name: name.clone(),
            child,
            beat,
            since: Instant::now(),
        });
        // A process that exits first (a port taken, a bad plan) fails the run at once, with
        // its log, instead of after the whole wait.
        let addr = self.addr(what);
        let child = &mut self.procs.last_mut().expect("just pushed").child;
        if wait_listening(addr, Duration::from_secs(60), || {
            matches!(child.try_wait(), Ok(None))
        }) {
            Ok(())
        } else {
            Err(ClusterError::Crashed(name, log))
        }
    }

    fn spawn(&mut self, what: Victim, extra: &[&str]) -> Result<(), ClusterError> {
        let (name, log, child) = self.launch(what, extra, false)?;
        self.started(what, name, log, child)
    }

    /// Adds a replacement and watches, on a thread, for it to listen: a spare says so on its
    /// output; a new process is probed.
    fn started_async(
        &mut self,
        what: Victim,
        name: String,
        log: PathBuf,
        child: Child,
        ready: Option<ChildStdout>,
    ) {
        let mut child = child;
        let beat = Arc::new(AtomicU64::new(0));
        let own = child.stdout.take();
        self.procs.push(Proc {
            what,
            name: name.clone(),
            child,
            beat: beat.clone(),
            since: Instant::now(),
        });
        let addr = self.addr(what);
        let tx = self.started_tx.clone();
        match ready {
            // A woken spare says "listening" on its output, then beats there.
            Some(out) => self.read_output(what, out, beat, Some((tx, name, log))),
            None => {
                if let Some(out) = own {
                    self.read_output(what, out, beat, None);
                }
                let _ = std::thread::Builder::new()
                    .name("replacement-watch".into())
                    .spawn(move || {
                        // The child is in the manager's list of processes, not here.
                        let ok = wait_listening(addr, Duration::from_secs(60), || true);
                        let _ = tx.send(if ok {
                            Started::Listening(what, Instant::now())
                        } else {
                            Started::Failed(name, log)
                        });
                    });
            }
        }
    }

    /// Reads a root's or an instance's output on a thread: each "beat" sets `beat` to now;
    /// with `listening`, the first line must say the process listens (a woken spare), which
    /// is reported there.
    fn read_output(
        &self,
        what: Victim,
        out: ChildStdout,
        beat: Arc<AtomicU64>,
        listening: Option<(crossbeam::channel::Sender<Started>, String, PathBuf)>,
    ) {
        let clock = self.clock;
        let _ = std::thread::Builder::new()
            .name("process-output".into())
            .spawn(move || {
                let mut r = std::io::BufReader::new(out);
                let mut line = String::new();
                if let Some((tx, name, log)) = listening {
                    let ok = matches!(std::io::BufRead::read_line(&mut r, &mut line), Ok(n) if n > 0)
                        && line.starts_with("listening");
                    let _ = tx.send(if ok {
                        Started::Listening(what, Instant::now())
                    } else {
                        Started::Failed(name, log)
                    });
                    if !ok {
                        return;
                    }
                }
                loop {
                    line.clear();
                    match std::io::BufRead::read_line(&mut r, &mut line) {
                        Ok(n) if n > 0 => {
                            if line.starts_with("beat") {
                                beat.store(beat_stamp(clock), Ordering::Relaxed);
                            }
                        }
                        _ => return,
                    }
                }
            });
    }

    /// Processes whose heartbeats stopped: killed (SIGKILL) and reaped, so that the exit
    /// check recovers them like any process that died. Returns how many.
    ///
    /// The store's heartbeat is its answer to the manager's probe ([`probe_store`]). A
    /// silent store is blamed before anyone else: roots and instances wait for it in their
    /// calls, so while it does not answer their silence is its doing, and they get a fresh
    /// allowance once it is replaced.
    fn kill_silent(&mut self) -> u64 {
        let now = self.clock.elapsed();
        let timeout = self.o.heartbeat_timeout;
        let since = |b: u64| now.saturating_sub(Duration::from_nanos(b));
        let store_beat = self.store_beat.load(Ordering::Relaxed);
        let store_quiet = store_beat != 0 && since(store_beat) > HEARTBEAT * 5;
        let mut killed = 0;
        for p in self.procs.iter_mut() {
            let b = p.beat.load(Ordering::Relaxed);
            let silent = match p.what {
                Victim::Store => store_beat != 0 && since(store_beat) > timeout,
                _ if b == 0 => p.since.elapsed() > STARTING,
                _ => since(b) > timeout && !store_quiet,
            };
            if silent && matches!(p.child.try_wait(), Ok(None)) {
                eprintln!(
                    "chc-dataplane: {} sent no heartbeat for {timeout:?}; killing it as hung",
                    p.name
                );
                // Reaped here, so the exit check below sees it dead and recovers it.
                let _ = p.child.kill();
                let _ = p.child.wait();
                killed += 1;
                if p.what == Victim::Store {
                    self.store_beat.store(0, Ordering::Relaxed);
                }
            }
        }
        if killed > 0 && self.store_beat.load(Ordering::Relaxed) == 0 {
            for p in self.procs.iter().filter(|p| p.what != Victim::Store) {
                p.beat.store(beat_stamp(self.clock), Ordering::Relaxed);
            }
        }
        killed
    }

    /// The flag a process taking over from a failed `what` runs with.
    fn takeover_flag(what: Victim) -> &'static str {
        match what {
            Victim::Instance(..) => "--replacement",
            Victim::Root => "--recover",
            Victim::Store => "",
        }
    }

    /// Starts a spare for `what` (the store has none: its recovery is loading its data).
    fn prepare_spare(&mut self, what: Victim) -> Result<(), ClusterError> {
        if what == Victim::Store || self.spares.iter().any(|s| s.what == what) {
            return Ok(());
        }
        let flags = [Self::takeover_flag(what), "--standby"];
        let (name, log, mut child) = self.launch(what, &flags, true)?;
        let go = child.stdin.take().expect("piped stdin");
        let ready = child.stdout.take().expect("piped stdout");
        self.spares.push(Spare {
            what,
            name,
            log,
            child,
            go,
            ready,
        });
        Ok(())
    }

    /// Starts what takes over from a failed `what`: its spare if it has a live one, else a
    /// new process; does not wait for it to listen (a [`Started`] says when). Returns whether
    /// the spare took over.
    fn replace(&mut self, what: Victim, go: super::Go) -> Result<bool, ClusterError> {
        let flag = Self::takeover_flag(what);
        let extra: &[&str] = if flag.is_empty() { &[] } else { &[flag] };
        if let Some(k) = self.spares.iter().position(|s| s.what == what) {
            let mut s = self.spares.swap_remove(k);
            self.spares_due.push((what, Instant::now() + SPARE_DELAY));
            if writeln!(s.go, "{}", go.line()).is_ok() {
                self.started_async(what, s.name, s.log, s.child, Some(s.ready));
                return Ok(true);
            }
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let (name, log, child) = self.launch(what, extra, false)?;
        self.started_async(what, name, log, child, None);
        Ok(false)
    }

    /// Starts the spares that are due.
    fn refill_spares(&mut self) -> Result<(), ClusterError> {
        let now = Instant::now();
        // A spare that exited (its patient store connection broke when the store failed)
        // is started again a little later.
        let mut k = 0;
        while k < self.spares.len() {
            if matches!(self.spares[k].child.try_wait(), Ok(Some(_))) {
                let s = self.spares.swap_remove(k);
                self.spares_due.push((s.what, now + SPARE_DELAY));
            } else {
                k += 1;
            }
        }
        for (what, _) in self
            .spares_due
            .iter()
            .filter(|d| d.1 <= now)
            .copied()
            .collect::<Vec<_>>()
        {
            self.prepare_spare(what)?;
        }
        self.spares_due.retain(|d| d.1 > now);
        Ok(())
    }

    /// Stops `what` (SIGSTOP): it hangs, alive, with its connections open.
    fn stop(&mut self, what: Victim) {
        if let Some(p) = self.procs.iter().find(|p| p.what == what) {
            if let Some(pid) = rustix::process::Pid::from_raw(p.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::STOP);
            }
        }
    }

    fn kill(&mut self, what: Victim) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.what == what) {
            // Child::kill sends SIGKILL.
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.retain(|p| p.what != what);
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The manager's client id for its probe of the store.
const PROBE_CLIENT: u64 = 0x7E00_0000_0000;

/// Asks the store a question (a read of a key nobody writes) every [`HEARTBEAT`] on a
/// thread, reconnecting after a failure, and sets `beat` (ns on `clock`) whenever it
/// answers within the period; ends when `stop` is set.
fn probe_store(
    addrs: Vec<SocketAddr>,
    beat: Arc<AtomicU64>,
    clock: Instant,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    use chc_store::client::{ObjKey, StoreClient, TcpOptions};
    let key = ObjKey::raw("chc:manager:probe");
    let _ = std::thread::Builder::new()
        .name("store-probe".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let opts = TcpOptions {
                    connect_timeout: HEARTBEAT * 5,
                    ..Default::default()
                };
                let Ok(mut c) = StoreClient::connect(&addrs, PROBE_CLIENT, opts) else {
                    std::thread::sleep(HEARTBEAT);
                    continue;
                };
                c.call_timeout = HEARTBEAT * 5;
                while !stop.load(Ordering::Relaxed) && c.call(key.get()).is_ok() {
                    beat.store(beat_stamp(clock), Ordering::Relaxed);
                    std::thread::sleep(HEARTBEAT);
                }
            }
        });
}

/// Runs a chain as processes over a pcap, injecting the given faults.
pub fn run_cluster(o: &ClusterOptions) -> Result<ClusterReport, ClusterError> {
    let started = Instant::now();
    std::fs::create_dir_all(&o.run_dir)
        .map_err(|e| ClusterError::Setup(format!("{}: {e}", o.run_dir.display())))?;
    // A new cluster starts from an empty store (a kept directory may hold an earlier run's).
    let store_dir = o.run_dir.join("store");
    if store_dir.exists() {
        std::fs::remove_dir_all(&store_dir)
            .map_err(|e| ClusterError::Setup(format!("{}: {e}", store_dir.display())))?;
    }
    let mut ports = Ports::new();
    let plan = Plan {
        chain_toml: o.chain_toml.clone(),
        store: vec![ports.take()?],
        root: ports.take()?,
        sink: ports.take()?,
        instances: o
            .chain
            .vertices
            .iter()
            .map(|v| {
                (0..v.parallelism)
                    .map(|_| ports.take())
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?,
    };
    drop(ports);
    let plan_path = o.run_dir.join("plan.json");
    plan.save(&plan_path).map_err(ClusterError::Setup)?;
    for f in &o.faults {
        let store = f.victims.contains(&Victim::Store);
        if store && f.victims.len() > 1 {
            let other = f
                .victims
                .iter()
                .find(|v| **v != Victim::Store)
                .expect("another victim");
            let who = match other {
                Victim::Root => "the root".to_string(),
                Victim::Instance(vi, i) => {
                    format!("instance {i} of {}", o.chain.vertices[*vi].name)
                }
                Victim::Store => unreachable!(),
            };
            return Err(ClusterError::Unrecoverable(format!(
                "{who} failed together with the store holding its state (Table 3.11: the \
                 store rolls forward from the NF-side logs and caches of live components)"
            )));
        }
        if f.victims.contains(&Victim::Root)
            && f.victims.iter().any(|v| matches!(v, Victim::Instance(..)))
        {
            return Err(ClusterError::Unrecoverable(
                "the root failed together with an NF instance (the root's packet log is local: \
                 the packets only it could replay to the replacement are lost)"
                    .into(),
            ));
        }
    }
    let mut sink = Inbox::bind(plan.sink)
        .map_err(|e| ClusterError::Setup(format!("sink {}: {e}", plan.sink)))?;
    let (started_tx, started_rx) = crossbeam::channel::unbounded();
    let mut c = Cluster {
        o,
        plan: plan.clone(),
        plan_path,
        procs: Vec::new(),
        spares: Vec::new(),
        spares_due: Vec::new(),
        spawned: HashMap::new(),
        report: ClusterReport::default(),
        started_tx,
        clock: Instant::now(),
        store_beat: Arc::new(AtomicU64::new(0)),
    };
    c.spawn(Victim::Store, &[])?;
    // The probe ends with the run, however it ends.
    let probe = StopOnDrop(Arc::new(std::sync::atomic::AtomicBool::new(false)));
    probe_store(
        c.plan.store.clone(),
        c.store_beat.clone(),
        c.clock,
        probe.0.clone(),
    );
    for (vi, v) in o.chain.vertices.iter().enumerate() {
        for i in 0..v.parallelism {
            c.spawn(Victim::Instance(vi, i), &[])?;
        }
    }
    c.spawn(Victim::Root, &[])?;
    if o.spares {
        let victims = c.procs.iter().map(|p| p.what).collect::<Vec<_>>();
        for v in victims {
            c.prepare_spare(v)?;
        }
    }
    // Every instance says when its input is done (after sending its last events).
    let exits: usize = o
        .chain
        .vertices
        .iter()
        .map(|v| v.parallelism as usize)
        .sum();

    let mut reader = pcapio::Reader::open(&o.input)?;
    let mut writer = pcapio::Writer::create(&o.output, reader.header.snaplen)?;
    let mut events = match &o.events {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| ClusterError::Setup(format!("{}: {e}", p.display())))?,
        )),
        None => None,
    };
    let (rtx, rrx) = crossbeam::channel::unbounded();
    // How many vertices are upstream of each.
    let depth: Vec<usize> = super::ancestors(&o.chain)
        .iter()
        .map(|a| a.iter().filter(|&&x| x).count())
        .collect();
    let mut source = Outlet::new(plan.root, Peer::Source)
        .with_replies(rtx)
        .caller_resends();
    let mut egress_root = Outlet::new(plan.root, Peer::Sink);
    let mut unacked: VecDeque<LinkPkt> = VecDeque::new();
    let mut seq = 0u64;
    // When each packet was first sent (ns since the start), by sequence number - 1.
    let mut sent_ns: Vec<u64> = Vec::new();
    let mut paced_from: Option<Instant> = None;
    let mut input_done = false;
    let mut eof_sent = false;
    let mut drained = false;
    let mut exits_done: HashSet<Peer> = HashSet::new();
    let mut written: HashSet<u64> = HashSet::new();
    let mut lines_seen: HashSet<String> = HashSet::new();
    let mut source_conns = 0;
    let mut faults: Vec<Fault> = o.faults.clone();
    faults.sort_by_key(|f| f.after_output);
    let mut faults: VecDeque<Fault> = faults.into();
    // Pending recoveries: (what, killed at).
    let mut pending_recovery: Vec<(Victim, Instant)> = Vec::new();
    // Replacements started, in the order their replays are asked for.
    let mut awaited: VecDeque<Awaited> = VecDeque::new();
    let mut buf = Vec::new();
    let deadline = o.deadline;
    loop {
        let mut busy = false;
        // Ingress: keep the window full.
        let mut batch = Vec::new();
        // Paced from the first packet on, not from the processes' start: the chain would
        // begin with a backlog of everything "due" while it started.
        let due = match (o.rate_pps, paced_from) {
            (None, _) => u64::MAX,
            (Some(_), None) => 1,
            (Some(r), Some(t)) => (t.elapsed().as_secs_f64() * r as f64) as u64 + 1,
        };
        while !input_done
            && unacked.len() + batch.len() < o.window
            && batch.len() < 64
            && c.report.packets_in < due
        {
            let Some((ts_ns, wire_len)) = reader.next_into(&mut buf)? else {
                input_done = true;
                break;
            };
            busy = true;
            c.report.packets_in += 1;
            let mut data = buf.clone();
            let n = data.len();
            let shape = Packet::parse(&mut data, n, 0).hdr.shape;
            match shape {
                Shape::Malformed(_) => {
                    c.report.malformed += 1;
                    continue;
                }
                Shape::NonIp => {
                    c.report.non_ip += 1;
                    writer.write(ts_ns, wire_len, &data)?;
                    continue;
                }
                _ => {}
            }
            seq += 1;
            sent_ns.push(started.elapsed().as_nanos() as u64);
            paced_from.get_or_insert_with(Instant::now);
            batch.push(LinkPkt {
                meta: ChcMeta::default(),
                weight: 0,
                seq,
                ts_ns,
                wire_len,
                data,
            });
        }
        // A new root: send it everything not acknowledged, in order, before anything new.
        if source.connections != source_conns {
            if source_conns > 0 && !unacked.is_empty() {
                let all: Vec<LinkPkt> = unacked.iter().cloned().collect();
                source.send(&Frame::Packets(all));
            }
            if source_conns > 0 && input_done {
                source.send(&Frame::Eof(Peer::Source));
            }
            source_conns = source.connections;
        }
        if !batch.is_empty() {
            unacked.extend(batch.iter().cloned());
            source.send(&Frame::Packets(batch));
        }
        source.flush();
        if input_done && !eof_sent {
            eof_sent = true;
            source.send(&Frame::Eof(Peer::Source));
        }
        while let Ok(m) = rrx.try_recv() {
            busy = true;
            if let In::Frame { frame, .. } = m {
                match frame {
                    Frame::Ack(s) => {
                        while unacked.front().is_some_and(|p| p.seq <= s) {
                            unacked.pop_front();
                        }
                    }
                    Frame::Drained => drained = true,
                    _ => {}
                }
            }
        }
        // Egress.
        let mut deletes = Vec::new();
        while let Some(m) = sink.try_recv() {
            busy = true;
            let In::Frame { from, frame, .. } = m else {
                continue;
            };
            match frame {
                Frame::Packets(ps) => {
                    for p in ps {
                        if written.insert(p.meta.clock) {
                            let now = started.elapsed().as_nanos() as u64;
                            if let Some(&t) =
                                (p.seq as usize).checked_sub(1).and_then(|i| sent_ns.get(i))
                            {
                                c.report
                                    .latency
                                    .push((now as f64 / 1e6, now.saturating_sub(t) as f64 / 1e3));
                            }
                            writer.write(p.ts_ns, p.wire_len, &p.data)?;
                            c.report.packets_out += 1;
                            deletes.push((p.meta.clock, p.weight, p.meta.vector));
                        } else {
                            c.report.duplicates_at_egress += 1;
                        }
                    }
                }
                Frame::Events(ls) => {
                    for l in ls {
                        if lines_seen.insert(l.clone()) {
                            c.report.events += 1;
                            if let Some(f) = events.as_mut() {
                                let _ = writeln!(f, "{l}");
                            }
                        }
                    }
                }
                Frame::Eof(p) => {
                    exits_done.insert(p);
                }
                other => eprintln!("chc-dataplane: egress: unexpected {other:?} from {from:?}"),
            }
        }
        if !deletes.is_empty() {
            egress_root.send(&Frame::Deletes(deletes));
        } else {
            egress_root.flush();
        }
        // Failures: injected ones, and processes that died.
        if faults.front().is_some_and(|f| {
            c.report.packets_out >= f.after_output || (input_done && unacked.is_empty())
        }) {
            let f = faults.pop_front().expect("front");
            let t = Instant::now();
            for v in &f.victims {
                if f.hang {
                    // Left alive and silent: the heartbeat check finds it.
                    c.stop(*v);
                } else {
                    c.kill(*v);
                    pending_recovery.push((*v, t));
                }
            }
        }
        c.report.hung_killed += c.kill_silent();
        for p in std::mem::take(&mut c.procs) {
            let mut p = p;
            match p.child.try_wait() {
                Ok(Some(status))
                    if !(matches!(p.what, Victim::Instance(..)) && status.success()) =>
                {
                    pending_recovery.push((p.what, Instant::now()));
                    eprintln!("chc-dataplane: {} exited ({status}); recovering", p.name);
                }
                Ok(Some(_)) => {}
                _ => c.procs.push(p),
            }
        }
        // Instances that failed together get their replays downstream first: a replay passes
        // through every instance upstream of its target, so the deepest one's takes each
        // upstream replacement through every logged clock once and in order, and the replays
        // for those upstream then find every clock seen.
        pending_recovery.sort_by_key(|(v, _)| match v {
            Victim::Instance(vi, _) => std::cmp::Reverse(depth[*vi]),
            _ => std::cmp::Reverse(usize::MAX),
        });
        // A lone instance recovery (nothing else failed with it or is still recovering) has
        // no replay order to keep: its spare asks the root for the replay itself.
        let alone = pending_recovery.len() == 1 && awaited.is_empty();
        for (v, t) in std::mem::take(&mut pending_recovery) {
            busy = true;
            let launched_ms = started.elapsed().as_secs_f64() * 1e3;
            let go = if alone && matches!(v, Victim::Instance(..)) {
                super::Go::TakeOverAndReplay
            } else {
                super::Go::TakeOver
            };
            let spare = c.replace(v, go)?;
            awaited.push_back(Awaited {
                what: v,
                killed: t,
                launched_ms,
                spare,
                replays_itself: spare && go == super::Go::TakeOverAndReplay,
                ready: None,
            });
        }
        while let Ok(s) = started_rx.try_recv() {
            busy = true;
            match s {
                Started::Listening(v, at) => {
                    if let Some(a) = awaited
                        .iter_mut()
                        .find(|a| a.what == v && a.ready.is_none())
                    {
                        a.ready = Some(at);
                    }
                }
                Started::Failed(name, log) => return Err(ClusterError::Crashed(name, log)),
            }
        }
        // Replays in the order the recoveries were sorted in: a replacement listening early
        // waits for those before it.
        while let Some(at) = awaited.front().and_then(|a| a.ready) {
            let a = awaited.pop_front().expect("front");
            match a.what {
                Victim::Store => {}
                // Even with nothing new to send, the new root must get what is not
                // acknowledged and the end of input.
                Victim::Root => {
                    source.reconnect(Duration::from_secs(30));
                }
                Victim::Instance(..) if a.replays_itself => {}
                Victim::Instance(vi, _) => source.send(&Frame::Replay(o.chain.vertices[vi].id)),
            }
            c.report.recoveries.push(Recovery {
                what: format!("{:?}", a.what),
                at_ms: a.killed.duration_since(started).as_secs_f64() * 1e3,
                ms: at.duration_since(a.killed).as_secs_f64() * 1e3,
                launched_ms: a.launched_ms,
                spare: a.spare,
            });
        }
        c.refill_spares()?;
        if input_done
            && unacked.is_empty()
            && drained
            && exits_done.len() >= exits
            && awaited.is_empty()
        {
            break;
        }
        if started.elapsed() > deadline {
            return Err(ClusterError::Timeout(deadline));
        }
        if !busy {
            // Paced, the sink's clock is part of the measurement, and a replacement's replay
            // is on a recovery's critical path: look again sooner.
            let idle = if o.rate_pps.is_some() || !awaited.is_empty() {
                50
            } else {
                500
            };
            // The sink's frames end the wait at once (they are what is timed).
            sink.wait_for_input(Duration::from_micros(idle));
        }
    }
    writer.finish()?;
    if let Some(mut f) = events {
        let _ = f.flush();
    }
    // Everything is out: stop the processes (the store cleanly).
    for p in c.procs.iter_mut() {
        if p.what == Victim::Store {
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status();
        } else {
            let _ = p.child.kill();
        }
    }
    for s in c.spares.iter_mut() {
        let _ = s.child.kill();
    }
    let spares = c.spares.iter_mut().map(|s| &mut s.child);
    for child in c.procs.iter_mut().map(|p| &mut p.child).chain(spares) {
        let _ = child.wait();
    }
    c.report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(std::mem::take(&mut c.report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs at once (other processes, or several in one process) get loopback addresses of
    /// their own, which the machine accepts, so their ports cannot meet.
    #[test]
    fn runs_take_ports_on_loopback_addresses_of_their_own() {
        let mut seen = HashSet::new();
        for pid in [1u32, 2, 4242, 4_194_303] {
            for run in 0..64 {
                let IpAddr::V4(a) = run_address(pid, run) else {
                    panic!("not IPv4");
                };
                let o = a.octets();
                assert_eq!(o[0], 127);
                assert!(o[1..].iter().all(|&x| x != 0 && x != 255), "{a}");
                assert!(seen.insert(a), "{a} twice");
            }
        }
        let mut p = Ports::new();
        let (a, b) = (p.take().unwrap(), p.take().unwrap());
        assert_ne!(a.ip(), Ipv4Addr::LOCALHOST);
        assert_eq!(a.ip(), b.ip());
        assert_ne!(a.port(), b.port());
        let q = Ports::new().take().unwrap();
        assert_ne!(q.ip(), a.ip(), "a second run in this process");
    }
}
