//! TCP transport: one connection per shard, each with a reader thread that hands frames to the
//! client's mailbox (the same path in-process replies take).

use super::ClientError;
use crate::server::Mailbox;
use crate::shard::ClientId;
use bytes::BytesMut;
use chc_proto::wire;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    broken: Arc<AtomicBool>,
    applied_seq: u64,
}

pub(crate) struct TcpLinks {
    id: ClientId,
    opts: TcpOptions,
    mailbox: Arc<Mailbox>,
    conns: Vec<Conn>,
    wbuf: BytesMut,
}

impl TcpLinks {
    pub fn connect(
        addrs: &[SocketAddr],
        id: ClientId,
        opts: TcpOptions,
        mailbox: Arc<Mailbox>,
    ) -> Result<(Self, Vec<String>), ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::Unavailable("no store address given".into()));
        }
        let mut links = TcpLinks {
            id,
            opts,
            mailbox,
            conns: Vec::new(),
            wbuf: BytesMut::new(),
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
        let broken = Arc::new(AtomicBool::new(false));
        let global = self.conns.len() as u32;
        self.spawn_reader(&h.stream, global, broken.clone(), h.rest);
        self.conns.push(Conn {
            addr,
            local_shard,
            stream: Some(h.stream),
            broken,
            applied_seq: h.hello.applied_seq,
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

    fn spawn_reader(&self, s: &TcpStream, global: u32, broken: Arc<AtomicBool>, rest: BytesMut) {
        let Ok(mut s) = s.try_clone() else {
            broken.store(true, Ordering::SeqCst);
            return;
        };
        let mailbox = self.mailbox.clone();
        let _ = std::thread::Builder::new()
            .name(format!("store-rx-{global}"))
            .spawn(move || {
                let mut buf = rest;
                buf.reserve(256 * 1024);
                let mut chunk = vec![0u8; 256 * 1024];
                loop {
                    loop {
                        match wire::take_frame::<wire::ServerFrame>(
                            &mut buf,
                            wire::DEFAULT_MAX_FRAME,
                        ) {
                            Ok(Some(f)) => mailbox.deliver(global, f),
                            Ok(None) => break,
                            Err(e) => {
                                mailbox.deliver(
                                    global,
                                    wire::ServerFrame {
                                        error: format!("bad frame from server: {e}"),
                                        ..Default::default()
                                    },
                                );
                                broken.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                broken.store(true, Ordering::SeqCst);
                // Wake a caller blocked on this shard so it notices and reconnects.
                mailbox.deliver(global, wire::ServerFrame::default());
            });
    }

    pub fn send(&mut self, shard: u32, ops: Vec<wire::Op>) -> Result<(), ClientError> {
        self.wbuf.clear();
        wire::put_frame(&wire::ClientFrame { hello: None, ops }, &mut self.wbuf);
        let c = &mut self.conns[shard as usize];
        if c.broken.load(Ordering::SeqCst) {
            // Kept as outstanding; sent again after reconnecting.
            return Ok(());
        }
        if let Some(s) = c.stream.as_mut() {
            if s.write_all(&self.wbuf).is_err() {
                c.broken.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    pub fn is_broken(&self, shard: u32) -> bool {
        self.conns[shard as usize].broken.load(Ordering::SeqCst)
    }

    pub fn mark_broken(&mut self, shard: u32) {
        let c = &mut self.conns[shard as usize];
        c.broken.store(true, Ordering::SeqCst);
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
        let broken = Arc::new(AtomicBool::new(false));
        self.spawn_reader(&h.stream, shard, broken.clone(), h.rest);
        let c = &mut self.conns[shard as usize];
        c.stream = Some(h.stream);
        c.broken = broken;
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
