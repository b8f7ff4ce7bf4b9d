//! The eBPF meter (feature `bpf`): tp_btf programs on softirq_entry/softirq_exit accumulate
//! each softirq type's time per CPU, in ksoftirqd and elsewhere alike. The only unsafe-free way
//! in: libbpf-rs loads the object build.rs compiled and reads the per-CPU map.

use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/softirq.bpf.o"));

const NET_TX: u32 = 2;
const NET_RX: u32 = 3;

pub struct BpfMeter {
    obj: Object,
    _links: Vec<Link>,
}

impl BpfMeter {
    /// Loads and attaches the programs; the error says why not (permission, no BTF, ...).
    pub fn load() -> Result<BpfMeter, String> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(|e| format!("opening the BPF object: {e}"))?;
        let obj = open.load().map_err(|e| {
            format!("loading the BPF programs (needs CAP_BPF and CAP_PERFMON, and kernel BTF): {e}")
        })?;
        let mut links = Vec::new();
        for prog in obj.progs_mut() {
            links.push(
                prog.attach()
                    .map_err(|e| format!("attaching tp_btf programs: {e}"))?,
            );
        }
        Ok(BpfMeter { obj, _links: links })
    }

    /// NET_RX + NET_TX softirq time so far, all CPUs, ns.
    pub fn net_ns(&self) -> u64 {
        let Some(map) = self.obj.maps().find(|m| m.name() == "vec_ns") else {
            return 0;
        };
        [NET_TX, NET_RX]
            .iter()
            .filter_map(|k| {
                map.lookup_percpu(&k.to_ne_bytes(), MapFlags::ANY)
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|v| {
                v.get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_ne_bytes)
                    .unwrap_or(0)
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback traffic runs NET_RX softirqs; the meter must see their time. Skipped (with a
    /// message) where the programs cannot be loaded, e.g. without CAP_BPF.
    #[test]
    fn sees_net_rx_time_of_loopback_traffic() {
        let m = match BpfMeter::load() {
            Ok(m) => m,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let before = m.net_ns();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        for _ in 0..20_000 {
            tx.send_to(&[7u8; 1000], to).unwrap();
            while rx.recv_from(&mut buf).is_ok() {}
        }
        let after = m.net_ns();
        assert!(
            after > before,
            "NET_RX time did not move: {before} -> {after}"
        );
    }
}
