//! How long to wait before restarting a node that crashed or failed to start, and how long a
//! reason to restart one must last before it counts.

use std::time::{Duration, Instant};

use super::MemberReport;

/// A node that has run this long counts as recovered: its next crash starts the backoff anew.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Bounded exponential backoff: 1 s after the first failure, doubling, at most 60 s (at most
/// [`URGENT_RESTART_DELAY`] while no member serves: [`restart_due`]). A node that keeps
/// crashing is retried, but never in a tight loop.
pub fn restart_delay(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(60))
}

/// The longest a failed node waits before it restarts while no other member is in a Primary
/// component, whatever its backoff ([`restart_due`]).
pub const URGENT_RESTART_DELAY: Duration = Duration::from_secs(4);

/// Whether a failed node restarts now: its backoff ([`restart_delay`]) is over
/// (`backoff_over`), or it has been down for [`URGENT_RESTART_DELAY`] (`failed_for`) and no
/// other member's report shows a Primary component. The backoff spares a serving cluster a
/// server that keeps failing; with none serving, the cluster may be waiting for this node's
/// data, and a restart every few seconds is still no tight loop. Seen in `vigil chaos`:
/// unrelated faults every 10-30 s raised a node's backoff to 32 s (it never ran the 60 s of
/// [`BACKOFF_RESET`] between them), and the other members, outside any Primary component,
/// waited those 32 s for it to start the cluster from its data.
pub fn restart_due(backoff_over: bool, failed_for: Duration, others: &[MemberReport]) -> bool {
    backoff_over || (failed_for >= URGENT_RESTART_DELAY && !others.iter().any(MemberReport::in_primary))
}

/// How long a reason to restart a running or joining server (its group communication stopped,
/// nothing left to join) must last: a view change passes within it.
pub const RESTART_GRACE: Duration = Duration::from_secs(3);

/// How long a server may stay outside the Primary component another member serves, of the
/// same history, before it is restarted ([`super::stranded`]): Galera merges a healed
/// partition by itself well within it.
pub const STRANDED_GRACE: Duration = Duration::from_secs(30);

/// How long a running server may leave its agent's probes unanswered before the agent kills
/// it: a paused or wedged server blocks every election (it may be in a Primary component), and
/// Galera's peers have long evicted it by then.
pub const SILENT_GRACE: Duration = Duration::from_secs(60);

/// How many restores in a row ([`super::restore_primary`]) a running node's server may ignore
/// before its agent restarts it instead, to start the cluster from its data like a stopped
/// node. Seen in `vigil chaos`: a server took an incremental transfer when a partition healed,
/// its group layer made itself Primary alone when its donor was evicted, its state still
/// incomplete, and the server stayed non-Primary for the rest of the run, ignoring every
/// `pc.bootstrap` ("ignoring 'pc.bootstrap' in state PRIM").
pub const RESTORE_ATTEMPTS: u32 = 2;

/// A condition that must hold without a break for a grace period before the agent acts on it.
#[derive(Debug, Default)]
pub struct Sustained {
    since: Option<Instant>,
}

impl Sustained {
    /// Records whether the condition holds at `now`: true once it has held for `grace` without
    /// a break, and then it starts over.
    pub fn held_for(&mut self, holds: bool, now: Instant, grace: Duration) -> bool {
        if !holds {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        let held = now.duration_since(since) >= grace;
        if held {
            self.since = None;
        }
        held
    }

    /// [`Sustained::held_for`] on a reason that may be absent: the reason once it has held for
    /// `grace` without a break, else `None`.
    pub fn confirm<T>(&mut self, reason: Option<T>, now: Instant, grace: Duration) -> Option<T> {
        let held = self.held_for(reason.is_some(), now, grace);
        reason.filter(|_| held)
    }
}

/// How long a node that made its component Primary while running ([`super::restore_primary`])
/// waits for its server to show it: Galera ignores `pc.bootstrap` in any state but non-Primary
/// (a view change under way), and says so only in its log. Then the node runs on as before.
pub const RESTORE_GRACE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::galera::test_support::synced;
    use crate::galera::{DiskState, Phase, WsrepStatus};

    fn member(name: &str, phase: Phase, status: Option<WsrepStatus>) -> MemberReport {
        MemberReport {
            name: name.into(),
            phase,
            disk: DiskState::Empty,
            status,
            departed: None,
            last_primary: None,
        }
    }

    #[test]
    fn a_failed_node_skips_its_backoff_while_no_member_serves() {
        let s = Duration::from_secs;
        let serving = [
            member("n1", Phase::Running, Some(synced(9))),
            member("n2", Phase::Waiting, None),
        ];
        let down = [
            member("n1", Phase::Waiting, None),
            member("n2", Phase::Failed, None),
        ];
        let outside = WsrepStatus {
            cluster_status: "non-Primary".into(),
            ..synced(9)
        };
        let stranded = [
            member("n1", Phase::Running, Some(outside)),
            member("n2", Phase::Waiting, None),
        ];
        // a serving cluster: the backoff holds
        assert!(!restart_due(false, s(20), &serving));
        assert!(restart_due(true, s(20), &serving));
        // none serving: after the urgent delay, whatever the backoff
        assert!(restart_due(false, URGENT_RESTART_DELAY, &down));
        assert!(restart_due(false, s(5), &stranded));
        assert!(!restart_due(false, s(2), &down));
    }

    #[test]
    fn a_condition_counts_once_it_held_for_the_grace_without_a_break() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let grace = Duration::from_secs(3);
        let mut c = Sustained::default();
        assert!(!c.held_for(true, at(0), grace));
        assert!(!c.held_for(true, at(2_999), grace));
        assert!(!c.held_for(false, at(3_000), grace), "a break starts it over");
        assert!(!c.held_for(true, at(3_500), grace));
        assert!(!c.held_for(true, at(6_499), grace));
        assert!(c.held_for(true, at(6_500), grace));
        assert!(!c.held_for(true, at(6_600), grace), "acted on: counted anew");
        assert!(c.held_for(true, at(9_600), grace));
    }

    #[test]
    fn a_reason_is_confirmed_once_it_held_for_the_grace() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let grace = Duration::from_secs(3);
        let mut c = Sustained::default();
        assert_eq!(c.confirm(Some("gone"), at(0), grace), None);
        assert_eq!(
            c.confirm(None::<&str>, at(1_000), grace),
            None,
            "a break starts it over"
        );
        assert_eq!(c.confirm(Some("gone"), at(2_000), grace), None);
        assert_eq!(c.confirm(Some("still"), at(5_000), grace), Some("still"));
    }

    #[test]
    fn doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(0).as_secs(), 1);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 60);
    }
}
