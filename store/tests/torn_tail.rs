//! A torn WAL tail, end to end: the real binary logs a known sequence of pushes and is killed;
//! then the WAL is cut at every byte of its last records and a store is started on each cut
//! with `Store::start`. Every start must recover exactly the records that are whole before the
//! cut (a prefix of the pushes), report the cut-off bytes, and keep serving: a push after the
//! truncation survives the next restart.

mod common;

use chc_proto::records::FrameReader;
use chc_store::server::{Store, StoreConfig};
use chc_store::wal::{self, FsyncPolicy};
use common::{Proc, Reply, Resp};
use std::path::Path;

const PUSHES: u64 = 24;
/// How many of the last records are cut at every byte.
const CUT_RECORDS: usize = 2;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn start(dir: &Path) -> Store {
    Store::start(StoreConfig {
        shards: 1,
        data_dir: Some(dir.to_path_buf()),
        fsync: FsyncPolicy::No,
        checkpoint_interval: std::time::Duration::from_secs(3600),
        resp: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .expect("the store starts on a torn log")
}

#[test]
fn every_cut_of_the_last_records_recovers_the_whole_prefix() {
    let src = tempfile::tempdir().unwrap();
    {
        let p = Proc::start(
            src.path(),
            &["--fsync", "always", "--checkpoint-ms", "3600000"],
        );
        let mut r = Resp::connect(p.resp);
        for i in 0..PUSHES {
            assert_eq!(
                r.cmd(&["RPUSH", "seq", &i.to_string()]),
                Reply::Int(i as i64 + 1)
            );
        }
        p.kill9();
    }
    let segs = wal::segments(src.path(), 0).unwrap();
    assert_eq!(segs.len(), 1, "one segment: no checkpoint rotated the log");
    let name = segs[0].1.file_name().unwrap().to_owned();
    let full = std::fs::read(&segs[0].1).unwrap();
    // Where each record ends.
    let mut ends = Vec::new();
    let mut fr = FrameReader::new(&full);
    while fr.next_wal().is_some() {
        ends.push(fr.valid_len());
    }
    assert!(fr.torn().is_none());
    assert_eq!(ends.len() as u64, PUSHES, "one WAL record per push");
    let from = ends[ends.len() - 1 - CUT_RECORDS];
    let scratch = tempfile::tempdir().unwrap();
    for cut in from..=full.len() {
        let dir = scratch.path().join(format!("cut-{cut}"));
        copy_dir(src.path(), &dir);
        std::fs::write(dir.join(&name), &full[..cut]).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        let store = start(&dir);
        let torn = store.recovery[0].truncated.clone();
        assert_eq!(
            torn.is_some(),
            !ends.contains(&cut),
            "cut {cut}: a torn tail is reported exactly when the cut is inside a record"
        );
        if let Some((_, at, dropped)) = torn {
            assert_eq!(
                at,
                ends[whole as usize - 1],
                "cut {cut}: truncated to the last whole record"
            );
            assert_eq!(at as u64 + dropped, cut as u64);
        }
        let mut r = Resp::connect(store.resp_addr.unwrap());
        let items = r.list_ints("seq");
        assert_eq!(
            items,
            (0..whole).collect::<Vec<_>>(),
            "cut {cut}: exactly the whole records are recovered"
        );
        if cut == from + 1 {
            // Still serving after the truncation, and what it logs next is kept.
            assert_eq!(
                r.cmd(&["RPUSH", "seq", "after"]),
                Reply::Int(whole as i64 + 1)
            );
            drop(r);
            store.shutdown();
            let again = start(&dir);
            assert!(again.recovery[0].truncated.is_none());
            let mut r = Resp::connect(again.resp_addr.unwrap());
            let n = match r.cmd(&["LLEN", "seq"]) {
                Reply::Int(n) => n,
                other => panic!("LLEN: {other:?}"),
            };
            assert_eq!(n, whole as i64 + 1);
        } else {
            drop(r);
            store.shutdown();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
