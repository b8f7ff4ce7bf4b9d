//! The service manager's readiness and watchdog protocol (systemd's `sd_notify`): a
//! datagram to the socket named in `NOTIFY_SOCKET`. A unit with `Type=notify` then counts a
//! store as started only once it has recovered its data and listens, so what depends on it
//! starts after that; with `WatchdogSec=` the manager restarts a process whose pings stop
//! (hung, not just dead).
//!
//! Without `NOTIFY_SOCKET` (run by hand, by tests, by the cluster manager) nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

pub struct Notifier {
    sock: UnixDatagram,
    addr: Addr,
    watchdog: Option<Duration>,
}

enum Addr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier the environment asks for, if any (`NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` for the watchdog's period).
    pub fn from_env() -> Option<Notifier> {
        let target = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0)
            .map(Duration::from_micros);
        Notifier::at(target.to_string_lossy().as_ref(), watchdog).ok()
    }

    /// A notifier for the socket `target` (a path, or `@name` for an abstract socket).
    pub fn at(target: &str, watchdog: Option<Duration>) -> std::io::Result<Notifier> {
        let addr = match target.strip_prefix('@') {
            Some(name) => Addr::Abstract(name.as_bytes().to_vec()),
            None => Addr::Path(PathBuf::from(target)),
        };
        Ok(Notifier {
            sock: UnixDatagram::unbound()?,
            addr,
            watchdog,
        })
    }

    /// How often to ping the watchdog (half its timeout), when the manager runs one.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Says the process is ready (`READY=1`); a failure is reported on standard error as
    /// `who`'s, not fatal.
    pub fn ready(&self, who: &str) {
        if let Err(e) = self.send("READY=1") {
            eprintln!("{who}: telling the service manager it is ready: {e}");
        }
    }

    /// Sends one message (`READY=1`, `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`); a failure
    /// is reported, not fatal: the process serves either way.
    pub fn send(&self, msg: &str) -> std::io::Result<()> {
        match &self.addr {
            Addr::Path(p) => self.sock.send_to(msg.as_bytes(), p).map(|_| ()),
            Addr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                self.sock.send_to_addr(msg.as_bytes(), &a).map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket_the_manager_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::at(path.to_str().unwrap(), Some(Duration::from_secs(4))).unwrap();
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(2)));
        n.send("READY=1").unwrap();
        n.send("WATCHDOG=1").unwrap();
        let mut buf = [0u8; 64];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_name() {
        let name = format!("chc-notify-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&a).unwrap();
        let n = Notifier::at(&format!("@{name}"), None).unwrap();
        assert_eq!(n.watchdog_every(), None);
        n.send("READY=1").unwrap();
        let mut buf = [0u8; 16];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1");
    }
}
