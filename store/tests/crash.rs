//! Crash safety: `kill -9` a loaded `chc-store serve --fsync always` at random points, restart
//! it, and check that no acknowledged write was lost and that every key holds a prefix of the
//! operations issued on it.
//!
//! The workload makes both properties checkable. Each counter `c<i>` is incremented by 1 by
//! exactly one native-protocol connection, so after a restart its value must lie between the
//! increments acknowledged and the increments sent. Each list `l<i>` gets `RPUSH l<i> <n>` with
//! n = 0, 1, 2, ... from exactly one RESP connection, so the recovered list must be exactly
//! `0..m` with m between the pushes acknowledged and the pushes sent: a lost acknowledged push
//! shortens it, a hole or a reordering breaks the sequence.
//!
//! `CHC_CRASH_ROUNDS` sets the number of kills (default 20; benches/scripts/store-crash.sh
//! runs 1000).

mod common;

use common::{incr, shard_of, Native, Proc, Reply, Resp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHARDS: u32 = 2;
const COUNTERS: usize = 8;
const LISTS: usize = 4;

/// What one key has seen: operations sent and acknowledged (absolute, across rounds).
#[derive(Default, Clone, Copy, Debug)]
struct Track {
    sent: u64,
    acked: u64,
}

fn counter(i: usize) -> String {
    format!("c{i}")
}

fn list(i: usize) -> String {
    format!("l{i}")
}

/// Native writer of one shard's counters: frames of blocking increments, several in flight.
fn native_writer(
    addr: std::net::SocketAddr,
    shard: u32,
    client: u64,
    keys: Vec<usize>,
    mut track: Vec<Track>,
    stop: Arc<AtomicBool>,
) -> Vec<Track> {
    let Ok(mut c) = Native::connect(addr, client, shard, "") else {
        return track;
    };
    // seq -> key index, to credit cumulative acknowledgements.
    let mut key_of_seq: Vec<usize> = Vec::new();
    let base = c.next_seq;
    let mut credited = c.acked;
    let mut rng = client;
    'outer: while !stop.load(Ordering::Relaxed) {
        let mut ops = Vec::new();
        for _ in 0..8 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let k = keys[(rng % keys.len() as u64) as usize];
            ops.push(incr(&counter(k), 1, rng.is_multiple_of(2)));
            key_of_seq.push(k);
        }
        let n = ops.len();
        if c.send_ops(ops).is_err() {
            // Not sent for sure? It may have reached the server: count it as sent.
            for &k in &key_of_seq[key_of_seq.len() - n..] {
                track[k].sent += 1;
            }
            break;
        }
        for &k in &key_of_seq[key_of_seq.len() - n..] {
            track[k].sent += 1;
        }
        // Keep at most 4 frames unacknowledged.
        while c.next_seq - 1 - c.acked > 32 {
            match c.read_frame() {
                Ok(f) if f.error.is_empty() => {}
                _ => break 'outer,
            }
            while credited < c.acked {
                credited += 1;
                track[key_of_seq[(credited - base) as usize]].acked += 1;
            }
        }
    }
    // Credit whatever arrives until the connection dies.
    let _ = c.s.set_read_timeout(Some(Duration::from_millis(500)));
    while let Ok(f) = c.read_frame() {
        if !f.error.is_empty() {
            break;
        }
        while credited < c.acked {
            credited += 1;
            track[key_of_seq[(credited - base) as usize]].acked += 1;
        }
    }
    while credited < c.acked {
        credited += 1;
        track[key_of_seq[(credited - base) as usize]].acked += 1;
    }
    track
}

/// RESP writer of the lists: pipelined RPUSHes of each list's next number.
fn resp_writer(
    addr: std::net::SocketAddr,
    mut track: Vec<Track>,
    stop: Arc<AtomicBool>,
) -> Vec<Track> {
    // The kill may come before this thread gets to connect.
    let Ok(mut r) = Resp::try_connect(addr) else {
        return track;
    };
    let _ = r.s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut pending: std::collections::VecDeque<usize> = Default::default();
    let mut i = 0usize;
    loop {
        if !stop.load(Ordering::Relaxed) && pending.len() < 16 {
            let k = i % LISTS;
            i += 1;
            let n = track[k].sent.to_string();
            let name = list(k);
            track[k].sent += 1;
            pending.push_back(k);
            if r.send(&[b"RPUSH", name.as_bytes(), n.as_bytes()]).is_err() {
                break;
            }
            continue;
        }
        if pending.is_empty() {
            break;
        }
        match r.read() {
            Ok(Reply::Int(_)) => {
                let k = pending.pop_front().expect("pending");
                track[k].acked += 1;
            }
            Ok(other) => panic!("RPUSH answered {other:?}"),
            Err(_) => break,
        }
    }
    track
}

/// Checks the recovered state against what was sent and acknowledged; returns the state as
/// the new baseline (sent = acked = recovered).
fn verify(p: &Proc, round: usize, counters: &mut [Track], lists: &mut [Track]) {
    let mut r = Resp::connect(p.resp);
    for (i, t) in counters.iter_mut().enumerate() {
        let v = r.get_int(&counter(i)) as u64;
        assert!(
            t.acked <= v && v <= t.sent,
            "round {round}: counter c{i} = {v}, but {} increments were acknowledged and {} sent",
            t.acked,
            t.sent
        );
        *t = Track { sent: v, acked: v };
    }
    for (i, t) in lists.iter_mut().enumerate() {
        let items = r.list_ints(&list(i));
        let m = items.len() as u64;
        assert!(
            items.iter().copied().eq(0..m),
            "round {round}: list l{i} is not a prefix of the pushes: {items:?}"
        );
        assert!(
            t.acked <= m && m <= t.sent,
            "round {round}: list l{i} has {m} items, but {} pushes were acknowledged and {} sent",
            t.acked,
            t.sent
        );
        *t = Track { sent: m, acked: m };
    }
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    let rounds: usize = std::env::var("CHC_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--fsync",
        "always",
        "--shards",
        "2",
        "--checkpoint-ms",
        "40",
    ];
    let mut counters = vec![Track::default(); COUNTERS];
    let mut lists = vec![Track::default(); LISTS];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut acked_total = 0u64;
    for round in 0..rounds {
        let p = Proc::start(dir.path(), &args);
        verify(&p, round, &mut counters, &mut lists);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for shard in 0..SHARDS {
            let keys: Vec<usize> = (0..COUNTERS)
                .filter(|&i| shard_of(&counter(i), SHARDS) == shard)
                .collect();
            if keys.is_empty() {
                continue;
            }
            let (addr, t, s) = (p.native, counters.clone(), stop.clone());
            // A fresh client id per round: sequence numbers start over.
            let client = (round as u64) << 8 | u64::from(shard) | 1 << 40;
            handles.push(std::thread::spawn(move || {
                (true, native_writer(addr, shard, client, keys, t, s))
            }));
        }
        let (addr, t, s) = (p.resp, lists.clone(), stop.clone());
        handles.push(std::thread::spawn(move || (false, resp_writer(addr, t, s))));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 120));
        // Kill at a random point while the writers are busy; only then stop them.
        p.kill9();
        stop.store(true, Ordering::Relaxed);
        let (c0, l0) = (counters.clone(), lists.clone());
        for h in handles {
            let (native, t) = h.join().expect("writer thread");
            if std::env::var("CHC_CRASH_DEBUG").is_ok() {
                eprintln!("round {round}: native {native}: {t:?}");
            }
            let (target, before) = if native {
                (&mut counters, &c0)
            } else {
                (&mut lists, &l0)
            };
            for ((dst, src), b) in target.iter_mut().zip(t).zip(before) {
                // Each key has one writer: take the tracks of the keys it moved.
                if src.sent != b.sent || src.acked != b.acked {
                    *dst = src;
                }
            }
        }
        acked_total += counters.iter().chain(&lists).map(|t| t.acked).sum::<u64>();
    }
    let p = Proc::start(dir.path(), &args);
    verify(&p, rounds, &mut counters, &mut lists);
    assert!(
        acked_total > rounds as u64,
        "the load must actually write something ({acked_total} acknowledged writes)"
    );
    eprintln!(
        "{rounds} kills; final counters {:?}, list lengths {:?}",
        counters.iter().map(|t| t.acked).collect::<Vec<_>>(),
        lists.iter().map(|t| t.acked).collect::<Vec<_>>()
    );
}
