//! `vigil bench failover`: how long clients cannot write when the writer's host fails, on the
//! network-namespace test hosts that `vigil chaos` uses (etcd and an agent per database host,
//! a separate `vigil proxy` on a client host), for both topologies.
//!
//! Four clients insert unique ids through the proxy's write port, one at a time each, and
//! record when every insert was acknowledged. Each run strikes the host that takes writes with
//! one fault, holds it, undoes it, and waits until the cluster is whole again. The figure is
//! the longest stretch without an acknowledged insert from the fault on, as a client sees it:
//!
//! - `mariadbd`: kill -9 of the writer's `mariadbd` (its agent lives);
//! - `agent`: kill -9 of the writer's `vigil agent` (its `mariadbd` lives);
//! - `host`: kill -9 of everything on the writer's host (agent, `mariadbd`, etcd member);
//! - `isolate`: the writer's host and the other database hosts drop each other's packets;
//! - `pause`: SIGSTOP of the writer's `mariadbd` (a hung server);
//! - `switchover` (replication only): `vigil switchover`, a planned handover.
//!
//! Before each run the cluster is whole and has run 20 s undisturbed (longer than the
//! failover hold-off's flap window), so every run measures a first fault, not a flapping
//! cluster.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vigil_core::config::{Durability, Topology};
use vigil_testkit::chaos::{faults, Fault};
use vigil_testkit::hosts::{HostCluster, Insert, Inserts, Outcome, CLIENT};

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum FaultArg {
    Mariadbd,
    Agent,
    Host,
    Isolate,
    Pause,
    Switchover,
}

impl FaultArg {
    fn kind(self) -> Option<Fault> {
        match self {
            FaultArg::Mariadbd => Some(Fault::KillMariadbd),
            FaultArg::Agent => Some(Fault::KillAgent),
            FaultArg::Host => Some(Fault::CrashHost),
            FaultArg::Isolate => Some(Fault::IsolateHost),
            FaultArg::Pause => Some(Fault::PauseMariadbd),
            FaultArg::Switchover => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            FaultArg::Mariadbd => "kill -9 of the writer's mariadbd",
            FaultArg::Agent => "kill -9 of the writer's agent",
            FaultArg::Host => "kill -9 of everything on the writer's host",
            FaultArg::Isolate => "the writer's host cut off from the other database hosts",
            FaultArg::Pause => "SIGSTOP of the writer's mariadbd",
            FaultArg::Switchover => "vigil switchover (planned)",
        }
    }

    /// What Patroni and MaxScale do by their published defaults for the same fault.
    fn others(self, topology: Topology) -> &'static str {
        match (self, topology) {
            (FaultArg::Switchover, _) => "Patroni: `patronictl switchover`, a few seconds; MaxScale: `maxctrl call command mariadbmon switchover`, a few seconds",
            (FaultArg::Mariadbd, Topology::Replication) => {
                "Patroni restarts the server in place first (failover only after master_start_timeout, 300 s); MaxScale: failcount 5 × monitor_interval 2 s ≈ 10 s before failover starts"
            }
            (FaultArg::Agent, Topology::Replication) => {
                "Patroni: the leader key expires after ttl 30 s (+ loop_wait 10 s), then a failover; MaxScale has no per-host agent"
            }
            (FaultArg::Host | FaultArg::Isolate | FaultArg::Pause, Topology::Replication) => {
                "Patroni: ttl 30 s + loop_wait 10 s ≈ 30-40 s; MaxScale: failcount 5 × monitor_interval 2 s ≈ 10 s before failover starts"
            }
            (FaultArg::Agent, Topology::Galera) => "MaxScale galeramon has no per-host agent: nothing happens",
            (_, Topology::Galera) => {
                "MaxScale galeramon: monitor_interval 2 s to notice, after Galera's evs.suspect_timeout 5 s"
            }
        }
    }
}

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Runs per fault and topology.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only this topology (default: both).
    #[arg(long, value_enum)]
    topology: Option<TopologyArg>,
    /// The faults to measure (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    fault: Vec<FaultArg>,
    /// How long each fault is held before it is undone.
    #[arg(long, default_value_t = 15)]
    hold: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyArg {
    Galera,
    Replication,
}

/// How long the cluster runs whole between two runs.
const SETTLE: Duration = Duration::from_secs(20);

pub fn run(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(
        rustix::process::geteuid().is_root(),
        "vigil bench failover builds network namespaces and needs root"
    );
    let topologies = match args.topology {
        Some(TopologyArg::Galera) => vec![Topology::Galera],
        Some(TopologyArg::Replication) => vec![Topology::Replication],
        None => vec![Topology::Galera, Topology::Replication],
    };
    let faults: Vec<FaultArg> = if args.fault.is_empty() {
        vec![
            FaultArg::Mariadbd,
            FaultArg::Agent,
            FaultArg::Host,
            FaultArg::Isolate,
            FaultArg::Pause,
            FaultArg::Switchover,
        ]
    } else {
        args.fault.clone()
    };
    let vigil = std::env::current_exe()?;
    let hold = Duration::from_secs(args.hold);
    let mut rows = Vec::new();
    let mut ok = true;
    for topology in topologies {
        let mut cluster = HostCluster::start_with(&vigil, topology, 3, |c| {
            if let Some(r) = c.replication.as_mut() {
                r.durability = Durability::Semisync;
                r.auto_reclone = true;
            }
        });
        cluster.wait_healthy(Duration::from_secs(400));
        let proxy = cluster.net.host(CLIENT).addr.to_string();
        let table = "bench_failover (id BIGINT PRIMARY KEY, epoch BIGINT UNSIGNED NULL)";
        if let Err(e) = cluster.query(
            &proxy,
            vigil_testkit::hosts::PROXY_WRITE_PORT,
            &format!("CREATE TABLE {table}"),
        ) {
            anyhow::bail!("cannot create the benchmark's table: {e}");
        }
        let clients: Vec<Inserts> = (1..=4)
            .map(|k| Inserts::start(&cluster, "bench_failover", k, 4))
            .collect();
        for fault in faults.iter().copied() {
            if fault == FaultArg::Switchover && topology == Topology::Galera {
                continue;
            }
            let mut outages = Vec::new();
            for run in 1..=args.runs {
                cluster.wait_healthy(Duration::from_secs(400));
                std::thread::sleep(SETTLE);
                cluster.wait_healthy(Duration::from_secs(400));
                let writer = vigil_testkit::wait_for(
                    "a writer in the proxy's routes",
                    Duration::from_secs(60),
                    || cluster.proxy_writer(),
                );
                let started = Instant::now();
                let outcome = strike(&mut cluster, fault, &writer, hold);
                let ended = Instant::now();
                let acks: Vec<Instant> = clients
                    .iter()
                    .flat_map(|c| c.acked_between(started, ended))
                    .collect();
                let outage = longest_gap(started, ended, acks);
                match outcome {
                    Ok(evidence) => {
                        eprintln!(
                            "{topology} {:?} run {run}/{}: {evidence}; write outage {:.2} s",
                            fault,
                            args.runs,
                            outage.as_secs_f64()
                        );
                        outages.push(outage);
                    }
                    Err(why) => {
                        ok = false;
                        eprintln!("{topology} {fault:?} run {run}/{}: not applied: {why}", args.runs);
                    }
                }
            }
            rows.push((topology, fault, outages));
        }
        let sent: Vec<Insert> = clients.into_iter().flat_map(Inserts::stop).collect();
        let lost = lost_inserts(&cluster, &sent);
        if lost > 0 {
            ok = false;
            eprintln!("{topology}: {lost} acknowledged inserts are missing on some node");
        }
        eprintln!(
            "{topology}: {} inserts acknowledged, none lost{}",
            sent.iter().filter(|i| i.outcome == Outcome::Ok).count(),
            if lost > 0 { " — NOT TRUE, see above" } else { "" }
        );
    }
    println!(
        "vigil bench failover: 3 database hosts + a client host (network namespaces), etcd on the database hosts, \
         vigil proxy on the client host; 4 clients inserting through the write port; each fault held {} s; \
         {} runs per fault; write outage = longest stretch without an acknowledged insert from the fault on",
        args.hold, args.runs
    );
    println!(
        "| topology | fault | median | min | max | published defaults of the alternatives, same fault |"
    );
    println!("|---|---|---|---|---|---|");
    for (topology, fault, outages) in rows {
        println!(
            "| {topology} | {} | {} | {} |",
            fault.describe(),
            stats(outages),
            fault.others(topology)
        );
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Applies `fault` to the writer's host, holds it, undoes it; the evidence, or why it could not
/// be applied.
fn strike(
    cluster: &mut HostCluster,
    fault: FaultArg,
    writer: &str,
    hold: Duration,
) -> Result<String, String> {
    match fault.kind() {
        Some(kind) => {
            let applied = faults::apply(cluster, kind, &[writer.to_string()])?;
            std::thread::sleep(hold);
            Ok(faults::undo(cluster, applied))
        }
        None => {
            let (done, out, err) = cluster.cli(&["switchover"]);
            std::thread::sleep(hold);
            match done {
                true => Ok(format!("switchover from {writer}: {}", out.trim())),
                false => Err(format!("vigil switchover: {}{}", out.trim(), err.trim())),
            }
        }
    }
}

/// The longest stretch between `from` and `to` without one of `acks`, counted from `from`.
fn longest_gap(from: Instant, to: Instant, mut acks: Vec<Instant>) -> Duration {
    acks.sort();
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in acks.into_iter().chain([to]) {
        longest = longest.max(t.saturating_duration_since(last));
        last = last.max(t);
    }
    longest
}

/// How many acknowledged inserts some node lacks at the end (each node read once the cluster
/// is whole, given a minute to catch up).
fn lost_inserts(cluster: &HostCluster, sent: &[Insert]) -> usize {
    cluster.wait_healthy(Duration::from_secs(400));
    let acked: std::collections::BTreeSet<u64> = sent
        .iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .map(|i| i.id)
        .collect();
    let mut lost = 0;
    for h in &cluster.db_hosts {
        let n = cluster.config.node(h).expect("node").clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let missing = loop {
            let ids: std::collections::BTreeSet<u64> = cluster
                .query(&n.host, n.sql_port, "SELECT id FROM bench_failover")
                .unwrap_or_default()
                .iter()
                .filter_map(|s| s.parse().ok())
                .collect();
            let missing = acked.difference(&ids).count();
            if missing == 0 || Instant::now() > deadline {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        lost = lost.max(missing);
    }
    lost
}

/// "median | min | max" of some durations, or dashes.
fn stats(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "- | - | -".into();
    }
    v.sort();
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    format!("{} | {} | {}", s(v[v.len() / 2]), s(v[0]), s(v[v.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_longest_stretch_without_an_ack_from_the_fault_on() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let gap = longest_gap(at(0), at(10_000), vec![at(300), at(6300), at(6400), at(9000)]);
        assert_eq!(gap, Duration::from_millis(6000));
        assert_eq!(longest_gap(at(0), at(5000), vec![]), Duration::from_millis(5000));
        // acknowledgements out of order (four clients) count in order
        assert_eq!(
            longest_gap(at(0), at(1000), vec![at(900), at(100), at(500)]),
            Duration::from_millis(400)
        );
    }
}
