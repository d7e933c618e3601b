//! How a stopped node starts: join the running Primary component, bootstrap a brand-new
//! cluster, or, after an outage, elect the one node whose data starts the cluster again.
//!
//! ```text
//!   a member is in a Primary component ──► Join (IST if my position is a prefix of it, else
//!                                           SST, keeping my old datadir aside if it may hold
//!                                           transactions the cluster lacks)
//!   every member empty ──────────────────► the first node bootstraps a new cluster
//!   otherwise (outage) ──────────────────► election: highest position of the cluster's UUID;
//!                                           the winner bootstraps only if every member has
//!                                           reported, or Galera marked it safe, or it holds
//!                                           at least the position recorded while running
//! ```

use serde::{Deserialize, Serialize};

use super::{DiskState, MemberReport, Phase, PrimaryView, SavedState, WsrepStatus};

/// A cluster position: the cluster's UUID and a seqno in its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub uuid: String,
    pub seqno: i64,
}

/// How a stopped node should start, decided from everything its agent can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartDecision {
    /// Initialise the empty datadir and start a brand-new cluster on it.
    BootstrapNew,
    /// Start a new Primary component from this node's existing data (`--wsrep-new-cluster`).
    /// `mark_safe`: `grastate.dat` must first say `safe_to_bootstrap: 1` with the recovered
    /// seqno, or the server refuses.
    Bootstrap { mark_safe: bool },
    /// Start and join the running Primary component; `donor` is the synced member to ask for
    /// the state transfer (Galera falls back to any other if it cannot serve). `keep_aside`:
    /// move the old datadir aside first, because a snapshot would overwrite data the cluster
    /// may lack.
    Join {
        donor: String,
        transfer: Transfer,
        keep_aside: bool,
    },
    /// Do nothing yet, for the reason given (shown to the operator).
    Wait(String),
}

/// The state transfer a joining node is expected to need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// The node holds a prefix of the cluster's history: the donor's write-set cache (IST)
    /// can bring it up to date. Galera falls back to a snapshot if the cache no longer reaches.
    Incremental,
    /// A full copy of the donor's data (SST).
    Snapshot,
}

/// What [`decide_start`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct StartView<'a> {
    pub me: &'a str,
    /// This node's client address (`host:sql_port`), as members list it in their view.
    pub my_address: &'a str,
    /// All data nodes, in configuration (bootstrap) order.
    pub order: &'a [String],
    pub my_disk: &'a DiskState,
    /// The latest reports of the other members; a member without a report is unknown.
    pub others: &'a [MemberReport],
    /// The node taking writes, which should not be made a donor while another can serve.
    pub writer: Option<&'a str>,
    /// The highest position recorded in the store while the cluster ran.
    pub record: Option<&'a Position>,
    /// The node the operator forced to start the cluster after an outage (`vigil recover
    /// --force`), accepting that transactions only missing members hold may be lost.
    pub forced: Option<&'a str>,
    /// The position the cluster was last restarted from. History beyond it on a member that
    /// was missing then is not the cluster's: that member needs a snapshot, its data kept aside.
    pub fence: Option<&'a Position>,
}

/// A member's position as far as is known: its disk (grastate, or recovered), else what its
/// running server last reported.
fn position_of(m: &MemberReport) -> Option<Position> {
    if let DiskState::Data {
        sst_interrupted: true,
        ..
    } = m.disk
    {
        return None;
    }
    match (m.disk.saved(), &m.status) {
        (Some(s), _) if s.seqno >= 0 => Some(Position {
            uuid: s.uuid.clone(),
            seqno: s.seqno,
        }),
        (_, Some(st)) if st.last_committed >= 0 && !st.cluster_state_uuid.is_empty() => Some(Position {
            uuid: st.cluster_state_uuid.clone(),
            seqno: st.last_committed,
        }),
        _ => None,
    }
}

/// Decides how a stopped node starts.
///
/// Safety first: a new Primary component is only started when no member is in one (rule 1);
/// a brand-new cluster only when every member has reported an empty disk; after an outage only
/// from the most advanced node of the cluster, and without waiting for every member only when
/// that cannot lose a committed transaction (rule 2). A timeout never changes the choice.
pub fn decide_start(view: StartView<'_>) -> StartDecision {
    let others = view.others;
    if others.iter().any(MemberReport::in_primary) {
        return decide_join(view);
    }
    if let Some(starter) = others.iter().find(|m| m.phase == Phase::Bootstrapping) {
        return StartDecision::Wait(format!("waiting for {} to start the cluster", starter.name));
    }
    // A server that runs but did not answer its agent's last probe (paused, overloaded, in a
    // state transfer) may be in a Primary component all the same: no new one while it may,
    // unless the operator forces one. Its agent kills a running server silent for
    // SILENT_GRACE, and gives up a join nothing can finish.
    let silent = |m: &&MemberReport| {
        matches!(m.phase, Phase::Running | Phase::Joining | Phase::Stopping) && m.status.is_none()
    };
    if let Some(m) = others.iter().find(silent).filter(|_| view.forced.is_none()) {
        return StartDecision::Wait(format!(
            "waiting for {}: its server runs but does not answer, and may be in a Primary component",
            m.name
        ));
    }

    let unreported: Vec<&str> = view
        .order
        .iter()
        .map(String::as_str)
        .filter(|n| *n != view.me && !others.iter().any(|m| m.name == *n))
        .collect();
    let all_empty = *view.my_disk == DiskState::Empty && others.iter().all(|m| m.disk == DiskState::Empty);
    if all_empty {
        if !unreported.is_empty() {
            return StartDecision::Wait(format!(
                "waiting for {} to report: a new cluster starts only when every member is known to be empty",
                unreported.join(", ")
            ));
        }
        return match view.order.first().map(String::as_str) {
            Some(first) if first == view.me => StartDecision::BootstrapNew,
            first => StartDecision::Wait(format!(
                "waiting for {} to bootstrap the new cluster",
                first.unwrap_or("the first node")
            )),
        };
    }
    elect(view, &unreported)
}

/// Whether this running node, its server connected but outside any Primary component, is the
/// one to make its component Primary (`pc.bootstrap=YES`), and from which position.
///
/// Seen in `vigil chaos`: the writer's host crashed just after another member came back from an
/// isolation; the two left formed a component holding no majority of the last Primary one, so
/// Galera kept it non-Primary, and the election named the most advanced of them, whose server
/// was running, while only a stopped node ever started a cluster: 88 s without a write, until
/// later faults restarted servers. Making a running component Primary is a bootstrap, under
/// its rules: [`decide_start`] with this node's running position must elect it (no
/// member in a Primary component, every member reported or the record covered, no member
/// recovering) — and more, because a running server may not be the only one running. Galera
/// makes a component Primary when it holds more than half of the last Primary component; a
/// member whose agent is dead may still serve one out of sight, its report gone and the record
/// frozen. So for every Primary component a member reports having been in (`last_primary`,
/// this node's own `mine` included), at most half of it may be members not known to be
/// outside a Primary component now (this node, or a member reported without a server or with
/// a non-Primary one); half of it cannot be Primary, and then neither can anything formed from
/// it. No node may be forced by the operator either (`vigil recover --force` is for stopped
/// nodes; its key may outlive its use). The agent acts only once this has held for
/// [`super::RESTART_GRACE`] ([`super::Sustained`]): a view change, a report from before a
/// merge, pass within it.
pub fn restore_primary(
    view: StartView<'_>,
    status: &WsrepStatus,
    mine: Option<&PrimaryView>,
) -> Option<Position> {
    if !status.connected
        || status.is_primary()
        || view.forced.is_some()
        || status.last_committed < 0
        || status.cluster_state_uuid.is_empty()
    {
        return None;
    }
    let outside = |name: &String| {
        *name == view.me
            || view.others.iter().any(|m| {
                m.name == *name
                    && (matches!(m.phase, Phase::Waiting | Phase::Failed | Phase::Stopped)
                        || m.status.as_ref().is_some_and(|s| !s.is_primary()))
            })
    };
    let views: Vec<&PrimaryView> = view
        .others
        .iter()
        .filter_map(|m| m.last_primary.as_ref())
        .chain(mine)
        .collect();
    let out_of_sight_majority = |v: &&PrimaryView| {
        let known = v.members.iter().filter(|n| outside(n)).count();
        2 * (v.size as usize).saturating_sub(known) > v.size as usize
    };
    if views.is_empty() || views.iter().any(out_of_sight_majority) {
        return None;
    }
    let position = Position {
        uuid: status.cluster_state_uuid.clone(),
        seqno: status.last_committed,
    };
    let running = DiskState::Data {
        saved: Some(SavedState {
            uuid: position.uuid.clone(),
            seqno: position.seqno,
            safe_to_bootstrap: false,
        }),
        sst_interrupted: false,
    };
    match decide_start(StartView {
        my_disk: &running,
        ..view
    }) {
        StartDecision::Bootstrap { .. } => Some(position),
        _ => None,
    }
}

/// Whether the fence a restore replaced (`previous`) goes back if the restore from `restored`
/// is undone ([`restore_primary`]): only one of the same history and not later, which fences
/// off at least as much. Any other keeps the restore's own: if the component was Primary for a
/// moment, history beyond it on a missing member is not the cluster's, and a fence too early
/// costs a snapshot where one missing costs data.
pub fn fence_to_put_back(previous: &Position, restored: &Position) -> bool {
    previous.uuid == restored.uuid && previous.seqno <= restored.seqno
}

/// A member's standing in the election after an outage.
struct Candidate<'a> {
    name: &'a str,
    position: Position,
    safe: bool,
}

fn elect(view: StartView<'_>, unreported: &[&str]) -> StartDecision {
    match view.forced {
        Some(f) if f == view.me => {
            return match view.my_disk.saved() {
                Some(s) if s.seqno >= 0 => StartDecision::Bootstrap {
                    mark_safe: !s.safe_to_bootstrap,
                },
                _ => StartDecision::Wait(
                    "forced to start the cluster, but this node's position is unknown".into(),
                ),
            }
        }
        Some(f) => {
            return StartDecision::Wait(format!(
                "waiting for {f}, which the operator forced to start the cluster"
            ))
        }
        None => {}
    }
    let me = MemberReport {
        name: view.me.to_string(),
        phase: Phase::Waiting,
        disk: view.my_disk.clone(),
        status: None,
        departed: None,
        last_primary: None,
    };
    let everyone: Vec<&MemberReport> = view.others.iter().chain(std::iter::once(&me)).collect();
    let mut candidates: Vec<Candidate> = everyone
        .iter()
        .filter_map(|m| {
            position_of(m).map(|position| Candidate {
                name: m.name.as_str(),
                position,
                safe: m.disk.saved().is_some_and(|s| s.safe_to_bootstrap),
            })
        })
        .collect();
    // Members whose position is not known yet: recovering or damaged. (A member whose state
    // transfer was interrupted holds a partial copy, never anything newer.)
    let unknown: Vec<&str> = everyone
        .iter()
        .filter(|m| m.disk != DiskState::Empty && position_of(m).is_none())
        .filter(|m| {
            !matches!(
                m.disk,
                DiskState::Data {
                    sst_interrupted: true,
                    ..
                }
            )
        })
        .map(|m| m.name.as_str())
        .collect();

    // The cluster is the recorded one; without a record, the UUID most members hold.
    let uuid = match view.record {
        Some(r) => r.uuid.clone(),
        None => {
            let mut uuids: Vec<&str> = candidates.iter().map(|c| c.position.uuid.as_str()).collect();
            uuids.sort();
            let count = |u: &str| uuids.iter().filter(|x| **x == u).count();
            match uuids
                .iter()
                .copied()
                .max_by(|a, b| count(a).cmp(&count(b)).then(b.cmp(a)))
            {
                Some(u) => u.to_string(),
                None => {
                    return StartDecision::Wait(format!(
                        "waiting for the positions of {}",
                        waiting_list(&unknown, unreported)
                    ))
                }
            }
        }
    };
    candidates.retain(|c| c.position.uuid == uuid);
    let rank = |name: &str| view.order.iter().position(|n| n == name).unwrap_or(usize::MAX);
    candidates.sort_by(|a, b| {
        b.position
            .seqno
            .cmp(&a.position.seqno)
            .then(b.safe.cmp(&a.safe))
            .then(rank(a.name).cmp(&rank(b.name)))
    });
    let Some(best) = candidates.first() else {
        return StartDecision::Wait(format!(
            "no member holds data of cluster {uuid}; waiting for {}",
            waiting_list(&unknown, unreported)
        ));
    };
    if best.name != view.me {
        return StartDecision::Wait(format!(
            "waiting for {} (highest position {}) to start the cluster",
            best.name, best.position.seqno
        ));
    }
    let covers_record = view
        .record
        .is_some_and(|r| r.uuid == best.position.uuid && best.position.seqno >= r.seqno);
    let missing: Vec<&str> = unknown
        .iter()
        .copied()
        .filter(|n| *n != view.me)
        .chain(unreported.iter().copied())
        .collect();
    // A member whose server just died reports it at once and its position only once it has
    // recovered it (`mariadbd --wsrep-recover`): it may hold commits newer than the record,
    // so neither the record nor a safe mark lets anyone start without it meanwhile.
    let recovering = view
        .others
        .iter()
        .any(|m| m.phase == Phase::Failed && m.departed.is_some() && unknown.contains(&m.name.as_str()));
    if missing.is_empty() || (!recovering && (best.safe || covers_record)) {
        let mark_safe = !view.my_disk.saved().is_some_and(|s| s.safe_to_bootstrap);
        return StartDecision::Bootstrap { mark_safe };
    }
    StartDecision::Wait(format!(
        "waiting for {}: its data may be newer than this node's (seqno {}{})",
        missing.join(", "),
        best.position.seqno,
        view.record
            .map(|r| format!(", recorded {}", r.seqno))
            .unwrap_or_default()
    ))
}

fn waiting_list(unknown: &[&str], unreported: &[&str]) -> String {
    let all: Vec<&str> = unknown.iter().chain(unreported).copied().collect();
    if all.is_empty() {
        "the other members".into()
    } else {
        all.join(", ")
    }
}

fn decide_join(view: StartView<'_>) -> StartDecision {
    let others = view.others;
    // One joiner at a time, IST included: two nodes connecting at once race in Galera's view
    // formation ("No nodes coming from primary view") and one of them retries seconds later.
    if let Some(joiner) = others.iter().find(|m| m.phase == Phase::Joining) {
        return StartDecision::Wait(format!("waiting for {} to finish joining", joiner.name));
    }
    // After a crash the others keep this node in their view until they evict it (seconds);
    // a new instance joining before that fights the view formation for much longer. A list
    // longer than the view is stale and says nothing: seen in `vigil chaos`, a member that had
    // joined while this node's dead server was being evicted kept listing it in
    // `wsrep_incoming_addresses` (3 addresses, cluster size 2) long after, and this node
    // waited for it until the run gave up.
    let still_listed = |m: &&MemberReport| {
        m.in_primary()
            && m.status.as_ref().is_some_and(|s| {
                s.incoming_addresses.len() <= s.cluster_size as usize
                    && s.incoming_addresses.iter().any(|a| a == view.my_address)
            })
    };
    if let Some(m) = others.iter().find(still_listed) {
        return StartDecision::Wait(format!(
            "waiting for {} to notice that this node's previous instance is gone",
            m.name
        ));
    }
    // A donor is desynced for the transfer: spare the writer when another member can serve.
    let donors = || others.iter().filter(|m| m.synced_in_primary());
    let Some(donor) = donors()
        .find(|m| Some(m.name.as_str()) != view.writer)
        .or_else(|| donors().next())
    else {
        return StartDecision::Wait("waiting for a synced member of the Primary component".into());
    };
    let cluster = donor.status.as_ref().map(|s| Position {
        uuid: s.cluster_state_uuid.clone(),
        seqno: s.last_committed,
    });
    let mine: Option<&SavedState> = match view.my_disk {
        DiskState::Data {
            sst_interrupted: false,
            saved,
        } => saved.as_ref(),
        _ => None,
    };
    let beyond_fence =
        matches!((mine, view.fence), (Some(m), Some(f)) if m.uuid == f.uuid && m.seqno > f.seqno);
    let prefix = !beyond_fence
        && matches!((mine, &cluster), (Some(m), Some(c)) if m.uuid == c.uuid && m.seqno >= 0 && m.seqno <= c.seqno);
    let transfer = if prefix {
        Transfer::Incremental
    } else {
        Transfer::Snapshot
    };
    // Data that is not a prefix of the cluster's history may hold transactions it lacks.
    let keep_aside = transfer == Transfer::Snapshot
        && matches!(
            view.my_disk,
            DiskState::Data {
                sst_interrupted: false,
                ..
            }
        );
    StartDecision::Join {
        donor: donor.name.clone(),
        transfer,
        keep_aside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::galera::test_support::{order, synced};
    use crate::galera::{local_state, WsrepStatus};

    fn report(name: &str, phase: Phase, disk: DiskState, status: Option<WsrepStatus>) -> MemberReport {
        MemberReport {
            name: name.into(),
            phase,
            disk,
            status,
            departed: None,
            last_primary: None,
        }
    }

    fn at(uuid: &str, seqno: i64, safe: bool) -> DiskState {
        DiskState::Data {
            saved: Some(SavedState {
                uuid: uuid.into(),
                seqno,
                safe_to_bootstrap: safe,
            }),
            sst_interrupted: false,
        }
    }

    fn saved(seqno: i64, safe: bool) -> DiskState {
        at("u", seqno, safe)
    }

    fn down(name: &str, disk: DiskState) -> MemberReport {
        report(name, Phase::Failed, disk, None)
    }

    fn decide(me: &str, my_disk: DiskState, others: &[MemberReport]) -> StartDecision {
        decide_with(me, my_disk, others, None)
    }

    fn decide_with(
        me: &str,
        my_disk: DiskState,
        others: &[MemberReport],
        record: Option<i64>,
    ) -> StartDecision {
        let record = record.map(|seqno| Position {
            uuid: "u".into(),
            seqno,
        });
        decide_start(StartView {
            me,
            my_address: "127.0.0.1:2",
            order: &order(),
            my_disk: &my_disk,
            others,
            writer: Some("n1"),
            record: record.as_ref(),
            forced: None,
            fence: None,
        })
    }

    fn wait(s: &str) -> StartDecision {
        StartDecision::Wait(s.into())
    }

    fn join(donor: &str, transfer: Transfer, keep_aside: bool) -> StartDecision {
        StartDecision::Join {
            donor: donor.into(),
            transfer,
            keep_aside,
        }
    }

    // --- a new cluster ---

    #[test]
    fn fresh_cluster_first_node_bootstraps_once_all_reported_empty() {
        let others = [down("n2", DiskState::Empty), down("n3", DiskState::Empty)];
        assert_eq!(
            decide("n1", DiskState::Empty, &others),
            StartDecision::BootstrapNew
        );
        let others = [down("n1", DiskState::Empty), down("n3", DiskState::Empty)];
        assert_eq!(
            decide("n2", DiskState::Empty, &others),
            wait("waiting for n1 to bootstrap the new cluster")
        );
    }

    #[test]
    fn fresh_cluster_waits_for_unreported_members() {
        assert_eq!(
            decide("n1", DiskState::Empty, &[down("n2", DiskState::Empty)]),
            wait(
                "waiting for n3 to report: a new cluster starts only when every member is known to be empty"
            )
        );
    }

    #[test]
    fn empty_node_never_starts_a_new_cluster_beside_data() {
        let others = [down("n2", saved(7, true)), down("n3", DiskState::Empty)];
        assert_eq!(
            decide("n1", DiskState::Empty, &others),
            wait("waiting for n2 (highest position 7) to start the cluster")
        );
    }

    // --- joining a running cluster ---

    #[test]
    fn an_empty_node_joins_by_snapshot_through_a_synced_donor() {
        let others = [
            report("n1", Phase::Running, saved(-1, false), Some(synced(5))),
            down("n3", DiskState::Empty),
        ];
        assert_eq!(
            decide("n2", DiskState::Empty, &others),
            join("n1", Transfer::Snapshot, false)
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
            join("n2", Transfer::Snapshot, false)
        );
    }

    #[test]
    fn joins_one_at_a_time_ist_included() {
        let mut others = vec![
            report("n1", Phase::Running, saved(-1, false), Some(synced(9))),
            report("n2", Phase::Joining, saved(8, false), None),
        ];
        assert_eq!(
            decide("n3", saved(7, false), &others),
            wait("waiting for n2 to finish joining")
        );
        others[1] = report("n2", Phase::Running, saved(-1, false), Some(synced(9)));
        assert_eq!(
            decide("n3", saved(7, false), &others),
            join("n2", Transfer::Incremental, false)
        );
    }

    #[test]
    fn data_that_is_not_a_prefix_of_the_cluster_is_kept_aside_before_a_snapshot() {
        let others = [report("n1", Phase::Running, saved(-1, false), Some(synced(9)))];
        let ahead = saved(12, false);
        let foreign = at("other", 5, false);
        let unknown = DiskState::Data {
            saved: None,
            sst_interrupted: false,
        };
        for disk in [ahead, foreign, unknown] {
            assert_eq!(
                decide("n2", disk.clone(), &others),
                join("n1", Transfer::Snapshot, true),
                "{disk:?}"
            );
        }
    }

    #[test]
    fn history_beyond_the_fence_is_not_a_prefix_even_when_the_cluster_has_moved_past_it() {
        // The cluster restarted from seqno 42 without n3, which held up to 50; it has since
        // committed up to 60. n3's 43..50 are not the cluster's 43..50.
        let others = [report("n1", Phase::Running, saved(-1, false), Some(synced(60)))];
        let fence = Position {
            uuid: "u".into(),
            seqno: 42,
        };
        let decide_fenced = |disk: DiskState| {
            decide_start(StartView {
                me: "n3",
                my_address: "127.0.0.1:3",
                order: &order(),
                my_disk: &disk,
                others: &others,
                writer: None,
                record: None,
                forced: None,
                fence: Some(&fence),
            })
        };
        assert_eq!(
            decide_fenced(saved(50, false)),
            join("n1", Transfer::Snapshot, true)
        );
        assert_eq!(
            decide_fenced(saved(40, false)),
            join("n1", Transfer::Incremental, false)
        );
    }

    #[test]
    fn an_interrupted_snapshot_does_not_block_an_election() {
        let partial = DiskState::Data {
            saved: None,
            sst_interrupted: true,
        };
        let others = [down("n1", saved(40, false)), down("n3", partial)];
        assert_eq!(
            decide("n2", saved(42, false), &others),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn an_interrupted_snapshot_is_redone_without_keeping_its_partial_data() {
        let others = [report("n1", Phase::Running, saved(-1, false), Some(synced(9)))];
        let partial = DiskState::Data {
            saved: Some(SavedState {
                uuid: "u".into(),
                seqno: 9,
                safe_to_bootstrap: false,
            }),
            sst_interrupted: true,
        };
        assert_eq!(
            decide("n2", partial, &others),
            join("n1", Transfer::Snapshot, false)
        );
    }

    #[test]
    fn never_bootstraps_while_a_member_is_primary_even_when_marked_safe() {
        let mut donor = synced(9);
        donor.local_state = local_state::DONOR_DESYNCED;
        donor.local_state_comment = "Donor/Desynced".into();
        let others = [report("n1", Phase::Running, saved(-1, false), Some(donor))];
        assert_eq!(
            decide("n2", saved(9, true), &others),
            wait("waiting for a synced member of the Primary component")
        );
    }

    #[test]
    fn waits_until_the_cluster_has_evicted_this_nodes_previous_instance() {
        let mut st = synced(9);
        st.cluster_size = 2;
        st.incoming_addresses = vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()];
        let others = [report("n1", Phase::Running, saved(-1, false), Some(st))];
        assert_eq!(
            decide("n2", saved(7, false), &others),
            wait("waiting for n1 to notice that this node's previous instance is gone")
        );
    }

    #[test]
    fn an_address_list_longer_than_the_view_is_stale_and_holds_no_join_up() {
        let mut st = synced(9);
        st.cluster_size = 2;
        st.incoming_addresses = vec!["127.0.0.1:2".into(), "127.0.0.1:3".into(), "127.0.0.1:1".into()];
        let others = [report("n1", Phase::Running, saved(-1, false), Some(st))];
        assert!(
            matches!(decide("n2", saved(7, false), &others), StartDecision::Join { .. }),
            "{:?}",
            decide("n2", saved(7, false), &others)
        );
    }

    // --- restart after a clean stop ---

    #[test]
    fn restart_bootstraps_from_the_node_marked_safe() {
        let others = [down("n1", saved(10, false)), down("n2", saved(10, false))];
        assert_eq!(
            decide("n3", saved(12, true), &others),
            StartDecision::Bootstrap { mark_safe: false }
        );
        let others = [down("n2", saved(10, false)), down("n3", saved(12, true))];
        assert_eq!(
            decide("n1", saved(10, false), &others),
            wait("waiting for n3 (highest position 12) to start the cluster")
        );
    }

    #[test]
    fn the_node_marked_safe_does_not_wait_for_missing_members() {
        assert_eq!(
            decide("n3", saved(12, true), &[]),
            StartDecision::Bootstrap { mark_safe: false }
        );
    }

    #[test]
    fn waits_while_another_member_bootstraps() {
        let others = [report("n3", Phase::Bootstrapping, saved(12, true), None)];
        assert_eq!(
            decide("n1", saved(10, false), &others),
            wait("waiting for n3 to start the cluster")
        );
    }

    // --- recovery after an outage ---

    #[test]
    fn after_a_crash_the_highest_position_bootstraps_and_is_marked_safe() {
        let others = [down("n1", saved(40, false)), down("n2", saved(42, false))];
        assert_eq!(
            decide("n3", saved(41, false), &others),
            wait("waiting for n2 (highest position 42) to start the cluster")
        );
        let others = [down("n1", saved(40, false)), down("n3", saved(41, false))];
        assert_eq!(
            decide("n2", saved(42, false), &others),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn every_ordering_of_reports_elects_the_same_node() {
        let disks = [
            ("n1", saved(40, false)),
            ("n2", saved(42, false)),
            ("n3", saved(42, false)),
        ];
        // n2 and n3 tie at 42; configuration order breaks the tie: n2.
        for me in 0..3 {
            let mut others: Vec<MemberReport> = disks
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != me)
                .map(|(_, (n, d))| down(n, d.clone()))
                .collect();
            for _ in 0..2 {
                others.reverse();
                let d = decide(disks[me].0, disks[me].1.clone(), &others);
                match disks[me].0 {
                    "n2" => assert_eq!(d, StartDecision::Bootstrap { mark_safe: true }),
                    _ => assert_eq!(
                        d,
                        wait("waiting for n2 (highest position 42) to start the cluster")
                    ),
                }
            }
        }
    }

    #[test]
    fn a_tie_prefers_the_node_galera_marked_safe() {
        let others = [down("n1", saved(42, false))];
        assert_eq!(
            decide("n2", saved(42, true), &others),
            StartDecision::Bootstrap { mark_safe: false }
        );
    }

    #[test]
    fn a_missing_member_blocks_unless_the_record_is_covered() {
        let others = [down("n1", saved(40, false))];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(50)),
            wait("waiting for n3: its data may be newer than this node's (seqno 42, recorded 50)")
        );
        assert_eq!(
            decide_with("n2", saved(42, false), &others, None),
            wait("waiting for n3: its data may be newer than this node's (seqno 42)")
        );
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(42)),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn a_member_whose_server_runs_without_answering_blocks_any_new_primary_component() {
        // n3's server is paused (or busy) and missed its agent's probe: it may still be in a
        // Primary component, whatever the record and the safe mark say.
        let covered = saved(42, true);
        for phase in [Phase::Running, Phase::Joining, Phase::Stopping] {
            let others = [
                down("n1", saved(40, false)),
                report("n3", phase, covered.clone(), None),
            ];
            assert_eq!(
                decide_with("n2", saved(42, true), &others, Some(42)),
                wait(
                    "waiting for n3: its server runs but does not answer, and may be in a Primary component"
                ),
                "{phase:?}"
            );
        }
        // The operator's force overrides it, as it overrides every other wait.
        let others = [
            down("n1", saved(40, false)),
            report("n3", Phase::Running, covered.clone(), None),
        ];
        let forced = decide_start(StartView {
            me: "n2",
            my_address: "127.0.0.1:2",
            order: &order(),
            my_disk: &saved(42, true),
            others: &others,
            writer: None,
            record: None,
            forced: Some("n2"),
            fence: None,
        });
        assert_eq!(forced, StartDecision::Bootstrap { mark_safe: false });
        // Once its agent reports it outside a Primary component, or stopped, the election runs.
        let mut outside = synced(42);
        outside.cluster_status = "non-Primary".into();
        let others = [
            down("n1", saved(40, false)),
            report("n3", Phase::Running, saved(41, false), Some(outside)),
        ];
        assert_eq!(
            decide_with("n2", saved(42, true), &others, Some(42)),
            StartDecision::Bootstrap { mark_safe: false }
        );
    }

    #[test]
    fn the_elected_nodes_lease_expiring_never_switches_the_source() {
        // n2 (42) is elected; its agent's lease expires, so its report vanishes from the store.
        let everyone = [down("n1", saved(40, false)), down("n2", saved(42, false))];
        assert_eq!(
            decide_with("n3", saved(41, false), &everyone, Some(42)),
            wait("waiting for n2 (highest position 42) to start the cluster")
        );
        let n2_gone = [down("n1", saved(40, false))];
        assert_eq!(
            decide_with("n3", saved(41, false), &n2_gone, Some(42)),
            wait("waiting for n2: its data may be newer than this node's (seqno 41, recorded 42)")
        );
        // However long that lasts: nothing in the decision depends on time.
        assert_eq!(
            decide_with("n1", saved(40, false), &[down("n3", saved(41, false))], Some(42)),
            wait("waiting for n3 (highest position 41) to start the cluster")
        );
    }

    #[test]
    fn a_member_whose_position_is_unknown_blocks_like_a_missing_one() {
        let recovering = DiskState::Data {
            saved: None,
            sst_interrupted: false,
        };
        let others = [down("n1", saved(40, false)), down("n3", recovering)];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(45)),
            wait("waiting for n3: its data may be newer than this node's (seqno 42, recorded 45)")
        );
    }

    #[test]
    fn a_member_whose_server_just_died_is_waited_for_until_it_knows_its_position() {
        // n3's server died a moment ago: its agent said so at once, and is recovering the
        // position from the datadir. It may have committed past the record.
        let mut just_died = down(
            "n3",
            DiskState::Data {
                saved: None,
                sst_interrupted: false,
            },
        );
        just_died.departed = Some("6f9c1d2e-0b1a-11f1-8a5e-5b1c2d3e4f50".into());
        let others = [down("n1", saved(40, false)), just_died.clone()];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(42)),
            wait("waiting for n3: its data may be newer than this node's (seqno 42, recorded 42)")
        );
        assert_eq!(
            decide_with("n2", saved(42, true), &others, None),
            wait("waiting for n3: its data may be newer than this node's (seqno 42)")
        );
        // Once it knows its position, the usual rules apply.
        just_died.disk = saved(41, false);
        let others = [down("n1", saved(40, false)), just_died];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(42)),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn a_member_returning_mid_decision_with_more_data_wins() {
        // n3 was missing; n2 waited. n3 reports with a higher position: n3 is elected.
        let others = [down("n1", saved(40, false)), down("n3", saved(44, false))];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(50)),
            wait("waiting for n3 (highest position 44) to start the cluster")
        );
        let others = [down("n1", saved(40, false)), down("n2", saved(42, false))];
        assert_eq!(
            decide_with("n3", saved(44, false), &others, Some(50)),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn the_operator_can_force_a_node_that_would_otherwise_wait() {
        let record = Position {
            uuid: "u".into(),
            seqno: 50,
        };
        let decide_forced = |me: &str, disk: DiskState| {
            let others = [down("n1", saved(40, false))];
            decide_start(StartView {
                me,
                my_address: "127.0.0.1:2",
                order: &order(),
                my_disk: &disk,
                others: &others,
                writer: None,
                record: Some(&record),
                forced: Some("n2"),
                fence: None,
            })
        };
        assert_eq!(
            decide_forced("n2", saved(42, false)),
            StartDecision::Bootstrap { mark_safe: true }
        );
        assert_eq!(
            decide_forced("n3", saved(45, false)),
            wait("waiting for n2, which the operator forced to start the cluster")
        );
        let unknown = DiskState::Data {
            saved: None,
            sst_interrupted: false,
        };
        assert_eq!(
            decide_forced("n2", unknown),
            wait("forced to start the cluster, but this node's position is unknown")
        );
    }

    #[test]
    fn force_never_overrides_a_running_primary_component() {
        let others = [report("n1", Phase::Running, saved(-1, false), Some(synced(60)))];
        let disk = saved(42, false);
        let d = decide_start(StartView {
            me: "n2",
            my_address: "127.0.0.1:2",
            order: &order(),
            my_disk: &disk,
            others: &others,
            writer: Some("n1"),
            record: None,
            forced: Some("n2"),
            fence: None,
        });
        assert_eq!(d, join("n1", Transfer::Incremental, false));
    }

    #[test]
    fn members_of_another_cluster_are_not_candidates() {
        let others = [
            down("n1", at("u", 40, false)),
            down("n3", at("stranger", 900, false)),
        ];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(42)),
            StartDecision::Bootstrap { mark_safe: true }
        );
        // Without a record, the UUID most members hold is the cluster.
        assert_eq!(
            decide("n2", saved(42, false), &others),
            StartDecision::Bootstrap { mark_safe: true }
        );
        assert_eq!(
            decide(
                "n3",
                at("stranger", 900, false),
                &[down("n1", saved(40, false)), down("n2", saved(42, false))]
            ),
            wait("waiting for n2 (highest position 42) to start the cluster")
        );
    }

    #[test]
    fn an_interrupted_snapshot_is_never_a_source() {
        let partial = DiskState::Data {
            saved: Some(SavedState {
                uuid: "u".into(),
                seqno: 99,
                safe_to_bootstrap: false,
            }),
            sst_interrupted: true,
        };
        let others = [down("n1", saved(40, false)), down("n3", partial)];
        assert_eq!(
            decide_with("n2", saved(42, false), &others, Some(42)),
            StartDecision::Bootstrap { mark_safe: true }
        );
    }

    #[test]
    fn a_running_non_primary_member_counts_with_its_reported_position() {
        let mut st = synced(43);
        st.cluster_status = "non-Primary".into();
        st.local_state_comment = "Initialized".into();
        let others = [
            down("n1", saved(40, false)),
            report(
                "n3",
                Phase::Joining,
                DiskState::Data {
                    saved: None,
                    sst_interrupted: false,
                },
                Some(st),
            ),
        ];
        assert_eq!(
            decide("n2", saved(42, false), &others),
            wait("waiting for n3 (highest position 43) to start the cluster")
        );
    }

    fn non_primary(seqno: i64) -> WsrepStatus {
        let mut st = synced(seqno);
        st.cluster_status = "non-Primary".into();
        st.local_state_comment = "Initialized".into();
        st.local_state = 0;
        st.cluster_size = 2;
        st
    }

    fn running(name: &str, status: WsrepStatus) -> MemberReport {
        let disk = DiskState::Data {
            saved: Some(SavedState {
                uuid: "u".into(),
                seqno: -1,
                safe_to_bootstrap: false,
            }),
            sst_interrupted: false,
        };
        report(name, Phase::Running, disk, Some(status))
    }

    /// A Primary component seen by a member: view number, size, named members.
    fn seen(conf_id: u64, size: u32, members: &[&str]) -> Option<PrimaryView> {
        Some(PrimaryView {
            conf_id,
            size,
            members: members.iter().map(|m| m.to_string()).collect(),
        })
    }

    fn with_view(report: MemberReport, view: Option<PrimaryView>) -> MemberReport {
        MemberReport {
            last_primary: view,
            ..report
        }
    }

    /// n3's last Primary component was {n1, n3}: n2 had been cut off from it before.
    fn restore(me: &str, mine: &WsrepStatus, others: &[MemberReport], record: Option<i64>) -> Option<i64> {
        restore_with(me, mine, seen(9, 2, &["n1", "n3"]), others, record, None)
    }

    fn restore_with(
        me: &str,
        mine: &WsrepStatus,
        my_view: Option<PrimaryView>,
        others: &[MemberReport],
        record: Option<i64>,
        forced: Option<&str>,
    ) -> Option<i64> {
        let record = record.map(|seqno| Position {
            uuid: "u".into(),
            seqno,
        });
        let disk = DiskState::Data {
            saved: None,
            sst_interrupted: false,
        };
        restore_primary(
            StartView {
                me,
                my_address: "127.0.0.1:3",
                order: &order(),
                my_disk: &disk,
                others,
                writer: Some("n1"),
                record: record.as_ref(),
                forced,
                fence: None,
            },
            mine,
            my_view.as_ref(),
        )
        .map(|p| p.seqno)
    }

    #[test]
    fn the_elected_running_non_primary_node_makes_its_component_primary() {
        // The writer n1's host crashed just after n2 came back from an isolation: n2 and n3 run
        // in a non-Primary component, n1 has no report. n3 is the most advanced and holds the
        // recorded position; n1 is half of n3's last Primary component {n1, n3}, a third of
        // n2's {n1, n2, n3}: it cannot be Primary on its own.
        let n2 = with_view(running("n2", non_primary(48)), seen(7, 3, &["n1", "n2", "n3"]));
        assert_eq!(
            restore("n3", &non_primary(50), std::slice::from_ref(&n2), Some(50)),
            Some(50)
        );
        // Only the elected node acts.
        let n3 = with_view(running("n3", non_primary(50)), seen(9, 2, &["n1", "n3"]));
        assert_eq!(
            restore_with(
                "n2",
                &non_primary(48),
                seen(7, 3, &["n1", "n2", "n3"]),
                &[n3],
                Some(50),
                None
            ),
            None
        );
        // With every member reported, no record is needed.
        let n1 = down("n1", saved(45, false));
        assert_eq!(restore("n3", &non_primary(50), &[n1, n2.clone()], None), Some(50));
        // n1's server died and its agent reports it; then n3's host crashed. n2 is alone, but
        // its last Primary component was {n2, n3} (n1 evicted): n3 is half of it.
        let n1 = down("n1", saved(45, false));
        let alone = WsrepStatus {
            cluster_size: 1,
            ..non_primary(52)
        };
        assert_eq!(
            restore_with("n2", &alone, seen(12, 2, &["n2", "n3"]), &[n1], Some(52), None),
            Some(52)
        );
    }

    #[test]
    fn a_running_node_never_makes_a_second_primary_component_or_loses_commits() {
        let n2 = with_view(running("n2", non_primary(48)), seen(7, 3, &["n1", "n2", "n3"]));
        let cases: [(&str, Vec<MemberReport>, Option<i64>); 5] = [
            (
                "a member reports a Primary component out of this node's sight",
                vec![running("n1", synced(60)), n2.clone()],
                Some(50),
            ),
            (
                "a missing member may hold commits beyond this node's (record 52)",
                vec![n2.clone()],
                Some(52),
            ),
            ("a missing member and no record", vec![n2.clone()], None),
            (
                "another member is starting the cluster",
                vec![
                    report("n1", Phase::Bootstrapping, saved(50, true), None),
                    n2.clone(),
                ],
                Some(50),
            ),
            (
                "a member whose server just died has not recovered its position",
                vec![
                    MemberReport {
                        departed: Some("00000000-0000-0000-0000-000000000001".into()),
                        ..down(
                            "n1",
                            DiskState::Data {
                                saved: None,
                                sst_interrupted: false,
                            },
                        )
                    },
                    n2.clone(),
                ],
                Some(50),
            ),
        ];
        for (why, others, record) in cases {
            assert_eq!(restore("n3", &non_primary(50), &others, record), None, "{why}");
        }
        // Its own server in a Primary component, or with its group communication closed.
        let n1 = down("n1", saved(45, false));
        let everyone = [n1, n2.clone()];
        assert_eq!(restore("n3", &synced(50), &everyone, Some(50)), None);
        let closed = WsrepStatus {
            connected: false,
            ..non_primary(50)
        };
        assert_eq!(restore("n3", &closed, &everyone, Some(50)), None);
        assert_eq!(restore("n3", &non_primary(50), &everyone, Some(50)), Some(50));
        // The operator's force is for stopped nodes, whoever it names.
        for forced in ["n3", "n2"] {
            let mine = seen(9, 2, &["n1", "n3"]);
            let got = restore_with("n3", &non_primary(50), mine, &everyone, Some(50), Some(forced));
            assert_eq!(got, None, "forced {forced}");
        }

        // More than half of a Primary component a member was in is out of sight: those members
        // may be serving it, their agents dead (no report, the record frozen).
        let alone = WsrepStatus {
            cluster_size: 1,
            ..non_primary(50)
        };
        let mine = seen(9, 3, &["n1", "n2", "n3"]);
        assert_eq!(
            restore_with("n3", &alone, mine, &[], Some(50), None),
            None,
            "n1 and n2 unreported"
        );
        // n2, here, was in a later one with an arbitrator (unnamed) and n1: two of three out
        // of sight.
        let n2_later = with_view(running("n2", non_primary(48)), seen(11, 3, &["n1", "n2"]));
        assert_eq!(
            restore("n3", &non_primary(50), &[n2_later], Some(50)),
            None,
            "a later component of n2's"
        );
        // A member whose report shows no server, or a non-Primary one, is outside: known.
        let n1_waiting = report("n1", Phase::Waiting, saved(45, false), None);
        let mine = seen(9, 3, &["n1", "n2", "n3"]);
        assert_eq!(
            restore_with("n3", &alone, mine, &[n1_waiting], Some(50), None),
            Some(50)
        );
        // Without any view, nothing is known.
        assert_eq!(
            restore_with("n3", &non_primary(50), None, &[], Some(50), None),
            None
        );
    }

    #[test]
    fn an_undone_restore_puts_back_only_an_earlier_fence_of_the_same_history() {
        let at = |uuid: &str, seqno| Position {
            uuid: uuid.into(),
            seqno,
        };
        let restored = at("u", 50);
        assert!(fence_to_put_back(&at("u", 40), &restored));
        assert!(fence_to_put_back(&at("u", 50), &restored));
        assert!(
            !fence_to_put_back(&at("u", 51), &restored),
            "later: fences off less"
        );
        assert!(
            !fence_to_put_back(&at("old", 10), &restored),
            "another history fences nothing"
        );
    }
}
