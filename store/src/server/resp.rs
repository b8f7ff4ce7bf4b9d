//! The RESP (Redis) face: enough of the protocol for `redis-cli` and `redis-benchmark`.
//!
//! Requests are RESP arrays of bulk strings or inline commands. A command names keys that live
//! in one shard each; the connection's thread runs commands on its own shard directly and
//! forwards the others to the owning shard's thread, keeping replies in request order.
//! Malformed input (bad lengths, oversize bulks or arrays) gets a protocol error reply and the
//! connection is closed, as Redis does.

use crate::names::Names;
use crate::shard::ShardStats;
use crate::value::Value;
use bytes::Bytes;
use chc_proto::wire::{self, OpCode, Status};
use std::ops::Range;

/// Limits on one request.
pub const MAX_ARGS: usize = 1 << 20;
pub const MAX_BULK: usize = 16 << 20;
pub const MAX_INLINE: usize = 64 << 10;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RespError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    Quotes,
}

/// Parses one request at the front of `buf` into argument ranges.
///
/// Returns the number of bytes consumed, or `None` if more bytes are needed.
pub fn parse(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Option<usize>, RespError> {
    args.clear();
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return parse_inline(buf, args);
    }
    let Some((n, mut pos)) = read_line_int(buf, 1) else {
        if buf.len() > MAX_INLINE {
            return Err(RespError::MultibulkLength);
        }
        return Ok(None);
    };
    let n = n.ok_or(RespError::MultibulkLength)?;
    if n > MAX_ARGS as i64 {
        return Err(RespError::MultibulkLength);
    }
    if n <= 0 {
        return Ok(Some(pos));
    }
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(None);
        }
        if buf[pos] != b'$' {
            return Err(RespError::ExpectedBulk(buf[pos] as char));
        }
        let Some((len, p)) = read_line_int(buf, pos + 1) else {
            if buf.len() - pos > 64 {
                return Err(RespError::BulkLength);
            }
            return Ok(None);
        };
        let len = len.ok_or(RespError::BulkLength)?;
        if !(0..=MAX_BULK as i64).contains(&len) {
            return Err(RespError::BulkLength);
        }
        let len = len as usize;
        if buf.len() < p + len + 2 {
            return Ok(None);
        }
        if &buf[p + len..p + len + 2] != b"\r\n" {
            return Err(RespError::BulkLength);
        }
        args.push(p..p + len);
        pos = p + len + 2;
    }
    Ok(Some(pos))
}

/// Reads `<int>\r\n` starting at `from`: `(Some(value) or None if not a number, next pos)`.
fn read_line_int(buf: &[u8], from: usize) -> Option<(Option<i64>, usize)> {
    let end = buf[from.min(buf.len())..]
        .iter()
        .take(32)
        .position(|&b| b == b'\r')?
        + from;
    if end + 1 >= buf.len() {
        return None;
    }
    let v = parse_i64(&buf[from..end]);
    if buf[end + 1] != b'\n' {
        return Some((None, end + 2));
    }
    Some((v, end + 2))
}

/// `str::parse::<i64>` on bytes (an optional sign, then at least one digit, no overflow),
/// without the UTF-8 check and the general parser for the short numbers RESP headers hold.
fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 {
        // Empty, or long enough to overflow: the standard parser decides.
        return std::str::from_utf8(s).ok()?.parse().ok();
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + i64::from(d - b'0');
    }
    Some(if neg { -v } else { v })
}

fn parse_inline(buf: &[u8], args: &mut Vec<Range<usize>>) -> Result<Option<usize>, RespError> {
    let Some(nl) = buf.iter().take(MAX_INLINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Err(RespError::InlineTooBig)
        } else {
            Ok(None)
        };
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line_end {
            break;
        }
        if buf[i] == b'"' || buf[i] == b'\'' {
            let q = buf[i];
            let start = i + 1;
            let Some(len) = buf[start..line_end].iter().position(|&b| b == q) else {
                return Err(RespError::Quotes);
            };
            args.push(start..start + len);
            i = start + len + 1;
        } else {
            let start = i;
            while i < line_end && !buf[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push(start..i);
        }
    }
    Ok(Some(nl + 1))
}

/// Appends RESP encodings.
pub mod enc {
    pub fn simple(out: &mut Vec<u8>, s: &str) {
        out.push(b'+');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    pub fn error(out: &mut Vec<u8>, s: &str) {
        out.push(b'-');
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    pub fn int(out: &mut Vec<u8>, v: i64) {
        prefixed(out, b':', v);
    }
    pub fn bulk(out: &mut Vec<u8>, b: &[u8]) {
        prefixed(out, b'$', b.len() as i64);
        out.extend_from_slice(b);
        out.extend_from_slice(b"\r\n");
    }
    /// An integer as a bulk string (GET of a counter).
    pub fn bulk_int(out: &mut Vec<u8>, v: i64) {
        let mut buf = [0; 20];
        bulk(out, itoa(&mut buf, v));
    }
    pub fn nil(out: &mut Vec<u8>) {
        out.extend_from_slice(b"$-1\r\n");
    }
    pub fn array(out: &mut Vec<u8>, n: usize) {
        prefixed(out, b'*', n as i64);
    }

    /// `<tag><v>\r\n`: every reply header has this shape, and it is on every reply's path.
    fn prefixed(out: &mut Vec<u8>, tag: u8, v: i64) {
        let mut buf = [0; 20];
        out.push(tag);
        out.extend_from_slice(itoa(&mut buf, v));
        out.extend_from_slice(b"\r\n");
    }

    /// Formats `v` in decimal into `buf` without going through `fmt`.
    pub fn itoa(buf: &mut [u8; 20], v: i64) -> &[u8] {
        let mut n = v.unsigned_abs();
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if v < 0 {
            i -= 1;
            buf[i] = b'-';
        }
        &buf[i..]
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn itoa_formats_like_display() {
            for v in [0, 7, -7, 10, 123_456_789, i64::MAX, i64::MIN, -1] {
                let mut b = [0; 20];
                assert_eq!(super::itoa(&mut b, v), v.to_string().as_bytes());
            }
            let mut out = Vec::new();
            super::bulk(&mut out, b"ab");
            super::int(&mut out, -3);
            super::array(&mut out, 2);
            assert_eq!(out, b"$2\r\nab\r\n:-3\r\n*2\r\n");
        }
    }
}

/// Redis-style glob matching (`*`, `?`, `[...]`, `\`).
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star_p, mut star_s) = (usize::MAX, 0);
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star_p = pi;
                    star_s = si;
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&p[pi..], s[si]) {
                        if matched {
                            pi += next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() && p[pi + 1] == s[si] => {
                    pi += 2;
                    si += 1;
                    continue;
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        if star_p != usize::MAX {
            pi = star_p + 1;
            star_s += 1;
            si = star_s;
            continue;
        }
        return false;
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches `c` against a `[...]` class at the start of `p`: (matched, class length).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let neg = p.get(1) == Some(&b'^');
    if neg {
        i += 1;
    }
    let mut hit = false;
    while i < p.len() && p[i] != b']' {
        if p[i] == b'\\' && i + 1 < p.len() {
            hit |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (a, b) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
            hit |= (a..=b).contains(&c);
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((hit != neg, i + 1))
}

/// Work a RESP command needs done on one shard.
#[derive(Debug, Clone)]
pub enum ShardCall {
    Op(wire::Op),
    /// Number of objects with a value.
    Count,
    /// Keys matching a pattern.
    Keys(Bytes),
    /// Up to `count` keys from position `pos` of the shard's iteration order.
    Scan {
        pos: u64,
        count: u64,
        pattern: Option<Bytes>,
    },
    Stats,
}

#[derive(Debug, Clone)]
pub enum CallResult {
    Reply(wire::Reply),
    Count(u64),
    Keys(Vec<Bytes>),
    Scan { keys: Vec<Bytes>, next: Option<u64> },
    Stats(ShardStats, u64),
}

/// How the results of a command's calls become its reply.
#[derive(Debug, Clone)]
pub enum Combine {
    Ok,
    Bulk,
    Int,
    /// Reply with the integer result of the last call (LPUSH with several values).
    LastInt,
    Pop,
    /// Number of calls that found their key (DEL, EXISTS).
    Found,
    Llen,
    Lrange(i64, i64),
    Type,
    DbSize,
    Keys,
    /// SCAN on one shard of `shards`.
    Scan {
        shard: u32,
        shards: u32,
    },
    Info(String),
}

/// A planned command: calls to shards (shard index, call) and how to combine.
pub enum Plan {
    Now(Vec<u8>),
    Calls(Vec<(u32, ShardCall)>, Combine),
    Quit(Vec<u8>),
}

/// Connection state the planner needs.
pub struct PlanCtx<'a> {
    pub shards: u32,
    pub names: &'a Names,
    pub authed: &'a mut bool,
    pub token: Option<&'a str>,
    pub fsync: &'a str,
    pub client: u64,
}

fn upper(a: &[u8]) -> Vec<u8> {
    a.to_ascii_uppercase()
}

fn wrong_args(cmd: &[u8]) -> Plan {
    let mut out = Vec::new();
    enc::error(
        &mut out,
        &format!(
            "ERR wrong number of arguments for '{}' command",
            String::from_utf8_lossy(cmd).to_lowercase()
        ),
    );
    Plan::Now(out)
}

fn err(s: &str) -> Plan {
    let mut out = Vec::new();
    enc::error(&mut out, s);
    Plan::Now(out)
}

/// Plans one command. `args[0]` is the command name.
pub fn plan(ctx: &mut PlanCtx<'_>, args: &[&[u8]]) -> Plan {
    let cmd = upper(args[0]);
    let n = args.len();
    if !*ctx.authed && cmd != b"AUTH" && cmd != b"QUIT" && cmd != b"HELLO" {
        return err("NOAUTH Authentication required.");
    }
    let key_op = |code: OpCode, key: &[u8]| -> (u32, ShardCall) {
        let k = ctx.names.parse(key);
        let shard = k.as_ref().shard(ctx.shards);
        (
            shard,
            ShardCall::Op(wire::Op {
                code: code as i32,
                vertex: u32::from(k.vertex),
                object: u32::from(k.object),
                per_flow: k.per_flow,
                sub: Bytes::copy_from_slice(k.sub.as_slice()),
                ..Default::default()
            }),
        )
    };
    let with = |mut c: (u32, ShardCall), f: &dyn Fn(&mut wire::Op)| {
        if let ShardCall::Op(op) = &mut c.1 {
            f(op);
        }
        c
    };
    match cmd.as_slice() {
        b"PING" => {
            let mut out = Vec::new();
            match n {
                1 => enc::simple(&mut out, "PONG"),
                2 => enc::bulk(&mut out, args[1]),
                _ => return wrong_args(&cmd),
            }
            Plan::Now(out)
        }
        b"ECHO" if n == 2 => {
            let mut out = Vec::new();
            enc::bulk(&mut out, args[1]);
            Plan::Now(out)
        }
        b"QUIT" => {
            let mut out = Vec::new();
            enc::simple(&mut out, "OK");
            Plan::Quit(out)
        }
        b"AUTH" => {
            let given = match n {
                2 => args[1],
                3 => args[2],
                _ => return wrong_args(&cmd),
            };
            match ctx.token {
                None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
                Some(t) if t.as_bytes() == given => {
                    *ctx.authed = true;
                    let mut out = Vec::new();
                    enc::simple(&mut out, "OK");
                    Plan::Now(out)
                }
                Some(_) => err("WRONGPASS invalid username-password pair or user is disabled."),
            }
        }
        b"SELECT" if n == 2 => {
            if args[1] == b"0" {
                let mut out = Vec::new();
                enc::simple(&mut out, "OK");
                Plan::Now(out)
            } else {
                err("ERR DB index is out of range")
            }
        }
        b"CLIENT" | b"READONLY" | b"RESET" => {
            let mut out = Vec::new();
            enc::simple(&mut out, "OK");
            Plan::Now(out)
        }
        b"COMMAND" => {
            let mut out = Vec::new();
            enc::array(&mut out, 0);
            Plan::Now(out)
        }
        b"CONFIG" => {
            if n != 3 || upper(args[1]) != b"GET" {
                return err("ERR only CONFIG GET <pattern> is supported");
            }
            let shards = ctx.shards.to_string();
            let all = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", ctx.fsync),
                ("databases", "1"),
                ("maxmemory", "0"),
                ("io-threads", shards.as_str()),
            ];
            let hits: Vec<_> = all
                .iter()
                .filter(|(k, _)| glob(&args[2].to_ascii_lowercase(), k.as_bytes()))
                .collect();
            let mut out = Vec::new();
            enc::array(&mut out, hits.len() * 2);
            for (k, v) in hits {
                enc::bulk(&mut out, k.as_bytes());
                enc::bulk(&mut out, v.as_bytes());
            }
            Plan::Now(out)
        }
        b"GET" if n == 2 => Plan::Calls(vec![key_op(OpCode::OpGet, args[1])], Combine::Bulk),
        b"SET" => {
            if n != 3 {
                return if n < 3 {
                    wrong_args(&cmd)
                } else {
                    err("ERR syntax error")
                };
            }
            let v = Bytes::copy_from_slice(args[2]);
            Plan::Calls(
                vec![with(key_op(OpCode::OpSet, args[1]), &|o| {
                    o.val = Some(wire::Value::bytes(v.clone()))
                })],
                Combine::Ok,
            )
        }
        b"DEL" | b"UNLINK" if n >= 2 => Plan::Calls(
            args[1..].iter().map(|k| key_op(OpCode::OpDel, k)).collect(),
            Combine::Found,
        ),
        b"EXISTS" if n >= 2 => Plan::Calls(
            args[1..].iter().map(|k| key_op(OpCode::OpGet, k)).collect(),
            Combine::Found,
        ),
        b"INCR" | b"DECR" if n == 2 => {
            let d = if cmd == b"INCR" { 1 } else { -1 };
            Plan::Calls(
                vec![with(key_op(OpCode::OpIncr, args[1]), &|o| o.num = d)],
                Combine::Int,
            )
        }
        b"INCRBY" | b"DECRBY" if n == 3 => {
            let Some(mut d) = parse_i64(args[2]) else {
                return err("ERR value is not an integer or out of range");
            };
            if cmd == b"DECRBY" {
                let Some(neg) = d.checked_neg() else {
                    return err("ERR decrement would overflow");
                };
                d = neg;
            }
            Plan::Calls(
                vec![with(key_op(OpCode::OpIncr, args[1]), &|o| o.num = d)],
                Combine::Int,
            )
        }
        b"LPUSH" | b"RPUSH" if n >= 3 => {
            let code = if cmd == b"LPUSH" {
                OpCode::OpPushFront
            } else {
                OpCode::OpPushBack
            };
            Plan::Calls(
                args[2..]
                    .iter()
                    .map(|v| {
                        let v = Bytes::copy_from_slice(v);
                        with(key_op(code, args[1]), &|o| {
                            o.val = Some(wire::Value::bytes(v.clone()))
                        })
                    })
                    .collect(),
                Combine::LastInt,
            )
        }
        b"LPOP" | b"RPOP" if n == 2 => {
            let code = if cmd == b"LPOP" {
                OpCode::OpPopFront
            } else {
                OpCode::OpPopBack
            };
            Plan::Calls(vec![key_op(code, args[1])], Combine::Pop)
        }
        b"LLEN" if n == 2 => Plan::Calls(vec![key_op(OpCode::OpGet, args[1])], Combine::Llen),
        b"LRANGE" if n == 4 => {
            let (Some(a), Some(b)) = (parse_i64(args[2]), parse_i64(args[3])) else {
                return err("ERR value is not an integer or out of range");
            };
            Plan::Calls(vec![key_op(OpCode::OpGet, args[1])], Combine::Lrange(a, b))
        }
        b"TYPE" if n == 2 => Plan::Calls(vec![key_op(OpCode::OpGet, args[1])], Combine::Type),
        b"TTL" | b"PTTL" if n == 2 => {
            let mut out = Vec::new();
            enc::int(&mut out, -1);
            Plan::Now(out)
        }
        b"DBSIZE" if n == 1 => Plan::Calls(
            (0..ctx.shards).map(|s| (s, ShardCall::Count)).collect(),
            Combine::DbSize,
        ),
        b"KEYS" if n == 2 => {
            let p = Bytes::copy_from_slice(args[1]);
            Plan::Calls(
                (0..ctx.shards)
                    .map(|s| (s, ShardCall::Keys(p.clone())))
                    .collect(),
                Combine::Keys,
            )
        }
        b"SCAN" if n >= 2 => {
            let Some(cursor) = std::str::from_utf8(args[1])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                return err("ERR invalid cursor");
            };
            let mut count = 10u64;
            let mut pattern = None;
            let mut i = 2;
            while i < n {
                match upper(args[i]).as_slice() {
                    b"COUNT" if i + 1 < n => {
                        match parse_i64(args[i + 1]) {
                            Some(c) if c > 0 => count = c as u64,
                            _ => return err("ERR value is not an integer or out of range"),
                        }
                        i += 2;
                    }
                    b"MATCH" if i + 1 < n => {
                        pattern = Some(Bytes::copy_from_slice(args[i + 1]));
                        i += 2;
                    }
                    _ => return err("ERR syntax error"),
                }
            }
            // Cursor: shard index in the top 16 bits, position within the shard below.
            let shard = (cursor >> 48) as u32;
            if shard >= ctx.shards {
                let mut out = Vec::new();
                enc::array(&mut out, 2);
                enc::bulk(&mut out, b"0");
                enc::array(&mut out, 0);
                return Plan::Now(out);
            }
            let pos = cursor & ((1 << 48) - 1);
            Plan::Calls(
                vec![(
                    shard,
                    ShardCall::Scan {
                        pos,
                        count,
                        pattern,
                    },
                )],
                Combine::Scan {
                    shard,
                    shards: ctx.shards,
                },
            )
        }
        b"INFO" => {
            let section = args
                .get(1)
                .map(|s| String::from_utf8_lossy(s).to_lowercase());
            Plan::Calls(
                (0..ctx.shards).map(|s| (s, ShardCall::Stats)).collect(),
                Combine::Info(section.unwrap_or_default()),
            )
        }
        b"FLUSHALL" | b"FLUSHDB" | b"SHUTDOWN" | b"DEBUG" | b"SAVE" | b"BGSAVE" => {
            err("ERR this command is not offered by chc-store")
        }
        b"GET" | b"DEL" | b"UNLINK" | b"EXISTS" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY"
        | b"LPUSH" | b"RPUSH" | b"LPOP" | b"RPOP" | b"LLEN" | b"LRANGE" | b"TYPE" | b"DBSIZE"
        | b"KEYS" | b"SCAN" | b"ECHO" | b"SELECT" => wrong_args(&cmd),
        _ => {
            let shown: String = String::from_utf8_lossy(args[0]).chars().take(64).collect();
            err(&format!("ERR unknown command '{shown}'"))
        }
    }
}

fn status_error(out: &mut Vec<u8>, r: &wire::Reply) -> bool {
    let msg = match Status::try_from(r.status) {
        Ok(Status::Ok | Status::NotFound | Status::Duplicate) => return false,
        Ok(Status::WrongType) => {
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        }
        Ok(Status::Overflow) => "ERR increment or decrement would overflow",
        Ok(Status::NotOwner) => "ERR per-flow object is owned by another NF instance",
        _ => "ERR request refused by the store",
    };
    enc::error(out, msg);
    true
}

fn reply_of(r: &CallResult) -> Option<&wire::Reply> {
    match r {
        CallResult::Reply(r) => Some(r),
        _ => None,
    }
}

/// Turns the results of a command's calls (in call order) into its RESP reply.
pub fn combine(c: &Combine, results: &[CallResult], out: &mut Vec<u8>) {
    let value = |r: &wire::Reply| Value::from_wire(r.value.as_ref());
    match c {
        Combine::Ok => {
            if let Some(r) = results.iter().filter_map(reply_of).next() {
                if status_error(out, r) {
                    return;
                }
            }
            enc::simple(out, "OK")
        }
        Combine::Int | Combine::LastInt => {
            let Some(r) = results.iter().filter_map(reply_of).last() else {
                return enc::error(out, "ERR internal");
            };
            if let Some(e) = results
                .iter()
                .filter_map(reply_of)
                .find(|r| r.status != Status::Ok as i32)
            {
                if status_error(out, e) {
                    return;
                }
            }
            match value(r) {
                Value::Int(i) => enc::int(out, i),
                _ => enc::error(out, "ERR value is not an integer or out of range"),
            }
        }
        Combine::Bulk | Combine::Pop => {
            let Some(r) = results.iter().filter_map(reply_of).next() else {
                return enc::error(out, "ERR internal");
            };
            if status_error(out, r) {
                return;
            }
            match value(r) {
                Value::Nil => enc::nil(out),
                Value::Int(i) => enc::bulk(out, i.to_string().as_bytes()),
                Value::Bytes(b) => enc::bulk(out, &b),
                Value::List(_) => enc::error(
                    out,
                    "WRONGTYPE Operation against a key holding the wrong kind of value",
                ),
            }
        }
        Combine::Found => {
            let n = results
                .iter()
                .filter_map(reply_of)
                .filter(|r| r.status == Status::Ok as i32)
                .count();
            enc::int(out, n as i64)
        }
        Combine::Llen | Combine::Lrange(..) | Combine::Type => {
            let Some(r) = results.iter().filter_map(reply_of).next() else {
                return enc::error(out, "ERR internal");
            };
            let v = value(r);
            match (c, v) {
                (Combine::Type, v) => enc::simple(out, v.type_name()),
                (Combine::Llen, Value::Nil) => enc::int(out, 0),
                (Combine::Llen, Value::List(l)) => enc::int(out, l.len() as i64),
                (Combine::Lrange(..), Value::Nil) => enc::array(out, 0),
                (Combine::Lrange(a, b), Value::List(l)) => {
                    let len = l.len() as i64;
                    let norm = |i: i64| if i < 0 { (len + i).max(0) } else { i };
                    let (s, e) = (norm(*a), norm(*b).min(len - 1));
                    if s > e || s >= len {
                        enc::array(out, 0);
                    } else {
                        enc::array(out, (e - s + 1) as usize);
                        for item in l.iter().skip(s as usize).take((e - s + 1) as usize) {
                            enc::bulk(out, item);
                        }
                    }
                }
                _ => enc::error(
                    out,
                    "WRONGTYPE Operation against a key holding the wrong kind of value",
                ),
            }
        }
        Combine::DbSize => {
            let n: u64 = results
                .iter()
                .map(|r| match r {
                    CallResult::Count(c) => *c,
                    _ => 0,
                })
                .sum();
            enc::int(out, n as i64)
        }
        Combine::Keys => {
            let keys: Vec<&Bytes> = results
                .iter()
                .flat_map(|r| match r {
                    CallResult::Keys(k) => k.iter().collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect();
            enc::array(out, keys.len());
            for k in keys {
                enc::bulk(out, k);
            }
        }
        Combine::Scan { shard, shards } => {
            let (keys, next) = match results.first() {
                Some(CallResult::Scan { keys, next }) => (keys.as_slice(), *next),
                _ => (&[][..], None),
            };
            // Within a shard the cursor is a position; past its end, the next shard's start;
            // past the last shard, 0.
            let cursor = match next {
                Some(pos) => u64::from(*shard) << 48 | pos,
                None if *shard + 1 < *shards => u64::from(*shard + 1) << 48,
                None => 0,
            };
            enc::array(out, 2);
            enc::bulk(out, cursor.to_string().as_bytes());
            enc::array(out, keys.len());
            for k in keys {
                enc::bulk(out, k);
            }
        }
        Combine::Info(section) => {
            let mut ops = 0;
            let mut keys = 0;
            let mut dups = 0;
            let mut logged = 0;
            let mut bad = 0;
            for r in results {
                if let CallResult::Stats(s, n) = r {
                    ops += s.ops;
                    dups += s.duplicates_suppressed;
                    logged += s.logged_records;
                    bad += s.bad_requests;
                    keys += n;
                }
            }
            let mut s = String::new();
            let want = |x: &str| section.is_empty() || section == "all" || section == x;
            if want("server") {
                s.push_str("# Server\r\nredis_version:7.0.0\r\nchc_store_version:");
                s.push_str(env!("CARGO_PKG_VERSION"));
                s.push_str(&format!("\r\nshards:{}\r\n\r\n", results.len()));
            }
            if want("stats") {
                s.push_str(&format!(
                    "# Stats\r\ntotal_commands_processed:{ops}\r\nchc_duplicates_suppressed:{dups}\r\nchc_clock_log_records:{logged}\r\nchc_bad_requests:{bad}\r\n\r\n"
                ));
            }
            if want("keyspace") {
                s.push_str(&format!(
                    "# Keyspace\r\ndb0:keys={keys},expires=0,avg_ttl=0\r\n"
                ));
            }
            enc::bulk(out, s.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = Option<(usize, Vec<Vec<u8>>)>;

    fn p(s: &[u8]) -> Result<Parsed, RespError> {
        let mut a = Vec::new();
        parse(s, &mut a).map(|o| o.map(|n| (n, a.iter().map(|r| s[r.clone()].to_vec()).collect())))
    }

    #[test]
    fn header_numbers_parse_like_str_parse() {
        let cases: [&[u8]; 16] = [
            b"0",
            b"7",
            b"-7",
            b"+7",
            b"",
            b"-",
            b"+",
            b"12a",
            b" 1",
            b"1 ",
            b"--1",
            b"999999999999999999",
            b"9223372036854775807",
            b"9223372036854775808",
            b"-9223372036854775808",
            b"00000000000000000000001",
        ];
        for c in cases {
            let want = std::str::from_utf8(c)
                .ok()
                .and_then(|s| s.parse::<i64>().ok());
            assert_eq!(parse_i64(c), want, "{:?}", String::from_utf8_lossy(c));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_header_number_parses_like_str_parse(
            s in proptest::collection::vec(proptest::sample::select(b"+-0123456789x".to_vec()), 0..22),
        ) {
            let want = std::str::from_utf8(&s).ok().and_then(|t| t.parse::<i64>().ok());
            proptest::prop_assert_eq!(parse_i64(&s), want);
        }
    }

    #[test]
    fn parses_multibulk_and_inline() {
        let (n, a) = p(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest").unwrap().unwrap();
        assert_eq!(n, 20);
        assert_eq!(a, vec![b"GET".to_vec(), b"k".to_vec()]);
        let (n, a) = p(b"SET k \"a b\"\r\n").unwrap().unwrap();
        assert_eq!(n, 13);
        assert_eq!(a, vec![b"SET".to_vec(), b"k".to_vec(), b"a b".to_vec()]);
        // Every proper prefix needs more bytes.
        let full = b"*3\r\n$5\r\nLPUSH\r\n$6\r\nmylist\r\n$3\r\nxxx\r\n";
        for cut in 0..full.len() {
            assert_eq!(p(&full[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(p(full).unwrap().is_some());
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(p(b"*x\r\n"), Err(RespError::MultibulkLength));
        assert_eq!(p(b"*1\r\n:3\r\n"), Err(RespError::ExpectedBulk(':')));
        assert_eq!(p(b"*1\r\n$-5\r\n"), Err(RespError::BulkLength));
        assert_eq!(p(b"*1\r\n$999999999999\r\n"), Err(RespError::BulkLength));
        assert_eq!(p(b"*1\r\n$1\r\nabc\r\n"), Err(RespError::BulkLength));
        assert_eq!(p(b"*99999999\r\n"), Err(RespError::MultibulkLength));
        assert_eq!(p(b"GET \"k\r\n"), Err(RespError::Quotes));
        assert!(p(&vec![b'a'; MAX_INLINE + 2]).is_err());
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"anything"));
        assert!(glob(b"key:*", b"key:000001"));
        assert!(!glob(b"key:*", b"counter:1"));
        assert!(glob(b"h?llo", b"hello"));
        assert!(glob(b"h[ae]llo", b"hallo"));
        assert!(!glob(b"h[^e]llo", b"hello"));
        assert!(glob(b"h[a-c]llo", b"hbllo"));
        assert!(glob(b"v2:*:nat:*", b"v2:i1:nat:portmap:tcp:1"));
        assert!(glob(b"a\\*b", b"a*b"));
        assert!(!glob(b"a\\*b", b"axb"));
    }
}
