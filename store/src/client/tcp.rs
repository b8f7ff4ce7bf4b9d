//! TCP transport: one connection per shard, read by the client's own thread.
//!
//! The thread that waits for a reply reads the socket itself. A reader thread per connection
//! handing frames over would put a second thread wake-up on every blocking call; on a
//! virtual machine that was most of a loopback round trip (35 us against 7 us).

use super::ClientError;
use crate::shard::ClientId;
use bytes::BytesMut;
use chc_proto::wire;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Connection options.
#[derive(Clone, Debug)]
pub struct TcpOptions {
    /// Presented in the Hello when the server requires authentication.
    pub token: Option<String>,
    /// How long to keep trying to (re)connect before giving up.
    pub connect_timeout: Duration,
    /// Clients this one replaces (see `Hello.supersedes`): connecting waits until the
    /// store has applied everything they sent.
    pub supersedes: Vec<u64>,
    /// Connecting waits for the superseded clients to end however long they live
    /// (`Hello.patient`): a warm spare connects ahead of the failure. Only the first
    /// connection waits so; a reconnection later does not, and a patient connection that
    /// breaks while it waits is not made again (connecting fails).
    pub patient: bool,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            token: None,
            connect_timeout: Duration::from_secs(5),
            supersedes: Vec::new(),
            patient: false,
        }
    }
}

/// What a handshake brings: the stream, the shard's Hello reply, and whatever the shard sent
/// behind it (for the reader: a client that takes over a failed one's client id gets its
/// subscriptions' pushes from the moment it is served).
struct Handshake {
    stream: TcpStream,
    hello: wire::HelloReply,
    rest: BytesMut,
}

struct Conn {
    addr: SocketAddr,
    local_shard: u32,
    stream: Option<TcpStream>,
    broken: bool,
    applied_seq: u64,
    /// Bytes read and not yet taken as frames.
    rbuf: BytesMut,
}

pub(crate) struct TcpLinks {
    id: ClientId,
    opts: TcpOptions,
    conns: Vec<Conn>,
    wbuf: BytesMut,
    chunk: Vec<u8>,
}

impl TcpLinks {
    pub fn connect(
        addrs: &[SocketAddr],
        id: ClientId,
        opts: TcpOptions,
    ) -> Result<(Self, Vec<String>), ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unavailable("no store address given".into()));
        }
        let mut links = TcpLinks {
            id,
            opts,
            conns: Vec::new(),
            wbuf: BytesMut::new(),
            chunk: vec![0u8; 256 * 1024],
        };
        let mut customs = None;
        for &addr in addrs {
            let base = links.conns.len() as u32;
            let h = links.handshake(addr, 0, base)?;
            let n = h.hello.shards;
            if customs.is_none() {
                customs = Some(h.hello.custom_ops.clone());
            }
            links.push_conn(addr, 0, h);
            for local in 1..n {
                let h = links.handshake(addr, local, base + local)?;
                links.push_conn(addr, local, h);
            }
        }
        links.opts.patient = false;
        Ok((links, customs.unwrap_or_default()))
    }

    fn push_conn(&mut self, addr: SocketAddr, local_shard: u32, h: Handshake) {
        self.conns.push(Conn {
            addr,
            local_shard,
            stream: Some(h.stream),
            broken: false,
            applied_seq: h.hello.applied_seq,
            rbuf: h.rest,
        });
    }

    pub fn shards(&self) -> u32 {
        self.conns.len() as u32
    }

    pub fn applied_seq(&self, shard: u32) -> u64 {
        self.conns[shard as usize].applied_seq
    }

    fn handshake(
        &self,
        addr: SocketAddr,
        local: u32,
        global: u32,
    ) -> Result<Handshake, ClientError> {
        let deadline = Instant::now() + self.opts.connect_timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            match self.try_handshake(addr, local) {
                Ok(x) => return Ok(x),
                Err(e @ ClientError::Refused(_)) => return Err(e),
                // A patient connection that broke while it waited (the store restarted) is
                // not made again: the new store may not know yet the clients it supersedes,
                // which would let it through while they live.
                Err(e) if self.opts.patient => return Err(e),
                Err(e) => {
                    if Instant::now() + delay > deadline {
                        return Err(ClientError::Unavailable(format!(
                            "shard {global} at {addr}: {e}"
                        )));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    fn try_handshake(&self, addr: SocketAddr, local: u32) -> Result<Handshake, ClientError> {
        let io = |e: std::io::Error| ClientError::Unavailable(e.to_string());
        let mut s = TcpStream::connect_timeout(&addr, self.opts.connect_timeout).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        let mut b = BytesMut::new();
        wire::put_frame(
            &wire::ClientFrame {
                hello: Some(wire::Hello {
                    client_id: self.id,
                    shard: local,
                    token: self.opts.token.clone().unwrap_or_default(),
                    version: wire::PROTOCOL_VERSION,
                    supersedes: self.opts.supersedes.clone(),
                    patient: self.opts.patient,
                }),
                ops: Vec::new(),
            },
            &mut b,
        );
        s.write_all(&b).map_err(io)?;
        // A patient Hello is answered when the clients it supersedes end, which may be long.
        let wait = (!self.opts.patient).then_some(self.opts.connect_timeout);
        s.set_read_timeout(wait).map_err(io)?;
        let mut buf = BytesMut::new();
        let mut chunk = [0u8; 4096];
        loop {
            match wire::take_frame::<wire::ServerFrame>(&mut buf, wire::DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => {
                    if !f.error.is_empty() {
                        return Err(ClientError::Refused(f.error));
                    }
                    let Some(hello) = f.hello else {
                        return Err(ClientError::Unavailable(
                            "server did not answer the Hello".into(),
                        ));
                    };
                    s.set_read_timeout(None).map_err(io)?;
                    return Ok(Handshake {
                        stream: s,
                        hello,
                        rest: buf,
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(ClientError::Unavailable(format!(
                        "bad frame from server: {e}"
                    )))
                }
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Unavailable("closed during handshake".into())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// Reads whatever the connections have, without waiting, and hands each whole frame to
    /// `f`. A connection that ended is marked broken; one that sent a frame that does not
    /// decode is marked broken and reported as a frame with `error` set.
    pub fn take_frames(&mut self, mut f: impl FnMut(u32, wire::ServerFrame)) {
        for i in 0..self.conns.len() {
            self.fill(i);
            let c = &mut self.conns[i];
            loop {
                match wire::take_frame::<wire::ServerFrame>(&mut c.rbuf, wire::DEFAULT_MAX_FRAME) {
                    Ok(Some(frame)) => f(i as u32, frame),
                    Ok(None) => break,
                    Err(e) => {
                        c.rbuf.clear();
                        c.broken = true;
                        f(
                            i as u32,
                            wire::ServerFrame {
                                error: format!("bad frame from server: {e}"),
                                ..Default::default()
                            },
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Moves what connection `i`'s socket holds into its buffer, without blocking.
    fn fill(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(s) = c.stream.as_ref().filter(|_| !c.broken) else {
            return;
        };
        loop {
            match rustix::net::recv(s, &mut self.chunk[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => {
                    c.broken = true;
                    return;
                }
                Ok((n, _)) => {
                    c.rbuf.extend_from_slice(&self.chunk[..n]);
                    if n < self.chunk.len() {
                        return;
                    }
                }
                Err(Errno::AGAIN) => return,
                Err(Errno::INTR) => {}
                Err(_) => {
                    c.broken = true;
                    return;
                }
            }
        }
    }

    /// Blocks until a connection has something to read or ended, or `timeout` passes.
    pub fn wait_readable(&mut self, timeout: Duration) {
        let mut fds: Vec<PollFd<'_>> = self
            .conns
            .iter()
            .filter(|c| !c.broken)
            .filter_map(|c| c.stream.as_ref())
            .map(|s| PollFd::new(s, PollFlags::IN))
            .collect();
        if !fds.is_empty() {
            let _ = rustix::event::poll(&mut fds, Some(&timespec(timeout)));
        }
    }

    pub fn send(&mut self, shard: u32, ops: Vec<wire::Op>) -> Result<(), ClientError> {
        self.wbuf.clear();
        wire::put_frame(&wire::ClientFrame { hello: None, ops }, &mut self.wbuf);
        let i = shard as usize;
        let mut at = 0;
        while at < self.wbuf.len() {
            let c = &mut self.conns[i];
            // Kept as outstanding; sent again after reconnecting.
            let Some(s) = c.stream.as_ref().filter(|_| !c.broken) else {
                return Ok(());
            };
            match rustix::net::send(
                s,
                &self.wbuf[at..],
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => at += n,
                Err(Errno::INTR) => {}
                Err(Errno::AGAIN) => {
                    // The shard stops reading a client that does not read its replies, so
                    // a full socket is waited out reading, never blocked on.
                    let readable = {
                        let mut fds = [PollFd::new(s, PollFlags::IN | PollFlags::OUT)];
                        let t = timespec(Duration::from_millis(20));
                        let _ = rustix::event::poll(&mut fds, Some(&t));
                        fds[0].revents().contains(PollFlags::IN)
                    };
                    if readable {
                        self.fill(i);
                    }
                }
                Err(_) => {
                    c.broken = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    pub fn is_broken(&self, shard: u32) -> bool {
        self.conns[shard as usize].broken
    }

    pub fn mark_broken(&mut self, shard: u32) {
        let c = &mut self.conns[shard as usize];
        c.broken = true;
        if let Some(s) = c.stream.take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Reconnects a broken shard connection; returns the shard's applied sequence number.
    pub fn reconnect(&mut self, shard: u32) -> Result<u64, ClientError> {
        self.mark_broken(shard);
        let (addr, local) = {
            let c = &self.conns[shard as usize];
            (c.addr, c.local_shard)
        };
        let h = self.handshake(addr, local, shard)?;
        let c = &mut self.conns[shard as usize];
        c.stream = Some(h.stream);
        c.broken = false;
        c.rbuf = h.rest;
        c.applied_seq = h.hello.applied_seq;
        Ok(h.hello.applied_seq)
    }
}

impl Drop for TcpLinks {
    fn drop(&mut self) {
        for c in &mut self.conns {
            if let Some(s) = c.stream.take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// `d` as poll(2) takes it (saturating: no wait here is anywhere near the limit).
fn timespec(d: Duration) -> Timespec {
    Timespec::try_from(d).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    })
}
