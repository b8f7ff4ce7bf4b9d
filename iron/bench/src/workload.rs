//! The workloads the in-VM experiments run: a fixed CPU job (the victim, like sysbench's cpu
//! test) and simple UDP/TCP senders and receivers (the interferers).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Runs `units` units of integer work and returns the wall time it took. A unit is a fixed
/// number of rounds of a xorshift mix, so the same `units` is the same CPU work everywhere.
pub fn spin(units: u64) -> Duration {
    let start = Instant::now();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..units {
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        std::hint::black_box(x);
    }
    start.elapsed()
}

/// CPU time the calling thread has run and the number of times it was put on a CPU, from the
/// scheduler (`/proc/thread-self/schedstat`: ns on the CPU, ns waiting, timeslices); `None` where
/// the kernel does not provide it.
pub fn thread_cpu() -> Option<(Duration, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace();
    let ns: u64 = f.next()?.parse().ok()?;
    let slices: u64 = f.nth(1)?.parse().ok()?;
    Some((Duration::from_nanos(ns), slices))
}

/// Spins until `stop` is reached (an interferer that only burns CPU).
pub fn spin_for(secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        spin(10);
    }
}

/// Linux's `SOL_UDP` / `UDP_SEGMENT` (include/uapi/linux/udp.h): with this socket option one send
/// carries several datagrams of the given size (UDP GSO).
const SOL_UDP: i32 = 17;
const UDP_SEGMENT: i32 = 103;

// The only unsafe code here: one FFI call with plain arguments (the project allows unsafe for FFI,
// as in the DPDK bindings).
#[allow(unsafe_code)]
extern "C" {
    // The C library's setsockopt(2), which std links anyway; declared here rather than pulling
    // in a crate for one call.
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const core::ffi::c_void, len: u32)
        -> i32;
}

/// Makes every send on `sock` a batch of datagrams of `size` bytes (UDP GSO), so a sender can
/// offer many datagrams per system call: the sending side of a core costs little per datagram,
/// as a remote sender behind a NIC costs the receiving core nothing.
#[allow(unsafe_code)]
fn udp_gso(sock: &UdpSocket, size: usize) -> Result<()> {
    use std::os::fd::AsRawFd;
    let v: i32 = size.try_into().context("GSO segment size")?;
    // SAFETY: a valid socket descriptor and a pointer to a live i32 with its length.
    let rc = unsafe {
        setsockopt(
            sock.as_raw_fd(),
            SOL_UDP,
            UDP_SEGMENT,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(UDP_SEGMENT)");
    }
    Ok(())
}

/// Floods UDP datagrams of `size` bytes round-robin to `targets` for `secs` seconds (optionally
/// paced to `rate` sends per second). With `gso` > 1 each send carries `gso` datagrams (UDP
/// GSO). Returns the number of datagrams sent.
pub fn udp_send(
    targets: &[SocketAddr],
    size: usize,
    secs: f64,
    rate: Option<f64>,
    gso: usize,
) -> Result<u64> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding the UDP sender")?;
    let size = size.clamp(1, 65_000);
    let gso = gso.clamp(1, (65_000 / size).max(1));
    if gso > 1 {
        udp_gso(&sock, size)?;
    }
    let buf = vec![0x5au8; size * gso];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        for t in targets {
            // Errors such as ENOBUFS or ECONNREFUSED are part of flooding; keep going.
            if sock.send_to(&buf, t).is_ok() {
                sent += gso as u64;
            }
        }
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64(sent as f64 / gso as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(sent)
}

/// Receives UDP on `bind` for `secs` seconds; returns the number of datagrams.
pub fn udp_recv(bind: SocketAddr, secs: f64) -> Result<u64> {
    let sock = UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = vec![0u8; 65_536];
    let mut n = 0u64;
    while Instant::now() < end {
        if sock.recv_from(&mut buf).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Sends TCP as fast as possible over `flows` connections per target for `secs` seconds.
/// Returns bytes sent.
pub fn tcp_send(targets: &[SocketAddr], flows: usize, secs: f64) -> Result<u64> {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for t in targets {
        for _ in 0..flows.max(1) {
            let t = *t;
            handles.push(std::thread::spawn(move || -> u64 {
                let mut total = 0u64;
                let buf = vec![0x5au8; 64 * 1024];
                while Instant::now() < end {
                    let Ok(mut s) = TcpStream::connect_timeout(&t, Duration::from_millis(500))
                    else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    while Instant::now() < end {
                        match s.write(&buf) {
                            Ok(k) => total += k as u64,
                            Err(e) if waited(&e) => {}
                            Err(_) => break,
                        }
                    }
                }
                total
            }));
        }
    }
    Ok(handles.into_iter().map(|h| h.join().unwrap_or(0)).sum())
}

/// Accepts TCP connections on `bind` and drains them for `secs` seconds; returns bytes read.
pub fn tcp_recv(bind: SocketAddr, secs: f64) -> Result<u64> {
    let l = TcpListener::bind(bind).with_context(|| format!("binding TCP {bind}"))?;
    tcp_serve(l, secs)
}

/// [`tcp_recv`] on a listener already bound. Each connection is drained by a thread of its own
/// with blocking reads (a timeout only to notice the end), so a receiver wakes when data arrives,
/// like a plain socket receiver; polling every connection each millisecond would wake it 1000
/// times a second whether or not data came, and every such wakeup preempts whatever shares its
/// core. New connections are looked for every 20 ms.
pub fn tcp_serve(l: TcpListener, secs: f64) -> Result<u64> {
    l.set_nonblocking(true)?;
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut readers = Vec::new();
    while Instant::now() < end {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_millis(200)))?;
                readers.push(std::thread::spawn(move || drain(s, end)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accepting a TCP connection"),
        }
    }
    Ok(readers.into_iter().map(|h| h.join().unwrap_or(0)).sum())
}

/// A socket timeout ran out (nothing moved yet): try again.
fn waited(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads `s` until it closes or `end` passes; returns the bytes read.
fn drain(mut s: TcpStream, end: Instant) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => total += k as u64,
            Err(e) if waited(&e) => {}
            Err(_) => break,
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends 100-byte datagrams to a receiver on loopback `port` for 0.3 s at `rate` sends per
    /// second, `gso` datagrams per send; returns (datagrams sent, datagrams received).
    fn loopback(port: u16, rate: f64, gso: usize) -> (u64, u64) {
        let at: SocketAddr = ([127, 0, 0, 1], port).into();
        let r = std::thread::spawn(move || udp_recv(at, 1.0).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let sent = udp_send(&[at], 100, 0.3, Some(rate), gso).unwrap();
        (sent, r.join().unwrap())
    }

    #[test]
    fn udp_round_trip_on_loopback() {
        let (sent, got) = loopback(39411, 1000.0, 1);
        assert!(sent > 50, "sent {sent}");
        assert!(got > 0 && got <= sent, "got {got} of {sent}");
    }

    #[test]
    fn udp_gso_sends_separate_datagrams() {
        let (sent, got) = loopback(39412, 200.0, 4);
        assert!(sent >= 40 && sent.is_multiple_of(4), "sent {sent}");
        // One 400-byte datagram per send would give at most sent / 4.
        assert!(got > sent / 4 && got <= sent, "got {got} of {sent}");
    }

    #[test]
    fn tcp_round_trip_on_loopback() {
        // A port the system picks: a fixed one can be held by another test's connection.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let r = std::thread::spawn(move || tcp_serve(l, 1.0).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let sent = tcp_send(&[addr], 1, 0.3).unwrap();
        let got = r.join().unwrap();
        assert!(sent > 0 && got > 0 && got <= sent, "sent {sent} got {got}");
    }

    #[test]
    fn spin_does_work() {
        assert!(spin(5) > Duration::ZERO);
    }

    #[test]
    fn thread_cpu_moves_with_work() {
        if let Some(t0) = thread_cpu() {
            // The kernel brings a running thread's total up to date at a tick or a switch,
            // not when it is read: a few milliseconds of work can fall between two ticks.
            // 50 ms of wall time spans several ticks at any HZ, or a switch under load.
            spin_for(0.05);
            let t1 = thread_cpu().unwrap();
            assert!(t1.0 > t0.0 && t1.1 >= t0.1);
        }
    }
}
