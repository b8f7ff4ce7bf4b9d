//! `chc-store`: a CHC state store process.

use anyhow::{Context, Result};
use chc_store::server::{Store, StoreConfig};
use chc_store::wal::FsyncPolicy;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "chc-store",
    version,
    about = "CHC's external state store for network function chains",
    long_about = "CHC's external state store. NF instances keep their state here so they can crash, \
scale and be cloned without losing it. Each shard is one thread; several processes can each hold \
part of the state. The native port speaks the CHC protocol (length-delimited protobuf); the RESP \
port speaks enough Redis for redis-cli and redis-benchmark."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: recover from DATA-DIR (checkpoint + write-ahead log), then accept clients.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Native protocol address (loopback by default; expose it deliberately).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// RESP (Redis protocol) address; "off" disables it.
    #[arg(long, default_value = "127.0.0.1:6380")]
    resp: String,
    /// Directory for checkpoints and WAL segments (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Shard threads in this process.
    #[arg(long, default_value_t = 1)]
    shards: u32,
    /// Milliseconds between checkpoints.
    #[arg(long, default_value_t = 150)]
    checkpoint_ms: u64,
    /// When WAL appends reach the disk: always (before acknowledging), everysec, no.
    #[arg(long, default_value = "everysec")]
    fsync: FsyncPolicy,
    /// File holding a token clients must present (native Hello, RESP AUTH).
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Print per-shard counters every N seconds (0: only at exit).
    #[arg(long, default_value_t = 0)]
    stats_interval: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve(a) => serve(a),
    }
}

fn serve(a: ServeArgs) -> Result<()> {
    let resp = match a.resp.as_str() {
        "off" | "none" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--resp {s:?} is not an address or \"off\""))?,
        ),
    };
    let auth_token = a
        .auth_token_file
        .as_deref()
        .map(chc_store::server::read_token_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--auth-token-file {e}"))?;
    for addr in std::iter::once(a.listen).chain(resp) {
        if !addr.ip().is_loopback() && auth_token.is_none() {
            eprintln!(
                "chc-store: warning: {addr} is reachable beyond this host and no --auth-token-file is set"
            );
        }
    }
    let cfg = StoreConfig {
        shards: a.shards,
        data_dir: Some(a.data_dir.clone()),
        fsync: a.fsync,
        checkpoint_interval: Duration::from_millis(a.checkpoint_ms.max(1)),
        listen: Some(a.listen),
        resp,
        auth_token,
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let store = Store::start(cfg).context("starting the store")?;
    let replayed: u64 = store.recovery.iter().map(|r| r.records).sum();
    eprintln!(
        "chc-store: {} shard(s), data in {}, fsync {}; recovered in {:.1} ms ({} WAL records replayed)",
        a.shards,
        a.data_dir.display(),
        a.fsync,
        t0.elapsed().as_secs_f64() * 1e3,
        replayed
    );
    eprintln!(
        "chc-store: native protocol on {}{}",
        store.native_addr.map_or("-".into(), |x| x.to_string()),
        store
            .resp_addr
            .map_or(String::new(), |x| format!(", RESP on {x}"))
    );
    let stop = Arc::new(AtomicBool::new(false));
    install_signal_handler(stop.clone())?;
    // Under a service manager (Type=notify): ready once recovered and listening, and, with
    // its watchdog, a ping only while every shard thread answers a read.
    let notifier = chc_store::notify::Notifier::from_env();
    if let Some(n) = &notifier {
        n.ready("chc-store");
    }
    let ping_every = notifier.as_ref().and_then(|n| n.watchdog_every());
    let look = ping_every.map_or(Duration::from_millis(100), |p| {
        p.min(Duration::from_millis(100))
    });
    let mut probe = ping_every.map(|_| {
        let mut c = store.client(store.next_client_id());
        c.call_timeout = look * 4;
        c
    });
    let key = chc_store::client::ObjKey::raw("chc:store:watchdog");
    let mut last_ping = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(look);
        if let (Some(n), Some(every), Some(c)) = (&notifier, ping_every, probe.as_mut()) {
            if last_ping.elapsed() >= every
                && (0..store.shards()).all(|s| c.call_shard(s, key.get()).is_ok())
            {
                let _ = n.send("WATCHDOG=1");
                last_ping = std::time::Instant::now();
            }
        }
    }
    if let Some(n) = &notifier {
        let _ = n.send("STOPPING=1");
    }
    drop(probe);
    eprintln!("chc-store: shutting down (syncing the WAL, writing a final checkpoint)");
    store.shutdown();
    Ok(())
}

/// SIGINT/SIGTERM request a clean shutdown (a SIGKILL is what the crash tests use).
fn install_signal_handler(stop: Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    Ok(())
}
