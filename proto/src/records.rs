//! Durable records: rkyv archives in CRC-protected frames.
//!
//! A frame is `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`. Write-ahead logs and
//! checkpoints are sequences of frames. The top bit of the length marks a *compact* WAL frame:
//! the common operations (increments, sets, pushes, pops) are logged millions of times a second,
//! and a compact layout ([`CompactOp`]) costs a fraction of an rkyv serialisation while decoding
//! to the same [`WalRecord`]. Compact frames are written with varint fields (the next bit of the
//! length says so); frames of the earlier fixed little-endian layout are still read. A third bit
//! marks a *run*: the compact operations one client had logged in a row, with consecutive LSNs,
//! in one frame under one CRC, each field written only where it differs from the previous
//! operation's ([`RunWriter`]). A run is whole or torn as one frame.
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

/// Length-field bit marking a run of compact operations (with [`COMPACT_BIT`] and
/// [`VARINT_BIT`]; see [`RunWriter`]). A reader that predates runs sees a length above
/// [`MAX_RECORD`] and stops there instead of misreading the frame.
pub const RUN_BIT: u32 = 1 << 29;

/// CRC of a varint compact payload (`tag` b"v") or a run payload (b"r"). The layout is part
/// of the checksum, so a flipped [`VARINT_BIT`] or [`RUN_BIT`] cannot make one layout's
/// payload pass for another's.
fn layout_crc(tag: &[u8; 1], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(tag);
    h.update(payload);
    h.finalize()
}

/// Fills in the header of the frame that starts at `start` and runs to the end of `out`:
/// its length with the layout's `bits`, and the CRC of its payload under `tag`.
///
/// # Panics
/// If the payload exceeds [`MAX_RECORD`].
fn seal_frame(out: &mut [u8], start: usize, bits: u32, tag: &[u8; 1]) {
    let len = out.len() - start - FRAME_HEADER;
    assert!(len <= MAX_RECORD, "compact record too large");
    let crc = layout_crc(tag, &out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32 | bits).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `v` as a LEB128 varint (what `prost::encoding::encode_varint` writes, without its
/// generic buffer handling: most values here take one byte).
#[inline]
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// Appends a compact record's value (the inverse of [`compact_value`]).
fn put_compact_value(out: &mut Vec<u8>, val: CompactVal<'_>) {
    match val {
        CompactVal::Nil => {}
        CompactVal::Int(i) => put_varint(out, zigzag(i)),
        CompactVal::Bytes(b) => {
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
    }
}

/// The value of a compact record (single or in a run): its kind's low bits say which, and
/// `b` is advanced past it.
fn compact_value(kind: u8, b: &mut &[u8]) -> Option<ValueRec> {
    use prost::encoding::decode_varint;
    Some(match kind & 0x7f {
        0 => ValueRec::Nil,
        1 => ValueRec::Int(unzigzag(decode_varint(b).ok()?)),
        2 => {
            let n = usize::try_from(decode_varint(b).ok()?).ok()?;
            let v = b.get(..n)?.to_vec();
            *b = &b[n..];
            ValueRec::Bytes(v)
        }
        _ => return None,
    })
}

/// A frame's layout, from its length field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Rkyv,
    Fixed,
    Varint,
    Run,
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
            put_varint(out, v);
        }
        for v in [self.instance, self.op_index, self.flags] {
            put_varint(out, u64::from(v));
        }
        for v in [self.vertex, self.object, self.sub.len() as u16] {
            put_varint(out, u64::from(v));
        }
        out.extend_from_slice(&[self.code, self.kind()]);
        out.extend_from_slice(self.sub);
        put_compact_value(out, self.val);
        seal_frame(out, start, COMPACT_BIT | VARINT_BIT, b"v");
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
        let val = compact_value(kind, &mut rest)?;
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

/// Run operation fields that follow the mask byte only when its bit is set; otherwise the
/// field is the previous operation's (for the sequence number: one more than the previous
/// one, or 0 after 0).
const RUN_SEQ: u8 = 1;
const RUN_CODE: u8 = 1 << 1;
const RUN_VERTEX_OBJECT: u8 = 1 << 2;
const RUN_NUM: u8 = 1 << 3;
const RUN_CLOCK: u8 = 1 << 4;
const RUN_INSTANCE: u8 = 1 << 5;
const RUN_FLAGS: u8 = 1 << 6;
/// A run is closed before its payload would pass this many bytes.
const RUN_BYTES: usize = 64 << 10;

/// The fields of a run's previous operation that the next one may repeat.
#[derive(Default, Clone, Copy)]
struct RunFields {
    seq: u64,
    code: u8,
    kind: u8,
    vertex: u16,
    object: u16,
    num: i64,
    clock: u64,
    instance: u32,
    op_index: u32,
    flags: u32,
}

impl RunFields {
    fn next_seq(&self) -> u64 {
        if self.seq == 0 {
            0
        } else {
            self.seq.wrapping_add(1)
        }
    }
}

/// Writes compact operations as runs: consecutive operations of one client with consecutive
/// LSNs share one frame (one header, one CRC, the LSN and client once), and each operation
/// writes a mask byte, only the fields that differ from the previous operation's, its key
/// and its value. A batch of 32 increments of 8-byte keys takes ~10 bytes per operation
/// instead of ~36 as single compact frames, and one CRC instead of 32.
///
/// The open run's frame header is filled in by [`RunWriter::finish`], which must be called
/// before `out` is used for anything else (another record, or handing the bytes over): the
/// writer remembers where in `out` its open frame starts.
#[derive(Default)]
pub struct RunWriter {
    /// Offset in `out` of the open run's frame header.
    open: Option<usize>,
    client: u64,
    /// The LSN that continues the open run (none past `u64::MAX`).
    next_lsn: Option<u64>,
    prev: RunFields,
}

impl RunWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `op` to the open run if it continues it (same client, the next LSN, room
    /// left), else closes the open run and starts one.
    ///
    /// # Panics
    /// If `op.sub` does not fit (see [`CompactOp::fits`]) or the run would exceed
    /// [`MAX_RECORD`]; callers check first.
    pub fn push(&mut self, op: &CompactOp<'_>, out: &mut Vec<u8>) {
        assert!(CompactOp::fits(op.sub), "compact record key too long");
        let val_len = match op.val {
            CompactVal::Bytes(b) => b.len(),
            CompactVal::Nil | CompactVal::Int(_) => 0,
        };
        let joins = self.open.is_some_and(|start| {
            debug_assert!(
                start + FRAME_HEADER <= out.len(),
                "run buffer changed under it"
            );
            self.client == op.client
                && self.next_lsn == Some(op.lsn)
                && out.len() - start + op.sub.len() + val_len < RUN_BYTES
        });
        if !joins {
            self.finish(out);
            self.open = Some(out.len());
            out.extend_from_slice(&[0; FRAME_HEADER]);
            put_varint(out, op.lsn);
            put_varint(out, op.client);
            self.client = op.client;
            self.prev = RunFields::default();
        }
        self.next_lsn = op.lsn.checked_add(1);
        let p = &mut self.prev;
        let kind = op.kind();
        let mut mask = 0u8;
        let m = out.len();
        out.push(0);
        if op.seq != p.next_seq() {
            mask |= RUN_SEQ;
            put_varint(out, op.seq);
        }
        if op.code != p.code || kind != p.kind {
            mask |= RUN_CODE;
            out.extend_from_slice(&[op.code, kind]);
        }
        if op.vertex != p.vertex || op.object != p.object {
            mask |= RUN_VERTEX_OBJECT;
            put_varint(out, u64::from(op.vertex));
            put_varint(out, u64::from(op.object));
        }
        if op.num != p.num {
            mask |= RUN_NUM;
            put_varint(out, zigzag(op.num));
        }
        if op.clock != p.clock {
            mask |= RUN_CLOCK;
            put_varint(out, op.clock);
        }
        if op.instance != p.instance || op.op_index != p.op_index {
            mask |= RUN_INSTANCE;
            put_varint(out, u64::from(op.instance));
            put_varint(out, u64::from(op.op_index));
        }
        if op.flags != p.flags {
            mask |= RUN_FLAGS;
            put_varint(out, u64::from(op.flags));
        }
        out[m] = mask;
        put_varint(out, op.sub.len() as u64);
        out.extend_from_slice(op.sub);
        put_compact_value(out, op.val);
        *p = RunFields {
            seq: op.seq,
            code: op.code,
            kind,
            vertex: op.vertex,
            object: op.object,
            num: op.num,
            clock: op.clock,
            instance: op.instance,
            op_index: op.op_index,
            flags: op.flags,
        };
    }

    /// Closes the open run, if any: its frame header (length, CRC) is written.
    pub fn finish(&mut self, out: &mut [u8]) {
        let Some(start) = self.open.take() else {
            return;
        };
        seal_frame(out, start, COMPACT_BIT | VARINT_BIT | RUN_BIT, b"r");
    }

    /// Whether a run is open (its frame is not finished yet).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// Decodes a run payload (after its CRC was checked) into `into`; `None` unless the whole
/// payload is well-formed operations (at least one).
fn decode_run(p: &[u8], into: &mut std::collections::VecDeque<WalRecord>) -> Option<()> {
    use prost::encoding::decode_varint;
    let mut b = p;
    let first_lsn = decode_varint(&mut b).ok()?;
    let client = decode_varint(&mut b).ok()?;
    let small = |v: u64| u32::try_from(v).ok();
    let short = |v: u64| u16::try_from(v).ok();
    let mut f = RunFields::default();
    let mut i = 0u64;
    while !b.is_empty() {
        let (&mask, rest) = b.split_first()?;
        b = rest;
        if mask & 0x80 != 0 {
            return None;
        }
        let mut n = || decode_varint(&mut b).ok();
        f.seq = if mask & RUN_SEQ != 0 {
            n()?
        } else {
            f.next_seq()
        };
        if mask & RUN_CODE != 0 {
            let (&[code, kind], rest) = b.split_first_chunk::<2>()?;
            b = rest;
            f.code = code;
            f.kind = kind;
        }
        let mut n = || decode_varint(&mut b).ok();
        if mask & RUN_VERTEX_OBJECT != 0 {
            f.vertex = short(n()?)?;
            f.object = short(n()?)?;
        }
        if mask & RUN_NUM != 0 {
            f.num = unzigzag(n()?);
        }
        if mask & RUN_CLOCK != 0 {
            f.clock = n()?;
        }
        if mask & RUN_INSTANCE != 0 {
            f.instance = small(n()?)?;
            f.op_index = small(n()?)?;
        }
        if mask & RUN_FLAGS != 0 {
            f.flags = small(n()?)?;
        }
        let sub_len = usize::from(short(n()?)?);
        let sub = b.get(..sub_len)?.to_vec();
        b = &b[sub_len..];
        let val = compact_value(f.kind, &mut b)?;
        into.push_back(WalRecord {
            lsn: first_lsn.checked_add(i)?,
            client,
            seq: f.seq,
            op: OpRec {
                code: i32::from(f.code),
                key: KeyRec {
                    vertex: u32::from(f.vertex),
                    object: u32::from(f.object),
                    per_flow: f.kind & 0x80 != 0,
                    sub,
                },
                num: f.num,
                val,
                val2: ValueRec::Nil,
                clock: f.clock,
                instance: f.instance,
                op_index: f.op_index,
                flags: f.flags,
            },
            result: ValueRec::Nil,
        });
        i += 1;
    }
    (i > 0).then_some(())
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
    /// Records of the current run not yet returned.
    run: std::collections::VecDeque<WalRecord>,
}

impl<'a> FrameReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            data,
            pos: 0,
            aligned: AlignedVec::new(),
            torn: None,
            run: std::collections::VecDeque::new(),
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
        // RUN_BIT without both others stays in the length too.
        const RUN: u32 = COMPACT_BIT | VARINT_BIT | RUN_BIT;
        let (layout, len) = match (raw & COMPACT_BIT != 0, raw & VARINT_BIT != 0) {
            (false, _) => (Layout::Rkyv, raw),
            (true, false) => (Layout::Fixed, raw & !COMPACT_BIT),
            (true, true) if raw & RUN == RUN => (Layout::Run, raw & !RUN),
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
            Layout::Varint => layout_crc(b"v", payload),
            Layout::Run => layout_crc(b"r", payload),
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

    /// The next write-ahead log record, from an rkyv or a compact frame or a run. A run is
    /// decoded whole before its first record is returned (a run that does not decode is
    /// invalid as a whole); [`FrameReader::valid_len`] then points past the run.
    pub fn next_wal(&mut self) -> Option<WalRecord> {
        if let Some(r) = self.run.pop_front() {
            return Some(r);
        }
        let (layout, payload) = self.next_frame()?;
        let rec = match layout {
            Layout::Varint => CompactOp::decode_varint(payload),
            Layout::Fixed => CompactOp::decode_fixed(payload),
            Layout::Run => {
                if decode_run(payload, &mut self.run).is_some() {
                    self.run.pop_front()
                } else {
                    self.run.clear();
                    None
                }
            }
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

    /// Compact operations of two clients with consecutive LSNs, most fields repeating, as
    /// runs, with an rkyv record and an explicit close in between: (bytes, frame ends, the
    /// records, how many records each frame holds).
    fn runs(n: u64) -> (Vec<u8>, Vec<usize>, Vec<WalRecord>, Vec<usize>) {
        let mut w = FrameWriter::new();
        let mut run = RunWriter::new();
        let (mut out, mut ends, mut recs, mut sizes) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut in_run = 0;
        let close = |run: &mut RunWriter,
                     out: &mut Vec<u8>,
                     ends: &mut Vec<usize>,
                     sizes: &mut Vec<usize>,
                     in_run: &mut usize| {
            if run.is_open() {
                run.finish(out);
                ends.push(out.len());
                sizes.push(*in_run);
                *in_run = 0;
            }
        };
        for i in 0..n {
            if i % 11 == 10 {
                close(&mut run, &mut out, &mut ends, &mut sizes, &mut in_run);
                w.append(&rec(i), &mut out).unwrap();
                ends.push(out.len());
                sizes.push(1);
                recs.push(rec(i));
                continue;
            }
            let (mut c, mut r) = compact(i);
            // Runs of increments: sequence numbers counting up, the rest repeating.
            c.seq = if i % 7 == 3 { 0 } else { 100 + i };
            c.client = if (i / 12) % 2 == 0 { 1 } else { u64::MAX };
            c.clock = if i % 5 == 0 { i << 20 } else { 0 };
            c.per_flow = i % 13 == 0;
            r.seq = c.seq;
            r.client = c.client;
            r.op.clock = c.clock;
            r.op.key.per_flow = c.per_flow;
            if run.is_open() && (run.client != c.client) {
                close(&mut run, &mut out, &mut ends, &mut sizes, &mut in_run);
            }
            run.push(&c, &mut out);
            in_run += 1;
            recs.push(r);
            if i % 17 == 16 {
                close(&mut run, &mut out, &mut ends, &mut sizes, &mut in_run);
            }
        }
        close(&mut run, &mut out, &mut ends, &mut sizes, &mut in_run);
        (out, ends, recs, sizes)
    }

    #[test]
    fn runs_decode_to_the_same_records_and_tear_whole() {
        let (bytes, ends, recs, sizes) = runs(60);
        assert!(
            sizes.iter().any(|&s| s > 5),
            "some runs hold many operations"
        );
        // Whole: every record, in order, and valid_len is a frame end after each.
        let mut r = FrameReader::new(&bytes);
        let mut got = Vec::new();
        while let Some(x) = r.next_wal() {
            got.push(x);
            assert!(ends.contains(&r.valid_len()));
        }
        assert_eq!(got, recs);
        assert!(r.torn().is_none());
        // Cut at every byte: exactly the whole frames' records come back.
        for cut in 0..=bytes.len() {
            let mut r = FrameReader::new(&bytes[..cut]);
            let mut got = Vec::new();
            while let Some(x) = r.next_wal() {
                got.push(x);
            }
            let frames = ends.iter().filter(|&&e| e <= cut).count();
            let complete: usize = sizes[..frames].iter().sum();
            assert_eq!(got, recs[..complete], "cut at {cut}");
            let valid = if frames == 0 { 0 } else { ends[frames - 1] };
            assert_eq!(r.valid_len(), valid);
            assert_eq!(r.torn().is_some(), cut != valid, "cut at {cut}");
        }
        // A run costs far fewer bytes than the same operations as single frames.
        let mut single = Vec::new();
        let mut run = RunWriter::new();
        let mut batch = Vec::new();
        for i in 0..32u64 {
            let c = CompactOp {
                lsn: 1000 + i,
                client: 0x0B0B_0065,
                seq: 5000 + i,
                code: 4,
                vertex: 1,
                object: 1,
                per_flow: false,
                sub: b"8 bytes!",
                num: 1,
                val: CompactVal::Nil,
                clock: 0,
                instance: 0,
                op_index: 0,
                flags: 1,
            };
            c.append(&mut single);
            run.push(&c, &mut batch);
        }
        run.finish(&mut batch);
        assert!(
            batch.len() * 3 < single.len(),
            "{} vs {}",
            batch.len(),
            single.len()
        );
        let mut a = FrameReader::new(&single);
        let mut b = FrameReader::new(&batch);
        let a: Vec<_> = std::iter::from_fn(|| a.next_wal()).collect();
        let b: Vec<_> = std::iter::from_fn(|| b.next_wal()).collect();
        assert_eq!(a.len(), 32);
        assert_eq!(a, b);
        // A run is not a record of another type either.
        let mut r = FrameReader::new(&batch);
        assert!(r.next_record::<WalRecord>().is_none());
        assert_eq!(r.torn().unwrap().reason, TornReason::Invalid);
    }

    proptest! {
        #[test]
        fn runs_carry_any_field_values(
            ops in proptest::collection::vec(((
                any::<u64>(), any::<i64>(), any::<u64>(), any::<u32>(), any::<u32>(),
                any::<u32>()), (any::<u16>(), any::<u16>(), any::<u8>(), any::<bool>(),
                proptest::collection::vec(any::<u8>(), 0..24), any::<i64>(), 0u8..3),
            ), 1..12),
            lsn in any::<u64>(), client in any::<u64>(),
        ) {
            let bytes: Vec<Vec<u8>> = ops.iter().map(|o| o.1.4.iter().rev().copied().collect()).collect();
            let mut run = RunWriter::new();
            let (mut out, mut single) = (Vec::new(), Vec::new());
            for (i, (a, b)) in ops.iter().enumerate() {
                let val = match b.6 {
                    0 => CompactVal::Nil,
                    1 => CompactVal::Int(b.5),
                    _ => CompactVal::Bytes(&bytes[i]),
                };
                let c = CompactOp {
                    lsn: lsn.wrapping_add(i as u64), client, seq: a.0, num: a.1, clock: a.2,
                    instance: a.3, op_index: a.4, flags: a.5, vertex: b.0, object: b.1,
                    code: b.2, per_flow: b.3, sub: &b.4, val,
                };
                run.push(&c, &mut out);
                c.append(&mut single);
            }
            run.finish(&mut out);
            let mut a = FrameReader::new(&single);
            let mut b = FrameReader::new(&out);
            let a: Vec<_> = std::iter::from_fn(|| a.next_wal()).collect();
            let b: Vec<_> = std::iter::from_fn(|| b.next_wal()).collect();
            // An LSN past u64::MAX ends a run: what wrapped starts a new one.
            prop_assert_eq!(a.len(), ops.len());
            prop_assert_eq!(a, b);
        }

        #[test]
        fn a_flipped_byte_in_runs_is_never_accepted(pos in 0usize..100_000, bit in 0u8..8) {
            let (mut bytes, _, recs, _) = runs(40);
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            let mut r = FrameReader::new(&bytes);
            let mut i = 0;
            while let Some(x) = r.next_wal() {
                prop_assert_eq!(&x, &recs[i]);
                i += 1;
            }
            prop_assert!(i < recs.len(), "a corrupted stream must stop early");
        }

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
