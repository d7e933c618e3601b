//! What a writable semi-sync primary does with its semi-sync each turn: fall back to
//! asynchronous commits only when a clone would otherwise never finish, and always record the
//! fall-back in the store before any commit is released by it; switch back on once a replica
//! acknowledges again, and record that only once a replica holds everything committed
//! meanwhile.
//!
//! ```text
//!   on,  no replica connected, a backup streaming ──► FallBack  (record "off", then switch off)
//!   off, or off and on again unseen, not recorded ──► RecordOff
//!   off (recorded), a replica connected ────────────► SwitchOn
//!   on, recorded off, no mark ──────────────────────► Mark      (read the binlog position)
//!   on, recorded off, a replica reaches the mark ───► RecordOn
//! ```
//!
//! Why: with `rpl_semi_sync_master_timeout` at its maximum, a primary with no replica blocks
//! every commit until one acknowledges it, and mariabackup's `BACKUP STAGE BLOCK_COMMIT` waits
//! for those commits: the clone that would give the primary its replica never finishes.
//! Switching semi-sync off releases the waiting commits (MariaDB's `disable_master` wakes
//! them), and each is acknowledged to its client though no replica holds it; an election that
//! relies on semi-sync would then lose them. So the store says "off" first, and elections
//! need the old primary's own position until it says "on" again
//! ([`super::ElectionContext::semisync_intact`]).

use super::GtidPos;

/// What the primary's agent sees of its semi-sync this turn (durability `semisync`, the node
/// writable as the primary).
#[derive(Debug, Clone, Copy)]
pub struct SemisyncView<'a> {
    /// `Rpl_semi_sync_master_status`: commits wait for a replica's acknowledgement.
    pub on: bool,
    /// `Rpl_semi_sync_master_clients`: replicas connected with semi-sync.
    pub clients: u32,
    /// The store's word: `Some(true)` for "on", `Some(false)` for "off", `None` when it has
    /// none (a cluster that never fell back).
    pub recorded: Option<bool>,
    /// A backup of this node streams to a replica being cloned.
    pub backup_streaming: bool,
    /// MariaDB switched semi-sync off since the last turn (`Rpl_semi_sync_master_no_times`
    /// went up), though it may be on again now: commits in between were asynchronous.
    pub switched_off_since: bool,
    /// The binary log position read after semi-sync was seen on again while the store said
    /// "off": every commit after it waited for an acknowledgement.
    pub mark: Option<&'a GtidPos>,
    /// How far each replica streaming from this primary has received (`ReplStatus::reach`).
    pub replicas: &'a [GtidPos],
}

/// One step of [`semisync_step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SemisyncStep {
    /// Nothing to change.
    Keep,
    /// Record "off" in the store, then switch semi-sync off: a clone waits on commits that no
    /// replica can acknowledge.
    FallBack,
    /// Record "off": semi-sync is off and the store does not say so (switched off by hand, or
    /// after its timeout).
    RecordOff,
    /// Switch semi-sync on again: a replica is connected to acknowledge.
    SwitchOn,
    /// Read the binary log position now, as the mark a replica must reach.
    Mark,
    /// Record "on": a replica holds everything committed while semi-sync was off.
    RecordOn,
}

/// The step for this turn (see the module's table).
pub fn semisync_step(v: &SemisyncView) -> SemisyncStep {
    if !v.on {
        return match v.recorded {
            Some(false) if v.clients > 0 => SemisyncStep::SwitchOn,
            Some(false) => SemisyncStep::Keep,
            _ => SemisyncStep::RecordOff,
        };
    }
    if v.clients == 0 && v.backup_streaming {
        return SemisyncStep::FallBack;
    }
    if v.switched_off_since {
        // Whatever mark there was may predate asynchronous commits: take a new one.
        return match v.recorded {
            Some(false) => SemisyncStep::Mark,
            _ => SemisyncStep::RecordOff,
        };
    }
    if v.recorded != Some(false) {
        return SemisyncStep::Keep;
    }
    match v.mark {
        None => SemisyncStep::Mark,
        Some(mark) if v.replicas.iter().any(|r| r.covers(mark)) => SemisyncStep::RecordOn,
        Some(_) => SemisyncStep::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> GtidPos {
        s.parse().unwrap()
    }

    fn view<'a>(on: bool, clients: u32, recorded: Option<bool>) -> SemisyncView<'a> {
        SemisyncView {
            on,
            clients,
            recorded,
            backup_streaming: false,
            switched_off_since: false,
            mark: None,
            replicas: &[],
        }
    }

    #[test]
    fn a_primary_with_a_replica_keeps_semisync() {
        assert_eq!(semisync_step(&view(true, 1, Some(true))), SemisyncStep::Keep);
        assert_eq!(semisync_step(&view(true, 2, None)), SemisyncStep::Keep);
        // A backup with a replica connected: that replica acknowledges the commits.
        let v = SemisyncView {
            backup_streaming: true,
            ..view(true, 1, Some(true))
        };
        assert_eq!(semisync_step(&v), SemisyncStep::Keep);
    }

    #[test]
    fn a_primary_without_replicas_waits_unless_a_clone_needs_its_commits() {
        // No replica and no clone: commits wait for a replica to come back (the promise).
        assert_eq!(semisync_step(&view(true, 0, Some(true))), SemisyncStep::Keep);
        // A clone streams: it would wait for those commits for ever.
        let v = SemisyncView {
            backup_streaming: true,
            ..view(true, 0, Some(true))
        };
        assert_eq!(semisync_step(&v), SemisyncStep::FallBack);
        // Also after an earlier fall-back that was never recorded "on" again.
        let v = SemisyncView {
            backup_streaming: true,
            mark: Some(&pos("0-1-5")),
            ..view(true, 0, Some(false))
        };
        assert_eq!(semisync_step(&v), SemisyncStep::FallBack);
    }

    #[test]
    fn semisync_off_that_the_store_does_not_know_is_recorded() {
        assert_eq!(
            semisync_step(&view(false, 1, Some(true))),
            SemisyncStep::RecordOff
        );
        assert_eq!(semisync_step(&view(false, 0, None)), SemisyncStep::RecordOff);
    }

    #[test]
    fn semisync_switched_off_and_on_between_two_turns_is_recorded_and_marked_again() {
        let unseen = SemisyncView {
            switched_off_since: true,
            ..view(true, 1, Some(true))
        };
        assert_eq!(semisync_step(&unseen), SemisyncStep::RecordOff);
        let mark = pos("0-1-100");
        let caught_up = [pos("0-1-100")];
        let unseen = SemisyncView {
            recorded: Some(false),
            mark: Some(&mark),
            replicas: &caught_up,
            ..unseen
        };
        assert_eq!(semisync_step(&unseen), SemisyncStep::Mark);
    }

    #[test]
    fn semisync_comes_back_once_a_replica_is_connected() {
        assert_eq!(semisync_step(&view(false, 0, Some(false))), SemisyncStep::Keep);
        assert_eq!(
            semisync_step(&view(false, 1, Some(false))),
            SemisyncStep::SwitchOn
        );
    }

    #[test]
    fn on_is_recorded_only_once_a_replica_reaches_the_mark() {
        // Switched on, no mark yet: read one first.
        assert_eq!(semisync_step(&view(true, 1, Some(false))), SemisyncStep::Mark);
        let mark = pos("0-1-100");
        let behind = [pos("0-1-99"), pos("0-1-40")];
        let v = SemisyncView {
            mark: Some(&mark),
            replicas: &behind,
            ..view(true, 1, Some(false))
        };
        assert_eq!(semisync_step(&v), SemisyncStep::Keep);
        let caught_up = [pos("0-1-40"), pos("0-1-100")];
        let v = SemisyncView {
            replicas: &caught_up,
            ..v
        };
        assert_eq!(semisync_step(&v), SemisyncStep::RecordOn);
        // No replica reports at all: nothing to record.
        let v = SemisyncView { replicas: &[], ..v };
        assert_eq!(semisync_step(&v), SemisyncStep::Keep);
    }
}
