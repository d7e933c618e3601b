//! A cluster deployed as on real hosts: each database host a network namespace running an etcd
//! member and `vigil agent`, and a client host running `vigil proxy`. Faults are real: a host
//! cut off by iptables, an agent killed with kill -9.

use std::collections::BTreeSet;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use vigil_core::config::{Durability, Topology};
use vigil_testkit::hosts::{HostCluster, Inserts, Outcome, Service, CLIENT, DOMAIN, PROXY_WRITE_PORT};
use vigil_testkit::wait_for;

const VIGIL: &str = env!("CARGO_BIN_EXE_vigil");

#[test]
fn galera_on_three_hosts_survives_a_cut_off_writer_and_a_killed_agent() {
    let mut cluster = HostCluster::start(VIGIL.as_ref(), Topology::Galera, 3);
    let nodes = cluster.wait_healthy(Duration::from_secs(400));
    let proxy = cluster.net.host(CLIENT).addr.to_string();
    // which node a new connection to the proxy's write port reaches
    let behind_write_port = || {
        cluster
            .query(&proxy, PROXY_WRITE_PORT, "SELECT @@wsrep_node_name")
            .unwrap()
    };
    let writer = cluster.writer().expect("a writer");
    assert!(nodes.iter().all(|n| n.host.starts_with("10.66.0.")), "{nodes:?}");
    assert_eq!(
        behind_write_port(),
        std::slice::from_ref(&writer),
        "the proxy on the client host sends writes to the writer"
    );
    cluster
        .query(
            &proxy,
            PROXY_WRITE_PORT,
            "CREATE TABLE hosts_acked (id BIGINT PRIMARY KEY)",
        )
        .unwrap();

    // The API is on the network now: changes need the cluster's token, reads do not.
    let api = {
        let n = cluster.config.node(&writer).unwrap();
        format!("http://{}:{}", n.host, n.api_port)
    };
    let (hold, health) = cluster.net.run_in(CLIENT, move || {
        let hold = match ureq::post(&format!("{api}/hold")).call() {
            Err(ureq::Error::Status(code, _)) => code,
            other => panic!("hold without the token was not refused: {other:?}"),
        };
        let health = ureq::get(&format!("{api}/health")).call().map(|r| r.status());
        (hold, health)
    });
    assert_eq!(hold, 401);
    assert_eq!(health.unwrap(), 200);
    assert!(!cluster.status(&writer).unwrap().held);

    let inserts = Inserts::start(&cluster, "hosts_acked", 1, 1);
    inserts.wait_for_more(20, Duration::from_secs(30), "inserts through the proxy");

    // The writer's host is cut off from the other database hosts (the client still reaches
    // it): it falls out of the Primary component, the others elect a new writer, and the
    // proxy sends new connections there.
    let others: Vec<String> = cluster
        .db_hosts
        .iter()
        .filter(|h| **h != writer)
        .cloned()
        .collect();
    let other_refs: Vec<&str> = others.iter().map(String::as_str).collect();
    cluster.net.partition(&[&[writer.as_str()], &other_refs]);
    let new_writer = wait_for(
        "a new writer on the majority side",
        Duration::from_secs(60),
        || {
            others
                .iter()
                .find(|h| cluster.status(h).is_some_and(|s| s.role == "writer" && s.healthy))
                .cloned()
        },
    );
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts on the new writer");
    assert_eq!(behind_write_port(), std::slice::from_ref(&new_writer));
    // Galera drops the cut-off node out of the Primary component once it suspects its peers
    let cut_off = wait_for(
        "the cut-off node to report itself unhealthy",
        Duration::from_secs(60),
        || cluster.status(&writer).filter(|s| !s.healthy),
    );
    assert_ne!(cut_off.cluster_status, "Primary", "{cut_off:?}");

    cluster.net.heal();
    cluster.wait_healthy(Duration::from_secs(240));

    // kill -9 of an agent leaves its mariadbd running; the agent started again stops that
    // server cleanly and runs the node itself.
    let victim = others.iter().find(|h| **h != new_writer).unwrap().clone();
    let orphan = cluster.pid(&victim, Service::Mariadbd).expect("running mariadbd");
    assert!(cluster.kill(&victim, Service::Agent));
    cluster.start_service(&victim, Service::Agent);
    wait_replaced(&cluster, &victim, orphan);
    cluster.wait_healthy(Duration::from_secs(240));
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts after the agent's restart");

    // No majority of the last Primary component: a reader is cut off, the writer's host
    // crashes, the reader comes back. The two left form a component Galera never makes Primary
    // by itself (one of them is no majority of the last Primary {writer, survivor}); the one
    // elected to restart the cluster, the survivor, the most advanced, makes it Primary while
    // its server runs, and writes go on without the crashed host (`vigil chaos` found 88 s
    // without a write here, until later faults restarted servers).
    let writer = cluster.writer().expect("a writer");
    let mut rest = cluster.db_hosts.iter().filter(|h| **h != writer).cloned();
    let (stray, survivor) = (rest.next().unwrap(), rest.next().unwrap());
    cluster
        .net
        .partition(&[&[stray.as_str()], &[writer.as_str(), survivor.as_str()]]);
    let wsrep_status = |cluster: &HostCluster, host: &str| {
        let addr = cluster.config.node(host).unwrap().host.clone();
        let sql = "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                   WHERE VARIABLE_NAME = 'WSREP_CLUSTER_STATUS'";
        cluster
            .query(&addr, 3306, sql)
            .ok()
            .and_then(|v| v.into_iter().next())
    };
    wait_for(
        "the cut-off reader to leave the Primary component",
        Duration::from_secs(60),
        || wsrep_status(&cluster, &stray).filter(|s| s != "Primary"),
    );
    // commits the stray lacks: the survivor is the most advanced
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts without the cut-off reader");
    for service in [Service::Agent, Service::Mariadbd, Service::Etcd] {
        assert!(
            cluster.kill(&writer, service),
            "{service:?} was not running on {writer}"
        );
    }
    wait_for(
        "the survivor to be left outside a Primary component",
        Duration::from_secs(60),
        || wsrep_status(&cluster, &survivor).filter(|s| s != "Primary"),
    );
    let before = inserts.acked();
    let survivor_log = cluster.host_dir(&survivor).join("agent.log");
    let log_before = std::fs::metadata(&survivor_log).unwrap().len() as usize;
    cluster.net.heal();
    if !wait_for_opt(Duration::from_secs(120), || inserts.acked() >= before + 20) {
        panic!(
            "no writes without the crashed host after the heal\n{}",
            cluster.logs()
        );
    }
    let agent_log = std::fs::read(&survivor_log).unwrap();
    let since_heal = String::from_utf8_lossy(&agent_log[log_before..]);
    assert!(
        since_heal.contains("making this node's non-Primary component Primary"),
        "the survivor did not restore the Primary component itself"
    );
    cluster.start_service(&writer, Service::Etcd);
    cluster.start_service(&writer, Service::Agent);
    cluster.wait_healthy(Duration::from_secs(300));
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts with the crashed host back");

    // The cluster restarts while a reader is cut off from it: the reader's Galera port is
    // closed to its peers (the agents and the store still pass), the third node leaves for
    // maintenance, and the writer's server crashes and restarts the cluster alone. The reader's
    // server can never merge with a component of servers it was never Primary with (`vigil
    // chaos` saw two that had each forgotten the other's address never do so); its agent,
    // which sees that component, restarts it to join. Cut off from the very servers it was
    // Primary with, it would have waited for Galera to merge them.
    let writer = cluster.writer().expect("a writer");
    let mut rest = cluster.db_hosts.iter().filter(|h| **h != writer).cloned();
    let (reader, away) = (rest.next().unwrap(), rest.next().unwrap());
    let reader_log = cluster.host_dir(&reader).join("agent.log");
    let log_before = std::fs::metadata(&reader_log).unwrap().len() as usize;
    let galera_port = cluster.config.node(&reader).unwrap().galera_port;
    cluster
        .net
        .block_port(&reader, &[writer.as_str(), away.as_str()], galera_port);
    wait_for(
        "the reader to leave the Primary component",
        Duration::from_secs(60),
        || wsrep_status(&cluster, &reader).filter(|s| s != "Primary"),
    );
    // And the writer's view to drop it: were the third node to leave first, the writer and
    // the cut-off reader would be two, and losing the reader then would leave it one of two,
    // without quorum.
    wait_for(
        "the writer's component to drop the reader",
        Duration::from_secs(60),
        || cluster.status(&writer).filter(|s| s.cluster_size == 2),
    );
    let (ok, out, err) = cluster.cli(&["node", "hold", &away]);
    assert!(ok, "{out}{err}");
    wait_for("the held node to stop", Duration::from_secs(60), || {
        cluster.status(&away).filter(|s| s.held && s.pid.is_none())
    });
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts on the writer alone");
    let crashed = cluster
        .pid(&writer, Service::Mariadbd)
        .expect("the writer's mariadbd");
    assert!(cluster.kill(&writer, Service::Mariadbd));
    wait_for(
        "the writer to restart the cluster",
        Duration::from_secs(120),
        || {
            cluster
                .status(&writer)
                .filter(|s| s.healthy && s.pid.is_some_and(|p| p != crashed))
        },
    );
    let restarted = wait_for_opt(Duration::from_secs(120), || {
        let log = std::fs::read(&reader_log).unwrap();
        String::from_utf8_lossy(&log[log_before..]).contains("formed without this server")
    });
    assert!(
        restarted,
        "the stranded reader was not restarted\n{}",
        cluster.logs()
    );
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts while the reader is cut off");
    cluster.net.heal();
    assert!(cluster.cli(&["node", "release", &away]).0);
    cluster.wait_healthy(Duration::from_secs(300));

    // Nothing acknowledged was lost, on any node.
    let acked: BTreeSet<u64> = inserts
        .stop()
        .into_iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .map(|i| i.id)
        .collect();
    for h in cluster.db_hosts.clone() {
        let host = cluster.config.node(&h).unwrap().host.clone();
        let seen = || -> BTreeSet<u64> {
            cluster
                .query(&host, 3306, "SELECT id FROM hosts_acked")
                .unwrap()
                .iter()
                .map(|s| s.parse().unwrap())
                .collect()
        };
        // a Galera node applies what it certified a moment later: wait for the apply
        let complete = (0..50).any(|_| {
            let done = acked.is_subset(&seen());
            if !done {
                std::thread::sleep(Duration::from_millis(100));
            }
            done
        });
        let lost: Vec<u64> = acked.difference(&seen()).copied().collect();
        assert!(complete && lost.is_empty(), "{h} lacks acknowledged ids {lost:?}");
    }

    // The operator's view from the client host names every host's address.
    let (ok, out, err) = cluster.cli(&["status"]);
    assert!(ok, "{err}");
    for h in &cluster.db_hosts {
        let addr = &cluster.config.node(h).unwrap().host;
        assert!(out.contains(&format!("{addr}:3306")), "{out}");
    }
    let (ok, out, err) = cluster.cli(&["node", "hold", &victim]);
    assert!(ok, "{out}{err}");
    wait_for("the held node to stop", Duration::from_secs(60), || {
        cluster.status(&victim).filter(|s| s.held && s.pid.is_none())
    });
}

/// The nodes are not in the configuration: every agent and the proxy find them by a DNS SRV
/// lookup (as in a Kubernetes StatefulSet behind a headless service) and know them by name,
/// `dbN.vigil.test`. Replication, cloning and a failover all go through those names.
#[test]
fn replication_on_three_hosts_found_in_dns_fails_over_by_name() {
    // Semi-sync: with asynchronous replication the killed primary may take acknowledged
    // inserts down with it (and be quarantined with them), which is what async promises. An
    // old primary with an insert nobody acknowledged is re-cloned.
    let mut cluster = HostCluster::start_found_in_dns(VIGIL.as_ref(), Topology::Replication, 3, |c| {
        let r = c.replication.as_mut().expect("a replication section");
        r.durability = Durability::Semisync;
        r.auto_reclone = true;
    });
    let nodes = cluster.wait_healthy(Duration::from_secs(400));
    assert!(
        nodes.iter().all(|n| n.host == format!("{}.{DOMAIN}", n.name)),
        "{nodes:?}"
    );
    let asked = cluster.dns().unwrap().srv_queries();
    assert!(
        asked >= 4,
        "three agents and the proxy looked the nodes up; {asked} lookups"
    );
    let proxy = cluster.net.host(CLIENT).addr.to_string();
    cluster
        .query(
            &proxy,
            PROXY_WRITE_PORT,
            "CREATE TABLE dns_acked (id BIGINT PRIMARY KEY, epoch BIGINT UNSIGNED NOT NULL)",
        )
        .unwrap();
    let inserts = Inserts::start(&cluster, "dns_acked", 1, 1);
    inserts.wait_for_more(20, Duration::from_secs(30), "inserts through the proxy");

    // The primary's host goes down (agent and server killed): a replica is promoted, the
    // other follows it by name, and the proxy sends writes there.
    let primary = cluster.writer().expect("a primary");
    assert!(cluster.kill(&primary, Service::Agent));
    assert!(cluster.kill(&primary, Service::Mariadbd));
    let others: Vec<String> = cluster
        .db_hosts
        .iter()
        .filter(|h| **h != primary)
        .cloned()
        .collect();
    let new_primary = wait_for("a new primary", Duration::from_secs(90), || {
        cluster.writer().filter(|w| *w != primary)
    });
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts on the new primary");
    let follower = others.iter().find(|h| **h != new_primary).unwrap().clone();
    wait_for(
        "the other replica to follow the new primary by name",
        Duration::from_secs(60),
        || {
            cluster
                .status(&follower)
                .filter(|s| s.healthy && s.state == "streaming" && s.cluster_status == new_primary)
        },
    );

    // The old primary's host comes back: it rejoins as a replica of the new primary (re-cloned
    // first if it has an insert that no replica received).
    cluster.start_service(&primary, Service::Agent);
    cluster.wait_healthy(Duration::from_secs(240));
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts after the rejoin");

    // A replica's agent is killed while its server has a relay log to apply (a table lock
    // holds the applier back). The agent started again applies it before it restarts the
    // server, and its API answers meanwhile: the store loses its quorum then, and the primary
    // keeps taking writes on the replicas' failsafe promises (`vigil chaos` saw a replica
    // apply for 14 s with no API, and a store lost meanwhile fenced the primary).
    let primary = cluster.writer().expect("a primary");
    let replica = cluster.db_hosts.iter().find(|h| **h != primary).unwrap().clone();
    let other = cluster
        .db_hosts
        .iter()
        .find(|h| **h != primary && **h != replica)
        .unwrap()
        .clone();
    let layout = cluster.node_layout(&replica).expect("a database host");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut lock = rt
        .block_on(vigil_mariadb::admin::connect_root(&replica, &layout))
        .expect("root on the replica's socket");
    rt.block_on(lock.query_drop("LOCK TABLES app.dns_acked READ"))
        .expect("the applier held back");
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts the held replica receives");
    let orphan = cluster
        .pid(&replica, Service::Mariadbd)
        .expect("the replica's mariadbd");
    assert!(cluster.kill(&replica, Service::Agent));
    cluster.start_service(&replica, Service::Agent);
    wait_for(
        "the restarted agent to answer while it applies the relay log",
        Duration::from_secs(20),
        || {
            cluster
                .status(&replica)
                .filter(|s| s.reason.contains("once it has applied its relay log"))
        },
    );
    assert_eq!(cluster.pid(&replica, Service::Mariadbd), Some(orphan));
    let ttl = Duration::from_millis(cluster.config.agent.lease_ttl_ms);
    assert!(cluster.kill(&replica, Service::Etcd));
    assert!(cluster.kill(&other, Service::Etcd));
    let lost = std::time::Instant::now();
    wait_for(
        "an insert acknowledged a lease TTL and a half after the store lost its quorum",
        Duration::from_secs(20),
        || {
            let from = lost + ttl + ttl / 2;
            (!inserts.acked_between(from, std::time::Instant::now()).is_empty()).then_some(())
        },
    );
    assert!(!cluster.etcd_healthy(&primary), "the store kept its quorum");
    // (the server may have been stopped already, when the drain gave up)
    let _ = rt.block_on(lock.disconnect());
    cluster.start_service(&replica, Service::Etcd);
    cluster.start_service(&other, Service::Etcd);
    cluster.wait_etcd();
    wait_replaced(&cluster, &replica, orphan);
    cluster.wait_healthy(Duration::from_secs(240));
    inserts.wait_for_more(20, Duration::from_secs(60), "inserts after the store came back");
    let acked: BTreeSet<u64> = inserts
        .stop()
        .into_iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .map(|i| i.id)
        .collect();
    // Every node has every acknowledged insert: the replicas got them from the new primary
    // by name (wait for them to apply the last ones).
    for h in cluster.db_hosts.clone() {
        let host = cluster.config.node(&h).unwrap().host.clone();
        let lacking = || -> Vec<u64> {
            let seen: BTreeSet<u64> = cluster
                .query(&host, 3306, "SELECT id FROM dns_acked")
                .unwrap()
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
            acked.difference(&seen).copied().collect()
        };
        let complete = wait_for_opt(Duration::from_secs(30), || lacking().is_empty());
        assert!(complete, "{h} lacks acknowledged ids {:?}", lacking());
    }
}

/// Waits until `host` runs a mariadbd other than `orphan` (one a killed agent left running),
/// started by its new agent.
fn wait_replaced(cluster: &HostCluster, host: &str, orphan: u32) {
    wait_for(
        "the orphaned mariadbd to be replaced",
        Duration::from_secs(120),
        || cluster.pid(host, Service::Mariadbd).filter(|pid| *pid != orphan),
    );
}

/// Whether `done` holds within `timeout` (checked every 100 ms).
fn wait_for_opt(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
