//! A cluster of test hosts, deployed as an operator would: every database host runs an etcd
//! member and `vigil agent` (which runs mariadbd), and a client host runs `vigil proxy`. Each
//! host is a network namespace ([`crate::netns`]); every host listens on the standard ports
//! of its own address.
//!
//! The operator's copy of the configuration and secrets is in [`HostCluster::path`]; each host
//! has its own data directory under it (`db1/`, ...) with a copy of the secrets.
//! Processes are killed by pid, and on drop everything inside the namespaces is killed and the
//! namespaces deleted, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_agent::NodeStatus;
use vigil_core::config::{Config, DiscoverySection, NodeConfig, StoreSection, Topology, CONFIG_FILE_NAME};

use crate::netns::Net;
use crate::{app_opts, wait_for, KillOnDrop, ONE_CLUSTER_AT_A_TIME};

/// The client host's name: it runs the proxy and the test's clients.
pub const CLIENT: &str = "client";
pub const PROXY_WRITE_PORT: u16 = 6446;
pub const PROXY_READ_PORT: u16 = 6447;
pub const PROXY_STATUS_PORT: u16 = 6448;
/// The domain of the database hosts' names in [`HostCluster::start_found_in_dns`].
pub const DOMAIN: &str = "vigil.test";
/// The SRV name that lists the nodes in [`HostCluster::start_found_in_dns`].
pub const SRV_NAME: &str = "_mysql._tcp.db.vigil.test";

/// The processes a host can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Etcd,
    Agent,
    /// The node's mariadbd, which its agent starts; found by its pid file.
    Mariadbd,
    Proxy,
}

pub struct HostCluster {
    pub vigil: PathBuf,
    pub config: Config,
    /// The names of the database hosts, which are also their nodes' names.
    pub db_hosts: Vec<String>,
    procs: Vec<(String, Service, KillOnDrop)>,
    /// With [`HostCluster::start_found_in_dns`]: the DNS server on the client host, and the
    /// hosts file every process sees as /etc/hosts (in a mount namespace of its own), which
    /// names the database hosts.
    dns: Option<crate::dns::SrvServer>,
    hosts_file: Option<PathBuf>,
    /// Dropped after the processes (field order), before `net` tears the namespaces down.
    pub dir: tempfile::TempDir,
    pub net: Net,
    _turn: MutexGuard<'static, ()>,
}

impl HostCluster {
    /// Builds `nodes` database hosts and a client host, starts etcd on the first three database
    /// hosts (or all, if fewer), an agent on each and the proxy, without waiting for the nodes.
    pub fn start(vigil: &Path, topology: Topology, nodes: usize) -> HostCluster {
        HostCluster::start_with(vigil, topology, nodes, |_| {})
    }

    /// [`HostCluster::start`] with the configuration changed by `tweak` before it is written.
    pub fn start_with(
        vigil: &Path,
        topology: Topology,
        nodes: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> HostCluster {
        HostCluster::build(vigil, topology, nodes, tweak, false)
    }

    /// Like [`HostCluster::start`], but the hosts' configuration lists no nodes: agents and the
    /// proxy find them as a Kubernetes pod would, by the SRV records of
    /// [`SRV_NAME`], served by a DNS server on the client host. Each record names its node's host
    /// as `dbN.vigil.test`, which every process resolves through its /etc/hosts.
    /// [`HostCluster::config`] keeps the nodes, with their addresses, for the test's own use.
    /// `tweak` changes the configuration before it is written.
    pub fn start_found_in_dns(
        vigil: &Path,
        topology: Topology,
        nodes: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> HostCluster {
        HostCluster::build(vigil, topology, nodes, tweak, true)
    }

    fn build(
        vigil: &Path,
        topology: Topology,
        nodes: usize,
        tweak: impl FnOnce(&mut Config),
        in_dns: bool,
    ) -> HostCluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let db_hosts: Vec<String> = (1..=nodes).map(|i| format!("db{i}")).collect();
        let mut names: Vec<&str> = db_hosts.iter().map(String::as_str).collect();
        names.push(CLIENT);
        let net = Net::create(&names);
        let dir = tempfile::Builder::new()
            .prefix("vigil-hosts-")
            .tempdir()
            .expect("temp dir");

        let mut config = Config::local(nodes, 3306, topology);
        config.cluster.name = "hosts".into();
        config.nodes = db_hosts
            .iter()
            .map(|h| NodeConfig {
                host: net.host(h).addr.to_string(),
                ..NodeConfig::from_base_port(h, 3306)
            })
            .collect();
        let etcd_hosts = db_hosts[..nodes.min(3)].to_vec();
        config.store = Some(StoreSection {
            endpoints: etcd_hosts
                .iter()
                .map(|h| format!("http://{}:2379", net.host(h).addr))
                .collect(),
            ..StoreSection::default()
        });
        let proxy = config.proxy.as_mut().expect("local configs have a proxy");
        proxy.host = net.host(CLIENT).addr.to_string();
        (proxy.write_port, proxy.read_port, proxy.status_port) =
            (PROXY_WRITE_PORT, PROXY_READ_PORT, Some(PROXY_STATUS_PORT));
        tweak(&mut config);
        let text = config.to_toml();
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("test hosts' config: {e}"));
        let (text, dns, hosts_file) = if in_dns {
            let client = net.host(CLIENT).addr;
            let mut found = config.clone();
            let first = found.nodes[0].clone();
            found.nodes.clear();
            found.discovery = Some(DiscoverySection {
                srv: SRV_NAME.into(),
                nodes,
                nameserver: Some(format!("{client}:53")),
                galera_port: first.galera_port,
                ist_port: first.ist_port,
                sst_port: first.sst_port,
                api_port: first.api_port,
            });
            let text = found.to_toml();
            Config::parse(&text).unwrap_or_else(|e| panic!("test hosts' config: {e}"));
            let records: Vec<(String, u16)> = db_hosts
                .iter()
                .map(|h| (format!("{h}.{DOMAIN}"), first.sql_port))
                .collect();
            let server = net.run_in(CLIENT, move || {
                let socket = std::net::UdpSocket::bind((client, 53)).expect("bind the DNS server");
                let records: Vec<(&str, u16)> = records.iter().map(|(h, p)| (h.as_str(), *p)).collect();
                crate::dns::SrvServer::serve(socket, SRV_NAME, &records)
            });
            let hosts: String = db_hosts
                .iter()
                .map(|h| format!("{} {h}.{DOMAIN}\n", net.host(h).addr))
                .collect();
            let hosts_file = dir.path().join("hosts");
            std::fs::write(&hosts_file, format!("127.0.0.1 localhost\n{hosts}")).expect("write hosts file");
            (text, Some(server), Some(hosts_file))
        } else {
            (text, None, None)
        };
        std::fs::write(dir.path().join(CONFIG_FILE_NAME), &text).expect("write config");
        let secrets = vigil_mariadb::secrets::Secrets::generate();
        secrets
            .write(&dir.path().join(&config.cluster.secrets_dir))
            .expect("write secrets");
        for h in &db_hosts {
            let data = dir.path().join(h);
            std::fs::create_dir_all(&data).expect("host data dir");
            secrets
                .write(&data.join(&config.cluster.secrets_dir))
                .expect("copy secrets");
        }

        let mut cluster = HostCluster {
            vigil: vigil.into(),
            config,
            db_hosts,
            procs: Vec::new(),
            dns,
            hosts_file,
            dir,
            net,
            _turn: turn,
        };
        for h in etcd_hosts {
            cluster.start_service(&h, Service::Etcd);
        }
        cluster.wait_etcd();
        for h in cluster.db_hosts.clone() {
            cluster.start_service(&h, Service::Agent);
        }
        cluster.start_service(CLIENT, Service::Proxy);
        cluster
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A host's data directory (database hosts only).
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.path().join(host)
    }

    fn etcd_hosts(&self) -> Vec<String> {
        self.db_hosts.iter().take(3).cloned().collect()
    }

    /// Starts `service` on `host` (again); it must not be running.
    pub fn start_service(&mut self, host: &str, service: Service) {
        assert!(
            self.pid(host, service).is_none(),
            "{service:?} already runs on {host}"
        );
        let log_dir = match service {
            Service::Proxy => self.dir.path().to_path_buf(),
            _ => self.host_dir(host),
        };
        let log_path = log_dir.join(format!("{service:?}.log").to_lowercase());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let config_path = self.dir.path().join(CONFIG_FILE_NAME);
        let mut cmd = match service {
            Service::Etcd => {
                let me = self.net.host(host).addr;
                let initial = self
                    .etcd_hosts()
                    .iter()
                    .map(|h| format!("{h}=http://{}:2380", self.net.host(h).addr))
                    .collect::<Vec<_>>()
                    .join(",");
                let mut c = self.command(host, "etcd");
                c.args(["--name", host])
                    .arg("--data-dir")
                    .arg(self.host_dir(host).join("etcd"))
                    .args(["--listen-client-urls", &format!("http://{me}:2379")])
                    .args(["--advertise-client-urls", &format!("http://{me}:2379")])
                    .args(["--listen-peer-urls", &format!("http://{me}:2380")])
                    .args(["--initial-advertise-peer-urls", &format!("http://{me}:2380")])
                    .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "vigil-hosts"])
                    .args(crate::etcd::TIMING);
                c
            }
            Service::Agent => {
                let mut c = self.command(host, &self.vigil);
                // The agents' own log files: everything they decided, whatever the caller's level.
                c.env("VIGIL_LOG", "info")
                    .arg("agent")
                    .arg("--config")
                    .arg(&config_path)
                    .args(["--node", host])
                    .arg("--data-dir")
                    .arg(self.host_dir(host));
                c
            }
            Service::Proxy => {
                let mut c = self.command(host, &self.vigil);
                c.arg("proxy").arg("--config").arg(&config_path);
                c
            }
            Service::Mariadbd => panic!("mariadbd is started by its host's agent"),
        };
        let child: Child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {service:?} on {host}: {e}"));
        self.procs.push((host.into(), service, KillOnDrop(child)));
    }

    /// `program` to be run on `host`, seeing the cluster's hosts file if it has one.
    fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        match &self.hosts_file {
            None => self.net.command(host, program),
            Some(file) => {
                // A private mount namespace (unshare's default propagation): the bind mount is
                // seen by this process and its children only, and ends with them.
                let mut c = self.net.command(host, "unshare");
                c.args([
                    "--mount",
                    "--",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                ])
                .arg(file)
                .arg(program);
                c
            }
        }
    }

    /// The DNS server of [`HostCluster::start_found_in_dns`].
    pub fn dns(&self) -> Option<&crate::dns::SrvServer> {
        self.dns.as_ref()
    }

    /// The files of `host`'s database node (its socket, pid file, datadir).
    pub fn node_layout(&self, host: &str) -> Option<vigil_mariadb::NodeLayout> {
        let node = self.config.node(host)?;
        Some(vigil_mariadb::NodeLayout::new(
            self.host_dir(host).join(node.dir_name()),
        ))
    }

    /// The pid of `service` on `host` while it runs.
    pub fn pid(&self, host: &str, service: Service) -> Option<u32> {
        if service == Service::Mariadbd {
            return vigil_mariadb::process::running_pid(&self.node_layout(host)?);
        }
        self.procs
            .iter()
            .find(|(h, s, _)| h == host && *s == service)
            .map(|(_, _, c)| c.0.id())
    }

    /// kill -9 of `service` on `host`; returns whether it was running.
    pub fn kill(&mut self, host: &str, service: Service) -> bool {
        if service == Service::Mariadbd {
            return match self.pid(host, service) {
                Some(pid) => kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok(),
                None => false,
            };
        }
        let before = self.procs.len();
        // dropping the KillOnDrop kills and reaps it
        self.procs.retain(|(h, s, _)| !(h == host && *s == service));
        before != self.procs.len()
    }

    /// SIGSTOP (`pause`) or SIGCONT of `service` on `host`; returns whether it was running.
    pub fn pause(&self, host: &str, service: Service, pause: bool) -> bool {
        let signal = if pause { Signal::SIGSTOP } else { Signal::SIGCONT };
        self.pid(host, service)
            .is_some_and(|pid| kill(Pid::from_raw(pid as i32), signal).is_ok())
    }

    /// Waits until every running etcd member says it is healthy.
    pub fn wait_etcd(&self) {
        for h in self.etcd_hosts() {
            if self.pid(&h, Service::Etcd).is_none() {
                continue;
            }
            wait_for(&format!("etcd on {h} healthy"), Duration::from_secs(30), || {
                self.etcd_healthy(&h).then_some(())
            });
        }
    }

    /// Whether the etcd member on `host` says the store is healthy (it has a leader).
    pub fn etcd_healthy(&self, host: &str) -> bool {
        let url = format!("http://{}:2379/health", self.net.host(host).addr);
        self.http_get(&url)
            .is_some_and(|body| body.contains("\"health\":\"true\""))
    }

    /// `GET url` from the client host: the body, if it answers within a second.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let url = url.to_string();
        self.net.run_in(CLIENT, move || {
            ureq::get(&url)
                .timeout(Duration::from_secs(1))
                .call()
                .ok()?
                .into_string()
                .ok()
        })
    }

    /// The node the proxy routes writes to now, as its `/status` says.
    pub fn proxy_writer(&self) -> Option<String> {
        let url = format!("http://{}:{PROXY_STATUS_PORT}/status", self.net.host(CLIENT).addr);
        let body: serde_json::Value = serde_json::from_str(&self.http_get(&url)?).ok()?;
        body.get("writer")?.as_str().map(String::from)
    }

    /// Connection options for the application user on each database host's SQL port.
    pub fn node_opts(&self) -> Vec<(String, mysql_async::OptsBuilder)> {
        let password = self.app_password();
        self.db_hosts
            .iter()
            .map(|h| {
                let n = self.config.node(h).expect("node");
                (h.clone(), app_opts(&n.host, n.sql_port, &password))
            })
            .collect()
    }

    /// One node's `/status` as the client host sees it, if its agent answers.
    pub fn status(&self, host: &str) -> Option<NodeStatus> {
        let node = self.config.node(host)?;
        let url = format!("http://{}:{}/status", node.host, node.api_port);
        self.net.run_in(CLIENT, move || {
            ureq::get(&url)
                .timeout(Duration::from_secs(2))
                .call()
                .ok()?
                .into_json::<NodeStatus>()
                .ok()
        })
    }

    /// Waits until every node is healthy in a full cluster; returns the statuses.
    pub fn wait_healthy(&self, timeout: Duration) -> Vec<NodeStatus> {
        match self.healthy_within(timeout) {
            Ok(all) => all,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`HostCluster::wait_healthy`] without the panic: the statuses, or which nodes were not
    /// healthy at the end and why.
    pub fn healthy_within(&self, timeout: Duration) -> Result<Vec<NodeStatus>, crate::TimedOut> {
        let n = self.db_hosts.len() as u32;
        let deadline = Instant::now() + timeout;
        loop {
            let all: Vec<Option<NodeStatus>> = self.db_hosts.iter().map(|h| self.status(h)).collect();
            if all
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.healthy && s.cluster_size == n))
            {
                return Ok(all.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let why: Vec<String> = self
                    .db_hosts
                    .iter()
                    .zip(&all)
                    .filter_map(|(h, s)| match s {
                        None => Some(format!("{h}: its agent does not answer")),
                        Some(s) if !s.healthy => Some(format!("{h}: {} {} ({})", s.role, s.state, s.reason)),
                        Some(_) => None,
                    })
                    .collect();
                return Err(crate::TimedOut(format!(
                    "not every node healthy in a full cluster after {timeout:?}: {}",
                    why.join("; ")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node the agents name the writer (Galera) or primary (replication), if healthy.
    pub fn writer(&self) -> Option<String> {
        self.db_hosts
            .iter()
            .filter_map(|h| self.status(h))
            .find(|s| (s.role == "writer" || s.role == "primary") && s.healthy)
            .map(|s| s.name)
    }

    /// The application user's password.
    pub fn app_password(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("secrets/app.password"))
            .expect("app password")
            .trim()
            .to_string()
    }

    /// Runs `sql` on `addr:port` from the client host as the application user; the first
    /// column of every row, as text.
    pub fn query(&self, addr: &str, port: u16, sql: &str) -> Result<Vec<String>, String> {
        let (opts, sql) = (app_opts(addr, port, &self.app_password()), sql.to_string());
        self.net.run_in(CLIENT, move || {
            runtime().block_on(async {
                let mut conn = mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())?;
                let rows: Vec<mysql_async::Row> = conn.query(sql).await.map_err(|e| e.to_string())?;
                let _ = conn.disconnect().await;
                Ok(rows
                    .into_iter()
                    .map(|r| match r.as_ref(0) {
                        Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                        Some(v) => v.as_sql(true),
                        None => String::new(),
                    })
                    .collect())
            })
        })
    }

    /// Runs `vigil ARGS --dir <operator's copy>` on the client host: (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        crate::run_cli(self.net.command(CLIENT, &self.vigil), args, self.path())
    }

    /// Every log the hosts wrote, for a failing test's output.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = self
            .db_hosts
            .iter()
            .flat_map(|h| ["agent.log", "etcd.log"].map(|f| self.host_dir(h).join(f)))
            .collect();
        files.push(self.dir.path().join("proxy.log"));
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                out.push_str(&format!("--- {} (last {} lines) ---\n", f.display(), tail.len()));
                for l in tail.into_iter().rev() {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Keeps the hosts' files (logs, datadirs) after the cluster is torn down; returns where.
    pub fn keep_files(&mut self) -> PathBuf {
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep()
    }
}

impl Drop for HostCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.procs.clear();
        self.net.kill_everything_inside();
        if std::thread::panicking() && std::env::var_os("VIGIL_KEEP_TEST_DIR").is_some() {
            let kept = self.keep_files();
            eprintln!("kept {} (VIGIL_KEEP_TEST_DIR)", kept.display());
        }
    }
}

/// A single-threaded runtime for a client thread.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The connection in `conn`, opened (within 2 s) if there is none; `None`, after a 50 ms pause,
/// if it cannot be opened.
pub(crate) async fn connected<'a>(
    conn: &'a mut Option<mysql_async::Conn>,
    opts: &mysql_async::OptsBuilder,
) -> Option<&'a mut mysql_async::Conn> {
    if conn.is_none() {
        *conn = tokio::time::timeout(Duration::from_secs(2), mysql_async::Conn::new(opts.clone()))
            .await
            .ok()
            .and_then(Result::ok);
        if conn.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    conn.as_mut()
}

/// What the server said to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The server answered with an error: the operation did not happen.
    Failed,
    /// The connection broke or timed out (5 s), or the server said the commit itself failed:
    /// it may or may not have happened.
    Unknown,
}

/// Server errors that do not say the statement did not happen: `ER_ERROR_DURING_COMMIT`
/// (1180; Galera answers it when the node lost its Primary component while the transaction
/// was replicated, which the other members may have committed: `vigil chaos` found such
/// inserts on every node), `ER_QUERY_INTERRUPTED` (1317) and `ER_CONNECTION_KILLED` (1927)
/// (a session killed while its commit waited, for a semi-sync acknowledgement say).
pub const OUTCOME_UNKNOWN_ERRORS: [u16; 3] = [1180, 1317, 1927];

impl Outcome {
    pub fn of<T>(r: &Result<Result<T, mysql_async::Error>, tokio::time::error::Elapsed>) -> Outcome {
        match r {
            Ok(Ok(_)) => Outcome::Ok,
            Ok(Err(mysql_async::Error::Server(e))) if OUTCOME_UNKNOWN_ERRORS.contains(&e.code) => {
                Outcome::Unknown
            }
            Ok(Err(mysql_async::Error::Server(_))) => Outcome::Failed,
            _ => Outcome::Unknown,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One insert a client sent, when its answer came and what it was.
#[derive(Debug, Clone)]
pub struct Insert {
    pub id: u64,
    pub sent: Instant,
    pub completed: Instant,
    pub outcome: Outcome,
}

/// A client on the client host inserting unique ids into `table` through the proxy's write
/// port, one at a time, reconnecting after any failure, and recording every outcome. In the
/// replication topology each row is stamped with the primary's epoch (`vigil.fence`), into
/// the table's `epoch` column.
pub struct Inserts {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Insert>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Inserts {
    /// Inserts ids `first`, `first + step`, ...
    pub fn start(cluster: &HostCluster, table: &str, first: u64, step: u64) -> Inserts {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let proxy = cluster.net.host(CLIENT).addr.to_string();
        let opts = app_opts(&proxy, PROXY_WRITE_PORT, &cluster.app_password());
        let sql = match cluster.config.cluster.topology {
            Topology::Replication => format!(
                "INSERT INTO {table} (id, epoch) SELECT ?, epoch FROM {} WHERE id = 1",
                vigil_mariadb::repl::FENCE_TABLE
            ),
            Topology::Galera => format!("INSERT INTO {table} (id) VALUES (?)"),
        };
        let (stop2, log2) = (stop.clone(), log.clone());
        let thread = cluster.net.spawn_in(CLIENT, move || {
            runtime().block_on(async move {
                let mut id = first;
                let mut conn = None;
                while !stop2.load(Ordering::Relaxed) {
                    let Some(c) = connected(&mut conn, &opts).await else {
                        continue;
                    };
                    let sent = Instant::now();
                    let r =
                        tokio::time::timeout(Duration::from_secs(5), c.exec_drop(sql.as_str(), (id,))).await;
                    let mut outcome = Outcome::of(&r);
                    if outcome == Outcome::Ok && c.affected_rows() != 1 {
                        // no epoch row to stamp with: nothing was inserted
                        outcome = Outcome::Failed;
                    }
                    if outcome != Outcome::Ok {
                        conn = None;
                    }
                    log2.lock().expect("inserts").push(Insert {
                        id,
                        sent,
                        completed: Instant::now(),
                        outcome,
                    });
                    id += step;
                }
            })
        });
        Inserts {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// How many inserts the server acknowledged so far.
    pub fn acked(&self) -> usize {
        self.log
            .lock()
            .expect("inserts")
            .iter()
            .filter(|i| i.outcome == Outcome::Ok)
            .count()
    }

    /// When each insert acknowledged between `from` and `to` was acknowledged.
    pub fn acked_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        self.log
            .lock()
            .expect("inserts")
            .iter()
            .filter(|i| i.outcome == Outcome::Ok && i.completed >= from && i.completed <= to)
            .map(|i| i.completed)
            .collect()
    }

    /// Waits until `more` inserts beyond those acknowledged so far are; panics with `what`
    /// after `timeout`.
    pub fn wait_for_more(&self, more: usize, timeout: Duration, what: &str) {
        let target = self.acked() + more;
        wait_for(what, timeout, || (self.acked() >= target).then_some(()));
    }

    /// Stops inserting; every insert sent, with its outcome.
    pub fn stop(mut self) -> Vec<Insert> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("insert thread");
        }
        std::mem::take(&mut *self.log.lock().expect("inserts"))
    }
}

impl Drop for Inserts {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> Result<Result<(), mysql_async::Error>, tokio::time::error::Elapsed> {
        Ok(Err(mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "test".into(),
            state: "HY000".into(),
        })))
    }

    /// `vigil chaos` found Galera inserts answered with 1180 on every node: an error that does
    /// not say the commit did not happen must not count as a refusal.
    #[test]
    fn a_failed_commit_is_of_unknown_outcome_and_a_refusal_is_a_failure() {
        assert_eq!(
            Outcome::of(&Ok::<_, tokio::time::error::Elapsed>(Ok(()))),
            Outcome::Ok
        );
        for code in [1180, 1317, 1927] {
            assert_eq!(Outcome::of(&server_error(code)), Outcome::Unknown, "error {code}");
        }
        // ER_OPTION_PREVENTS_STATEMENT (read_only) and ER_LOCK_DEADLOCK: not done.
        for code in [1290, 1213] {
            assert_eq!(Outcome::of(&server_error(code)), Outcome::Failed, "error {code}");
        }
    }
}
