//! The two ends of a link: an [`Outlet`] sends frames and reconnects when its peer comes back
//! (a replacement process listens on the same address); an [`Inbox`] accepts connections
//! and merges their frames, in per-connection order, into one channel.

use super::link::{self, Frame, Peer};
use crossbeam::channel::{self, Receiver, Sender};
use parking_lot::Mutex;
use rustix::net::RecvFlags;
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
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
    buf: Vec<u8>,
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
        self.buf.len()
    }

    /// Queues a frame and tries to send everything queued.
    pub fn send(&mut self, f: &Frame) {
        link::encode(f, &mut self.buf);
        self.flush();
    }

    /// Sends what is queued; returns true when nothing is left.
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
        let s = self.stream.as_mut().expect("connected");
        match s.write_all(&self.buf) {
            Ok(()) => {
                self.buf.clear();
                true
            }
            Err(_) => {
                // The peer is gone; what it did not get is replayed from the root's log.
                self.stream = None;
                self.buf.clear();
                false
            }
        }
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

/// Accepts connections on one address and merges what arrives.
pub struct Inbox {
    pub addr: SocketAddr,
    pub rx: Receiver<In>,
    writers: Arc<Mutex<HashMap<u64, TcpStream>>>,
    stop: Arc<AtomicBool>,
}

/// What the link threads know of the roots' connections, so that a recovering root's
/// sequence query is answered by the thread that reads it: through the instance's own loop
/// it took two thread wake-ups more.
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
        let l = TcpListener::bind(addr)?;
        let addr = l.local_addr()?;
        let (tx, rx) = channel::unbounded();
        let writers: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let roots: Arc<Mutex<RootSeq>> = Arc::default();
        let (w2, s2) = (writers.clone(), stop.clone());
        std::thread::Builder::new()
            .name("inbox-accept".into())
            .spawn(move || {
                let mut next = 1u64;
                for s in l.incoming() {
                    if s2.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let _ = s.set_nodelay(true);
                    let conn = next;
                    next += 1;
                    if let Ok(w) = s.try_clone() {
                        w2.lock().insert(conn, w);
                    }
                    let tx = tx.clone();
                    let w3 = w2.clone();
                    let roots = roots.clone();
                    let _ = std::thread::Builder::new()
                        .name("inbox-read".into())
                        .spawn(move || read_link(s, conn, tx, w3, roots));
                }
            })?;
        Ok(Inbox {
            addr,
            rx,
            writers,
            stop,
        })
    }

    /// Waits up to `timeout` for something to arrive, then takes whatever else is already
    /// there, up to `max` in all: a loop that does its per-pass work (flushes, store polls)
    /// once per message falls behind as soon as frames get small, which they are under a
    /// paced load and while a backlog drains after a failure. `None`: every sender is gone.
    pub fn recv_batch(&self, timeout: Duration, max: usize) -> Option<Vec<In>> {
        let mut v = Vec::new();
        match self.rx.recv_timeout(timeout) {
            Ok(m) => v.push(m),
            Err(channel::RecvTimeoutError::Timeout) => return Some(v),
            Err(channel::RecvTimeoutError::Disconnected) => return None,
        }
        while v.len() < max {
            match self.rx.try_recv() {
                Ok(m) => v.push(m),
                Err(_) => break,
            }
        }
        Some(v)
    }

    /// Sends a frame back on connection `conn` (best effort).
    pub fn reply(&self, conn: u64, f: &Frame) {
        if let Some(s) = self.writers.lock().get_mut(&conn) {
            let _ = link::write_frame(s, f);
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(50));
    }
}

/// One connection's link thread: passes its frames on in order, and answers a root's
/// sequence query itself when it can (see [`RootSeq`]).
fn read_link(
    mut s: TcpStream,
    conn: u64,
    tx: Sender<In>,
    writers: Arc<Mutex<HashMap<u64, TcpStream>>>,
    roots: Arc<Mutex<RootSeq>>,
) {
    let from = match link::read_frame(&mut s) {
        Ok(Some(Frame::Hello(p))) => p,
        _ => {
            writers.lock().remove(&conn);
            return;
        }
    };
    if from == Peer::Root {
        roots.lock().open.insert(conn);
    }
    loop {
        match link::read_frame(&mut s) {
            Ok(Some(frame)) => {
                if from == Peer::Root {
                    match &frame {
                        Frame::Packets(ps) => {
                            if let Some(hi) = ps.iter().map(|p| p.seq).max() {
                                let mut r = roots.lock();
                                r.max = r.max.max(hi);
                            }
                        }
                        Frame::QuerySeq => {
                            let answer = roots.lock().answer(conn);
                            if let Some(seq) = answer {
                                if let Some(w) = writers.lock().get_mut(&conn) {
                                    let _ = link::write_frame(w, &Frame::SeqReport(seq));
                                }
                                continue;
                            }
                        }
                        _ => {}
                    }
                }
                if tx.send(In::Frame { conn, from, frame }).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("chc-dataplane: link from {from:?}: {e}; closing it");
                break;
            }
        }
    }
    writers.lock().remove(&conn);
    roots.lock().open.remove(&conn);
    let _ = tx.send(In::Closed { conn, from });
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn packet(seq: u64) -> link::LinkPkt {
        link::LinkPkt {
            seq,
            data: vec![0; 60],
            ..Default::default()
        }
    }

    fn next(inbox: &Inbox) -> In {
        inbox
            .rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a frame")
    }

    /// A recovering root's sequence query is answered by the link thread with the highest
    /// sequence number any root delivered, but only once every other root connection has
    /// ended; while one is open the query goes to the instance's loop as before.
    #[test]
    fn a_sequence_query_is_answered_by_the_link_once_older_roots_are_gone() {
        let inbox = Inbox::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut old = Outlet::new(inbox.addr, Peer::Root);
        assert!(old.connect_now());
        old.send(&Frame::Packets(vec![packet(7), packet(9), packet(8)]));
        assert!(matches!(
            next(&inbox),
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
            next(&inbox),
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
                next(&inbox),
                In::Closed {
                    from: Peer::Root,
                    ..
                }
            ));
        }
        let mut new = Outlet::new(inbox.addr, Peer::Root);
        assert!(new.connect_now());
        new.send(&Frame::QuerySeq);
        assert_eq!(
            new.read_reply(Duration::from_micros(200), Duration::from_secs(5)),
            Some(Frame::SeqReport(9))
        );
        assert!(inbox.rx.recv_timeout(Duration::from_millis(50)).is_err());
    }
}
