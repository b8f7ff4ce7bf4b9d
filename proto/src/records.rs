//! Durable records: rkyv archives in CRC-protected frames.
//!
//! A frame is `[payload length: u32 LE][crc32 of payload: u32 LE][payload]`. Write-ahead logs and
//! checkpoints are sequences of frames. [`FrameReader`] yields records until the bytes end; a
//! frame that is cut short, fails its CRC or does not validate as an archive ends the sequence
//! and is reported with its offset, so recovery can truncate the file there and never accepts a
//! torn tail as data.

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

    /// The next record; `None` at the end of the data or at the first invalid frame (see
    /// [`FrameReader::torn`]).
    pub fn next_record<T>(&mut self) -> Option<T>
    where
        T: Archive,
        T::Archived: for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, RkyvError>>
            + Deserialize<T, rkyv::api::high::HighDeserializer<RkyvError>>,
    {
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
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
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
        if crc32fast::hash(payload) != crc {
            self.torn = Some(fail(TornReason::Crc));
            return None;
        }
        self.aligned.clear();
        self.aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<T, RkyvError>(&self.aligned) {
            Ok(v) => {
                self.pos += FRAME_HEADER + len;
                Some(v)
            }
            Err(_) => {
                self.torn = Some(fail(TornReason::Invalid));
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

    proptest! {
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
    }
}
