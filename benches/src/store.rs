//! `chc-bench store`: store throughput, in-process, over TCP, and against a real Redis.
//!
//! Three groups of rows, each measured against a baseline in the same run, repetitions
//! interleaved (ours, baseline, ours, ...) so drift on a shared machine hits both:
//!
//! - **in-process**: a shard's state machine applying batches of 32 increments on 1M random
//!   keys, against a plain single-thread `hashbrown::HashMap<u64, i64>` increment loop over the
//!   same key sequence;
//! - **native TCP**: a `chc-store serve --shards 1` process fed by a dedicated pipelined client
//!   (frames of 32 non-blocking increments, many frames in flight), against the paper's
//!   published 5.1 M ops/s per store instance;
//! - **RESP**: `redis-benchmark` against `chc-store` and against a `redis-server` started here
//!   with comparable persistence (`appendonly yes`, `appendfsync everysec`; ours `--fsync
//!   everysec`), both measured in ops/s and in ops per second of server CPU time (from
//!   `/proc/<pid>/stat`).

use crate::results::{Better, Results, Row};
use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use chc_proto::wire::{self, OpCode, OpFlag};
use chc_store::custom::CustomOps;
use chc_store::names::Names;
use chc_store::shard::{Outputs, Shard};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The paper's store: 5.1 M ops/s per instance (§3.6.1).
const PAPER_OPS: f64 = 5.1e6;
const PAPER: &str = "CHC paper, §3.6.1 (5.1 M ops/s per store instance)";
const KEYS: usize = 1_000_000;
const BATCH: usize = 32;

/// Arguments of `chc-bench store`.
#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// Write the results here (shared results format).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Smoke test: one short repetition of every row.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every row (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Row groups to run: inproc, tcp, resp (default: all).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The chc-store binary (default: next to this one).
    #[arg(long)]
    pub store_bin: Option<PathBuf>,
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: String,
    /// Requests per redis-benchmark run (default 500000; --quick: 50000).
    #[arg(long)]
    pub requests: Option<u64>,
}

impl StoreArgs {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

pub fn run(a: &StoreArgs) -> Result<()> {
    let reps = if a.quick { 1 } else { a.reps.max(1) };
    let mut res = Results::new("store", reps);
    let store_bin = match &a.store_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("chc-store"),
    };
    let needs_store = a.wants("tcp") || a.wants("resp");
    if needs_store && !store_bin.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p chc-store) or pass --store-bin",
            store_bin.display()
        );
    }
    if a.wants("resp") {
        for (tool, pkg) in [
            (&a.redis_server, "redis-server"),
            (&a.redis_benchmark, "redis-tools"),
        ] {
            if Command::new(tool).arg("--version").output().is_err() {
                bail!(
                    "{tool} not found: the RESP rows compare against a real Redis \
                     (Debian: apt-get install {pkg}; or pass --redis-server / --redis-benchmark, \
                     or skip them with --only inproc,tcp)"
                );
            }
        }
    }
    if a.wants("inproc") {
        inproc(a, reps, &mut res);
    }
    if a.wants("tcp") {
        tcp(a, reps, &store_bin, &mut res)?;
    }
    if a.wants("resp") {
        resp(a, reps, &store_bin, &mut res)?;
    }
    print!("{}", res.table());
    if let Some(p) = &a.json {
        res.write(p)
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// splitmix64: a fast, well-spread sequence, identical for ours and the baseline.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Key bytes of 1M keys in one static table, so an operation's key is a slice without a
/// reference count.
fn key_table() -> (&'static [u8], Vec<u64>) {
    let mut rng = Rng(42);
    let ids: Vec<u64> = (0..KEYS).map(|_| rng.next()).collect();
    let mut t = Vec::with_capacity(KEYS * 8);
    for id in &ids {
        t.extend_from_slice(&id.to_le_bytes());
    }
    (Box::leak(t.into_boxed_slice()), ids)
}

fn key_bytes(table: &'static [u8], i: usize) -> Bytes {
    Bytes::from_static(&table[i * 8..i * 8 + 8])
}

fn incr_op(sub: Bytes) -> wire::Op {
    wire::Op {
        code: OpCode::OpIncr as i32,
        vertex: 1,
        object: 1,
        sub,
        num: 1,
        flags: OpFlag::FlagNonblocking as u32,
        ..Default::default()
    }
}

fn inproc(a: &StoreArgs, reps: usize, res: &mut Results) {
    let n = if a.quick { 2_000_000 } else { 10_000_000 };
    let (table, ids) = key_table();
    let names = Arc::new(parking_lot::RwLock::new(Names::default()));
    let mut shard = Shard::new(0, 1, CustomOps::builtin(), names);
    let mut out = Outputs::default();
    let mut batch: Vec<wire::Op> = (0..BATCH).map(|i| incr_op(key_bytes(table, i))).collect();
    // Both sides start with every key present.
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(BATCH) {
        for (op, &i) in batch.iter_mut().zip(chunk) {
            op.sub = key_bytes(table, i);
        }
        out.clear();
        shard.apply_batch(7, &batch[..chunk.len()], 0, &mut out);
    }
    let mut map: hashbrown::HashMap<u64, i64> = hashbrown::HashMap::new();
    for &id in &ids {
        *map.entry(id).or_insert(0) += 1;
    }
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        let mut rng = Rng(1000 + rep as u64);
        let t = Instant::now();
        let mut done = 0;
        while done < n {
            for op in batch.iter_mut() {
                op.sub = key_bytes(table, rng.below(KEYS));
            }
            out.clear();
            shard.apply_batch(7, &batch, 0, &mut out);
            done += BATCH;
        }
        ours.push(done as f64 / t.elapsed().as_secs_f64());
        let mut rng = Rng(1000 + rep as u64);
        let t = Instant::now();
        for _ in 0..n / BATCH * BATCH {
            *map.entry(ids[rng.below(KEYS)]).or_insert(0) += 1;
        }
        base.push((n / BATCH * BATCH) as f64 / t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&map);
    res.rows.push(Row::from_samples(
        "in-process incr ops/s per shard thread, 1M random keys, batches of 32",
        "ops/s",
        &ours,
        &base,
        "hashbrown HashMap<u64,i64> increment loop, one thread (same run)",
        Better::Higher,
        1.0,
    ));
}

/// A free loopback port (bound and released; good enough on a machine we control).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server process, killed when dropped.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_store(bin: &Path, native: u16, resp: u16) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let child = Command::new(bin)
        .args(["serve", "--shards", "1", "--fsync", "everysec"])
        .arg("--listen")
        .arg(format!("127.0.0.1:{native}"))
        .arg("--resp")
        .arg(format!("127.0.0.1:{resp}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let s = Server { child, _dir: dir };
    wait_resp(resp)?;
    Ok(s)
}

fn start_redis(bin: &str, port: u16) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let child = Command::new(bin)
        .arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let s = Server { child, _dir: dir };
    wait_resp(port)?;
    Ok(s)
}

/// Waits until a RESP server answers PING.
fn wait_resp(port: u16) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let mut b = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut b).is_ok()
                && &b == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!("no server answered PING on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Seconds of CPU time a process has used (user + system), from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn tcp(a: &StoreArgs, reps: usize, bin: &Path, res: &mut Results) -> Result<()> {
    let secs = if a.quick { 1.0 } else { 3.0 };
    let (native, resp) = (free_port()?, free_port()?);
    let server = start_store(bin, native, resp)?;
    let (table, _) = key_table();
    let addr: SocketAddr = format!("127.0.0.1:{native}").parse()?;
    let (mut rate, mut per_cpu) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let c0 = cpu_seconds(server.pid())?;
        let (ops, el) = pipelined_incr(addr, table, 100 + rep as u64, secs)?;
        let cpu = cpu_seconds(server.pid())? - c0;
        if rep == 0 {
            continue; // warm-up: fills the 1M keys
        }
        rate.push(ops as f64 / el);
        per_cpu.push(ops as f64 / cpu.max(1e-3));
    }
    drop(server);
    let base = vec![PAPER_OPS; rate.len()];
    let target = 5.0e6 / PAPER_OPS;
    res.rows.push(Row::from_samples(
        "native TCP incr ops/s, shards=1, batches of 32 pipelined (dedicated client)",
        "ops/s",
        &rate,
        &base,
        PAPER,
        Better::Higher,
        target,
    ));
    res.rows.push(Row::from_samples(
        "native TCP incr ops per server CPU-second, shards=1, batches of 32",
        "ops/cpu-s",
        &per_cpu,
        &base,
        PAPER,
        Better::Higher,
        target,
    ));
    Ok(())
}

/// Sends frames of 32 non-blocking increments on random keys for `secs`, keeping up to 64
/// frames unacknowledged; returns (operations acknowledged, seconds).
///
/// One thread does both directions: it writes while the window has room and otherwise blocks
/// reading acknowledgements, so the client never spins on the cores the server needs.
fn pipelined_incr(
    addr: SocketAddr,
    table: &'static [u8],
    seed: u64,
    secs: f64,
) -> Result<(u64, f64)> {
    const WINDOW: u64 = 64 * BATCH as u64;
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let client_id = 0x0B0B_0000 | seed;
    let mut b = BytesMut::new();
    wire::put_frame(
        &wire::ClientFrame {
            hello: Some(wire::Hello {
                client_id,
                shard: 0,
                token: String::new(),
                version: wire::PROTOCOL_VERSION,
                supersedes: Vec::new(),
                patient: false,
            }),
            ops: Vec::new(),
        },
        &mut b,
    );
    s.write_all(&b)?;
    let mut rbuf = BytesMut::new();
    let mut chunk = vec![0u8; 1 << 16];
    // Reads at least once and applies every complete frame; returns the newest ack.
    let mut read_acks = |s: &mut TcpStream, acked: &mut u64| -> Result<Option<wire::HelloReply>> {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("store closed the bench connection");
        }
        rbuf.extend_from_slice(&chunk[..n]);
        let mut hello = None;
        while let Some(f) =
            wire::take_frame::<wire::ServerFrame>(&mut rbuf, wire::DEFAULT_MAX_FRAME)?
        {
            if !f.error.is_empty() {
                bail!("store closed the bench connection: {}", f.error);
            }
            *acked = (*acked).max(f.acked);
            if f.hello.is_some() {
                hello = f.hello;
            }
        }
        Ok(hello)
    };
    // The Hello reply says where this client's sequence numbers resume.
    let mut acked = 0;
    let first = loop {
        if let Some(h) = read_acks(&mut s, &mut acked)? {
            break h.applied_seq;
        }
    };
    acked = acked.max(first);
    let mut rng = Rng(seed);
    let mut frame = wire::ClientFrame {
        hello: None,
        ops: (0..BATCH).map(|_| incr_op(Bytes::new())).collect(),
    };
    let mut seq = first;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        if seq - acked >= WINDOW {
            read_acks(&mut s, &mut acked)?;
            continue;
        }
        for op in frame.ops.iter_mut() {
            seq += 1;
            op.seq = seq;
            let i = rng.below(KEYS);
            op.sub = Bytes::from_static(&table[i * 8..i * 8 + 8]);
        }
        b.clear();
        wire::put_frame(&frame, &mut b);
        s.write_all(&b)?;
    }
    // Count what was acknowledged by the deadline, then let the rest drain.
    let done = acked - first;
    let el = t0.elapsed().as_secs_f64();
    while acked < seq {
        read_acks(&mut s, &mut acked)?;
    }
    Ok((done, el))
}

/// One redis-benchmark run: (ops/s reported, server CPU seconds used).
fn redis_bench(
    a: &StoreArgs,
    port: u16,
    pid: u32,
    test: &str,
    pipeline: u32,
    random: bool,
    n: u64,
) -> Result<(f64, f64)> {
    let c0 = cpu_seconds(pid)?;
    let mut cmd = Command::new(&a.redis_benchmark);
    cmd.arg("-p")
        .arg(port.to_string())
        .args(["-c", "50", "-P"])
        .arg(pipeline.to_string())
        .arg("-n")
        .arg(n.to_string())
        .args(["-t", test, "--csv"]);
    if random {
        cmd.args(["-r", "1000000"]);
    }
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {}", a.redis_benchmark))?;
    let cpu = cpu_seconds(pid)? - c0;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("\"{}\"", test.to_ascii_uppercase());
    let rps = text
        .lines()
        .find(|l| l.starts_with(&want))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|x| x.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no {test} figure in redis-benchmark output: {text}"))?;
    Ok((rps, cpu))
}

fn resp(a: &StoreArgs, reps: usize, bin: &Path, res: &mut Results) -> Result<()> {
    let n = a.requests.unwrap_or(if a.quick { 50_000 } else { 500_000 });
    let (native, ours_port, redis_port) = (free_port()?, free_port()?, free_port()?);
    let ours = start_store(bin, native, ours_port)?;
    let redis = start_redis(&a.redis_server, redis_port)?;
    let version = Command::new(&a.redis_server)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.split_whitespace()
                .nth(2)
                .map(|v| v.trim_start_matches("v=").to_string())
        })
        .unwrap_or_else(|| "?".into());
    let base_name =
        format!("redis-server {version}, appendonly yes, appendfsync everysec (same run)");
    let tests = ["incr", "set", "get", "lpush", "lpop"];
    let configs = [(16u32, false), (16, true), (64, false), (64, true)];
    // samples[config][test] = (ours ops/s, redis ops/s, ours ops/cpu-s, redis ops/cpu-s)
    let mut samples =
        vec![vec![[Vec::new(), Vec::new(), Vec::new(), Vec::new()]; tests.len()]; configs.len()];
    for rep in 0..reps {
        for (ci, &(p, r)) in configs.iter().enumerate() {
            for (ti, t) in tests.iter().enumerate() {
                // Alternate who goes first so drift does not favour either side.
                let order: [bool; 2] = if rep % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for is_ours in order {
                    let (port, pid) = if is_ours {
                        (ours_port, ours.pid())
                    } else {
                        (redis_port, redis.pid())
                    };
                    let (rps, cpu) = redis_bench(a, port, pid, t, p, r, n)?;
                    let k = if is_ours { 0 } else { 1 };
                    let s = &mut samples[ci][ti];
                    s[k].push(rps);
                    s[k + 2].push(n as f64 / cpu.max(1e-3));
                }
            }
            eprintln!(
                "rep {}/{reps}: -P {p}{} done",
                rep + 1,
                if r { " -r 1000000" } else { "" }
            );
        }
    }
    for (ci, &(p, r)) in configs.iter().enumerate() {
        let rr = if r { " -r 1000000" } else { "" };
        for (ti, t) in tests.iter().enumerate() {
            let s = &samples[ci][ti];
            let name = t.to_ascii_uppercase();
            res.rows.push(Row::from_samples(
                format!("{name} ops/s, redis-benchmark -P {p} -c 50{rr}"),
                "ops/s",
                &s[0],
                &s[1],
                base_name.clone(),
                Better::Higher,
                1.5,
            ));
            res.rows.push(Row::from_samples(
                format!("{name} ops per server CPU-second, redis-benchmark -P {p} -c 50{rr}"),
                "ops/cpu-s",
                &s[2],
                &s[3],
                base_name.clone(),
                Better::Higher,
                1.5,
            ));
        }
    }
    Ok(())
}
