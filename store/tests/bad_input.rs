//! Bad input on both ports, with real sockets and the real binary: a malformed or oversize
//! frame closes that connection with a logged reason, every other client keeps being served,
//! and nothing acknowledged is lost. With `--auth-token-file`, both ports refuse clients that
//! do not authenticate.

mod common;

use common::{incr, Native, Proc, Reply, Resp};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends raw bytes on a fresh connection and returns everything the server sends back until
/// it closes the connection (or `None` if it stays open).
fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The peer may close while we are still writing a large frame.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

/// A native connection that has said Hello, for sending bad frames after the handshake.
fn after_hello(addr: std::net::SocketAddr, client: u64, bad: &[u8]) -> Option<Vec<u8>> {
    let mut c = Native::connect(addr, client, 0, "").unwrap();
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.s.write_all(bad);
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        match c.s.read(&mut b) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

#[test]
fn malformed_and_oversize_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), &["--fsync", "always"]);
    // Well-behaved clients on both ports, kept open throughout.
    let mut good = Native::connect(p.native, 1, 0, "").unwrap();
    let mut good_resp = Resp::connect(p.resp);
    let mut native_acked = 0i64;
    let mut resp_acked = 0i64;
    let mut step = |good: &mut Native, good_resp: &mut Resp| {
        good.send_ops(vec![incr("good", 1, false)]).unwrap();
        good.wait_acked().unwrap();
        native_acked += 1;
        assert_eq!(
            good_resp.cmd(&["INCR", "good-resp"]),
            Reply::Int(resp_acked + 1)
        );
        resp_acked += 1;
    };
    step(&mut good, &mut good_resp);

    // Native port, after the Hello: a length prefix that is not a varint, a frame over the
    // 16 MiB limit, and a frame whose body does not decode.
    let bad_native: [(&str, Vec<u8>); 3] = [
        ("not a valid varint", vec![0xff; 12]),
        ("exceeds the limit", vec![0x80, 0x80, 0x80, 0x10]),
        ("does not decode", vec![4, 0xff, 0xff, 0xff, 0xff]),
    ];
    for (i, (why, bytes)) in bad_native.iter().enumerate() {
        let got = after_hello(p.native, 100 + i as u64, bytes)
            .unwrap_or_else(|| panic!("native {why}: connection left open"));
        let mut b = bytes::BytesMut::from(&got[..]);
        let mut error = String::new();
        while let Ok(Some(f)) =
            chc_proto::wire::take_frame::<chc_proto::wire::ServerFrame>(&mut b, 1 << 24)
        {
            error.push_str(&f.error);
        }
        assert!(
            error.contains(why),
            "native {why}: the close says why: {error:?}"
        );
        assert!(
            p.logged(&["closing connection", why]),
            "native {why}: the reason is logged"
        );
        step(&mut good, &mut good_resp);
    }
    // Native port, before the Hello: garbage instead of a Hello is refused.
    let got = send_raw(p.native, &[0xff; 16]).expect("closed");
    assert!(String::from_utf8_lossy(&got).contains("bad hello frame"));
    assert!(p.logged(&["refusing", "bad hello frame"]));
    step(&mut good, &mut good_resp);

    // RESP port: malformed multibulk and bulk lengths, an oversize bulk, an oversize inline
    // request. Each gets a protocol error and the connection is closed.
    let too_big_inline = vec![b'a'; 70 * 1024];
    let bad_resp: [(&str, &[u8]); 5] = [
        ("invalid multibulk length", b"*x\r\n"),
        ("invalid bulk length", b"*1\r\n$-5\r\n"),
        ("invalid bulk length", b"*1\r\n$999999999999\r\n"),
        ("expected '$'", b"*1\r\n:3\r\n"),
        ("too big inline request", &too_big_inline),
    ];
    for (why, bytes) in bad_resp {
        let got = send_raw(p.resp, bytes).unwrap_or_else(|| panic!("RESP {why}: left open"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("-ERR Protocol error") && text.contains(why),
            "RESP {why}: {text:?}"
        );
        assert!(
            p.logged(&["closing RESP connection", why]),
            "RESP {why}: logged"
        );
        step(&mut good, &mut good_resp);
    }
    // A pipeline whose tail is malformed: the commands before it are answered (and
    // acknowledged), the connection closes, and their effects stay.
    let got = send_raw(p.resp, b"INCR pre\r\nINCR pre\r\n*1\r\n$x\r\n").expect("closed");
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with(":1\r\n:2\r\n-ERR Protocol error"),
        "{text:?}"
    );
    step(&mut good, &mut good_resp);

    // Nothing acknowledged was lost, on the live server and after a restart.
    let check = |r: &mut Resp| {
        assert_eq!(r.get_int("good"), native_acked);
        assert_eq!(r.get_int("good-resp"), resp_acked);
        assert_eq!(r.get_int("pre"), 2);
    };
    check(&mut good_resp);
    drop(good);
    drop(good_resp);
    p.kill9();
    let p = Proc::start(dir.path(), &["--fsync", "always"]);
    check(&mut Resp::connect(p.resp));
}

#[test]
fn with_a_token_both_ports_refuse_unauthenticated_clients() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let p = Proc::start(
        &dir.path().join("data"),
        &["--auth-token-file", token_file.to_str().unwrap()],
    );
    // Native: no token, a wrong token, then the right one.
    let e = Native::connect(p.native, 1, 0, "").err().expect("refused");
    assert!(e.contains("authentication failed"), "{e}");
    let e = Native::connect(p.native, 1, 0, "wrong")
        .err()
        .expect("refused");
    assert!(e.contains("authentication failed"), "{e}");
    assert!(p.logged(&["refusing", "authentication failed"]));
    let mut c = Native::connect(p.native, 1, 0, "s3cret").expect("accepted");
    c.send_ops(vec![incr("n", 5, false)]).unwrap();
    c.wait_acked().unwrap();
    // RESP: every command but AUTH is refused until AUTH succeeds, and changes nothing.
    let mut r = Resp::connect(p.resp);
    for cmd in [
        &["GET", "n"][..],
        &["INCR", "n"],
        &["SET", "n", "0"],
        &["DBSIZE"],
    ] {
        match r.cmd(cmd) {
            Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{cmd:?}: {e}"),
            other => panic!("{cmd:?} without AUTH answered {other:?}"),
        }
    }
    match r.cmd(&["AUTH", "wrong"]) {
        Reply::Error(e) => assert!(e.starts_with("WRONGPASS"), "{e}"),
        other => panic!("AUTH wrong answered {other:?}"),
    }
    assert!(matches!(r.cmd(&["GET", "n"]), Reply::Error(e) if e.starts_with("NOAUTH")));
    assert_eq!(r.cmd(&["AUTH", "s3cret"]), Reply::Simple("OK".into()));
    assert_eq!(r.get_int("n"), 5, "the refused commands changed nothing");
}

/// A client of an older protocol version is refused with the reason, not served: a version-2
/// client and a version-3 store (or the other way round) would disagree on what an increment
/// carrying further packets' clocks means, and one side would count wrong without a word.
#[test]
fn a_client_of_another_protocol_version_is_refused() {
    use chc_proto::wire;
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(&dir.path().join("data"), &[]);
    for version in [wire::PROTOCOL_VERSION - 1, wire::PROTOCOL_VERSION + 1] {
        let mut b = bytes::BytesMut::new();
        wire::put_frame(
            &wire::ClientFrame {
                hello: Some(wire::Hello {
                    client_id: 9,
                    version,
                    ..Default::default()
                }),
                ops: Vec::new(),
            },
            &mut b,
        );
        let mut got = bytes::BytesMut::from(&send_raw(p.native, &b).expect("closed")[..]);
        let f = wire::take_frame::<wire::ServerFrame>(&mut got, wire::DEFAULT_MAX_FRAME)
            .expect("a frame")
            .expect("a whole frame");
        assert!(
            f.error
                .contains(&format!("protocol version {version} not supported")),
            "{}",
            f.error
        );
    }
    // The current version is served.
    let mut c = Native::connect(p.native, 9, 0, "").expect("accepted");
    c.send_ops(vec![incr("n", 1, false)]).unwrap();
    c.wait_acked().unwrap();
}

/// A data directory that cannot be made (a file is in the way) stops the start with an error
/// that names it, instead of an anonymous system error.
#[test]
fn a_data_directory_that_cannot_be_made_is_named() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("taken");
    std::fs::write(&file, b"").unwrap();
    let cfg = chc_store::server::StoreConfig {
        data_dir: Some(file.clone()),
        ..chc_store::server::StoreConfig::in_memory(1)
    };
    let err = match chc_store::server::Store::start(cfg) {
        Ok(_) => panic!("a file as the data directory must stop the start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(file.to_str().unwrap()), "{err}");
}
