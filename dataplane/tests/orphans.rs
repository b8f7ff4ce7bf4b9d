//! A chain process whose manager is gone ends itself: a manager killed with SIGKILL cannot
//! stop its children, and they must not keep serving (and holding ports) on their own.

use chc_dataplane::cluster::Plan;
use std::process::Command;
use std::time::{Duration, Instant};

const CHAIN: &str = r#"
[[vertex]]
name = "nat"
nf = "nat"
mode = "eo-c-na"
"#;

fn alive(pid: u32) -> bool {
    // A zombie would still have /proc/PID; the reparented child is reaped by init.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
}

#[test]
fn instances_and_roots_exit_when_their_manager_dies() {
    let d = tempfile::tempdir().unwrap();
    // Nothing listens on these: the processes wait for a store that never answers.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let plan = Plan {
        chain_toml: CHAIN.into(),
        store: vec![free()],
        root: free(),
        sink: free(),
        instances: vec![vec![free()]],
    };
    let path = d.path().join("plan.json");
    plan.save(&path).unwrap();
    let bin = env!("CARGO_BIN_EXE_chc-dataplane");
    let p = path.display().to_string();
    for args in [
        format!("instance --plan {p} --vertex nat --index 0"),
        format!("root --plan {p}"),
    ] {
        // The "manager": a shell that starts the process, prints its pid and is killed.
        let mut mgr = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{bin} {args} </dev/null >/dev/null 2>&1 & echo $!; exec sleep 30"
            ))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(mgr.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid: u32 = line.trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(alive(pid), "{args}: the process started");
        mgr.kill().unwrap();
        mgr.wait().unwrap();
        let t = Instant::now();
        while alive(pid) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let gone = !alive(pid);
        if !gone {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        assert!(gone, "{args}: still running 5 s after its manager died");
    }
}
