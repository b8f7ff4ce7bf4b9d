//! Readable names for structured keys, so `redis-cli` can inspect NF state.
//!
//! NFs declare each state object once (`OP_DECLARE`): vertex, object id, a name such as
//! `nat:portmap` and the kind of its key bytes. The RESP face then shows keys as
//! `v2:i1:nat:portmap:tcp:10.0.0.1:1234-192.0.2.7:80` (vertex 2, owned by instance 1; `s` in
//! place of `i1` for shared objects) and accepts the same form back. Keys of vertex 0 /
//! object 0 are plain byte strings: what Redis clients such as `redis-benchmark` create.

use crate::key::{Key, KeyRef};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How an object's key bytes are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum KeyKind {
    /// Opaque bytes, shown as printable text or hex.
    Raw = 0,
    /// `[proto][src ip][dst ip][src port BE][dst port BE]`, IPv4 (13 bytes) or IPv6 (37 bytes).
    FiveTuple = 1,
    /// An IPv4 or IPv6 address (4 or 16 bytes).
    Host = 2,
    /// A big-endian u64.
    U64 = 3,
}

impl KeyKind {
    pub fn from_u32(v: u32) -> KeyKind {
        match v {
            1 => KeyKind::FiveTuple,
            2 => KeyKind::Host,
            3 => KeyKind::U64,
            _ => KeyKind::Raw,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectName {
    pub name: String,
    pub kind: KeyKind,
}

/// The declared names of one store process, shared by its shards.
#[derive(Default, Debug, Clone)]
pub struct Names {
    by_id: HashMap<(u16, u16), ObjectName>,
    by_name: HashMap<String, u16>,
}

impl Names {
    pub fn declare(&mut self, vertex: u16, object: u16, name: &str, kind: KeyKind) {
        self.by_id.insert(
            (vertex, object),
            ObjectName {
                name: name.to_string(),
                kind,
            },
        );
        self.by_name.insert(format!("{vertex}:{name}"), object);
    }

    pub fn all(&self) -> impl Iterator<Item = (u16, u16, &ObjectName)> {
        self.by_id.iter().map(|(&(v, o), n)| (v, o, n))
    }

    /// The readable form of a key; `owner` is the owning instance + 1 (0 = none).
    pub fn render(&self, k: KeyRef<'_>, owner: u32) -> Vec<u8> {
        if k.vertex == 0 && k.object == 0 && !k.per_flow {
            return k.sub.to_vec();
        }
        let mut s = format!("v{}:", k.vertex);
        if k.per_flow {
            if owner == 0 {
                s.push_str("i-:");
            } else {
                let _ = write!(s, "i{}:", owner - 1);
            }
        } else {
            s.push_str("s:");
        }
        match self.by_id.get(&(k.vertex, k.object)) {
            Some(n) => {
                s.push_str(&n.name);
                s.push(':');
                render_sub(&mut s, n.kind, k.sub);
            }
            None => {
                let _ = write!(s, "o{}:", k.object);
                render_sub(&mut s, KeyKind::Raw, k.sub);
            }
        }
        s.into_bytes()
    }

    /// Parses a key given by a Redis client: a readable structured key, or else plain bytes.
    pub fn parse(&self, raw: &[u8]) -> Key {
        self.parse_structured(raw)
            .unwrap_or_else(|| Key::new(0, 0, false, raw))
    }

    fn parse_structured(&self, raw: &[u8]) -> Option<Key> {
        let s = std::str::from_utf8(raw).ok()?;
        let rest = s.strip_prefix('v')?;
        let (vertex, rest) = rest.split_once(':')?;
        let vertex: u16 = vertex.parse().ok()?;
        let (scope, rest) = rest.split_once(':')?;
        let per_flow = match scope {
            "s" => false,
            x if x.starts_with('i') => true,
            _ => return None,
        };
        // Object part: `o<id>` or a declared `nf:object` name.
        if let Some(r) = rest.strip_prefix('o') {
            let (obj, sub) = r.split_once(':')?;
            let object: u16 = obj.parse().ok()?;
            return Some(Key::new(
                vertex,
                object,
                per_flow,
                &parse_sub(KeyKind::Raw, sub)?,
            ));
        }
        let (nf, r) = rest.split_once(':')?;
        let (obj, sub) = r.split_once(':')?;
        let object = *self.by_name.get(&format!("{vertex}:{nf}:{obj}"))?;
        let kind = self.by_id.get(&(vertex, object))?.kind;
        Some(Key::new(vertex, object, per_flow, &parse_sub(kind, sub)?))
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmp6".into(),
        p => format!("p{p}"),
    }
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))),
        _ => None,
    }
}

fn sock(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

fn render_sub(s: &mut String, kind: KeyKind, b: &[u8]) {
    match (kind, b.len()) {
        (KeyKind::FiveTuple, 13 | 37) => {
            let w = (b.len() - 5) / 2;
            let src = ip_of(&b[1..1 + w]).expect("length checked");
            let dst = ip_of(&b[1 + w..1 + 2 * w]).expect("length checked");
            let sp = u16::from_be_bytes([b[1 + 2 * w], b[2 + 2 * w]]);
            let dp = u16::from_be_bytes([b[3 + 2 * w], b[4 + 2 * w]]);
            let _ = write!(
                s,
                "{}:{}-{}",
                proto_name(b[0]),
                sock(src, sp),
                sock(dst, dp)
            );
        }
        (KeyKind::Host, 4 | 16) => {
            let _ = write!(s, "{}", ip_of(b).expect("length checked"));
        }
        (KeyKind::U64, 8) => {
            let _ = write!(s, "{}", u64::from_be_bytes(b.try_into().expect("8")));
        }
        _ => {
            if !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_graphic() && *c != b':' && *c != b'%')
            {
                s.push_str(std::str::from_utf8(b).expect("ascii"));
            } else {
                s.push_str("0x");
                for c in b {
                    let _ = write!(s, "{c:02x}");
                }
            }
        }
    }
}

fn parse_sub(kind: KeyKind, s: &str) -> Option<Vec<u8>> {
    match kind {
        KeyKind::FiveTuple => {
            let (p, rest) = s.split_once(':')?;
            let proto = match p {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmp6" => 58,
                x => x.strip_prefix('p')?.parse().ok()?,
            };
            let (a, b) = rest.split_once('-')?;
            let a: std::net::SocketAddr = a.parse().ok()?;
            let b: std::net::SocketAddr = b.parse().ok()?;
            let mut out = vec![proto];
            match (a.ip(), b.ip()) {
                (IpAddr::V4(x), IpAddr::V4(y)) => {
                    out.extend_from_slice(&x.octets());
                    out.extend_from_slice(&y.octets());
                }
                (IpAddr::V6(x), IpAddr::V6(y)) => {
                    out.extend_from_slice(&x.octets());
                    out.extend_from_slice(&y.octets());
                }
                _ => return None,
            }
            out.extend_from_slice(&a.port().to_be_bytes());
            out.extend_from_slice(&b.port().to_be_bytes());
            Some(out)
        }
        KeyKind::Host => match s.parse::<IpAddr>().ok()? {
            IpAddr::V4(a) => Some(a.octets().to_vec()),
            IpAddr::V6(a) => Some(a.octets().to_vec()),
        },
        KeyKind::U64 => Some(s.parse::<u64>().ok()?.to_be_bytes().to_vec()),
        KeyKind::Raw => match s.strip_prefix("0x") {
            Some(h) if h.len() % 2 == 0 => (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
                .collect(),
            _ => Some(s.as_bytes().to_vec()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_tuple_keys_render_and_parse_back() {
        let mut n = Names::default();
        n.declare(2, 1, "nat:portmap", KeyKind::FiveTuple);
        let mut sub = vec![6u8, 10, 0, 0, 1, 192, 0, 2, 7];
        sub.extend_from_slice(&1234u16.to_be_bytes());
        sub.extend_from_slice(&80u16.to_be_bytes());
        let k = Key::new(2, 1, true, &sub);
        let r = n.render(k.as_ref(), 2);
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            "v2:i1:nat:portmap:tcp:10.0.0.1:1234-192.0.2.7:80"
        );
        assert_eq!(n.parse(&r), k);
    }

    #[test]
    fn ipv6_hosts_and_raw_keys() {
        let mut n = Names::default();
        n.declare(3, 4, "scan:likelihood", KeyKind::Host);
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let k = Key::new(3, 4, false, &ip.octets());
        let r = n.render(k.as_ref(), 0);
        assert_eq!(
            std::str::from_utf8(&r).unwrap(),
            "v3:s:scan:likelihood:2001:db8::1"
        );
        assert_eq!(n.parse(&r), k);
        // Plain Redis keys stay plain, including ones that merely look structured.
        assert_eq!(n.parse(b"key:000001"), Key::new(0, 0, false, b"key:000001"));
        assert_eq!(n.parse(b"v9:s:x:y:z"), Key::new(0, 0, false, b"v9:s:x:y:z"));
        let undeclared = Key::new(5, 6, false, &[0, 255]);
        let r = n.render(undeclared.as_ref(), 0);
        assert_eq!(std::str::from_utf8(&r).unwrap(), "v5:s:o6:0x00ff");
        assert_eq!(n.parse(&r), undeclared);
    }
}
