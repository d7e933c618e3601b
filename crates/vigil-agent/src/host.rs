//! `vigil agent`: one node's agent on its own host, coordinating with the other hosts' agents
//! through etcd. This is how a real cluster runs (`vigil up` is the one-machine shortcut).
//!
//! Every host has the same configuration file and the same secrets directory; the agent picks
//! its node by `--node`, or by the host's name, or by the one configured address this host
//! holds. The node's directory and the secrets are under the data directory.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use vigil_core::config::{Config, Topology};

use crate::local::{open_store, UpError};
use crate::node::LeftRunning;
use crate::replication::ReplAgent;
use crate::{Agent, AgentError, AgentHandle};

/// The node (or arbitrator) this host runs: `wanted` if given, else the configured name equal
/// to `hostname`, else the only configured member whose address this host can bind.
pub fn choose_member(config: &Config, wanted: Option<&str>, hostname: &str) -> Result<String, UpError> {
    let mut members: Vec<(&str, &str)> = config
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.host.as_str()))
        .collect();
    if let Some(arb) = &config.arbitrator {
        members.push((arb.name.as_str(), arb.host.as_str()));
    }
    let names = || members.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
    if let Some(wanted) = wanted {
        return match members.iter().find(|(n, _)| *n == wanted) {
            Some((n, _)) => Ok(n.to_string()),
            None => Err(UpError::Options(format!(
                "--node {wanted} is not in the configuration (its members are {})",
                names()
            ))),
        };
    }
    if let Some((n, _)) = members.iter().find(|(n, _)| *n == hostname) {
        return Ok(n.to_string());
    }
    let local: Vec<&str> = members
        .iter()
        .filter(|(_, host)| !is_loopback(host) && std::net::TcpListener::bind((*host, 0)).is_ok())
        .map(|(n, _)| *n)
        .collect();
    match local.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(UpError::Options(format!(
            "no member is named {hostname:?} or has an address of this host; say which with --node (members: {})",
            names()
        ))),
        many => Err(UpError::Options(format!(
            "members {} all have addresses of this host; say which with --node",
            many.join(", ")
        ))),
    }
}

/// How long an agent that cannot reach its store at start waits before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Opens the store and starts the agent of `name` (or the arbitrator's).
async fn start(config: &Arc<Config>, dir: &Path, name: &str) -> Result<AgentHandle, UpError> {
    let store = open_store(config).await?;
    let is_arbitrator = config.arbitrator.as_ref().is_some_and(|a| a.name == name);
    Ok(if is_arbitrator {
        crate::arbitrator::spawn(config.clone(), dir, store).await?
    } else {
        match config.cluster.topology {
            Topology::Galera => Agent::spawn(config.clone(), dir, name, store).await?,
            Topology::Replication => {
                ReplAgent::spawn(config.clone(), dir, name, store, LeftRunning::Stop).await?
            }
        }
    })
}

fn is_loopback(host: &str) -> bool {
    host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "localhost"
}

/// Runs `name`'s agent until `shutdown` completes, then stops its node cleanly. Returns an
/// error at once if the agent cannot start, or if it stops on its own.
pub async fn run(
    config: Config,
    dir: &Path,
    name: &str,
    shutdown: impl Future<Output = ()>,
    on_started: impl FnOnce(&str),
) -> Result<(), UpError> {
    if config.store.is_none() {
        return Err(UpError::Options(
            "the configuration has no [store] section: agents on separate hosts coordinate through etcd (store.endpoints)"
                .into(),
        ));
    }
    // A killed agent leaves its mariadbd running; stop it cleanly so that this agent starts
    // the node itself (Galera then rejoins it by IST). A replication agent does that itself
    // once its API answers ([`crate::replication`]): a replica first applies its relay log,
    // which can take many seconds, and a primary that loses the store meanwhile needs its
    // failsafe promise.
    if let Some(node) = config.node(name) {
        // the API port is the agent's own: if it is taken, another agent of this node runs
        if std::net::TcpListener::bind((node.host.as_str(), node.api_port)).is_err() {
            return Err(UpError::PortInUse {
                node: name.into(),
                key: "api_port",
                host: node.host.clone(),
                port: node.api_port,
            });
        }
        let layout = vigil_mariadb::NodeLayout::new(crate::node::node_dir(dir, node));
        if config.cluster.topology == Topology::Galera {
            crate::node::stop_left_running(name, &layout).await;
        }
    }
    let config = Arc::new(config);
    tokio::pin!(shutdown);
    // The store may not answer yet (its member on this host restarting with it, no quorum):
    // an agent waits for it, as a service manager would restart it, rather than exit.
    let agent: AgentHandle = loop {
        match start(&config, dir, name).await {
            Ok(agent) => break agent,
            Err(UpError::Agent(AgentError::Store(e))) => {
                warn!(
                    "cannot start the agent of {name} yet, trying again in {} s: {e}",
                    STORE_RETRY.as_secs()
                );
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(STORE_RETRY) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let status = agent.status();
    on_started(&format!("{}:{}", status.host, status.api_port));

    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        if agent.is_finished() {
            warn!("the agent of {name} stopped on its own");
            agent.stop().await?;
            return Err(UpError::Options(format!(
                "the agent of {name} stopped on its own"
            )));
        }
    }
    info!("shutting down: stopping {name}");
    agent.stop().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_member_is_the_one_named_or_the_hostname() {
        let mut config = Config::local(3, 23300, Topology::Galera);
        config.nodes[1].name = "db2".into();
        assert_eq!(choose_member(&config, Some("db2"), "x").unwrap(), "db2");
        assert_eq!(choose_member(&config, None, "db2").unwrap(), "db2");
        let e = choose_member(&config, Some("nope"), "x").unwrap_err().to_string();
        assert!(e.contains("--node nope is not in the configuration"), "{e}");
        // loopback addresses say nothing about which host this is
        let e = choose_member(&config, None, "elsewhere").unwrap_err().to_string();
        assert!(e.contains("say which with --node"), "{e}");
    }
}
