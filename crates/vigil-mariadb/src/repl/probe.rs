//! Probes a running node of the replication topology over SQL as the monitoring user.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Row, Value};
use vigil_core::replication::{BadGtid, GtidPos, ReplStatus, ReplicaStatus};

use crate::probe::MonitorConn;
use crate::{NodeError, NodeLayout};

/// One result row by column name; `None` is SQL NULL.
pub type Fields = HashMap<String, Option<String>>;

/// Probes a replication node (as `vigil_monitor`, over the unix socket, on a kept
/// connection that is dropped when a probe fails or is cancelled).
pub struct ReplProber {
    conn: MonitorConn,
}

impl ReplProber {
    pub fn new(node: &str, layout: &NodeLayout, monitor_password: &str) -> ReplProber {
        ReplProber {
            conn: MonitorConn::new(node, layout, monitor_password),
        }
    }

    /// One probe; cancellation-safe, so a caller may bound it with a timeout.
    pub async fn probe(&mut self) -> Result<ReplStatus, NodeError> {
        let mut conn = self.conn.checkout().await?;
        let result = query_repl(&mut conn).await;
        self.conn.checkin(conn, result)
    }
}

async fn query_repl(conn: &mut Conn) -> Result<ReplStatus, mysql_async::Error> {
    let vars: Option<Row> = conn
        .query_first(
            "SELECT @@global.read_only AS read_only, @@global.gtid_current_pos AS gtid_current_pos, \
             @@global.gtid_binlog_pos AS gtid_binlog_pos",
        )
        .await?;
    let vars = vars.map(fields).unwrap_or_default();
    let slave: Option<Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    let slave = slave.map(fields);
    let semisync: Vec<(String, String)> = conn
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
        .await?;
    repl_status_from_rows(&vars, slave.as_ref(), &semisync.into_iter().collect())
        .map_err(|e| mysql_async::Error::Other(Box::new(e)))
}

/// A row as column name → text (the text protocol sends every value as text).
pub(crate) fn fields(row: Row) -> Fields {
    let names: Vec<String> = row
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    names
        .into_iter()
        .zip(row.unwrap())
        .map(|(name, value)| {
            let text = match value {
                Value::NULL => None,
                Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Value::Int(i) => Some(i.to_string()),
                Value::UInt(u) => Some(u.to_string()),
                other => Some(other.as_sql(true)),
            };
            (name, text)
        })
        .collect()
}

fn text<'a>(fields: &'a Fields, key: &str) -> &'a str {
    fields.get(key).and_then(|v| v.as_deref()).unwrap_or("")
}

/// Whether `SHOW SLAVE STATUS` names a source (after `RESET SLAVE ALL` it has no row, or an
/// empty `Master_Host`).
pub fn has_source(slave: Option<&Fields>) -> bool {
    slave.is_some_and(|s| !text(s, "Master_Host").is_empty())
}

/// Builds the status from the variables row (`read_only`, `gtid_current_pos`,
/// `gtid_binlog_pos`), the `SHOW SLAVE STATUS` row if any, and
/// `SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'`. A missing semi-sync variable reads
/// as off; a position MariaDB would never print is an error.
pub fn repl_status_from_rows(
    vars: &Fields,
    slave: Option<&Fields>,
    semisync: &HashMap<String, String>,
) -> Result<ReplStatus, BadGtid> {
    let flag = |v: &str| matches!(v, "1" | "ON" | "Yes");
    let replica = match slave {
        Some(s) if has_source(Some(s)) => Some(ReplicaStatus {
            source: format!("{}:{}", text(s, "Master_Host"), text(s, "Master_Port")),
            io_running: text(s, "Slave_IO_Running") == "Yes",
            sql_running: text(s, "Slave_SQL_Running") == "Yes",
            seconds_behind: text(s, "Seconds_Behind_Master").parse().ok(),
            received: text(s, "Gtid_IO_Pos").parse::<GtidPos>()?,
            last_error: match text(s, "Last_IO_Error") {
                "" => text(s, "Last_SQL_Error").to_string(),
                io => io.to_string(),
            },
        }),
        _ => None,
    };
    let status = |k: &str| semisync.get(k).map(String::as_str).unwrap_or("");
    Ok(ReplStatus {
        read_only: flag(text(vars, "read_only")),
        gtid_current: text(vars, "gtid_current_pos").parse()?,
        gtid_binlog: text(vars, "gtid_binlog_pos").parse()?,
        replica,
        semisync_primary: flag(status("Rpl_semi_sync_master_status")),
        semisync_clients: status("Rpl_semi_sync_master_clients").parse().unwrap_or(0),
        semisync_off_times: status("Rpl_semi_sync_master_no_times").parse().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> Fields {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(String::from)))
            .collect()
    }

    fn vars(read_only: &str, current: &str, binlog: &str) -> Fields {
        row(&[
            ("read_only", Some(read_only)),
            ("gtid_current_pos", Some(current)),
            ("gtid_binlog_pos", Some(binlog)),
        ])
    }

    #[test]
    fn a_running_semisync_replica() {
        let slave = row(&[
            ("Master_Host", Some("127.0.0.1")),
            ("Master_Port", Some("23300")),
            ("Slave_IO_Running", Some("Yes")),
            ("Slave_SQL_Running", Some("Yes")),
            ("Seconds_Behind_Master", Some("0")),
            // SHOW SLAVE STATUS wraps long positions.
            ("Gtid_IO_Pos", Some("0-1-120,\n1-1-3")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Error", Some("")),
        ]);
        let s = repl_status_from_rows(
            &vars("1", "0-1-118,1-1-3", "0-1-118,1-1-3"),
            Some(&slave),
            &HashMap::new(),
        )
        .unwrap();
        assert!(s.read_only && !s.semisync_primary);
        let r = s.replica.unwrap();
        assert_eq!(r.source, "127.0.0.1:23300");
        assert!(r.io_running && r.sql_running);
        assert_eq!(r.seconds_behind, Some(0));
        assert_eq!(r.received.to_string(), "0-1-120,1-1-3");
        assert_eq!(r.last_error, "");
        assert_eq!(s.gtid_current.to_string(), "0-1-118,1-1-3");
    }

    #[test]
    fn a_stopped_replica_reports_its_error_and_no_lag() {
        let slave = row(&[
            ("Master_Host", Some("10.0.0.2")),
            ("Master_Port", Some("3306")),
            ("Slave_IO_Running", Some("Connecting")),
            ("Slave_SQL_Running", Some("No")),
            ("Seconds_Behind_Master", None),
            ("Gtid_IO_Pos", Some("")),
            ("Last_IO_Error", Some("")),
            ("Last_SQL_Error", Some("Duplicate entry '1'")),
        ]);
        let r = repl_status_from_rows(&vars("1", "", ""), Some(&slave), &HashMap::new())
            .unwrap()
            .replica
            .unwrap();
        assert!(!r.io_running && !r.sql_running);
        assert_eq!(r.seconds_behind, None);
        assert!(r.received.is_empty());
        assert_eq!(r.last_error, "Duplicate entry '1'");
        let io = row(&[
            ("Master_Host", Some("10.0.0.2")),
            ("Last_IO_Error", Some("error connecting")),
            ("Last_SQL_Error", Some("sql")),
        ]);
        let r = repl_status_from_rows(&vars("1", "", ""), Some(&io), &HashMap::new())
            .unwrap()
            .replica
            .unwrap();
        assert_eq!(r.last_error, "error connecting");
    }

    #[test]
    fn a_semisync_primary_without_source() {
        let semisync: HashMap<String, String> = [
            ("Rpl_semi_sync_master_status", "ON"),
            ("Rpl_semi_sync_master_clients", "2"),
            ("Rpl_semi_sync_master_no_times", "3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // After RESET SLAVE ALL, SHOW SLAVE STATUS may still return a row with no host.
        let reset = row(&[("Master_Host", Some("")), ("Slave_IO_Running", Some("No"))]);
        for slave in [None, Some(&reset)] {
            let s = repl_status_from_rows(&vars("0", "0-1-7", "0-1-7"), slave, &semisync).unwrap();
            assert!(!s.read_only && s.semisync_primary);
            assert_eq!(s.semisync_clients, 2);
            assert_eq!(s.semisync_off_times, 3);
            assert_eq!(s.replica, None);
            assert_eq!(s.gtid_binlog.to_string(), "0-1-7");
        }
        assert!(!has_source(Some(&reset)) && !has_source(None));
    }

    #[test]
    fn a_malformed_position_is_an_error() {
        assert!(repl_status_from_rows(&vars("0", "0-1", ""), None, &HashMap::new()).is_err());
    }
}
