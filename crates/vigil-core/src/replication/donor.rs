//! A node that serves a clone (a hot backup with mariabackup) while semi-synchronous
//! replication has no replica to acknowledge its commits.
//!
//! mariabackup's `BACKUP STAGE BLOCK_COMMIT` waits for the commits in progress. On a semi-sync
//! primary without a connected replica, those commits wait for an acknowledgement that only
//! the replica being cloned could give: neither ever ends (cf. the same deadlock in Vitess,
//! vitessio/vitess#16380). The donor disconnects the sessions whose commit waits for the
//! acknowledgement, which lets the backup go on: their clients see a lost connection (the
//! outcome unknown, never an acknowledgement), and their transactions, already in the
//! donor's binary log, are part of the clone.

/// One session of the donor's server (`information_schema.PROCESSLIST`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    /// `STATE`, empty when NULL.
    pub state: String,
    /// `INFO` (the statement running), empty when NULL.
    pub info: String,
}

/// `STATE` of a commit that waits for a replica's semi-sync acknowledgement.
pub const WAITING_FOR_ACK: &str = "Waiting for semi-sync ACK from slave";
/// `STATE` of a statement that waits for the backup lock.
pub const WAITING_FOR_BACKUP_LOCK: &str = "Waiting for backup lock";

/// The sessions to disconnect so that a backup of this node can block commits: those waiting
/// for a semi-sync acknowledgement, but only while no semi-sync replica is connected (one
/// that is will acknowledge, and the wait ends by itself) and a `BACKUP STAGE BLOCK_COMMIT`
/// waits for them. Otherwise none.
pub fn sessions_blocking_backup(sessions: &[Session], semisync_replicas: u32) -> Vec<u64> {
    let backup_waits = sessions.iter().any(|s| {
        s.state == WAITING_FOR_BACKUP_LOCK
            && s.info
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("BACKUP STAGE BLOCK_COMMIT")
    });
    if semisync_replicas > 0 || !backup_waits {
        return Vec::new();
    }
    sessions
        .iter()
        .filter(|s| s.state == WAITING_FOR_ACK)
        .map(|s| s.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: u64, state: &str, info: &str) -> Session {
        Session {
            id,
            state: state.into(),
            info: info.into(),
        }
    }

    #[test]
    fn only_commits_waiting_for_an_acknowledgement_nobody_can_give_a_blocked_backup_are_released() {
        let sessions = [
            s(1, "", ""),
            s(7, WAITING_FOR_ACK, "INSERT INTO t VALUES (1)"),
            s(8, WAITING_FOR_ACK, "COMMIT"),
            s(9, "Sending data", "SELECT 1"),
            s(12, WAITING_FOR_BACKUP_LOCK, "BACKUP STAGE BLOCK_COMMIT"),
        ];
        assert_eq!(sessions_blocking_backup(&sessions, 0), vec![7, 8]);
        // A connected semi-sync replica acknowledges: the commits end by themselves.
        assert_eq!(sessions_blocking_backup(&sessions, 1), Vec::<u64>::new());
        // No backup waits for them (none runs, or it is at another stage): no commit is
        // touched, however long it waits.
        assert_eq!(sessions_blocking_backup(&sessions[..4], 0), Vec::<u64>::new());
        let other_stage = [
            sessions[1].clone(),
            s(12, WAITING_FOR_BACKUP_LOCK, "BACKUP STAGE BLOCK_DDL"),
        ];
        assert_eq!(sessions_blocking_backup(&other_stage, 0), Vec::<u64>::new());
        // A statement waiting for the lock is not the backup.
        let statement = [
            sessions[1].clone(),
            s(12, WAITING_FOR_BACKUP_LOCK, "INSERT INTO t VALUES (2)"),
        ];
        assert_eq!(sessions_blocking_backup(&statement, 0), Vec::<u64>::new());
        // However mariabackup spells the statement.
        let lower = [
            sessions[1].clone(),
            s(12, WAITING_FOR_BACKUP_LOCK, "backup stage block_commit"),
        ];
        assert_eq!(sessions_blocking_backup(&lower, 0), vec![7]);
    }
}
