//! The `nf-crash` and `store-crash` scenarios on the DPDK path: a chain over two hosts,
//! one of which (or the store server) is killed with SIGKILL while the chain runs and
//! started again.
//!
//! On the DPDK path the instances of a host share its process, so an NF's crash is its
//! host's. The chain is split: host `a` has the root, the entry vertex and both ports; host
//! `b` every other vertex. Each host is a `chc-dataplane run --backend dpdk` process in a
//! network namespace of its own, joined by a veth pair (`net_af_packet` on both ends), and
//! both keep their state on one `chc-store serve` (in `a`'s namespace, fsync always). Once
//! a seeded share of the ideal output has left, `b` (or the store) is killed and started
//! again; the root replays its log to the new `b` (or follows the store through its
//! restart) and the run's output and events are compared with the ideal chain's.
//!
//! Needs root (namespaces, veth) and the DPDK backend.

use crate::synth::Rng;
use anyhow::{bail, Context, Result};
use chc_dataplane::config::Chain;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The veth's MTU: room for NSH on full-size Ethernet frames. (The link's own `mtu` is
/// left unset: `net_af_packet` refuses one above its 2048-byte frames' 1500.)
const LINK_MTU: u16 = 1700;
/// Longest a run may take once the failed host is back (runs take seconds).
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// What the crash run did.
#[derive(Debug, Clone)]
pub struct HostCrash {
    /// The root's account of the recovery (`rejoins` of its summary).
    pub rejoins: Vec<chc_dataplane::dpdk::rejoin::RejoinSummary>,
    /// Replayed copies absorbed at the egress because they had left already.
    pub exits_absorbed: u64,
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Hosts {
    a: String,
    b: String,
}

impl Hosts {
    fn make() -> Result<Hosts> {
        let id = std::process::id();
        let h = Hosts {
            a: format!("chc-crash-a{id}"),
            b: format!("chc-crash-b{id}"),
        };
        let mtu = LINK_MTU.to_string();
        let made = sh(&["ip", "netns", "add", &h.a])
            .and_then(|_| sh(&["ip", "netns", "add", &h.b]))
            .and_then(|_| {
                sh(&[
                    "ip", "link", "add", "va", "netns", &h.a, "mtu", &mtu, "type", "veth", "peer",
                    "name", "vb", "netns", &h.b, "mtu", &mtu,
                ])
            })
            .and_then(|_| {
                sh(&[
                    "ip",
                    "-n",
                    &h.a,
                    "addr",
                    "add",
                    "10.199.9.1/30",
                    "dev",
                    "va",
                ])
            })
            .and_then(|_| {
                sh(&[
                    "ip",
                    "-n",
                    &h.b,
                    "addr",
                    "add",
                    "10.199.9.2/30",
                    "dev",
                    "vb",
                ])
            })
            .and_then(|_| sh(&["ip", "-n", &h.a, "link", "set", "va", "up"]))
            .and_then(|_| sh(&["ip", "-n", &h.b, "link", "set", "vb", "up"]))
            .and_then(|_| sh(&["ip", "-n", &h.a, "link", "set", "lo", "up"]))
            .and_then(|_| sh(&["ip", "-n", &h.b, "link", "set", "lo", "up"]));
        made.context(
            "a host crash on the DPDK path runs two hosts in network namespaces joined by a \
             veth pair: it needs root and iproute2",
        )?;
        let t = Instant::now();
        for (ns, dev) in [(&h.a, "va"), (&h.b, "vb")] {
            loop {
                let out = Command::new("ip")
                    .args(["-n", ns, "-o", "link", "show", "dev", dev])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("LOWER_UP") && text.contains("state UP") {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("{dev} in {ns} not up after 30 s: {text}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(h)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.a]);
        let _ = sh(&["ip", "netns", "del", &self.b]);
    }
}

/// A child process, killed if still running when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The chain file of the split: `chain_text` with hosts, ports, the link, the control
/// address and the store server.
pub fn split_chain(chain_text: &str, chain: &Chain, trace: &Path, out: &Path) -> Result<String> {
    let mut doc: toml::Table = toml::from_str(chain_text).context("the chain file")?;
    let mut store = toml::Table::new();
    store.insert(
        "addresses".into(),
        toml::Value::Array(vec!["10.199.9.1:7132".into()]),
    );
    doc.insert("store".into(), store.into());
    let root = doc
        .entry("root")
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .context("[root] is not a table")?;
    root.insert("control".into(), "10.199.9.1:7131".into());
    // The link holds what the root may have in flight (two frames a packet, with the tap
    // copy), also while b is not polling: 1024 packets within 4096 frames.
    root.insert("log_limit".into(), 1024.into());
    let entry = &chain.vertices[chain.entry].name;
    for v in doc
        .get_mut("vertex")
        .and_then(|v| v.as_array_mut())
        .context("no [[vertex]]")?
    {
        let t = v.as_table_mut().context("a [[vertex]] is not a table")?;
        let here = t.get("name").and_then(|n| n.as_str()) == Some(entry.as_str());
        t.insert("host".into(), if here { "a" } else { "b" }.into());
    }
    let port = |name: &str, device: String, rx: bool| {
        let mut p = toml::Table::new();
        p.insert("name".into(), name.into());
        p.insert("device".into(), device.into());
        p.insert("host".into(), "a".into());
        if rx {
            p.insert("egress".into(), "out".into());
        } else {
            p.insert("rx".into(), false.into());
        }
        toml::Value::Table(p)
    };
    doc.insert(
        "port".into(),
        toml::Value::Array(vec![
            port("in", format!("net_pcap0,rx_pcap={}", trace.display()), true),
            port("out", format!("net_pcap1,tx_pcap={}", out.display()), false),
        ]),
    );
    let end = |host: &str, dev: &str| {
        let mut e = toml::Table::new();
        e.insert("host".into(), host.into());
        e.insert("device".into(), dev.into());
        toml::Value::Table(e)
    };
    let mut link = toml::Table::new();
    link.insert(
        "ends".into(),
        toml::Value::Array(vec![
            end("a", "net_af_packet0,iface=va,framecnt=4096"),
            end("b", "net_af_packet1,iface=vb,framecnt=4096"),
        ]),
    );
    doc.insert("link".into(), toml::Value::Array(vec![link.into()]));
    Ok(toml::to_string(&doc)?)
}

/// A host's process; `rate` paces the root's input (packets per second).
fn host(
    bin: &Path,
    ns: &str,
    name: &str,
    chain: &Path,
    dir: &Path,
    tag: &str,
    rate: Option<u64>,
) -> Result<Proc> {
    let lcore = if name == "a" { 0 } else { 1 };
    let log = std::fs::File::create(dir.join(format!("{tag}.log")))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(bin)
        .args(["run", "--backend", "dpdk", "--host", name, "--chain"])
        .arg(chain)
        .arg("--eal")
        .arg(format!(
            "--no-huge --no-pci -m 256 --no-shconf --no-telemetry -l {lcore} --file-prefix chc-crash-{tag}-{}",
            std::process::id()
        ))
        .arg("--events")
        .arg(dir.join(format!("{tag}.jsonl")))
        .arg("--summary-json")
        .arg(dir.join(format!("{tag}.summary.json")));
    if let Some(r) = rate {
        cmd.arg("--rate").arg(r.to_string());
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting host {name}"))?;
    Ok(Proc(child))
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// One crash run: the chain (its file's text and its parsed form), the trace, where the
/// output and the events (each line once) go, a directory for the hosts' files, where the
/// binaries are, the size of the ideal chain's output, the trace's packets, and the seed of
/// the kill point.
pub struct CrashRun<'a> {
    pub chain_text: &'a str,
    pub chain: &'a Chain,
    pub trace: &'a Path,
    pub out: &'a Path,
    pub events: &'a Path,
    pub dir: &'a Path,
    pub bin_dir: &'a Path,
    pub ideal_out_bytes: u64,
    /// Packets in the trace (the input's pace follows from it).
    pub input_packets: u64,
    pub seed: u64,
    pub victim: Victim,
}

/// What is killed with SIGKILL: host b (started again), or the store server (started again
/// on its data directory, from its write-ahead log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Victim {
    Host,
    Store,
}

/// Runs the split chain, killing the victim once a seeded share (15-85 %) of the ideal
/// output's bytes has left.
pub fn run(r: &CrashRun<'_>) -> Result<HostCrash> {
    let CrashRun {
        chain_text,
        chain,
        trace,
        out,
        events,
        dir,
        bin_dir,
        ideal_out_bytes,
        input_packets,
        seed,
        victim,
    } = *r;
    if !chc_dataplane::dpdk::chc_dpdk::is_available() {
        bail!("{}", chc_dataplane::dpdk::chc_dpdk::backend_status());
    }
    let hosts = Hosts::make()?;
    let bin = bin_dir.join("chc-dataplane");
    let chain_file = dir.join("split.toml");
    std::fs::write(&chain_file, split_chain(chain_text, chain, trace, out)?)?;
    let store_dir = dir.join("store");
    let _ = std::fs::remove_dir_all(&store_dir);
    let start_store = || -> Result<Proc> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("store.log"))?;
        // fsync always: a store killed with SIGKILL loses nothing it acknowledged.
        Ok(Proc(
            Command::new("ip")
                .args(["netns", "exec", &hosts.a])
                .arg(bin_dir.join("chc-store"))
                .args([
                    "serve", "--shards", "2", "--fsync", "always", "--resp", "off",
                ])
                .args(["--listen", "10.199.9.1:7132", "--data-dir"])
                .arg(&store_dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting chc-store")?,
        ))
    };
    let mut store = start_store()?;
    // The kill point is read from the output's size: none may be left from an earlier run.
    let _ = std::fs::remove_file(out);
    let share = 0.15 + 0.7 * Rng::new(seed).unit();
    let kill_at = (ideal_out_bytes as f64 * share) as u64;
    // Paced to last about 1.5 s whatever the trace's size, so that the kill falls within
    // the run (unpaced, a small trace is through before a process could be killed).
    let rate = (input_packets * 2 / 3).max(200);
    let mut b = host(&bin, &hosts.b, "b", &chain_file, dir, "b-first", None)?;
    let mut a = host(&bin, &hosts.a, "a", &chain_file, dir, "a", Some(rate))?;
    let t = Instant::now();
    while std::fs::metadata(out).map_or(0, |m| m.len()) < kill_at {
        for (p, tag) in [(&mut a, "a"), (&mut b, "b-first")] {
            if let Some(st) = p.0.try_wait()? {
                bail!(
                    "host {tag} ended ({st}) before the kill point ({kill_at} of {ideal_out_bytes} \
                     output bytes):\n{}",
                    tail(&dir.join(format!("{tag}.log")))
                );
            }
        }
        if t.elapsed() > RUN_LIMIT {
            bail!("the output never reached {kill_at} bytes");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (b2, b2_tag, _store_again) = match victim {
        Victim::Host => {
            b.0.kill()?;
            b.0.wait()?;
            (
                host(&bin, &hosts.b, "b", &chain_file, dir, "b", None)?,
                "b",
                None,
            )
        }
        Victim::Store => {
            store.0.kill()?;
            store.0.wait()?;
            (b, "b-first", Some(start_store()?))
        }
    };
    let t = Instant::now();
    for (mut p, tag) in [(a, "a"), (b2, b2_tag)] {
        let st = loop {
            if let Some(st) = p.0.try_wait()? {
                break st;
            }
            if t.elapsed() > RUN_LIMIT {
                bail!(
                    "host {tag} still running {RUN_LIMIT:?} after the kill:\n{}",
                    tail(&dir.join(format!("{tag}.log")))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !st.success() {
            bail!(
                "host {tag} failed ({st}):\n{}",
                tail(&dir.join(format!("{tag}.log")))
            );
        }
    }
    // Each event once: the replacement re-does what b's first life may have reported. The
    // killed host may have died within a write: a last line without its newline is torn
    // (its packet's delete had not left, so the replay brings the event again).
    let mut lines = Vec::new();
    let tags: &[&str] = match victim {
        Victim::Host => &["a", "b-first", "b"],
        Victim::Store => &["a", "b-first"],
    };
    for tag in tags {
        let p: PathBuf = dir.join(format!("{tag}.jsonl"));
        let text = std::fs::read_to_string(&p).with_context(|| format!("{}", p.display()))?;
        let whole = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        lines.extend(whole.lines().map(str::to_string));
    }
    lines.sort();
    lines.dedup();
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    std::fs::write(events, text)?;
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("a.summary.json"))?)?;
    Ok(HostCrash {
        rejoins: match s.get("rejoins") {
            Some(r) => serde_json::from_value(r.clone())?,
            None => Vec::new(),
        },
        exits_absorbed: s["exits_absorbed"].as_u64().unwrap_or(0),
    })
}
