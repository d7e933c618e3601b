//! Renders a node's `my.cnf` from vigil's configuration.
//!
//! The file holds the SST password (`wsrep_sst_auth`, or the `[mariabackup]` group in the
//! replication topology), so it is written with mode 0600.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use vigil_core::config::{Config, Durability, NodeConfig, ReplicationSection, Topology};

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
    pub suspect_timeout_ms: u64,
    pub settings: BTreeMap<String, String>,
    pub layout: NodeLayout,
    /// Galera options or GTID primary/replica options: the two never mix.
    pub topology: Topology,
    /// 1 + the node's index in the configuration: unique per node, so GTIDs name their origin.
    pub server_id: u32,
    /// Durability and apply threads (replication topology only).
    pub replication: ReplicationSection,
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
            suspect_timeout_ms: config.mariadb.galera_suspect_timeout_ms,
            settings: config.mariadb.settings.clone(),
            layout,
            topology: config.cluster.topology,
            server_id: config
                .nodes
                .iter()
                .position(|n| n.name == node.name)
                .map_or(1, |i| i as u32 + 1),
            replication: config.replication(),
        }
    }
}

/// Galera's failure-detection options for a suspect timeout of `suspect_ms`, in its proportions
/// (keepalives and checks well within it, as Galera requires: keepalive < suspect / 3, check
/// period < suspect / 2; a member silent three times as long is dropped without agreement; an
/// unfinished membership round is abandoned after one and a half times as long). The join
/// messages of a membership round are sent again every twelfth of the suspect timeout (a
/// quarter of a second for the default 3 s, instead of Galera's 1 s): when the survivors evict
/// a dead member, the one that evicts second is already gathering and only says so at its next
/// retransmission, and no member commits meanwhile (measured: the view came a second after the
/// eviction). The same for every member, arbitrator included.
pub fn failure_detection(suspect_ms: u64) -> String {
    let pt = |ms: u64| {
        let secs = format!("{:.3}", ms as f64 / 1000.0);
        format!("PT{}S", secs.trim_end_matches('0').trim_end_matches('.'))
    };
    format!(
        "evs.suspect_timeout={};evs.inactive_timeout={};evs.install_timeout={};evs.keepalive_period={};evs.inactive_check_period={};evs.join_retrans_period={}",
        pt(suspect_ms),
        pt(suspect_ms * 3),
        pt(suspect_ms * 3 / 2),
        pt(suspect_ms / 4),
        pt(suspect_ms / 6),
        pt((suspect_ms / 12).max(100))
    )
}

impl ServerSpec {
    /// The `my.cnf` text.
    pub fn render(&self) -> String {
        match self.topology {
            Topology::Galera => self.render_galera(),
            Topology::Replication => self.render_replication(),
        }
    }

    /// The `[mariadbd]` header and the options every topology shares.
    fn render_common(&self) -> String {
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
        s
    }

    fn render_galera(&self) -> String {
        let mut s = self.render_common();
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
        s.push_str(
            "# pc.recovery off: vigil elects the node that restarts a cluster; a server never\n\
             # re-forms an old Primary component from gvwstate.dat on its own, and a restarted\n\
             # server joins under a new member id (the survivors may have evicted the old one).\n\
             # evs.*: a member that stops answering is dropped after the suspect timeout\n\
             # (mariadb.galera_suspect_timeout_ms); no member commits until then.\n",
        );
        kv(
            &mut s,
            "wsrep_provider_options",
            format!(
                "\"gmcast.listen_addr=tcp://{h}:{g};ist.recv_addr={h}:{i};gcache.size={c};gcache.recover=yes;pc.recovery=FALSE;{d}\"",
                h = self.host,
                g = self.galera_port,
                i = self.ist_port,
                c = self.gcache_size,
                d = failure_detection(self.suspect_timeout_ms)
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
        self.render_settings(&mut s);
        s
    }

    /// One GTID primary and its replicas. Every node is rendered alike (any replica may be
    /// promoted); the agent switches roles at run time with SQL, never by rewriting this file.
    fn render_replication(&self) -> String {
        let r = &self.replication;
        let mut s = self.render_common();
        s.push_str("\n# InnoDB: every commit durable on disk before it is acknowledged.\n");
        kv(&mut s, "default_storage_engine", "InnoDB");
        kv(&mut s, "innodb_buffer_pool_size", &self.innodb_buffer_pool_size);
        kv(&mut s, "innodb_log_file_size", &self.innodb_log_file_size);
        kv(&mut s, "innodb_flush_log_at_trx_commit", 1);
        kv(&mut s, "innodb_file_per_table", "ON");

        s.push_str("\n# GTID replication (no Galera)\n");
        s.push_str("# Unique per node: a GTID names the server that wrote it.\n");
        kv(&mut s, "server_id", self.server_id);
        s.push_str("# The binary log, in the datadir: what replicas read, and this node's history.\n");
        kv(&mut s, "log_bin", "mariadb-bin");
        s.push_str(
            "# Replicas binlog what they apply: any of them may be promoted, and the other replicas\n\
             # and a returning old primary then continue from its binlog by GTID.\n",
        );
        kv(&mut s, "log_slave_updates", "ON");
        s.push_str("# Row events: replicas apply exactly what the primary changed.\n");
        kv(&mut s, "binlog_format", "ROW");
        s.push_str("# The binlog is flushed at every commit: an acknowledged write survives a crash.\n");
        kv(&mut s, "sync_binlog", 1);
        s.push_str(
            "# A transaction out of order or unknown to the source stops replication instead of diverging.\n",
        );
        kv(&mut s, "gtid_strict_mode", "ON");
        s.push_str("# One writer at a time, one domain: positions compare seqno to seqno.\n");
        kv(&mut s, "gtid_domain_id", 0);
        s.push_str("# Relay log in the datadir; after a crash it is discarded and fetched again from the\n");
        s.push_str("# position in mysql.gtid_slave_pos (InnoDB, so crash-safe).\n");
        kv(&mut s, "relay_log", "relay-bin");
        kv(&mut s, "relay_log_recovery", "ON");
        s.push_str("# Replicas apply in parallel, optimistically (conflicts are retried in commit order).\n");
        kv(&mut s, "slave_parallel_threads", r.parallel_threads);
        kv(&mut s, "slave_parallel_mode", "optimistic");
        s.push_str("# Every node starts read-only; only the holder of the primary lease is made writable.\n");
        kv(&mut s, "read_only", "ON");
        s.push_str(
            "# Runs the primary's dead-man switch: an event the agent keeps re-arming that sets\n\
             # read_only if the agent stops renewing the leader lease (see vigil_mariadb::repl).\n",
        );
        kv(&mut s, "event_scheduler", "ON");
        s.push_str("# The agent decides where a node replicates from; nothing starts on its own.\n");
        kv(&mut s, "skip_slave_start", "ON");
        if r.durability == Durability::Semisync {
            s.push_str(
                "# Semi-synchronous: a commit is acknowledged once a replica has it (AFTER_SYNC: the\n\
                 # primary waits before committing in InnoDB), and it waits for ever rather than\n\
                 # silently falling back to asynchronous. The primary side is switched on at promotion.\n",
            );
            kv(&mut s, "rpl_semi_sync_slave_enabled", "ON");
            kv(&mut s, "rpl_semi_sync_master_wait_point", "AFTER_SYNC");
            kv(&mut s, "rpl_semi_sync_master_timeout", 4_294_967_295u64);
        }
        s.push_str("# How this node appears in its source's SHOW SLAVE HOSTS.\n");
        kv(&mut s, "report_host", &self.host);
        kv(&mut s, "report_port", self.sql_port);
        self.render_settings(&mut s);

        s.push_str(
            "\n# mariabackup --defaults-file=this file: a clone needs no password on its command line.\n",
        );
        s.push_str("[mariabackup]\n");
        kv(&mut s, "user", SST_USER);
        kv(&mut s, "password", &self.sst_password);
        s
    }

    fn render_settings(&self, s: &mut String) {
        if !self.settings.is_empty() {
            s.push_str("\n# From [mariadb.settings] in vigil.toml\n");
            for (k, v) in &self.settings {
                kv(s, k, v);
            }
        }
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
            repl: "r".into(),
            api: "t".into(),
        };
        ServerSpec::new(&config, &config.nodes[1], NodeLayout::new("/d/n2"), &secrets)
    }

    fn replication_spec(durability: Durability) -> ServerSpec {
        let mut config = Config::local(3, 23300, Topology::Replication);
        let section = config.replication.as_mut().unwrap();
        section.durability = durability;
        section.parallel_threads = 6;
        let secrets = Secrets {
            app: "a".into(),
            sst: "s3cret".into(),
            monitor: "m".into(),
            repl: "r".into(),
            api: "t".into(),
        };
        ServerSpec::new(&config, &config.nodes[2], NodeLayout::new("/d/n3"), &secrets)
    }

    /// The `key = value` lines of one `[group]`.
    fn group(text: &str, name: &str) -> Vec<String> {
        let header = format!("[{name}]");
        text.lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !l.starts_with('['))
            .filter(|l| l.contains(" = ") && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    #[test]
    fn galera_rendering_is_unchanged() {
        // The exact text (as before the replication topology existed, plus pc.recovery off).
        let text = spec().render();
        let expected = r#"# Written by vigil for node n2 on every start; edit vigil.toml instead.
[mariadbd]
user = root
datadir = /d/n2/data
socket = /d/n2/mariadbd.sock
pid-file = /d/n2/mariadbd.pid
log-error = /d/n2/error.log
port = 23310
bind-address = 127.0.0.1
skip-name-resolve = ON
performance_schema = OFF
max_connections = 500

# InnoDB: durable commits; Galera needs row events and interleaved auto-increment.
default_storage_engine = InnoDB
innodb_buffer_pool_size = 64M
innodb_log_file_size = 32M
innodb_flush_log_at_trx_commit = 1
innodb_file_per_table = ON
innodb_autoinc_lock_mode = 2
binlog_format = ROW

# Galera
wsrep_on = ON
wsrep_provider = /usr/lib/galera/libgalera_smm.so
wsrep_cluster_name = vigil
wsrep_cluster_address = gcomm://127.0.0.1:23301,127.0.0.1:23311,127.0.0.1:23321
wsrep_node_name = n2
wsrep_node_address = 127.0.0.1:23311
wsrep_node_incoming_address = 127.0.0.1:23310
# pc.recovery off: vigil elects the node that restarts a cluster; a server never
# re-forms an old Primary component from gvwstate.dat on its own, and a restarted
# server joins under a new member id (the survivors may have evicted the old one).
# evs.*: a member that stops answering is dropped after the suspect timeout
# (mariadb.galera_suspect_timeout_ms); no member commits until then.
wsrep_provider_options = "gmcast.listen_addr=tcp://127.0.0.1:23311;ist.recv_addr=127.0.0.1:23312;gcache.size=128M;gcache.recover=yes;pc.recovery=FALSE;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT9S;evs.install_timeout=PT4.5S;evs.keepalive_period=PT0.75S;evs.inactive_check_period=PT0.5S;evs.join_retrans_period=PT0.25S"
wsrep_sst_receive_address = 127.0.0.1:23313
wsrep_sst_method = mariabackup
wsrep_sst_auth = vigil_sst:s3cret
wsrep_slave_threads = 2

# From [mariadb.settings] in vigil.toml
max_allowed_packet = 64M
"#;
        assert_eq!(text, expected);
        assert!(!text.contains("server_id") && !text.contains("[mariabackup]"));
    }

    #[test]
    fn replication_renders_gtid_options_and_no_wsrep() {
        let text = replication_spec(Durability::Semisync).render();
        assert!(!text.contains("wsrep"), "{text}");
        let server = group(&text, "mariadbd");
        for expected in [
            "port = 23320",
            "datadir = /d/n3/data",
            "server_id = 3",
            "log_bin = mariadb-bin",
            "log_slave_updates = ON",
            "binlog_format = ROW",
            "sync_binlog = 1",
            "innodb_flush_log_at_trx_commit = 1",
            "gtid_strict_mode = ON",
            "gtid_domain_id = 0",
            "relay_log = relay-bin",
            "relay_log_recovery = ON",
            "slave_parallel_threads = 6",
            "slave_parallel_mode = optimistic",
            "read_only = ON",
            "event_scheduler = ON",
            "skip_slave_start = ON",
            "rpl_semi_sync_slave_enabled = ON",
            "rpl_semi_sync_master_wait_point = AFTER_SYNC",
            "rpl_semi_sync_master_timeout = 4294967295",
            "report_host = 127.0.0.1",
            "report_port = 23320",
        ] {
            assert!(
                server.iter().any(|l| l == expected),
                "missing {expected:?} in\n{text}"
            );
        }
        // Each replication option comes with a comment saying why.
        let after = text.split("# GTID replication").nth(1).unwrap();
        for line in after
            .lines()
            .filter(|l| l.starts_with("server_id") || l.starts_with("log_slave_updates"))
        {
            let before = &after[..after.find(line).unwrap()];
            assert!(
                before.trim_end().lines().last().unwrap().starts_with('#'),
                "{line}"
            );
        }
        assert_eq!(
            group(&text, "mariabackup"),
            ["user = vigil_sst", "password = s3cret"]
        );
    }

    #[test]
    fn async_durability_leaves_semisync_off() {
        let text = replication_spec(Durability::Async).render();
        assert!(!text.contains("rpl_semi_sync"), "{text}");
        assert!(text.contains("log_slave_updates = ON\n"));
    }

    #[test]
    fn server_ids_follow_configuration_order() {
        let config = Config::local(3, 23300, Topology::Replication);
        let secrets = Secrets::generate();
        let ids: Vec<u32> = config
            .nodes
            .iter()
            .map(|n| ServerSpec::new(&config, n, NodeLayout::new("/d"), &secrets).server_id)
            .collect();
        assert_eq!(ids, [1, 2, 3]);
    }

    #[test]
    fn failure_detection_keeps_galeras_proportions() {
        assert_eq!(
            failure_detection(5000),
            "evs.suspect_timeout=PT5S;evs.inactive_timeout=PT15S;evs.install_timeout=PT7.5S;\
             evs.keepalive_period=PT1.25S;evs.inactive_check_period=PT0.833S;evs.join_retrans_period=PT0.416S"
        );
        // Galera refuses keepalive_period >= suspect/3 and inactive_check_period >= suspect/2
        for ms in [1000, 1234, 3000, 60_000] {
            let (keepalive, check) = (ms / 4, ms / 6);
            assert!(keepalive * 3 < ms && check * 2 < ms, "{ms}");
        }
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
            "wsrep_provider_options = \"gmcast.listen_addr=tcp://127.0.0.1:23311;ist.recv_addr=127.0.0.1:23312;gcache.size=128M;gcache.recover=yes;pc.recovery=FALSE;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT9S;evs.install_timeout=PT4.5S;evs.keepalive_period=PT0.75S;evs.inactive_check_period=PT0.5S;evs.join_retrans_period=PT0.25S\"\n",
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
