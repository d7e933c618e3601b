//! What an agent reports about its node through `GET /status` and `vigil status`.

use serde::{Deserialize, Serialize};
use vigil_core::galera::Phase;

/// One node as the operator sees it. Field names are the `vigil status --json` contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// The address the node's SQL and API ports are on.
    #[serde(default = "loopback")]
    pub host: String,
    pub sql_port: u16,
    pub api_port: u16,
    pub pid: Option<u32>,
    /// What the agent is doing: waiting, bootstrapping, joining, running, stopping, stopped, failed.
    pub phase: Phase,
    /// Galera's `wsrep_local_state_comment` (Synced, Donor/Desynced, Joining...), or the phase
    /// while the server does not answer.
    pub state: String,
    pub cluster_status: String,
    pub cluster_size: u32,
    /// `wsrep_last_committed`, or the saved seqno while stopped; -1 if unknown.
    pub seqno: i64,
    pub cluster_uuid: String,
    /// Galera: writer, reader or none. Replication: primary, replica, quarantined or none.
    pub role: String,
    pub healthy: bool,
    /// Why the node is not healthy, or what it is waiting for; empty when healthy.
    pub reason: String,
    /// The cluster's last committed seqno as recorded in the store while it ran; -1 if none.
    #[serde(default = "minus_one")]
    pub recorded_seqno: i64,
    /// Held stopped by the operator (`vigil node hold`).
    #[serde(default)]
    pub held: bool,
    /// Replication topology: `@@gtid_current_pos` (empty while unknown).
    #[serde(default)]
    pub gtid: String,
    /// Replication topology: `Seconds_Behind_Master` of a replica; `None` on the primary or
    /// while unknown.
    #[serde(default)]
    pub lag_seconds: Option<u64>,
    /// `@@global.read_only` as last probed (true while unknown).
    #[serde(default)]
    pub read_only: bool,
    /// Replication topology: the fencing token of the primary this node serves or follows.
    #[serde(default)]
    pub epoch: u64,
    /// This node takes the cluster's writes now: the Galera writer fit to keep the role, or
    /// the primary holding its lease (or, while the store is out of reach, the acknowledgement
    /// of every replica). A proxy that cannot read the store keeps writing to a writer that
    /// says so.
    #[serde(default)]
    pub takes_writes: bool,
    /// Galera: the number of the node's current view (`wsrep_cluster_conf_id`), which every
    /// membership change raises; 0 while unknown.
    #[serde(default)]
    pub view: u64,
}

fn loopback() -> String {
    "127.0.0.1".into()
}

fn minus_one() -> i64 {
    -1
}

impl NodeStatus {
    /// A node whose agent has just started and knows nothing yet.
    pub fn starting(name: &str, host: &str, sql_port: u16, api_port: u16) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            host: host.into(),
            sql_port,
            api_port,
            pid: None,
            phase: Phase::Waiting,
            state: "waiting".into(),
            cluster_status: "-".into(),
            cluster_size: 0,
            seqno: -1,
            cluster_uuid: String::new(),
            role: "none".into(),
            healthy: false,
            reason: "starting".into(),
            recorded_seqno: -1,
            held: false,
            gtid: String::new(),
            lag_seconds: None,
            read_only: true,
            epoch: 0,
            takes_writes: false,
            view: 0,
        }
    }
}
