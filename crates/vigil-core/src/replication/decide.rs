//! The replication decisions proper. Every function takes what the agent observed (and `now`
//! as a duration since an arbitrary start where time matters) and returns a verdict.

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{GtidPos, ReplStatus};
use crate::config::{Durability, ReplicationSection};

/// Who took over as primary, under which fencing token, and where its history departs from
/// the previous primary's. Kept in the store (no lease) from one promotion to the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    pub node: String,
    /// The store revision of the leader key this primary took: strictly increasing with each
    /// promotion, so a stale primary's token is always smaller.
    pub epoch: u64,
    /// This node's position when it became primary: everything up to here came from the
    /// previous history; everything after is its own.
    pub fork: GtidPos,
}

/// A planned handover, as written by `POST /switchover` and completed by the old primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switchover {
    /// The requested target, if the operator named one.
    pub to: Option<String>,
    /// Set by the primary when it hands over: it is read-only and its last position is `gtid`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub gtid: Option<GtidPos>,
    /// When it was requested or handed over (ms since the epoch): a handover whose target does
    /// not take over within [`SWITCHOVER_TIMEOUT`] no longer binds the election.
    #[serde(default)]
    pub at_ms: u64,
}

/// How long a handed-over switchover waits for its target before any replica may be elected.
pub const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long, in lease TTLs, an agent that found data at its start (and saw no primary serving
/// since) waits for the last primary to report before another node may be chosen: after a
/// restart of the whole cluster the last primary is most likely the most advanced.
pub const RESTART_GRACE_TTLS: u32 = 3;

/// Everything one agent knows when no node holds the leader lease.
#[derive(Debug, Clone, Copy)]
pub struct ElectionContext<'a> {
    pub me: &'a str,
    /// Every data node in configuration order, this one with its fresh status.
    pub members: &'a [Member],
    /// The last promotion, if the cluster ever had a primary.
    pub record: Option<&'a PrimaryRecord>,
    pub durability: Durability,
    /// In `semisync`: the last primary never fell back to asynchronous commits.
    pub semisync_intact: bool,
    pub switchover: Option<&'a Switchover>,
    pub history: &'a FailoverHistory,
    pub section: &'a ReplicationSection,
    /// Wall clock, ms since the epoch.
    pub now_ms: u64,
    /// This agent found data when it started, `since_start` ago, with leases of `ttl`.
    pub resumed: bool,
    /// Since it started, this agent has seen the leader lease held by a node whose agent was
    /// alive then ([`super::primary_served_since_start`]): the cluster was running when it
    /// came up, so it is not part of a whole-cluster restart.
    pub saw_primary: bool,
    pub since_start: Duration,
    pub ttl: Duration,
    /// When this agent first saw no node hold the leader key (wall clock, ms since the epoch):
    /// how long the last primary served decides whether this failover is a flap.
    pub vacant_since_ms: u64,
    /// The primary this agent promised, less than a lease TTL ago, to stay out of elections
    /// for while the store is out of that primary's reach ([`failsafe_answer`]).
    pub failsafe_for: Option<&'a str>,
}

/// The outcome of [`decide_election`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionDecision {
    /// This node takes the lease. `failover`: the history to record first, for an unplanned
    /// failover (it counts for the hold-off); `switchover`: the handover it completes.
    Promote {
        failover: Option<FailoverHistory>,
        switchover: Option<Switchover>,
    },
    /// This node does not promote itself: nobody may, or another node is to (why, for the
    /// operator, after "no primary: ").
    NotMe(String),
    /// This node would be promoted, but the anti-flapping hold-off is not over.
    HeldOff(String),
}

/// Whether this node promotes itself when no node holds the lease.
///
/// - A node that promised a primary, less than a TTL ago, to stay out of elections while that
///   primary cannot reach the store takes no part; nor does an agent that started less than a
///   TTL ago (it may have made such a promise before it was restarted).
/// - A handover younger than [`SWITCHOVER_TIMEOUT`] binds the choice to its target.
/// - An agent that found data at its start and has seen no primary serving since (a restart
///   of the whole cluster) waits [`RESTART_GRACE_TTLS`] lease TTLs for the last primary to
///   report before anyone else is chosen. One restarted alone, while a primary served, does
///   not: that primary's lapse is a failover like any other.
/// - The last primary takes part while it reports; otherwise it is the lapsed one.
/// - A brand-new cluster has acknowledged nothing: its first election needs no semisync proof.
/// - An automatic failover (not a switchover, not the last primary itself) is held off when
///   it is the second flap in a row or later ([`failover_allowed_at`]).
pub fn decide_election(c: &ElectionContext) -> ElectionDecision {
    let old_primary = c.record.map(|r| r.node.as_str());
    let old_reporting = c
        .members
        .iter()
        .any(|m| Some(m.name.as_str()) == old_primary && m.status.is_some());
    if let Some(leader) = c.failsafe_for.filter(|l| *l != c.me) {
        return ElectionDecision::NotMe(format!(
            "{leader} keeps the primary role while the store is out of its reach (this node \
             acknowledged it less than a lease TTL ago)"
        ));
    }
    // A promise goes to the newest primary; the last primary itself made none that counts.
    if c.record.is_some_and(|r| r.node != c.me) && c.since_start < c.ttl {
        return ElectionDecision::NotMe(
            "this agent started less than a lease TTL ago: a promise it made to the last primary may still stand"
                .into(),
        );
    }
    let switchover = c.switchover.filter(|s| {
        s.from.is_some() && c.now_ms.saturating_sub(s.at_ms) < SWITCHOVER_TIMEOUT.as_millis() as u64
    });
    if let Some(old) = old_primary.filter(|_| !old_reporting && switchover.is_none()) {
        // After a restart of the whole cluster, the last primary's agent may not be up yet. One
        // that is up and reports its server down is no reason to wait: that is a failover.
        let in_grace = c.resumed && !c.saw_primary && c.since_start < c.ttl * RESTART_GRACE_TTLS;
        if in_grace && old != c.me && c.members.iter().any(|m| m.name == old && !m.agent_up) {
            return ElectionDecision::NotMe(format!("waiting for {old}, the last primary, to report"));
        }
    }
    let election = Election {
        members: c.members,
        old_primary: old_primary.filter(|_| !old_reporting),
        last_primary: old_primary,
        durability: match c.record {
            Some(_) => c.durability,
            None => Durability::Async,
        },
        semisync_intact: c.semisync_intact,
        switchover_to: switchover.and_then(|s| s.to.as_deref()),
    };
    let chosen = match choose_candidate(&election) {
        Candidate::Promote(n) => n,
        Candidate::NoPromotion(why) => return ElectionDecision::NotMe(why),
    };
    if chosen != c.me {
        return ElectionDecision::NotMe(format!("{chosen} is to be promoted"));
    }
    let automatic = switchover.is_none() && c.record.is_some_and(|r| r.node != c.me);
    if automatic {
        if let Some(at) = failover_allowed_at(c.history, c.section, c.now_ms, c.vacant_since_ms) {
            return ElectionDecision::HeldOff(format!(
                "failover held off for {} s more (anti-flapping: the last primary failed {} s after its \
                 promotion, {} such failovers in a row)",
                (at - c.now_ms).div_ceil(1000),
                c.vacant_since_ms.saturating_sub(c.history.last_ms).div_ceil(1000),
                c.history.flaps.saturating_add(1)
            ));
        }
    }
    ElectionDecision::Promote {
        failover: automatic.then(|| record_failover(c.history, c.section, c.now_ms, c.vacant_since_ms)),
        switchover: switchover.cloned(),
    }
}

/// A node as the candidate choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Its agent reported recently and its server answered the probe.
    pub status: Option<ReplStatus>,
    pub quarantined: bool,
    pub held: bool,
    /// It reports an empty datadir: it holds no write, so an election need not wait for it.
    pub empty: bool,
    /// Its agent runs and reports, whether or not its server answers.
    pub agent_up: bool,
}

/// The outcome of [`choose_candidate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Candidate {
    Promote(String),
    /// No node may be promoted now, and why (shown to the operator as is).
    NoPromotion(String),
}

/// What [`choose_candidate`] needs besides the members.
#[derive(Debug, Clone, Copy)]
pub struct Election<'a> {
    /// Every data node, in configuration order (ties go to the earlier one).
    pub members: &'a [Member],
    /// The primary whose lease lapsed (it takes no part), if one is known.
    pub old_primary: Option<&'a str>,
    /// The last primary, whether or not it takes part: after a semi-sync fall-back, only its
    /// own report shows what it acknowledged.
    pub last_primary: Option<&'a str>,
    pub durability: Durability,
    /// In `semisync`: the last primary never fell back to asynchronous commits.
    pub semisync_intact: bool,
    /// A planned switchover names its target.
    pub switchover_to: Option<&'a str>,
}

/// Which node becomes primary when no node holds the lease.
///
/// The most advanced node counts what it has received but not yet applied (it applies its
/// relay log before it takes writes). Among equals, the one with the least left to apply is
/// promoted sooner; further ties go to the earlier node in the configuration, so
/// every agent that sees the same reports names the same node; the store's compare-and-swap
/// on the leader key settles agents that saw different ones.
///
/// `semisync`: an acknowledged write reached at least one replica's relay log, so the most
/// advanced of *all* replicas holds every acknowledged write. Only when every replica reports
/// (or reports an empty datadir, which holds nothing), and semi-sync never fell back to
/// asynchronous, is that provable; otherwise nobody is promoted and the reason says what is
/// missing.
pub fn choose_candidate(e: &Election) -> Candidate {
    let reporting = |m: &&Member| m.status.is_some();
    let eligible: Vec<&Member> = e
        .members
        .iter()
        .filter(|m| Some(m.name.as_str()) != e.old_primary)
        .filter(|m| reporting(m) && !m.quarantined && !m.held)
        .collect();

    if let Some(to) = e.switchover_to {
        return match eligible.iter().find(|m| m.name == to) {
            Some(m) => Candidate::Promote(m.name.clone()),
            None => Candidate::NoPromotion(format!("the switchover target {to} is not a healthy replica")),
        };
    }

    // With semi-sync broken, only the old primary knows what it acknowledged: it must report,
    // and the candidate must hold everything it wrote.
    let old_primary_status = e
        .last_primary
        .and_then(|name| e.members.iter().find(|m| m.name == name))
        .and_then(|m| m.status.as_ref());
    if e.durability == Durability::Semisync {
        if !e.semisync_intact && old_primary_status.is_none() {
            return Candidate::NoPromotion(
                "semi-sync fell back to asynchronous on the last primary: no replica is known to hold every \
                 acknowledged write (bring the old primary back, or promote by hand)"
                    .into(),
            );
        }
        let silent: Vec<&str> = e
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != e.old_primary && !reporting(m) && !m.empty)
            .map(|m| m.name.as_str())
            .collect();
        if !silent.is_empty() {
            return Candidate::NoPromotion(format!(
                "{} not reporting: an acknowledged write may be only there",
                describe_list(&silent)
            ));
        }
    }

    let Some(best) = most_advanced(&eligible) else {
        return Candidate::NoPromotion(match e.members.iter().filter(reporting).count() {
            0 => "no node reports".into(),
            _ => "no healthy replica to promote".into(),
        });
    };
    if e.durability == Durability::Semisync {
        // Every replica's received position must be within the candidate's.
        let reach = reach(best);
        if let Some(m) = e
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != e.old_primary)
            .find(|m| m.status.as_ref().is_some_and(|s| !reach.covers(&s.reach())))
        {
            return Candidate::NoPromotion(format!(
                "{} received transactions that {} lacks, but cannot be promoted",
                m.name, best.name
            ));
        }
        if let Some(old) = old_primary_status.filter(|_| !e.semisync_intact) {
            if !reach.covers(&old.gtid_binlog) {
                return Candidate::NoPromotion(format!(
                    "semi-sync fell back to asynchronous on the last primary, and {} lacks transactions it wrote",
                    best.name
                ));
            }
        }
    }
    Candidate::Promote(best.name.clone())
}

fn reach(m: &Member) -> GtidPos {
    m.status.as_ref().map(ReplStatus::reach).unwrap_or_default()
}

/// The member whose history goes furthest; among equals, the one with the least left to apply
/// (its promotion waits for its relay log), then the earliest one.
fn most_advanced<'a>(members: &[&'a Member]) -> Option<&'a Member> {
    let applied = |m: &Member| {
        m.status
            .as_ref()
            .map(|s| s.gtid_current.clone())
            .unwrap_or_default()
    };
    let mut best: Option<&'a Member> = None;
    for m in members {
        best = match best {
            None => Some(m),
            Some(b) => match further(&reach(m), &reach(b)).then_with(|| further(&applied(m), &applied(b))) {
                Ordering::Greater => Some(m),
                _ => Some(b),
            },
        };
    }
    best
}

/// How far one history goes against another; histories that cannot be ordered (several
/// domains) by their totals.
fn further(a: &GtidPos, b: &GtidPos) -> Ordering {
    a.progress_cmp(b).unwrap_or_else(|| a.total().cmp(&b.total()))
}

fn describe_list(names: &[&str]) -> String {
    match names {
        [one] => format!("{one} is"),
        _ => format!("{} are", names.join(", ")),
    }
}

/// Whether a primary must fence itself now: its lease was last renewed at `renewed_at` (when
/// the renewal was *sent*), it lasts `ttl`, and fencing takes up to `margin`. A primary that
/// wakes from a pause past this point fences before anything else; it never writes.
pub fn must_fence(renewed_at: Duration, now: Duration, ttl: Duration, margin: Duration) -> bool {
    now + margin >= renewed_at + ttl
}

/// How long before its lease lapses a primary starts fencing: the time to notice (a turn of
/// the loop, `probe_interval`, and a probe that times out after `sql_timeout`) plus the time
/// to carry the fence out (a read_only that times out after `sql_timeout`, then SIGKILL).
pub fn fence_margin(probe_interval: Duration, sql_timeout: Duration) -> Duration {
    probe_interval + sql_timeout * 2
}

/// When a primary's dead-man switch fires, in whole seconds since the Unix epoch, for a lease
/// renewal sent at `renewal_sent` (since the epoch): when the agent would fence itself
/// ([`must_fence`]), rounded down, because the server's event scheduler counts whole seconds.
/// So the server turns read-only by itself no later than the agent would have fenced it.
pub fn deadman_at(renewal_sent: Duration, ttl: Duration, margin: Duration) -> u64 {
    (renewal_sent + ttl).saturating_sub(margin).as_secs()
}

/// The outcome of [`rejoin_verdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejoin {
    /// Its history is part of the primary's: replicate from the primary by GTID.
    Replicate,
    /// Its history holds transactions the primary does not have; it gets no traffic until it
    /// is re-cloned.
    Quarantine(String),
    /// Not decidable yet (the primary's position is unknown).
    Wait(String),
}

/// Whether a node that is not replicating from the current primary may start doing so.
///
/// `mine` is the node's position; `record` says who is primary and from where its history
/// departs; `primary_server_id` and `primary_now` are that primary's server id and current
/// position. Each domain's last transaction of `mine` must be either within the fork (the
/// common history) or one the primary wrote itself since (its server id, no further than
/// the primary's position).
pub fn rejoin_verdict(
    node: &str,
    mine: &GtidPos,
    record: &PrimaryRecord,
    primary_server_id: u32,
    primary_now: Option<&GtidPos>,
) -> Rejoin {
    for g in mine.iter() {
        let one = GtidPos::new([*g]);
        if one.is_within(&record.fork) {
            continue;
        }
        if g.server == primary_server_id {
            let Some(now) = primary_now else {
                return Rejoin::Wait(format!("waiting for {}'s position", record.node));
            };
            if now.covers(&one) {
                continue;
            }
        }
        return Rejoin::Quarantine(format!(
            "its history has transaction {g}, which primary {} does not (it took over at {}); \
             re-clone it with `vigil rejoin --reclone {node}`",
            record.node,
            if record.fork.is_empty() {
                "the start".to_string()
            } else {
                record.fork.to_string()
            }
        ));
    }
    Rejoin::Replicate
}

/// The last automatic failover, and how many failovers in a row were flaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailoverHistory {
    /// Failovers in a row, up to the last one, whose primary had failed within
    /// `failover_holdoff_s` of its own automatic promotion.
    #[serde(default, alias = "count")]
    pub flaps: u32,
    /// When the last automatic failover promoted a primary: milliseconds since the Unix epoch
    /// (wall clock: agents on several hosts compare it).
    pub last_ms: u64,
}

/// Whether a primary that was gone at `vacant_since_ms` failed soon after it was promoted by
/// the last automatic failover: within `failover_holdoff_s`. Such a failover is a flap (the
/// promotion itself may be what fails); one after a primary that served longer is not, however
/// often unrelated faults strike.
fn is_flap(history: &FailoverHistory, section: &ReplicationSection, vacant_since_ms: u64) -> bool {
    history.last_ms > 0
        && vacant_since_ms.saturating_sub(history.last_ms) < section.failover_holdoff_s.saturating_mul(1000)
}

/// When (ms since the epoch) the next automatic failover may start, given `now_ms` and when
/// the primary was found gone; `None` means now. Only a flap that follows a flap is held off
/// (one primary failing soon after its promotion is as likely struck by an unrelated fault, and
/// holding it off costs writes; two in a row are a pattern): until `failover_holdoff_s` after
/// the last automatic failover, doubling with each further flap, up to
/// `failover_holdoff_max_s`.
pub fn failover_allowed_at(
    history: &FailoverHistory,
    section: &ReplicationSection,
    now_ms: u64,
    vacant_since_ms: u64,
) -> Option<u64> {
    let further = history.flaps.checked_sub(1)?;
    if !is_flap(history, section, vacant_since_ms) {
        return None;
    }
    let holdoff = Duration::from_secs(section.failover_holdoff_s)
        .saturating_mul(1 << further.min(16))
        .min(Duration::from_secs(section.failover_holdoff_max_s));
    let at = history.last_ms + holdoff.as_millis() as u64;
    (now_ms < at).then_some(at)
}

/// The history after an automatic failover at `now_ms` of a primary found gone at
/// `vacant_since_ms`.
pub fn record_failover(
    history: &FailoverHistory,
    section: &ReplicationSection,
    now_ms: u64,
    vacant_since_ms: u64,
) -> FailoverHistory {
    FailoverHistory {
        flaps: match is_flap(history, section, vacant_since_ms) {
            true => history.flaps.saturating_add(1),
            false => 0,
        },
        last_ms: now_ms,
    }
}

/// A primary's request, while it cannot reach the store, that the other nodes stay out of
/// elections for a lease TTL (Patroni's DCS failsafe mode). The primary keeps its role only
/// while every other node says yes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeRequest {
    pub leader: String,
    /// The primary's fencing token.
    pub epoch: u64,
    /// The primary gave its role up (it is read-only): a promise made to it no longer binds.
    #[serde(default)]
    pub release: bool,
}

/// Whether this node (`me`, in `role`, serving or following the primary of `epoch`) makes
/// the promise a [`FailsafeRequest`] asks for. It refuses when it is a primary itself or
/// knows of a newer primary: then the one asking must fence itself.
pub fn failsafe_answer(
    me: &str,
    role: super::Role,
    epoch: u64,
    request: &FailsafeRequest,
) -> Result<(), String> {
    if request.leader == me {
        return Err(format!("{me} cannot vouch for itself"));
    }
    if role == super::Role::Primary {
        return Err(format!("{me} is the primary (epoch {epoch})"));
    }
    if epoch > request.epoch {
        return Err(format!(
            "{me} follows a newer primary (epoch {epoch}, not {})",
            request.epoch
        ));
    }
    Ok(())
}

/// Whether a replica may serve reads: it replicates from `primary_addr` with both threads
/// running and is at most `max_lag` seconds behind.
pub fn replica_health(status: &ReplStatus, primary_addr: &str, max_lag: u64) -> Result<(), String> {
    let Some(r) = &status.replica else {
        return Err("not replicating".into());
    };
    if r.source != primary_addr {
        return Err(format!(
            "replicating from {}, not the primary {primary_addr}",
            r.source
        ));
    }
    if !r.io_running || !r.sql_running {
        return Err(match r.last_error.as_str() {
            "" => "replication is stopped".to_string(),
            e => format!("replication stopped: {e}"),
        });
    }
    if !status.read_only {
        return Err("writable, but not the primary".into());
    }
    match r.seconds_behind {
        Some(lag) if lag <= max_lag => Ok(()),
        Some(lag) => Err(format!("{lag} s behind the primary (more than {max_lag} s)")),
        None => Err("lag unknown".into()),
    }
}

/// Whether a node already replicates from `source_addr`: its source is that address and
/// replication runs, or stopped on an error (which is reported, not restarted blindly). A
/// server started again keeps its source but, under `skip_slave_start`, replicates only once
/// told to: both threads stopped without an error is that, and it must be told.
pub fn follows(status: &ReplStatus, source_addr: &str) -> bool {
    status.replica.as_ref().is_some_and(|r| {
        r.source == source_addr && (r.io_running || r.sql_running || !r.last_error.is_empty())
    })
}

/// Whether a node's replication error says its history is not in the source's binary log
/// (MariaDB error 1236 with `gtid_strict_mode`): it holds transactions the source lacks.
pub fn diverged(status: &ReplStatus) -> Option<String> {
    let r = status.replica.as_ref()?;
    let e = &r.last_error;
    (e.contains("1236")
        || e.contains("not in the master's binlog")
        || e.contains("which is not in the master"))
    .then(|| e.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_whose_report_may_stand_in_an_election_stops_receiving_first() {
        use crate::replication::{stops_receiving, Role};
        // The lease is held: replicas go on receiving.
        assert!(!stops_receiving(None, Role::Replica));
        // Vacant: every node but a primary stops, so that its report stays true.
        for role in [Role::Replica, Role::None, Role::Quarantined] {
            assert!(stops_receiving(Some(7), role), "{role:?}");
            assert!(stops_receiving(Some(0), role), "{role:?}: before any primary");
        }
        assert!(!stops_receiving(Some(7), Role::Primary));
    }

    #[test]
    fn the_deadman_fires_no_later_than_the_agent_fences() {
        let (ttl, margin) = (
            Duration::from_secs(5),
            fence_margin(Duration::from_millis(500), Duration::from_secs(1)),
        );
        let sent = Duration::from_millis(1_000_900);
        let at = deadman_at(sent, ttl, margin);
        assert_eq!(at, 1_003);
        // It fires before the agent's own timer says "fence", and less than a second before.
        assert!(!must_fence(sent, Duration::from_secs(at), ttl, margin));
        assert!(must_fence(sent, Duration::from_secs(at + 1), ttl, margin));
        // A margin larger than the TTL fires at once rather than wrapping around.
        assert_eq!(
            deadman_at(Duration::from_secs(10), ttl, Duration::from_secs(60)),
            0
        );
    }
    use crate::replication::ReplicaStatus;

    #[test]
    fn a_replica_restarted_with_its_source_but_stopped_is_not_following() {
        let addr = "127.0.0.1:23306";
        let mut status = replica("n2", "0-1-5", "0-1-5").status.unwrap();
        assert!(follows(&status, addr), "the SQL thread runs");
        let r = status.replica.as_mut().unwrap();
        r.sql_running = false;
        assert!(
            !follows(&status, addr),
            "both threads stopped, no error: start it"
        );
        status.replica.as_mut().unwrap().last_error = "Error 1236".into();
        assert!(
            follows(&status, addr),
            "stopped on an error: reported, not restarted"
        );
        assert!(!follows(&status, "127.0.0.1:23307"), "another source");
        status.replica = None;
        assert!(!follows(&status, addr));
    }

    #[test]
    fn only_a_report_probed_after_the_last_primary_lapsed_stands_in_an_election() {
        use crate::replication::{ReplReport, Role};
        let record = PrimaryRecord {
            node: "n1".into(),
            epoch: 40,
            fork: pos("0-1-10"),
        };
        let report = |after_lapse_of| ReplReport {
            name: "n2".into(),
            role: Role::Replica,
            healthy: true,
            reason: String::new(),
            status: replica("n2", "0-1-12", "0-1-12").status,
            epoch: 40,
            empty: false,
            after_lapse_of,
        };
        // Written while n1 held the lease: n2 may have acknowledged more since.
        assert!(!report(None).after_lapse(Some(&record)));
        // Probed after an earlier primary's lapse, not this one's.
        assert!(!report(Some(7)).after_lapse(Some(&record)));
        assert!(report(Some(40)).after_lapse(Some(&record)));
        // Before any primary, the vacancy is that of epoch 0.
        assert!(report(Some(0)).after_lapse(None));
        assert!(!report(None).after_lapse(None));
        // Semi-sync elections need such a report; asynchronous ones take the latest.
        assert!(!report(None).counts_in_election(Some(&record), Durability::Semisync));
        assert!(report(Some(40)).counts_in_election(Some(&record), Durability::Semisync));
        assert!(report(None).counts_in_election(Some(&record), Durability::Async));
    }

    fn pos(s: &str) -> GtidPos {
        s.parse().unwrap()
    }

    fn replica(name: &str, applied: &str, received: &str) -> Member {
        Member {
            name: name.into(),
            status: Some(ReplStatus {
                read_only: true,
                gtid_current: pos(applied),
                gtid_binlog: pos(applied),
                replica: Some(ReplicaStatus {
                    source: "127.0.0.1:23306".into(),
                    io_running: false,
                    sql_running: true,
                    seconds_behind: None,
                    received: pos(received),
                    last_error: String::new(),
                }),
                ..ReplStatus::default()
            }),
            quarantined: false,
            held: false,
            empty: false,
            agent_up: true,
        }
    }

    fn down(name: &str) -> Member {
        Member {
            name: name.into(),
            status: None,
            quarantined: false,
            held: false,
            empty: false,
            agent_up: false,
        }
    }

    fn election(members: &[Member], durability: Durability) -> Election<'_> {
        Election {
            members,
            old_primary: Some("n1"),
            last_primary: Some("n1"),
            durability,
            semisync_intact: true,
            switchover_to: None,
        }
    }

    #[test]
    fn the_most_advanced_replica_is_promoted_counting_what_it_received() {
        let members = [
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-95"),
        ];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Async)),
            Candidate::Promote("n3".into())
        );
    }

    #[test]
    fn ties_go_to_the_earlier_node_whoever_asks() {
        let members = [
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-90", "0-1-90"),
        ];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Async)),
            Candidate::Promote("n2".into())
        );
        // Concurrent candidates: the same reports in another order name the same node.
        let reordered = [members[0].clone(), members[1].clone(), members[2].clone()];
        let mut shuffled = reordered.to_vec();
        shuffled.swap(1, 2);
        shuffled.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            choose_candidate(&election(&shuffled, Durability::Async)),
            Candidate::Promote("n2".into())
        );
    }

    #[test]
    fn async_promotes_without_every_replica() {
        let members = [down("n1"), replica("n2", "0-1-90", "0-1-90"), down("n3")];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Async)),
            Candidate::Promote("n2".into())
        );
    }

    #[test]
    fn after_a_semisync_fallback_the_reporting_old_primary_shows_what_was_acknowledged() {
        let mut old = replica("n1", "0-1-90", "0-1-90");
        old.status.as_mut().unwrap().replica = None;
        let members = [
            old,
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ];
        // The old primary reports, so it takes part (decide_election leaves it out of
        // `old_primary`), and its report shows what it acknowledged.
        fn broken(members: &[Member]) -> Election<'_> {
            Election {
                old_primary: None,
                last_primary: Some("n1"),
                semisync_intact: false,
                ..election(members, Durability::Semisync)
            }
        }
        assert_eq!(
            choose_candidate(&broken(&members)),
            Candidate::Promote("n1".into())
        );
        // It wrote more than any replica has: only it may be promoted.
        let mut ahead = members.clone();
        let s = ahead[0].status.as_mut().unwrap();
        (s.gtid_binlog, s.gtid_current) = (pos("0-1-95"), pos("0-1-95"));
        assert_eq!(choose_candidate(&broken(&ahead)), Candidate::Promote("n1".into()));
        // It reports but is held: a replica holding everything it wrote may take over, one
        // lacking some of it may not.
        let mut held = members.clone();
        held[0].held = true;
        assert_eq!(choose_candidate(&broken(&held)), Candidate::Promote("n2".into()));
        ahead[0].held = true;
        assert!(matches!(
            choose_candidate(&broken(&ahead)),
            Candidate::NoPromotion(why) if why.contains("n1 received transactions that n2 lacks")
        ));
        // Silent, it is the lapsed one, and nothing is known.
        let gone = [down("n1"), members[1].clone(), members[2].clone()];
        let lapsed = Election {
            old_primary: Some("n1"),
            ..broken(&gone)
        };
        assert!(matches!(
            choose_candidate(&lapsed),
            Candidate::NoPromotion(why) if why.contains("bring the old primary back")
        ));
    }

    #[test]
    fn semisync_does_not_wait_for_a_node_with_an_empty_datadir() {
        // n3's data was set aside for a re-clone when the primary went down: it holds nothing,
        // and it can only get data from a new primary.
        let empty = Member {
            empty: true,
            ..down("n3")
        };
        let members = [down("n1"), replica("n2", "0-1-90", "0-1-90"), empty];
        let e = Election {
            old_primary: Some("n1"),
            ..election(&members, Durability::Semisync)
        };
        assert_eq!(choose_candidate(&e), Candidate::Promote("n2".into()));
    }

    #[test]
    fn semisync_needs_every_replica_to_prove_nothing_acknowledged_is_lost() {
        let members = [down("n1"), replica("n2", "0-1-90", "0-1-90"), down("n3")];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Semisync)),
            Candidate::NoPromotion("n3 is not reporting: an acknowledged write may be only there".into())
        );
        let members = [
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-90", "0-1-91"),
        ];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Semisync)),
            Candidate::Promote("n3".into())
        );
    }

    #[test]
    fn semisync_that_fell_back_promotes_nobody() {
        let members = [
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-90", "0-1-90"),
        ];
        let e = Election {
            semisync_intact: false,
            ..election(&members, Durability::Semisync)
        };
        assert!(matches!(choose_candidate(&e), Candidate::NoPromotion(why) if why.contains("fell back")));
    }

    #[test]
    fn quarantined_held_and_silent_nodes_are_never_chosen() {
        let mut q = replica("n2", "0-1-99", "0-1-99");
        q.quarantined = true;
        let mut h = replica("n3", "0-1-98", "0-1-98");
        h.held = true;
        let members = [down("n1"), q, h, replica("n4", "0-1-10", "0-1-10")];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Async)),
            Candidate::Promote("n4".into())
        );
        let members = [down("n1"), down("n2")];
        assert_eq!(
            choose_candidate(&election(&members, Durability::Async)),
            Candidate::NoPromotion("no node reports".into())
        );
    }

    #[test]
    fn a_returning_primary_without_a_lease_can_be_chosen_again_after_a_full_outage() {
        // Nobody holds the lease and the old primary is not known to have lapsed: it may win.
        let mut n1 = replica("n1", "0-1-100", "0-1-100");
        n1.status.as_mut().unwrap().replica = None;
        let members = [n1, replica("n2", "0-1-90", "0-1-90")];
        let e = Election {
            old_primary: None,
            ..election(&members, Durability::Async)
        };
        assert_eq!(choose_candidate(&e), Candidate::Promote("n1".into()));
    }

    #[test]
    fn a_switchover_promotes_its_target_or_nobody() {
        let members = [
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-90", "0-1-90"),
        ];
        let e = Election {
            switchover_to: Some("n3"),
            ..election(&members, Durability::Semisync)
        };
        assert_eq!(choose_candidate(&e), Candidate::Promote("n3".into()));
        let e = Election {
            switchover_to: Some("n9"),
            ..e
        };
        assert!(matches!(choose_candidate(&e), Candidate::NoPromotion(_)));
    }

    #[test]
    fn a_hung_primary_is_fenced_before_its_lease_lapses() {
        // Defaults: 500 ms turns, 1 s SQL timeout, 5 s lease. The last renewal at 100 s; the
        // primary hangs. The first turn at or after the fence point may start up to a turn plus
        // a timed-out probe late, and the fence itself may take a timed-out read_only.
        let (turn, sql, ttl) = (
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(5),
        );
        let margin = fence_margin(turn, sql);
        let renewed = Duration::from_secs(100);
        let first = (0..)
            .map(|i| renewed + turn * i)
            .find(|now| must_fence(renewed, *now, ttl, margin))
            .unwrap();
        assert!(
            first + turn + sql + sql <= renewed + ttl,
            "fenced at {first:?} + up to 2.5 s"
        );
        assert!(
            !must_fence(renewed, renewed + turn * 4, ttl, margin),
            "four missed turns are tolerated"
        );
    }

    #[test]
    fn lease_expiry_fences_before_the_lease_can_run_out() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let (ttl, margin) = (s(5), ms(1000));
        assert!(!must_fence(s(100), s(100), ttl, margin));
        assert!(!must_fence(s(100), ms(103_999), ttl, margin));
        assert!(must_fence(s(100), s(104), ttl, margin));
        // A primary paused for a minute wakes long after its lease expired: fence first.
        assert!(must_fence(s(100), s(160), ttl, margin));
    }

    fn record(node: &str, fork: &str) -> PrimaryRecord {
        PrimaryRecord {
            node: node.into(),
            epoch: 7,
            fork: pos(fork),
        }
    }

    #[test]
    fn an_old_primary_with_nothing_beyond_the_fork_rejoins() {
        let r = record("n2", "0-1-100");
        assert_eq!(
            rejoin_verdict("n1", &pos("0-1-100"), &r, 2, Some(&pos("0-2-150"))),
            Rejoin::Replicate
        );
        assert_eq!(
            rejoin_verdict("n1", &pos("0-1-40"), &r, 2, None),
            Rejoin::Replicate
        );
    }

    #[test]
    fn an_old_primary_with_an_errant_transaction_is_quarantined() {
        let r = record("n2", "0-1-100");
        // n1 committed 101 that never reached n2; n2 wrote its own 101..150 since.
        let v = rejoin_verdict("n1", &pos("0-1-101"), &r, 2, Some(&pos("0-2-150")));
        assert!(
            matches!(&v, Rejoin::Quarantine(why) if why.contains("0-1-101") && why.contains("--reclone n1")),
            "{v:?}"
        );
    }

    #[test]
    fn a_replica_that_followed_the_new_primary_rejoins_after_a_restart() {
        let r = record("n2", "0-1-100");
        assert_eq!(
            rejoin_verdict("n3", &pos("0-2-120"), &r, 2, Some(&pos("0-2-150"))),
            Rejoin::Replicate
        );
        // The primary's position is not known yet: wait rather than guess.
        assert!(matches!(
            rejoin_verdict("n3", &pos("0-2-120"), &r, 2, None),
            Rejoin::Wait(_)
        ));
        // A transaction with the primary's id that the primary does not have: not ours.
        assert!(matches!(
            rejoin_verdict("n3", &pos("0-2-160"), &r, 2, Some(&pos("0-2-150"))),
            Rejoin::Quarantine(_)
        ));
    }

    #[test]
    fn a_node_of_an_older_primary_that_missed_a_failover_is_quarantined_only_past_the_fork() {
        // n2 took over from n1 at 0-1-100; later n3 took over from n2 at 0-2-130.
        let r = record("n3", "0-2-130");
        assert_eq!(
            rejoin_verdict("n1", &pos("0-2-125"), &r, 3, Some(&pos("0-3-140"))),
            Rejoin::Replicate
        );
        assert!(matches!(
            rejoin_verdict("n2", &pos("0-2-131"), &r, 3, Some(&pos("0-3-140"))),
            Rejoin::Quarantine(_)
        ));
    }

    struct Ctx {
        members: Vec<Member>,
        record: Option<PrimaryRecord>,
        switchover: Option<Switchover>,
        history: FailoverHistory,
        section: ReplicationSection,
        vacant_since_ms: u64,
        failsafe_for: Option<String>,
        saw_primary: bool,
        semisync_intact: bool,
    }

    impl Ctx {
        fn new(members: Vec<Member>) -> Ctx {
            Ctx {
                members,
                record: Some(record("n1", "0-1-10")),
                switchover: None,
                history: FailoverHistory::default(),
                section: ReplicationSection::default(),
                vacant_since_ms: 0,
                failsafe_for: None,
                saw_primary: false,
                semisync_intact: true,
            }
        }

        fn decide(
            &self,
            me: &str,
            durability: Durability,
            now_ms: u64,
            resumed: bool,
            since_start: u64,
        ) -> ElectionDecision {
            decide_election(&ElectionContext {
                me,
                members: &self.members,
                record: self.record.as_ref(),
                durability,
                semisync_intact: self.semisync_intact,
                switchover: self.switchover.as_ref(),
                history: &self.history,
                section: &self.section,
                now_ms,
                resumed,
                saw_primary: self.saw_primary,
                since_start: Duration::from_secs(since_start),
                ttl: Duration::from_secs(5),
                vacant_since_ms: if self.vacant_since_ms == 0 {
                    now_ms
                } else {
                    self.vacant_since_ms
                },
                failsafe_for: self.failsafe_for.as_deref(),
            })
        }
    }

    const T: u64 = 1_000_000;

    /// After a semi-sync fall-back the old primary's own report shows what it acknowledged:
    /// once it reports again, the election goes on (before, `decide_election` left a reporting
    /// old primary out of the check, so nobody was ever promoted).
    #[test]
    fn after_a_semisync_fallback_the_old_primary_is_elected_again_once_it_reports() {
        let mut old = replica("n1", "0-1-95", "0-1-95");
        old.status.as_mut().unwrap().replica = None;
        let members = vec![
            old,
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ];
        let ctx = Ctx {
            semisync_intact: false,
            ..Ctx::new(members.clone())
        };
        assert_eq!(
            ctx.decide("n1", Durability::Semisync, T, false, 600),
            ElectionDecision::Promote {
                failover: None,
                switchover: None
            }
        );
        assert_eq!(
            ctx.decide("n2", Durability::Semisync, T, false, 600),
            ElectionDecision::NotMe("n1 is to be promoted".into())
        );
        // While it is silent, nobody is.
        let gone = Ctx {
            members: vec![down("n1"), members[1].clone(), members[2].clone()],
            ..ctx
        };
        assert!(matches!(
            gone.decide("n2", Durability::Semisync, T, false, 600),
            ElectionDecision::NotMe(why) if why.contains("bring the old primary back")
        ));
    }

    #[test]
    fn a_lapsed_primary_is_replaced_automatically_by_the_chosen_node_only() {
        let ctx = Ctx::new(vec![
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ]);
        assert_eq!(
            ctx.decide("n2", Durability::Async, T, false, 600),
            ElectionDecision::Promote {
                failover: Some(FailoverHistory { flaps: 0, last_ms: T }),
                switchover: None
            }
        );
        assert_eq!(
            ctx.decide("n3", Durability::Async, T, false, 600),
            ElectionDecision::NotMe("n2 is to be promoted".into())
        );
    }

    #[test]
    fn among_equally_advanced_replicas_the_one_with_less_to_apply_is_promoted() {
        // (n2 applied, received), (n3 applied, received), chosen
        let cases = [
            // Both received up to 90; n2 has 20 transactions left in its relay log, n3 none.
            (("0-1-70", "0-1-90"), ("0-1-90", "0-1-90"), "n3"),
            // Further received still wins over less to apply.
            (("0-1-70", "0-1-91"), ("0-1-90", "0-1-90"), "n2"),
            // All equal: the earlier one.
            (("0-1-90", "0-1-90"), ("0-1-90", "0-1-90"), "n2"),
        ];
        for ((a2, r2), (a3, r3), chosen) in cases {
            let members = [down("n1"), replica("n2", a2, r2), replica("n3", a3, r3)];
            for durability in [Durability::Async, Durability::Semisync] {
                assert_eq!(
                    choose_candidate(&election(&members, durability)),
                    Candidate::Promote(chosen.into()),
                    "n2 {a2}/{r2}, n3 {a3}/{r3}, {durability:?}"
                );
            }
        }
    }

    #[test]
    fn a_restarted_cluster_waits_for_its_last_primary_only_within_the_grace() {
        let ctx = Ctx::new(vec![
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ]);
        let waiting = ElectionDecision::NotMe("waiting for n1, the last primary, to report".into());
        assert_eq!(ctx.decide("n2", Durability::Async, T, true, 14), waiting);
        // An agent that is up and says its server is down: no reason to wait.
        let mut crashed = ctx.members.clone();
        crashed[0].agent_up = true;
        let c = Ctx {
            members: crashed,
            ..Ctx::new(vec![])
        };
        assert!(matches!(
            c.decide("n2", Durability::Async, T, true, 6),
            ElectionDecision::Promote { .. }
        ));
        // Three TTLs after the agent started, it stops waiting.
        assert!(matches!(
            ctx.decide("n2", Durability::Async, T, true, 15),
            ElectionDecision::Promote { .. }
        ));
        // An agent that started on an empty datadir (a new cluster) never waits for the last
        // primary (only a lease TTL, as every agent that just started).
        assert!(matches!(
            ctx.decide("n2", Durability::Async, T, false, 5),
            ElectionDecision::Promote { .. }
        ));
        // An agent restarted alone, while the last primary served, does not wait when that
        // primary's lease lapses: it is a failover, not a whole-cluster restart (found by
        // vigil chaos: a KillAgent on the candidate 6 s before an isolation of the primary
        // made the failover wait 4.9 s more).
        let alone = Ctx {
            saw_primary: true,
            members: ctx.members.clone(),
            ..Ctx::new(vec![])
        };
        assert!(matches!(
            alone.decide("n2", Durability::Async, T, true, 6),
            ElectionDecision::Promote { .. }
        ));
        // Once the last primary reports, it takes part like any node (and here it wins).
        let mut back = ctx.members.clone();
        back[0] = replica("n1", "0-1-100", "0-1-100");
        let ctx = Ctx { members: back, ..ctx };
        assert_eq!(
            ctx.decide("n1", Durability::Async, T, true, 1),
            ElectionDecision::Promote {
                failover: None,
                switchover: None
            }
        );
    }

    #[test]
    fn a_new_cluster_needs_no_semisync_proof_but_an_old_one_does() {
        let mut ctx = Ctx::new(vec![replica("n1", "0-1-13", "0-1-13"), down("n2"), down("n3")]);
        ctx.record = None;
        assert_eq!(
            ctx.decide("n1", Durability::Semisync, T, false, 1),
            ElectionDecision::Promote {
                failover: None,
                switchover: None
            }
        );
        let ctx = Ctx::new(vec![down("n1"), replica("n2", "0-1-13", "0-1-13"), down("n3")]);
        assert!(matches!(
            ctx.decide("n2", Durability::Semisync, T, false, 600),
            ElectionDecision::NotMe(why) if why.contains("n3 is not reporting")
        ));
    }

    #[test]
    fn a_handover_binds_the_election_until_it_times_out_and_is_never_held_off() {
        let mut ctx = Ctx::new(vec![
            replica("n1", "0-1-90", "0-1-90"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-90", "0-1-90"),
        ]);
        ctx.history = FailoverHistory {
            flaps: 3,
            last_ms: T - 1000,
        };
        ctx.switchover = Some(Switchover {
            to: Some("n3".into()),
            from: Some("n1".into()),
            gtid: Some(pos("0-1-90")),
            at_ms: T,
        });
        assert_eq!(
            ctx.decide("n3", Durability::Async, T + 100, false, 600),
            ElectionDecision::Promote {
                failover: None,
                switchover: ctx.switchover.clone()
            }
        );
        assert!(matches!(
            ctx.decide("n2", Durability::Async, T + 100, false, 600),
            ElectionDecision::NotMe(_)
        ));
        // 30 s later the handover no longer binds: the most advanced node (n1, first) may win.
        let late = T + SWITCHOVER_TIMEOUT.as_millis() as u64;
        assert_eq!(
            ctx.decide("n1", Durability::Async, late, false, 600),
            ElectionDecision::Promote {
                failover: None,
                switchover: None
            }
        );
        // A request the primary has not handed over yet binds nobody.
        ctx.switchover.as_mut().unwrap().from = None;
        assert!(matches!(
            ctx.decide("n1", Durability::Async, T + 100, false, 600),
            ElectionDecision::Promote { .. }
        ));
    }

    #[test]
    fn only_a_second_failure_in_a_row_soon_after_its_promotion_holds_the_next_failover_off() {
        let mut ctx = Ctx::new(vec![
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ]);
        // n1 was promoted at T by a failover that replaced a primary lost 3 s after its own
        // promotion (a flap), and n1 is found gone 4 s later: the second flap in a row.
        ctx.history = FailoverHistory { flaps: 1, last_ms: T };
        ctx.vacant_since_ms = T + 4_000;
        assert_eq!(
            ctx.decide("n2", Durability::Async, T + 4_500, false, 600),
            ElectionDecision::HeldOff(
                "failover held off for 6 s more (anti-flapping: the last primary failed 4 s after its \
                 promotion, 2 such failovers in a row)"
                    .into()
            )
        );
        assert_eq!(
            ctx.decide("n2", Durability::Async, T + 10_000, false, 600),
            ElectionDecision::Promote {
                failover: Some(FailoverHistory {
                    flaps: 2,
                    last_ms: T + 10_000
                }),
                switchover: None
            }
        );
        // The first flap is not held off, but counted.
        ctx.history.flaps = 0;
        assert_eq!(
            ctx.decide("n2", Durability::Async, T + 4_500, false, 600),
            ElectionDecision::Promote {
                failover: Some(FailoverHistory {
                    flaps: 1,
                    last_ms: T + 4_500
                }),
                switchover: None
            }
        );
        // The same failover after n1 served 25 s is not held off, and resets the count.
        ctx.history.flaps = 3;
        ctx.vacant_since_ms = T + 25_000;
        assert_eq!(
            ctx.decide("n2", Durability::Async, T + 25_500, false, 600),
            ElectionDecision::Promote {
                failover: Some(FailoverHistory {
                    flaps: 0,
                    last_ms: T + 25_500
                }),
                switchover: None
            }
        );
    }

    #[test]
    fn faults_every_fifteen_seconds_are_not_flapping_but_promotions_that_fail_at_once_are() {
        let section = ReplicationSection {
            failover_holdoff_s: 10,
            failover_holdoff_max_s: 60,
            ..ReplicationSection::default()
        };
        // A primary lost every 15 s (found gone 1 s before each failover): never held off.
        let mut h = FailoverHistory::default();
        for i in 1..20u64 {
            let now = 1_000_000 + i * 15_000;
            assert_eq!(
                failover_allowed_at(&h, &section, now, now - 1000),
                None,
                "failover {i}"
            );
            h = record_failover(&h, &section, now, now - 1000);
            assert_eq!(h.flaps, 0);
        }
        // Each new primary fails 2 s after its promotion: the first such failover goes ahead at
        // once, then 10 s, 20 s, 40 s, then 60 s at most after the promotion.
        let mut h = FailoverHistory::default();
        let mut now = 3_000_000;
        h = record_failover(&h, &section, now, now);
        let mut waits = Vec::new();
        for _ in 0..6 {
            let gone = now + 2_000;
            let at = failover_allowed_at(&h, &section, gone, gone).unwrap_or(gone);
            waits.push((at - now) / 1000);
            assert_eq!(failover_allowed_at(&h, &section, at, gone), None);
            h = record_failover(&h, &section, at, gone);
            now = at;
        }
        assert_eq!(waits, [2, 10, 20, 40, 60, 60]);
        // A primary that then serves a minute resets the count.
        let gone = now + 60_000;
        assert_eq!(failover_allowed_at(&h, &section, gone, gone), None);
        assert_eq!(record_failover(&h, &section, gone, gone).flaps, 0);
        // The history written by earlier versions ("count") still reads.
        let old: FailoverHistory = serde_json::from_str(r#"{"count":3,"last_ms":5}"#).unwrap();
        assert_eq!(old, FailoverHistory { flaps: 3, last_ms: 5 });
    }

    #[test]
    fn a_failsafe_promise_keeps_a_node_out_of_elections() {
        let mut ctx = Ctx::new(vec![
            down("n1"),
            replica("n2", "0-1-90", "0-1-90"),
            replica("n3", "0-1-80", "0-1-80"),
        ]);
        ctx.failsafe_for = Some("n1".into());
        assert_eq!(
            ctx.decide("n2", Durability::Async, T, false, 600),
            ElectionDecision::NotMe(
                "n1 keeps the primary role while the store is out of its reach (this node acknowledged \
                 it less than a lease TTL ago)"
                    .into()
            )
        );
        // an agent restarted less than a TTL ago may have promised before: it waits too
        ctx.failsafe_for = None;
        assert!(matches!(
            ctx.decide("n2", Durability::Async, T, false, 4),
            ElectionDecision::NotMe(why) if why.contains("started less than a lease TTL ago")
        ));
        assert!(matches!(
            ctx.decide("n2", Durability::Async, T, false, 5),
            ElectionDecision::Promote { .. }
        ));
    }

    #[test]
    fn a_failsafe_request_is_refused_by_a_primary_and_by_a_follower_of_a_newer_one() {
        use crate::replication::Role;
        let req = FailsafeRequest {
            leader: "n1".into(),
            epoch: 40,
            release: false,
        };
        assert_eq!(failsafe_answer("n2", Role::Replica, 40, &req), Ok(()));
        assert_eq!(failsafe_answer("n2", Role::None, 12, &req), Ok(()));
        assert_eq!(
            failsafe_answer("n2", Role::Primary, 41, &req),
            Err("n2 is the primary (epoch 41)".into())
        );
        assert_eq!(
            failsafe_answer("n3", Role::Replica, 41, &req),
            Err("n3 follows a newer primary (epoch 41, not 40)".into())
        );
        assert!(failsafe_answer("n1", Role::Replica, 40, &req).is_err());
    }

    fn streaming(source: &str, lag: Option<u64>) -> ReplStatus {
        ReplStatus {
            read_only: true,
            replica: Some(ReplicaStatus {
                source: source.into(),
                io_running: true,
                sql_running: true,
                seconds_behind: lag,
                received: pos("0-1-5"),
                last_error: String::new(),
            }),
            ..ReplStatus::default()
        }
    }

    #[test]
    fn replicas_serve_reads_only_when_streaming_from_the_primary_within_the_lag() {
        let p = "127.0.0.1:23306";
        assert_eq!(replica_health(&streaming(p, Some(0)), p, 10), Ok(()));
        assert!(replica_health(&streaming(p, Some(11)), p, 10)
            .unwrap_err()
            .contains("11 s behind"));
        assert!(replica_health(&streaming("127.0.0.1:1", Some(0)), p, 10).is_err());
        assert!(replica_health(&streaming(p, None), p, 10).is_err());
        let mut writable = streaming(p, Some(0));
        writable.read_only = false;
        assert!(replica_health(&writable, p, 10).is_err());
        assert!(replica_health(&ReplStatus::default(), p, 10).is_err());
    }

    #[test]
    fn a_history_the_source_lacks_is_recognised_from_the_replication_error() {
        let mut s = streaming("x:1", None);
        s.replica.as_mut().unwrap().last_error = "Got fatal error 1236 from master when reading data from binary log: 'Error: connecting slave requested to start from GTID 0-1-101, which is not in the master's binlog'".into();
        assert!(diverged(&s).is_some());
        assert!(diverged(&streaming("x:1", None)).is_none());
    }
}
