//! A chain whose state lives on `chc-store` servers (`[store] addresses`), as deployed:
//! the embedded and the DPDK paths give the output and events of a run with the store in
//! the process, the state is on the servers afterwards, a second run on the same servers
//! takes clocks after the first run's, and servers with a token refuse a chain without it.
//!
//! The servers are real `chc-store serve` processes (built beside `chc-dataplane`), two of
//! them with one shard each, so every run spreads its objects over two processes.

use chc_dataplane::{pcapio, run, Chain, RunOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{chc_store_bin, sorted_lines, sorted_records};

fn traces() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces")
}

/// Loopback ports nobody listens on (all bound until all are chosen).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A `chc-store serve` process on loopback, killed on drop.
struct Server {
    child: Child,
    native: SocketAddr,
    resp: SocketAddr,
}

impl Server {
    fn start(dir: &Path, name: &str, token: Option<&Path>) -> Server {
        let bin = chc_store_bin();
        let p = free_ports(2);
        let native: SocketAddr = format!("127.0.0.1:{}", p[0]).parse().unwrap();
        let resp: SocketAddr = format!("127.0.0.1:{}", p[1]).parse().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--shards", "1", "--fsync", "no", "--listen"])
            .arg(native.to_string())
            .arg("--resp")
            .arg(resp.to_string())
            .arg("--data-dir")
            .arg(dir.join(name))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(t) = token {
            cmd.arg("--auth-token-file").arg(t);
        }
        let child = cmd.spawn().unwrap();
        let s = Server {
            child,
            native,
            resp,
        };
        let t = Instant::now();
        while TcpStream::connect(s.resp).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name} does not listen"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    /// Keys on this server, asked over its Redis face.
    fn dbsize(&self) -> u64 {
        let mut c = TcpStream::connect(self.resp).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"DBSIZE\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        let line = std::str::from_utf8(&buf[..n]).unwrap();
        line.trim()
            .strip_prefix(':')
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The paper's chain with its state on `servers` (and the servers' token file, if any).
fn chain_on(servers: &[&Server], token: Option<&Path>) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/chains/paper.toml"),
    )
    .unwrap();
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.native))
        .collect();
    let mut store = format!("[store]\naddresses = [{}]\n", list.join(", "));
    if let Some(t) = token {
        store.push_str(&format!("token_file = \"{}\"\n", t.display()));
    }
    assert!(text.contains("[store]\nshards = 2\n"));
    text.replace("[store]\nshards = 2\n", &store)
}

fn embedded(chain: &str, input: &Path, out: &Path, ev: &Path) -> Result<(), String> {
    let chain = Chain::parse(chain, "chain.toml").map_err(|e| e.to_string())?;
    run(&RunOptions {
        events: Some(ev.to_path_buf()),
        ..RunOptions::new(chain, input, out)
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn clocks(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["clock"].as_u64())
        .collect()
}

#[test]
fn both_paths_keep_their_state_on_the_servers_and_give_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chain_in_process = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/chains/paper.toml"),
    )
    .unwrap();
    for trace in ["scan-nmap-vsn.pcap", "ftp-ipv4.pcap"] {
        let t = traces().join(trace);
        // Fresh servers have empty data directories of their own.
        let d = &d.join(trace);
        std::fs::create_dir_all(d).unwrap();
        let (io, ie) = (d.join("ideal.pcap"), d.join("ideal.jsonl"));
        embedded(&chain_in_process, &t, &io, &ie).unwrap();

        // Embedded, on two fresh servers.
        let (a, b) = (Server::start(d, "a1", None), Server::start(d, "b1", None));
        let text = chain_on(&[&a, &b], None);
        let (eo, ee) = (d.join("emb.pcap"), d.join("emb.jsonl"));
        embedded(&text, &t, &eo, &ee).unwrap();
        // As multisets: frames that pass the chain by (non-IP) may leave earlier or later.
        assert!(
            sorted_records(&io) == sorted_records(&eo),
            "{trace}: the output differs with the state on servers"
        );
        assert_eq!(
            sorted_lines(&[&ie]),
            sorted_lines(&[&ee]),
            "{trace}: events (with clocks)"
        );
        // The state went to both servers, not to a store in the process.
        assert!(
            a.dbsize() > 0 && b.dbsize() > 0,
            "{trace}: servers are empty"
        );

        // A second run on the same servers takes clocks after every one of the first.
        let (so, se) = (d.join("again.pcap"), d.join("again.jsonl"));
        embedded(&text, &t, &so, &se).unwrap();
        let first = clocks(&ee).into_iter().max().unwrap();
        let second = clocks(&se).into_iter().min().unwrap();
        assert!(
            second > first,
            "{trace}: clock {second} reused (first run up to {first})"
        );
        drop((a, b));

        // The DPDK path, on two fresh servers.
        if !chc_dpdk::is_available() {
            eprintln!("DPDK part skipped: {}", chc_dpdk::backend_status());
            continue;
        }
        let (a, b) = (Server::start(d, "a2", None), Server::start(d, "b2", None));
        let file = d.join("servers.toml");
        std::fs::write(&file, chain_on(&[&a, &b], None)).unwrap();
        let (dout, dev) = (d.join("dpdk.pcap"), d.join("dpdk.jsonl"));
        let out = Command::new(env!("CARGO_BIN_EXE_chc-dataplane"))
            .args(["run", "--backend", "dpdk", "--chain"])
            .arg(&file)
            .arg("--pcap-in")
            .arg(&t)
            .arg("--pcap-out")
            .arg(&dout)
            .arg("--events")
            .arg(&dev)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{trace}: dpdk run failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            sorted_records(&io) == sorted_records(&dout),
            "{trace}: DPDK output differs"
        );
        assert_eq!(
            sorted_lines(&[&ie]),
            sorted_lines(&[&dev]),
            "{trace}: DPDK events"
        );
        assert!(
            a.dbsize() > 0 && b.dbsize() > 0,
            "{trace}: servers are empty"
        );
    }
}

#[test]
fn servers_with_a_token_refuse_a_chain_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let s = Server::start(d, "t", Some(&token));
    let t = traces().join("ftp-ipv4.pcap");
    let (o, e) = (d.join("o.pcap"), d.join("o.jsonl"));
    let err = embedded(&chain_on(&[&s], None), &t, &o, &e).unwrap_err();
    assert!(err.contains(&s.native.to_string()), "{err}");
    embedded(&chain_on(&[&s], Some(&token)), &t, &o, &e).unwrap();
    assert!(
        pcapio::read_all(&o).unwrap().len() > 1,
        "the run wrote nothing"
    );
}
