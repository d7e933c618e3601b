//! GTID primary/replica replication: the probe ([`ReplProber`]) and the commands the agent
//! uses to switch a node's role.
//!
//! Every command opens its own connection as `root` over the node's unix socket
//! ([`crate::admin::connect_root`]) and closes it: role changes are rare, a socket connect
//! costs a millisecond, and no command then depends on the session state another left behind.
//! Passwords are put in statements but never logged; mysql_async's errors do not include the
//! statement. Callers bound each call with `tokio::time::timeout`.
//!
//! ```text
//!  promotion (replica → primary)          demotion / rejoin (→ replica of SOURCE)
//!   stop_replica_io                         set_read_only(true), kill_client_sessions
//!   wait_applied                            set_semisync_primary(false)
//!   stop_replication                        start_replication(SOURCE)  (adopts own history
//!   record_epoch (vigil.fence)                into gtid_slave_pos when it had no source)
//!   set_semisync_primary(on)
//!   install_deadman, arm_deadman (armed again at every renewal)
//!   set_read_only(false)
//!
//!  replica about to stop: drain_relay_log
//!  new replica: clone::clone_local → start mariadbd → adopt_clone_position → start_replication
//! ```

mod probe;

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row};
use vigil_core::replication::GtidPos;

pub use probe::{has_source, repl_status_from_rows, Fields, ReplProber};

use crate::admin::{connect_root, quote};
use crate::secrets::REPL_USER;
use crate::{NodeError, NodeLayout};

/// `SET GLOBAL read_only`. Users with `READ_ONLY ADMIN` (root) can still write; the
/// application user and the replication threads' sources cannot.
pub async fn set_read_only(node: &str, layout: &NodeLayout, on: bool) -> Result<(), NodeError> {
    run(node, layout, &[format!("SET GLOBAL read_only = {}", on_off(on))]).await
}

/// Kills every client session: all connections except replication and system threads
/// (`Binlog Dump` serves a replica and is kept) and this one. Returns how many were killed
/// (a session that ended on its own meanwhile is not counted). Used after `set_read_only(true)`
/// so that no transaction opened before it can still commit on a demoted primary.
pub async fn kill_client_sessions(node: &str, layout: &NodeLayout) -> Result<usize, NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        let ids: Vec<u64> = conn
            .query(
                "SELECT ID FROM information_schema.PROCESSLIST \
                 WHERE COMMAND NOT IN ('Binlog Dump', 'Daemon') \
                 AND USER NOT IN ('system user', 'event_scheduler') \
                 AND ID <> CONNECTION_ID()",
            )
            .await?;
        let mut killed = 0;
        for id in ids {
            match conn.query_drop(format!("KILL CONNECTION {id}")).await {
                Ok(()) => killed += 1,
                // ER_NO_SUCH_THREAD: it ended by itself.
                Err(mysql_async::Error::Server(e)) if e.code == 1094 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(killed)
    }
    .await;
    finish(node, conn, result).await
}

/// Makes the node a replica of `source_host:source_port` by GTID, as `vigil_repl`:
/// `STOP SLAVE`, `CHANGE MASTER TO … MASTER_USE_GTID=slave_pos`, `START SLAVE`, with a 1 s
/// heartbeat and connect retry so that a dead source shows quickly.
///
/// A node that had no source (a primary being demoted, an old primary rejoining, a promoted
/// replica after `stop_replication`) has its own writes in its binlog but not in
/// `gtid_slave_pos`; replicating from `slave_pos` as is would ask the source for transactions
/// it already has. So, only for such a node, `gtid_slave_pos` is first set to
/// `@@gtid_current_pos` (its whole history). A node that already replicates keeps its
/// `gtid_slave_pos`: it is exactly what it applied, and a local write there would be an errant
/// transaction that must not be adopted silently. Whether the node may rejoin at all (nothing
/// beyond the new primary's fork point) is decided before, by `vigil_core`.
pub async fn start_replication(
    node: &str,
    layout: &NodeLayout,
    source_host: &str,
    source_port: u16,
    repl_password: &str,
    semisync: bool,
) -> Result<(), NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        let slave: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await?;
        let had_source = has_source(slave.map(probe::fields).as_ref());
        conn.query_drop("STOP SLAVE").await?;
        if !had_source {
            conn.query_drop("SET GLOBAL gtid_slave_pos = @@global.gtid_current_pos")
                .await?;
        }
        conn.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={source_port}, MASTER_USER={}, \
             MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, \
             MASTER_HEARTBEAT_PERIOD=1",
            quote(source_host),
            quote(REPL_USER),
            quote(repl_password)
        ))
        .await?;
        // Read by the IO thread when it starts.
        conn.query_drop(format!(
            "SET GLOBAL rpl_semi_sync_slave_enabled = {}",
            on_off(semisync)
        ))
        .await?;
        conn.query_drop("START SLAVE").await
    }
    .await;
    finish(node, conn, result).await
}

/// Stops replicating and forgets the source (`STOP SLAVE; RESET SLAVE ALL`): a promoted
/// replica. `gtid_slave_pos` is kept.
pub async fn stop_replication(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    run(node, layout, &["STOP SLAVE".into(), "RESET SLAVE ALL".into()]).await
}

/// Stops receiving (`STOP SLAVE IO_THREAD`); the SQL thread goes on applying what the relay
/// log holds. The first step of a promotion: what the node has is then final.
///
/// The receiving thread is killed first (`KILL` of the `Slave_IO` thread, again every 20 ms
/// while it runs, for up to 2 s): when the primary vanished without closing the connection
/// (its host cut off), `STOP SLAVE` alone wakes that thread once and then waits for it in
/// rounds of 2 s (2.00 s measured on every replica, in every `vigil bench failover --fault
/// isolate` run). A killed thread stops where `STOP SLAVE` would stop it, between events.
pub async fn stop_replica_io(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    const KILL_AGAIN: Duration = Duration::from_millis(20);
    const KILL_FOR: Duration = Duration::from_secs(2);
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        let started = std::time::Instant::now();
        while started.elapsed() < KILL_FOR {
            let receivers: Vec<u64> = conn
                .query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'")
                .await?;
            if receivers.is_empty() {
                break;
            }
            for id in receivers {
                // Gone meanwhile (ended by itself): nothing to kill.
                if let Err(e) = conn.query_drop(format!("KILL {id}")).await {
                    tracing::debug!(node, "the receiving thread {id} could not be killed: {e}");
                }
            }
            tokio::time::sleep(KILL_AGAIN).await;
        }
        conn.query_drop("STOP SLAVE IO_THREAD").await
    }
    .await;
    finish(node, conn, result).await
}

/// Waits up to `timeout` until everything received (`Gtid_IO_Pos`) is applied
/// (`MASTER_GTID_WAIT`). `true` when applied (also when the node has no source or received
/// nothing), `false` on timeout (the SQL thread is behind or stopped on an error).
pub async fn wait_applied(node: &str, layout: &NodeLayout, timeout: Duration) -> Result<bool, NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = applied_within(&mut conn, timeout).await;
    finish(node, conn, result).await
}

/// [`wait_applied`] on an open connection.
async fn applied_within(conn: &mut Conn, timeout: Duration) -> Result<bool, mysql_async::Error> {
    let slave: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    let Some(slave) = slave.map(probe::fields) else {
        return Ok(true);
    };
    let received = slave
        .get("Gtid_IO_Pos")
        .and_then(|v| v.as_deref())
        .unwrap_or("")
        .parse::<GtidPos>()
        .map_err(|e| mysql_async::Error::Other(Box::new(e)))?;
    if received.is_empty() {
        return Ok(true);
    }
    let done: Option<Option<i64>> = conn
        .query_first(format!(
            "SELECT MASTER_GTID_WAIT({}, {:.3})",
            quote(&received.to_string()),
            timeout.as_secs_f64()
        ))
        .await?;
    Ok(done.flatten() == Some(0))
}

/// Before a replica's server stops: stops receiving (`STOP SLAVE IO_THREAD`) and waits up to
/// `timeout` until the relay log is applied ([`wait_applied`]). In GTID mode MariaDB discards
/// the relay log when the IO thread starts again, so a transaction the replica acknowledged
/// (semi-sync) but had not applied would be gone from it after the restart, and, should the
/// primary be lost too, from every node. `true` when nothing received is left unapplied
/// (also when the node replicates from nobody).
pub async fn drain_relay_log(node: &str, layout: &NodeLayout, timeout: Duration) -> Result<bool, NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        // On a node without a source this is a no-op (a note, not an error).
        conn.query_drop("STOP SLAVE IO_THREAD").await?;
        applied_within(&mut conn, timeout).await
    }
    .await;
    finish(node, conn, result).await
}

/// The one-row table where a primary records the epoch (its lease's fencing token) before it
/// turns writable. A client can stamp each write with it (`INSERT … SELECT epoch FROM
/// vigil.fence`): a write that a fenced primary still took then shows in the data as a write
/// with an older epoch than one acknowledged before it. The application user may read it.
pub const FENCE_TABLE: &str = "vigil.fence";

/// Records `epoch` in [`FENCE_TABLE`] (created if missing) as `node`'s. Run on a primary still
/// read-only (root may write) with semi-sync off, so that the write waits for nobody.
pub async fn record_epoch(node: &str, layout: &NodeLayout, epoch: u64) -> Result<(), NodeError> {
    run(
        node,
        layout,
        &[
            "CREATE DATABASE IF NOT EXISTS vigil".into(),
            format!(
                "CREATE TABLE IF NOT EXISTS {FENCE_TABLE} (id TINYINT UNSIGNED PRIMARY KEY, \
                 epoch BIGINT UNSIGNED NOT NULL, node VARCHAR(64) NOT NULL, \
                 since TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3))"
            ),
            format!(
                "REPLACE INTO {FENCE_TABLE} (id, epoch, node) VALUES (1, {epoch}, {})",
                quote(node)
            ),
        ],
    )
    .await
}

/// The primary's dead-man switch: an event of the server's own scheduler (`event_scheduler`
/// is on in every replication node's my.cnf) that, every second, sets `read_only` once the
/// moment in [`DEADMAN_TABLE`] has passed.
pub const DEADMAN_EVENT: &str = "mysql.vigil_deadman";

/// The one-row InnoDB table that holds the moment the dead-man switch fires (`at`, seconds
/// since the Unix epoch).
pub const DEADMAN_TABLE: &str = "vigil.deadman";

/// Installs the dead-man switch: [`DEADMAN_TABLE`] and [`DEADMAN_EVENT`], replacing an event
/// left by an earlier install. Run when a node is about to turn writable, before the first
/// [`arm_deadman`]; the event then checks, every second, whether the armed moment has passed
/// (a row that is missing or not yet armed never fires).
///
/// Everything is written with `sql_log_bin = 0`: the switch is this server's, not replicated
/// (a replica's strict GTID mode would take anything this server binlogs under its own id
/// while a replica for an errant transaction). A copy that a clone brings along is harmless: it
/// can only set `read_only` on a replica, and it is installed and armed again before that node
/// ever turns writable.
pub async fn install_deadman(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    run(
        node,
        layout,
        &[
            "SET SESSION sql_log_bin = 0".into(),
            "CREATE DATABASE IF NOT EXISTS vigil".into(),
            format!(
                "CREATE TABLE IF NOT EXISTS {DEADMAN_TABLE} \
                 (id TINYINT UNSIGNED PRIMARY KEY, at BIGINT UNSIGNED NOT NULL) ENGINE = InnoDB"
            ),
            format!(
                "CREATE OR REPLACE EVENT {DEADMAN_EVENT} ON SCHEDULE EVERY 1 SECOND DO \
                 IF @@GLOBAL.read_only = 0 \
                    AND UNIX_TIMESTAMP() >= (SELECT at FROM {DEADMAN_TABLE} WHERE id = 1) THEN \
                   SET GLOBAL read_only = 1; \
                 END IF"
            ),
        ],
    )
    .await
}

/// Arms the installed dead-man switch ([`install_deadman`]) to fire at `at_unix` (seconds
/// since the Unix epoch, this host's clock). The agent arms it before the node turns writable
/// and again at every renewal of the leader lease, each time for a moment before the lease can
/// lapse. So a primary whose agent stops (SIGSTOP, a hung host process) turns read-only by
/// itself before another node can take the lease, without the agent.
///
/// Arming is a one-row update of an InnoDB table, not binlogged: a backup streaming from this
/// server (mariabackup's `BACKUP STAGE BLOCK_DDL`, which holds off `CREATE EVENT`) lets it
/// through. A moment already past is refused with an error.
pub async fn arm_deadman(node: &str, layout: &NodeLayout, at_unix: u64) -> Result<(), NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        let ahead: Option<bool> = conn
            .query_first(format!("SELECT UNIX_TIMESTAMP() < {at_unix}"))
            .await?;
        if ahead != Some(true) {
            return Ok(false);
        }
        conn.query_drop("SET SESSION sql_log_bin = 0").await?;
        conn.query_drop(format!(
            "INSERT INTO {DEADMAN_TABLE} (id, at) VALUES (1, {at_unix}) \
             ON DUPLICATE KEY UPDATE at = VALUES(at)"
        ))
        .await?;
        Ok(true)
    }
    .await;
    match finish(node, conn, result).await? {
        true => Ok(()),
        false => Err(NodeError::Timeout(format!(
            "{node}: the moment to arm the dead-man switch for ({at_unix}) has already passed"
        ))),
    }
}

/// Switches the primary side of semi-synchronous replication (`rpl_semi_sync_master_enabled`):
/// on at promotion when durability is semisync, off at demotion and when the primary falls
/// back to asynchronous commits for a clone (`vigil_core::replication::semisync_step`).
pub async fn set_semisync_primary(node: &str, layout: &NodeLayout, on: bool) -> Result<(), NodeError> {
    run(
        node,
        layout,
        &[format!(
            "SET GLOBAL rpl_semi_sync_master_enabled = {}",
            on_off(on)
        )],
    )
    .await
}

/// `SET GLOBAL gtid_slave_pos`: where replication will continue from. The replica threads
/// must be stopped.
pub async fn set_gtid_slave_pos(node: &str, layout: &NodeLayout, pos: &GtidPos) -> Result<(), NodeError> {
    run(
        node,
        layout,
        &[format!("SET GLOBAL gtid_slave_pos = {}", quote(&pos.to_string()))],
    )
    .await
}

/// On a fresh clone (started, not replicating yet), takes the backup's position as this
/// node's history: `RESET MASTER`, `gtid_binlog_state` = `pos`, `gtid_slave_pos` = `pos`.
///
/// mariabackup does not copy binary logs, so a clone's binlog starts empty and knows nothing
/// of the transactions it holds. `gtid_slave_pos` alone lets it replicate, but should it be
/// promoted before it binlogs anything, a replica asking it for `pos` would be refused
/// ("could not find GTID state requested by slave in any binlog files"). Recording `pos` as
/// the binlog's starting state fixes that.
pub async fn adopt_clone_position(node: &str, layout: &NodeLayout, pos: &GtidPos) -> Result<(), NodeError> {
    let pos = quote(&pos.to_string());
    run(
        node,
        layout,
        &[
            "RESET MASTER".into(),
            format!("SET GLOBAL gtid_binlog_state = {pos}"),
            format!("SET GLOBAL gtid_slave_pos = {pos}"),
        ],
    )
    .await
}

fn on_off(on: bool) -> &'static str {
    if on {
        "ON"
    } else {
        "OFF"
    }
}

/// Runs statements in order on a new root connection.
async fn run(node: &str, layout: &NodeLayout, statements: &[String]) -> Result<(), NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let result = async {
        for sql in statements {
            conn.query_drop(sql).await?;
        }
        Ok(())
    }
    .await;
    finish(node, conn, result).await
}

/// Closes the connection (best effort after an error) and names the node in the error.
async fn finish<T>(node: &str, conn: Conn, result: Result<T, mysql_async::Error>) -> Result<T, NodeError> {
    let sql = |source| NodeError::Sql {
        node: node.into(),
        source,
    };
    match result {
        Ok(v) => {
            conn.disconnect().await.map_err(sql)?;
            Ok(v)
        }
        Err(e) => {
            let _ = conn.disconnect().await;
            Err(sql(e))
        }
    }
}
