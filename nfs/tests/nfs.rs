//! Behaviour of each NF on hand-made packets, with local (traditional) state.

use chc_store::client::cache::StateClient;
use chc_store::CustomOps;
use nfs::nf::{Ctx, Event, NetworkFunction, Verdict};
use nfs::packet::{build::frame, tcp_flags::*, FiveTuple, Packet, Shape, PROTO_TCP, PROTO_UDP};

struct Harness {
    nf: Box<dyn NetworkFunction>,
    state: StateClient,
    events: Vec<Event>,
    clock: u64,
}

impl Harness {
    fn new(kind: &str, cfg: &str) -> Harness {
        let table: toml::Table = toml::from_str(cfg).unwrap();
        let mut nf = nfs::build(kind, &table).unwrap();
        let mut state =
            StateClient::local(1, 0, &nfs::nf::specs(&nf.objects()), CustomOps::builtin());
        let mut events = Vec::new();
        {
            let mut ctx = Ctx::new(0, 1, 0, false, &mut state, &mut events);
            nf.init(&mut ctx, 1).unwrap();
        }
        Harness {
            nf,
            state,
            events,
            clock: 0,
        }
    }

    /// Runs one packet at time `ts_s`; returns the verdict and the bytes after processing.
    fn run(&mut self, t: &FiveTuple, flags: u8, payload: &[u8], ts_s: u64) -> (Verdict, Vec<u8>) {
        self.clock += 1;
        self.run_clock(t, flags, payload, ts_s, self.clock)
    }

    fn run_clock(
        &mut self,
        t: &FiveTuple,
        flags: u8,
        payload: &[u8],
        ts_s: u64,
        clock: u64,
    ) -> (Verdict, Vec<u8>) {
        let mut f = frame(t, flags, payload);
        let n = f.len();
        let mut p = Packet::parse(&mut f, n, ts_s * 1_000_000_000);
        assert_eq!(p.hdr.shape, Shape::Ip);
        self.state.begin_packet(clock, false);
        let v = {
            let mut ctx = Ctx::new(clock, 1, 0, false, &mut self.state, &mut self.events);
            self.nf.process(&mut p, &mut ctx).unwrap()
        };
        self.state.end_packet();
        let out = p.data().to_vec();
        (v, out)
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.events.iter().map(|e| e.kind).collect()
    }
}

fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> FiveTuple {
    FiveTuple {
        proto: PROTO_TCP,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
    }
}

fn parsed(mut b: Vec<u8>) -> FiveTuple {
    let n = b.len();
    Packet::parse(&mut b, n, 0).five_tuple().unwrap()
}

#[test]
fn nat_translates_both_directions_and_recycles_ports() {
    let mut h = Harness::new(
        "nat",
        "public_ip = \"203.0.113.9\"\nport_min = 5000\nport_max = 5001",
    );
    let c = tuple("10.0.0.5", 40000, "93.184.216.34", 80);
    let (v, out) = h.run(&c, SYN, b"", 1);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(parsed(out), tuple("203.0.113.9", 5001, "93.184.216.34", 80));
    let (_, out) = h.run(&c.reversed(), SYN | ACK, b"", 1);
    assert_eq!(parsed(out), tuple("93.184.216.34", 80, "203.0.113.9", 5001));
    // A second connection gets the other port; a third finds the pool empty.
    let c2 = tuple("10.0.0.6", 40001, "93.184.216.34", 80);
    assert_eq!(parsed(h.run(&c2, SYN, b"", 1).1).sport, 5000);
    let c3 = tuple("10.0.0.7", 40002, "93.184.216.34", 80);
    assert_eq!(h.run(&c3, SYN, b"", 1).0, Verdict::Drop);
    // FIN from both sides returns the first port; the third connection can now get it.
    h.run(&c, FIN | ACK, b"", 2);
    h.run(&c.reversed(), FIN | ACK, b"", 2);
    assert_eq!(parsed(h.run(&c3, SYN, b"", 3).1).sport, 5001);
    assert_eq!(
        h.kinds(),
        [
            "mapping_created",
            "mapping_created",
            "pool_exhausted",
            "mapping_removed",
            "mapping_created"
        ]
    );
}

#[test]
fn nat_takes_the_range_first_then_returned_ports_oldest_first() {
    let mut h = Harness::new("nat", "port_min = 5000\nport_max = 5002");
    let c: Vec<FiveTuple> = (0..6)
        .map(|i| tuple(&format!("10.0.0.{}", i + 1), 40000, "93.184.216.34", 80))
        .collect();
    let open = |h: &mut Harness, t: &FiveTuple, at: u64| parsed(h.run(t, SYN, b"", at).1).sport;
    let close = |h: &mut Harness, t: &FiveTuple, at: u64| {
        h.run(t, RST, b"", at);
    };
    assert_eq!(open(&mut h, &c[0], 1), 5002);
    assert_eq!(open(&mut h, &c[1], 1), 5001);
    close(&mut h, &c[0], 2);
    // The range is not used up yet: its last port comes before the one given back.
    assert_eq!(open(&mut h, &c[2], 3), 5000);
    assert_eq!(open(&mut h, &c[3], 3), 5002);
    close(&mut h, &c[2], 4);
    close(&mut h, &c[1], 4);
    // Given back 5000, then 5001: handed out in that order.
    assert_eq!(open(&mut h, &c[4], 5), 5000);
    assert_eq!(open(&mut h, &c[5], 5), 5001);
}

/// With the default pool, a translated connection's public port is above its server's port
/// even for services on high ports, so a split by client host (which takes the endpoint with
/// the higher port for the client) keeps it with its client's other connections.
#[test]
fn nat_public_ports_stay_above_server_ports() {
    let mut h = Harness::new("nat", "");
    for (i, server_port) in [80u16, 6667, 12345, 63988].into_iter().enumerate() {
        let c = tuple(
            &format!("10.0.0.{}", i + 1),
            40000,
            "93.184.216.34",
            server_port,
        );
        let out = parsed(h.run(&c, SYN, b"", 1).1);
        assert!(
            nfs::nf::client_is_src(&out),
            "{out:?}: the initiator's public port {} is not above the server's",
            out.sport
        );
        let back = parsed(h.run(&c.reversed(), SYN | ACK, b"", 1).1);
        assert!(!nfs::nf::client_is_src(&back), "{back:?}");
    }
}

#[test]
fn nat_idle_timeout_and_unsolicited_inbound() {
    let mut h = Harness::new("nat", "internal = [\"10.0.0.0/8\"]\nudp_idle_s = 10");
    let u = FiveTuple {
        proto: PROTO_UDP,
        ..tuple("10.1.1.1", 5353, "8.8.8.8", 53)
    };
    let p1 = parsed(h.run(&u, 0, b"q", 100).1).sport;
    assert_eq!(parsed(h.run(&u, 0, b"q", 105).1).sport, p1, "still mapped");
    let p2 = parsed(h.run(&u, 0, b"q", 200).1).sport;
    assert_ne!(p1, p2, "idle mapping expired and a new port was taken");
    // Inbound connection from outside to an inside host: dropped.
    let inbound = tuple("8.8.4.4", 1234, "10.1.1.1", 22);
    assert_eq!(h.run(&inbound, SYN, b"", 201).0, Verdict::Drop);
}

#[test]
fn portscan_blocks_a_scanner_and_spares_a_busy_client() {
    let mut h = Harness::new("portscan", "");
    let scanner = "192.168.1.71";
    let mut blocked_at = None;
    for i in 0..8u16 {
        let t = tuple(scanner, 50000 + i, &format!("192.168.1.{}", 10 + i), 80);
        if h.run(&t, SYN, b"", 1).0 == Verdict::Drop {
            blocked_at = Some(i);
            break;
        }
        h.run(&t.reversed(), RST | ACK, b"", 1);
    }
    // ln 4 per failure, threshold ln 99: blocked at the 4th failure; the next SYN drops.
    assert_eq!(blocked_at, Some(4));
    assert!(h.kinds().contains(&"block"));
    // A client whose connections succeed is never blocked.
    for i in 0..20u16 {
        let t = tuple("10.9.9.9", 40000 + i, &format!("172.16.0.{}", i), 443);
        assert_eq!(h.run(&t, SYN, b"", 2).0, Verdict::Forward);
        h.run(&t.reversed(), SYN | ACK, b"", 2);
    }
    assert_eq!(h.kinds().iter().filter(|k| **k == "block").count(), 1);
}

#[test]
fn portscan_counts_unanswered_attempts_as_failures() {
    let mut h = Harness::new("portscan", "timeout_s = 3");
    for i in 0..6u16 {
        let t = tuple("10.0.0.66", 30000 + i, &format!("10.0.1.{i}"), 22);
        h.run(&t, SYN, b"", 10 + u64::from(i) * 5);
    }
    assert!(h.kinds().contains(&"block"), "{:?}", h.kinds());
}

fn trojan_sequence(h: &mut Harness, order: &[usize]) {
    let host = "10.0.0.50";
    let steps: Vec<(FiveTuple, u8, &[u8])> = vec![
        (tuple(host, 40000, "198.51.100.1", 22), SYN, b""),
        (
            tuple(host, 40001, "198.51.100.2", 21),
            ACK | PSH,
            b"RETR index.html\r\n",
        ),
        (
            tuple(host, 40001, "198.51.100.2", 21),
            ACK | PSH,
            b"RETR stuff.zip\r\n",
        ),
        (
            tuple(host, 40001, "198.51.100.2", 21),
            ACK | PSH,
            b"RETR setup.EXE\r\n",
        ),
        (
            tuple(host, 40002, "198.51.100.3", 6667),
            ACK | PSH,
            b"NICK bot\r\n",
        ),
    ];
    for &i in order {
        let (t, f, p) = &steps[i];
        // The logical clock is the arrival order at the chain's input: step index + 1.
        h.run_clock(t, *f, p, 1, i as u64 + 1);
    }
}

#[test]
fn trojan_alerts_by_clock_order_not_arrival_order() {
    let mut h = Harness::new("trojan", "");
    trojan_sequence(&mut h, &[0, 1, 2, 3, 4]);
    assert_eq!(h.kinds(), ["alert", "block"]);
    let mut h = Harness::new("trojan", "");
    trojan_sequence(&mut h, &[4, 3, 1, 0, 2]);
    assert_eq!(
        h.kinds(),
        ["alert", "block"],
        "delayed paths reorder arrival, not clocks"
    );
    let mut h = Harness::new("trojan", "");
    trojan_sequence(&mut h, &[1, 2, 3, 4]);
    assert!(h.kinds().is_empty(), "no SSH: no alert");
    let mut h = Harness::new("trojan", "");
    trojan_sequence(&mut h, &[0, 1, 3, 4]);
    assert!(h.kinds().is_empty(), "no ZIP download: no alert");
}

#[test]
fn lb_picks_least_active_backend_and_rewrites_both_ways() {
    let mut h = Harness::new(
        "lb",
        "backends = [\"10.10.0.1\", \"10.10.0.2\", \"10.10.0.3\"]",
    );
    let mut picks = Vec::new();
    let conns: Vec<FiveTuple> = (0..4u16)
        .map(|i| tuple("1.2.3.4", 1000 + i, "203.0.113.80", 80))
        .collect();
    for c in &conns {
        let out = parsed(h.run(c, SYN, b"", 1).1);
        picks.push(out.dst.to_string());
        let back = parsed(h.run(&c.reversed(), SYN | ACK, b"", 1).1);
        assert_eq!(back.src, out.dst, "replies come from the same backend");
    }
    assert_eq!(picks, ["10.10.0.1", "10.10.0.2", "10.10.0.3", "10.10.0.1"]);
    // Close the connection on backend 2; the next one goes there.
    h.run(&conns[1], RST, b"", 2);
    let c = tuple("1.2.3.4", 2000, "203.0.113.80", 80);
    assert_eq!(
        parsed(h.run(&c, SYN, b"", 2).1).dst.to_string(),
        "10.10.0.2"
    );
}

#[test]
fn ratelimit_enforces_the_bucket() {
    let mut h = Harness::new("ratelimit", "rate_pps = 10\nburst = 3");
    let t = FiveTuple {
        proto: PROTO_UDP,
        ..tuple("10.0.0.1", 1, "10.0.0.2", 2)
    };
    let v: Vec<Verdict> = (0..5).map(|_| h.run(&t, 0, b"", 100).0).collect();
    assert_eq!(
        v,
        [
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Drop,
            Verdict::Drop
        ]
    );
    // A second later 10 tokens came back (capped at 3).
    let v: Vec<Verdict> = (0..4).map(|_| h.run(&t, 0, b"", 101).0).collect();
    assert_eq!(
        v,
        [
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Drop
        ]
    );
    assert_eq!(h.kinds(), ["rate_limited", "rate_limited"]);
}

#[test]
fn bad_configs_are_clear_errors() {
    for (kind, cfg, needle) in [
        ("nat", "public_ip = \"x\"", "not an IP address"),
        ("nat", "port_min = 9\nport_max = 2", "port_min"),
        ("nat", "pubic_ip = \"1.2.3.4\"", "unknown setting"),
        ("portscan", "theta1 = 0.9", "theta1"),
        ("lb", "backends = []", "backends"),
        ("trojan", "files = []", "files"),
    ] {
        let table: toml::Table = toml::from_str(cfg).unwrap();
        let err = nfs::build(kind, &table)
            .err()
            .expect("an error")
            .to_string();
        assert!(err.contains(needle), "{kind} {cfg:?}: {err}");
    }
    assert!(nfs::build("firewall", &toml::Table::new()).is_err());
}
