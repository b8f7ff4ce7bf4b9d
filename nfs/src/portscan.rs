//! Portscan detector: threshold random walk (Jung, Paxson, Berger, Balakrishnan, "Fast
//! Portscan Detection Using Sequential Hypothesis Testing", IEEE S&P 2004).
//!
//! For each host that initiates TCP connections, every first-contact attempt (to a
//! destination service, address and port, the host has not contacted before) ends in success (SYN-ACK) or failure (RST,
//! or no answer within `timeout_s` of packet time). Each outcome multiplies the host's
//! likelihood ratio by θ1/θ0 (success) or (1-θ1)/(1-θ0) (failure). At or above
//! η1 = PD/PF the host is a scanner: it is blocked (its packets are dropped from then on) and
//! an alert and a block event are emitted; at or below η0 = (1-PD)/(1-PF) it is benign and
//! no longer tracked. The ratio is kept as a fixed-point logarithm, so updates are integer
//! increments the store can apply as offloaded operations.
//!
//! State (Table 3.12): the likelihood per host (cross-flow, read/write often) and the
//! pending connection attempts with their timestamps (per-flow). Two helpers: the set of
//! destinations a host contacted, and per host its pending attempts in order (to find
//! unanswered ones when the host's next packet arrives: timeouts are decided by that host's
//! own traffic, so the outcome does not depend on how other hosts' packets interleave).

use crate::nf::{object, Cell, Ctx, Event, NetworkFunction, NfError, PartitionKey, Verdict};
use crate::nf::{Access, ObjectDecl, Scope};
use crate::packet::{tcp_flags, FiveTuple, Packet, PROTO_TCP};
use crate::util::{cfg_f64, check_keys};
use bytes::{BufMut, Bytes, BytesMut};
use chc_store::names::KeyKind;
use std::net::IpAddr;

const LIKELIHOOD: Cell<IpAddr, i64> = Cell::new(1);
const PENDING: Cell<FiveTuple, i64> = Cell::new(2);
/// First contacts: (host, (destination, destination port)).
const CONTACTED: Cell<(IpAddr, (IpAddr, u64)), i64> = Cell::new(3);
const HOST_PENDING: Cell<IpAddr, Bytes> = Cell::new(4);

/// Log-likelihoods are stored in millionths.
const SCALE: f64 = 1e6;
/// Sentinels: decided hosts.
const SCANNER: i64 = i64::MAX;
const BENIGN: i64 = i64::MIN;

pub struct Portscan {
    step_success: i64,
    step_failure: i64,
    upper: i64,
    lower: i64,
    timeout_ns: i64,
    pub blocked_drops: u64,
}

impl Portscan {
    pub fn from_config(c: &toml::Table) -> Result<Portscan, NfError> {
        check_keys(
            c,
            "portscan",
            &["theta0", "theta1", "pd", "pf", "timeout_s"],
        )?;
        let theta0 = cfg_f64(c, "portscan", "theta0", 0.8)?;
        let theta1 = cfg_f64(c, "portscan", "theta1", 0.2)?;
        let pd = cfg_f64(c, "portscan", "pd", 0.99)?;
        let pf = cfg_f64(c, "portscan", "pf", 0.01)?;
        let ok = |x: f64| x > 0.0 && x < 1.0;
        if !(ok(theta0) && ok(theta1) && ok(pd) && ok(pf)) || theta1 >= theta0 || pf >= pd {
            return Err(NfError::config(
                "portscan",
                "need 0 < theta1 < theta0 < 1 and 0 < pf < pd < 1",
            ));
        }
        let l = |x: f64| (x.ln() * SCALE).round() as i64;
        Ok(Portscan {
            step_success: l(theta1 / theta0),
            step_failure: l((1.0 - theta1) / (1.0 - theta0)),
            upper: l(pd / pf),
            lower: l((1.0 - pd) / (1.0 - pf)),
            timeout_ns: {
                let t = cfg_f64(c, "portscan", "timeout_s", 1.0)?;
                if !(t > 0.0 && t < 3600.0) {
                    return Err(NfError::config(
                        "portscan",
                        "timeout_s must be in (0, 3600)",
                    ));
                }
                (t * 1e9) as i64
            },
            blocked_drops: 0,
        })
    }

    /// Records an outcome for `host`; blocks it when it crosses the upper threshold.
    fn outcome(
        &mut self,
        ctx: &mut Ctx<'_>,
        host: IpAddr,
        success: bool,
        flow: FiveTuple,
    ) -> Result<(), NfError> {
        let cur = LIKELIHOOD.get(ctx, &host)?.unwrap_or(0);
        if cur == SCANNER || cur == BENIGN {
            return Ok(());
        }
        let step = if success {
            self.step_success
        } else {
            self.step_failure
        };
        let next = cur + step;
        if next >= self.upper {
            LIKELIHOOD.set(ctx, &host, &SCANNER)?;
            ctx.emit(
                Event::new("alert")
                    .flow(flow)
                    .with("detector", "portscan")
                    .with("host", host.to_string()),
            );
            ctx.emit(
                Event::new("block")
                    .with("detector", "portscan")
                    .with("host", host.to_string()),
            );
        } else if next <= self.lower {
            LIKELIHOOD.set(ctx, &host, &BENIGN)?;
        } else {
            LIKELIHOOD.set(ctx, &host, &next)?;
        }
        Ok(())
    }

    /// Fails the host's attempts that got no answer in time (decided by its own packets).
    fn expire(&mut self, ctx: &mut Ctx<'_>, host: IpAddr, now: i64) -> Result<(), NfError> {
        let Some(list) = HOST_PENDING.get(ctx, &host)? else {
            return Ok(());
        };
        let entries = decode_pending(&list);
        let mut keep = Vec::with_capacity(entries.len());
        let mut expired = Vec::new();
        for (flow, ts) in entries {
            if now - ts > self.timeout_ns {
                expired.push(flow);
            } else {
                keep.push((flow, ts));
            }
        }
        if expired.is_empty() {
            return Ok(());
        }
        for flow in expired {
            // Only attempts still pending count (an answer may have settled them).
            if PENDING.get(ctx, &flow.canonical())?.is_some() {
                PENDING.del(ctx, &flow.canonical())?;
                self.outcome(ctx, host, false, flow)?;
            }
        }
        if keep.is_empty() {
            HOST_PENDING.del(ctx, &host)?;
        } else {
            HOST_PENDING.set(ctx, &host, &encode_pending(&keep))?;
        }
        Ok(())
    }
}

fn encode_pending(v: &[(FiveTuple, i64)]) -> Bytes {
    let mut b = BytesMut::with_capacity(v.len() * 46);
    for (f, ts) in v {
        let k = f.key_bytes();
        b.put_u8(k.len() as u8);
        b.put_slice(&k);
        b.put_i64(*ts);
    }
    b.freeze()
}

fn decode_pending(b: &[u8]) -> Vec<(FiveTuple, i64)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let n = b[i] as usize;
        if i + 1 + n + 8 > b.len() {
            break;
        }
        let Some(f) = FiveTuple::from_key_bytes(&b[i + 1..i + 1 + n]) else {
            break;
        };
        let ts = i64::from_be_bytes(b[i + 1 + n..i + 9 + n].try_into().expect("8 bytes"));
        v.push((f, ts));
        i += 1 + n + 8;
    }
    v
}

impl NetworkFunction for Portscan {
    fn kind(&self) -> &'static str {
        "portscan"
    }

    fn objects(&self) -> Vec<ObjectDecl> {
        vec![
            object(
                LIKELIHOOD.id,
                "portscan:likelihood",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::Host,
                Some(PartitionKey::Client),
            ),
            object(
                PENDING.id,
                "portscan:pending",
                Scope::PerFlow,
                Access::ReadWriteOften,
                KeyKind::FiveTuple,
                Some(PartitionKey::Flow),
            ),
            object(
                CONTACTED.id,
                "portscan:contacted",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::Raw,
                Some(PartitionKey::Client),
            ),
            object(
                HOST_PENDING.id,
                "portscan:host_pending",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::Host,
                Some(PartitionKey::Client),
            ),
        ]
    }

    fn scopes(&self) -> Vec<PartitionKey> {
        vec![PartitionKey::Flow, PartitionKey::Client]
    }

    fn process(&mut self, pkt: &mut Packet<'_>, ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        let Some(t) = pkt.five_tuple() else {
            return Ok(Verdict::Forward);
        };
        if t.proto != PROTO_TCP {
            return Ok(Verdict::Forward);
        }
        if LIKELIHOOD.get(ctx, &t.src)? == Some(SCANNER) {
            self.blocked_drops += 1;
            return Ok(Verdict::Drop);
        }
        let flags = pkt.tcp_flags().unwrap_or(0);
        let now = pkt.ts_ns as i64;
        let syn = flags & tcp_flags::SYN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        let rst = flags & tcp_flags::RST != 0;
        if syn && !ack {
            // A connection attempt by t.src.
            self.expire(ctx, t.src, now)?;
            let decided = matches!(LIKELIHOOD.get(ctx, &t.src)?, Some(SCANNER | BENIGN));
            if decided {
                return Ok(Verdict::Forward);
            }
            let target = (t.src, (t.dst, u64::from(t.dport)));
            if CONTACTED.get(ctx, &target)?.is_none() {
                CONTACTED.set(ctx, &target, &1)?;
                PENDING.set(ctx, &t.canonical(), &now)?;
                let mut list = HOST_PENDING
                    .get(ctx, &t.src)?
                    .map(|b| decode_pending(&b))
                    .unwrap_or_default();
                list.push((t, now));
                HOST_PENDING.set(ctx, &t.src, &encode_pending(&list))?;
            }
        } else if (syn && ack) || rst {
            // An answer from t.src to the initiator t.dst.
            let key = t.canonical();
            if PENDING.get(ctx, &key)?.is_some() {
                PENDING.del(ctx, &key)?;
                let host = t.dst;
                if let Some(list) = HOST_PENDING.get(ctx, &host)? {
                    let keep: Vec<_> = decode_pending(&list)
                        .into_iter()
                        .filter(|(f, _)| f.canonical() != key)
                        .collect();
                    if keep.is_empty() {
                        HOST_PENDING.del(ctx, &host)?;
                    } else {
                        HOST_PENDING.set(ctx, &host, &encode_pending(&keep))?;
                    }
                }
                self.outcome(ctx, host, syn && ack && !rst, t.reversed())?;
            }
            self.expire(ctx, t.dst, now)?;
        }
        Ok(Verdict::Forward)
    }
}
