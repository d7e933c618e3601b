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
    /// A datadir exists; `saved` is its `grastate.dat`, if there is one.
    Data { saved: Option<SavedState> },
}

impl DiskState {
    pub fn saved(&self) -> Option<&SavedState> {
        match self {
            DiskState::Data { saved } => saved.as_ref(),
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
    fn in_primary(&self) -> bool {
        self.status.as_ref().is_some_and(WsrepStatus::is_primary)
    }

    fn synced_in_primary(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.is_primary() && s.is_synced())
    }
}

/// How a stopped node should start, decided from everything its agent can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// Initialise the empty datadir and start a brand-new cluster on it.
    BootstrapNew,
    /// Start a new Primary component from this node's existing data (`--wsrep-new-cluster`).
    Bootstrap,
    /// Start and join the running Primary component; `donor` is the synced member to ask for
    /// the state transfer (Galera falls back to any other if it cannot serve). `transfer` is
    /// what the join is expected to need.
    Join { donor: String, transfer: Transfer },
    /// Do nothing yet, for the reason given (shown to the operator).
    Wait(String),
}

/// The state transfer a joining node is expected to need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The node stopped cleanly with the cluster's UUID: the donor's write-set cache (IST)
    /// can bring it up to date. Galera falls back to a snapshot if the cache no longer reaches.
    Incremental,
    /// A full copy of the donor's data (SST): heavy, one at a time.
    Snapshot,
}

/// What [`decide_start`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct StartView<'a> {
    pub me: &'a str,
    /// All data nodes, in configuration (bootstrap) order.
    pub order: &'a [String],
    pub my_disk: &'a DiskState,
    /// The latest reports of the other members; a member without a report is unknown.
    pub others: &'a [MemberReport],
    /// The node taking writes, which should not be made a donor while another can serve.
    pub writer: Option<&'a str>,
}

/// Decides how a stopped node starts.
///
/// Safety first: a new Primary component is only started when no member is in one (rule 1),
/// a brand-new cluster only when every member has reported an empty disk, and existing data
/// only from the node Galera itself marked safe to bootstrap.
pub fn decide_start(view: StartView<'_>) -> StartDecision {
    let others = view.others;
    if others.iter().any(MemberReport::in_primary) {
        let cluster_uuid = others
            .iter()
            .filter(|m| m.in_primary())
            .find_map(|m| m.status.as_ref().map(|s| s.cluster_state_uuid.as_str()));
        let transfer = match view.my_disk.saved() {
            Some(saved) if saved.seqno >= 0 && Some(saved.uuid.as_str()) == cluster_uuid => {
                Transfer::Incremental
            }
            _ => Transfer::Snapshot,
        };
        // One joiner at a time, IST included: two nodes connecting at once race in Galera's view
        // formation ("No nodes coming from primary view") and one of them retries seconds later.
        if let Some(joiner) = others.iter().find(|m| m.phase == Phase::Joining) {
            return StartDecision::Wait(format!("waiting for {} to finish joining", joiner.name));
        }
        // A donor is desynced for the transfer: spare the writer when another member can serve.
        let donors = || others.iter().filter(|m| m.synced_in_primary());
        let donor = donors()
            .find(|m| Some(m.name.as_str()) != view.writer)
            .or_else(|| donors().next());
        return match donor {
            Some(donor) => StartDecision::Join {
                donor: donor.name.clone(),
                transfer,
            },
            None => StartDecision::Wait("waiting for a synced member of the Primary component".into()),
        };
    }
    if let Some(starter) = others.iter().find(|m| m.phase == Phase::Bootstrapping) {
        return StartDecision::Wait(format!("waiting for {} to start the cluster", starter.name));
    }

    let unreported: Vec<&str> = view
        .order
        .iter()
        .map(String::as_str)
        .filter(|n| *n != view.me && !others.iter().any(|m| m.name == *n))
        .collect();
    let with_data: Vec<&MemberReport> = others.iter().filter(|m| m.disk != DiskState::Empty).collect();

    if *view.my_disk == DiskState::Empty && with_data.is_empty() {
        if !unreported.is_empty() {
            return StartDecision::Wait(format!(
                "waiting for {} to report: a new cluster starts only when every member is known to be empty",
                unreported.join(", ")
            ));
        }
        return if view.order.first().map(String::as_str) == Some(view.me) {
            StartDecision::BootstrapNew
        } else {
            StartDecision::Wait(format!(
                "waiting for {} to bootstrap the new cluster",
                view.order.first().map(String::as_str).unwrap_or("the first node")
            ))
        };
    }

    // Existing data and no Primary component: start from the node Galera marked safe.
    let mut safe: Vec<(&str, &SavedState)> = others
        .iter()
        .filter_map(|m| m.disk.saved().map(|s| (m.name.as_str(), s)))
        .chain(view.my_disk.saved().map(|s| (view.me, s)))
        .filter(|(_, s)| s.safe_to_bootstrap)
        .collect();
    let rank = |name: &str| view.order.iter().position(|n| n == name).unwrap_or(usize::MAX);
    safe.sort_by(|a, b| b.1.seqno.cmp(&a.1.seqno).then(rank(a.0).cmp(&rank(b.0))));
    match safe.first() {
        Some((name, _)) if *name == view.me => StartDecision::Bootstrap,
        Some((name, _)) => StartDecision::Wait(format!("waiting for {name} (safe to bootstrap) to start the cluster")),
        None => StartDecision::Wait(
            "no member is marked safe to bootstrap: the cluster did not stop cleanly and needs crash recovery"
                .into(),
        ),
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
mod tests {
    use super::*;

    fn order() -> Vec<String> {
        vec!["n1".into(), "n2".into(), "n3".into()]
    }

    fn synced(seqno: i64) -> WsrepStatus {
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
        }
    }

    fn report(name: &str, phase: Phase, disk: DiskState, status: Option<WsrepStatus>) -> MemberReport {
        MemberReport {
            name: name.into(),
            phase,
            disk,
            status,
        }
    }

    fn saved(seqno: i64, safe: bool) -> DiskState {
        DiskState::Data {
            saved: Some(SavedState {
                uuid: "u".into(),
                seqno,
                safe_to_bootstrap: safe,
            }),
        }
    }

    fn decide(me: &str, my_disk: DiskState, others: &[MemberReport]) -> StartDecision {
        decide_start(StartView {
            me,
            order: &order(),
            my_disk: &my_disk,
            others,
            writer: Some("n1"),
        })
    }

    #[test]
    fn fresh_cluster_first_node_bootstraps_once_all_reported_empty() {
        let others = [
            report("n2", Phase::Waiting, DiskState::Empty, None),
            report("n3", Phase::Waiting, DiskState::Empty, None),
        ];
        assert_eq!(
            decide("n1", DiskState::Empty, &others),
            StartDecision::BootstrapNew
        );
        assert_eq!(
            decide(
                "n2",
                DiskState::Empty,
                &[
                    report("n1", Phase::Waiting, DiskState::Empty, None),
                    others[1].clone()
                ]
            ),
            StartDecision::Wait("waiting for n1 to bootstrap the new cluster".into())
        );
    }

    #[test]
    fn fresh_cluster_waits_for_unreported_members() {
        let others = [report("n2", Phase::Waiting, DiskState::Empty, None)];
        assert_eq!(
            decide("n1", DiskState::Empty, &others),
            StartDecision::Wait(
                "waiting for n3 to report: a new cluster starts only when every member is known to be empty"
                    .into()
            )
        );
    }

    #[test]
    fn empty_node_never_starts_a_new_cluster_beside_data() {
        let others = [
            report("n2", Phase::Waiting, saved(7, true), None),
            report("n3", Phase::Waiting, DiskState::Empty, None),
        ];
        assert_eq!(
            decide("n1", DiskState::Empty, &others),
            StartDecision::Wait("waiting for n2 (safe to bootstrap) to start the cluster".into())
        );
    }

    #[test]
    fn joins_a_primary_component_through_a_synced_donor() {
        let others = [
            report("n1", Phase::Running, saved(-1, false), Some(synced(5))),
            report("n3", Phase::Waiting, DiskState::Empty, None),
        ];
        assert_eq!(
            decide("n2", DiskState::Empty, &others),
            StartDecision::Join {
                donor: "n1".into(),
                transfer: Transfer::Snapshot
            }
        );
    }

    #[test]
    fn spares_the_writer_as_donor_when_another_member_is_synced() {
        let others = [
            report("n1", Phase::Running, saved(-1, false), Some(synced(5))),
            report("n2", Phase::Running, saved(-1, false), Some(synced(5))),
        ];
        assert_eq!(
            decide("n3", DiskState::Empty, &others),
            StartDecision::Join {
                donor: "n2".into(),
                transfer: Transfer::Snapshot
            }
        );
        let view = StartView {
            me: "n3",
            order: &order(),
            my_disk: &DiskState::Empty,
            others: &others,
            writer: Some("n2"),
        };
        assert_eq!(
            decide_start(view),
            StartDecision::Join {
                donor: "n1".into(),
                transfer: Transfer::Snapshot
            }
        );
    }

    #[test]
    fn joins_one_at_a_time() {
        let others = [
            report("n1", Phase::Running, saved(-1, false), Some(synced(5))),
            report("n2", Phase::Joining, DiskState::Empty, None),
        ];
        assert_eq!(
            decide("n3", DiskState::Empty, &others),
            StartDecision::Wait("waiting for n2 to finish joining".into())
        );
    }

    #[test]
    fn a_clean_member_of_the_same_cluster_rejoins_incrementally_one_at_a_time() {
        let mut others = vec![
            report("n1", Phase::Running, saved(-1, false), Some(synced(9))),
            report("n2", Phase::Joining, saved(8, false), None),
        ];
        assert_eq!(
            decide("n3", saved(7, false), &others),
            StartDecision::Wait("waiting for n2 to finish joining".into())
        );
        others[1] = report("n2", Phase::Running, saved(-1, false), Some(synced(9)));
        assert_eq!(
            decide("n3", saved(7, false), &others),
            StartDecision::Join {
                donor: "n2".into(),
                transfer: Transfer::Incremental
            }
        );
    }

    #[test]
    fn unknown_position_or_another_cluster_needs_a_snapshot() {
        let others = [report("n1", Phase::Running, saved(-1, false), Some(synced(9)))];
        let crashed = saved(-1, false);
        let foreign = DiskState::Data {
            saved: Some(SavedState {
                uuid: "other".into(),
                seqno: 5,
                safe_to_bootstrap: false,
            }),
        };
        for disk in [crashed, foreign, DiskState::Data { saved: None }] {
            assert_eq!(
                decide("n2", disk.clone(), &others),
                StartDecision::Join {
                    donor: "n1".into(),
                    transfer: Transfer::Snapshot
                },
                "{disk:?}"
            );
        }
    }

    #[test]
    fn never_bootstraps_while_a_member_is_primary_even_when_marked_safe() {
        let mut donor = synced(9);
        donor.local_state = local_state::DONOR_DESYNCED;
        donor.local_state_comment = "Donor/Desynced".into();
        let others = [report("n1", Phase::Running, saved(-1, false), Some(donor))];
        assert_eq!(
            decide("n2", saved(9, true), &others),
            StartDecision::Wait("waiting for a synced member of the Primary component".into())
        );
    }

    #[test]
    fn restart_bootstraps_from_the_node_marked_safe() {
        let others = [
            report("n1", Phase::Waiting, saved(10, false), None),
            report("n2", Phase::Waiting, saved(10, false), None),
        ];
        assert_eq!(decide("n3", saved(12, true), &others), StartDecision::Bootstrap);
        let others = [
            report("n2", Phase::Waiting, saved(10, false), None),
            report("n3", Phase::Waiting, saved(12, true), None),
        ];
        assert_eq!(
            decide("n1", saved(10, false), &others),
            StartDecision::Wait("waiting for n3 (safe to bootstrap) to start the cluster".into())
        );
    }

    #[test]
    fn waits_while_another_member_bootstraps() {
        let others = [report("n3", Phase::Bootstrapping, saved(12, true), None)];
        assert_eq!(
            decide("n1", saved(10, false), &others),
            StartDecision::Wait("waiting for n3 to start the cluster".into())
        );
    }

    #[test]
    fn two_marked_safe_prefers_the_higher_seqno_then_order() {
        let others = [report("n1", Phase::Waiting, saved(10, true), None)];
        assert_eq!(decide("n2", saved(11, true), &others), StartDecision::Bootstrap);
        assert_eq!(
            decide("n2", saved(10, true), &others),
            StartDecision::Wait("waiting for n1 (safe to bootstrap) to start the cluster".into())
        );
    }

    #[test]
    fn crash_with_no_safe_node_waits_for_recovery() {
        let others = [report("n1", Phase::Waiting, saved(-1, false), None)];
        assert!(
            matches!(decide("n2", saved(-1, false), &others), StartDecision::Wait(w) if w.contains("crash recovery"))
        );
    }

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
    fn writer_stops_last() {
        assert_eq!(stop_order(&order(), Some("n1")), vec!["n3", "n2", "n1"]);
        assert_eq!(stop_order(&order(), Some("n2")), vec!["n3", "n1", "n2"]);
        assert_eq!(stop_order(&order(), None), vec!["n3", "n2", "n1"]);
    }
}
