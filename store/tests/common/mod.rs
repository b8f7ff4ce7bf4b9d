//! Helpers of the end-to-end tests: the real `chc-store` binary, a raw native-protocol client
//! and a minimal RESP client, so the tests see exactly what goes over the sockets.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use chc_proto::wire::{self, OpCode, OpFlag};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `chc-store serve`; its stderr lines are collected for the tests to inspect.
pub struct Proc {
    pub child: Child,
    pub native: SocketAddr,
    pub resp: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts the binary on ephemeral loopback ports and waits until it serves.
    pub fn start(dir: &Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chc-store"))
            .args(["serve", "--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chc-store");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("chc-store: native protocol on ") {
                    let mut parts = rest.split(", RESP on ");
                    let n = parts.next().and_then(|s| s.parse::<SocketAddr>().ok());
                    let r = parts.next().and_then(|s| s.parse::<SocketAddr>().ok());
                    if let (Some(n), Some(r)) = (n, r) {
                        let _ = tx.send((n, r));
                    }
                }
                l.lock().unwrap().push(line);
            }
        });
        let (native, resp) = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("chc-store did not start: {:?}", log.lock().unwrap()));
        Proc {
            child,
            native,
            resp,
            log,
        }
    }

    /// SIGKILL: no shutdown, no final checkpoint, no WAL sync.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether a logged line contains all of `parts`, waiting up to 5 s for it.
    pub fn logged(&self, parts: &[&str]) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| parts.iter().all(|p| l.contains(p)))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw native-protocol connection to one shard.
pub struct Native {
    pub s: TcpStream,
    rbuf: BytesMut,
    pub next_seq: u64,
    pub acked: u64,
}

impl Native {
    /// Connects and says Hello; `Err` carries the server's refusal.
    pub fn connect(
        addr: SocketAddr,
        client_id: u64,
        shard: u32,
        token: &str,
    ) -> Result<Native, String> {
        let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        let mut n = Native {
            s,
            rbuf: BytesMut::new(),
            next_seq: 1,
            acked: 0,
        };
        n.send_frame(&wire::ClientFrame {
            hello: Some(wire::Hello {
                client_id,
                shard,
                token: token.into(),
                version: wire::PROTOCOL_VERSION,
                supersedes: Vec::new(),
                patient: false,
            }),
            ops: Vec::new(),
        })
        .map_err(|e| e.to_string())?;
        let f = n.read_frame().map_err(|e| e.to_string())?;
        if !f.error.is_empty() {
            return Err(f.error);
        }
        let h = f.hello.ok_or("no HelloReply")?;
        n.next_seq = h.applied_seq + 1;
        n.acked = h.applied_seq;
        Ok(n)
    }

    pub fn send_frame(&mut self, f: &wire::ClientFrame) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        wire::put_frame(f, &mut b);
        self.s.write_all(&b)
    }

    /// Sends `ops` (sequence numbers assigned here) as one frame; returns the first seq.
    pub fn send_ops(&mut self, mut ops: Vec<wire::Op>) -> std::io::Result<u64> {
        let first = self.next_seq;
        for o in ops.iter_mut() {
            o.seq = self.next_seq;
            self.next_seq += 1;
        }
        self.send_frame(&wire::ClientFrame { hello: None, ops })?;
        Ok(first)
    }

    /// Reads the next server frame.
    pub fn read_frame(&mut self) -> std::io::Result<wire::ServerFrame> {
        let mut chunk = [0u8; 65536];
        loop {
            match wire::take_frame::<wire::ServerFrame>(&mut self.rbuf, wire::DEFAULT_MAX_FRAME) {
                Ok(Some(f)) => {
                    self.acked = self.acked.max(f.acked);
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
            let n = self.s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until everything sent is acknowledged; returns the replies seen.
    pub fn wait_acked(&mut self) -> std::io::Result<Vec<wire::Reply>> {
        let mut replies = Vec::new();
        while self.acked + 1 < self.next_seq {
            let f = self.read_frame()?;
            if !f.error.is_empty() {
                return Err(std::io::Error::other(f.error));
            }
            replies.extend(f.replies);
        }
        Ok(replies)
    }
}

/// An increment of a plain (vertex 0, object 0) key, as RESP's INCRBY names it.
pub fn incr(key: &str, by: i64, nonblocking: bool) -> wire::Op {
    wire::Op {
        code: OpCode::OpIncr as i32,
        sub: Bytes::copy_from_slice(key.as_bytes()),
        num: by,
        flags: if nonblocking {
            OpFlag::FlagNonblocking as u32
        } else {
            0
        },
        ..Default::default()
    }
}

/// The shard (of `shards`) a plain key lives on.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    chc_store::KeyRef {
        vertex: 0,
        object: 0,
        per_flow: false,
        sub: key.as_bytes(),
    }
    .shard(shards)
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

/// A minimal RESP client.
pub struct Resp {
    pub s: TcpStream,
    r: BufReader<TcpStream>,
}

impl Resp {
    pub fn connect(addr: SocketAddr) -> Resp {
        Self::try_connect(addr).expect("connect RESP")
    }

    /// Connects, or says why not (the server may have just been killed).
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Resp> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let r = BufReader::new(s.try_clone()?);
        Ok(Resp { s, r })
    }

    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        self.s.write_all(&b)
    }

    pub fn read(&mut self) -> std::io::Result<Reply> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (t, rest) = line.split_at(1);
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| std::io::Error::other(format!("bad integer {s:?}")))
        };
        Ok(match t {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(int(rest)?),
            "$" => {
                let n = int(rest)?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut b)?;
                    b.truncate(n as usize);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => {
                let n = int(rest)?;
                let mut v = Vec::new();
                for _ in 0..n.max(0) {
                    v.push(self.read()?);
                }
                Reply::Array(v)
            }
            _ => return Err(std::io::Error::other(format!("bad reply line {line:?}"))),
        })
    }

    pub fn cmd(&mut self, args: &[&str]) -> Reply {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        self.send(&a).expect("send");
        self.read().expect("reply")
    }

    /// An integer value (GET of a counter); a missing key is 0.
    pub fn get_int(&mut self, key: &str) -> i64 {
        match self.cmd(&["GET", key]) {
            Reply::Bulk(None) => 0,
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
            r => panic!("GET {key}: {r:?}"),
        }
    }

    /// A list's items as integers.
    pub fn list_ints(&mut self, key: &str) -> Vec<u64> {
        match self.cmd(&["LRANGE", key, "0", "-1"]) {
            Reply::Array(v) => v
                .into_iter()
                .map(|r| match r {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
                    r => panic!("LRANGE item {r:?}"),
                })
                .collect(),
            r => panic!("LRANGE {key}: {r:?}"),
        }
    }

    /// Whether the server closed the connection (reads EOF, possibly after a final reply).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 4096];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            match self.r.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
        false
    }
}
