//! Entry points of the fuzz targets in `store/fuzz`, kept in the library so an ordinary test
//! can run the regression corpus through exactly the same code without a fuzzer.
//!
//! Each takes arbitrary bytes as a client could send them and must never panic. Beyond that
//! they check what must hold for any input: the write-ahead log of whatever was applied
//! replays to the same state, and RESP commands produce exactly one well-formed reply each.

use super::resp::{self, CallResult, Plan, PlanCtx, ShardCall};
use super::worker::direct_resp;
use crate::custom::CustomOps;
use crate::names::{KeyKind, Names};
use crate::shard::{Outputs, Shard};
use bytes::BytesMut;
use chc_proto::records::FrameReader;
use chc_proto::wire;
use parking_lot::RwLock;
use std::sync::Arc;

/// Frame limit of the targets: large enough for any interesting frame, small enough to keep
/// iterations fast.
const MAX_FRAME: usize = 1 << 16;

fn shard(names: Arc<RwLock<Names>>) -> Shard {
    let mut s = Shard::new(0, 1, CustomOps::builtin(), names);
    s.set_durable(true);
    s
}

fn dump(s: &Shard) -> Vec<(String, crate::value::Value, u32)> {
    let mut v: Vec<_> = s
        .iter()
        .map(|(k, e)| {
            (
                format!("{k:?}"),
                e.value().into_owned(),
                s.owner_of(k.as_ref(), e),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The native decoder and a shard: frames are taken off `data` as a connection's reader
/// would, each frame's operations applied (alternating between two clients), and the WAL
/// replayed into a fresh shard, which must end in the same state.
pub fn native_frames(data: &[u8]) {
    let names: Arc<RwLock<Names>> = Arc::default();
    let mut s = shard(names.clone());
    let mut buf = BytesMut::from(data);
    let mut out = Outputs::default();
    let mut i = 0u64;
    let mut f = wire::ClientFrame::default();
    loop {
        // The server's decoder takes what prost takes and decodes it the same.
        let mut copy = buf.clone();
        match (
            wire::take_client_frame(&mut buf, MAX_FRAME, &mut f),
            wire::take_frame::<wire::ClientFrame>(&mut copy, MAX_FRAME),
        ) {
            (Ok(true), Ok(Some(g))) => assert_eq!(f, g, "decoded unlike prost"),
            (Ok(false), Ok(None)) | (Err(_), Err(_)) => break,
            (a, b) => panic!("decoder disagrees with prost: {a:?} vs {b:?}"),
        }
        out.clear();
        s.apply_batch(1 + i % 2, &f.ops, 1_000_000 + i, &mut out);
        i += 1;
    }
    let mut wal = Vec::new();
    s.take_wal(&mut wal);
    let mut r = FrameReader::new(&wal);
    let mut replica = shard(Arc::default());
    while let Some(rec) = r.next_wal() {
        replica.replay_wal_record(&rec);
    }
    assert!(r.torn().is_none(), "the shard wrote a log it cannot read");
    assert_eq!(
        dump(&s),
        dump(&replica),
        "the log replays to the same state"
    );
}

/// The RESP parser, the direct path, the planner and the reply encoder on one shard: every
/// complete request gets exactly one reply that parses as RESP.
pub fn resp_requests(data: &[u8]) {
    let names: Arc<RwLock<Names>> = Arc::default();
    names
        .write()
        .declare(2, 1, "nat:portmap", KeyKind::FiveTuple);
    names.write().declare(3, 4, "scan:hosts", KeyKind::Host);
    let mut s = shard(names.clone());
    let mut args = Vec::new();
    let mut pos = 0;
    let mut authed = true;
    while let Ok(Some(n)) = resp::parse(&data[pos..], &mut args) {
        let req = &data[pos..pos + n];
        pos += n;
        if args.is_empty() {
            continue;
        }
        let mut out = Vec::new();
        if !direct_resp(&mut s, 1 << 63 | 1, req, &args, &mut out) {
            let argv: Vec<&[u8]> = args.iter().map(|r| &req[r.clone()]).collect();
            let plan = {
                let names = names.read();
                let mut ctx = PlanCtx {
                    shards: 1,
                    names: &names,
                    authed: &mut authed,
                    token: Some("token"),
                    fsync: "everysec",
                    client: 1 << 63 | 1,
                };
                resp::plan(&mut ctx, &argv)
            };
            match plan {
                Plan::Now(b) | Plan::Quit(b) => out = b,
                Plan::Calls(calls, combine) => {
                    let results: Vec<CallResult> = calls
                        .into_iter()
                        .map(|(_, c)| call(&mut s, &names, c))
                        .collect();
                    resp::combine(&combine, &results, &mut out);
                }
            }
        }
        assert_eq!(
            reply_len(&out),
            Some(out.len()),
            "one well-formed reply per request: {:?}",
            String::from_utf8_lossy(&out)
        );
        if pos >= data.len() {
            break;
        }
    }
}

/// Runs one shard call as a shard thread would.
fn call(s: &mut Shard, names: &RwLock<Names>, c: ShardCall) -> CallResult {
    match c {
        ShardCall::Op(op) => {
            let mut out = Outputs::default();
            s.apply_batch(1 << 63 | 1, std::slice::from_ref(&op), 0, &mut out);
            CallResult::Reply(out.replies.pop().unwrap_or_default())
        }
        ShardCall::Count => CallResult::Count(s.len() as u64),
        ShardCall::Keys(p) => {
            let names = names.read();
            CallResult::Keys(
                s.iter()
                    .map(|(k, e)| names.render(k.as_ref(), s.owner_of(k.as_ref(), e)))
                    .filter(|k| resp::glob(&p, k))
                    .map(Into::into)
                    .collect(),
            )
        }
        ShardCall::Scan { pos, count, .. } => {
            let names = names.read();
            let keys: Vec<_> = s
                .iter()
                .skip(pos as usize)
                .take(count.min(1000) as usize)
                .map(|(k, e)| names.render(k.as_ref(), s.owner_of(k.as_ref(), e)).into())
                .collect();
            CallResult::Scan { keys, next: None }
        }
        ShardCall::Stats => CallResult::Stats(s.stats, s.len() as u64),
    }
}

/// Length of the one RESP reply at the start of `b`, if it is well formed.
fn reply_len(b: &[u8]) -> Option<usize> {
    let line = b.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&b[1..line]).ok()?;
    let after = line + 2;
    match *b.first()? {
        b'+' | b'-' => Some(after),
        b':' => head.parse::<i64>().ok().map(|_| after),
        b'$' => match head.parse::<i64>().ok()? {
            -1 => Some(after),
            n if n >= 0 => {
                let end = after + n as usize;
                (b.get(end..end + 2)? == b"\r\n").then_some(end + 2)
            }
            _ => None,
        },
        b'*' => {
            let mut at = after;
            for _ in 0..head.parse::<usize>().ok()? {
                at += reply_len(&b[at..])?;
            }
            Some(at)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_their_seed_inputs() {
        resp_requests(b"SET k 1\r\nINCR k\r\n*2\r\n$4\r\nLPOP\r\n$1\r\nl\r\nKEYS *\r\nINFO\r\n");
        let mut b = BytesMut::new();
        wire::put_frame(
            &wire::ClientFrame {
                hello: None,
                ops: vec![wire::Op {
                    seq: 1,
                    code: wire::OpCode::OpIncr as i32,
                    sub: bytes::Bytes::from_static(b"k"),
                    num: 3,
                    ..Default::default()
                }],
            },
            &mut b,
        );
        native_frames(&b);
        assert_eq!(reply_len(b"*2\r\n$1\r\na\r\n:5\r\n"), Some(15));
        assert_eq!(reply_len(b"$3\r\nab\r\n"), None);
    }
}
