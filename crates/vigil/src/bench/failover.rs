//! `vigil bench failover`: the replication topology's automatic failover and planned switchover,
//! under writes.
//!
//! Each run starts a fresh 3-node `vigil up --topology replication` cluster and a client that
//! inserts unique ids through whichever node reports itself the healthy primary, recording
//! when each insert was acknowledged and by which node. Then:
//!
//! * failover: `kill -9` of the primary's `mariadbd`; the time until the first insert
//!   acknowledged by another node (the new primary), and how many acknowledged ids the new
//!   primary lacks;
//! * switchover, on the same cluster once it has settled: `vigil switchover` with the client
//!   running; the longest gap between consecutive acknowledgements from just before the
//!   command until the first acknowledgement by the new primary, and how many acknowledged ids
//!   the new primary lacks.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use vigil_testkit::{Ack, LocalCluster, Writer};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    Async,
    Semisync,
}

impl DurabilityArg {
    fn as_str(self) -> &'static str {
        match self {
            DurabilityArg::Async => "async",
            DurabilityArg::Semisync => "semisync",
        }
    }
}

#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Fresh clusters per durability (each measures one failover and one switchover).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Measure only this durability; default: async, then semisync.
    #[arg(long, value_enum)]
    durability: Option<DurabilityArg>,
    /// Seconds of writes before the kill and before the switchover.
    #[arg(long, default_value_t = 1.5)]
    warmup: f64,
    /// Keep every run's `vigil up` log in this directory (failed runs' logs are always kept).
    #[arg(long)]
    log_dir: Option<std::path::PathBuf>,
}

/// SIGTERM to `vigil up` and wait for it to exit. If it has not after `timeout`, prints each
/// node's `error.log` tail, SIGKILLs the cluster's remaining `mariadbd` (by pid, from its pid
/// files) so that the testkit's drop finishes quickly, and returns false.
fn stop(cluster: &LocalCluster, timeout: Duration) -> bool {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let Some(pid) = cluster.pid() else {
        return true;
    };
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if exited() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in cluster.names() {
        let log = std::fs::read_to_string(cluster.node_dir(&n).join("error.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!(
            "--- {n}/error.log (last lines) ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    eprintln!("the agents say: {}", roles(cluster));
    for p in cluster.live_mariadbd_pids() {
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
    }
    false
}

/// Every node's role, health and reason, for error messages.
fn roles(cluster: &LocalCluster) -> String {
    cluster
        .names()
        .iter()
        .map(|n| match cluster.status(n) {
            Some(s) => format!(
                "{n}: {} {} ({})",
                s.role,
                if s.healthy { "healthy" } else { "unhealthy" },
                s.reason
            ),
            None => format!("{n}: no answer"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one run measured.
struct Run {
    failover: Duration,
    failover_acked: usize,
    failover_lost: usize,
    /// `None` if the switchover did not complete.
    switchover_pause: Option<Duration>,
    switchover_cli: Duration,
    switchover_acked: usize,
    switchover_lost: usize,
}

pub fn run(args: FailoverArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let durabilities = match args.durability {
        Some(d) => vec![d],
        None => vec![DurabilityArg::Async, DurabilityArg::Semisync],
    };
    let vigil = std::env::current_exe()?;
    let warmup = Duration::from_secs_f64(args.warmup);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ok = true;
    let mut tables = Vec::new();
    for d in durabilities {
        let mut runs = Vec::new();
        let mut failed = 0;
        let mut hung = 0;
        for run in 1..=args.runs {
            let mut cluster = LocalCluster::start(
                &vigil,
                3,
                &["--topology", "replication", "--durability", d.as_str()],
            );
            match one_run(&mut cluster, &rt, warmup, d, run) {
                Ok(r) => {
                    eprintln!(
                        "{} run {run}/{}: failover {:.2} s ({} acked, {} lost); switchover pause {} (command {:.2} s; {} acked, {} lost)",
                        d.as_str(),
                        args.runs,
                        r.failover.as_secs_f64(),
                        r.failover_acked,
                        r.failover_lost,
                        r.switchover_pause
                            .map_or("-".into(), |p| format!("{:.3} s", p.as_secs_f64())),
                        r.switchover_cli.as_secs_f64(),
                        r.switchover_acked,
                        r.switchover_lost,
                    );
                    let lost = r.failover_lost + r.switchover_lost;
                    if r.switchover_lost > 0 || (d == DurabilityArg::Semisync && lost > 0) {
                        ok = false;
                        keep_log(&cluster, d, run, "acknowledged writes lost");
                    }
                    if r.switchover_pause.is_none() {
                        ok = false;
                    }
                    runs.push(r);
                }
                Err(e) => {
                    ok = false;
                    failed += 1;
                    eprintln!("{} run {run}/{}: FAILED: {e:#}", d.as_str(), args.runs);
                    keep_log(&cluster, d, run, "failed run");
                }
            }
            if !stop(&cluster, Duration::from_secs(30)) {
                ok = false;
                hung += 1;
                keep_log(&cluster, d, run, "`vigil up` did not stop within 30 s of SIGTERM");
            }
            if let Some(dir) = &args.log_dir {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(format!("{}-run{run}.log", d.as_str())), cluster.log())?;
            }
        }
        tables.push((d, runs, failed, hung));
    }

    println!(
        "vigil bench failover: 3-node replication clusters, {} fresh cluster(s) per durability; \
         each run: kill -9 of the primary's mariadbd under writes, then `vigil switchover` under writes",
        args.runs
    );
    println!("| durability | measure | median | min | max | acknowledged writes | lost | target |");
    println!("|---|---|---|---|---|---|---|---|");
    for (d, runs, failed, hung) in &tables {
        let failover: Vec<Duration> = runs.iter().map(|r| r.failover).collect();
        let pauses: Vec<Duration> = runs.iter().filter_map(|r| r.switchover_pause).collect();
        let (fa, fl): (usize, Vec<usize>) = (
            runs.iter().map(|r| r.failover_acked).sum(),
            runs.iter().map(|r| r.failover_lost).collect(),
        );
        let (sa, sl): (usize, Vec<usize>) = (
            runs.iter().map(|r| r.switchover_acked).sum(),
            runs.iter().map(|r| r.switchover_lost).collect(),
        );
        let lost = |v: &[usize]| {
            let total: usize = v.iter().sum();
            if v.len() > 1 && total > 0 {
                let each: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                format!("{total} ({})", each.join(", "))
            } else {
                total.to_string()
            }
        };
        println!(
            "| {} | failover: kill -9 → first ack on new primary | {} | {fa} | {} | < 5 s |",
            d.as_str(),
            stats(failover),
            lost(&fl)
        );
        println!(
            "| {} | switchover: longest write pause | {} | {sa} | {} | < 1 s |",
            d.as_str(),
            stats(pauses),
            lost(&sl)
        );
        if *failed > 0 {
            println!("({} {} run(s) failed: see above)", failed, d.as_str());
        }
        if *hung > 0 {
            println!(
                "({} of {} {} cluster(s) did not stop within 30 s of SIGTERM: see above)",
                hung,
                runs.len() + failed,
                d.as_str()
            );
        }
    }
    println!(
        "For comparison (documented defaults, not measured here): Patroni, ttl 30 s + loop_wait 10 s: \
         about 30 s before a replica takes the expired leader key; MaxScale mariadbmon, \
         monitor_interval 2 s × failcount 5: about 10 s before failover starts, 10-25 s in all."
    );
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// "median | min | max" of some durations, or dashes.
fn stats(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "- | - | -".into();
    }
    v.sort();
    let s = |d: Duration| {
        if d < Duration::from_secs(1) {
            format!("{} ms", d.as_millis())
        } else {
            format!("{:.2} s", d.as_secs_f64())
        }
    };
    format!("{} | {} | {}", s(v[v.len() / 2]), s(v[0]), s(v[v.len() - 1]))
}

/// Copies the cluster's log out of its directory (which is removed on drop) and says where.
fn keep_log(cluster: &LocalCluster, d: DurabilityArg, run: usize, why: &str) {
    let path = std::env::temp_dir().join(format!(
        "vigil-bench-failover-{}-run{run}-{}.log",
        d.as_str(),
        std::process::id()
    ));
    let log = cluster.log();
    let _ = std::fs::write(&path, &log);
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    eprintln!(
        "{why}: cluster log kept in {}; its last lines:\n{}",
        path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

fn one_run(
    cluster: &mut LocalCluster,
    rt: &tokio::runtime::Runtime,
    warmup: Duration,
    d: DurabilityArg,
    run: usize,
) -> anyhow::Result<Run> {
    let names = cluster.names();
    cluster.wait_synced(Duration::from_secs(300));
    let primary = vigil_testkit::wait_for("a healthy primary", Duration::from_secs(60), || cluster.primary());

    // Failover.
    let writer = Writer::start(cluster);
    let started = Instant::now();
    writer.wait_acks("writes through the primary", Duration::from_secs(60), |acks| {
        (acks.len() >= 50 && started.elapsed() >= warmup).then_some(())
    })?;
    let old = names.iter().position(|n| *n == primary).expect("a node");
    cluster.kill_node(&primary);
    let killed = Instant::now();
    let first = writer
        .wait_acks(
            "an acknowledgement by a new primary",
            Duration::from_secs(60),
            |acks| acks.iter().find(|a| a.at > killed && a.node != old).copied(),
        )
        .map_err(|e| anyhow::anyhow!("{e}; the agents say: {}", roles(cluster)))?;
    let failover = first.at - killed;
    let new_primary = names[first.node].clone();
    // A few more writes on the new primary, then check every acknowledged id is there.
    writer.wait_acks(
        "writes through the new primary",
        Duration::from_secs(30),
        |acks| (acks.iter().filter(|a| a.node == first.node).count() >= 20).then_some(()),
    )?;
    let (acks, next_id) = writer.stop_with_acks();
    let present: std::collections::BTreeSet<u64> = rt
        .block_on(cluster.query(&new_primary, "SELECT id FROM acked"))
        .iter()
        .map(|s| s.parse().expect("id"))
        .collect();
    let missing: Vec<&Ack> = acks.iter().filter(|a| !present.contains(&a.id)).collect();
    if !missing.is_empty() {
        let ms = |a: &Ack| {
            if a.at >= killed {
                format!("+{} ms", (a.at - killed).as_millis())
            } else {
                format!("-{} ms", (killed - a.at).as_millis())
            }
        };
        eprintln!(
            "{} run {run}: {} acknowledged ids missing on {new_primary} after the failover from {primary}: \
             ids {}..={} acknowledged by {} between {} and {} relative to the kill",
            d.as_str(),
            missing.len(),
            missing[0].id,
            missing[missing.len() - 1].id,
            names[missing[0].node],
            ms(missing[0]),
            ms(missing[missing.len() - 1]),
        );
    }
    let failover_lost = missing.len();
    let failover_acked = acks.len();

    // Let the old primary come back (as a replica, or quarantined with async durability if it
    // had writes the new primary lacks) before the planned switchover.
    let settled = Instant::now();
    loop {
        let statuses = cluster.statuses();
        let replicas = statuses
            .iter()
            .flatten()
            .filter(|s| s.role == "replica" && s.healthy)
            .count();
        let quarantined = statuses.iter().flatten().any(|s| s.role == "quarantined");
        let primary_ok = cluster.primary().as_deref() == Some(new_primary.as_str());
        if primary_ok && (replicas == 2 || (quarantined && replicas == 1)) {
            break;
        }
        anyhow::ensure!(
            settled.elapsed() < Duration::from_secs(180),
            "the cluster did not settle after the failover: {}",
            roles(cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Switchover.
    let writer = Writer::start_from(cluster, next_id);
    let started = Instant::now();
    let from = names.iter().position(|n| *n == new_primary).expect("a node");
    writer.wait_acks("writes through the primary", Duration::from_secs(60), |acks| {
        (acks.len() >= 50 && started.elapsed() >= warmup).then_some(())
    })?;
    let before = Instant::now();
    let (cli_ok, out, err) = cluster.cli(&["switchover"]);
    let switchover_cli = before.elapsed();
    let mut switchover_pause = None;
    if !cli_ok {
        eprintln!("{} run {run}: vigil switchover failed:\n{out}{err}", d.as_str());
    } else {
        let first = writer.wait_acks(
            "an acknowledgement by the switchover's new primary",
            Duration::from_secs(60),
            |acks| acks.iter().find(|a| a.at > before && a.node != from).copied(),
        )?;
        let acks = writer.acks();
        // From the last acknowledgement before the command to the first on the new primary.
        let start = acks.iter().rposition(|a| a.at <= before).unwrap_or(0);
        let end = acks
            .iter()
            .position(|a| a.id == first.id)
            .expect("the first ack on the new primary");
        let pause = acks[start..=end]
            .windows(2)
            .map(|w| w[1].at - w[0].at)
            .max()
            .unwrap_or_default();
        switchover_pause = Some(pause);
        writer.wait_acks(
            "writes through the switchover's new primary",
            Duration::from_secs(30),
            |acks| (acks.iter().filter(|a| a.node == first.node).count() >= 20).then_some(()),
        )?;
    }
    let (acks, _) = writer.stop_with_acks();
    let target = cluster.primary().unwrap_or_else(|| new_primary.clone());
    let present: std::collections::BTreeSet<u64> = rt
        .block_on(cluster.query(&target, "SELECT id FROM acked"))
        .iter()
        .map(|s| s.parse().expect("id"))
        .collect();
    let switchover_lost = acks.iter().filter(|a| !present.contains(&a.id)).count();
    if switchover_lost > 0 {
        eprintln!(
            "{} run {run}: {switchover_lost} acknowledged ids missing on {target} after the switchover from {new_primary}",
            d.as_str()
        );
    }
    Ok(Run {
        failover,
        failover_acked,
        failover_lost,
        switchover_pause,
        switchover_cli,
        switchover_acked: acks.len(),
        switchover_lost,
    })
}
