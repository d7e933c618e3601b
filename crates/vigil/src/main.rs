//! The `vigil` command: parses arguments and wires the library crates together. Anything
//! that decides or does real work lives in a library crate.
#![forbid(unsafe_code)]

mod bench;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};
use vigil_agent::local::{self, UpOptions};
use vigil_core::config::{Config, Durability, Topology};

#[derive(Parser)]
#[command(name = "vigil", version, about = "High availability for MariaDB clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster on this machine until Ctrl-C.
    Up {
        /// The cluster directory: configuration, secrets and one directory per node.
        #[arg(long)]
        dir: PathBuf,
        /// Number of data nodes (new clusters only; default 3).
        #[arg(long)]
        nodes: Option<usize>,
        #[arg(long, value_enum)]
        topology: Option<TopologyArg>,
        /// First SQL port; node i uses ports base+10i .. base+10i+4 (new clusters only).
        /// `auto` picks a free block between 20000 and 32000. Default 23306.
        #[arg(long, value_parser = parse_base_port)]
        base_port: Option<u16>,
        /// Add a Galera arbitrator (garbd): two data nodes then survive the loss of either.
        #[arg(long)]
        arbitrator: bool,
        /// Replication topology: acknowledge writes when the primary committed them (async),
        /// or when a replica also received them (semisync). New clusters only.
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
        /// Coordinate through etcd at these endpoints (comma-separated http://host:port)
        /// instead of in this process's memory. New clusters only.
        #[arg(long, value_delimiter = ',')]
        store: Option<Vec<String>>,
    },
    /// Hand the primary's role to a replica (replication topology), losing no acknowledged write.
    Switchover {
        /// The replica to promote; default: the most advanced healthy replica.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Bring a quarantined node back (replication topology).
    Rejoin {
        /// Re-clone NODE from the primary with mariabackup; its datadir is kept aside.
        #[arg(long)]
        reclone: bool,
        node: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Show the nodes of a cluster.
    Status {
        /// The cluster directory (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hold a node stopped for maintenance, or release it.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// After an outage, start the cluster from NODE's data without waiting for missing members.
    Recover {
        /// Required: this may lose transactions that only the missing members hold.
        #[arg(long)]
        force: bool,
        node: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Run one node's agent on this host; the hosts' agents coordinate through etcd ([store]).
    /// Stops the node cleanly on SIGTERM or Ctrl-C.
    Agent {
        /// The cluster configuration (vigil.toml), the same on every host.
        #[arg(long)]
        config: PathBuf,
        /// The member this host runs. Default: the one named like this host, else the one
        /// whose address this host has.
        #[arg(long)]
        node: Option<String>,
        /// Where the node's directory and the secrets directory are. Default: the
        /// configuration file's directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Run vigil proxy on its own: a write port to the current writer and a read port over
    /// healthy readers, routed from the coordination store (the file's [store] and [proxy]).
    Proxy {
        /// The cluster configuration (vigil.toml) with [store] and [proxy] sections.
        #[arg(long)]
        config: PathBuf,
        /// Worker threads of the data path (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Build a cluster of test hosts in network namespaces (etcd, agents, proxy), run a client
    /// workload through the proxy under faults of every kind, and check what the topology
    /// promises. Needs root.
    Chaos {
        #[arg(long, value_enum, default_value = "galera")]
        topology: TopologyArg,
        /// Seconds of faults.
        #[arg(long, default_value_t = 120)]
        time: u64,
        /// Seed of the fault schedule: the same seed injects the same kinds of fault in the
        /// same order. Random when not given; printed first either way.
        #[arg(long)]
        seed: Option<u64>,
        /// Faults per minute on average (2: a quiet 10-30 s, then a fault held 5-15 s; a
        /// higher rate shortens both in proportion).
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Seconds every node has after the last heal to be back.
        #[arg(long, default_value_t = 300)]
        heal_timeout: u64,
        /// Where each run's logs are archived (the newest --keep-runs runs are kept).
        #[arg(long)]
        logs: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        keep_runs: usize,
    },
    /// Replicate directories of sparse disk images, locally or to a `vigil sync serve`.
    Sync(vigil_sync::cli::SyncCommand),
    /// Validate a configuration file without starting anything.
    CheckConfig { file: PathBuf },
    /// Measure vigil against the alternatives.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum NodeAction {
    /// Stop the node cleanly and keep it stopped.
    Hold {
        node: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Let the node's agent start it again.
    Release {
        node: String,
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TopologyArg {
    Galera,
    Replication,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Async,
    Semisync,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Async => Durability::Async,
            DurabilityArg::Semisync => Durability::Semisync,
        }
    }
}

impl From<TopologyArg> for Topology {
    fn from(t: TopologyArg) -> Topology {
        match t {
            TopologyArg::Galera => Topology::Galera,
            TopologyArg::Replication => Topology::Replication,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `vigil sync` prints its own progress and summary; its logs are for problems only.
    let default_level = match cli.command {
        Command::Sync(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| default_level.into()),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up {
            dir,
            nodes,
            topology,
            base_port,
            arbitrator,
            durability,
            store,
        } => {
            let opts = UpOptions {
                dir: dir.clone(),
                nodes,
                topology: topology.map(Into::into),
                base_port,
                arbitrator: arbitrator.then_some(true),
                durability: durability.map(Into::into),
                store,
            };
            let config = local::prepare(&opts)?;
            let proxy = config.proxy.clone();
            let topology = config.cluster.topology;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(local::run(config, &dir, shutdown_signal(), |nodes| {
                print_up(&dir, nodes, proxy.as_ref(), topology)
            }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { dir, json } => status::run(&dir, json),
        Command::Proxy { config, threads } => proxy(&config, threads),
        Command::Agent {
            config,
            node,
            data_dir,
        } => agent(&config, node.as_deref(), data_dir),
        Command::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            match Config::parse(&text) {
                Ok(config) => {
                    let nodes = match &config.discovery {
                        Some(d) => format!("{} nodes to be found in DNS at {}", d.nodes, d.srv),
                        None => format!("{} nodes", config.nodes.len()),
                    };
                    println!(
                        "{}: valid ({nodes}, {} topology)",
                        file.display(),
                        config.cluster.topology
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(errors) => {
                    for p in &errors.0 {
                        eprintln!("{}:{p}", file.display());
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bench(cmd) => bench::run(cmd),
        Command::Chaos {
            topology,
            time,
            seed,
            rate,
            heal_timeout,
            logs,
            keep_runs,
        } => {
            anyhow::ensure!(time >= 10, "--time must be at least 10 seconds");
            anyhow::ensure!(
                rate > 0.0 && rate <= 30.0,
                "--rate must be between 0 and 30 faults per minute"
            );
            anyhow::ensure!(
                rustix::process::geteuid().is_root(),
                "vigil chaos builds network namespaces and needs root"
            );
            let seed = seed.unwrap_or_else(rand_seed);
            let mut opts = vigil_testkit::chaos::ChaosOptions::new(
                topology.into(),
                std::time::Duration::from_secs(time),
                seed,
            );
            opts.rate = rate;
            opts.heal_timeout = std::time::Duration::from_secs(heal_timeout);
            opts.keep_runs = keep_runs;
            if let Some(dir) = logs {
                opts.logs = dir;
            }
            opts.interrupt = Some(interrupt_on_signal()?);
            println!(
                "vigil chaos: seed {seed}; {} on three hosts, {time} s of faults at {rate} per minute",
                opts.topology
            );
            let vigil = std::env::current_exe()?;
            let summary = vigil_testkit::chaos::run(&vigil, &opts, |line| println!("{line}"));
            print!("{summary}");
            Ok(if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Sync(cmd) => Ok(vigil_sync::cli::run_sync(cmd)),
        Command::Node { action } => {
            let (node, dir, path) = match action {
                NodeAction::Hold { node, dir } => (node, dir, "/hold"),
                NodeAction::Release { node, dir } => (node, dir, "/release"),
            };
            let config = load_operator_config(&dir)?;
            let node = config
                .node(&node)
                .ok_or_else(|| anyhow::anyhow!("{node:?} is not a node of this cluster"))?;
            print!("{}", status::post(&dir, &config, node, path)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Recover { force, node, dir } => recover(force, &node, &dir),
        Command::Switchover { to, dir } => status::switchover(&dir, to.as_deref()),
        Command::Rejoin { reclone, node, dir } => {
            anyhow::ensure!(
                reclone,
                "say how: `vigil rejoin --reclone {node}` re-clones it from the primary (its datadir is kept aside)"
            );
            let config = load_operator_config(&dir)?;
            let node = config
                .node(&node)
                .ok_or_else(|| anyhow::anyhow!("{node:?} is not a node of this cluster"))?;
            print!("{}", status::post(&dir, &config, node, "/reclone")?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration in an operator's cluster directory, with its nodes looked up in DNS when
/// it has `[discovery]`.
pub(crate) fn load_operator_config(dir: &std::path::Path) -> anyhow::Result<Config> {
    let config = local::load_config(&dir.join(vigil_core::config::CONFIG_FILE_NAME))?;
    vigil_agent::discovery::complete_blocking(config).map_err(|why| anyhow::anyhow!("{why}"))
}

/// `vigil agent --config FILE`: runs this host's node until SIGINT or SIGTERM.
fn agent(path: &std::path::Path, node: Option<&str>, data_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = local::load_config(path)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let config = runtime.block_on(vigil_agent::discovery::complete(config));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = vigil_agent::host::choose_member(&config, node, hostname.trim())?;
    let dir = match data_dir {
        Some(d) => d,
        None => path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf(),
    };
    runtime.block_on(vigil_agent::host::run(
        config,
        &dir,
        &name,
        shutdown_signal(),
        |api| println!("vigil agent: running {name} (API on http://{api}/status)"),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `vigil proxy --config FILE`: serves until SIGINT or SIGTERM.
fn proxy(path: &std::path::Path, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let config = local::load_config(path)?;
    let section = config.proxy.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no [proxy] section; add write_port and read_port",
            path.display()
        )
    })?;
    anyhow::ensure!(
        config.store.is_some(),
        "{} has no [store] section: a separate proxy reads the cluster's state from etcd (store.endpoints)",
        path.display()
    );
    anyhow::ensure!(threads != Some(0), "--threads must be at least 1");
    // one thread: a current-thread runtime, with no work-stealing or cross-thread wake-ups
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async {
        let config = std::sync::Arc::new(vigil_agent::discovery::complete(config).await);
        let store = local::open_store(&config).await?;
        let p = vigil_agent::proxy::start(config.clone(), &section, store).await?;
        println!(
            "vigil proxy for cluster {}: writes on {}:{}, reads on {}:{}{}",
            config.cluster.name,
            section.host,
            p.write_port,
            section.host,
            p.read_port,
            p.status_port
                .map(|s| format!(", status on http://{}:{s}/status", section.host))
                .unwrap_or_default()
        );
        shutdown_signal().await;
        p.task.abort();
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

fn parse_base_port(s: &str) -> Result<u16, String> {
    match s {
        "auto" => Ok(local::free_base_port(local::MAX_LOCAL_NODES)),
        _ => s
            .parse()
            .map_err(|_| format!("{s:?} is neither a port number nor `auto`")),
    }
}

/// `vigil recover --force NODE`: says what may be lost, then tells NODE's agent to start the
/// cluster from its data.
fn recover(force: bool, name: &str, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = load_operator_config(dir)?;
    let node = config
        .node(name)
        .ok_or_else(|| anyhow::anyhow!("{name:?} is not a node of this cluster"))?;
    let all: Vec<_> = config.nodes.iter().map(status::fetch).collect();
    let me = all.iter().find(|s| s.name == name).expect("fetched every node");
    anyhow::ensure!(
        me.state != "unreachable",
        "the agent of {name} does not answer; start it first"
    );
    if let Some(primary) = all.iter().find(|s| s.cluster_status == "Primary") {
        anyhow::bail!(
            "{} is in a Primary component: nothing to recover; {name} will join it",
            primary.name
        );
    }
    let recorded = all.iter().map(|s| s.recorded_seqno).max().unwrap_or(-1);
    println!(
        "{name} would start the cluster from its data at seqno {}.",
        me.seqno
    );
    if recorded > me.seqno {
        println!(
            "The cluster recorded seqno {recorded} while it ran: up to {} committed transactions may be lost.",
            recorded - me.seqno
        );
    }
    for other in all
        .iter()
        .filter(|s| s.name != name && (s.state == "unreachable" || s.seqno < 0))
    {
        println!("{} has not reported a position: whatever it holds beyond seqno {} is lost to the cluster, and its datadir will be kept aside when it rejoins.", other.name, me.seqno);
    }
    if !force {
        println!("Nothing done. Run again with --force to proceed.");
        return Ok(ExitCode::FAILURE);
    }
    print!("{}", status::post(dir, &config, node, "/recover/force")?);
    Ok(ExitCode::SUCCESS)
}

/// A seed nobody chose: from the clock and the process id.
fn rand_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    (nanos ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

/// A flag the first SIGINT or SIGTERM sets, so that `vigil chaos` ends its run early and
/// still removes its hosts and processes; a second signal ends the process at once.
fn interrupt_on_signal() -> anyhow::Result<&'static AtomicBool> {
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async {
                shutdown_signal().await;
                INTERRUPTED.store(true, Ordering::Relaxed);
                eprintln!("vigil chaos: interrupted; ending the run (a second signal stops at once)");
                shutdown_signal().await;
                std::process::exit(130);
            })
        })?;
    Ok(&INTERRUPTED)
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn print_up(
    dir: &std::path::Path,
    nodes: &[vigil_agent::NodeStatus],
    proxy: Option<&vigil_core::config::ProxySection>,
    topology: Topology,
) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let writer_role = match topology {
        Topology::Galera => "writer",
        Topology::Replication => "primary",
    };
    let writer = nodes
        .iter()
        .find(|n| n.role == writer_role)
        .map_or("-", |n| n.name.as_str());
    let first = &nodes[0];
    let data = nodes.iter().filter(|n| n.role != "arbitrator").count();
    let arbitrator = if data < nodes.len() {
        " and an arbitrator"
    } else {
        ""
    };
    match topology {
        Topology::Galera => {
            println!("vigil: cluster is up: {data} Galera nodes Synced{arbitrator}, writer {writer}")
        }
        Topology::Replication => println!(
            "vigil: cluster is up: primary {writer} and {} replicas streaming by GTID",
            data.saturating_sub(1)
        ),
    }
    println!(
        "  connect: mariadb --defaults-extra-file={}/secrets/app.cnf -h 127.0.0.1 -P {}",
        dir.display(),
        nodes
            .iter()
            .find(|n| n.role == writer_role)
            .unwrap_or(first)
            .sql_port
    );
    if let Some(p) = proxy {
        println!(
            "  proxy:   writes {host}:{} (the writer only), reads {host}:{} (healthy readers)",
            p.write_port,
            p.read_port,
            host = p.host
        );
    }
    println!("  status:  vigil status --dir {}", dir.display());
    match topology {
        Topology::Galera => {
            println!("  stop:    Ctrl-C (nodes stop one at a time; the last is marked safe to bootstrap)")
        }
        Topology::Replication => println!("  stop:    Ctrl-C (replicas stop first, the primary last)"),
    }
}
