//! Where a chain's state lives: a store inside this process (the embedded default), or the
//! `chc-store` servers named in the chain file's `[store] addresses`.
//!
//! Both runtimes (embedded and DPDK) take their store clients from here, so an operator who
//! points a chain at store hosts gets them on either path. A process connecting to servers
//! picks client ids no other process uses (the servers keep per-client sequence numbers and
//! would otherwise take a new process for one that reconnected).

use crate::config::StoreSection;
use chc_root::{Root, RootConfig};
use chc_store::client::{ops, ObjKey, StoreClient, TcpOptions};
use chc_store::server::{Store, StoreConfig};
use chc_store::Value;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The high bit of the ids of clients connecting to servers (in-process ids use 1 << 62;
/// the top bit is the store's own).
const REMOTE_IDS: u64 = 1 << 61;

pub enum StateStore {
    Local(Store),
    Remote(Remote),
}

pub struct Remote {
    addrs: Vec<SocketAddr>,
    opts: TcpOptions,
    base: u64,
    next: AtomicU64,
}

impl StateStore {
    /// Starts the in-process store, or checks that the configured servers answer (trying
    /// for 10 s: a store host may be starting with this one).
    pub fn open(section: &StoreSection) -> Result<StateStore, String> {
        Self::open_waiting(section, Duration::from_secs(10))
    }

    fn open_waiting(section: &StoreSection, wait: Duration) -> Result<StateStore, String> {
        if section.addresses.is_empty() {
            if section.token_file.is_some() {
                return Err("[store] token_file is for store servers: give addresses too".into());
            }
            return Store::start(StoreConfig::in_memory(section.shards))
                .map(StateStore::Local)
                .map_err(|e| e.to_string());
        }
        let mut addrs = Vec::new();
        for a in &section.addresses {
            let found: Vec<SocketAddr> = a
                .to_socket_addrs()
                .map_err(|e| format!("[store] address {a:?}: {e}"))?
                .collect();
            // One server is one entry: its first address (IPv4 first when both resolve).
            let pick = found
                .iter()
                .find(|s| s.is_ipv4())
                .or(found.first())
                .ok_or_else(|| format!("[store] address {a:?} resolves to nothing"))?;
            addrs.push(*pick);
        }
        let token = section
            .token_file
            .as_deref()
            .map(chc_store::server::read_token_file)
            .transpose()
            .map_err(|e| format!("[store] token_file {e}"))?;
        let opts = TcpOptions {
            token,
            connect_timeout: wait,
            ..Default::default()
        };
        // Unique enough across the processes of a deployment: the pid and the start time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let base = REMOTE_IDS
            | (u64::from(std::process::id()) & 0xF_FFFF) << 40
            | (nanos >> 10 & 0xFF_FFFF) << 16;
        let remote = Remote {
            addrs,
            opts,
            base,
            next: AtomicU64::new(1),
        };
        // Fail at start, with the address, rather than at the first packet.
        remote.client()?;
        Ok(StateStore::Remote(remote))
    }

    /// A new client with an id of its own.
    pub fn client(&self) -> Result<StoreClient, String> {
        match self {
            StateStore::Local(s) => Ok(s.client(s.next_client_id())),
            StateStore::Remote(r) => r.client(),
        }
    }

    /// The store in this process, if that is where the state lives.
    pub fn local(&self) -> Option<&Store> {
        match self {
            StateStore::Local(s) => Some(s),
            StateStore::Remote(_) => None,
        }
    }

    /// Where the state lives, for the summary.
    pub fn describe(&self) -> String {
        match self {
            StateStore::Local(s) => format!("in-process store, {} shards", s.shards()),
            StateStore::Remote(r) => r.describe(),
        }
    }

    /// Stops the in-process store (syncing it); servers keep running.
    pub fn shutdown(self) {
        if let StateStore::Local(s) = self {
            s.shutdown();
        }
    }
}

/// Whatever hands out store clients: a [`StateStore`], or a bare in-process [`Store`] (the
/// benches build instances on one).
pub trait Clients {
    fn new_client(&self) -> Result<StoreClient, String>;
}

impl Clients for StateStore {
    fn new_client(&self) -> Result<StoreClient, String> {
        self.client()
    }
}

impl Clients for Store {
    fn new_client(&self) -> Result<StoreClient, String> {
        Ok(self.client(self.next_client_id()))
    }
}

impl Remote {
    fn describe(&self) -> String {
        let list: Vec<String> = self.addrs.iter().map(|a| a.to_string()).collect();
        format!("store servers {}", list.join(", "))
    }

    fn client(&self) -> Result<StoreClient, String> {
        let id: u64 = self.base | (self.next.fetch_add(1, Ordering::Relaxed) & 0xFFFF);
        let mut c = StoreClient::connect(&self.addrs, id, self.opts.clone())
            .map_err(|e| format!("{}: {e}", self.describe()))?;
        // A server host is a network hop away and may be busy checkpointing.
        c.call_timeout = Duration::from_secs(30);
        Ok(c)
    }
}

/// The root's start on `client`'s store: subscribed to the commit notifications of its
/// clocks, and with its clock after any the store has seen from a root of this id before
/// (a server outlives runs, and its clock log must never take a new packet for an old one).
/// Returns the root and the key its clock is persisted under.
pub fn start_root(client: &mut StoreClient, cfg: RootConfig) -> Result<(Root, ObjKey), String> {
    subscribe_commits(client, cfg.root_id)?;
    let key = ObjKey::raw(format!("chc:root:{}:clock", cfg.root_id));
    let r = client.call(key.get()).map_err(|e| format!("store: {e}"))?;
    let root = match Value::from_wire(r.value.as_ref()).as_int() {
        Some(last) if last > 0 => Root::recover(cfg, last as u64),
        _ => Root::new(cfg, 1),
    };
    Ok((root, key))
}

/// Subscribes `client` to the commit notifications of root `root_id` on every shard, and
/// waits until the store has the subscriptions: a commit that reached it first would go to
/// nobody, and its packet would never settle.
pub fn subscribe_commits(client: &mut StoreClient, root_id: u16) -> Result<(), String> {
    for s in 0..client.shards() {
        client.submit_to(s, ops::subscribe_commits(root_id));
    }
    client.sync().map_err(|e| format!("store: {e}"))
}

/// A root's part when its store came back (from its write-ahead log) after a failure: the
/// store lost its subscriptions and the commit notifications it had not sent. The root
/// subscribes again and waives the commit check of the packets it logged (the clients send
/// again whatever the store had not acknowledged, so their updates are applied); they
/// settle on their deletes alone. The waiver holds even if subscribing fails (the error
/// is returned).
pub fn follow_store_restart(client: &mut StoreClient, root: &mut Root) -> Result<(), String> {
    let subscribed = subscribe_commits(client, root.config().root_id);
    let logged = root.in_flight();
    let left = root.waive_commits();
    eprintln!(
        "chc-dataplane: root: the store reconnected; waived the commits of {logged} logged \
         packets ({left} of them had every copy reported and left the log)"
    );
    subscribed
}

/// A root's clean stop: persists the counter its next packet would have had and retires
/// its settled clocks, so that a root starting later on the same store takes fresh clocks
/// and finds no stale ones in the clock logs.
pub fn stop_root(client: &mut StoreClient, root: &Root, key: &ObjKey) {
    client.submit_nonblocking(key.set(&Value::Int(root.next_counter() as i64)));
    for s in 0..client.shards() {
        client.submit_to(
            s,
            nonblocking(ops::retire_clocks(root.id(), root.watermark())),
        );
    }
    let _ = client.sync();
}

/// `op` without a reply: the store acknowledges it and applies it in order.
pub fn nonblocking(mut op: chc_proto::wire::Op) -> chc_proto::wire::Op {
    op.flags |= chc_proto::wire::OpFlag::FlagNonblocking as u32;
    op
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(addresses: &[&str]) -> StoreSection {
        StoreSection {
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            ..StoreSection::default()
        }
    }

    #[test]
    fn a_server_that_does_not_answer_is_named_at_start() {
        // A port nobody listens on: bind one, then let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = section(&[&format!("127.0.0.1:{port}")]);
        let err = match StateStore::open_waiting(&s, Duration::from_millis(100)) {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e,
        };
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }

    #[test]
    fn an_address_that_does_not_parse_is_refused() {
        let err = match StateStore::open(&section(&["no-port-here"])) {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        };
        assert!(err.contains("no-port-here"), "{err}");
    }

    #[test]
    fn clients_of_the_in_process_store_get_distinct_ids() {
        let s = StateStore::open(&StoreSection::default()).unwrap();
        assert!(s.local().is_some());
        let a = s.client().unwrap();
        let b = s.client().unwrap();
        assert_ne!(a.id(), b.id());
        s.shutdown();
    }
}
