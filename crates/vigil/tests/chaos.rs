//! `vigil chaos` end to end, once per topology: three hosts in network namespaces, a workload
//! through the proxy, random faults (kills, pauses, a cut-off host, packet loss, store quorum
//! loss), and the checker's verdict.

use std::process::Command;
use std::sync::Mutex;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

/// Two chaos runs at once would share two cores and time each other out.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `vigil chaos` and checks its verdict: no violation, faults injected, writes carried.
fn chaos(topology: &str, seconds: u32, seed: u32) {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(VIGIL)
        .args(["chaos", "--topology", topology])
        .args(["--time", &seconds.to_string(), "--seed", &seed.to_string()])
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("violations: 0"), "{stdout}");
    let faults: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("faults injected: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a fault count");
    assert!(faults >= 2, "{stdout}");
    let acked: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("inserts: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("an insert count");
    assert!(acked > 1000, "{stdout}");
}

#[test]
fn galera_hosts_under_random_faults_keep_every_acknowledged_write() {
    chaos("galera", 100, 7);
}

#[test]
fn replication_hosts_under_random_faults_keep_every_acknowledged_write_and_one_writer() {
    chaos("replication", 100, 7);
}
