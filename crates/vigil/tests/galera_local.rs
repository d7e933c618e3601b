//! `vigil up` with real mariadbd + galera-4 + mariabackup nodes on loopback.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vigil_testkit::{wait_for, LocalCluster};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn grastate(cluster: &LocalCluster, node: &str) -> String {
    std::fs::read_to_string(cluster.node_dir(node).join("data/grastate.dat")).unwrap()
}

fn error_log(cluster: &LocalCluster, node: &str) -> String {
    std::fs::read_to_string(cluster.node_dir(node).join("error.log")).unwrap_or_default()
}

#[test]
fn three_nodes_sync_replicate_stop_cleanly_and_restart_without_sst() {
    let rt = rt();
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);

    // While a node is joining, its /health says 503 with the reason.
    let joiner = wait_for("a node in the joining phase", Duration::from_secs(120), || {
        cluster.names().into_iter().find(|n| {
            cluster
                .status(n)
                .is_some_and(|s| s.phase == vigil_core::galera::Phase::Joining)
        })
    });
    let (code, body) = cluster.api(&joiner, "/health").unwrap();
    assert_eq!(code, 503, "a joining node must not be healthy: {body}");
    assert!(body.contains("not available: joining via SST from n1"), "{body}");

    let nodes = cluster.wait_synced(Duration::from_secs(240));
    assert!(nodes
        .iter()
        .all(|n| n.state == "Synced" && n.cluster_status == "Primary" && n.cluster_size == 3));
    assert_eq!(
        nodes.iter().filter(|n| n.role == "writer").count(),
        1,
        "exactly one writer: {nodes:?}"
    );
    assert!(nodes.iter().all(|n| n.pid.is_some()));
    wait_for("vigil up to say how to connect", Duration::from_secs(10), || {
        cluster
            .log()
            .contains("connect: mariadb --defaults-extra-file=")
            .then_some(())
    });
    for n in cluster.names() {
        let (code, body) = cluster.api(&n, "/health").unwrap();
        assert_eq!(code, 200, "{n}: {body}");
    }

    // `vigil status --json` has the documented fields.
    let out = std::process::Command::new(VIGIL)
        .args(["status", "--json", "--dir"])
        .arg(cluster.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &json["nodes"][0];
    for field in [
        "name",
        "sql_port",
        "api_port",
        "pid",
        "state",
        "cluster_status",
        "cluster_size",
        "seqno",
        "role",
        "healthy",
    ] {
        assert!(!first[field].is_null(), "status --json lacks {field}: {first}");
    }
    let table = std::process::Command::new(VIGIL)
        .args(["status", "--dir"])
        .arg(cluster.path())
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert_eq!(
        table.lines().filter(|l| l.contains("Synced")).count(),
        3,
        "{table}"
    );

    // Secrets are private, and the application user has least privilege.
    for f in ["app.password", "sst.password", "monitor.password", "app.cnf"] {
        let mode = std::fs::metadata(cluster.path().join("secrets").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let denied = rt.block_on(async {
        use mysql_async::prelude::Queryable;
        let mut conn = cluster.connect("n1").await;
        conn.query_drop("SELECT * FROM mysql.user").await
    });
    assert!(denied.is_err(), "vigil_app must not read mysql.user");

    // Write on one node, read the same rows on the others.
    rt.block_on(async {
        cluster
            .query("n1", "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20))")
            .await;
        cluster
            .query("n1", "INSERT INTO t VALUES (1,'one'),(2,'two'),(3,'three')")
            .await;
        cluster.query("n2", "INSERT INTO t VALUES (4,'four')").await;
        for n in ["n1", "n2", "n3"] {
            assert_eq!(
                cluster.query(n, "SELECT v FROM t ORDER BY id").await,
                ["one", "two", "three", "four"],
                "{n}"
            );
        }
    });

    // Ctrl-C stops every node cleanly, and exactly one is safe to bootstrap.
    let status = cluster.stop();
    assert!(status.success(), "vigil up exit: {status}");
    assert!(
        cluster.live_mariadbd_pids().is_empty(),
        "no mariadbd left running"
    );
    let safe: Vec<String> = cluster
        .names()
        .into_iter()
        .filter(|n| grastate(&cluster, n).contains("safe_to_bootstrap: 1"))
        .collect();
    assert_eq!(safe.len(), 1, "exactly one node safe to bootstrap: {safe:?}");
    for n in cluster.names() {
        assert!(
            !grastate(&cluster, &n).contains("seqno:   -1"),
            "{n} stopped cleanly with its position"
        );
    }

    // `mariadbd --wsrep-recover` on each stopped node finds the position grastate.dat recorded.
    let bins = vigil_mariadb::process::Binaries::discover(&cluster.config.mariadb).unwrap();
    for n in cluster.names() {
        let layout = vigil_mariadb::NodeLayout::new(cluster.node_dir(&n));
        let saved = vigil_mariadb::grastate::read(&layout.grastate())
            .unwrap()
            .unwrap();
        let recovered = rt
            .block_on(vigil_mariadb::recover::wsrep_recover(&bins, &layout))
            .unwrap();
        assert_eq!(
            (recovered.uuid.as_str(), recovered.seqno),
            (saved.uuid.as_str(), saved.seqno),
            "{n}"
        );
    }

    // The next start uses it, re-initialises nothing, and moves no full snapshot.
    let logs_before: Vec<usize> = cluster
        .names()
        .iter()
        .map(|n| error_log(&cluster, n).len())
        .collect();
    let config_before = std::fs::read_to_string(cluster.path().join("vigil.toml")).unwrap();
    cluster.restart();
    cluster.wait_synced(Duration::from_secs(120));
    assert_eq!(
        std::fs::read_to_string(cluster.path().join("vigil.toml")).unwrap(),
        config_before
    );
    for (n, before) in cluster.names().iter().zip(logs_before) {
        let new_part = error_log(&cluster, n)[before..].to_string();
        // Galera 4 runs the SST script for IST too; only a full snapshot logs "SST completed".
        assert!(
            !new_part.contains("SST completed on joiner"),
            "{n} received a full SST on restart"
        );
        assert!(!new_part.contains("mariadb-install-db"), "{n} was re-initialised");
    }
    assert!(
        cluster.log().contains(&format!("{} -> Bootstrapping", "Waiting")),
        "{}",
        cluster.log()
    );
    rt.block_on(async {
        for n in ["n1", "n2", "n3"] {
            assert_eq!(
                cluster.query(n, "SELECT COUNT(*) FROM t").await,
                ["4"],
                "{n} kept its data"
            );
        }
    });
    assert!(cluster.stop().success());
}
