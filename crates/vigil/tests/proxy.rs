//! The proxy in front of a real Galera cluster: writes follow the writer, unhealthy nodes get
//! no traffic, connections to a demoted writer are closed.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use vigil_testkit::{app_opts, wait_for, LocalCluster};

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

/// Which node a new connection through `port` reaches, if one does.
async fn node_behind(cluster: &LocalCluster, port: u16) -> Option<String> {
    let password = std::fs::read_to_string(cluster.path().join("secrets/app.password")).unwrap();
    let mut conn = mysql_async::Conn::new(app_opts("127.0.0.1", port, password.trim()))
        .await
        .ok()?;
    let name: Option<String> = conn.query_first("SELECT @@wsrep_node_name").await.ok()?;
    let _ = conn.disconnect().await;
    name
}

fn ports(cluster: &LocalCluster) -> (u16, u16) {
    let p = cluster.config.proxy.as_ref().expect("vigil up serves a proxy");
    (p.write_port, p.read_port)
}

#[test]
fn writes_follow_the_writer_and_a_desynced_writer_loses_its_connections_and_reads() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    let nodes = cluster.wait_synced(Duration::from_secs(240));
    let (wp, rp) = ports(&cluster);
    let w = nodes.iter().find(|n| n.role == "writer").unwrap().name.clone();
    assert_eq!(
        rt.block_on(node_behind(&cluster, wp)).as_deref(),
        Some(w.as_str())
    );

    // A client connected through the write port, and the writer desyncs (as a donor would).
    let password = std::fs::read_to_string(cluster.path().join("secrets/app.password")).unwrap();
    let mut client = rt
        .block_on(mysql_async::Conn::new(app_opts("127.0.0.1", wp, password.trim())))
        .unwrap();
    rt.block_on(client.query_drop("SELECT 1")).unwrap();
    let layout = vigil_mariadb::NodeLayout::new(cluster.node_dir(&w));
    let mut root = rt
        .block_on(vigil_mariadb::admin::connect_root(&w, &layout))
        .unwrap();
    rt.block_on(root.query_drop("SET GLOBAL wsrep_desync = ON"))
        .unwrap();

    let new_writer = wait_for(
        "another node to become the writer",
        Duration::from_secs(30),
        || {
            cluster
                .names()
                .into_iter()
                .find(|n| *n != w && cluster.status(n).is_some_and(|s| s.role == "writer"))
        },
    );
    wait_for(
        "the proxy to close the old writer's connection",
        Duration::from_secs(10),
        || rt.block_on(client.query_drop("SELECT 1")).is_err().then_some(()),
    );
    wait_for(
        "new write connections to reach the new writer",
        Duration::from_secs(10),
        || (rt.block_on(node_behind(&cluster, wp)).as_deref() == Some(new_writer.as_str())).then_some(()),
    );
    for _ in 0..20 {
        let reached = rt.block_on(node_behind(&cluster, rp)).expect("reads are served");
        assert_ne!(reached, w, "a desynced node receives no reads");
    }

    rt.block_on(root.query_drop("SET GLOBAL wsrep_desync = OFF"))
        .unwrap();
    let _ = rt.block_on(root.disconnect());
    cluster.wait_synced(Duration::from_secs(60));
    assert!(cluster.stop().success());
}

#[test]
fn a_killed_reader_is_skipped_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &[]);
    let nodes = cluster.wait_synced(Duration::from_secs(240));
    let (_, rp) = ports(&cluster);
    let victim = nodes.iter().find(|n| n.role == "reader").unwrap().name.clone();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(rt.block_on(node_behind(&cluster, rp)).expect("reads are served"));
    }
    assert!(
        seen.contains(&victim),
        "reads are spread over the readers: {seen:?}"
    );

    cluster.kill_node(&victim);
    // No waiting for the routing table: a refused connect is retried on another node.
    for _ in 0..20 {
        let reached = rt
            .block_on(node_behind(&cluster, rp))
            .expect("every read connection succeeds");
        assert_ne!(reached, victim);
    }
    cluster.wait_synced(Duration::from_secs(120));
    assert!(cluster.stop().success());
}
