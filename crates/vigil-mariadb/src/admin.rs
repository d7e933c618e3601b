//! Administrative SQL, as `root` over the node's unix socket (MariaDB's `unix_socket`
//! authentication: only the operating-system root user can do this, and no password exists).

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};

use crate::secrets::{Secrets, APP_DATABASE, APP_USER, MONITOR_USER, REPL_USER, SST_USER};
use crate::{NodeError, NodeLayout};

pub async fn connect_root(node: &str, layout: &NodeLayout) -> Result<Conn, NodeError> {
    let opts = OptsBuilder::default()
        .socket(Some(layout.socket().to_string_lossy().into_owned()))
        .user(Some("root"))
        .prefer_socket(true);
    Conn::new(opts).await.map_err(|source| NodeError::Sql {
        node: node.into(),
        source,
    })
}

/// Creates the application database and vigil's four users with least privilege:
/// - `vigil_app@%`: everything on the `app` database only;
/// - `vigil_sst@localhost`: what mariabackup needs on a donor (Galera SST or a replica's
///   clone): `RELOAD` (`BACKUP STAGE`, `FLUSH`), `PROCESS` (InnoDB status), `LOCK TABLES`,
///   `BINLOG MONITOR` (the binlog position and GTID written to `xtrabackup_binlog_info`).
///   Not `SLAVE MONITOR`: vigil does not use `--slave-info` or `--safe-slave-backup` (the
///   GTID of a replica donor's binlog is the clone's position, thanks to `log_slave_updates`);
///   checked against 10.11, a backup of a replica succeeds without it;
/// - `vigil_monitor@localhost`: status and replication monitoring (`SHOW SLAVE STATUS` needs
///   `SLAVE MONITOR`, the binlog position `BINLOG MONITOR`), no data access;
/// - `vigil_repl@%`: what a replica's IO thread needs from its source (`REPLICATION SLAVE`
///   to read the binlog; the monitor privileges for `SHOW SLAVE HOSTS` and semi-sync), over TCP.
///
/// Idempotent; the passwords are taken from `secrets` and never logged. In the replication
/// topology, run it on the primary only: the users replicate, and a statement run on a
/// read-only replica as root would still be binlogged there as an errant transaction.
pub async fn provision_users(node: &str, layout: &NodeLayout, secrets: &Secrets) -> Result<(), NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let statements = [
        format!("CREATE DATABASE IF NOT EXISTS `{APP_DATABASE}`"),
        format!(
            "CREATE USER IF NOT EXISTS '{APP_USER}'@'%' IDENTIFIED BY {}",
            quote(&secrets.app)
        ),
        format!(
            "ALTER USER '{APP_USER}'@'%' IDENTIFIED BY {}",
            quote(&secrets.app)
        ),
        format!("GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO '{APP_USER}'@'%'"),
        // Replication topology: the primary's epoch (`repl::FENCE_TABLE`), to stamp writes with.
        format!("GRANT SELECT ON `vigil`.* TO '{APP_USER}'@'%'"),
        format!(
            "CREATE USER IF NOT EXISTS '{SST_USER}'@'localhost' IDENTIFIED BY {}",
            quote(&secrets.sst)
        ),
        format!(
            "ALTER USER '{SST_USER}'@'localhost' IDENTIFIED BY {}",
            quote(&secrets.sst)
        ),
        format!("GRANT RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR ON *.* TO '{SST_USER}'@'localhost'"),
        format!(
            "CREATE USER IF NOT EXISTS '{MONITOR_USER}'@'localhost' IDENTIFIED BY {}",
            quote(&secrets.monitor)
        ),
        format!(
            "ALTER USER '{MONITOR_USER}'@'localhost' IDENTIFIED BY {}",
            quote(&secrets.monitor)
        ),
        format!("GRANT SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{MONITOR_USER}'@'localhost'"),
        format!(
            "CREATE USER IF NOT EXISTS '{REPL_USER}'@'%' IDENTIFIED BY {}",
            quote(&secrets.repl)
        ),
        format!(
            "ALTER USER '{REPL_USER}'@'%' IDENTIFIED BY {}",
            quote(&secrets.repl)
        ),
        format!("GRANT REPLICATION SLAVE, SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{REPL_USER}'@'%'"),
    ];
    let deadline = tokio::time::Instant::now() + NOT_READY_PATIENCE;
    for sql in &statements {
        loop {
            match conn.query_drop(sql).await {
                Ok(()) => break,
                // A Galera node that has just bootstrapped accepts connections a moment before
                // it accepts statements.
                Err(e) if not_ready_yet(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                // The error is mysql_async's, which does not include the statement (and its
                // password).
                Err(source) => {
                    return Err(NodeError::Sql {
                        node: node.into(),
                        source,
                    })
                }
            }
        }
    }
    conn.disconnect().await.map_err(|source| NodeError::Sql {
        node: node.into(),
        source,
    })
}

/// How long provisioning waits for a node that says it is not ready for statements yet.
const NOT_READY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// `ER_UNKNOWN_COM_ERROR` (1047), "WSREP has not yet prepared node for application use": the
/// server runs but Galera has not made it part of a Primary component yet.
fn not_ready_yet(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1047)
}

/// Evicts the group member `gcomm_uuid` (`wsrep_gcomm_uuid` of a `mariadbd` known to be dead)
/// from this node's Galera view (`evs.evict`): the survivors install a view without it at once
/// instead of waiting for the suspect timeout, during which no one commits. One survivor is
/// enough; the eviction travels with its join messages. A restarted server has a new UUID.
pub async fn evict_member(node: &str, layout: &NodeLayout, gcomm_uuid: &str) -> Result<(), NodeError> {
    if !vigil_core::galera::is_uuid(gcomm_uuid) {
        return Err(NodeError::Refused(format!(
            "{node}: not evicting {gcomm_uuid:?}: not a gcomm UUID"
        )));
    }
    set_provider_option(node, layout, &format!("evs.evict={gcomm_uuid}")).await
}

/// Makes the non-Primary component this node's server is in a Primary one
/// (`pc.bootstrap=YES`), as Galera's own recovery procedure does by hand: only on the node
/// elected to start the cluster ([`vigil_core::galera::restore_primary`]), as a second Primary
/// component would split the cluster's history.
pub async fn bootstrap_component(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    set_provider_option(node, layout, "pc.bootstrap=YES").await
}

/// Empties this node's Galera eviction list (`evs.evict=`): once the evicted members are out
/// of the view, keeping them listed only risks a later membership round
/// ([`vigil_core::galera::clear_evictions`]).
pub async fn clear_evictions(node: &str, layout: &NodeLayout) -> Result<(), NodeError> {
    set_provider_option(node, layout, "evs.evict=").await
}

/// Sets one Galera provider option on the running server (`SET GLOBAL wsrep_provider_options`),
/// over a connection of its own. `option` is put in quotes as it is: callers pass only values
/// they built and checked.
async fn set_provider_option(node: &str, layout: &NodeLayout, option: &str) -> Result<(), NodeError> {
    let mut conn = connect_root(node, layout).await?;
    let sql = format!("SET GLOBAL wsrep_provider_options = '{option}'");
    let result = conn.query_drop(sql).await;
    let _ = conn.disconnect().await;
    result.map_err(|source| NodeError::Sql {
        node: node.into(),
        source,
    })
}

/// A SQL string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_literals() {
        assert_eq!(super::quote("ab"), "'ab'");
        assert_eq!(super::quote("a'b\\c"), "'a''b\\\\c'");
    }

    fn server_error(code: u16) -> mysql_async::Error {
        mysql_async::Error::Server(mysql_async::ServerError {
            code,
            message: "test".into(),
            state: "08S01".into(),
        })
    }

    /// A chaos run's fresh cluster never formed: the bootstrap node answered the first
    /// provisioning statement with 1047, and the agent gave the new datadir up half made.
    #[test]
    fn only_a_node_not_prepared_by_galera_is_waited_for() {
        assert!(super::not_ready_yet(&server_error(1047)));
        assert!(!super::not_ready_yet(&server_error(1045)));
        assert!(!super::not_ready_yet(&server_error(1290)));
    }
}
