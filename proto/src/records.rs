//! Durable records: rkyv archives in CRC-protected frames.
//!
//! A frame is `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`. Write-ahead logs and
//! checkpoints are sequences of frames. The top bit of the length marks a *compact* WAL frame:
//! the common operations (increments, sets, pushes, pops) are logged millions of times a second,
//! and a compact layout ([`CompactOp`]) costs a fraction of an rkyv serialisation while decoding
//! to the same [`WalRecord`]. Compact frames are written with varint fields (the next bit of the
//! length says so); frames of the earlier fixed little-endian layout are still read.
//! [`FrameReader`] yields records until the bytes end; a frame that is cut short, fails its CRC
//! or does not validate as an archive ends the sequence and is reported with its offset, so
//! recovery can truncate the file there and never accepts a torn tail as data.

use rkyv::rancor::Error as RkyvError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// Frame header size: length + CRC.
pub const FRAME_HEADER: usize = 8;
/// A record larger than this is treated as corruption.
pub const MAX_RECORD: usize = 256 << 20;

/// A stored value: the durable twin of the store's in-memory value.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ValueRec {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Vec<u8>>),
}

/// A store key: vertex, object, scope and the object's own key bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyRec {
    pub vertex: u32,
    pub object: u32,
    pub per_flow: bool,
    pub sub: Vec<u8>,
}

/// One operation as applied by a shard.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct OpRec {
    pub code: i32,
    pub key: KeyRec,
    pub num: i64,
    pub val: ValueRec,
    pub val2: ValueRec,
    pub clock: u64,
    pub instance: u32,
    pub op_index: u32,
    pub flags: u32,
}

/// One write-ahead log record: an operation that changed a shard's state.
///
/// `result` is set where re-execution could not reproduce it (non-deterministic values).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub lsn: u64,
    pub client: u64,
    pub seq: u64,
    pub op: OpRec,
    pub result: ValueRec,
}

/// The last operation a shard applied for one client: the shard's "TS" entry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsRec {
    pub client: u64,
    pub seq: u64,
    pub clock: u64,
}

/// One logged update result, kept while its packet's clock is in flight.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClockLogRec {
    pub clock: u64,
    pub op_index: u32,
    pub result: ValueRec,
}

/// The pieces of a checkpoint file, in order: `Header`, `Ts`, `Declare`*, `Entry`*, `Footer`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CheckpointRecord {
    Header {
        shard: u32,
        shards: u32,
        /// Every WAL record with `lsn <= lsn` is reflected in this checkpoint.
        lsn: u64,
        created_unix_ms: u64,
    },
    Ts(Vec<TsRec>),
    Declare {
        vertex: u32,
        object: u32,
        name: String,
        kind: u32,
    },
    Entry {
        key: KeyRec,
        value: ValueRec,
        /// Owning instance + 1; 0 = no owner.
        owner: u32,
        log: Vec<ClockLogRec>,
    },
    /// Written last; a checkpoint without a footer is incomplete and ignored.
    Footer {
        entries: u64,
    },
}

/// Why a record could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("serialising a record failed: {0}")]
    Serialize(String),
    #[error("record of {0} bytes exceeds the {MAX_RECORD}-byte limit")]
    TooLarge(usize),
}

/// Where and why a sequence of frames stopped being valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record at byte {offset}: {reason}")]
pub struct Torn {
    /// Byte offset of the first byte that is not part of a valid frame.
    pub offset: usize,
    pub reason: TornReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TornReason {
    #[error("frame header cut short")]
    ShortHeader,
    #[error("payload cut short ({have} of {need} bytes)")]
    ShortPayload { have: usize, need: usize },
    #[error("implausible length {0}")]
    BadLength(usize),
    #[error("CRC mismatch")]
    Crc,
    #[error("payload is not a valid archive")]
    Invalid,
}

/// Length-field bit marking a compact WAL frame.
pub const COMPACT_BIT: u32 = 1 << 31;
/// Length-field bit marking a compact frame in the varint layout (with [`COMPACT_BIT`]).
pub const VARINT_BIT: u32 = 1 << 30;

/// CRC of a varint compact payload. The layout is part of the checksum, so a flipped
/// [`VARINT_BIT`] cannot make a fixed-layout payload pass for a varint one.
fn varint_crc(payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b"v");
    h.update(payload);
    h.finalize()
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A frame's layout, from its length field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Rkyv,
    Fixed,
    Varint,
}

/// One operation in the compact WAL layout: everything an [`OpRec`] holds except `val2`, with
/// `val` limited to nil, an integer or bytes, and no logged result. Operations that need more
/// take the rkyv path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactOp<'a> {
    pub lsn: u64,
    pub client: u64,
    pub seq: u64,
    pub code: u8,
    pub vertex: u16,
    pub object: u16,
    pub per_flow: bool,
    pub sub: &'a [u8],
    pub num: i64,
    pub val: CompactVal<'a>,
    pub clock: u64,
    pub instance: u32,
    pub op_index: u32,
    pub flags: u32,
}

/// The `val` of a [`CompactOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactVal<'a> {
    Nil,
    Int(i64),
    Bytes(&'a [u8]),
}

/// Fixed part of a compact payload: lsn, client, seq, num, clock (8 each), instance, op_index,
/// flags (4 each), vertex, object, sub length (2 each), code, kind (1 each).
const COMPACT_FIXED: usize = 5 * 8 + 3 * 4 + 3 * 2 + 2;

impl CompactOp<'_> {
    /// Whether `sub` fits the compact layout's 16-bit length.
    pub fn fits(sub: &[u8]) -> bool {
        sub.len() <= usize::from(u16::MAX)
    }

    /// Appends this operation to `out` as one compact frame: every number a LEB128 varint
    /// (signed ones zigzagged), then code, kind, key and value. Most fields are small (an
    /// increment of 1, clock 0 outside a chain, low instance and object ids), so a frame takes
    /// about half the bytes of the fixed layout; the WAL's write into the page cache is most
    /// of a loaded shard's time, and it scales with those bytes.
    ///
    /// # Panics
    /// If `sub` does not fit (see [`CompactOp::fits`]) or `val` exceeds [`MAX_RECORD`]; callers
    /// check first.
    pub fn append(&self, out: &mut Vec<u8>) {
        use prost::encoding::encode_varint;
        assert!(Self::fits(self.sub), "compact record key too long");
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        for v in [
            self.lsn,
            self.client,
            self.seq,
            zigzag(self.num),
            self.clock,
        ] {
            encode_varint(v, out);
        }
        for v in [self.instance, self.op_index, self.flags] {
            encode_varint(u64::from(v), out);
        }
        for v in [self.vertex, self.object, self.sub.len() as u16] {
            encode_varint(u64::from(v), out);
        }
        out.extend_from_slice(&[self.code, self.kind()]);
        out.extend_from_slice(self.sub);
        match self.val {
            CompactVal::Nil => {}
            CompactVal::Int(i) => encode_varint(zigzag(i), out),
            CompactVal::Bytes(b) => {
                encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
        }
        let len = out.len() - start - FRAME_HEADER;
        assert!(len <= MAX_RECORD, "compact record too large");
        let crc = varint_crc(&out[start + FRAME_HEADER..]);
        out[start..start + 4]
            .copy_from_slice(&(len as u32 | COMPACT_BIT | VARINT_BIT).to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    fn kind(&self) -> u8 {
        let kind = match self.val {
            CompactVal::Nil => 0u8,
            CompactVal::Int(_) => 1,
            CompactVal::Bytes(_) => 2,
        };
        kind | (self.per_flow as u8) << 7
    }

    /// Decodes a varint compact payload (after its CRC was checked); `None` unless it is
    /// exactly one well-formed operation.
    fn decode_varint(p: &[u8]) -> Option<WalRecord> {
        use prost::encoding::decode_varint;
        let mut b = p;
        let mut n = || decode_varint(&mut b).ok();
        let (lsn, client, seq, num, clock) = (n()?, n()?, n()?, unzigzag(n()?), n()?);
        let small = |v: u64| u32::try_from(v).ok();
        let (instance, op_index, flags) = (small(n()?)?, small(n()?)?, small(n()?)?);
        let short = |v: u64| u16::try_from(v).ok();
        let (vertex, object, sub_len) = (short(n()?)?, short(n()?)?, short(n()?)?);
        let (&code, rest) = b.split_first()?;
        let (&kind, rest) = rest.split_first()?;
        let sub = rest.get(..usize::from(sub_len))?;
        let mut rest = &rest[usize::from(sub_len)..];
        let val = match kind & 0x7f {
            0 => ValueRec::Nil,
            1 => ValueRec::Int(unzigzag(decode_varint(&mut rest).ok()?)),
            2 => {
                let n = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let v = rest.get(..n)?.to_vec();
                rest = &rest[n..];
                ValueRec::Bytes(v)
            }
            _ => return None,
        };
        if !rest.is_empty() {
            return None;
        }
        Some(WalRecord {
            lsn,
            client,
            seq,
            op: OpRec {
                code: i32::from(code),
                key: KeyRec {
                    vertex: u32::from(vertex),
                    object: u32::from(object),
                    per_flow: kind & 0x80 != 0,
                    sub: sub.to_vec(),
                },
                num,
                val,
                val2: ValueRec::Nil,
                clock,
                instance,
                op_index,
                flags,
            },
            result: ValueRec::Nil,
        })
    }

    /// Appends this operation as one frame of the earlier fixed layout, which logs written
    /// before varints hold (tests check they still read).
    #[cfg(test)]
    fn append_fixed(&self, out: &mut Vec<u8>) {
        assert!(Self::fits(self.sub), "compact record key too long");
        let val_len = match self.val {
            CompactVal::Nil => 0,
            CompactVal::Int(_) => 8,
            CompactVal::Bytes(b) => 4 + b.len(),
        };
        let len = COMPACT_FIXED + self.sub.len() + val_len;
        assert!(len <= MAX_RECORD, "compact record too large");
        let start = out.len();
        out.reserve(FRAME_HEADER + len);
        out.extend_from_slice(&(len as u32 | COMPACT_BIT).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for v in [self.lsn, self.client, self.seq, self.num as u64, self.clock] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.instance, self.op_index, self.flags] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.vertex, self.object, self.sub.len() as u16] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.code, self.kind()]);
        out.extend_from_slice(self.sub);
        match self.val {
            CompactVal::Nil => {}
            CompactVal::Int(i) => out.extend_from_slice(&i.to_le_bytes()),
            CompactVal::Bytes(b) => {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
        let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes a fixed-layout compact payload (after its CRC was checked).
    fn decode_fixed(p: &[u8]) -> Option<WalRecord> {
        let fixed = p.get(..COMPACT_FIXED)?;
        let u64_at = |i: usize| u64::from_le_bytes(fixed[i..i + 8].try_into().expect("8"));
        let u32_at = |i: usize| u32::from_le_bytes(fixed[i..i + 4].try_into().expect("4"));
        let u16_at = |i: usize| u16::from_le_bytes(fixed[i..i + 2].try_into().expect("2"));
        let sub_len = usize::from(u16_at(56));
        let (code, kind) = (fixed[58], fixed[59]);
        let rest = &p[COMPACT_FIXED..];
        let sub = rest.get(..sub_len)?;
        let rest = &rest[sub_len..];
        let val = match kind & 0x7f {
            0 if rest.is_empty() => ValueRec::Nil,
            1 if rest.len() == 8 => ValueRec::Int(i64::from_le_bytes(rest.try_into().expect("8"))),
            2 if rest.len() >= 4 => {
                let n = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
                if rest.len() != 4 + n {
                    return None;
                }
                ValueRec::Bytes(rest[4..].to_vec())
            }
            _ => return None,
        };
        Some(WalRecord {
            lsn: u64_at(0),
            client: u64_at(8),
            seq: u64_at(16),
            op: OpRec {
                code: i32::from(code),
                key: KeyRec {
                    vertex: u32::from(u16_at(52)),
                    object: u32::from(u16_at(54)),
                    per_flow: kind & 0x80 != 0,
                    sub: sub.to_vec(),
                },
                num: u64_at(24) as i64,
                val,
                val2: ValueRec::Nil,
                clock: u64_at(32),
                instance: u32_at(40),
                op_index: u32_at(44),
                flags: u32_at(48),
            },
            result: ValueRec::Nil,
        })
    }
}

/// Serialises records into frames, reusing its scratch buffer between records.
#[derive(Default)]
pub struct FrameWriter {
    scratch: AlignedVec,
}

impl FrameWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one framed record to `out`.
    pub fn append<T>(&mut self, value: &T, out: &mut Vec<u8>) -> Result<(), RecordError>
    where
        T: for<'a> Serialize<
            rkyv::api::high::HighSerializer<
                AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                RkyvError,
            >,
        >,
    {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let bytes = rkyv::api::high::to_bytes_in::<_, RkyvError>(value, scratch)
            .map_err(|e| RecordError::Serialize(e.to_string()))?;
        if bytes.len() > MAX_RECORD {
            let n = bytes.len();
            self.scratch = bytes;
            return Err(RecordError::TooLarge(n));
        }
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        out.extend_from_slice(&bytes);
        self.scratch = bytes;
        Ok(())
    }
}

/// Reads framed records from a byte slice.
pub struct FrameReader<'a> {
    data: &'a [u8],
    pos: usize,
    aligned: AlignedVec,
    torn: Option<Torn>,
}

impl<'a> FrameReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            aligned: AlignedVec::new(),
            torn: None,
        }
    }

    /// Offset just past the last valid frame returned so far.
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// Why reading stopped before the end of the data, if it did.
    pub fn torn(&self) -> Option<&Torn> {
        self.torn.as_ref()
    }

    /// The next frame's payload after its length and CRC were checked, with its layout.
    fn next_frame(&mut self) -> Option<(Layout, &'a [u8])> {
        if self.torn.is_some() || self.pos == self.data.len() {
            return None;
        }
        let rest = &self.data[self.pos..];
        let fail = |reason| Torn {
            offset: self.pos,
            reason,
        };
        if rest.len() < FRAME_HEADER {
            self.torn = Some(fail(TornReason::ShortHeader));
            return None;
        }
        let raw = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        // VARINT_BIT without COMPACT_BIT stays in the length: implausible, like any other
        // length above MAX_RECORD.
        let (layout, len) = match (raw & COMPACT_BIT != 0, raw & VARINT_BIT != 0) {
            (false, _) => (Layout::Rkyv, raw),
            (true, false) => (Layout::Fixed, raw & !COMPACT_BIT),
            (true, true) => (Layout::Varint, raw & !(COMPACT_BIT | VARINT_BIT)),
        };
        let len = len as usize;
        if len == 0 || len > MAX_RECORD {
            self.torn = Some(fail(TornReason::BadLength(len)));
            return None;
        }
        if rest.len() < FRAME_HEADER + len {
            self.torn = Some(fail(TornReason::ShortPayload {
                have: rest.len() - FRAME_HEADER,
                need: len,
            }));
            return None;
        }
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        let sum = match layout {
            Layout::Varint => varint_crc(payload),
            Layout::Rkyv | Layout::Fixed => crc32fast::hash(payload),
        };
        if sum != crc {
            self.torn = Some(fail(TornReason::Crc));
            return None;
        }
        Some((layout, payload))
    }

    fn invalid(&mut self) {
        self.torn = Some(Torn {
            offset: self.pos,
            reason: TornReason::Invalid,
        });
    }

    /// The next record; `None` at the end of the data or at the first invalid frame (see
    /// [`FrameReader::torn`]). Compact frames are not records of any type but [`WalRecord`]
    /// (read those with [`FrameReader::next_wal`]) and count as invalid here.
    pub fn next_record<T>(&mut self) -> Option<T>
    where
        T: Archive,
        T::Archived: for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, RkyvError>>
            + Deserialize<T, rkyv::api::high::HighDeserializer<RkyvError>>,
    {
        let (layout, payload) = self.next_frame()?;
        if layout != Layout::Rkyv {
            self.invalid();
            return None;
        }
        self.aligned.clear();
        self.aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<T, RkyvError>(&self.aligned) {
            Ok(v) => {
                self.pos += FRAME_HEADER + payload.len();
                Some(v)
            }
            Err(_) => {
                self.invalid();
                None
            }
        }
    }

    /// The next write-ahead log record, from an rkyv or a compact frame.
    pub fn next_wal(&mut self) -> Option<WalRecord> {
        let (layout, payload) = self.next_frame()?;
        let rec = match layout {
            Layout::Varint => CompactOp::decode_varint(payload),
            Layout::Fixed => CompactOp::decode_fixed(payload),
            Layout::Rkyv => {
                self.aligned.clear();
                self.aligned.extend_from_slice(payload);
                rkyv::from_bytes::<WalRecord, RkyvError>(&self.aligned).ok()
            }
        };
        match rec {
            Some(r) => {
                self.pos += FRAME_HEADER + payload.len();
                Some(r)
            }
            None => {
                self.invalid();
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(lsn: u64) -> WalRecord {
        WalRecord {
            lsn,
            client: 3,
            seq: lsn * 2,
            op: OpRec {
                code: 4,
                key: KeyRec {
                    vertex: 1,
                    object: 2,
                    per_flow: lsn.is_multiple_of(2),
                    sub: vec![lsn as u8; (lsn % 40) as usize],
                },
                num: -(lsn as i64),
                val: ValueRec::List(vec![vec![1, 2], vec![]]),
                val2: ValueRec::Nil,
                clock: lsn << 8,
                instance: 5,
                op_index: 1,
                flags: 8,
            },
            result: ValueRec::Int(lsn as i64),
        }
    }

    fn encode_all(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut w = FrameWriter::new();
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            w.append(&rec(i), &mut out).unwrap();
            ends.push(out.len());
        }
        (out, ends)
    }

    #[test]
    fn round_trip() {
        let (bytes, _) = encode_all(50);
        let mut r = FrameReader::new(&bytes);
        let mut n = 0;
        while let Some(x) = r.next_record::<WalRecord>() {
            assert_eq!(x, rec(n));
            n += 1;
        }
        assert_eq!(n, 50);
        assert!(r.torn().is_none());
        assert_eq!(r.valid_len(), bytes.len());
    }

    #[test]
    fn truncation_at_every_byte_keeps_exactly_the_complete_prefix() {
        let (bytes, ends) = encode_all(6);
        for cut in 0..=bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            let mut got = 0u64;
            while let Some(x) = r.next_record::<WalRecord>() {
                assert_eq!(x, rec(got));
                got += 1;
            }
            let complete = ends.iter().filter(|&&e| e <= cut).count() as u64;
            assert_eq!(got, complete, "cut at {cut}");
            let valid = if complete == 0 {
                0
            } else {
                ends[complete as usize - 1]
            };
            assert_eq!(r.valid_len(), valid);
            assert_eq!(r.torn().is_some(), cut != valid, "cut at {cut}");
        }
    }

    fn compact(lsn: u64) -> (CompactOp<'static>, WalRecord) {
        let val = match lsn % 3 {
            0 => CompactVal::Nil,
            1 => CompactVal::Int(-(lsn as i64)),
            _ => CompactVal::Bytes(b"value bytes"),
        };
        let c = CompactOp {
            lsn,
            client: 1 << 63 | lsn,
            seq: lsn * 3,
            code: 4,
            vertex: 7,
            object: 9,
            per_flow: lsn.is_multiple_of(2),
            sub: b"key:000042",
            num: -5,
            val,
            clock: lsn << 20,
            instance: 3,
            op_index: 2,
            flags: 9,
        };
        let rec = WalRecord {
            lsn,
            client: c.client,
            seq: c.seq,
            op: OpRec {
                code: 4,
                key: KeyRec {
                    vertex: 7,
                    object: 9,
                    per_flow: c.per_flow,
                    sub: b"key:000042".to_vec(),
                },
                num: -5,
                val: match val {
                    CompactVal::Nil => ValueRec::Nil,
                    CompactVal::Int(i) => ValueRec::Int(i),
                    CompactVal::Bytes(b) => ValueRec::Bytes(b.to_vec()),
                },
                val2: ValueRec::Nil,
                clock: c.clock,
                instance: 3,
                op_index: 2,
                flags: 9,
            },
            result: ValueRec::Nil,
        };
        (c, rec)
    }

    /// rkyv and compact frames (both layouts) interleaved, as a WAL holds them.
    fn mixed(n: u64) -> (Vec<u8>, Vec<usize>, Vec<WalRecord>) {
        let mut w = FrameWriter::new();
        let (mut out, mut ends, mut recs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            if i % 3 != 2 {
                let (c, r) = compact(i);
                if i % 3 == 0 {
                    c.append(&mut out);
                } else {
                    c.append_fixed(&mut out);
                }
                recs.push(r);
            } else {
                w.append(&rec(i), &mut out).unwrap();
                recs.push(rec(i));
            }
            ends.push(out.len());
        }
        (out, ends, recs)
    }

    #[test]
    fn compact_frames_decode_to_the_same_record_and_tear_like_others() {
        let (bytes, ends, recs) = mixed(7);
        for cut in 0..=bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(x) = r.next_wal() {
                got.push(x);
            }
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(got, recs[..complete], "cut at {cut}");
            let valid = if complete == 0 { 0 } else { ends[complete - 1] };
            assert_eq!(r.valid_len(), valid);
            assert_eq!(r.torn().is_some(), cut != valid, "cut at {cut}");
        }
        // A reader of another record type refuses a compact frame instead of misreading it.
        let (c, _) = compact(0);
        let mut b = Vec::new();
        c.append(&mut b);
        let mut r = FrameReader::new(&b);
        assert!(r.next_record::<WalRecord>().is_none());
        assert_eq!(r.torn().unwrap().reason, TornReason::Invalid);
    }

    proptest! {
        #[test]
        fn varint_frames_carry_any_field_values(
            lsn in any::<u64>(), client in any::<u64>(), seq in any::<u64>(), num in any::<i64>(),
            clock in any::<u64>(), instance in any::<u32>(), op_index in any::<u32>(),
            flags in any::<u32>(), vertex in any::<u16>(), object in any::<u16>(),
            code in any::<u8>(), per_flow in any::<bool>(),
            sub in proptest::collection::vec(any::<u8>(), 0..64),
            int in any::<i64>(), bytes in proptest::collection::vec(any::<u8>(), 0..64),
            which in 0u8..3,
        ) {
            let val = match which {
                0 => CompactVal::Nil,
                1 => CompactVal::Int(int),
                _ => CompactVal::Bytes(&bytes),
            };
            let c = CompactOp {
                lsn, client, seq, code, vertex, object, per_flow, sub: &sub, num, val, clock,
                instance, op_index, flags,
            };
            let (mut varint, mut fixed) = (Vec::new(), Vec::new());
            c.append(&mut varint);
            c.append_fixed(&mut fixed);
            let a = FrameReader::new(&varint).next_wal();
            let b = FrameReader::new(&fixed).next_wal();
            prop_assert!(a.is_some());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_flipped_byte_is_never_accepted_as_different_data(pos in 0usize..10_000, bit in 0u8..8) {
            let (mut bytes, _) = encode_all(5);
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let mut r = FrameReader::new(&bytes);
            let mut i = 0;
            while let Some(x) = r.next_record::<WalRecord>() {
                // Whatever is returned must be exactly what was written.
                prop_assert_eq!(x, rec(i));
                i += 1;
            }
            prop_assert!(i < 5, "a corrupted stream must stop early");
        }

        #[test]
        fn a_flipped_byte_in_mixed_frames_is_never_accepted(pos in 0usize..10_000, bit in 0u8..8) {
            let (mut bytes, _, recs) = mixed(6);
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let mut r = FrameReader::new(&bytes);
            let mut i = 0;
            while let Some(x) = r.next_wal() {
                prop_assert_eq!(&x, &recs[i]);
                i += 1;
            }
            prop_assert!(i < 6, "a corrupted stream must stop early");
        }
    }
}
