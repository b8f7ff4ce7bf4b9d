//! The store's fence for replacement instances (`Hello.supersedes`): a client that takes over
//! from a failed one is served only once the failed client's connection is gone and every
//! operation it had sent is applied. Without it, a replacement started quickly can read a
//! flow's state before the failed instance's last update of it reaches the shard.

mod common;

use chc_store::client::{ObjKey, StoreClient, TcpOptions};
use chc_store::server::{Store, StoreConfig};
use chc_store::Value;
use common::{incr, Native};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const FAILED: u64 = 0xA000;
const REPLACEMENT: u64 = 0xB000;

fn store() -> Store {
    Store::start(StoreConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..StoreConfig::in_memory(1)
    })
    .expect("store starts")
}

/// Connects as the replacement of `FAILED` in a thread; sends (time connected, value of `k`).
fn replacement(store: &Store) -> mpsc::Receiver<(Instant, i64)> {
    replacement_with(store, false)
}

/// As [`replacement`]; `patient` as a warm spare connects.
fn replacement_with(store: &Store, patient: bool) -> mpsc::Receiver<(Instant, i64)> {
    let addr = store.native_addr.expect("listening");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let opts = TcpOptions {
            connect_timeout: Duration::from_secs(20),
            supersedes: vec![FAILED],
            patient,
            ..Default::default()
        };
        let mut c = StoreClient::connect(&[addr], REPLACEMENT, opts).expect("connects");
        let at = Instant::now();
        let r = c.call(ObjKey::raw("k").get()).expect("reads");
        let v = Value::from_wire(r.value.as_ref()).as_int().unwrap_or(0);
        let _ = tx.send((at, v));
    });
    rx
}

/// The client that fails, connected, with one increment of "k" by `n` applied.
fn failed_client(store: &Store, n: i64) -> Native {
    let mut c = Native::connect(store.native_addr.unwrap(), FAILED, 0, "").unwrap();
    c.send_ops(vec![incr("k", n, true)]).unwrap();
    c.wait_acked().unwrap();
    c
}

/// Ends the failed client's connection; the replacement is then served promptly and sees
/// `k` = `want`, every update the failed client made.
fn served_once_gone(failed: Native, rx: &mpsc::Receiver<(Instant, i64)>, want: i64) {
    let gone = Instant::now();
    drop(failed);
    let (at, v) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("served once the connection is gone");
    assert_eq!(
        v, want,
        "the replacement must see the failed client's last update"
    );
    assert!(
        at.duration_since(gone) < Duration::from_secs(1),
        "served {:?} after the end of the connection it replaces",
        at.duration_since(gone)
    );
}

#[test]
fn a_replacement_is_served_after_the_failed_clients_last_operations() {
    let s = store();
    let mut failed = failed_client(&s, 1);
    let rx = replacement(&s);
    // The failed client's connection is still open: the replacement waits.
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "served while the connection it replaces was open"
    );
    // Its last operation, sent without waiting, then its end.
    failed.send_ops(vec![incr("k", 10, true)]).unwrap();
    served_once_gone(failed, &rx, 11);
    s.shutdown();
}

#[test]
fn a_superseded_connection_that_stays_open_is_closed_after_the_wait() {
    let s = store();
    let mut failed = failed_client(&s, 5);
    let start = Instant::now();
    let rx = replacement(&s);
    let (at, v) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("served after the wait");
    assert_eq!(v, 5);
    let waited = at.duration_since(start);
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?}, before the superseded connection was given its time"
    );
    // The superseded connection was told why it is closed, and closed.
    let f = failed.read_frame().expect("a last frame");
    assert!(f.error.contains("superseded"), "{:?}", f.error);
    assert!(failed.read_frame().is_err(), "the connection is closed");
    s.shutdown();
}

/// A warm spare connects ahead of the failure: it waits past the deadline without closing the
/// live client's connection, which keeps being served, and is served once that one ends.
#[test]
fn a_patient_replacement_waits_for_the_live_client_without_closing_it() {
    let s = store();
    let mut failed = failed_client(&s, 2);
    let rx = replacement_with(&s, true);
    assert!(
        rx.recv_timeout(Duration::from_millis(2600)).is_err(),
        "a patient replacement was served while the client it replaces was live"
    );
    // Past the impatient deadline the live client is still served.
    failed.send_ops(vec![incr("k", 20, true)]).unwrap();
    failed
        .wait_acked()
        .expect("the live client is still served");
    served_once_gone(failed, &rx, 22);
    s.shutdown();
}

/// A patient connection broken while it waits (the store went away) is not made again: a
/// store that comes back may not know yet the clients it supersedes and would let it through
/// while they live. Connecting fails at once instead of retrying.
#[test]
fn a_patient_replacement_whose_store_goes_away_fails_instead_of_retrying() {
    let s = store();
    let addr = s.native_addr.expect("listening");
    let _failed = failed_client(&s, 1);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let opts = TcpOptions {
            connect_timeout: Duration::from_secs(20),
            supersedes: vec![FAILED],
            patient: true,
            ..Default::default()
        };
        let _ = tx.send(StoreClient::connect(&[addr], REPLACEMENT, opts).is_ok());
    });
    std::thread::sleep(Duration::from_millis(300));
    s.shutdown();
    let connected = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("connecting ends soon after the store is gone");
    assert!(
        !connected,
        "a patient connection was made without its fence"
    );
}

#[test]
fn clients_that_supersede_nobody_connected_are_not_held() {
    let s = store();
    let rx = replacement(&s);
    let (_, v) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("served at once");
    assert_eq!(v, 0);
    s.shutdown();
}
