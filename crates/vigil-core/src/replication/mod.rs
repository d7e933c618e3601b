//! Primary/replica replication decisions: who is primary, when a primary must fence itself,
//! which replica is promoted, whether a returning node may rejoin, and how often failovers
//! may happen.
//!
//! ```text
//!   leader lease (store) + last renewal + now ──► fence_deadline ──► keep | Fence
//!   replica reports + durability + holdoff ────► choose_candidate ─► Promote(node) | NoPromotion(why)
//!   returning node's GTID + promotion record ──► rejoin_verdict ───► Rejoin | Quarantine(why)
//!   failover history + now ────────────────────► failover_allowed_at ► when the next may start
//!   semi-sync state + clone + replicas ────────► semisync_step ────► FallBack | SwitchOn | Record…
//! ```
//!
//! Nothing here reads a clock, a socket or a file; every input is a value.

use serde::{Deserialize, Serialize};

use crate::config::Durability;

mod decide;
mod gtid;
mod semisync;

pub use decide::*;
pub use gtid::{BadGtid, Gtid, GtidPos};
pub use semisync::{semisync_step, SemisyncStep, SemisyncView};

/// What a probe of a running replication node found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplStatus {
    /// `@@global.read_only`.
    pub read_only: bool,
    /// `@@gtid_current_pos`: the last transaction applied or written here, per domain.
    pub gtid_current: GtidPos,
    /// `@@gtid_binlog_pos`: the last transaction in this node's binary log, per domain.
    pub gtid_binlog: GtidPos,
    /// `SHOW SLAVE STATUS`, when the node is configured as a replica.
    pub replica: Option<ReplicaStatus>,
    /// `Rpl_semi_sync_master_status`: the node waits for a replica's acknowledgement.
    pub semisync_primary: bool,
    /// `Rpl_semi_sync_master_clients`: replicas connected with semi-sync.
    #[serde(default)]
    pub semisync_clients: u32,
    /// `Rpl_semi_sync_master_no_times`: how often the server switched semi-sync off.
    #[serde(default)]
    pub semisync_off_times: u64,
}

/// One replication connection (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ReplicaStatus {
    /// `Master_Host:Master_Port`.
    pub source: String,
    /// `Slave_IO_Running = Yes`.
    pub io_running: bool,
    /// `Slave_SQL_Running = Yes`.
    pub sql_running: bool,
    /// `Seconds_Behind_Master`; `None` when it is NULL (a thread is stopped).
    pub seconds_behind: Option<u64>,
    /// `Gtid_IO_Pos`: what has been received into the relay log.
    pub received: GtidPos,
    /// `Last_IO_Error`, else `Last_SQL_Error`; empty when there is none.
    pub last_error: String,
}

impl ReplStatus {
    /// How far this node's history goes, counting what it received but has not applied yet
    /// (a promoted replica applies its relay log first).
    pub fn reach(&self) -> GtidPos {
        match &self.replica {
            Some(r) if r.received.covers(&self.gtid_current) => r.received.clone(),
            _ => self.gtid_current.clone(),
        }
    }
}

/// A node's role in the replication topology, as reported and shown by `vigil status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the leader lease and takes writes.
    Primary,
    /// Replicates from the primary.
    Replica,
    /// Its history holds transactions the primary lacks: no traffic until re-cloned.
    Quarantined,
    /// Starting, stopped, failed, or not yet replicating.
    #[default]
    None,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Quarantined => "quarantined",
            Role::None => "none",
        }
    }
}

/// What an agent publishes about its node in the store (under its lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplReport {
    pub name: String,
    pub role: Role,
    /// Primary: holds the lease and is writable. Replica: streaming from the primary within
    /// the lag limit. The proxy routes only to healthy nodes.
    pub healthy: bool,
    /// Why not healthy, or what the node is doing.
    pub reason: String,
    /// The last probe, while the server answers.
    pub status: Option<ReplStatus>,
    /// The fencing token of the primary this node serves or follows.
    pub epoch: u64,
    /// The node's datadir is empty (a new node, or one whose data was set aside to be
    /// re-cloned, waiting for or receiving its clone): it holds no write at all.
    #[serde(default)]
    pub empty: bool,
    /// The epoch of the last primary record this agent knew when it saw, before the probe in
    /// `status`, that no node held the leader lease (0 before any primary). A primary stops
    /// writing before its lease lapses, so such a status shows everything this node received
    /// from it; an older report may lack writes it acknowledged since. `None` while the agent
    /// sees a leader.
    #[serde(default)]
    pub after_lapse_of: Option<u64>,
}

impl ReplReport {
    /// Whether this report was probed after the leader lease of the primary in `record` (the
    /// last one) lapsed. Only such a report may stand for its node in an election: an earlier
    /// one may lack writes the node acknowledged afterwards.
    pub fn after_lapse(&self, record: Option<&PrimaryRecord>) -> bool {
        self.after_lapse_of == Some(lapse_epoch(record))
    }

    /// Whether this report may stand for its node in an election under `durability`.
    /// Semi-sync promises every acknowledged write, so only a report probed after the last
    /// primary's lapse counts ([`ReplReport::after_lapse`]); asynchronous replication promises
    /// nothing, and the latest report picks the best node.
    pub fn counts_in_election(&self, record: Option<&PrimaryRecord>, durability: Durability) -> bool {
        durability == Durability::Async || self.after_lapse(record)
    }
}

/// Whether a node stops receiving (`STOP SLAVE IO_THREAD`) before the probe of its next
/// report: once it has seen the leader lease vacant (`after_lapse_of`), that report may stand
/// for it in an election, and must stay true. A lapsed primary is not always stopped yet (its
/// fence can hang behind commits that wait for a semi-sync acknowledgement, until the agent
/// kills it a second later); a replica still receiving from it could take, and acknowledge, a
/// transaction after its report was made, which the node elected on that report would lack.
/// (Found by `vigil chaos`: a replica quarantined for a transaction the new primary lacked.)
/// The node starts receiving again when it follows the next primary.
pub fn stops_receiving(after_lapse_of: Option<u64>, role: Role) -> bool {
    after_lapse_of.is_some() && role != Role::Primary
}

/// Whether the cluster was running after this agent started, so that a later vacancy is a
/// failover and not a restart of the whole cluster ([`ElectionContext::saw_primary`]): the
/// leader key's holder published a report (`holder_report`, its store revision) after this
/// agent's first one (`first_own_report`, the revision its own write returned: a report of
/// this node read from the store may be an earlier agent's). A leader key and its holder's
/// report left over from before a crash of the whole cluster linger up to a lease TTL (longer
/// when etcd elects a new leader, which extends every lease) and do not count.
pub fn primary_served_since_start(holder_report: Option<u64>, first_own_report: Option<u64>) -> bool {
    matches!((holder_report, first_own_report), (Some(h), Some(first)) if h > first)
}

/// What [`ReplReport::after_lapse_of`] says when the agent sees no leader and `record` is the
/// last primary's: its epoch, or 0 before any primary.
pub fn lapse_epoch(record: Option<&PrimaryRecord>) -> u64 {
    record.map_or(0, |r| r.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_report_written_after_this_agent_started_shows_a_running_cluster() {
        // The holder's agent reported after this agent's first report: it was alive.
        assert!(primary_served_since_start(Some(120), Some(100)));
        // A report (with its leader key) left from before a crash of the whole cluster.
        assert!(!primary_served_since_start(Some(90), Some(100)));
        // This agent has not seen its own report yet, or the holder has none.
        assert!(!primary_served_since_start(Some(120), None));
        assert!(!primary_served_since_start(None, Some(100)));
    }
}
