//! Test clusters on this machine, for integration tests and benchmarks: a real `vigil up`
//! process with real `mariadbd` + galera-4 + mariabackup nodes on loopback ports.
//!
//! A [`LocalCluster`] owns its temporary directory and its processes: dropping it (also when a
//! test panics) stops `vigil up`, then kills by pid whatever `mariadbd` it started that is still
//! there, and removes the directory. Only one cluster runs at a time in a test process, so the
//! tests of one binary do not fight over two CPU cores.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vigil_agent::NodeStatus;
use vigil_core::config::{Config, CONFIG_FILE_NAME};

pub mod chaos;
pub mod dns;
pub mod etcd;
pub mod hosts;
pub mod netns;

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits until `f` returns `Some`, polling every 100 ms, or panics after `timeout` saying what
/// was awaited.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub use vigil_agent::local::free_base_port;

/// A loopback port nobody listens on right now (the kernel's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A process this test or bench started: killed by pid and reaped when dropped, also when a
/// test panics.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `vigil up` process and its directory.
pub struct LocalCluster {
    pub vigil: PathBuf,
    pub dir: tempfile::TempDir,
    pub config: Config,
    child: Option<Child>,
    extra_args: Vec<String>,
    _turn: MutexGuard<'static, ()>,
}

impl LocalCluster {
    /// Starts `vigil up --nodes N` in a new temporary directory (not waiting for it).
    pub fn start(vigil: &Path, nodes: usize, extra_args: &[&str]) -> LocalCluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("vigil-test-")
            .tempdir()
            .expect("temp dir");
        let base = free_base_port(nodes);
        let mut extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        extra.extend([
            "--nodes".into(),
            nodes.to_string(),
            "--base-port".into(),
            base.to_string(),
        ]);
        let mut cluster = LocalCluster {
            vigil: vigil.into(),
            dir,
            config: Config::default(),
            child: None,
            extra_args: extra,
            _turn: turn,
        };
        cluster.spawn();
        cluster.config = wait_for(
            "vigil up to write its configuration",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(cluster.dir.path().join(CONFIG_FILE_NAME)).ok()?;
                Config::parse(&text).ok()
            },
        );
        cluster
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("vigil-up.log"))
            .expect("log file");
        let child = Command::new(&self.vigil)
            .arg("up")
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra_args)
            // Tests read the agents' info lines.
            .env("VIGIL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start vigil up");
        self.child = Some(child);
    }

    /// Starts `vigil up` again on the same directory (after [`LocalCluster::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the cluster before restarting it");
        self.extra_args.clear();
        self.spawn();
    }

    /// The pid of the `vigil up` process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.path().join(self.config.node(name).expect("node").dir_name())
    }

    pub fn names(&self) -> Vec<String> {
        self.config.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// What `vigil up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("vigil-up.log")).unwrap_or_default()
    }

    /// One node's `/status`, if its agent answers.
    pub fn status(&self, name: &str) -> Option<NodeStatus> {
        let node = self.config.node(name).expect("node");
        get(node.api_port, "/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str(&body).ok())
    }

    /// `GET path` on a node's API: status code and body.
    pub fn api(&self, name: &str, path: &str) -> Result<(u16, String), String> {
        get(self.config.node(name).expect("node").api_port, path)
    }

    pub fn statuses(&self) -> Vec<Option<NodeStatus>> {
        self.names().iter().map(|n| self.status(n)).collect()
    }

    /// Waits until every node is healthy in one Primary component of full size.
    pub fn wait_synced(&mut self, timeout: Duration) -> Vec<NodeStatus> {
        let n = self.config.galera_members() as u32;
        let deadline = Instant::now() + timeout;
        loop {
            let all: Option<Vec<NodeStatus>> = self.statuses().into_iter().collect();
            if let Some(all) = all.filter(|a| a.iter().all(|s| s.healthy && s.cluster_size == n)) {
                return all;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "vigil up exited ({status}) before the cluster was synced:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster not synced after {timeout:?}: {:?}\n{}",
                    self.statuses(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to `vigil up` (what Ctrl-C does) and wait for it to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("cluster is running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_for("vigil up to exit after SIGTERM", Duration::from_secs(300), || {
            child.try_wait().expect("wait")
        })
    }

    /// The pids in the nodes' pid files whose process is still a `mariadbd`.
    pub fn live_mariadbd_pids(&self) -> Vec<u32> {
        self.names()
            .iter()
            .filter_map(|n| {
                vigil_mariadb::process::running_pid(&vigil_mariadb::NodeLayout::new(self.node_dir(n)))
            })
            .collect()
    }

    /// A connection as the application user to one node's SQL port.
    pub async fn connect(&self, name: &str) -> mysql_async::Conn {
        mysql_async::Conn::new(self.app_opts(name))
            .await
            .expect("connect as vigil_app")
    }

    /// Connection options for the application user on one node's SQL port.
    pub fn app_opts(&self, name: &str) -> mysql_async::OptsBuilder {
        let node = self.config.node(name).expect("node");
        let password =
            std::fs::read_to_string(self.path().join("secrets/app.password")).expect("app password");
        app_opts(&node.host, node.sql_port, password.trim())
    }

    /// Runs one statement on a node and returns the first column of every row as text.
    pub async fn query(&self, name: &str, sql: &str) -> Vec<String> {
        let mut conn = self.connect(name).await;
        // Galera: causal reads, seeing everything committed anywhere in the cluster before this
        // query. Replication nodes have no provider, and the callers wait for the replica.
        if self.config.cluster.topology == vigil_core::config::Topology::Galera {
            conn.query_drop("SET SESSION wsrep_sync_wait = 1")
                .await
                .expect("wsrep_sync_wait");
        }
        let rows: Vec<mysql_async::Row> = conn
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on {name}: {e}"));
        let out = rows
            .into_iter()
            .map(|row| match row.as_ref(0) {
                Some(mysql_async::Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(v) => v.as_sql(true),
                None => String::new(),
            })
            .collect();
        let _ = conn.disconnect().await;
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(120);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.live_mariadbd_pids() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            eprintln!("--- vigil up log ({}) ---\n{}", self.path().display(), self.log());
            // the servers' own account of a failure, for a test that failed on a CI machine
            let mut logs: Vec<PathBuf> = self
                .names()
                .iter()
                .map(|n| self.node_dir(n).join("error.log"))
                .collect();
            logs.push(self.path().join("garbd/garbd.log"));
            for log in logs {
                if let Ok(text) = std::fs::read_to_string(&log) {
                    let tail: Vec<&str> = text.lines().rev().take(25).collect();
                    eprintln!("--- {} (last lines) ---", log.display());
                    for line in tail.into_iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
            if std::env::var_os("VIGIL_KEEP_TEST_DIR").is_some() {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir")).keep();
                eprintln!("kept {} (VIGIL_KEEP_TEST_DIR)", kept.display());
            }
        }
    }
}

fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(2)).build();
    match agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(r) => Ok((r.status(), r.into_string().map_err(|e| e.to_string())?)),
        Err(ureq::Error::Status(code, r)) => Ok((code, r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs a test client's async loop on a thread of its own (with its own single-threaded
/// runtime), so that it goes on while the test blocks.
fn spawn_client<T: Send + 'static>(
    client: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(client)
    })
}

/// A wait that ended without what it waited for; says what that was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut(pub String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// One acknowledged insert: its id, when the acknowledgement arrived, and which node (index
/// in the configuration) acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    pub at: Instant,
    pub node: usize,
}

/// A client inserting unique ids into `app.acked` through whichever node is the writer
/// (Galera) or primary (replication), reconnecting after failures, and remembering every
/// insert the server acknowledged, when, and by which node.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acks: std::sync::Arc<Mutex<Vec<Ack>>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    pub fn start(cluster: &LocalCluster) -> Writer {
        Writer::start_from(cluster, 1)
    }

    /// Inserts ids `first_id`, `first_id + 1`, ...
    pub fn start_from(cluster: &LocalCluster, first_id: u64) -> Writer {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let nodes: Vec<(u16, u16)> = cluster
            .config
            .nodes
            .iter()
            .map(|n| (n.api_port, n.sql_port))
            .collect();
        let password =
            std::fs::read_to_string(cluster.path().join("secrets/app.password")).expect("app password");
        let (stop2, acks2) = (stop.clone(), acks.clone());
        let thread = spawn_client(async move {
            let mut next_id = first_id;
            let mut conn: Option<(mysql_async::Conn, usize)> = None;
            while !stop2.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = connect_to_writer(&nodes, password.trim()).await;
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let (c, node) = conn.as_mut().expect("connected");
                let node = *node;
                let id = next_id;
                next_id += 1;
                let insert = c.exec_drop("INSERT INTO acked (id) VALUES (?)", (id,));
                match tokio::time::timeout(Duration::from_secs(5), insert).await {
                    Ok(Ok(())) => acks2.lock().expect("acks").push(Ack {
                        id,
                        at: Instant::now(),
                        node,
                    }),
                    _ => conn = None,
                }
            }
            next_id
        });
        Writer {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    pub fn acked_count(&self) -> usize {
        self.acks.lock().expect("acks").len()
    }

    /// The acknowledgements so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().expect("acks").clone()
    }

    /// Waits until `f` finds what it looks for in the acknowledgements so far, or fails after
    /// `timeout` saying what was awaited.
    pub fn wait_acks<T>(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&[Ack]) -> Option<T>,
    ) -> Result<T, TimedOut> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(&self.acks.lock().expect("acks")) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(TimedOut(format!(
                    "timed out after {timeout:?} waiting for {what}"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `more` inserts beyond the current count were acknowledged.
    pub fn wait_for_more(&self, more: usize, timeout: Duration) {
        let target = self.acked_count() + more;
        wait_for(&format!("{target} acknowledged inserts"), timeout, || {
            (self.acked_count() >= target).then_some(())
        });
    }

    /// Stops writing and returns the acknowledged ids.
    pub fn stop(self) -> Vec<u64> {
        self.stop_with_acks().0.iter().map(|a| a.id).collect()
    }

    /// Stops writing; every acknowledgement, and the next id it would have used.
    pub fn stop_with_acks(mut self) -> (Vec<Ack>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let next = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("writer thread");
        (std::mem::take(&mut *self.acks.lock().expect("acks")), next)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A connection to the node whose agent reports it the healthy writer or primary, with the
/// node's index.
async fn connect_to_writer(nodes: &[(u16, u16)], password: &str) -> Option<(mysql_async::Conn, usize)> {
    let index = nodes.iter().position(|(api, _)| {
        get(*api, "/status")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<NodeStatus>(&body).ok())
            .is_some_and(|s| (s.role == "writer" || s.role == "primary") && s.healthy)
    })?;
    let opts = app_opts("127.0.0.1", nodes[index].1, password);
    let mut conn = tokio::time::timeout(Duration::from_secs(3), mysql_async::Conn::new(opts))
        .await
        .ok()?
        .ok()?;
    conn.query_drop("CREATE TABLE IF NOT EXISTS acked (id BIGINT PRIMARY KEY)")
        .await
        .ok()?;
    Some((conn, index))
}

impl LocalCluster {
    /// The ids in `app.acked` on one node, read causally (everything committed before is seen).
    pub async fn acked_ids(&self, name: &str) -> std::collections::BTreeSet<u64> {
        self.query(name, "SELECT id FROM acked")
            .await
            .iter()
            .map(|s| s.parse().expect("id"))
            .collect()
    }

    /// SIGKILL to one node's `mariadbd`, as a crash would; returns the pid killed.
    pub fn kill_node(&self, name: &str) -> u32 {
        let pid = self
            .status(name)
            .and_then(|s| s.pid)
            .unwrap_or_else(|| panic!("{name} has no running mariadbd"));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9");
        pid
    }
}

impl LocalCluster {
    /// Runs `vigil ARGS --dir <this cluster>` and returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        run_cli(Command::new(&self.vigil), args, self.path())
    }

    /// Waits until `f` holds for the named node's status.
    pub fn wait_status(
        &self,
        node: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&NodeStatus) -> bool,
    ) -> NodeStatus {
        wait_for(&format!("{node}: {what}"), timeout, || {
            self.status(node).filter(|s| f(s))
        })
    }
}

/// Runs `vigil ARGS --dir DIR` (with `vigil` the command to start) and returns (success,
/// stdout, stderr).
fn run_cli(mut vigil: Command, args: &[&str], dir: &Path) -> (bool, String, String) {
    let out = vigil
        .args(args)
        .arg("--dir")
        .arg(dir)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Connection options for the application user, over TCP.
pub fn app_opts(host: &str, sql_port: u16, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(sql_port)
        .user(Some("vigil_app"))
        .pass(Some(password.to_string()))
        .db_name(Some("app"))
        .prefer_socket(false)
}

/// Polls `@@global.read_only` on every node, two passes per round, and counts the rounds in
/// which two nodes were writable in both passes: their writable periods then overlapped.
/// A node that does not answer within 200 ms (stopped, paused, dead) counts as not writable.
pub struct WritableWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<WatchReport>>,
}

/// What a [`WritableWatch`] saw.
#[derive(Debug, Default, Clone)]
pub struct WatchReport {
    pub rounds: u64,
    /// Each round where several nodes were writable at once: the writable nodes' names, and
    /// when the round ended.
    pub violations: Vec<(Vec<String>, std::time::SystemTime)>,
    /// Every node that was seen writable at some point.
    pub writers_seen: std::collections::BTreeSet<String>,
}

impl WritableWatch {
    pub fn start(cluster: &LocalCluster) -> WritableWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let nodes: Vec<(String, mysql_async::OptsBuilder)> = cluster
            .names()
            .into_iter()
            .map(|n| {
                let opts = cluster.app_opts(&n);
                (n, opts)
            })
            .collect();
        let thread = spawn_client(watch_writable(nodes, stop.clone(), Duration::from_millis(5)));
        WritableWatch {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> WatchReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().expect("running").join().expect("watch thread")
    }
}

/// The loop behind [`WritableWatch`], for any set of nodes and wherever it runs: rounds of two
/// `read_only` passes over `nodes`, `pause` apart, until `stop`.
pub(crate) async fn watch_writable(
    nodes: Vec<(String, mysql_async::OptsBuilder)>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pause: Duration,
) -> WatchReport {
    let mut conns: Vec<Option<mysql_async::Conn>> = nodes.iter().map(|_| None).collect();
    let mut report = WatchReport::default();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut both = vec![true; nodes.len()];
        for _pass in 0..2 {
            for (i, (_, opts)) in nodes.iter().enumerate() {
                let writable = read_only(&mut conns[i], opts).await == Some(false);
                both[i] &= writable;
            }
        }
        let writable: Vec<String> = nodes
            .iter()
            .zip(&both)
            .filter(|(_, w)| **w)
            .map(|((n, _), _)| n.clone())
            .collect();
        report.writers_seen.extend(writable.iter().cloned());
        if writable.len() > 1 {
            report.violations.push((writable, std::time::SystemTime::now()));
        }
        report.rounds += 1;
        tokio::time::sleep(pause).await;
    }
    report
}

impl Drop for WritableWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `@@global.read_only` of one node, on a kept connection (opened within 200 ms); `None` when
/// the node does not answer within 200 ms (stopped, paused, dead).
pub(crate) async fn read_only(
    conn: &mut Option<mysql_async::Conn>,
    opts: &mysql_async::OptsBuilder,
) -> Option<bool> {
    let limit = Duration::from_millis(200);
    if conn.is_none() {
        *conn = tokio::time::timeout(limit, mysql_async::Conn::new(opts.clone()))
            .await
            .ok()
            .and_then(Result::ok);
    }
    let c = conn.as_mut()?;
    match tokio::time::timeout(limit, c.query_first::<i64, _>("SELECT @@global.read_only")).await {
        Ok(Ok(Some(v))) => Some(v != 0),
        _ => {
            *conn = None;
            None
        }
    }
}

impl LocalCluster {
    /// The node that is the healthy, writable primary (replication topology), if any.
    pub fn primary(&self) -> Option<String> {
        self.names()
            .into_iter()
            .find(|n| self.status(n).is_some_and(|s| s.role == "primary" && s.healthy))
    }

    /// Sends a signal to one node's `mariadbd` (SIGSTOP, SIGCONT...); returns its pid.
    pub fn signal_node(&self, name: &str, signal: Signal) -> u32 {
        let pid = self
            .status(name)
            .and_then(|s| s.pid)
            .unwrap_or_else(|| panic!("{name} has no running mariadbd"));
        kill(Pid::from_raw(pid as i32), signal).expect("signal");
        pid
    }
}
