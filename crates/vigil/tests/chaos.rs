//! `vigil chaos` end to end, once per topology: three hosts in network namespaces, a workload
//! through the proxy, faults of every kind (each checked to have taken effect), and the
//! checker's verdict. A random seed each time, printed first. And the checker's own proof:
//! a node held down through the heal fails the run.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

/// Two chaos runs at once would share two cores and time each other out.
static ONE_RUN_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The fault kinds as the summary's table names them.
const KINDS: [&str; 9] = [
    "KillMariadbd",
    "KillAgent",
    "PauseMariadbd",
    "PauseAgent",
    "CrashHost",
    "IsolateHost",
    "PacketLoss",
    "KillEtcdMember",
    "StoreQuorumLoss",
];

/// Runs `vigil chaos` for about 150 s of faults at four a minute (every kind at least once)
/// and checks its verdict: it passed, with no violation, every kind injected, writes carried.
fn chaos(topology: &str) {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let logs = tempfile::Builder::new()
        .prefix("vigil-chaos-logs-")
        .tempdir()
        .unwrap();
    let out = Command::new(VIGIL)
        .args(["chaos", "--topology", topology, "--time", "150", "--rate", "4"])
        .arg("--logs")
        .arg(logs.path())
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let keep = |why: &str| -> String {
        let kept = tempfile::TempDir::keep(
            tempfile::Builder::new()
                .prefix("vigil-chaos-logs-")
                .tempdir()
                .unwrap(),
        );
        let _ = Command::new("cp").arg("-r").arg(logs.path()).arg(&kept).status();
        format!("{why}; logs copied to {}\n{stdout}\n{stderr}", kept.display())
    };
    assert!(
        stdout.lines().next().is_some_and(|l| l.contains("seed ")),
        "{}",
        keep("the seed is not printed first")
    );
    assert!(out.status.success(), "{}", keep("vigil chaos failed"));
    assert!(stdout.contains("\nviolations: 0\n"), "{}", keep("violations"));
    for kind in KINDS {
        let row = stdout.lines().find(|l| l.starts_with(&format!("| {kind} | ")));
        let count: u32 = row
            .and_then(|l| l.split('|').nth(2))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(count >= 1, "{}", keep(&format!("no {kind} fault")));
    }
    let acked: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("inserts: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("an insert count");
    assert!(acked > 1000, "{stdout}");
    assert!(stdout.contains("logs kept in "), "{stdout}");
}

#[test]
fn galera_hosts_under_every_kind_of_fault_keep_every_promise() {
    chaos("galera");
}

#[test]
fn replication_hosts_under_every_kind_of_fault_keep_every_promise_and_one_writer() {
    chaos("replication");
}

/// A run in which a node is held stopped (`vigil node hold`) through the heal must fail,
/// saying that node was not back: a checker that passed it would pass a dead cluster.
#[test]
fn a_node_held_down_through_the_heal_fails_the_run() {
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let logs = tempfile::tempdir().unwrap();
    let mut opts = vigil_testkit::chaos::ChaosOptions::new(
        vigil_core::config::Topology::Galera,
        Duration::from_secs(20),
        7,
    );
    opts.rate = 6.0;
    opts.heal_timeout = Duration::from_secs(60);
    opts.logs = logs.path().into();
    opts.acks_after_heal = 50;
    opts.hold_through_heal = Some("db2".into());
    let summary = vigil_testkit::chaos::run(VIGIL.as_ref(), &opts, |l| eprintln!("{l}"));
    let text = summary.to_string();
    assert!(!summary.passed(), "{text}");
    assert!(text.contains("db2 was not back after the heal"), "{text}");
    assert!(
        text.contains("not back after the heal: db2: none stopped (held by the operator)"),
        "{text}"
    );
    // everything else held: the failure is the node, not the run
    assert_eq!(
        summary
            .violations
            .iter()
            .filter(|v| !v.what.contains("db2"))
            .count(),
        0,
        "{text}"
    );
}
