//! NAT: rewrites the client side of every connection to a public address and port.
//!
//! State (Table 3.12): the public port pool is cross-flow, read/write often, and kept as
//! two objects: a counter of the ports handed out from the range so far, and a list of the
//! ports finished or idle connections gave back. A new connection takes the next port of
//! the range while there is one, from the top down, then the oldest port given back: the
//! same order as one list filled with the whole range, but the state is a number and a short
//! list instead of 64 512 items per address family (which an instance taking over would have
//! to load before its first new connection).
//!
//! From the top down, because downstream a split by client host tells the client of a
//! connection by its higher port (a packet alone does not say who initiated it): public
//! ports handed out from the bottom of the range (1024, 1025, ...) were lower than the
//! server's port of every connection to a service above them (IRC on 6667, a passive FTP
//! data port), so such a connection was split by its server, away from its client's other
//! connections and its client's state at a port-scan detector. The per-connection mapping is per-flow (written once, read on
//! every packet) and the L3/L4 packet counters are cross-flow, write-mostly (non-blocking
//! increments).
//!
//! Both directions of a connection leave the NAT as seen from outside: the client endpoint
//! is replaced by the public one in whichever direction it appears, so NFs downstream see
//! one consistent 5-tuple per connection. The connection's initiator (sender of its first
//! packet) is the client; with `internal` prefixes configured, only connections initiated
//! from inside are translated and unsolicited inbound connections are dropped.
//! Non-first IP fragments carry no ports and cannot be mapped: they are dropped and counted.

use crate::nf::{
    object, tuple_json, Cell, Counter, Ctx, Event, List, NetworkFunction, NfError, PartitionKey,
    Verdict,
};
use crate::nf::{Access, ObjectDecl, Scope};
use crate::packet::{tcp_flags, FiveTuple, Packet, PROTO_TCP, PROTO_UDP};
use crate::util::{cfg_ip, cfg_prefixes, cfg_u64, check_keys, Prefix};
use bytes::Bytes;
use chc_store::names::KeyKind;
use std::net::IpAddr;

/// Ports given back, oldest first, per address family.
const FREE: List<u64> = List::new(1);
const CONN: Cell<FiveTuple, Bytes> = Cell::new(2);
const PKTS: Counter<()> = Counter::new(3);
const TCP_PKTS: Counter<()> = Counter::new(4);
/// Ports of the range handed out so far, per address family.
const TAKEN: Counter<u64> = Counter::new(5);

/// Connection flags in a mapping.
const FIN_CLIENT: u8 = 1;
const FIN_SERVER: u8 = 2;
/// The connection ended (both FINs, or a RST): its port is back in the pool, but the
/// mapping stays to translate trailing packets (the last ACK, retransmissions); the closing
/// handshake's last ACK, a new SYN on the same tuple or the idle timeout removes it.
const CLOSED: u8 = 4;

pub struct Nat {
    public4: IpAddr,
    public6: IpAddr,
    ports: (u16, u16),
    /// This instance's part of the range: all of it, except for traditional instances
    /// (their pools are not shared), which each take a disjoint slice.
    range: (u32, u32),
    internal: Vec<Prefix>,
    tcp_idle_ns: u64,
    udp_idle_ns: u64,
    /// Counters local to the instance, for the summary.
    pub fragment_drops: u64,
    pub exhausted_drops: u64,
    pub unsolicited_drops: u64,
}

/// A connection's mapping: which canonical endpoint is the client, its public port, when it
/// was last seen (seconds of packet time), teardown flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mapping {
    client_is_src: bool,
    port: u16,
    last_seen_s: u32,
    flags: u8,
}

impl Mapping {
    fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(8);
        b.push(self.client_is_src as u8);
        b.extend_from_slice(&self.port.to_be_bytes());
        b.extend_from_slice(&self.last_seen_s.to_be_bytes());
        b.push(self.flags);
        Bytes::from(b)
    }
    fn decode(b: &[u8]) -> Option<Mapping> {
        (b.len() == 8).then(|| Mapping {
            client_is_src: b[0] != 0,
            port: u16::from_be_bytes([b[1], b[2]]),
            last_seen_s: u32::from_be_bytes([b[3], b[4], b[5], b[6]]),
            flags: b[7],
        })
    }
}

impl Nat {
    pub fn from_config(c: &toml::Table) -> Result<Nat, NfError> {
        check_keys(
            c,
            "nat",
            &[
                "public_ip",
                "public_ip6",
                "port_min",
                "port_max",
                "internal",
                "tcp_idle_s",
                "udp_idle_s",
            ],
        )?;
        let public4 = cfg_ip(c, "nat", "public_ip", "198.51.100.1")?;
        let public6 = cfg_ip(c, "nat", "public_ip6", "2001:db8:ffff::1")?;
        if !public4.is_ipv4() || !public6.is_ipv6() {
            return Err(NfError::config(
                "nat",
                "public_ip must be IPv4 and public_ip6 IPv6",
            ));
        }
        let lo = cfg_u64(c, "nat", "port_min", 1024)?;
        let hi = cfg_u64(c, "nat", "port_max", 65535)?;
        if lo == 0 || hi > 65535 || lo > hi {
            return Err(NfError::config(
                "nat",
                "need 1 <= port_min <= port_max <= 65535",
            ));
        }
        Ok(Nat {
            public4,
            public6,
            ports: (lo as u16, hi as u16),
            range: (lo as u32, hi as u32),
            internal: cfg_prefixes(c, "nat", "internal")?,
            tcp_idle_ns: cfg_u64(c, "nat", "tcp_idle_s", 300)? * 1_000_000_000,
            udp_idle_ns: cfg_u64(c, "nat", "udp_idle_s", 60)? * 1_000_000_000,
            fragment_drops: 0,
            exhausted_drops: 0,
            unsolicited_drops: 0,
        })
    }

    fn family(ip: IpAddr) -> u64 {
        if ip.is_ipv4() {
            4
        } else {
            6
        }
    }

    fn public(&self, ip: IpAddr) -> IpAddr {
        if ip.is_ipv4() {
            self.public4
        } else {
            self.public6
        }
    }

    /// The next free public port for `fam` (the range from the top down, then the ports given
    /// back, oldest first), or `None` when all are in use.
    fn take_port(&self, ctx: &mut Ctx<'_>, fam: u64) -> Result<Option<u16>, NfError> {
        let (lo, hi) = self.range;
        let n = TAKEN.add_get(ctx, &fam, 1)?;
        if let Some(p) = u32::try_from(n - 1).ok().and_then(|i| hi.checked_sub(i)) {
            if p >= lo {
                return Ok(Some(p as u16));
            }
        }
        Ok(match FREE.pop_front(ctx, &fam)? {
            Some(b) if b.len() == 2 => Some(u16::from_be_bytes([b[0], b[1]])),
            _ => None,
        })
    }

    /// Returns the connection's port to the pool. The mapping stays, marked closed, so
    /// trailing packets of the connection are still translated.
    fn close(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &FiveTuple,
        m: &mut Mapping,
        why: &str,
    ) -> Result<(), NfError> {
        if has_ports(key.proto) {
            FREE.push_back(
                ctx,
                &Self::family(key.src),
                Bytes::copy_from_slice(&m.port.to_be_bytes()),
            )?;
        }
        m.flags |= CLOSED;
        CONN.set(ctx, key, &m.encode())?;
        let client = if m.client_is_src {
            *key
        } else {
            key.reversed()
        };
        ctx.emit(
            Event::new("mapping_removed")
                .flow(client)
                .with("public", endpoint(self.public(client.src), m.port))
                .with("reason", why),
        );
        Ok(())
    }
}

fn has_ports(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl NetworkFunction for Nat {
    fn kind(&self) -> &'static str {
        "nat"
    }

    fn objects(&self) -> Vec<ObjectDecl> {
        vec![
            object(
                FREE.id,
                "nat:free_ports",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::U64,
                None,
            ),
            object(
                TAKEN.id,
                "nat:ports_taken",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::U64,
                None,
            ),
            object(
                CONN.id,
                "nat:conn",
                Scope::PerFlow,
                Access::ReadHeavy,
                KeyKind::FiveTuple,
                Some(PartitionKey::Flow),
            ),
            object(
                PKTS.id,
                "nat:packets",
                Scope::CrossFlow,
                Access::WriteMostly,
                KeyKind::Raw,
                None,
            ),
            object(
                TCP_PKTS.id,
                "nat:tcp_packets",
                Scope::CrossFlow,
                Access::WriteMostly,
                KeyKind::Raw,
                None,
            ),
        ]
    }

    fn scopes(&self) -> Vec<PartitionKey> {
        vec![PartitionKey::Flow]
    }

    /// Takes this instance's part of the port range: traditional instances each get a
    /// disjoint slice (instance i of n), since their pools are not shared. The pools start
    /// empty: no port taken, none given back.
    fn init(&mut self, ctx: &mut Ctx<'_>, instances: u16) -> Result<(), NfError> {
        let (lo, hi) = (u32::from(self.ports.0), u32::from(self.ports.1));
        self.range = if ctx.state().mode() == crate::nf::Mode::Traditional && instances > 1 {
            let n = u32::from(instances);
            let span = (hi - lo + 1) / n;
            let i = u32::from(ctx.instance);
            let a = lo + i * span;
            let b = if i + 1 == n { hi } else { a + span - 1 };
            (a, b)
        } else {
            (lo, hi)
        };
        Ok(())
    }

    fn process(&mut self, pkt: &mut Packet<'_>, ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        let Some(t) = pkt.five_tuple() else {
            return Ok(Verdict::Forward);
        };
        PKTS.add(ctx, &(), 1)?;
        if t.proto == PROTO_TCP {
            TCP_PKTS.add(ctx, &(), 1)?;
        }
        let key = t.canonical();
        let now_s = (pkt.ts_ns / 1_000_000_000) as u32;
        let idle = if t.proto == PROTO_TCP {
            self.tcp_idle_ns
        } else {
            self.udp_idle_ns
        };
        let flags = pkt.tcp_flags().unwrap_or(0);
        let mut m = CONN.read_bytes(ctx, &key, Mapping::decode)?;
        if let Some(mut old) = m {
            let idle_out = u64::from(now_s.saturating_sub(old.last_seen_s)) * 1_000_000_000 > idle;
            if old.flags & CLOSED != 0 {
                if flags & tcp_flags::SYN != 0 || idle_out {
                    // A new connection reuses the tuple.
                    CONN.del(ctx, &key)?;
                    m = None;
                }
            } else if idle_out {
                self.close(ctx, &key, &mut old, "idle")?;
                CONN.del(ctx, &key)?;
                m = None;
            }
        }
        let sender_is_src_of_key = t == key;
        let mut m = match m {
            Some(m) => m,
            None => {
                if !self.internal.is_empty() && !self.internal.iter().any(|p| p.contains(t.src)) {
                    self.unsolicited_drops += 1;
                    return Ok(Verdict::Drop);
                }
                let port = if has_ports(t.proto) {
                    match self.take_port(ctx, Self::family(t.src))? {
                        Some(p) => p,
                        None => {
                            self.exhausted_drops += 1;
                            ctx.emit(Event::new("pool_exhausted").flow(t));
                            return Ok(Verdict::Drop);
                        }
                    }
                } else {
                    0
                };
                let m = Mapping {
                    client_is_src: sender_is_src_of_key,
                    port,
                    last_seen_s: now_s,
                    flags: 0,
                };
                CONN.set(ctx, &key, &m.encode())?;
                ctx.emit(
                    Event::new("mapping_created")
                        .flow(t)
                        .with("client", endpoint(t.src, t.sport))
                        .with("public", endpoint(self.public(t.src), port))
                        .with("tuple", tuple_json(&t)),
                );
                m
            }
        };
        let from_client = m.client_is_src == sender_is_src_of_key;
        let public = self.public(t.src);
        if from_client {
            pkt.set_src(public);
            if has_ports(t.proto) {
                pkt.set_sport(m.port);
            }
        } else {
            pkt.set_dst(public);
            if has_ports(t.proto) {
                pkt.set_dport(m.port);
            }
        }
        let mut changed = false;
        if now_s > m.last_seen_s.saturating_add(1) {
            m.last_seen_s = now_s;
            changed = true;
        }
        if m.flags & CLOSED != 0 {
            // A trailing packet; the final ACK of the closing handshake ends the mapping.
            let bare_ack = t.proto == PROTO_TCP
                && flags & (tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST) == 0
                && pkt.payload().is_empty();
            if bare_ack {
                CONN.del(ctx, &key)?;
            }
            return Ok(Verdict::Forward);
        }
        if t.proto == PROTO_TCP {
            if flags & tcp_flags::RST != 0 {
                self.close(ctx, &key, &mut m, "rst")?;
                return Ok(Verdict::Forward);
            }
            if flags & tcp_flags::FIN != 0 {
                let bit = if from_client { FIN_CLIENT } else { FIN_SERVER };
                if m.flags & bit == 0 {
                    m.flags |= bit;
                    changed = true;
                }
                if m.flags & (FIN_CLIENT | FIN_SERVER) == FIN_CLIENT | FIN_SERVER {
                    self.close(ctx, &key, &mut m, "fin")?;
                    return Ok(Verdict::Forward);
                }
            }
        }
        if changed {
            CONN.set(ctx, &key, &m.encode())?;
        }
        Ok(Verdict::Forward)
    }

    fn fragment(&mut self, _pkt: &mut Packet<'_>, _ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        self.fragment_drops += 1;
        Ok(Verdict::Drop)
    }
}
