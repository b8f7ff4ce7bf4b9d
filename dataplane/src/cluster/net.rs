//! The two ends of a link: an [`Outlet`] sends frames and reconnects when its peer comes back
//! (a replacement process listens on the same address); an [`Inbox`] accepts connections
//! and merges their frames, in per-connection order.

use super::link::{self, Frame, Peer};
use crossbeam::channel::Sender;
use rustix::net::{RecvFlags, SendFlags};
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an inbox delivers.
#[derive(Debug)]
pub enum In {
    Frame {
        conn: u64,
        from: Peer,
        frame: Frame,
    },
    /// The connection ended (the peer closed it or died).
    Closed {
        conn: u64,
        from: Peer,
    },
}

/// Sends frames to one peer, buffering while it is unreachable.
pub struct Outlet {
    pub addr: SocketAddr,
    me: Peer,
    stream: Option<TcpStream>,
    /// Frames queued; the first `sent` bytes are in the current connection already.
    buf: Vec<u8>,
    sent: usize,
    last_try: Option<Instant>,
    replies: Option<Sender<In>>,
    conn_seq: Arc<AtomicU64>,
    /// Frames every connection must carry, sent again after reconnecting (end of input).
    sticky: Vec<u8>,
    /// Bumped on every (re)connection.
    pub connections: u64,
    /// The caller sends everything again after a reconnection (see [`Outlet::caller_resends`]).
    caller_resends: bool,
    /// Set by the reply reader when the current connection ends.
    closed: Arc<AtomicBool>,
}

impl Outlet {
    pub fn new(addr: SocketAddr, me: Peer) -> Outlet {
        Outlet {
            addr,
            me,
            stream: None,
            buf: Vec::new(),
            sent: 0,
            last_try: None,
            replies: None,
            conn_seq: Arc::new(AtomicU64::new(1 << 40)),
            sticky: Vec::new(),
            connections: 0,
            caller_resends: false,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Frames queued while the peer was away are dropped when it comes back: the caller
    /// watches [`Outlet::connections`] and sends all the peer lacks itself (otherwise the
    /// queued part would arrive twice).
    pub fn caller_resends(mut self) -> Outlet {
        self.caller_resends = true;
        self
    }

    /// Sends a frame that a replacement of the peer must get too (it is repeated at the start
    /// of every later connection).
    pub fn send_sticky(&mut self, f: &Frame) {
        link::encode(f, &mut self.sticky);
        self.send(f);
    }

    /// Frames the peer sends back on this connection go to `tx`.
    pub fn with_replies(mut self, tx: Sender<In>) -> Outlet {
        self.replies = Some(tx);
        self
    }

    /// The next send tries to connect at once, even if the last try just failed: the caller
    /// knows the peer's replacement is listening.
    pub fn retry_now(&mut self) {
        self.last_try = None;
    }

    /// Connects now if not connected (a warm spare opens its links before it is woken);
    /// a failure leaves the next send free to try again at once.
    pub fn connect_now(&mut self) -> bool {
        let ok = self.stream.is_some() || self.connect();
        if !ok {
            self.last_try = None;
        }
        ok
    }

    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Queues a frame and tries to send everything queued.
    pub fn send(&mut self, f: &Frame) {
        link::encode(f, &mut self.buf);
        self.flush();
    }

    /// Sends what the connection takes without waiting; returns true when nothing is left.
    /// A process never blocks on a peer that does not read: two that each wait for the
    /// other to read (an instance sending deletes to a root that sends it packets, the
    /// manager feeding the root while the last instance's output waits for the manager)
    /// would wait forever. What is left goes at the next send or flush.
    pub fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        if self.stream.is_none() && !self.connect() {
            return false;
        }
        if !self.peer_alive() {
            // A write to a dead peer's socket can still succeed (into the kernel's buffer)
            // and be lost: go to its replacement instead.
            self.stream = None;
            self.last_try = None;
            if !self.connect() {
                return false;
            }
            if self.buf.is_empty() {
                return true;
            }
        }
        let s = self.stream.as_ref().expect("connected");
        while self.sent < self.buf.len() {
            match rustix::net::send(
                s,
                &self.buf[self.sent..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => self.sent += n,
                Err(rustix::io::Errno::AGAIN) => {
                    // Keep the queue from growing without bound behind a slow peer (it
                    // still starts with a whole frame, the one being sent).
                    if self.sent > self.buf.len() / 2 {
                        let (start, _) = link::frame_around(&self.buf, self.sent);
                        self.buf.drain(..start);
                        self.sent -= start;
                    }
                    return false;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    // The peer is gone; what it did not get is replayed from the root's log.
                    self.stream = None;
                    self.buf.clear();
                    self.sent = 0;
                    return false;
                }
            }
        }
        self.buf.clear();
        self.sent = 0;
        true
    }

    /// Whether the connected peer is still there: the reply reader (if any) saw no end of
    /// stream, and a look at the socket finds neither an end of stream nor an error.
    fn peer_alive(&mut self) -> bool {
        let Some(s) = self.stream.as_ref() else {
            return false;
        };
        // The reply reader may not have seen the end yet: it wakes later than this runs (a
        // root's replay written into a connection whose instance died and was reaped just
        // before was lost that way), so the socket is looked at in any case.
        if self.replies.is_some() && self.closed.load(Ordering::Relaxed) {
            return false;
        }
        match peek(s) {
            Ok(n) => n > 0,
            Err(e) => e == rustix::io::Errno::AGAIN,
        }
    }

    fn connect(&mut self) -> bool {
        if self
            .last_try
            .is_some_and(|t| t.elapsed() < Duration::from_millis(10))
        {
            return false;
        }
        self.last_try = Some(Instant::now());
        let Ok(s) = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_nodelay(true);
        // A frame the last connection took part of is lost with it (replayed from the root's
        // log, as anything a dead peer did not read); the replacement gets whole frames.
        if self.sent > 0 {
            let (_, cut) = link::frame_around(&self.buf, self.sent);
            self.buf.drain(..cut);
            self.sent = 0;
        }
        if self.connections > 0 && self.caller_resends {
            self.buf.clear();
        }
        let mut hello = Vec::new();
        link::encode(&Frame::Hello(self.me), &mut hello);
        if self.connections > 0 {
            hello.extend_from_slice(&self.sticky);
        }
        let mut s2 = match s.try_clone() {
            Ok(x) => x,
            Err(_) => return false,
        };
        if s2.write_all(&hello).is_err() {
            return false;
        }
        if let Some(tx) = &self.replies {
            let tx = tx.clone();
            let closed = Arc::new(AtomicBool::new(false));
            self.closed = closed.clone();
            let conn = self.conn_seq.fetch_add(1, Ordering::Relaxed);
            let mut r = s.try_clone().expect("clone");
            let _ = std::thread::Builder::new()
                .name("link-replies".into())
                .spawn(move || {
                    while let Ok(Some(f)) = link::read_frame(&mut r) {
                        if tx
                            .send(In::Frame {
                                conn,
                                from: Peer::Manager,
                                frame: f,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    closed.store(true, Ordering::Relaxed);
                    let _ = tx.send(In::Closed {
                        conn,
                        from: Peer::Manager,
                    });
                });
        }
        self.stream = Some(s);
        self.connections += 1;
        true
    }

    /// Waits up to `timeout` for the next frame the peer sends back, reading the socket in
    /// this thread after spinning on it for up to `spin`: for an outlet without a reply
    /// reader, whose thread would add a wake-up to the wait. `None`: nothing came in time, or
    /// the connection failed (it is dropped; the next send reconnects).
    pub fn read_reply(&mut self, spin: Duration, timeout: Duration) -> Option<Frame> {
        debug_assert!(self.replies.is_none(), "the reply reader reads this socket");
        let s = self.stream.as_ref()?;
        let start = Instant::now();
        chc_store::server::spin_poll(spin.min(timeout), || match peek(s) {
            Err(rustix::io::Errno::AGAIN) => None,
            // Data, an end of stream or an error: the read below sees which.
            _ => Some(()),
        });
        let left = timeout.saturating_sub(start.elapsed());
        let got = s
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()
            .and_then(|()| link::read_frame(&mut &*s).ok().flatten());
        match got {
            Some(f) => {
                let _ = s.set_read_timeout(None);
                Some(f)
            }
            None => {
                // Timed out (perhaps inside a frame) or ended: the stream cannot be trusted.
                self.stream = None;
                self.last_try = None;
                None
            }
        }
    }

    /// Drops the connection (its peer was replaced) and connects to the new peer.
    pub fn reconnect(&mut self, timeout: Duration) -> bool {
        self.stream = None;
        self.last_try = None;
        self.wait_connected(timeout)
    }

    /// Keeps trying until connected or `timeout` passes.
    pub fn wait_connected(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.stream.is_some() || self.connect() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

/// Bytes waiting on `s` (0: the peer closed), without taking any and without blocking; the
/// socket's blocking mode, which a reply reader may share, stays as it is.
fn peek(s: &TcpStream) -> rustix::io::Result<usize> {
    rustix::net::recv(s, &mut [0u8; 1], RecvFlags::PEEK | RecvFlags::DONTWAIT).map(|(n, _)| n)
}

/// Accepts connections on one address and merges what arrives, in per-connection order.
///
/// The sockets are read by the thread that takes the frames, inside [`Inbox::recv_batch`]:
/// a reader thread per connection handing frames over a channel cost every frame two thread
/// wake-ups (the reader's, then the taker's), which on a host with fewer cores than busy
/// processes is most of a hop's latency.
pub struct Inbox {
    pub addr: SocketAddr,
    poll: mio::Poll,
    events: mio::Events,
    listener: mio::net::TcpListener,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Frames read and not taken yet.
    ready: VecDeque<In>,
    roots: RootSeq,
    scratch: Vec<u8>,
    ready_tokens: Vec<mio::Token>,
}

/// One accepted connection.
struct Conn {
    stream: mio::net::TcpStream,
    /// Bytes read and not decoded yet (a frame split across reads).
    rbuf: Vec<u8>,
    /// Who it is, once its hello is read.
    from: Option<Peer>,
}

/// The listener's token; connection `c` has token `c`.
const LISTENER: mio::Token = mio::Token(0);

/// What the inbox knows of the roots' connections, so that a recovering root's sequence
/// query is answered as soon as it is read, without waiting for the instance's loop to get
/// to it.
#[derive(Default)]
struct RootSeq {
    /// Highest ingress sequence number read from any root.
    max: u64,
    /// Root connections whose end has not been read yet.
    open: std::collections::HashSet<u64>,
}

impl RootSeq {
    /// The answer to a query on `conn`, if every other root connection has ended (all it
    /// delivered has been read, so nothing of it is still on the way).
    fn answer(&self, conn: u64) -> Option<u64> {
        self.open.iter().all(|&c| c == conn).then_some(self.max)
    }
}

impl Inbox {
    pub fn bind(addr: SocketAddr) -> std::io::Result<Inbox> {
        let mut listener = mio::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let poll = mio::Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, mio::Interest::READABLE)?;
        Ok(Inbox {
            addr,
            poll,
            events: mio::Events::with_capacity(256),
            listener,
            conns: HashMap::new(),
            next_conn: 1,
            ready: VecDeque::new(),
            roots: RootSeq::default(),
            scratch: vec![0u8; 256 << 10],
            ready_tokens: Vec::new(),
        })
    }

    /// Waits up to `timeout` for something to arrive, then takes whatever else is already
    /// there, up to `max` in all: a loop that does its per-pass work (flushes, store polls)
    /// once per message falls behind as soon as frames get small, which they are under a
    /// paced load and while a backlog drains after a failure. Empty when nothing came in
    /// time; `None` when the inbox cannot wait any more (its poll failed).
    pub fn recv_batch(&mut self, timeout: Duration, max: usize) -> Option<Vec<In>> {
        if self.ready.is_empty() {
            self.wait(Some(timeout)).ok()?;
        } else {
            // Take what else has arrived meanwhile, without waiting.
            let _ = self.wait(Some(Duration::ZERO));
        }
        let n = self.ready.len().min(max);
        Some(self.ready.drain(..n).collect())
    }

    /// The next message if one has arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<In> {
        if self.ready.is_empty() {
            let _ = self.wait(Some(Duration::ZERO));
        }
        self.ready.pop_front()
    }

    /// The next message, waiting up to `timeout` for it.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<In> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Some(m);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.wait(Some(left)).is_err() {
                return None;
            }
        }
    }

    /// Waits up to `timeout` for something to arrive (or returns at once if something has),
    /// without taking it: for a loop that has other inputs to look at too.
    pub fn wait_for_input(&mut self, timeout: Duration) {
        if self.ready.is_empty() {
            let _ = self.wait(Some(timeout));
        }
    }

    /// Sends a frame back on connection `conn` (best effort: a peer that does not read its
    /// replies for a second loses them).
    pub fn reply(&mut self, conn: u64, f: &Frame) {
        if let Some(c) = self.conns.get_mut(&conn) {
            write_patiently(&mut c.stream, f);
        }
    }

    /// One poll: accepts new connections and reads every ready one to the end of what it
    /// has, queueing the frames decoded.
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // The tokens are copied out (reading a connection needs `self`) into a vector kept
        // from poll to poll.
        let mut ready = std::mem::take(&mut self.ready_tokens);
        ready.clear();
        ready.extend(self.events.iter().map(|e| e.token()));
        for &t in &ready {
            if t == LISTENER {
                self.accept();
            } else {
                self.read_conn(t.0 as u64);
            }
        }
        self.ready_tokens = ready;
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = self.next_conn;
                    self.next_conn += 1;
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            mio::Token(conn as usize),
                            mio::Interest::READABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(
                        conn,
                        Conn {
                            stream,
                            rbuf: Vec::new(),
                            from: None,
                        },
                    );
                    // Data that came with the connection raises no new event.
                    self.read_conn(conn);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A connection that failed before it was taken (reset), or no descriptor
                // left for now: the others are served.
                Err(_) => return,
            }
        }
    }

    /// Reads connection `conn` until it would block, and decodes its whole frames.
    fn read_conn(&mut self, conn: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut end = false;
        loop {
            match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(n) => c.rbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    end = true;
                    break;
                }
            }
        }
        let mut at = 0;
        loop {
            let frame = match link::next_frame(&c.rbuf[at..]) {
                Ok(Some((f, used))) => {
                    at += used;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("chc-dataplane: link from {:?}: {e}; closing it", c.from);
                    end = true;
                    break;
                }
            };
            let Some(from) = c.from else {
                // The first frame says who is on the other end; anything else closes it.
                match frame {
                    Frame::Hello(p) => {
                        c.from = Some(p);
                        if p == Peer::Root {
                            self.roots.open.insert(conn);
                        }
                    }
                    _ => {
                        end = true;
                        break;
                    }
                }
                continue;
            };
            if from == Peer::Root {
                match &frame {
                    Frame::Packets(ps) => {
                        if let Some(hi) = ps.iter().map(|p| p.seq).max() {
                            self.roots.max = self.roots.max.max(hi);
                        }
                    }
                    Frame::QuerySeq => {
                        if let Some(seq) = self.roots.answer(conn) {
                            write_patiently(&mut c.stream, &Frame::SeqReport(seq));
                            continue;
                        }
                    }
                    _ => {}
                }
            }
            self.ready.push_back(In::Frame { conn, from, frame });
        }
        c.rbuf.drain(..at);
        if end {
            let mut c = self.conns.remove(&conn).expect("present");
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.roots.open.remove(&conn);
            // A connection that never said who it is ends unseen.
            if let Some(from) = c.from {
                self.ready.push_back(In::Closed { conn, from });
            }
        }
    }
}

/// Writes frame `f` to a non-blocking socket, waiting briefly while its buffer is full
/// (replies are a few bytes; a peer that reads nothing for a second loses them).
fn write_patiently(s: &mut mio::net::TcpStream, f: &Frame) {
    let mut buf = Vec::new();
    link::encode(f, &mut buf);
    let mut b = &buf[..];
    let start = Instant::now();
    while !b.is_empty() {
        match s.write(b) {
            Ok(0) => return,
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > Duration::from_secs(1) {
                    return;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam::channel;
    use std::io::Read;
    use std::net::TcpListener;

    /// A peer that closed is seen as gone before the reply reader gets to say so (a write
    /// would otherwise go into the dead connection and be lost), and a live peer is not: its
    /// replies keep arriving through the reader, whose blocking socket the look does not touch.
    #[test]
    fn a_closed_peer_is_seen_before_the_reply_reader_reports_it() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (tx, rx) = channel::unbounded();
        let mut o = Outlet::new(l.local_addr().unwrap(), Peer::Root).with_replies(tx);
        assert!(o.connect_now());
        let (mut peer, _) = l.accept().unwrap();
        assert!(o.peer_alive(), "connected and quiet");
        let mut b = Vec::new();
        link::encode(&Frame::ReplayDone(7), &mut b);
        peer.write_all(&b).unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(
            got,
            In::Frame {
                frame: Frame::ReplayDone(7),
                ..
            }
        ));
        assert!(o.peer_alive(), "the reader still blocks and reads");
        drop(peer);
        // Wait for the reader to see the end, then act as if it had not yet.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            In::Closed { .. }
        ));
        o.closed = Arc::new(AtomicBool::new(false));
        assert!(!o.peer_alive());
    }

    /// Frames of `n` packets each, numbered from `first` (about 64 KB per frame).
    fn big_frame(first: u64) -> Frame {
        Frame::Packets(
            (first..first + 40)
                .map(|seq| link::LinkPkt {
                    seq,
                    data: vec![seq as u8; 1600],
                    ..Default::default()
                })
                .collect(),
        )
    }

    /// Reads frames until the peer closes, returning the sequence numbers of their packets;
    /// every frame must decode (a torn frame is an error).
    fn read_seqs(mut s: TcpStream) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            match link::read_frame(&mut s) {
                Ok(Some(Frame::Packets(ps))) => {
                    for p in ps {
                        assert!(p.data.iter().all(|&b| b == p.seq as u8), "torn packet");
                        seqs.push(p.seq);
                    }
                }
                Ok(Some(Frame::Hello(_))) => {}
                Ok(Some(f)) => panic!("unexpected {f:?}"),
                Ok(None) => return seqs,
                Err(e) => panic!("a frame did not decode: {e}"),
            }
        }
    }

    /// Flushes `o` until its queue is empty, closes it and returns what the reader read.
    fn drain_into(mut o: Outlet, reader: std::thread::JoinHandle<Vec<u64>>) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !o.flush() {
            assert!(Instant::now() < deadline, "the queue never drained");
            std::thread::sleep(Duration::from_micros(200));
        }
        drop(o);
        reader.join().unwrap()
    }

    /// Two processes that each wait for the other to read would wait forever: a send to a
    /// peer that reads nothing returns at once with the rest queued, and everything arrives
    /// whole and in order once the peer reads.
    #[test]
    fn an_outlet_does_not_wait_for_a_peer_that_does_not_read() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut o = Outlet::new(l.local_addr().unwrap(), Peer::Root);
        assert!(o.connect_now());
        let (peer, _) = l.accept().unwrap();
        let start = Instant::now();
        let frames = 400u64; // ~26 MB, far more than the sockets' buffers
        for f in 0..frames {
            o.send(&big_frame(f * 40));
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(
            o.pending() > 0,
            "the peer read nothing, so something must be queued"
        );
        let reader = std::thread::spawn(move || read_seqs(peer));
        let seqs = drain_into(o, reader);
        assert_eq!(seqs, (0..frames * 40).collect::<Vec<_>>());
    }

    /// A frame the dead peer took part of is not continued into its replacement's
    /// connection: the replacement reads whole frames only, in order, ending with the last.
    #[test]
    fn a_replacement_peer_gets_whole_frames_only() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut o = Outlet::new(addr, Peer::Root);
        assert!(o.connect_now());
        let (mut peer, _) = l.accept().unwrap();
        let frames = 200u64;
        for f in 0..frames {
            o.send(&big_frame(f * 40));
        }
        assert!(o.pending() > 0);
        // The peer takes an odd number of bytes, so a frame is likely split, then dies.
        let mut b = vec![0u8; 100_001];
        peer.read_exact(&mut b).unwrap();
        o.flush();
        drop(peer);
        drop(l);
        let l = TcpListener::bind(addr).unwrap();
        // Let the reset reach the outlet, so that its next flush finds the peer gone (a send
        // that fails instead drops the queue, as for any peer that died mid-write).
        std::thread::sleep(Duration::from_millis(50));
        let reader = std::thread::spawn(move || read_seqs(l.accept().unwrap().0));
        let seqs = drain_into(o, reader);
        assert!(!seqs.is_empty());
        assert_eq!(
            *seqs.last().unwrap(),
            frames * 40 - 1,
            "the last frame arrived"
        );
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no gap"
        );
        assert_eq!(seqs[0] % 40, 0, "starts with a whole frame");
    }

    fn packet(seq: u64) -> link::LinkPkt {
        link::LinkPkt {
            seq,
            data: vec![0; 60],
            ..Default::default()
        }
    }

    fn next(inbox: &mut Inbox) -> In {
        inbox.recv_timeout(Duration::from_secs(5)).expect("a frame")
    }

    /// Garbage on one connection (a bad length, an undecodable body, no hello) closes that
    /// connection and nothing else: the inbox keeps serving the others.
    #[test]
    fn garbage_on_one_connection_closes_only_that_one() {
        let mut inbox = Inbox::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut good = Outlet::new(inbox.addr, Peer::Sink);
        assert!(good.connect_now());
        let mut hello = Vec::new();
        link::encode(&Frame::Hello(Peer::Source), &mut hello);
        for junk in [
            [hello.clone(), vec![0, 0, 0, 0]].concat(),
            [hello.clone(), vec![0xff, 0xff, 0xff, 0x7f, 1]].concat(),
            [hello.clone(), vec![3, 0, 0, 0, 0xee, 0xee, 0xee]].concat(),
            vec![5, 0, 0, 0, 1, 2, 3, 4, 5],
        ] {
            let mut bad = TcpStream::connect(inbox.addr).unwrap();
            bad.write_all(&junk).unwrap();
            good.send(&Frame::Packets(vec![packet(1)]));
            // The good frame comes through; the bad connection, if it said hello, ends.
            let mut got_packets = false;
            let mut closed_bad = false;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !(got_packets && (closed_bad || junk[..4] == [5, 0, 0, 0])) {
                assert!(Instant::now() < deadline, "nothing came for {junk:?}");
                match inbox.recv_timeout(Duration::from_millis(100)) {
                    Some(In::Frame {
                        from: Peer::Sink,
                        frame: Frame::Packets(_),
                        ..
                    }) => got_packets = true,
                    Some(In::Closed {
                        from: Peer::Source, ..
                    }) => closed_bad = true,
                    Some(other) => panic!("unexpected {other:?}"),
                    None => {}
                }
            }
            // The inbox closed the bad connection: its peer reads the end.
            let mut b = [0u8; 1];
            bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match bad.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("the bad connection was left open: {other:?}"),
            }
        }
    }

    /// A recovering root's sequence query is answered by the inbox as it reads it, with the
    /// highest sequence number any root delivered, but only once every other root connection
    /// has ended; while one is open the query goes to the instance's loop as before.
    #[test]
    fn a_sequence_query_is_answered_by_the_link_once_older_roots_are_gone() {
        let mut inbox = Inbox::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut old = Outlet::new(inbox.addr, Peer::Root);
        assert!(old.connect_now());
        old.send(&Frame::Packets(vec![packet(7), packet(9), packet(8)]));
        assert!(matches!(
            next(&mut inbox),
            In::Frame {
                frame: Frame::Packets(_),
                ..
            }
        ));
        // The old root still connected: the query is the loop's to answer.
        let mut new = Outlet::new(inbox.addr, Peer::Root);
        assert!(new.connect_now());
        new.send(&Frame::QuerySeq);
        assert!(matches!(
            next(&mut inbox),
            In::Frame {
                frame: Frame::QuerySeq,
                ..
            }
        ));
        // (Nothing comes: the reader gives the connection up, which closes it.)
        assert!(new
            .read_reply(Duration::ZERO, Duration::from_millis(50))
            .is_none());
        // Both ends read, a new query is answered at once, and never reaches the loop.
        drop(old);
        for _ in 0..2 {
            assert!(matches!(
                next(&mut inbox),
                In::Closed {
                    from: Peer::Root,
                    ..
                }
            ));
        }
        let mut new = Outlet::new(inbox.addr, Peer::Root);
        assert!(new.connect_now());
        new.send(&Frame::QuerySeq);
        assert!(inbox.recv_timeout(Duration::from_millis(50)).is_none());
        assert_eq!(
            new.read_reply(Duration::from_micros(200), Duration::from_secs(5)),
            Some(Frame::SeqReport(9))
        );
    }
}
