//! The cluster's configuration: one typed struct read from `vigil.toml`, with a `validate` step
//! whose problems name the key and the line they are on.
//!
//! Parsing and validation are pure: the caller reads the file and checks the file system
//! (writable directories, free ports) itself.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file name `vigil up` writes into a cluster directory.
pub const CONFIG_FILE_NAME: &str = "vigil.toml";

/// How the database nodes replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// MariaDB + galera-4, synchronous, one writer chosen among Synced nodes.
    #[default]
    Galera,
    /// One GTID primary and asynchronous or semi-synchronous replicas.
    Replication,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Topology::Galera => "galera",
            Topology::Replication => "replication",
        })
    }
}

/// The whole configuration of one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterSection,
    pub mariadb: MariadbSection,
    pub agent: AgentSection,
    /// Data nodes, in bootstrap order: on a brand-new cluster the first one bootstraps.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// A Galera arbitrator (`garbd`): a member that votes but holds no data, so that two
    /// data nodes survive the loss of either one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arbitrator: Option<ArbitratorConfig>,
    /// Where `vigil up` serves its proxy for clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// Settings of the `replication` topology (defaults when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationSection>,
    /// The etcd cluster agents and proxies coordinate through. Absent: `vigil up` keeps the
    /// coordination state in its own memory (one process, one machine).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreSection>,
    /// The data nodes found by a DNS SRV lookup instead of listed as `[[node]]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoverySection>,
}

/// Data nodes found in DNS: one SRV record per node (a Kubernetes headless service with
/// `publishNotReadyAddresses`, so that a node that is not ready yet is still found). A record's
/// target is the node's host, its port the node's SQL port, and the target's first label is
/// the node's name (a StatefulSet pod's hostname). Every node uses the same other ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySection {
    /// The SRV name, e.g. `_mysql._tcp.vigil.db.svc.cluster.local`.
    pub srv: String,
    /// How many data nodes the cluster has. Agents and proxies wait until the lookup returns
    /// exactly this many: a cluster that knew only some of its nodes could bootstrap from a
    /// node that is not the most advanced.
    pub nodes: usize,
    /// `ip:port` of the DNS server to ask. Default: the system's resolvers (/etc/resolv.conf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameserver: Option<String>,
    #[serde(default = "default_galera_port")]
    pub galera_port: u16,
    #[serde(default = "default_ist_port")]
    pub ist_port: u16,
    #[serde(default = "default_sst_port")]
    pub sst_port: u16,
    #[serde(default = "default_api_port")]
    pub api_port: u16,
}

fn default_galera_port() -> u16 {
    4567
}
fn default_ist_port() -> u16 {
    4568
}
fn default_sst_port() -> u16 {
    4444
}
fn default_api_port() -> u16 {
    8008
}

/// One SRV record as found: the target host (without the final dot) and the port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvTarget {
    pub host: String,
    pub port: u16,
}

impl DiscoverySection {
    /// The nodes the records name, in bootstrap order (by name, the numbers in it compared as
    /// numbers: `db-2` before `db-10`), or why they are not the cluster's nodes yet.
    pub fn nodes_from(&self, records: &[SrvTarget]) -> Result<Vec<NodeConfig>, String> {
        let mut nodes: Vec<NodeConfig> = Vec::new();
        for r in records {
            let host = r.host.trim_end_matches('.');
            let name = host.split('.').next().unwrap_or_default();
            if nodes.iter().any(|n| n.name == name) {
                return Err(format!("two records of {} name a node {name:?}", self.srv));
            }
            nodes.push(NodeConfig {
                name: name.into(),
                host: host.into(),
                sql_port: r.port,
                galera_port: self.galera_port,
                ist_port: self.ist_port,
                sst_port: self.sst_port,
                api_port: self.api_port,
                dir: String::new(),
            });
        }
        if nodes.len() != self.nodes {
            return Err(format!(
                "{} lists {} node(s), but the cluster has {} (discovery.nodes)",
                self.srv,
                nodes.len(),
                self.nodes
            ));
        }
        nodes.sort_by_cached_key(|n| natural_key(&n.name));
        Ok(nodes)
    }
}

/// A name split into text and numbers, so that numbers sort by value.
fn natural_key(name: &str) -> Vec<(String, u64)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let text_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let (text, after) = rest.split_at(text_len);
        let digits_len = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
        let (digits, after) = after.split_at(digits_len);
        key.push((text.to_string(), digits.parse().unwrap_or(0)));
        rest = after;
    }
    key
}

/// Where the coordination store (etcd v3) is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `http://host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// A request that takes longer counts as the store being unavailable.
    #[serde(default = "default_store_timeout_ms")]
    pub request_timeout_ms: u64,
    /// With `https://` endpoints: the CA certificate (PEM) that signed etcd's certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This host's client certificate and key (PEM), when etcd runs with `--client-cert-auth`.
    /// The key is a secret: keep it mode 0600, readable by vigil only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            endpoints: Vec::new(),
            request_timeout_ms: default_store_timeout_ms(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

fn default_store_timeout_ms() -> u64 {
    1000
}

/// When a write is acknowledged to the client in the `replication` topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// When the primary has committed it: fastest; a failover may lose the last writes.
    #[default]
    Async,
    /// When a replica has also received it (semi-synchronous, AFTER_SYNC): a failover to a
    /// replica that acknowledged loses nothing acknowledged.
    Semisync,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Async => "async",
            Durability::Semisync => "semisync",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationSection {
    pub durability: Durability,
    /// Replicas further behind than this get no reads from the proxy or `/replica`.
    pub max_lag_s: u64,
    /// Re-clone a quarantined old primary automatically (its datadir is kept aside), instead
    /// of waiting for `vigil rejoin --reclone`.
    pub auto_reclone: bool,
    /// Anti-flapping: a primary that fails within this long of its own automatic promotion is
    /// a flap. The first is replaced at once; from the second in a row, the next automatic
    /// failover waits until this long after that promotion, doubling with each further flap up
    /// to `failover_holdoff_max_s`. A primary that served longer is replaced at once.
    pub failover_holdoff_s: u64,
    pub failover_holdoff_max_s: u64,
    /// Parallel apply threads on replicas (`slave_parallel_threads`).
    pub parallel_threads: u32,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            durability: Durability::Async,
            max_lag_s: 10,
            auto_reclone: false,
            failover_holdoff_s: 10,
            failover_holdoff_max_s: 300,
            parallel_threads: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    #[serde(default = "default_host")]
    pub host: String,
    /// Reaches only the current writer.
    pub write_port: u16,
    /// Balanced over healthy readers; falls back to the writer.
    pub read_port: u16,
    /// A backend that does not accept a connection this fast is skipped and blacklisted.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// HTTP port of the proxy's `/status` (routes and per-backend counters); none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_port: Option<u16>,
    /// On a planned switchover, client connections to the old writer may finish their work
    /// for this long before they are closed (new connections go to the new writer at once).
    #[serde(default = "default_drain_ms")]
    pub drain_ms: u64,
}

fn default_drain_ms() -> u64 {
    2000
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArbitratorConfig {
    #[serde(default = "default_arbitrator_name")]
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    pub galera_port: u16,
    /// The arbitrator agent's HTTP API, on its `host`.
    pub api_port: u16,
    /// Its directory (log), relative to the configuration file's directory; default: its name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
}

fn default_arbitrator_name() -> String {
    "garbd".into()
}

impl ArbitratorConfig {
    pub fn dir_name(&self) -> &str {
        if self.dir.is_empty() {
            &self.name
        } else {
            &self.dir
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Becomes `wsrep_cluster_name`: nodes of differently named clusters never join each other.
    pub name: String,
    pub topology: Topology,
    /// Where the generated passwords live, relative to the configuration file's directory.
    pub secrets_dir: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "vigil".into(),
            topology: Topology::Galera,
            secrets_dir: "secrets".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MariadbSection {
    /// Empty means: look in the usual Debian places.
    pub mariadbd: String,
    pub install_db: String,
    pub galera_provider: String,
    /// Empty means: look in the usual Debian places.
    pub garbd: String,
    /// State snapshot transfer method; `mariabackup` keeps the donor writable during SST.
    pub sst_method: String,
    pub innodb_buffer_pool_size: String,
    pub innodb_log_file_size: String,
    /// Galera's write-set cache: the larger, the longer a node may be away and still rejoin by IST.
    pub gcache_size: String,
    /// How long Galera waits for a member that stopped answering before the others drop it
    /// (`evs.suspect_timeout`; the other failure-detection timeouts follow from it). No member
    /// commits meanwhile. Galera's own default is 5000; shorter costs less write time when a
    /// host hangs or is cut off, at the price of dropping a member over a briefer stall.
    pub galera_suspect_timeout_ms: u64,
    /// Further `[mariadbd]` options, written as given (e.g. `max_connections = "500"`).
    pub settings: BTreeMap<String, String>,
}

impl Default for MariadbSection {
    fn default() -> Self {
        MariadbSection {
            mariadbd: String::new(),
            install_db: String::new(),
            galera_provider: "/usr/lib/galera/libgalera_smm.so".into(),
            garbd: String::new(),
            sst_method: "mariabackup".into(),
            innodb_buffer_pool_size: "64M".into(),
            innodb_log_file_size: "32M".into(),
            gcache_size: "128M".into(),
            galera_suspect_timeout_ms: 3000,
            settings: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// How often each agent probes its node; also the granularity of every decision.
    pub probe_interval_ms: u64,
    /// A node that is not Synced this long after start is reported as failed to start.
    pub start_timeout_s: u64,
    /// Store leases (member reports, locks) expire after this long without renewal.
    pub lease_ttl_ms: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            probe_interval_ms: 500,
            start_timeout_s: 600,
            lease_ttl_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// The address other nodes and clients use for this node.
    #[serde(default = "default_host")]
    pub host: String,
    pub sql_port: u16,
    pub galera_port: u16,
    pub ist_port: u16,
    pub sst_port: u16,
    /// The agent's HTTP API (health, status; changes need the API token), on the node's `host`.
    pub api_port: u16,
    /// The node's directory (datadir, config, logs), relative to the configuration file's
    /// directory unless absolute. Defaults to the node's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dir: String,
}

fn default_host() -> String {
    "127.0.0.1".into()
}

impl NodeConfig {
    pub fn dir_name(&self) -> &str {
        if self.dir.is_empty() {
            &self.name
        } else {
            &self.dir
        }
    }

    /// The node's ports with the key each one is configured under.
    pub fn ports(&self) -> [(&'static str, u16); 5] {
        [
            ("sql_port", self.sql_port),
            ("galera_port", self.galera_port),
            ("ist_port", self.ist_port),
            ("sst_port", self.sst_port),
            ("api_port", self.api_port),
        ]
    }

    /// A node laid out from a base port: SQL on `base`, then Galera, IST, SST and the API.
    pub fn from_base_port(name: &str, base: u16) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            host: default_host(),
            sql_port: base,
            galera_port: base + 1,
            ist_port: base + 2,
            sst_port: base + 3,
            api_port: base + 4,
            dir: String::new(),
        }
    }
}

/// `SCHEME://host:port` with a non-zero port.
fn valid_endpoint(e: &str, scheme: &str) -> bool {
    let Some(rest) = e.strip_prefix(scheme).and_then(|r| r.strip_prefix("://")) else {
        return false;
    };
    match rest.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// How far apart consecutive nodes' port blocks are in a generated configuration.
pub const PORT_STRIDE: u16 = 10;

impl Config {
    /// The configuration `vigil up` writes for a new local cluster of `nodes` nodes.
    pub fn local(nodes: usize, base_port: u16, topology: Topology) -> Config {
        let nodes: Vec<NodeConfig> = (0..nodes)
            .map(|i| NodeConfig::from_base_port(&format!("n{}", i + 1), base_port + i as u16 * PORT_STRIDE))
            .collect();
        // The block after the nodes': the arbitrator (if any) uses +1 and +4, the proxy +6 to +8.
        let extra = base_port + nodes.len() as u16 * PORT_STRIDE;
        Config {
            cluster: ClusterSection {
                topology,
                ..ClusterSection::default()
            },
            nodes,
            proxy: Some(ProxySection {
                host: default_host(),
                write_port: extra + 6,
                read_port: extra + 7,
                connect_timeout_ms: default_connect_timeout_ms(),
                status_port: Some(extra + 8),
                drain_ms: default_drain_ms(),
            }),
            replication: (topology == Topology::Replication).then(ReplicationSection::default),
            ..Config::default()
        }
    }

    /// The configuration with the nodes that discovery found (`records`, from the SRV lookup
    /// of `[discovery]`) in place of the section, checked as a whole; or one sentence saying
    /// why these are not (yet) the cluster's nodes. Without `[discovery]` it is unchanged.
    pub fn with_discovered(mut self, records: &[SrvTarget]) -> Result<Config, String> {
        let Some(d) = self.discovery.take() else {
            return Ok(self);
        };
        self.nodes = d.nodes_from(records)?;
        match self.validate().first() {
            None => Ok(self),
            Some(p) => Err(format!("the nodes found in {} do not fit: {p}", d.srv)),
        }
    }

    /// Adds an arbitrator in the port block after the last node's.
    pub fn with_arbitrator(mut self) -> Config {
        let base = self.nodes.last().map_or(23306, |n| n.sql_port + PORT_STRIDE);
        self.arbitrator = Some(ArbitratorConfig {
            name: default_arbitrator_name(),
            host: default_host(),
            galera_port: base + 1,
            api_port: base + 4,
            dir: String::new(),
        });
        self
    }

    /// `host:galera_port` of every Galera member: the data nodes and the arbitrator.
    pub fn galera_peers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("{}:{}", n.host, n.galera_port))
            .chain(
                self.arbitrator
                    .iter()
                    .map(|a| format!("{}:{}", a.host, a.galera_port)),
            )
            .collect()
    }

    /// How many members a full Galera component has (the arbitrator counts).
    pub fn galera_members(&self) -> usize {
        self.nodes.len() + usize::from(self.arbitrator.is_some())
    }

    /// Parses and validates a configuration file's text. Every problem found is returned, each
    /// with the key it concerns and, where it can be found, its line.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigErrors(vec![ConfigProblem {
                key: String::new(),
                line,
                message: e.message().trim().to_string(),
            }])
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            let doc = toml_edit::ImDocument::parse(text).ok();
            Err(ConfigErrors(
                problems
                    .into_iter()
                    .map(|mut p| {
                        p.line = doc.as_ref().and_then(|d| locate(d, text, &p.key));
                        p
                    })
                    .collect(),
            ))
        }
    }

    /// Checks what types cannot: names, sizes, port clashes, node count. Lines are not known
    /// here; [`Config::parse`] adds them.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| {
            problems.push(ConfigProblem {
                key,
                line: None,
                message,
            })
        };

        if !is_identifier(&self.cluster.name) {
            problem(
                "cluster.name".into(),
                format!(
                    "{:?} is not a valid cluster name: use letters, digits, '-' and '_'",
                    self.cluster.name
                ),
            );
        }
        if self.cluster.secrets_dir.is_empty() {
            problem("cluster.secrets_dir".into(), "must not be empty".into());
        }
        for (key, value) in [
            (
                "mariadb.innodb_buffer_pool_size",
                &self.mariadb.innodb_buffer_pool_size,
            ),
            ("mariadb.innodb_log_file_size", &self.mariadb.innodb_log_file_size),
            ("mariadb.gcache_size", &self.mariadb.gcache_size),
        ] {
            if parse_size(value).is_none() {
                problem(
                    key.into(),
                    format!("{value:?} is not a size: write a number with an optional K, M or G suffix"),
                );
            }
        }
        if !(1000..=60_000).contains(&self.mariadb.galera_suspect_timeout_ms) {
            problem(
                "mariadb.galera_suspect_timeout_ms".into(),
                format!(
                    "{} is out of range: between 1000 and 60000 milliseconds",
                    self.mariadb.galera_suspect_timeout_ms
                ),
            );
        }
        if !matches!(
            self.mariadb.sst_method.as_str(),
            "mariabackup" | "rsync" | "mysqldump"
        ) {
            problem(
                "mariadb.sst_method".into(),
                format!(
                    "{:?} is not supported: use mariabackup, rsync or mysqldump",
                    self.mariadb.sst_method
                ),
            );
        }
        for (key, value) in &self.mariadb.settings {
            if !is_identifier(key) || value.contains('\n') {
                problem(
                    format!("mariadb.settings.{key}"),
                    "server options must be plain names with single-line values".into(),
                );
            }
        }
        if self.agent.probe_interval_ms == 0 {
            problem("agent.probe_interval_ms".into(), "must be greater than 0".into());
        }
        if self.agent.lease_ttl_ms < 2 * self.agent.probe_interval_ms {
            problem(
                "agent.lease_ttl_ms".into(),
                format!(
                    "must be at least twice agent.probe_interval_ms ({} ms), or leases expire between renewals",
                    self.agent.probe_interval_ms
                ),
            );
        }

        // A replication primary fences itself when its lease is within one probe interval and
        // two SQL timeouts (1 s each) of lapsing; renewals come one probe (plus up to a 1 s
        // timeout) apart. A shorter lease would fence a healthy primary.
        let fence_floor = 2 * self.agent.probe_interval_ms + 3000;
        if self.cluster.topology == Topology::Replication && self.agent.lease_ttl_ms < fence_floor {
            problem(
                "agent.lease_ttl_ms".into(),
                format!(
                    "must be at least {fence_floor} ms with replication (twice agent.probe_interval_ms plus 3 s), or a healthy primary fences itself between renewals"
                ),
            );
        }

        match &self.discovery {
            None if self.nodes.is_empty() => {
                problem(
                    "node".into(),
                    "at least one [[node]] is required, or a [discovery] section".into(),
                );
            }
            None => {}
            Some(_) if !self.nodes.is_empty() => problem(
                "discovery".into(),
                "list the nodes as [[node]] or find them with [discovery], not both".into(),
            ),
            Some(d) => {
                if d.srv.trim().is_empty() || d.srv.contains(char::is_whitespace) {
                    problem(
                        "discovery.srv".into(),
                        format!(
                            "{:?} is not a DNS name, e.g. _mysql._tcp.vigil.db.svc.cluster.local",
                            d.srv
                        ),
                    );
                }
                if d.nodes == 0 {
                    problem("discovery.nodes".into(), "must be at least 1".into());
                }
                if let Some(ns) = &d.nameserver {
                    if ns.parse::<std::net::SocketAddr>().is_err() {
                        problem(
                            "discovery.nameserver".into(),
                            format!("{ns:?} is not of the form ip:port, e.g. 10.96.0.10:53"),
                        );
                    }
                }
                let ports = [
                    ("galera_port", d.galera_port),
                    ("ist_port", d.ist_port),
                    ("sst_port", d.sst_port),
                    ("api_port", d.api_port),
                ];
                for (i, (key, port)) in ports.iter().enumerate() {
                    if *port == 0 {
                        problem(format!("discovery.{key}"), "port 0 is not allowed".into());
                    } else if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                        problem(
                            format!("discovery.{key}"),
                            format!("port {port} is already discovery.{other}"),
                        );
                    }
                }
            }
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut dirs: BTreeMap<&str, usize> = BTreeMap::new();
        let mut ports: BTreeMap<(&str, u16), String> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !is_identifier(&node.name) {
                problem(
                    format!("node[{i}].name"),
                    format!(
                        "{:?} is not a valid node name: use letters, digits, '-' and '_'",
                        node.name
                    ),
                );
            } else if let Some(first) = names.insert(&node.name, i) {
                problem(
                    format!("node[{i}].name"),
                    format!("{:?} is already the name of node[{first}]", node.name),
                );
            }
            if let Some(first) = dirs.insert(node.dir_name(), i) {
                problem(
                    format!("node[{i}].dir"),
                    format!("directory {:?} is already used by node[{first}]", node.dir_name()),
                );
            }
            if node.host.is_empty() {
                problem(format!("node[{i}].host"), "must not be empty".into());
            }
            for (key, port) in node.ports() {
                if port == 0 {
                    problem(format!("node[{i}].{key}"), "port 0 is not allowed".into());
                    continue;
                }
                let here = format!("node[{i}].{key}");
                if let Some(owner) = ports.insert((node.host.as_str(), port), here.clone()) {
                    problem(
                        here,
                        format!("port {port} on {} is already used by {owner}", node.host),
                    );
                    ports.insert((node.host.as_str(), port), owner);
                }
            }
        }
        if let Some(r) = &self.replication {
            if self.cluster.topology != Topology::Replication {
                problem(
                    "replication".into(),
                    "the [replication] section only serves the replication topology".into(),
                );
            }
            if r.failover_holdoff_max_s < r.failover_holdoff_s {
                problem(
                    "replication.failover_holdoff_max_s".into(),
                    format!(
                        "must be at least replication.failover_holdoff_s ({})",
                        r.failover_holdoff_s
                    ),
                );
            }
            if r.parallel_threads > 256 {
                problem(
                    "replication.parallel_threads".into(),
                    "must be at most 256".into(),
                );
            }
        }
        if let Some(st) = &self.store {
            if st.endpoints.is_empty() {
                problem(
                    "store.endpoints".into(),
                    "list at least one etcd member, e.g. [\"http://10.0.0.1:2379\"]".into(),
                );
            }
            let tls = st.ca_file.is_some();
            let scheme = if tls { "https" } else { "http" };
            for (i, e) in st.endpoints.iter().enumerate() {
                if !valid_endpoint(e, scheme) {
                    let why = match (tls, e.starts_with("https://")) {
                        (false, true) => format!("{e:?}: an https:// endpoint needs store.ca_file, the CA that signed etcd's certificates"),
                        (true, false) => format!("{e:?}: with store.ca_file every endpoint is https://host:port"),
                        _ => format!("{e:?} is not of the form {scheme}://host:port"),
                    };
                    problem(format!("store.endpoints[{i}]"), why);
                }
            }
            for (key, path) in [
                ("ca_file", &st.ca_file),
                ("cert_file", &st.cert_file),
                ("key_file", &st.key_file),
            ] {
                if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                    problem(format!("store.{key}"), "must be an absolute path".into());
                }
            }
            if st.cert_file.is_some() != st.key_file.is_some() {
                problem(
                    "store.cert_file".into(),
                    "a client certificate needs both store.cert_file and store.key_file".into(),
                );
            } else if st.cert_file.is_some() && !tls {
                problem(
                    "store.cert_file".into(),
                    "a client certificate is for TLS: set store.ca_file and https:// endpoints too".into(),
                );
            }
            if st.request_timeout_ms == 0 || st.request_timeout_ms * 2 > self.agent.lease_ttl_ms {
                problem(
                    "store.request_timeout_ms".into(),
                    format!(
                        "must be between 1 and half of agent.lease_ttl_ms ({} ms), so that a primary cut off from the store notices before its lease lapses",
                        self.agent.lease_ttl_ms
                    ),
                );
            }
        }
        if let Some(p) = &self.proxy {
            for (key, port) in [("write_port", p.write_port), ("read_port", p.read_port)]
                .into_iter()
                .chain(p.status_port.map(|s| ("status_port", s)))
            {
                let here = format!("proxy.{key}");
                if port == 0 {
                    problem(here, "port 0 is not allowed".into());
                } else if let Some(owner) = ports.insert((p.host.as_str(), port), here.clone()) {
                    problem(
                        here,
                        format!("port {port} on {} is already used by {owner}", p.host),
                    );
                }
            }
        }
        if let Some(arb) = &self.arbitrator {
            if names.contains_key(arb.name.as_str()) || !is_identifier(&arb.name) {
                problem(
                    "arbitrator.name".into(),
                    format!("{:?} must be a valid name no data node has", arb.name),
                );
            }
            for (key, port) in [("galera_port", arb.galera_port), ("api_port", arb.api_port)] {
                let here = format!("arbitrator.{key}");
                if let Some(owner) = ports.insert((arb.host.as_str(), port), here.clone()) {
                    problem(
                        here,
                        format!("port {port} on {} is already used by {owner}", arb.host),
                    );
                }
            }
            if self.cluster.topology != Topology::Galera {
                problem(
                    "arbitrator".into(),
                    "an arbitrator only serves the galera topology".into(),
                );
            }
        }
        problems
    }

    /// The configuration as the TOML `vigil up` writes, with a header saying what it is.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("the configuration always serialises");
        format!(
            "# vigil cluster configuration, written by `vigil up` and read on every later start.\n\
             # Check edits with `vigil check-config {CONFIG_FILE_NAME}`.\n\n{body}"
        )
    }

    /// The replication settings, or their defaults.
    pub fn replication(&self) -> ReplicationSection {
        self.replication.clone().unwrap_or_default()
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted path of the key, e.g. `node[1].sql_port`; empty when the file does not parse.
    pub key: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses a MariaDB-style size (`64M`, `1G`, `1048576`) into bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'B'),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of a key path like `node[1].sql_port` or `cluster.name` in the parsed file.
fn locate(doc: &toml_edit::ImDocument<&str>, text: &str, key: &str) -> Option<usize> {
    let mut table: &toml_edit::Table = doc.as_table();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        // A key that is absent (defaulted) is reported at its table's header.
        let Some((k, item)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or(item.span()).or(span);
        let next = match (index, item) {
            (Some(i), toml_edit::Item::ArrayOfTables(a)) => {
                let t = a.get(i)?;
                span = t.span().or(span);
                Some(t)
            }
            (_, toml_edit::Item::Table(t)) => Some(t),
            _ => None,
        };
        match next {
            Some(t) => table = t,
            None => break,
        }
    }
    span.map(|s| line_of(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_round_trips_and_is_valid() {
        let config = Config::local(3, 23300, Topology::Galera);
        assert!(config.validate().is_empty());
        let text = config.to_toml();
        assert_eq!(Config::parse(&text).unwrap(), config);
        assert_eq!(config.nodes[2].sql_port, 23320);
        assert_eq!(config.nodes[2].api_port, 23324);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[cluster]\nname = \"x\"\nflavour = \"sweet\"\n";
        let err = Config::parse(text).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].line, Some(3));
        assert!(err.0[0].message.contains("unknown field `flavour`"), "{}", err);
    }

    #[test]
    fn port_clash_is_reported_on_the_second_user() {
        let mut config = Config::local(2, 23300, Topology::Galera);
        config.nodes[1].sql_port = config.nodes[0].galera_port;
        let text = config.to_toml();
        let err = Config::parse(&text).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        let p = &err.0[0];
        assert_eq!(p.key, "node[1].sql_port");
        assert_eq!(
            p.message,
            "port 23301 on 127.0.0.1 is already used by node[0].galera_port"
        );
        let line = text.lines().nth(p.line.unwrap() - 1).unwrap();
        assert!(line.starts_with("sql_port = 23301"), "line {:?}", line);
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "[cluster]\nname = \"bad name\"\n[mariadb]\ngcache_size = \"lots\"\n[[node]]\nname = \"a\"\nsql_port = 1\ngalera_port = 2\nist_port = 3\nsst_port = 4\napi_port = 5\n[[node]]\nname = \"a\"\nsql_port = 11\ngalera_port = 12\nist_port = 13\nsst_port = 14\napi_port = 15\n";
        let err = Config::parse(text).unwrap_err();
        let keys: Vec<_> = err.0.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert_eq!(
            keys,
            vec![
                ("cluster.name", Some(2)),
                ("mariadb.gcache_size", Some(4)),
                ("node[1].name", Some(13)),
                ("node[1].dir", Some(12)),
            ]
        );
    }

    #[test]
    fn wrong_type_and_bad_syntax_have_lines() {
        let err = Config::parse("[agent]\nprobe_interval_ms = \"fast\"\n").unwrap_err();
        assert_eq!(err.0[0].line, Some(2));
        let err = Config::parse("[cluster\nname = 1\n").unwrap_err();
        assert_eq!(err.0[0].line, Some(1));
        let err = Config::parse("[cluster]\ntopology = \"ring\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown variant `ring`"), "{err}");
    }

    #[test]
    fn an_arbitrator_takes_the_next_port_block_and_joins_the_peers() {
        let config = Config::local(2, 23300, Topology::Galera).with_arbitrator();
        let arb = config.arbitrator.clone().unwrap();
        assert_eq!((arb.galera_port, arb.api_port), (23321, 23324));
        assert_eq!(
            config.galera_peers(),
            ["127.0.0.1:23301", "127.0.0.1:23311", "127.0.0.1:23321"]
        );
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        let mut clash = config.clone();
        clash.arbitrator.as_mut().unwrap().galera_port = 23311;
        let err = Config::parse(&clash.to_toml()).unwrap_err();
        assert_eq!(err.0[0].key, "arbitrator.galera_port", "{err}");
    }

    #[test]
    fn a_replication_lease_too_short_to_renew_before_fencing_is_refused() {
        let mut config = Config::local(3, 23300, Topology::Replication);
        config.agent.lease_ttl_ms = 2500;
        let err = Config::parse(&config.to_toml()).unwrap_err();
        assert_eq!(err.0[0].key, "agent.lease_ttl_ms", "{err}");
        assert!(err.to_string().contains("at least 4000 ms"), "{err}");
        // Galera has no fencing lease: only the renewal rule applies
        let mut galera = Config::local(3, 23300, Topology::Galera);
        galera.agent.lease_ttl_ms = 2500;
        assert!(Config::parse(&galera.to_toml()).is_ok());
    }

    #[test]
    fn tls_to_etcd_needs_a_ca_and_both_halves_of_a_client_certificate() {
        let with = |store: StoreSection| {
            let mut config = Config::local(3, 23300, Topology::Galera);
            config.store = Some(store);
            Config::parse(&config.to_toml())
        };
        let https = vec!["https://10.0.0.1:2379".to_string()];
        let err = with(StoreSection {
            endpoints: https.clone(),
            ..StoreSection::default()
        })
        .unwrap_err();
        assert_eq!(err.0[0].key, "store.endpoints[0]", "{err}");
        assert!(err.to_string().contains("needs store.ca_file"), "{err}");

        let err = with(StoreSection {
            endpoints: vec!["http://10.0.0.1:2379".into()],
            ca_file: Some("/etc/vigil/ca.pem".into()),
            cert_file: Some("client.pem".into()),
            ..StoreSection::default()
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("every endpoint is https://"), "{text}");
        assert!(
            text.contains("store.cert_file: must be an absolute path"),
            "{text}"
        );
        assert!(
            text.contains("needs both store.cert_file and store.key_file"),
            "{text}"
        );

        let ok = with(StoreSection {
            endpoints: https,
            ca_file: Some("/etc/vigil/etcd/ca.pem".into()),
            cert_file: Some("/etc/vigil/etcd/client.pem".into()),
            key_file: Some("/etc/vigil/etcd/client.key".into()),
            ..StoreSection::default()
        });
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn no_nodes_is_a_problem() {
        let err = Config::parse("").unwrap_err();
        assert_eq!(err.0[0].key, "node");
    }

    const DISCOVERY: &str = "[discovery]\nsrv = \"_mysql._tcp.vigil.db.svc.cluster.local\"\nnodes = 3\n";

    fn srv(host: &str, port: u16) -> SrvTarget {
        SrvTarget {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn discovered_nodes_are_named_by_their_first_label_in_natural_order() {
        let config = Config::parse(DISCOVERY).unwrap();
        assert!(config.nodes.is_empty());
        let found = [
            srv("db-10.vigil.db.svc.cluster.local.", 3306),
            srv("db-2.vigil.db.svc.cluster.local.", 3306),
            srv("db-1.vigil.db.svc.cluster.local.", 3307),
        ];
        let d = config.discovery.clone().unwrap();
        let mut d3 = d.clone();
        d3.nodes = 3;
        let nodes = d3.nodes_from(&found).unwrap();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["db-1", "db-2", "db-10"]);
        assert_eq!(nodes[0].host, "db-1.vigil.db.svc.cluster.local");
        assert_eq!(
            (nodes[0].sql_port, nodes[0].galera_port, nodes[0].api_port),
            (3307, 4567, 8008)
        );

        let resolved = config.with_discovered(&found).unwrap();
        assert!(resolved.discovery.is_none());
        assert_eq!(resolved.nodes.len(), 3);
        assert!(resolved.validate().is_empty());
    }

    #[test]
    fn discovery_waits_for_every_node_and_refuses_duplicates() {
        let config = Config::parse(DISCOVERY).unwrap();
        let two = [srv("db-0.x", 3306), srv("db-1.x", 3306)];
        let err = config.clone().with_discovered(&two).unwrap_err();
        assert!(err.contains("lists 2 node(s), but the cluster has 3"), "{err}");
        let twice = [srv("db-0.x", 3306), srv("db-0.y", 3306), srv("db-1.x", 3306)];
        let err = config.with_discovered(&twice).unwrap_err();
        assert!(err.contains("name a node \"db-0\""), "{err}");
    }

    #[test]
    fn discovery_and_nodes_together_or_bad_discovery_settings_are_refused() {
        let both = format!(
            "{}\n{DISCOVERY}",
            Config::local(1, 23306, Topology::Galera).to_toml()
        );
        let err = Config::parse(&both).unwrap_err();
        assert!(err.0.iter().any(|p| p.key == "discovery"), "{err}");
        let bad = "[discovery]\nsrv = \"\"\nnodes = 0\nnameserver = \"dns:53\"\napi_port = 4567\n";
        let err = Config::parse(bad).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "discovery.srv",
            "discovery.nodes",
            "discovery.nameserver",
            "discovery.api_port",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }
}
