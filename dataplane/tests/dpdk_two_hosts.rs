//! A chain split over two hosts: two `chc-dataplane --backend dpdk` processes in two
//! network namespaces joined by a veth pair (`net_af_packet` on both ends). Host `a` has
//! the root and the NAT and reads the trace; host `b` runs the portscan detector, the load
//! balancer and the off-path Trojan detector and writes the output. Packets cross the veth
//! with their CHC metadata in NSH; deletes and commits go back over the control channel.
//!
//! Checked: the COE checker finds the run equivalent to the ideal chain; beyond that the
//! events of both hosts together equal the embedded run's line for line, clocks included
//! (so the clocks, weights and update vectors survived the NSH hop), and the output on `b`
//! has the embedded path's bytes, capture times and wire lengths.
//!
//! Needs root (namespaces, veth); without it the test says so and passes.
//!
//! Nothing here depends on timing: the link is used once both ends report carrier, the
//! hosts find each other over the control channel (host `b` retries until the root
//! listens, the root starts reading only once `b` has said hello), both hosts' stderr is
//! drained while they run, and a generous deadline turns a hang into a failure that
//! shows what each host printed.

use chc_dataplane::{pcapio, run, Chain, RunOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{chc_store_bin, sorted_lines, sorted_records};

/// Longest a trace's two-host run may take (a few seconds alone; far longer on a loaded
/// machine). Past it both hosts are killed and the test fails with their output.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// Longest a crash run may take once the failed host is back (its traces take seconds).
const CRASH_RUN_LIMIT: Duration = Duration::from_secs(120);
/// Longest the veth pair may take to report carrier on both ends.
const LINK_LIMIT: Duration = Duration::from_secs(60);

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Two hosts for a test, or `None` (said why) where DPDK, root or namespaces are missing.
fn hosts_or_skip() -> Option<Hosts> {
    if !chc_dpdk::is_available() {
        eprintln!("skipped: {}", chc_dpdk::backend_status());
        return None;
    }
    if !is_root() {
        eprintln!("skipped: needs root to make network namespaces");
        return None;
    }
    let h = Hosts::make();
    if h.is_none() {
        eprintln!("skipped: cannot make network namespaces and a veth pair here");
    }
    h
}

/// Two namespaces and a veth pair between them; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn make() -> Option<Hosts> {
        // Tests of one process run at once: each gets its own pair of namespaces.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let h = Hosts {
            a: format!("chca{id}"),
            b: format!("chcb{id}"),
        };
        if !sh(&["ip", "netns", "add", &h.a]) {
            return None;
        }
        let ok = sh(&["ip", "netns", "add", &h.b])
            && sh(&[
                "ip", "link", "add", "va", "netns", &h.a, "mtu", "1700", "type", "veth", "peer",
                "name", "vb", "netns", &h.b, "mtu", "1700",
            ])
            && sh(&[
                "ip",
                "-n",
                &h.a,
                "addr",
                "add",
                "10.199.7.1/30",
                "dev",
                "va",
            ])
            && sh(&[
                "ip",
                "-n",
                &h.b,
                "addr",
                "add",
                "10.199.7.2/30",
                "dev",
                "vb",
            ])
            && sh(&["ip", "-n", &h.a, "link", "set", "va", "up"])
            && sh(&["ip", "-n", &h.b, "link", "set", "vb", "up"])
            && sh(&["ip", "-n", &h.a, "link", "set", "lo", "up"])
            && sh(&["ip", "-n", &h.b, "link", "set", "lo", "up"]);
        ok.then_some(h)
    }
}

impl Hosts {
    /// Waits until both ends of the veth pair are up with carrier.
    fn wait_link_up(&self) {
        let t = Instant::now();
        for (ns, dev) in [(&self.a, "va"), (&self.b, "vb")] {
            loop {
                let out = Command::new("ip")
                    .args(["-n", ns, "-o", "link", "show", "dev", dev])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("LOWER_UP") && text.contains("state UP") {
                    break;
                }
                assert!(
                    t.elapsed() < LINK_LIMIT,
                    "{dev} in {ns} not up after {LINK_LIMIT:?}: {text}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.a]);
        sh(&["ip", "netns", "del", &self.b]);
    }
}

/// Frames in each `net_af_packet` ring (its default is 512). The link must hold what host
/// `a` may have sent while host `b` is not polling (on a loaded machine, `b` can be off
/// the CPU for a while): the root's window (`log_limit` 256, two frames each, since the
/// Trojan detector's tap copy crosses too) and every frame that passes through unclocked
/// (503 non-IP frames in `scan-nmap-vsn.pcap`), which no window bounds. Frames a full
/// ring drops would leave their clocks unsettled at the root.
const LINK_FRAMES: usize = 4096;

/// Where the shared store server listens (host a's end of the veth).
const STORE_ADDR: &str = "10.199.7.1:7132";

/// A `chc-store serve` in namespace `ns`, killed on drop.
struct StoreServer(Child);

impl StoreServer {
    fn start(ns: &str, dir: &Path) -> StoreServer {
        StoreServer::start_with(ns, dir, "no")
    }

    /// `fsync` as `chc-store serve --fsync` takes it (`always` survives a SIGKILL whole).
    fn start_with(ns: &str, dir: &Path, fsync: &str) -> StoreServer {
        let bin = chc_store_bin();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(["serve", "--shards", "2", "--fsync", fsync, "--resp", "off"])
            .args(["--listen", STORE_ADDR, "--data-dir"])
            .arg(dir.join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The hosts retry their connection while it starts.
        StoreServer(child)
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chain_text(input: &Path, output: &Path, store: Option<&str>) -> String {
    let store = store
        .map(|a| format!("[store]\naddresses = [\"{a}\"]\n"))
        .unwrap_or_default();
    format!(
        r#"
{store}
[root]
control = "10.199.7.1:7131"
log_limit = 256

[[vertex]]
name = "nat"
nf = "nat"
host = "a"
[[vertex]]
name = "portscan"
nf = "portscan"
host = "b"
[[vertex]]
name = "lb"
nf = "lb"
host = "b"
[[vertex]]
name = "trojan"
nf = "trojan"
host = "b"

[[edge]]
from = "nat"
to = "portscan"
[[edge]]
from = "portscan"
to = "lb"
[[tap]]
from = "nat"
to = "trojan"

[[port]]
name = "in"
device = "net_pcap0,rx_pcap={}"
host = "a"
egress = "out"
[[port]]
name = "out"
device = "net_pcap1,tx_pcap={}"
host = "b"
rx = false

[[link]]
ends = [{{ host = "a", device = "net_af_packet0,iface=va,framecnt={LINK_FRAMES}" }}, {{ host = "b", device = "net_af_packet1,iface=vb,framecnt={LINK_FRAMES}" }}]
"#,
        input.display(),
        output.display()
    )
}

/// The ideal chain over `trace`: one process, the embedded path, its store in the process
/// (the chain of [`chain_text`], whose output path only names the port). Returns its output
/// and events, written into `dir`.
fn ideal_run(trace: &Path, out: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let chain = Chain::parse(&chain_text(trace, out, None), "ideal.toml").unwrap();
    let (ideal, ideal_ev) = (dir.join("ideal.pcap"), dir.join("ideal.jsonl"));
    run(&RunOptions {
        events: Some(ideal_ev.clone()),
        ..RunOptions::new(chain, trace.to_path_buf(), ideal.clone())
    })
    .unwrap();
    (ideal, ideal_ev)
}

fn host_cmd(ns: &str, host: &str, lcore: u32, chain: &Path, dir: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_chc-dataplane")])
        .args(["run", "--backend", "dpdk", "--host", host, "--chain"])
        .arg(chain)
        .arg("--eal")
        .arg(format!(
            "--no-huge --no-pci -m 256 --no-shconf --no-telemetry -l {lcore} --file-prefix chc-{host}-{}",
            std::process::id()
        ))
        .arg("--events")
        .arg(dir.join(format!("{host}.jsonl")))
        .arg("--summary-json")
        .arg(dir.join(format!("{host}.summary.json")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// A host's process, with its stderr read by a thread while it runs (a host that fills
/// the pipe would otherwise stall). Killed if still running when dropped.
struct HostProc {
    name: &'static str,
    child: Child,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl HostProc {
    fn spawn(name: &'static str, mut cmd: Command) -> HostProc {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting host {name}: {e}"));
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
            s
        });
        HostProc {
            name,
            child,
            stderr: Some(stderr),
        }
    }
}

impl Drop for HostProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for every host to exit, until `limit` has passed; then kills those left. Fails
/// unless all exited successfully, with each host's status and stderr.
fn wait_all(trace: &Path, mut procs: Vec<HostProc>, limit: Duration) {
    let t = Instant::now();
    let mut status: Vec<Option<ExitStatus>> = vec![None; procs.len()];
    while status.iter().any(Option::is_none) && t.elapsed() < limit {
        for (p, s) in procs.iter_mut().zip(status.iter_mut()) {
            if s.is_none() {
                *s = p.child.try_wait().unwrap();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut report = String::new();
    let mut ok = true;
    for (p, s) in procs.iter_mut().zip(&status) {
        if s.is_none() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        let err = p
            .stderr
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        ok &= s.is_some_and(|s| s.success());
        let how = match s {
            Some(s) => s.to_string(),
            None => format!("still running after {limit:?}, killed"),
        };
        report.push_str(&format!("host {} ({how}):\n{err}\n", p.name));
    }
    assert!(ok, "{}: {report}", trace.display());
}

#[test]
fn a_chain_split_over_two_hosts_is_equivalent_and_keeps_its_clocks() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let traces = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    // Last, as deployed: both hosts keep their state on one `chc-store` server (in a's
    // namespace; b reaches it over the veth), which tells the root of b's commits.
    for (trace, server) in [
        ("ftp-ipv4.pcap", false),
        ("scan-nmap-vsn.pcap", false),
        ("http-wikipedia.pcap", false),
        ("ftp-ipv4.pcap", true),
    ] {
        let trace: PathBuf = traces.join(trace);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b-out.pcap");
        let chain_file = dir.path().join("two-hosts.toml");
        let _store = server.then(|| StoreServer::start(&hosts.a, dir.path()));
        let text = chain_text(&trace, &out, server.then_some(STORE_ADDR));
        std::fs::write(&chain_file, &text).unwrap();
        // The ideal chain: one process, the embedded path, its store in the process.
        let (ideal, ideal_ev) = ideal_run(&trace, &out, dir.path());

        // Either may start first: b connects to the root's control address until it
        // listens, and the root reads its input only once b has said hello.
        hosts.wait_link_up();
        let b = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, &chain_file, dir.path()));
        let a = HostProc::spawn("a", host_cmd(&hosts.a, "a", 0, &chain_file, dir.path()));
        wait_all(&trace, vec![a, b], RUN_LIMIT);

        // The COE checker: outputs and alerts equivalent to the ideal chain.
        let run_ev = dir.path().join("run.jsonl");
        let evs = sorted_lines(&[&dir.path().join("a.jsonl"), &dir.path().join("b.jsonl")]);
        std::fs::write(&run_ev, evs.join("\n") + "\n").unwrap();
        let rep = chc_bench::coe::compare(&ideal, &ideal_ev, &out, &run_ev).unwrap();
        assert!(
            rep.equivalent,
            "{}: not equivalent: {:?}",
            trace.display(),
            rep.differences
        );
        assert!(rep.ideal_packets > 0);

        // Stronger, since every vertex has one instance: the same events, clocks included,
        // and the same output records.
        assert!(
            sorted_lines(&[&ideal_ev]) == evs,
            "{}: events (with their clocks) differ from the embedded run",
            trace.display()
        );
        assert!(
            sorted_records(&ideal) == sorted_records(&out),
            "{}: output records differ",
            trace.display()
        );
        let b_events = std::fs::read_to_string(dir.path().join("b.jsonl")).unwrap();
        let sa: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("a.summary.json")).unwrap(),
        )
        .unwrap();
        let sb: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("b.summary.json")).unwrap(),
        )
        .unwrap();
        if server {
            for s in [&sa, &sb] {
                let want = format!("store servers {STORE_ADDR}");
                assert_eq!(s["store"].as_str(), Some(want.as_str()), "{s}");
            }
        }
        // b's vertices did the work, with packets that came over the link.
        let input = pcapio::read_all(&trace).unwrap().len() as u64;
        assert_eq!(sa["packets_read"].as_u64(), Some(input));
        assert!(
            sb["vertices"][1]["packets_in"].as_u64().unwrap() > 0,
            "{sb}"
        );
        let link_b = sb["figures"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "link-a")
            .unwrap();
        assert!(link_b["rx_packets"].as_u64().unwrap() > 0, "{link_b}");
        assert_eq!(
            sb["packets_written"].as_u64(),
            Some(sorted_records(&out).len() as u64)
        );
        if trace.ends_with("scan-nmap-vsn.pcap") {
            assert!(b_events.contains("\"block\""), "the scan is caught on b");
        }
    }
    drop(hosts);
}

/// The chain of the crash test: as above, but the output port is on host a, so that what
/// left the chain is on a host that survives (a copy is deleted by the host that sends it
/// out), and a replayed packet that had left already is absorbed there.
fn crash_chain_text(input: &Path, output: &Path) -> String {
    egress_on_a(input, output, Some(STORE_ADDR))
}

fn egress_on_a(input: &Path, output: &Path, store: Option<&str>) -> String {
    let on_b = format!("tx_pcap={}\"\nhost = \"b\"", output.display());
    let text = chain_text(input, output, store);
    assert!(text.contains(&on_b), "{text}");
    text.replace(
        &on_b,
        &format!("tx_pcap={}\"\nhost = \"a\"", output.display()),
    )
}

/// Host `b` is killed with SIGKILL while the chain runs and started again. The root holds
/// its input while `b` is down, replays its log once `b` is back, and the run ends with the
/// embedded run's output, packet for packet (nothing lost, nothing twice), and its events.
#[test]
fn a_host_killed_mid_run_rejoins_and_the_output_is_the_ideal_multiset() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let traces = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces");
    // A synthetic trace at a rate that keeps packets in flight: b dies holding some, and
    // the root has to replay them.
    let synth_dir = tempfile::tempdir().unwrap();
    let synth = synth_dir.path().join("s20k.pcap");
    chc_bench::synth::synth(&chc_bench::synth::SynthArgs {
        cmd: None,
        out: synth.clone(),
        packets: 20_000,
        connections: 1000,
        median_size: 300,
        clients: 200,
        servers: 20,
        ipv6: 0.05,
        duration_s: 2.0,
        seed: 5,
    })
    .unwrap();
    // (trace, admission rate, share of the output written before b is killed, whether
    // packets must have been in flight)
    for (trace, rate, at, replays) in [
        (traces.join("scan-nmap-vsn.pcap"), 250, 0.3, false),
        (traces.join("ssh-guess.pcap"), 200, 0.5, false),
        (traces.join("ftp-exe-download.pcap"), 250, 0.7, false),
        (synth.clone(), 10_000, 0.4, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a-out.pcap");
        let chain_file = dir.path().join("crash.toml");
        let _store = StoreServer::start(&hosts.a, dir.path());
        let text = crash_chain_text(&trace, &out);
        std::fs::write(&chain_file, &text).unwrap();
        let (ideal, ideal_ev) = ideal_run(&trace, &out, dir.path());
        let ideal_size = std::fs::metadata(&ideal).unwrap().len();

        hosts.wait_link_up();
        let paced = |mut c: Command| {
            c.args(["--rate", &rate.to_string()]);
            c
        };
        let mut b1 = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, &chain_file, dir.path()));
        let mut a = HostProc::spawn(
            "a",
            paced(host_cmd(&hosts.a, "a", 0, &chain_file, dir.path())),
        );
        // Kill b once part of the output has left (the pcap grows as a sends).
        let t = Instant::now();
        while std::fs::metadata(&out).map_or(0, |m| m.len()) < (ideal_size as f64 * at) as u64 {
            let early =
                a.child.try_wait().unwrap().is_some() || b1.child.try_wait().unwrap().is_some();
            if early || t.elapsed() > RUN_LIMIT {
                // Fails with what each host printed.
                wait_all(&trace, vec![a, b1], Duration::ZERO);
                panic!(
                    "{}: the output never reached {at} of its size",
                    trace.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        b1.child.kill().unwrap();
        b1.child.wait().unwrap();
        // A host killed within a write leaves a torn last line (no newline): its packet's
        // delete had not left, so the replay brings the event again.
        let first = std::fs::read_to_string(dir.path().join("b.jsonl")).unwrap();
        let whole = first.rfind('\n').map_or("", |i| &first[..=i]);
        std::fs::write(dir.path().join("b-first.jsonl"), whole).unwrap();
        let b2 = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, &chain_file, dir.path()));
        wait_all(&trace, vec![a, b2], CRASH_RUN_LIMIT);

        // Events: b's first life wrote each event before its packet's delete left, and a
        // replayed packet's events come again, so the lines of all three files, each once,
        // are the ideal run's.
        let ideal_lines = sorted_lines(&[&ideal_ev]);
        let mut unique = ideal_lines.clone();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ideal_lines.len(),
            "the ideal run repeats no line"
        );
        let mut evs = sorted_lines(&[
            &dir.path().join("a.jsonl"),
            &dir.path().join("b-first.jsonl"),
            &dir.path().join("b.jsonl"),
        ]);
        evs.dedup();
        assert!(
            ideal_lines == evs,
            "{}: events differ from the embedded run: {} lines against {}",
            trace.display(),
            evs.len(),
            ideal_lines.len()
        );
        let (want, got) = (sorted_records(&ideal), sorted_records(&out));
        assert!(
            want == got,
            "{}: output records differ: {} against the ideal {}",
            trace.display(),
            got.len(),
            want.len()
        );
        let sa: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("a.summary.json")).unwrap(),
        )
        .unwrap();
        let rejoins = sa["rejoins"].as_array().expect("a recovery in a's summary");
        assert_eq!(rejoins.len(), 1, "{sa}");
        let input = pcapio::read_all(&trace).unwrap().len() as u64;
        assert_eq!(sa["packets_read"].as_u64(), Some(input));
        assert!(
            rejoins[0]["after_packets"].as_u64().unwrap() < input,
            "b failed mid-run: {sa}"
        );
        if replays {
            assert!(
                rejoins[0]["replayed"].as_u64().unwrap() > 0,
                "packets were in flight when b died: {sa}"
            );
        }
    }
    drop(hosts);
}

/// Starts host b, then host a paced slowly, and waits until 10 KB of output have left.
fn start_paced(hosts: &Hosts, chain_file: &Path, dir: &Path, out: &Path) -> (HostProc, HostProc) {
    let b = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, chain_file, dir));
    let mut a_cmd = host_cmd(&hosts.a, "a", 0, chain_file, dir);
    a_cmd.args(["--rate", "150"]);
    let mut a = HostProc::spawn("a", a_cmd);
    let t = Instant::now();
    while std::fs::metadata(out).map_or(0, |m| m.len()) < 10_000 {
        assert!(
            a.child.try_wait().unwrap().is_none(),
            "a ended before the failure"
        );
        assert!(t.elapsed() < RUN_LIMIT, "no output from the chain");
        std::thread::sleep(Duration::from_millis(5));
    }
    (a, b)
}

/// Waits for host a to stop; it must fail. Returns its stderr.
fn failure_of(mut a: HostProc) -> String {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = a.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < CRASH_RUN_LIMIT,
            "a did not stop after the failure"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let err = a.stderr.take().unwrap().join().unwrap();
    assert!(!status.success(), "a succeeded: {err}");
    err
}

/// Kills host b and leaves it dead, once with the state on a store server and a short
/// `[root] rejoin_wait_ms`, once with each host's state in its own process. Either way the
/// root must stop the run, fail, and say why, rather than hang or recover wrongly.
#[test]
fn a_host_that_stays_dead_or_took_its_state_with_it_stops_the_run_with_the_reason() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/ssh-guess.pcap");
    for (servers, why) in [
        (true, "did not rejoin within"),
        (false, "cannot be recovered"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a-out.pcap");
        let chain_file = dir.path().join("dead.toml");
        let _store = servers.then(|| StoreServer::start(&hosts.a, dir.path()));
        let text = egress_on_a(&trace, &out, servers.then_some(STORE_ADDR))
            .replace("log_limit = 256", "log_limit = 256\nrejoin_wait_ms = 1500");
        std::fs::write(&chain_file, &text).unwrap();
        hosts.wait_link_up();
        let (a, mut b) = start_paced(&hosts, &chain_file, dir.path(), &out);
        b.child.kill().unwrap();
        b.child.wait().unwrap();
        let err = failure_of(a);
        assert!(err.contains(why), "servers {servers}: a's error: {err}");
    }
    drop(hosts);
}

/// The store server (fsync always) is killed with SIGKILL while the chain runs and started
/// again on its data directory. The hosts' clients reconnect and send again what it had not
/// acknowledged; the root subscribes to its commits again and lets the packets it logged
/// settle on their deletes. The output is the embedded run's, packet for packet.
#[test]
fn the_store_server_killed_mid_run_comes_back_and_the_output_is_the_ideal_multiset() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let synth_dir = tempfile::tempdir().unwrap();
    let trace = synth_dir.path().join("s8k.pcap");
    chc_bench::synth::synth(&chc_bench::synth::SynthArgs {
        cmd: None,
        out: trace.clone(),
        packets: 8_000,
        connections: 400,
        median_size: 300,
        clients: 100,
        servers: 20,
        ipv6: 0.05,
        duration_s: 2.0,
        seed: 9,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a-out.pcap");
    let chain_file = dir.path().join("store-crash.toml");
    std::fs::write(&chain_file, crash_chain_text(&trace, &out)).unwrap();
    let (ideal, ideal_ev) = ideal_run(&trace, &out, dir.path());
    let ideal_size = std::fs::metadata(&ideal).unwrap().len();

    let mut store = StoreServer::start_with(&hosts.a, dir.path(), "always");
    hosts.wait_link_up();
    let b = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, &chain_file, dir.path()));
    let mut a_cmd = host_cmd(&hosts.a, "a", 0, &chain_file, dir.path());
    a_cmd.args(["--rate", "5000"]);
    let mut a = HostProc::spawn("a", a_cmd);
    let t = Instant::now();
    while std::fs::metadata(&out).map_or(0, |m| m.len()) < ideal_size / 3 {
        if a.child.try_wait().unwrap().is_some() {
            wait_all(&trace, vec![a, b], Duration::ZERO);
            panic!("a ended before the store was killed");
        }
        assert!(t.elapsed() < RUN_LIMIT, "no output from the chain");
        std::thread::sleep(Duration::from_millis(5));
    }
    store.0.kill().unwrap();
    store.0.wait().unwrap();
    let _again = StoreServer::start_with(&hosts.a, dir.path(), "always");
    wait_all(&trace, vec![a, b], CRASH_RUN_LIMIT);

    let (want, got) = (sorted_records(&ideal), sorted_records(&out));
    assert!(
        want == got,
        "output records differ: {} against the ideal {}",
        got.len(),
        want.len()
    );
    let mut evs = sorted_lines(&[&dir.path().join("a.jsonl"), &dir.path().join("b.jsonl")]);
    evs.dedup();
    assert!(
        sorted_lines(&[&ideal_ev]) == evs,
        "events differ from the embedded run"
    );
    drop(hosts);
}

/// Host b and the store server die together (Table 3.11: the failed host's unacknowledged
/// updates and the store's commit notifications are both gone). The root must refuse to
/// carry on with a clear reason, not settle packets whose updates may be lost.
#[test]
fn a_host_and_the_store_failing_together_stop_the_run_with_the_reason() {
    let Some(hosts) = hosts_or_skip() else {
        return;
    };
    let trace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/traces/ssh-guess.pcap");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a-out.pcap");
    let chain_file = dir.path().join("together.toml");
    std::fs::write(&chain_file, crash_chain_text(&trace, &out)).unwrap();
    let mut store = StoreServer::start_with(&hosts.a, dir.path(), "always");
    hosts.wait_link_up();
    let (a, mut b) = start_paced(&hosts, &chain_file, dir.path(), &out);
    b.child.kill().unwrap();
    store.0.kill().unwrap();
    b.child.wait().unwrap();
    store.0.wait().unwrap();
    let _store = StoreServer::start_with(&hosts.a, dir.path(), "always");
    let b2 = HostProc::spawn("b", host_cmd(&hosts.b, "b", 1, &chain_file, dir.path()));
    let err = failure_of(a);
    assert!(err.contains("failed together"), "a's error: {err}");
    drop(b2);
    drop(hosts);
}
