//! Galera decisions: is a node healthy, how should a stopped node start, which node writes,
//! in which order does a cluster stop.
//!
//! ```text
//!   member reports (store) ─┐
//!   local disk state ───────┼──► decide_start ──► BootstrapNew | Bootstrap | Join | Wait(why)
//!   config node order ──────┘
//!   live wsrep status ─────────► health ────────► Healthy | Unhealthy(why)
//!   healthy members + writer ──► choose_writer ─► keep, or the first healthy node in order
//! ```
//!
//! Nothing here reads a clock, a socket or a file; every input is a value.

use serde::{Deserialize, Serialize};

mod restart;
mod start;

pub use restart::{restart_delay, BACKOFF_RESET};
pub use start::{decide_start, Position, StartDecision, StartView, Transfer};

/// `wsrep_local_state` values, as the server reports them.
pub mod local_state {
    pub const JOINING: u8 = 1;
    pub const DONOR_DESYNCED: u8 = 2;
    pub const JOINED: u8 = 3;
    pub const SYNCED: u8 = 4;
}

/// What a probe of a running node's `wsrep_*` status and variables found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WsrepStatus {
    pub local_state: u8,
    /// `wsrep_local_state_comment`: Synced, Donor/Desynced, Joining, Joined, Initialized...
    pub local_state_comment: String,
    /// `wsrep_cluster_status`: Primary, non-Primary or Disconnected.
    pub cluster_status: String,
    pub cluster_size: u32,
    pub last_committed: i64,
    pub cluster_state_uuid: String,
    pub ready: bool,
    pub connected: bool,
    pub read_only: bool,
    /// `wsrep_incoming_addresses`: the client address of every member of this node's view.
    #[serde(default)]
    pub incoming_addresses: Vec<String>,
}

impl WsrepStatus {
    pub fn is_primary(&self) -> bool {
        self.cluster_status == "Primary"
    }

    pub fn is_synced(&self) -> bool {
        self.local_state == local_state::SYNCED
    }
}

/// The Galera state a stopped node left on disk (`grastate.dat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub uuid: String,
    /// -1 when the node did not stop cleanly (the position must then be recovered).
    pub seqno: i64,
    pub safe_to_bootstrap: bool,
}

/// What a node's data directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DiskState {
    /// No datadir, or an empty one: the node has never held data.
    Empty,
    /// A datadir exists. `saved` is its position: `grastate.dat`, or what `--wsrep-recover`
    /// found when that says `seqno: -1`; `None` while unknown. `sst_interrupted`: a state
    /// transfer into it did not finish, so its contents are not a usable position.
    Data {
        saved: Option<SavedState>,
        #[serde(default)]
        sst_interrupted: bool,
    },
}

impl DiskState {
    pub fn saved(&self) -> Option<&SavedState> {
        match self {
            DiskState::Data { saved, .. } => saved.as_ref(),
            DiskState::Empty => None,
        }
    }
}

/// What an agent is doing with its node, as published to the other agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started yet: deciding, or waiting for another node.
    Waiting,
    /// Starting a new Primary component from this node's data.
    Bootstrapping,
    /// Started and joining the Primary component (state transfer).
    Joining,
    /// Running and in the cluster.
    Running,
    Stopping,
    Stopped,
    /// The node could not be started or exited unexpectedly.
    Failed,
}

/// One member's latest report, as read from the coordination store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    pub name: String,
    pub phase: Phase,
    pub disk: DiskState,
    /// The last probe of the running node; `None` while it is not running or not answering.
    pub status: Option<WsrepStatus>,
}

impl MemberReport {
    pub(crate) fn in_primary(&self) -> bool {
        self.status.as_ref().is_some_and(WsrepStatus::is_primary)
    }

    pub(crate) fn synced_in_primary(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.is_primary() && s.is_synced())
    }
}

/// Whether a running node may receive client traffic, with clustercheck's meaning: Synced, in a
/// Primary component, ready for queries. The reason says what is missing.
pub fn health(status: &WsrepStatus) -> Result<(), String> {
    if !status.connected {
        return Err("not connected to a cluster".into());
    }
    if !status.is_primary() {
        return Err(format!(
            "not in a Primary component (cluster status {})",
            status.cluster_status
        ));
    }
    if !status.is_synced() {
        return Err(format!(
            "{} (wsrep_local_state {}), not Synced",
            status.local_state_comment, status.local_state
        ));
    }
    if !status.ready {
        return Err("wsrep_ready is OFF: not accepting queries".into());
    }
    Ok(())
}

/// The single writer: the current one while it stays healthy, else the first healthy node in
/// configuration order. `healthy` lists the healthy nodes' names.
pub fn choose_writer(current: Option<&str>, healthy: &[&str], order: &[String]) -> Option<String> {
    if let Some(current) = current.filter(|c| healthy.contains(c)) {
        return Some(current.to_string());
    }
    order.iter().find(|n| healthy.contains(&n.as_str())).cloned()
}

/// The position to record in the store after a probe of the writer, if it raises the record:
/// a new cluster history (UUID), or a later seqno of the same one. The record never goes down.
pub fn raised_record(recorded: Option<&start::Position>, status: &WsrepStatus) -> Option<start::Position> {
    let raises = match recorded {
        Some(r) => r.uuid != status.cluster_state_uuid || status.last_committed > r.seqno,
        None => true,
    };
    (raises && status.last_committed >= 0 && !status.cluster_state_uuid.is_empty()).then(|| start::Position {
        uuid: status.cluster_state_uuid.clone(),
        seqno: status.last_committed,
    })
}

/// The order in which to stop a running cluster, one node at a time: readers last to first, the
/// writer last, so that it keeps serving and Galera marks it — exactly one node — safe to
/// bootstrap.
pub fn stop_order(order: &[String], writer: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = order
        .iter()
        .rev()
        .filter(|n| Some(n.as_str()) != writer)
        .cloned()
        .collect();
    if let Some(w) = writer.filter(|w| order.iter().any(|n| n == w)) {
        out.push(w.to_string());
    }
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn order() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    /// A Synced member of a 3-node Primary component of cluster "u", listing one address.
    pub fn synced(seqno: i64) -> WsrepStatus {
        WsrepStatus {
            local_state: local_state::SYNCED,
            local_state_comment: "Synced".into(),
            cluster_status: "Primary".into(),
            cluster_size: 3,
            last_committed: seqno,
            cluster_state_uuid: "u".into(),
            ready: true,
            connected: true,
            read_only: false,
            incoming_addresses: vec!["127.0.0.1:1".into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{order, synced};
    use super::*;

    #[test]
    fn health_has_clustercheck_semantics() {
        assert_eq!(health(&synced(1)), Ok(()));
        let mut s = synced(1);
        s.local_state = local_state::DONOR_DESYNCED;
        s.local_state_comment = "Donor/Desynced".into();
        assert_eq!(
            health(&s),
            Err("Donor/Desynced (wsrep_local_state 2), not Synced".into())
        );
        let mut s = synced(1);
        s.cluster_status = "non-Primary".into();
        assert_eq!(
            health(&s),
            Err("not in a Primary component (cluster status non-Primary)".into())
        );
        let mut s = synced(1);
        s.ready = false;
        assert!(health(&s).is_err());
        let mut s = synced(1);
        s.connected = false;
        assert!(health(&s).is_err());
    }

    #[test]
    fn writer_is_sticky_while_healthy() {
        let o = order();
        assert_eq!(choose_writer(Some("n2"), &["n1", "n2"], &o), Some("n2".into()));
        assert_eq!(choose_writer(Some("n2"), &["n1", "n3"], &o), Some("n1".into()));
        assert_eq!(choose_writer(None, &["n3"], &o), Some("n3".into()));
        assert_eq!(choose_writer(Some("n1"), &[], &o), None);
    }

    #[test]
    fn the_record_only_rises() {
        let at = |seqno| Position {
            uuid: "u".into(),
            seqno,
        };
        assert_eq!(raised_record(None, &synced(5)), Some(at(5)));
        assert_eq!(raised_record(Some(&at(4)), &synced(5)), Some(at(5)));
        assert_eq!(raised_record(Some(&at(5)), &synced(5)), None);
        assert_eq!(
            raised_record(Some(&at(9)), &synced(5)),
            None,
            "a lagging probe never lowers it"
        );
        let other = Position {
            uuid: "old".into(),
            seqno: 900,
        };
        assert_eq!(
            raised_record(Some(&other), &synced(5)),
            Some(at(5)),
            "a new cluster history replaces it"
        );
        assert_eq!(raised_record(None, &synced(-1)), None);
    }

    #[test]
    fn writer_stops_last() {
        assert_eq!(stop_order(&order(), Some("n1")), vec!["n3", "n2", "n1"]);
        assert_eq!(stop_order(&order(), Some("n2")), vec!["n3", "n1", "n2"]);
        assert_eq!(stop_order(&order(), None), vec!["n3", "n2", "n1"]);
    }
}
