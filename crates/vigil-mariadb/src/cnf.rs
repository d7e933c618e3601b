//! Renders a node's `my.cnf` from vigil's configuration.
//!
//! The file holds the SST password (`wsrep_sst_auth`), so it is written with mode 0600.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use vigil_core::config::{Config, NodeConfig};

use crate::secrets::{Secrets, SST_USER};
use crate::NodeLayout;

/// Everything that goes into one node's `my.cnf`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: String,
    pub host: String,
    pub sql_port: u16,
    pub galera_port: u16,
    pub ist_port: u16,
    pub sst_port: u16,
    pub cluster_name: String,
    /// `host:galera_port` of every data node, this one included.
    pub peers: Vec<String>,
    pub provider: String,
    pub sst_method: String,
    pub sst_password: String,
    pub innodb_buffer_pool_size: String,
    pub innodb_log_file_size: String,
    pub gcache_size: String,
    pub settings: BTreeMap<String, String>,
    pub layout: NodeLayout,
}

impl ServerSpec {
    pub fn new(config: &Config, node: &NodeConfig, layout: NodeLayout, secrets: &Secrets) -> ServerSpec {
        ServerSpec {
            name: node.name.clone(),
            host: node.host.clone(),
            sql_port: node.sql_port,
            galera_port: node.galera_port,
            ist_port: node.ist_port,
            sst_port: node.sst_port,
            cluster_name: config.cluster.name.clone(),
            peers: config.galera_peers(),
            provider: config.mariadb.galera_provider.clone(),
            sst_method: config.mariadb.sst_method.clone(),
            sst_password: secrets.sst.clone(),
            innodb_buffer_pool_size: config.mariadb.innodb_buffer_pool_size.clone(),
            innodb_log_file_size: config.mariadb.innodb_log_file_size.clone(),
            gcache_size: config.mariadb.gcache_size.clone(),
            settings: config.mariadb.settings.clone(),
            layout,
        }
    }

    /// The `my.cnf` text.
    pub fn render(&self) -> String {
        let l = &self.layout;
        let mut s = format!(
            "# Written by vigil for node {} on every start; edit vigil.toml instead.\n",
            self.name
        );
        s.push_str("[mariadbd]\n");
        kv(&mut s, "user", "root");
        kv(&mut s, "datadir", l.datadir().display());
        kv(&mut s, "socket", l.socket().display());
        kv(&mut s, "pid-file", l.pid_file().display());
        kv(&mut s, "log-error", l.error_log().display());
        kv(&mut s, "port", self.sql_port);
        kv(&mut s, "bind-address", &self.host);
        kv(&mut s, "skip-name-resolve", "ON");
        kv(&mut s, "performance_schema", "OFF");
        kv(&mut s, "max_connections", 500);

        s.push_str("\n# InnoDB: durable commits; Galera needs row events and interleaved auto-increment.\n");
        kv(&mut s, "default_storage_engine", "InnoDB");
        kv(&mut s, "innodb_buffer_pool_size", &self.innodb_buffer_pool_size);
        kv(&mut s, "innodb_log_file_size", &self.innodb_log_file_size);
        kv(&mut s, "innodb_flush_log_at_trx_commit", 1);
        kv(&mut s, "innodb_file_per_table", "ON");
        kv(&mut s, "innodb_autoinc_lock_mode", 2);
        kv(&mut s, "binlog_format", "ROW");

        s.push_str("\n# Galera\n");
        kv(&mut s, "wsrep_on", "ON");
        kv(&mut s, "wsrep_provider", &self.provider);
        kv(&mut s, "wsrep_cluster_name", &self.cluster_name);
        kv(
            &mut s,
            "wsrep_cluster_address",
            format!("gcomm://{}", self.peers.join(",")),
        );
        kv(&mut s, "wsrep_node_name", &self.name);
        kv(
            &mut s,
            "wsrep_node_address",
            format!("{}:{}", self.host, self.galera_port),
        );
        // Members list each other's client address in wsrep_incoming_addresses.
        kv(
            &mut s,
            "wsrep_node_incoming_address",
            format!("{}:{}", self.host, self.sql_port),
        );
        kv(
            &mut s,
            "wsrep_provider_options",
            format!(
                "\"gmcast.listen_addr=tcp://{h}:{g};ist.recv_addr={h}:{i};gcache.size={c};gcache.recover=yes\"",
                h = self.host,
                g = self.galera_port,
                i = self.ist_port,
                c = self.gcache_size
            ),
        );
        kv(
            &mut s,
            "wsrep_sst_receive_address",
            format!("{}:{}", self.host, self.sst_port),
        );
        kv(&mut s, "wsrep_sst_method", &self.sst_method);
        kv(
            &mut s,
            "wsrep_sst_auth",
            format!("{SST_USER}:{}", self.sst_password),
        );
        kv(&mut s, "wsrep_slave_threads", 2);
        if !self.settings.is_empty() {
            s.push_str("\n# From [mariadb.settings] in vigil.toml\n");
            for (k, v) in &self.settings {
                kv(&mut s, k, v);
            }
        }
        s
    }
}

fn kv(s: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(s, "{key} = {value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::config::Topology;

    fn spec() -> ServerSpec {
        let mut config = Config::local(3, 23300, Topology::Galera);
        config
            .mariadb
            .settings
            .insert("max_allowed_packet".into(), "64M".into());
        let secrets = Secrets {
            app: "a".into(),
            sst: "s3cret".into(),
            monitor: "m".into(),
        };
        ServerSpec::new(&config, &config.nodes[1], NodeLayout::new("/d/n2"), &secrets)
    }

    #[test]
    fn renders_ports_addresses_and_provider_options() {
        let text = spec().render();
        for expected in [
            "[mariadbd]\n",
            "port = 23310\n",
            "datadir = /d/n2/data\n",
            "socket = /d/n2/mariadbd.sock\n",
            "wsrep_cluster_name = vigil\n",
            "wsrep_cluster_address = gcomm://127.0.0.1:23301,127.0.0.1:23311,127.0.0.1:23321\n",
            "wsrep_node_address = 127.0.0.1:23311\n",
            "wsrep_node_incoming_address = 127.0.0.1:23310\n",
            "wsrep_provider_options = \"gmcast.listen_addr=tcp://127.0.0.1:23311;ist.recv_addr=127.0.0.1:23312;gcache.size=128M;gcache.recover=yes\"\n",
            "wsrep_sst_receive_address = 127.0.0.1:23313\n",
            "wsrep_sst_method = mariabackup\n",
            "wsrep_sst_auth = vigil_sst:s3cret\n",
            "innodb_flush_log_at_trx_commit = 1\n",
            "innodb_autoinc_lock_mode = 2\n",
            "binlog_format = ROW\n",
            "max_allowed_packet = 64M\n",
            "user = root\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn every_option_is_in_a_section() {
        let text = spec().render();
        let first_option = text.lines().position(|l| l.contains(" = ")).unwrap();
        let first_section = text.lines().position(|l| l.starts_with('[')).unwrap();
        assert!(first_section < first_option);
    }
}
