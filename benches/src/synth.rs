//! `chc-bench synth`: traces for tests and benchmarks.
//!
//! - `synth` (default) writes a synthetic trace of complete TCP connections: handshake, data
//!   in both directions with a size mix whose median is set by `--median-size`, teardown.
//!   Connections start as a Poisson process and overlap; packets are generated lazily, merged
//!   by time, and streamed to the file, so a multi-gigabyte trace needs little memory. The
//!   defaults are shaped like the paper's Trace2 (6.4 M packets, 199 K connections, median
//!   1434 B).
//! - `synth compose` puts parts onto one host with time shifts: real traces (each part's
//!   initiating host is renamed to `--host`, checksums fixed) and a generated FTP session
//!   downloading given file types. This makes attack scenarios such as the Trojan sequence
//!   (SSH, then FTP downloads of HTML, ZIP and EXE files, then IRC) out of real captures.

use anyhow::{bail, Context, Result};
use chc_dataplane::pcapio;
use nfs::packet::{build::frame, tcp_flags::*, FiveTuple, Packet, PROTO_TCP};
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub cmd: Option<SynthCmd>,
    /// Output pcap.
    #[arg(long, default_value = "synth.pcap")]
    pub out: PathBuf,
    /// Packets to write (about; whole connections are kept).
    #[arg(long, default_value_t = 6_400_000)]
    pub packets: u64,
    /// Connections.
    #[arg(long, default_value_t = 199_000)]
    pub connections: u64,
    /// Median frame size in bytes.
    #[arg(long, default_value_t = 1434)]
    pub median_size: usize,
    /// Client hosts (10.0.0.0/8).
    #[arg(long, default_value_t = 2000)]
    pub clients: u32,
    /// Server hosts (198.18.0.0/15).
    #[arg(long, default_value_t = 300)]
    pub servers: u32,
    /// Fraction of connections over IPv6.
    #[arg(long, default_value_t = 0.05)]
    pub ipv6: f64,
    /// Trace duration in seconds (connection starts spread over it).
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum SynthCmd {
    /// Put parts onto one host with time shifts (see the module docs).
    Compose(ComposeArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct ComposeArgs {
    /// Output pcap.
    #[arg(long)]
    pub out: PathBuf,
    /// The host every part's initiator becomes.
    #[arg(long, default_value = "10.0.0.50")]
    pub host: IpAddr,
    /// Parts in order: a pcap path, or `ftp:TYPE,TYPE,...` for a generated FTP session that
    /// downloads one file of each type (e.g. `ftp:html,zip,exe`).
    #[arg(long = "part", required = true)]
    pub parts: Vec<String>,
    /// Seconds between the end of one part and the start of the next.
    #[arg(long, default_value_t = 1.0)]
    pub gap_s: f64,
}

/// A small, fast, seeded generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).max(1e-12).ln()
    }
}

/// One generated connection, producing its packets in time order.
struct Conn {
    t: FiveTuple,
    /// Next packet time (ns).
    next_ns: u64,
    /// Data packets left to send.
    data_left: u32,
    step: u8,
    gap_ns: u64,
    rng: Rng,
    median: usize,
}

impl Conn {
    /// The next packet, or `None` when the connection is done.
    fn emit(&mut self) -> Option<(u64, Vec<u8>)> {
        let ts = self.next_ns;
        let after_handshake = if self.data_left > 0 { 3 } else { 4 };
        let (f, next) = match self.step {
            0 => (frame(&self.t, SYN, b""), 1),
            1 => (frame(&self.t.reversed(), SYN | ACK, b""), 2),
            2 => (frame(&self.t, ACK, b""), after_handshake),
            3 => {
                self.data_left -= 1;
                // Mostly full-size server->client segments, with small client requests and
                // ACKs: the median lands at the configured size.
                let r = self.rng.unit();
                let hdr = if self.t.src.is_ipv4() { 54 } else { 74 };
                let (to_server, size) = if r < 0.62 {
                    (false, self.median)
                } else if r < 0.85 {
                    (true, hdr)
                } else {
                    let extra = self.rng.below((self.median - hdr) as u64) as usize;
                    (self.rng.below(2) == 0, hdr + 1 + extra)
                };
                let payload = vec![0x61u8; size.saturating_sub(hdr)];
                let t = if to_server { self.t } else { self.t.reversed() };
                (
                    frame(&t, ACK | PSH, &payload),
                    if self.data_left > 0 { 3 } else { 4 },
                )
            }
            4 => (frame(&self.t, FIN | ACK, b""), 5),
            5 => (frame(&self.t.reversed(), FIN | ACK, b""), 6),
            6 => (frame(&self.t, ACK, b""), 7),
            _ => return None,
        };
        self.step = next;
        self.next_ns = ts + self.gap_ns / 2 + self.rng.below(self.gap_ns.max(1));
        Some((ts, f))
    }
}

#[derive(PartialEq, Eq)]
struct Next(u64, usize);
impl Ord for Next {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        o.0.cmp(&self.0).then(o.1.cmp(&self.1))
    }
}
impl PartialOrd for Next {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

fn client_ip(rng: &mut Rng, n: u32, v6: bool) -> IpAddr {
    let i = rng.below(u64::from(n.max(1))) as u32;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)))
    }
}

fn server_ip(rng: &mut Rng, n: u32, v6: bool) -> IpAddr {
    let i = rng.below(u64::from(n.max(1))) as u32;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0x5e,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (i & 0x0001_ffff)))
    }
}

/// Writes a synthetic trace; returns (packets, connections).
pub fn synth(a: &SynthArgs) -> Result<(u64, u64)> {
    if a.connections == 0 || a.packets < a.connections * 7 {
        bail!(
            "need at least 7 packets per connection (--packets {} for {} connections)",
            a.packets,
            a.connections
        );
    }
    if a.median_size < 80 || a.median_size > 9000 {
        bail!("--median-size must be between 80 and 9000");
    }
    let mut rng = Rng::new(a.seed);
    let mut w = pcapio::Writer::create(&a.out, 65535)
        .with_context(|| format!("creating {}", a.out.display()))?;
    let data_per_conn = (a.packets / a.connections).saturating_sub(7).max(1);
    let start_ns: u64 = 1_700_000_000 * 1_000_000_000;
    let mean_gap_ns = (a.duration_s * 1e9 / a.connections as f64).max(1.0);
    let services = [80u16, 443, 443, 443, 22, 8080, 53];
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut heap = BinaryHeap::new();
    let mut started = 0u64;
    let mut next_start = start_ns;
    let mut written = 0u64;
    let mut used_ports: std::collections::HashSet<(IpAddr, u16)> = Default::default();
    loop {
        // Start connections whose time has come (before the earliest pending packet).
        while started < a.connections && heap.peek().is_none_or(|n: &Next| next_start <= n.0) {
            let v6 = rng.unit() < a.ipv6;
            let src = client_ip(&mut rng, a.clients, v6);
            let mut sport = 1024 + rng.below(64000) as u16;
            while !used_ports.insert((src, sport)) {
                sport = 1024 + rng.below(64000) as u16;
            }
            let t = FiveTuple {
                proto: PROTO_TCP,
                src,
                dst: server_ip(&mut rng, a.servers, v6),
                sport,
                dport: services[rng.below(services.len() as u64) as usize],
            };
            let c = Conn {
                t,
                next_ns: next_start,
                data_left: (data_per_conn / 2 + rng.below(data_per_conn + 1)) as u32,
                step: 0,
                gap_ns: 50_000 + rng.below(2_000_000),
                rng: Rng::new(rng.next_u64()),
                median: a.median_size,
            };
            heap.push(Next(c.next_ns, conns.len()));
            conns.push(Some(c));
            started += 1;
            next_start += rng.exp(mean_gap_ns) as u64 + 1;
        }
        let Some(Next(_, i)) = heap.pop() else { break };
        let c = conns[i].as_mut().expect("live connection");
        match c.emit() {
            Some((ts, f)) => {
                w.write(ts, f.len() as u32, &f)?;
                written += 1;
                heap.push(Next(c.next_ns, i));
            }
            None => {
                used_ports.remove(&(c.t.src, c.t.sport));
                conns[i] = None;
            }
        }
    }
    w.finish()?;
    Ok((written, started))
}

/// Composes parts onto one host; returns the number of packets written.
/// The records of `trace`, or of the trace `args` synthesises (written to a temporary
/// file named after `tag`, whatever `args.out` says, and removed once read).
pub fn trace_or_synth(
    trace: Option<&std::path::Path>,
    tag: &str,
    args: SynthArgs,
) -> Result<Vec<pcapio::Record>> {
    let path = match trace {
        Some(p) => p.to_path_buf(),
        None => {
            let p = std::env::temp_dir().join(format!("chc-{tag}-{}.pcap", std::process::id()));
            synth(&SynthArgs {
                out: p.clone(),
                ..args
            })?;
            p
        }
    };
    let recs = pcapio::read_all(&path).with_context(|| format!("reading {}", path.display()))?;
    if trace.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    Ok(recs)
}

pub fn compose(a: &ComposeArgs) -> Result<u64> {
    let mut w = pcapio::Writer::create(&a.out, 65535)
        .with_context(|| format!("creating {}", a.out.display()))?;
    let mut t_ns: u64 = 1_700_000_000 * 1_000_000_000;
    let mut n = 0;
    for (pi, part) in a.parts.iter().enumerate() {
        let recs = match part.strip_prefix("ftp:") {
            Some(types) => ftp_session(a.host, types, pi as u16)?,
            None => {
                let recs = pcapio::read_all(std::path::Path::new(part))
                    .with_context(|| format!("part {part}"))?;
                rehost(recs, a.host).with_context(|| format!("part {part}"))?
            }
        };
        let Some(first) = recs.first().map(|r| r.ts_ns) else {
            continue;
        };
        let last = recs.last().map_or(first, |r| r.ts_ns);
        for r in &recs {
            w.write(t_ns + (r.ts_ns - first), r.wire_len, &r.data)?;
            n += 1;
        }
        t_ns += (last - first) + (a.gap_s * 1e9) as u64;
    }
    w.finish()?;
    Ok(n)
}

/// Renames the initiator of the part's first connection to `host` in every packet (same
/// address family only), fixing checksums; timestamps become relative and sorted.
fn rehost(mut recs: Vec<pcapio::Record>, host: IpAddr) -> Result<Vec<pcapio::Record>> {
    let mut initiator = None;
    for r in &mut recs {
        let n = r.data.len();
        let p = Packet::parse(&mut r.data, n, 0);
        if let (Some(t), Some(f)) = (p.five_tuple(), p.tcp_flags()) {
            if f & SYN != 0 && f & ACK == 0 {
                initiator = Some(t.src);
                break;
            }
        }
    }
    let Some(old) = initiator else {
        bail!("no TCP connection start (SYN) found to tell the initiating host");
    };
    if old.is_ipv4() != host.is_ipv4() {
        bail!("--host {host} and the part's initiator {old} are of different address families");
    }
    for r in &mut recs {
        let n = r.data.len();
        let mut p = Packet::parse(&mut r.data, n, 0);
        if p.hdr.src == old {
            p.set_src(host);
        }
        if p.hdr.dst == old {
            p.set_dst(host);
        }
    }
    recs.sort_by_key(|r| r.ts_ns);
    Ok(recs)
}

/// A generated FTP control session from `host` downloading one file of each type.
pub fn ftp_session(host: IpAddr, types: &str, salt: u16) -> Result<Vec<pcapio::Record>> {
    let types: Vec<&str> = types
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if types.is_empty() {
        bail!("ftp: part needs file types, e.g. ftp:html,zip,exe");
    }
    let server: IpAddr = if host.is_ipv4() {
        "198.51.100.21".parse()?
    } else {
        "2001:db8:21::21".parse()?
    };
    let t = FiveTuple {
        proto: PROTO_TCP,
        src: host,
        dst: server,
        sport: 40000 + salt,
        dport: 21,
    };
    let mut msgs: Vec<(bool, Vec<u8>, u8)> = vec![
        (true, Vec::new(), SYN),
        (false, Vec::new(), SYN | ACK),
        (true, Vec::new(), ACK),
        (false, b"220 ready\r\n".to_vec(), ACK | PSH),
        (true, b"USER anonymous\r\n".to_vec(), ACK | PSH),
        (false, b"331 ok\r\n".to_vec(), ACK | PSH),
        (true, b"PASS x@y\r\n".to_vec(), ACK | PSH),
        (false, b"230 logged in\r\n".to_vec(), ACK | PSH),
    ];
    for (i, ty) in types.iter().enumerate() {
        msgs.push((
            true,
            format!("RETR file{i}.{ty}\r\n").into_bytes(),
            ACK | PSH,
        ));
        msgs.push((false, b"226 transfer complete\r\n".to_vec(), ACK | PSH));
    }
    msgs.push((true, b"QUIT\r\n".to_vec(), ACK | PSH));
    msgs.push((true, Vec::new(), FIN | ACK));
    msgs.push((false, Vec::new(), FIN | ACK));
    msgs.push((true, Vec::new(), ACK));
    Ok(msgs
        .into_iter()
        .enumerate()
        .map(|(i, (from_client, payload, flags))| {
            let tt = if from_client { t } else { t.reversed() };
            let data = frame(&tt, flags, &payload);
            pcapio::Record {
                ts_ns: i as u64 * 10_000_000,
                wire_len: data.len() as u32,
                data,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_traces_have_the_asked_shape() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("s.pcap");
        let a = SynthArgs {
            cmd: None,
            out: out.clone(),
            packets: 20_000,
            connections: 400,
            median_size: 1434,
            clients: 50,
            servers: 20,
            ipv6: 0.1,
            duration_s: 5.0,
            seed: 7,
        };
        let (n, c) = synth(&a).unwrap();
        assert_eq!(c, 400);
        let recs = pcapio::read_all(&out).unwrap();
        assert_eq!(recs.len() as u64, n);
        assert!((15_000..=25_000).contains(&n), "{n}");
        assert!(
            recs.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns),
            "time ordered"
        );
        let mut sizes: Vec<usize> = recs.iter().map(|r| r.data.len()).collect();
        sizes.sort_unstable();
        let med = sizes[sizes.len() / 2];
        assert!((1300..=1434).contains(&med), "median {med}");
        let syns = recs
            .iter()
            .filter(|r| {
                let mut d = r.data.clone();
                let n = d.len();
                Packet::parse(&mut d, n, 0).tcp_flags() == Some(SYN)
            })
            .count();
        assert_eq!(syns, 400, "one SYN per connection");
        // Same seed, same trace.
        let out2 = d.path().join("s2.pcap");
        synth(&SynthArgs {
            out: out2.clone(),
            ..a
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    }
}
