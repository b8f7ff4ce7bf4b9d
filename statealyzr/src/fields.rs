//! Names of packet header fields.
//!
//! A read of packet memory is named after the struct member it accesses: clang names a field's
//! address after the field (`%ip_src = getelementptr %struct.ip, ...`), and the program's debug
//! info lists every member name, which disambiguates LLVM's uniquing suffixes (`%saddr3`).
//! Well-known members map to the five-tuple names; others are reported by their own name. Reads
//! at constant offsets of a libpcap Ethernet frame are named by the offset.

use crate::ir::{Kind, Op, Program, ValId};

/// The five-tuple (and MAC) name of a header member, if it is a well-known one.
pub fn canonical(member: &str) -> Option<&'static str> {
    Some(match member {
        "ip_src" | "saddr" | "ip6_src" | "sin_addr" | "sin6_addr" | "src_ip" | "srcip" | "sip"
        | "src_addr" | "ip_saddr" | "ipv4_src" | "ipv6_src" => "src_ip",
        "ip_dst" | "daddr" | "ip6_dst" | "dst_ip" | "dstip" | "dip" | "dst_addr" | "ip_daddr"
        | "ipv4_dst" | "ipv6_dst" => "dst_ip",
        "th_sport" | "uh_sport" | "source" | "sport" | "src_port" | "srcport" | "sin_port"
        | "sin6_port" => "src_port",
        "th_dport" | "uh_dport" | "dest" | "dport" | "dst_port" | "dstport" => "dst_port",
        "ip_p" | "protocol" | "ip6_un1_nxt" | "ip6_nxt" | "nexthdr" | "proto" | "ip_proto"
        | "next_proto_id" => "proto",
        "ether_shost" | "h_source" | "src_mac" => "src_mac",
        "ether_dhost" | "h_dest" | "dst_mac" => "dst_mac",
        _ => return None,
    })
}

/// The member name an SSA name stands for, if it is one.
fn member_of(p: &Program, name: &str) -> Option<String> {
    if p.di.member_names.contains(name) {
        return Some(name.to_owned());
    }
    let trimmed = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < name.len() && p.di.member_names.contains(trimmed) {
        return Some(trimmed.to_owned());
    }
    None
}

/// Names the header field that a pointer into a packet addresses.
///
/// Walks the address back through casts and GEPs, collecting member names from the outermost
/// struct inwards; the first well-known one wins (`ip->ip_src.s_addr` is `src_ip`), otherwise
/// the innermost member is reported by name. With no member names, a constant byte offset into
/// an Ethernet frame is named by its position.
/// `canonical_only` restricts the answer to the well-known names (for copies of packet data,
/// where only the header struct a read goes through says it is a header field).
pub fn field_of_address(
    p: &Program,
    addr: &Op,
    ethernet: bool,
    canonical_only: bool,
) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    let mut offset: Option<i64> = Some(0);
    let mut cur: Option<ValId> = addr.val();
    let mut guard = 0;
    while let Some(v) = cur {
        guard += 1;
        if guard > 64 {
            break;
        }
        let Some(i) = p.inst_of_val(v) else { break };
        let ins = &p.insts[i as usize];
        match &ins.kind {
            Kind::Gep {
                base,
                idx,
                elem_size,
                ..
            } => {
                if idx.len() >= 2 {
                    if let Some(m) = ins.name.as_deref().and_then(|n| member_of(p, n)) {
                        names.push(m);
                    }
                    offset = None;
                } else if let (Some(o), Some(Op::Int(k)), Some(sz)) =
                    (offset, idx.first(), elem_size)
                {
                    offset = Some(o + k * i64::from(*sz));
                } else {
                    offset = None;
                }
                cur = base.val();
            }
            Kind::Compute { ops } if ops.len() == 1 => cur = ops[0].val(),
            _ => break,
        }
    }
    // `names` runs innermost first.
    if let Some(c) = names.iter().rev().find_map(|n| canonical(n)) {
        return Some(c.to_owned());
    }
    if canonical_only {
        return None;
    }
    if let Some(n) = names.first() {
        return Some(n.clone());
    }
    match offset {
        Some(o) if ethernet && names.is_empty() => Some(ethernet_field(o)),
        Some(o) => Some(format!("pkt[+{o}]")),
        None => None,
    }
}

/// The field at a byte offset of an Ethernet frame carrying IPv4 without options.
fn ethernet_field(off: i64) -> String {
    match off {
        0..=5 => "dst_mac".into(),
        6..=11 => "src_mac".into(),
        12 | 13 => "ether_type".into(),
        23 => "proto".into(),
        26..=29 => "src_ip".into(),
        30..=33 => "dst_ip".into(),
        34 | 35 => "src_port".into(),
        36 | 37 => "dst_port".into(),
        o => format!("pkt[+{o}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonical("ip_src"), Some("src_ip"));
        assert_eq!(canonical("th_dport"), Some("dst_port"));
        assert_eq!(canonical("ip6_un1_nxt"), Some("proto"));
        assert_eq!(canonical("th_flags"), None);
        assert_eq!(ethernet_field(26), "src_ip");
        assert_eq!(ethernet_field(40), "pkt[+40]");
    }
}
