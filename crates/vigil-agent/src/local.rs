//! `vigil up`: a whole cluster on this machine, in this process: one agent per node and an
//! in-memory coordination store.
//!
//! [`prepare`] turns a directory into a cluster directory (or reads the one it already is),
//! checking everything before it writes anything. [`run`] starts the agents, reports when the
//! cluster is up, and on shutdown stops the nodes one at a time, the writer last.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vigil_core::config::{Config, ConfigErrors, Topology, CONFIG_FILE_NAME};
use vigil_core::galera;
use vigil_mariadb::secrets::Secrets;
use vigil_mariadb::NodeError;
use vigil_store::memory::MemoryStore;
use vigil_store::CoordinationStore;

use crate::node::LeftRunning;
use crate::replication::ReplAgent;
use crate::{keys, Agent, AgentError, AgentHandle, NodeStatus};

/// The first SQL port of a cluster `vigil up` creates; node i uses the block `base + 10 i`.
pub const DEFAULT_BASE_PORT: u16 = 23306;
pub const MAX_LOCAL_NODES: usize = 9;

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dir: PathBuf,
    /// For a new cluster; for an existing one, must agree with its configuration if given.
    pub nodes: Option<usize>,
    pub topology: Option<Topology>,
    pub base_port: Option<u16>,
    /// Add a Galera arbitrator (new clusters only; for an existing one, must agree if given).
    pub arbitrator: Option<bool>,
    /// Replication topology: async or semisync (new clusters only; must agree if given).
    pub durability: Option<vigil_core::config::Durability>,
    /// etcd endpoints to coordinate through instead of this process's memory (new clusters
    /// only; for an existing one, must agree with its `[store]` if given).
    pub store: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error("{path} has problems:\n{errors}")]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("cannot read {path}: {source}")]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("cannot use {dir} as the cluster directory: {reason}")]
    Dir { dir: PathBuf, reason: String },
    #[error("{0}")]
    Options(String),
    #[error("port {port} ({key} of {node}) is already in use on {host}; is another cluster or vigil running there?")]
    PortInUse {
        node: String,
        key: &'static str,
        host: String,
        port: u16,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// Reads the configuration file at `path` and validates it.
pub fn load_config(path: &Path) -> Result<Config, UpError> {
    let text = std::fs::read_to_string(path).map_err(|source| UpError::ReadConfig {
        path: path.into(),
        source,
    })?;
    Config::parse(&text).map_err(|errors| UpError::Config {
        path: path.into(),
        errors,
    })
}

/// Makes `opts.dir` a cluster directory, or reads the one it is. On error nothing was written.
pub fn prepare(opts: &UpOptions) -> Result<Config, UpError> {
    let dir = &opts.dir;
    let config_path = dir.join(CONFIG_FILE_NAME);
    if config_path.exists() {
        let config = load_config(&config_path)?;
        if let Some(d) = &config.discovery {
            return Err(UpError::Options(format!(
                "{} finds its nodes in DNS ({}): that is for `vigil agent` on each host; `vigil up` runs the nodes listed as [[node]]",
                config_path.display(),
                d.srv
            )));
        }
        if let Some(n) = opts.nodes.filter(|n| *n != config.nodes.len()) {
            return Err(UpError::Options(format!(
                "{} holds a {}-node cluster, but --nodes {n} was given; leave --nodes out or use another --dir",
                dir.display(),
                config.nodes.len()
            )));
        }
        if let Some(t) = opts.topology.filter(|t| *t != config.cluster.topology) {
            return Err(UpError::Options(format!(
                "{} holds a {} cluster, but --topology {t} was given",
                dir.display(),
                config.cluster.topology
            )));
        }
        if let Some(d) = opts.durability.filter(|d| {
            config.cluster.topology != Topology::Replication || *d != config.replication().durability
        }) {
            return Err(UpError::Options(format!(
                "{} holds a {} cluster{}, but --durability {d} was given; edit replication.durability in {} instead",
                dir.display(),
                config.cluster.topology,
                match config.cluster.topology {
                    Topology::Replication => format!(" with {} durability", config.replication().durability),
                    Topology::Galera => String::new(),
                },
                config_path.display()
            )));
        }
        if let Some(e) = opts
            .store
            .as_ref()
            .filter(|e| Some(*e) != config.store.as_ref().map(|s| &s.endpoints))
        {
            return Err(UpError::Options(format!(
                "{} holds a cluster whose store is set in {}; --store {} does not apply (edit [store] instead)",
                dir.display(),
                config_path.display(),
                e.join(",")
            )));
        }
        if let Some(p) = opts
            .base_port
            .filter(|p| Some(*p) != config.nodes.first().map(|n| n.sql_port))
        {
            return Err(UpError::Options(format!(
                "{} holds a cluster whose ports are set in {}; --base-port {p} does not apply (edit the file instead)",
                dir.display(),
                config_path.display()
            )));
        }
        return Ok(config);
    }

    let nodes = opts.nodes.unwrap_or(3);
    if nodes == 0 || nodes > MAX_LOCAL_NODES {
        return Err(UpError::Options(format!(
            "--nodes must be between 1 and {MAX_LOCAL_NODES}, not {nodes}"
        )));
    }
    let base = opts.base_port.unwrap_or(DEFAULT_BASE_PORT);
    if base < 1024 || base as usize + nodes * vigil_core::config::PORT_STRIDE as usize > 65535 {
        return Err(UpError::Options(format!(
            "--base-port {base} leaves no room for {nodes} nodes' ports"
        )));
    }
    let mut config = Config::local(nodes, base, opts.topology.unwrap_or_default());
    if opts.arbitrator == Some(true) {
        config = config.with_arbitrator();
    }
    if let Some(d) = opts.durability {
        if config.cluster.topology != Topology::Replication {
            return Err(UpError::Options(
                "--durability applies to the replication topology only; add --topology replication".into(),
            ));
        }
        config.replication = Some(vigil_core::config::ReplicationSection {
            durability: d,
            ..config.replication()
        });
    }
    if let Some(endpoints) = &opts.store {
        config.store = Some(vigil_core::config::StoreSection {
            endpoints: endpoints.clone(),
            ..Default::default()
        });
    }
    if let Err(problems) = Config::parse(&config.to_toml()) {
        return Err(UpError::Config {
            path: config_path,
            errors: problems,
        });
    }
    check_ports_free(&config)?;
    check_dir_usable(dir)?;

    let secrets_dir = dir.join(&config.cluster.secrets_dir);
    Secrets::generate().write(&secrets_dir)?;
    vigil_mariadb::secrets::write_private_file(&config_path, &config.to_toml())?;
    info!(
        "wrote {} and new passwords under {}",
        config_path.display(),
        secrets_dir.display()
    );
    Ok(config)
}

/// Fails with the first configured port that something already listens on.
pub fn check_ports_free(config: &Config) -> Result<(), UpError> {
    for node in &config.nodes {
        for (key, port) in node.ports() {
            let host = if key == "api_port" {
                "127.0.0.1"
            } else {
                node.host.as_str()
            };
            if std::net::TcpListener::bind((host, port)).is_err() {
                return Err(UpError::PortInUse {
                    node: node.name.clone(),
                    key,
                    host: host.into(),
                    port,
                });
            }
        }
    }
    Ok(())
}

/// A base port whose whole block (`nodes * 10` ports) is free on loopback, chosen at random
/// between 20000 and 32000: below Linux's ephemeral range (32768-60999), where any outgoing
/// connection could take a port before the node binds it.
pub fn free_base_port(nodes: usize) -> u16 {
    let stride = vigil_core::config::PORT_STRIDE;
    loop {
        let base = 20000 + (std::process::id() as u16 ^ nanos()) % 120 * 100;
        if (0..nodes as u16 * stride).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
}

fn nanos() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u16)
}

/// Warns about listening ports inside the kernel's ephemeral range: an outgoing connection
/// may be given such a port as its source, and the node then fails to bind it at some restart.
fn warn_ephemeral_ports(config: &Config) {
    let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut bounds = range.split_whitespace().filter_map(|s| s.parse::<u16>().ok());
    let (Some(low), Some(high)) = (bounds.next(), bounds.next()) else {
        return;
    };
    for node in &config.nodes {
        for (key, port) in node.ports() {
            if (low..=high).contains(&port) {
                warn!(
                    "{}.{key} = {port} is inside the ephemeral port range {low}-{high}: outgoing connections \
                     may take it; prefer ports below {low}",
                    node.name
                );
            }
        }
    }
}

/// The directory exists (or its parent does, and it is created) and accepts new files.
fn check_dir_usable(dir: &Path) -> Result<(), UpError> {
    let fail = |reason: String| UpError::Dir {
        dir: dir.into(),
        reason,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    } else if !dir.is_dir() {
        return Err(fail("it is not a directory".into()));
    }
    let probe = dir.join(".vigil-write-test");
    std::fs::write(&probe, b"").map_err(|e| fail(format!("it is not writable ({e})")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// The store the configuration names: etcd when it has a `[store]` section, otherwise one in
/// this process's memory.
pub async fn open_store(config: &Config) -> Result<Arc<dyn CoordinationStore>, UpError> {
    Ok(match &config.store {
        Some(s) => {
            let mut opts = vigil_store::etcd::EtcdOptions::new(s.endpoints.clone());
            opts.request_timeout = Duration::from_millis(s.request_timeout_ms);
            if let Some(ca) = &s.ca_file {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| UpError::ReadConfig {
                        path: path.clone(),
                        source,
                    })
                };
                let identity = match (&s.cert_file, &s.key_file) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                opts.tls = Some(vigil_store::etcd::EtcdTls {
                    ca_pem: read(ca)?,
                    identity,
                });
            }
            Arc::new(
                vigil_store::etcd::EtcdStore::connect(&opts)
                    .await
                    .map_err(AgentError::from)?,
            )
        }
        None => Arc::new(MemoryStore::new()),
    })
}

/// Runs the cluster until `shutdown` completes, then stops it cleanly. `on_up` is called once,
/// when every node is first healthy.
pub async fn run(
    config: Config,
    dir: &Path,
    shutdown: impl Future<Output = ()>,
    on_up: impl FnOnce(&[NodeStatus]),
) -> Result<(), UpError> {
    check_ports_free(&config)?;
    warn_ephemeral_ports(&config);
    let config = Arc::new(config);
    let store = open_store(&config).await?;
    let mut agents: Vec<AgentHandle> = Vec::new();
    for node in &config.nodes {
        let spawned = match config.cluster.topology {
            Topology::Galera => Agent::spawn(config.clone(), dir, &node.name, store.clone()).await,
            Topology::Replication => {
                ReplAgent::spawn(
                    config.clone(),
                    dir,
                    &node.name,
                    store.clone(),
                    LeftRunning::Refuse,
                )
                .await
            }
        };
        match spawned {
            Ok(handle) => agents.push(handle),
            Err(e) => {
                stop_all(&config, &*store, agents).await;
                return Err(e.into());
            }
        }
    }

    if config.arbitrator.is_some() {
        match crate::arbitrator::spawn(config.clone(), dir, store.clone()).await {
            Ok(handle) => agents.push(handle),
            Err(e) => {
                stop_all(&config, &*store, agents).await;
                return Err(e.into());
            }
        }
    }

    let _proxy = match &config.proxy {
        Some(section) => match crate::proxy::start(config.clone(), section, store.clone()).await {
            Ok(p) => Some(AbortOnDrop(p.task)),
            Err(e) => {
                stop_all(&config, &*store, agents).await;
                return Err(e);
            }
        },
        None => None,
    };

    tokio::pin!(shutdown);
    let mut on_up = Some(on_up);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if on_up.is_some() {
            let statuses: Vec<NodeStatus> = agents.iter().map(AgentHandle::status).collect();
            let data: Vec<&NodeStatus> = statuses.iter().filter(|s| s.role != "arbitrator").collect();
            let members = match config.cluster.topology {
                Topology::Galera => config.galera_members() as u32,
                Topology::Replication => config.nodes.len() as u32,
            };
            if data.iter().all(|s| s.healthy && s.cluster_size == members) {
                (on_up.take().expect("checked"))(&statuses);
            }
        }
    }
    info!("shutting down: stopping nodes one at a time");
    stop_all(&config, &*store, agents).await;
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the arbitrator, then the data nodes in [`galera::stop_order`]: readers first, the
/// writer last.
async fn stop_all(config: &Config, store: &dyn CoordinationStore, mut agents: Vec<AgentHandle>) {
    if let Some(arb) = &config.arbitrator {
        if let Some(i) = agents.iter().position(|a| a.name() == arb.name) {
            if let Err(e) = agents.remove(i).stop().await {
                warn!("{}: {e}", arb.name);
            }
        }
    }
    let writer_key = match config.cluster.topology {
        Topology::Galera => keys::writer(&config.cluster.name),
        Topology::Replication => keys::leader(&config.cluster.name),
    };
    let writer = match store.get(&writer_key).await {
        Ok(kv) => kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
        Err(_) => None,
    };
    let order: Vec<String> = config.nodes.iter().map(|n| n.name.clone()).collect();
    for name in galera::stop_order(&order, writer.as_deref()) {
        let Some(i) = agents.iter().position(|a| a.name() == name) else {
            continue;
        };
        let agent = agents.remove(i);
        info!("stopping {name}");
        if let Err(e) = agent.stop().await {
            warn!("{name}: {e}");
        }
    }
}
