//! Probes a running node over SQL as the monitoring user, through its unix socket.

use std::collections::HashMap;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder};
use vigil_core::galera::WsrepStatus;

use crate::secrets::MONITOR_USER;
use crate::{NodeError, NodeLayout};

/// The monitoring user's connection over the node's unix socket, kept open between probes.
///
/// A probe checks the connection out, uses it, and checks it back in only when it succeeded:
/// a probe that fails, or whose future is dropped midway (a caller's timeout on a hung
/// server), drops the connection with it, and the next probe reconnects. No half-read result
/// is ever left on a kept connection.
pub(crate) struct MonitorConn {
    node: String,
    opts: OptsBuilder,
    conn: Option<Conn>,
}

impl MonitorConn {
    pub(crate) fn new(node: &str, layout: &NodeLayout, monitor_password: &str) -> MonitorConn {
        let opts = OptsBuilder::default()
            .socket(Some(layout.socket().to_string_lossy().into_owned()))
            .user(Some(MONITOR_USER))
            .pass(Some(monitor_password.to_string()))
            .prefer_socket(true)
            .wait_timeout(Some(3600));
        MonitorConn {
            node: node.to_string(),
            opts,
            conn: None,
        }
    }

    /// The kept connection, or a new one.
    pub(crate) async fn checkout(&mut self) -> Result<Conn, NodeError> {
        match self.conn.take() {
            Some(conn) => Ok(conn),
            None => Conn::new(self.opts.clone()).await.map_err(|e| self.error(e)),
        }
    }

    /// Keeps `conn` for the next probe, or, if the probe failed, drops it.
    pub(crate) fn checkin<T>(
        &mut self,
        conn: Conn,
        result: Result<T, mysql_async::Error>,
    ) -> Result<T, NodeError> {
        match result {
            Ok(v) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, source: mysql_async::Error) -> NodeError {
        NodeError::Sql {
            node: self.node.clone(),
            source,
        }
    }
}

/// Probes a Galera node's `wsrep_*` status.
pub struct Prober {
    conn: MonitorConn,
}

impl Prober {
    pub fn new(node: &str, layout: &NodeLayout, monitor_password: &str) -> Prober {
        Prober {
            conn: MonitorConn::new(node, layout, monitor_password),
        }
    }

    /// One probe; cancellation-safe (see [`MonitorConn`]).
    pub async fn probe(&mut self) -> Result<WsrepStatus, NodeError> {
        let mut conn = self.conn.checkout().await?;
        let result = query_wsrep(&mut conn).await;
        self.conn.checkin(conn, result)
    }
}

async fn query_wsrep(conn: &mut Conn) -> Result<WsrepStatus, mysql_async::Error> {
    let rows: Vec<(String, String)> = conn.query("SHOW GLOBAL STATUS LIKE 'wsrep%'").await?;
    let read_only: Option<i64> = conn.query_first("SELECT @@global.read_only").await?;
    Ok(status_from_rows(
        rows.into_iter().collect(),
        read_only.unwrap_or(0) != 0,
    ))
}

/// Builds the status from `SHOW GLOBAL STATUS LIKE 'wsrep%'`. Missing or malformed values
/// read as "not ready" rather than failing: a node without Galera is simply not healthy.
pub fn status_from_rows(vars: HashMap<String, String>, read_only: bool) -> WsrepStatus {
    let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
    WsrepStatus {
        local_state: get("wsrep_local_state").parse().unwrap_or(0),
        local_state_comment: get("wsrep_local_state_comment").to_string(),
        cluster_status: match get("wsrep_cluster_status") {
            "" => "Disconnected".to_string(),
            s => s.to_string(),
        },
        cluster_size: get("wsrep_cluster_size").parse().unwrap_or(0),
        last_committed: get("wsrep_last_committed").parse().unwrap_or(-1),
        cluster_state_uuid: get("wsrep_cluster_state_uuid").to_string(),
        ready: get("wsrep_ready") == "ON",
        connected: get("wsrep_connected") == "ON",
        read_only,
        incoming_addresses: get("wsrep_incoming_addresses")
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "AUTO")
            .map(String::from)
            .collect(),
        gcomm_uuid: get("wsrep_gcomm_uuid").to_string(),
        conf_id: get("wsrep_cluster_conf_id").parse().unwrap_or(0),
        evict_list: get("wsrep_evs_evict_list")
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wsrep_variables() {
        let rows: HashMap<String, String> = [
            ("wsrep_local_state", "4"),
            ("wsrep_local_state_comment", "Synced"),
            ("wsrep_cluster_status", "Primary"),
            ("wsrep_cluster_size", "3"),
            ("wsrep_last_committed", "17"),
            ("wsrep_cluster_state_uuid", "3e9c30ef-e633-11f1-b6c0-3b30112bfa48"),
            ("wsrep_ready", "ON"),
            ("wsrep_connected", "ON"),
            ("wsrep_incoming_addresses", "127.0.0.1:23306,127.0.0.1:23316"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = status_from_rows(rows, false);
        assert!(s.is_synced() && s.is_primary() && s.ready && s.connected);
        assert_eq!((s.cluster_size, s.last_committed), (3, 17));
        assert_eq!(s.incoming_addresses, ["127.0.0.1:23306", "127.0.0.1:23316"]);
    }

    #[test]
    fn a_server_without_galera_is_not_ready() {
        let s = status_from_rows(HashMap::new(), true);
        assert!(!s.is_synced() && !s.is_primary() && !s.ready);
        assert_eq!(s.cluster_status, "Disconnected");
        assert!(s.read_only);
    }
}
