//! A thread started before the EAL (a store shard) is moved off the lcores' CPUs. Its own
//! process: the EAL is initialised once, after the thread exists.
#![cfg(chc_dpdk)]

use std::sync::mpsc;
use std::thread;

use chc_dpdk::{lcore, EalArgs};

/// The calling thread's allowed CPUs, from /proc (e.g. "0-1" or "1,3").
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string();
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => out.push(part.parse().unwrap()),
        }
    }
    out
}

#[test]
fn a_thread_started_before_the_eal_is_kept_off_the_lcores() {
    use std::os::unix::thread::JoinHandleExt;

    let before = allowed_cpus();
    let (ask, asked) = mpsc::channel::<()>();
    let (tell, told) = mpsc::channel::<Vec<usize>>();
    let helper = thread::spawn(move || {
        while asked.recv().is_ok() {
            tell.send(allowed_cpus()).unwrap();
        }
    });
    let lcore_cpu = before[0];
    let _eal = chc_dpdk::Eal::init(EalArgs::virtual_devices().lcores(&lcore_cpu.to_string()))
        .expect("EAL init");

    ask.send(()).unwrap();
    assert_eq!(
        told.recv().unwrap(),
        before,
        "the EAL pins only its own threads"
    );
    let moved = lcore::keep_off_lcores(helper.as_pthread_t()).unwrap();
    ask.send(()).unwrap();
    let after = told.recv().unwrap();
    if before.len() > 1 {
        assert!(moved);
        let expected: Vec<usize> = before.iter().copied().filter(|&c| c != lcore_cpu).collect();
        assert_eq!(after, expected);
    } else {
        assert!(!moved, "with no other CPU the thread keeps its place");
        assert_eq!(after, before);
    }
    drop(ask);
    helper.join().unwrap();
}
