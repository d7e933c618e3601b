//! How long to wait before restarting a node that crashed or failed to start, and how long a
//! reason to restart one must last before it counts.

use std::time::{Duration, Instant};

use super::{local_state, MemberReport, WsrepStatus};

/// A node that has run this long counts as recovered: its next crash starts the backoff anew.
pub const BACKOFF_RESET: Duration = Duration::from_secs(60);

/// Bounded exponential backoff: 1 s after the first failure, doubling, at most 60 s. A node
/// that keeps crashing is retried, but never in a tight loop.
pub fn restart_delay(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(6);
    Duration::from_secs((1u64 << exp).min(60))
}

/// How long a reason to restart a running or joining server (its group communication stopped,
/// nothing left to join) must last: a view change passes within it.
pub const RESTART_GRACE: Duration = Duration::from_secs(3);

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
}

/// How long a joining server may sit still in a Primary component before its join is restarted
/// ([`JoinWatch`]). An incremental transfer moves its position within seconds; a snapshot
/// keeps its donor desynced, and the server does not answer while it receives or prepares one.
pub const STALLED_JOIN_GRACE: Duration = Duration::from_secs(30);

/// Watches a joining server for a join Galera will never finish: the server answers, sits in a
/// Primary component as a Joiner, no member is donating, and its position has not moved for
/// [`STALLED_JOIN_GRACE`]. Seen in `vigil chaos`: a snapshot arrived and was installed, then the
/// group refused the joiner's JOIN ("Rejecting JOIN message ...: new State Transfer required":
/// the cluster had moved past what the donor's write-set cache still held), and the server
/// stayed a Joiner without asking again, for the five minutes until the run gave up. A new
/// join (the server restarted, its transferred data read like any other) finishes; the joiner
/// holds nothing the cluster lacks, so restarting it loses nothing.
#[derive(Debug, Default)]
pub struct JoinWatch {
    /// Since when, and at which position, the join has looked stalled.
    still: Option<(Instant, i64)>,
}

impl JoinWatch {
    /// Looks at the joining server's status and the other members' reports at `now`; returns why
    /// the join must be restarted once it has been stalled for [`STALLED_JOIN_GRACE`], and then
    /// starts over.
    pub fn stalled(&mut self, status: &WsrepStatus, others: &[MemberReport], now: Instant) -> Option<String> {
        let donating = others.iter().any(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.local_state == local_state::DONOR_DESYNCED)
        });
        let joiner = status.is_primary() && status.local_state == local_state::JOINING;
        if !joiner || donating {
            self.still = None;
            return None;
        }
        let seqno = status.last_committed;
        match self.still {
            Some((since, at)) if at == seqno => {
                if now.duration_since(since) < STALLED_JOIN_GRACE {
                    return None;
                }
                self.still = None;
                Some(format!(
                    "its server has been a Joiner in the Primary component for {} s at seqno {seqno} \
                     with no member donating: Galera will not finish this join",
                    STALLED_JOIN_GRACE.as_secs()
                ))
            }
            _ => {
                self.still = Some((now, seqno));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::galera::test_support::synced;
    use crate::galera::{DiskState, Phase};

    #[test]
    fn a_join_that_sits_still_with_no_donor_is_restarted_after_the_grace() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let joiner = |seqno: i64| WsrepStatus {
            local_state: local_state::JOINING,
            local_state_comment: "Joining".into(),
            ..synced(seqno)
        };
        let member = |local_state: u8| MemberReport {
            name: "n3".into(),
            phase: Phase::Running,
            disk: DiskState::Empty,
            status: Some(WsrepStatus {
                local_state,
                ..synced(700)
            }),
            departed: None,
        };
        let synced_only = [member(local_state::SYNCED)];
        let mut w = JoinWatch::default();
        assert_eq!(w.stalled(&joiner(619), &synced_only, at(0)), None);
        assert_eq!(w.stalled(&joiner(619), &synced_only, at(29)), None);
        let why = w.stalled(&joiner(619), &synced_only, at(30)).expect("stalled");
        assert!(why.contains("seqno 619"), "{why}");
        assert_eq!(
            w.stalled(&joiner(619), &synced_only, at(31)),
            None,
            "acted on: counted anew"
        );

        // Moving (an incremental transfer applying), a donor serving a snapshot, or the server
        // outside a Primary component (orphaned_join's case) each start the count over.
        let mut w = JoinWatch::default();
        let donor = [member(local_state::DONOR_DESYNCED)];
        let mut outside = joiner(619);
        outside.cluster_status = "non-Primary".into();
        let steps: [(WsrepStatus, &[MemberReport]); 5] = [
            (joiner(600), &synced_only),
            (joiner(610), &synced_only),
            (joiner(610), &donor),
            (outside, &synced_only),
            (synced(619), &synced_only),
        ];
        for (i, (status, others)) in steps.iter().enumerate() {
            let now = at(i as u64 * 40);
            assert_eq!(w.stalled(status, others, now), None, "step {i}");
        }
        assert_eq!(w.stalled(&joiner(619), &synced_only, at(200)), None);
        assert!(w.stalled(&joiner(619), &synced_only, at(230)).is_some());
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
    fn doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(restart_delay(0).as_secs(), 1);
        assert_eq!(restart_delay(u32::MAX).as_secs(), 60);
    }
}
