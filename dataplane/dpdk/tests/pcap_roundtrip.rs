//! Every shared trace goes through a `net_pcap` virtual device and back out: each packet
//! received must equal the trace's packet, and the pcap the port writes must hold exactly the
//! trace's packets, byte for byte and in order. This is the path the dataplane's pcap replay
//! under DPDK takes, including frames larger than one mbuf (mixed.pcap has a 14.5 kB one).
#![cfg(chc_dpdk)]

use std::fs::File;
use std::path::{Path, PathBuf};

use chc_dpdk::{Burst, Eal, EalArgs, Mempool, Port, PortConfig};
use pcap_file::pcap::PcapReader;

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");

fn traces() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(TRACES)
        .unwrap_or_else(|e| panic!("cannot read {TRACES}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 10,
        "expected the shared traces in {TRACES}, found {}",
        v.len()
    );
    v
}

/// Packet bytes and capture times (µs since the epoch, the unit net_pcap timestamps in).
fn packets(path: &Path) -> (Vec<Vec<u8>>, Vec<u64>) {
    let mut r = PcapReader::new(File::open(path).unwrap()).unwrap();
    let frac_per_us = match r.header().ts_resolution {
        pcap_file::TsResolution::MicroSecond => 1,
        pcap_file::TsResolution::NanoSecond => 1000,
    };
    let (mut data, mut times) = (Vec::new(), Vec::new());
    // Raw packets: some traces cut frames below their wire length, which the checked reader
    // refuses.
    while let Some(p) = r.next_raw_packet() {
        let p = p.unwrap();
        times.push(u64::from(p.ts_sec) * 1_000_000 + u64::from(p.ts_frac) / frac_per_us);
        data.push(p.data.into_owned());
    }
    (data, times)
}

#[test]
fn every_trace_round_trips_byte_identical_through_net_pcap() {
    let traces = traces();
    let dir = std::env::temp_dir().join(format!("chc-dpdk-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = EalArgs::virtual_devices().lcores("0");
    let mut outputs = Vec::new();
    for (i, t) in traces.iter().enumerate() {
        let out = dir.join(format!("out{i}.pcap"));
        args = args
            .pcap_vdev(&format!("net_pcap{i}"), Some(t), Some(&out))
            .unwrap();
        outputs.push(out);
    }
    let _eal = Eal::init(&args).expect("EAL init with net_pcap vdevs");
    let pool = Mempool::pktmbuf("pcap", 4095, 64, chc_dpdk::DEFAULT_DATA_ROOM).unwrap();

    for (i, (trace, out)) in traces.iter().zip(&outputs).enumerate() {
        let (expected, times) = packets(trace);
        let name = format!("net_pcap{i}");
        let port = Port::open(&name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(port.info().unwrap().driver, "net_pcap");
        let config = PortConfig {
            rx_timestamps: true,
            ..PortConfig::default()
        };
        let mut started = port.start(&config, &pool).unwrap();
        let (mut rx, mut tx) = (started.rx.remove(0), started.tx.remove(0));
        let mut burst = Burst::with_capacity(32);
        let (mut received, mut multi_segment, mut empty_polls) = (0, 0, 0);
        while received < expected.len() && empty_polls < 1000 {
            if rx.rx_burst(&mut burst) == 0 {
                empty_polls += 1;
                continue;
            }
            for m in burst.iter() {
                assert_eq!(
                    m.to_vec(),
                    expected[received],
                    "{}: packet {received} differs after rx",
                    trace.display()
                );
                assert_eq!(m.len(), expected[received].len());
                assert_eq!(
                    m.rx_timestamp(),
                    Some(times[received]),
                    "{}: packet {received} capture time",
                    trace.display()
                );
                multi_segment += usize::from(!m.is_contiguous());
                received += 1;
            }
            while !burst.is_empty() {
                assert!(tx.tx_burst(&mut burst) > 0, "net_pcap refused to write");
            }
        }
        assert_eq!(
            received,
            expected.len(),
            "{}: packets received",
            trace.display()
        );
        assert_eq!(
            rx.rx_burst(&mut burst),
            0,
            "{}: more packets than the trace",
            trace.display()
        );
        let stats = started.port.stats().unwrap();
        assert_eq!(stats.rx_packets, expected.len() as u64);
        assert_eq!(stats.tx_packets, expected.len() as u64);
        if expected.iter().any(|p| p.len() > 2048) {
            assert!(
                multi_segment > 0,
                "a frame above the data room should arrive chained"
            );
        }
        drop((rx, tx));
        // Stopping closes the output file; closing releases the device.
        started.port.stop().unwrap().close().unwrap();
        // net_pcap stamps written packets with the time of writing, so only bytes compare.
        let (written, _) = packets(out);
        assert_eq!(
            written.len(),
            expected.len(),
            "{}: packets written",
            trace.display()
        );
        for (k, (w, e)) in written.iter().zip(&expected).enumerate() {
            assert_eq!(
                w,
                e,
                "{}: packet {k} differs in the written pcap",
                trace.display()
            );
        }
    }
    assert_eq!(pool.in_use(), 0, "every mbuf returned to the pool");
    std::fs::remove_dir_all(&dir).unwrap();
}
