//! Under a service manager (`Type=notify`): `chc-store serve` and `chc-dataplane run
//! --backend dpdk` say they are ready, ping the watchdog while they work, and say they are
//! stopping. The manager's socket is a datagram socket the test binds.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::chc_store_bin;

/// Every message that arrives within `limit`, until `last` arrives.
fn messages(rx: &UnixDatagram, last: &str, limit: Duration) -> Vec<String> {
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while t.elapsed() < limit {
        if let Ok(k) = rx.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..k]).to_string();
            let done = m == last;
            got.push(m);
            if done {
                break;
            }
        }
    }
    got
}

#[test]
fn the_store_is_ready_once_it_listens_pings_and_says_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(chc_store_bin())
        .args(["serve", "--resp", "off", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "200000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = messages(&rx, "WATCHDOG=1", Duration::from_secs(20));
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1"),
        "{first:?}"
    );
    // Ready means listening.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert_eq!(
        first.last().map(String::as_str),
        Some("WATCHDOG=1"),
        "{first:?}"
    );
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let rest = messages(&rx, "STOPPING=1", Duration::from_secs(20));
    assert_eq!(
        rest.last().map(String::as_str),
        Some("STOPPING=1"),
        "{rest:?}"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_dpdk_dataplane_is_ready_pings_while_its_lcores_turn_and_says_it_stops() {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let rx = UnixDatagram::bind(&sock).unwrap();
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/mixed.pcap");
    // 1 370 packets at 4 000 per second: a third of a second of work.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chc-dataplane"))
        .args(["run", "--backend", "dpdk", "--rate", "4000", "--pcap-in"])
        .arg(&trace)
        .arg("--pcap-out")
        .arg(dir.path().join("out.pcap"))
        .env("NOTIFY_SOCKET", &sock)
        .env("WATCHDOG_USEC", "100000")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let got = messages(&rx, "STOPPING=1", Duration::from_secs(60));
    assert!(child.wait().unwrap().success());
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{got:?}");
    assert_eq!(
        got.last().map(String::as_str),
        Some("STOPPING=1"),
        "{got:?}"
    );
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 2, "{got:?}");
}
