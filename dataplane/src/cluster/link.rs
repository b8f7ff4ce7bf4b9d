//! Links between the processes of a chain: length-prefixed binary frames over TCP.
//!
//! A packet on a link carries its CHC metadata (clock, update vector, flags, clone id), the
//! weight of its copy, its ingress sequence number and its capture time and lengths. Frames:
//! packets, deletes, events, watermarks (clocks the root has retired, so receivers may forget
//! them), end-of-input, and the few control messages recovery needs. A frame that does not
//! decode closes the link with a clear error; nothing is guessed.

use chc_proto::meta::{ChcMeta, MetaFlags};
use std::io::{self, Read, Write};

/// Frames larger than this are refused.
pub const MAX_FRAME: usize = 64 << 20;

/// Who is on the other end of a link (sent first on every connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// The traffic source (the manager's input reader).
    Source,
    Root,
    /// An NF instance: vertex id, instance index.
    Instance(u16, u16),
    /// The egress that writes the chain's output (the manager).
    Sink,
    Manager,
}

/// A packet on a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkPkt {
    pub meta: ChcMeta,
    pub weight: u64,
    /// Ingress sequence number (position in the input; lets a recovering root skip what its
    /// predecessor already forwarded).
    pub seq: u64,
    pub ts_ns: u64,
    pub wire_len: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Peer),
    Packets(Vec<LinkPkt>),
    /// (clock, weight, vector) of copies that left the chain or were dropped.
    Deletes(Vec<(u64, u64, u32)>),
    /// JSON lines for the events log.
    Events(Vec<String>),
    /// Clocks of root `u16` below `u64` are settled: never replayed again.
    Watermark(u16, u64),
    /// The sender has nothing more to send.
    Eof(Peer),
    /// Source -> root: the highest ingress sequence number the root forwarded.
    Ack(u64),
    /// Manager -> root: replay the log, marked for vertex `u16`.
    Replay(u16),
    /// Root -> entry instance: report the highest ingress sequence number received from the
    /// previous root (after its connection closed).
    QuerySeq,
    /// Entry instance -> root: that number.
    SeqReport(u64),
    /// Replacement instance of vertex `u16` -> root: the replay went through (every upstream
    /// instance re-did its part); clocks it covered may now be retired in the store.
    ReplayDone(u16),
    /// Root -> manager: the log is empty and input ended.
    Drained,
}

/// The I/O error is said in the message, not chained as a source as well (it would be
/// printed twice).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link I/O: {0}")]
    Io(io::Error),
    #[error("bad frame: {0}")]
    Bad(String),
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(e)
    }
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_peer(b: &mut Vec<u8>, p: Peer) {
    match p {
        Peer::Source => b.push(0),
        Peer::Root => b.push(1),
        Peer::Instance(v, i) => {
            b.push(2);
            put_u16(b, v);
            put_u16(b, i);
        }
        Peer::Sink => b.push(3),
        Peer::Manager => b.push(4),
    }
}

/// Appends the encoding of `f` (with its length prefix) to `out`.
pub fn encode(f: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    put_u32(out, 0);
    match f {
        Frame::Hello(p) => {
            out.push(1);
            put_peer(out, *p);
        }
        Frame::Packets(v) => {
            out.push(2);
            put_u32(out, v.len() as u32);
            for p in v {
                put_u64(out, p.meta.clock);
                put_u32(out, p.meta.vector);
                put_u32(out, p.meta.flags.0);
                put_u16(out, p.meta.clone_id);
                put_u64(out, p.weight);
                put_u64(out, p.seq);
                put_u64(out, p.ts_ns);
                put_u32(out, p.wire_len);
                put_u32(out, p.data.len() as u32);
                out.extend_from_slice(&p.data);
            }
        }
        Frame::Deletes(v) => {
            out.push(3);
            put_u32(out, v.len() as u32);
            for (c, w, x) in v {
                put_u64(out, *c);
                put_u64(out, *w);
                put_u32(out, *x);
            }
        }
        Frame::Events(v) => {
            out.push(4);
            put_u32(out, v.len() as u32);
            for l in v {
                put_u32(out, l.len() as u32);
                out.extend_from_slice(l.as_bytes());
            }
        }
        Frame::Watermark(r, c) => {
            out.push(5);
            put_u16(out, *r);
            put_u64(out, *c);
        }
        Frame::Eof(p) => {
            out.push(6);
            put_peer(out, *p);
        }
        Frame::Ack(s) => {
            out.push(7);
            put_u64(out, *s);
        }
        Frame::Replay(v) => {
            out.push(8);
            put_u16(out, *v);
        }
        Frame::QuerySeq => out.push(9),
        Frame::SeqReport(s) => {
            out.push(10);
            put_u64(out, *s);
        }
        Frame::Drained => out.push(11),
        Frame::ReplayDone(v) => {
            out.push(12);
            put_u16(out, *v);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

struct Cur<'a>(&'a [u8], usize);

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], LinkError> {
        if self.1 + n > self.0.len() {
            return Err(LinkError::Bad("frame ends early".into()));
        }
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, LinkError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, LinkError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, LinkError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, LinkError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn peer(&mut self) -> Result<Peer, LinkError> {
        Ok(match self.u8()? {
            0 => Peer::Source,
            1 => Peer::Root,
            2 => Peer::Instance(self.u16()?, self.u16()?),
            3 => Peer::Sink,
            4 => Peer::Manager,
            t => return Err(LinkError::Bad(format!("unknown peer kind {t}"))),
        })
    }
    fn count(&mut self, min_each: usize) -> Result<usize, LinkError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_each) > self.0.len() - self.1 {
            return Err(LinkError::Bad(format!("count {n} exceeds the frame")));
        }
        Ok(n)
    }
}

/// Decodes one frame body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<Frame, LinkError> {
    let mut c = Cur(body, 0);
    let f = match c.u8()? {
        1 => Frame::Hello(c.peer()?),
        2 => {
            let n = c.count(46)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let meta = ChcMeta {
                    clock: c.u64()?,
                    vector: c.u32()?,
                    flags: MetaFlags(c.u32()?),
                    clone_id: c.u16()?,
                };
                let weight = c.u64()?;
                let seq = c.u64()?;
                let ts_ns = c.u64()?;
                let wire_len = c.u32()?;
                let len = c.u32()? as usize;
                let data = c.take(len)?.to_vec();
                v.push(LinkPkt {
                    meta,
                    weight,
                    seq,
                    ts_ns,
                    wire_len,
                    data,
                });
            }
            Frame::Packets(v)
        }
        3 => {
            let n = c.count(20)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push((c.u64()?, c.u64()?, c.u32()?));
            }
            Frame::Deletes(v)
        }
        4 => {
            let n = c.count(4)?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let len = c.u32()? as usize;
                let s = std::str::from_utf8(c.take(len)?)
                    .map_err(|_| LinkError::Bad("event line is not UTF-8".into()))?;
                v.push(s.to_string());
            }
            Frame::Events(v)
        }
        5 => Frame::Watermark(c.u16()?, c.u64()?),
        6 => Frame::Eof(c.peer()?),
        7 => Frame::Ack(c.u64()?),
        8 => Frame::Replay(c.u16()?),
        9 => Frame::QuerySeq,
        10 => Frame::SeqReport(c.u64()?),
        11 => Frame::Drained,
        12 => Frame::ReplayDone(c.u16()?),
        t => return Err(LinkError::Bad(format!("unknown frame type {t}"))),
    };
    if c.1 != body.len() {
        return Err(LinkError::Bad(format!(
            "{} trailing bytes",
            body.len() - c.1
        )));
    }
    Ok(f)
}

/// The body length a frame's 4-byte header announces; an empty or oversize frame is bad.
fn body_len(header: [u8; 4]) -> Result<usize, LinkError> {
    let n = u32::from_le_bytes(header) as usize;
    if n == 0 || n > MAX_FRAME {
        return Err(LinkError::Bad(format!("frame length {n}")));
    }
    Ok(n)
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, LinkError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; body_len(len)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// The frame at the start of `buf` and how many bytes it took; `Ok(None)` while the bytes
/// so far end before it does (a frame split across reads).
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, LinkError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let n = body_len(header.try_into().expect("4 bytes"))?;
    match buf.get(4..4 + n) {
        Some(body) => Ok(Some((decode(body)?, 4 + n))),
        None => Ok(None),
    }
}

/// Where the frame that holds byte `pos` of `buf`, a run of encoded frames, starts and ends:
/// `(pos, pos)` at a boundary; the end is `buf.len()` when the lengths run past it.
pub fn frame_around(buf: &[u8], pos: usize) -> (usize, usize) {
    let mut at = 0;
    while at < buf.len() && at < pos {
        let Some(len) = buf.get(at..at + 4) else {
            return (at, buf.len());
        };
        let n = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let end = at.saturating_add(4 + n);
        if end > pos {
            return (at, end.min(buf.len()));
        }
        at = end;
    }
    (at.min(buf.len()), at.min(buf.len()))
}

pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), LinkError> {
    let mut b = Vec::new();
    encode(f, &mut b);
    w.write_all(&b)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(Peer::Instance(3, 1)),
            Frame::Packets(vec![LinkPkt {
                meta: ChcMeta {
                    clock: 9,
                    vector: 7,
                    flags: MetaFlags(MetaFlags::REPLAY),
                    clone_id: 2,
                },
                weight: 1 << 31,
                seq: 44,
                ts_ns: 5,
                wire_len: 70,
                data: vec![1, 2, 3],
            }]),
            Frame::Deletes(vec![(1, 2, 3), (4, 5, 6)]),
            Frame::Events(vec!["{\"a\":1}".into(), String::new()]),
            Frame::Watermark(1, 99),
            Frame::Eof(Peer::Root),
            Frame::Ack(5),
            Frame::Replay(2),
            Frame::QuerySeq,
            Frame::SeqReport(8),
            Frame::ReplayDone(3),
            Frame::Drained,
        ]
    }

    /// What an inbox reads arrives in pieces: every prefix of a run of frames gives the whole
    /// frames in it and waits for the rest; a bad length is an error, not a wait.
    #[test]
    fn next_frame_takes_whole_frames_and_waits_for_the_rest() {
        let mut b = Vec::new();
        for f in frames() {
            encode(&f, &mut b);
        }
        for cut in 0..=b.len() {
            let (mut at, mut got) = (0, Vec::new());
            while let Some((f, used)) = next_frame(&b[at..cut]).unwrap() {
                got.push(f);
                at += used;
            }
            let mut again = Vec::new();
            for f in &got {
                encode(f, &mut again);
            }
            assert_eq!(again, b[..at], "at cut {cut}");
            // What is left is less than a header, or a frame that runs past the cut.
            assert!(
                cut - at < 4 || at + 4 + body_len(b[at..at + 4].try_into().unwrap()).unwrap() > cut
            );
        }
        assert_eq!(got_all(&b), frames());
        assert!(next_frame(&[0, 0, 0, 0]).is_err());
        assert!(next_frame(&[0xff, 0xff, 0xff, 0x7f]).is_err());
    }

    fn got_all(mut b: &[u8]) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Some((f, used)) = next_frame(b).unwrap() {
            v.push(f);
            b = &b[used..];
        }
        v
    }

    /// The cut a reconnecting outlet makes: the end of the frame holding a byte.
    #[test]
    fn frame_around_finds_the_frame_holding_a_byte() {
        let mut b = Vec::new();
        let mut ends = vec![0];
        for f in frames() {
            encode(&f, &mut b);
            ends.push(b.len());
        }
        for pos in 0..=b.len() {
            let want = if ends.contains(&pos) {
                (pos, pos)
            } else {
                let i = ends.iter().position(|&e| e > pos).unwrap();
                (ends[i - 1], ends[i])
            };
            assert_eq!(frame_around(&b, pos), want, "at {pos}");
        }
        // Lengths that run past the end stop at the end.
        assert_eq!(frame_around(&[9, 9, 9, 9, 1], 2), (0, 5));
        assert_eq!(frame_around(&[1, 0], 1), (0, 2));
    }

    #[test]
    fn frames_round_trip() {
        let mut b = Vec::new();
        for f in frames() {
            encode(&f, &mut b);
        }
        let mut r = &b[..];
        for f in frames() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&b);
            let _ = read_frame(&mut &b[..]);
        }
    }
}
