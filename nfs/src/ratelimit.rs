//! Per-host rate limiter: a token bucket per source host, refilled by packet time.
//!
//! The worked example of `nfs/README.md`: one cross-flow object keyed by the client host of
//! each connection (packets in both directions count against it), read and written on every
//! packet, so the framework caches it while the upstream split gives the host to one
//! instance and keeps it in the store otherwise.

use crate::nf::{
    client_is_src, object, Cell, Ctx, Event, NetworkFunction, NfError, PartitionKey, Verdict,
};
use crate::nf::{Access, ObjectDecl, Scope};
use crate::packet::Packet;
use crate::util::{cfg_u64, check_keys};
use bytes::Bytes;
use chc_store::names::KeyKind;
use std::net::IpAddr;

/// Per host: tokens (in millionths of a packet) and the time they were last refilled.
const BUCKET: Cell<IpAddr, Bytes> = Cell::new(1);

pub struct RateLimit {
    /// Packets per second.
    rate: u64,
    /// Bucket size in packets.
    burst: u64,
    pub dropped: u64,
}

const MICRO: u64 = 1_000_000;

impl RateLimit {
    pub fn from_config(c: &toml::Table) -> Result<RateLimit, NfError> {
        check_keys(c, "ratelimit", &["rate_pps", "burst"])?;
        let rate = cfg_u64(c, "ratelimit", "rate_pps", 1000)?;
        let burst = cfg_u64(c, "ratelimit", "burst", 100)?;
        if rate == 0 || burst == 0 {
            return Err(NfError::config(
                "ratelimit",
                "rate_pps and burst must be positive",
            ));
        }
        Ok(RateLimit {
            rate,
            burst,
            dropped: 0,
        })
    }
}

impl NetworkFunction for RateLimit {
    fn kind(&self) -> &'static str {
        "ratelimit"
    }

    fn objects(&self) -> Vec<ObjectDecl> {
        vec![object(
            BUCKET.id,
            "ratelimit:bucket",
            Scope::CrossFlow,
            Access::ReadWriteOften,
            KeyKind::Host,
            Some(PartitionKey::Client),
        )]
    }

    fn scopes(&self) -> Vec<PartitionKey> {
        vec![PartitionKey::Client]
    }

    fn process(&mut self, pkt: &mut Packet<'_>, ctx: &mut Ctx<'_>) -> Result<Verdict, NfError> {
        // The connection's client host: its packets in both directions count.
        let host = match pkt.five_tuple() {
            Some(t) if !client_is_src(&t) => t.dst,
            _ => pkt.hdr.src,
        };
        let now = pkt.ts_ns;
        let full = self.burst * MICRO;
        let (tokens, last, limited) = match BUCKET.get(ctx, &host)? {
            Some(b) if b.len() == 17 => (
                u64::from_be_bytes(b[..8].try_into().expect("8")),
                u64::from_be_bytes(b[8..16].try_into().expect("8")),
                b[16] != 0,
            ),
            _ => (full, now, false),
        };
        // elapsed ns * packets/s = packets * 1e9; in millionths of a packet: / 1000.
        let refill = now.saturating_sub(last).saturating_mul(self.rate) / 1000;
        let tokens = tokens.saturating_add(refill).min(full);
        let (tokens, verdict, limited_now) = if tokens >= MICRO {
            (tokens - MICRO, Verdict::Forward, false)
        } else {
            (tokens, Verdict::Drop, true)
        };
        if limited_now {
            self.dropped += 1;
            if !limited {
                ctx.emit(Event::new("rate_limited").with("host", host.to_string()));
            }
        }
        let mut b = Vec::with_capacity(17);
        b.extend_from_slice(&tokens.to_be_bytes());
        b.extend_from_slice(&now.max(last).to_be_bytes());
        b.push(limited_now as u8);
        BUCKET.set(ctx, &host, &Bytes::from(b))?;
        Ok(verdict)
    }
}
