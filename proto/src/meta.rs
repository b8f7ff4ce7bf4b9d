//! Per-packet CHC metadata and its NSH encoding (RFC 8300, MD type 2).
//!
//! Inside one process the metadata travels beside the packet; between hosts it is carried in an
//! NSH header (EtherType 0x894F) with four context TLVs of an experimental metadata class:
//! logical clock, 32-bit update vector, flags and clone id. The last NF strips the header, so a
//! packet leaving the chain is byte-identical to one that never crossed a host boundary.

/// EtherType of NSH over Ethernet.
pub const ETHERTYPE_NSH: u16 = 0x894F;
/// NSH next-protocol value for an Ethernet frame.
pub const NSH_NEXT_ETHERNET: u8 = 0x03;
/// Metadata class used for CHC's TLVs (RFC 8300 §9.1.4 experimental range).
pub const CHC_MD_CLASS: u16 = 0xFFF6;
/// Encoded NSH length in bytes: base + service path headers and four TLVs.
pub const NSH_LEN: usize = 8 + (4 + 8) + (4 + 4) + (4 + 4) + (4 + 4);

const TLV_CLOCK: u8 = 1;
const TLV_VECTOR: u8 = 2;
const TLV_FLAGS: u8 = 3;
const TLV_CLONE: u8 = 4;

/// Flag bits carried with a packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MetaFlags(pub u32);

impl MetaFlags {
    /// The packet is replayed from the root's log.
    pub const REPLAY: u32 = 1;
    /// The last packet of a moved flow sent to the old instance.
    pub const LAST: u32 = 2;
    /// The first packet of a moved flow sent to the new instance.
    pub const FIRST: u32 = 4;
    /// The last replayed packet (end of a replay).
    pub const LAST_REPLAYED: u32 = 8;
    /// A replayed packet that reached a host replacing a failed one: from there on it is
    /// processed in full (events, every branch), since nothing there remembers it.
    pub const REDO: u32 = 16;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    pub fn set(&mut self, bit: u32) {
        self.0 |= bit;
    }
    pub fn clear(&mut self, bit: u32) {
        self.0 &= !bit;
    }
}

/// The metadata CHC attaches to every packet in the chain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChcMeta {
    /// Logical clock assigned by the root (root id in the high bits).
    pub clock: u64,
    /// XOR of `instance << 16 | object` over every counted state update so far.
    pub vector: u32,
    pub flags: MetaFlags,
    /// For replayed packets: the clone (or failover instance) that must process it; 0 = none.
    pub clone_id: u16,
}

/// Why NSH bytes could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NshError {
    #[error("NSH header truncated: {0} bytes")]
    Truncated(usize),
    #[error("unsupported NSH version {0}")]
    Version(u8),
    #[error("NSH MD type {0} is not 2")]
    MdType(u8),
    #[error("NSH length field {0} words is inconsistent")]
    Length(usize),
    #[error("CHC metadata TLV {0} missing or malformed")]
    Tlv(u8),
}

impl ChcMeta {
    /// Writes the NSH header (without the outer Ethernet header) into `out[..NSH_LEN]`.
    ///
    /// `spi`/`si` name the service path and index, as a classifier would set them.
    pub fn write_nsh(&self, spi: u32, si: u8, out: &mut [u8]) {
        let out = &mut out[..NSH_LEN];
        let words = (NSH_LEN / 4) as u16;
        // Ver=0, O=0, U=0, TTL=63, Length=words; U=0, MD type=2; next protocol.
        let ttl: u16 = 63;
        let b0 = (ttl << 6) | words;
        out[0..2].copy_from_slice(&b0.to_be_bytes());
        out[2] = 0x02;
        out[3] = NSH_NEXT_ETHERNET;
        out[4..8].copy_from_slice(&((spi & 0x00ff_ffff) << 8 | u32::from(si)).to_be_bytes());
        let mut p = 8;
        let mut tlv = |ty: u8, val: &[u8]| {
            out[p..p + 2].copy_from_slice(&CHC_MD_CLASS.to_be_bytes());
            out[p + 2] = ty;
            out[p + 3] = val.len() as u8;
            out[p + 4..p + 4 + val.len()].copy_from_slice(val);
            p += 4 + val.len();
        };
        tlv(TLV_CLOCK, &self.clock.to_be_bytes());
        tlv(TLV_VECTOR, &self.vector.to_be_bytes());
        tlv(TLV_FLAGS, &self.flags.0.to_be_bytes());
        tlv(TLV_CLONE, &u32::from(self.clone_id).to_be_bytes());
    }

    /// Parses an NSH header; returns the metadata, the header length and the next protocol.
    ///
    /// Unknown TLVs (other classes or types) are skipped, as RFC 8300 asks.
    pub fn read_nsh(buf: &[u8]) -> Result<(ChcMeta, usize, u8), NshError> {
        if buf.len() < 8 {
            return Err(NshError::Truncated(buf.len()));
        }
        let ver = buf[0] >> 6;
        if ver != 0 {
            return Err(NshError::Version(ver));
        }
        let words = (u16::from_be_bytes([buf[0], buf[1]]) & 0x3f) as usize;
        let md = buf[2] & 0x0f;
        if md != 2 {
            return Err(NshError::MdType(md));
        }
        let len = words * 4;
        if len < 8 {
            return Err(NshError::Length(words));
        }
        if buf.len() < len {
            return Err(NshError::Truncated(buf.len()));
        }
        let next = buf[3];
        let mut meta = ChcMeta::default();
        let mut seen = 0u8;
        let mut p = 8;
        while p + 4 <= len {
            let class = u16::from_be_bytes([buf[p], buf[p + 1]]);
            let ty = buf[p + 2];
            let vlen = (buf[p + 3] & 0x7f) as usize;
            let padded = vlen.div_ceil(4) * 4;
            if p + 4 + padded > len {
                return Err(NshError::Length(words));
            }
            let v = &buf[p + 4..p + 4 + vlen];
            if class == CHC_MD_CLASS {
                match (ty, vlen) {
                    (TLV_CLOCK, 8) => meta.clock = u64::from_be_bytes(v.try_into().expect("8")),
                    (TLV_VECTOR, 4) => meta.vector = u32::from_be_bytes(v.try_into().expect("4")),
                    (TLV_FLAGS, 4) => {
                        meta.flags = MetaFlags(u32::from_be_bytes(v.try_into().expect("4")))
                    }
                    (TLV_CLONE, 4) => {
                        meta.clone_id = u32::from_be_bytes(v.try_into().expect("4")) as u16
                    }
                    (TLV_CLOCK..=TLV_CLONE, _) => return Err(NshError::Tlv(ty)),
                    _ => {}
                }
                if (TLV_CLOCK..=TLV_CLONE).contains(&ty) {
                    seen |= 1 << ty;
                }
            }
            p += 4 + padded;
        }
        for ty in [TLV_CLOCK, TLV_VECTOR, TLV_FLAGS, TLV_CLONE] {
            if seen & (1 << ty) == 0 {
                return Err(NshError::Tlv(ty));
            }
        }
        Ok((meta, len, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn nsh_round_trip(clock: u64, vector: u32, flags: u32, clone_id: u16, spi in 0u32..1<<24, si: u8) {
            let m = ChcMeta { clock, vector, flags: MetaFlags(flags), clone_id };
            let mut buf = [0u8; NSH_LEN + 3];
            m.write_nsh(spi, si, &mut buf);
            let (got, len, next) = ChcMeta::read_nsh(&buf).unwrap();
            prop_assert_eq!(got, m);
            prop_assert_eq!(len, NSH_LEN);
            prop_assert_eq!(next, NSH_NEXT_ETHERNET);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = ChcMeta::read_nsh(&bytes);
        }
    }

    #[test]
    fn truncated_header_is_an_error() {
        let m = ChcMeta {
            clock: 5,
            ..Default::default()
        };
        let mut buf = [0u8; NSH_LEN];
        m.write_nsh(1, 255, &mut buf);
        for cut in 0..NSH_LEN {
            assert!(ChcMeta::read_nsh(&buf[..cut]).is_err(), "cut {cut}");
        }
    }
}
