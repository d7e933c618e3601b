//! The arbitrator's agent: supervises `garbd`, which votes in the Galera group but holds no
//! data, so that two data nodes keep a majority when either one is lost.
//!
//! `garbd` cannot start a group, only join one: the agent starts it once a data node reports
//! a Primary component, and restarts it with backoff when it exits.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};
use vigil_core::config::{ArbitratorConfig, Config};
use vigil_core::galera::{self, MemberReport, Phase};
use vigil_mariadb::process::{self, Server};
use vigil_store::CoordinationStore;

use crate::node::{AgentError, AgentHandle, STOP_TIMEOUT};
use crate::{keys, NodeStatus};

/// Starts the arbitrator's agent.
pub async fn spawn(
    config: Arc<Config>,
    base_dir: &Path,
    store: Arc<dyn CoordinationStore>,
) -> Result<AgentHandle, AgentError> {
    let arb = config
        .arbitrator
        .clone()
        .ok_or_else(|| AgentError::UnknownNode("arbitrator".into()))?;
    let garbd = process::find_garbd(&config.mariadb)?;
    let secrets = vigil_mariadb::secrets::Secrets::load(&base_dir.join(&config.cluster.secrets_dir))?;
    let listener = crate::node::bind_api(&arb.name, &arb.host, arb.api_port).await?;
    let status = Arc::new(Mutex::new(NodeStatus {
        role: "arbitrator".into(),
        reason: "arbitrator: takes no client traffic".into(),
        ..NodeStatus::starting(&arb.name, &arb.host, 0, arb.api_port)
    }));
    let api = crate::api::serve(
        listener,
        crate::api::ApiState {
            status: status.clone(),
            store: store.clone(),
            cluster: config.cluster.name.clone(),
            node: arb.name.clone(),
            token: secrets.api,
            backup: None,
            failsafe: None,
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let dir = base_dir.join(arb.dir_name());
    let interval = Duration::from_millis(config.agent.probe_interval_ms);
    let task = {
        let status = status.clone();
        tokio::spawn(async move { run(config, arb, dir, garbd, store, status, interval, stop_rx).await })
    };
    let name = status.lock().expect("status").name.clone();
    Ok(AgentHandle::new(name, status, stop_tx, task, api))
}

#[allow(clippy::too_many_arguments)]
async fn run(
    config: Arc<Config>,
    arb: ArbitratorConfig,
    dir: std::path::PathBuf,
    garbd: std::path::PathBuf,
    store: Arc<dyn CoordinationStore>,
    status: crate::api::SharedStatus,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut server: Option<Server> = None;
    let (mut failures, mut retry_at) = (0u32, Instant::now());
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            if let Some(s) = server.as_mut() {
                info!(node = %arb.name, "stopping garbd");
                s.stop(STOP_TIMEOUT).await?;
            }
            let mut st = status.lock().expect("status");
            (st.pid, st.phase, st.state) = (None, Phase::Stopped, "stopped".into());
            return Ok(());
        }
        if let Some(exit) = server.as_mut().and_then(Server::exited) {
            failures += 1;
            let delay = galera::restart_delay(failures);
            retry_at = Instant::now() + delay;
            warn!(node = %arb.name, "garbd exited ({exit}); restarting in {} s", delay.as_secs());
            server = None;
        }
        let primary = match store.list(&keys::members(&config.cluster.name)).await {
            Ok(kvs) => kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice::<MemberReport>(&kv.value).ok())
                .find(|m| m.status.as_ref().is_some_and(|s| s.is_primary())),
            Err(_) => None,
        };
        if server.is_none() && Instant::now() >= retry_at {
            if let Some(m) = &primary {
                info!(node = %arb.name, "joining the Primary component (through {})", m.name);
                let peers = config.galera_peers();
                let listen = format!("{}:{}", arb.host, arb.galera_port);
                server = Some(Server::start_garbd(
                    &garbd,
                    &dir,
                    &arb.name,
                    &config.cluster.name,
                    &peers,
                    &listen,
                    config.mariadb.galera_suspect_timeout_ms,
                )?);
            }
        }
        let mut st = status.lock().expect("status");
        st.pid = server.as_ref().map(Server::pid);
        (st.phase, st.state, st.cluster_status, st.cluster_size) = match (&server, &primary) {
            (Some(_), Some(m)) => {
                let size = m.status.as_ref().map_or(0, |s| s.cluster_size);
                (Phase::Running, "arbitrating".into(), "Primary".into(), size)
            }
            (Some(_), None) => (Phase::Running, "arbitrating".into(), "-".into(), 0),
            (None, _) => (
                Phase::Waiting,
                "waiting for a Primary component".into(),
                "-".into(),
                0,
            ),
        };
    }
}
