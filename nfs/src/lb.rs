//! Load balancer: assigns each new connection to the backend with the fewest active
//! connections and rewrites the server side of the connection to that backend.
//!
//! State (Table 3.12): the active connections per backend (cross-flow, read/write often)
//! are a counter vector in the store, and "pick the least loaded and count it" is one
//! offloaded operation (`argmin_incr`), so instances never read-lock-write; the byte
//! counter per backend is cross-flow and write-mostly (non-blocking increments); the
//! connection-to-backend mapping is per-flow.
//!
//! Both directions are rewritten (client <-> backend), as with the NAT, so the output shows
//! each connection consistently. With `vips` set, only connections to those addresses are
//! balanced; others pass untouched.

use crate::nf::{
    client_is_src, object, tuple_json, Cell, Counter, Ctx, Event, NetworkFunction, NfError,
    PartitionKey, Verdict,
};
use crate::nf::{Access, ObjectDecl, Scope, Value};
use crate::packet::{tcp_flags, FiveTuple, Packet};
use crate::util::{cfg_ips, check_keys};
use bytes::Bytes;
use chc_store::custom::vec_add_arg;
use chc_store::names::KeyKind;
use std::net::IpAddr;

const ACTIVE: Cell<u64, Bytes> = Cell::new(1);
const BYTES: Counter<IpAddr> = Counter::new(2);
const CONN: Cell<FiveTuple, Bytes> = Cell::new(3);

const FIN_CLIENT: u8 = 1;
const FIN_SERVER: u8 = 2;
/// The connection ended; the assignment stays for its trailing packets (as in the NAT).
const CLOSED: u8 = 4;

pub struct Lb {
    backends4: Vec<IpAddr>,
    backends6: Vec<IpAddr>,
    vips: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Assignment {
    /// The canonical tuple's source is the server.
    server_is_src: bool,
    backend: u16,
    flags: u8,
}

impl Assignment {
    fn encode(&self) -> Bytes {
        let b = self.backend.to_be_bytes();
        Bytes::copy_from_slice(&[self.server_is_src as u8, b[0], b[1], self.flags])
    }
    fn decode(b: &[u8]) -> Option<Assignment> {
        (b.len() == 4).then(|| Assignment {
            server_is_src: b[0] != 0,
            backend: u16::from_be_bytes([b[1], b[2]]),
            flags: b[3],
        })
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl Lb {
    pub fn from_config(c: &toml::Table) -> Result<Lb, NfError> {
        check_keys(c, "lb", &["backends", "backends6", "vips"])?;
        let backends4 = cfg_ips(
            c,
            "lb",
            "backends",
            &["10.10.0.1", "10.10.0.2", "10.10.0.3", "10.10.0.4"],
        )?;
        let backends6 = cfg_ips(c, "lb", "backends6", &["2001:db8:10::1", "2001:db8:10::2"])?;
        if backends4.is_empty() || backends4.iter().any(|b| !b.is_ipv4()) {
            return Err(NfError::config("lb", "backends must list IPv4 addresses"));
        }
        if backends6.is_empty() || backends6.iter().any(|b| !b.is_ipv6()) {
            return Err(NfError::config("lb", "backends6 must list IPv6 addresses"));
        }
        Ok(Lb {
            backends4,
            backends6,
            vips: cfg_ips(c, "lb", "vips", &[])?,
        })
    }

    fn pool(&self, ip: IpAddr) -> (&[IpAddr], u64) {
        if ip.is_ipv4() {
            (&self.backends4, 4)
        } else {
            (&self.backends6, 6)
        }
    }

    /// The connection no longer counts as active on its backend.
    fn close(
        &self,
        ctx: &mut Ctx<'_>,
        key: &FiveTuple,
        a: &mut Assignment,
        why: &str,
    ) -> Result<(), NfError> {
        let (_, fam) = self.pool(key.src);
        ACTIVE.custom_blind(
            ctx,
            &fam,
            "vec_add_floor0",
            &vec_add_arg(u32::from(a.backend), -1),
        )?;
        a.flags |= CLOSED;
        CONN.set(ctx, key, &a.encode())?;
        ctx.emit(
            Event::new("backend_released")
                .flow(*key)
                .with("reason", why),
        );
        Ok(())
    }
}

impl NetworkFunction for Lb {
    fn kind(&self) -> &'static str {
        "lb"
    }

    fn objects(&self) -> Vec<ObjectDecl> {
        vec![
            object(
                ACTIVE.id,
                "lb:active",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::U64,
                None,
            ),
            object(
                BYTES.id,
                "lb:bytes",
                Scope::CrossFlow,
                Access::WriteMostly,
                KeyKind::Host,
                None,
            ),
            object(
                CONN.id,
                "lb:conn",
                Scope::PerFlow,
                Access::ReadHeavy,
                KeyKind::FiveTuple,
                Some(PartitionKey::Flow),
            ),
        ]
    }

    fn scopes(&self) -> Vec<PartitionKey> {
        vec![PartitionKey::Flow]
    }

    fn process(&mut self, pkt: &mut Packet<'_>, ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        let Some(t) = pkt.five_tuple() else {
            return Ok(Verdict::Forward);
        };
        let key = t.canonical();
        let flags = pkt.tcp_flags().unwrap_or(0);
        let mut known = CONN.read_bytes(ctx, &key, Assignment::decode)?;
        let new_syn = flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0;
        if known.is_some_and(|a| a.flags & CLOSED != 0 && new_syn) {
            // A new connection on the tuple of a finished one.
            CONN.del(ctx, &key)?;
            known = None;
        }
        let mut a = match known {
            Some(a) => a,
            None => {
                // The server is the receiver of the connection's first packet, unless that
                // packet is evidently a reply (a SYN-ACK, or from the lower port).
                let syn_ack = pkt
                    .tcp_flags()
                    .is_some_and(|f| f & tcp_flags::SYN != 0 && f & tcp_flags::ACK != 0);
                let sender_is_client = !syn_ack
                    && (pkt.tcp_flags().is_some_and(|f| f & tcp_flags::SYN != 0)
                        || client_is_src(&t));
                let (server, server_port) = if sender_is_client {
                    (t.dst, t.dport)
                } else {
                    (t.src, t.sport)
                };
                if !self.vips.is_empty() && !self.vips.contains(&server) {
                    return Ok(Verdict::Forward);
                }
                let (backends, fam) = self.pool(server);
                let n = backends.len() as i64;
                let idx = ACTIVE
                    .custom(ctx, &fam, "argmin_incr", &Value::Int(n))?
                    .as_int()
                    .unwrap_or(0)
                    .clamp(0, n - 1) as u16;
                let a = Assignment {
                    server_is_src: (key.src, key.sport) == (server, server_port),
                    backend: idx,
                    flags: 0,
                };
                CONN.set(ctx, &key, &a.encode())?;
                ctx.emit(
                    Event::new("backend_chosen")
                        .flow(t)
                        .with("server", endpoint(server, server_port))
                        .with("client", {
                            let (c, cp) = if sender_is_client {
                                (t.src, t.sport)
                            } else {
                                (t.dst, t.dport)
                            };
                            endpoint(c, cp)
                        })
                        .with("backend", backends[idx as usize].to_string())
                        .with("tuple", tuple_json(&t)),
                );
                a
            }
        };
        let (backends, _) = self.pool(t.src);
        let backend = backends[usize::from(a.backend) % backends.len()];
        let to_server = (t == key) != a.server_is_src;
        if to_server {
            pkt.set_dst(backend);
        } else {
            pkt.set_src(backend);
        }
        BYTES.add(ctx, &backend, pkt.wire_len as i64)?;
        if a.flags & CLOSED != 0 {
            let bare_ack = pkt.tcp_flags().is_some()
                && flags & (tcp_flags::FIN | tcp_flags::SYN | tcp_flags::RST) == 0
                && pkt.payload().is_empty();
            if bare_ack {
                CONN.del(ctx, &key)?;
            }
        } else if pkt.tcp_flags().is_some() {
            if flags & tcp_flags::RST != 0 {
                self.close(ctx, &key, &mut a, "rst")?;
            } else if flags & tcp_flags::FIN != 0 {
                let bit = if to_server { FIN_CLIENT } else { FIN_SERVER };
                if a.flags & bit == 0 {
                    a.flags |= bit;
                    if a.flags & (FIN_CLIENT | FIN_SERVER) == FIN_CLIENT | FIN_SERVER {
                        self.close(ctx, &key, &mut a, "fin")?;
                    } else {
                        CONN.set(ctx, &key, &a.encode())?;
                    }
                }
            }
        }
        Ok(Verdict::Forward)
    }

    /// Fragments without ports cannot be matched to a connection: dropped.
    fn fragment(&mut self, _pkt: &mut Packet<'_>, _ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        Ok(Verdict::Drop)
    }
}
