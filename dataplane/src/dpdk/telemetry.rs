//! Counters the lcores publish while they run, rendered in Prometheus' text format and
//! served on a local HTTP port (a minimal responder: `GET /metrics`, one request per
//! connection), and read once more for the end-of-run summary.
//!
//! Each lcore writes only its own counters (relaxed atomics, once per burst); ports are
//! read through DPDK's statistics; ring occupancy is read from the rings themselves.

use serde::Serialize;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What one lcore counts.
#[derive(Debug, Default)]
pub struct LcoreCounters {
    /// Packets this lcore handled (received from a port, a link or a ring).
    pub packets: AtomicU64,
    /// Packets it dropped (NF verdicts, malformed frames, full log, failed transmissions).
    pub drops: AtomicU64,
    /// TSC cycles spent in iterations that had packets.
    pub busy_cycles: AtomicU64,
    /// TSC cycles of all iterations.
    pub total_cycles: AtomicU64,
    /// Packets transmitted on ports and links.
    pub tx: AtomicU64,
}

impl LcoreCounters {
    /// Adds to a counter this lcore alone writes.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        if n != 0 {
            c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }
}

/// One port's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PortFigures {
    pub name: String,
    pub device: String,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Dropped by the device: no free descriptor (polled too slowly), no mbuf, errors.
    pub rx_dropped: u64,
    pub tx_errors: u64,
}

/// One lcore's figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LcoreFigures {
    pub lcore: u32,
    pub packets: u64,
    pub drops: u64,
    pub tx: u64,
    pub busy_cycles: u64,
    pub total_cycles: u64,
    /// Busy cycles per packet.
    pub cycles_per_packet: f64,
}

/// One ring's occupancy.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RingFigures {
    pub name: String,
    pub len: u64,
    pub capacity: u64,
}

/// A snapshot of everything.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    pub ports: Vec<PortFigures>,
    pub lcores: Vec<LcoreFigures>,
    pub rings: Vec<RingFigures>,
    /// Packets the root holds in its log.
    pub root_in_flight: u64,
}

/// Something that can produce a snapshot (the runtime's view of its ports and rings).
pub trait Source: Send + Sync {
    fn figures(&self) -> Figures;
}

impl LcoreFigures {
    pub fn read(lcore: u32, c: &LcoreCounters) -> LcoreFigures {
        let packets = c.packets.load(Ordering::Relaxed);
        let busy = c.busy_cycles.load(Ordering::Relaxed);
        LcoreFigures {
            lcore,
            packets,
            drops: c.drops.load(Ordering::Relaxed),
            tx: c.tx.load(Ordering::Relaxed),
            busy_cycles: busy,
            total_cycles: c.total_cycles.load(Ordering::Relaxed),
            cycles_per_packet: if packets == 0 {
                0.0
            } else {
                busy as f64 / packets as f64
            },
        }
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The snapshot in Prometheus' text exposition format (version 0.0.4).
pub fn render(f: &Figures) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in rows {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    let port = |p: &PortFigures| {
        format!(
            "port=\"{}\",device=\"{}\"",
            label(&p.name),
            label(&p.device)
        )
    };
    type PortField = fn(&PortFigures) -> u64;
    let port_counters: [(&str, &str, PortField); 6] = [
        (
            "chc_port_rx_packets_total",
            "Packets the port received.",
            |p| p.rx_packets,
        ),
        (
            "chc_port_tx_packets_total",
            "Packets the port transmitted.",
            |p| p.tx_packets,
        ),
        ("chc_port_rx_bytes_total", "Bytes the port received.", |p| {
            p.rx_bytes
        }),
        (
            "chc_port_tx_bytes_total",
            "Bytes the port transmitted.",
            |p| p.tx_bytes,
        ),
        (
            "chc_port_rx_dropped_total",
            "Packets the device dropped on receive (no descriptor, no mbuf, errors).",
            |p| p.rx_dropped,
        ),
        ("chc_port_tx_errors_total", "Failed transmissions.", |p| {
            p.tx_errors
        }),
    ];
    for (name, help, get) in port_counters {
        family(
            name,
            "counter",
            help,
            f.ports
                .iter()
                .map(|p| (port(p), get(p).to_string()))
                .collect(),
        );
    }
    let lc = |l: &LcoreFigures| format!("lcore=\"{}\"", l.lcore);
    type LcoreField = fn(&LcoreFigures) -> String;
    let lcore_rows: [(&str, &str, &str, LcoreField); 6] = [
        (
            "chc_lcore_packets_total",
            "counter",
            "Packets the lcore handled.",
            |l| l.packets.to_string(),
        ),
        (
            "chc_lcore_drops_total",
            "counter",
            "Packets the lcore dropped.",
            |l| l.drops.to_string(),
        ),
        (
            "chc_lcore_tx_total",
            "counter",
            "Packets the lcore transmitted.",
            |l| l.tx.to_string(),
        ),
        (
            "chc_lcore_busy_cycles_total",
            "counter",
            "TSC cycles spent in iterations that had packets.",
            |l| l.busy_cycles.to_string(),
        ),
        (
            "chc_lcore_cycles_total",
            "counter",
            "TSC cycles of all iterations.",
            |l| l.total_cycles.to_string(),
        ),
        (
            "chc_lcore_cycles_per_packet",
            "gauge",
            "Busy TSC cycles per packet since start.",
            |l| format!("{:.2}", l.cycles_per_packet),
        ),
    ];
    for (name, kind, help, get) in lcore_rows {
        family(
            name,
            kind,
            help,
            f.lcores.iter().map(|l| (lc(l), get(l))).collect(),
        );
    }
    let ring = |r: &RingFigures| format!("ring=\"{}\"", label(&r.name));
    family(
        "chc_ring_occupancy",
        "gauge",
        "Packets waiting in an rte_ring between lcores.",
        f.rings
            .iter()
            .map(|r| (ring(r), r.len.to_string()))
            .collect(),
    );
    family(
        "chc_ring_capacity",
        "gauge",
        "Packets an rte_ring holds at most.",
        f.rings
            .iter()
            .map(|r| (ring(r), r.capacity.to_string()))
            .collect(),
    );
    family(
        "chc_root_in_flight",
        "gauge",
        "Packets in the root's log (not yet deleted).",
        vec![(String::new(), f.root_in_flight.to_string())],
    );
    out
}

/// The HTTP responder; stops when dropped.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` and answers `GET /metrics` with [`render`] of `source`'s figures.
    pub fn start(addr: &str, source: Arc<dyn Source>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            answer(&mut s, source.as_ref());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(s: &mut std::net::TcpStream, source: &dyn Source) {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].ends_with(b"\n\n") {
                    break;
                }
            }
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let mut words = req.split_whitespace();
    let (status, body, kind) = match (words.next(), words.next()) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            render(&source.figures()),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Some("GET"), Some(_)) => (
            "404 Not Found",
            "try /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        _ => (
            "405 Method Not Allowed",
            "GET /metrics only\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Figures);
    impl Source for Fixed {
        fn figures(&self) -> Figures {
            self.0.clone()
        }
    }

    fn sample() -> Figures {
        let c = LcoreCounters::default();
        LcoreCounters::add(&c.packets, 10);
        LcoreCounters::add(&c.busy_cycles, 1234);
        Figures {
            ports: vec![PortFigures {
                name: "in\"side".into(),
                device: "net_ring0".into(),
                rx_packets: 7,
                ..Default::default()
            }],
            lcores: vec![LcoreFigures::read(1, &c)],
            rings: vec![RingFigures {
                name: "lb-0".into(),
                len: 3,
                capacity: 1024,
            }],
            root_in_flight: 5,
        }
    }

    #[test]
    fn exposition_format_has_help_type_and_escaped_labels() {
        let text = render(&sample());
        assert!(text.contains("# TYPE chc_port_rx_packets_total counter"));
        assert!(
            text.contains("chc_port_rx_packets_total{port=\"in\\\"side\",device=\"net_ring0\"} 7")
        );
        assert!(text.contains("chc_lcore_cycles_per_packet{lcore=\"1\"} 123.40"));
        assert!(text.contains("chc_ring_occupancy{ring=\"lb-0\"} 3"));
        assert!(text.contains("\nchc_root_in_flight 5\n"));
        // Every sample line is `name{labels} value` with a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn http_serves_metrics_and_refuses_the_rest() {
        let srv = Server::start("127.0.0.1:0", Arc::new(Fixed(sample()))).unwrap();
        let get = |req: &str| {
            let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("chc_lcore_packets_total{lcore=\"1\"} 10"));
        assert!(get("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(get("\r\n\r\n").starts_with("HTTP/1.1 405"));
    }
}
