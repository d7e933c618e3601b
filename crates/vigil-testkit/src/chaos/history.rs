//! What a chaos run recorded: every operation the clients sent and what became of it, every
//! fault with its start, end and evidence, what the samplers saw, and what each node held at
//! the end. Plain data: [`super::check`] and [`super::outage`] judge it without touching a
//! cluster, so their unit tests feed them made-up histories.
//!
//! Every moment is a [`Duration`] since the workload started.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::Fault;

/// What the server said to one operation.
pub use crate::hosts::Outcome;

/// One write a client sent through the proxy's write port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// What it wrote: an id inserted, or a counter incremented.
    pub key: u64,
    pub sent: Duration,
    pub done: Duration,
    pub outcome: Outcome,
    /// Which client sent it (per kind of write).
    pub client: u16,
    /// Why it was not acknowledged (the server's error, a broken connection, a timeout).
    pub error: String,
}

/// A read-your-writes probe: an insert acknowledged at `acked`, then read on a new connection
/// to the write port at `read`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBack {
    pub id: u64,
    pub acked: Duration,
    pub read: Duration,
    /// Whether the new connection saw the row; `None` when the read failed (no verdict).
    pub seen: Option<bool>,
}

/// What the read-port client saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPort {
    /// Successful reads of the accounts.
    pub reads: u64,
    /// Reads whose total or account count was wrong: (when, total, accounts).
    pub bad_totals: Vec<(Duration, i64, i64)>,
    /// Ids that a read-port connection had seen and a later read on the same connection did
    /// not: (when, id).
    pub vanished: Vec<(Duration, u64)>,
}

/// What the `read_only` sampler saw (replication only): rounds of two passes over all nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writable {
    pub rounds: u64,
    /// Rounds in which every node answered both passes.
    pub full_rounds: u64,
    /// Rounds in which several nodes were writable in both passes: (when, the nodes).
    pub overlaps: Vec<(Duration, Vec<String>)>,
}

/// How a fault's target was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    pub kind: Fault,
    /// The host it struck (for the store faults, the etcd members' hosts).
    pub hosts: Vec<String>,
    /// It struck the node the proxy routed writes to at the time.
    pub hit_writer: bool,
    /// When it took effect and when it was undone.
    pub start: Duration,
    pub end: Duration,
    /// What showed it took effect (pids gone or stopped, peers unreachable, packets dropped,
    /// the store's health), and that it was undone.
    pub evidence: String,
}

/// A fault that could not be applied (nothing to kill, say): not counted, and its kind is
/// tried again next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: Fault,
    pub at: Duration,
    pub why: String,
}

/// The stamps a row carries: which node wrote it, under which primary epoch (replication) or
/// in which Galera component state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp {
    pub node: String,
    pub epoch: Option<u64>,
    pub component: Option<String>,
}

/// What one node held at the end, once caught up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeData {
    /// Inserted ids with their stamps.
    pub ids: BTreeMap<u64, Stamp>,
    /// Ids of the read-your-writes client.
    pub read_back_ids: BTreeSet<u64>,
    /// Counter id → value.
    pub counters: BTreeMap<u64, i64>,
    pub total: i64,
    pub accounts: i64,
}

/// The end of the run: whether each node came back after the last heal, and what it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ending {
    /// When the last fault was healed.
    pub healed: Duration,
    /// Each node, and why it was not back (healthy in a full cluster) within the heal timeout.
    pub not_back: Vec<(String, String)>,
    /// Each node's data, or why it could not be read.
    pub finals: Vec<(String, Result<NodeData, String>)>,
}

/// One observation of the cluster by the timeline samplers: the proxy's routes, or one agent's
/// status. `None` fields: the status endpoint did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    Proxy {
        at: Duration,
        seen: Option<ProxySeen>,
    },
    Agent {
        at: Duration,
        node: String,
        seen: Option<AgentSeen>,
    },
}

impl Sample {
    pub fn at(&self) -> Duration {
        match self {
            Sample::Proxy { at, .. } | Sample::Agent { at, .. } => *at,
        }
    }
}

/// The proxy's routes as its `/status` showed them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ProxySeen {
    pub writer: Option<String>,
    #[serde(default)]
    pub readers: Vec<String>,
    pub writes_accepted: bool,
    #[serde(default)]
    pub blacklisted: Vec<String>,
}

/// An agent's status as its `/status` showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSeen {
    pub role: String,
    pub healthy: bool,
    pub state: String,
    pub reason: String,
    /// Galera: the size of its component; replication: the number of nodes.
    pub cluster_size: u32,
    /// Galera: the number of its view (every membership change raises it).
    pub view: u64,
}

/// Everything a run recorded.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Replication runs stamp epochs and sample `read_only`; Galera runs stamp components.
    pub replication: bool,
    pub nodes: Vec<String>,
    /// Inserts of unique ids; the key is the id.
    pub inserts: Vec<Write>,
    /// Increments of counters; the key is the counter's id.
    pub increments: Vec<Write>,
    /// Transfers between accounts (the key is unused).
    pub transfers: Vec<Write>,
    pub read_backs: Vec<ReadBack>,
    pub read_port: ReadPort,
    pub writable: Option<Writable>,
    pub faults: Vec<FaultRecord>,
    pub skipped: Vec<Skipped>,
    /// Client and sampler threads that panicked, with their message.
    pub panicked: Vec<String>,
    /// When a client's connection through the proxy could not be opened.
    pub connect_failures: Vec<Duration>,
    pub timeline: Vec<Sample>,
    pub ending: Ending,
    /// When the clients were stopped.
    pub stopped: Duration,
}

impl History {
    /// When each acknowledged write through the write port came back, in order: what a client
    /// sees as the cluster being available for writes.
    pub fn write_acks(&self) -> Vec<Duration> {
        let mut acks: Vec<Duration> = self
            .inserts
            .iter()
            .chain(&self.increments)
            .chain(&self.transfers)
            .filter(|w| w.outcome == Outcome::Ok)
            .map(|w| w.done)
            .collect();
        acks.extend(self.read_backs.iter().map(|r| r.acked));
        acks.sort();
        acks
    }
}
