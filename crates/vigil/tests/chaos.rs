//! `vigil chaos` end to end: three Galera hosts in network namespaces, a workload through the
//! proxy, random faults (kills, pauses, a cut-off host, packet loss, store quorum loss), and
//! the checker's verdict.

use std::process::Command;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

#[test]
fn galera_hosts_under_random_faults_keep_every_acknowledged_write() {
    let out = Command::new(VIGIL)
        .args(["chaos", "--topology", "galera", "--time", "100", "--seed", "7"])
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("violations: 0"), "{stdout}");
    // the run did inject faults and carry writes
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
