//! One agent: supervises one `mariadbd` and runs the observe → decide → act loop.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};
use vigil_core::config::{Config, NodeConfig};
use vigil_core::galera::{
    self, DiskState, MemberReport, Phase, Position, PrimaryView, SavedState, StartDecision, StartView,
    Sustained, Transfer, WsrepStatus, RESTART_GRACE, RESTORE_ATTEMPTS, RESTORE_GRACE, SILENT_GRACE,
};
use vigil_mariadb::cnf::ServerSpec;
use vigil_mariadb::probe::Prober;
use vigil_mariadb::process::{self, Binaries, Server, StartMode};
use vigil_mariadb::secrets::Secrets;
use vigil_mariadb::{admin, grastate, recover, NodeError, NodeLayout};
use vigil_store::{CasOutcome, CoordinationStore, LeaseId, StoreError};

use crate::api::SharedStatus;
use crate::{keys, NodeStatus};

/// How long a probe of the node's own server may take before the server counts as hung.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the agent checks whether its server has exited, between turns.
const EXIT_CHECK: Duration = Duration::from_millis(50);

/// How long a clean shutdown of `mariadbd` may take before vigil gives up waiting.
pub(crate) const STOP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Clone(#[from] crate::backup::FetchError),
    #[error("node {0:?} is not in the configuration")]
    UnknownNode(String),
    #[error("cannot serve the API of node {node} on {host}:{port}: {source}")]
    Api {
        node: String,
        host: String,
        port: u16,
        source: std::io::Error,
    },
}

/// A running agent, as seen by whoever started it.
pub struct AgentHandle {
    name: String,
    status: SharedStatus,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), AgentError>>,
    api: JoinHandle<()>,
}

impl AgentHandle {
    pub(crate) fn new(
        name: String,
        status: SharedStatus,
        stop: watch::Sender<bool>,
        task: JoinHandle<Result<(), AgentError>>,
        api: JoinHandle<()>,
    ) -> AgentHandle {
        AgentHandle {
            name,
            status,
            stop,
            task,
            api,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> NodeStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// True once the agent's loop has ended on its own (or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the node cleanly and waits until `mariadbd` has exited.
    pub async fn stop(self) -> Result<(), AgentError> {
        let _ = self.stop.send(true);
        let result = match self.task.await {
            Ok(result) => result,
            Err(e) => panic!("agent {} panicked: {e}", self.name),
        };
        self.api.abort();
        result
    }
}

pub struct Agent {
    cluster: String,
    order: Vec<String>,
    /// Every node's name and client address, in configuration order.
    addresses: Vec<(String, String)>,
    node: NodeConfig,
    probe_interval: Duration,
    start_timeout: Duration,
    layout: NodeLayout,
    secrets: Secrets,
    bins: Binaries,
    store: Arc<dyn CoordinationStore>,
    lease: AgentLease,
    status: SharedStatus,
    server: Option<Server>,
    prober: Prober,
    phase: Phase,
    phase_since: Instant,
    /// What the node waits for, or why it is unhealthy.
    reason: String,
    locks: Vec<String>,
    /// The disk as last observed while the node was stopped (recovering a position runs
    /// `mariadbd --wsrep-recover`, so it is done once per stop, not every turn).
    disk: Option<DiskState>,
    /// Consecutive failures to start or stay up, for the restart backoff.
    failures: u32,
    /// Held by the operator, and the recorded cluster position: read from the store each turn.
    held: bool,
    recorded: Option<Position>,
    /// This turn's probe (or why it failed), kept for [`Agent::show_without_store`].
    last_probe: (Option<WsrepStatus>, Option<String>),
    retry_at: Option<Instant>,
    /// The running server's member id in the group, as last probed.
    gcomm_uuid: Option<String>,
    /// The member id of this node's last server once it is known dead (published, so that
    /// the survivors evict it at once); cleared when a new server starts.
    departed: Option<String>,
    /// Members this agent evicted from its node's view.
    evicted: Vec<String>,
    /// The view the node was in when its eviction list was first seen non-empty.
    listed_in: Option<u64>,
    /// An arbitrator is a member: no evictions (it could not forget them).
    arbitrator: bool,
    /// This node is fit to keep the writer role, by every member's report
    /// ([`galera::writer_fitness`]), as of the last turn that read the store.
    fit: bool,
    /// The running server's group communication found stopped ([`galera::lost_backend`]).
    disconnected: Sustained,
    /// The running server answering no probe (galera::SILENT_GRACE).
    silent: Sustained,
    /// Restores in a row its server ignored (galera::RESTORE_ATTEMPTS).
    failed_restores: u32,
    /// The joining server without a Primary component to join ([`galera::orphaned_join`]).
    orphaned: Sustained,
    /// The joining server's JOIN refused by the group ([`galera::refused_join`]).
    refused: Sustained,
    /// The running or joining server outside the Primary component another member serves
    /// ([`galera::stranded`]).
    stranded: Sustained,
    /// The member Galera selected to send the joining server its state
    /// ([`galera::donor_selected`]) with its server instance once its report shows it, and that
    /// donor gone ([`galera::abandoned_transfer`]).
    donor: Option<galera::DonorInstance>,
    abandoned: Sustained,
    /// A refusal of the JOIN read from the error log while the server did not answer: its
    /// position is taken at the next probe.
    refusal_unplaced: bool,
    /// The threads whose write-set failed, as the server's error log says
    /// ([`galera::applier_error`]); one of them exiting ([`galera::applier_exited`]) means a
    /// failed applier: restart the server.
    applier_errors: Vec<u64>,
    applier_failed: bool,
    /// The writer is desynced with nobody joining ([`galera::DESYNC_GRACE`]).
    writer_desynced: Sustained,
    /// Whether Galera restored the server as a donor ([`galera::DonorRestore`]); stuck so
    /// ([`galera::stuck_donor`]).
    donor_restore: galera::DonorRestore,
    stuck_donor: Sustained,
    /// The Galera member ids of the other servers of this server's last Primary component
    /// ([`galera::stranded`]).
    primary_peers: Vec<String>,
    /// The server's position when its error log, since it started, was found saying the group
    /// refused its JOIN ([`galera::join_refused`]), and how much of the log has been read.
    join_refused: Option<i64>,
    error_log_read: u64,
    /// The last Primary component the running server was seen in (published with the reports).
    last_primary: Option<PrimaryView>,
    /// The running server outside any Primary component, this node elected to make its
    /// component Primary ([`galera::restore_primary`]).
    unprimary: Sustained,
    /// Set while this node is making its running component Primary: the fence it replaced,
    /// put back if the server shows it is still outside a Primary component
    /// ([`Agent::make_primary`], [`Agent::undo_restore`]).
    restoring: Option<Option<Vec<u8>>>,
    /// The writer key as last read: while the store cannot be read, a writer that is still
    /// fit keeps the role ([`Agent::show_without_store`]).
    last_writer: Option<String>,
}

/// What a start decision reads from the store besides the members' reports
/// ([`Agent::start_inputs`]).
struct StartInputs {
    writer: Option<String>,
    forced: Option<String>,
    fence: Option<Position>,
    my_address: String,
}

/// Moves a node's datadir aside (never deletes it) to `data.kept-<unix time>` and leaves an
/// empty datadir, so that a full copy cannot overwrite transactions the cluster may lack.
/// Returns where it went.
pub(crate) fn keep_datadir_aside(layout: &NodeLayout) -> Result<PathBuf, AgentError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = layout.dir.join(format!("data.kept-{stamp}"));
    let datadir = layout.datadir();
    std::fs::rename(&datadir, &kept).map_err(|source| NodeError::Io {
        path: datadir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&datadir).map_err(|source| NodeError::Io {
        path: datadir,
        source,
    })?;
    Ok(kept)
}

/// A datadir initialised for a brand-new cluster whose bootstrap stopped before its users
/// existed (its marker is still there) holds none of the cluster's data: nobody could write to
/// it or copy it. It is moved aside (never deleted), so that the node starts a new cluster
/// again instead of waiting for ever for a position it cannot have. Returns where it went.
pub(crate) fn set_aside_unprovisioned(layout: &NodeLayout) -> Result<Option<PathBuf>, AgentError> {
    let marker = layout.unprovisioned_marker();
    if !marker.exists() {
        return Ok(None);
    }
    let kept = if layout.datadir_is_empty()? {
        None
    } else {
        Some(keep_datadir_aside(layout)?)
    };
    std::fs::remove_file(&marker).map_err(NodeError::io(&marker))?;
    Ok(kept)
}

/// How long a `mariadbd` left running by an earlier agent has to stop cleanly before SIGKILL.
const ORPHAN_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops a `mariadbd` of `name` that an earlier agent left running ([`process::stop_orphan`]),
/// and says so.
pub(crate) async fn stop_left_running(name: &str, layout: &NodeLayout) {
    if let Some(pid) = process::stop_orphan(layout, ORPHAN_STOP_TIMEOUT).await {
        warn!("stopped mariadbd (pid {pid}) left running by an earlier agent of {name}");
    }
}

/// What an agent does with a `mariadbd` of this node that an earlier agent left running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftRunning {
    /// It does not start (`vigil up`: another run may own the node).
    Refuse,
    /// It stops that server itself, once its API answers (`vigil agent` on a host, whose API
    /// port proved no other agent of the node runs: the earlier agent was killed).
    Stop,
}

/// What every database node's agent checks and writes before its loop starts.
pub(crate) struct NodeSetup {
    pub node: NodeConfig,
    pub layout: NodeLayout,
    pub secrets: Secrets,
    pub bins: Binaries,
}

impl NodeSetup {
    /// Checks what can be checked before anything starts (the node is configured, secrets and
    /// programs are there, no `mariadbd` of an earlier run owns its pid file, unless
    /// `left_running` allows one that the agent stops itself) and writes the node's `my.cnf`
    /// (0600).
    pub(crate) fn prepare(
        config: &Config,
        base_dir: &Path,
        name: &str,
        left_running: LeftRunning,
    ) -> Result<NodeSetup, AgentError> {
        let node = config
            .node(name)
            .ok_or_else(|| AgentError::UnknownNode(name.into()))?
            .clone();
        let layout = NodeLayout::new(node_dir(base_dir, &node));
        let secrets = Secrets::load(&base_dir.join(&config.cluster.secrets_dir))?;
        let bins = Binaries::discover(&config.mariadb)?;
        if left_running == LeftRunning::Refuse {
            process::check_not_running(name, &layout)?;
        }
        std::fs::create_dir_all(&layout.dir).map_err(|source| NodeError::Io {
            path: layout.dir.clone(),
            source,
        })?;
        let spec = ServerSpec::new(config, &node, layout.clone(), &secrets);
        vigil_mariadb::secrets::write_private_file(&layout.cnf(), &spec.render())?;
        Ok(NodeSetup {
            node,
            layout,
            secrets,
            bins,
        })
    }
}

/// Binds an agent's HTTP API on the node's address.
pub(crate) async fn bind_api(
    name: &str,
    host: &str,
    port: u16,
) -> Result<tokio::net::TcpListener, AgentError> {
    tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|source| AgentError::Api {
            node: name.into(),
            host: host.into(),
            port,
            source,
        })
}

/// The agent's own lease: its member report (and, for Galera, its locks) are written under
/// it, so they vanish when the agent dies. A background task ([`AgentLease::grant`]) renews
/// it every third of its TTL; when the store answers that it has lapsed (the store was out of
/// reach for longer than the TTL, or the agent was paused), the task takes a new one, so that
/// the agent's report comes back once the store is reachable again. A write that finds the
/// lease gone says so ([`AgentLease::lost`]) and the task replaces it at once, instead of every
/// turn failing on it until the next renewal.
#[derive(Clone)]
pub(crate) struct AgentLease(watch::Receiver<LeaseId>, Arc<tokio::sync::Notify>);

impl AgentLease {
    /// Takes the first lease. The returned future renews it (and replaces it when it lapsed)
    /// for ever; whoever spawns it aborts it when the agent stops.
    pub(crate) async fn grant(
        store: Arc<dyn CoordinationStore>,
        ttl: Duration,
    ) -> Result<(Self, impl std::future::Future<Output = ()>), StoreError> {
        let (tx, rx) = watch::channel(store.grant_lease(ttl).await?);
        let lost = Arc::new(tokio::sync::Notify::new());
        let told = lost.clone();
        let renew = async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 3) => {}
                    _ = told.notified() => {}
                }
                let lease = *tx.borrow();
                match store.keep_alive(lease).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost(_)) => match store.grant_lease(ttl).await {
                        Ok(new) => {
                            warn!("the agent's lease had lapsed; took a new one");
                            tx.send_replace(new);
                        }
                        Err(e) => warn!("the agent's lease lapsed and no new one can be taken: {e}"),
                    },
                    Err(e) => warn!("cannot renew the agent's lease: {e}"),
                }
            }
        };
        Ok((AgentLease(rx, lost), renew))
    }

    /// The store answered that the lease is gone: replace it now. Returns `error` for `?`.
    pub(crate) fn lost(&self, error: StoreError) -> StoreError {
        if matches!(error, StoreError::LeaseLost(l) if l == self.id()) {
            self.1.notify_one();
        }
        error
    }

    /// The lease now.
    pub(crate) fn id(&self) -> LeaseId {
        *self.0.borrow()
    }

    /// Whether the lease was replaced since the last call: whatever was written under the old
    /// one is gone from the store.
    pub(crate) fn replaced(&mut self) -> bool {
        let changed = self.0.has_changed().unwrap_or(false);
        self.0.mark_unchanged();
        changed
    }
}

/// A node's directory: `dir` from its configuration, relative to the configuration's directory.
pub fn node_dir(base: &Path, node: &NodeConfig) -> PathBuf {
    base.join(node.dir_name())
}

impl Agent {
    /// Checks what can be checked before anything starts (programs, secrets, no stray
    /// `mariadbd`, API port), writes the node's `my.cnf`, and starts the loop.
    pub async fn spawn(
        config: Arc<Config>,
        base_dir: &Path,
        name: &str,
        store: Arc<dyn CoordinationStore>,
    ) -> Result<AgentHandle, AgentError> {
        let NodeSetup {
            node,
            layout,
            secrets,
            bins,
        } = NodeSetup::prepare(&config, base_dir, name, LeftRunning::Refuse)?;
        let listener = bind_api(name, &node.host, node.api_port).await?;
        let (lease, renew) =
            AgentLease::grant(store.clone(), Duration::from_millis(config.agent.lease_ttl_ms)).await?;

        let status = Arc::new(Mutex::new(NodeStatus::starting(
            name,
            &node.host,
            node.sql_port,
            node.api_port,
        )));
        let api = crate::api::serve(
            listener,
            crate::api::ApiState {
                status: status.clone(),
                store: store.clone(),
                cluster: config.cluster.name.clone(),
                node: name.into(),
                token: secrets.api.clone(),
                backup: None,
                failsafe: None,
            },
        );

        let agent = Agent {
            cluster: config.cluster.name.clone(),
            order: config.nodes.iter().map(|n| n.name.clone()).collect(),
            addresses: config
                .nodes
                .iter()
                .map(|n| (n.name.clone(), format!("{}:{}", n.host, n.sql_port)))
                .collect(),
            probe_interval: Duration::from_millis(config.agent.probe_interval_ms),
            start_timeout: Duration::from_secs(config.agent.start_timeout_s),
            prober: Prober::new(name, &layout, &secrets.monitor),
            node,
            layout,
            secrets,
            bins,
            store,
            lease,
            status: status.clone(),
            server: None,
            phase: Phase::Waiting,
            phase_since: Instant::now(),
            reason: String::new(),
            locks: Vec::new(),
            disk: None,
            failures: 0,
            retry_at: None,
            held: false,
            recorded: None,
            last_probe: (None, None),
            gcomm_uuid: None,
            departed: None,
            evicted: Vec::new(),
            listed_in: None,
            arbitrator: config.arbitrator.is_some(),
            fit: false,
            disconnected: Sustained::default(),
            silent: Sustained::default(),
            failed_restores: 0,
            orphaned: Sustained::default(),
            refused: Sustained::default(),
            stranded: Sustained::default(),
            donor: None,
            abandoned: Sustained::default(),
            refusal_unplaced: false,
            applier_errors: Vec::new(),
            applier_failed: false,
            writer_desynced: Sustained::default(),
            donor_restore: galera::DonorRestore::default(),
            stuck_donor: Sustained::default(),
            primary_peers: Vec::new(),
            join_refused: None,
            error_log_read: 0,
            last_primary: None,
            unprimary: Sustained::default(),
            restoring: None,
            last_writer: None,
        };
        let events = agent.store.watch(&format!("/vigil/{}/", agent.cluster)).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let renewer = tokio::spawn(renew);
            let result = agent.run(stop_rx, events).await;
            renewer.abort();
            result
        });
        Ok(AgentHandle {
            name: name.into(),
            status,
            stop: stop_tx,
            task,
            api,
        })
    }

    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<vigil_store::WatchEvent>,
    ) -> Result<(), AgentError> {
        let mut tick = tokio::time::interval(self.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The server's exit is noticed within this, not at the next turn: the sooner the
        // survivors hear of it, the sooner they evict it and commit again.
        let mut exit_check = tokio::time::interval(EXIT_CHECK);
        exit_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
                _ = exit_check.tick() => {
                    if self.server.as_mut().is_none_or(|s| s.exited().is_none()) {
                        continue;
                    }
                }
                Some(event) = events.recv() => {
                    let mut wake = self.wakes(&event);
                    while let Ok(e) = events.try_recv() {
                        wake |= self.wakes(&e);
                    }
                    if !wake {
                        continue;
                    }
                }
            }
            if *stop.borrow() {
                return self.shutdown().await;
            }
            if let Err(e) = self.step().await {
                warn!(node = %self.node.name, "{e}");
                // What the step saw is not known to hold on: a restore must be seen anew.
                self.unprimary = Sustained::default();
                if matches!(e, AgentError::Store(_)) {
                    self.show_without_store();
                } else {
                    self.fail(e.to_string()).await;
                }
            }
        }
    }

    /// Whether a store event calls for a turn now rather than at the next tick: another
    /// member's server died (evict it, move the writer), or the writer key changed.
    fn wakes(&self, event: &vigil_store::WatchEvent) -> bool {
        let writer = keys::writer(&self.cluster);
        match event {
            vigil_store::WatchEvent::Put(kv) if kv.key == writer => true,
            vigil_store::WatchEvent::Delete { key, .. } => *key == writer,
            vigil_store::WatchEvent::Put(kv) if kv.key.starts_with(&keys::members(&self.cluster)) => {
                serde_json::from_slice::<MemberReport>(&kv.value)
                    .is_ok_and(|r| r.name != self.node.name && r.departed.is_some())
            }
            _ => false,
        }
    }

    /// The node's health as a load balancer should see it, from this turn's probe (or why it
    /// failed) and the agent's phase.
    fn health(&self, status: Option<&WsrepStatus>, probe_error: Option<&str>) -> Result<(), String> {
        let starting = matches!(self.phase, Phase::Joining | Phase::Bootstrapping);
        match (&self.server, status) {
            (None, _) if self.reason.is_empty() => Err("mariadbd is not running".to_string()),
            (None, _) => Err(self.reason.clone()),
            // While starting, say what the node is doing rather than why SQL is not up yet.
            (Some(_), None) if starting => Err(self.reason.clone()),
            (Some(_), None) => Err(format!(
                "not answering queries ({})",
                probe_error.unwrap_or_default()
            )),
            (Some(_), Some(s)) => galera::health(s).map_err(|why| match starting {
                true => format!("{}: {why}", self.reason),
                false => why,
            }),
        }
    }

    /// While the store cannot be reached, the status still shows what the node itself says:
    /// its Galera state and health from this turn's probe. The writer named by the store when
    /// it was last read keeps the role while it is fit ([`galera::keeps_writing`]): Galera's
    /// own quorum keeps a single Primary component, so a store outage costs no writes (a
    /// separate proxy that cannot read the store either asks this status). No new writer is
    /// chosen until the store is back.
    fn show_without_store(&mut self) {
        let (probe, error) = self.last_probe.clone();
        let health = self.health(probe.as_ref(), error.as_deref());
        // a donor keeps the role only if it was fit by the last reports (a member joining)
        let transfer = self.fit;
        let keeps = self.last_writer.as_deref() == Some(self.node.name.as_str())
            && self.phase == Phase::Running
            && probe
                .as_ref()
                .is_some_and(|p| galera::keeps_writing(p, transfer).is_ok());
        let mut s = self.status.lock().expect("status lock");
        s.pid = self.server.as_ref().map(Server::pid);
        s.phase = self.phase;
        s.healthy = health.is_ok();
        s.role = if keeps { "writer" } else { "none" }.into();
        s.takes_writes = keeps;
        s.reason = match health {
            Ok(()) if keeps => "the coordination store cannot be reached: keeping the writer role".into(),
            Ok(()) => "the coordination store cannot be reached: writer unknown".into(),
            Err(why) => why,
        };
        if let Some(w) = probe {
            s.state = w.local_state_comment;
            s.cluster_status = w.cluster_status;
            s.cluster_size = w.cluster_size;
            s.seqno = w.last_committed;
            s.view = w.conf_id;
        }
    }

    /// Marks the node failed and schedules a restart after the backoff delay.
    async fn fail(&mut self, why: String) {
        if let Some(server) = self.server.as_mut() {
            let _ = server.kill().await;
        }
        let gone = self.server.take().is_some();
        if gone {
            // killed and reaped, or exited: that member of the group is gone for good
            self.departed = self.gcomm_uuid.take();
        }
        self.disk = None;
        self.applier_errors.clear();
        self.applier_failed = false;
        self.donor_restore = galera::DonorRestore::default();
        self.release_locks().await;
        // A restore under way ends with its server; the fence stays (it may have taken effect).
        self.restoring = None;
        self.failures += 1;
        let delay = galera::restart_delay(self.failures);
        self.retry_at = Some(Instant::now() + delay);
        self.set_phase(Phase::Failed, format!("{why}; retrying in {} s", delay.as_secs()));
        if gone && self.departed.is_some() {
            self.announce_departure().await;
        }
    }

    /// Tells the other agents at once that this node's server is gone, so that they evict it
    /// from their view ([`galera::evictions`]): until then no member commits. The full report
    /// follows at the end of the turn, after the position is recovered from the datadir
    /// (`mariadbd --wsrep-recover`, a second or more); meanwhile the position is unknown, and
    /// no other node starts a cluster without this one (`galera::decide_start`).
    async fn announce_departure(&mut self) {
        let report = MemberReport {
            name: self.node.name.clone(),
            phase: self.phase,
            disk: DiskState::Data {
                saved: None,
                sst_interrupted: false,
            },
            status: None,
            departed: self.departed.clone(),
            last_primary: self.last_primary.clone(),
        };
        if let Err(e) = self.put_report(report).await {
            warn!(node = %self.node.name, "cannot announce that the server is gone (the next report will): {e}");
        }
    }

    fn set_phase(&mut self, phase: Phase, reason: impl Into<String>) {
        let reason = reason.into();
        if phase != self.phase {
            info!(node = %self.node.name, "{:?} -> {:?}{}", self.phase, phase, if reason.is_empty() { String::new() } else { format!(": {reason}") });
            self.phase = phase;
            self.phase_since = Instant::now();
        }
        self.reason = reason;
    }

    /// One turn of observe → decide → act.
    async fn step(&mut self) -> Result<(), AgentError> {
        if self.lease.replaced() && !self.locks.is_empty() {
            // The locks lapsed with the old lease: another node may hold them now.
            warn!(node = %self.node.name, "the locks lapsed with the agent's lease: taking them again");
            self.locks.clear();
        }
        let mut probe_error = None;
        let exited = self.server.as_mut().and_then(|s| s.exited());
        if let Some(exit) = exited {
            let why = format!(
                "mariadbd exited unexpectedly ({exit}); see {}",
                self.layout.error_log().display()
            );
            self.fail(why).await;
        }
        // A server that does not answer in time (hung, stopped) is unhealthy: the probe must
        // not hold the agent up, or its report would say the node is fine all along.
        let status = match self.server.as_mut() {
            Some(_) => match tokio::time::timeout(PROBE_TIMEOUT, self.prober.probe()).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    probe_error = Some(e.to_string());
                    None
                }
                Err(_) => {
                    probe_error = Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()));
                    None
                }
            },
            None => None,
        };
        self.last_probe = (status.clone(), probe_error.clone());
        if let Some(uuid) = status.as_ref().map(|s| &s.gcomm_uuid).filter(|u| !u.is_empty()) {
            self.gcomm_uuid = Some(uuid.clone());
        }
        if let Some(view) = status.as_ref().and_then(|s| PrimaryView::of(s, &self.addresses)) {
            self.last_primary = Some(view);
        }
        let others = self.read_members().await?;
        if let Some(s) = &status {
            self.evict(s, &others).await;
            if s.is_primary() {
                self.failed_restores = 0;
                // Every server this one has been Primary with, over its life.
                for peer in galera::primary_peers(s, &others) {
                    if !self.primary_peers.contains(&peer) {
                        self.primary_peers.push(peer);
                    }
                }
            }
        }
        // A server whose group communication stopped for good never reconnects by itself.
        let lost = status
            .as_ref()
            .filter(|_| self.phase == Phase::Running)
            .and_then(galera::lost_backend);
        if let Some(why) = self
            .disconnected
            .confirm(lost, std::time::Instant::now(), RESTART_GRACE)
        {
            self.fail(format!("{why}: restarting the server")).await;
        }
        // A server that answers no probe blocks every election (it may be in a Primary
        // component, galera::decide_start): after SILENT_GRACE it is killed, and reported gone.
        let silent = self.phase == Phase::Running && self.server.is_some() && status.is_none();
        if self
            .silent
            .held_for(silent, std::time::Instant::now(), SILENT_GRACE)
        {
            let why = format!("its server answered no probe for {} s", SILENT_GRACE.as_secs());
            self.fail(format!("{why}: restarting it")).await;
        }
        self.recorded = self.recorded_position().await?;
        self.held = self
            .store
            .get(&keys::hold(&self.cluster, &self.node.name))
            .await?
            .is_some();
        let held = self.held;
        if held && self.phase != Phase::Stopped {
            self.stop_server("held by the operator").await?;
        } else if !held && self.phase == Phase::Stopped {
            self.set_phase(Phase::Waiting, "released by the operator");
        }

        let orphaned = Some(status.as_ref())
            .filter(|_| self.phase == Phase::Joining)
            .and_then(|s| galera::orphaned_join(&self.node.name, s, &self.order, &others));
        let give_up = self
            .orphaned
            .held_for(orphaned.is_some(), std::time::Instant::now(), RESTART_GRACE);
        // Before the log is read, so that the probe does not undo lines written after it.
        if let Some(s) = &status {
            self.donor_restore.probed(s);
        }
        if self.phase == Phase::Joining {
            self.watch_join(status.as_ref().map(|s| s.last_committed), &others);
        } else if self.server.is_some() {
            self.read_error_log();
        }
        // Its flow control holds every commit of the cluster: no grace.
        if self.applier_failed && self.server.is_some() {
            self.fail(
                "its Galera applier stopped on an error (see the error log): restarting the server".into(),
            )
            .await;
        }
        let stuck = status
            .as_ref()
            .filter(|_| matches!(self.phase, Phase::Running | Phase::Bootstrapping))
            .and_then(|s| galera::stuck_donor(s, self.donor_restore.restored(), &others));
        if let Some(why) =
            self.stuck_donor
                .confirm(stuck, std::time::Instant::now(), galera::STUCK_DONOR_GRACE)
        {
            self.fail(format!("{why}: restarting the server")).await;
        }
        let refused = status
            .as_ref()
            .filter(|_| self.phase == Phase::Joining)
            .and_then(|s| galera::refused_join(s, self.join_refused));
        let abandoned = self
            .donor
            .as_ref()
            .filter(|_| self.phase == Phase::Joining)
            .and_then(|d| galera::abandoned_transfer(d, status.as_ref(), &others));
        if let Some(why) = self
            .abandoned
            .confirm(abandoned, std::time::Instant::now(), RESTART_GRACE)
        {
            self.fail(format!("{why}: restarting the join")).await;
        }
        let restart_join = self
            .refused
            .held_for(refused.is_some(), std::time::Instant::now(), RESTART_GRACE);
        let stranded = status
            .as_ref()
            .filter(|_| matches!(self.phase, Phase::Running | Phase::Joining))
            .and_then(|s| galera::stranded(s, &others, &self.primary_peers));
        let after = stranded.as_ref().map_or(RESTART_GRACE, |r| r.after);
        if let Some(r) = self.stranded.confirm(stranded, std::time::Instant::now(), after) {
            self.fail(format!("{}: restarting the server", r.why)).await;
        }
        let restore = match status
            .as_ref()
            .filter(|s| self.phase == Phase::Running && s.connected && !s.is_primary())
        {
            Some(s) => self.restore_primary(s, &others).await?,
            None => None,
        };
        let restore = self
            .unprimary
            .confirm(restore, std::time::Instant::now(), RESTART_GRACE);
        match self.phase {
            Phase::Failed
                if galera::restart_due(
                    self.retry_at.is_some_and(|t| Instant::now() >= t),
                    self.phase_since.elapsed(),
                    &others,
                ) =>
            {
                self.retry_at = None;
                self.set_phase(Phase::Waiting, "restarting after a failure");
                self.try_start(&others).await?;
            }
            Phase::Waiting => self.try_start(&others).await?,
            Phase::Bootstrapping | Phase::Joining => {
                if status
                    .as_ref()
                    .is_some_and(|s| galera::start_finished(self.phase, s))
                {
                    self.release_locks().await;
                    let force = keys::force_bootstrap(&self.cluster);
                    if self.phase == Phase::Bootstrapping && self.store.get(&force).await?.is_some() {
                        self.store.delete(&force).await?;
                    }
                    self.restoring = None;
                    self.set_phase(Phase::Running, "");
                } else if let Some(why) = orphaned {
                    if give_up {
                        self.fail(format!("{why}: giving up the join")).await;
                    }
                } else if let Some(why) = refused {
                    if restart_join {
                        self.fail(format!("{why}: restarting the join")).await;
                    }
                } else if self.phase == Phase::Bootstrapping
                    && self.restoring.is_some()
                    && status.as_ref().is_some_and(|s| !s.is_primary())
                    && self.phase_since.elapsed() > RESTORE_GRACE
                {
                    let why = format!(
                        "its server is not in a Primary component {} s after pc.bootstrap",
                        RESTORE_GRACE.as_secs()
                    );
                    self.failed_restores += 1;
                    if self.failed_restores >= RESTORE_ATTEMPTS {
                        // Elected still: it starts the cluster from its data once restarted
                        // (the fence stays).
                        self.failed_restores = 0;
                        self.fail(format!("{why}, {RESTORE_ATTEMPTS} times in a row: restarting it"))
                            .await;
                    } else {
                        self.undo_restore(why).await?;
                    }
                } else if self.phase_since.elapsed() > self.start_timeout {
                    let why = format!(
                        "not Synced {} s after start; see {}",
                        self.start_timeout.as_secs(),
                        self.layout.error_log().display()
                    );
                    self.fail(why).await;
                }
            }
            // A node that stays up a minute has recovered: the next crash starts the backoff anew.
            Phase::Running if self.phase_since.elapsed() > galera::BACKOFF_RESET => self.failures = 0,
            _ => {}
        }
        if let Some(position) = restore {
            self.make_primary(position).await?;
        }

        // A server killed in this turn (a failure, a join given up) shows no status: the probe
        // above is of a process that is gone, and a position in it would stand for this node
        // in another agent's election.
        let status = status.filter(|_| self.server.is_some());
        let health = self.health(status.as_ref(), probe_error.as_deref());
        let writer = self.update_writer(status.as_ref(), &health, &others).await?;
        self.last_writer = writer.clone();
        if writer.as_deref() == Some(self.node.name.as_str()) {
            if let Some(s) = status.as_ref().filter(|_| health.is_ok()) {
                self.record_position(s).await?;
            }
        }
        self.publish(status, health, writer).await
    }

    /// Evicts from this node's view the members whose agents report their server dead
    /// ([`galera::evictions`]), and empties its eviction list once a later view is installed
    /// ([`galera::clear_evictions`]).
    async fn evict(&mut self, status: &WsrepStatus, others: &[MemberReport]) {
        if status.evict_list.is_empty() {
            self.listed_in = None;
        } else if self.listed_in.is_none() {
            self.listed_in = Some(status.conf_id);
        }
        if galera::clear_evictions(status, self.listed_in) {
            match admin::clear_evictions(&self.node.name, &self.layout).await {
                Ok(()) => {
                    info!(node = %self.node.name, "the evicted servers are out of the view: eviction list cleared");
                    self.listed_in = None;
                }
                Err(e) => warn!(node = %self.node.name, "cannot clear the eviction list (trying again): {e}"),
            }
        }
        for uuid in galera::evictions(status, others, &self.evicted, self.arbitrator) {
            let of = others
                .iter()
                .find(|r| r.departed.as_ref() == Some(&uuid))
                .map_or("?", |r| r.name.as_str());
            match admin::evict_member(&self.node.name, &self.layout, &uuid).await {
                Ok(()) => {
                    info!(node = %self.node.name, "evicted {of}'s dead server ({uuid}) from the Galera view")
                }
                Err(e) => warn!(node = %self.node.name, "cannot evict {of}'s dead server ({uuid}): {e}"),
            }
            // Tried once: a failure is Galera's suspect timeout doing the work instead.
            self.evicted.push(uuid);
        }
    }

    /// Records the cluster's last committed position in the store (only ever raising it), so
    /// that after an outage a node knows whether it may start without waiting for every member.
    async fn record_position(&self, status: &WsrepStatus) -> Result<(), AgentError> {
        let key = keys::position(&self.cluster);
        let current = self.store.get(&key).await?;
        let recorded: Option<Position> = current
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        if let Some(value) = galera::raised_record(recorded.as_ref(), status) {
            let expected = current.map_or(0, |kv| kv.mod_revision);
            let value = serde_json::to_vec(&value).expect("positions serialise");
            self.store.compare_and_swap(&key, expected, value, None).await?;
        }
        Ok(())
    }

    async fn recorded_position(&self) -> Result<Option<Position>, AgentError> {
        let kv = self.store.get(&keys::position(&self.cluster)).await?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// What a start decision reads from the store besides the members' reports: the writer, the
    /// node the operator forced to start the cluster, the fence.
    async fn start_inputs(&self) -> Result<StartInputs, AgentError> {
        let text =
            |kv: Option<vigil_store::KeyValue>| kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let writer = text(self.store.get(&keys::writer(&self.cluster)).await?);
        let forced = text(self.store.get(&keys::force_bootstrap(&self.cluster)).await?);
        let fence = self.store.get(&keys::fence(&self.cluster)).await?;
        let fence = fence.and_then(|kv| serde_json::from_slice(&kv.value).ok());
        Ok(StartInputs {
            writer,
            forced,
            fence,
            my_address: format!("{}:{}", self.node.host, self.node.sql_port),
        })
    }

    fn start_view<'a>(
        &'a self,
        inputs: &'a StartInputs,
        my_disk: &'a DiskState,
        others: &'a [MemberReport],
    ) -> StartView<'a> {
        StartView {
            me: &self.node.name,
            my_address: &inputs.my_address,
            order: &self.order,
            my_disk,
            others,
            writer: inputs.writer.as_deref(),
            record: self.recorded.as_ref(),
            forced: inputs.forced.as_deref(),
            fence: inputs.fence.as_ref(),
        }
    }

    /// The position from which this running node, its server outside any Primary component,
    /// is to make its component Primary, if it is the one elected to ([`galera::restore_primary`]).
    async fn restore_primary(
        &self,
        status: &WsrepStatus,
        others: &[MemberReport],
    ) -> Result<Option<Position>, AgentError> {
        let inputs = self.start_inputs().await?;
        let unknown = DiskState::Data {
            saved: None,
            sst_interrupted: false,
        };
        Ok(galera::restore_primary(
            self.start_view(&inputs, &unknown, others),
            status,
            self.last_primary.as_ref(),
        ))
    }

    /// Makes this node's non-Primary component Primary (`pc.bootstrap=YES`) from its running
    /// data at `position`, under the bootstrap lock, fencing off history beyond it like a
    /// bootstrap does; the node is Bootstrapping until its server is Synced in the component,
    /// or, if its server still shows a non-Primary component after [`RESTORE_GRACE`], runs on as
    /// before ([`Agent::undo_restore`]).
    async fn make_primary(&mut self, position: Position) -> Result<(), AgentError> {
        if !self.take_lock("bootstrap").await? {
            self.reason = "another member holds the bootstrap lock".into();
            return Ok(());
        }
        let fence_key = keys::fence(&self.cluster);
        let earlier = |kv: &vigil_store::KeyValue| {
            serde_json::from_slice::<Position>(&kv.value)
                .is_ok_and(|f| galera::fence_to_put_back(&f, &position))
        };
        let previous = match self.store.get(&fence_key).await {
            Ok(kv) => kv.filter(earlier).map(|kv| kv.value),
            Err(e) => {
                self.release_locks().await;
                return Err(e.into());
            }
        };
        let fence = serde_json::to_vec(&position).expect("positions serialise");
        if let Err(e) = self.store.put(&fence_key, fence, None).await {
            self.release_locks().await;
            return Err(e.into());
        }
        self.restoring = Some(previous);
        let doing = format!(
            "making this node's non-Primary component Primary from its data (seqno {})",
            position.seqno
        );
        warn!(node = %self.node.name, "elected to restart the cluster while running: {doing}");
        self.set_phase(Phase::Bootstrapping, doing);
        let done = match self.publish_phase().await {
            Ok(()) => admin::bootstrap_component(&self.node.name, &self.layout)
                .await
                .map_err(AgentError::from),
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            self.undo_restore(format!("cannot make the component Primary: {e}"))
                .await?;
        }
        Ok(())
    }

    /// Gives up making the component Primary: the bootstrap lock is released and the node runs
    /// on, deciding again; the fence goes back to what it was if [`galera::fence_to_put_back`]
    /// says so, else the restore's own stays.
    async fn undo_restore(&mut self, why: String) -> Result<(), AgentError> {
        warn!(node = %self.node.name, "{why}: running on as before");
        let Some(previous) = self.restoring.take() else {
            return Ok(());
        };
        self.set_phase(Phase::Running, why);
        // Under the lock still, or another member's fence may be overwritten.
        let locked = self.locks.contains(&keys::lock(&self.cluster, "bootstrap"));
        let result = match previous.filter(|_| locked) {
            Some(value) => self.store.put(&keys::fence(&self.cluster), value, None).await,
            None => Ok(0),
        };
        self.release_locks().await;
        result?;
        Ok(())
    }

    /// Reads what the server has added to its error log since the last call: a refusal of
    /// this node's JOIN ([`galera::join_refused`]), the donor Galera selected for its state
    /// transfer ([`galera::donor_selected`]), a failed applier ([`galera::applier_error`]) and
    /// the server restored as a donor ([`galera::restored_donor`]). Only whole lines count.
    fn read_error_log(&mut self) {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.layout.error_log();
        let Ok(mut file) = std::fs::File::open(&path) else {
            return;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.error_log_read {
            self.error_log_read = 0;
        }
        let mut text = Vec::new();
        let read = file
            .seek(SeekFrom::Start(self.error_log_read))
            .and_then(|_| file.take(1 << 20).read_to_end(&mut text));
        if read.is_err() {
            return;
        }
        let Some(end) = text.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        self.error_log_read += end as u64 + 1;
        let text = String::from_utf8_lossy(&text[..end]);
        if text.lines().any(|l| galera::join_refused(l, &self.node.name)) {
            self.refusal_unplaced = true;
        }
        for line in text.lines() {
            if let Some(thread) = galera::applier_error(line) {
                self.applier_errors.push(thread);
            } else if galera::applier_exited(line).is_some_and(|t| self.applier_errors.contains(&t)) {
                self.applier_failed = true;
            } else {
                self.donor_restore.logged(line, &self.node.name);
            }
        }
        if let Some(name) = text
            .lines()
            .filter_map(|l| galera::donor_selected(l, &self.node.name))
            .next_back()
        {
            self.donor = Some(galera::DonorInstance {
                name,
                gcomm_uuid: None,
            });
        }
    }

    /// What the joining server's error log said, placed: a refusal at the server's position
    /// `seqno` once it answers (a refusal read while it did not answer is kept until then), and
    /// the donor's server instance, from its report while it serves (a moment after the
    /// selection).
    fn watch_join(&mut self, seqno: Option<i64>, others: &[MemberReport]) {
        self.read_error_log();
        if let Some(seqno) = seqno.filter(|_| self.refusal_unplaced) {
            self.join_refused = Some(seqno);
            self.refusal_unplaced = false;
        }
        if let Some(donor) = self.donor.as_mut().filter(|d| d.gcomm_uuid.is_none()) {
            donor.gcomm_uuid = galera::donor_instance(&donor.name, others);
        }
    }

    async fn try_start(&mut self, others: &[MemberReport]) -> Result<(), AgentError> {
        let disk = self.observe_disk().await;
        let inputs = self.start_inputs().await?;
        let decision = galera::decide_start(self.start_view(&inputs, &disk, others));
        match decision {
            StartDecision::Wait(why) => {
                self.reason = why;
                Ok(())
            }
            StartDecision::BootstrapNew => {
                if !self.take_lock("bootstrap").await? {
                    self.reason = "another member holds the bootstrap lock".into();
                    return Ok(());
                }
                self.set_phase(Phase::Bootstrapping, "starting a new cluster");
                self.publish_phase().await?;
                info!(node = %self.node.name, "initialising a new datadir");
                let marker = self.layout.unprovisioned_marker();
                std::fs::write(&marker, b"").map_err(NodeError::io(&marker))?;
                process::init_datadir(&self.bins, &self.layout).await?;
                self.start_server(StartMode::Bootstrap { position: None }).await?;
                self.provision().await?;
                std::fs::remove_file(&marker).map_err(NodeError::io(&marker))?;
                Ok(())
            }
            StartDecision::Bootstrap { mark_safe } => {
                if !self.take_lock("bootstrap").await? {
                    self.reason = "another member holds the bootstrap lock".into();
                    return Ok(());
                }
                let saved = disk.saved().cloned().expect("an elected node has a position");
                // Whatever a missing member holds beyond this point is not the cluster's history.
                let fence = serde_json::to_vec(&Position {
                    uuid: saved.uuid.clone(),
                    seqno: saved.seqno,
                })
                .expect("positions serialise");
                self.store.put(&keys::fence(&self.cluster), fence, None).await?;
                if mark_safe {
                    let safe = SavedState {
                        safe_to_bootstrap: true,
                        ..saved.clone()
                    };
                    grastate::write(&self.layout.grastate(), &safe)?;
                    info!(node = %self.node.name, seqno = saved.seqno, "elected to restart the cluster: marked safe to bootstrap");
                }
                self.set_phase(
                    Phase::Bootstrapping,
                    format!(
                        "starting the cluster from this node's data (seqno {})",
                        saved.seqno
                    ),
                );
                self.publish_phase().await?;
                // After a crash grastate.dat says -1: the history goes on from the recovered
                // position instead of starting anew.
                self.start_server(StartMode::Bootstrap {
                    position: Some(format!("{}:{}", saved.uuid, saved.seqno)),
                })
                .await
            }
            StartDecision::Join {
                donor,
                transfer,
                keep_aside,
            } => {
                // One joiner at a time (see decide_start); the lock settles a race between agents.
                if !self.take_lock("join").await? {
                    self.reason = "another member is joining".into();
                    return Ok(());
                }
                let how = match transfer {
                    Transfer::Incremental => "IST",
                    Transfer::Snapshot => "SST",
                };
                let mut doing = format!("joining via {how} from {donor}");
                if keep_aside {
                    let kept = keep_datadir_aside(&self.layout)?;
                    warn!(node = %self.node.name, "old datadir kept at {} before a full state transfer", kept.display());
                    doing = format!("{doing}; old datadir kept at {}", kept.display());
                }
                self.set_phase(Phase::Joining, doing);
                self.publish_phase().await?;
                // After a crash grastate.dat says -1: start from the recovered position instead.
                let position = match (transfer, disk.saved()) {
                    (Transfer::Incremental, Some(p)) => Some(format!("{}:{}", p.uuid, p.seqno)),
                    _ => None,
                };
                self.start_server(StartMode::Join {
                    donor: Some(donor),
                    position,
                })
                .await
            }
        }
    }

    /// Stops mariadbd cleanly and leaves the node stopped (held, or shutting down).
    async fn stop_server(&mut self, why: &str) -> Result<(), AgentError> {
        self.set_phase(Phase::Stopping, why);
        let _ = self.publish(None, Err(why.to_string()), None).await;
        if let Some(server) = self.server.as_mut() {
            info!(node = %self.node.name, pid = server.pid(), "stopping mariadbd: {why}");
            server.stop(STOP_TIMEOUT).await?;
        }
        self.server = None;
        self.disk = None;
        self.retry_at = None;
        self.release_locks().await;
        self.restoring = None;
        self.set_phase(Phase::Stopped, why);
        Ok(())
    }

    async fn start_server(&mut self, mode: StartMode) -> Result<(), AgentError> {
        self.disk = None;
        self.departed = None;
        self.gcomm_uuid = None;
        // Only what the new server writes and shows counts.
        self.join_refused = None;
        self.refusal_unplaced = false;
        self.applier_errors.clear();
        self.applier_failed = false;
        self.donor_restore = galera::DonorRestore::default();
        self.donor = None;
        self.primary_peers.clear();
        self.last_primary = None;
        self.error_log_read = std::fs::metadata(self.layout.error_log()).map_or(0, |m| m.len());
        self.server = Some(Server::start(&self.bins, &self.layout, mode).await?);
        Ok(())
    }

    /// Creates the users on a brand-new cluster, as soon as the bootstrap node accepts connections.
    async fn provision(&mut self) -> Result<(), AgentError> {
        let deadline = Duration::from_secs(120);
        if !process::wait_for_socket(&self.layout.socket(), deadline).await {
            return Err(NodeError::Timeout(format!(
                "mariadbd did not open {} within {} s; see {}",
                self.layout.socket().display(),
                deadline.as_secs(),
                self.layout.error_log().display()
            ))
            .into());
        }
        admin::provision_users(&self.node.name, &self.layout, &self.secrets).await?;
        info!(node = %self.node.name, "created the application, SST and monitoring users");
        Ok(())
    }

    /// The node's disk while it is stopped, observed once per stop: emptiness, an interrupted
    /// state transfer, and the position (grastate, else recovered from InnoDB).
    async fn observe_disk(&mut self) -> DiskState {
        if self.server.is_some() {
            return DiskState::Data {
                saved: None,
                sst_interrupted: false,
            };
        }
        if let Some(disk) = &self.disk {
            return disk.clone();
        }
        let disk = self.read_disk().await;
        self.disk = Some(disk.clone());
        disk
    }

    async fn read_disk(&mut self) -> DiskState {
        match set_aside_unprovisioned(&self.layout) {
            Ok(Some(kept)) => {
                warn!(node = %self.node.name, "the datadir was made for a new cluster whose users were never created (it holds none of the cluster's data): kept at {} and started over", kept.display());
                return DiskState::Empty;
            }
            Ok(None) => {}
            Err(e) => {
                self.reason = e.to_string();
                return DiskState::Data {
                    saved: None,
                    sst_interrupted: false,
                };
            }
        }
        match self.layout.datadir_is_empty() {
            Ok(true) => return DiskState::Empty,
            Ok(false) => {}
            Err(e) => {
                self.reason = e.to_string();
                return DiskState::Data {
                    saved: None,
                    sst_interrupted: false,
                };
            }
        }
        // The SST scripts create this file when a transfer starts and remove it when it ends.
        let sst_interrupted = self.layout.datadir().join("sst_in_progress").exists();
        if sst_interrupted {
            warn!(node = %self.node.name, "a state transfer into this datadir was interrupted; it is not a usable source");
            return DiskState::Data {
                saved: None,
                sst_interrupted,
            };
        }
        let from_file = match grastate::read(&self.layout.grastate()) {
            Ok(Some(g)) if g.seqno >= 0 => {
                return DiskState::Data {
                    saved: Some(g),
                    sst_interrupted,
                }
            }
            Ok(g) => g,
            Err(e) => {
                warn!(node = %self.node.name, "{e}; recovering the position from InnoDB instead");
                None
            }
        };
        info!(node = %self.node.name, "position unknown (not a clean stop): running mariadbd --wsrep-recover");
        let saved = match recover::wsrep_recover(&self.bins, &self.layout).await {
            Ok(p) if p.seqno >= 0 => Some(SavedState {
                safe_to_bootstrap: from_file.is_some_and(|g| g.safe_to_bootstrap),
                ..p
            }),
            Ok(_) => None,
            Err(e) => {
                self.reason = e.to_string();
                None
            }
        };
        if let Some(s) = &saved {
            info!(node = %self.node.name, seqno = s.seqno, "recovered position");
        }
        DiskState::Data {
            saved,
            sst_interrupted,
        }
    }

    async fn read_members(&self) -> Result<Vec<MemberReport>, AgentError> {
        let mut out = Vec::new();
        for kv in self.store.list(&keys::members(&self.cluster)).await? {
            match serde_json::from_slice::<MemberReport>(&kv.value) {
                Ok(r) if r.name != self.node.name => out.push(r),
                Ok(_) => {}
                Err(e) => warn!("ignoring a malformed member report at {}: {e}", kv.key),
            }
        }
        Ok(out)
    }

    async fn take_lock(&mut self, name: &str) -> Result<bool, AgentError> {
        let key = keys::lock(&self.cluster, name);
        if self.locks.contains(&key) {
            return Ok(true);
        }
        match self
            .store
            .compare_and_swap(
                &key,
                0,
                self.node.name.clone().into_bytes(),
                Some(self.lease.id()),
            )
            .await
            .map_err(|e| self.lease.lost(e))?
        {
            CasOutcome::Swapped(_) => {
                self.locks.push(key);
                Ok(true)
            }
            CasOutcome::Conflict(Some(kv)) if kv.value == self.node.name.as_bytes() => {
                self.locks.push(key);
                Ok(true)
            }
            CasOutcome::Conflict(_) => Ok(false),
        }
    }

    async fn release_locks(&mut self) {
        for key in std::mem::take(&mut self.locks) {
            if let Err(e) = self.store.delete(&key).await {
                warn!("cannot release {key}: {e}");
            }
        }
    }

    /// Keeps the writer key on a node fit to write ([`galera::writer_fitness`],
    /// [`galera::choose_writer`]); only healthy members move it, or a fit one (a donor) when
    /// none is healthy.
    async fn update_writer(
        &mut self,
        status: Option<&WsrepStatus>,
        health: &Result<(), String>,
        others: &[MemberReport],
    ) -> Result<Option<String>, AgentError> {
        let key = keys::writer(&self.cluster);
        let current = self.store.get(&key).await?;
        let current_name = current
            .as_ref()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let mut reports = others.to_vec();
        reports.push(MemberReport {
            name: self.node.name.clone(),
            phase: self.phase,
            disk: DiskState::Data {
                saved: None,
                sst_interrupted: false,
            },
            status: status.cloned(),
            departed: None,
            last_primary: self.last_primary.clone(),
        });
        let fitness = galera::writer_fitness(&self.addresses, &reports);
        self.fit = fitness.fit.contains(&self.node.name);
        // Counted at every turn, so that a node coming back does not act on an old start.
        let desynced = current_name
            .as_ref()
            .is_some_and(|c| fitness.desynced.contains(c));
        let desync_expired = self.writer_desynced.held_for(
            desynced,
            std::time::Instant::now(),
            galera::desync_grace(self.probe_interval),
        );
        // A node may take the role only if choose_writer could give it to it: healthy, or fit
        // with nobody healthy.
        if health.is_err() && !self.fit {
            return Ok(current_name);
        }
        let chosen = galera::choose_writer(current_name.as_deref(), &fitness, &self.order, desync_expired);
        if let Some(chosen) = chosen.filter(|c| Some(c) != current_name.as_ref()) {
            // The others wake on the writer key and judge this node by its report: it must say
            // healthy first, or a member reading a report from before (Bootstrapping, say, just
            // after a restore) finds the new writer unfit and takes the role from it at once.
            if chosen == self.node.name {
                self.publish(status.cloned(), health.clone(), current_name.clone())
                    .await?;
            }
            let expected = current.map_or(0, |kv| kv.mod_revision);
            if let CasOutcome::Swapped(_) = self
                .store
                .compare_and_swap(&key, expected, chosen.clone().into_bytes(), None)
                .await?
            {
                info!(
                    "writer is now {chosen} (was {})",
                    current_name.as_deref().unwrap_or("none")
                );
                return Ok(Some(chosen));
            }
            return Ok(self
                .store
                .get(&key)
                .await?
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()));
        }
        Ok(current_name)
    }

    async fn publish_phase(&mut self) -> Result<(), AgentError> {
        let disk = self.observe_disk().await;
        self.put_report(MemberReport {
            name: self.node.name.clone(),
            phase: self.phase,
            disk,
            status: None,
            departed: self.departed.clone(),
            last_primary: self.last_primary.clone(),
        })
        .await
    }

    async fn put_report(&self, report: MemberReport) -> Result<(), AgentError> {
        let value = serde_json::to_vec(&report).expect("reports serialise");
        self.store
            .put(
                &keys::member(&self.cluster, &self.node.name),
                value,
                Some(self.lease.id()),
            )
            .await
            .map_err(|e| self.lease.lost(e))?;
        Ok(())
    }

    async fn publish(
        &mut self,
        status: Option<WsrepStatus>,
        health: Result<(), String>,
        writer: Option<String>,
    ) -> Result<(), AgentError> {
        let disk = self.observe_disk().await;
        let healthy = health.is_ok();
        // A donating writer keeps the role (galera::writer_fitness) though it is not healthy
        // for reads.
        let fit = self.phase == Phase::Running && status.is_some() && self.fit;
        let role = match (healthy, fit, writer.as_deref() == Some(self.node.name.as_str())) {
            (_, true, true) => "writer",
            (true, _, false) => "reader",
            _ => "none",
        };
        {
            let mut s = self.status.lock().expect("status lock");
            s.pid = self.server.as_ref().map(Server::pid);
            s.phase = self.phase;
            s.healthy = healthy;
            s.role = role.into();
            s.takes_writes = role == "writer";
            s.reason = health.err().unwrap_or_default();
            s.held = self.held;
            s.recorded_seqno = self.recorded.as_ref().map_or(-1, |p| p.seqno);
            match &status {
                Some(w) => {
                    s.state = w.local_state_comment.clone();
                    s.cluster_status = w.cluster_status.clone();
                    s.cluster_size = w.cluster_size;
                    s.seqno = w.last_committed;
                    s.cluster_uuid = w.cluster_state_uuid.clone();
                    s.view = w.conf_id;
                }
                None => {
                    s.state = phase_word(self.phase).into();
                    s.cluster_status = "-".into();
                    s.cluster_size = 0;
                    let saved = disk.saved();
                    s.seqno = saved.map_or(-1, |g| g.seqno);
                    s.cluster_uuid = saved.map(|g| g.uuid.clone()).unwrap_or_default();
                }
            }
        }
        self.put_report(MemberReport {
            name: self.node.name.clone(),
            phase: self.phase,
            disk,
            status,
            departed: self.departed.clone(),
            last_primary: self.last_primary.clone(),
        })
        .await
    }

    async fn shutdown(mut self) -> Result<(), AgentError> {
        let result = self.stop_server("stopped").await;
        let _ = self.publish(None, Err("stopped".into()), None).await;
        let _ = self.store.revoke(self.lease.id()).await;
        info!(node = %self.node.name, "stopped");
        result
    }
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting",
        Phase::Bootstrapping => "bootstrapping",
        Phase::Joining => "joining",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Stopped => "stopped",
        Phase::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_store::memory::MemoryStore;

    /// A chaos run's fresh cluster never formed: the bootstrap node's provisioning failed, and
    /// its half-made datadir (a position of -1) kept every member waiting for its position.
    #[test]
    fn a_datadir_made_for_a_new_cluster_but_never_provisioned_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let layout = NodeLayout::new(dir.path());
        std::fs::create_dir_all(layout.datadir()).unwrap();
        std::fs::write(layout.datadir().join("ibdata1"), b"pages").unwrap();
        // No marker: a datadir with data is left alone.
        assert_eq!(set_aside_unprovisioned(&layout).unwrap(), None);
        assert!(layout.datadir().join("ibdata1").exists());
        // The marker of a bootstrap that did not finish: moved aside, never deleted.
        std::fs::write(layout.unprovisioned_marker(), b"").unwrap();
        let kept = set_aside_unprovisioned(&layout).unwrap().expect("set aside");
        assert!(kept.join("ibdata1").exists());
        assert!(layout.datadir_is_empty().unwrap());
        assert!(!layout.unprovisioned_marker().exists());
        // Once: the next look finds an empty datadir and no marker.
        assert_eq!(set_aside_unprovisioned(&layout).unwrap(), None);
    }

    #[tokio::test]
    async fn a_write_that_finds_the_agent_lease_gone_has_it_replaced_at_once() {
        let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
        // Renewed every 20 s: only the write's word can replace it within the test's wait.
        let (lease, renew) = AgentLease::grant(store.clone(), Duration::from_secs(60))
            .await
            .unwrap();
        let renewer = tokio::spawn(renew);
        let first = lease.id();
        store.revoke(first).await.unwrap();
        let refused = store
            .put("report", b"up".to_vec(), Some(first))
            .await
            .unwrap_err();
        assert_eq!(lease.lost(refused), StoreError::LeaseLost(first));
        let replaced = tokio::time::timeout(Duration::from_secs(5), async {
            while lease.id() == first {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(replaced.is_ok(), "the lease was not replaced within 5 s");
        store
            .put("report", b"up".to_vec(), Some(lease.id()))
            .await
            .unwrap();
        renewer.abort();
    }

    #[tokio::test]
    async fn a_lapsed_agent_lease_is_replaced() {
        let store: Arc<dyn CoordinationStore> = Arc::new(MemoryStore::new());
        let (mut lease, renew) = AgentLease::grant(store.clone(), Duration::from_millis(300))
            .await
            .unwrap();
        let renewer = tokio::spawn(renew);
        let first = lease.id();
        store.put("report", b"up".to_vec(), Some(first)).await.unwrap();
        assert!(!lease.replaced());
        // The store lets it go (as after an outage longer than the TTL).
        store.revoke(first).await.unwrap();
        assert!(store.get("report").await.unwrap().is_none());
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while lease.id() == first {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "no new lease within 10 s");
        assert!(lease.replaced());
        assert!(!lease.replaced(), "reported once");
        let second = lease.id();
        store.put("report", b"up".to_vec(), Some(second)).await.unwrap();
        // The new lease is renewed: it outlives several TTLs.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(store.get("report").await.unwrap().is_some());
        assert_eq!(lease.id(), second);
        renewer.abort();
    }
}
