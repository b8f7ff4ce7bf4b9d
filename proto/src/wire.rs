//! The store's wire protocol: generated prost messages plus framing.
//!
//! Frames are prost messages with a varint length prefix. A decoder that sees a frame longer
//! than its limit or bytes that do not decode reports an error; the server then closes that
//! connection and keeps serving the others.

use bytes::{Buf, BytesMut};
use prost::Message;

#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/chc.store.rs"));
}
pub use generated::*;

/// Protocol version spoken by this build, sent in [`Hello::version`]; the store refuses
/// any other. 2: lists travel in `List.packed`, which a version-1 reader would take for
/// empty lists. 3: an increment may carry further packets' clocks (`Op.more_clocks`), which a
/// version-2 store would ignore, applying one increment where the client counted several.
/// 4: the same for a run of clocks (`Op.more_run`), and commits for a run (`Commit.run`).
pub const PROTOCOL_VERSION: u32 = 4;

/// The longest run of clocks (`Op.more_run`) a store accepts in one operation. A list of
/// clocks is bounded by the frame's size; a run costs a few bytes whatever its length, and
/// the store keeps a record per clock.
pub const MAX_RUN: u32 = 1 << 16;

/// Default limit on one frame (bytes after the length prefix).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

/// Why a frame could not be taken from the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length prefix is not a valid varint")]
    BadLength,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// Takes one complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed; on success the frame's bytes are consumed.
/// The payload is split off as a frozen `Bytes`, so `bytes` fields of the decoded message
/// borrow it without copying.
pub fn take_frame<M: Message + Default>(
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<M>, FrameError> {
    let Some(payload) = take_payload(buf, max)? else {
        return Ok(None);
    };
    M::decode(payload)
        .map(Some)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// The payload of the next length-prefixed frame in `buf`, taken out of it; `None` when
/// more bytes are needed. A length above `max` is an error before anything is buffered.
fn take_payload(buf: &mut BytesMut, max: usize) -> Result<Option<bytes::Bytes>, FrameError> {
    let (len, prefix) = match peek_varint(buf) {
        Some(Ok(v)) => v,
        Some(Err(())) => return Err(FrameError::BadLength),
        None => return Ok(None),
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge {
            len: usize::try_from(len).unwrap_or(usize::MAX),
            max,
        });
    }
    let len = len as usize;
    if buf.len() < prefix + len {
        return Ok(None);
    }
    buf.advance(prefix);
    Ok(Some(buf.split_to(len).freeze()))
}

/// [`take_frame`] for a [`ClientFrame`], decoded into `frame` (whose `ops` vector is reused:
/// no allocation per frame). Returns `Ok(false)` when more bytes are needed.
///
/// A frame whose operations carry only scalar fields and `sub` (what clients send nearly
/// always) is decoded by hand, without prost's per-field dispatch and without growing a new
/// vector; anything else (a Hello, values, folded clocks, unknown or repeated-in-other-form
/// fields, anything malformed) is decoded by prost, so the result is prost's in every case.
pub fn take_client_frame(
    buf: &mut BytesMut,
    max: usize,
    frame: &mut ClientFrame,
) -> Result<bool, FrameError> {
    let Some(payload) = take_payload(buf, max)? else {
        return Ok(false);
    };
    decode_client_frame(payload, frame)
        .map(|()| true)
        .map_err(|e| FrameError::Decode(e.to_string()))
}

/// Decodes a [`ClientFrame`] payload into `frame`, as `ClientFrame::decode` would; see
/// [`take_client_frame`].
pub fn decode_client_frame(
    payload: bytes::Bytes,
    frame: &mut ClientFrame,
) -> Result<(), prost::DecodeError> {
    frame.hello = None;
    frame.ops.clear();
    if decode_plain_ops(&payload, &mut frame.ops).is_none() {
        frame.ops.clear();
        frame.merge(payload)?;
    }
    Ok(())
}

/// The hand decoder of [`decode_client_frame`]: `None` (leaving `ops` partly filled) for
/// anything it does not take, which is then left to prost.
fn decode_plain_ops(payload: &bytes::Bytes, ops: &mut Vec<Op>) -> Option<()> {
    /// prost's varint decoder behind a one-byte fast path (most fields are small).
    #[inline(always)]
    fn decode_varint(b: &mut &[u8]) -> Result<u64, prost::DecodeError> {
        match b.first() {
            Some(&x) if x < 0x80 => {
                *b = &b[1..];
                Ok(u64::from(x))
            }
            _ => prost::encoding::decode_varint(b),
        }
    }
    let whole: &[u8] = payload;
    let mut b = whole;
    while !b.is_empty() {
        // Field 2 (ops), length-delimited: key 0x12.
        if b[0] != 0x12 {
            return None;
        }
        b = &b[1..];
        let n = usize::try_from(decode_varint(&mut b).ok()?).ok()?;
        let mut m = b.get(..n)?;
        b = &b[n..];
        // Filled in place: an `Op` is ~200 bytes, not worth building and moving.
        ops.push(Op::default());
        let op = ops.last_mut()?;
        while !m.is_empty() {
            let key = decode_varint(&mut m).ok()?;
            // Field numbers 1-16 with their declared wire types only.
            if key > 0x7f && key != 16 << 3 {
                return None;
            }
            let (tag, wire_type) = (key >> 3, key & 7);
            if tag == 6 {
                if wire_type != 2 {
                    return None;
                }
                let n = usize::try_from(decode_varint(&mut m).ok()?).ok()?;
                let sub = m.get(..n)?;
                let start = sub.as_ptr() as usize - whole.as_ptr() as usize;
                op.sub = payload.slice(start..start + n);
                m = &m[n..];
                continue;
            }
            if wire_type != 0 {
                return None;
            }
            let v = decode_varint(&mut m).ok()?;
            match tag {
                1 => op.seq = v,
                2 => op.code = v as i32,
                3 => op.vertex = v as u32,
                4 => op.object = v as u32,
                5 => op.per_flow = v != 0,
                7 => op.num = ((v >> 1) as i64) ^ -((v & 1) as i64),
                10 => op.clock = v,
                11 => op.instance = v as u32,
                12 => op.op_index = v as u32,
                13 => op.flags = v as u32,
                16 => op.more_run = v as u32,
                _ => return None,
            }
        }
    }
    Some(())
}

/// Appends `msg` to `out` as one frame.
pub fn put_frame<M: Message>(msg: &M, out: &mut BytesMut) {
    let len = msg.encoded_len();
    out.reserve(len + 10);
    // Encoding into a BytesMut with reserved capacity cannot fail.
    let _ = msg.encode_length_delimited(out);
}

/// Reads a varint at the front of `buf` without consuming it: `(value, prefix length)`.
fn peek_varint(buf: &[u8]) -> Option<Result<(u64, usize), ()>> {
    let mut v: u64 = 0;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(Ok((v, i + 1)));
        }
    }
    if buf.len() >= 10 {
        Some(Err(()))
    } else {
        None
    }
}

impl Op {
    /// The (clock, op_index) of every packet's increment this operation carries: its own,
    /// then the folded ones (`more_clocks` with `more_op_index`, or the run of `more_run`).
    /// Lists of unequal length are cut to the shorter, as a zip would; the store refuses
    /// such an operation before it gets here.
    pub fn carried_clocks(&self) -> impl Iterator<Item = (u64, u32)> + Clone + '_ {
        let (first, index, run) = (self.clock, self.op_index, u64::from(self.more_run));
        std::iter::once((first, index))
            .chain(
                self.more_clocks
                    .iter()
                    .copied()
                    .zip(self.more_op_index.iter().copied()),
            )
            .chain((1..=run).map(move |i| (first.wrapping_add(i), index)))
    }

    /// The clock of the last packet's increment the operation carries.
    pub fn last_carried_clock(&self) -> u64 {
        if self.more_run > 0 {
            self.clock.wrapping_add(u64::from(self.more_run))
        } else {
            self.more_clocks.last().copied().unwrap_or(self.clock)
        }
    }

    /// Whether the operation carries other packets' increments besides its own.
    pub fn is_folded(&self) -> bool {
        self.more_run > 0 || !self.more_clocks.is_empty() || !self.more_op_index.is_empty()
    }

    /// How many packets' increments the operation carries (see [`Op::carried_clocks`]).
    pub fn carried(&self) -> usize {
        1 + self.more_clocks.len().min(self.more_op_index.len()) + self.more_run as usize
    }
}

impl Commit {
    /// Every clock this commit stands for (its own and its run's).
    pub fn clocks(&self) -> impl Iterator<Item = u64> {
        let first = self.clock;
        (0..=u64::from(self.run)).map(move |i| first.wrapping_add(i))
    }
}

impl Value {
    pub fn int(v: i64) -> Self {
        Value {
            kind: Some(value::Kind::Int(v)),
        }
    }
    pub fn bytes(b: impl Into<bytes::Bytes>) -> Self {
        Value {
            kind: Some(value::Kind::Bytes(b.into())),
        }
    }
    pub fn nil() -> Self {
        Value { kind: None }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self.kind {
            Some(value::Kind::Int(v)) => Some(v),
            _ => None,
        }
    }
    pub fn as_bytes(&self) -> Option<&bytes::Bytes> {
        match &self.kind {
            Some(value::Kind::Bytes(b)) => Some(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frame() -> ClientFrame {
        ClientFrame {
            hello: None,
            ops: vec![Op {
                seq: 7,
                code: OpCode::OpIncr as i32,
                vertex: 2,
                object: 3,
                per_flow: false,
                sub: bytes::Bytes::from_static(b"abc"),
                num: -5,
                val: None,
                val2: None,
                clock: 99,
                instance: 1,
                op_index: 0,
                flags: OpFlag::FlagNonblocking as u32,
                more_clocks: vec![100, 101],
                more_op_index: vec![0, 2],
                more_run: 0,
            }],
        }
    }

    #[test]
    fn frames_round_trip_in_pieces() {
        let f = sample_frame();
        let mut wire = BytesMut::new();
        put_frame(&f, &mut wire);
        put_frame(&f, &mut wire);
        let all = wire.freeze();
        // Feed one byte at a time: nothing decodes until a frame is complete.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(m) = take_frame::<ClientFrame>(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![f.clone(), f]);
        assert!(buf.is_empty());
    }

    #[test]
    fn client_frames_decode_as_prost_decodes_them() {
        let mut plain = sample_frame();
        plain.ops[0].more_clocks.clear();
        plain.ops[0].more_op_index.clear();
        plain.ops[0].more_run = 300;
        plain.ops.push(Op {
            seq: u64::MAX,
            code: -1,
            num: i64::MIN,
            sub: bytes::Bytes::from_static(b""),
            ..Default::default()
        });
        let mut with_val = plain.clone();
        with_val.ops[1].val = Some(Value::int(4));
        let with_hello = ClientFrame {
            hello: Some(Hello {
                client_id: 9,
                ..Default::default()
            }),
            ops: plain.ops.clone(),
        };
        let mut frame = ClientFrame::default();
        for f in [
            plain,
            with_val,
            sample_frame(),
            with_hello,
            ClientFrame::default(),
        ] {
            let mut wire = BytesMut::new();
            put_frame(&f, &mut wire);
            put_frame(&f, &mut wire);
            for _ in 0..2 {
                assert!(take_client_frame(&mut wire, DEFAULT_MAX_FRAME, &mut frame).unwrap());
                assert_eq!(frame, f);
            }
            assert!(!take_client_frame(&mut wire, DEFAULT_MAX_FRAME, &mut frame).unwrap());
        }
    }

    proptest::proptest! {
        /// Any bytes: the same frame or the same refusal as prost.
        #[test]
        fn any_client_frame_payload_decodes_as_prost_decodes_it(
            ops in proptest::collection::vec(
                (proptest::collection::vec(0u8..44, 0..8), proptest::collection::vec(proptest::arbitrary::any::<u64>(), 8)),
                0..4),
            noise in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..40),
            at in proptest::arbitrary::any::<usize>(),
        ) {
            // Mostly operations of the fields the hand decoder takes, some with any field
            // number below 20 (unknown and non-plain ones), sometimes raw noise spliced in.
            let mut payload = Vec::new();
            for (fields, vals) in &ops {
                let mut m = Vec::new();
                for (i, &f) in fields.iter().enumerate() {
                    let f = match f {
                        0..24 => [1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 6, 16][usize::from(f % 13)],
                        _ => f - 24,
                    };
                    let v = vals[i % vals.len()];
                    match f {
                        6 | 8 | 9 | 14 | 15 => {
                            m.push((f << 3) | 2);
                            let n = (v % 5) as usize;
                            m.push(n as u8);
                            m.extend(std::iter::repeat_n(0x08, n));
                        }
                        _ => {
                            prost::encoding::encode_varint(u64::from(f) << 3, &mut m);
                            prost::encoding::encode_varint(v >> (v % 64), &mut m);
                        }
                    }
                }
                payload.push(0x12);
                prost::encoding::encode_varint(m.len() as u64, &mut payload);
                payload.extend_from_slice(&m);
            }
            if noise.len() > 30 {
                let at = at % (payload.len() + 1);
                payload.splice(at..at, noise.iter().copied());
            }
            let payload = bytes::Bytes::from(payload);
            let want = ClientFrame::decode(payload.clone());
            let mut got = ClientFrame {
                hello: Some(Hello::default()),
                ops: vec![Op { seq: 1, ..Default::default() }],
            };
            let r = decode_client_frame(payload, &mut got);
            match want {
                Ok(w) => {
                    proptest::prop_assert!(r.is_ok());
                    proptest::prop_assert_eq!(got, w);
                }
                Err(_) => proptest::prop_assert!(r.is_err()),
            }
        }
    }

    #[test]
    fn an_operation_carries_its_clocks_in_order() {
        let listed = &sample_frame().ops[0];
        let got: Vec<_> = listed.carried_clocks().collect();
        assert_eq!(got, vec![(99, 0), (100, 0), (101, 2)]);
        assert_eq!(listed.carried(), 3);
        let run = Op {
            clock: 7,
            op_index: 3,
            more_run: 2,
            ..Default::default()
        };
        let got: Vec<_> = run.carried_clocks().collect();
        assert_eq!(got, vec![(7, 3), (8, 3), (9, 3)]);
        assert_eq!(run.carried(), 3);
        let c = Commit {
            clock: 40,
            id: 1,
            run: 2,
        };
        assert_eq!(c.clocks().collect::<Vec<_>>(), vec![40, 41, 42]);
        let one = Commit { run: 0, ..c };
        assert_eq!(one.clocks().collect::<Vec<_>>(), vec![40]);
    }

    #[test]
    fn oversize_and_bad_prefix_are_errors() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(
            take_frame::<ClientFrame>(&mut buf, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0xffu8; 12][..]);
        assert_eq!(
            take_frame::<ClientFrame>(&mut buf, 1024),
            Err(FrameError::BadLength)
        );
        // A complete frame whose body is garbage.
        let mut buf = BytesMut::from(&[3u8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            take_frame::<ClientFrame>(&mut buf, 1024),
            Err(FrameError::Decode(_))
        ));
    }
}
