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
pub const PROTOCOL_VERSION: u32 = 3;

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
    let payload = buf.split_to(len).freeze();
    M::decode(payload)
        .map(Some)
        .map_err(|e| FrameError::Decode(e.to_string()))
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
