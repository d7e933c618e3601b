//! `vigil bench ...`: measurements against the alternatives, side by side.

mod failover;
mod proxy;

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_core::config::{Config, CONFIG_FILE_NAME};

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Time from `vigil up` to every node Synced: a fresh cluster, then a restart of it.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Time from kill -9 of every node (under writes) to the first acknowledged write on the
    /// recovered cluster, and a check that no acknowledged insert was lost.
    Recovery {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Write outage through a separate proxy when the writer's host fails (kill of mariadbd,
    /// of the agent, of the whole host; isolation; a paused server) or hands over (switchover),
    /// on network-namespace hosts with etcd, for both topologies; no acknowledged insert lost.
    Failover(failover::FailoverArgs),
    /// sysbench through vigil proxy, HAProxy and Pen, and directly, interleaved.
    Proxy(proxy::ProxyArgs),
    /// vigil sync vs cp and rsync on generated sparse images.
    Sync(vigil_sync::bench::BenchSyncArgs),
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Up { nodes, runs } => bench_up(nodes, runs),
        BenchCommand::Recovery { nodes, runs } => bench_recovery(nodes, runs),
        BenchCommand::Failover(args) => failover::run(args),
        BenchCommand::Proxy(args) => proxy::run(args),
        BenchCommand::Sync(args) => Ok(vigil_sync::bench::run_bench(args)),
    }
}

/// Longer than a node must run for its restart backoff to reset, with a margin for the probe.
const BACKOFF_RESET: Duration = Duration::from_secs(vigil_core::galera::BACKOFF_RESET.as_secs() + 5);

fn bench_recovery(nodes: usize, runs: usize) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(runs > 0 && nodes > 0, "--runs and --nodes must be at least 1");
    let vigil = std::env::current_exe()?;
    let mut cluster = vigil_testkit::LocalCluster::start(&vigil, nodes, &[]);
    cluster.wait_synced(Duration::from_secs(300));
    let writer = vigil_testkit::Writer::start(&cluster);
    writer.wait_for_more(100, Duration::from_secs(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::new();
    for run in 1..=runs {
        if run > 1 {
            // Each run measures a first outage: let the nodes stay up long enough that their
            // restart backoff (anti-flapping) has reset, as it would between real incidents.
            std::thread::sleep(BACKOFF_RESET);
        }
        writer.wait_for_more(50, Duration::from_secs(60));
        let pids: Vec<(String, u32)> = cluster
            .names()
            .into_iter()
            .map(|n| (n.clone(), cluster.kill_node(&n)))
            .collect();
        let killed = Instant::now();
        // The first write acknowledged by the recovered cluster, through its writer.
        let recovered = loop {
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(300),
                "no write acknowledged within 300 s"
            );
            if rt.block_on(try_write(&cluster)) {
                break killed.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for (n, pid) in &pids {
            vigil_testkit::wait_for(&format!("{n} restarted"), Duration::from_secs(120), || {
                cluster
                    .status(n)
                    .filter(|s| s.pid.is_some_and(|p| p != *pid))
                    .map(|_| ())
            });
        }
        cluster.wait_synced(Duration::from_secs(300));
        eprintln!(
            "run {run}/{runs}: first acknowledged write {:.1} s after kill -9 of all {nodes} nodes",
            recovered.as_secs_f64()
        );
        times.push(recovered);
    }
    writer.wait_for_more(50, Duration::from_secs(60));
    let acked = writer.stop();
    let mut lost = 0;
    for n in cluster.names() {
        let present = rt.block_on(cluster.acked_ids(&n));
        lost = lost.max(acked.iter().filter(|id| !present.contains(id)).count());
    }
    cluster.stop();
    times.sort();
    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    println!("vigil bench recovery: {nodes} Galera nodes, {runs} runs of kill -9 of every node under writes");
    println!("| recovery to first acknowledged write | median | min | max | acknowledged inserts | lost |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| vigil (automatic) | {} | {} | {} | {} | {lost} |",
        s(times[times.len() / 2]),
        s(times[0]),
        s(times[times.len() - 1]),
        acked.len()
    );
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One insert through the node that reports itself writer; false if that is not possible yet.
async fn try_write(cluster: &vigil_testkit::LocalCluster) -> bool {
    use mysql_async::prelude::Queryable;
    let Some(node) = cluster
        .names()
        .into_iter()
        .find(|n| cluster.status(n).is_some_and(|s| s.role == "writer" && s.healthy))
    else {
        return false;
    };
    let opts = cluster.app_opts(&node);
    let attempt = async {
        let mut conn = mysql_async::Conn::new(opts).await?;
        conn.query_drop("CREATE TABLE IF NOT EXISTS bench_probe (id INT AUTO_INCREMENT PRIMARY KEY)")
            .await?;
        conn.query_drop("INSERT INTO bench_probe () VALUES ()").await?;
        conn.disconnect().await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), attempt).await,
        Ok(Ok(()))
    )
}

fn bench_up(nodes: usize, runs: usize) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(runs > 0, "--runs must be at least 1");
    let vigil = std::env::current_exe()?;
    let (mut fresh, mut restart) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let dir = tempfile::Builder::new().prefix("vigil-bench-up-").tempdir()?;
        let base = vigil_agent::local::free_base_port(nodes);
        let args = [
            "--nodes".to_string(),
            nodes.to_string(),
            "--base-port".into(),
            base.to_string(),
        ];
        let f = timed_up(&vigil, dir.path(), &args)?;
        let r = timed_up(&vigil, dir.path(), &[])?;
        eprintln!(
            "run {run}/{runs}: fresh {:.1} s, restart {:.1} s",
            f.as_secs_f64(),
            r.as_secs_f64()
        );
        fresh.push(f);
        restart.push(r);
    }
    println!("vigil bench up: {nodes} Galera nodes, {runs} runs; time from `vigil up` to all nodes Synced");
    println!("| start   | median | min    | max    |");
    println!("|---------|--------|--------|--------|");
    for (name, mut times) in [("fresh", fresh), ("restart", restart)] {
        times.sort();
        let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        println!(
            "| {name:<7} | {:<6} | {:<6} | {:<6} |",
            s(times[times.len() / 2]),
            s(times[0]),
            s(times[times.len() - 1])
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts `vigil up`, waits until every node reports healthy, stops it, returns the wait.
fn timed_up(vigil: &Path, dir: &Path, args: &[String]) -> anyhow::Result<Duration> {
    let log = std::fs::File::create(dir.with_extension("log"))?;
    let start = Instant::now();
    let mut child = Command::new(vigil)
        .arg("up")
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = wait_synced(&mut child, dir, Duration::from_secs(600)).map(|()| start.elapsed());
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    child.wait()?;
    let _ = std::fs::remove_file(dir.with_extension("log"));
    result
}

fn wait_synced(child: &mut Child, dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut config: Option<Config> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "vigil up exited ({status}); see {}",
                dir.with_extension("log").display()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the cluster was not synced within {} s",
            timeout.as_secs()
        );
        if config.is_none() {
            config = std::fs::read_to_string(dir.join(CONFIG_FILE_NAME))
                .ok()
                .and_then(|t| Config::parse(&t).ok());
        }
        if let Some(c) = &config {
            let n = c.galera_members() as u32;
            let statuses: Vec<_> = c.nodes.iter().map(crate::status::fetch).collect();
            if let Some(failed) = statuses
                .iter()
                .find(|s| s.phase == vigil_core::galera::Phase::Failed)
            {
                anyhow::bail!("node {} failed: {}", failed.name, failed.reason);
            }
            if statuses.iter().all(|s| s.healthy && s.cluster_size == n) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
