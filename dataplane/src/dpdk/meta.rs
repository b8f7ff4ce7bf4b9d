//! What travels with a packet under DPDK: the CHC metadata plus what the embedded runtime
//! keeps beside a packet (weight, capture time, wire length, route), in the mbuf's private
//! area between lcores of one host, and in an NSH header between hosts.
//!
//! The NSH header is the one of [`ChcMeta::write_nsh`] (RFC 8300, MD type 2, CHC's
//! experimental metadata class) with four more context TLVs of the same class appended and
//! the length field grown to cover them: the packet's share of the root's weight (needed
//! when an off-path tap splits it), its capture time and wire length (what NFs see as the
//! packet's time and size), its target (vertex and instance, chosen by the sender's
//! splitter) and the port it leaves the chain by. Readers that do not know these TLVs skip
//! them, as RFC 8300 asks.

use chc_proto::meta::{ChcMeta, MetaFlags, CHC_MD_CLASS, ETHERTYPE_NSH, NSH_LEN};

/// Bytes of the private area the runtime uses (a multiple of 8, as DPDK requires).
pub const PRIVATE_LEN: u16 = 56;

/// Outer Ethernet header in front of NSH on a link.
pub const OUTER_ETH_LEN: usize = 14;

const TLV_WEIGHT: u8 = 5;
const TLV_TIME: u8 = 6;
const TLV_WIRE_LEN: u8 = 7;
const TLV_TARGET: u8 = 8;
const TLV_EGRESS: u8 = 9;

/// NSH header length with CHC's extra TLVs.
pub const NSH_FULL_LEN: usize = NSH_LEN + (4 + 8) + (4 + 8) + (4 + 4) + (4 + 4) + (4 + 4);

/// Bytes pushed in front of a frame that crosses a link.
pub const ENCAP_LEN: usize = OUTER_ETH_LEN + NSH_FULL_LEN;

/// Everything the runtime knows about a packet in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PktMeta {
    pub chc: ChcMeta,
    /// The share of the root's weight this copy carries.
    pub weight: u64,
    /// Capture time, ns since the epoch (what NFs see as the packet's time).
    pub ts_ns: u64,
    /// TSC when the packet entered this host's part of the chain (latency figures).
    pub t0: u64,
    /// Length on the wire (at least the captured length).
    pub wire_len: u32,
    /// Vertex index the packet is going to.
    pub vertex: u16,
    /// Instance of that vertex.
    pub instance: u16,
    /// Index of the chain port the packet leaves by.
    pub egress: u16,
}

impl PktMeta {
    /// Writes the metadata into a private area of at least [`PRIVATE_LEN`] bytes.
    pub fn store(&self, area: &mut [u8]) {
        let a = &mut area[..PRIVATE_LEN as usize];
        a[0..8].copy_from_slice(&self.chc.clock.to_le_bytes());
        a[8..16].copy_from_slice(&self.weight.to_le_bytes());
        a[16..24].copy_from_slice(&self.ts_ns.to_le_bytes());
        a[24..32].copy_from_slice(&self.t0.to_le_bytes());
        a[32..36].copy_from_slice(&self.chc.vector.to_le_bytes());
        a[36..40].copy_from_slice(&self.chc.flags.0.to_le_bytes());
        a[40..44].copy_from_slice(&self.wire_len.to_le_bytes());
        a[44..46].copy_from_slice(&self.chc.clone_id.to_le_bytes());
        a[46..48].copy_from_slice(&self.vertex.to_le_bytes());
        a[48..50].copy_from_slice(&self.instance.to_le_bytes());
        a[50..52].copy_from_slice(&self.egress.to_le_bytes());
    }

    /// Reads what [`PktMeta::store`] wrote; a too-short area reads as all zeros.
    pub fn load(area: &[u8]) -> PktMeta {
        let Some(a) = area.get(..PRIVATE_LEN as usize) else {
            return PktMeta::default();
        };
        let u64_at = |o: usize| u64::from_le_bytes(a[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(a[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes([a[o], a[o + 1]]);
        PktMeta {
            chc: ChcMeta {
                clock: u64_at(0),
                vector: u32_at(32),
                flags: MetaFlags(u32_at(36)),
                clone_id: u16_at(44),
            },
            weight: u64_at(8),
            ts_ns: u64_at(16),
            t0: u64_at(24),
            wire_len: u32_at(40),
            vertex: u16_at(46),
            instance: u16_at(48),
            egress: u16_at(50),
        }
    }

    /// Writes the outer Ethernet header and the NSH header into `out[..ENCAP_LEN]`.
    /// `spi` names the service path (the chain's root id); the service index counts
    /// down from 255 with the target vertex.
    pub fn write_encap(&self, dst_mac: [u8; 6], src_mac: [u8; 6], spi: u32, out: &mut [u8]) {
        let out = &mut out[..ENCAP_LEN];
        out[0..6].copy_from_slice(&dst_mac);
        out[6..12].copy_from_slice(&src_mac);
        out[12..14].copy_from_slice(&ETHERTYPE_NSH.to_be_bytes());
        let nsh = &mut out[OUTER_ETH_LEN..];
        let si = 255u8.saturating_sub(self.vertex.min(254) as u8);
        self.chc.write_nsh(spi, si, nsh);
        let mut p = NSH_LEN;
        let mut tlv = |ty: u8, val: &[u8]| {
            nsh[p..p + 2].copy_from_slice(&CHC_MD_CLASS.to_be_bytes());
            nsh[p + 2] = ty;
            nsh[p + 3] = val.len() as u8;
            nsh[p + 4..p + 4 + val.len()].copy_from_slice(val);
            p += 4 + val.len();
        };
        tlv(TLV_WEIGHT, &self.weight.to_be_bytes());
        tlv(TLV_TIME, &self.ts_ns.to_be_bytes());
        tlv(TLV_WIRE_LEN, &self.wire_len.to_be_bytes());
        tlv(
            TLV_TARGET,
            &(u32::from(self.vertex) << 16 | u32::from(self.instance)).to_be_bytes(),
        );
        tlv(TLV_EGRESS, &u32::from(self.egress).to_be_bytes());
        // Grow the base header's length (6 bits, in 4-byte words) to cover the new TLVs.
        let words = (NSH_FULL_LEN / 4) as u16;
        let b0 = u16::from_be_bytes([nsh[0], nsh[1]]);
        nsh[0..2].copy_from_slice(&((b0 & !0x3f) | words).to_be_bytes());
    }

    /// Parses a frame that arrived on a link: outer Ethernet, NSH with CHC's TLVs. Returns
    /// the metadata and how many bytes to strip to get the inner frame back.
    pub fn read_encap(frame: &[u8]) -> Result<(PktMeta, usize), EncapError> {
        if frame.len() < OUTER_ETH_LEN {
            return Err(EncapError::NotNsh);
        }
        if frame[12..14] != ETHERTYPE_NSH.to_be_bytes() {
            return Err(EncapError::NotNsh);
        }
        let nsh = &frame[OUTER_ETH_LEN..];
        let (chc, len, _next) =
            ChcMeta::read_nsh(nsh).map_err(|e| EncapError::Nsh(e.to_string()))?;
        let mut m = PktMeta {
            chc,
            ..PktMeta::default()
        };
        let mut seen = 0u16;
        let mut p = 8;
        while p + 4 <= len {
            let class = u16::from_be_bytes([nsh[p], nsh[p + 1]]);
            let ty = nsh[p + 2];
            let vlen = usize::from(nsh[p + 3] & 0x7f);
            let padded = vlen.div_ceil(4) * 4;
            if p + 4 + padded > len {
                return Err(EncapError::Nsh("TLV runs past the header".into()));
            }
            let v = &nsh[p + 4..p + 4 + vlen];
            if class == CHC_MD_CLASS {
                let n8 = || v.try_into().map(u64::from_be_bytes).ok();
                let n4 = || v.try_into().map(u32::from_be_bytes).ok();
                let ok = match ty {
                    TLV_WEIGHT => n8().map(|x| m.weight = x),
                    TLV_TIME => n8().map(|x| m.ts_ns = x),
                    TLV_WIRE_LEN => n4().map(|x| m.wire_len = x),
                    TLV_TARGET => n4().map(|x| {
                        m.vertex = (x >> 16) as u16;
                        m.instance = x as u16;
                    }),
                    TLV_EGRESS => n4().map(|x| m.egress = x as u16),
                    _ => Some(()),
                };
                if ok.is_none() {
                    return Err(EncapError::Nsh(format!("CHC TLV {ty} has length {vlen}")));
                }
                if (TLV_WEIGHT..=TLV_EGRESS).contains(&ty) {
                    seen |= 1 << ty;
                }
            }
            p += 4 + padded;
        }
        for ty in TLV_WEIGHT..=TLV_EGRESS {
            if seen & (1 << ty) == 0 {
                return Err(EncapError::Nsh(format!("CHC TLV {ty} missing")));
            }
        }
        Ok((m, OUTER_ETH_LEN + len))
    }
}

/// Why a frame from a link was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    #[error("not an NSH frame")]
    NotNsh,
    #[error("bad NSH header: {0}")]
    Nsh(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta() -> impl Strategy<Value = PktMeta> {
        (
            (any::<u64>(), any::<u32>(), any::<u32>(), any::<u16>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
            (0u16..1000, any::<u16>(), any::<u16>()),
        )
            .prop_map(
                |((clock, vector, flags, clone_id), (weight, ts_ns, t0, wire_len), (v, i, e))| {
                    PktMeta {
                        chc: ChcMeta {
                            clock,
                            vector,
                            flags: MetaFlags(flags),
                            clone_id,
                        },
                        weight,
                        ts_ns,
                        t0,
                        wire_len,
                        vertex: v,
                        instance: i,
                        egress: e,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn private_area_round_trip(m in meta()) {
            let mut area = [0u8; PRIVATE_LEN as usize];
            m.store(&mut area);
            prop_assert_eq!(PktMeta::load(&area), m);
        }

        #[test]
        fn nsh_round_trip_keeps_everything_but_local_time(m in meta(), inner in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut frame = vec![0u8; ENCAP_LEN];
            m.write_encap([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 1, &mut frame);
            frame.extend_from_slice(&inner);
            let (got, strip) = PktMeta::read_encap(&frame).unwrap();
            prop_assert_eq!(strip, ENCAP_LEN);
            prop_assert_eq!(&frame[strip..], &inner[..]);
            // The TSC is local to a host and does not travel.
            prop_assert_eq!(got, PktMeta { t0: 0, ..m });
            // The standard CHC reader still understands the header.
            let (chc, len, _) = ChcMeta::read_nsh(&frame[OUTER_ETH_LEN..]).unwrap();
            prop_assert_eq!(chc, m.chc);
            prop_assert_eq!(len, NSH_FULL_LEN);
        }

        #[test]
        fn garbage_is_refused_without_panics(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            let _ = PktMeta::read_encap(&bytes);
        }
    }

    #[test]
    fn truncated_or_foreign_frames_are_refused() {
        let m = PktMeta {
            chc: ChcMeta {
                clock: 9,
                ..Default::default()
            },
            weight: 1 << 31,
            ..Default::default()
        };
        let mut frame = vec![0u8; ENCAP_LEN];
        m.write_encap([0xff; 6], [2, 0, 0, 0, 0, 1], 1, &mut frame);
        for cut in 0..ENCAP_LEN {
            assert!(PktMeta::read_encap(&frame[..cut]).is_err(), "cut {cut}");
        }
        let mut ipv4 = frame.clone();
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(PktMeta::read_encap(&ipv4), Err(EncapError::NotNsh));
        // Headroom: the encapsulation fits DPDK's default 128 bytes.
        assert!(ENCAP_LEN <= usize::from(chc_dpdk::HEADROOM));
    }
}
