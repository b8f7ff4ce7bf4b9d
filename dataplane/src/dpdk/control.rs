//! The control channel between the root's host and the other hosts of a chain.
//!
//! Packets cross hosts on DPDK links with their metadata in NSH; what flows back to the
//! root does not ride on packets: a terminal's delete request and the store's commit
//! notifications for updates made on another host. Both go over one TCP connection per
//! non-root host, opened to the address in `[root] control`:
//!
//! - other host -> root: `HELLO host`, `DELETES [(clock, weight, vector)]`,
//!   `COMMITS [(clock, id)]`;
//! - root -> other host: `WELCOME rejoin` (the answer to HELLO: whether a host of that
//!   name was here before, so the new one replaces it), `WATERMARK clock` (clocks below it
//!   are settled: the host retires them from its store's clock log), `FINISH` (every packet
//!   is settled: stop).
//!
//! Frames are a type byte, a little-endian u32 payload length and the payload. A host
//! queues a terminal's delete once the events of its burst are written, and the channel
//! keeps their order. Losing the connection stops the host. The root counts the host as
//! down until a host of the same name says hello again; whether it waits for that and
//! replays its log to it (state on shared store servers) or gives up is the root's
//! lcore's decision (`rejoin`).

use crossbeam::queue::SegQueue;
use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A terminal's delete request: clock, weight of the copy, update vector.
pub type Delete = (u64, u64, u32);

const HELLO: u8 = 1;
const DELETES: u8 = 2;
const COMMITS: u8 = 3;
const WATERMARK: u8 = 4;
const FINISH: u8 = 5;
const WELCOME: u8 = 6;

/// Largest payload accepted (a batch of deletes is far smaller).
const MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control channel {addr}: {cause}")]
    Io { addr: String, cause: std::io::Error },
    #[error("control channel: {0}")]
    Protocol(String),
    #[error("control channel {addr}: {what} within {waited:?}")]
    Timeout {
        addr: String,
        what: String,
        waited: Duration,
    },
}

/// What arrives for a root from other lcores and other hosts.
#[derive(Debug, Default)]
pub struct Inbox {
    pub deletes: SegQueue<Delete>,
    pub commits: SegQueue<(u64, u32)>,
}

fn frame(out: &mut Vec<u8>, ty: u8, payload: &[u8]) {
    out.push(ty);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

fn read_frame(s: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes"),
        ));
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

/// Decodes a DELETES payload.
pub fn decode_deletes(p: &[u8]) -> Result<Vec<Delete>, ControlError> {
    let chunks = p.chunks_exact(20);
    if !chunks.remainder().is_empty() {
        return Err(ControlError::Protocol(format!(
            "DELETES payload of {} bytes",
            p.len()
        )));
    }
    Ok(chunks
        .map(|c| {
            (
                u64::from_le_bytes(c[0..8].try_into().expect("8")),
                u64::from_le_bytes(c[8..16].try_into().expect("8")),
                u32::from_le_bytes(c[16..20].try_into().expect("4")),
            )
        })
        .collect())
}

/// Decodes a COMMITS payload.
pub fn decode_commits(p: &[u8]) -> Result<Vec<(u64, u32)>, ControlError> {
    let chunks = p.chunks_exact(12);
    if !chunks.remainder().is_empty() {
        return Err(ControlError::Protocol(format!(
            "COMMITS payload of {} bytes",
            p.len()
        )));
    }
    Ok(chunks
        .map(|c| {
            (
                u64::from_le_bytes(c[0..8].try_into().expect("8")),
                u32::from_le_bytes(c[8..12].try_into().expect("4")),
            )
        })
        .collect())
}

fn encode_deletes(d: &[Delete], out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(d.len() * 20);
    for (c, w, v) in d {
        p.extend_from_slice(&c.to_le_bytes());
        p.extend_from_slice(&w.to_le_bytes());
        p.extend_from_slice(&v.to_le_bytes());
    }
    frame(out, DELETES, &p);
}

fn encode_commits(c: &[(u64, u32)], out: &mut Vec<u8>) {
    let mut p = Vec::with_capacity(c.len() * 12);
    for (clock, id) in c {
        p.extend_from_slice(&clock.to_le_bytes());
        p.extend_from_slice(&id.to_le_bytes());
    }
    frame(out, COMMITS, &p);
}

/// Which hosts are down and how many came back, for the root's lcore.
#[derive(Debug, Default)]
pub struct HostWatch {
    /// Hosts whose connection broke before FINISH and that have not said hello again.
    pub down: AtomicUsize,
    /// Hellos from a host that had been here before.
    pub rejoined: AtomicUsize,
}

/// The root's side: accepts the other hosts, feeds their deletes and commits to the root,
/// sends them the watermark and, at the end, FINISH.
pub struct RootControl {
    addr: String,
    peers: Arc<Mutex<Vec<(u64, String, TcpStream)>>>,
    connected: Arc<AtomicUsize>,
    hosts: Arc<HostWatch>,
    /// Set before FINISH goes out: a connection that closes from then on closed because
    /// its host finished, however late the root looks at [`RootControl::lost`].
    finishing: Arc<AtomicBool>,
    /// Connections whose reader saw them close.
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// What the accept loop and its readers share with the [`RootControl`].
struct Flags {
    connected: Arc<AtomicUsize>,
    hosts: Arc<HostWatch>,
    /// Every host name that said hello.
    known: Arc<Mutex<Vec<String>>>,
    finishing: Arc<AtomicBool>,
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Flags {
    fn clone_all(&self) -> Flags {
        Flags {
            connected: self.connected.clone(),
            hosts: self.hosts.clone(),
            known: self.known.clone(),
            finishing: self.finishing.clone(),
            closed: self.closed.clone(),
            stop: self.stop.clone(),
        }
    }
}

impl RootControl {
    /// Listens on `addr`; `watermark` is what the root publishes.
    pub fn listen(
        addr: &str,
        inbox: Arc<Inbox>,
        watermark: Arc<AtomicU64>,
    ) -> Result<RootControl, ControlError> {
        let io = |cause| ControlError::Io {
            addr: addr.to_string(),
            cause,
        };
        let listener = TcpListener::bind(addr).map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        let peers: Arc<Mutex<Vec<(u64, String, TcpStream)>>> = Arc::default();
        let flags = Flags {
            connected: Arc::new(AtomicUsize::new(0)),
            hosts: Arc::default(),
            known: Arc::default(),
            finishing: Arc::new(AtomicBool::new(false)),
            closed: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let stop = flags.stop.clone();
        let mut threads = Vec::new();
        {
            let (peers, flags) = (peers.clone(), flags.clone_all());
            threads.push(
                std::thread::Builder::new()
                    .name("control-accept".into())
                    .spawn(move || accept_loop(listener, inbox, peers, flags))
                    .map_err(io)?,
            );
        }
        {
            let (peers, stop) = (peers.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("control-watermark".into())
                    .spawn(move || {
                        let mut last = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let wm = watermark.load(Ordering::Relaxed);
                            if wm != last {
                                last = wm;
                                let mut out = Vec::new();
                                frame(&mut out, WATERMARK, &wm.to_le_bytes());
                                for (_, _, s) in
                                    peers.lock().unwrap_or_else(|e| e.into_inner()).iter_mut()
                                {
                                    let _ = s.write_all(&out);
                                }
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    })
                    .map_err(io)?,
            );
        }
        Ok(RootControl {
            addr: addr.to_string(),
            peers,
            connected: flags.connected,
            hosts: flags.hosts,
            finishing: flags.finishing,
            closed: flags.closed,
            stop,
            threads,
        })
    }

    /// Waits until `n` hosts have said hello.
    pub fn wait_peers(&self, n: usize, timeout: Duration) -> Result<(), ControlError> {
        let start = Instant::now();
        while self.connected.load(Ordering::Acquire) < n {
            if start.elapsed() > timeout {
                return Err(ControlError::Timeout {
                    addr: self.addr.clone(),
                    what: format!(
                        "{} of {n} other hosts connected",
                        self.connected.load(Ordering::Acquire)
                    ),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Whether a host's connection broke before FINISH and no host of its name came back.
    pub fn lost(&self) -> bool {
        self.hosts.down.load(Ordering::Acquire) > 0
    }

    /// Hosts down and hosts back, as the root's lcore watches them.
    pub fn hosts(&self) -> Arc<HostWatch> {
        self.hosts.clone()
    }

    /// Connections that have closed (for whatever reason).
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::Acquire)
    }

    /// Tells every host to stop.
    pub fn finish(&self) {
        // First: a host closes its connection as soon as it has FINISH, possibly before
        // this thread gets to look at `lost`.
        self.finishing.store(true, Ordering::Release);
        let mut out = Vec::new();
        frame(&mut out, FINISH, &[]);
        for (_, _, s) in self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter_mut()
        {
            let _ = s.write_all(&out);
            let _ = s.flush();
        }
    }
}

impl Drop for RootControl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, _, s) in self.peers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    inbox: Arc<Inbox>,
    peers: Arc<Mutex<Vec<(u64, String, TcpStream)>>>,
    flags: Flags,
) {
    let mut readers = Vec::new();
    let mut next_id = 0u64;
    while !flags.stop.load(Ordering::Relaxed) {
        let Ok((s, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = s.set_nonblocking(false);
        let _ = s.set_nodelay(true);
        let Ok(mut r) = s.try_clone() else { continue };
        next_id += 1;
        let id = next_id;
        let (inbox, peers, flags) = (inbox.clone(), peers.clone(), flags.clone_all());
        readers.push(std::thread::spawn(move || {
            let mut hello: Option<String> = None;
            loop {
                match read_frame(&mut r) {
                    Ok(Some((HELLO, name))) if hello.is_none() => {
                        let name = String::from_utf8_lossy(&name).into_owned();
                        hello = Some(name.clone());
                        let rejoin = {
                            let mut known = flags.known.lock().unwrap_or_else(|e| e.into_inner());
                            let seen = known.contains(&name);
                            if !seen {
                                known.push(name.clone());
                            }
                            seen
                        };
                        let mut welcome = Vec::new();
                        frame(&mut welcome, WELCOME, &[u8::from(rejoin)]);
                        let Ok(mut w) = s.try_clone() else { break };
                        // Under the lock: the watermark thread writes to the same socket.
                        let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                        if w.write_all(&welcome).is_err() {
                            break;
                        }
                        p.push((id, name, w));
                        drop(p);
                        flags.connected.fetch_add(1, Ordering::AcqRel);
                        if rejoin {
                            flags.hosts.rejoined.fetch_add(1, Ordering::AcqRel);
                            let _ = flags.hosts.down.fetch_update(
                                Ordering::AcqRel,
                                Ordering::Acquire,
                                |d| d.checked_sub(1),
                            );
                        }
                    }
                    Ok(Some((DELETES, p))) if hello.is_some() => match decode_deletes(&p) {
                        Ok(v) => v.into_iter().for_each(|d| inbox.deletes.push(d)),
                        Err(_) => break,
                    },
                    Ok(Some((COMMITS, p))) if hello.is_some() => match decode_commits(&p) {
                        Ok(v) => v.into_iter().for_each(|c| inbox.commits.push(c)),
                        Err(_) => break,
                    },
                    _ => break,
                }
            }
            // A host that already came back (its successor said hello first) is not down.
            let replaced = {
                let mut p = peers.lock().unwrap_or_else(|e| e.into_inner());
                p.retain(|(i, _, _)| *i != id);
                p.iter()
                    .any(|(i, n, _)| *i > id && Some(n) == hello.as_ref())
            };
            if hello.is_some()
                && !replaced
                && !flags.stop.load(Ordering::Relaxed)
                && !flags.finishing.load(Ordering::Acquire)
            {
                flags.hosts.down.fetch_add(1, Ordering::AcqRel);
            }
            flags.closed.fetch_add(1, Ordering::AcqRel);
        }));
    }
    drop(readers);
}

/// A non-root host's side: sends its terminals' deletes and its store's commits to the
/// root, retires clocks below the root's watermark, and stops at FINISH.
pub struct PeerControl {
    finish: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stream: TcpStream,
    rejoining: bool,
}

/// What a non-root host does with what the root sends.
pub trait PeerStore: Send + 'static {
    /// Commit notifications that arrived from this host's store.
    fn commits(&mut self, out: &mut Vec<(u64, u32)>);
    /// Clocks below `watermark` are settled.
    fn retire(&mut self, watermark: u64);
}

impl PeerControl {
    /// Connects to the root at `addr` (retrying for `timeout`: the root may start later).
    pub fn connect(
        addr: &str,
        host: &str,
        outbox: Arc<SegQueue<Delete>>,
        mut store: Box<dyn PeerStore>,
        timeout: Duration,
    ) -> Result<PeerControl, ControlError> {
        let io = |cause| ControlError::Io {
            addr: addr.to_string(),
            cause,
        };
        let start = Instant::now();
        let stream = loop {
            let target = addr
                .to_socket_addrs()
                .map_err(io)?
                .next()
                .ok_or_else(|| ControlError::Protocol(format!("{addr}: no address")))?;
            match TcpStream::connect_timeout(&target, Duration::from_millis(500)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => return Err(io(e)),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_nodelay(true).map_err(io)?;
        let mut hello = Vec::new();
        frame(&mut hello, HELLO, host.as_bytes());
        (&stream).write_all(&hello).map_err(io)?;
        // The root answers whether this host replaces one that was here before.
        let waited = timeout.max(Duration::from_secs(1));
        stream.set_read_timeout(Some(waited)).map_err(io)?;
        let rejoining = match read_frame(&mut &stream) {
            Ok(Some((WELCOME, p))) if p.len() == 1 => p[0] == 1,
            Ok(Some((ty, _))) => {
                return Err(ControlError::Protocol(format!(
                    "{addr}: the root answered hello with frame type {ty}"
                )))
            }
            Ok(None) => {
                return Err(ControlError::Protocol(format!(
                    "{addr}: the root closed the connection after hello"
                )))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ControlError::Timeout {
                    addr: addr.to_string(),
                    what: "no answer to hello".into(),
                    waited,
                })
            }
            Err(e) => return Err(io(e)),
        };
        stream.set_read_timeout(None).map_err(io)?;
        let finish = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let watermark = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        {
            let mut r = stream.try_clone().map_err(io)?;
            let (finish, watermark) = (finish.clone(), watermark.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("control-read".into())
                    .spawn(move || {
                        loop {
                            match read_frame(&mut r) {
                                Ok(Some((WATERMARK, p))) if p.len() == 8 => {
                                    let wm = u64::from_le_bytes(p[..8].try_into().expect("8"));
                                    watermark.store(wm, Ordering::Relaxed);
                                }
                                Ok(Some((FINISH, _))) => break,
                                _ => break,
                            }
                        }
                        finish.store(true, Ordering::Release);
                    })
                    .map_err(io)?,
            );
        }
        {
            let w = stream.try_clone().map_err(io)?;
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("control-write".into())
                    .spawn(move || {
                        let mut w = BufWriter::new(w);
                        let mut dels = Vec::new();
                        let mut commits = Vec::new();
                        let mut retired = 0;
                        let mut out = Vec::new();
                        loop {
                            let stopping = stop.load(Ordering::Acquire);
                            while let Some(d) = outbox.pop() {
                                dels.push(d);
                                if dels.len() >= 4096 {
                                    break;
                                }
                            }
                            store.commits(&mut commits);
                            let idle = dels.is_empty() && commits.is_empty();
                            if !dels.is_empty() {
                                encode_deletes(&dels, &mut out);
                                dels.clear();
                            }
                            if !commits.is_empty() {
                                encode_commits(&commits, &mut out);
                                commits.clear();
                            }
                            if !out.is_empty() {
                                if w.write_all(&out).and_then(|_| w.flush()).is_err() {
                                    break;
                                }
                                out.clear();
                            }
                            let wm = watermark.load(Ordering::Relaxed);
                            if wm > retired {
                                retired = wm;
                                store.retire(wm);
                            }
                            if stopping && idle && outbox.is_empty() {
                                break;
                            }
                            if idle {
                                std::thread::sleep(Duration::from_micros(100));
                            }
                        }
                    })
                    .map_err(io)?,
            );
        }
        Ok(PeerControl {
            finish,
            stop,
            threads,
            stream,
            rejoining,
        })
    }

    /// Whether the root had a host of this name before: this one replaces it, and its
    /// instances take their state from the store.
    pub fn rejoining(&self) -> bool {
        self.rejoining
    }

    /// The flag FINISH (or a lost connection) sets.
    pub fn finished(&self) -> Arc<AtomicBool> {
        self.finish.clone()
    }
}

impl Drop for PeerControl {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // The writer drains what is queued, then the reader sees the socket close.
        if let Some(w) = self.threads.pop() {
            let _ = w.join();
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeStore {
        commits: Arc<SegQueue<(u64, u32)>>,
        retired: Arc<AtomicU64>,
    }
    impl PeerStore for FakeStore {
        fn commits(&mut self, out: &mut Vec<(u64, u32)>) {
            while let Some(c) = self.commits.pop() {
                out.push(c);
            }
        }
        fn retire(&mut self, wm: u64) {
            self.retired.store(wm, Ordering::Relaxed);
        }
    }

    fn wait(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn deletes_and_commits_reach_the_root_and_finish_stops_the_peer() {
        let inbox = Arc::new(Inbox::default());
        let wm = Arc::new(AtomicU64::new(0));
        // Port 0: let the system pick; read it back from a probe listener first.
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap().to_string();
        drop(probe);
        let root = RootControl::listen(&addr, inbox.clone(), wm.clone()).unwrap();
        let outbox = Arc::new(SegQueue::new());
        let commits = Arc::new(SegQueue::new());
        let retired = Arc::new(AtomicU64::new(0));
        let peer = PeerControl::connect(
            &addr,
            "b",
            outbox.clone(),
            Box::new(FakeStore {
                commits: commits.clone(),
                retired: retired.clone(),
            }),
            Duration::from_secs(5),
        )
        .unwrap();
        root.wait_peers(1, Duration::from_secs(5)).unwrap();
        for i in 0..10_000u64 {
            outbox.push((i, 1 << 32, i as u32));
        }
        commits.push((77, 0x0001_0002));
        wait("deletes", || inbox.deletes.len() == 10_000);
        wait("commits", || inbox.commits.len() == 1);
        let got: Vec<Delete> = std::iter::from_fn(|| inbox.deletes.pop()).collect();
        assert_eq!(got[9_999], (9_999, 1 << 32, 9_999), "order kept");
        assert_eq!(inbox.commits.pop(), Some((77, 0x0001_0002)));
        wm.store(42, Ordering::Relaxed);
        wait("watermark", || retired.load(Ordering::Relaxed) == 42);
        let fin = peer.finished();
        assert!(!fin.load(Ordering::Acquire));
        root.finish();
        wait("finish", || fin.load(Ordering::Acquire));
        assert!(!root.lost());
    }

    fn pair() -> (RootControl, PeerControl) {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap().to_string();
        drop(probe);
        let root = RootControl::listen(&addr, Arc::default(), Arc::new(AtomicU64::new(0))).unwrap();
        let b = connect_peer(&addr, "b");
        root.wait_peers(1, Duration::from_secs(5)).unwrap();
        (root, b)
    }

    /// A host named `name` connected to the root at `addr`, its store a fake.
    fn connect_peer(addr: &str, name: &str) -> PeerControl {
        PeerControl::connect(
            addr,
            name,
            Arc::new(SegQueue::new()),
            Box::new(FakeStore {
                commits: Arc::default(),
                retired: Arc::default(),
            }),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    #[test]
    fn a_host_that_leaves_after_finish_is_not_lost_however_late_the_root_looks() {
        let (root, peer) = pair();
        let fin = peer.finished();
        root.finish();
        wait("finish", || fin.load(Ordering::Acquire));
        // The host stops and closes its connection before the root asks.
        drop(peer);
        wait("close seen", || root.closed() == 1);
        assert!(!root.lost());
    }

    #[test]
    fn a_host_that_leaves_before_finish_is_lost() {
        let (root, peer) = pair();
        drop(peer);
        wait("close seen", || root.closed() == 1);
        assert!(root.lost());
        root.finish();
        assert!(root.lost(), "FINISH afterwards does not excuse it");
    }

    #[test]
    fn a_host_that_comes_back_is_told_it_rejoins_and_is_no_longer_down() {
        let (root, peer) = pair();
        assert!(!peer.rejoining());
        let hosts = root.hosts();
        drop(peer);
        wait("down", || hosts.down.load(Ordering::Acquire) == 1);
        assert_eq!(hosts.rejoined.load(Ordering::Acquire), 0);
        let again = connect_peer(&root.addr, "b");
        assert!(again.rejoining());
        wait("back", || hosts.rejoined.load(Ordering::Acquire) == 1);
        assert_eq!(hosts.down.load(Ordering::Acquire), 0);
        // Another name is a first hello, not a rejoin.
        let other = connect_peer(&root.addr, "c");
        assert!(!other.rejoining());
        assert_eq!(hosts.rejoined.load(Ordering::Acquire), 1);
    }

    #[test]
    fn bad_payloads_are_refused() {
        assert!(decode_deletes(&[0; 19]).is_err());
        assert!(decode_commits(&[0; 13]).is_err());
        let mut out = Vec::new();
        encode_deletes(&[(1, 2, 3)], &mut out);
        let (ty, p) = read_frame(&mut &out[..]).unwrap().unwrap();
        assert_eq!(
            (ty, decode_deletes(&p).unwrap()),
            (DELETES, vec![(1, 2, 3)])
        );
        let mut huge = vec![DELETES];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &huge[..]).is_err());
        assert!(read_frame(&mut &[][..]).unwrap().is_none());
    }
}
