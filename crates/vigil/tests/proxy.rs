//! The proxy in front of a real Galera cluster: writes follow the writer, unhealthy nodes get
//! no traffic, connections to a demoted writer are closed.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;
use vigil_testkit::{app_opts, free_port, wait_for, KillOnDrop, LocalCluster};

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

/// `vigil proxy --config` as its own process, fed from etcd that the `vigil up` agents
/// coordinate through.
#[test]
fn a_separate_proxy_process_routes_from_etcd_and_fails_closed_without_it_and_a_writer_to_vouch() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = vigil_testkit::etcd::EtcdCluster::start(1);
    let endpoints = etcd.endpoints().join(",");
    let mut cluster = LocalCluster::start(VIGIL.as_ref(), 3, &["--store", &endpoints]);
    let nodes = cluster.wait_synced(Duration::from_secs(240));
    let w = nodes.iter().find(|n| n.role == "writer").unwrap().name.clone();

    // the cluster's own file, with the proxy on other ports
    let mut config = cluster.config.clone();
    let section = config.proxy.as_mut().unwrap();
    (section.write_port, section.read_port) = (free_port(), free_port());
    section.status_port = Some(free_port());
    let (wp, rp, sp) = (
        section.write_port,
        section.read_port,
        section.status_port.unwrap(),
    );
    let file = cluster.path().join("proxy.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let log = std::fs::File::create(cluster.path().join("proxy.log")).unwrap();
    let _proxy = KillOnDrop(
        std::process::Command::new(VIGIL)
            .args(["proxy", "--config"])
            .arg(&file)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for(
        "the proxy to route writes to the writer",
        Duration::from_secs(20),
        || (rt.block_on(node_behind(&cluster, wp)).as_deref() == Some(w.as_str())).then_some(()),
    );
    let reached = rt.block_on(node_behind(&cluster, rp)).expect("reads are served");
    assert_ne!(reached, w, "reads go to the other healthy nodes");
    let status: serde_json::Value = ureq::get(&format!("http://127.0.0.1:{sp}/status"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(status["writer"], w.as_str());
    let counted = status["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == w.as_str())
        .expect("the writer has counters");
    assert!(counted["connections"].as_u64().unwrap() >= 1, "{status}");
    assert!(counted["bytes_to_client"].as_u64().unwrap() > 0, "{status}");

    // kill -9 of the writer: its connections close, and a reconnect lands on the new writer
    let password = std::fs::read_to_string(cluster.path().join("secrets/app.password")).unwrap();
    let mut client = rt
        .block_on(mysql_async::Conn::new(app_opts("127.0.0.1", wp, password.trim())))
        .unwrap();
    rt.block_on(client.query_drop("SELECT 1")).unwrap();
    cluster.kill_node(&w);
    wait_for(
        "the old writer's connection to close",
        Duration::from_secs(20),
        || rt.block_on(client.query_drop("SELECT 1")).is_err().then_some(()),
    );
    let new_writer = wait_for(
        "a new writer behind the write port",
        Duration::from_secs(30),
        || rt.block_on(node_behind(&cluster, wp)).filter(|n| *n != w),
    );
    let mut conn = rt
        .block_on(mysql_async::Conn::new(app_opts("127.0.0.1", wp, password.trim())))
        .unwrap();
    rt.block_on(conn.query_drop("CREATE TABLE proxied (id INT PRIMARY KEY); INSERT INTO proxied VALUES (1)"))
        .unwrap();
    let _ = rt.block_on(conn.disconnect());
    let rows = rt.block_on(cluster.query(&new_writer, "SELECT id FROM proxied"));
    assert_eq!(rows, ["1"]);

    // etcd gone: the writer, still Synced in a Primary component, confirms to the proxy that
    // it takes the writes, so writes go on past the lease TTL
    drop(etcd);
    let ttl = cluster.config.agent.lease_ttl_ms;
    let proxy_status = || -> serde_json::Value {
        ureq::get(&format!("http://127.0.0.1:{sp}/status"))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    };
    wait_for(
        "routes older than the lease TTL, confirmed by the writer",
        Duration::from_secs(30),
        || {
            let s = proxy_status();
            (s["routes_age_ms"].as_u64().unwrap() > ttl && s["confirmed_by_writer"] == true).then_some(())
        },
    );
    assert_eq!(
        rt.block_on(node_behind(&cluster, wp)).as_deref(),
        Some(new_writer.as_str()),
        "writes go on while the writer confirms it takes them"
    );
    // ...and fail closed once it cannot: its server hangs; reads go on
    cluster.signal_node(&new_writer, Signal::SIGSTOP);
    wait_for("the write port to fail closed", Duration::from_secs(30), || {
        (proxy_status()["writes_accepted"] == false && rt.block_on(node_behind(&cluster, wp)).is_none())
            .then_some(())
    });
    assert!(
        rt.block_on(node_behind(&cluster, rp)).is_some(),
        "reads are still served from the last known routes"
    );
    cluster.signal_node(&new_writer, Signal::SIGCONT);
    cluster.stop();
}
