//! One agent of the replication topology: supervises one `mariadbd` and runs the HA loop.
//!
//! ```text
//!   every probe interval, and at once on any change under /vigil/<cluster>/repl/:
//!     primary  ── lease about to lapse? fence (read_only, kill sessions; SIGKILL if it hangs)
//!                 else renew the leader lease after a good probe; hand over on a switchover
//!     replica  ── follow the leader by GTID if the rejoin verdict allows, else quarantine
//!     nobody leads ── vigil_core::replication::choose_candidate; the chosen one takes the
//!                 leader key (compare-and-swap: its revision is the fencing token), applies
//!                 its relay log, records the fork and only then turns writable
//! ```
//!
//! Every node starts `read_only` with `skip_slave_start`: nothing writes or replicates until
//! this loop says so.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};
use vigil_core::config::{Config, Durability, NodeConfig, ReplicationSection};
use vigil_core::galera::{self, Phase};
use vigil_core::replication::{
    self, Candidate, Election, ElectionContext, ElectionDecision, FailoverHistory, GtidPos, Member,
    PrimaryRecord, Rejoin, ReplReport, ReplStatus, Role, SemisyncStep, SemisyncView, Switchover,
};
use vigil_mariadb::process::{self, Binaries, Server, StartMode};
use vigil_mariadb::repl::{self as sql, ReplProber};
use vigil_mariadb::secrets::Secrets;
use vigil_mariadb::{admin, NodeError, NodeLayout};
use vigil_store::{CasOutcome, CoordinationStore, LeaseId, StoreError, WatchEvent};

use crate::api::{FailsafeSlot, SharedStatus};
use crate::backup::{self, BackupSource};
use crate::node::{
    bind_api, keep_datadir_aside, AgentError, AgentHandle, AgentLease, LeftRunning, NodeSetup, STOP_TIMEOUT,
};
use crate::{keys, NodeStatus};

/// How long a SQL command on the node's own server may take before the server counts as hung.
const SQL_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a node may take to stop receiving in a vacancy (MariaDB's `STOP SLAVE IO_THREAD`
/// takes up to 2 s when the IO thread is connecting to a lost primary).
const STOP_RECEIVING_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a primary without the store waits for the other nodes' failsafe promises.
const FAILSAFE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a primary waits for the store's answer before it also asks for the other nodes'
/// failsafe promises, in case the store does not answer at all: its dead-man switch fires as
/// early as 1.5 s after the last renewal, and the store's own timeout is a second. (Found by
/// `vigil chaos`: the store's quorum was lost just after a renewal, the switch turned the
/// primary read-only 0.1 s before the promises came in, and writes stopped for 4.9 s.)
const FAILSAFE_EARLY: Duration = Duration::from_millis(250);

pub struct ReplAgent {
    cluster: String,
    config: Arc<Config>,
    section: ReplicationSection,
    node: NodeConfig,
    probe_interval: Duration,
    ttl: Duration,
    layout: NodeLayout,
    secrets: Secrets,
    bins: Binaries,
    store: Arc<dyn CoordinationStore>,
    /// The agent's lease: its member report vanishes with it.
    lease: AgentLease,
    /// The leader lease while this node is primary, and when its last renewal was sent.
    leader: Option<(LeaseId, Instant)>,
    epoch: u64,
    status: SharedStatus,
    server: Option<Server>,
    prober: ReplProber,
    phase: Phase,
    phase_since: Instant,
    role: Role,
    reason: String,
    failures: u32,
    retry_at: Option<Instant>,
    held: bool,
    started: Instant,
    /// The node had data when this agent started: the cluster may be restarting as a whole.
    resumed: bool,
    /// The store revision of the first report this agent wrote.
    first_own_report: Option<u64>,
    /// A node held the leader lease while its agent was alive, since this agent started
    /// ([`replication::primary_served_since_start`]): it came up in a running cluster.
    saw_primary: bool,
    /// The last view showed no leader: the epoch of the last primary record then (0 if none).
    vacancy_seen: Option<u64>,
    /// [`ReplReport::after_lapse_of`] for this turn's report: `vacancy_seen` as it was before
    /// this turn's probe.
    after_lapse_of: Option<u64>,
    /// This node stopped receiving when it saw the leader lease vacant
    /// ([`replication::stops_receiving`]); it receives again once it follows a primary.
    stopped_receiving: bool,
    /// When this agent first saw no leader in the current vacancy (for the flap rule).
    vacant_since: Option<SystemTime>,
    /// The promise this node made to a primary that could not reach the store, and whether
    /// it is leading (see [`FailsafeSlot`]).
    failsafe: Arc<FailsafeSlot>,
    /// This primary could not read the store at its last turn: it keeps its role only while
    /// every other node promises to stay out of elections (failsafe).
    store_out: bool,
    /// The store as last read, for showing the node's status while the store is out of reach.
    last_view: Option<View>,
    /// A leader lease given up whose revocation has not reached the store yet.
    unrevoked: Option<LeaseId>,
    /// When this primary last asked the others for failsafe promises.
    promises_asked: Option<Instant>,
    /// The backups this node streams to replicas being cloned (served by its API).
    backup: Arc<BackupSource>,
    /// Semi-sync is on again after a fall-back: the binary log position a replica must reach
    /// before the store may say "on" ([`replication::semisync_step`]).
    semisync_mark: Option<GtidPos>,
    /// The store says this primary's semi-sync fell back to asynchronous commits.
    semisync_fell_back: bool,
    /// `Rpl_semi_sync_master_no_times` at the last turn as the primary.
    semisync_off_times: Option<u64>,
    /// Whether this agent stops a `mariadbd` an earlier agent left running.
    left_running: LeftRunning,
}

/// What the agent read from the store this turn.
#[derive(Clone, Default)]
struct View {
    leader: Option<(String, u64)>,
    record: Option<PrimaryRecord>,
    reports: Vec<ReplReport>,
    /// The store revision of the leader key holder's report, when it has one.
    leader_report: Option<u64>,
    quarantine: Option<String>,
    reclone: bool,
    switchover: Option<Switchover>,
    /// The operator holds this node stopped.
    held: bool,
    /// The semi-sync word in the store: `Some(false)` once a primary fell back to asynchronous
    /// commits and no replica has been seen to hold them since.
    semisync: Option<bool>,
}

impl ReplAgent {
    /// Checks what can be checked before anything starts, writes `my.cnf`, and starts the loop.
    pub async fn spawn(
        config: Arc<Config>,
        base_dir: &Path,
        name: &str,
        store: Arc<dyn CoordinationStore>,
        left_running: LeftRunning,
    ) -> Result<AgentHandle, AgentError> {
        let NodeSetup {
            node,
            layout,
            secrets,
            bins,
        } = NodeSetup::prepare(&config, base_dir, name, left_running)?;
        let listener = bind_api(name, &node.host, node.api_port).await?;
        let ttl = Duration::from_millis(config.agent.lease_ttl_ms);
        let (lease, renew) = AgentLease::grant(store.clone(), ttl).await?;
        // Whatever can fail comes before the API is served: a failed start leaves no task
        // holding the port.
        let events = store.watch(&keys::repl(&config.cluster.name)).await?;
        let resumed = !layout.datadir_is_empty()?;
        let failsafe = Arc::new(FailsafeSlot::new(ttl));
        let backup = Arc::new(BackupSource::new(name, bins.clone(), layout.clone()));
        let status = Arc::new(Mutex::new(NodeStatus {
            cluster_size: config.nodes.len() as u32,
            ..NodeStatus::starting(name, &node.host, node.sql_port, node.api_port)
        }));
        let api = crate::api::serve(
            listener,
            crate::api::ApiState {
                status: status.clone(),
                store: store.clone(),
                cluster: config.cluster.name.clone(),
                node: name.into(),
                token: secrets.api.clone(),
                backup: Some(backup.clone()),
                failsafe: Some(failsafe.clone()),
            },
        );
        let agent = ReplAgent {
            cluster: config.cluster.name.clone(),
            section: config.replication(),
            probe_interval: Duration::from_millis(config.agent.probe_interval_ms),
            ttl,
            prober: ReplProber::new(name, &layout, &secrets.monitor),
            config,
            node,
            layout,
            secrets,
            bins,
            store,
            lease,
            leader: None,
            epoch: 0,
            status: status.clone(),
            server: None,
            phase: Phase::Waiting,
            phase_since: Instant::now(),
            role: Role::None,
            reason: String::new(),
            failures: 0,
            retry_at: None,
            held: false,
            started: Instant::now(),
            resumed,
            first_own_report: None,
            saw_primary: false,
            vacancy_seen: None,
            after_lapse_of: None,
            stopped_receiving: false,
            vacant_since: None,
            failsafe,
            store_out: false,
            last_view: None,
            unrevoked: None,
            promises_asked: None,
            backup,
            semisync_mark: None,
            semisync_fell_back: false,
            semisync_off_times: None,
            left_running,
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let renewer = tokio::spawn(renew);
            let result = agent.run(stop_rx, events).await;
            renewer.abort();
            result
        });
        Ok(AgentHandle::new(name.into(), status, stop_tx, task, api))
    }

    async fn run(
        mut self,
        mut stop: watch::Receiver<bool>,
        mut events: mpsc::UnboundedReceiver<WatchEvent>,
    ) -> Result<(), AgentError> {
        if self.left_running == LeftRunning::Stop && self.stop_left_running().await {
            // The windows measured from the agent's start (no election within a lease TTL, the
            // restart grace) begin once it can run its node.
            self.started = Instant::now();
            self.phase_since = Instant::now();
        }
        let mut tick = tokio::time::interval(self.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {}
                // A change of leader, switchover or quarantine: act now, not at the next tick.
                Some(event) = events.recv() => {
                    let reports_only = match &event {
                        WatchEvent::Put(kv) => kv.key.starts_with(&keys::repl_members(&self.cluster)),
                        WatchEvent::Delete { key, .. } => key.starts_with(&keys::repl_members(&self.cluster)),
                    };
                    while events.try_recv().is_ok() {}
                    if reports_only && self.leader.is_some() {
                        continue;
                    }
                }
            }
            if *stop.borrow() {
                return self.shutdown().await;
            }
            if let Err(e) = self.step().await {
                warn!(node = %self.node.name, "{e}");
                if !matches!(e, AgentError::Store(_)) {
                    self.fail(e.to_string()).await;
                }
            }
        }
    }

    /// Stops a `mariadbd` that a killed agent of this node left running, so that this agent
    /// starts the server itself; a replica first applies its relay log, which does not survive
    /// the restart (what it received, and may have acknowledged, would be lost). The API
    /// answers meanwhile: a primary that loses the store then keeps its role on this node's
    /// failsafe promise (`vigil chaos` saw a replica apply for 14 s with no API, a store
    /// quorum lost meanwhile, and the primary fenced for want of the promise).
    /// Returns whether there was one.
    async fn stop_left_running(&mut self) -> bool {
        let name = self.node.name.clone();
        let Some(pid) = vigil_mariadb::process::running_pid(&self.layout) else {
            return false;
        };
        {
            let mut s = self.status.lock().expect("status lock");
            s.pid = Some(pid);
            s.reason = format!(
                "stopping mariadbd (pid {pid}), left running by an earlier agent, once it has applied its relay log"
            );
        }
        drain_before_stop(&name, &self.layout).await;
        crate::node::stop_left_running(&name, &self.layout).await;
        self.status.lock().expect("status lock").pid = None;
        true
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

    /// Marks the node failed and schedules a restart after the backoff delay. A primary gives
    /// up its lease at once (after its server is dead), so that a replica can take over
    /// without waiting for it to lapse.
    async fn fail(&mut self, why: String) {
        // The server goes first: with the leader key gone, a replica may take it over at once.
        if let Some(server) = self.server.as_mut() {
            let _ = server.kill().await;
        }
        self.server = None;
        self.give_up_leadership().await;
        self.failures += 1;
        let delay = galera::restart_delay(self.failures);
        self.retry_at = Some(Instant::now() + delay);
        self.role = Role::None;
        self.set_phase(Phase::Failed, format!("{why}; retrying in {} s", delay.as_secs()));
    }

    async fn give_up_leadership(&mut self) {
        self.failsafe.stop_leading();
        if let Some((lease, _)) = self.leader.take() {
            info!(node = %self.node.name, "giving up the leader lease");
            self.unrevoked = Some(lease);
            self.revoke_given_up().await;
        }
        // Promises it asked for would hold the others out of the election for a lease TTL.
        if self
            .promises_asked
            .take()
            .is_some_and(|at| at.elapsed() < self.ttl)
        {
            if let Err(why) = self.failsafe_round(true).await {
                warn!(node = %self.node.name, "cannot release every failsafe promise: {why}");
            }
        }
    }

    /// Revokes a leader lease this node gave up, so that the key goes at once rather than when
    /// the lease lapses: tried again at every turn while the store is out of reach (when it
    /// comes back, etcd may even have extended the lease by a new leader's election).
    async fn revoke_given_up(&mut self) {
        let Some(lease) = self.unrevoked else {
            return;
        };
        match self.store.revoke(lease).await {
            Ok(()) | Err(StoreError::LeaseLost(_)) => self.unrevoked = None,
            Err(e) => {
                warn!(node = %self.node.name, "cannot revoke the leader lease it gave up yet (trying again): {e}")
            }
        }
    }

    /// One turn of observe → decide → act.
    async fn step(&mut self) -> Result<(), AgentError> {
        // Seen in an earlier turn, so before the probe below.
        self.after_lapse_of = self.vacancy_seen;
        // Once per vacancy: the server starts no replication of its own (skip_slave_start).
        if self.server.is_some()
            && !self.stopped_receiving
            && replication::stops_receiving(self.after_lapse_of, self.role)
        {
            let asked = Instant::now();
            let stopped = tokio::time::timeout(
                STOP_RECEIVING_TIMEOUT,
                sql::stop_replica_io(&self.node.name, &self.layout),
            )
            .await;
            match stopped {
                Ok(Ok(())) => {
                    info!(node = %self.node.name, "the leader lease is vacant: stopped receiving in {:.2} s, reporting the position for the election", asked.elapsed().as_secs_f64());
                    self.stopped_receiving = true
                }
                // Still receiving, perhaps: this turn's report must not stand in an election.
                Ok(Err(e)) => {
                    warn!(node = %self.node.name, "cannot stop receiving before reporting: {e}");
                    self.after_lapse_of = None;
                }
                Err(_) => {
                    warn!(node = %self.node.name, "cannot stop receiving before reporting: no answer within {} s", STOP_RECEIVING_TIMEOUT.as_secs());
                    self.after_lapse_of = None;
                }
            }
        }
        // A primary that cannot have renewed its lease in time fences before anything else,
        // also when it wakes from a pause long after the lease lapsed.
        if self.leader.is_some() && self.lease_may_lapse() {
            self.fence("the leader lease could not be renewed in time").await;
        }
        if let Some(exit) = self.server.as_mut().and_then(|s| s.exited()) {
            let why = format!(
                "mariadbd exited unexpectedly ({exit}); see {}",
                self.layout.error_log().display()
            );
            self.fail(why).await;
        }
        let status = match self.server {
            Some(_) => match self.probe().await {
                Ok(s) => Some(s),
                Err(Some(e)) => {
                    if self.phase == Phase::Running {
                        self.reason = format!("not answering queries ({e})");
                    }
                    None
                }
                Err(None) => {
                    self.reason = "the server did not answer the probe in time".into();
                    None
                }
            },
            None => None,
        };
        // A primary already without the store renews with its replicas' promises first.
        if self.store_out {
            if let Some(s) = &status {
                self.keep_without_store(s).await;
            }
        }
        // A primary with the store reads it, and asks for promises too if the store is slow.
        let early = self.leader.is_some() && !self.store_out && status.as_ref().is_some_and(|s| !s.read_only);
        let (viewed, promised, round) = if early {
            let read = self.read_view();
            tokio::pin!(read);
            match tokio::time::timeout(FAILSAFE_EARLY, &mut read).await {
                Ok(viewed) => (viewed, None, None),
                Err(_) => {
                    // Promises count as a renewal sent when they were asked for: the dead-man
                    // switch moves at once, while the store may still answer. A store that
                    // answers first ends the round (promises made are let go of with the role).
                    let asked = Instant::now();
                    let promise = async {
                        let promises = self.failsafe_round(false).await;
                        if promises.is_ok() {
                            if let Err(e) = self.arm_deadman_from(asked, false).await {
                                warn!(node = %self.node.name, "cannot arm the dead-man switch: {e}");
                            }
                        }
                        promises
                    };
                    tokio::pin!(promise);
                    tokio::select! {
                        viewed = &mut read => (viewed, None, Some(asked)),
                        promises = &mut promise => (read.await, Some((asked, promises)), Some(asked)),
                    }
                }
            }
        } else {
            (self.read_view().await, None, None)
        };
        if round.is_some() {
            self.promises_asked = round;
        }
        let mut view = match viewed {
            Ok(view) => {
                if self.store_out {
                    info!(node = %self.node.name, "the store can be read again");
                    self.store_out = false;
                }
                view
            }
            Err(AgentError::Store(e)) => {
                if self.leader.is_some() && !self.store_out {
                    warn!(node = %self.node.name, "the store cannot be read ({e}): keeping the primary role only while every replica promises to stay out of elections");
                    self.store_out = true;
                    match (promised, &status) {
                        (Some((asked, promises)), _) => self.failsafe_kept(asked, promises).await,
                        (None, Some(s)) => self.keep_without_store(s).await,
                        (None, None) => {}
                    }
                }
                let last = self.last_view.clone().unwrap_or_default();
                self.show(status.as_ref(), &last);
                return Err(AgentError::Store(e));
            }
            Err(e) => return Err(e),
        };
        self.last_view = Some(view.clone());
        self.revoke_given_up().await;
        self.note_vacancy(&view);
        self.held = view.held;
        if self.held && self.phase != Phase::Stopped {
            self.stop_server("held by the operator").await?;
        } else if !self.held && self.phase == Phase::Stopped {
            self.set_phase(Phase::Waiting, "released by the operator");
        }

        match self.phase {
            Phase::Failed if self.retry_at.is_some_and(|t| Instant::now() >= t) => {
                self.retry_at = None;
                self.set_phase(Phase::Waiting, "restarting after a failure");
                self.try_start(&view).await?;
            }
            Phase::Waiting => self.try_start(&view).await?,
            Phase::Joining | Phase::Bootstrapping => {
                if status.is_some() {
                    self.set_phase(Phase::Running, "");
                } else if self.phase_since.elapsed() > Duration::from_secs(self.config.agent.start_timeout_s)
                {
                    self.fail("mariadbd did not answer after its start".into()).await;
                }
            }
            Phase::Running if self.phase_since.elapsed() > galera::BACKOFF_RESET => self.failures = 0,
            _ => {}
        }
        let mut status = status;
        if self.phase == Phase::Running {
            if let Some(s) = &status {
                let was = self.role;
                self.run_role(s, &view).await?;
                // A role just taken shows at once, not a probe interval later: the node and the
                // store (leader, record) are read again only then.
                if self.role != was && self.server.is_some() {
                    if let Ok(s) = self.probe().await {
                        status = Some(s);
                    }
                    view = self.read_view().await?;
                    self.note_vacancy(&view);
                }
            } else if self.leader.is_some() {
                self.reason = format!("primary, but {}", self.reason);
            }
        }
        self.publish(status, &view).await
    }

    fn note_vacancy(&mut self, view: &View) {
        self.vacancy_seen = view
            .leader
            .is_none()
            .then(|| replication::lapse_epoch(view.record.as_ref()));
        if replication::primary_served_since_start(view.leader_report, self.first_own_report) {
            self.saw_primary = true;
        }
        if view.leader.is_some() {
            self.vacant_since = None;
        } else if self.vacant_since.is_none() {
            self.vacant_since = Some(SystemTime::now());
        }
    }

    /// While the store cannot be read, a primary renews its hold on the role with the promise
    /// of every other node to stay out of elections for a lease TTL (Patroni's DCS failsafe
    /// mode): counted from when it asked, like a lease renewal, and re-arming the dead-man
    /// switch. If any node does not promise, nothing is renewed and the primary fences itself
    /// before its lease can lapse, as it would without failsafe.
    async fn keep_without_store(&mut self, status: &ReplStatus) {
        if self.leader.is_none() || status.read_only {
            return;
        }
        let asked = Instant::now();
        self.promises_asked = Some(asked);
        let promises = self.failsafe_round(false).await;
        self.failsafe_kept(asked, promises).await;
    }

    /// The outcome of a failsafe round asked at `asked`: every other node promised, which
    /// counts as a renewal of the leader lease sent then, or not.
    async fn failsafe_kept(&mut self, asked: Instant, promises: Result<(), String>) {
        let Some((lease, _)) = self.leader else {
            return;
        };
        match promises {
            Ok(()) => {
                self.leader = Some((lease, asked));
                if let Err(e) = self.arm_deadman(false).await {
                    warn!(node = %self.node.name, "cannot arm the dead-man switch: {e}");
                }
                self.reason.clear();
            }
            Err(why) => {
                self.reason =
                    format!("the store cannot be read and {why}: fencing before the lease can lapse");
            }
        }
    }

    /// `POST /failsafe` to every other node's agent, at once: `Ok` when every one promised
    /// (or, with `release`, let go of its promise).
    async fn failsafe_round(&self, release: bool) -> Result<(), String> {
        let request = replication::FailsafeRequest {
            leader: self.node.name.clone(),
            epoch: self.epoch,
            release,
        };
        let body = serde_json::to_vec(&request).expect("serialises");
        let asks = self
            .config
            .nodes
            .iter()
            .filter(|n| n.name != self.node.name)
            .map(|n| {
                let body = body.clone();
                async move {
                    let answer = crate::peer::request(
                        &n.host,
                        n.api_port,
                        axum::http::Method::POST,
                        "/failsafe",
                        Some(&self.secrets.api),
                        body,
                        FAILSAFE_TIMEOUT,
                    )
                    .await;
                    match answer {
                        Ok((200, _)) => Ok(()),
                        Ok((_, why)) => Err(format!(
                            "{} refused: {}",
                            n.name,
                            String::from_utf8_lossy(&why).trim()
                        )),
                        Err(e) => Err(format!("{} did not answer ({e})", n.name)),
                    }
                }
            });
        let refusals: Vec<String> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        match refusals.is_empty() {
            true => Ok(()),
            false => Err(refusals.join("; ")),
        }
    }

    /// One probe of the node, bounded by [`SQL_TIMEOUT`]: `Err(None)` when it did not answer
    /// in time (the prober drops the abandoned connection itself).
    async fn probe(&mut self) -> Result<ReplStatus, Option<NodeError>> {
        match tokio::time::timeout(SQL_TIMEOUT, self.prober.probe()).await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        }
    }

    async fn read_view(&self) -> Result<View, AgentError> {
        let c = &self.cluster;
        let leader = self
            .store
            .get(&keys::leader(c))
            .await?
            .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision));
        let record = self
            .store
            .get(&keys::primary_record(c))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let mut reports = Vec::new();
        let mut leader_report = None;
        for kv in self.store.list(&keys::repl_members(c)).await? {
            match serde_json::from_slice::<ReplReport>(&kv.value) {
                Ok(r) => {
                    if leader.as_ref().is_some_and(|(name, _)| *name == r.name) {
                        leader_report = Some(kv.mod_revision);
                    }
                    reports.push(r);
                }
                Err(e) => warn!("ignoring a malformed member report at {}: {e}", kv.key),
            }
        }
        let quarantine = self
            .store
            .get(&keys::quarantine(c, &self.node.name))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        let reclone = self
            .store
            .get(&keys::reclone(c, &self.node.name))
            .await?
            .is_some();
        let switchover = self
            .store
            .get(&keys::switchover(c))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let held = self.store.get(&keys::hold(c, &self.node.name)).await?.is_some();
        let semisync = self
            .store
            .get(&keys::semisync(c))
            .await?
            .map(|kv| kv.value != b"off");
        Ok(View {
            leader,
            record,
            reports,
            leader_report,
            quarantine,
            reclone,
            switchover,
            held,
            semisync,
        })
    }

    /// Starts a stopped node: a brand-new cluster's first node initialises its datadir; any
    /// other empty node is cloned from the primary; a node with data starts read-only.
    async fn try_start(&mut self, view: &View) -> Result<(), AgentError> {
        if self.held {
            return Ok(());
        }
        if !self.layout.datadir_is_empty()? {
            self.set_phase(Phase::Joining, "starting read-only");
            self.start_server().await?;
            return Ok(());
        }
        let first = self.config.nodes.first().map(|n| n.name.as_str()) == Some(self.node.name.as_str());
        if first && view.record.is_none() && view.leader.is_none() {
            self.set_phase(Phase::Bootstrapping, "initialising a new primary");
            self.publish(None, view).await?;
            process::init_datadir(&self.bins, &self.layout).await?;
            self.start_server().await?;
            self.wait_socket().await?;
            admin::provision_users(&self.node.name, &self.layout, &self.secrets).await?;
            info!(node = %self.node.name, "created the application, replication and monitoring users");
            return Ok(());
        }
        let Some(source) = self.clone_source(view) else {
            self.reason = "empty datadir: waiting for a primary to clone from".into();
            return Ok(());
        };
        self.clone_from(&source).await
    }

    /// The node to clone from: the primary, when it is healthy.
    fn clone_source(&self, view: &View) -> Option<NodeConfig> {
        let (leader, _) = view.leader.as_ref()?;
        let healthy = view
            .reports
            .iter()
            .any(|r| &r.name == leader && r.role == Role::Primary && r.healthy);
        healthy.then(|| self.config.node(leader).cloned()).flatten()
    }

    /// Copies the source's data with mariabackup into this node's (empty) datadir, starts it
    /// and points it at the primary from the backup's position.
    async fn clone_from(&mut self, source: &NodeConfig) -> Result<(), AgentError> {
        self.set_phase(
            Phase::Joining,
            format!("cloning from {} with mariabackup", source.name),
        );
        let empty = ReplReport {
            name: self.node.name.clone(),
            role: Role::None,
            healthy: false,
            reason: self.reason.clone(),
            status: None,
            epoch: self.epoch,
            empty: true,
            // True now, but not once the clone is done: an election must not rely on it.
            after_lapse_of: None,
        };
        // Best effort: the report says what the node does, and a store that is out of reach
        // (or an agent lease being replaced) must not stop a clone halfway, with the datadir
        // already set aside.
        if let Err(e) = self.put_report(&empty).await {
            warn!(node = %self.node.name, "cannot report the clone: {e}");
        }
        let gtid = backup::fetch(
            &self.bins,
            &self.layout,
            &source.name,
            &source.host,
            source.api_port,
            &self.secrets.api,
        )
        .await?;
        info!(node = %self.node.name, %gtid, "cloned from {}", source.name);
        self.start_server().await?;
        self.wait_socket().await?;
        let name = self.node.name.clone();
        sql::adopt_clone_position(&name, &self.layout, &gtid).await?;
        self.follow(source).await?;
        // A fresh copy of the primary's history: whatever quarantined the old one is gone
        // (also when this clone was a retry from an empty datadir, not the re-clone itself).
        for key in [
            keys::quarantine(&self.cluster, &name),
            keys::reclone(&self.cluster, &name),
        ] {
            if let Err(e) = self.store.delete(&key).await {
                warn!(node = %name, "cannot clear {key} after the clone (it will be re-cloned): {e}");
            }
        }
        Ok(())
    }

    async fn start_server(&mut self) -> Result<(), AgentError> {
        self.server = Some(Server::start(&self.bins, &self.layout, StartMode::Plain).await?);
        Ok(())
    }

    async fn wait_socket(&self) -> Result<(), AgentError> {
        let deadline = Duration::from_secs(self.config.agent.start_timeout_s);
        if !process::wait_for_socket(&self.layout.socket(), deadline).await {
            return Err(NodeError::Timeout(format!(
                "mariadbd did not open {} within {} s; see {}",
                self.layout.socket().display(),
                deadline.as_secs(),
                self.layout.error_log().display()
            ))
            .into());
        }
        Ok(())
    }

    /// Replicates from `source` by GTID.
    async fn follow(&mut self, source: &NodeConfig) -> Result<(), AgentError> {
        let semisync = self.section.durability == Durability::Semisync;
        if semisync {
            // A demoted primary keeps the master side on, and its applier would then wait for
            // an acknowledgement of every replicated transaction that nobody will send.
            sql::set_semisync_primary(&self.node.name, &self.layout, false).await?;
        }
        sql::start_replication(
            &self.node.name,
            &self.layout,
            &source.host,
            source.sql_port,
            &self.secrets.repl,
            semisync,
        )
        .await?;
        self.stopped_receiving = false;
        info!(node = %self.node.name, "replicating from {}", source.name);
        Ok(())
    }

    /// The running node's part: primary, replica, quarantined, or candidate in an election.
    async fn run_role(&mut self, status: &ReplStatus, view: &View) -> Result<(), AgentError> {
        let me = self.node.name.clone();
        match &view.leader {
            Some((leader, epoch)) if *leader == me && self.leader.is_some() => {
                self.epoch = *epoch;
                self.run_primary(status, view).await
            }
            Some((leader, _)) if *leader == me => {
                // The store names this node but it holds no lease: a leftover of an earlier
                // life of this agent. It must not write; the key lapses on its own.
                self.role = Role::None;
                self.ensure_fenced(status).await;
                self.reason = "waiting for a stale leader key to lapse".into();
                Ok(())
            }
            Some((leader, epoch)) => {
                self.epoch = *epoch;
                if self.leader.is_some() {
                    self.fence("another node holds the leader key").await;
                }
                let leader = leader.clone();
                self.run_follower(status, view, &leader).await
            }
            None => {
                if self.leader.is_some() {
                    self.fence("the leader key is gone").await;
                }
                self.ensure_fenced(status).await;
                self.elect(status, view).await
            }
        }
    }

    /// A node that writes without holding the lease is made read-only at once.
    async fn ensure_fenced(&mut self, status: &ReplStatus) {
        if !status.read_only {
            warn!(node = %self.node.name, "writable without the leader lease: fencing");
            self.fence("writable without the leader lease").await;
        }
    }

    /// Makes this node unable to take writes: read_only and client sessions killed, or, if
    /// the server does not answer in time, SIGKILL (a stopped process dies too). Then gives
    /// up the lease.
    async fn fence(&mut self, why: &str) {
        warn!(node = %self.node.name, "fencing: {why}");
        let name = self.node.name.clone();
        let done = tokio::time::timeout(SQL_TIMEOUT, async {
            sql::set_read_only(&name, &self.layout, true).await?;
            sql::kill_client_sessions(&name, &self.layout).await
        })
        .await;
        match done {
            Ok(Ok(killed)) => info!(node = %name, "fenced: read_only, {killed} client sessions killed"),
            _ => {
                warn!(node = %name, "the server did not answer the fence in time: killing it");
                if let Some(server) = self.server.as_mut() {
                    let _ = server.kill().await;
                }
                self.server = None;
                self.failures += 1;
                self.retry_at = Some(Instant::now() + galera::restart_delay(self.failures));
                self.set_phase(Phase::Failed, format!("killed by the fence: {why}"));
            }
        }
        self.role = Role::None;
        self.give_up_leadership().await;
    }

    async fn run_primary(&mut self, status: &ReplStatus, view: &View) -> Result<(), AgentError> {
        let sent = Instant::now();
        let (lease, _) = self.leader.expect("checked by the caller");
        match self.store.keep_alive(lease).await {
            Ok(()) => {}
            Err(StoreError::LeaseLost(_)) => {
                // The store has let the lease go: another node may hold it already.
                self.fence("the store says the leader lease has lapsed").await;
                return Ok(());
            }
            Err(e) => {
                self.reason = format!("cannot renew the leader lease: {e}");
                return Ok(());
            }
        }
        self.leader = Some((lease, sent));
        let name = self.node.name.clone();
        // Only a writable primary acknowledges writes; before it turns writable (a promotion
        // cut short, a server restarted under the lease) semi-sync is switched on below. First
        // of all: a clone blocked on commits also blocks the dead-man switch's update.
        let tended = if self.section.durability == Durability::Semisync && !status.read_only {
            self.tend_semisync(status, view).await
        } else {
            Ok(())
        };
        // A read-only primary is about to turn writable (below): its switch is installed first.
        // Also when the semi-sync step failed (a store lost while it wrote its word): the lease
        // was renewed, and the switch must move on it.
        let armed = match self.arm_deadman(status.read_only).await {
            Ok(()) => true,
            Err(e) => {
                warn!(node = %name, "cannot arm the dead-man switch: {e}");
                false
            }
        };
        tended?;
        if let Some(sw) = &view.switchover {
            if sw.from.is_none() {
                return self.hand_over(status, view, sw.to.clone()).await;
            }
        }
        if status.read_only {
            if !armed {
                self.reason = "the dead-man switch is not armed: staying read-only".into();
                return Ok(());
            }
            // A server restarted under the lease comes back without semi-sync (it is switched
            // on at promotion, not in my.cnf): switch it on before the first write.
            if self.section.durability == Durability::Semisync && !status.semisync_primary {
                self.set_semisync(true).await?;
            }
            sql::set_read_only(&name, &self.layout, false).await?;
            info!(node = %name, epoch = self.epoch, "writable as the primary");
        }
        self.role = Role::Primary;
        self.reason.clear();
        Ok(())
    }

    /// Semi-sync of a writable primary, one [`replication::semisync_step`] per turn: a
    /// fall-back is in the store before the commits it releases are acknowledged, and "on"
    /// only once a replica holds what was committed without it.
    async fn tend_semisync(&mut self, status: &ReplStatus, view: &View) -> Result<(), AgentError> {
        let name = self.node.name.clone();
        let key = keys::semisync(&self.cluster);
        // As read with the view, not again: a store lost since must not hold this turn up
        // before the dead-man switch moves on the lease just renewed (`vigil chaos`: it did,
        // and the switch made the primary read-only under a live lease).
        let recorded = view.semisync;
        self.semisync_fell_back = recorded == Some(false);
        if !status.semisync_primary {
            self.semisync_mark = None;
        }
        let me = format!("{}:{}", self.node.host, self.node.sql_port);
        let replicas: Vec<GtidPos> = view
            .reports
            .iter()
            .filter(|r| r.name != name && r.role == Role::Replica && r.epoch == self.epoch)
            .filter_map(|r| r.status.as_ref())
            .filter(|s| s.replica.as_ref().is_some_and(|r| r.source == me && r.io_running))
            .map(ReplStatus::reach)
            .collect();
        let switched_off_since = self
            .semisync_off_times
            .is_some_and(|seen| status.semisync_off_times > seen);
        self.semisync_off_times = Some(status.semisync_off_times);
        let step = replication::semisync_step(&SemisyncView {
            on: status.semisync_primary,
            clients: status.semisync_clients,
            recorded,
            backup_streaming: self.backup.streaming(),
            switched_off_since,
            mark: self.semisync_mark.as_ref(),
            replicas: &replicas,
        });
        match step {
            SemisyncStep::Keep => {}
            SemisyncStep::FallBack => {
                // In the store first: every commit this releases is acknowledged to its client
                // though no replica holds it, and an election must know that.
                self.store.put(&key, b"off".to_vec(), None).await?;
                self.semisync_fell_back = true;
                self.semisync_mark = None;
                // And only under a lease that cannot have lapsed: an election that read the
                // store before the word went in must not have happened yet.
                if self.lease_may_lapse() {
                    return Ok(());
                }
                self.set_semisync(false).await?;
                warn!(node = %name, "semi-sync fell back to asynchronous commits: no replica is connected and a clone waits for the commits in progress");
            }
            SemisyncStep::RecordOff => {
                warn!(node = %name, "semi-sync fell back to asynchronous commits");
                self.store.put(&key, b"off".to_vec(), None).await?;
                self.semisync_fell_back = true;
                self.semisync_mark = None;
            }
            SemisyncStep::SwitchOn => {
                self.set_semisync(true).await?;
                self.semisync_mark = None;
                info!(node = %name, "a replica is connected: semi-sync is on again");
            }
            SemisyncStep::Mark => {
                // A probe after the one that saw semi-sync on: everything not in this position
                // waited for an acknowledgement.
                if let Ok(now) = self.probe().await {
                    self.semisync_mark = Some(now.gtid_binlog);
                }
            }
            SemisyncStep::RecordOn => {
                self.store.put(&key, b"on".to_vec(), None).await?;
                self.semisync_fell_back = false;
                self.semisync_mark = None;
                info!(node = %name, "a replica holds every commit made without semi-sync: recorded on");
            }
        }
        Ok(())
    }

    /// Whether this primary's leader lease may lapse before it could fence: the next turn
    /// fences it ([`replication::must_fence`]).
    fn lease_may_lapse(&self) -> bool {
        let Some((_, renewed)) = self.leader else {
            return true;
        };
        let margin = replication::fence_margin(self.probe_interval, SQL_TIMEOUT);
        replication::must_fence(Duration::ZERO, renewed.elapsed(), self.ttl, margin)
    }

    /// `rpl_semi_sync_master_enabled`, bounded by [`SQL_TIMEOUT`].
    async fn set_semisync(&self, on: bool) -> Result<(), AgentError> {
        tokio::time::timeout(
            SQL_TIMEOUT,
            sql::set_semisync_primary(&self.node.name, &self.layout, on),
        )
        .await
        .map_err(|_| {
            NodeError::Timeout(format!(
                "{}: switching semi-sync {} timed out",
                self.node.name,
                if on { "on" } else { "off" }
            ))
        })??;
        Ok(())
    }

    /// Planned switchover, the old primary's half: stop writes, say where they stopped, and
    /// give the lease up. The target applies up to that point before it turns writable.
    async fn hand_over(
        &mut self,
        status: &ReplStatus,
        view: &View,
        to: Option<String>,
    ) -> Result<(), AgentError> {
        let name = self.node.name.clone();
        let members = self.members(view, Some(&name), None);
        let target = match choose_target(&members, to.as_deref(), self.section.durability) {
            Ok(t) => t,
            Err(why) => {
                warn!(node = %name, "switchover refused: {why}");
                self.store.delete(&keys::switchover(&self.cluster)).await?;
                self.reason = format!("switchover refused: {why}");
                return Ok(());
            }
        };
        info!(node = %name, "switchover to {target}: stopping writes");
        sql::set_read_only(&name, &self.layout, true).await?;
        let gtid = match self.probe().await {
            Ok(s) => s.gtid_binlog,
            Err(_) => status.gtid_binlog.clone(),
        };
        let sw = Switchover {
            to: Some(target.clone()),
            from: Some(name.clone()),
            gtid: Some(gtid.clone()),
            at_ms: wall_ms(),
        };
        self.store
            .put(
                &keys::switchover(&self.cluster),
                serde_json::to_vec(&sw).expect("serialises"),
                None,
            )
            .await?;
        let killed = sql::kill_client_sessions(&name, &self.layout).await?;
        info!(node = %name, %gtid, "handing over to {target} ({killed} client sessions closed)");
        self.role = Role::None;
        self.give_up_leadership().await;
        Ok(())
    }

    async fn run_follower(
        &mut self,
        status: &ReplStatus,
        view: &View,
        leader: &str,
    ) -> Result<(), AgentError> {
        let name = self.node.name.clone();
        let Some(source) = self.config.node(leader).cloned() else {
            self.reason = format!("the leader {leader} is not in the configuration");
            return Ok(());
        };
        if let Some(why) = &view.quarantine {
            self.role = Role::Quarantined;
            self.reason = why.clone();
            if view.reclone || self.section.auto_reclone {
                return self.reclone(&source).await;
            }
            return Ok(());
        }
        let source_addr = format!("{}:{}", source.host, source.sql_port);
        if let Some(error) = replication::diverged(status) {
            return self
                .quarantine(format!("the primary refuses its history: {error}"))
                .await;
        }
        // Stopped receiving in a vacancy, and this primary is the one it followed: receive again.
        if self.stopped_receiving && replication::follows(status, &source_addr) {
            self.follow(&source).await?;
        }
        let following = replication::follows(status, &source_addr);
        if !following {
            let Some(record) = view.record.as_ref().filter(|r| r.node == leader) else {
                self.reason = format!("waiting for {leader} to complete its promotion");
                return Ok(());
            };
            let primary_id = self.server_id_of(&record.node);
            let primary_now = view
                .reports
                .iter()
                .find(|r| r.name == record.node)
                .and_then(|r| r.status.as_ref())
                .map(|s| s.gtid_current.clone());
            match replication::rejoin_verdict(
                &name,
                &status.gtid_current,
                record,
                primary_id,
                primary_now.as_ref(),
            ) {
                Rejoin::Replicate => self.follow(&source).await?,
                Rejoin::Quarantine(why) => return self.quarantine(why).await,
                Rejoin::Wait(why) => {
                    self.reason = why;
                    return Ok(());
                }
            }
        }
        self.role = Role::Replica;
        self.reason = match replication::replica_health(status, &source_addr, self.section.max_lag_s) {
            Ok(()) => String::new(),
            Err(why) if !following => format!("starting to replicate from {leader}: {why}"),
            Err(why) => why,
        };
        Ok(())
    }

    async fn quarantine(&mut self, why: String) -> Result<(), AgentError> {
        warn!(node = %self.node.name, "quarantined: {why}");
        let name = self.node.name.clone();
        let _ = sql::stop_replication(&name, &self.layout).await;
        self.store
            .put(
                &keys::quarantine(&self.cluster, &name),
                why.clone().into_bytes(),
                None,
            )
            .await?;
        self.role = Role::Quarantined;
        self.reason = why;
        Ok(())
    }

    /// Re-clones a quarantined node from the primary; its datadir is kept aside, never deleted.
    async fn reclone(&mut self, source: &NodeConfig) -> Result<(), AgentError> {
        let name = self.node.name.clone();
        info!(node = %name, "re-cloning from {}", source.name);
        if let Some(server) = self.server.as_mut() {
            server.stop(STOP_TIMEOUT).await?;
        }
        self.server = None;
        let kept = keep_datadir_aside(&self.layout)?;
        warn!(node = %name, "old datadir kept at {}", kept.display());
        self.clone_from(source).await?;
        self.role = Role::Replica;
        Ok(())
    }

    fn server_id_of(&self, node: &str) -> u32 {
        self.config
            .nodes
            .iter()
            .position(|n| n.name == node)
            .map_or(0, |i| i as u32 + 1)
    }

    /// The data nodes as the reports show them. `election`: for an election under that
    /// durability, only the reports that may stand in it ([`ReplReport::counts_in_election`]).
    fn members(&self, view: &View, except: Option<&str>, election: Option<Durability>) -> Vec<Member> {
        self.config
            .nodes
            .iter()
            .filter(|n| Some(n.name.as_str()) != except)
            .map(|n| {
                let any = view.reports.iter().find(|r| r.name == n.name);
                let report =
                    any.filter(|r| election.is_none_or(|d| r.counts_in_election(view.record.as_ref(), d)));
                Member {
                    name: n.name.clone(),
                    status: report.and_then(|r| r.status.clone()),
                    quarantined: report.is_some_and(|r| r.role == Role::Quarantined),
                    held: false,
                    empty: report.is_some_and(|r| r.empty && r.status.is_none()),
                    agent_up: any.is_some(),
                }
            })
            .collect()
    }

    /// Nobody leads: choose, and if this node is the one, take the lease and promote.
    async fn elect(&mut self, status: &ReplStatus, view: &View) -> Result<(), AgentError> {
        let me = self.node.name.clone();
        if view.quarantine.is_some() {
            self.role = Role::Quarantined;
            self.reason = view.quarantine.clone().unwrap_or_default();
            return Ok(());
        }
        let mut members = self.members(view, None, Some(self.section.durability));
        if let Some(m) = members.iter_mut().find(|m| m.name == me) {
            m.status = Some(status.clone());
        }
        let semisync_intact = self
            .store
            .get(&keys::semisync(&self.cluster))
            .await?
            .is_none_or(|kv| kv.value != b"off");
        let history: FailoverHistory = self
            .store
            .get(&keys::failovers(&self.cluster))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
            .unwrap_or_default();
        let now_ms = wall_ms();
        let vacant_since_ms = self.vacant_since.map_or(now_ms, |t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(now_ms, |d| d.as_millis() as u64)
        });
        let bound_to = self.failsafe.bound_to();
        let decision = replication::decide_election(&ElectionContext {
            me: &me,
            members: &members,
            record: view.record.as_ref(),
            durability: self.section.durability,
            semisync_intact,
            switchover: view.switchover.as_ref(),
            history: &history,
            section: &self.section,
            now_ms,
            resumed: self.resumed,
            saw_primary: self.saw_primary,
            since_start: self.started.elapsed(),
            ttl: self.ttl,
            vacant_since_ms,
            failsafe_for: bound_to.as_deref(),
        });
        match decision {
            ElectionDecision::Promote { failover, switchover } => {
                // A promise made since the decision (the API makes them) stops it here; from
                // now on none is made.
                if let Err(leader) = self.failsafe.start_leading() {
                    self.reason = format!(
                        "no primary: {leader} keeps the primary role while the store is out of its reach"
                    );
                    return Ok(());
                }
                let result = self.promote(status, failover, switchover).await;
                if self.leader.is_none() {
                    self.failsafe.stop_leading();
                }
                result
            }
            ElectionDecision::NotMe(why) => {
                self.role = Role::None;
                self.reason = format!("no primary: {why}");
                Ok(())
            }
            ElectionDecision::HeldOff(why) => {
                self.reason = format!("no primary: {why}");
                Ok(())
            }
        }
    }

    async fn promote(
        &mut self,
        status: &ReplStatus,
        failover: Option<FailoverHistory>,
        switchover: Option<Switchover>,
    ) -> Result<(), AgentError> {
        let name = self.node.name.clone();
        let mut took = Stopwatch::start();
        let lease = self.store.grant_lease(self.ttl).await?;
        let sent = Instant::now();
        let epoch = match self
            .store
            .compare_and_swap(
                &keys::leader(&self.cluster),
                0,
                name.clone().into_bytes(),
                Some(lease),
            )
            .await?
        {
            CasOutcome::Swapped(rev) => rev,
            CasOutcome::Conflict(_) => {
                let _ = self.store.revoke(lease).await;
                self.reason = "another node took the leader key first".into();
                return Ok(());
            }
        };
        self.leader = Some((lease, sent));
        self.epoch = epoch;
        info!(node = %name, epoch, "took the leader lease; promoting");
        took.lap("leader key");
        if let Some(h) = failover {
            self.store
                .put(
                    &keys::failovers(&self.cluster),
                    serde_json::to_vec(&h).expect("serialises"),
                    None,
                )
                .await?;
        }
        took.lap("failover history");
        // Apply everything the old primary wrote (switchover) or everything received
        // (failover) before taking writes, renewing the lease meanwhile.
        let mut target = status.reach();
        if status.replica.is_some() {
            if let Some(g) = switchover.as_ref().and_then(|s| s.gtid.clone()) {
                if !self.apply_up_to(&g).await? {
                    return Ok(());
                }
            }
            let _ = sql::stop_replica_io(&name, &self.layout).await;
            took.lap("stop the IO thread");
            if let Ok(s) = self.probe().await {
                target = s.reach();
            }
            if !self.apply_up_to(&target).await? {
                return Ok(());
            }
            took.lap("apply the relay log");
            sql::stop_replication(&name, &self.layout).await?;
            took.lap("stop replication");
        }
        let fork = match self.probe().await {
            Ok(s) => s.gtid_current,
            Err(_) => target,
        };
        let record = PrimaryRecord {
            node: name.clone(),
            epoch,
            fork: fork.clone(),
        };
        self.store
            .put(
                &keys::primary_record(&self.cluster),
                serde_json::to_vec(&record).expect("serialises"),
                None,
            )
            .await?;
        took.lap("primary record");
        // The epoch goes in before semi-sync is on, so that its write waits for no replica (a
        // fenced primary elected again may still have the master side on).
        if self.section.durability == Durability::Semisync {
            sql::set_semisync_primary(&name, &self.layout, false).await?;
        }
        sql::record_epoch(&name, &self.layout, epoch).await?;
        if self.section.durability == Durability::Semisync {
            sql::set_semisync_primary(&name, &self.layout, true).await?;
            // After a fall-back, transactions acknowledged without a replica may be only
            // here: the word stays "off" until a replica holds them (tend_semisync).
            let key = keys::semisync(&self.cluster);
            let fell_back = self.store.get(&key).await?.is_some_and(|kv| kv.value == b"off");
            if !fell_back {
                self.store.put(&key, b"on".to_vec(), None).await?;
            }
            self.semisync_mark = None;
            self.semisync_fell_back = fell_back;
            self.semisync_off_times = None;
        }
        if switchover.is_some() {
            self.store.delete(&keys::switchover(&self.cluster)).await?;
        }
        self.store.delete(&keys::quarantine(&self.cluster, &name)).await?;
        took.lap("epoch and semi-sync");
        // Only now, and only with a lease renewed in time, does the node take writes.
        self.renew_leader().await?;
        self.arm_deadman(true).await?;
        sql::set_read_only(&name, &self.layout, false).await?;
        took.lap("writable");
        self.role = Role::Primary;
        self.reason.clear();
        info!(node = %name, epoch, %fork, "is the primary ({})", took.summary());
        Ok(())
    }

    /// Waits until the relay log is applied up to `target`, renewing the lease meanwhile.
    /// False (and the lease given up) when that fails within a minute.
    async fn apply_up_to(&mut self, target: &GtidPos) -> Result<bool, AgentError> {
        let name = self.node.name.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let applied = self.probe().await.is_ok_and(|s| s.gtid_current.covers(target));
            if applied {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Err(e) = self.renew_leader().await {
                warn!(node = %name, "lost the leader lease while applying the relay log: {e}");
                self.give_up_leadership().await;
                return Ok(false);
            }
            if Instant::now() > deadline {
                warn!(node = %name, %target, "relay log not applied up to {target} within 60 s: giving up the promotion");
                self.give_up_leadership().await;
                return Ok(false);
            }
        }
    }

    /// Arms the server's dead-man switch ([`sql::arm_deadman`]) for the moment this agent
    /// would fence itself after the leader lease's last renewal: if the agent stops (paused,
    /// hung), the server turns read-only by itself before the lease can lapse. `install`: the
    /// node is about to turn writable, and the switch is installed first
    /// ([`sql::install_deadman`]); a writable primary only moves the moment.
    async fn arm_deadman(&self, install: bool) -> Result<(), NodeError> {
        let (_, renewed) = self.leader.expect("only a lease holder arms the dead-man switch");
        self.arm_deadman_from(renewed, install).await
    }

    /// [`ReplAgent::arm_deadman`] for a renewal sent at `renewed`.
    async fn arm_deadman_from(&self, renewed: Instant, install: bool) -> Result<(), NodeError> {
        let margin = replication::fence_margin(self.probe_interval, SQL_TIMEOUT);
        let sent = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(renewed.elapsed());
        let at = replication::deadman_at(sent, self.ttl, margin);
        let (name, layout) = (&self.node.name, &self.layout);
        let arm = async {
            if install {
                sql::install_deadman(name, layout).await?;
            }
            sql::arm_deadman(name, layout, at).await
        };
        tokio::time::timeout(SQL_TIMEOUT, arm).await.map_err(|_| {
            NodeError::Timeout(format!(
                "{}: arming the dead-man switch timed out",
                self.node.name
            ))
        })?
    }

    async fn renew_leader(&mut self) -> Result<(), AgentError> {
        let Some((lease, _)) = self.leader else {
            return Err(vigil_store::StoreError::Unavailable("no leader lease".into()).into());
        };
        let sent = Instant::now();
        self.store.keep_alive(lease).await?;
        self.leader = Some((lease, sent));
        Ok(())
    }

    async fn stop_server(&mut self, why: &str) -> Result<(), AgentError> {
        self.set_phase(Phase::Stopping, why);
        let name = self.node.name.clone();
        if self.leader.is_some() {
            let _ = tokio::time::timeout(SQL_TIMEOUT, sql::set_read_only(&name, &self.layout, true)).await;
        } else if self.server.is_some() {
            drain_before_stop(&name, &self.layout).await;
        }
        if let Some(server) = self.server.as_mut() {
            info!(node = %name, pid = server.pid(), "stopping mariadbd: {why}");
            server.stop(STOP_TIMEOUT).await?;
        }
        self.server = None;
        // Only now: while the key is held, no replica takes over from a server still running.
        self.give_up_leadership().await;
        self.retry_at = None;
        self.role = Role::None;
        self.set_phase(Phase::Stopped, why);
        Ok(())
    }

    async fn put_report(&mut self, report: &ReplReport) -> Result<(), AgentError> {
        let value = serde_json::to_vec(report).expect("reports serialise");
        let revision = self
            .store
            .put(
                &keys::repl_member(&self.cluster, &self.node.name),
                value,
                Some(self.lease.id()),
            )
            .await
            .map_err(|e| self.lease.lost(e))?;
        // Not the revision of a report a view shows: that may be one an earlier agent of
        // this node left behind, from before a crash.
        self.first_own_report.get_or_insert(revision);
        Ok(())
    }

    async fn publish(&mut self, status: Option<ReplStatus>, view: &View) -> Result<(), AgentError> {
        let (healthy, reason) = self.show(status.as_ref(), view);
        // No server and nothing in the datadir: the node holds no write (see Member::empty).
        let empty =
            status.is_none() && self.server.is_none() && self.layout.datadir_is_empty().unwrap_or(false);
        self.put_report(&ReplReport {
            name: self.node.name.clone(),
            role: self.role,
            healthy,
            reason,
            status,
            epoch: self.epoch,
            empty,
            after_lapse_of: self.after_lapse_of,
        })
        .await
    }

    /// Shows the node's state in its status (`GET /status`), also while the store cannot be
    /// read; returns whether it is healthy, and why not.
    fn show(&mut self, status: Option<&ReplStatus>, view: &View) -> (bool, String) {
        let leader_addr = view
            .leader
            .as_ref()
            .and_then(|(l, _)| self.config.node(l))
            .map(|n| format!("{}:{}", n.host, n.sql_port));
        let healthy = match (status, self.role) {
            (Some(s), Role::Primary) => self.leader.is_some() && !s.read_only,
            (Some(s), Role::Replica) => leader_addr
                .as_deref()
                .is_some_and(|a| replication::replica_health(s, a, self.section.max_lag_s).is_ok()),
            _ => false,
        };
        if !healthy && self.reason.is_empty() {
            self.reason = match status {
                None => "mariadbd is not running".into(),
                Some(_) => "not serving".into(),
            };
        }
        let reason = if healthy {
            String::new()
        } else {
            self.reason.clone()
        };
        {
            let mut s = self.status.lock().expect("status lock");
            s.pid = self.server.as_ref().map(Server::pid);
            s.phase = self.phase;
            s.healthy = healthy;
            s.role = self.role.as_str().into();
            s.takes_writes = healthy && self.role == Role::Primary;
            s.reason = reason.clone();
            s.held = self.held;
            s.epoch = self.epoch;
            match status {
                Some(st) => {
                    s.state = match self.role {
                        Role::Primary if self.store_out => "writable (store out of reach: failsafe)".into(),
                        Role::Primary if self.semisync_fell_back && !st.semisync_primary => {
                            "writable (semi-sync fell back: commits are asynchronous)".into()
                        }
                        Role::Primary if self.semisync_fell_back => {
                            "writable (semi-sync on again, recorded once a replica holds the asynchronous commits)"
                                .into()
                        }
                        Role::Primary
                            if self.section.durability == Durability::Semisync
                                && st.semisync_primary
                                && st.semisync_clients == 0 =>
                        {
                            "writable (no replica connected: commits wait for one)".into()
                        }
                        Role::Primary => "writable".into(),
                        Role::Replica if healthy => "streaming".into(),
                        _ => "read-only".into(),
                    };
                    s.gtid = st.gtid_current.to_string();
                    s.read_only = st.read_only;
                    s.lag_seconds = st.replica.as_ref().and_then(|r| r.seconds_behind);
                    s.seqno = st.gtid_current.iter().map(|g| g.seqno as i64).max().unwrap_or(-1);
                    s.cluster_status = view.leader.as_ref().map_or("-".into(), |(l, _)| l.clone());
                }
                None => {
                    s.state = phase_word(self.phase).into();
                    s.read_only = true;
                    s.lag_seconds = None;
                }
            }
        }
        (healthy, reason)
    }

    async fn shutdown(mut self) -> Result<(), AgentError> {
        let result = self.stop_server("stopped").await;
        let empty = View::default();
        let _ = self.publish(None, &empty).await;
        let _ = self.store.revoke(self.lease.id()).await;
        info!(node = %self.node.name, "stopped");
        result
    }
}

/// The switchover target: the one named, if it is a healthy replica, else the most advanced
/// healthy replica.
fn choose_target(members: &[Member], to: Option<&str>, durability: Durability) -> Result<String, String> {
    let e = Election {
        members,
        old_primary: None,
        last_primary: None,
        durability,
        semisync_intact: true,
        switchover_to: to,
    };
    match replication::choose_candidate(&e) {
        Candidate::Promote(n) => Ok(n),
        Candidate::NoPromotion(why) => Err(why),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Waiting => "waiting",
        Phase::Bootstrapping => "initialising",
        Phase::Joining => "starting",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
        Phase::Stopped => "stopped",
        Phase::Failed => "failed",
    }
}

/// Times the steps of a promotion, for its log line: an operator sees where the seconds went.
struct Stopwatch {
    started: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        let now = Instant::now();
        Stopwatch {
            started: now,
            last: now,
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, what: &'static str) {
        let now = Instant::now();
        self.laps.push((what, now - self.last));
        self.last = now;
    }

    /// "promoted in 0.84 s; 0.61 s apply the relay log": the total and the steps that took
    /// more than 100 ms.
    fn summary(&self) -> String {
        let mut out = format!("promoted in {:.2} s", self.started.elapsed().as_secs_f64());
        for (what, d) in self.laps.iter().filter(|(_, d)| *d >= Duration::from_millis(100)) {
            out.push_str(&format!("; {:.2} s {what}", d.as_secs_f64()));
        }
        out
    }
}

/// How long a replica about to stop waits for its relay log to be applied.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Lets a replica apply what it received before its server stops ([`sql::drain_relay_log`]):
/// what it acknowledged would otherwise be discarded when it starts again. Best effort: a
/// server that does not answer is stopped all the same.
async fn drain_before_stop(node: &str, layout: &NodeLayout) {
    match tokio::time::timeout(
        DRAIN_TIMEOUT + SQL_TIMEOUT,
        sql::drain_relay_log(node, layout, DRAIN_TIMEOUT),
    )
    .await
    {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => warn!(
            node,
            "the relay log was not applied within {} s; stopping all the same",
            DRAIN_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) => warn!(node, "cannot apply the relay log before stopping: {e}"),
        Err(_) => warn!(
            node,
            "the server did not answer while applying the relay log; stopping all the same"
        ),
    }
}
