//! `vigil bench ...`: measurements against the alternatives, side by side.

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
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Up { nodes, runs } => bench_up(nodes, runs),
    }
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
