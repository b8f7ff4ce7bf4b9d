//! Trojan detector (off-path): a host that opens an SSH connection, then downloads HTML, ZIP
//! and EXE files over FTP, then shows IRC activity, in that order by logical clock.
//!
//! The order is the order traffic entered the chain (R4): the detector keeps, per host, the
//! logical clocks of each kind of activity and alerts when some SSH clock precedes a download
//! of every required file type, all of which precede some IRC clock. The condition is a
//! statement about the set of observed clocks, not about arrival order, so a host whose
//! flows reach the detector through differently delayed paths is judged as if they had
//! arrived in order; and since adding observations can only make it true, the alert fires
//! exactly once however the observations arrive.
//!
//! Activity: SSH = a SYN to an SSH port or a payload starting with `SSH-`; a download = an
//! FTP control command `RETR <name>` whose extension names a file type; IRC = a SYN to an
//! IRC port or a payload starting with an IRC command (NICK, USER, JOIN, PRIVMSG).
//! Off-path: it alerts and reports the host as blocked; it never touches the main path.
//!
//! `order = "arrival"` is the baseline without chain-wide clocks (R4): observations are
//! numbered in the order they reach this instance, as a framework without logical clocks
//! would see them. Upstream NFs that run at different speeds reorder a host's flows on the
//! way, and the detector then misses sequences that entered the chain in order.

use crate::nf::{
    client_is_src, object, Cell, Ctx, Event, NetworkFunction, NfError, PartitionKey, Verdict,
};
use crate::nf::{Access, ObjectDecl, Scope};
use crate::packet::{tcp_flags, Packet, PROTO_TCP};
use crate::util::{cfg_ports, cfg_strings, check_keys};
use bytes::{BufMut, Bytes, BytesMut};
use chc_store::names::KeyKind;
use std::net::IpAddr;

const STAGES: Cell<IpAddr, Bytes> = Cell::new(1);
const ALERTED: Cell<IpAddr, i64> = Cell::new(2);

/// At most this many clocks are kept per host and kind (the earliest ones, except for IRC
/// where only the latest matters).
const KEEP: usize = 64;

const SSH: u8 = 0;
const IRC: u8 = 1;
/// File kinds start here (index into `files`).
const FILE0: u8 = 2;

pub struct Trojan {
    ssh_ports: Vec<u16>,
    ftp_ports: Vec<u16>,
    irc_ports: Vec<u16>,
    files: Vec<String>,
    /// Number observations by arrival here instead of by logical clock (the R4 baseline).
    by_arrival: bool,
    arrivals: u64,
}

impl Trojan {
    pub fn from_config(c: &toml::Table) -> Result<Trojan, NfError> {
        check_keys(
            c,
            "trojan",
            &["ssh_ports", "ftp_ports", "irc_ports", "files", "order"],
        )?;
        let files: Vec<String> = cfg_strings(c, "trojan", "files", &["html", "zip", "exe"])?
            .into_iter()
            .map(|s| s.trim_start_matches('.').to_ascii_lowercase())
            .collect();
        if files.is_empty() || files.len() > 16 {
            return Err(NfError::config(
                "trojan",
                "files must list 1 to 16 file types",
            ));
        }
        let by_arrival = match c.get("order") {
            None => false,
            Some(toml::Value::String(s)) if s == "clock" => false,
            Some(toml::Value::String(s)) if s == "arrival" => true,
            Some(v) => {
                return Err(NfError::config(
                    "trojan",
                    format!("order must be \"clock\" or \"arrival\", not {v}"),
                ))
            }
        };
        Ok(Trojan {
            by_arrival,
            arrivals: 0,
            ssh_ports: cfg_ports(c, "trojan", "ssh_ports", &[22])?,
            ftp_ports: cfg_ports(c, "trojan", "ftp_ports", &[21])?,
            irc_ports: cfg_ports(c, "trojan", "irc_ports", &[6667, 6697])?,
            files,
        })
    }

    /// The kind of activity this packet shows, if any.
    fn activity(&self, pkt: &Packet<'_>, to_server_port: u16, syn: bool) -> Option<u8> {
        let p = pkt.payload();
        if (syn && self.ssh_ports.contains(&to_server_port)) || p.starts_with(b"SSH-") {
            return Some(SSH);
        }
        if self.ftp_ports.contains(&to_server_port)
            && p.len() > 5
            && p[..5].eq_ignore_ascii_case(b"RETR ")
        {
            let name = std::str::from_utf8(&p[5..]).ok()?.trim_end();
            let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
            let ext = if ext == "htm" {
                "html".to_string()
            } else {
                ext
            };
            let i = self.files.iter().position(|f| *f == ext)?;
            return Some(FILE0 + i as u8);
        }
        if syn && self.irc_ports.contains(&to_server_port) {
            return Some(IRC);
        }
        for cmd in [&b"NICK "[..], b"USER ", b"JOIN ", b"PRIVMSG "] {
            if p.len() >= cmd.len() && p[..cmd.len()].eq_ignore_ascii_case(cmd) {
                return Some(IRC);
            }
        }
        None
    }

    /// Whether the observations contain SSH < {every file type} < IRC.
    fn signature(&self, obs: &[(u8, u64)]) -> bool {
        let Some(ssh) = obs.iter().filter(|o| o.0 == SSH).map(|o| o.1).min() else {
            return false;
        };
        let mut last_file = ssh;
        for i in 0..self.files.len() as u8 {
            // The earliest download of this type after the SSH connection.
            match obs
                .iter()
                .filter(|o| o.0 == FILE0 + i && o.1 > ssh)
                .map(|o| o.1)
                .min()
            {
                Some(c) => last_file = last_file.max(c),
                None => return false,
            }
        }
        obs.iter().any(|o| o.0 == IRC && o.1 > last_file)
    }
}

fn decode(b: &[u8]) -> Vec<(u8, u64)> {
    b.chunks_exact(9)
        .map(|c| {
            (
                c[0],
                u64::from_be_bytes(c[1..9].try_into().expect("8 bytes")),
            )
        })
        .collect()
}

fn encode(v: &[(u8, u64)]) -> Bytes {
    let mut b = BytesMut::with_capacity(v.len() * 9);
    for (k, c) in v {
        b.put_u8(*k);
        b.put_u64(*c);
    }
    b.freeze()
}

/// Adds an observation; keeps the earliest `KEEP` clocks per kind (the latest for IRC).
/// Returns false if nothing changed.
fn add(obs: &mut Vec<(u8, u64)>, kind: u8, clock: u64) -> bool {
    if obs.contains(&(kind, clock)) {
        return false;
    }
    obs.push((kind, clock));
    let mut same: Vec<(u8, u64)> = obs.iter().copied().filter(|o| o.0 == kind).collect();
    if same.len() > KEEP {
        same.sort_by_key(|o| o.1);
        let drop = if kind == IRC {
            same[0]
        } else {
            same[same.len() - 1]
        };
        obs.retain(|o| *o != drop);
        return drop != (kind, clock);
    }
    true
}

impl NetworkFunction for Trojan {
    fn kind(&self) -> &'static str {
        "trojan"
    }

    fn objects(&self) -> Vec<ObjectDecl> {
        vec![
            object(
                STAGES.id,
                "trojan:activity",
                Scope::CrossFlow,
                Access::ReadWriteOften,
                KeyKind::Host,
                Some(PartitionKey::Client),
            ),
            object(
                ALERTED.id,
                "trojan:alerted",
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
        let syn = pkt
            .tcp_flags()
            .is_some_and(|f| f & tcp_flags::SYN != 0 && f & tcp_flags::ACK == 0);
        // The host is the client: the SYN's sender, else the ephemeral-port side.
        let from_client = syn || client_is_src(&t);
        if !from_client {
            return Ok(Verdict::Forward);
        }
        let Some(kind) = self.activity(pkt, t.dport, syn) else {
            return Ok(Verdict::Forward);
        };
        let host = t.src;
        let mut obs = STAGES
            .get(ctx, &host)?
            .map(|b| decode(&b))
            .unwrap_or_default();
        let stamp = if self.by_arrival {
            self.arrivals += 1;
            self.arrivals
        } else {
            ctx.clock
        };
        if !add(&mut obs, kind, stamp) {
            return Ok(Verdict::Forward);
        }
        STAGES.set(ctx, &host, &encode(&obs))?;
        if self.signature(&obs) && ALERTED.get(ctx, &host)?.is_none() {
            ALERTED.set(ctx, &host, &1)?;
            ctx.emit(
                Event::new("alert")
                    .flow(t)
                    .with("detector", "trojan")
                    .with("host", host.to_string()),
            );
            ctx.emit(
                Event::new("block")
                    .with("detector", "trojan")
                    .with("host", host.to_string()),
            );
        }
        Ok(Verdict::Forward)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Trojan {
        Trojan::from_config(&toml::Table::new()).unwrap()
    }

    #[test]
    fn signature_needs_the_order() {
        let d = t();
        let (h, z, e) = (FILE0, FILE0 + 1, FILE0 + 2);
        assert!(d.signature(&[(SSH, 1), (h, 2), (z, 3), (e, 4), (IRC, 5)]));
        assert!(
            d.signature(&[(SSH, 1), (e, 2), (z, 3), (h, 4), (IRC, 5)]),
            "file order is free"
        );
        assert!(
            !d.signature(&[(SSH, 1), (h, 2), (z, 3), (IRC, 5)]),
            "a file type is missing"
        );
        assert!(
            !d.signature(&[(IRC, 0), (SSH, 1), (h, 2), (z, 3), (e, 4)]),
            "IRC first"
        );
        assert!(
            !d.signature(&[(h, 0), (SSH, 1), (z, 3), (e, 4), (IRC, 5)]),
            "a download before SSH"
        );
        // Observations arriving in any order reach the same verdict.
        let obs = [(SSH, 10u64), (h, 20), (z, 30), (e, 40), (IRC, 50), (h, 5)];
        let mut fwd = Vec::new();
        let mut rev = Vec::new();
        for o in obs {
            add(&mut fwd, o.0, o.1);
        }
        for o in obs.iter().rev() {
            add(&mut rev, o.0, o.1);
        }
        assert!(d.signature(&fwd) && d.signature(&rev));
        assert_eq!(decode(&encode(&fwd)), fwd);
    }

    #[test]
    fn order_is_clock_or_arrival() {
        let mut c = toml::Table::new();
        assert!(!t().by_arrival, "clocks by default");
        c.insert("order".into(), "arrival".into());
        assert!(Trojan::from_config(&c).unwrap().by_arrival);
        c.insert("order".into(), "clock".into());
        assert!(!Trojan::from_config(&c).unwrap().by_arrival);
        c.insert("order".into(), "time".into());
        assert!(Trojan::from_config(&c).is_err());
    }
}
